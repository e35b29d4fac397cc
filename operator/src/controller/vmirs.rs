//! The VMI ReplicaSet controller at the edges: apply [`crate::vmirs::plan`].

use std::sync::Arc;
use std::time::Duration;

use ironvirt_crds::{VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::replicas;

use crate::context::Context;
use crate::error::{Error, Result};
use crate::vmirs;

pub const MANAGER: &str = "ironvirt-vmirs-controller";
pub const NAME: &str = "vmirs";
const RESYNC: Duration = Duration::from_secs(300);

#[tracing::instrument(skip_all, fields(vmirs.namespace = %rs.namespace().unwrap_or_default(), vmirs.name = %rs.name_any()))]
pub async fn reconcile(
    rs: Arc<VirtualMachineInstanceReplicaSet>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(NAME);
    let key = format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any());
    let action = reconcile_inner(&rs, &ctx).await?;
    ctx.succeeded(&key);
    Ok(action)
}

async fn reconcile_inner(rs: &VirtualMachineInstanceReplicaSet, ctx: &Context) -> Result<Action> {
    if rs.metadata.deletion_timestamp.is_some() {
        // Garbage collection deletes the owned VMIs.
        return Ok(Action::await_change());
    }
    let ns = rs
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let vmis_api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let rs_api: Api<VirtualMachineInstanceReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    // The live list, not the cache: a stale cache would create duplicates.
    let vmis = vmis_api.list(&Default::default()).await?.items;
    let plan = vmirs::plan(rs, &vmis, Timestamp::now());

    let writes = (NAME, "vmi");
    replicas::adopt_and_release(
        ctx,
        writes,
        &vmis_api,
        &vmirs::owner_ref(rs),
        &vmis,
        &plan.adopt,
        &plan.release,
    )
    .await?;
    for new in &plan.create {
        ctx.metrics.write(NAME, "vmi", "create");
        vmis_api.create(&PostParams::default(), new).await?;
    }
    replicas::delete_all(ctx, writes, &vmis_api, &plan.delete).await?;
    if vmirs::status_changed(rs.status.as_ref(), &plan.status) {
        let apply = json!({
            "apiVersion": VirtualMachineInstanceReplicaSet::api_version(&()),
            "kind": VirtualMachineInstanceReplicaSet::kind(&()),
            "status": plan.status,
        });
        ctx.metrics.write(NAME, "vmirs", "status");
        rs_api
            .patch_status(
                &rs.name_any(),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&apply),
            )
            .await?;
    }
    Ok(Action::requeue(RESYNC))
}

pub fn error_policy(
    rs: Arc<VirtualMachineInstanceReplicaSet>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics.error(NAME, err.metric_label());
    let wait = ctx.failed(&format!(
        "{}/{}",
        rs.namespace().unwrap_or_default(),
        rs.name_any()
    ));
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, "vmirs reconcile failed");
    Action::requeue(wait)
}
