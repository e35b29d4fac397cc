//! The webhooks over HTTP: one POST route per webhook, AdmissionReview in and
//! out. TLS is the server's business (the router is served behind it).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kube::core::admission::AdmissionResponse;
use serde_json::Value;

use super::migration;
use super::mutating;
use super::owners;
use super::review::{Review, Verdict, respond_with_warnings};
use super::state::AdmissionState;
use super::validating::{self, Kind};

/// Validating webhook for VirtualMachineInstances (CREATE, UPDATE).
pub const VALIDATE_VMI_PATH: &str = "/webhooks/validate/virtualmachineinstances";
/// Validating webhook for VirtualMachines (CREATE, UPDATE).
pub const VALIDATE_VM_PATH: &str = "/webhooks/validate/virtualmachines";
/// Validating webhook for VirtualMachineInstanceReplicaSets (CREATE, UPDATE).
pub const VALIDATE_VMIRS_PATH: &str = "/webhooks/validate/virtualmachineinstancereplicasets";
/// Validating webhook for VirtualMachineInstancePresets (CREATE, UPDATE).
pub const VALIDATE_PRESET_PATH: &str = "/webhooks/validate/virtualmachineinstancepresets";
/// Validating webhook for VirtualMachineInstancetypes (CREATE, UPDATE).
pub const VALIDATE_INSTANCETYPE_PATH: &str = "/webhooks/validate/virtualmachineinstancetypes";
/// Validating webhook for VirtualMachineClusterInstancetypes (CREATE, UPDATE).
pub const VALIDATE_CLUSTER_INSTANCETYPE_PATH: &str =
    "/webhooks/validate/virtualmachineclusterinstancetypes";
/// Validating webhook for VirtualMachinePreferences (CREATE, UPDATE).
pub const VALIDATE_PREFERENCE_PATH: &str = "/webhooks/validate/virtualmachinepreferences";
/// Validating webhook for VirtualMachineClusterPreferences (CREATE, UPDATE).
pub const VALIDATE_CLUSTER_PREFERENCE_PATH: &str =
    "/webhooks/validate/virtualmachineclusterpreferences";
/// Validating webhook for VirtualMachinePools (CREATE, UPDATE).
pub const VALIDATE_POOL_PATH: &str = "/webhooks/validate/virtualmachinepools";
/// Validating webhook for VirtualMachineInstanceMigrations (CREATE, UPDATE).
pub const VALIDATE_MIGRATION_PATH: &str = "/webhooks/validate/virtualmachineinstancemigrations";
/// The owner guard (`owners.rs`): the garbage collector's DELETE of a
/// VirtualMachineInstance or VirtualMachine.
pub const GUARD_OWNERS_PATH: &str = "/webhooks/validate/owner-deletions";
/// Mutating webhook for VirtualMachineInstances (CREATE).
pub const MUTATE_VMI_PATH: &str = "/webhooks/mutate/virtualmachineinstances";
/// Mutating webhook for VirtualMachineInstanceMigrations (CREATE).
pub const MUTATE_MIGRATION_PATH: &str = "/webhooks/mutate/virtualmachineinstancemigrations";

/// The largest AdmissionReview accepted: an object and its old version, each
/// up to etcd's 1.5 MiB, with room to spare.
const MAX_BODY_BYTES: usize = 8 << 20;

/// Which webhook a route serves.
#[derive(Debug, Clone, Copy)]
enum Webhook {
    Validate(Kind),
    MutateVmi,
    MutateMigration,
    GuardOwners,
}

