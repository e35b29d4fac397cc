//! The VirtualMachine controller's decisions, as pure functions of the VM, its
//! VMI (if any) and the time: which VMI to create or delete, and the VM's
//! status. The runtime glue in `controller::vm` applies them.

use std::collections::BTreeMap;
use std::time::Duration;

use ironvirt_crds::vm::{RunStrategy, StartFailure, StateChangeAction, VirtualMachineStatus};
use ironvirt_crds::vmi::{Condition, VirtualMachineInstancePhase as Phase};
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;

use ironvirt_crds::validate::{self, FieldError};
use ironvirt_crds::wire::{NODE_NAME_LABEL, VMI_FINALIZER};

use crate::conditions::{self, condition};
pub use crate::events::EventNote;
use crate::events::Reason;
/// Label on a VM's VMI naming the VM.
pub const VM_LABEL: &str = "kubevirt.io/vm";

/// First retry delay after a failed VMI; doubles per failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A VMI that has run this long resets the failure count.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// What to do with the VM's VMI.
#[derive(Debug, Clone, PartialEq)]
pub enum VmiAction {
    Nothing,
    Create(Box<VirtualMachineInstance>),
    /// Delete the VMI with this UID (a precondition, so a newer VMI is never hit).
    Delete {
        uid: String,
    },
}

/// Everything one reconcile of a VM decides.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    pub action: VmiAction,
    /// The VM's status as it should be (conditions with merged timestamps).
    pub status: VirtualMachineStatus,
    /// Come back after this long even if nothing changes (backoff, timers).
    pub requeue: Option<Duration>,
    pub event: Option<EventNote>,
}

/// The delay before the `count`-th retry (count ≥ 1).
pub fn backoff(count: i32) -> Duration {
    let shift = u32::try_from(count.saturating_sub(1)).unwrap_or(0).min(16);
    BASE_BACKOFF.saturating_mul(1u32 << shift).min(MAX_BACKOFF)
}

fn to_signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn until(now: Timestamp, t: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
}

/// The VMI a VM runs: its template, named after the VM, owned by it, labelled
/// with `kubevirt.io/vm=<name>`, with the VMI finalizer.
pub fn vmi_for(vm: &VirtualMachine) -> Result<VirtualMachineInstance, Vec<FieldError>> {
    vmi_with(vm, &Instancetypes::default())
}

/// [`vmi_for`], with the VM's instancetype and preference expanded into it.
pub fn vmi_with(
    vm: &VirtualMachine,
    it: &Instancetypes,
) -> Result<VirtualMachineInstance, Vec<FieldError>> {
    let mut vmi = vmi_base(vm)?;
    let resolved = ironvirt_crds::expand::Resolved {
        instancetype: vm
            .spec
            .instancetype
            .as_deref()
            .zip(it.instancetype.as_ref().map(|s| &s.spec)),
        preference: vm
            .spec
            .preference
            .as_deref()
            .zip(it.preference.as_ref().map(|s| &s.spec)),
    };
    let mut annotations = vmi.metadata.annotations.take().unwrap_or_default();
    ironvirt_crds::expand::apply(&mut vmi.spec, &mut annotations, &resolved, "spec")?;
    vmi.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    Ok(vmi)
}

/// A copy of an instancetype or preference the VM uses, and where it is kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot<T> {
    pub spec: T,
    pub status: ironvirt_crds::instancetype::StatusRef,
}

/// The VM's instancetype and preference as the controller found them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Instancetypes {
    pub instancetype: Option<Snapshot<ironvirt_crds::instancetype::VirtualMachineInstancetypeSpec>>,
    pub preference: Option<Snapshot<ironvirt_crds::instancetype::VirtualMachinePreferenceSpec>>,
    /// Why they could not be found or kept: (reason, message).
    pub failure: Option<(String, String)>,
}

fn vmi_base(vm: &VirtualMachine) -> Result<VirtualMachineInstance, Vec<FieldError>> {
    let name = vm.metadata.name.clone().unwrap_or_default();
    let Some(spec) = vm.spec.template.spec.clone() else {
        return Err(vec![FieldError::new(
            "spec.template.spec",
            "is required: the VMI to run",
        )]);
    };
    let errors = validate::vmi_spec_references(&spec, "spec.template.spec");
    // (With an instancetype, memory and vCPUs come from it; the expansion
    // checks the template against it.)
    if !errors.is_empty() {
        return Err(errors);
    }
    let template_meta = vm.spec.template.metadata.clone().unwrap_or_default();
    let mut labels: BTreeMap<String, String> = template_meta.labels.unwrap_or_default();
    labels.insert(VM_LABEL.to_owned(), name.clone());
    let owner = OwnerReference {
        api_version: VirtualMachine::api_version(&()).into_owned(),
        kind: VirtualMachine::kind(&()).into_owned(),
        name: name.clone(),
        uid: vm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    Ok(VirtualMachineInstance {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: vm.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template_meta.annotations,
            owner_references: Some(vec![owner]),
            finalizers: Some(vec![VMI_FINALIZER.to_owned()]),
            ..Default::default()
        },
        spec: VirtualMachineInstanceSpec { ..spec },
        status: None,
    })
}

