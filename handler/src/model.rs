//! What the handler should do about one VMI, given what libvirt shows: pure
//! functions of (VMI, domain, time), so every branch has a unit test.

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::conditions::{self, condition};
use ironvirt_crds::vmi::{
    Condition, PhaseTransitionTimestamp, StartStrategy, VirtualMachineInstanceNetworkInterface,
    VirtualMachineInstancePhase as Phase,
};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::events::Reason;
use crate::libvirt::{DomState, DomainInfo, Shutoff};

/// KubeVirt's default grace period for a guest to power off.
pub const DEFAULT_GRACE_SECONDS: i64 = 30;

/// The next thing to do for a VMI on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not this handler's business (not placed here, or not yet).
    Ignore,
    /// Make the volumes, define the domain and start it.
    Create { paused: bool },
    /// The domain is defined but not running yet: start it.
    Start { paused: bool },
    /// A domain of the same name belongs to an older VMI: remove it first.
    RemoveStale { name: String, uid: String },
    /// The domain runs: report it.
    Report(Observed),
    /// The VMI has ended: record the final phase.
    End {
        phase: Phase,
        reason: Reason,
        message: String,
    },
    /// Being deleted and the guest still runs: press the power button (unless
    /// this handler already did) and check again shortly.
    Shutdown { press: bool },
    /// The grace period is over (or the VMI has ended): pull the plug.
    Destroy,
    /// The domain is stopped and the VMI is being deleted: undefine, delete
    /// files, drop the finalizer.
    Finalize,
}

/// What the VMI status should say about a live domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub paused: bool,
}

fn phase(vmi: &VirtualMachineInstance) -> Option<Phase> {
    vmi.status.as_ref().and_then(|s| s.phase)
}

/// Whether the VMI was failed because its node stopped renewing its Lease
/// (the operator's reason NodeUnresponsive).
fn failed_while_away(vmi: &VirtualMachineInstance) -> bool {
    let status = vmi.status.as_ref();
    status.and_then(|s| s.phase) == Some(Phase::Failed)
        && status.and_then(|s| s.reason.as_deref()) == Some("NodeUnresponsive")
}

fn status_node(vmi: &VirtualMachineInstance) -> Option<&str> {
    vmi.status.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The grace period of `vmi`, in seconds.
pub fn grace_seconds(vmi: &VirtualMachineInstance) -> i64 {
    vmi.spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0)
}

/// When a VMI being deleted must be off: its deletion time plus the grace period.
pub fn shutdown_deadline(vmi: &VirtualMachineInstance) -> Option<Timestamp> {
    let deleted = vmi.metadata.deletion_timestamp.as_ref()?.0;
    Some(deleted + SignedDuration::from_secs(grace_seconds(vmi)))
}

fn active(state: DomState) -> bool {
    matches!(state, DomState::Running | DomState::Paused { .. })
}

