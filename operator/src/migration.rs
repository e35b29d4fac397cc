//! Live migration as a pure function: given a VirtualMachineInstanceMigration,
//! its VMI, the nodes and the other migrations, [`plan`] decides the writes
//! of one reconcile. `controller::migration` applies them.
//!
//! The protocol, through the VMI's `status.migrationState`:
//! 1. The migration controller (here) chooses a target node and starts the
//!    migration on the VMI ([`Write::Start`]): a fresh `migrationState`
//!    (this migration's UID, source and target node) and the label
//!    `kubevirt.io/migrationTargetNodeName` the target's handler watches.
//! 2. The target's handler prepares the VMI's files and writes
//!    `targetNodeAddress` and `targetNodeDomainReadyTimestamp`.
//! 3. The source's handler migrates, writing `startTimestamp`, then
//!    `completed` or `failed` (and `failureReason`) with `endTimestamp`.
//! 4. Here, a completed migration hands the VMI over to the target
//!    ([`Write::Handover`]: `status.nodeName` and the node label); a failed
//!    one drops the target label. The migration's phase follows each step.
//!
//! Deleting an unfinished migration asks the source to abort
//! ([`Write::RequestAbort`]); the finalizer goes once the migration ended
//! (deleted or not).

use std::collections::BTreeMap;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::migration::{
    MIGRATION_TARGET_NODE_LABEL, MigrationPhase, MigrationPhaseTransitionTimestamp,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
};
use ironvirt_crds::vmi::{Condition, VirtualMachineInstancePhase as VmiPhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::events::{EventNote, Reason};
use crate::placement::{self, Demand, NodeInfo};

/// The finalizer on every migration, as KubeVirt names it.
pub const MIGRATION_FINALIZER: &str = "kubevirt.io/migrationJobFinalize";
/// How long a migration may wait for a target node before it fails
/// (KubeVirt's unschedulable target timeout).
pub const SCHEDULING_TIMEOUT: Duration = Duration::from_secs(300);
/// How often an unfinished migration is looked at again.
pub const POLL: Duration = Duration::from_secs(2);
/// The mode ironvirt migrates in.
pub const MODE: &str = "PreCopy";

/// Limits on parallel migrations (KubeVirt's defaults: 5 and 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub per_cluster: usize,
    pub outbound_per_node: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_cluster: 5,
            outbound_per_node: 2,
        }
    }
}

/// The migration status fields this controller owns.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusWrite {
    pub phase: MigrationPhase,
    pub phase_transition_timestamps: Vec<MigrationPhaseTransitionTimestamp>,
    pub conditions: Vec<Condition>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<VirtualMachineInstanceMigrationState>,
}

/// One write, in the order the plan lists them.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    AddFinalizer,
    RemoveFinalizer,
    /// The migration's status.
    Status(StatusWrite),
    /// Start the migration on the VMI: a fresh `migrationState` and the
    /// target label.
    Start(VirtualMachineInstanceMigrationState),
    /// Ask the source handler to abort (`migrationState.abortRequested`).
    RequestAbort,
    /// The VMI now runs on this node: `status.nodeName`, the node label, and
    /// no target label.
    Handover(String),
    /// Drop the VMI's target label (the migration failed or was aborted).
    ClearTargetLabel,
}

/// Everything one reconcile decides.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    pub event: Option<EventNote>,
    /// Look again after this long (None: only on a change).
    pub requeue: Option<Duration>,
}

/// What the caches show around the migration.
pub struct Observed<'a> {
    /// The VMI `spec.vmiName` names, if it exists.
    pub vmi: Option<&'a VirtualMachineInstance>,
    pub nodes: &'a [NodeInfo],
    /// What the VMIs use on each node.
    pub used: &'a BTreeMap<String, Demand>,
    /// The other unfinished migrations that already hold a slot: (source
    /// node) of each, for the limits.
    pub active_sources: &'a [String],
    pub limits: Limits,
    pub lease_timeout: Duration,
    pub now: Timestamp,
}

