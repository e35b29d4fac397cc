//! ironvirt's admission webhooks as users meet them: registered with
//! kube-apiserver (hack/lib.sh `start_api` registers them by URL) and reached
//! through its REST API. The cases are the ones tests/admission.rs of
//! apiserver-subresources sends to the webhooks' router directly; their
//! hostDisk paths (in namespace `default`'s directory of the bed's hostDisk
//! root) move into the test namespace's directory.

#[path = "../../apiserver-subresources/tests/cases/mod.rs"]
mod cases;

use cases::{InvalidFile, ValidCase, merged, vmi_of};
use ironvirt_tests::api::{bind, raw};
use ironvirt_tests::hostdisk;
use ironvirt_tests::kubectl::bed_with_crds as bed;
use serde_json::{Value, json};

/// Users the cases act as: alice unless a case names another.
const ALICE: &str = "alice";

/// The API group and version, plural resource and scope of a kind.
fn resource(kind: &str) -> (&'static str, &'static str, bool) {
    const IT: &str = "instancetype.kubevirt.io/v1beta1";
    match kind {
        "VirtualMachineInstance" => ("kubevirt.io/v1", "virtualmachineinstances", true),
        "VirtualMachine" => ("kubevirt.io/v1", "virtualmachines", true),
        "VirtualMachineInstanceReplicaSet" => {
            ("kubevirt.io/v1", "virtualmachineinstancereplicasets", true)
        }
        "VirtualMachineInstancePreset" => ("kubevirt.io/v1", "virtualmachineinstancepresets", true),
        "VirtualMachineInstancetype" => (IT, "virtualmachineinstancetypes", true),
        "VirtualMachineClusterInstancetype" => (IT, "virtualmachineclusterinstancetypes", false),
        "VirtualMachinePreference" => (IT, "virtualmachinepreferences", true),
        "VirtualMachineClusterPreference" => (IT, "virtualmachineclusterpreferences", false),
        "VirtualMachinePool" => ("pool.kubevirt.io/v1beta1", "virtualmachinepools", true),
        other => panic!("no resource for kind {other}"),
    }
}

fn namespaced(object: &Value) -> bool {
    resource(object["kind"].as_str().unwrap_or_default()).2
}

fn collection(ns: &str, object: &Value) -> String {
    let (gv, plural, namespaced) = resource(object["kind"].as_str().unwrap_or_default());
    if namespaced {
        format!("/apis/{gv}/namespaces/{ns}/{plural}")
    } else {
        format!("/apis/{gv}/{plural}")
    }
}

/// `object` moved into `ns` under `name`, its hostDisk images into `ns`'s
/// directory of the bed's hostDisk root. A cluster-scoped object gets no
/// namespace and a name that starts with `ns`'s, so tests do not collide.
fn placed(object: &Value, ns: &str, name: &str) -> Value {
    let meta = if namespaced(object) {
        json!({"metadata": {"namespace": ns, "name": name}})
    } else {
        json!({"metadata": {"namespace": null, "name": format!("{ns}-{name}")}})
    };
    let mut object = merged(object, &meta);
    hostdisk::confine(&mut object, ns);
    object
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()))
}

