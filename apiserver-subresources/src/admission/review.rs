//! The AdmissionReview wire format (`admission.k8s.io/v1`): reading a request,
//! and turning a verdict into the response kube-apiserver expects.

use ironvirt_crds::validate::{FieldError, MAX_REPORTED, more_suffix};
use kube::core::DynamicObject;
use kube::core::Status;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::{StatusCause, StatusDetails};
use serde_json::Value;

/// The only AdmissionReview version the webhooks speak.
pub const API_VERSION: &str = "admission.k8s.io/v1";
const KIND: &str = "AdmissionReview";

/// Why a request body is not a usable AdmissionReview (answered with HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body does not parse as JSON.
    #[error("the request body is not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The body is JSON but not an AdmissionReview.
    #[error("the request body is not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Another kind or version.
    #[error(
        "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion {api_version:?} and kind {kind:?}"
    )]
    WrongType {
        /// The apiVersion received.
        api_version: String,
        /// The kind received.
        kind: String,
    },
    /// An AdmissionReview without a request.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// One admission request: kube's typed view plus the raw objects (so that a
/// patch is computed against exactly what the apiserver sent).
#[derive(Debug)]
pub struct Review {
    /// The request (uid, kind, operation, user, …).
    pub request: AdmissionRequest<DynamicObject>,
    /// `request.object`, as sent.
    pub object: Option<Value>,
    /// `request.oldObject`, as sent.
    pub old_object: Option<Value>,
}

impl Review {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Self, ReviewError> {
        let raw: Value = serde_json::from_slice(body).map_err(ReviewError::NotJson)?;
        let api_version = raw.get("apiVersion").and_then(Value::as_str);
        let kind = raw.get("kind").and_then(Value::as_str);
        if api_version != Some(API_VERSION) || kind != Some(KIND) {
            return Err(ReviewError::WrongType {
                api_version: api_version.unwrap_or_default().to_owned(),
                kind: kind.unwrap_or_default().to_owned(),
            });
        }
        let object = non_null(raw.pointer("/request/object"));
        let old_object = non_null(raw.pointer("/request/oldObject"));
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_value(raw).map_err(ReviewError::Malformed)?;
        let request = review.try_into().map_err(|_| ReviewError::NoRequest)?;
        Ok(Review {
            request,
            object,
            old_object,
        })
    }

