//! Step 3 for the expand subresources: a VM with its instancetype and
//! preference expanded into `spec.template` and its matchers removed, as
//! KubeVirt's virt-api answers them (what `virtctl expand` prints).
//!
//! - `GET …/namespaces/{ns}/virtualmachines/{name}/expand-spec`: the stored
//!   VM, expanded with what the VM controller uses: the copy in the
//!   ControllerRevision `revisionName` records, else the current object.
//! - `PUT …/namespaces/{ns}/expand-vm-spec` with a VM as body: expanded with
//!   the current objects; `revisionName` is ignored, so a caller cannot make
//!   ironvirt-api read a ControllerRevision of its choosing.
//!
//! Both only read (the lookup is [`ironvirt_crds::instancetype::lookup`], the
//! VM controller's own) and never create revisions. A VM that cannot be
//! expanded (a template field the instancetype owns, an instancetype or
//! preference that does not exist, unmet preference requirements) is 400
//! BadRequest for a posted VM, as in KubeVirt, and 422 Invalid for a stored
//! one (KubeVirt answers 500 there, though nothing failed on the server);
//! either way the message and the Status causes name the VM's fields.

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ironvirt_crds::VirtualMachine;
use ironvirt_crds::expand::expand_vm;
use ironvirt_crds::instancetype::lookup::{self, LookupError};
use ironvirt_crds::instancetype::{VirtualMachineInstancetypeSpec, VirtualMachinePreferenceSpec};
use ironvirt_crds::validate::{FieldError, MAX_REPORTED, Reason, more_suffix, vm_matchers};
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use kube::api::Api;
use serde_json::{Value, json};

use super::authz::{attrs, authorize};
use super::{ApiState, GROUP, VERSION, check_names, kube_error, not_found, status};
use crate::auth::Peer;

/// The subresource of a stored VM.
pub(super) const EXPAND_SPEC: &str = "expand-spec";
/// The namespaced resource a VM is posted to.
pub(super) const EXPAND_VM_SPEC: &str = "expand-vm-spec";

/// The largest VM body read: etcd's default request limit (1.5 MiB), so any
/// VM that could be stored fits.
pub(super) const MAX_VM_BODY: usize = 1536 * 1024;

/// Where the VM came from, which decides the lookups and the error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// Read from the cluster (expand-spec).
    Stored,
    /// Sent in the request (expand-vm-spec).
    Posted,
}

impl Source {
    /// Whether a recorded `revisionName` is followed.
    fn uses_revisions(self) -> bool {
        self == Source::Stored
    }

    /// The code and reason of a VM that cannot be expanded.
    fn failure(self) -> (StatusCode, &'static str) {
        match self {
            Source::Stored => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            Source::Posted => (StatusCode::BAD_REQUEST, "BadRequest"),
        }
    }
}

/// `GET …/virtualmachines/{name}/expand-spec`.
pub(super) async fn expand_spec(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    let peer = peer.map(|Extension(p)| p);
    authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("get", "virtualmachines", EXPAND_SPEC, &ns, &name),
    )
    .await?;
    let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), &ns);
    let vm = match vms.get_opt(&name).await {
        Ok(Some(vm)) => vm,
        Ok(None) => {
            return Err(not_found(&format!("virtualmachine.kubevirt.io \"{name}\"")));
        }
        Err(e) => return Err(kube_error(&e)),
    };
    expand(&state, &ns, vm, Source::Stored).await
}

/// The attributes of `update` on `expand-vm-spec` in `ns` (a resource of its
/// own, with no object name, as KubeVirt's RBAC has it).
fn expand_vm_spec_attrs(ns: &str) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(GROUP.into()),
        version: Some(VERSION.into()),
        resource: Some(EXPAND_VM_SPEC.into()),
        verb: Some("update".into()),
        namespace: Some(ns.into()),
        ..Default::default()
    }
}

/// `PUT …/namespaces/{ns}/expand-vm-spec` with a VirtualMachine body.
pub(super) async fn expand_vm_spec(
    State(state): State<ApiState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, Response> {
    ironvirt_crds::validate::dns_label(&ns).map_err(|why| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("invalid namespace {}: {why}", super::echo(&ns)),
        )
    })?;
    let peer = req.extensions().get::<Peer>().cloned();
    authorize(&state, peer.as_ref(), &headers, expand_vm_spec_attrs(&ns)).await?;
    let body = axum::body::to_bytes(req.into_body(), MAX_VM_BODY)
        .await
        .map_err(|e| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("reading the body (at most {MAX_VM_BODY} bytes): {e}"),
            )
        })?;
    let vm = posted_vm(&body, &ns).map_err(|m| status(StatusCode::BAD_REQUEST, "BadRequest", m))?;
    expand(&state, &ns, vm, Source::Posted).await
}