fn vmi_phase(vmi: &VirtualMachineInstance) -> Phase {
    vmi.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Pending)
}

fn vmi_uid(vmi: &VirtualMachineInstance) -> String {
    vmi.metadata.uid.clone().unwrap_or_default()
}

fn deleting(meta: &ObjectMeta) -> bool {
    meta.deletion_timestamp.is_some()
}

/// When the VMI entered Running, if it did.
fn running_since(vmi: &VirtualMachineInstance) -> Option<Timestamp> {
    vmi.status
        .as_ref()?
        .phase_transition_timestamps
        .as_ref()?
        .iter()
        .rev()
        .find(|t| t.phase == Phase::Running)
        .map(|t| t.phase_transition_timestamp.0)
}

/// Decides what one reconcile of `vm` does, given its VMI and the time.
pub fn plan(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>, now: Timestamp) -> VmPlan {
    plan_with(vm, vmi, &Instancetypes::default(), now)
}

/// [`plan`] for a VM whose instancetype and preference the controller
/// resolved into `it`.
pub fn plan_with(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    it: &Instancetypes,
    now: Timestamp,
) -> VmPlan {
    let strategy = vm.spec.effective_run_strategy();
    let old = vm.status.clone().unwrap_or_default();
    let mut start_failure = old.start_failure.clone();
    let mut requests = old.state_change_requests.clone().unwrap_or_default();
    let mut action = VmiAction::Nothing;
    let mut requeue = None;
    let mut event = None;
    let mut failure: Option<(String, String)> = None;

    // A live VMI (not final, not being deleted) and a finished one.
    let live = vmi.filter(|v| !deleting(&v.metadata) && !vmi_phase(v).is_final());
    let finished = vmi.filter(|v| !deleting(&v.metadata) && vmi_phase(v).is_final());

    // Failure bookkeeping for strategies that restart failed VMIs.
    if let Some(v) = finished
        && vmi_phase(v) == Phase::Failed
        && matches!(strategy, RunStrategy::Always | RunStrategy::RerunOnFailure)
    {
        let uid = vmi_uid(v);
        let already = start_failure
            .as_ref()
            .and_then(|f| f.last_failed_vmi_uid.as_deref())
            == Some(uid.as_str());
        if !already {
            let count = start_failure
                .as_ref()
                .and_then(|f| f.consecutive_fail_count)
                .unwrap_or(0)
                + 1;
            let wait = backoff(count);
            start_failure = Some(Box::new(StartFailure {
                consecutive_fail_count: Some(count),
                last_failed_vmi_uid: Some(uid),
                retry_after_timestamp: Some(Time(now + to_signed(wait))),
            }));
            event = Some(EventNote::warning(
                Reason::FailedVmi,
                format!(
                    "VMI failed ({} time{} in a row); next start in {} s",
                    count,
                    if count == 1 { "" } else { "s" },
                    wait.as_secs()
                ),
            ));
        }
    }
    // A VMI that has been running a while clears the failure count.
    if let Some(v) = live
        && vmi_phase(v) == Phase::Running
        && start_failure.is_some()
    {
        match running_since(v) {
            Some(since) if now >= since + to_signed(HEALTHY_AFTER) => start_failure = None,
            Some(since) => requeue = Some(until(now, since + to_signed(HEALTHY_AFTER))),
            None => start_failure = None,
        }
    }
    // Only the strategies that restart a failed VMI back off (KubeVirt's
    // shouldBackoffStart): a VM stopped (Halted) or Manual keeps no start
    // failure, so it prints Stopped, not a CrashLoopBackOff nothing would
    // ever end (found by the chaos run).
    if !matches!(strategy, RunStrategy::Always | RunStrategy::RerunOnFailure) {
        start_failure = None;
    }
    let retry_at = start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .map(|t| t.0)
        .filter(|t| *t > now);

    let create = |event: &mut Option<EventNote>, failure: &mut Option<(String, String)>| {
        if let Some(f) = &it.failure {
            *failure = Some(f.clone());
            return VmiAction::Nothing;
        }
        match vmi_with(vm, it) {
            Ok(new) => {
                *event = Some(EventNote::normal(
                    Reason::SuccessfulCreate,
                    format!(
                        "created VMI {}",
                        new.metadata.name.as_deref().unwrap_or_default()
                    ),
                ));
                VmiAction::Create(Box::new(new))
            }
            Err(errors) => {
                *failure = Some(("InvalidTemplate".into(), validate::join(&errors)));
                VmiAction::Nothing
            }
        }
    };

    if deleting(&vm.metadata) {
        // The VM is going: its VMI goes first (the finalizer waits for it).
        if let Some(v) = vmi.filter(|v| !deleting(&v.metadata)) {
            action = VmiAction::Delete { uid: vmi_uid(v) };
        }
    } else {
        // Stop/Start requests from the subresource API, in order.
        while let Some(req) = requests.first().cloned() {
            match req.action {
                StateChangeAction::Stop => {
                    let target = vmi
                        .filter(|v| !deleting(&v.metadata))
                        .filter(|v| req.uid.as_deref().is_none_or(|u| u == vmi_uid(v)));
                    if let Some(v) = target {
                        action = VmiAction::Delete { uid: vmi_uid(v) };
                        event = Some(EventNote::normal(
                            Reason::StopRequested,
                            "stopping the VMI as requested",
                        ));
                    }
                    requests.remove(0);
                    if target.is_some() {
                        break;
                    }
                }
                StateChangeAction::Start => {
                    match vmi {
                        // The old VMI is still going away: come back when it is gone.
                        Some(v) if deleting(&v.metadata) => {}
                        Some(v) if vmi_phase(v).is_final() => {
                            action = VmiAction::Delete { uid: vmi_uid(v) };
                        }
                        Some(_) => {
                            requests.remove(0);
                            continue;
                        }
                        None => {
                            action = create(&mut event, &mut failure);
                            if failure.is_none() {
                                start_failure = None;
                                requests.remove(0);
                            }
                        }
                    }
                    break;
                }
            }
        }
        if action == VmiAction::Nothing && failure.is_none() {
            action = match strategy {
                RunStrategy::Halted => match live.or(finished) {
                    Some(v) => {
                        event = Some(EventNote::normal(
                            Reason::Stopping,
                            "runStrategy is Halted: stopping the VMI",
                        ));
                        VmiAction::Delete { uid: vmi_uid(v) }
                    }
                    None => VmiAction::Nothing,
                },
                RunStrategy::Always | RunStrategy::RerunOnFailure => {
                    let restart = match finished.map(vmi_phase) {
                        Some(Phase::Failed) => true,
                        Some(_) => strategy == RunStrategy::Always,
                        None => false,
                    };
                    if restart {
                        // Remove the finished VMI; a new one follows once it is gone.
                        VmiAction::Delete {
                            uid: finished.map(vmi_uid).unwrap_or_default(),
                        }
                    } else if vmi.is_none() && requests.is_empty() {
                        match retry_at {
                            Some(t) => {
                                requeue = Some(until(now, t));
                                VmiAction::Nothing
                            }
                            None => create(&mut event, &mut failure),
                        }
                    } else {
                        VmiAction::Nothing
                    }
                }
                // Once: the first VMI is the only one; a finished one stays as the record,
                // and `created` stays true after it is gone, so it is never recreated.
                RunStrategy::Once => {
                    if vmi.is_none() && !old.created.unwrap_or(false) {
                        create(&mut event, &mut failure)
                    } else {
                        VmiAction::Nothing
                    }
                }
                RunStrategy::Manual => VmiAction::Nothing,
            };
        }
    }

    let mut status = status_for(
        vm,
        vmi,
        &action,
        strategy,
        start_failure,
        requests,
        failure.as_ref(),
        retry_at.is_some(),
        now,
    );
    status.instancetype_ref = it
        .instancetype
        .as_ref()
        .map(|s| Box::new(s.status.clone()))
        .or_else(|| kept_ref(vm, false));
    status.preference_ref = it
        .preference
        .as_ref()
        .map(|s| Box::new(s.status.clone()))
        .or_else(|| kept_ref(vm, true));
    if it.failure.is_some() && failure.is_some() {
        // The instancetype may appear: look again, not only on a change.
        requeue = Some(requeue.map_or(BASE_BACKOFF, |r: Duration| r.min(BASE_BACKOFF)));
    }
    if let Some((reason, message)) = &failure {
        event = Some(EventNote::warning(
            Reason::FailedCreate,
            format!("{reason}: {message}"),
        ));
    }
    VmPlan {
        action,
        status,
        requeue,
        event,
    }
}

