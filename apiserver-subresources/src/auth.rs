//! Who is calling: kube-apiserver, proxying for a user.
//!
//! The aggregated API is reached only through kube-apiserver, which presents
//! its front-proxy client certificate and names the user in X-Remote-*
//! headers. Those headers are trusted only when the connection's client
//! certificate chains to the request-header CA and its CN is one of the
//! allowed names. Both come from the ConfigMap
//! kube-system/extension-apiserver-authentication and are re-read when it
//! changes ([`RequestHeaderAuth::watch`]). A ConfigMap that does not parse
//! (a CA that does not load, a list that is not a JSON list of strings) is
//! ignored with a warning: the last good configuration stays, so a garbled
//! `requestheader-allowed-names` never widens who may assert users.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

/// The ConfigMap kube-apiserver publishes for extension API servers.
pub const AUTH_CONFIGMAP: (&str, &str) = ("kube-system", "extension-apiserver-authentication");

/// The request-header settings from the ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// PEM of the CA that signs the front-proxy client certificate.
    pub client_ca: String,
    /// CNs allowed to assert users; empty means any certificate from the CA.
    pub allowed_names: Vec<String>,
    pub username_headers: Vec<String>,
    pub group_headers: Vec<String>,
    pub uid_headers: Vec<String>,
    pub extra_prefixes: Vec<String>,
}

/// Why the ConfigMap's request-header settings were not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the authentication ConfigMap has no requestheader-client-ca-file")]
    NoClientCa,
    #[error("{key} is not a JSON list of strings ({error}): {value:?}")]
    BadList {
        key: &'static str,
        value: String,
        error: String,
    },
    #[error("the request-header CA does not load: {0}")]
    BadCa(String),
}

/// A list setting: a JSON list of strings. Absent, empty or `null` (how
/// kube-apiserver writes an unset list) means `default`, as in Kubernetes'
/// own extension API servers; anything else that does not parse is an error,
/// never the default.
fn json_list(
    data: &BTreeMap<String, String>,
    key: &'static str,
    default: &[&str],
) -> Result<Vec<String>, ConfigError> {
    let default = || default.iter().map(|s| (*s).to_owned()).collect();
    let Some(value) = data.get(key).filter(|v| !v.trim().is_empty()) else {
        return Ok(default());
    };
    match serde_json::from_str::<Option<Vec<String>>>(value) {
        Ok(Some(list)) => Ok(list),
        Ok(None) => Ok(default()),
        Err(e) => Err(ConfigError::BadList {
            key,
            value: value.chars().take(200).collect(),
            error: e.to_string(),
        }),
    }
}

impl RequestHeaderConfig {
    /// Reads the settings from the ConfigMap's data.
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let client_ca = data
            .get("requestheader-client-ca-file")
            .ok_or(ConfigError::NoClientCa)?
            .clone();
        Ok(RequestHeaderConfig {
            client_ca,
            allowed_names: json_list(data, "requestheader-allowed-names", &[])?,
            username_headers: json_list(
                data,
                "requestheader-username-headers",
                &["X-Remote-User"],
            )?,
            group_headers: json_list(data, "requestheader-group-headers", &["X-Remote-Group"])?,
            uid_headers: json_list(data, "requestheader-uid-headers", &["X-Remote-Uid"])?,
            extra_prefixes: json_list(
                data,
                "requestheader-extra-headers-prefix",
                &["X-Remote-Extra-"],
            )?,
        })
    }
}

/// A user, as kube-apiserver asserted it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub uid: Option<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What the TLS layer learned about a connection's client.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    /// The CN of a client certificate that chains to the request-header CA
    /// (rustls verified the chain during the handshake).
    pub verified_cn: Option<String>,
}

/// Why a request is not authenticated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthnError {
    #[error("the request-header configuration is not loaded yet")]
    NotConfigured,
    #[error(
        "no client certificate from the front proxy; ironvirt-api is reached through kube-apiserver"
    )]
    NoCertificate,
    #[error("client certificate CN {0:?} is not an allowed front-proxy name")]
    NotAllowed(String),
    #[error("the front proxy named no user")]
    NoUser,
}

/// Loaded settings with the verifier built from them.
type Loaded = (RequestHeaderConfig, Arc<dyn ClientCertVerifier>);

/// The current request-header settings and a verifier built from them.
#[derive(Clone, Default)]
pub struct RequestHeaderAuth {
    inner: Arc<RwLock<Option<Loaded>>>,
}

impl std::fmt::Debug for RequestHeaderAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHeaderAuth").finish_non_exhaustive()
    }
}

