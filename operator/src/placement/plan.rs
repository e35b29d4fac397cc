//! One reconcile of VMI placement as a pure function: given the VMI, the
//! nodes with their handler Leases, what is used where, and the time,
//! [`plan`] returns a [`PlacementPlan`] — the writes to make in order, the
//! Event to record, what to remember about placements not yet in the cache,
//! and when to look again. `controller::placement` applies it.
//!
//! The branches, in order:
//! 1. A VMI being deleted that never reached a node, or whose node's handler
//!    is gone: nothing on a node to tear down, so the finalizer goes.
//! 2. A VMI without the finalizer gets it first.
//! 3. A finished VMI needs nothing.
//! 4. A placed VMI gets its node label if a restart lost it, and is checked
//!    again just after its node's Lease would expire; a node whose Lease
//!    expired fails it (`NodeUnresponsive`).
//! 5. Otherwise a node is chosen: status `Scheduled` then the label, or
//!    `Pending` with the scheduler-style reason when nothing qualifies. A VMI
//!    created with the node label (the VM controller places at creation,
//!    [`crate::controller::placement::PlacementContext::reserve`]) keeps that
//!    node when this process reserved it or it still qualifies: then the
//!    status is the only write.

use std::collections::BTreeMap;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::{
    Condition, PhaseTransitionTimestamp, VirtualMachineInstancePhase as Phase,
};
use ironvirt_crds::wire::{NODE_NAME_LABEL, VMI_FINALIZER};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use serde::Serialize;

use super::{Demand, NodeInfo, check_node, choose_with_usage, demand, handler_alive};
use crate::conditions::{self, condition};
use crate::events::{EventNote, Reason};

/// How often an unschedulable VMI is tried again.
pub const RETRY_UNSCHEDULABLE: Duration = Duration::from_secs(3);

/// The status fields placement owns, written by server-side apply.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusWrite {
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    pub phase_transition_timestamps: Vec<PhaseTransitionTimestamp>,
    pub conditions: Vec<Condition>,
}

/// One write to the VMI, in the order the plan lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Add [`VMI_FINALIZER`].
    AddFinalizer,
    /// Remove [`VMI_FINALIZER`] (nothing to do when it is already gone).
    RemoveFinalizer,
    /// Set the [`NODE_NAME_LABEL`] label to this node.
    NodeLabel(String),
    /// Apply these status fields.
    Status(StatusWrite),
}

/// What the controller remembers about placements its cache has not caught
/// up with.
#[derive(Debug, Clone, PartialEq)]
pub enum Assumption {
    /// No change.
    Keep,
    /// The VMI is settled (finished, or its label is seen): forget it. Done
    /// before the writes.
    Forget,
    /// The VMI was just placed here: count its demand on the node until the
    /// cache shows it. Done after the writes.
    Placed { node: String, demand: Demand },
}

/// When to reconcile the VMI again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Only when the VMI (or what it watches) changes.
    AwaitChange,
    /// After this long, whatever happens.
    After(Duration),
}

/// Everything one placement reconcile decides.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementPlan {
    pub writes: Vec<Write>,
    /// Recorded after the writes.
    pub event: Option<EventNote>,
    pub assumption: Assumption,
    pub next: Next,
}

impl PlacementPlan {
    fn done(writes: Vec<Write>) -> Self {
        PlacementPlan {
            writes,
            event: None,
            assumption: Assumption::Keep,
            next: Next::AwaitChange,
        }
    }
}

/// What the caches show around the VMI.
pub struct Observed<'a> {
    /// Candidate nodes (those matching the operator's node selector).
    pub nodes: &'a [NodeInfo],
    /// Whether this VMI was placed by this controller and the cache has not
    /// caught up with it yet.
    pub just_placed: bool,
    /// The node this process reserved for the VMI (placed, or labelled at
    /// creation by the VM controller), if any.
    pub reserved: Option<&'a str>,
    /// A node's Lease older than this means its handler is gone.
    pub lease_timeout: Duration,
}

