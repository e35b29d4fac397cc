use std::cell::Cell;

use serde_json::json;

use super::*;
use crate::placement::tests::{T, at, node};
use ironvirt_crds::conditions::transitions;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const NOW: i64 = 1010;

fn vmi(meta: &str, status: &str) -> VirtualMachineInstance {
    serde_yaml::from_str(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: v, namespace: ns, uid: u1, {meta}}}\nspec: {{domain: {{memory: {{guest: 128Mi}}}}}}\nstatus: {status}\n"
    ))
    .unwrap()
}

const FIN: &str = "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine]";
const FIN_LABELLED: &str = "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine], labels: {kubevirt.io/nodeName: live}";
const GOING: &str = "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine], deletionTimestamp: '1970-01-01T00:16:00Z'";
const GOING_LABELLED: &str = "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine], deletionTimestamp: '1970-01-01T00:16:00Z', labels: {kubevirt.io/nodeName: live}";

/// The nodes every case sees: `live` renewed its Lease at 1000, `dead` at 0.
fn nodes() -> Vec<NodeInfo> {
    let mut dead = node("dead", 1000, 1024);
    dead.lease_renewed = Some(at(0));
    vec![node("live", 1000, 1024), dead]
}

fn run(v: &VirtualMachineInstance, just_placed: bool) -> PlacementPlan {
    let nodes = nodes();
    let observed = Observed {
        nodes: &nodes,
        just_placed,
        reserved: None,
        lease_timeout: T,
    };
    plan(v, &observed, BTreeMap::new, at(NOW))
}

/// A plan in one line: the writes, the event reason, the assumption and next.
fn summary(p: &PlacementPlan) -> String {
    let writes: Vec<String> = p
        .writes
        .iter()
        .map(|w| match w {
            Write::AddFinalizer => "+finalizer".to_owned(),
            Write::RemoveFinalizer => "-finalizer".to_owned(),
            Write::NodeLabel(n) => format!("label={n}"),
            Write::Status(s) => format!("status={:?}", s.phase),
        })
        .collect();
    let event = p.event.as_ref().map_or("-".to_owned(), |e| {
        format!("{}{}", if e.warning { "!" } else { "" }, e.reason)
    });
    let assumption = match &p.assumption {
        Assumption::Keep => "keep".to_owned(),
        Assumption::Forget => "forget".to_owned(),
        Assumption::Placed { node, .. } => format!("placed={node}"),
    };
    let next = match p.next {
        Next::AwaitChange => "await".to_owned(),
        Next::After(d) => format!("{}s", d.as_secs()),
    };
    format!("[{}] {event} {assumption} {next}", writes.join(","))
}

