//! The VirtualMachine controller at the edges: read the VM's VMI, apply the
//! pure plan from [`crate::vm::plan`], write status by server-side apply.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use ironvirt_crds::wire::VM_FINALIZER;

use super::placement::PlacementContext;
use super::{FinalizerOp, finalizer_patch, slim, update_finalizer};
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

/// The VM controller's context: the shared one, placement (to place a VMI
/// in its create), and the VMs as this controller's own writes returned them,
/// until the cache catches up ([`vm::newest`]).
pub struct VmContext {
    pub base: Arc<Context>,
    pub placement: Option<Arc<PlacementContext>>,
    written: Mutex<HashMap<String, VirtualMachine>>,
}

impl VmContext {
    pub fn new(base: Arc<Context>, placement: Option<Arc<PlacementContext>>) -> Self {
        VmContext {
            base,
            placement,
            written: Mutex::default(),
        }
    }

    /// The VM to decide on: the cached one or, when the cache is behind,
    /// the answer of this controller's last write to it.
    fn current(&self, cached: &VirtualMachine) -> VirtualMachine {
        let uid = cached.uid().unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let newest = vm::newest(cached, written.get(&uid));
        if std::ptr::eq(newest, cached) {
            // The cache has caught up.
            written.remove(&uid);
            return cached.clone();
        }
        newest.clone()
    }

    /// Remembers the VM a write returned.
    fn wrote(&self, mut vm: VirtualMachine) {
        slim(&mut vm);
        let uid = vm.uid().unwrap_or_default();
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uid, vm);
    }

    fn forget(&self, vm: &VirtualMachine) {
        self.written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&vm.uid().unwrap_or_default());
    }
}

impl std::ops::Deref for VmContext {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.base
    }
}

fn owned_by(vmi: &VirtualMachineInstance, vm: &VirtualMachine) -> bool {
    let uid = vm.metadata.uid.as_deref();
    vmi.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

#[tracing::instrument(skip_all, fields(vm.namespace = %vm.namespace().unwrap_or_default(), vm.name = %vm.name_any()))]
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<VmContext>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(NAME);
    let current = ctx.current(&vm);
    let action = reconcile_inner(current, &ctx).await?;
    ctx.succeeded(&key(&vm));
    Ok(action)
}

fn key(vm: &VirtualMachine) -> String {
    format!("{}/{}", vm.namespace().unwrap_or_default(), vm.name_any())
}

async fn reconcile_inner(mut vm: VirtualMachine, ctx: &VmContext) -> Result<Action> {
    let ns = vm
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vm.name_any();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let deleting = vm.metadata.deletion_timestamp.is_some();

    if !deleting && let Some(patch) = finalizer_patch(&vm, VM_FINALIZER, FinalizerOp::Add)? {
        ctx.metrics.write(NAME, "vm", "finalizer");
        // Carry on with the VM the patch returned: the finalizer is on before
        // the VMI is created.
        vm = vms.patch(&name, &PatchParams::default(), &patch).await?;
        ctx.wrote(vm.clone());
    }
    let vm = &vm;

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
            // Placed in its create when a node qualifies: placement then only
            // writes the Scheduled status.
            let mut new = (**new).clone();
            let node = ctx.placement.as_ref().and_then(|p| p.reserve(&new));
            if let Some(node) = &node {
                vm::place_at_creation(&mut new, node);
            }
            ctx.metrics.write(NAME, "vmi", "create");
            let created = vmis.create(&PostParams::default(), &new).await;
            if created.is_err()
                && let Some(p) = &ctx.placement
            {
                p.release(&new);
            }
            match created {
                Ok(_) => {
                    if let Some(node) = &node {
                        tracing::debug!(node = %node, "created the VMI placed");
                    }
                }
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
            ctx.metrics.write(NAME, "vmi", "delete");
            match vmis.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    let hold = vm::hold_first_status(vm, &plan.status, mine, &plan.action, now);
    if hold.is_none()
        && let Some(answer) = write_status(&vms, vm, &plan.status, ctx).await?
    {
        ctx.wrote(answer);
    }

    if let Some(note) = &plan.event {
        ctx.metrics.write(NAME, "event", "create");
        super::publish(&ctx.recorder, &vm.object_ref(&()), "Reconcile", note).await;
    }

    if deleting && current.is_none() {
        ctx.metrics.write(NAME, "vm", "finalizer");
        update_finalizer(&vms, vm, VM_FINALIZER, FinalizerOp::Remove).await?;
        ctx.forget(vm);
        return Ok(Action::await_change());
    }
    let requeue = match (plan.requeue, hold) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(match requeue {
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
    ctx: &VmContext,
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
    ctx.metrics.write(NAME, "vm", "spec");
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
/// by a test of the old value. Returns the VM the last write answered with.
async fn write_status(
    vms: &Api<VirtualMachine>,
    vm: &VirtualMachine,
    status: &ironvirt_crds::VirtualMachineStatus,
    ctx: &Context,
) -> Result<Option<VirtualMachine>> {
    let mut answer = None;
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
        ctx.metrics.write(NAME, "vm", "requests");
        answer = Some(
            vms.patch_status(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await?,
        );
    }
    let mut mine = status.clone();
    mine.state_change_requests = None;
    let mut old_mine = old.cloned();
    if let Some(o) = old_mine.as_mut() {
        o.state_change_requests = None;
    }
    if !vm::status_changed(old_mine.as_ref(), &mine) {
        return Ok(answer);
    }
    let apply = json!({
        "apiVersion": VirtualMachine::api_version(&()),
        "kind": VirtualMachine::kind(&()),
        "status": mine,
    });
    ctx.metrics.write(NAME, "vm", "status");
    let written = vms
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&apply),
        )
        .await?;
    Ok(Some(written))
}

/// Failed reconciles retry with exponential backoff per VM (1 s doubling to
/// 5 min), so one broken VM never becomes a hot loop.
pub fn error_policy(vm: Arc<VirtualMachine>, err: &Error, ctx: Arc<VmContext>) -> Action {
    ctx.metrics.error(NAME, err.metric_label());
    let wait = ctx.failed(&key(&vm));
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, vm.name = %vm.name_any(), "reconcile failed");
    Action::requeue(wait)
}
