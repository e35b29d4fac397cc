//! Step 3 for the power operations: the VMI operations (pause, unpause,
//! softreboot, reset) forwarded to the VMI's handler, and VM start, stop and
//! restart, planned by [`crate::vmops`] and written to the VM (or its VMI)
//! with the VM's resourceVersion as precondition.

use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ironvirt_crds::wire::VmOp;
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use super::authz::{attrs, authorize};
use super::upstream::{forward_put, handler_status, running_vmi};
use super::{ApiState, check_names, kube_error, not_found, status};
use crate::auth::Peer;
use crate::vmops::{self, Change, OpError, OpOptions};

/// The VMI operations the handler carries out.
const VMI_OPS: [&str; 4] = ["pause", "unpause", "softreboot", "reset"];

/// How many times a VM operation reads and writes again when the VM changed
/// in between.
const VM_OP_ATTEMPTS: u64 = 5;

/// The largest VM operation body read.
const MAX_OPTIONS_BODY: usize = 64 * 1024;

/// `PUT …/virtualmachineinstances/{name}/{op}`: forwarded to the handler;
/// 200 when it is done.
pub(super) async fn vmi_power(
    State(state): State<ApiState>,
    Path((ns, name, sub)): Path<(String, String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    if !VMI_OPS.contains(&sub.as_str()) {
        return Err(not_found(&format!(
            "subresource {sub:?} of virtualmachineinstances"
        )));
    }
    let peer = peer.map(|Extension(p)| p);
    authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("update", "virtualmachineinstances", &sub, &ns, &name),
    )
    .await?;
    let (_vmi, url) = running_vmi(&state, &ns, &name).await?;
    let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/{sub}");
    match forward_put(&state, &url, &path).await {
        Ok((200, _)) => {
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, op = %sub, "done");
            Ok(StatusCode::OK.into_response())
        }
        Ok((code, body)) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let (_, message) = handler_status(body);
            let reason = if code == StatusCode::CONFLICT {
                "Conflict"
            } else {
                "InternalError"
            };
            Err(status(code, reason, message))
        }
        Err(e) => Err(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            e,
        )),
    }
}

/// `PUT …/virtualmachines/{name}/{start,stop,restart}`: 202 once the change
/// is written; the VM controller carries it out.
pub(super) async fn vm_power(
    State(state): State<ApiState>,
    Path((ns, name, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    let Some(vm_op) = VmOp::parse(&op) else {
        return Err(not_found(&format!("subresource {op:?} of virtualmachines")));
    };
    let peer = req.extensions().get::<Peer>().cloned();
    authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("update", "virtualmachines", &op, &ns, &name),
    )
    .await?;
    let opts = options(req, &op).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), &ns);
    // Read, decide, write with the VM's resourceVersion as precondition; a
    // conflict (the VM controller wrote meanwhile) means: read again.
    for attempt in 0..VM_OP_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        match vm_power_once(&vms, &vmis, &name, vm_op, &opts).await {
            Err(VmPowerError::Stale) => continue,
            Err(VmPowerError::Answer(r)) => return Err(*r),
            Ok(()) => {
                tracing::info!(vm.namespace = %ns, vm.name = %name, op = %op, dry_run = opts.is_dry_run(), "accepted");
                return Ok(StatusCode::ACCEPTED.into_response());
            }
        }
    }
    Err(status(
        StatusCode::CONFLICT,
        "Conflict",
        format!("VM {name} keeps changing; try the {op} again"),
    ))
}

/// The operation's options from the request body; an empty body means the
/// defaults.
async fn options(req: Request, op: &str) -> Result<OpOptions, Response> {
    let body = axum::body::to_bytes(req.into_body(), MAX_OPTIONS_BODY)
        .await
        .map_err(|e| {
            status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("reading the body: {e}"),
            )
        })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(OpOptions::default());
    }
    serde_json::from_slice(&body).map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("the {op} options do not parse: {e}"),
        )
    })
}

enum VmPowerError {
    /// The VM changed between read and write.
    Stale,
    /// The answer to give.
    Answer(Box<Response>),
}

fn answer(r: Response) -> VmPowerError {
    VmPowerError::Answer(Box::new(r))
}

async fn vm_power_once(
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    vm_op: VmOp,
    opts: &OpOptions,
) -> Result<(), VmPowerError> {
    let vm = match vms.get_opt(name).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(answer(not_found(&format!("virtualmachine \"{name}\"")))),
        Err(e) => return Err(answer(kube_error(&e))),
    };
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(|e| answer(kube_error(&e)))?;
    let plan = match vmops::plan(&vm, vmi.as_ref(), vm_op, opts) {
        Ok(p) => p,
        Err(OpError::Conflict(m)) => {
            return Err(answer(status(StatusCode::CONFLICT, "Conflict", m)));
        }
        Err(OpError::BadRequest(m)) => {
            return Err(answer(status(StatusCode::BAD_REQUEST, "BadRequest", m)));
        }
    };
    if opts.is_dry_run() {
        return Ok(());
    }
    if let (Some(grace), Some(_)) = (plan.vmi_grace, vmi.as_ref()) {
        let patch = json!({"spec": {"terminationGracePeriodSeconds": grace}});
        vmis.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| answer(kube_error(&e)))?;
    }
    let rv = vm.metadata.resource_version.clone();
    let result = match plan.change {
        Change::Spec(mut patch) => {
            patch["metadata"] = json!({"resourceVersion": rv});
            vms.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Change::Requests(requests) => {
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "status": {"stateChangeRequests": requests},
            });
            vms.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Change::DeleteVmi => vmis
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(VmPowerError::Stale),
        Err(e) => Err(answer(kube_error(&e))),
    }
}