/// Decides the next step. `domain` is the domain named after the VMI, if any;
/// `shutdown_sent` says whether this handler already pressed the power button.
pub fn plan(
    vmi: &VirtualMachineInstance,
    node: &str,
    domain: Option<&DomainInfo>,
    shutdown_sent: bool,
    now: Timestamp,
) -> Step {
    let uid = vmi.uid().unwrap_or_default();
    let ours = domain.filter(|d| d.owner.uid == uid);
    let stale = domain.filter(|d| d.owner.uid != uid);

    if vmi.metadata.deletion_timestamp.is_some() {
        return match ours {
            Some(d) if active(d.state) => {
                let past_deadline = shutdown_deadline(vmi).is_some_and(|t| now >= t);
                if past_deadline {
                    Step::Destroy
                } else {
                    Step::Shutdown {
                        press: !shutdown_sent,
                    }
                }
            }
            _ => Step::Finalize,
        };
    }
    if status_node(vmi) != Some(node) {
        return Step::Ignore;
    }
    let paused_start = vmi.spec.start_strategy == Some(StartStrategy::Paused);
    match phase(vmi) {
        Some(p) if p.is_final() => match ours {
            // Failed elsewhere (NodeUnresponsive) while the guest still runs here.
            Some(d) if active(d.state) => Step::Destroy,
            // Failed by the control plane while this node was away (its
            // handler stopped renewing its Lease): the VMI never runs here
            // again, so neither its definition nor its files stay (fencing:
            // a node that comes back keeps nothing of what moved on).
            Some(d) if failed_while_away(vmi) => Step::RemoveStale {
                name: d.name.clone(),
                uid: d.owner.uid.clone(),
            },
            _ => Step::Ignore,
        },
        Some(Phase::Scheduled) => match (ours, stale) {
            (_, Some(s)) => Step::RemoveStale {
                name: s.name.clone(),
                uid: s.owner.uid.clone(),
            },
            (None, None) => Step::Create {
                paused: paused_start,
            },
            (Some(d), _) => match d.state {
                DomState::Shutoff(Shutoff::Unknown) => Step::Start {
                    paused: paused_start,
                },
                DomState::Running => Step::Report(Observed { paused: false }),
                DomState::Paused { by_user } => Step::Report(Observed { paused: by_user }),
                other => ended(other),
            },
        },
        Some(Phase::Running) => match ours {
            // Moved to (or moving to) another node by a live migration.
            None if crate::migrate::migrated_away(vmi, node) => Step::Ignore,
            None => Step::End {
                phase: Phase::Failed,
                reason: Reason::DomainLost,
                message: "the VMI's libvirt domain no longer exists".into(),
            },
            Some(d) => match d.state {
                DomState::Running => Step::Report(Observed { paused: false }),
                DomState::Paused { by_user } => Step::Report(Observed { paused: by_user }),
                // Stopped here at the switch-over of a live migration, just
                // before libvirt undefines it: the guest runs on the target.
                _ if crate::migrate::migrated_away(vmi, node) => Step::Ignore,
                other => ended(other),
            },
        },
        _ => Step::Ignore,
    }
}

/// The final phase for a domain that stopped by itself.
fn ended(state: DomState) -> Step {
    let (phase, reason, message) = match state {
        DomState::Shutoff(Shutoff::Shutdown) => (
            Phase::Succeeded,
            Reason::GuestShutdown,
            "the guest powered off",
        ),
        DomState::Shutoff(Shutoff::Destroyed) => (
            Phase::Failed,
            Reason::DomainDestroyed,
            "the domain was destroyed outside ironvirt",
        ),
        DomState::Shutoff(Shutoff::Crashed) | DomState::Crashed => {
            (Phase::Failed, Reason::QemuCrashed, "the QEMU process died")
        }
        DomState::Shutoff(Shutoff::Failed) => {
            (Phase::Failed, Reason::StartFailed, "QEMU failed to start")
        }
        _ => (
            Phase::Failed,
            Reason::DomainStopped,
            "the domain stopped for a reason libvirt does not know",
        ),
    };
    Step::End {
        phase,
        reason,
        message: message.into(),
    }
}

/// The status a running domain gives the VMI: phase Running, Ready, Paused and
/// the interfaces with their MACs (`macs` by libvirt alias `ua-<name>`).
pub fn running_status(
    vmi: &VirtualMachineInstance,
    node: &str,
    observed: &Observed,
    macs: &[(String, String)],
    pod_address: Option<std::net::Ipv4Addr>,
    now: Timestamp,
) -> DesiredStatus {
    let mut conds = vec![condition("Ready", true, "", "")];
    conds.push(match crate::migrate::live_migratable(vmi) {
        None => condition("LiveMigratable", true, "", ""),
        Some((reason, message)) => condition("LiveMigratable", false, reason, &message),
    });
    let masquerade: Option<String> = vmi
        .spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref())
        .and_then(|ifs| ifs.iter().find(|i| i.masquerade.is_some()))
        .map(|i| i.name.clone());
    if observed.paused {
        conds.push(condition(
            "Paused",
            true,
            "PausedByUser",
            "VMI was paused by user",
        ));
    }
    let interfaces = vmi
        .spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref())
        .map(|ifs| ifs.iter().map(|i| i.name.clone()).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            let default_pod = vmi.spec.networks.as_ref().is_none_or(Vec::is_empty)
                && vmi
                    .spec
                    .domain
                    .devices
                    .as_ref()
                    .and_then(|d| d.autoattach_pod_interface)
                    != Some(false);
            if default_pod {
                vec!["default".to_owned()]
            } else {
                Vec::new()
            }
        })
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let alias = format!("ua-{name}");
            // The masquerade interface (or KubeVirt's default pod interface)
            // has the VMI's address.
            let pod = masquerade
                .as_deref()
                .map_or(name == "default", |m| m == name);
            let ip = pod_address.filter(|_| pod).map(|a| a.to_string());
            VirtualMachineInstanceNetworkInterface {
                ip_addresses: ip.clone().map(|a| vec![a]),
                ip_address: ip,
                mac: macs
                    .iter()
                    .find(|(a, _)| *a == alias)
                    .map(|(_, m)| m.clone()),
                interface_name: Some(format!("eth{i}")),
                info_source: Some("domain".into()),
                name: Some(name),
            }
        })
        .collect();
    DesiredStatus {
        phase: Phase::Running,
        reason: None,
        node: node.to_owned(),
        conditions: conditions::merge(current_conditions(vmi), conds, now),
        interfaces: Some(interfaces),
        transitions: vec![ironvirt_crds::conditions::transition(
            vmi,
            Phase::Running,
            now,
        )],
    }
}

