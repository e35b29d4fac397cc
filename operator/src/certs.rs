//! ironvirt's self-managed PKI: a CA in a Secret, the certificates of
//! ironvirt-api (serving, and the client certificate it presents to handlers)
//! and of the handlers' stream servers, rotated before they expire, and the
//! CA bundle patched into the APIService and the webhook configurations.
//!
//! The pipeline is the usual one: read the three Secrets → [`plan`] (pure:
//! what to issue and why, given the Secrets' data and `now`) → [`issue`]
//! (builds the desired Secret data; only key generation is random) → write
//! the Secrets that changed → [`apiservice_patch`] / [`webhook_patch`] (pure:
//! the caBundle patches, `None` when nothing differs) → [`restart_patch`]
//! (pure: a pod-template annotation carrying a fingerprint of the mounted
//! Secret, so that workloads that read their certificates only at start get
//! restarted when they change).
//!
//! Rotation: every certificate is replaced once 2/3 of its lifetime has
//! passed. A new CA joins the bundle (`ca.crt` in every Secret, and every
//! caBundle) next to the old one, which stays until it expires; leaf
//! certificates move to the new CA only after it has been in the bundle for
//! `ca_propagation`, so every verifier trusts it before anyone presents it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use serde_json::json;

/// Secret data keys (the `kubernetes.io/tls` ones, plus the client pair).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const CLIENT_CRT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

/// The name handlers' stream certificates carry (ironvirt-api verifies it
/// whatever address it dialled).
pub const HANDLER_SERVER_NAME: &str = "ironvirt-handler";
/// The CN of ironvirt-api's client certificate, the only one handlers accept.
pub const API_CLIENT_CN: &str = "ironvirt-api";
/// Prefix of the CA's common name; the issue time follows (`ironvirt-ca@<unix>`),
/// so that every CA generation has a distinct subject.
pub const CA_CN_PREFIX: &str = "ironvirt-ca@";
/// Pod-template annotation with the fingerprint of the Secret a workload mounts.
pub const FINGERPRINT_ANNOTATION: &str = "ironvirt.io/tls-fingerprint";
/// Field manager of the certificate manager's writes.
pub const MANAGER: &str = "ironvirt-operator-certs";

/// What the certificate manager manages, and where.
#[derive(Debug, Clone)]
pub struct CertConfig {
    /// Namespace of the Secrets, the Service and the restarted workloads.
    pub namespace: String,
    /// ironvirt-api's Service (its serving certificate names `<service>.<namespace>.svc`).
    pub service: String,
    pub ca_secret: String,
    pub api_secret: String,
    pub handler_secret: String,
    pub ca_validity: Duration,
    pub leaf_validity: Duration,
    /// How long a new CA is in the bundles before leaves are issued by it.
    pub ca_propagation: Duration,
    /// The APIService whose caBundle is kept current (none when `None`).
    pub apiservice: Option<String>,
    pub validating_webhook: Option<String>,
    pub mutating_webhook: Option<String>,
    /// Deployment that mounts the API Secret, restarted when it changes.
    pub api_deployment: Option<String>,
    /// DaemonSet that mounts the handler Secret, restarted when it changes.
    pub handler_daemonset: Option<String>,
    /// The longest wait between two checks.
    pub resync: Duration,
}

impl Default for CertConfig {
    fn default() -> Self {
        CertConfig {
            namespace: "ironvirt-system".into(),
            service: "ironvirt-api".into(),
            ca_secret: "ironvirt-ca".into(),
            api_secret: "ironvirt-api-tls".into(),
            handler_secret: "ironvirt-handler-tls".into(),
            ca_validity: Duration::from_secs(5 * 365 * 86400),
            leaf_validity: Duration::from_secs(365 * 86400),
            ca_propagation: Duration::from_secs(3600),
            apiservice: Some("v1.subresources.kubevirt.io".into()),
            validating_webhook: Some("ironvirt-validator".into()),
            mutating_webhook: Some("ironvirt-mutator".into()),
            api_deployment: Some("ironvirt-api".into()),
            handler_daemonset: Some("ironvirt-handler".into()),
            resync: Duration::from_secs(600),
        }
    }
}

impl CertConfig {
    /// DNS names of ironvirt-api's serving certificate.
    pub fn api_dns_names(&self) -> Vec<String> {
        let (s, ns) = (&self.service, &self.namespace);
        vec![
            s.clone(),
            format!("{s}.{ns}"),
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ]
    }
}