/// Server-side fields that say nothing about what the user sent.
fn without_server_fields(mut object: Value) -> Value {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for f in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
        ] {
            meta.remove(f);
        }
    }
    if let Some(map) = object.as_object_mut() {
        map.remove("status");
    }
    object
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_manifests_are_rejected_through_kube_apiserver() {
    let bed = &bed().await;
    bed.with_namespace("adm", |ns| async move {
        let admin = bed.admin();
        let file = InvalidFile::load();
        assert!(file.cases.len() >= 50, "only {} cases", file.cases.len());
        let mut clients = std::collections::BTreeMap::new();
        let mut failures = Vec::new();
        let mut updates = 0;
        let mut cluster_objects = Vec::new();
        for (i, case) in file.cases.iter().enumerate() {
            let request = case.request(&file.bases);
            let user = request.user.clone().unwrap_or_else(|| ALICE.to_owned());
            if !clients.contains_key(&user) {
                bind(&admin, &ns, &user, "kubevirt.io:admin").await;
                let client = bed.client_as(&user, &[]).await?;
                clients.insert(user.clone(), client);
            }
            // Users are bound in the namespace: cluster-scoped kinds are
            // sent by the admin.
            let client = if namespaced(&request.object) {
                &clients[&user]
            } else {
                &admin
            };
            let name = format!("case-{i}");
            let (code, body) = match &request.old {
                None => {
                    let object = placed(&request.object, &ns, &name);
                    let path = format!("{}?dryRun=All", collection(&ns, &object));
                    raw(client, "POST", &path, &object.to_string()).await
                }
                Some(old) => {
                    updates += 1;
                    // The old object is stored for real (and defaulted by the
                    // mutating webhook); the update applies the case's change
                    // to what is stored.
                    let old = placed(old, &ns, &name);
                    let (code, stored) =
                        raw(&admin, "POST", &collection(&ns, &old), &old.to_string()).await;
                    assert_eq!(
                        code, 201,
                        "{}: creating the old object: {stored}",
                        case.name
                    );
                    let mut new = json_of(&stored);
                    let change = json_patch::diff(&old, &placed(&request.object, &ns, &name));
                    json_patch::patch(&mut new, &change)
                        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
                    let item = format!(
                        "{}/{}",
                        collection(&ns, &old),
                        new["metadata"]["name"].as_str().unwrap_or_default()
                    );
                    if !namespaced(&old) {
                        cluster_objects.push(item.clone());
                    }
                    raw(
                        client,
                        "PUT",
                        &format!("{item}?dryRun=All"),
                        &new.to_string(),
                    )
                    .await
                }
            };
            let status = json_of(&body);
            let problems = if code == 422 {
                case.check_status(&status, true)
            } else {
                vec![format!("HTTP {code}, not 422: {body}")]
            };
            failures.extend(problems.into_iter().map(|p| format!("{}: {p}", case.name)));
        }
        bed.strip_finalizers(&ns).await;
        for item in &cluster_objects {
            let (code, body) = raw(&admin, "DELETE", item, "").await;
            assert_eq!(code, 200, "deleting {item}: {body}");
        }
        assert!(updates >= 4, "only {updates} update cases");
        assert!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            file.cases.len(),
            failures.join("\n")
        );
        Ok::<_, anyhow::Error>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_manifests_are_admitted_unchanged_apart_from_defaults() {
    let bed = &bed().await;
    bed.with_namespace("adm", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, ALICE, "kubevirt.io:admin").await;
        let alice = bed.client_as(ALICE, &[]).await?;
        let cases = ValidCase::load_all();
        assert!(cases.len() >= 10);
        for (i, case) in cases.iter().enumerate() {
            let name = format!("valid-{i}");
            let object = placed(&case.object(), &ns, &name);
            let path = format!("{}?dryRun=All", collection(&ns, &object));
            let client = if namespaced(&object) { &alice } else { &admin };
            let (code, body) = raw(client, "POST", &path, &object.to_string()).await;
            assert_eq!(code, 201, "{}: {body}", case.name);
            let stored = without_server_fields(json_of(&body));
            if object["kind"] != "VirtualMachineInstance" {
                // Only VMIs are mutated.
                assert_eq!(
                    stored,
                    without_server_fields(object.clone()),
                    "{}: changed on admission",
                    case.name
                );
            }
            let Some(defaults) = &case.defaults else {
                continue;
            };
            // The VMI the object stands for (itself, or its template's):
            // what is stored is exactly it plus the defaults.
            let vmi = placed(&vmi_of(&object), &ns, &name);
            let path = format!("{}?dryRun=All", collection(&ns, &vmi));
            let (code, body) = raw(&alice, "POST", &path, &vmi.to_string()).await;
            assert_eq!(code, 201, "{}: VMI: {body}", case.name);
            let stored = without_server_fields(json_of(&body));
            // The firmware UUID is derived from the VMI's name (and
            // namespace); the file's default is for its own name.
            let mut expected = merged(&vmi, defaults);
            if let Some(uuid) = stored.pointer("/spec/domain/firmware/uuid") {
                assert!(
                    expected.pointer("/spec/domain/firmware/uuid").is_some(),
                    "{}: a firmware uuid was not expected",
                    case.name
                );
                expected["spec"]["domain"]["firmware"]["uuid"] = uuid.clone();
            }
            assert_eq!(
                stored,
                without_server_fields(expected.clone()),
                "{}: the stored VMI is not the VMI plus its defaults\nstored:   {}\nexpected: {}",
                case.name,
                serde_json::to_string_pretty(&stored).unwrap_or_default(),
                serde_json::to_string_pretty(&expected).unwrap_or_default()
            );
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_vmi_spec_is_immutable_for_users_but_not_for_metadata() {
    let bed = &bed().await;
    bed.with_namespace("adm", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, ALICE, "kubevirt.io:admin").await;
        let alice = bed.client_as(ALICE, &[]).await?;
        let file = InvalidFile::load();
        let vmi = placed(&file.bases["vmi"], &ns, "immutable");
        let (code, stored) = raw(&alice, "POST", &collection(&ns, &vmi), &vmi.to_string()).await;
        assert_eq!(code, 201, "{stored}");
        let stored = json_of(&stored);
        // Defaulted on the way in: finalizer, machine type, firmware uuid.
        assert_eq!(
            stored["metadata"]["finalizers"],
            json!(["kubevirt.io/foregroundDeleteVirtualMachine"])
        );
        assert!(
            stored.pointer("/spec/domain/machine/type").is_some(),
            "{stored}"
        );
        assert!(
            stored.pointer("/spec/domain/firmware/uuid").is_some(),
            "{stored}"
        );
        let path = format!("{}/immutable", collection(&ns, &vmi));
        let relabelled = merged(&stored, &json!({"metadata": {"labels": {"extra": "yes"}}}));
        let (code, body) = raw(&alice, "PUT", &path, &relabelled.to_string()).await;
        assert_eq!(code, 200, "labels may change: {body}");
        let resized = merged(
            &json_of(&body),
            &json!({"spec": {"domain": {"cpu": {"cores": 3}}}}),
        );
        let (code, body) = raw(&alice, "PUT", &path, &resized.to_string()).await;
        assert_eq!(code, 422, "{body}");
        assert!(body.contains("spec.domain.cpu.cores"), "{body}");
        assert!(body.contains("is immutable"), "{body}");
        bed.strip_finalizers(&ns).await;
        Ok::<_, anyhow::Error>(())
    })
    .await;
}

/// A VMI whose only disk is `volume` (named root).
fn one_volume_vmi(name: &str, volume: Value) -> Value {
    let mut volume = volume;
    volume["name"] = json!("root");
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "domain": {"memory": {"guest": "128Mi"},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio", "readonly": true}}]}},
            "volumes": [volume],
        },
    })
}

