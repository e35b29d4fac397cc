#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The admission webhooks through their HTTP router, with AdmissionReview JSON
//! as kube-apiserver sends it: invalid manifests (tests/admission/invalid.yaml),
//! valid ones and their defaults (tests/admission/valid.yaml), presets, the
//! wire format and the webhook configurations.

mod cases;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cases::{CaseRequest, InvalidFile, ValidCase, crate_dir, merged, vmi_of, yaml_file};
use http::{Request, StatusCode};
use ironvirt_apiserver_subresources::admission::{
    AdmissionState, CONFLICT_ANNOTATION, FINALIZER, GARBAGE_COLLECTOR, GUARD_OWNERS_PATH,
    MUTATE_MIGRATION_PATH, MUTATE_VMI_PATH, MUTATOR_NAME, VALIDATE_CLUSTER_INSTANCETYPE_PATH,
    VALIDATE_CLUSTER_PREFERENCE_PATH, VALIDATE_INSTANCETYPE_PATH, VALIDATE_MIGRATION_PATH,
    VALIDATE_POOL_PATH, VALIDATE_PREFERENCE_PATH, VALIDATE_PRESET_PATH, VALIDATE_VM_PATH,
    VALIDATE_VMI_PATH, VALIDATE_VMIRS_PATH, VALIDATOR_NAME, WebhookClient, WebhookEndpoint, router,
    webhook_configurations,
};
use ironvirt_crds::VirtualMachineInstancePreset;
use ironvirt_crds::validate::VolumePolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tower::ServiceExt;

// ---------------------------------------------------------------------------
// Helpers

/// What kube-apiserver knows of a kind: its group, version and plural
/// resource, whether it is namespaced, and the validating webhook's path.
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    namespaced: bool,
    path: &'static str,
}

fn resource_of(kind: &str) -> Resource {
    let kubevirt = |plural, path| Resource {
        group: "kubevirt.io",
        version: "v1",
        plural,
        namespaced: true,
        path,
    };
    let instancetype = |plural, namespaced, path| Resource {
        group: "instancetype.kubevirt.io",
        version: "v1beta1",
        plural,
        namespaced,
        path,
    };
    match kind {
        "VirtualMachineInstance" => kubevirt("virtualmachineinstances", VALIDATE_VMI_PATH),
        "VirtualMachine" => kubevirt("virtualmachines", VALIDATE_VM_PATH),
        "VirtualMachineInstanceReplicaSet" => {
            kubevirt("virtualmachineinstancereplicasets", VALIDATE_VMIRS_PATH)
        }
        "VirtualMachineInstancePreset" => {
            kubevirt("virtualmachineinstancepresets", VALIDATE_PRESET_PATH)
        }
        "VirtualMachineInstancetype" => instancetype(
            "virtualmachineinstancetypes",
            true,
            VALIDATE_INSTANCETYPE_PATH,
        ),
        "VirtualMachineClusterInstancetype" => instancetype(
            "virtualmachineclusterinstancetypes",
            false,
            VALIDATE_CLUSTER_INSTANCETYPE_PATH,
        ),
        "VirtualMachinePreference" => {
            instancetype("virtualmachinepreferences", true, VALIDATE_PREFERENCE_PATH)
        }
        "VirtualMachineClusterPreference" => instancetype(
            "virtualmachineclusterpreferences",
            false,
            VALIDATE_CLUSTER_PREFERENCE_PATH,
        ),
        "VirtualMachinePool" => Resource {
            group: "pool.kubevirt.io",
            version: "v1beta1",
            plural: "virtualmachinepools",
            namespaced: true,
            path: VALIDATE_POOL_PATH,
        },
        other => panic!("no webhook for kind {other}"),
    }
}

/// One admission request.
struct Call {
    operation: &'static str,
    object: Value,
    old: Option<Value>,
    user: String,
    namespace: String,
    dry_run: bool,
}

impl Call {
    fn create(object: Value) -> Self {
        Call {
            operation: "CREATE",
            object,
            old: None,
            user: "alice".into(),
            namespace: "default".into(),
            dry_run: false,
        }
    }

    fn update(old: Value, object: Value) -> Self {
        Call {
            operation: "UPDATE",
            old: Some(old),
            ..Call::create(object)
        }
    }

    fn of(request: CaseRequest) -> Self {
        let call = match request.old {
            Some(old) => Call::update(old, request.object),
            None => Call::create(request.object),
        };
        match &request.user {
            Some(user) => call.user(user),
            None => call,
        }
    }

    fn user(mut self, user: &str) -> Self {
        self.user = user.into();
        self
    }

    fn kind(&self) -> String {
        self.object["kind"].as_str().unwrap().to_owned()
    }