fn state_of<'a>(
    vmi: &'a VirtualMachineInstance,
    uid: &str,
) -> Option<&'a VirtualMachineInstanceMigrationState> {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_deref())
        .filter(|m| m.migration_uid.as_deref() == Some(uid))
}

/// The VMI's migration in flight that is not `uid`'s, if any.
fn other_in_flight<'a>(vmi: &'a VirtualMachineInstance, uid: &str) -> Option<&'a str> {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_deref())
        .filter(|m| !m.ended())
        .and_then(|m| m.migration_uid.as_deref())
        .filter(|u| *u != uid)
}

/// The phase the VMI's migration state shows for this migration.
pub fn phase_from_state(state: &VirtualMachineInstanceMigrationState) -> MigrationPhase {
    if state.failed == Some(true) {
        MigrationPhase::Failed
    } else if state.completed == Some(true) {
        MigrationPhase::Succeeded
    } else if state.start_timestamp.is_some() {
        MigrationPhase::Running
    } else if state.target_node_domain_ready_timestamp.is_some() {
        MigrationPhase::TargetReady
    } else {
        MigrationPhase::PreparingTarget
    }
}

/// The condition LiveMigratable=False of the VMI, as (reason, message).
fn not_migratable(vmi: &VirtualMachineInstance) -> Option<(String, String)> {
    vmi.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "LiveMigratable"))
        .filter(|c| c.status == "False")
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
}

fn status_with(
    mig: &VirtualMachineInstanceMigration,
    phase: MigrationPhase,
    failure: Option<(&str, &str)>,
    state: Option<&VirtualMachineInstanceMigrationState>,
    now: Timestamp,
) -> StatusWrite {
    let old = mig.status.as_ref();
    let mut transitions = old
        .and_then(|s| s.phase_transition_timestamps.clone())
        .unwrap_or_default();
    if !transitions.iter().any(|t| t.phase == phase) {
        transitions.push(MigrationPhaseTransitionTimestamp {
            phase,
            phase_transition_timestamp: Time(now),
        });
    }
    let mut conditions: Vec<Condition> = Vec::new();
    if let Some((reason, message)) = failure {
        let since = old
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        conditions.push(Condition {
            type_: "Failed".into(),
            status: "True".into(),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            last_transition_time: Some(since),
            ..Condition::default()
        });
    }
    StatusWrite {
        phase,
        phase_transition_timestamps: transitions,
        conditions,
        migration_state: state.cloned(),
    }
}

/// Whether `w` would change the migration's status (timestamps aside).
fn changes(mig: &VirtualMachineInstanceMigration, w: &StatusWrite) -> bool {
    let Some(s) = mig.status.as_ref() else {
        return true;
    };
    let cond = |cs: &[Condition]| -> Vec<(String, String, Option<String>, Option<String>)> {
        cs.iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect()
    };
    s.phase != Some(w.phase)
        || s.migration_state != w.migration_state
        || cond(s.conditions.as_deref().unwrap_or_default()) != cond(&w.conditions)
        || s.phase_transition_timestamps.as_ref().map(Vec::len)
            != Some(w.phase_transition_timestamps.len())
}

fn note(warning: bool, reason: Reason, message: String) -> Option<EventNote> {
    Some(EventNote {
        warning,
        reason,
        message,
    })
}