/// The operator's certificate flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CertArgs {
    /// Run the certificate manager (leader only): the CA and the TLS Secrets of
    /// ironvirt-api and the handlers, and the caBundles that name the CA.
    #[arg(long)]
    pub manage_certs: bool,
    /// Namespace of the TLS Secrets, ironvirt-api's Service and the restarted workloads.
    #[arg(long, default_value = "ironvirt-system")]
    pub cert_namespace: String,
    /// ironvirt-api's Service (the serving certificate names <service>.<namespace>.svc).
    #[arg(long, default_value = "ironvirt-api")]
    pub cert_service: String,
    /// Secret of the CA.
    #[arg(long, default_value = "ironvirt-ca")]
    pub cert_ca_secret: String,
    /// Secret of ironvirt-api's serving and client certificates.
    #[arg(long, default_value = "ironvirt-api-tls")]
    pub cert_api_secret: String,
    /// Secret of the handlers' stream certificate.
    #[arg(long, default_value = "ironvirt-handler-tls")]
    pub cert_handler_secret: String,
    /// APIService whose caBundle is kept current ("" for none).
    #[arg(long, default_value = "v1.subresources.kubevirt.io")]
    pub cert_apiservice: String,
    /// ValidatingWebhookConfiguration whose caBundles are kept current ("" for none).
    #[arg(long, default_value = "ironvirt-validator")]
    pub cert_validating_webhook: String,
    /// MutatingWebhookConfiguration whose caBundles are kept current ("" for none).
    #[arg(long, default_value = "ironvirt-mutator")]
    pub cert_mutating_webhook: String,
    /// Deployment restarted when ironvirt-api's Secret changes ("" for none).
    #[arg(long, default_value = "ironvirt-api")]
    pub cert_api_deployment: String,
    /// DaemonSet restarted when the handlers' Secret changes ("" for none).
    #[arg(long, default_value = "ironvirt-handler")]
    pub cert_handler_daemonset: String,
    /// Lifetime of a CA (s, m, h or d).
    #[arg(long, default_value = "1825d", value_parser = parse_duration)]
    pub ca_validity: Duration,
    /// Lifetime of a leaf certificate.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub cert_validity: Duration,
    /// How long a new CA is in the bundles before certificates are issued by it.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ca_propagation: Duration,
    /// The longest wait between two checks.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub cert_resync: Duration,
}

impl CertArgs {
    /// The manager's settings from the flags.
    pub fn config(&self) -> CertConfig {
        let opt = |s: &String| (!s.is_empty()).then(|| s.clone());
        CertConfig {
            namespace: self.cert_namespace.clone(),
            service: self.cert_service.clone(),
            ca_secret: self.cert_ca_secret.clone(),
            api_secret: self.cert_api_secret.clone(),
            handler_secret: self.cert_handler_secret.clone(),
            ca_validity: self.ca_validity,
            leaf_validity: self.cert_validity,
            ca_propagation: self.ca_propagation,
            apiservice: opt(&self.cert_apiservice),
            validating_webhook: opt(&self.cert_validating_webhook),
            mutating_webhook: opt(&self.cert_mutating_webhook),
            api_deployment: opt(&self.cert_api_deployment),
            handler_daemonset: opt(&self.cert_handler_daemonset),
            resync: self.cert_resync,
        }
    }
}

/// Errors of the certificate manager.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serializing a patch: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error("time {0} is out of range for a certificate")]
    Time(i64),
    #[error("{0}")]
    Invalid(String),
}

/// Parses a duration such as `90s`, `30m`, `8760h` or `365d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "s" | "" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86400),
        _ => return Err(format!("invalid unit in {s:?}; use s, m, h or d")),
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// What a parsed certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub pem: String,
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// DER SubjectPublicKeyInfo, to match the certificate with its key.
    spki: Vec<u8>,
}

impl CertInfo {
    /// When 2/3 of the lifetime has passed.
    pub fn renew_at(&self) -> i64 {
        let life = self.not_after.saturating_sub(self.not_before);
        self.not_before.saturating_add(life / 3 * 2)
    }

    fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// Every certificate in a PEM buffer (unparseable blocks are skipped).
pub fn parse_certs(pem: &[u8]) -> Vec<CertInfo> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            continue;
        }
        let Ok(cert) = block.parse_x509() else {
            continue;
        };
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let text = pem_encode(&block.contents);
        out.push(CertInfo {
            pem: text,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            dns_names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            spki: cert.public_key().raw.to_vec(),
        });
    }
    out
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// The first certificate of `cert_pem` if `key_pem` is its key.
fn cert_with_key(
    cert_pem: Option<&Vec<u8>>,
    key_pem: Option<&Vec<u8>>,
) -> Result<CertInfo, String> {
    let cert = cert_pem
        .map(|c| parse_certs(c))
        .and_then(|c| c.into_iter().next())
        .ok_or("no certificate")?;
    let key = key_pem
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or("no key")?;
    let key = KeyPair::from_pem(key).map_err(|e| format!("bad key: {e}"))?;
    if key.subject_public_key_info() != cert.spki {
        return Err("the key does not match the certificate".into());
    }
    Ok(cert)
}

/// The data of the three Secrets as read (`None`: no such Secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub ca: Option<BTreeMap<String, Vec<u8>>>,
    pub api: Option<BTreeMap<String, Vec<u8>>>,
    pub handler: Option<BTreeMap<String, Vec<u8>>>,
}

/// Why a certificate is (re)issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Absent, unparseable or not matching its key.
    Missing(String),
    /// 2/3 of its lifetime has passed (or it expired).
    Expiring,
    /// Its names differ from what is configured.
    NamesChanged,
    /// Its issuer is no longer in the bundle.
    Untrusted,
    /// A newer CA has been in the bundle for the propagation time.
    NewCa,
}