fn verifier_for(pem: &str) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let bad = |e: &dyn std::fmt::Display| ConfigError::BadCa(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let cert = cert.map_err(|e| bad(&e))?;
        roots.add(cert).map_err(|e| bad(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad(&e))
}

impl RequestHeaderAuth {
    /// Installs new settings; on an error the current ones stay.
    pub fn set(&self, cfg: RequestHeaderConfig) -> Result<(), ConfigError> {
        let verifier = verifier_for(&cfg.client_ca)?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *inner = Some((cfg, verifier));
        Ok(())
    }

    /// Installs the settings of the ConfigMap's `data`. When they do not
    /// parse, the last good settings stay (none before the first good ones)
    /// and the error says why.
    pub fn update(&self, data: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        self.set(RequestHeaderConfig::from_configmap(data)?)
    }

    /// The settings in use.
    pub fn config(&self) -> Option<RequestHeaderConfig> {
        self.current().map(|(cfg, _)| cfg)
    }

    fn current(&self) -> Option<Loaded> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether settings are loaded.
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Follows the ConfigMap until the process ends.
    pub async fn watch(self, client: Client) {
        let api: Api<ConfigMap> = Api::namespaced(client, AUTH_CONFIGMAP.0);
        let wc = watcher::Config::default().fields(&format!("metadata.name={}", AUTH_CONFIGMAP.1));
        // Failed attempts wait (0.5 s doubling to 8 s) instead of retrying at
        // once, which logged a warning in a tight loop while kube-apiserver was away.
        let mut stream = watcher(api, wc)
            .backoff(ironvirt_crds::watch::WatchBackoff::default())
            .boxed();
        while let Some(ev) = stream.next().await {
            let cms = match ev {
                Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => vec![cm],
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the authentication ConfigMap");
                    continue;
                }
            };
            for cm in cms {
                let data = cm.data.unwrap_or_default();
                match self.update(&data) {
                    Ok(()) => {
                        let names = self.config().map(|c| c.allowed_names).unwrap_or_default();
                        tracing::info!(allowed_names = ?names, "front-proxy authentication configured");
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        configured = self.is_ready(),
                        "ignoring the authentication ConfigMap; the last good configuration stays"
                    ),
                }
            }
        }
    }

    /// The user a request asserts, if the connection may assert users.
    pub fn authenticate(&self, peer: &Peer, headers: &HeaderMap) -> Result<User, AuthnError> {
        let (cfg, _) = self.current().ok_or(AuthnError::NotConfigured)?;
        authenticate(&cfg, peer, headers)
    }

    /// A verifier for the TLS server that always uses the current CA.
    pub fn client_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::new(DynamicVerifier { auth: self.clone() })
    }
}

