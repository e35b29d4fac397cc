use super::*;
use crate::placement::tests::{T, at, node};

fn vmi(status: serde_json::Value, labels: serde_json::Value) -> VirtualMachineInstance {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "v", "namespace": "ns", "uid": "vmi-uid", "labels": labels},
        "spec": {"domain": {"memory": {"guest": "128Mi"}, "devices": {}}},
        "status": status,
    }))
    .unwrap()
}

fn running_on(node: &str) -> VirtualMachineInstance {
    vmi(
        serde_json::json!({"phase": "Running", "nodeName": node}),
        serde_json::json!({"kubevirt.io/nodeName": node}),
    )
}

fn mig(status: serde_json::Value) -> VirtualMachineInstanceMigration {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "m", "namespace": "ns", "uid": "mig-uid",
                     "creationTimestamp": "1970-01-01T00:16:40Z",
                     "finalizers": [MIGRATION_FINALIZER]},
        "spec": {"vmiName": "v"},
        "status": status,
    }))
    .unwrap()
}

fn observe<'a>(
    vmi: Option<&'a VirtualMachineInstance>,
    nodes: &'a [NodeInfo],
    used: &'a BTreeMap<String, Demand>,
    active: &'a [String],
    now: i64,
) -> Observed<'a> {
    Observed {
        vmi,
        nodes,
        used,
        active_sources: active,
        limits: Limits::default(),
        lease_timeout: T,
        now: at(now),
    }
}

fn status_phase(p: &Plan) -> Option<MigrationPhase> {
    p.writes.iter().find_map(|w| match w {
        Write::Status(s) => Some(s.phase),
        _ => None,
    })
}

fn with_state(mut v: VirtualMachineInstance, state: serde_json::Value) -> VirtualMachineInstance {
    let s = v.status.get_or_insert_with(Default::default);
    s.migration_state = Some(serde_json::from_value(state).unwrap());
    v
}

#[test]
fn a_pending_migration_gets_the_other_node_as_target() {
    let v = running_on("n1");
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 2048)];
    let used = BTreeMap::new();
    let p = plan(
        &mig(serde_json::json!({})),
        &observe(Some(&v), &nodes, &used, &[], 1010),
    );
    let start = p.writes.iter().find_map(|w| match w {
        Write::Start(s) => Some(s.clone()),
        _ => None,
    });
    let start = start.expect("a start");
    assert_eq!(start.source_node.as_deref(), Some("n1"));
    assert_eq!(start.target_node.as_deref(), Some("n2"));
    assert_eq!(start.migration_uid.as_deref(), Some("mig-uid"));
    assert_eq!(start.mode.as_deref(), Some("PreCopy"));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Scheduled));
    assert!(!p.writes.contains(&Write::AddFinalizer));
}

#[test]
fn without_another_node_the_migration_waits_then_fails() {
    let v = running_on("n1");
    let nodes = [node("n1", 4000, 4096)];
    let used = BTreeMap::new();
    let m = mig(serde_json::json!({}));
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Scheduling));
    let ev = p.event.expect("an event");
    assert!(
        ev.message.contains("no node other than the source node n1"),
        "{}",
        ev.message
    );
    assert_eq!(p.requeue, Some(POLL));
    // Past the timeout (created at 1000 s): Failed, with the reason.
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1000 + 301));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Failed));
    let Some(Write::Status(s)) = p.writes.iter().find(|w| matches!(w, Write::Status(_))) else {
        panic!("no status");
    };
    assert_eq!(s.conditions[0].reason.as_deref(), Some("Unschedulable"));
}

#[test]
fn a_cordoned_or_dead_node_is_no_target() {
    let v = running_on("n1");
    let mut n2 = node("n2", 4000, 4096);
    n2.taints.push(k8s_openapi::api::core::v1::Taint {
        key: "node.kubernetes.io/unschedulable".into(),
        effect: "NoSchedule".into(),
        ..Default::default()
    });
    let mut n3 = node("n3", 4000, 4096);
    n3.lease_renewed = Some(at(0));
    let nodes = [node("n1", 4000, 4096), n2, n3];
    let used = BTreeMap::new();
    let p = plan(
        &mig(serde_json::json!({})),
        &observe(Some(&v), &nodes, &used, &[], 1010),
    );
    assert_eq!(status_phase(&p), Some(MigrationPhase::Scheduling));
    let msg = p.event.unwrap().message;
    assert!(msg.contains("node.kubernetes.io/unschedulable"), "{msg}");
    assert!(msg.contains("no live ironvirt handler"), "{msg}");
}

