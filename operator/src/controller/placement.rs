//! VMI placement at the edges: reads nodes, handler Leases and placed VMIs from
//! caches, asks [`crate::placement::choose`] for a node, and writes the choice
//! (label and status) or the reason nothing qualifies. It also fails VMIs whose
//! node stopped renewing its Lease, and releases the VMI finalizer of VMIs that
//! never reached a node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::{PhaseTransitionTimestamp, VirtualMachineInstancePhase as Phase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::conditions::{self, condition};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::placement::{self, Demand, NODE_NAME_LABEL, NodeInfo};
use crate::vm::VMI_FINALIZER;

pub const MANAGER: &str = "ironvirt-placement";
pub const NAME: &str = "placement";

/// How often an unschedulable VMI is tried again.
const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(3);

/// The placement controller's context: caches of nodes, Leases and VMIs, and
/// placements made but not yet seen in the VMI cache.
pub struct PlacementContext {
    pub base: Arc<Context>,
    pub nodes: Store<Node>,
    pub leases: Store<Lease>,
    pub vmis: Store<VirtualMachineInstance>,
    assumed: Mutex<HashMap<String, (String, Demand)>>,
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
        }
    }
}

/// The Lease name a node's handler renews.
pub fn lease_name(node: &str) -> String {
    format!("ironvirt-handler-{node}")
}

fn label_selector_matches(
    selector: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.is_none_or(|sel| {
        sel.split(',')
            .filter(|p| !p.trim().is_empty())
            .all(|pair| match pair.split_once('=') {
                Some((k, v)) => labels.get(k.trim()).map(String::as_str) == Some(v.trim()),
                None => labels.contains_key(pair.trim()),
            })
    })
}

fn node_infos(ctx: &PlacementContext) -> Vec<NodeInfo> {
    let leases: HashMap<String, Timestamp> = ctx
        .leases
        .state()
        .iter()
        .filter_map(|l| {
            let renewed = l.spec.as_ref()?.renew_time.as_ref()?.0;
            Some((l.name_any(), renewed))
        })
        .collect();
    let selector = ctx.base.settings.node_label_selector.as_deref();
    ctx.nodes
        .state()
        .iter()
        .filter(|n| label_selector_matches(selector, n.labels()))
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
                lease_renewed: leases.get(&lease_name(&n.name_any())).copied(),
            }
        })
        .collect()
}

fn phase(vmi: &VirtualMachineInstance) -> Option<Phase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

