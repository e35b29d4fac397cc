//! The `ValidatingWebhookConfiguration` and `MutatingWebhookConfiguration`
//! that register the webhooks with kube-apiserver. Their rules name only
//! `kubevirt.io/v1` (or `instancetype.kubevirt.io/v1beta1`) and the exact
//! resources, scope and operations each webhook handles, so that a webhook
//! outage (failurePolicy Fail) cannot block anything else. With matchPolicy
//! Equivalent, a request in another served version (`kubevirt.io/v1alpha3`)
//! is converted and reviewed as the registered one.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations,
    ServiceReference, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::http::{GUARD_OWNERS_PATH, MUTATE_MIGRATION_PATH, MUTATE_VMI_PATH};
use super::owners;
use super::validating::Kind;

/// The name of the ValidatingWebhookConfiguration.
pub const VALIDATOR_NAME: &str = "ironvirt-validator";
/// The name of the MutatingWebhookConfiguration.
pub const MUTATOR_NAME: &str = "ironvirt-mutator";
/// Seconds kube-apiserver waits for a webhook.
const TIMEOUT_SECONDS: i32 = 10;

/// Where kube-apiserver reaches ironvirt-api.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEndpoint {
    /// A base URL such as `https://127.0.0.1:8443` (the test bed); each
    /// webhook's path is appended.
    Url(String),
    /// A Service in the cluster; each webhook's path is its `path`.
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// Its port (kube-apiserver's default is 443).
        port: Option<i32>,
    },
}

/// How kube-apiserver calls the webhooks: where, and the CA bundle (PEM) that
/// verifies ironvirt-api's serving certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookClient {
    /// Where the webhooks are served.
    pub endpoint: WebhookEndpoint,
    /// PEM CA certificates for the serving certificate.
    pub ca_bundle: Vec<u8>,
}

impl WebhookClient {
    fn config(&self, path: &str) -> WebhookClientConfig {
        let ca_bundle = Some(ByteString(self.ca_bundle.clone()));
        match &self.endpoint {
            WebhookEndpoint::Url(base) => WebhookClientConfig {
                url: Some(format!("{}{path}", base.trim_end_matches('/'))),
                ca_bundle,
                service: None,
            },
            WebhookEndpoint::Service {
                namespace,
                name,
                port,
            } => WebhookClientConfig {
                service: Some(ServiceReference {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    path: Some(path.to_owned()),
                    port: *port,
                }),
                ca_bundle,
                url: None,
            },
        }
    }
}

/// One webhook: its name, path, what it matches and its operations.
struct Hook {
    name: String,
    path: &'static str,
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    namespaced: bool,
    operations: &'static [&'static str],
}

/// The validating webhook for `kind`: `<resource>-validator.ironvirt.io`,
/// CREATE and UPDATE.
fn validator(kind: Kind) -> Hook {
    let (group, version) = kind.group_version();
    Hook {
        name: format!("{}-validator.ironvirt.io", kind.resource()),
        path: kind.path(),
        group,
        version,
        resource: kind.resource(),
        namespaced: kind.namespaced(),
        operations: &["CREATE", "UPDATE"],
    }
}

/// The mutating webhooks, each with its sideEffects: the VMI's publishes a
/// `PresetFailed` Event except on dry runs; the migration's none.
fn mutators() -> [(Hook, &'static str); 2] {
    let hook = |resource: &'static str, path: &'static str| Hook {
        name: format!("{resource}-mutator.ironvirt.io"),
        path,
        group: ironvirt_crds::GROUP,
        version: ironvirt_crds::VERSION,
        resource,
        namespaced: true,
        operations: &["CREATE"],
    };
    [
        (
            hook("virtualmachineinstances", MUTATE_VMI_PATH),
            "NoneOnDryRun",
        ),
        (
            hook("virtualmachineinstancemigrations", MUTATE_MIGRATION_PATH),
            "None",
        ),
    ]
}

impl Hook {
    /// Only `<group>/<version>` `<resource>` (not its subresources), in its scope.
    fn rules(&self) -> Option<Vec<RuleWithOperations>> {
        Some(vec![RuleWithOperations {
            api_groups: Some(vec![self.group.to_owned()]),
            api_versions: Some(vec![self.version.to_owned()]),
            operations: Some(self.operations.iter().map(|o| (*o).to_owned()).collect()),
            resources: Some(vec![self.resource.to_owned()]),
            scope: Some(
                if self.namespaced {
                    "Namespaced"
                } else {
                    "Cluster"
                }
                .to_owned(),
            ),
        }])
    }
}
fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/part-of".to_owned(),
            "ironvirt".to_owned(),
        )])),
        ..Default::default()
    }
}

