//! ironvirt's self-managed PKI: a CA in a Secret, the certificates of
//! ironvirt-api (serving, and the client certificate it presents to handlers)
//! and of the handlers' stream servers, rotated before they expire, and the
//! CA bundle patched into the APIService and the webhook configurations.
//!
//! The pipeline is the usual one, a file per step:
//! 1. `apply.rs` reads the three Secrets;
//! 2. `plan.rs`, [`plan`] (pure): what to issue and why, given the Secrets'
//!    data (read by `parse.rs`) and `now`;
//! 3. `issue.rs`, [`issue`]: builds the desired Secret data; only key
//!    generation is random;
//! 4. `apply.rs` writes the Secrets that changed;
//! 5. `patches.rs`, [`apiservice_patch`] / [`webhook_patch`] (pure): the
//!    caBundle patches, `None` when nothing differs, and [`restart_patch`]
//!    (pure): a pod-template annotation carrying a fingerprint of the mounted
//!    Secret, so that workloads that read their certificates only at start get
//!    restarted when they change; `apply.rs` sends them.
//!
//! Rotation: every certificate is replaced once 2/3 of its lifetime has
//! passed. A new CA joins the bundle (`ca.crt` in every Secret, and every
//! caBundle) next to the old one, which stays until it expires; leaf
//! certificates move to the new CA only after it has been in the bundle for
//! `ca_propagation`, so every verifier trusts it before anyone presents it.
//! The handler's server name and ironvirt-api's client name are part of the
//! components' contract: [`ironvirt_crds::wire::HANDLER_SERVER_NAME`] and
//! [`ironvirt_crds::wire::API_CLIENT_CN`].

mod apply;
pub mod handler_csr;
mod issue;
mod parse;
mod patches;
mod plan;
#[cfg(test)]
mod tests;

use std::time::Duration;

use ironvirt_crds::duration::parse_duration;

pub use apply::{reconcile_once, run};
pub use issue::{Desired, issue};
pub use parse::{CertInfo, parse_certs};
pub use patches::{
    apiservice_patch, fingerprint, mutating_clients, restart_patch, validating_clients,
    webhook_patch,
};
pub use plan::{CaPlan, Existing, Plan, Reason, plan};

/// Secret data keys (the `kubernetes.io/tls` ones, plus the client pair).
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const CA_CRT: &str = "ca.crt";
pub const CLIENT_CRT: &str = "client.crt";
pub const CLIENT_KEY: &str = "client.key";

/// Prefix of the CA's common name; the issue time follows (`ironvirt-ca@<unix>`),
/// so that every CA generation has a distinct subject.
pub const CA_CN_PREFIX: &str = "ironvirt-ca@";
/// Pod-template annotation with the fingerprint of the Secret a workload mounts.
pub const FINGERPRINT_ANNOTATION: &str = "ironvirt.io/tls-fingerprint";
/// Field manager of the certificate manager's writes.
pub const MANAGER: &str = "ironvirt-operator-certs";

/// The names of the one handler certificate the operator issues today
/// (Secret [`ironvirt_crds::wire::HANDLER_TLS_SECRET`], mounted by every handler pod): the shared
/// name, which ironvirt-api verifies with `--shared-handler-certificate`
/// (deploy/), and `*.ironvirt-handler`. The wildcard does not stand in for
/// the per-node name [`ironvirt_crds::wire::handler_server_name`]: rustls
/// refuses wildcards followed by one label (found installing deploy/ on the
/// test bed's kubelet nodes: every console failed with "certificate not
/// valid for name").
///
/// Interim: with one certificate for every node, a node's handler can still
/// answer for another node. The per-node way is [`handler_csr`]: each handler
/// asks for a certificate naming its node, and the operator signs it only
/// for the node its ServiceAccount token names. The test bed already gives
/// each handler its own certificate (testbed/src/handlers.rs).
pub fn shared_handler_names() -> Vec<String> {
    vec![
        ironvirt_crds::wire::HANDLER_SERVER_NAME.to_owned(),
        format!("*.{}", ironvirt_crds::wire::HANDLER_SERVER_NAME),
    ]
}

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
            handler_secret: ironvirt_crds::wire::HANDLER_TLS_SECRET.into(),
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
    #[arg(long, default_value = ironvirt_crds::wire::HANDLER_TLS_SECRET)]
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
    /// Lifetime of a CA (ms, s, m, h or d).
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

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
