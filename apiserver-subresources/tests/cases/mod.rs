//! The admission cases of tests/admission/{invalid,valid}.yaml and how a
//! rejection is checked. Shared by tests/admission.rs (the webhooks' HTTP
//! router) and the workspace's tests/tests/admission.rs (the same cases through
//! kube-apiserver), which includes this file by path.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

/// This crate's directory (apiserver-subresources/).
pub fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../apiserver-subresources")
        .canonicalize()
        .expect("apiserver-subresources/ next to the including crate")
}

pub fn yaml_file<T: serde::de::DeserializeOwned>(path: PathBuf) -> T {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// `base` with a JSON merge patch (RFC 7386) applied.
pub fn merged(base: &Value, merge_patch: &Value) -> Value {
    let mut out = base.clone();
    json_patch::merge(&mut out, merge_patch);
    out
}

// ---------------------------------------------------------------------------
// Invalid manifests

#[derive(Deserialize)]
pub struct InvalidFile {
    pub bases: serde_json::Map<String, Value>,
    pub cases: Vec<InvalidCase>,
}

impl InvalidFile {
    pub fn load() -> Self {
        yaml_file(crate_dir().join("tests/admission/invalid.yaml"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidCase {
    pub name: String,
    base: Option<String>,
    patch: Option<Value>,
    manifest: Option<Value>,
    operation: Option<String>,
    old: Option<Value>,
    user: Option<String>,
    expect: Vec<ExpectedCause>,
    causes: Option<usize>,
    message_ends_with: Option<String>,
    /// The causes seen through kube-apiserver when the CRD schema rejects
    /// the object before the webhook runs.
    apiserver: Option<Vec<ExpectedCause>>,
}

#[derive(Deserialize)]
struct ExpectedCause {
    field: String,
    message: String,
}

/// What a case sends: CREATE `object`, or UPDATE `old` to `object`.
pub struct CaseRequest {
    pub operation: &'static str,
    pub object: Value,
    pub old: Option<Value>,
    /// The requesting user, when the case names one.
    pub user: Option<String>,
}

impl CaseRequest {
    pub fn kind(&self) -> String {
        self.object["kind"].as_str().unwrap_or_default().to_owned()
    }
}

impl InvalidCase {
    pub fn request(&self, bases: &serde_json::Map<String, Value>) -> CaseRequest {
        let base = self.base.as_ref().map(|b| {
            bases
                .get(b)
                .unwrap_or_else(|| panic!("{}: no base {b}", self.name))
                .clone()
        });
        let object = match (&self.manifest, &base) {
            (Some(m), _) => m.clone(),
            (None, Some(b)) => merged(b, self.patch.as_ref().unwrap_or(&Value::Null)),
            (None, None) => panic!("{}: needs a base or a manifest", self.name),
        };
        let (operation, old) = match self.operation.as_deref().unwrap_or("CREATE") {
            "CREATE" => ("CREATE", None),
            "UPDATE" => {
                let base = base.clone().expect("an UPDATE case needs a base");
                let old = match &self.old {
                    Some(p) => merged(&base, p),
                    None => base,
                };
                ("UPDATE", Some(old))
            }
            other => panic!("{}: unknown operation {other}", self.name),
        };
        CaseRequest {
            operation,
            object,
            old,
            user: self.user.clone(),
        }
    }

    /// What is wrong with the Status a rejection carries, if anything.
    /// kube-apiserver prefixes the webhook's message with `admission webhook
    /// "<name>" denied the request: `; `through_apiserver` allows that.
    pub fn check_status(&self, status: &Value, through_apiserver: bool) -> Vec<String> {
        let schema_first = through_apiserver && self.apiserver.is_some();
        let expect = match &self.apiserver {
            Some(causes) if through_apiserver => causes,
            _ => &self.expect,
        };
        let mut problems = Vec::new();
        if status["code"] != json!(422) || status["reason"] != json!("Invalid") {
            problems.push(format!("not a 422 Invalid: {status}"));
        }
        let causes = status["details"]["causes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let message = status["message"].as_str().unwrap_or_default();
        for e in expect {
            let found = causes.iter().any(|c| {
                c["field"] == json!(e.field)
                    && c["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&e.message))
                    && c["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("FieldValue"))
            });
            if !found {
                problems.push(format!(
                    "no cause {} ~ {:?}; causes: {}",
                    e.field,
                    e.message,
                    Value::Array(causes.clone())
                ));
            }
            if causes.len() <= 10 && !message.contains(&format!("{}: ", e.field)) {
                problems.push(format!("the message does not name {}: {message}", e.field));
            }
        }
        if let Some(n) = self.causes
            && !schema_first
            && causes.len() != n
        {
            problems.push(format!("{} causes, expected {n}: {status}", causes.len()));
        }
        // The kind as the webhooks name it; kube-apiserver's own (schema)
        // validation names it with its group, as details.kind then does.
        let kind = status["details"]["kind"].as_str().unwrap_or_default();
        let ours = if through_apiserver {
            message
                .split_once("\" denied the request: ")
                .filter(|(prefix, _)| prefix.starts_with("admission webhook \""))
                .map_or(message, |(_, rest)| rest)
        } else {
            message
        };
        let group = status["details"]["group"].as_str().unwrap_or_default();
        let shaped = |kind: &str| {
            ours.starts_with(&format!("{kind} \"")) && ours.contains("\" is invalid: ")
        };
        let qualified = through_apiserver && shaped(&format!("{kind}.{group}"));
        if !shaped(kind) && !qualified {
            problems.push(format!("message not shaped like Kubernetes': {message}"));
        }
        if let Some(end) = &self.message_ends_with
            && !schema_first
            && !message.ends_with(end.as_str())
        {
            problems.push(format!("message does not end with {end:?}: {message}"));
        }
        problems
    }
}

// ---------------------------------------------------------------------------
// Valid manifests

#[derive(Deserialize)]
pub struct ValidCase {
    pub name: String,
    file: Option<String>,
    manifest: Option<Value>,
    /// What the mutating webhook adds to the VMI the object stands for.
    pub defaults: Option<Value>,
}

impl ValidCase {
    pub fn load_all() -> Vec<ValidCase> {
        yaml_file(crate_dir().join("tests/admission/valid.yaml"))
    }

    pub fn object(&self) -> Value {
        match (&self.file, &self.manifest) {
            (Some(f), None) => yaml_file(crate_dir().join("..").join(f)),
            (None, Some(m)) => m.clone(),
            _ => panic!("{}: give exactly one of file and manifest", self.name),
        }
    }
}

/// The VMI an object stands for: itself, or the VMI its template describes,
/// named after it.
pub fn vmi_of(object: &Value) -> Value {
    if object["kind"] == "VirtualMachineInstance" {
        return object.clone();
    }
    let template = &object["spec"]["template"];
    let mut metadata = json!({"name": object["metadata"]["name"]});
    if let Some(labels) = template.pointer("/metadata/labels") {
        metadata["labels"] = labels.clone();
    }
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": metadata,
        "spec": template["spec"],
    })
}