/// Decides one placement reconcile of `vmi`. `usage` (what is used on each
/// node by other VMIs) is asked for only when a node is to be chosen.
pub fn plan(
    vmi: &VirtualMachineInstance,
    observed: &Observed<'_>,
    usage: impl FnOnce() -> BTreeMap<String, Demand>,
    now: Timestamp,
) -> PlacementPlan {
    let timeout = observed.lease_timeout;
    let info = |n: &str| observed.nodes.iter().find(|i| i.name == n);
    let node_alive = |n: &str| info(n).is_some_and(|i| handler_alive(i, now, timeout));
    let status = vmi.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let old_conditions = status.and_then(|s| s.conditions.as_deref());

    if vmi.metadata.deletion_timestamp.is_some() {
        // The handler of a live node removes the finalizer once the domain is
        // gone, but it sees only the VMIs labelled with its node: a VMI placed
        // whose label write never happened (failed, or the operator stopped
        // in between) gets the label now, or it would wait forever.
        let writes = match status.and_then(|s| s.node_name.as_deref()) {
            None => vec![Write::RemoveFinalizer],
            Some(n) if !node_alive(n) => vec![Write::RemoveFinalizer],
            Some(n) if vmi.labels().get(NODE_NAME_LABEL).map(String::as_str) != Some(n) => {
                vec![Write::NodeLabel(n.to_owned())]
            }
            Some(_) => Vec::new(),
        };
        // A reservation made for it (placed at creation, never scheduled)
        // must not hold the node's capacity any longer.
        return PlacementPlan {
            assumption: Assumption::Forget,
            ..PlacementPlan::done(writes)
        };
    }
    if !vmi.finalizers().iter().any(|f| f == VMI_FINALIZER) {
        return PlacementPlan::done(vec![Write::AddFinalizer]);
    }
    if phase.is_some_and(Phase::is_final) {
        return PlacementPlan {
            assumption: Assumption::Forget,
            ..PlacementPlan::done(Vec::new())
        };
    }

    if let Some(node) = status.and_then(|s| s.node_name.clone()) {
        let labelled = vmi.labels().get(NODE_NAME_LABEL) == Some(&node);
        let mut plan = PlacementPlan::done(Vec::new());
        if labelled {
            plan.assumption = Assumption::Forget;
        } else if !observed.just_placed {
            // Placed, but the label write did not happen (a restart in between).
            plan.writes.push(Write::NodeLabel(node.clone()));
        }
        if node_alive(&node) {
            // Check again just after the Lease would expire.
            let renewed = info(&node).and_then(|i| i.lease_renewed).unwrap_or(now);
            let expires = SignedDuration::try_from(timeout)
                .ok()
                .and_then(|t| renewed.checked_add(t).ok())
                .unwrap_or(Timestamp::MAX);
            let wait = Duration::try_from(expires.duration_since(now)).unwrap_or(Duration::ZERO);
            plan.next = Next::After(wait + Duration::from_secs(1));
            return plan;
        }
        let message = format!("node {node} stopped renewing its handler Lease; the VMI is lost");
        plan.writes.push(Write::Status(StatusWrite {
            phase: Phase::Failed,
            reason: Some(Reason::NodeUnresponsive.as_str().to_owned()),
            node_name: Some(node),
            phase_transition_timestamps: ironvirt_crds::conditions::transitions(
                vmi,
                Phase::Failed,
                now,
            ),
            conditions: conditions::merge(
                old_conditions,
                vec![condition(
                    "Ready",
                    false,
                    Reason::NodeUnresponsive.as_str(),
                    &message,
                )],
                now,
            ),
        }));
        plan.event = Some(EventNote::warning(Reason::NodeUnresponsive, message));
        return plan;
    }

    // Not placed yet: the node it was labelled with at creation when this
    // process reserved it there or it still qualifies, else choose one.
    let label = vmi.labels().get(NODE_NAME_LABEL).map(String::as_str);
    let chosen = match label {
        Some(n) if observed.reserved == Some(n) => Ok(n.to_owned()),
        Some(n) => {
            let used = usage();
            match info(n).map(|i| {
                let u = used.get(n).copied().unwrap_or_default();
                check_node(vmi, demand(vmi), i, u, now, timeout)
            }) {
                Some(Ok(())) => Ok(n.to_owned()),
                _ => choose_with_usage(vmi, observed.nodes, &used, now, timeout),
            }
        }
        None => choose_with_usage(vmi, observed.nodes, &usage(), now, timeout),
    };
    match chosen {
        Ok(node) => PlacementPlan {
            // Status first: its watch event already shows the VMI placed, so
            // the label's event that follows does not look like an unplaced
            // VMI. A VMI labelled at creation needs no label write.
            writes: [
                Some(Write::Status(StatusWrite {
                    phase: Phase::Scheduled,
                    reason: None,
                    node_name: Some(node.clone()),
                    phase_transition_timestamps: ironvirt_crds::conditions::transitions(
                        vmi,
                        Phase::Scheduled,
                        now,
                    ),
                    conditions: conditions::merge(
                        old_conditions,
                        vec![condition("PodScheduled", true, "", "")],
                        now,
                    ),
                })),
                (label != Some(node.as_str())).then(|| Write::NodeLabel(node.clone())),
            ]
            .into_iter()
            .flatten()
            .collect(),
            event: None,
            assumption: Assumption::Placed {
                node,
                demand: demand(vmi),
            },
            next: Next::AwaitChange,
        },
        Err(message) => {
            let new = vec![condition("PodScheduled", false, "Unschedulable", &message)];
            let changed = phase != Some(Phase::Pending)
                || !conditions::eq_ignoring_time(
                    conditions::find(old_conditions, "PodScheduled").map(std::slice::from_ref),
                    Some(&new),
                );
            let mut plan = PlacementPlan::done(Vec::new());
            if changed {
                plan.writes.push(Write::Status(StatusWrite {
                    phase: Phase::Pending,
                    reason: None,
                    node_name: None,
                    phase_transition_timestamps: ironvirt_crds::conditions::transitions(
                        vmi,
                        Phase::Pending,
                        now,
                    ),
                    conditions: conditions::merge(old_conditions, new, now),
                }));
                plan.event = Some(EventNote::warning(Reason::FailedScheduling, message));
            }
            plan.next = Next::After(RETRY_UNSCHEDULABLE);
            plan
        }
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