/// The status of a VMI that has ended.
pub fn final_status(
    vmi: &VirtualMachineInstance,
    node: &str,
    phase: Phase,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> DesiredStatus {
    DesiredStatus {
        phase,
        reason: Some(reason.to_owned()),
        node: node.to_owned(),
        conditions: conditions::merge(
            current_conditions(vmi),
            vec![condition("Ready", false, reason, message)],
            now,
        ),
        interfaces: None,
        transitions: vec![ironvirt_crds::conditions::transition(vmi, phase, now)],
    }
}

/// A VMI that could not be started: Failed, with the cause in the Ready condition.
pub fn start_failure(
    vmi: &VirtualMachineInstance,
    node: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> DesiredStatus {
    final_status(vmi, node, Phase::Failed, reason, message, now)
}

/// A VMI waiting on the node before its domain can start (an image pull
/// that failed and is retried): its phase unchanged, the cause in the Ready
/// condition.
pub fn waiting(
    vmi: &VirtualMachineInstance,
    node: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> DesiredStatus {
    let phase = vmi
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Scheduled);
    final_status(vmi, node, phase, reason, message, now)
}

/// A VMI whose image downloads: its phase unchanged (Scheduled, not yet
/// Running), Ready=False with reason Pulling and `progress` (how far the
/// download is) as its message. No status reason: nothing failed, and a
/// reason an earlier failed pull left goes.
pub fn pulling(
    vmi: &VirtualMachineInstance,
    node: &str,
    progress: &str,
    now: Timestamp,
) -> DesiredStatus {
    DesiredStatus {
        reason: None,
        ..waiting(vmi, node, Reason::Pulling.as_str(), progress, now)
    }
}

fn current_conditions(vmi: &VirtualMachineInstance) -> Option<&[Condition]> {
    vmi.status.as_ref().and_then(|s| s.conditions.as_deref())
}

/// The part of VMI status the handler owns (field manager `ironvirt-handler`).
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredStatus {
    pub phase: Phase,
    pub reason: Option<String>,
    pub node: String,
    /// Ready, LiveMigratable, and Paused while paused.
    pub conditions: Vec<Condition>,
    pub interfaces: Option<Vec<VirtualMachineInstanceNetworkInterface>>,
    /// The entry for `phase`.
    pub transitions: Vec<PhaseTransitionTimestamp>,
}

/// The condition types the handler owns.
const OWNED: [&str; 3] = ["Ready", "Paused", "LiveMigratable"];

impl DesiredStatus {
    /// Whether writing this would change anything but timestamps.
    pub fn differs_from(&self, vmi: &VirtualMachineInstance) -> bool {
        let Some(cur) = vmi.status.as_ref() else {
            return true;
        };
        let owned: Vec<Condition> = cur
            .conditions
            .iter()
            .flatten()
            .filter(|c| OWNED.contains(&c.type_.as_str()))
            .cloned()
            .collect();
        cur.phase != Some(self.phase)
            || cur.reason != self.reason
            || !conditions::eq_ignoring_time(Some(&owned), Some(&self.conditions))
            || (self.interfaces.is_some() && cur.interfaces != self.interfaces)
            || !self.transitions.iter().all(|t| {
                cur.phase_transition_timestamps
                    .iter()
                    .flatten()
                    .any(|c| c.phase == t.phase)
            })
    }

    /// The server-side apply body for the status subresource.
    pub fn apply_body(&self) -> serde_json::Value {
        let mut status = serde_json::json!({
            "phase": self.phase,
            "nodeName": self.node,
            "conditions": self.conditions,
            "phaseTransitionTimestamps": self.transitions,
        });
        if let Some(reason) = &self.reason {
            status["reason"] = serde_json::json!(reason);
        }
        if let Some(ifs) = &self.interfaces {
            status["interfaces"] = serde_json::json!(ifs);
        }
        serde_json::json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "status": status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domxml::DomainOwner;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const NODE: &str = "node-a";

    fn vmi(extra: &str) -> VirtualMachineInstance {
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: v, namespace: ns, uid: u1}}\nspec:\n  domain: {{memory: {{guest: 64Mi}}}}\n{extra}"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn placed(phase: &str) -> VirtualMachineInstance {
        vmi(&format!("status: {{phase: {phase}, nodeName: {NODE}}}\n"))
    }

    fn dom(uid: &str, state: DomState) -> DomainInfo {
        DomainInfo {
            name: "ironvirt-ns_v".into(),
            owner: DomainOwner {
                namespace: "ns".into(),
                name: "v".into(),
                uid: uid.into(),
                node: NODE.into(),
            },
            state,
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn a_node_back_from_the_dead_removes_what_was_failed_meanwhile() {
        let fenced = vmi(&format!(
            "status: {{phase: Failed, reason: NodeUnresponsive, nodeName: {NODE}}}\n"
        ));
        // Still running (a partition, not a crash): destroyed first.
        let running = dom("u1", DomState::Running);
        assert_eq!(
            plan(&fenced, NODE, Some(&running), false, at(0)),
            Step::Destroy
        );
        // Shut off (the machine died): undefined, with its files.
        let off = dom("u1", DomState::Shutoff(Shutoff::Destroyed));
        assert_eq!(
            plan(&fenced, NODE, Some(&off), false, at(0)),
            Step::RemoveStale {
                name: "ironvirt-ns_v".into(),
                uid: "u1".into()
            }
        );
        assert_eq!(plan(&fenced, NODE, None, false, at(0)), Step::Ignore);
        // A VMI that ended by itself keeps its domain until it is deleted.
        let done = vmi(&format!(
            "status: {{phase: Succeeded, reason: GuestShutdown, nodeName: {NODE}}}\n"
        ));
        let off = dom("u1", DomState::Shutoff(Shutoff::Shutdown));
        assert_eq!(plan(&done, NODE, Some(&off), false, at(0)), Step::Ignore);
    }

    #[test]
    fn a_vmi_migrating_away_is_neither_lost_nor_stopped_on_its_source() {
        let migrating = vmi(&format!(
            "status: {{phase: Running, nodeName: {NODE}, migrationState: {{migrationUid: m, sourceNode: {NODE}, targetNode: node-b, startTimestamp: '2026-12-03T10:00:00Z'}}}}\n"
        ));
        // Stopped at the switch-over, then gone: the guest runs on node-b.
        let stopped = dom("u1", DomState::Shutoff(Shutoff::Other));
        assert_eq!(
            plan(&migrating, NODE, Some(&stopped), false, at(0)),
            Step::Ignore
        );
        assert_eq!(plan(&migrating, NODE, None, false, at(0)), Step::Ignore);
        // While it still runs here, it is reported as usual.
        let running = dom("u1", DomState::Running);
        assert_eq!(
            plan(&migrating, NODE, Some(&running), false, at(0)),
            Step::Report(Observed { paused: false })
        );
        // Without a migration, the same facts end the VMI.
        let v = placed("Running");
        assert!(matches!(
            plan(&v, NODE, Some(&stopped), false, at(0)),
            Step::End { .. }
        ));
        assert!(matches!(
            plan(&v, NODE, None, false, at(0)),
            Step::End { .. }
        ));
    }

    #[test]
    fn scheduled_without_domain_creates_it() {
        let v = placed("Scheduled");
        assert_eq!(
            plan(&v, NODE, None, false, at(0)),
            Step::Create { paused: false }
        );
        let mut p = v.clone();
        p.spec.start_strategy = Some(StartStrategy::Paused);
        assert_eq!(
            plan(&p, NODE, None, false, at(0)),
            Step::Create { paused: true }
        );
    }

    #[test]
    fn defined_but_not_started_domain_is_started_not_recreated() {
        let v = placed("Scheduled");
        let d = dom("u1", DomState::Shutoff(Shutoff::Unknown));
        assert_eq!(
            plan(&v, NODE, Some(&d), false, at(0)),
            Step::Start { paused: false }
        );
    }

    #[test]
    fn a_domain_of_an_older_vmi_with_the_same_name_is_removed_first() {
        let v = placed("Scheduled");
        let d = dom("old", DomState::Running);
        assert_eq!(
            plan(&v, NODE, Some(&d), false, at(0)),
            Step::RemoveStale {
                name: "ironvirt-ns_v".into(),
                uid: "old".into()
            }
        );
    }

    #[test]
    fn running_domain_is_reported_with_pause_state() {
        let v = placed("Scheduled");
        assert_eq!(
            plan(&v, NODE, Some(&dom("u1", DomState::Running)), false, at(0)),
            Step::Report(Observed { paused: false })
        );
        let r = placed("Running");
        assert_eq!(
            plan(
                &r,
                NODE,
                Some(&dom("u1", DomState::Paused { by_user: true })),
                false,
                at(0)
            ),
            Step::Report(Observed { paused: true })
        );
    }

    #[test]
    fn guest_poweroff_succeeds_and_crash_fails() {
        let r = placed("Running");
        let off = dom("u1", DomState::Shutoff(Shutoff::Shutdown));
        assert!(matches!(
            plan(&r, NODE, Some(&off), false, at(0)),
            Step::End {
                phase: Phase::Succeeded,
                ..
            }
        ));
        for s in [
            DomState::Shutoff(Shutoff::Crashed),
            DomState::Crashed,
            DomState::Shutoff(Shutoff::Destroyed),
            DomState::Shutoff(Shutoff::Unknown),
        ] {
            assert!(matches!(
                plan(&r, NODE, Some(&dom("u1", s)), false, at(0)),
                Step::End {
                    phase: Phase::Failed,
                    ..
                }
            ));
        }
        assert!(matches!(
            plan(&r, NODE, None, false, at(0)),
            Step::End { phase: Phase::Failed, reason, .. } if reason.as_str() == "DomainLost"
        ));
    }

    #[test]
    fn vmis_of_other_nodes_and_unplaced_ones_are_ignored() {
        let v = vmi("status: {phase: Scheduled, nodeName: other}\n");
        assert_eq!(plan(&v, NODE, None, false, at(0)), Step::Ignore);
        let p = vmi("status: {phase: Pending}\n");
        assert_eq!(plan(&p, NODE, None, false, at(0)), Step::Ignore);
    }

    #[test]
    fn deletion_presses_the_button_then_destroys_after_grace() {
        let v = vmi(&format!(
            "  terminationGracePeriodSeconds: 10\nstatus: {{phase: Running, nodeName: {NODE}}}\n"
        ));
        let mut v = v;
        v.metadata.deletion_timestamp = Some(Time(at(100)));
        let running = dom("u1", DomState::Running);
        assert!(matches!(
            plan(&v, NODE, Some(&running), false, at(101)),
            Step::Shutdown { press: true }
        ));
        assert!(matches!(
            plan(&v, NODE, Some(&running), true, at(105)),
            Step::Shutdown { press: false }
        ));
        assert_eq!(plan(&v, NODE, Some(&running), true, at(110)), Step::Destroy);
        let off = dom("u1", DomState::Shutoff(Shutoff::Shutdown));
        assert_eq!(plan(&v, NODE, Some(&off), true, at(111)), Step::Finalize);
        assert_eq!(plan(&v, NODE, None, true, at(111)), Step::Finalize);
        // A stale domain of another uid is not this VMI's to tear down.
        assert_eq!(
            plan(
                &v,
                NODE,
                Some(&dom("old", DomState::Running)),
                false,
                at(101)
            ),
            Step::Finalize
        );
    }

    #[test]
    fn a_final_vmi_whose_guest_still_runs_is_destroyed() {
        let f = placed("Failed");
        assert_eq!(
            plan(&f, NODE, Some(&dom("u1", DomState::Running)), false, at(0)),
            Step::Destroy
        );
        assert_eq!(plan(&f, NODE, None, false, at(0)), Step::Ignore);
    }

    #[test]
    fn the_pod_interface_reports_the_vmi_address() {
        let v = placed("Scheduled");
        let macs = vec![("ua-default".to_owned(), "02:00:00:00:00:01".to_owned())];
        let addr = std::net::Ipv4Addr::new(10, 250, 0, 2);
        let s = running_status(
            &v,
            NODE,
            &Observed { paused: false },
            &macs,
            Some(addr),
            at(5),
        );
        let body = s.apply_body();
        assert_eq!(body["status"]["interfaces"][0]["ipAddress"], "10.250.0.2");
        assert_eq!(
            body["status"]["interfaces"][0]["ipAddresses"][0],
            "10.250.0.2"
        );
        // A bridge interface gets none.
        let bridge: VirtualMachineInstance = serde_yaml::from_str(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: b, namespace: ns, uid: u2}\n\
             spec:\n  domain:\n    devices:\n      interfaces: [{name: lan, bridge: {}}]\n  networks: [{name: lan, pod: {}}]\n",
        )
        .unwrap();
        let s = running_status(
            &bridge,
            NODE,
            &Observed { paused: false },
            &[],
            Some(addr),
            at(5),
        );
        assert!(
            s.apply_body()["status"]["interfaces"][0]
                .get("ipAddress")
                .is_none()
        );
    }

    #[test]
    fn status_is_rewritten_only_when_something_but_time_changed() {
        let v = placed("Scheduled");
        let macs = vec![("ua-default".to_owned(), "02:00:00:00:00:01".to_owned())];
        let s = running_status(&v, NODE, &Observed { paused: false }, &macs, None, at(5));
        assert!(s.differs_from(&v));
        let body = s.apply_body();
        assert_eq!(body["status"]["phase"], "Running");
        assert_eq!(body["status"]["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(body["status"]["interfaces"][0]["name"], "default");
        // After the write, the same observation at a later time changes nothing.
        let mut written = v.clone();
        written.status = serde_json::from_value(body["status"].clone()).unwrap();
        let again = running_status(
            &written,
            NODE,
            &Observed { paused: false },
            &macs,
            None,
            at(50),
        );
        assert!(!again.differs_from(&written));
        assert_eq!(again.conditions[0].last_transition_time, Some(Time(at(5))));
        // Pausing does.
        let paused = running_status(
            &written,
            NODE,
            &Observed { paused: true },
            &macs,
            None,
            at(60),
        );
        assert!(paused.differs_from(&written));
        assert_eq!(paused.conditions.len(), 3);
    }

    #[test]
    fn a_pull_in_progress_keeps_the_vmi_scheduled_with_its_progress() {
        let v = vmi(&format!(
            "status:\n  phase: Scheduled\n  nodeName: {NODE}\n  reason: ErrImagePull\n  \
             conditions: [{{type: Ready, status: 'False', reason: ErrImagePull, message: refused}}]\n"
        ));
        let line = "pulling quay.io/x:tag: 12.3 MiB of 40.0 MiB (30%)";
        let s = pulling(&v, NODE, line, at(5));
        assert!(s.differs_from(&v));
        let body = s.apply_body();
        assert_eq!(body["status"]["phase"], "Scheduled");
        // The earlier failure's reason goes (apply drops what it omits).
        assert!(body["status"].get("reason").is_none());
        let ready = &body["status"]["conditions"][0];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "Pulling");
        assert_eq!(ready["message"], line);
        // Still False: the transition time stays the earlier one's (none here).
        let mut written = v.clone();
        written.status = serde_json::from_value(body["status"].clone()).unwrap();
        assert!(!pulling(&written, NODE, line, at(9)).differs_from(&written));
        let further = "pulling quay.io/x:tag: 20.0 MiB of 40.0 MiB (50%)";
        let next = pulling(&written, NODE, further, at(9));
        assert!(next.differs_from(&written));
        assert_eq!(
            next.conditions[0].last_transition_time,
            written
                .status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()[0]
                .last_transition_time
        );
    }

    #[test]
    fn final_status_names_the_reason() {
        let v = placed("Running");
        let s = final_status(
            &v,
            NODE,
            Phase::Failed,
            "QemuCrashed",
            "the QEMU process died",
            at(1),
        );
        let body = s.apply_body();
        assert_eq!(body["status"]["phase"], "Failed");
        assert_eq!(body["status"]["reason"], "QemuCrashed");
        assert_eq!(body["status"]["conditions"][0]["status"], "False");
        assert_eq!(body["status"]["conditions"][0]["reason"], "QemuCrashed");
    }
}