    /// The AdmissionReview kube-apiserver would send.
    fn review(&self, uid: &str) -> Value {
        let kind = self.kind();
        let r = resource_of(&kind);
        let gvk = json!({"group": r.group, "version": r.version, "kind": kind});
        let gvr = json!({"group": r.group, "version": r.version, "resource": r.plural});
        // Cluster-scoped objects have no namespace.
        let namespace = if r.namespaced {
            self.namespace.as_str()
        } else {
            ""
        };
        let options_kind = if self.operation == "CREATE" {
            "CreateOptions"
        } else {
            "UpdateOptions"
        };
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": gvk,
                "resource": gvr,
                "requestKind": gvk,
                "requestResource": gvr,
                "name": self.object["metadata"]["name"].as_str().unwrap_or_default(),
                "namespace": namespace,
                "operation": self.operation,
                "userInfo": {
                    "username": self.user,
                    "uid": "4c0e2f5a-user",
                    "groups": ["system:authenticated"],
                },
                "object": self.object,
                "oldObject": self.old.clone().unwrap_or(Value::Null),
                "dryRun": self.dry_run,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind},
            }
        })
    }
}

/// POSTs a body; the status and the body (JSON when it parses, else a string).
async fn post(app: &Router, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// Sends `call` to `path` and returns the AdmissionResponse, checking the
/// envelope (HTTP 200, AdmissionReview v1, the same uid).
async fn admit(app: &Router, path: &str, call: &Call) -> Value {
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    let body = serde_json::to_vec(&call.review(uid)).unwrap();
    let (status, review) = post(app, path, body).await;
    assert_eq!(status, StatusCode::OK, "{review}");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    assert_eq!(review["response"]["uid"], uid, "{review}");
    review["response"].clone()
}

async fn validate(app: &Router, call: &Call) -> Value {
    admit(app, resource_of(&call.kind()).path, call).await
}

/// The JSONPatch of a response, decoded from base64.
fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let encoded = response.get("patch")?.as_str().expect("patch is base64");
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = BASE64.decode(encoded).unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// `object` with `patch` applied.
fn patched(object: &Value, patch: &json_patch::Patch) -> Value {
    let mut out = object.clone();
    json_patch::patch(&mut out, patch).unwrap();
    out
}

/// The test bed's hostDisk root (hack/lib.sh `HOSTDISK_ROOT`); the cases'
/// hostDisk paths lie in its `default` directory.
const HOSTDISK_ROOT: &str = "/var/lib/ironvirt/hostdisks";

/// The volume policy of the test bed: hostDisk on under [`HOSTDISK_ROOT`],
/// the default capacity limits.
fn bed_policy() -> VolumePolicy {
    VolumePolicy::with_host_disk_root(HOSTDISK_ROOT)
}

fn app() -> Router {
    router(AdmissionState::without_presets().with_volume_policy(bed_policy()))
}

fn presets_state(presets: &[Value]) -> AdmissionState {
    let (store, mut writer): (Store<VirtualMachineInstancePreset>, _) = reflector::store();
    // As a reflector fills it: a listing (Init, InitApply…, InitDone swaps it
    // in), then events. Apply before InitDone would be swapped away.
    writer.apply_watcher_event(&watcher::Event::Init);
    let (first, rest) = presets.split_at(presets.len().min(1));
    for p in first {
        let preset: VirtualMachineInstancePreset = serde_json::from_value(p.clone()).unwrap();
        writer.apply_watcher_event(&watcher::Event::InitApply(preset));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    for p in rest {
        let preset: VirtualMachineInstancePreset = serde_json::from_value(p.clone()).unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(preset));
    }
    // The store stays readable (and ready) after the writer is dropped.
    AdmissionState::new(store).with_volume_policy(bed_policy())
}

fn preset(name: &str, namespace: &str, selector: Value, domain: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstancePreset",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": selector, "domain": domain},
    })
}

fn small_vmi(labels: Value, domain: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "small-vmi", "labels": labels},
        "spec": {
            "domain": domain,
            "volumes": [{"name": "root", "hostDisk": {"path": "/var/lib/ironvirt/hostdisks/default/img", "type": "Disk"}}],
        },
    })
}

// ---------------------------------------------------------------------------
// Invalid manifests