/// The VM in a request body, in namespace `ns`: JSON of kind VirtualMachine
/// whose namespace is `ns` or empty.
pub(super) fn posted_vm(body: &[u8], ns: &str) -> Result<VirtualMachine, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("empty request body: send the VirtualMachine to expand".into());
    }
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let kind = raw.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = raw
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind != "VirtualMachine" || !api_version.starts_with("kubevirt.io/") {
        return Err(format!(
            "Object is not a valid VirtualMachine: kind {kind:?}, apiVersion {api_version:?} (want VirtualMachine, kubevirt.io/v1)"
        ));
    }
    let mut vm: VirtualMachine = serde_json::from_value(raw)
        .map_err(|e| format!("Object is not a valid VirtualMachine: {e}"))?;
    match vm.metadata.namespace.as_deref() {
        None | Some("") => vm.metadata.namespace = Some(ns.to_owned()),
        Some(n) if n == ns => {}
        Some(_) => return Err(format!("VM namespace must be empty or {ns}")),
    }
    Ok(vm)
}

/// Resolves `vm`'s matchers, expands them and answers the VM.
async fn expand(
    state: &ApiState,
    ns: &str,
    vm: VirtualMachine,
    source: Source,
) -> Result<Response, Response> {
    let vm_name = vm.metadata.name.clone().unwrap_or_default();
    let mut errors = vm_matchers(&vm.spec);
    // A matcher to be inferred from a volume names nothing yet: the VM
    // controller fills the name in on the stored VM.
    for (field, m) in [
        ("spec.instancetype", &vm.spec.instancetype),
        ("spec.preference", &vm.spec.preference),
    ] {
        if let Some(m) = m.as_ref().filter(|m| m.name.is_empty())
            && !errors.iter().any(|e| e.field.starts_with(field))
        {
            let why = if m.infer_from_volume.is_empty() {
                "is required: the name of the object to expand"
            } else {
                "is required: expand does not infer it from a volume; expand the stored VM once its controller has"
            };
            errors.push(FieldError::with_reason(
                Reason::Required,
                format!("{field}.name"),
                why,
            ));
        }
    }
    if !errors.is_empty() {
        return Err(cannot_expand(source, &vm_name, &errors));
    }
    // Only the stored VM's own revisions are followed (see lookup::find).
    let vm_uid = vm.metadata.uid.as_deref().unwrap_or_default();
    let revisions = source.uses_revisions().then_some(vm_uid);
    let client = &state.client;
    let failed = |e: LookupError, field: &str| lookup_failure(source, &vm_name, field, e);
    let it = match &vm.spec.instancetype {
        Some(m) => Some(
            lookup::spec::<VirtualMachineInstancetypeSpec>(client, ns, m, false, revisions)
                .await
                .map_err(|e| failed(e, "spec.instancetype"))?,
        ),
        None => None,
    };
    let pref = match &vm.spec.preference {
        Some(m) => Some(
            lookup::spec::<VirtualMachinePreferenceSpec>(client, ns, m, true, revisions)
                .await
                .map_err(|e| failed(e, "spec.preference"))?,
        ),
        None => None,
    };
    let expanded = expand_vm(vm, it.as_ref(), pref.as_ref())
        .map_err(|errors| cannot_expand(source, &vm_name, &errors))?;
    let mut body = serde_json::to_value(&expanded).map_err(|e| {
        status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("encoding the VM: {e}"),
        )
    })?;
    body["apiVersion"] = json!("kubevirt.io/v1");
    body["kind"] = json!("VirtualMachine");
    tracing::info!(vm.namespace = %ns, vm.name = %vm_name, source = ?source, "expanded");
    Ok((StatusCode::OK, axum::Json(body)).into_response())
}

/// A lookup that failed: kube-apiserver's own errors as they came, the rest
/// as a VM that cannot be expanded, the cause at `field`.
fn lookup_failure(source: Source, vm: &str, field: &str, e: LookupError) -> Response {
    tracing::info!(vm.name = %vm, field, reason = e.reason(), error = %e, "cannot expand");
    let reason = match &e {
        LookupError::Kube(k) => return kube_error(k),
        LookupError::Missing { .. } | LookupError::RevisionMissing { .. } => Reason::NotFound,
        LookupError::BadRevision { .. } | LookupError::BadObject { .. } => Reason::Invalid,
    };
    let field = match &e {
        LookupError::RevisionMissing { .. } => format!("{field}.revisionName"),
        LookupError::Missing { .. } => format!("{field}.name"),
        _ => field.to_owned(),
    };
    let error = FieldError::with_reason(reason, field, e.to_string());
    cannot_expand(source, vm, &[error])
}

/// One error as a line: its message, prefixed with its field unless the
/// message already names it.
fn line(e: &FieldError) -> String {
    if e.message.contains(&e.field) {
        e.message.clone()
    } else {
        format!("{}: {}", e.field, e.message)
    }
}

/// The Status of a VM that cannot be expanded: "cannot expand instancetype
/// to VM" (KubeVirt's words) and each error, as message and causes.
pub(super) fn cannot_expand(source: Source, vm: &str, errors: &[FieldError]) -> Response {
    let (code, reason) = source.failure();
    let lines: Vec<String> = errors.iter().take(MAX_REPORTED).map(line).collect();
    let message = format!(
        "cannot expand instancetype to VM: {}{}",
        lines.join("; "),
        more_suffix(errors.len())
    );
    let causes: Vec<Value> = errors
        .iter()
        .take(MAX_REPORTED)
        .map(|e| json!({"reason": e.reason.as_str(), "message": e.message, "field": e.field}))
        .collect();
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
        "details": {"name": vm, "group": "kubevirt.io", "kind": "VirtualMachine", "causes": causes},
    });
    (code, axum::Json(body)).into_response()
}
