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
/// placements made (or reserved at creation) but not yet seen in the VMI
/// cache, by `namespace/name` (a VMI reserved at creation has no uid yet).
pub struct PlacementContext {
    pub base: Arc<Context>,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    pub vmis: Store<VirtualMachineInstance>,
    assumed: Mutex<HashMap<String, Assumed>>,
    /// When this leadership term's controllers started. A node's Lease counts
    /// as renewed no earlier than this: after an outage of the control plane
    /// (which also ends the leader's term) every Lease looks stale, though
    /// the handlers only could not reach kube-apiserver either. Each node
    /// gets the whole lease timeout, from here, to renew, as Kubernetes'
    /// node lifecycle controller gives, before its VMIs are failed.
    since: Timestamp,
}

/// A placement (or reservation) this process made that the VMI cache may not
/// show yet.
#[derive(Debug, Clone)]
struct Assumed {
    node: String,
    demand: Demand,
    /// Every write of the placement landed (a reservation's label is part of
    /// the VMI's create). Until then a VMI that shows its node without the
    /// label is not "just placed": its label write may have failed, and must
    /// be made again.
    written: bool,
}

impl Assumed {
    fn new(node: String, demand: Demand, written: bool) -> Self {
        Assumed {
            node,
            demand,
            written,
        }
    }
}

/// The node this process placed or reserved the VMI `key` on, and whether
/// that placement's writes all landed (then a VMI without its label in the
/// cache is the cache lagging, not a label to write again).
fn placed_here(assumed: &HashMap<String, Assumed>, key: &str) -> (Option<String>, bool) {
    let mine = assumed.get(key);
    (
        mine.map(|a| a.node.clone()),
        mine.is_some_and(|a| a.written),
    )
}

/// The key of a VMI in the assumptions: `namespace/name`.
fn key_of(vmi: &VirtualMachineInstance) -> String {
    format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any())
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

    /// Chooses a node for `vmi` before it is created (the VM controller
    /// places at creation, so the VMI's label is part of its create) and
    /// counts its demand there until the VMI shows up placed; `None` when no
    /// node qualifies or the caches are not filled yet (then placement
    /// chooses later, as for any VMI). Choosing and reserving happen under
    /// one lock, so concurrent placements never share the last capacity.
    pub fn reserve(&self, vmi: &VirtualMachineInstance) -> Option<String> {
        use futures::FutureExt;
        // Before every cache has its first list, what is used where is not
        // known: leave the choice to placement, which waits for them.
        let ready = self.vmis.wait_until_ready().now_or_never().is_some()
            && self.nodes.wait_until_ready().now_or_never().is_some()
            && self.leases.wait_until_ready().now_or_never().is_some();
        if !ready {
            return None;
        }
        let nodes = node_infos(self);
        if nodes.is_empty() {
            return None;
        }
        let key = key_of(vmi);
        let mut assumed = self.assumed.lock().unwrap_or_else(|p| p.into_inner());
        let used = usage(self, &assumed, &key);
        let node = placement::choose_with_usage(
            vmi,
            &nodes,
            &used,
            Timestamp::now(),
            self.base.settings.node_lease_timeout,
        )
        .ok()?;
        assumed.insert(
            key,
            Assumed::new(node.clone(), placement::demand(vmi), true),
        );
        Some(node)
    }

    /// The candidate nodes, as placement sees them.
    pub(crate) fn node_infos(&self) -> Vec<NodeInfo> {
        node_infos(self)
    }

    /// What every VMI uses on each node, reservations included.
    pub(crate) fn usage(&self) -> BTreeMap<String, Demand> {
        let assumed = self.assumed.lock().unwrap_or_else(|p| p.into_inner());
        usage(self, &assumed, "")
    }

    /// Drops the reservation of a VMI whose create failed.
    pub fn release(&self, vmi: &VirtualMachineInstance) {
        self.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key_of(vmi));
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
                unschedulable: n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true),
            }
        })
        .collect()
}