/// The CA decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaPlan {
    /// Keep the signing CA.
    Keep(CertInfo),
    /// Generate a new CA (the old one, if any, stays in the bundle until it expires).
    Generate(Reason),
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ca: CaPlan,
    /// The trust bundle without the CA still to be generated: unexpired CA
    /// certificates from the old bundle, signing CA first.
    pub kept_bundle: Vec<CertInfo>,
    pub api_serving: Option<Reason>,
    pub api_client: Option<Reason>,
    pub handler_serving: Option<Reason>,
    /// When to look again (unix seconds), however quiet things are.
    pub next_check: i64,
}

impl Plan {
    /// Whether a certificate is issued.
    pub fn issues_anything(&self) -> bool {
        matches!(self.ca, CaPlan::Generate(_))
            || self.api_serving.is_some()
            || self.api_client.is_some()
            || self.handler_serving.is_some()
    }
}

/// The subject of the CA that signs new leaves: known, or yet to be generated.
struct Signer<'a> {
    subject: Option<&'a str>,
    not_before: i64,
}

/// What a leaf should be.
struct LeafWant<'a> {
    common_name: &'a str,
    dns_names: &'a [String],
}

fn plan_leaf(
    cert: Result<CertInfo, String>,
    want: &LeafWant<'_>,
    signer: &Signer<'_>,
    bundle: &[CertInfo],
    cfg: &CertConfig,
    now: i64,
    next: &mut i64,
) -> Option<Reason> {
    let cert = match cert {
        Ok(c) => c,
        Err(e) => return Some(Reason::Missing(e)),
    };
    if cert.common_name.as_deref() != Some(want.common_name) || cert.dns_names != want.dns_names {
        return Some(Reason::NamesChanged);
    }
    if now >= cert.renew_at() {
        return Some(Reason::Expiring);
    }
    if !bundle.iter().any(|c| c.subject == cert.issuer) {
        return Some(Reason::Untrusted);
    }
    if signer.subject != Some(cert.issuer.as_str()) {
        let move_at = signer.not_before.saturating_add(secs(cfg.ca_propagation));
        if now >= move_at {
            return Some(Reason::NewCa);
        }
        *next = (*next).min(move_at);
    }
    *next = (*next).min(cert.renew_at());
    None
}

/// Decides what to issue, given the Secrets' data and `now`.
pub fn plan(existing: &Existing, cfg: &CertConfig, now: Timestamp) -> Plan {
    let now = now.as_second();
    let mut next = now.saturating_add(secs(cfg.resync));
    let ca_data = existing.ca.as_ref();
    let old_bundle: Vec<CertInfo> = ca_data
        .and_then(|d| d.get(CA_CRT))
        .map(|b| parse_certs(b))
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.is_ca && !c.expired(now))
        .collect();
    let signing = cert_with_key(
        ca_data.and_then(|d| d.get(TLS_CRT)),
        ca_data.and_then(|d| d.get(TLS_KEY)),
    )
    .and_then(|c| {
        if c.is_ca {
            Ok(c)
        } else {
            Err("not a CA certificate".into())
        }
    });
    let ca = match signing {
        Err(e) => CaPlan::Generate(Reason::Missing(e)),
        Ok(c) if now >= c.renew_at() => CaPlan::Generate(Reason::Expiring),
        Ok(c) => {
            next = next.min(c.renew_at());
            CaPlan::Keep(c)
        }
    };
    let mut kept_bundle = Vec::new();
    if let CaPlan::Keep(c) = &ca {
        kept_bundle.push(c.clone());
    }
    for c in old_bundle {
        if !kept_bundle.iter().any(|k| k.pem == c.pem) {
            kept_bundle.push(c);
        }
    }
    // The bundle shrinks when one of its CAs expires.
    for c in &kept_bundle {
        next = next.min(c.not_after);
    }
    let signer = match &ca {
        CaPlan::Keep(c) => Signer {
            subject: Some(c.subject.as_str()),
            not_before: c.not_before,
        },
        CaPlan::Generate(_) => Signer {
            subject: None,
            not_before: now,
        },
    };
    let api_dns = cfg.api_dns_names();
    let api = existing.api.as_ref();
    let api_serving = plan_leaf(
        cert_with_key(
            api.and_then(|d| d.get(TLS_CRT)),
            api.and_then(|d| d.get(TLS_KEY)),
        ),
        &LeafWant {
            common_name: &format!("{}.{}.svc", cfg.service, cfg.namespace),
            dns_names: &api_dns,
        },
        &signer,
        &kept_bundle,
        cfg,
        now,
        &mut next,
    );
    let api_client = plan_leaf(
        cert_with_key(
            api.and_then(|d| d.get(CLIENT_CRT)),
            api.and_then(|d| d.get(CLIENT_KEY)),
        ),
        &LeafWant {
            common_name: API_CLIENT_CN,
            dns_names: &[],
        },
        &signer,
        &kept_bundle,
        cfg,
        now,
        &mut next,
    );
    let handler = existing.handler.as_ref();
    let handler_serving = plan_leaf(
        cert_with_key(
            handler.and_then(|d| d.get(TLS_CRT)),
            handler.and_then(|d| d.get(TLS_KEY)),
        ),
        &LeafWant {
            common_name: HANDLER_SERVER_NAME,
            dns_names: &[HANDLER_SERVER_NAME.to_owned()],
        },
        &signer,
        &kept_bundle,
        cfg,
        now,
        &mut next,
    );
    Plan {
        ca,
        kept_bundle,
        api_serving,
        api_client,
        handler_serving,
        next_check: next.max(now.saturating_add(1)),
    }
}

