//! Live migration at the edges: reads the migration's VMI, the nodes and the
//! other migrations from caches, asks the pure [`crate::migration::plan`]
//! what to do, and makes the writes with the client.

use std::sync::Arc;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::migration::{MIGRATION_TARGET_NODE_LABEL, VirtualMachineInstanceMigration};
use ironvirt_crds::wire::NODE_NAME_LABEL;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::placement::PlacementContext;
use super::{FinalizerOp, update_finalizer};
use crate::error::{Error, Result};
use crate::migration::{self, Limits, MIGRATION_FINALIZER, Observed, Plan, Write};

/// The field manager of the migration controller's writes.
pub const MANAGER: &str = "ironvirt-migration";
pub const NAME: &str = "migration";

/// The migration controller's context: placement's caches and the
/// migrations' own.
pub struct MigrationContext {
    pub placement: Arc<PlacementContext>,
    pub migrations: Store<VirtualMachineInstanceMigration>,
    pub limits: Limits,
}

/// The source nodes of the unfinished, started migrations other than `uid`.
fn active_sources(store: &Store<VirtualMachineInstanceMigration>, uid: &str) -> Vec<String> {
    store
        .state()
        .iter()
        .filter(|m| m.uid().as_deref() != Some(uid))
        .filter_map(|m| {
            let s = m.status.as_ref()?;
            if s.phase.is_none_or(|p| p.is_final()) {
                return None;
            }
            s.migration_state.as_ref()?.source_node.clone()
        })
        .collect()
}

#[tracing::instrument(skip_all, fields(migration.namespace = %mig.namespace().unwrap_or_default(), migration.name = %mig.name_any(), vmi.name = %mig.spec.vmi_name))]
pub async fn reconcile(
    mig: Arc<VirtualMachineInstanceMigration>,
    ctx: Arc<MigrationContext>,
) -> Result<Action> {
    let base = &ctx.placement.base;
    let _timer = base.metrics.reconcile(NAME);
    let ns = mig
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let uid = mig.uid().unwrap_or_default();
    let vmi = ctx
        .placement
        .vmis
        .get(&ObjectRef::new(&mig.spec.vmi_name).within(&ns));
    let nodes = ctx.placement.node_infos();
    let used = ctx.placement.usage();
    let active = active_sources(&ctx.migrations, &uid);
    let observed = Observed {
        vmi: vmi.as_deref(),
        nodes: &nodes,
        used: &used,
        active_sources: &active,
        limits: ctx.limits,
        lease_timeout: base.settings.node_lease_timeout,
        now: Timestamp::now(),
    };
    let decided = migration::plan(&mig, &observed);
    apply(&mig, &ns, &ctx, &decided).await?;
    base.succeeded(&format!("migration/{ns}/{}", mig.name_any()));
    Ok(match decided.requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

async fn apply(
    mig: &VirtualMachineInstanceMigration,
    ns: &str,
    ctx: &MigrationContext,
    decided: &Plan,
) -> Result<()> {
    let base = &ctx.placement.base;
    let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(base.client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(base.client.clone(), ns);
    let vmi = mig.spec.vmi_name.as_str();
    let merge = PatchParams::default();
    for write in &decided.writes {
        match write {
            Write::AddFinalizer => {
                base.metrics.write(NAME, "migration", "finalizer");
                update_finalizer(&migs, mig, MIGRATION_FINALIZER, FinalizerOp::Add).await?;
            }
            Write::RemoveFinalizer => {
                base.metrics.write(NAME, "migration", "finalizer");
                update_finalizer(&migs, mig, MIGRATION_FINALIZER, FinalizerOp::Remove).await?;
            }
            Write::Status(status) => {
                base.metrics.write(NAME, "migration", "status");
                let body = json!({
                    "apiVersion": VirtualMachineInstanceMigration::api_version(&()),
                    "kind": VirtualMachineInstanceMigration::kind(&()),
                    "status": status,
                });
                migs.patch_status(
                    &mig.name_any(),
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await?;
                tracing::info!(phase = status.phase.as_str(), "migration phase");
            }
            Write::Start(state) => {
                base.metrics.write(NAME, "vmi", "status");
                // A merge patch replaces every field of an earlier
                // migration's state (the handlers' too): null clears.
                let body = json!({"status": {"migrationState": {
                    "migrationUid": state.migration_uid,
                    "sourceNode": state.source_node,
                    "targetNode": state.target_node,
                    "mode": state.mode,
                    "targetNodeAddress": null,
                    "targetNodeDomainReadyTimestamp": null,
                    "targetNodeDomainDetected": null,
                    "startTimestamp": null,
                    "endTimestamp": null,
                    "completed": null,
                    "failed": null,
                    "failureReason": null,
                    "abortRequested": null,
                    "abortStatus": null,
                }}});
                vmis.patch_status(vmi, &merge, &Patch::Merge(&body)).await?;
                base.metrics.write(NAME, "vmi", "label");
                let labels = json!({"metadata": {"labels": {MIGRATION_TARGET_NODE_LABEL: state.target_node}}});
                vmis.patch(vmi, &merge, &Patch::Merge(&labels)).await?;
                tracing::info!(source = ?state.source_node, target = ?state.target_node, "migration started on the VMI");
            }
            Write::RequestAbort => {
                base.metrics.write(NAME, "vmi", "status");
                let body = json!({"status": {"migrationState": {"abortRequested": true}}});
                vmis.patch_status(vmi, &merge, &Patch::Merge(&body)).await?;
            }
            Write::Handover(node) => {
                // Status first: placement puts the node label back to
                // status.nodeName if it ever sees the two differ.
                base.metrics.write(NAME, "vmi", "status");
                let body = json!({"status": {"nodeName": node}});
                vmis.patch_status(vmi, &merge, &Patch::Merge(&body)).await?;
                base.metrics.write(NAME, "vmi", "label");
                let labels = json!({"metadata": {"labels": {
                    NODE_NAME_LABEL: node,
                    MIGRATION_TARGET_NODE_LABEL: null,
                }}});
                vmis.patch(vmi, &merge, &Patch::Merge(&labels)).await?;
                tracing::info!(node = %node, "VMI handed over to the target node");
            }
            Write::ClearTargetLabel => {
                base.metrics.write(NAME, "vmi", "label");
                let labels = json!({"metadata": {"labels": {MIGRATION_TARGET_NODE_LABEL: null}}});
                match vmis.patch(vmi, &merge, &Patch::Merge(&labels)).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    if let Some(note) = &decided.event {
        base.metrics.write(NAME, "event", "create");
        super::publish(&base.recorder, &mig.object_ref(&()), "Migrate", note).await;
    }
    Ok(())
}

pub fn error_policy(
    mig: Arc<VirtualMachineInstanceMigration>,
    err: &Error,
    ctx: Arc<MigrationContext>,
) -> Action {
    let base = &ctx.placement.base;
    base.metrics.error(NAME, err.metric_label());
    let wait = base.failed(&format!(
        "migration/{}/{}",
        mig.namespace().unwrap_or_default(),
        mig.name_any()
    ));
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, migration.name = %mig.name_any(), "migration reconcile failed");
    Action::requeue(wait)
}