#[test]
fn the_added_node_selector_narrows_the_targets() {
    let v = running_on("n1");
    let mut n3 = node("n3", 4000, 1024);
    n3.labels.insert("zone".into(), "b".into());
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096), n3];
    let used = BTreeMap::new();
    let mut m = mig(serde_json::json!({}));
    m.spec.added_node_selector = Some([("zone".to_owned(), "b".to_owned())].into());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert!(
        p.writes
            .iter()
            .any(|w| matches!(w, Write::Start(s) if s.target_node.as_deref() == Some("n3")))
    );
}

#[test]
fn a_missing_or_stopped_vmi_fails_the_migration() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let m = mig(serde_json::json!({}));
    let p = plan(&m, &observe(None, &nodes, &used, &[], 1010));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Failed));
    assert!(p.event.unwrap().message.contains("VMI v does not exist"));
    let stopped = vmi(
        serde_json::json!({"phase": "Scheduled", "nodeName": "n1"}),
        serde_json::json!({}),
    );
    let p = plan(&m, &observe(Some(&stopped), &nodes, &used, &[], 1010));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Failed));
    assert!(p.event.unwrap().message.contains("is not running"));
}

#[test]
fn not_live_migratable_fails_with_the_conditions_words() {
    let v = vmi(
        serde_json::json!({"phase": "Running", "nodeName": "n1", "conditions": [
            {"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable",
             "message": "hostDisk root is not on shared storage"}]}),
        serde_json::json!({}),
    );
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let p = plan(
        &mig(serde_json::json!({})),
        &observe(Some(&v), &nodes, &used, &[], 1010),
    );
    assert_eq!(status_phase(&p), Some(MigrationPhase::Failed));
    let msg = p.event.unwrap().message;
    assert!(
        msg.contains("DisksNotLiveMigratable") && msg.contains("shared storage"),
        "{msg}"
    );
}

#[test]
fn limits_hold_a_migration_pending() {
    let v = running_on("n1");
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let m = mig(serde_json::json!({}));
    let two_from_n1 = ["n1".to_owned(), "n1".to_owned()];
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &two_from_n1, 1010));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Pending));
    assert!(!p.writes.iter().any(|w| matches!(w, Write::Start(_))));
    let five_elsewhere: Vec<String> = (0..5).map(|i| format!("x{i}")).collect();
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &five_elsewhere, 1010));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Pending));
    let one_elsewhere = ["x".to_owned()];
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &one_elsewhere, 1010));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Scheduled));
}

#[test]
fn phases_follow_the_vmis_migration_state() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let m = mig(serde_json::json!({"phase": "Scheduled"}));
    let base =
        serde_json::json!({"migrationUid": "mig-uid", "sourceNode": "n1", "targetNode": "n2"});
    let cases = [
        (serde_json::json!({}), MigrationPhase::PreparingTarget),
        (
            serde_json::json!({"targetNodeDomainReadyTimestamp": "1970-01-01T00:16:50Z"}),
            MigrationPhase::TargetReady,
        ),
        (
            serde_json::json!({"targetNodeDomainReadyTimestamp": "1970-01-01T00:16:50Z",
                               "startTimestamp": "1970-01-01T00:16:51Z"}),
            MigrationPhase::Running,
        ),
    ];
    for (extra, want) in cases {
        let mut state = base.clone();
        state
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let v = with_state(running_on("n1"), state);
        let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
        assert_eq!(status_phase(&p), Some(want));
        assert_eq!(p.requeue, Some(POLL));
    }
}

#[test]
fn a_completed_migration_hands_the_vmi_over_once() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let m = mig(serde_json::json!({"phase": "Running"}));
    let state = serde_json::json!({"migrationUid": "mig-uid", "sourceNode": "n1", "targetNode": "n2",
        "startTimestamp": "1970-01-01T00:16:51Z", "completed": true, "endTimestamp": "1970-01-01T00:16:59Z"});
    let mut v = with_state(running_on("n1"), state.clone());
    v.labels_mut()
        .insert(MIGRATION_TARGET_NODE_LABEL.into(), "n2".into());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(p.writes[0], Write::Handover("n2".into()));
    assert_eq!(status_phase(&p), Some(MigrationPhase::Succeeded));
    assert_eq!(p.event.unwrap().reason, Reason::Migrated);
    // Handed over already (status and labels): no second handover.
    let moved = with_state(running_on("n2"), state);
    let p = plan(&m, &observe(Some(&moved), &nodes, &used, &[], 1010));
    assert!(!p.writes.iter().any(|w| matches!(w, Write::Handover(_))));
    // Once Succeeded, the finalizer goes, and then nothing more.
    let mut done = mig(serde_json::json!({"phase": "Succeeded"}));
    let p = plan(&done, &observe(Some(&moved), &nodes, &used, &[], 1010));
    assert_eq!(p.writes, vec![Write::RemoveFinalizer]);
    done.metadata.finalizers = None;
    assert_eq!(
        plan(&done, &observe(Some(&moved), &nodes, &used, &[], 1010)),
        Plan::default()
    );
}