/// Issue 14: a user with only `kubevirt.io:edit` cannot reach another
/// tenant's image, a host file or a device through hostDisk, nor ask for an
/// enormous disk. (hostDisk while off is refused by the webhooks' router
/// tests in apiserver-subresources/tests/admission.rs: the bed runs with
/// hostDisk on.)
#[tokio::test(flavor = "multi_thread")]
async fn hostdisk_escapes_links_devices_and_huge_disks_are_refused_for_an_editor() {
    let bed = &bed().await;
    bed.with_namespace("hd", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "eve", "kubevirt.io:edit").await;
        let eve = bed.client_as("eve", &[]).await?;
        // eve's directory, and another tenant's with an image in it.
        let dir = hostdisk::namespace_dir(&ns);
        let other_ns = format!("{ns}-other");
        let other = hostdisk::namespace_dir(&other_ns);
        std::fs::create_dir_all(&dir)?;
        std::fs::create_dir_all(&other)?;
        std::fs::write(other.join("secret.img"), b"another tenant's disk")?;
        std::os::unix::fs::symlink(other.join("secret.img"), dir.join("theirs.img"))?;
        let device = dir.join("zero");
        let mknod = std::process::Command::new("mknod")
            .arg(&device)
            .args(["c", "1", "5"])
            .status()?;
        anyhow::ensure!(mknod.success(), "mknod {} failed", device.display());
        let image = hostdisk::guest_image(&ns);
        let host_disk = |path: String| json!({"hostDisk": {"path": path, "type": "Disk"}});
        let path_field = "spec.volumes[0].hostDisk.path";

        let cases = [
            (
                "etc-shadow",
                host_disk("/etc/shadow".into()),
                path_field,
                "is not inside",
            ),
            (
                "dotdot-escape",
                host_disk(format!("{}/../{other_ns}/secret.img", dir.display())),
                path_field,
                "'..'",
            ),
            (
                "symlink-to-other-namespace",
                host_disk(dir.join("theirs.img").display().to_string()),
                path_field,
                "is a symbolic link",
            ),
            (
                "device-node",
                host_disk(device.display().to_string()),
                path_field,
                "is a character device",
            ),
            (
                "dev-null",
                host_disk("/dev/null".into()),
                path_field,
                "is not inside",
            ),
            (
                "other-namespace",
                host_disk(other.join("secret.img").display().to_string()),
                path_field,
                "is not inside",
            ),
            (
                "empty-disk-1ei",
                json!({"emptyDisk": {"capacity": "1Ei"}}),
                "spec.volumes[0].emptyDisk.capacity",
                "more than the maximum of 1Ti per volume",
            ),
        ];
        let path =
            format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances?dryRun=All");
        let mut failures = Vec::new();
        for (name, volume, field, want) in cases {
            let vmi = one_volume_vmi(name, volume);
            let (code, body) = raw(&eve, "POST", &path, &vmi.to_string()).await;
            let status = json_of(&body);
            let found = status["details"]["causes"]
                .as_array()
                .is_some_and(|causes| {
                    causes.iter().any(|c| {
                        c["field"] == json!(field)
                            && c["message"].as_str().is_some_and(|m| m.contains(want))
                    })
                });
            if code != 422 || !found {
                failures.push(format!(
                    "{name}: HTTP {code}, want 422 with {field} ~ {want:?}: {body}"
                ));
            }
        }
        // The same user may use an image in the namespace's own directory.
        let ok = one_volume_vmi("own-image", host_disk(image));
        let (code, body) = raw(&eve, "POST", &path, &ok.to_string()).await;
        if code != 201 {
            failures.push(format!("own image: HTTP {code}, want 201: {body}"));
        }
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&other);
        anyhow::ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok::<_, anyhow::Error>(())
    })
    .await;
}

