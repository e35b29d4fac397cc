//! VMI placement at the edges: reads nodes, handler Leases and placed VMIs from
//! caches, asks the pure [`crate::placement::plan::plan`] what to do (place,
//! report why nothing qualifies, fail a VMI whose node stopped renewing its
//! Lease, release the finalizer of a VMI that never reached a node), and
//! applies that plan with the client.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::validate::selector_matches;
use ironvirt_crds::wire::{NODE_NAME_LABEL, VMI_FINALIZER, handler_lease_name};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{FinalizerOp, update_finalizer};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::placement::plan::{self, Assumption, PlacementPlan, Write};
use crate::placement::{self, Demand, NodeInfo};

pub const MANAGER: &str = "ironvirt-placement";
pub const NAME: &str = "placement";

/// The placement controller's context: caches of nodes, Leases and VMIs, and
/// placements made but not yet seen in the VMI cache.
pub struct PlacementContext {
    pub base: Arc<Context>,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    pub vmis: Store<VirtualMachineInstance>,
    assumed: Mutex<HashMap<String, (String, Demand)>>,
    /// When this leadership term's controllers started. A node's Lease counts
    /// as renewed no earlier than this: after an outage of the control plane
    /// (which also ends the leader's term) every Lease looks stale, though
    /// the handlers only could not reach kube-apiserver either. Each node
    /// gets the whole lease timeout, from here, to renew, as Kubernetes'
    /// node lifecycle controller gives, before its VMIs are failed.
    since: Timestamp,
}

impl PlacementContext {
    pub fn new(
        base: Arc<Context>,
        nodes: Store<Node>,
        leases: Store<Lease>,
        vmis: Store<VirtualMachineInstance>,
    ) -> Self {
        PlacementContext {
            base,
            nodes,
            leases,
            vmis,
            assumed: Mutex::default(),
            since: Timestamp::now(),
        }
    }
}

fn node_infos(ctx: &PlacementContext) -> Vec<NodeInfo> {
    let leases: HashMap<String, Timestamp> = ctx
        .leases
        .state()
        .iter()
        .filter_map(|l| {
            let renewed = l.spec.as_ref()?.renew_time.as_ref()?.0;
            Some((l.name_any(), renewed.max(ctx.since)))
        })
        .collect();
    let selector = ctx
        .base
        .settings
        .node_label_selector
        .as_deref()
        .map(placement::node_label_selector);
    ctx.nodes
        .state()
        .iter()
        .filter(|n| {
            selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, n.labels()))
        })
        .map(|n| {
            let alloc = n
                .status
                .as_ref()
                .and_then(|s| s.allocatable.clone().or(s.capacity.clone()))
                .unwrap_or_default();
            let q = |k: &str, millis: bool| {
                alloc
                    .get(k)
                    .and_then(|v| placement::parse_quantity(v, millis))
                    .unwrap_or(0)
            };
            NodeInfo {
                name: n.name_any(),
                labels: n.labels().clone(),
                taints: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default(),
                cpu_millis: q("cpu", true),
                memory_bytes: q("memory", false),
                lease_renewed: leases.get(&handler_lease_name(&n.name_any())).copied(),
            }
        })
        .collect()
}

/// What the VMIs in the cache, other than `vmi`, use on each node, plus the
/// placements this controller made that the cache has not caught up with.
fn usage(ctx: &PlacementContext, vmi: &VirtualMachineInstance) -> BTreeMap<String, Demand> {
    let cached = ctx.vmis.state();
    let mut used = placement::usage(cached.iter().map(|v| &**v).filter(|v| v.uid() != vmi.uid()));
    let assumed = ctx.assumed.lock().unwrap_or_else(|p| p.into_inner());
    for (uid, (node, demand)) in assumed.iter() {
        let in_cache = cached.iter().any(|v| {
            v.uid().as_deref() == Some(uid.as_str())
                && v.status.as_ref().is_some_and(|s| s.node_name.is_some())
        });
        if !in_cache {
            let u = used.entry(node.clone()).or_default();
            u.cpu_millis += demand.cpu_millis;
            u.memory_bytes += demand.memory_bytes;
        }
    }
    used
}

