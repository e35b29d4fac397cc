//! Evacuation at the edges: every few seconds, for each node that is
//! cordoned or drained, asks [`crate::evacuation::decide`] about each VMI on
//! it and creates the migrations or deletes the VMIs it says.

use std::sync::Arc;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::migration::{VMI_NAME_LABEL, VirtualMachineInstanceMigration};
use ironvirt_crds::vmi::EvictionStrategy;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};

use super::migration::MigrationContext;
use crate::error::Result;
use crate::evacuation::{self, EVACUATION_GENERATE_NAME, Evacuate, Leaving};
use crate::events::{EventNote, Reason};

pub const NAME: &str = "evacuation";

/// Whether `ns/name` has a migration that is not finished.
fn in_flight(ctx: &MigrationContext, ns: &str, name: &str) -> bool {
    ctx.migrations.state().iter().any(|m| {
        m.namespace().as_deref() == Some(ns)
            && m.spec.vmi_name == name
            && !m
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_final())
    })
}

/// Looks at every node every `every`, until the process ends.
pub async fn run(ctx: Arc<MigrationContext>, default: EvictionStrategy, every: Duration) {
    let p = &ctx.placement;
    let _ = p.nodes.wait_until_ready().await;
    let _ = p.vmis.wait_until_ready().await;
    let _ = ctx.migrations.wait_until_ready().await;
    tracing::info!(default = ?default, "evacuating cordoned and drained nodes");
    loop {
        for node in p.nodes.state() {
            let how = evacuation::leaving(&node);
            if how == Leaving::No {
                continue;
            }
            if let Err(e) = evacuate(&ctx, &node.name_any(), how, default).await {
                p.base.metrics.error(NAME, e.metric_label());
                tracing::warn!(node = %node.name_any(), error = %e, "evacuation failed; trying again");
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn evacuate(
    ctx: &MigrationContext,
    node: &str,
    how: Leaving,
    default: EvictionStrategy,
) -> Result<()> {
    let base = &ctx.placement.base;
    for vmi in ctx.placement.vmis.state() {
        if vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) {
            continue;
        }
        let ns = vmi.namespace().unwrap_or_default();
        let name = vmi.name_any();
        let busy = in_flight(ctx, &ns, &name);
        let Some(step) = evacuation::decide(how, &vmi, default, busy) else {
            continue;
        };
        match step {
            Evacuate::Migrate(name) => {
                let m: VirtualMachineInstanceMigration = serde_json::from_value(
                    serde_json::json!({
                        "apiVersion": "kubevirt.io/v1",
                        "kind": "VirtualMachineInstanceMigration",
                        "metadata": {"generateName": EVACUATION_GENERATE_NAME, "labels": {VMI_NAME_LABEL: name}},
                        "spec": {"vmiName": name},
                    }),
                )?;
                let api: Api<VirtualMachineInstanceMigration> =
                    Api::namespaced(base.client.clone(), &ns);
                base.metrics.write(NAME, "migration", "create");
                let made = api.create(&PostParams::default(), &m).await?;
                tracing::info!(node, vmi.namespace = %ns, vmi.name = %name, migration = %made.name_any(), "evacuating by live migration");
                note(
                    ctx,
                    &vmi,
                    false,
                    format!(
                        "node {node} is {}: migrating the VMI away ({})",
                        word(how),
                        made.name_any()
                    ),
                )
                .await;
            }
            Evacuate::Evict(name) => {
                let api: Api<VirtualMachineInstance> = Api::namespaced(base.client.clone(), &ns);
                base.metrics.write(NAME, "vmi", "delete");
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(node, vmi.namespace = %ns, vmi.name = %name, "evicted (stopped) by the drain");
                note(ctx, &vmi, true, format!("node {node} is draining: the VMI is stopped (its evictionStrategy does not migrate it)")).await;
            }
            Evacuate::Blocked { vmi: name, why } => {
                tracing::debug!(node, vmi.namespace = %ns, vmi.name = %name, why, "the drain waits for this VMI");
            }
        }
    }
    Ok(())
}

fn word(how: Leaving) -> &'static str {
    match how {
        Leaving::Draining => "draining",
        Leaving::Cordoned => "cordoned",
        Leaving::No => "in service",
    }
}

async fn note(
    ctx: &MigrationContext,
    vmi: &VirtualMachineInstance,
    warning: bool,
    message: String,
) {
    let base = &ctx.placement.base;
    base.metrics.write(NAME, "event", "create");
    let note = EventNote {
        warning,
        reason: Reason::Evacuating,
        message,
    };
    super::publish(&base.recorder, &vmi.object_ref(&()), "Evacuate", &note).await;
}
