//! VM migrate through the router, against the mock cluster of the parent
//! module.

use super::*;

const MIGRATIONS_PATH: &str = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstancemigrations";

fn migrate_path() -> String {
    format!("{SUB}/namespaces/ns/virtualmachines/x/migrate")
}

/// A cluster with VM `vm` (if any) and VMI `vmi` (if any); a migration's
/// create is answered by `create`.
fn migrate_cluster(vm: Option<Value>, vmi: Option<Value>, create: (u16, Value)) -> (Client, Log) {
    cluster(Box::new(move |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", SAR_PATH) => review(true),
            ("GET", VM_PATH) => vm.clone().map_or_else(
                || missing("virtualmachines.kubevirt.io \"x\""),
                |v| (200, v),
            ),
            ("GET", VMI_PATH) => vmi.clone().map_or_else(
                || missing("virtualmachineinstances.kubevirt.io \"x\""),
                |v| (200, v),
            ),
            ("POST", MIGRATIONS_PATH) => create.clone(),
            _ => (500, status(500, "InternalError", "unexpected request")),
        }
    }))
}

fn created() -> (u16, Value) {
    (
        201,
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "kubevirt-migrate-vm-abcde", "namespace": "ns", "uid": "m1"},
            "spec": {"vmiName": "x"}}),
    )
}

/// The migrations the cluster was asked to create: (query, body).
fn creates(log: &Log) -> Vec<Value> {
    log.all()
        .into_iter()
        .filter(|s| s.method == Method::POST && s.path == MIGRATIONS_PATH)
        .map(|s| s.body)
        .collect()
}

#[tokio::test]
async fn migrate_creates_a_migration_of_the_running_vmi() {
    for body in ["", "{}", " \n"] {
        let (client, log) = migrate_cluster(
            Some(vm("Always")),
            Some(vmi("Running", Some("n1"))),
            created(),
        );
        let (code, answer) = send(state(client), &Method::PUT, &migrate_path(), body).await;
        assert_eq!(code, StatusCode::ACCEPTED, "{body:?}: {answer}");
        assert_eq!(answer, json!(""), "KubeVirt answers with no body");
        assert_eq!(
            creates(&log),
            vec![
                json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"generateName": "kubevirt-migrate-vm-"},
                "spec": {"vmiName": "x"}})
            ]
        );
        // Authorized as update virtualmachines/migrate, first.
        let seen = log.all();
        assert_eq!(seen[0].path, SAR_PATH);
        assert_eq!(
            seen[0].body["spec"]["resourceAttributes"]["subresource"],
            "migrate"
        );
        assert_eq!(seen[0].body["spec"]["resourceAttributes"]["verb"], "update");
    }
}

#[tokio::test]
async fn migrate_copies_the_node_selector_and_honours_dry_run() {
    let (client, log) = migrate_cluster(
        Some(vm("Always")),
        Some(vmi("Running", Some("n1"))),
        created(),
    );
    let body = r#"{"dryRun": ["All"], "addedNodeSelector": {"kubernetes.io/hostname": "node-2"}}"#;
    let (code, answer) = send(state(client), &Method::PUT, &migrate_path(), body).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{answer}");
    let made = creates(&log);
    assert_eq!(
        made[0]["spec"],
        json!({"vmiName": "x", "addedNodeSelector": {"kubernetes.io/hostname": "node-2"}})
    );
    // The dry run is the API's: the create carries dryRun=All.
    let (client, log) = {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let queries = Log::default();
        let seen = queries.clone();
        tokio::spawn(async move {
            while let Some((req, reply)) = handle.next_request().await {
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or_default().to_owned();
                let (code, json) = match (req.method().as_str(), path.as_str()) {
                    ("POST", SAR_PATH) => review(true),
                    ("GET", VM_PATH) => (200, vm("Always")),
                    ("GET", VMI_PATH) => (200, vmi("Running", Some("n1"))),
                    _ => created(),
                };
                seen.0.lock().unwrap().push(Seen {
                    method: req.method().clone(),
                    path: format!("{path}?{query}"),
                    body: Value::Null,
                });
                reply.send_response(
                    Response::builder()
                        .status(code)
                        .header("Content-Type", "application/json")
                        .body(kube::client::Body::from(serde_json::to_vec(&json).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), queries)
    };
    let (code, _) = send(state(client), &Method::PUT, &migrate_path(), body).await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let post = log
        .calls()
        .into_iter()
        .find(|(m, p)| *m == Method::POST && p.starts_with(MIGRATIONS_PATH))
        .unwrap();
    assert!(post.1.contains("dryRun=All"), "{post:?}");
}

#[tokio::test]
async fn migrate_answers_404_409_and_400_without_creating() {
    for (vm, vmi, body, code, want) in [
        (
            None,
            None,
            "",
            StatusCode::NOT_FOUND,
            "virtualmachine \"x\" not found",
        ),
        (
            Some(vm("Halted")),
            None,
            "",
            StatusCode::CONFLICT,
            "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"x\": VM is not running",
        ),
        (
            Some(vm("Always")),
            Some(vmi("Scheduling", None)),
            "{}",
            StatusCode::CONFLICT,
            "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"x\": VM is not running",
        ),
        (
            Some(vm("Always")),
            Some(vmi("Running", Some("n1"))),
            "{not json",
            StatusCode::BAD_REQUEST,
            "the migrate options do not parse",
        ),
        (
            Some(vm("Always")),
            Some(vmi("Running", Some("n1"))),
            r#"{"addedNodeSelector": ["a"]}"#,
            StatusCode::BAD_REQUEST,
            "the migrate options do not parse",
        ),
    ] {
        let (client, log) = migrate_cluster(vm, vmi, created());
        let (got, answer) = send(state(client), &Method::PUT, &migrate_path(), body).await;
        assert_eq!(got, code, "{body}: {answer}");
        assert!(message(&answer).starts_with(want), "{body}: {answer}");
        assert!(creates(&log).is_empty(), "{body}");
    }
}

#[tokio::test]
async fn a_refused_create_passes_the_webhooks_answer_on() {
    let refused = "admission webhook \"virtualmachineinstancemigrations-validator.ironvirt.io\" denied the request: VirtualMachineInstanceMigration \"kubevirt-migrate-vm-\" is invalid: spec.vmiName: in-flight migration detected. Active migration job (m0) is currently already in progress for VMI x.";
    let (client, _) = migrate_cluster(
        Some(vm("Always")),
        Some(vmi("Running", Some("n1"))),
        (422, status(422, "Invalid", refused)),
    );
    let (code, answer) = send(state(client), &Method::PUT, &migrate_path(), "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["reason"], "Invalid");
    assert_eq!(message(&answer), refused);
}