    /// The object's name for messages: `metadata.name`, else the request's
    /// name, else `metadata.generateName`.
    pub fn object_name(&self) -> String {
        let meta = |key: &str| {
            self.object
                .as_ref()
                .and_then(|o| o.pointer(&format!("/metadata/{key}")))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        meta("name")
            .or_else(|| Some(self.request.name.clone()).filter(|n| !n.is_empty()))
            .or_else(|| meta("generateName"))
            .unwrap_or_default()
    }

    /// The namespace of the request (the object's when the request has none).
    pub fn namespace(&self) -> String {
        self.request
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| {
                self.object
                    .as_ref()
                    .and_then(|o| o.pointer("/metadata/namespace"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "default".to_owned())
    }

    /// The requesting user's name.
    pub fn username(&self) -> Option<&str> {
        self.request.user_info.username.as_deref()
    }

    /// The operation as the apiserver spells it (CREATE, UPDATE, …).
    pub fn operation(&self) -> &'static str {
        match self.request.operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

fn non_null(v: Option<&Value>) -> Option<Value> {
    v.filter(|v| !v.is_null()).cloned()
}

/// What a webhook decided.
#[derive(Debug)]
pub enum Verdict {
    /// Allowed unchanged.
    Allow,
    /// Allowed with this patch.
    Patch(json_patch::Patch),
    /// Denied: the object is invalid (422 Invalid, one cause per error).
    Invalid(Vec<FieldError>),
    /// Denied for another reason (a wrong kind, a cache not ready, …).
    Refuse {
        /// The HTTP-like status code.
        code: u16,
        /// The machine-readable reason, for example BadRequest.
        reason: &'static str,
        /// The message.
        message: String,
    },
}

/// The response to `review` for `verdict` with `warnings` (which kubectl
/// prints; none when empty), with the request's uid.
pub fn respond_with_warnings(
    review: &Review,
    verdict: Verdict,
    warnings: Vec<String>,
) -> AdmissionResponse {
    let mut response = respond(review, verdict);
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

/// The response to `review` for `verdict`, with the request's uid.
pub fn respond(review: &Review, verdict: Verdict) -> AdmissionResponse {
    let response = AdmissionResponse::from(&review.request);
    match verdict {
        Verdict::Allow => response,
        Verdict::Patch(patch) => match response.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => refuse(response, 500, "InternalError", e.to_string()),
        },
        Verdict::Invalid(errors) => invalid(response, review, &errors),
        Verdict::Refuse {
            code,
            reason,
            message,
        } => refuse(response, code, reason, message),
    }
}

fn refuse(
    mut response: AdmissionResponse,
    code: u16,
    reason: &str,
    message: String,
) -> AdmissionResponse {
    response.allowed = false;
    response.result = Status::failure(&message, reason).with_code(code);
    response
}

/// A 422 Invalid denial shaped like Kubernetes' own: `<Kind> "<name>" is
/// invalid: <field>: <message>; …`, at most [`MAX_REPORTED`] causes.
fn invalid(
    mut response: AdmissionResponse,
    review: &Review,
    errors: &[FieldError],
) -> AdmissionResponse {
    let kind = review.request.kind.kind.clone();
    let name = review.object_name();
    response.allowed = false;
    response.result = Status::failure(&invalid_message(&kind, &name, errors), "Invalid")
        .with_code(422)
        .with_details(StatusDetails {
            name,
            group: review.request.kind.group.clone(),
            kind,
            uid: String::new(),
            causes: errors
                .iter()
                .take(MAX_REPORTED)
                .map(|e| StatusCause {
                    reason: e.reason.as_str().to_owned(),
                    message: e.message.clone(),
                    field: e.field.clone(),
                })
                .collect(),
            retry_after_seconds: 0,
        });
    response
}

/// `<Kind> "<name>" is invalid: <field>: <message>; …[, and N more validation errors]`.
pub fn invalid_message(kind: &str, name: &str, errors: &[FieldError]) -> String {
    let listed = errors
        .iter()
        .take(MAX_REPORTED)
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "{kind} \"{name}\" is invalid: {listed}{}",
        more_suffix(errors.len())
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(request: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": request,
        }))
        .unwrap()
    }

    fn request() -> Value {
        json!({
            "uid": "u-1",
            "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstance"},
            "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachineinstances"},
            "namespace": "ns",
            "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "metadata": {"generateName": "vm-"}, "spec": {}},
            "oldObject": null,
        })
    }

    #[test]
    fn parses_a_review_and_keeps_the_raw_object() {
        let r = Review::parse(&body(request())).unwrap();
        assert_eq!(r.request.uid, "u-1");
        assert_eq!(r.object.as_ref().unwrap()["spec"], json!({}));
        assert!(r.old_object.is_none());
        assert_eq!(r.object_name(), "vm-");
        assert_eq!(r.namespace(), "ns");
        assert_eq!(r.username(), Some("alice"));
        assert_eq!(r.operation(), "CREATE");
    }

    #[test]
    fn rejects_what_is_not_a_v1_review() {
        assert!(matches!(
            Review::parse(b"{not json"),
            Err(ReviewError::NotJson(_))
        ));
        let v1beta1 = serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}),
        )
        .unwrap();
        assert!(matches!(
            Review::parse(&v1beta1),
            Err(ReviewError::WrongType { .. })
        ));
        let mut no_uid = request();
        no_uid.as_object_mut().unwrap().remove("uid");
        assert!(matches!(
            Review::parse(&body(no_uid)),
            Err(ReviewError::Malformed(_))
        ));
        let empty = serde_json::to_vec(
            &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
        )
        .unwrap();
        assert!(matches!(Review::parse(&empty), Err(ReviewError::NoRequest)));
    }

    #[test]
    fn invalid_responses_are_422_with_causes() {
        let r = Review::parse(&body(request())).unwrap();
        let errors: Vec<_> = (0..12)
            .map(|i| FieldError::new(format!("spec.f{i}"), "bad"))
            .collect();
        let resp = respond(&r, Verdict::Invalid(errors));
        assert!(!resp.allowed);
        assert_eq!(resp.uid, "u-1");
        assert_eq!(resp.result.code, 422);
        assert_eq!(resp.result.reason, "Invalid");
        let details = resp.result.details.unwrap();
        assert_eq!(details.causes.len(), 10);
        assert_eq!(details.causes[0].reason, "FieldValueInvalid");
        assert_eq!(details.kind, "VirtualMachineInstance");
        assert!(
            resp.result.message.starts_with(
                "VirtualMachineInstance \"vm-\" is invalid: spec.f0: bad; spec.f1: bad"
            ),
            "{}",
            resp.result.message
        );
        assert!(
            resp.result
                .message
                .ends_with("spec.f9: bad, and 2 more validation errors")
        );
    }
}