/// The user named by the headers, when `peer` is an allowed front proxy.
pub fn authenticate(
    cfg: &RequestHeaderConfig,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<User, AuthnError> {
    let cn = peer.verified_cn.as_ref().ok_or(AuthnError::NoCertificate)?;
    if !cfg.allowed_names.is_empty() && !cfg.allowed_names.iter().any(|n| n == cn) {
        return Err(AuthnError::NotAllowed(cn.clone()));
    }
    let values = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .flat_map(|n| headers.get_all(n.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    };
    let name = values(&cfg.username_headers)
        .into_iter()
        .find(|n| !n.is_empty())
        .ok_or(AuthnError::NoUser)?;
    let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in headers {
        let key = key.as_str();
        for prefix in &cfg.extra_prefixes {
            let p = prefix.to_ascii_lowercase();
            if let Some(rest) = key.strip_prefix(p.as_str())
                && let Ok(v) = value.to_str()
            {
                extra.entry(unescape(rest)).or_default().push(v.to_owned());
            }
        }
    }
    Ok(User {
        name,
        groups: values(&cfg.group_headers),
        uid: values(&cfg.uid_headers).into_iter().next(),
        extra,
    })
}

/// Extra header keys are percent-encoded by kube-apiserver.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Verifies client certificates against whatever CA is current; connections
/// without a certificate are accepted (and then get 401 where it matters).
/// Before the ConfigMap is read, every client certificate is refused.
#[derive(Debug)]
struct DynamicVerifier {
    auth: RequestHeaderAuth,
}

impl DynamicVerifier {
    fn inner(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.auth.current().map(|(_, v)| v)
    }
}

fn not_loaded(what: &str) -> rustls::Error {
    rustls::Error::General(what.into())
}

impl ClientCertVerifier for DynamicVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner()
            .ok_or_else(|| not_loaded("the request-header CA is not loaded yet"))?
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()
            .ok_or_else(|| not_loaded("no client authentication yet"))?
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner()
            .ok_or_else(|| not_loaded("no client authentication yet"))?
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(allowed: &[&str]) -> RequestHeaderConfig {
        let mut data = BTreeMap::new();
        data.insert("requestheader-client-ca-file".into(), "PEM".into());
        data.insert(
            "requestheader-allowed-names".into(),
            serde_json::to_string(allowed).unwrap(),
        );
        data.insert(
            "requestheader-username-headers".into(),
            r#"["X-Remote-User"]"#.into(),
        );
        data.insert(
            "requestheader-group-headers".into(),
            r#"["X-Remote-Group"]"#.into(),
        );
        data.insert(
            "requestheader-extra-headers-prefix".into(),
            r#"["X-Remote-Extra-"]"#.into(),
        );
        RequestHeaderConfig::from_configmap(&data).unwrap()
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        h.insert("x-remote-extra-scopes%2fa", "s1".parse().unwrap());
        h
    }

    #[test]
    fn trusted_front_proxy_names_the_user() {
        let peer = Peer {
            verified_cn: Some("front-proxy-client".into()),
        };
        let u = authenticate(&cfg(&["front-proxy-client"]), &peer, &headers()).unwrap();
        assert_eq!(u.name, "alice");
        assert_eq!(u.groups, vec!["dev", "system:authenticated"]);
        assert_eq!(u.extra.get("scopes/a").unwrap(), &vec!["s1".to_owned()]);
    }

    /// The ConfigMap's data with a real CA and `allowed` as the raw value
    /// of requestheader-allowed-names.
    fn data(allowed: &str) -> BTreeMap<String, String> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        let mut data = BTreeMap::new();
        data.insert("requestheader-client-ca-file".into(), ca);
        data.insert("requestheader-allowed-names".into(), allowed.into());
        data
    }

    #[test]
    fn allowed_names_that_do_not_parse_keep_the_last_good_configuration() {
        let auth = RequestHeaderAuth::default();
        let mallory = Peer {
            verified_cn: Some("mallory".into()),
        };
        // Not configured yet, and a bad ConfigMap does not configure it.
        let bad = data(r#"["front-proxy-client""#);
        assert!(matches!(
            auth.update(&bad),
            Err(ConfigError::BadList {
                key: "requestheader-allowed-names",
                ..
            })
        ));
        assert!(!auth.is_ready());
        assert_eq!(
            auth.authenticate(&mallory, &headers()),
            Err(AuthnError::NotConfigured)
        );

        auth.update(&data(r#"["front-proxy-client"]"#)).unwrap();
        let good = auth.config().unwrap();
        assert_eq!(good.allowed_names, vec!["front-proxy-client"]);
        for garbled in [
            r#"["front-proxy-client""#,
            "front-proxy-client",
            "{}",
            "[1]",
        ] {
            assert!(auth.update(&data(garbled)).is_err(), "{garbled}");
            // Still the old list: mallory's certificate is not "any name".
            assert_eq!(auth.config().as_ref(), Some(&good), "{garbled}");
            assert_eq!(
                auth.authenticate(&mallory, &headers()),
                Err(AuthnError::NotAllowed("mallory".into()))
            );
        }
        // A CA that does not load keeps it too.
        let mut no_ca = data(r#"["someone-else"]"#);
        no_ca.insert(
            "requestheader-client-ca-file".into(),
            "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n".into(),
        );
        assert!(matches!(auth.update(&no_ca), Err(ConfigError::BadCa(_))));
        no_ca.remove("requestheader-client-ca-file");
        assert_eq!(auth.update(&no_ca), Err(ConfigError::NoClientCa));
        assert_eq!(auth.config().as_ref(), Some(&good));
    }

    #[test]
    fn unset_allowed_names_mean_any_name_from_the_ca() {
        // kube-apiserver writes an unset list as `null` (Go's nil slice);
        // Kubernetes' extension API servers read that, and "", as empty.
        for unset in ["null", "", "[]"] {
            let cfg = RequestHeaderConfig::from_configmap(&data(unset)).unwrap();
            assert!(cfg.allowed_names.is_empty(), "{unset:?}");
            assert_eq!(cfg.username_headers, vec!["X-Remote-User"]);
        }
    }

    #[test]
    fn headers_without_a_trusted_certificate_count_for_nothing() {
        let none = Peer::default();
        assert_eq!(
            authenticate(&cfg(&["front-proxy-client"]), &none, &headers()),
            Err(AuthnError::NoCertificate)
        );
        let other = Peer {
            verified_cn: Some("mallory".into()),
        };
        assert_eq!(
            authenticate(&cfg(&["front-proxy-client"]), &other, &headers()),
            Err(AuthnError::NotAllowed("mallory".into()))
        );
        // An empty allowed list accepts any certificate from the CA.
        assert!(authenticate(&cfg(&[]), &other, &headers()).is_ok());
        let peer = Peer {
            verified_cn: Some("front-proxy-client".into()),
        };
        assert_eq!(
            authenticate(&cfg(&["front-proxy-client"]), &peer, &HeaderMap::new()),
            Err(AuthnError::NoUser)
        );
    }
}
