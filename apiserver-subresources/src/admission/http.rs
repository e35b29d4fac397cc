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

use super::mutating;
use super::review::{Review, Verdict, respond};
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
/// Mutating webhook for VirtualMachineInstances (CREATE).
pub const MUTATE_VMI_PATH: &str = "/webhooks/mutate/virtualmachineinstances";

/// The largest AdmissionReview accepted: an object and its old version, each
/// up to etcd's 1.5 MiB, with room to spare.
const MAX_BODY_BYTES: usize = 8 << 20;

/// Which webhook a route serves.
#[derive(Debug, Clone, Copy)]
enum Webhook {
    Validate(Kind),
    MutateVmi,
}

/// The webhooks' routes (see the `*_PATH` constants), each taking a POSTed
/// `admission.k8s.io/v1` AdmissionReview and answering one with the same uid.
/// A body that is not such a review gets HTTP 400 with a message.
pub fn router(state: AdmissionState) -> Router {
    let route = |webhook: Webhook| {
        post(move |State(state): State<AdmissionState>, body: Bytes| serve(state, webhook, body))
    };
    Router::new()
        .route(VALIDATE_VMI_PATH, route(Webhook::Validate(Kind::Vmi)))
        .route(VALIDATE_VM_PATH, route(Webhook::Validate(Kind::Vm)))
        .route(VALIDATE_VMIRS_PATH, route(Webhook::Validate(Kind::Vmirs)))
        .route(VALIDATE_PRESET_PATH, route(Webhook::Validate(Kind::Preset)))
        .route(MUTATE_VMI_PATH, route(Webhook::MutateVmi))
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
    let verdict = match webhook {
        Webhook::Validate(kind) => validating::review(kind, &review, &state),
        Webhook::MutateVmi => match validating::wrong_kind(&review, Kind::Vmi.name()) {
            Some(v) => v,
            None => mutating::review_vmi(&review, &state).await,
        },
    };
    log(&review, webhook, &verdict);
    match wire(respond(&review, verdict)) {
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
