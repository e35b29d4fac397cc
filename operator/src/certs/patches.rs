//! The patches that carry the CA bundle and the certificates' fingerprints
//! to the objects that use them, as pure functions of the objects read:
//! `None` when nothing differs.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::json;

use super::FINGERPRINT_ANNOTATION;

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
