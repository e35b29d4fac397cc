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