/// The desired data of the three Secrets, and the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub ca: BTreeMap<String, Vec<u8>>,
    pub api: BTreeMap<String, Vec<u8>>,
    pub handler: BTreeMap<String, Vec<u8>>,
    /// PEM CA bundle: what every caBundle and `ca.crt` carries.
    pub bundle: Vec<u8>,
}

fn offset(t: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| CertError::Time(t))
}

fn generate_ca(now: i64, cfg: &CertConfig) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_CN_PREFIX}{now}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ironvirt");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now)?;
    params.not_after = offset(now.saturating_add(secs(cfg.ca_validity)))?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[derive(Clone, Copy)]
enum Usage {
    Server,
    Client,
}

fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    issuer_not_after: i64,
    common_name: &str,
    dns_names: &[String],
    usage: Usage,
    now: i64,
    cfg: &CertConfig,
) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for d in dns_names {
        let name = d
            .as_str()
            .try_into()
            .map_err(|_| CertError::Invalid(format!("{d:?} is not a valid DNS name")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    // A minute of slack for clocks slightly behind ours.
    params.not_before = offset(now.saturating_sub(60))?;
    params.not_after = offset(
        now.saturating_add(secs(cfg.leaf_validity))
            .min(issuer_not_after),
    )?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
}

/// Builds the desired Secret data from `plan`: new certificates where it
/// says so, everything else as it was, and `ca.crt` = the bundle everywhere.
pub fn issue(
    existing: &Existing,
    plan: &Plan,
    cfg: &CertConfig,
    now: Timestamp,
) -> Result<Desired, CertError> {
    let now = now.as_second();
    let empty = BTreeMap::new();
    let old_ca = existing.ca.as_ref().unwrap_or(&empty);
    let (ca_cert, ca_key) = match &plan.ca {
        CaPlan::Keep(c) => (
            c.pem.clone(),
            old_ca
                .get(TLS_KEY)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
        ),
        CaPlan::Generate(_) => generate_ca(now, cfg)?,
    };
    let signing = parse_certs(ca_cert.as_bytes())
        .into_iter()
        .next()
        .ok_or_else(|| CertError::Invalid("the CA certificate does not parse".into()))?;
    let mut bundle_certs = vec![signing.clone()];
    bundle_certs.extend(
        plan.kept_bundle
            .iter()
            .filter(|c| c.pem != signing.pem)
            .cloned(),
    );
    let bundle: Vec<u8> = bundle_certs.iter().flat_map(|c| c.pem.bytes()).collect();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;

    let mut ca = BTreeMap::new();
    ca.insert(TLS_CRT.to_owned(), ca_cert.into_bytes());
    ca.insert(TLS_KEY.to_owned(), ca_key.into_bytes());
    ca.insert(CA_CRT.to_owned(), bundle.clone());

    let mut api = existing.api.clone().unwrap_or_default();
    if plan.api_serving.is_some() {
        let (c, k) = issue_leaf(
            &issuer,
            signing.not_after,
            &format!("{}.{}.svc", cfg.service, cfg.namespace),
            &cfg.api_dns_names(),
            Usage::Server,
            now,
            cfg,
        )?;
        api.insert(TLS_CRT.to_owned(), c);
        api.insert(TLS_KEY.to_owned(), k);
    }
    if plan.api_client.is_some() {
        let (c, k) = issue_leaf(
            &issuer,
            signing.not_after,
            API_CLIENT_CN,
            &[],
            Usage::Client,
            now,
            cfg,
        )?;
        api.insert(CLIENT_CRT.to_owned(), c);
        api.insert(CLIENT_KEY.to_owned(), k);
    }
    api.insert(CA_CRT.to_owned(), bundle.clone());

    let mut handler = existing.handler.clone().unwrap_or_default();
    if plan.handler_serving.is_some() {
        let (c, k) = issue_leaf(
            &issuer,
            signing.not_after,
            HANDLER_SERVER_NAME,
            &[HANDLER_SERVER_NAME.to_owned()],
            Usage::Server,
            now,
            cfg,
        )?;
        handler.insert(TLS_CRT.to_owned(), c);
        handler.insert(TLS_KEY.to_owned(), k);
    }
    handler.insert(CA_CRT.to_owned(), bundle.clone());
    Ok(Desired {
        ca,
        api,
        handler,
        bundle,
    })
}

/// The merge patch that sets an APIService's caBundle, if it differs. An
/// APIService without a Service (served locally) takes no caBundle.
pub fn apiservice_patch(current: &APIService, bundle: &[u8]) -> Option<serde_json::Value> {
    let spec = current.spec.as_ref()?;
    spec.service.as_ref()?;
    if spec.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle) {
        return None;
    }
    Some(json!({"spec": {"caBundle": ByteString(bundle.to_vec()), "insecureSkipTLSVerify": null}}))
}

/// A JSON patch that sets `caBundle` on every webhook whose caBundle differs,
/// each guarded by a test of the webhook's name (so a concurrent reorder
/// fails the patch instead of patching the wrong entry).
pub fn webhook_patch<'a>(
    configs: impl IntoIterator<Item = (&'a str, &'a WebhookClientConfig)>,
    bundle: &[u8],
) -> Option<json_patch::Patch> {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut ops = Vec::new();
    for (i, (name, cc)) in configs.into_iter().enumerate() {
        if cc.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle) {
            continue;
        }
        ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": name}));
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    if ops.is_empty() {
        return None;
    }
    serde_json::from_value(serde_json::Value::Array(ops)).ok()
}

