//! Who is calling: kube-apiserver, proxying for a user.
//!
//! The aggregated API is reached only through kube-apiserver, which presents
//! its front-proxy client certificate and names the user in X-Remote-*
//! headers. Those headers are trusted only when the connection's client
//! certificate chains to the request-header CA and its CN is one of the
//! allowed names. Both come from the ConfigMap
//! kube-system/extension-apiserver-authentication and are re-read when it
//! changes ([`RequestHeaderAuth::watch`]).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use http::HeaderMap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use kube::runtime::watcher;
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

fn json_list(data: &BTreeMap<String, String>, key: &str, default: &[&str]) -> Vec<String> {
    data.get(key)
        .and_then(|v| serde_json::from_str::<Vec<String>>(v).ok())
        .unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
}

impl RequestHeaderConfig {
    /// Reads the settings from the ConfigMap's data.
    pub fn from_configmap(data: &BTreeMap<String, String>) -> Option<Self> {
        let client_ca = data.get("requestheader-client-ca-file")?.clone();
        Some(RequestHeaderConfig {
            client_ca,
            allowed_names: json_list(data, "requestheader-allowed-names", &[]),
            username_headers: json_list(data, "requestheader-username-headers", &["X-Remote-User"]),
            group_headers: json_list(data, "requestheader-group-headers", &["X-Remote-Group"]),
            uid_headers: json_list(data, "requestheader-uid-headers", &["X-Remote-Uid"]),
            extra_prefixes: json_list(
                data,
                "requestheader-extra-headers-prefix",
                &["X-Remote-Extra-"],
            ),
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

fn verifier_for(pem: &str) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("request-header CA: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("request-header CA: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| format!("request-header CA: {e}"))
}

impl RequestHeaderAuth {
    /// Installs new settings.
    pub fn set(&self, cfg: RequestHeaderConfig) -> Result<(), String> {
        let verifier = verifier_for(&cfg.client_ca)?;
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *inner = Some((cfg, verifier));
        Ok(())
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
        let mut stream = watcher(api, wc).boxed();
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
                match RequestHeaderConfig::from_configmap(&data) {
                    Some(cfg) => {
                        let names = cfg.allowed_names.clone();
                        match self.set(cfg) {
                            Ok(()) => {
                                tracing::info!(allowed_names = ?names, "front-proxy authentication configured")
                            }
                            Err(e) => tracing::error!(error = %e, "bad request-header CA"),
                        }
                    }
                    None => tracing::warn!("the authentication ConfigMap has no request-header CA"),
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
