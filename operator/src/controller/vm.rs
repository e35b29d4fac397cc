//! The VirtualMachine controller at the edges: read the VM's VMI, apply the
//! pure plan from [`crate::vm::plan`], write status by server-side apply.

use std::sync::Arc;
use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use ironvirt_crds::wire::VM_FINALIZER;

use super::{FinalizerOp, has_finalizer, update_finalizer};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::events::{EventNote, Reason};
use crate::infer;
use crate::vm::{self, VmiAction};

/// The field manager of everything this controller writes.
pub const MANAGER: &str = "ironvirt-vm-controller";
pub const NAME: &str = "vm";

/// Periodic resync: changes missed during a watch desync are picked up.
const RESYNC: Duration = Duration::from_secs(300);

fn owned_by(vmi: &VirtualMachineInstance, vm: &VirtualMachine) -> bool {
    let uid = vm.metadata.uid.as_deref();
    vmi.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

#[tracing::instrument(skip_all, fields(vm.namespace = %vm.namespace().unwrap_or_default(), vm.name = %vm.name_any()))]
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(NAME);
    let action = reconcile_inner(&vm, &ctx).await?;
    ctx.succeeded(&key(&vm));
    Ok(action)
}

fn key(vm: &VirtualMachine) -> String {
    format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())
}

async fn reconcile_inner(vm: &VirtualMachine, ctx: &Context) -> Result<Action> {
    let ns = vm
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vm.name_any();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = vm.metadata.deletion_timestamp.is_some();

    if !deleting && !has_finalizer(vm, VM_FINALIZER) {
        ctx.metrics.write(NAME, "vm");
        update_finalizer(&vms, vm, VM_FINALIZER, FinalizerOp::Add).await?;
        // The patch brings the VM back with the finalizer.
        return Ok(Action::await_change());
    }

    let current = vmis.get_opt(&name).await?;
    let mine = current.as_ref().filter(|v| owned_by(v, vm));
    // inferFromVolume first: the matchers it fills are resolved next time.
    let mut inference_failed = None;
    if !deleting && infer::wanted(vm) {
        match infer_matchers(vm, &vms, ctx).await? {
            Inference::Written => return Ok(Action::await_change()),
            Inference::Failed(f) => inference_failed = Some(f),
            Inference::Nothing => {}
        }
    }
    let instancetypes = if deleting {
        vm::Instancetypes::default()
    } else if let Some(failure) = inference_failed {
        vm::Instancetypes {
            failure: Some(failure),
            ..vm::Instancetypes::default()
        }
    } else {
        crate::instancetypes::resolve(&ctx.client, vm, &ns).await?
    };
    let now = Timestamp::now();
    let mut plan = vm::plan_with(vm, mine, &instancetypes, now);

    if current.as_ref().is_some_and(|v| !owned_by(v, vm)) {
        plan = vm::plan_conflict(
            vm,
            now,
            &format!("a VMI named {name} exists and is not owned by this VM"),
        );
    }

    match &plan.action {
        VmiAction::Nothing => {}
        VmiAction::Create(new) => {
            ctx.metrics.write(NAME, "vmi");
            let created = vmis.create(&PostParams::default(), new).await;
            match created {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                    // The apiserver rejected the template: a Failure condition, no hot loop.
                    plan = vm::plan_conflict(vm, now, &s.message);
                    plan.event = Some(EventNote::warning(Reason::FailedCreate, s.message.clone()));
                }
                Err(e) => return Err(e.into()),
            }
        }
        VmiAction::Delete { uid } => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            ctx.metrics.write(NAME, "vmi");
            match vmis.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    write_status(&vms, vm, &plan.status, ctx).await?;

    if let Some(note) = &plan.event {
        super::publish(&ctx.recorder, &vm.object_ref(&()), "Reconcile", note).await;
    }

    if deleting && current.is_none() {
        ctx.metrics.write(NAME, "vm");
        update_finalizer(&vms, vm, VM_FINALIZER, FinalizerOp::Remove).await?;
        return Ok(Action::await_change());
    }
    Ok(match plan.requeue {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::requeue(RESYNC),
    })
}