#[tokio::test]
async fn invalid_manifests_are_rejected_with_field_paths_and_messages() {
    let file = InvalidFile::load();
    assert!(
        file.cases.len() >= 50,
        "only {} invalid cases",
        file.cases.len()
    );
    let app = app();
    // The bases themselves are valid: every rejection is the patch's doing.
    for (name, base) in &file.bases {
        let r = validate(&app, &Call::create(base.clone())).await;
        assert_eq!(r["allowed"], true, "base {name}: {r}");
    }
    let mut failures = Vec::new();
    let mut kinds = std::collections::BTreeSet::new();
    for case in &file.cases {
        let call = Call::of(case.request(&file.bases));
        kinds.insert((call.kind(), call.operation));
        let response = validate(&app, &call).await;
        let problems = if response["allowed"] == json!(false) {
            case.check_status(&response["status"], false)
        } else {
            vec![format!("was allowed: {response}")]
        };
        for p in problems {
            failures.push(format!("{}: {p}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    for kind in [
        "VirtualMachineInstance",
        "VirtualMachine",
        "VirtualMachineInstanceReplicaSet",
        "VirtualMachineInstancePreset",
        "VirtualMachineInstancetype",
        "VirtualMachineClusterInstancetype",
        "VirtualMachinePreference",
        "VirtualMachineClusterPreference",
        "VirtualMachinePool",
    ] {
        for op in ["CREATE", "UPDATE"] {
            assert!(
                kinds.contains(&(kind.to_owned(), op)),
                "no {op} case for {kind}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Valid manifests and defaults

#[tokio::test]
async fn valid_manifests_are_admitted_and_only_defaulted() {
    let cases = ValidCase::load_all();
    assert!(cases.len() >= 10);
    let app = app();
    for case in &cases {
        let object = case.object();
        let r = validate(&app, &Call::create(object.clone())).await;
        assert_eq!(r["allowed"], true, "{}: {r}", case.name);
        assert!(
            r.get("patch").is_none(),
            "{}: validators do not patch",
            case.name
        );

        let Some(defaults) = &case.defaults else {
            continue;
        };
        let vmi = vmi_of(&object);
        let r = admit(&app, MUTATE_VMI_PATH, &Call::create(vmi.clone())).await;
        assert_eq!(r["allowed"], true, "{}: {r}", case.name);
        let patch = patch_of(&r).unwrap_or_else(|| panic!("{}: no patch", case.name));
        for op in &patch.0 {
            assert!(
                matches!(
                    op,
                    json_patch::PatchOperation::Add(_) | json_patch::PatchOperation::Replace(_)
                ),
                "{}: the patch may only add defaults: {op}",
                case.name
            );
        }
        let mutated = patched(&vmi, &patch);
        let expected = merged(&vmi, defaults);
        assert_eq!(
            mutated,
            expected,
            "{}: the mutated VMI is not the VMI plus its defaults\nmutated:  {}\nexpected: {}",
            case.name,
            serde_json::to_string_pretty(&mutated).unwrap(),
            serde_json::to_string_pretty(&expected).unwrap()
        );
        // The defaulted VMI is valid, and defaulting it again changes nothing.
        let r = validate(&app, &Call::create(mutated.clone())).await;
        assert_eq!(r["allowed"], true, "{}: defaulted VMI: {r}", case.name);
        let again = admit(&app, MUTATE_VMI_PATH, &Call::create(mutated)).await;
        assert!(
            again.get("patch").is_none(),
            "{}: not idempotent: {again}",
            case.name
        );
    }
}

// ---------------------------------------------------------------------------
// Presets

#[tokio::test]
async fn a_matching_preset_fills_in_what_the_vmi_leaves_unset() {
    let small: Value = yaml_file(crate_dir().join("../examples/vmipreset-small.yaml"));
    let mut small = small;
    small["metadata"]["namespace"] = json!("default");
    let state = presets_state(&[
        small,
        // Another namespace, and a selector that does not match: ignored.
        preset(
            "elsewhere",
            "other",
            json!({"matchLabels": {"kubevirt.io/size": "small"}}),
            json!({"cpu": {"sockets": 4}}),
        ),
        preset(
            "large",
            "default",
            json!({"matchLabels": {"kubevirt.io/size": "large"}}),
            json!({"cpu": {"sockets": 8}}),
        ),
        // Matches through an expression; agrees with "small" on memory.
        preset(
            "firmware",
            "default",
            json!({"matchExpressions": [{"key": "kubevirt.io/size", "operator": "In", "values": ["small", "medium"]}]}),
            json!({"firmware": {"serial": "SN-1"}, "resources": {"requests": {"memory": "134217728"}}}),
        ),
    ]);
    let app = router(state);
    let vmi = small_vmi(
        json!({"kubevirt.io/size": "small"}),
        json!({"cpu": {"cores": 2, "model": "host-model"}, "devices": {"disks": [{"name": "root"}]}}),
    );
    let r = admit(&app, MUTATE_VMI_PATH, &Call::create(vmi.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    let out = patched(&vmi, &patch_of(&r).unwrap());
    let annotations = &out["metadata"]["annotations"];
    assert_eq!(
        annotations["presets.virtualmachines.kubevirt.io/small"],
        "kubevirt.io/v1"
    );
    assert_eq!(
        annotations["presets.virtualmachines.kubevirt.io/firmware"],
        "kubevirt.io/v1"
    );
    assert!(
        annotations.get(CONFLICT_ANNOTATION).is_none(),
        "{annotations}"
    );
    assert_eq!(annotations.as_object().unwrap().len(), 2, "{annotations}");
    let domain = &out["spec"]["domain"];
    // The VMI's own values are kept; the presets fill in the rest.
    assert_eq!(domain["cpu"], json!({"cores": 2, "model": "host-model"}));
    assert_eq!(domain["memory"]["guest"], "128Mi");
    // Presets apply in name order: "firmware" set the request first, and
    // "small" agrees with it (134217728 = 128Mi), so both count as applied.
    assert_eq!(domain["resources"]["requests"]["memory"], "134217728");
    assert_eq!(domain["firmware"]["serial"], "SN-1");
    assert!(
        domain["firmware"]["uuid"].is_string(),
        "defaults still apply"
    );
    // Nothing from other namespaces or non-matching presets.
    assert!(domain["cpu"].get("sockets").is_none());
    let v = validate(&app, &Call::create(out)).await;
    assert_eq!(v["allowed"], true, "{v}");
}

#[tokio::test]
async fn conflicting_presets_apply_none_and_say_why() {
    let state = presets_state(&[
        preset(
            "two-cores",
            "default",
            json!({"matchLabels": {"tier": "web"}}),
            json!({"cpu": {"cores": 2}, "memory": {"guest": "1Gi"}}),
        ),
        preset(
            "four-cores",
            "default",
            json!({"matchLabels": {"tier": "web"}}),
            json!({"cpu": {"cores": 4}, "memory": {"guest": "1024Mi"}}),
        ),
    ]);
    let app = router(state);
    let vmi = small_vmi(
        json!({"tier": "web"}),
        json!({"memory": {"guest": "256Mi"}, "devices": {"disks": [{"name": "root"}]}}),
    );
    let r = admit(&app, MUTATE_VMI_PATH, &Call::create(vmi.clone())).await;
    assert_eq!(r["allowed"], true, "a conflict does not block the VMI: {r}");
    let out = patched(&vmi, &patch_of(&r).unwrap());
    let annotations = out["metadata"]["annotations"].as_object().unwrap();
    let conflict = annotations[CONFLICT_ANNOTATION].as_str().unwrap();
    assert_eq!(
        conflict,
        "VirtualMachineInstancePresets cannot be applied due to conflicts: presets 'four-cores' and 'two-cores' conflict: spec.domain.cpu.cores: 4 != 2"
    );
    assert!(
        !annotations
            .keys()
            .any(|k| k.starts_with("presets.virtualmachines.kubevirt.io/")),
        "{annotations:?}"
    );
    assert!(
        out["spec"]["domain"].get("cpu").is_none(),
        "no preset applied"
    );
    assert_eq!(out["spec"]["domain"]["memory"]["guest"], "256Mi");
    assert_eq!(out["metadata"]["finalizers"], json!([FINALIZER]));
}

#[tokio::test]
async fn a_vmi_can_opt_out_of_presets() {
    let state = presets_state(&[preset(
        "all",
        "default",
        json!({}),
        json!({"cpu": {"cores": 3}}),
    )]);
    let app = router(state);
    let mut vmi = small_vmi(json!({}), json!({"memory": {"guest": "64Mi"}}));
    let r = admit(&app, MUTATE_VMI_PATH, &Call::create(vmi.clone())).await;
    let out = patched(&vmi, &patch_of(&r).unwrap());
    assert_eq!(
        out["spec"]["domain"]["cpu"]["cores"], 3,
        "an empty selector matches all"
    );
    vmi["metadata"]["annotations"] =
        json!({"virtualmachineinstancepresets.admission.kubevirt.io/exclude": "true"});
    let r = admit(&app, MUTATE_VMI_PATH, &Call::create(vmi.clone())).await;
    let out = patched(&vmi, &patch_of(&r).unwrap());
    assert!(out["spec"]["domain"].get("cpu").is_none());
}

#[tokio::test]
async fn an_unsynced_preset_cache_refuses_vmis_with_503() {
    let (store, _writer) = reflector::store::<VirtualMachineInstancePreset>();
    let state = AdmissionState::new(store).with_preset_sync_timeout(Duration::from_millis(20));
    let app = router(state);
    let vmi = small_vmi(json!({}), json!({"memory": {"guest": "64Mi"}}));
    let r = admit(&app, MUTATE_VMI_PATH, &Call::create(vmi)).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 503, "{r}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("has not synced")
    );
}

// ---------------------------------------------------------------------------
// Updates

#[tokio::test]
async fn vmi_updates_of_metadata_or_by_privileged_users_pass() {
    let operator = "system:serviceaccount:ironvirt:ironvirt-operator";
    let app = router(AdmissionState::without_presets().with_privileged_users([operator]));
    let file = InvalidFile::load();
    let vmi = file.bases["vmi"].clone();

    let relabelled = merged(
        &vmi,
        &json!({"metadata": {"labels": {"extra": "yes"}, "finalizers": null}, "status": {"phase": "Running"}}),
    );
    let r = validate(&app, &Call::update(vmi.clone(), relabelled)).await;
    assert_eq!(r["allowed"], true, "metadata and status may change: {r}");

    let resized = merged(&vmi, &json!({"spec": {"domain": {"cpu": {"cores": 4}}}}));
    let r = validate(
        &app,
        &Call::update(vmi.clone(), resized.clone()).user(operator),
    )
    .await;
    assert_eq!(
        r["allowed"], true,
        "privileged users may change the spec: {r}"
    );
    let r = validate(&app, &Call::update(vmi.clone(), resized).user("bob")).await;
    assert_eq!(r["allowed"], false, "{r}");
}

#[tokio::test]
async fn updates_that_keep_an_invalid_spec_pass() {
    // A VM created before the webhook existed must still be able to lose its
    // finalizer (or get a label) without being fixed first.
    let app = app();
    let vm = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "legacy", "finalizers": ["kubevirt.io/virtualMachineControllerFinalize"]},
        "spec": {"running": true, "runStrategy": "Always", "template": {"spec": {"domain": {}}}},
    });
    let r = validate(&app, &Call::create(vm.clone())).await;
    assert_eq!(r["allowed"], false, "{r}");
    let released = merged(
        &vm,
        &json!({"metadata": {"finalizers": [], "deletionTimestamp": "2026-01-01T00:00:00Z"}}),
    );
    let r = validate(&app, &Call::update(vm.clone(), released)).await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test]
async fn deletes_pass_and_the_mutator_ignores_updates() {
    let app = app();
    let file = InvalidFile::load();
    let vmi = file.bases["vmi"].clone();
    let mut call = Call::update(vmi.clone(), vmi.clone());
    call.operation = "DELETE";
    let r = validate(&app, &call).await;
    assert_eq!(r["allowed"], true, "{r}");
    let r = admit(&app, MUTATE_VMI_PATH, &Call::update(vmi.clone(), vmi)).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("patch").is_none());
}

// ---------------------------------------------------------------------------
// The wire format

#[tokio::test]
async fn the_mutator_answers_a_base64_jsonpatch() {
    let app = app();
    let vmi = small_vmi(json!({}), json!({"memory": {"guest": "64Mi"}}));
    let call = Call::create(vmi.clone());
    let (status, review) = post(
        &app,
        MUTATE_VMI_PATH,
        serde_json::to_vec(&call.review("uid-42")).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let response = &review["response"];
    assert_eq!(response["uid"], "uid-42");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let ops: Value =
        serde_json::from_slice(&BASE64.decode(response["patch"].as_str().unwrap()).unwrap())
            .unwrap();
    assert!(
        ops.as_array()
            .unwrap()
            .iter()
            .any(|op| op["path"] == "/metadata/finalizers"),
        "{ops}"
    );
}

#[tokio::test]
async fn dry_runs_are_mutated_the_same() {
    let app = app();
    let vmi = small_vmi(json!({}), json!({"memory": {"guest": "64Mi"}}));
    let mut call = Call::create(vmi.clone());
    let wet = admit(&app, MUTATE_VMI_PATH, &call).await;
    call.dry_run = true;
    let dry = admit(&app, MUTATE_VMI_PATH, &call).await;
    assert_eq!(wet["patch"], dry["patch"]);
}

#[tokio::test]
async fn malformed_bodies_are_http_400() {
    let app = app();
    let good = Call::create(small_vmi(json!({}), json!({}))).review("u");
    let mut no_uid = good.clone();
    no_uid["request"].as_object_mut().unwrap().remove("uid");
    let mut v1beta1 = good.clone();
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("not JSON", b"{\"apiVersion\":".to_vec(), "not JSON"),
        ("empty", Vec::new(), "not JSON"),
        (
            "v1beta1",
            serde_json::to_vec(&v1beta1).unwrap(),
            "expected apiVersion admission.k8s.io/v1",
        ),
        (
            "no uid",
            serde_json::to_vec(&no_uid).unwrap(),
            "not an admission.k8s.io/v1 AdmissionReview",
        ),
        (
            "no request",
            serde_json::to_vec(&no_request).unwrap(),
            "has no request",
        ),
    ];
    for path in [VALIDATE_VMI_PATH, MUTATE_VMI_PATH] {
        for (name, body, message) in &cases {
            let (status, body) = post(&app, path, body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{name} to {path}");
            assert!(
                body.as_str().is_some_and(|b| b.contains(message)),
                "{name}: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_kind_sent_to_the_wrong_webhook_is_refused() {
    let app = app();
    let file = InvalidFile::load();
    let call = Call::create(file.bases["vm"].clone());
    for path in [VALIDATE_VMI_PATH, MUTATE_VMI_PATH] {
        let r = admit(&app, path, &call).await;
        assert_eq!(r["allowed"], false, "{r}");
        assert_eq!(r["status"]["code"], 400, "{r}");
    }
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let (status, _) = post(&app(), "/webhooks/validate/pods", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------
// Webhook configurations

#[test]
fn webhook_configurations_are_scoped_to_kubevirt_resources() {
    let instancetypes = [
        "virtualmachineinstancetypes",
        "virtualmachineclusterinstancetypes",
        "virtualmachinepreferences",
        "virtualmachineclusterpreferences",
    ];
    let client = WebhookClient {
        endpoint: WebhookEndpoint::Service {
            namespace: "ironvirt".into(),
            name: "ironvirt-api".into(),
            port: Some(8443),
        },
        ca_bundle: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
    };
    let (validating, mutating) = webhook_configurations(&client);
    assert_eq!(validating.metadata.name.as_deref(), Some(VALIDATOR_NAME));
    assert_eq!(mutating.metadata.name.as_deref(), Some(MUTATOR_NAME));

    let v = serde_json::to_value(&validating).unwrap();
    let m = serde_json::to_value(&mutating).unwrap();
    let mut seen = Vec::new();
    for hook in v["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .chain(m["webhooks"].as_array().unwrap())
    {
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["timeoutSeconds"], 10);
        assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
        assert!(matches!(
            hook["sideEffects"].as_str(),
            Some("None" | "NoneOnDryRun")
        ));
        assert!(hook["name"].as_str().unwrap().ends_with(".ironvirt.io"));
        assert_eq!(
            hook["clientConfig"]["caBundle"],
            BASE64.encode(&client.ca_bundle)
        );
        let rules = hook["rules"].as_array().unwrap();
        assert_eq!(rules.len(), 1);
        let rule = &rules[0];
        // Equivalent: requests in another served version (v1alpha3) are
        // converted to the registered one, so they are reviewed too.
        assert_eq!(hook["matchPolicy"], "Equivalent");
        if hook["name"] == "owner-deletions-guard.ironvirt.io" {
            // The owner guard: DELETE of VMIs and VMs, and only for the
            // garbage collector's requests.
            assert_eq!(rule["apiGroups"], json!(["kubevirt.io"]));
            assert_eq!(rule["operations"], json!(["DELETE"]));
            assert_eq!(
                rule["resources"],
                json!(["virtualmachineinstances", "virtualmachines"])
            );
            assert_eq!(
                hook["matchConditions"][0]["expression"],
                format!("request.userInfo.username == '{GARBAGE_COLLECTOR}'")
            );
            assert_eq!(hook["clientConfig"]["service"]["path"], GUARD_OWNERS_PATH);
            continue;
        }
        assert!(hook.get("matchConditions").is_none(), "{hook}");
        let resources = rule["resources"].as_array().unwrap();
        assert_eq!(resources.len(), 1);
        let resource = resources[0].as_str().unwrap().to_owned();
        if resource == "virtualmachinepools" {
            assert_eq!(rule["apiGroups"], json!(["pool.kubevirt.io"]));
            assert_eq!(rule["apiVersions"], json!(["v1beta1"]));
            assert_eq!(rule["scope"], "Namespaced");
        } else if instancetypes.contains(&resource.as_str()) {
            assert_eq!(rule["apiGroups"], json!(["instancetype.kubevirt.io"]));
            assert_eq!(rule["apiVersions"], json!(["v1beta1"]));
            let cluster = resource.contains("cluster");
            assert_eq!(
                rule["scope"],
                if cluster { "Cluster" } else { "Namespaced" },
                "{resource}"
            );
        } else {
            assert_eq!(rule["apiGroups"], json!(["kubevirt.io"]));
            assert_eq!(rule["apiVersions"], json!(["v1"]));
            assert_eq!(rule["scope"], "Namespaced");
        }
        assert!(
            !resource.contains('*') && !resource.contains('/'),
            "{resource}"
        );
        let path = hook["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(path.ends_with(&format!("/{resource}")), "{path}");
        let operations = rule["operations"].clone();
        seen.push((path, resource, operations));
    }
    assert_eq!(
        seen,
        vec![
            (
                VALIDATE_VMI_PATH.to_owned(),
                "virtualmachineinstances".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_VM_PATH.to_owned(),
                "virtualmachines".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_VMIRS_PATH.to_owned(),
                "virtualmachineinstancereplicasets".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_PRESET_PATH.to_owned(),
                "virtualmachineinstancepresets".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_INSTANCETYPE_PATH.to_owned(),
                "virtualmachineinstancetypes".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_CLUSTER_INSTANCETYPE_PATH.to_owned(),
                "virtualmachineclusterinstancetypes".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_PREFERENCE_PATH.to_owned(),
                "virtualmachinepreferences".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_CLUSTER_PREFERENCE_PATH.to_owned(),
                "virtualmachineclusterpreferences".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_POOL_PATH.to_owned(),
                "virtualmachinepools".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                VALIDATE_MIGRATION_PATH.to_owned(),
                "virtualmachineinstancemigrations".to_owned(),
                json!(["CREATE", "UPDATE"])
            ),
            (
                MUTATE_VMI_PATH.to_owned(),
                "virtualmachineinstances".to_owned(),
                json!(["CREATE"])
            ),
            (
                MUTATE_MIGRATION_PATH.to_owned(),
                "virtualmachineinstancemigrations".to_owned(),
                json!(["CREATE"])
            ),
        ]
    );
    let (v, _) = webhook_configurations(&WebhookClient {
        endpoint: WebhookEndpoint::Url("https://127.0.0.1:9443".into()),
        ca_bundle: vec![],
    });
    let hooks = v.webhooks.unwrap();
    assert_eq!(
        hooks[3].client_config.url.as_deref(),
        Some("https://127.0.0.1:9443/webhooks/validate/virtualmachineinstancepresets")
    );
    assert!(hooks[3].client_config.service.is_none());
}

// ---------------------------------------------------------------------------
// hostDisk confined, capacity limits

/// `object` (a VMI, or a VM or VMIRS with a template) with its first
/// volume's hostDisk at `path`, of `type`.
fn with_host_disk(object: &Value, path: &str, disk_type: &str) -> Value {
    let mut out = object.clone();
    let spec = if out["kind"] == "VirtualMachineInstance" {
        &mut out["spec"]
    } else {
        &mut out["spec"]["template"]["spec"]
    };
    spec["volumes"][0]["hostDisk"] = json!({"path": path, "type": disk_type, "capacity": "1Gi"});
    out
}

/// The field path of the first volume of `object`'s VMI spec.
fn volume0(object: &Value) -> &'static str {
    if object["kind"] == "VirtualMachineInstance" {
        "spec.volumes[0]"
    } else {
        "spec.template.spec.volumes[0]"
    }
}

/// The causes (field, message) of a denial, asserting it is a 422 Invalid.
fn causes(r: &Value) -> Vec<(String, String)> {
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 422, "{r}");
    assert_eq!(r["status"]["reason"], "Invalid", "{r}");
    r["status"]["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_owned(),
                c["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn any_hostdisk_is_refused_while_hostdisk_is_off() {
    // No --host-disk-root: the default policy, as in deploy/.
    let app = router(AdmissionState::without_presets());
    let file = InvalidFile::load();
    for base in ["vmi", "vm", "vmirs"] {
        let object = &file.bases[base];
        for path in [
            "/var/lib/ironvirt/hostdisks/default/busybox.qcow2",
            "/etc/shadow",
        ] {
            let r = validate(&app, &Call::create(with_host_disk(object, path, "Disk"))).await;
            let causes = causes(&r);
            assert_eq!(causes.len(), 1, "{base} {path}: {causes:?}");
            assert_eq!(causes[0].0, format!("{}.hostDisk", volume0(object)));
            assert!(
                causes[0].1.contains("hostDisk is disabled on this cluster")
                    && causes[0].1.contains("HostDisk feature gate"),
                "{causes:?}"
            );
        }
    }
    // Other volumes still pass.
    let mut vmi = file.bases["vmi"].clone();
    vmi["spec"]["volumes"][0] = json!({"name": "rootdisk", "emptyDisk": {"capacity": "1Gi"}});
    let r = validate(&app, &Call::create(vmi)).await;
    assert_eq!(r["allowed"], true, "{r}");
}

#[tokio::test]
async fn hostdisk_links_devices_and_escapes_on_the_webhooks_host_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("hostdisks");
    let (ns1, ns2) = (root.join("ns1"), root.join("ns2"));
    std::fs::create_dir_all(&ns1).unwrap();
    std::fs::create_dir_all(&ns2).unwrap();
    std::fs::write(ns1.join("disk.img"), b"mine").unwrap();
    std::fs::write(ns2.join("secret.img"), b"theirs").unwrap();
    std::os::unix::fs::symlink(ns2.join("secret.img"), ns1.join("link.img")).unwrap();
    std::os::unix::fs::symlink(&ns2, ns1.join("theirs")).unwrap();
    std::os::unix::fs::symlink("/dev/null", ns1.join("null")).unwrap();
    std::fs::create_dir(ns1.join("dir")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(ns1.join("sock")).unwrap();
    // A real device node when the tests run as root (as in the test bed).
    let device = std::process::Command::new("mknod")
        .arg(ns1.join("zero"))
        .args(["c", "1", "5"])
        .status()
        .is_ok_and(|s| s.success());

    let app = router(
        AdmissionState::without_presets()
            .with_volume_policy(VolumePolicy::with_host_disk_root(&root)),
    );
    let file = InvalidFile::load();
    let at = |p: &str| format!("{}/{p}", ns1.display());
    let mut refused = vec![
        (at("link.img"), "Disk", "is a symbolic link"),
        (at("theirs/secret.img"), "Disk", "is a symbolic link"),
        (at("null"), "DiskOrCreate", "is a symbolic link"),
        (
            at("sock"),
            "Disk",
            "is a socket: a hostDisk image must be a regular file",
        ),
        (at("dir"), "DiskOrCreate", "is a directory"),
        (at("disk.img/x.img"), "DiskOrCreate", "is not a directory"),
        (at("../ns2/secret.img"), "Disk", "'..'"),
        (
            format!("{}/secret.img", ns2.display()),
            "Disk",
            "is not inside",
        ),
        ("/etc/shadow".to_owned(), "Disk", "is not inside"),
        ("/dev/null".to_owned(), "Disk", "is not inside"),
    ];
    if device {
        refused.push((at("zero"), "Disk", "is a character device"));
    }
    for base in ["vmi", "vm", "vmirs"] {
        let object = &file.bases[base];
        for (path, disk_type, want) in &refused {
            let mut call = Call::create(with_host_disk(object, path, disk_type));
            call.namespace = "ns1".into();
            let r = validate(&app, &call).await;
            let causes = causes(&r);
            assert_eq!(causes.len(), 1, "{base} {path}: {causes:?}");
            assert_eq!(causes[0].0, format!("{}.hostDisk.path", volume0(object)));
            assert!(
                causes[0].1.contains(want) && causes[0].1.contains(path.as_str()),
                "{base} {path}: {causes:?}"
            );
        }
        // A regular file, a missing Disk (the handler refuses it if it is
        // still missing when the VMI starts) and DiskOrCreate in a new
        // directory pass.
        for (path, disk_type) in [
            (at("disk.img"), "Disk"),
            (at("missing.img"), "Disk"),
            (at("new/dir/data.img"), "DiskOrCreate"),
        ] {
            let mut call = Call::create(with_host_disk(object, &path, disk_type));
            call.namespace = "ns1".into();
            let r = validate(&app, &call).await;
            assert_eq!(r["allowed"], true, "{base} {path}: {r}");
        }
    }
    // Changing a VM's template to a link is refused like creating it.
    let vm = with_host_disk(&file.bases["vm"], &at("disk.img"), "Disk");
    let linked = with_host_disk(&vm, &at("link.img"), "Disk");
    let mut call = Call::update(vm, linked);
    call.namespace = "ns1".into();
    let r = validate(&app, &call).await;
    assert_eq!(
        causes(&r)[0].0,
        "spec.template.spec.volumes[0].hostDisk.path",
        "{r}"
    );
}

#[tokio::test]
async fn capacity_limits_come_from_the_policy() {
    let file = InvalidFile::load();
    let mut vmi = file.bases["vmi"].clone();
    vmi["spec"]["volumes"][0] = json!({"name": "rootdisk", "emptyDisk": {"capacity": "2Gi"}});
    let limited = router(
        AdmissionState::without_presets().with_volume_policy(VolumePolicy {
            max_volume_bytes: Some(1 << 30),
            max_vmi_bytes: Some(1 << 30),
            ..bed_policy()
        }),
    );
    let r = validate(&limited, &Call::create(vmi.clone())).await;
    assert_eq!(
        causes(&r),
        vec![
            (
                "spec.volumes[0].emptyDisk.capacity".to_owned(),
                "'2Gi' is more than the maximum of 1Gi per volume on this cluster".to_owned()
            ),
            (
                "spec.volumes".to_owned(),
                "the emptyDisk and DiskOrCreate capacities add up to 2Gi, more than the maximum of 1Gi per VMI on this cluster".to_owned()
            ),
        ]
    );
    let unlimited = router(
        AdmissionState::without_presets().with_volume_policy(VolumePolicy {
            max_volume_bytes: None,
            max_vmi_bytes: None,
            ..bed_policy()
        }),
    );
    vmi["spec"]["volumes"][0]["emptyDisk"]["capacity"] = json!("1Ei");
    let r = validate(&unlimited, &Call::create(vmi.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    // The defaults refuse 1Ei.
    let r = validate(&app(), &Call::create(vmi)).await;
    assert_eq!(causes(&r).len(), 2, "{r}");
}
