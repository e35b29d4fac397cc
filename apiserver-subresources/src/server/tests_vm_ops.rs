//! VM start / stop / restart through the router, against the mock cluster of
//! the parent module.

use super::*;

/// A cluster for VM operations: reviews allowed, VM `vm` (if any), VMI
/// `vmi` (if any); writes answered by `write` (given how many writes came
/// before).
fn vm_cluster(
    vm: Option<Value>,
    vmi: Option<Value>,
    mut write: impl FnMut(usize, &Seen) -> (u16, Value) + Send + 'static,
) -> (Client, Log) {
    let mut writes = 0;
    cluster(Box::new(move |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", SAR_PATH) => review(true),
            ("GET", VM_PATH) => vm.clone().map_or_else(
                || missing("virtualmachines.kubevirt.io \"x\""),
                |v| (200, v),
            ),
            ("GET", VMI_PATH) => vmi
                .clone()
                .map_or_else(|| missing("virtualmachineinstances \"x\""), |v| (200, v)),
            _ => {
                writes += 1;
                write(writes - 1, s)
            }
        }
    }))
}

fn vm_op(op: &str) -> String {
    format!("{SUB}/namespaces/ns/virtualmachines/x/{op}")
}

/// The writes (PATCH, DELETE) the cluster saw: (method, path, body).
fn writes(log: &Log) -> Vec<(Method, String, Value)> {
    log.all()
        .into_iter()
        .filter(|s| s.method != Method::GET && s.path != SAR_PATH)
        .map(|s| (s.method, s.path, s.body))
        .collect()
}

fn ok_write(_: usize, s: &Seen) -> (u16, Value) {
    (
        200,
        if s.path.starts_with(VMI_PATH) {
            vmi("Running", Some("n1"))
        } else {
            vm("Always")
        },
    )
}

#[tokio::test]
async fn start_of_a_halted_vm_sets_its_run_strategy() {
    let (client, log) = vm_cluster(Some(vm("Halted")), None, ok_write);
    let (code, body) = send(state(client), &Method::PUT, &vm_op("start"), "").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        writes(&log),
        vec![(
            Method::PATCH,
            VM_PATH.to_owned(),
            json!({"spec": {"runStrategy": "Always"}, "metadata": {"resourceVersion": "7"}})
        )]
    );
}

#[tokio::test]
async fn stop_with_a_grace_period_sets_it_on_the_vmi_first() {
    let running = vmi("Running", Some("n1"));
    let (client, log) = vm_cluster(Some(vm("Always")), Some(running), ok_write);
    let (code, body) = send(
        state(client),
        &Method::PUT,
        &vm_op("stop"),
        r#"{"gracePeriod": 3}"#,
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        writes(&log),
        vec![
            (
                Method::PATCH,
                VMI_PATH.to_owned(),
                json!({"spec": {"terminationGracePeriodSeconds": 3}})
            ),
            (
                Method::PATCH,
                VM_PATH.to_owned(),
                json!({"spec": {"runStrategy": "Halted"}, "metadata": {"resourceVersion": "7"}})
            ),
        ]
    );
}

#[tokio::test]
async fn restart_asks_the_vm_controller_to_stop_then_start() {
    let running = vmi("Running", Some("n1"));
    let (client, log) = vm_cluster(Some(vm("Always")), Some(running), ok_write);
    let (code, body) = send(state(client), &Method::PUT, &vm_op("restart"), "  \n").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        writes(&log),
        vec![(
            Method::PATCH,
            format!("{VM_PATH}/status"),
            json!({"metadata": {"resourceVersion": "7"},
                "status": {"stateChangeRequests": [{"action": "Stop", "uid": "u1"}, {"action": "Start"}]}})
        )]
    );
}

#[tokio::test]
async fn vm_operations_answer_conflicts_and_bad_requests_without_writing() {
    let running = || Some(vmi("Running", Some("n1")));
    for (op, vm, vmi, body, code, want) in [
        (
            "start",
            Some(vm("Always")),
            running(),
            "",
            StatusCode::CONFLICT,
            "VM x is already running (runStrategy Always)",
        ),
        (
            "stop",
            Some(vm("Halted")),
            None,
            "{}",
            StatusCode::CONFLICT,
            "VM x is not running",
        ),
        (
            "restart",
            Some(vm("Always")),
            None,
            "",
            StatusCode::CONFLICT,
            "VM x is not running; start it instead",
        ),
        (
            "start",
            None,
            None,
            "",
            StatusCode::NOT_FOUND,
            "virtualmachine \"x\" not found",
        ),
        (
            "start",
            Some(vm("Halted")),
            None,
            "{not json",
            StatusCode::BAD_REQUEST,
            "the start options do not parse",
        ),
        (
            "stop",
            Some(vm("Always")),
            running(),
            r#"{"gracePeriod": -1}"#,
            StatusCode::BAD_REQUEST,
            "grace period must not be negative, got -1",
        ),
        // dryRun: accepted, nothing written.
        (
            "stop",
            Some(vm("Always")),
            running(),
            r#"{"dryRun": ["All"]}"#,
            StatusCode::ACCEPTED,
            "",
        ),
    ] {
        let (client, log) = vm_cluster(vm, vmi, ok_write);
        let (got, answer) = send(state(client), &Method::PUT, &vm_op(op), body).await;
        assert_eq!(got, code, "{op} {body}: {answer}");
        assert!(message(&answer).starts_with(want), "{op} {body}: {answer}");
        assert_eq!(writes(&log), vec![], "{op} {body}");
    }
}

#[tokio::test]
async fn a_vm_that_changed_meanwhile_is_read_again() {
    // The first write finds the VM changed; the second goes through.
    let (client, log) = vm_cluster(Some(vm("Halted")), None, |n, _| match n {
        0 => (409, status(409, "Conflict", "the object has been modified")),
        _ => (200, vm("Always")),
    });
    let (code, body) = send(state(client), &Method::PUT, &vm_op("start"), "").await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    let gets = log
        .calls()
        .iter()
        .filter(|(m, p)| *m == Method::GET && p == VM_PATH)
        .count();
    assert_eq!((gets, writes(&log).len()), (2, 2));

    // A VM that keeps changing: a Conflict after five tries.
    let (client, log) = vm_cluster(Some(vm("Halted")), None, |_, _| {
        (409, status(409, "Conflict", "the object has been modified"))
    });
    let (code, body) = send(state(client), &Method::PUT, &vm_op("start"), "").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(message(&body), "VM x keeps changing; try the start again");
    assert_eq!(writes(&log).len(), 5);

    // Any other failed write is passed on.
    let (client, _) = vm_cluster(Some(vm("Halted")), None, |_, _| {
        (
            422,
            status(422, "Invalid", "spec.runStrategy: Invalid value"),
        )
    });
    let (code, body) = send(state(client), &Method::PUT, &vm_op("start"), "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["reason"], "Invalid");
}
