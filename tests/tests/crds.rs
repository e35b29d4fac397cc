//! The CRDs on the test bed's real kube-apiserver: they install as structural
//! schemas, the examples validate strictly, and users see the API as KubeVirt
//! users expect.

use ironvirt_tests::TestBed;
use ironvirt_tests::kubectl::{bed_with_crds as bed, kubectl, kubectl_with, repo_root};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

#[tokio::test]
async fn crds_are_established_and_structural() {
    let bed = bed().await;
    let api: Api<CustomResourceDefinition> = Api::all(bed.admin());
    for crd in ironvirt_crds::crds() {
        let name = crd.metadata.name.unwrap();
        let live = api.get(&name).await.unwrap();
        let conds = live.status.unwrap().conditions.unwrap_or_default();
        let has = |t: &str, s: &str| conds.iter().any(|c| c.type_ == t && c.status == s);
        assert!(has("Established", "True"), "{name}: {conds:?}");
        assert!(has("NamesAccepted", "True"), "{name}: {conds:?}");
        assert!(
            !conds.iter().any(|c| c.type_ == "NonStructuralSchema"),
            "{name} is not structural: {conds:?}"
        );
    }
}

#[tokio::test]
async fn every_example_passes_strict_server_validation() {
    let bed = &bed().await;
    bed.with_namespace("examples", |ns| async move {
        let dir = repo_root().join("examples");
        let mut files: Vec<_> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        anyhow::ensure!(files.len() >= 6, "expected at least six examples");
        for f in files {
            // Through stdin, the hostDisk paths moved into the namespace's directory.
            let manifest =
                ironvirt_tests::hostdisk::confine_text(&std::fs::read_to_string(&f)?, &ns);
            let f = f.to_string_lossy();
            let out = kubectl_with(
                bed,
                None,
                &[
                    "apply",
                    "--dry-run=server",
                    "--validate=strict",
                    "-n",
                    &ns,
                    "-f",
                    "-",
                ],
                Some(&manifest),
            );
            anyhow::ensure!(out.success, "{f} rejected: {}", out.stderr);
        }
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn explain_columns_and_scale_work_as_for_kubevirt() {
    let bed = &bed().await;
    let out = kubectl(bed, &["explain", "vm.spec.runStrategy"]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stdout.contains("When a VMI runs."), "{}", out.stdout);
    assert!(out.stdout.contains("RerunOnFailure"), "{}", out.stdout);

    bed.with_namespace("columns", |ns| async move {
        let ex = repo_root().join("examples");
        for f in ["vm-busybox.yaml", "vmi-busybox.yaml", "vmirs-busybox.yaml"] {
            let p = ex.join(f);
            let manifest =
                ironvirt_tests::hostdisk::confine_text(&std::fs::read_to_string(&p)?, &ns);
            let out = kubectl_with(bed, None, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
            anyhow::ensure!(out.success, "{f}: {}", out.stderr);
        }
        for (kind, header) in [
            ("vm", vec!["NAME", "AGE", "STATUS", "READY"]),
            (
                "vmi",
                vec!["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"],
            ),
            ("vmirs", vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"]),
        ] {
            let out = kubectl(bed, &["get", kind, "-n", &ns]);
            anyhow::ensure!(out.success, "get {kind}: {}", out.stderr);
            let first: Vec<&str> = out
                .stdout
                .lines()
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            anyhow::ensure!(first == header, "kubectl get {kind} header {first:?}");
        }
        // The `all` and `kubevirt` categories include our kinds.
        let out = kubectl(bed, &["get", "kubevirt", "-n", &ns, "-o", "name"]);
        anyhow::ensure!(
            out.stdout.contains("virtualmachine.kubevirt.io/vm-busybox"),
            "{}",
            out.stdout
        );
        let out = kubectl(bed, &["get", "all", "-n", &ns, "-o", "name"]);
        anyhow::ensure!(
            out.stdout
                .contains("virtualmachineinstance.kubevirt.io/vmi-busybox"),
            "{}",
            out.stdout
        );

        let out = kubectl(
            bed,
            &["scale", "-n", &ns, "vmirs/vmirs-busybox", "--replicas=5"],
        );
        anyhow::ensure!(out.success, "scale: {}", out.stderr);
        let out = kubectl(
            bed,
            &[
                "get",
                "-n",
                &ns,
                "vmirs/vmirs-busybox",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        );
        anyhow::ensure!(
            out.stdout.trim() == "5",
            "spec.replicas after scale: {:?}",
            out.stdout
        );
        Ok(())
    })
    .await;
}

/// kubectl apply of `yaml`, expected to fail; returns stderr.
fn rejected(bed: &TestBed, ns: &str, yaml: &str) -> String {
    let out = kubectl_with(
        bed,
        None,
        &[
            "apply",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            ns,
            "-f",
            "-",
        ],
        Some(yaml),
    );
    assert!(!out.success, "accepted:\n{yaml}\n{}", out.stdout);
    out.stderr
}

fn example(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("examples").join(name)).unwrap()
}

#[tokio::test]
async fn bad_manifests_are_rejected_with_the_field_path() {
    let bed = &bed().await;
    bed.with_namespace("reject", |ns| async move {
        let vm = example("vm-busybox.yaml");
        let vmi = example("vmi-busybox.yaml");

        let err = rejected(bed, &ns, &vm.replace("cores: 1", "corez: 1"));
        anyhow::ensure!(err.contains("spec.template.spec.domain.cpu.corez"), "{err}");

        let err = rejected(bed, &ns, &vm.replace("  runStrategy: Always", "  runStrategy: Always\n  running: true"));
        anyhow::ensure!(err.contains("spec.running and spec.runStrategy are mutually exclusive"), "{err}");

        let err = rejected(bed, &ns, &vm.replace("runStrategy: Always", "runStrategy: Sometimes"));
        anyhow::ensure!(err.contains("spec.runStrategy") && err.contains("Unsupported value"), "{err}");

        // A known KubeVirt volume type ironvirt does not support: a clear message.
        let pvc = vmi.replace(
            "      hostDisk:\n        path: /var/lib/ironvirt/hostdisks/default/busybox.qcow2\n        type: Disk",
            "      persistentVolumeClaim:\n        claimName: data",
        );
        let err = rejected(bed, &ns, &pvc);
        anyhow::ensure!(
            err.contains("spec.volumes[0].persistentVolumeClaim") && err.contains("not supported by ironvirt"),
            "{err}"
        );

        // Two volume sources in one volume.
        let two = vmi.replace(
            "        type: Disk",
            "        type: Disk\n      emptyDisk:\n        capacity: 1Gi",
        );
        let err = rejected(bed, &ns, &two);
        anyhow::ensure!(err.contains("exactly one source"), "{err}");

        let err = rejected(bed, &ns, &example("vmirs-busybox.yaml").replace("replicas: 3", "replicas: -1"));
        anyhow::ensure!(err.contains("spec.replicas"), "{err}");

        let err = rejected(bed, &ns, &vmi.replace("bus: virtio", "bus: floppy"));
        anyhow::ensure!(err.contains("spec.domain.devices.disks[0].disk.bus"), "{err}");
        Ok(())
    })
    .await;
}

/// Acceptance 6: a `kubevirt.io/v1alpha3` VirtualMachine applies with kubectl,
/// which prints the version's deprecation warning; it reads back as v1 (the
/// stored version) and runs, and its guest boots. The validating webhooks
/// (registered for v1 with matchPolicy Equivalent) review v1alpha3 requests
/// too: a v1alpha3 VM that only the webhook can fault is refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_v1alpha3_vm_applies_reads_back_as_v1_and_runs() {
    use std::time::Duration;

    use ironvirt_crds::VirtualMachine;
    use ironvirt_tests::api::{GUEST_MARKER, api_port, open_ws};
    use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
    use ironvirt_tests::operator::Operator;

    const BOOT: Duration = Duration::from_secs(120);
    let bed = &bed().await;
    bed.with_namespace("alpha3", |ns| async move {
        let v1alpha3 = example("vm-busybox.yaml").replace(
            "apiVersion: kubevirt.io/v1\n",
            "apiVersion: kubevirt.io/v1alpha3\n",
        );
        anyhow::ensure!(v1alpha3.contains("kubevirt.io/v1alpha3"), "{v1alpha3}");
        let manifest = ironvirt_tests::hostdisk::confine_text(&v1alpha3, &ns);

        // Only the webhook knows that a disk needs a volume of its name.
        let orphan = manifest.replace("      volumes:\n        - name: rootdisk", "      volumes:\n        - name: otherdisk");
        anyhow::ensure!(orphan != manifest, "the example's volume changed");
        let out = kubectl_with(bed, None, &["apply", "-n", &ns, "-f", "-"], Some(&orphan));
        anyhow::ensure!(!out.success, "a v1alpha3 VM without its volume was accepted");
        anyhow::ensure!(
            out.stderr.contains(
                "The VirtualMachine \"vm-busybox\" is invalid: spec.template.spec.domain.devices.disks[0].name: 'rootdisk' has no volume"
            ),
            "{}",
            out.stderr
        );
        // Through the REST API, the Status names the webhook that refused it.
        let orphan_json: serde_json::Value = serde_yaml::from_str(&orphan)?;
        let (code, body) = ironvirt_tests::api::raw(
            &bed.admin(),
            "POST",
            &format!("/apis/kubevirt.io/v1alpha3/namespaces/{ns}/virtualmachines?dryRun=All"),
            &orphan_json.to_string(),
        )
        .await;
        anyhow::ensure!(
            code == 422
                && body.contains("admission webhook \\\"virtualmachines-validator.ironvirt.io\\\" denied the request"),
            "HTTP {code}: {body}"
        );

        api_port(&bed.admin()).await.map_err(anyhow::Error::msg)?;
        let h = Handler::start(bed, &ns, &format!("{ns}-n"), "qemu:///system");
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;

        let out = kubectl_with(bed, None, &["apply", "-n", &ns, "-f", "-"], Some(&manifest));
        anyhow::ensure!(out.success, "{}", out.stderr);
        anyhow::ensure!(
            out.stderr.contains("Warning: kubevirt.io/v1alpha3 is deprecated; use kubevirt.io/v1"),
            "no deprecation warning on stderr: {:?}",
            out.stderr
        );
        anyhow::ensure!(out.stdout.contains("virtualmachine.kubevirt.io/vm-busybox created"), "{}", out.stdout);

        let out = kubectl(bed, &["get", "vm", "vm-busybox", "-n", &ns, "-o", "jsonpath={.apiVersion}"]);
        anyhow::ensure!(out.success, "{}", out.stderr);
        anyhow::ensure!(out.stdout.trim() == "kubevirt.io/v1", "read back as {:?}", out.stdout);
        // Still served as v1alpha3 to whoever asks for it.
        let out = kubectl(
            bed,
            &["get", "virtualmachines.v1alpha3.kubevirt.io", "vm-busybox", "-n", &ns, "-o", "jsonpath={.apiVersion}"],
        );
        anyhow::ensure!(out.stdout.trim() == "kubevirt.io/v1alpha3", "{:?} {}", out.stdout, out.stderr);

        let admin = bed.admin();
        wait_phase(&admin, &ns, "vm-busybox", "Running", BOOT).await.map_err(anyhow::Error::msg)?;
        let mut con = open_ws(
            &admin,
            &format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/vm-busybox/console"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        con.expect_from(0, GUEST_MARKER, BOOT).await.map_err(anyhow::Error::msg)?;
        con.close().await;
        let out = kubectl(bed, &["get", "vm", "vm-busybox", "-n", &ns, "-o", "jsonpath={.status.printableStatus}"]);
        anyhow::ensure!(out.stdout.trim() == "Running", "printableStatus {:?}", out.stdout);

        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        vms.delete("vm-busybox", &Default::default()).await?;
        wait_gone(&admin, &ns, "vm-busybox", Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        h.remove(&admin).await;
        Ok(())
    })
    .await;
}
