//! The expand subresources through the router, against the mock cluster of
//! the parent module: what is read (and that nothing is written), the
//! expanded VM, and the errors.

use super::*;

const IT_PATH: &str =
    "/apis/instancetype.kubevirt.io/v1beta1/virtualmachineclusterinstancetypes/u1.small";
const NS_IT_PATH: &str =
    "/apis/instancetype.kubevirt.io/v1beta1/namespaces/ns/virtualmachineinstancetypes/mine";
const PREF_PATH: &str =
    "/apis/instancetype.kubevirt.io/v1beta1/namespaces/ns/virtualmachinepreferences/p";
const REV_PATH: &str = "/apis/apps/v1/namespaces/ns/controllerrevisions/x-u1.small-rev";

fn expand_spec() -> String {
    format!("{SUB}/namespaces/ns/virtualmachines/x/expand-spec")
}

fn expand_vm_spec(ns: &str) -> String {
    format!("{SUB}/namespaces/{ns}/expand-vm-spec")
}

/// A VM naming cluster instancetype u1.small (recorded in revision
/// `revision`, if not empty) and namespaced preference p.
fn vm_with(revision: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "x", "namespace": NS, "resourceVersion": "7", "uid": "vm-uid"},
        "spec": {
            "runStrategy": "Halted",
            "instancetype": {"name": "u1.small", "revisionName": revision},
            "preference": {"name": "p", "kind": "VirtualMachinePreference"},
            "template": {"spec": {"domain": {"devices": {"disks": [{"name": "root"}]}},
                "volumes": [{"name": "root", "containerDisk": {"image": "x"}}]}}},
        "status": {"printableStatus": "Stopped"}})
}

fn instancetype(cpus: u32, memory: &str) -> Value {
    json!({"apiVersion": "instancetype.kubevirt.io/v1beta1",
        "kind": "VirtualMachineClusterInstancetype",
        "metadata": {"name": "u1.small", "uid": "it-uid", "generation": 1},
        "spec": {"cpu": {"guest": cpus}, "memory": {"guest": memory}}})
}

fn preference() -> Value {
    json!({"apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachinePreference",
        "metadata": {"name": "p", "namespace": NS},
        "spec": {"devices": {"preferredDiskBus": "virtio"}}})
}

/// The revision the VM controller stored for u1.small (4 vCPUs, 8Gi).
fn revision() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "x-u1.small-rev", "namespace": NS,
            "labels": {"instancetype.kubevirt.io/object-name": "u1.small"},
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "name": "x", "uid": "vm-uid", "controller": true}]},
        "data": {"apiVersion": "instancetype.kubevirt.io/v1beta1",
            "kind": "VirtualMachineClusterInstancetype", "metadata": {"name": "u1.small"},
            "spec": {"cpu": {"guest": 4}, "memory": {"guest": "8Gi"}}},
        "revision": 1})
}

/// A cluster with reviews allowed, VM `vm` (if any), instancetype u1.small
/// (1 vCPU, 2Gi; if `it`), preference p and the revision; anything else is
/// 404, and writes are 500.
fn expand_cluster(vm: Option<Value>, it: bool) -> (Client, Log) {
    cluster(Box::new(move |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", SAR_PATH) => review(true),
            ("GET", VM_PATH) => vm.clone().map_or_else(
                || missing("virtualmachines.kubevirt.io \"x\""),
                |v| (200, v),
            ),
            ("GET", IT_PATH) if it => (200, instancetype(1, "2Gi")),
            ("GET", PREF_PATH) => (200, preference()),
            ("GET", REV_PATH) => (200, revision()),
            ("GET", p) => missing(p),
            _ => (500, status(500, "InternalError", "no writes here")),
        }
    }))
}

fn domain(body: &Value) -> &Value {
    &body["spec"]["template"]["spec"]["domain"]
}

/// The reads (and that there were no writes) after the review.
fn reads(log: &Log) -> Vec<String> {
    let calls = log.calls();
    assert_eq!(calls[0], (Method::POST, SAR_PATH.to_owned()));
    calls[1..]
        .iter()
        .map(|(m, p)| {
            assert_eq!(m, Method::GET, "{m} {p}: the expand subresources only read");
            p.clone()
        })
        .collect()
}