#[test]
fn every_branch() {
    // live's Lease expires at 1060: checked again 51 s after 1010.
    let cases: [(&str, &str, &str, bool, &str); 19] = [
        (
            "deleting, never placed",
            GOING,
            "{}",
            false,
            "[-finalizer] - forget await",
        ),
        (
            "deleting, on a dead node",
            GOING,
            "{phase: Running, nodeName: dead}",
            false,
            "[-finalizer] - forget await",
        ),
        (
            "deleting, on an unknown node",
            GOING,
            "{phase: Running, nodeName: gone}",
            false,
            "[-finalizer] - forget await",
        ),
        (
            "deleting, on a live node",
            GOING_LABELLED,
            "{phase: Running, nodeName: live}",
            false,
            "[] - forget await",
        ),
        (
            "deleting, placed on a live node, its label never written",
            GOING,
            "{phase: Scheduled, nodeName: live}",
            false,
            "[label=live] - forget await",
        ),
        (
            "deleting, placed on a live node, labelled with another",
            "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine], deletionTimestamp: '1970-01-01T00:16:00Z', labels: {kubevirt.io/nodeName: dead}",
            "{phase: Scheduled, nodeName: live}",
            false,
            "[label=live] - forget await",
        ),
        (
            "deleting without the finalizer",
            "deletionTimestamp: '1970-01-01T00:16:00Z'",
            "{}",
            false,
            "[-finalizer] - forget await",
        ),
        (
            "no finalizer",
            "labels: {}",
            "{}",
            false,
            "[+finalizer] - keep await",
        ),
        (
            "no finalizer, placed",
            "labels: {}",
            "{phase: Running, nodeName: live}",
            false,
            "[+finalizer] - keep await",
        ),
        (
            "succeeded",
            FIN,
            "{phase: Succeeded, nodeName: dead}",
            false,
            "[] - forget await",
        ),
        ("failed", FIN, "{phase: Failed}", false, "[] - forget await"),
        (
            "placed, labelled, live",
            FIN_LABELLED,
            "{phase: Running, nodeName: live}",
            false,
            "[] - forget 51s",
        ),
        (
            "placed, label lost, live",
            FIN,
            "{phase: Scheduled, nodeName: live}",
            false,
            "[label=live] - keep 51s",
        ),
        (
            "just placed, label not seen yet",
            FIN,
            "{phase: Scheduled, nodeName: live}",
            true,
            "[] - keep 51s",
        ),
        (
            "placed, labelled, node dead",
            "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine], labels: {kubevirt.io/nodeName: dead}",
            "{phase: Running, nodeName: dead}",
            false,
            "[status=Failed] !NodeUnresponsive forget await",
        ),
        (
            "placed, label lost, node dead",
            FIN,
            "{phase: Running, nodeName: dead}",
            false,
            "[label=dead,status=Failed] !NodeUnresponsive keep await",
        ),
        (
            "placed on a node not among the candidates",
            FIN,
            "{phase: Running, nodeName: other}",
            true,
            "[status=Failed] !NodeUnresponsive keep await",
        ),
        (
            "not placed",
            FIN,
            "{}",
            false,
            "[status=Scheduled,label=live] - placed=live await",
        ),
        (
            "pending, not placed",
            FIN,
            "{phase: Pending}",
            false,
            "[status=Scheduled,label=live] - placed=live await",
        ),
    ];
    for (what, meta, status, just_placed, want) in cases {
        let p = run(&vmi(meta, status), just_placed);
        assert_eq!(summary(&p), want, "{what}");
    }
}

#[test]
fn unschedulable_writes_pending_once_and_retries() {
    let big = |status: &str| {
        let mut v = vmi(FIN, status);
        v.spec.domain.memory = serde_yaml::from_str("{guest: 4Gi}").unwrap();
        v
    };
    let p = run(&big("{}"), false);
    assert_eq!(summary(&p), "[status=Pending] !FailedScheduling keep 3s");
    let message = "0/2 nodes are available: 1 node(s) had no live ironvirt handler (Lease expired), 1 Insufficient memory";
    assert_eq!(p.event.as_ref().map(|e| e.message.as_str()), Some(message));
    let Some(Write::Status(s)) = p.writes.first() else {
        panic!("{p:?}")
    };
    assert_eq!(
        serde_json::to_value(s).unwrap(),
        json!({
            "phase": "Pending",
            "phaseTransitionTimestamps": [{"phase": "Pending", "phaseTransitionTimestamp": "1970-01-01T00:16:50Z"}],
            "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": "1970-01-01T00:16:50Z"}],
        })
    );

    // Already Pending with the same reason: nothing to write, retry anyway.
    let same = format!(
        "{{phase: Pending, conditions: [{{type: PodScheduled, status: 'False', reason: Unschedulable, message: '{message}', lastTransitionTime: '1970-01-01T00:00:05Z'}}]}}"
    );
    assert_eq!(summary(&run(&big(&same), false)), "[] - keep 3s");
    // A different reason, or another phase, is written again.
    let other = same.replace(", 1 Insufficient memory", "");
    assert_eq!(
        summary(&run(&big(&other), false)),
        "[status=Pending] !FailedScheduling keep 3s"
    );
    let scheduling = same.replace("phase: Pending", "phase: Scheduling");
    assert_eq!(
        summary(&run(&big(&scheduling), false)),
        "[status=Pending] !FailedScheduling keep 3s"
    );
}