/// The webhooks' routes (see the `*_PATH` constants), each taking a POSTed
/// `admission.k8s.io/v1` AdmissionReview and answering one with the same uid.
/// A body that is not such a review gets HTTP 400 with a message.
pub fn router(state: AdmissionState) -> Router {
    let route = |webhook: Webhook| {
        post(move |State(state): State<AdmissionState>, body: Bytes| serve(state, webhook, body))
    };
    Kind::ALL
        .into_iter()
        .fold(Router::new(), |router, kind| {
            router.route(kind.path(), route(Webhook::Validate(kind)))
        })
        .route(MUTATE_VMI_PATH, route(Webhook::MutateVmi))
        .route(MUTATE_MIGRATION_PATH, route(Webhook::MutateMigration))
        .route(GUARD_OWNERS_PATH, route(Webhook::GuardOwners))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn serve(state: AdmissionState, webhook: Webhook, body: Bytes) -> Response {
    let review = match Review::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(?webhook, error = %e, "malformed admission request");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let (verdict, warnings) = match webhook {
        Webhook::Validate(Kind::Migration) => {
            (migration::validate(&review, &state).await, Vec::new())
        }
        Webhook::Validate(kind) => {
            let verdict = validating::review(kind, &review, &state);
            let warnings = match verdict {
                Verdict::Refuse { .. } => Vec::new(),
                _ => validating::warnings(kind, &review),
            };
            (verdict, warnings)
        }
        Webhook::MutateVmi => match validating::wrong_kind(&review, Kind::Vmi) {
            Some(v) => (v, Vec::new()),
            None => (mutating::review_vmi(&review, &state).await, Vec::new()),
        },
        Webhook::MutateMigration => match validating::wrong_kind(&review, Kind::Migration) {
            Some(v) => (v, Vec::new()),
            None => (migration::mutate(&review), Vec::new()),
        },
        Webhook::GuardOwners => (owners::review(&review, &state).await, Vec::new()),
    };
    log(&review, webhook, &verdict);
    match wire(respond_with_warnings(&review, verdict, warnings)) {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => {
            tracing::error!(uid = %review.request.uid, error = %e, "cannot serialize the admission response");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// The AdmissionReview to send back. kube serializes `patch` (bytes) as a
/// JSON array of numbers; Kubernetes documents it as base64, which every
/// apiserver version decodes, so it is sent that way.
fn wire(response: AdmissionResponse) -> Result<Value, serde_json::Error> {
    let patch = response.patch.clone();
    let mut body = serde_json::to_value(response.into_review())?;
    if let (Some(bytes), Some(slot)) = (patch, body.pointer_mut("/response/patch")) {
        *slot = Value::String(BASE64.encode(bytes));
    }
    Ok(body)
}

fn log(review: &Review, webhook: Webhook, verdict: &Verdict) {
    let (outcome, detail) = match verdict {
        Verdict::Allow => ("allowed", String::new()),
        Verdict::Patch(p) => ("patched", format!("{} operations", p.0.len())),
        Verdict::Invalid(errors) => ("denied", format!("{} validation errors", errors.len())),
        Verdict::Refuse { code, message, .. } => ("refused", format!("{code}: {message}")),
    };
    tracing::info!(
        ?webhook,
        uid = %review.request.uid,
        operation = review.operation(),
        namespace = %review.namespace(),
        name = %review.object_name(),
        user = review.username().unwrap_or_default(),
        outcome,
        detail = %detail,
        "admission review"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use ironvirt_crds::validate::{unsupported, warnings};
    use serde_json::json;
    use tower::ServiceExt;

    /// Posts a CREATE review of `object` (of `kind`) to `path`; the response.
    async fn create(path: &str, kind: &str, object: Value) -> Value {
        create_in("kubevirt.io", "v1", path, kind, object).await
    }

    /// [`create`] for a kind of `group`/`version`.
    async fn create_in(group: &str, version: &str, path: &str, kind: &str, object: Value) -> Value {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": group, "version": version, "kind": kind},
                "resource": {"group": group, "version": version, "resource": "x"},
                "namespace": "default",
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": object,
            }
        });
        let req = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let resp = router(AdmissionState::without_presets())
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice::<Value>(&bytes).unwrap()["response"].clone()
    }

    fn vmi(spec: Value) -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "w", "namespace": "default"},
            "spec": spec,
        })
    }

    #[tokio::test]
    async fn accepted_fields_without_effect_come_back_as_warnings() {
        let spec = json!({
            "domain": {"memory": {"guest": "64Mi"}, "ioThreadsPolicy": "auto",
                "devices": {"autoattachPodInterface": false, "tpm": {}}},
            "evictionStrategy": "LiveMigrate",
        });
        let resp = create(VALIDATE_VMI_PATH, "VirtualMachineInstance", vmi(spec)).await;
        assert_eq!(resp["allowed"], true, "{resp}");
        assert_eq!(
            resp["warnings"],
            json!([
                format!("spec.evictionStrategy: {}", warnings::EVICTION_STRATEGY),
                format!("spec.domain.ioThreadsPolicy: {}", warnings::IO_THREADS),
            ])
        );
    }

    #[tokio::test]
    async fn a_plain_vmi_has_no_warnings_and_refusals_keep_theirs() {
        let plain = vmi(json!({
            "domain": {"memory": {"guest": "64Mi"}, "devices": {"interfaces": [
                {"name": "n", "masquerade": {}, "ports": [{"port": 22}]}]}},
            "networks": [{"name": "n", "pod": {}}],
        }));
        let resp = create(VALIDATE_VMI_PATH, "VirtualMachineInstance", plain).await;
        assert_eq!(resp["allowed"], true);
        assert!(resp.get("warnings").is_none_or(Value::is_null), "{resp}");

        let refused = vmi(json!({
            "domain": {"memory": {"guest": "64Mi"}, "launchSecurity": {"sev": {}}},
            "priorityClassName": "high",
        }));
        let resp = create(VALIDATE_VMI_PATH, "VirtualMachineInstance", refused).await;
        assert_eq!(resp["allowed"], false);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.contains(unsupported::LAUNCH_SECURITY), "{message}");
        assert_eq!(
            resp["warnings"][0],
            format!("spec.priorityClassName: {}", warnings::PRIORITY_CLASS)
        );
    }

    #[tokio::test]
    async fn vm_warnings_name_the_template_path() {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": "w", "namespace": "default"},
            "spec": {
                "runStrategy": "Halted",
                "template": {"spec": {"domain": {"memory": {"guest": "64Mi"},
                    "devices": {"autoattachPodInterface": false}}, "subdomain": "s"}},
            },
        });
        let resp = create(VALIDATE_VM_PATH, "VirtualMachine", vm).await;
        assert_eq!(resp["allowed"], true, "{resp}");
        assert_eq!(
            resp["warnings"],
            json!([format!(
                "spec.template.spec.subdomain: {}",
                warnings::SUBDOMAIN
            )])
        );
    }

    #[tokio::test]
    async fn instancetypes_and_preferences_have_webhooks_of_their_own() {
        let it = |kind: &str, spec: Value| {
            json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind,
                "metadata": {"name": "w"}, "spec": spec})
        };
        let group = "instancetype.kubevirt.io";
        let good = json!({"cpu": {"guest": 2}, "memory": {"guest": "2Gi"}});
        for (path, kind) in [
            (VALIDATE_INSTANCETYPE_PATH, "VirtualMachineInstancetype"),
            (
                VALIDATE_CLUSTER_INSTANCETYPE_PATH,
                "VirtualMachineClusterInstancetype",
            ),
        ] {
            let resp = create_in(group, "v1beta1", path, kind, it(kind, good.clone())).await;
            assert_eq!(resp["allowed"], true, "{resp}");
            let bad = json!({"cpu": {"guest": 2}, "memory": {"guest": "2Gi", "overcommitPercent": 20,
                "hugepages": {"pageSize": "2Mi"}}});
            let resp = create_in(group, "v1beta1", path, kind, it(kind, bad)).await;
            assert_eq!(resp["allowed"], false, "{resp}");
            assert_eq!(resp["status"]["code"], 422);
            let cause = &resp["status"]["details"]["causes"][0];
            assert_eq!(cause["field"], "spec.memory.overcommitPercent", "{resp}");
            assert_eq!(
                cause["message"],
                "spec.memory.overcommitPercent and spec.memory.hugepages should not be requested together."
            );
            let message = resp["status"]["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("{kind} \"w\" is invalid: ")),
                "{message}"
            );
            // The same kind in kubevirt.io is not this webhook's.
            let resp = create_in("kubevirt.io", "v1", path, kind, it(kind, good.clone())).await;
            assert_eq!(resp["status"]["code"], 400, "{resp}");
        }
        for (path, kind) in [
            (VALIDATE_PREFERENCE_PATH, "VirtualMachinePreference"),
            (
                VALIDATE_CLUSTER_PREFERENCE_PATH,
                "VirtualMachineClusterPreference",
            ),
        ] {
            let deprecated = json!({"cpu": {"preferredCPUTopology": "preferThreads"}});
            let resp = create_in(group, "v1beta1", path, kind, it(kind, deprecated)).await;
            assert_eq!(resp["allowed"], true, "{resp}");
            assert_eq!(
                resp["warnings"],
                json!([
                    "PreferredCPUTopology preferThreads is deprecated for removal in a future release, please use threads instead"
                ])
            );
            let bad = json!({"cpu": {"preferredCPUTopology": "spread",
                "spreadOptions": {"across": "CoresThreads", "ratio": 3}}});
            let resp = create_in(group, "v1beta1", path, kind, it(kind, bad)).await;
            assert_eq!(resp["allowed"], false, "{resp}");
            assert_eq!(
                resp["status"]["details"]["causes"][0]["field"],
                "spec.cpu.spreadOptions.ratio"
            );
        }
        // A preference sent to the instancetype webhook is refused as such.
        let resp = create_in(
            group,
            "v1beta1",
            VALIDATE_INSTANCETYPE_PATH,
            "VirtualMachinePreference",
            it("VirtualMachinePreference", json!({})),
        )
        .await;
        assert_eq!(resp["status"]["code"], 400, "{resp}");
    }
}