/// The webhooks of a ValidatingWebhookConfiguration, as (name, clientConfig).
pub fn validating_clients(c: &ValidatingWebhookConfiguration) -> Vec<(&str, &WebhookClientConfig)> {
    c.webhooks
        .iter()
        .flatten()
        .map(|w| (w.name.as_str(), &w.client_config))
        .collect()
}

/// The webhooks of a MutatingWebhookConfiguration, as (name, clientConfig).
pub fn mutating_clients(c: &MutatingWebhookConfiguration) -> Vec<(&str, &WebhookClientConfig)> {
    c.webhooks
        .iter()
        .flatten()
        .map(|w| (w.name.as_str(), &w.client_config))
        .collect()
}

/// A stable fingerprint (FNV-1a, 64 bits, hex) of Secret data: change
/// detection only, not security.
pub fn fingerprint(data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (k, v) in data {
        eat(k.as_bytes());
        eat(&[0]);
        eat(v);
        eat(&[0]);
    }
    format!("{h:016x}")
}

/// The merge patch that puts `fingerprint` on a pod template, if it is not
/// there yet (changing the template rolls the workload).
pub fn restart_patch(
    template_meta: Option<&ObjectMeta>,
    fingerprint: &str,
) -> Option<serde_json::Value> {
    let current = template_meta
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(FINGERPRINT_ANNOTATION));
    if current.map(String::as_str) == Some(fingerprint) {
        return None;
    }
    Some(
        json!({"spec": {"template": {"metadata": {"annotations": {FINGERPRINT_ANNOTATION: fingerprint}}}}}),
    )
}

fn secret_object(name: &str, data: &BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/part-of".to_owned(),
                    "ironvirt".to_owned(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ironvirt-operator".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Creates the Secret, or replaces its data (guarded by the resourceVersion read).
async fn write_secret(
    api: &Api<Secret>,
    name: &str,
    current: Option<&Secret>,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<(), CertError> {
    let mut desired = secret_object(name, data);
    match current {
        None => {
            api.create(&PostParams::default(), &desired).await?;
        }
        Some(cur) => {
            desired.metadata = cur.metadata.clone();
            // The type is immutable: keep whatever the Secret was created with.
            desired.type_ = cur.type_.clone();
            let labels = desired.metadata.labels.get_or_insert_default();
            labels.insert("app.kubernetes.io/part-of".into(), "ironvirt".into());
            labels.insert(
                "app.kubernetes.io/managed-by".into(),
                "ironvirt-operator".into(),
            );
            desired.metadata.managed_fields = None;
            api.replace(name, &PostParams::default(), &desired).await?;
        }
    }
    Ok(())
}

/// One pass: read, plan, issue, write what changed, patch the caBundles and
/// the restart annotations. Returns when to look again.
pub async fn reconcile_once(client: &Client, cfg: &CertConfig) -> Result<Duration, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let ca = secrets.get_opt(&cfg.ca_secret).await?;
    let api = secrets.get_opt(&cfg.api_secret).await?;
    let handler = secrets.get_opt(&cfg.handler_secret).await?;
    let existing = Existing {
        ca: ca.as_ref().map(secret_data),
        api: api.as_ref().map(secret_data),
        handler: handler.as_ref().map(secret_data),
    };
    let now = Timestamp::now();
    let plan = plan(&existing, cfg, now);
    if let CaPlan::Generate(reason) = &plan.ca {
        tracing::info!(secret = %cfg.ca_secret, ?reason, "issuing a new CA");
    }
    for (what, reason) in [
        ("api serving", &plan.api_serving),
        ("api client", &plan.api_client),
        ("handler serving", &plan.handler_serving),
    ] {
        if let Some(reason) = reason {
            tracing::info!(certificate = what, ?reason, "issuing a certificate");
        }
    }
    let desired = issue(&existing, &plan, cfg, now)?;
    // The CA first: a crash after it leaves nothing that it did not sign.
    for (name, current, old, new) in [
        (&cfg.ca_secret, ca.as_ref(), &existing.ca, &desired.ca),
        (&cfg.api_secret, api.as_ref(), &existing.api, &desired.api),
        (
            &cfg.handler_secret,
            handler.as_ref(),
            &existing.handler,
            &desired.handler,
        ),
    ] {
        if old.as_ref() != Some(new) {
            write_secret(&secrets, name, current, new).await?;
            tracing::info!(secret.namespace = %cfg.namespace, secret.name = %name, "secret written");
        }
    }
    patch_bundles(client, cfg, &desired.bundle).await?;
    restart_workloads(client, cfg, &desired).await?;
    let wait = plan.next_check.saturating_sub(now.as_second());
    Ok(Duration::from_secs(u64::try_from(wait).unwrap_or(1)).min(cfg.resync))
}

async fn patch_bundles(client: &Client, cfg: &CertConfig, bundle: &[u8]) -> Result<(), CertError> {
    let pp = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    if let Some(name) = &cfg.apiservice {
        let api: Api<APIService> = Api::all(client.clone());
        match api.get_opt(name).await? {
            None => tracing::debug!(apiservice = %name, "no such APIService yet"),
            Some(cur) => {
                if let Some(p) = apiservice_patch(&cur, bundle) {
                    api.patch(name, &pp, &Patch::Merge(&p)).await?;
                    tracing::info!(apiservice = %name, "caBundle patched");
                }
            }
        }
    }
    if let Some(name) = &cfg.validating_webhook {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        if let Some(cur) = api.get_opt(name).await?
            && let Some(p) = webhook_patch(validating_clients(&cur), bundle)
        {
            api.patch(name, &pp, &Patch::<()>::Json(p)).await?;
            tracing::info!(webhook = %name, "caBundle patched");
        }
    }
    if let Some(name) = &cfg.mutating_webhook {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        if let Some(cur) = api.get_opt(name).await?
            && let Some(p) = webhook_patch(mutating_clients(&cur), bundle)
        {
            api.patch(name, &pp, &Patch::<()>::Json(p)).await?;
            tracing::info!(webhook = %name, "caBundle patched");
        }
    }
    Ok(())
}

async fn restart_workloads(
    client: &Client,
    cfg: &CertConfig,
    desired: &Desired,
) -> Result<(), CertError> {
    let pp = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    if let Some(name) = &cfg.api_deployment {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &cfg.namespace);
        if let Some(d) = api.get_opt(name).await?
            && let Some(p) = restart_patch(
                d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()),
                &fingerprint(&desired.api),
            )
        {
            api.patch(name, &pp, &Patch::Merge(&p)).await?;
            tracing::info!(deployment = %d.name_any(), "certificates changed; rolling the pods");
        }
    }
    if let Some(name) = &cfg.handler_daemonset {
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), &cfg.namespace);
        if let Some(d) = api.get_opt(name).await?
            && let Some(p) = restart_patch(
                d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()),
                &fingerprint(&desired.handler),
            )
        {
            api.patch(name, &pp, &Patch::Merge(&p)).await?;
            tracing::info!(daemonset = %d.name_any(), "certificates changed; rolling the pods");
        }
    }
    Ok(())
}