#[test]
fn usage_counts_and_is_asked_for_only_to_choose() {
    let nodes = nodes();
    let observed = Observed {
        nodes: &nodes,
        just_placed: false,
        reserved: None,
        lease_timeout: T,
    };
    let asked = Cell::new(0);
    let full = || {
        asked.set(asked.get() + 1);
        BTreeMap::from([(
            "live".to_owned(),
            Demand {
                cpu_millis: 0,
                memory_bytes: 1024 * 1024 * 1024,
            },
        )])
    };
    let p = plan(&vmi(FIN, "{}"), &observed, full, at(NOW));
    assert_eq!(summary(&p), "[status=Pending] !FailedScheduling keep 3s");
    assert!(
        p.event
            .is_some_and(|e| e.message.contains("1 Insufficient memory"))
    );
    assert_eq!(asked.get(), 1);
    for (meta, status) in [
        (GOING, "{}"),
        ("labels: {}", "{}"),
        (FIN, "{phase: Failed}"),
        (FIN, "{phase: Running, nodeName: live}"),
    ] {
        plan(&vmi(meta, status), &observed, full, at(NOW));
    }
    assert_eq!(asked.get(), 1);
}

#[test]
fn placing_writes_scheduled_with_the_node_and_assumes_the_demand() {
    let p = run(
        &vmi(
            FIN,
            "{phase: Pending, phaseTransitionTimestamps: [{phase: Pending, phaseTransitionTimestamp: '1970-01-01T00:00:05Z'}], conditions: [{type: PodScheduled, status: 'False', reason: Unschedulable, lastTransitionTime: '1970-01-01T00:00:05Z'}]}",
        ),
        false,
    );
    let Some(Write::Status(s)) = p.writes.first() else {
        panic!("{p:?}")
    };
    assert_eq!(
        serde_json::to_value(s).unwrap(),
        json!({
            "phase": "Scheduled",
            "nodeName": "live",
            "phaseTransitionTimestamps": [
                {"phase": "Pending", "phaseTransitionTimestamp": "1970-01-01T00:00:05Z"},
                {"phase": "Scheduled", "phaseTransitionTimestamp": "1970-01-01T00:16:50Z"},
            ],
            "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "1970-01-01T00:16:50Z"}],
        })
    );
    assert_eq!(
        p.assumption,
        Assumption::Placed {
            node: "live".into(),
            demand: Demand {
                cpu_millis: 0,
                memory_bytes: 128 * 1024 * 1024
            }
        }
    );
}

#[test]
fn a_dead_node_fails_the_vmi_and_says_why() {
    let v = vmi(
        FIN,
        "{phase: Running, nodeName: dead, conditions: [{type: Ready, status: 'True', lastTransitionTime: '1970-01-01T00:00:05Z'}]}",
    );
    let p = run(&v, false);
    let message = "node dead stopped renewing its handler Lease; the VMI is lost";
    let Some(Write::Status(s)) = p.writes.last() else {
        panic!("{p:?}")
    };
    assert_eq!(
        serde_json::to_value(s).unwrap(),
        json!({
            "phase": "Failed",
            "reason": "NodeUnresponsive",
            "nodeName": "dead",
            "phaseTransitionTimestamps": [{"phase": "Failed", "phaseTransitionTimestamp": "1970-01-01T00:16:50Z"}],
            "conditions": [{"type": "Ready", "status": "False", "reason": "NodeUnresponsive",
                "message": message, "lastTransitionTime": "1970-01-01T00:16:50Z"}],
        })
    );
    assert_eq!(
        p.event,
        Some(EventNote::warning(Reason::NodeUnresponsive, message))
    );
}