#[tokio::test]
async fn another_vms_revision_is_not_read_in_place_of_the_object() {
    // A VM recreated under the same name (or one naming another VM's
    // revision) gets the current object, not the other VM's copy.
    let mut vm = vm_with("x-u1.small-rev");
    vm["metadata"]["uid"] = json!("another-uid");
    let (client, log) = expand_cluster(Some(vm), true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(domain(&body)["memory"]["guest"], "2Gi", "{body}");
    assert_eq!(
        reads(&log),
        [VM_PATH, REV_PATH, IT_PATH, PREF_PATH].map(str::to_owned)
    );
}

#[tokio::test]
async fn expand_spec_uses_the_revision_the_vm_records_and_writes_nothing() {
    let (client, log) = expand_cluster(Some(vm_with("x-u1.small-rev")), true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["apiVersion"], &body["kind"]),
        (&json!("kubevirt.io/v1"), &json!("VirtualMachine"))
    );
    // The revision's copy (4 vCPUs, 8Gi), not the current object (1, 2Gi).
    assert_eq!(domain(&body)["cpu"]["sockets"], 4);
    assert_eq!(domain(&body)["memory"]["guest"], "8Gi");
    assert_eq!(
        domain(&body)["devices"]["disks"][0]["disk"]["bus"],
        "virtio"
    );
    assert!(body["spec"].get("instancetype").is_none(), "{body}");
    assert!(body["spec"].get("preference").is_none(), "{body}");
    // The rest of the stored VM is as it was.
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    assert_eq!(body["status"]["printableStatus"], "Stopped");
    assert_eq!(
        reads(&log),
        [VM_PATH, REV_PATH, PREF_PATH].map(str::to_owned)
    );
    let sar = &log.all()[0].body["spec"]["resourceAttributes"];
    assert_eq!(
        sar,
        &json!({"group": "subresources.kubevirt.io", "version": "v1",
            "resource": "virtualmachines", "subresource": "expand-spec", "verb": "get",
            "namespace": "ns", "name": "x"})
    );
}

