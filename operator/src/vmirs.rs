//! The VMI ReplicaSet controller's decisions as pure functions: which VMIs to
//! adopt, release, create and delete, and the replica set's status.

use ironvirt_crds::vmi::{Condition, VirtualMachineInstancePhase as Phase};
use ironvirt_crds::{
    VirtualMachineInstance, VirtualMachineInstanceReplicaSet,
    VirtualMachineInstanceReplicaSetStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use ironvirt_crds::wire::VMI_FINALIZER;

use crate::conditions::{self, condition};
use crate::replicas;

/// What one reconcile of a replica set does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RsPlan {
    /// Orphans matching the selector: add our controller reference.
    pub adopt: Vec<String>,
    /// Owned VMIs that no longer match: remove our reference.
    pub release: Vec<String>,
    pub create: Vec<VirtualMachineInstance>,
    /// Names to delete (finished VMIs and scale-down victims).
    pub delete: Vec<String>,
    pub status: VirtualMachineInstanceReplicaSetStatus,
}

fn phase(vmi: &VirtualMachineInstance) -> Phase {
    vmi.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending)
}

fn ready(vmi: &VirtualMachineInstance) -> bool {
    phase(vmi) == Phase::Running
        && conditions::is_true(
            vmi.status.as_ref().and_then(|s| s.conditions.as_deref()),
            "Ready",
        )
}

/// The controller reference a replica set puts on its VMIs.
pub fn owner_ref(rs: &VirtualMachineInstanceReplicaSet) -> OwnerReference {
    replicas::owner_ref(rs)
}

/// A new VMI from the template: generateName `<rs>-`, owned by the replica set.
pub fn new_vmi(rs: &VirtualMachineInstanceReplicaSet) -> VirtualMachineInstance {
    let meta = rs.spec.template.metadata.clone().unwrap_or_default();
    VirtualMachineInstance {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", rs.name_any())),
            namespace: rs.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: meta.annotations,
            owner_references: Some(vec![owner_ref(rs)]),
            finalizers: Some(vec![VMI_FINALIZER.to_owned()]),
            ..Default::default()
        },
        spec: rs.spec.template.spec.clone().unwrap_or_default(),
        status: None,
    }
}

/// Scale-down order: VMIs not running yet go first (Pending, then Scheduled),
/// then not-ready ones, newest first within each group.
fn victim_rank(v: &VirtualMachineInstance) -> (u8, std::cmp::Reverse<Option<Timestamp>>) {
    let group = match phase(v) {
        Phase::Pending | Phase::Scheduling | Phase::Unknown => 0,
        Phase::Scheduled => 1,
        Phase::Running if !ready(v) => 2,
        _ => 3,
    };
    (
        group,
        std::cmp::Reverse(v.metadata.creation_timestamp.as_ref().map(|t| t.0)),
    )
}