/// What [`infer_matchers`] did.
enum Inference {
    /// The VM's spec was patched; the watch brings it back.
    Written,
    /// The VM's Failure condition: (reason, message).
    Failed((String, String)),
    /// Nothing to infer.
    Nothing,
}

/// Reads the labels of the images the VM's `inferFromVolume` matchers name
/// and writes the outcome of [`infer::plan`] to the VM's spec.
async fn infer_matchers(
    vm: &VirtualMachine,
    vms: &Api<VirtualMachine>,
    ctx: &Context,
) -> Result<Inference> {
    let mut fetched = infer::Fetched::new();
    for (written, image) in infer::images(vm) {
        // Anonymous: the operator does not read the volumes' pull secrets.
        let labels = ironvirt_images::config_labels(
            &ctx.settings.registries,
            &image,
            &ironvirt_images::RegistryAuth::Anonymous,
        )
        .await
        .map_err(|e| e.to_string());
        fetched.insert(written, labels);
    }
    let plan = infer::plan(vm, &fetched);
    for reason in &plan.ignored {
        tracing::info!(%reason, "inference failed; inferFromVolumeFailurePolicy Ignore removes the matcher");
    }
    if let Some(failure) = plan.failure {
        tracing::info!(reason = %failure.0, message = %failure.1, "inference failed");
        return Ok(Inference::Failed(failure));
    }
    let Some(patch) = plan.patch else {
        return Ok(Inference::Nothing);
    };
    ctx.metrics.write(NAME, "vm");
    match vms
        .patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => {
            tracing::info!(instancetype = %patch["spec"]["instancetype"], preference = %patch["spec"]["preference"], "inferred from the volume");
            Ok(Inference::Written)
        }
        // The admission refused the outcome (say, Ignore removed the
        // instancetype and the template has no memory).
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
            let reason = if patch["spec"].get("instancetype").is_some() {
                "FailedInferInstancetype"
            } else {
                "FailedInferPreference"
            };
            Ok(Inference::Failed((
                reason.to_owned(),
                format!("the inferred VM was refused: {}", s.message),
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes the VM's status by server-side apply, only when something other than
/// timestamps changed. stateChangeRequests belong to the subresource API; when
/// this controller consumed some, it replaces the list with a JSON patch guarded
/// by a test of the old value.
async fn write_status(
    vms: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    status: &ironvirt_crds::VirtualMachineStatus,
    ctx: &Context,
) -> Result<()> {
    let name = vm.name_any();
    let old = vm.status.as_ref();
    let old_requests = old.and_then(|s| s.state_change_requests.clone());
    if old_requests != status.state_change_requests {
        let mut ops = vec![
            json!({"op": "test", "path": "/status/stateChangeRequests", "value": old_requests}),
        ];
        ops.push(match &status.state_change_requests {
            Some(r) => json!({"op": "replace", "path": "/status/stateChangeRequests", "value": r}),
            None => json!({"op": "remove", "path": "/status/stateChangeRequests"}),
        });
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))?;
        ctx.metrics.write(NAME, "vm");
        vms.patch_status(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
    }
    let mut mine = status.clone();
    mine.state_change_requests = None;
    let mut old_mine = old.cloned();
    if let Some(o) = old_mine.as_mut() {
        o.state_change_requests = None;
    }
    if !vm::status_changed(old_mine.as_ref(), &mine) {
        return Ok(());
    }
    let apply = json!({
        "apiVersion": VirtualMachine::api_version(&()),
        "kind": VirtualMachine::kind(&()),
        "status": mine,
    });
    ctx.metrics.write(NAME, "vm");
    vms.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&apply),
    )
    .await?;
    Ok(())
}

/// Failed reconciles retry with exponential backoff per VM (1 s doubling to
/// 5 min), so one broken VM never becomes a hot loop.
pub fn error_policy(vm: Arc<VirtualMachine>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(NAME, err.metric_label());
    let wait = ctx.failed(&key(&vm));
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, vm.name = %vm.name_any(), "reconcile failed");
    Action::requeue(wait)
}