/// A plan that does nothing but report `message` as a Failure condition: the
/// VMI could not be created (the apiserver rejected it, or a foreign VMI holds
/// its name). It waits for a change instead of retrying.
pub fn plan_conflict(vm: &VirtualMachine, now: Timestamp, message: &str) -> VmPlan {
    let old = vm.status.clone().unwrap_or_default();
    let failure = ("FailedCreate".to_owned(), message.to_owned());
    let status = status_for(
        vm,
        None,
        &VmiAction::Nothing,
        vm.spec.effective_run_strategy(),
        old.start_failure.clone(),
        old.state_change_requests.clone().unwrap_or_default(),
        Some(&failure),
        false,
        now,
    );
    VmPlan {
        action: VmiAction::Nothing,
        status: VirtualMachineStatus {
            instancetype_ref: kept_ref(vm, false),
            preference_ref: kept_ref(vm, true),
            ..status
        },
        requeue: None,
        event: None,
    }
}

/// The status ref the VM already has, while it still names that object.
fn kept_ref(
    vm: &VirtualMachine,
    preference: bool,
) -> Option<Box<ironvirt_crds::instancetype::StatusRef>> {
    let status = vm.status.as_ref()?;
    let (m, r) = if preference {
        (
            vm.spec.preference.as_ref()?,
            status.preference_ref.as_ref()?,
        )
    } else {
        (
            vm.spec.instancetype.as_ref()?,
            status.instancetype_ref.as_ref()?,
        )
    };
    (m.name == r.name).then(|| r.clone())
}