#[test]
fn a_live_node_is_checked_again_just_after_its_lease_would_expire() {
    let v = vmi(FIN_LABELLED, "{phase: Running, nodeName: live}");
    let nodes = nodes();
    for (now, want) in [(1000, 61), (1059, 2), (1060, 1)] {
        let observed = Observed {
            nodes: &nodes,
            just_placed: false,
            reserved: None,
            lease_timeout: T,
        };
        let p = plan(&v, &observed, BTreeMap::new, at(now));
        assert_eq!(p.next, Next::After(Duration::from_secs(want)), "at {now}");
    }
    // A Lease renewed in the future (clock skew) waits from its renewal.
    let mut skewed = nodes.clone();
    skewed[0].lease_renewed = Some(at(2000));
    let observed = Observed {
        nodes: &skewed,
        just_placed: false,
        reserved: None,
        lease_timeout: Duration::MAX,
    };
    let p = plan(&v, &observed, BTreeMap::new, at(NOW));
    assert!(matches!(p.next, Next::After(d) if d > Duration::from_secs(1_000_000)));
}

#[test]
fn transitions_keep_an_entered_phase() {
    let v = vmi(
        FIN,
        "{phase: Scheduled, phaseTransitionTimestamps: [{phase: Scheduled, phaseTransitionTimestamp: '1970-01-01T00:00:05Z'}]}",
    );
    let t = transitions(&v, Phase::Scheduled, at(NOW));
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].phase_transition_timestamp, Time(at(5)));
    assert_eq!(transitions(&v, Phase::Running, at(NOW)).len(), 2);
}

#[test]
fn a_vmi_labelled_at_creation_gets_only_its_status() {
    let nodes = nodes();
    let asked = Cell::new(0);
    let usage = || {
        asked.set(asked.get() + 1);
        BTreeMap::new()
    };
    // Reserved here by this process: no capacity check, no label write.
    let v = vmi(FIN_LABELLED, "{}");
    let observed = Observed {
        nodes: &nodes,
        just_placed: true,
        reserved: Some("live"),
        lease_timeout: T,
    };
    let p = plan(&v, &observed, usage, at(NOW));
    assert_eq!(summary(&p), "[status=Scheduled] - placed=live await");
    assert_eq!(asked.get(), 0, "a reservation is not checked again");
    let Write::Status(st) = &p.writes[0] else {
        panic!("{:?}", p.writes)
    };
    assert_eq!(st.node_name.as_deref(), Some("live"));
    // Labelled by someone else (or before a restart): kept when it qualifies.
    let p = run(&v, false);
    assert_eq!(summary(&p), "[status=Scheduled] - placed=live await");
    // A label naming a node that does not qualify is replaced.
    let dead = vmi(
        "finalizers: [kubevirt.io/foregroundDeleteVirtualMachine], labels: {kubevirt.io/nodeName: dead}",
        "{}",
    );
    let p = run(&dead, false);
    assert_eq!(
        summary(&p),
        "[status=Scheduled,label=live] - placed=live await"
    );
    // So is one naming a node that is full.
    let full = || {
        BTreeMap::from([(
            "live".to_owned(),
            Demand {
                cpu_millis: 0,
                memory_bytes: 1024 * 1024 * 1024,
            },
        )])
    };
    let observed = Observed {
        nodes: &nodes,
        just_placed: false,
        reserved: None,
        lease_timeout: T,
    };
    let p = plan(&v, &observed, full, at(NOW));
    assert_eq!(summary(&p), "[status=Pending] !FailedScheduling keep 3s");
}

#[test]
fn deleting_forgets_a_reservation() {
    let v = vmi(GOING, "{}");
    let nodes = nodes();
    let observed = Observed {
        nodes: &nodes,
        just_placed: true,
        reserved: Some("live"),
        lease_timeout: T,
    };
    let p = plan(&v, &observed, BTreeMap::new, at(NOW));
    assert_eq!(summary(&p), "[-finalizer] - forget await");
}