/// Issue 16: the instancetype and preference kinds have validating webhooks
/// of their own. `kubectl apply` of a bad instancetype or preference is
/// refused with the field path and KubeVirt's message (kubectl prints a 422's
/// causes as `The <Kind> "<name>" is invalid: <field>: <message>`, without
/// naming the webhook; these causes are the webhook's, not the schema's);
/// good ones are accepted, with KubeVirt's warning for a deprecated topology
/// spelling.
#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_of_instancetypes_and_preferences_goes_through_their_webhooks() {
    use ironvirt_tests::kubectl::{kubectl, kubectl_with};
    let bed = &bed().await;
    bed.with_namespace("itwh", |ns| async move {
        let apply = |yaml: &str| kubectl_with(bed, None, &["apply", "-n", &ns, "-f", "-"], Some(yaml));
        let instancetype = |memory: &str| {
            format!(
                "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineInstancetype\n\
                 metadata: {{name: it}}\nspec:\n  cpu: {{guest: 2}}\n  memory: {memory}\n"
            )
        };
        let refused = [
            (
                instancetype("{guest: 1Gi, overcommitPercent: 20, hugepages: {pageSize: 2Mi}}"),
                "VirtualMachineInstancetype \"it\"".to_owned(),
                "spec.memory.overcommitPercent: spec.memory.overcommitPercent and spec.memory.hugepages should not be requested together.",
            ),
            (
                instancetype("{guest: \"0\"}"),
                "VirtualMachineInstancetype \"it\"".to_owned(),
                "spec.memory.guest: '0' is too small: the guest needs at least 1Mi",
            ),
            (
                format!(
                    "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterPreference\n\
                     metadata: {{name: {ns}-spread}}\nspec:\n  cpu:\n    preferredCPUTopology: spread\n\
                     \x20   spreadOptions: {{across: CoresThreads, ratio: 4}}\n"
                ),
                format!("VirtualMachineClusterPreference \"{ns}-spread\""),
                "spec.cpu.spreadOptions.ratio: only a ratio of 2 (1 core 2 threads) is allowed when spreading vCPUs over cores and threads",
            ),
        ];
        for (yaml, object, cause) in &refused {
            let out = apply(yaml);
            anyhow::ensure!(!out.success, "accepted:\n{yaml}");
            anyhow::ensure!(
                out.stderr.contains(&format!("The {object} is invalid: {cause}")),
                "{yaml}\n{}",
                out.stderr
            );
        }
        // The schema still answers first for what it can express.
        let out = apply(&instancetype("{overcommitPercent: 10}"));
        anyhow::ensure!(
            !out.success && out.stderr.contains("spec.memory.guest: Required value"),
            "{}",
            out.stderr
        );

        // Good ones are stored; a deprecated spelling comes with KubeVirt's warning.
        let out = apply(&instancetype("{guest: 1Gi, overcommitPercent: 20}"));
        anyhow::ensure!(out.success, "{}", out.stderr);
        anyhow::ensure!(out.stdout.contains("virtualmachineinstancetype.instancetype.kubevirt.io/it created"), "{}", out.stdout);
        let out = apply(
            "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachinePreference\n\
             metadata: {name: pref}\nspec:\n  cpu: {preferredCPUTopology: preferCores}\n",
        );
        anyhow::ensure!(out.success, "{}", out.stderr);
        anyhow::ensure!(
            out.stderr.contains("Warning: PreferredCPUTopology preferCores is deprecated for removal in a future release, please use cores instead"),
            "{}",
            out.stderr
        );
        // An update that breaks the instancetype is refused too.
        let out = kubectl(
            bed,
            &["patch", "-n", &ns, "vminstancetype", "it", "--type=merge", "-p",
              r#"{"spec":{"memory":{"hugepages":{"pageSize":"2Mi"}}}}"#],
        );
        anyhow::ensure!(
            !out.success && out.stderr.contains("should not be requested together"),
            "{}",
            out.stderr
        );
        Ok::<_, anyhow::Error>(())
    })
    .await;
}