#[allow(clippy::too_many_arguments)]
fn status_for(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    action: &VmiAction,
    strategy: RunStrategy,
    start_failure: Option<Box<StartFailure>>,
    requests: Vec<ironvirt_crds::vm::StateChangeRequest>,
    failure: Option<&(String, String)>,
    backing_off: bool,
    now: Timestamp,
) -> VirtualMachineStatus {
    let old = vm.status.clone().unwrap_or_default();
    let vmi_conds = vmi
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.conditions.as_deref());
    let ready = vmi.is_some_and(|v| vmi_phase(v) == Phase::Running)
        && conditions::is_true(vmi_conds, "Ready");
    let paused = conditions::is_true(vmi_conds, "Paused");
    let unschedulable = conditions::find(vmi_conds, "PodScheduled")
        .filter(|c| c.status == conditions::FALSE && c.reason.as_deref() == Some("Unschedulable"));
    // The handler's image-pull failures, which KubeVirt shows as the VM's
    // printableStatus.
    let pull_failure = conditions::find(vmi_conds, "Ready")
        .filter(|c| c.status == conditions::FALSE)
        .and_then(|c| c.reason.as_deref())
        .filter(|r| matches!(*r, "ErrImagePull" | "ImagePullBackOff"));

    let printable = if deleting(&vm.metadata) {
        "Terminating"
    } else if failure.is_some() {
        "Stopped"
    } else {
        match vmi {
            None if backing_off => "CrashLoopBackOff",
            None if matches!(action, VmiAction::Create(_)) => "Starting",
            None => "Stopped",
            Some(v) if deleting(&v.metadata) => "Stopping",
            Some(_) if matches!(action, VmiAction::Delete { .. }) => "Stopping",
            Some(v) => match vmi_phase(v) {
                Phase::Pending | Phase::Scheduling if unschedulable.is_some() => {
                    "ErrorUnschedulable"
                }
                Phase::Pending | Phase::Scheduling | Phase::Scheduled => {
                    pull_failure.unwrap_or("Starting")
                }
                Phase::Running if paused => "Paused",
                Phase::Running => "Running",
                Phase::Succeeded | Phase::Failed if backing_off => "CrashLoopBackOff",
                Phase::Succeeded | Phase::Failed => "Stopped",
                Phase::Unknown => "Unknown",
            },
        }
    };

    let mut conds: Vec<Condition> = Vec::new();
    // A VMI created by this very reconcile already counts as existing, so the
    // next reconcile (which sees it) has nothing new to write.
    let exists = vmi.is_some() || matches!(action, VmiAction::Create(_));
    conds.push(match (exists, ready) {
        (_, true) => condition("Ready", true, "", ""),
        (false, _) => condition("Ready", false, "VMINotExists", "VMI does not exist"),
        (true, false) => condition("Ready", false, "VMINotReady", "VMI is not ready"),
    });
    if let Some((reason, message)) = failure {
        conds.push(condition("Failure", true, reason, message));
    } else if let Some(c) = unschedulable {
        conds.push(condition(
            "Failure",
            true,
            "Unschedulable",
            c.message.as_deref().unwrap_or_default(),
        ));
    }
    if paused {
        conds.push(condition("Paused", true, "PausedByUser", "VMI was paused"));
    }
    let created = vmi.is_some()
        || matches!(action, VmiAction::Create(_))
        || (strategy == RunStrategy::Once && old.created.unwrap_or(false));
    VirtualMachineStatus {
        created: Some(created),
        ready: Some(ready),
        printable_status: Some(printable.to_owned()),
        conditions: Some(conditions::merge(old.conditions.as_deref(), conds, now)),
        state_change_requests: (!requests.is_empty()).then_some(requests),
        start_failure,
        observed_generation: vm.metadata.generation,
        desired_generation: vm.metadata.generation,
        run_strategy: Some(vm.spec.effective_run_strategy()),
        instancetype_ref: None,
        preference_ref: None,
    }
}

/// How long a new VM's first status waits for its new VMI to run, counted
/// from the VMI's creationTimestamp (whole seconds, so the wait is 1–2 s).
pub const FIRST_STATUS_WAIT: Duration = Duration::from_secs(2);