/// The webhook configurations `ironvirt-validator` and `ironvirt-mutator`:
/// failurePolicy Fail, timeoutSeconds 10, admissionReviewVersions `[v1]`,
/// matchPolicy Equivalent. sideEffects is None for the validators and the
/// migration mutator, and NoneOnDryRun for the VMI mutator, which publishes a
/// `PresetFailed` Event except on dry runs.
pub fn webhook_configurations(
    client: &WebhookClient,
) -> (ValidatingWebhookConfiguration, MutatingWebhookConfiguration) {
    let validating = ValidatingWebhookConfiguration {
        metadata: metadata(VALIDATOR_NAME),
        webhooks: Some(
            Kind::ALL
                .into_iter()
                .map(validator)
                .map(|h| ValidatingWebhook {
                    client_config: client.config(h.path),
                    rules: h.rules(),
                    name: h.name,
                    failure_policy: Some("Fail".to_owned()),
                    match_policy: Some("Equivalent".to_owned()),
                    side_effects: "None".to_owned(),
                    timeout_seconds: Some(TIMEOUT_SECONDS),
                    admission_review_versions: vec!["v1".to_owned()],
                    ..Default::default()
                })
                .chain(std::iter::once(owner_guard(client)))
                .collect(),
        ),
    };
    let mutating = MutatingWebhookConfiguration {
        metadata: metadata(MUTATOR_NAME),
        webhooks: Some(
            mutators()
                .into_iter()
                .map(|(m, side_effects)| MutatingWebhook {
                    client_config: client.config(m.path),
                    rules: m.rules(),
                    name: m.name,
                    failure_policy: Some("Fail".to_owned()),
                    match_policy: Some("Equivalent".to_owned()),
                    side_effects: side_effects.to_owned(),
                    timeout_seconds: Some(TIMEOUT_SECONDS),
                    admission_review_versions: vec!["v1".to_owned()],
                    reinvocation_policy: Some("Never".to_owned()),
                    ..Default::default()
                })
                .collect(),
        ),
    };
    (validating, mutating)
}

/// The owner guard (`owners.rs`): DELETE of VMIs and VMs, sent only for the
/// garbage collector's requests (a matchCondition), failing closed: while
/// ironvirt-api is down the garbage collector's deletions of them wait (it
/// retries), and nobody else's deletions are touched.
fn owner_guard(client: &WebhookClient) -> ValidatingWebhook {
    ValidatingWebhook {
        client_config: client.config(GUARD_OWNERS_PATH),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![ironvirt_crds::GROUP.to_owned()]),
            api_versions: Some(vec![ironvirt_crds::VERSION.to_owned()]),
            operations: Some(vec!["DELETE".to_owned()]),
            resources: Some(vec![
                "virtualmachineinstances".to_owned(),
                "virtualmachines".to_owned(),
            ]),
            scope: Some("Namespaced".to_owned()),
        }]),
        match_conditions: Some(vec![MatchCondition {
            name: "garbage-collector".to_owned(),
            expression: owners::match_expression(),
        }]),
        name: "owner-deletions-guard.ironvirt.io".to_owned(),
        failure_policy: Some("Fail".to_owned()),
        match_policy: Some("Equivalent".to_owned()),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(TIMEOUT_SECONDS),
        admission_review_versions: vec!["v1".to_owned()],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::VALIDATE_VM_PATH;
    use super::*;

    #[test]
    fn url_endpoints_append_the_paths() {
        let (v, m) = webhook_configurations(&WebhookClient {
            endpoint: WebhookEndpoint::Url("https://127.0.0.1:8443/".into()),
            ca_bundle: b"PEM".to_vec(),
        });
        let hooks = v.webhooks.unwrap();
        assert_eq!(
            hooks[0].client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/webhooks/validate/virtualmachineinstances")
        );
        assert_eq!(
            hooks[0].client_config.ca_bundle,
            Some(ByteString(b"PEM".to_vec()))
        );
        let m = m.webhooks.unwrap();
        assert_eq!(
            m[0].client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/webhooks/mutate/virtualmachineinstances")
        );
        assert_eq!(m[0].side_effects, "NoneOnDryRun");
        assert_eq!(
            m[1].client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/webhooks/mutate/virtualmachineinstancemigrations")
        );
        assert_eq!(
            m[1].name,
            "virtualmachineinstancemigrations-mutator.ironvirt.io"
        );
        assert_eq!(m[1].side_effects, "None");
        let guard = hooks.last().unwrap();
        assert_eq!(guard.name, "owner-deletions-guard.ironvirt.io");
        assert_eq!(
            guard.client_config.url.as_deref(),
            Some("https://127.0.0.1:8443/webhooks/validate/owner-deletions")
        );
        let rule = &guard.rules.as_ref().unwrap()[0];
        assert_eq!(rule.operations.as_deref(), Some(&["DELETE".to_owned()][..]));
        assert_eq!(
            guard.match_conditions.as_ref().unwrap()[0].expression,
            "request.userInfo.username == 'system:serviceaccount:kube-system:generic-garbage-collector'"
        );
        let v = &hooks[hooks.len() - 2];
        assert_eq!(
            v.name,
            "virtualmachineinstancemigrations-validator.ironvirt.io"
        );
        let rule = &v.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.resources.as_deref(),
            Some(&["virtualmachineinstancemigrations".to_owned()][..])
        );
    }

    #[test]
    fn service_endpoints_use_paths() {
        let (v, _) = webhook_configurations(&WebhookClient {
            endpoint: WebhookEndpoint::Service {
                namespace: "ironvirt".into(),
                name: "ironvirt-api".into(),
                port: Some(443),
            },
            ca_bundle: vec![],
        });
        let svc = v.webhooks.unwrap()[1]
            .client_config
            .service
            .clone()
            .unwrap();
        assert_eq!(svc.path.as_deref(), Some(VALIDATE_VM_PATH));
        assert_eq!(
            (svc.namespace.as_str(), svc.name.as_str()),
            ("ironvirt", "ironvirt-api")
        );
    }
}
