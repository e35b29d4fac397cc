//! Moving VMIs off a node that is cordoned or drained, as a pure function of
//! the node and the VMIs on it ([`plan`]); `controller::evacuation` looks
//! at every node now and then and applies the plan.
//!
//! By each VMI's `evictionStrategy` (else the cluster default, KubeVirt's
//! `None` unless the operator is told otherwise):
//!
//! | strategy | cordoned | draining (taint `kubevirt.io/drain`) |
//! |---|---|---|
//! | LiveMigrate | migrated | migrated; not migratable: blocks the drain |
//! | LiveMigrateIfPossible | migrated if it can be | migrated, else stopped (evicted) |
//! | None | stays | stopped (evicted), as `kubectl drain` evicts a pod |
//! | External | stays | stays: something else moves it (blocks the drain) |
//!
//! A stopped VMI is deleted: its VM starts it again on another node when
//! its runStrategy says so. There are no pods for `kubectl drain` to evict,
//! so `ironctl drain` cordons the node, adds the taint, and waits.

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::{EvictionStrategy, VirtualMachineInstancePhase as Phase};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

/// The taint that drains a node (KubeVirt's).
pub const DRAIN_TAINT: &str = "kubevirt.io/drain";
/// The generateName of the migrations an evacuation makes.
pub const EVACUATION_GENERATE_NAME: &str = "kubevirt-evacuation-";

/// How a node asks its VMIs to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// Not at all.
    No,
    /// Cordoned (`spec.unschedulable`): migratable VMIs move.
    Cordoned,
    /// Drained (the [`DRAIN_TAINT`] taint): every VMI leaves by its strategy.
    Draining,
}

/// What a node asks of its VMIs.
pub fn leaving(node: &Node) -> Leaving {
    let spec = node.spec.as_ref();
    let drain = spec.and_then(|s| s.taints.as_ref()).is_some_and(|ts| {
        ts.iter()
            .any(|t| t.key == DRAIN_TAINT && t.effect != "PreferNoSchedule")
    });
    if drain {
        Leaving::Draining
    } else if spec.and_then(|s| s.unschedulable) == Some(true) {
        Leaving::Cordoned
    } else {
        Leaving::No
    }
}

/// What happens to one VMI of a leaving node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Evacuate {
    /// Create a migration of the VMI (name).
    Migrate(String),
    /// Stop the VMI (delete it).
    Evict(String),
    /// The VMI stays, and says why (the drain waits for it).
    Blocked { vmi: String, why: String },
}

fn live_migratable(vmi: &VirtualMachineInstance) -> Result<(), String> {
    let cond = vmi
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "LiveMigratable"));
    match cond {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(c
            .message
            .clone()
            .unwrap_or_else(|| c.reason.clone().unwrap_or_default())),
        None => Err("its LiveMigratable condition is not known yet".into()),
    }
}

/// Decides what happens to `vmi` on a node that asks `how`; `in_flight`:
/// the VMI has an unfinished migration already (then nothing is done).
pub fn decide(
    how: Leaving,
    vmi: &VirtualMachineInstance,
    default: EvictionStrategy,
    in_flight: bool,
) -> Option<Evacuate> {
    let name = vmi.name_any();
    let phase = vmi.status.as_ref().and_then(|s| s.phase);
    if how == Leaving::No
        || in_flight
        || vmi.metadata.deletion_timestamp.is_some()
        || phase != Some(Phase::Running)
    {
        return None;
    }
    let strategy = vmi.spec.eviction_strategy.unwrap_or(default);
    let draining = how == Leaving::Draining;
    match (strategy, live_migratable(vmi)) {
        (EvictionStrategy::LiveMigrate | EvictionStrategy::LiveMigrateIfPossible, Ok(())) => {
            Some(Evacuate::Migrate(name))
        }
        (EvictionStrategy::LiveMigrate, Err(why)) if draining => Some(Evacuate::Blocked {
            vmi: name,
            why: format!("evictionStrategy LiveMigrate, but it cannot migrate: {why}"),
        }),
        (EvictionStrategy::LiveMigrateIfPossible | EvictionStrategy::None, _) if draining => {
            Some(Evacuate::Evict(name))
        }
        (EvictionStrategy::External, _) if draining => Some(Evacuate::Blocked {
            vmi: name,
            why: "evictionStrategy External: waiting for something else to move it".into(),
        }),
        _ => None,
    }
}