#[test]
fn a_failed_migration_drops_the_target_label_and_keeps_the_reason() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let m = mig(serde_json::json!({"phase": "Running"}));
    let mut v = with_state(
        running_on("n1"),
        serde_json::json!({"migrationUid": "mig-uid", "sourceNode": "n1", "targetNode": "n2",
            "failed": true, "failureReason": "the target's libvirtd went away"}),
    );
    v.labels_mut()
        .insert(MIGRATION_TARGET_NODE_LABEL.into(), "n2".into());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(p.writes[0], Write::ClearTargetLabel);
    assert_eq!(status_phase(&p), Some(MigrationPhase::Failed));
    assert!(p.event.unwrap().message.contains("libvirtd went away"));
}

#[test]
fn another_migration_in_flight_holds_this_one() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let v = with_state(
        running_on("n1"),
        serde_json::json!({"migrationUid": "other", "sourceNode": "n1", "targetNode": "n2"}),
    );
    let p = plan(
        &mig(serde_json::json!({})),
        &observe(Some(&v), &nodes, &used, &[], 1010),
    );
    assert_eq!(status_phase(&p), Some(MigrationPhase::Pending));
    assert!(!p.writes.iter().any(|w| matches!(w, Write::Start(_))));
}

#[test]
fn deleting_an_unfinished_migration_aborts_it_before_the_finalizer_goes() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let mut m = mig(serde_json::json!({"phase": "Running"}));
    m.metadata.deletion_timestamp = Some(Time(at(1005)));
    let running = serde_json::json!({"migrationUid": "mig-uid", "sourceNode": "n1", "targetNode": "n2",
        "startTimestamp": "1970-01-01T00:16:51Z"});
    let v = with_state(running_on("n1"), running.clone());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(p.writes, vec![Write::RequestAbort]);
    assert_eq!(
        p.event.as_ref().map(|e| e.reason),
        Some(Reason::MigrationAborting)
    );
    // Asked already: wait, without asking again.
    let mut asked = running.clone();
    asked["abortRequested"] = serde_json::json!(true);
    let v = with_state(running_on("n1"), asked.clone());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert!(p.writes.is_empty());
    assert_eq!(p.requeue, Some(POLL));
    // Ended (aborted: failed): the label and then the finalizer go.
    let mut ended = asked;
    ended["failed"] = serde_json::json!(true);
    let mut v = with_state(running_on("n1"), ended);
    v.labels_mut()
        .insert(MIGRATION_TARGET_NODE_LABEL.into(), "n2".into());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(
        p.writes,
        vec![Write::ClearTargetLabel, Write::RemoveFinalizer]
    );
    // The VMI is gone: only the finalizer.
    let p = plan(&m, &observe(None, &nodes, &used, &[], 1010));
    assert_eq!(p.writes, vec![Write::RemoveFinalizer]);
}

#[test]
fn a_new_migration_gets_the_finalizer_first() {
    let v = running_on("n1");
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let mut m = mig(serde_json::json!({}));
    m.metadata.finalizers = None;
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(p.writes[0], Write::AddFinalizer);
}

#[test]
fn a_deleted_migration_that_completed_anyway_still_hands_the_vmi_over() {
    let nodes = [node("n1", 4000, 4096), node("n2", 4000, 4096)];
    let used = BTreeMap::new();
    let mut m = mig(serde_json::json!({"phase": "Running"}));
    m.metadata.deletion_timestamp = Some(Time(at(1005)));
    let mut v = with_state(
        running_on("n1"),
        serde_json::json!({"migrationUid": "mig-uid", "sourceNode": "n1", "targetNode": "n2",
            "abortRequested": true, "completed": true}),
    );
    v.labels_mut()
        .insert(MIGRATION_TARGET_NODE_LABEL.into(), "n2".into());
    let p = plan(&m, &observe(Some(&v), &nodes, &used, &[], 1010));
    assert_eq!(
        p.writes,
        vec![Write::Handover("n2".into()), Write::RemoveFinalizer]
    );
}