/// Whether to hold back the status write of this reconcile, and for how
/// long: a VM that has never had a status (just created) and whose VMI was
/// just created shows `Starting` only if that VMI does not run within
/// [`FIRST_STATUS_WAIT`]; one that runs by then gets `Running` as its first
/// status, one write instead of two. Anything else is written at once: a VM
/// that already shows a status (say `Stopped` before a start), `Once` (its
/// `created` must be recorded), and every status but `Starting` (errors,
/// `ErrorUnschedulable`, image pull failures, `Running`).
pub fn hold_first_status(
    vm: &VirtualMachine,
    new: &VirtualMachineStatus,
    vmi: Option<&VirtualMachineInstance>,
    action: &VmiAction,
    now: Timestamp,
) -> Option<Duration> {
    let never_reported = vm
        .status
        .as_ref()
        .is_none_or(|s| *s == VirtualMachineStatus::default());
    let strategy = vm.spec.effective_run_strategy();
    if !never_reported
        || deleting(&vm.metadata)
        || !matches!(strategy, RunStrategy::Always | RunStrategy::RerunOnFailure)
        || new.printable_status.as_deref() != Some("Starting")
    {
        return None;
    }
    match (action, vmi) {
        (VmiAction::Create(_), _) => Some(FIRST_STATUS_WAIT),
        (VmiAction::Nothing, Some(v)) if !deleting(&v.metadata) => {
            let created = v.metadata.creation_timestamp.as_ref()?.0;
            let show_at = created + to_signed(FIRST_STATUS_WAIT);
            (show_at > now).then(|| until(now, show_at).min(FIRST_STATUS_WAIT))
        }
        _ => None,
    }
}

/// Labels a VMI about to be created with the node it is placed on, so that
/// its create carries the placement and only the `Scheduled` status follows.
pub fn place_at_creation(vmi: &mut VirtualMachineInstance, node: &str) {
    vmi.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(NODE_NAME_LABEL.to_owned(), node.to_owned());
}

/// The newer of the cached VM and the one this controller's last write
/// returned: right after a write the cache may still hold the object from
/// before it, and deciding on that would repeat the write. Resource versions
/// are compared as numbers (what kube-apiserver with etcd hands out); when
/// they are not numbers, the cache wins.
pub fn newest<'a>(
    cached: &'a VirtualMachine,
    written: Option<&'a VirtualMachine>,
) -> &'a VirtualMachine {
    let version = |vm: &VirtualMachine| {
        vm.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match written {
        Some(w)
            if w.metadata.uid == cached.metadata.uid
                && matches!((version(cached), version(w)), (Some(c), Some(v)) if v > c) =>
        {
            w
        }
        _ => cached,
    }
}

