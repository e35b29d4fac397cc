//! The VirtualMachinePool controller at the edges: apply [`crate::pool::plan`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ironvirt_crds::pool::{POOL_LABEL, REVISION_LABEL, VirtualMachinePool};
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::replicas;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pool;

pub const MANAGER: &str = "ironvirt-pool-controller";
pub const NAME: &str = "pool";
const RESYNC: Duration = Duration::from_secs(300);
/// How soon a reconcile that met a concurrent change reads again.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);

#[tracing::instrument(skip_all, fields(pool.namespace = %p.namespace().unwrap_or_default(), pool.name = %p.name_any()))]
pub async fn reconcile(p: Arc<VirtualMachinePool>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(NAME);
    let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
    let action = reconcile_inner(&p, &ctx).await?;
    ctx.succeeded(&key);
    Ok(action)
}

async fn reconcile_inner(p: &VirtualMachinePool, ctx: &Context) -> Result<Action> {
    if p.metadata.deletion_timestamp.is_some() {
        // Garbage collection deletes the owned VMs (and so their VMIs).
        return Ok(Action::await_change());
    }
    let ns = p
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let vms_api: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis_api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let revs_api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let pools_api: Api<VirtualMachinePool> = Api::namespaced(ctx.client.clone(), &ns);
    // Live lists, not caches: a stale cache would create duplicates.
    let vms = vms_api.list(&Default::default()).await?.items;
    let vmis = vmis_api.list(&Default::default()).await?.items;
    let uid = p.metadata.uid.clone().unwrap_or_default();
    // The pool's revisions: name → the hash of the VMI template each holds.
    let revisions: BTreeMap<String, Option<String>> = revs_api
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={}", p.name_any())))
        .await?
        .items
        .into_iter()
        .filter(|r| r.owner_references().iter().any(|o| o.uid == uid))
        .map(|r| {
            let hash = r
                .data
                .as_ref()
                .and_then(|d| d.0.pointer("/spec/virtualMachineTemplate").cloned())
                .and_then(|t| serde_json::from_value(t).ok())
                .map(|t| pool::vmi_template_hash(&t));
            (r.name_any(), hash)
        })
        .collect();
    let plan = pool::plan(p, &vms, &vmis, &revisions, Timestamp::now());

    // The current template's revision first: VMs name it.
    let rev_name = plan.revision.name_any();
    if !revisions.contains_key(&rev_name) {
        ctx.metrics.write(NAME, "controllerrevision", "create");
        match revs_api
            .create(&PostParams::default(), &plan.revision)
            .await
        {
            Ok(_) => tracing::info!(revision = %rev_name, "stored the pool's template"),
            // One of the same name owned by an older pool of this name, not
            // yet garbage-collected: wait for it to go.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                tracing::info!(revision = %rev_name, "a revision of this name belongs to an older pool; waiting for its removal");
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let writes = (NAME, "vm");
    replicas::adopt_and_release(
        ctx,
        writes,
        &vms_api,
        &crate::replicas::owner_ref(p),
        &vms,
        &plan.adopt,
        &plan.release,
    )
    .await?;
    for new in &plan.create {
        ctx.metrics.write(NAME, "vm", "create");
        match vms_api.create(&PostParams::default(), new).await {
            Ok(_) => tracing::info!(vm = %new.name_any(), "created"),
            // Someone took the name since the list: the next reconcile picks another.
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    replicas::delete_all(ctx, writes, &vms_api, &plan.delete).await?;
    for vm in &plan.update {
        ctx.metrics.write(NAME, "vm", "spec");
        match vms_api
            .replace(&vm.name_any(), &PostParams::default(), vm)
            .await
        {
            Ok(_) => {
                tracing::info!(vm = %vm.name_any(), revision = %rev_name, "updated to the current template");
            }
            // Changed since the list (a status write): read again soon, and
            // restart nothing before every VM has the new template.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for vmi in &plan.relabel {
        ctx.metrics.write(NAME, "vmi", "label");
        let patch = json!({"metadata": {"labels": {REVISION_LABEL: rev_name}}});
        replicas::ignore_gone(
            vmis_api
                .patch(vmi, &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        )?;
    }
    // Only the VMI read (by uid): one already recreated from the new
    // template is left alone.
    for (vmi, vmi_uid) in &plan.restart {
        ctx.metrics.write(NAME, "vmi", "delete");
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(vmi_uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match vmis_api.delete(vmi, &dp).await {
            Ok(_) => {
                tracing::info!(vmi = %vmi, revision = %rev_name, "restarted for the current template")
            }
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    replicas::delete_all(ctx, (NAME, "controllerrevision"), &revs_api, &plan.prune).await?;

    if pool::status_changed(p.status.as_ref(), &plan.status) {
        let apply = json!({
            "apiVersion": VirtualMachinePool::api_version(&()),
            "kind": VirtualMachinePool::kind(&()),
            "status": plan.status,
        });
        ctx.metrics.write(NAME, "vmpool", "status");
        pools_api
            .patch_status(
                &p.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&apply),
            )
            .await?;
    }
    // A rollout in progress goes on when a restarted VM is ready again (its
    // VM's status changes, which wakes this controller); the resync is the
    // backstop.
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(p: Arc<VirtualMachinePool>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(NAME, err.metric_label());
    let wait = ctx.failed(&format!(
        "{}/{}",
        p.namespace().unwrap_or_default(),
        p.name_any()
    ));
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "pool reconcile failed");
    Action::requeue(wait)
}
