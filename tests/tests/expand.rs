//! The expand subresources on the real test bed: KubeVirt's own `virtctl
//! expand` and `ironctl expand`, with `--vm` (a stored VM, expand-spec) and
//! `--file` (a manifest, expand-vm-spec), as a user with only the
//! `kubevirt.io:view` role in the namespace, print the VM with cluster
//! instancetype u1.small (1 vCPU, 2Gi) and a namespaced preference expanded
//! into its template and no `spec.instancetype`; a user without a role there
//! gets 403 from both, and the stored VM is not changed. No operator runs, so
//! the VM records no revision: the current objects are expanded.

use std::path::Path;
use std::time::Duration;

use ironvirt_crds::VirtualMachine;
use ironvirt_tests::api::{bind, guest_vm};
use ironvirt_tests::cli::ironctl_in;
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::eventually;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

fn virtctl_bin() -> std::path::PathBuf {
    let path = std::env::var_os("IRONVIRT_VIRTCTL")
        .map(std::path::PathBuf::from)
        .expect(
            "IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`",
        );
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Runs virtctl with `args`; (exit code, stdout, stderr).
async fn virtctl(kubeconfig: &Path, ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(virtctl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .expect("run virtctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The VM `name` in namespace `ns` naming u1.small and preference `sata`,
/// Halted; its disk names no bus (the preference's is taken).
fn sized_vm(ns: &str, name: &str) -> Result<Value, String> {
    let mut vm = serde_json::to_value(guest_vm(ns, name, "Halted")).map_err(|e| e.to_string())?;
    let domain = &mut vm["spec"]["template"]["spec"]["domain"];
    domain.as_object_mut().ok_or("domain")?.remove("memory");
    domain["devices"]["disks"][0]["disk"] = json!({"readonly": true});
    vm["spec"]["instancetype"] = json!({"name": "u1.small"});
    vm["spec"]["preference"] = json!({"name": "sata", "kind": "VirtualMachinePreference"});
    Ok(vm)
}

/// The printed VM is `name`, expanded: u1.small's vCPU and memory, the
/// preference's disk bus, and no matchers.
fn check_expanded(printed: &str, name: &str, what: &str) -> Result<(), String> {
    let vm: Value = serde_yaml::from_str(printed).map_err(|e| format!("{what}: {e}: {printed}"))?;
    let ctx = || format!("{what}: {printed}");
    assert_eq!(vm["kind"], "VirtualMachine", "{}", ctx());
    assert_eq!(vm["metadata"]["name"], name, "{}", ctx());
    let domain = &vm["spec"]["template"]["spec"]["domain"];
    assert_eq!(domain["memory"]["guest"], "2Gi", "{}", ctx());
    assert_eq!(domain["cpu"]["sockets"], 1, "{}", ctx());
    assert_eq!(domain["cpu"]["cores"], 1, "{}", ctx());
    assert_eq!(
        domain["devices"]["disks"][0]["disk"]["bus"],
        "sata",
        "{}",
        ctx()
    );
    assert!(vm["spec"].get("instancetype").is_none(), "{}", ctx());
    assert!(vm["spec"].get("preference").is_none(), "{}", ctx());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn virtctl_and_ironctl_print_the_expanded_vm_and_strangers_get_403() {
    let bed = &bed().await;
    bed.with_namespace("expand", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "vivian", "kubevirt.io:view").await;
        let viewer = bed
            .user_kubeconfig("vivian", &[])
            .map_err(|e| e.to_string())?;

        let prefs = Api::<DynamicObject>::namespaced_with(
            admin.clone(),
            &ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk(
                    "instancetype.kubevirt.io",
                    "v1beta1",
                    "VirtualMachinePreference",
                ),
                "virtualmachinepreferences",
            ),
        );
        let pref: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachinePreference",
            "metadata": {"name": "sata"},
            "spec": {"devices": {"preferredDiskBus": "sata"}},
        }))
        .map_err(|e| e.to_string())?;
        prefs
            .create(&PostParams::default(), &pref)
            .await
            .map_err(|e| e.to_string())?;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let stored: VirtualMachine =
            serde_json::from_value(sized_vm(&ns, "sized")?).map_err(|e| e.to_string())?;
        vms.create(&PostParams::default(), &stored)
            .await
            .map_err(|e| e.to_string())?;
        let before = vms.get("sized").await.map_err(|e| e.to_string())?;

        // A manifest that is not in the cluster, for --file.
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let file = dir.path().join("vm.yaml");
        let mut manifest = sized_vm(&ns, "unstored")?;
        manifest["metadata"]
            .as_object_mut()
            .ok_or("metadata")?
            .remove("namespace");
        std::fs::write(
            &file,
            serde_yaml::to_string(&manifest).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let file_arg = file.display().to_string();

        // KubeVirt's virtctl, --vm (RBAC reaches the authorizer's cache after a moment).
        let printed = eventually(Duration::from_secs(30), "virtctl expand --vm", || async {
            let (code, out, err) = virtctl(&viewer, &ns, &["expand", "--vm", "sized"]).await;
            if code != 0 {
                eprintln!("virtctl expand --vm: {err}");
            }
            (code == 0).then_some(out)
        })
        .await
        .map_err(|e| e.to_string())?;
        check_expanded(&printed, "sized", "virtctl expand --vm")?;
        let (code, out, err) = virtctl(&viewer, &ns, &["expand", "--file", &file_arg]).await;
        assert_eq!(code, 0, "virtctl expand --file: {out}{err}");
        check_expanded(&out, "unstored", "virtctl expand --file")?;
        let (code, out, err) =
            virtctl(&viewer, &ns, &["expand", "--vm", "sized", "--output", "json"]).await;
        assert_eq!(code, 0, "virtctl expand -o json: {out}{err}");
        serde_json::from_str::<Value>(&out).map_err(|e| format!("not JSON: {e}: {out}"))?;

        // ironctl, both ways and both formats.
        let limit = Duration::from_secs(60);
        let run = ironctl_in(&viewer, &ns, &["expand", "--vm", "sized"], None, limit).await;
        check_expanded(&run.ok()?.stdout_text(), "sized", "ironctl expand --vm")?;
        let run = ironctl_in(
            &viewer,
            &ns,
            &["expand", "--file", &file_arg, "-o", "json"],
            None,
            limit,
        )
        .await;
        let out = run.ok()?.stdout_text();
        serde_json::from_str::<Value>(&out).map_err(|e| format!("not JSON: {e}: {out}"))?;
        check_expanded(&out, "unstored", "ironctl expand --file -o json")?;

        // A conflict is refused with KubeVirt's message and the field.
        let mut conflicting = sized_vm(&ns, "conflicting")?;
        conflicting["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"sockets": 2});
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            serde_yaml::to_string(&conflicting).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let bad_arg = bad.display().to_string();
        let run = ironctl_in(&viewer, &ns, &["expand", "--file", &bad_arg], None, limit).await;
        run.one_error_line(
            "VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type",
        )?;
        let (code, out, err) = virtctl(&viewer, &ns, &["expand", "--file", &bad_arg]).await;
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("conflicts with selected instance type"), "{err}");

        // The attacker: a user with no role in this namespace.
        let stranger = bed
            .user_kubeconfig("mallory", &[])
            .map_err(|e| e.to_string())?;
        let run = ironctl_in(&stranger, &ns, &["expand", "--vm", "sized"], None, limit).await;
        let line = run.one_error_line("forbidden")?;
        assert!(
            line.contains("cannot get resource \"virtualmachines/expand-spec\""),
            "{line}"
        );
        let run = ironctl_in(&stranger, &ns, &["expand", "--file", &file_arg], None, limit).await;
        let line = run.one_error_line("forbidden")?;
        assert!(
            line.contains("cannot update resource \"expand-vm-spec\""),
            "{line}"
        );
        let (code, _, err) = virtctl(&stranger, &ns, &["expand", "--vm", "sized"]).await;
        assert_ne!(code, 0);
        assert!(err.contains("forbidden"), "{err}");
        // Straight to the API: 403, whatever the body claims.
        let client = bed
            .client_as("mallory", &[])
            .await
            .map_err(|e| e.to_string())?;
        let req = http::Request::get(format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/sized/expand-spec"
        ))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
        match client.request::<Value>(req).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{s:?}"),
            other => panic!("mallory's expand-spec: {other:?}"),
        }

        // Expanding changed nothing: no revision, the same VM.
        let after = vms.get("sized").await.map_err(|e| e.to_string())?;
        assert_eq!(
            after.metadata.resource_version,
            before.metadata.resource_version
        );
        assert_eq!(after.spec, before.spec);
        let _ = vms.delete("sized", &Default::default()).await;
        Ok::<(), String>(())
    })
    .await;
}
