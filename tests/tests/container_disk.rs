//! containerDisk on real QEMU guests: the test guest's disk pushed to a real
//! registry ([`ironvirt_tests::registry`]) as KubeVirt's documentation names
//! it (`quay.io/kubevirt/cirros-container-disk-demo`), served by the node's
//! mirror configuration; two VMIs of the image boot from one pull, each on
//! its own overlay.

use std::time::Duration;

use ironvirt_tests::handler::{Handler, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::registry::Registry;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const QEMU: &str = "qemu:///system";
const IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";
const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(120);
const DEMO: &str = "quay.io/kubevirt/cirros-container-disk-demo:devel";

fn from_image(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "domain": {
                "memory": {"guest": "128Mi"},
                "devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
            },
            "volumes": [{"name": "containerdisk", "containerDisk": {"image": DEMO}}],
        },
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn two_vmis_of_one_image_boot_from_one_pull() {
    let bed = &bed().await;
    let reg = Registry::start().expect("the registry");
    let disk =
        std::fs::read(IMAGE).expect("the test guest's disk (make deps / hack/build-guest.sh)");
    reg.push(
        "kubevirt/cirros-container-disk-demo:devel",
        &[("disk/disk.qcow2", disk)],
    )
    .await
    .expect("push the guest as a containerDisk");
    let host = reg.host.clone();
    bed.with_namespace("cdisk", |ns| async move {
        let client = bed.admin();
        let node = format!("{ns}-n");
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("registries.yaml");
        std::fs::write(
            &config,
            format!("registries:\n  quay.io:\n    mirrors: [\"{host}\"]\n  \"{host}\":\n    insecure: true\n"),
        )
        .map_err(|e| e.to_string())?;
        let config = config.display().to_string();
        let h = Handler::start_with(
            bed,
            &ns,
            &node,
            QEMU,
            "debug",
            &["--registries-config", &config],
        );
        wait_serving(&h, Duration::from_secs(60)).await;
        for name in ["cd-a", "cd-b"] {
            place(&client, &ns, from_image(name), &node).await;
        }
        for name in ["cd-a", "cd-b"] {
            wait_phase(&client, &ns, name, "Running", BOOT).await?;
            let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");
            let mut con = h.streams().websocket(&path).await?;
            con.expect_from(0, MARKER, BOOT).await?;
        }
        // One download for both: the manifest may be asked for twice (one
        // VMI waits for the other's pull), the layer once.
        assert_eq!(reg.requests("/blobs/"), 1, "the image's layer was downloaded more than once");
        // Each VMI writes to its own overlay on the one cached disk.
        let vmis_dir = h.state_dir.join("vmis");
        let overlays: Vec<_> = std::fs::read_dir(&vmis_dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|d| d.path().join("containerdisk.overlay.qcow2"))
            .filter(|p| p.is_file())
            .collect();
        assert_eq!(overlays.len(), 2, "{overlays:?}");
        let cached: Vec<_> = std::fs::read_dir(h.state_dir.join("image-cache/images"))
            .map_err(|e| e.to_string())?
            .collect();
        assert_eq!(cached.len(), 1, "one cached disk");

        let api: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        for name in ["cd-a", "cd-b"] {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
        for name in ["cd-a", "cd-b"] {
            wait_gone(&client, &ns, name, Duration::from_secs(60)).await?;
        }
        for o in &overlays {
            assert!(!o.exists(), "{} outlived its VMI", o.display());
        }
        h.remove(&client).await;
        Ok::<(), String>(())
    })
    .await;
}