#[tokio::test]
async fn without_a_revision_the_current_objects_are_expanded() {
    let (client, log) = expand_cluster(Some(vm_with("")), true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(domain(&body)["cpu"]["sockets"], 1);
    assert_eq!(domain(&body)["memory"]["guest"], "2Gi");
    assert_eq!(
        reads(&log),
        [VM_PATH, IT_PATH, PREF_PATH].map(str::to_owned)
    );
}

#[tokio::test]
async fn a_vm_without_matchers_comes_back_unchanged() {
    let mut vm = vm_with("");
    let spec = vm["spec"].as_object_mut().unwrap();
    spec.remove("instancetype");
    spec.remove("preference");
    let (client, log) = expand_cluster(Some(vm.clone()), true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body, vm);
    assert_eq!(reads(&log), [VM_PATH]);
}

#[tokio::test]
async fn a_missing_vm_is_404() {
    let (client, _) = expand_cluster(None, true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(message(&body), "virtualmachine.kubevirt.io \"x\" not found");
}

#[tokio::test]
async fn a_missing_instancetype_names_it_and_the_field() {
    // Stored: 422 (the VM cannot be expanded); posted: 400, as KubeVirt.
    let (client, _) = expand_cluster(Some(vm_with("")), false);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["reason"], "Invalid");
    let want = "cannot expand instancetype to VM: spec.instancetype.name: virtualmachineclusterinstancetypes.instancetype.kubevirt.io \"u1.small\" not found";
    assert_eq!(message(&body), want);
    assert_eq!(
        body["details"]["causes"],
        json!([{"reason": "FieldValueNotFound", "field": "spec.instancetype.name",
            "message": "virtualmachineclusterinstancetypes.instancetype.kubevirt.io \"u1.small\" not found"}])
    );

    let (client, _) = expand_cluster(None, false);
    let (code, body) = send(
        state(client),
        &Method::PUT,
        &expand_vm_spec("ns"),
        &vm_with("").to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["reason"], "BadRequest");
    assert_eq!(message(&body), want);
}

#[tokio::test]
async fn a_recorded_revision_that_is_gone_says_how_to_go_on() {
    let mut vm = vm_with("gone");
    vm["spec"].as_object_mut().unwrap().remove("preference");
    let (client, _) = expand_cluster(Some(vm), true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"],
        "spec.instancetype.revisionName"
    );
    assert!(
        message(&body).contains("ControllerRevision \"gone\" not found; clear revisionName"),
        "{body}"
    );
}

#[tokio::test]
async fn template_fields_the_instancetype_owns_are_conflicts() {
    let mut vm = vm_with("");
    vm["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"sockets": 2});
    vm["spec"]["template"]["spec"]["domain"]["memory"] = json!({"guest": "1Gi"});
    let (client, _) = expand_cluster(Some(vm.clone()), true);
    let (code, body) = send(state(client), &Method::GET, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        message(&body),
        "cannot expand instancetype to VM: VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type; VM field(s) spec.template.spec.domain.memory.guest conflicts with selected instance type"
    );
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "spec.template.spec.domain.cpu.sockets",
            "spec.template.spec.domain.memory.guest"
        ]
    );
    assert_eq!(body["details"]["kind"], "VirtualMachine");
    assert_eq!(body["details"]["name"], "x");

    let (client, _) = expand_cluster(None, true);
    let (code, body) = send(
        state(client),
        &Method::PUT,
        &expand_vm_spec("ns"),
        &vm.to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert!(message(&body).contains("conflicts with selected instance type"));
}

#[tokio::test]
async fn expand_vm_spec_expands_the_posted_vm_with_the_current_objects() {
    // The posted VM names a revision: ignored, so a caller cannot have
    // ironvirt-api read a ControllerRevision of its choosing.
    let mut vm = vm_with("x-u1.small-rev");
    vm["metadata"].as_object_mut().unwrap().remove("namespace");
    let (client, log) = expand_cluster(None, true);
    let (code, body) = send(
        state(client),
        &Method::PUT,
        &expand_vm_spec("ns"),
        &vm.to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(domain(&body)["cpu"]["sockets"], 1);
    assert_eq!(domain(&body)["memory"]["guest"], "2Gi");
    assert!(body["spec"].get("instancetype").is_none(), "{body}");
    assert_eq!(body["metadata"]["namespace"], "ns");
    assert_eq!(reads(&log), [IT_PATH, PREF_PATH].map(str::to_owned));
    // One review: update on the resource expand-vm-spec in the namespace.
    let sar = &log.all()[0].body["spec"]["resourceAttributes"];
    assert_eq!(
        sar,
        &json!({"group": "subresources.kubevirt.io", "version": "v1",
            "resource": "expand-vm-spec", "verb": "update", "namespace": "ns"})
    );

    // A namespaced instancetype is read in the URL's namespace.
    let mut vm = vm_with("");
    vm["spec"]["instancetype"] = json!({"name": "mine", "kind": "VirtualMachineInstancetype"});
    let (client, log) = expand_cluster(None, true);
    let (code, _) = send(
        state(client),
        &Method::PUT,
        &expand_vm_spec("ns"),
        &vm.to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(reads(&log), [NS_IT_PATH]);
}

#[tokio::test]
async fn expand_vm_spec_refuses_another_namespaces_vm_and_bad_bodies_before_reading() {
    let mut other = vm_with("");
    other["metadata"]["namespace"] = json!("other");
    let mut not_vm = vm_with("");
    not_vm["kind"] = json!("VirtualMachineInstance");
    let mut nameless = vm_with("");
    nameless["spec"]["preference"] = json!({"kind": "VirtualMachinePreference"});
    let mut bad_kind = vm_with("");
    bad_kind["spec"]["instancetype"]["kind"] = json!("Pod");
    let big = format!(
        "{{\"pad\": \"{}\"}}",
        "a".repeat(super::super::expand::MAX_VM_BODY)
    );
    for (body, want) in [
        (other.to_string(), "VM namespace must be empty or ns"),
        ("this is not JSON {{".to_owned(), "the body is not JSON"),
        ("".to_owned(), "empty request body"),
        (not_vm.to_string(), "Object is not a valid VirtualMachine"),
        (
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "spec": 3})
                .to_string(),
            "Object is not a valid VirtualMachine",
        ),
        (
            bad_kind.to_string(),
            "spec.instancetype.kind: 'Pod' is not a kind",
        ),
        (big, "reading the body"),
    ] {
        let (client, log) = expand_cluster(None, true);
        let (code, answer) = send(state(client), &Method::PUT, &expand_vm_spec("ns"), &body).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{want}: {answer}");
        assert_eq!(answer["reason"], "BadRequest");
        assert!(message(&answer).contains(want), "{want}: {answer}");
        // Reviewed, then nothing read.
        assert_eq!(reads(&log), Vec::<String>::new(), "{want}");
    }
}

#[tokio::test]
async fn expand_vm_spec_is_authorized_in_the_urls_namespace() {
    // Denied: 403 with Kubernetes' wording, and nothing read.
    let (client, log) = cluster(Box::new(|_| review(false)));
    let (code, body) = send(
        state(client),
        &Method::PUT,
        &expand_vm_spec("other"),
        &vm_with("").to_string(),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        message(&body),
        "expand-vm-spec is forbidden: User \"alice\" cannot update resource \"expand-vm-spec\" in API group \"subresources.kubevirt.io\" in the namespace \"other\""
    );
    assert_eq!(log.calls(), vec![(Method::POST, SAR_PATH.to_owned())]);
    assert_eq!(
        log.all()[0].body["spec"]["resourceAttributes"]["namespace"],
        "other"
    );

    // No front-proxy certificate: 401 before any review.
    let (client, log) = no_cluster();
    let req = request(&Method::PUT, &expand_vm_spec("ns"), None, "{}");
    let (code, _) = call(state(client), req).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(log.calls().is_empty());

    // A namespace that is not a DNS label is refused before anything.
    let (client, log) = no_cluster();
    let (code, _) = send(
        state(client),
        &Method::PUT,
        &expand_vm_spec("No_Such"),
        "{}",
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(log.calls().is_empty());

    // expand-spec is GET only; expand-vm-spec PUT only.
    let (client, log) = no_cluster();
    let s = state(client);
    let (code, _) = send(s.clone(), &Method::PUT, &expand_spec(), "").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let (code, _) = send(s, &Method::GET, &expand_vm_spec("ns"), "").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert!(log.calls().is_empty());
}