/// [`decide`] for each of `vmis` (by name, `in_flight(name)`).
pub fn plan<'a>(
    how: Leaving,
    vmis: impl IntoIterator<Item = &'a VirtualMachineInstance>,
    default: EvictionStrategy,
    in_flight: impl Fn(&str) -> bool,
) -> Vec<Evacuate> {
    vmis.into_iter()
        .filter_map(|v| decide(how, v, default, in_flight(&v.name_any())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(unschedulable: bool, taint: Option<&str>) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {
                "unschedulable": unschedulable,
                "taints": taint.map(|effect| vec![serde_json::json!({"key": DRAIN_TAINT, "value": "draining", "effect": effect})]).unwrap_or_default(),
            },
        }))
        .unwrap()
    }

    fn vmi(name: &str, strategy: Option<&str>, migratable: bool) -> VirtualMachineInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"domain": {"devices": {}}, "evictionStrategy": strategy},
            "status": {"phase": "Running", "nodeName": "n1", "conditions": [
                {"type": "LiveMigratable", "status": if migratable { "True" } else { "False" },
                 "message": if migratable { "" } else { "hostDisk d is on the node" }}]},
        }))
        .unwrap()
    }

    #[test]
    fn cordon_and_the_drain_taint_are_read_from_the_node() {
        assert_eq!(leaving(&node(false, None)), Leaving::No);
        assert_eq!(leaving(&node(true, None)), Leaving::Cordoned);
        assert_eq!(leaving(&node(true, Some("NoSchedule"))), Leaving::Draining);
        assert_eq!(leaving(&node(false, Some("NoExecute"))), Leaving::Draining);
        assert_eq!(leaving(&node(false, Some("PreferNoSchedule"))), Leaving::No);
    }

    #[test]
    fn each_strategy_leaves_as_kubevirt_says() {
        let vmis = [
            vmi("lm", Some("LiveMigrate"), true),
            vmi("lm-stuck", Some("LiveMigrate"), false),
            vmi("ifp", Some("LiveMigrateIfPossible"), true),
            vmi("ifp-stuck", Some("LiveMigrateIfPossible"), false),
            vmi("none", Some("None"), true),
            vmi("ext", Some("External"), true),
            vmi("default", None, true),
        ];
        let none = |_: &str| false;
        let cordoned = plan(Leaving::Cordoned, &vmis, EvictionStrategy::None, none);
        assert_eq!(
            cordoned,
            vec![
                Evacuate::Migrate("lm".into()),
                Evacuate::Migrate("ifp".into())
            ]
        );
        let drained = plan(Leaving::Draining, &vmis, EvictionStrategy::None, none);
        let want = vec![
            Evacuate::Migrate("lm".into()),
            Evacuate::Blocked {
                vmi: "lm-stuck".into(),
                why:
                    "evictionStrategy LiveMigrate, but it cannot migrate: hostDisk d is on the node"
                        .into(),
            },
            Evacuate::Migrate("ifp".into()),
            Evacuate::Evict("ifp-stuck".into()),
            Evacuate::Evict("none".into()),
            Evacuate::Blocked {
                vmi: "ext".into(),
                why: "evictionStrategy External: waiting for something else to move it".into(),
            },
            Evacuate::Evict("default".into()),
        ];
        assert_eq!(drained, want);
        // The cluster default applies to VMIs without a strategy.
        let drained = plan(
            Leaving::Draining,
            &vmis[6..],
            EvictionStrategy::LiveMigrate,
            none,
        );
        assert_eq!(drained, vec![Evacuate::Migrate("default".into())]);
        assert!(plan(Leaving::No, &vmis, EvictionStrategy::LiveMigrate, none).is_empty());
    }

    #[test]
    fn a_vmi_already_migrating_or_not_running_is_left_alone() {
        let vmis = [vmi("lm", Some("LiveMigrate"), true)];
        assert!(
            plan(Leaving::Draining, &vmis, EvictionStrategy::None, |n| n
                == "lm")
            .is_empty()
        );
        let mut stopped = vmi("lm", Some("LiveMigrate"), true);
        stopped.status.as_mut().unwrap().phase = Some(Phase::Succeeded);
        assert!(
            plan(
                Leaving::Draining,
                [&stopped],
                EvictionStrategy::None,
                |_| false
            )
            .is_empty()
        );
    }
}