/// Whether two statuses differ in anything but timestamps (so a write is due).
pub fn status_changed(old: Option<&VirtualMachineStatus>, new: &VirtualMachineStatus) -> bool {
    let Some(old) = old else { return true };
    let strip = |s: &VirtualMachineStatus| {
        let mut s = s.clone();
        s.conditions = None;
        s
    };
    strip(old) != strip(new)
        || !conditions::eq_ignoring_time(old.conditions.as_deref(), new.conditions.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn vm(strategy: &str, status: &str) -> VirtualMachine {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: web, namespace: ns, uid: vm-uid, generation: 3}}
spec:
  runStrategy: {strategy}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      domain: {{devices: {{disks: [{{name: root}}]}}}}
      volumes: [{{name: root, hostDisk: {{path: /img, type: Disk}}}}]
status: {status}
"#
        ))
        .unwrap()
    }

    fn vmi(uid: &str, phase: &str) -> VirtualMachineInstance {
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: web, uid: {uid}}}\nspec: {{domain: {{}}}}\nstatus: {{phase: {phase}}}\n"
        ))
        .unwrap()
    }

    fn printable(p: &VmPlan) -> &str {
        p.status.printable_status.as_deref().unwrap()
    }

    #[test]
    fn always_creates_an_owned_labelled_vmi_with_the_finalizer() {
        let p = plan(&vm("Always", "{}"), None, at(0));
        let VmiAction::Create(v) = &p.action else {
            panic!("{:?}", p.action)
        };
        assert_eq!(v.metadata.name.as_deref(), Some("web"));
        let labels = v.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[VM_LABEL], "web");
        let owner = &v.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("VirtualMachine", "vm-uid", Some(true))
        );
        assert_eq!(
            v.metadata.finalizers.as_deref(),
            Some(&[VMI_FINALIZER.to_owned()][..])
        );
        assert_eq!(printable(&p), "Starting");
        assert_eq!(p.status.observed_generation, Some(3));
        assert_eq!(p.status.run_strategy, Some(RunStrategy::Always));
    }

    #[test]
    fn always_restarts_a_failed_vmi_with_backoff_then_crash_loop() {
        let v = vm("Always", "{}");
        let p = plan(&v, Some(&vmi("u1", "Failed")), at(100));
        assert_eq!(p.action, VmiAction::Delete { uid: "u1".into() });
        let f = p.status.start_failure.clone().unwrap();
        assert_eq!(f.consecutive_fail_count, Some(1));
        assert_eq!(f.retry_after_timestamp, Some(Time(at(110))));
        // The failed VMI is gone; within the backoff nothing is created.
        let mut v2 = v.clone();
        v2.status = Some(p.status.clone());
        let p2 = plan(&v2, None, at(105));
        assert_eq!(p2.action, VmiAction::Nothing);
        assert_eq!(printable(&p2), "CrashLoopBackOff");
        assert_eq!(p2.requeue, Some(Duration::from_secs(5)));
        // After it, a new VMI.
        let p3 = plan(&v2, None, at(111));
        assert!(matches!(p3.action, VmiAction::Create(_)));
        // A second failure doubles the wait.
        let mut v3 = v2.clone();
        v3.status = Some(p3.status.clone());
        let p4 = plan(&v3, Some(&vmi("u2", "Failed")), at(200));
        let f = p4.status.start_failure.unwrap();
        assert_eq!(f.consecutive_fail_count, Some(2));
        assert_eq!(f.retry_after_timestamp, Some(Time(at(220))));
    }

    #[test]
    fn a_vm_stopped_in_crash_loop_backoff_prints_stopped() {
        // Always, its VMI failed: backing off.
        let v = vm("Always", "{}");
        let p = plan(&v, Some(&vmi("u1", "Failed")), at(100));
        let mut backing_off = v.clone();
        backing_off.status = Some(p.status.clone());
        assert_eq!(
            printable(&plan(&backing_off, None, at(105))),
            "CrashLoopBackOff"
        );
        // Stopped (the stop subresource sets Halted) while backing off.
        let mut stopped = vm("Halted", "{}");
        stopped.status = Some(p.status);
        let p = plan(&stopped, None, at(105));
        assert_eq!(p.action, VmiAction::Nothing);
        assert_eq!(printable(&p), "Stopped");
        assert!(p.status.start_failure.is_none());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }

    #[test]
    fn always_restarts_a_succeeded_vmi_without_counting_a_failure() {
        let p = plan(&vm("Always", "{}"), Some(&vmi("u1", "Succeeded")), at(0));
        assert_eq!(p.action, VmiAction::Delete { uid: "u1".into() });
        assert!(p.status.start_failure.is_none());
    }

    #[test]
    fn rerun_on_failure_reruns_only_failures() {
        let p = plan(
            &vm("RerunOnFailure", "{}"),
            Some(&vmi("u1", "Succeeded")),
            at(0),
        );
        assert_eq!(p.action, VmiAction::Nothing);
        assert_eq!(printable(&p), "Stopped");
        let p = plan(
            &vm("RerunOnFailure", "{}"),
            Some(&vmi("u1", "Failed")),
            at(0),
        );
        assert_eq!(p.action, VmiAction::Delete { uid: "u1".into() });
    }

    #[test]
    fn once_runs_one_vmi_and_never_recreates_it() {
        let p = plan(&vm("Once", "{}"), None, at(0));
        assert!(matches!(p.action, VmiAction::Create(_)));
        let p = plan(
            &vm("Once", "{created: true}"),
            Some(&vmi("u1", "Failed")),
            at(0),
        );
        assert_eq!(p.action, VmiAction::Nothing);
        let p = plan(&vm("Once", "{created: true}"), None, at(0));
        assert_eq!(p.action, VmiAction::Nothing);
        assert_eq!(p.status.created, Some(true));
    }

    #[test]
    fn halted_stops_a_running_vmi() {
        let p = plan(&vm("Halted", "{}"), Some(&vmi("u1", "Running")), at(0));
        assert_eq!(p.action, VmiAction::Delete { uid: "u1".into() });
        assert_eq!(printable(&p), "Stopping");
        let p = plan(&vm("Halted", "{}"), None, at(0));
        assert_eq!(p.action, VmiAction::Nothing);
        assert_eq!(printable(&p), "Stopped");
    }

    #[test]
    fn manual_acts_only_on_requests_and_clears_them() {
        let p = plan(&vm("Manual", "{}"), None, at(0));
        assert_eq!(p.action, VmiAction::Nothing);
        let p = plan(
            &vm("Manual", "{stateChangeRequests: [{action: Start}]}"),
            None,
            at(0),
        );
        assert!(matches!(p.action, VmiAction::Create(_)));
        assert!(p.status.state_change_requests.is_none());
        // Restart: Stop (of this VMI) then Start.
        let v = vm(
            "Manual",
            "{stateChangeRequests: [{action: Stop, uid: u1}, {action: Start}]}",
        );
        let p = plan(&v, Some(&vmi("u1", "Running")), at(0));
        assert_eq!(p.action, VmiAction::Delete { uid: "u1".into() });
        assert_eq!(p.status.state_change_requests.as_ref().unwrap().len(), 1);
        // While the old VMI is being deleted, Start waits.
        let mut going = vmi("u1", "Running");
        going.metadata.deletion_timestamp = Some(Time(at(0)));
        let mut v2 = v.clone();
        v2.status = Some(p.status.clone());
        let p2 = plan(&v2, Some(&going), at(1));
        assert_eq!(p2.action, VmiAction::Nothing);
        assert_eq!(p2.status.state_change_requests.as_ref().unwrap().len(), 1);
        // Once it is gone, Start creates and the request is cleared.
        let p3 = plan(&v2, None, at(2));
        assert!(matches!(p3.action, VmiAction::Create(_)));
        assert!(p3.status.state_change_requests.is_none());
    }

    #[test]
    fn an_invalid_template_is_a_failure_condition_not_a_create() {
        let mut v = vm("Always", "{}");
        v.spec.template.spec.as_mut().unwrap().volumes = None;
        let p = plan(&v, None, at(0));
        assert_eq!(p.action, VmiAction::Nothing);
        let failure = conditions::find(p.status.conditions.as_deref(), "Failure").unwrap();
        assert_eq!(failure.reason.as_deref(), Some("InvalidTemplate"));
        assert!(
            failure
                .message
                .as_deref()
                .unwrap()
                .contains("spec.template.spec.domain.devices.disks[0].name 'root' has no volume")
        );
        assert!(p.requeue.is_none(), "an invalid spec waits for a change");
    }

    #[test]
    fn unschedulable_vmi_shows_error_unschedulable() {
        let mut v = vmi("u1", "Pending");
        v.status = Some(serde_yaml::from_str("{phase: Pending, conditions: [{type: PodScheduled, status: 'False', reason: Unschedulable, message: '0/1 nodes are available: 1 Insufficient memory'}]}").unwrap());
        let p = plan(&vm("Always", "{}"), Some(&v), at(0));
        assert_eq!(printable(&p), "ErrorUnschedulable");
    }

    #[test]
    fn image_pull_failures_show_as_kubevirt_does() {
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            let mut v = vmi("u1", "Scheduled");
            v.status = Some(serde_yaml::from_str(&format!("{{phase: Scheduled, conditions: [{{type: Ready, status: 'False', reason: {reason}, message: 'pulling x: manifest unknown'}}]}}")).unwrap());
            let p = plan(&vm("Always", "{}"), Some(&v), at(0));
            assert_eq!(printable(&p), reason);
        }
    }

    #[test]
    fn running_ready_and_paused() {
        let mut v = vmi("u1", "Running");
        v.status = Some(serde_yaml::from_str("{phase: Running, conditions: [{type: Ready, status: 'True'}, {type: Paused, status: 'True'}]}").unwrap());
        let p = plan(&vm("Always", "{}"), Some(&v), at(0));
        assert_eq!(printable(&p), "Paused");
        assert_eq!(p.status.ready, Some(true));
        assert!(conditions::is_true(p.status.conditions.as_deref(), "Ready"));
    }

    #[test]
    fn deleting_a_vm_deletes_its_vmi_first() {
        let mut v = vm("Always", "{}");
        v.metadata.deletion_timestamp = Some(Time(at(0)));
        let p = plan(&v, Some(&vmi("u1", "Running")), at(1));
        assert_eq!(p.action, VmiAction::Delete { uid: "u1".into() });
        assert_eq!(printable(&p), "Terminating");
    }

    fn with_created(mut v: VirtualMachineInstance, s: i64) -> VirtualMachineInstance {
        v.metadata.creation_timestamp = Some(Time(at(s)));
        v
    }

    #[test]
    fn a_new_vm_shows_running_as_its_first_status_when_its_vmi_runs_at_once() {
        let v = vm("Always", "null");
        // The reconcile that creates the VMI holds Starting back.
        let p = plan(&v, None, at(100));
        assert_eq!(printable(&p), "Starting");
        assert_eq!(
            hold_first_status(&v, &p.status, None, &p.action, at(100)),
            Some(FIRST_STATUS_WAIT)
        );
        // The VMI exists but does not run yet: still held, until 2 s after
        // its creationTimestamp.
        let pending = with_created(vmi("u1", "Scheduled"), 100);
        let p = plan(&v, Some(&pending), at(101));
        assert_eq!(printable(&p), "Starting");
        assert_eq!(
            hold_first_status(&v, &p.status, Some(&pending), &p.action, at(101)),
            Some(Duration::from_secs(1))
        );
        // It runs: Running is written, the first and only status write.
        let mut running = with_created(vmi("u1", "Running"), 100);
        running.status = Some(
            serde_yaml::from_str("{phase: Running, conditions: [{type: Ready, status: 'True'}]}")
                .unwrap(),
        );
        let p = plan(&v, Some(&running), at(101));
        assert_eq!(printable(&p), "Running");
        assert_eq!(
            hold_first_status(&v, &p.status, Some(&running), &p.action, at(101)),
            None
        );
    }

    #[test]
    fn starting_shows_once_the_vmi_takes_longer_than_the_wait() {
        let v = vm("Always", "null");
        let pending = with_created(vmi("u1", "Scheduled"), 100);
        let p = plan(&v, Some(&pending), at(102));
        assert_eq!(printable(&p), "Starting");
        assert_eq!(
            hold_first_status(&v, &p.status, Some(&pending), &p.action, at(102)),
            None
        );
        // Without a creationTimestamp nothing is held.
        let p = plan(&v, Some(&vmi("u1", "Scheduled")), at(100));
        assert_eq!(
            hold_first_status(
                &v,
                &p.status,
                Some(&vmi("u1", "Scheduled")),
                &p.action,
                at(100)
            ),
            None
        );
    }

    #[test]
    fn only_a_new_vms_starting_is_held() {
        let pending = with_created(vmi("u1", "Pending"), 100);
        // A VM that shows a status already (Stopped, before a start) gets
        // Starting at once.
        let shown = vm("Always", "{printableStatus: Stopped}");
        let p = plan(&shown, None, at(100));
        assert_eq!(
            hold_first_status(&shown, &p.status, None, &p.action, at(100)),
            None
        );
        // Once records `created` at once.
        let once = vm("Once", "null");
        let p = plan(&once, None, at(100));
        assert!(matches!(p.action, VmiAction::Create(_)));
        assert_eq!(
            hold_first_status(&once, &p.status, None, &p.action, at(100)),
            None
        );
        // Statuses a user must see are never held.
        let new = vm("Always", "null");
        let mut unschedulable = pending.clone();
        unschedulable.status = Some(serde_yaml::from_str("{phase: Pending, conditions: [{type: PodScheduled, status: 'False', reason: Unschedulable, message: none}]}").unwrap());
        let p = plan(&new, Some(&unschedulable), at(100));
        assert_eq!(printable(&p), "ErrorUnschedulable");
        assert_eq!(
            hold_first_status(&new, &p.status, Some(&unschedulable), &p.action, at(100)),
            None
        );
        let halted = vm("Halted", "null");
        let p = plan(&halted, None, at(100));
        assert_eq!(printable(&p), "Stopped");
        assert_eq!(
            hold_first_status(&halted, &p.status, None, &p.action, at(100)),
            None
        );
        let mut going = new.clone();
        going.metadata.deletion_timestamp = Some(Time(at(100)));
        let p = plan(&going, Some(&pending), at(100));
        assert_eq!(
            hold_first_status(&going, &p.status, Some(&pending), &p.action, at(100)),
            None
        );
    }

    #[test]
    fn placing_at_creation_labels_the_vmi_with_its_node() {
        let p = plan(&vm("Always", "{}"), None, at(0));
        let VmiAction::Create(mut v) = p.action else {
            panic!("{:?}", p.action)
        };
        place_at_creation(&mut v, "n1");
        let labels = v.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[NODE_NAME_LABEL], "n1");
        assert_eq!(labels[VM_LABEL], "web");
        assert_eq!(labels["app"], "web");
    }

    #[test]
    fn the_newest_of_cache_and_last_write_decides() {
        let with_rv = |rv: &str, status: &str| {
            let mut v = vm("Always", status);
            v.metadata.resource_version = Some(rv.to_owned());
            v
        };
        let cached = with_rv("10", "null");
        let written = with_rv("12", "{printableStatus: Running}");
        // The cache has not caught up with the write: the write's answer counts.
        assert_eq!(newest(&cached, Some(&written)), &written);
        // It has (or moved past it): the cache counts.
        let later = with_rv("13", "{printableStatus: Running}");
        assert_eq!(newest(&later, Some(&written)), &later);
        assert_eq!(newest(&cached, None), &cached);
        // Another VM of the same name, or versions that are not numbers.
        let mut other = written.clone();
        other.metadata.uid = Some("other".into());
        assert_eq!(newest(&cached, Some(&other)), &cached);
        assert_eq!(
            newest(&with_rv("a", "null"), Some(&with_rv("b", "null")))
                .metadata
                .resource_version
                .as_deref(),
            Some("a")
        );
        // Deciding on the write's answer, the status just written is not
        // written again; deciding on the stale cache, it would be.
        let mut running = vmi("u1", "Running");
        running.status = Some(
            serde_yaml::from_str("{phase: Running, conditions: [{type: Ready, status: 'True'}]}")
                .unwrap(),
        );
        let mut answer = cached.clone();
        answer.metadata.resource_version = Some("12".into());
        answer.status = Some(plan(&cached, Some(&running), at(0)).status);
        let again = plan(newest(&cached, Some(&answer)), Some(&running), at(1)).status;
        assert!(!status_changed(answer.status.as_ref(), &again));
        assert!(status_changed(cached.status.as_ref(), &again));
    }

    #[test]
    fn status_writes_only_when_more_than_time_changed() {
        let v = vm("Halted", "{}");
        let a = plan(&v, None, at(0)).status;
        let b = plan(&v, None, at(50)).status;
        assert!(!status_changed(Some(&a), &b));
        let c = plan(&vm("Always", "{}"), None, at(50)).status;
        assert!(status_changed(Some(&a), &c));
    }
}