#[tracing::instrument(skip_all, fields(vmi.namespace = %vmi.namespace().unwrap_or_default(), vmi.name = %vmi.name_any()))]
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<PlacementContext>,
) -> Result<Action> {
    let _timer = ctx.base.metrics.reconcile(NAME);
    let key = format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any());
    let action = reconcile_inner(&vmi, &ctx).await?;
    ctx.base.succeeded(&key);
    Ok(action)
}

/// Reads the caches, asks [`plan::plan`] what to do, and applies it.
async fn reconcile_inner(vmi: &VirtualMachineInstance, ctx: &PlacementContext) -> Result<Action> {
    let ns = vmi
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.base.client.clone(), &ns);
    let nodes = node_infos(ctx);
    let just_placed = vmi.uid().is_some_and(|uid| {
        ctx.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&uid)
    });
    let observed = plan::Observed {
        nodes: &nodes,
        just_placed,
        lease_timeout: ctx.base.settings.node_lease_timeout,
    };
    let decided = plan::plan(vmi, &observed, || usage(ctx, vmi), Timestamp::now());
    apply(&api, vmi, ctx, decided).await
}

/// Executes a plan: forget a settled placement, make the writes in order,
/// remember a new placement, record the Event.
async fn apply(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &PlacementContext,
    decided: PlacementPlan,
) -> Result<Action> {
    if decided.assumption == Assumption::Forget {
        forget(ctx, vmi);
    }
    for write in &decided.writes {
        ctx.base.metrics.write(NAME, "vmi");
        match write {
            Write::AddFinalizer => {
                update_finalizer(api, vmi, VMI_FINALIZER, FinalizerOp::Add).await?;
            }
            Write::RemoveFinalizer => {
                update_finalizer(api, vmi, VMI_FINALIZER, FinalizerOp::Remove).await?;
            }
            Write::NodeLabel(node) => {
                let labels = json!({"metadata": {"labels": {NODE_NAME_LABEL: node}}});
                api.patch(
                    &vmi.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&labels),
                )
                .await?;
            }
            Write::Status(status) => write_status(api, vmi, status).await?,
        }
    }
    if let Assumption::Placed { node, demand } = &decided.assumption {
        if let Some(uid) = vmi.uid() {
            ctx.assumed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(uid, (node.clone(), *demand));
        }
        tracing::info!(node = %node, "placed");
    }
    if let Some(note) = &decided.event {
        super::publish(&ctx.base.recorder, &vmi.object_ref(&()), "Place", note).await;
    }
    Ok(match decided.next {
        plan::Next::AwaitChange => Action::await_change(),
        plan::Next::After(wait) => Action::requeue(wait),
    })
}

fn forget(ctx: &PlacementContext, vmi: &VirtualMachineInstance) {
    if let Some(uid) = vmi.uid() {
        ctx.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
}

async fn write_status(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    status: &plan::StatusWrite,
) -> Result<()> {
    let apply = json!({
        "apiVersion": VirtualMachineInstance::api_version(&()),
        "kind": VirtualMachineInstance::kind(&()),
        "status": status,
    });
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&apply),
    )
    .await?;
    Ok(())
}

pub fn error_policy(
    vmi: Arc<VirtualMachineInstance>,
    err: &Error,
    ctx: Arc<PlacementContext>,
) -> Action {
    ctx.base.metrics.error(NAME, err.metric_label());
    let wait = ctx.base.failed(&format!(
        "{}/{}",
        vmi.namespace().unwrap_or_default(),
        vmi.name_any()
    ));
    tracing::warn!(error = %err, retry_in_ms = wait.as_millis() as u64, vmi.name = %vmi.name_any(), "placement failed");
    Action::requeue(wait)
}