fn node_name(vmi: &VirtualMachineInstance) -> Option<String> {
    vmi.status.as_ref().and_then(|s| s.node_name.clone())
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

async fn reconcile_inner(vmi: &VirtualMachineInstance, ctx: &PlacementContext) -> Result<Action> {
    let ns = vmi
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vmi.name_any();
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.base.client.clone(), &ns);
    let now = Timestamp::now();
    let timeout = ctx.base.settings.node_lease_timeout;
    let nodes = node_infos(ctx);
    let node_alive = |n: &str| {
        nodes
            .iter()
            .find(|i| i.name == n)
            .is_some_and(|i| placement::handler_alive(i, now, timeout))
    };

    if vmi.metadata.deletion_timestamp.is_some() {
        // Never placed, or placed on a node whose handler is gone: nothing on a
        // node to tear down, so the finalizer goes now.
        let release = match node_name(vmi) {
            None => true,
            Some(n) => !node_alive(&n),
        };
        if release {
            ctx.base.metrics.write(NAME, "vmi");
            super::remove_finalizer(&api, vmi, VMI_FINALIZER).await?;
        }
        return Ok(Action::await_change());
    }
    if !vmi.finalizers().iter().any(|f| f == VMI_FINALIZER) {
        let mut finalizers = vmi.finalizers().to_vec();
        finalizers.push(VMI_FINALIZER.to_owned());
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": vmi.resource_version()}});
        ctx.base.metrics.write(NAME, "vmi");
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(Action::await_change());
    }
    if phase(vmi).is_some_and(Phase::is_final) {
        forget(ctx, vmi);
        return Ok(Action::await_change());
    }

    if let Some(node) = node_name(vmi) {
        let labelled = vmi.labels().get(NODE_NAME_LABEL) == Some(&node);
        let just_placed = vmi.uid().is_some_and(|uid| {
            ctx.assumed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&uid)
        });
        if labelled {
            forget(ctx, vmi);
        } else if !just_placed {
            // Placed, but the label write did not happen (a restart in between).
            let labels = json!({"metadata": {"labels": {NODE_NAME_LABEL: node}}});
            ctx.base.metrics.write(NAME, "vmi");
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&labels))
                .await?;
        }
        let info = nodes.iter().find(|i| i.name == node);
        if node_alive(&node) {
            // Check again just after the Lease would expire.
            let renewed = info.and_then(|i| i.lease_renewed).unwrap_or(now);
            let expires =
                renewed + SignedDuration::try_from(timeout).unwrap_or(SignedDuration::MAX);
            let wait = Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO);
            return Ok(Action::requeue(wait + Duration::from_secs(1)));
        }
        let message = format!("node {node} stopped renewing its handler Lease; the VMI is lost");
        ctx.base.metrics.write(NAME, "vmi");
        write_status(
            &api,
            vmi,
            json!({
                "phase": "Failed",
                "reason": "NodeUnresponsive",
                "nodeName": node,
                "phaseTransitionTimestamps": transitions(vmi, Phase::Failed, now),
                "conditions": conditions::merge(
                    vmi.status.as_ref().and_then(|s| s.conditions.as_deref()),
                    vec![condition("Ready", false, "NodeUnresponsive", &message)],
                    now,
                ),
            }),
        )
        .await?;
        publish(ctx, vmi, true, "NodeUnresponsive", message).await;
        return Ok(Action::await_change());
    }

    // Not placed yet: choose a node among what the caches show, plus placements
    // made by this controller that the cache has not caught up with.
    let cached = ctx.vmis.state();
    let mut used = placement::usage(cached.iter().map(|v| &**v).filter(|v| v.uid() != vmi.uid()));
    {
        let assumed = ctx.assumed.lock().unwrap_or_else(|p| p.into_inner());
        for (uid, (node, demand)) in assumed.iter() {
            let in_cache = cached
                .iter()
                .any(|v| v.uid().as_deref() == Some(uid.as_str()) && node_name(v).is_some());
            if !in_cache {
                let u = used.entry(node.clone()).or_default();
                u.cpu_millis += demand.cpu_millis;
                u.memory_bytes += demand.memory_bytes;
            }
        }
    }
    match placement::choose_with_usage(vmi, &nodes, &used, now, timeout) {
        Ok(node) => {
            // Status first: its watch event already shows the VMI placed, so the
            // label's event that follows does not look like an unplaced VMI.
            ctx.base.metrics.write(NAME, "vmi");
            write_status(
                &api,
                vmi,
                json!({
                    "phase": "Scheduled",
                    "nodeName": node,
                    "phaseTransitionTimestamps": transitions(vmi, Phase::Scheduled, now),
                    "conditions": conditions::merge(
                        vmi.status.as_ref().and_then(|s| s.conditions.as_deref()),
                        vec![condition("PodScheduled", true, "", "")],
                        now,
                    ),
                }),
            )
            .await?;
            let labels = json!({"metadata": {"labels": {NODE_NAME_LABEL: node}}});
            ctx.base.metrics.write(NAME, "vmi");
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&labels))
                .await?;
            if let Some(uid) = vmi.uid() {
                ctx.assumed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uid, (node.clone(), placement::demand(vmi)));
            }
            tracing::info!(node = %node, "placed");
            Ok(Action::await_change())
        }
        Err(message) => {
            let old = vmi.status.as_ref().and_then(|s| s.conditions.as_deref());
            let new = vec![condition("PodScheduled", false, "Unschedulable", &message)];
            let changed = phase(vmi) != Some(Phase::Pending)
                || !conditions::eq_ignoring_time(
                    conditions::find(old, "PodScheduled").map(std::slice::from_ref),
                    Some(&new),
                );
            if changed {
                ctx.base.metrics.write(NAME, "vmi");
                write_status(
                    &api,
                    vmi,
                    json!({
                        "phase": "Pending",
                        "phaseTransitionTimestamps": transitions(vmi, Phase::Pending, now),
                        "conditions": conditions::merge(old, new, now),
                    }),
                )
                .await?;
                publish(ctx, vmi, true, "FailedScheduling", message).await;
            }
            Ok(Action::requeue(RETRY_UNSCHEDULABLE))
        }
    }
}

fn forget(ctx: &PlacementContext, vmi: &VirtualMachineInstance) {
    if let Some(uid) = vmi.uid() {
        ctx.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&uid);
    }
}

/// The phase transition list with `phase` entered at `now` (kept if already there).
fn transitions(
    vmi: &VirtualMachineInstance,
    phase: Phase,
    now: Timestamp,
) -> Vec<PhaseTransitionTimestamp> {
    let mut list = vmi
        .status
        .as_ref()
        .and_then(|s| s.phase_transition_timestamps.clone())
        .unwrap_or_default();
    if !list.iter().any(|t| t.phase == phase) {
        list.push(PhaseTransitionTimestamp {
            phase,
            phase_transition_timestamp: Time(now),
        });
    }
    list
}

async fn write_status(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    status: serde_json::Value,
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

async fn publish(
    ctx: &PlacementContext,
    vmi: &VirtualMachineInstance,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(note),
        action: "Place".into(),
        secondary: None,
    };
    if let Err(e) = ctx.base.recorder.publish(&ev, &vmi.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
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