/// Decides one reconcile of `rs`, given every VMI in its namespace.
pub fn plan(
    rs: &VirtualMachineInstanceReplicaSet,
    vmis: &[VirtualMachineInstance],
    now: Timestamp,
) -> RsPlan {
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let sorted = replicas::sort_out(uid, &rs.spec.selector, vmis, |v| phase(v).is_final());
    let mut p = RsPlan {
        adopt: sorted.adopt,
        release: sorted.release,
        // Finished VMIs are replaced.
        delete: sorted.finished,
        ..RsPlan::default()
    };
    let mut active = sorted.active;
    let paused = rs.spec.paused.unwrap_or(false);
    let want = usize::try_from(rs.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    if !paused {
        if active.len() < want {
            p.create = (active.len()..want).map(|_| new_vmi(rs)).collect();
        } else if active.len() > want {
            let mut victims = active.clone();
            victims.sort_by_key(|v| victim_rank(v));
            let extra = active.len() - want;
            let gone: Vec<String> = victims.iter().take(extra).map(|v| v.name_any()).collect();
            active.retain(|v| !gone.contains(&v.name_any()));
            p.delete.extend(gone);
        }
    } else {
        p.delete.clear();
    }
    let mut conds: Vec<Condition> = Vec::new();
    if paused {
        conds.push(condition(
            "ReplicaPaused",
            true,
            "Paused",
            "spec.paused is true: not creating or deleting VMIs",
        ));
    }
    let old = rs.status.as_ref().and_then(|s| s.conditions.as_deref());
    p.status = VirtualMachineInstanceReplicaSetStatus {
        replicas: Some(i32::try_from(active.len()).unwrap_or(i32::MAX)),
        ready_replicas: Some(
            i32::try_from(active.iter().filter(|v| ready(v)).count()).unwrap_or(i32::MAX),
        ),
        label_selector: Some(replicas::selector_string(&rs.spec.selector)),
        conditions: Some(conditions::merge(old, conds, now)),
    };
    p
}

/// Whether the status differs in anything but condition timestamps.
pub fn status_changed(
    old: Option<&VirtualMachineInstanceReplicaSetStatus>,
    new: &VirtualMachineInstanceReplicaSetStatus,
) -> bool {
    let Some(old) = old else { return true };
    old.replicas != new.replicas
        || old.ready_replicas != new.ready_replicas
        || old.label_selector != new.label_selector
        || !conditions::eq_ignoring_time(old.conditions.as_deref(), new.conditions.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32, paused: bool) -> VirtualMachineInstanceReplicaSet {
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceReplicaSet\nmetadata: {{name: rs, namespace: ns, uid: rs-uid}}\nspec:\n  replicas: {replicas}\n  paused: {paused}\n  selector: {{matchLabels: {{app: x}}}}\n  template: {{metadata: {{labels: {{app: x}}}}, spec: {{domain: {{}}}}}}\n"
        ))
        .unwrap()
    }

    fn vmi(
        name: &str,
        labels: &str,
        owner: Option<&str>,
        phase: &str,
        created: i64,
    ) -> VirtualMachineInstance {
        let owner = owner
            .map(|u| format!(", ownerReferences: [{{apiVersion: kubevirt.io/v1, kind: VirtualMachineInstanceReplicaSet, name: rs, uid: {u}, controller: true}}]"))
            .unwrap_or_default();
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: {name}, labels: {labels}, creationTimestamp: '{}'{owner}}}\nspec: {{domain: {{}}}}\nstatus: {{phase: {phase}}}\n",
            Timestamp::from_second(created).unwrap()
        ))
        .unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1000).unwrap()
    }

    #[test]
    fn scales_up_from_zero() {
        let p = plan(&rs(5, false), &[], now());
        assert_eq!(p.create.len(), 5);
        let v = &p.create[0];
        assert_eq!(v.metadata.generate_name.as_deref(), Some("rs-"));
        assert_eq!(v.labels()["app"], "x");
        assert_eq!(v.owner_references()[0].uid, "rs-uid");
        assert_eq!(p.status.replicas, Some(0));
        assert_eq!(p.status.label_selector.as_deref(), Some("app=x"));
    }

    #[test]
    fn scales_down_pending_and_newest_first() {
        let vmis = [
            vmi("old-running", "{app: x}", Some("rs-uid"), "Running", 1),
            vmi("new-running", "{app: x}", Some("rs-uid"), "Running", 5),
            vmi("scheduled", "{app: x}", Some("rs-uid"), "Scheduled", 2),
            vmi("pending", "{app: x}", Some("rs-uid"), "Pending", 3),
        ];
        let p = plan(&rs(1, false), &vmis, now());
        assert_eq!(p.delete, ["pending", "scheduled", "new-running"]);
        assert_eq!(p.status.replicas, Some(1));
    }

    #[test]
    fn adopts_orphans_and_releases_non_matching() {
        let vmis = [
            vmi("orphan", "{app: x}", None, "Running", 1),
            vmi("strayed", "{app: y}", Some("rs-uid"), "Running", 1),
            vmi("someone-elses", "{app: x}", Some("other"), "Running", 1),
        ];
        let p = plan(&rs(1, false), &vmis, now());
        assert_eq!(p.adopt, ["orphan"]);
        assert_eq!(p.release, ["strayed"]);
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn replaces_finished_vmis() {
        let vmis = [vmi("done", "{app: x}", Some("rs-uid"), "Succeeded", 1)];
        let p = plan(&rs(1, false), &vmis, now());
        assert_eq!(p.delete, ["done"]);
        assert_eq!(p.create.len(), 1);
    }

    #[test]
    fn paused_does_nothing_and_says_so() {
        let vmis = [vmi("a", "{app: x}", Some("rs-uid"), "Running", 1)];
        let p = plan(&rs(3, true), &vmis, now());
        assert!(p.create.is_empty() && p.delete.is_empty());
        assert!(conditions::is_true(
            p.status.conditions.as_deref(),
            "ReplicaPaused"
        ));
    }
}