/// Keeps the certificates current until the task is dropped. Errors are
/// logged and retried with backoff (1 s doubling to the resync interval).
pub async fn run(client: Client, cfg: CertConfig) {
    tracing::info!(namespace = %cfg.namespace, "certificate manager running");
    let mut failures: u32 = 0;
    loop {
        let wait = match reconcile_once(&client, &cfg).await {
            Ok(wait) => {
                failures = 0;
                wait
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = Duration::from_secs(1u64 << (failures - 1).min(9)).min(cfg.resync);
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "certificate reconcile failed");
                wait
            }
        };
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: i64) -> Timestamp {
        Timestamp::from_second(t).unwrap()
    }

    const T0: i64 = 1_800_000_000;

    fn cfg() -> CertConfig {
        CertConfig {
            ca_validity: Duration::from_secs(3000),
            leaf_validity: Duration::from_secs(600),
            ca_propagation: Duration::from_secs(100),
            resync: Duration::from_secs(10_000),
            ..CertConfig::default()
        }
    }

    fn existing(d: &Desired) -> Existing {
        Existing {
            ca: Some(d.ca.clone()),
            api: Some(d.api.clone()),
            handler: Some(d.handler.clone()),
        }
    }

    fn first(pem: &[u8]) -> CertInfo {
        parse_certs(pem).into_iter().next().unwrap()
    }

    /// Plans and issues at `t`.
    fn step(e: &Existing, cfg: &CertConfig, t: i64) -> (Plan, Desired) {
        let p = plan(e, cfg, at(t));
        let d = issue(e, &p, cfg, at(t)).unwrap();
        (p, d)
    }

    #[test]
    fn nothing_yet_issues_everything() {
        let cfg = cfg();
        let (p, d) = step(&Existing::default(), &cfg, T0);
        assert!(matches!(p.ca, CaPlan::Generate(Reason::Missing(_))));
        assert!(matches!(p.api_serving, Some(Reason::Missing(_))));
        assert!(matches!(p.api_client, Some(Reason::Missing(_))));
        assert!(matches!(p.handler_serving, Some(Reason::Missing(_))));

        let ca = first(&d.ca[TLS_CRT]);
        assert!(ca.is_ca);
        assert_eq!(ca.common_name.as_deref(), Some("ironvirt-ca@1800000000"));
        assert_eq!((ca.not_before, ca.not_after), (T0, T0 + 3000));
        assert_eq!(d.bundle, d.ca[TLS_CRT]);
        for data in [&d.api, &d.handler, &d.ca] {
            assert_eq!(data[CA_CRT], d.bundle);
        }

        let serving = first(&d.api[TLS_CRT]);
        assert_eq!(serving.issuer, ca.subject);
        assert_eq!(
            serving.dns_names,
            [
                "ironvirt-api",
                "ironvirt-api.ironvirt-system",
                "ironvirt-api.ironvirt-system.svc",
                "ironvirt-api.ironvirt-system.svc.cluster.local"
            ]
        );
        assert_eq!((serving.not_before, serving.not_after), (T0 - 60, T0 + 600));
        let client = first(&d.api[CLIENT_CRT]);
        assert_eq!(client.common_name.as_deref(), Some(API_CLIENT_CN));
        assert!(client.dns_names.is_empty());
        let handler = first(&d.handler[TLS_CRT]);
        assert_eq!(handler.dns_names, [HANDLER_SERVER_NAME]);
        assert_eq!(handler.issuer, ca.subject);
        // Every certificate matches its key.
        for (c, k) in [
            (&d.ca[TLS_CRT], &d.ca[TLS_KEY]),
            (&d.api[TLS_CRT], &d.api[TLS_KEY]),
            (&d.api[CLIENT_CRT], &d.api[CLIENT_KEY]),
            (&d.handler[TLS_CRT], &d.handler[TLS_KEY]),
        ] {
            cert_with_key(Some(c), Some(k)).unwrap();
        }
    }

    #[test]
    fn a_current_set_is_left_alone_until_two_thirds_of_a_lifetime() {
        let cfg = cfg();
        let (_, d) = step(&Existing::default(), &cfg, T0);
        let e = existing(&d);
        let (p, again) = step(&e, &cfg, T0 + 10);
        assert!(!p.issues_anything(), "{p:?}");
        assert_eq!(again, d, "nothing changes");
        // Leaves: 660 s of life from T0-60, renewed at T0-60+440.
        assert_eq!(p.next_check, T0 + 380);

        let (p, rotated) = step(&e, &cfg, T0 + 380);
        assert!(matches!(p.ca, CaPlan::Keep(_)));
        assert_eq!(p.api_serving, Some(Reason::Expiring));
        assert_eq!(p.api_client, Some(Reason::Expiring));
        assert_eq!(p.handler_serving, Some(Reason::Expiring));
        assert_eq!(rotated.ca, d.ca);
        assert_ne!(rotated.api[TLS_CRT], d.api[TLS_CRT]);
        assert_ne!(rotated.api[TLS_KEY], d.api[TLS_KEY]);
        assert_ne!(rotated.handler[TLS_CRT], d.handler[TLS_CRT]);
    }

    #[test]
    fn a_new_ca_is_bundled_first_and_used_after_propagation() {
        let cfg = cfg();
        let (_, d) = step(&Existing::default(), &cfg, T0);
        let old_ca = first(&d.ca[TLS_CRT]);
        // Fresh leaves shortly before the CA's renewal time (T0 + 2000).
        let (_, d) = step(&existing(&d), &cfg, T0 + 1900);
        let leaves_before = (d.api.clone(), d.handler.clone());

        let (p, d) = step(&existing(&d), &cfg, T0 + 2000);
        assert_eq!(p.ca, CaPlan::Generate(Reason::Expiring));
        assert_eq!(
            (&p.api_serving, &p.api_client, &p.handler_serving),
            (&None, &None, &None),
            "leaves wait until the new CA is trusted everywhere"
        );
        assert_eq!(p.next_check, T0 + 2100);
        let bundle = parse_certs(&d.bundle);
        let new_ca = first(&d.ca[TLS_CRT]);
        assert_eq!(bundle.len(), 2);
        assert_eq!(bundle[0].subject, new_ca.subject);
        assert_eq!(bundle[1].subject, old_ca.subject);
        assert_eq!(d.api[TLS_CRT], leaves_before.0[TLS_CRT]);
        assert_eq!(d.handler[TLS_CRT], leaves_before.1[TLS_CRT]);
        assert_eq!(d.api[CA_CRT], d.bundle, "the bundle reaches every Secret");

        let (p, d) = step(&existing(&d), &cfg, T0 + 2100);
        assert!(matches!(p.ca, CaPlan::Keep(_)));
        assert_eq!(p.api_serving, Some(Reason::NewCa));
        assert_eq!(p.handler_serving, Some(Reason::NewCa));
        for pem in [&d.api[TLS_CRT], &d.api[CLIENT_CRT], &d.handler[TLS_CRT]] {
            assert_eq!(first(pem).issuer, new_ca.subject);
        }
        assert_eq!(parse_certs(&d.bundle).len(), 2);

        // Once the old CA expires it leaves the bundle.
        let (_, d) = step(&existing(&d), &cfg, T0 + 3000);
        let bundle = parse_certs(&d.bundle);
        assert_eq!(bundle.len(), 1);
        assert_eq!(bundle[0].subject, new_ca.subject);
    }

    #[test]
    fn leaves_never_outlive_their_ca() {
        let cfg = CertConfig {
            leaf_validity: Duration::from_secs(10_000),
            ..cfg()
        };
        let (_, d) = step(&Existing::default(), &cfg, T0);
        assert_eq!(first(&d.api[TLS_CRT]).not_after, T0 + 3000);
    }

    #[test]
    fn a_lost_ca_reissues_every_leaf() {
        let cfg = cfg();
        let (_, d) = step(&Existing::default(), &cfg, T0);
        let e = Existing {
            ca: None,
            ..existing(&d)
        };
        let (p, d2) = step(&e, &cfg, T0 + 10);
        assert!(matches!(p.ca, CaPlan::Generate(Reason::Missing(_))));
        assert_eq!(p.api_serving, Some(Reason::Untrusted));
        assert_eq!(p.handler_serving, Some(Reason::Untrusted));
        assert_eq!(
            first(&d2.handler[TLS_CRT]).issuer,
            first(&d2.ca[TLS_CRT]).subject
        );
    }

    #[test]
    fn wrong_keys_and_changed_names_reissue() {
        let cfg = cfg();
        let (_, d) = step(&Existing::default(), &cfg, T0);
        let mut e = existing(&d);
        if let Some(h) = e.handler.as_mut() {
            h.insert(TLS_KEY.into(), d.api[TLS_KEY].clone());
        }
        let p = plan(&e, &cfg, at(T0 + 1));
        assert!(
            matches!(p.handler_serving, Some(Reason::Missing(ref m)) if m.contains("does not match"))
        );
        assert_eq!(p.api_serving, None);

        let moved = CertConfig {
            namespace: "virt".into(),
            ..cfg.clone()
        };
        let p = plan(&existing(&d), &moved, at(T0 + 1));
        assert_eq!(p.api_serving, Some(Reason::NamesChanged));
        assert_eq!(p.api_client, None);
        assert_eq!(p.handler_serving, None);

        // A CA Secret whose certificate is not a CA is replaced.
        let mut e = existing(&d);
        if let Some(ca) = e.ca.as_mut() {
            ca.insert(TLS_CRT.into(), d.handler[TLS_CRT].clone());
            ca.insert(TLS_KEY.into(), d.handler[TLS_KEY].clone());
        }
        let p = plan(&e, &cfg, at(T0 + 1));
        assert!(matches!(p.ca, CaPlan::Generate(Reason::Missing(_))));
    }

    #[test]
    fn apiservice_patch_only_when_the_bundle_differs() {
        let svc: APIService = serde_json::from_value(json!({
            "metadata": {"name": "v1.subresources.kubevirt.io"},
            "spec": {"group": "subresources.kubevirt.io", "version": "v1",
                "groupPriorityMinimum": 1000, "versionPriority": 15,
                "service": {"namespace": "ironvirt-system", "name": "ironvirt-api", "port": 443}},
        }))
        .unwrap();
        let p = apiservice_patch(&svc, b"PEM").unwrap();
        assert_eq!(p["spec"]["caBundle"], "UEVN");
        assert!(p["spec"]["insecureSkipTLSVerify"].is_null());
        let mut patched = svc.clone();
        if let Some(s) = patched.spec.as_mut() {
            s.ca_bundle = Some(ByteString(b"PEM".to_vec()));
        }
        assert_eq!(apiservice_patch(&patched, b"PEM"), None);
        let mut local = svc;
        if let Some(s) = local.spec.as_mut() {
            s.service = None;
        }
        assert_eq!(apiservice_patch(&local, b"OTHER"), None);
    }

    #[test]
    fn webhook_patch_sets_each_differing_entry_by_index_and_name() {
        let cfg: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": {"name": "ironvirt-validator"},
            "webhooks": [
                {"name": "a.ironvirt.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "clientConfig": {"service": {"namespace": "ironvirt-system", "name": "ironvirt-api"}, "caBundle": "UEVN"}},
                {"name": "b.ironvirt.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
                 "clientConfig": {"service": {"namespace": "ironvirt-system", "name": "ironvirt-api"}}},
            ],
        }))
        .unwrap();
        let p = webhook_patch(validating_clients(&cfg), b"PEM").unwrap();
        let ops = serde_json::to_value(&p).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "test", "path": "/webhooks/1/name", "value": "b.ironvirt.io"},
                {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "UEVN"},
            ])
        );
        let mut doc = serde_json::to_value(&cfg).unwrap();
        json_patch::patch(&mut doc, &p).unwrap();
        let patched: ValidatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
        assert_eq!(webhook_patch(validating_clients(&patched), b"PEM"), None);
        // A new bundle touches both.
        let p = webhook_patch(validating_clients(&patched), b"NEW").unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap().as_array().unwrap().len(),
            4
        );
    }

    #[test]
    fn restart_patch_follows_the_fingerprint() {
        let data = BTreeMap::from([("tls.crt".to_owned(), b"x".to_vec())]);
        let f = fingerprint(&data);
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint(&data.clone()), "stable");
        let mut other = data.clone();
        other.insert("ca.crt".into(), b"y".to_vec());
        assert_ne!(f, fingerprint(&other));

        let p = restart_patch(None, &f).unwrap();
        assert_eq!(
            p["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION],
            f.as_str()
        );
        let meta = ObjectMeta {
            annotations: Some(BTreeMap::from([(
                FINGERPRINT_ANNOTATION.to_owned(),
                f.clone(),
            )])),
            ..Default::default()
        };
        assert_eq!(restart_patch(Some(&meta), &f), None);
        assert!(restart_patch(Some(&meta), "0000000000000000").is_some());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(
            parse_duration("8760h"),
            Ok(Duration::from_secs(8760 * 3600))
        );
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(parse_certs(b"not pem").is_empty());
        assert!(
            parse_certs(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_empty()
        );
    }
}