/// What the VMIs in the cache, other than the one of `key`, use on each
/// node, plus the placements this process made (or reserved) that the cache
/// has not caught up with.
fn usage(
    ctx: &PlacementContext,
    assumed: &HashMap<String, Assumed>,
    key: &str,
) -> BTreeMap<String, Demand> {
    let cached = ctx.vmis.state();
    let mut used = placement::usage(cached.iter().map(|v| &**v).filter(|v| key_of(v) != key));
    let placed: std::collections::HashSet<String> = cached
        .iter()
        .filter(|v| v.status.as_ref().is_some_and(|s| s.node_name.is_some()))
        .map(|v| key_of(v))
        .collect();
    for (k, a) in assumed.iter() {
        if k != key && !placed.contains(k) {
            let u = used.entry(a.node.clone()).or_default();
            u.cpu_millis += a.demand.cpu_millis;
            u.memory_bytes += a.demand.memory_bytes;
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
    let key = key_of(vmi);
    // Deciding and recording the assumption under one lock: placements run
    // concurrently (their writes overlap), and two must never take the same
    // last capacity.
    let decided = {
        let mut assumed = ctx.assumed.lock().unwrap_or_else(|p| p.into_inner());
        let (reserved, just_placed) = placed_here(&assumed, &key);
        let observed = plan::Observed {
            nodes: &nodes,
            just_placed,
            reserved: reserved.as_deref(),
            lease_timeout: ctx.base.settings.node_lease_timeout,
        };
        let decided = plan::plan(
            vmi,
            &observed,
            || usage(ctx, &assumed, &key),
            Timestamp::now(),
        );
        match &decided.assumption {
            Assumption::Forget => {
                assumed.remove(&key);
            }
            Assumption::Placed { node, demand } => {
                assumed.insert(key.clone(), Assumed::new(node.clone(), *demand, false));
            }
            Assumption::Keep => {}
        }
        decided
    };
    let placed = matches!(decided.assumption, Assumption::Placed { .. });
    let action = apply(&api, vmi, ctx, decided).await?;
    if placed
        && let Some(a) = ctx
            .assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&key)
    {
        a.written = true;
    }
    Ok(action)
}

/// Executes a plan (its assumption is already recorded): make the writes in
/// order, record the Event.
async fn apply(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    ctx: &PlacementContext,
    decided: PlacementPlan,
) -> Result<Action> {
    for write in &decided.writes {
        let what = match write {
            Write::AddFinalizer | Write::RemoveFinalizer => "finalizer",
            Write::NodeLabel(_) => "label",
            Write::Status(_) => "status",
        };
        ctx.base.metrics.write(NAME, "vmi", what);
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
    if let Assumption::Placed { node, .. } = &decided.assumption {
        tracing::info!(node = %node, "placed");
    }
    if let Some(note) = &decided.event {
        ctx.base.metrics.write(NAME, "event", "create");
        super::publish(&ctx.base.recorder, &vmi.object_ref(&()), "Place", note).await;
    }
    Ok(match decided.next {
        plan::Next::AwaitChange => Action::await_change(),
        plan::Next::After(wait) => Action::requeue(wait),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_whose_label_write_failed_is_not_just_placed() {
        let mut assumed = HashMap::new();
        assumed.insert(
            "ns/a".to_owned(),
            Assumed::new("n1".into(), Demand::default(), false),
        );
        assumed.insert(
            "ns/b".to_owned(),
            Assumed::new("n2".into(), Demand::default(), true),
        );
        // The writes of a's placement did not all land: its label is written again.
        assert_eq!(
            placed_here(&assumed, "ns/a"),
            (Some("n1".to_owned()), false)
        );
        assert_eq!(placed_here(&assumed, "ns/b"), (Some("n2".to_owned()), true));
        assert_eq!(placed_here(&assumed, "ns/c"), (None, false));
    }
}