/// Decides one reconcile of `mig`.
pub fn plan(mig: &VirtualMachineInstanceMigration, o: &Observed<'_>) -> Plan {
    let uid = mig.uid().unwrap_or_default();
    let vmi_name = &mig.spec.vmi_name;
    let phase = mig.status.as_ref().and_then(|s| s.phase);
    let state = o.vmi.and_then(|v| state_of(v, &uid));
    let has_finalizer = mig.finalizers().iter().any(|f| f == MIGRATION_FINALIZER);
    let target_labelled =
        |v: &VirtualMachineInstance| v.labels().contains_key(MIGRATION_TARGET_NODE_LABEL);

    // Deleted: abort what runs, then let go. A migration that completed
    // before the abort took effect still hands the VMI over: the guest runs
    // on the target.
    if mig.metadata.deletion_timestamp.is_some() {
        let mut p = Plan::default();
        match (o.vmi, state) {
            (Some(v), Some(s)) if s.completed == Some(true) => {
                let target = s.target_node.clone().unwrap_or_default();
                let on_target = v.status.as_ref().and_then(|st| st.node_name.as_deref())
                    == Some(target.as_str());
                if !on_target || target_labelled(v) {
                    p.writes.push(Write::Handover(target));
                }
                if has_finalizer {
                    p.writes.push(Write::RemoveFinalizer);
                }
            }
            (Some(_), Some(s)) if !s.ended() => {
                if s.abort_requested != Some(true) {
                    p.writes.push(Write::RequestAbort);
                    p.event = note(
                        false,
                        Reason::MigrationAborting,
                        format!(
                            "aborting the migration of VMI {vmi_name}: the migration was deleted"
                        ),
                    );
                }
                p.requeue = Some(POLL);
            }
            (Some(v), _) => {
                if state.is_some() && target_labelled(v) {
                    p.writes.push(Write::ClearTargetLabel);
                }
                if has_finalizer {
                    p.writes.push(Write::RemoveFinalizer);
                }
            }
            (None, _) => {
                if has_finalizer {
                    p.writes.push(Write::RemoveFinalizer);
                }
            }
        }
        return p;
    }

    // Finished: tidy the VMI's label, then the finalizer has done its job
    // (a finished migration never holds up its namespace's deletion).
    if phase.is_some_and(MigrationPhase::is_final) {
        let mut p = Plan::default();
        if let (Some(v), Some(s)) = (o.vmi, state)
            && s.failed == Some(true)
            && target_labelled(v)
        {
            p.writes.push(Write::ClearTargetLabel);
        }
        if has_finalizer {
            p.writes.push(Write::RemoveFinalizer);
        }
        return p;
    }

    let mut p = Plan::default();
    if !has_finalizer {
        p.writes.push(Write::AddFinalizer);
    }
    let fail = |p: &mut Plan, reason: &str, message: String| {
        let w = status_with(
            mig,
            MigrationPhase::Failed,
            Some((reason, &message)),
            state,
            o.now,
        );
        p.writes.push(Write::Status(w));
        p.event = note(true, Reason::FailedMigration, message);
    };

    let Some(vmi) = o.vmi else {
        fail(
            &mut p,
            "VMINotFound",
            format!("VMI {vmi_name} does not exist"),
        );
        return p;
    };

    // Started: follow the VMI's migration state.
    if let Some(s) = state {
        let now_phase = phase_from_state(s);
        match now_phase {
            MigrationPhase::Succeeded => {
                let target = s.target_node.clone().unwrap_or_default();
                let on_target = vmi.status.as_ref().and_then(|st| st.node_name.as_deref())
                    == Some(target.as_str());
                if !on_target || target_labelled(vmi) {
                    p.writes.push(Write::Handover(target.clone()));
                }
                let w = status_with(mig, MigrationPhase::Succeeded, None, Some(s), o.now);
                p.writes.push(Write::Status(w));
                p.event = note(
                    false,
                    Reason::Migrated,
                    format!(
                        "VMI {vmi_name} migrated from node {} to node {target}",
                        s.source_node.as_deref().unwrap_or("?")
                    ),
                );
            }
            MigrationPhase::Failed => {
                if target_labelled(vmi) {
                    p.writes.push(Write::ClearTargetLabel);
                }
                let reason = s
                    .failure_reason
                    .clone()
                    .unwrap_or_else(|| "the migration failed".into());
                let w = status_with(
                    mig,
                    MigrationPhase::Failed,
                    Some(("MigrationFailed", &reason)),
                    Some(s),
                    o.now,
                );
                p.writes.push(Write::Status(w));
                p.event = note(
                    true,
                    Reason::FailedMigration,
                    format!("the migration of VMI {vmi_name} failed: {reason}"),
                );
            }
            other => {
                let w = status_with(mig, other, None, Some(s), o.now);
                if changes(mig, &w) {
                    if other == MigrationPhase::Running && phase != Some(MigrationPhase::Running) {
                        p.event = note(
                            false,
                            Reason::Migrating,
                            format!(
                                "VMI {vmi_name} is migrating from node {} to node {}",
                                s.source_node.as_deref().unwrap_or("?"),
                                s.target_node.as_deref().unwrap_or("?")
                            ),
                        );
                    }
                    p.writes.push(Write::Status(w));
                }
                p.requeue = Some(POLL);
            }
        }
        return p;
    }

    // Not started yet.
    let vmi_phase = vmi.status.as_ref().and_then(|s| s.phase);
    let source = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|_| vmi_phase == Some(VmiPhase::Running));
    let Some(source) = source else {
        fail(
            &mut p,
            "VMINotRunning",
            format!("VMI {vmi_name} is not running; only a running VMI can be migrated"),
        );
        return p;
    };
    if let Some((reason, message)) = not_migratable(vmi) {
        fail(
            &mut p,
            "NotLiveMigratable",
            format!("VMI {vmi_name} is not live-migratable ({reason}): {message}"),
        );
        return p;
    }
    if let Some(other) = other_in_flight(vmi, &uid) {
        let w = status_with(mig, MigrationPhase::Pending, None, None, o.now);
        if changes(mig, &w) {
            p.writes.push(Write::Status(w));
        }
        tracing::debug!(other, "another migration of the VMI is in flight");
        p.requeue = Some(POLL);
        return p;
    }
    let outbound = o.active_sources.iter().filter(|s| **s == source).count();
    if o.active_sources.len() >= o.limits.per_cluster || outbound >= o.limits.outbound_per_node {
        let w = status_with(mig, MigrationPhase::Pending, None, None, o.now);
        if changes(mig, &w) {
            p.writes.push(Write::Status(w));
        }
        p.requeue = Some(POLL);
        return p;
    }
    match choose_target(mig, vmi, &source, o) {
        Ok(target) => {
            let start = VirtualMachineInstanceMigrationState {
                migration_uid: Some(uid.clone()),
                source_node: Some(source.clone()),
                target_node: Some(target.clone()),
                mode: Some(MODE.into()),
                ..Default::default()
            };
            p.writes.push(Write::Start(start.clone()));
            let w = status_with(mig, MigrationPhase::Scheduled, None, Some(&start), o.now);
            p.writes.push(Write::Status(w));
            p.requeue = Some(POLL);
        }
        Err(why) => {
            let created = mig.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let waited = created
                .map(|c| o.now.duration_since(c))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            if waited >= SCHEDULING_TIMEOUT {
                fail(
                    &mut p,
                    "Unschedulable",
                    format!(
                        "no node to migrate VMI {vmi_name} to within {}s: {why}",
                        SCHEDULING_TIMEOUT.as_secs()
                    ),
                );
                return p;
            }
            let w = status_with(mig, MigrationPhase::Scheduling, None, None, o.now);
            if changes(mig, &w) {
                p.writes.push(Write::Status(w));
                p.event = note(
                    true,
                    Reason::FailedScheduling,
                    format!("no node to migrate VMI {vmi_name} to yet: {why}"),
                );
            }
            p.requeue = Some(POLL);
        }
    }
    p
}

/// The target node: any node but the source that `vmi` qualifies for and
/// that carries the migration's added node selector.
fn choose_target(
    mig: &VirtualMachineInstanceMigration,
    vmi: &VirtualMachineInstance,
    source: &str,
    o: &Observed<'_>,
) -> Result<String, String> {
    let added = mig.spec.added_node_selector.clone().unwrap_or_default();
    let nodes: Vec<NodeInfo> = o
        .nodes
        .iter()
        .filter(|n| n.name != source)
        .filter(|n| added.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
        .cloned()
        .collect();
    if nodes.is_empty() {
        return Err(format!(
            "0/{} nodes are available: no node other than the source node {source}{}",
            o.nodes.len(),
            if added.is_empty() {
                ""
            } else {
                " carries the added node selector"
            }
        ));
    }
    placement::choose_with_usage(vmi, &nodes, o.used, o.now, o.lease_timeout)
}

#[cfg(test)]
#[path = "migration_tests.rs"]
mod tests;