/// Regression test for the chaos run's running VMIs deleted 2 s after an etcd
/// outage by no ironvirt component (docs/reliability.md, "VMIs deleted right
/// after an etcd outage"; the suspect is kube-controller-manager's garbage
/// collector, whose lookup of an owner can answer "not found" wrongly then).
/// Playing the garbage collector (its user and groups, its RBAC), the
/// deletion of a VMI whose VM is there is refused; the real garbage
/// collector still deletes a VMI whose VM is being deleted (foreground) or
/// is gone, through the same guard.
#[tokio::test(flavor = "multi_thread")]
async fn the_garbage_collector_cannot_delete_a_vmi_whose_vm_exists() {
    const GC: &str = "system:serviceaccount:kube-system:generic-garbage-collector";
    let bed = &bed().await;
    bed.with_namespace("gc", |ns| async move {
        let admin = bed.admin();
        let vms = format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines");
        let vmis = format!("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances");
        // A halted VM (no VMI of its own) owning a VMI of another name that
        // no node can take, so that no guest starts.
        let vm = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "owner"},
            "spec": {"runStrategy": "Halted",
                "template": {"spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {}}}}}});
        let (code, body) = raw(&admin, "POST", &vms, &vm.to_string()).await;
        assert_eq!(code, 201, "{body}");
        let owner_uid = json_of(&body)["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
        let dependent = |name: &str, owner: &str, uid: &str| {
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                "metadata": {"name": name, "ownerReferences": [{"apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachine", "name": owner, "uid": uid, "blockOwnerDeletion": true}]},
                "spec": {"nodeSelector": {"ironvirt.test/no-such-node": "true"},
                    "domain": {"memory": {"guest": "64Mi"}, "devices": {}}}})
        };
        let (code, body) = raw(&admin, "POST", &vmis, &dependent("dependent", "owner", &owner_uid).to_string()).await;
        assert_eq!(code, 201, "{body}");

        let gc = bed
            .client_as(GC, &["system:serviceaccounts", "system:serviceaccounts:kube-system"])
            .await?;
        let (code, body) = raw(&gc, "DELETE", &format!("{vmis}/dependent"), "").await;
        assert_eq!(code, 409, "the garbage collector deleted a VMI whose VM exists: {body}");
        assert!(body.contains("exists and is not being deleted"), "{body}");
        let (code, body) = raw(&admin, "GET", &format!("{vmis}/dependent"), "").await;
        assert_eq!(code, 200, "{body}");
        assert!(json_of(&body)["metadata"]["deletionTimestamp"].is_null(), "{body}");
        // Anyone else's deletion is not looked at (the webhook's matchCondition).
        let (code, body) = raw(&admin, "POST", &vmis, &dependent("by-admin", "owner", &owner_uid).to_string()).await;
        assert_eq!(code, 201, "{body}");
        let (code, body) = raw(&admin, "DELETE", &format!("{vmis}/by-admin"), "").await;
        assert_eq!(code, 200, "{body}");

        // The real garbage collector: a VMI whose VM never existed is deleted
        // (the guard looks twice and finds nothing) ...
        let (code, body) = raw(&admin, "POST", &vmis,
            &dependent("orphan", "gone", "3f1c7b0e-0000-4000-8000-000000000000").to_string()).await;
        assert_eq!(code, 201, "{body}");
        // ... and so is one whose VM is deleted in the foreground.
        let (code, body) = raw(&admin, "DELETE", &format!("{vms}/owner"),
            &json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}).to_string()).await;
        assert!(code == 200 || code == 202, "{code}: {body}");
        for name in ["orphan", "dependent"] {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(90);
            loop {
                let (code, body) = raw(&admin, "GET", &format!("{vmis}/{name}"), "").await;
                if code == 404 || !json_of(&body)["metadata"]["deletionTimestamp"].is_null() {
                    break;
                }
                assert!(std::time::Instant::now() < until,
                    "the garbage collector did not delete VMI {name} in 90 s: {code} {body}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        bed.strip_finalizers(&ns).await;
        Ok::<_, anyhow::Error>(())
    })
    .await;
}
