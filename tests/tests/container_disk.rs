//! containerDisk on real QEMU guests: the test guest's disk pushed to a real
//! registry ([`ironvirt_tests::registry`]) as KubeVirt's documentation names
//! it (`quay.io/kubevirt/cirros-container-disk-demo`), served by the node's
//! mirror configuration; two VMIs of the image boot from one pull, each on
//! its own overlay.

use std::time::Duration;

use ironvirt_tests::handler::{Handler, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::eventually;
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

/// A QEMU handler for `node` whose registry configuration is `yaml` (kept in
/// the returned directory), serving.
async fn handler_with_registries(
    bed: &ironvirt_testbed::harness::TestBed,
    ns: &str,
    node: &str,
    yaml: &str,
) -> Result<(Handler, tempfile::TempDir), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("registries.yaml");
    std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let config = config.display().to_string();
    let h = Handler::start_with(
        bed,
        ns,
        node,
        QEMU,
        "debug",
        &["--registries-config", &config],
    );
    wait_serving(&h, Duration::from_secs(60)).await;
    Ok((h, dir))
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
        let (h, _config) = handler_with_registries(
            bed,
            &ns,
            &node,
            &format!("registries:\n  quay.io:\n    mirrors: [\"{host}\"]\n  \"{host}\":\n    insecure: true\n"),
        )
        .await?;
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

/// A VMI of `image` with `imagePullSecret` `secret`, if any.
fn private_vmi(name: &str, image: &str, secret: Option<&str>) -> serde_json::Value {
    let mut v = from_image(name);
    v["spec"]["volumes"][0]["containerDisk"] = json!({"image": image});
    if let Some(s) = secret {
        v["spec"]["volumes"][0]["containerDisk"]["imagePullSecret"] = json!(s);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_image_runs_with_its_pull_secret_only() {
    use k8s_openapi::api::core::v1::Secret;
    let bed = &bed().await;
    let reg = Registry::start_private("puller", "s3cret").expect("the private registry");
    let disk =
        std::fs::read(IMAGE).expect("the test guest's disk (make deps / hack/build-guest.sh)");
    reg.push("private/guest:v1", &[("disk/disk.qcow2", disk)])
        .await
        .expect("push the guest to the private registry");
    let host = reg.host.clone();
    let ca = reg.ca.clone().expect("the registry's CA");
    bed.with_namespace("cdpriv", |ns| async move {
        let client = bed.admin();
        let node = format!("{ns}-n");
        let (h, _config) = handler_with_registries(
            bed,
            &ns,
            &node,
            &format!("registries:\n  \"{host}\":\n    ca: {}\n", ca.display()),
        )
        .await?;
        let docker_config =
            format!(r#"{{"auths":{{"{host}":{{"username":"puller","password":"s3cret"}}}}}}"#);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": docker_config},
        }))
        .map_err(|e| e.to_string())?;
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&Default::default(), &secret)
            .await
            .map_err(|e| e.to_string())?;
        // The same credentials in another namespace, under the name the
        // "elsewhere" VMI gives: a VMI reaches only its own namespace's.
        let mut foreign = secret.clone();
        foreign.metadata.name = Some(format!("{ns}-foreign"));
        let default_secrets = Api::<Secret>::namespaced(client.clone(), "default");
        default_secrets
            .create(&Default::default(), &foreign)
            .await
            .map_err(|e| e.to_string())?;
        let foreign_name = format!("{ns}-foreign");
        let image = format!("{host}/private/guest:v1");
        place(&client, &ns, private_vmi("anon", &image, None), &node).await;
        place(
            &client,
            &ns,
            private_vmi("elsewhere", &image, Some("not-here")),
            &node,
        )
        .await;
        place(
            &client,
            &ns,
            private_vmi("allowed", &image, Some("pull")),
            &node,
        )
        .await;

        // With its secret: Running, the guest up.
        wait_phase(&client, &ns, "allowed", "Running", BOOT).await?;
        let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/allowed/console");
        let mut con = h.streams().websocket(&path).await?;
        con.expect_from(0, MARKER, BOOT).await?;
        // Without: the registry's refusal; with a Secret that is not in the
        // VMI's namespace: that it does not exist. Both wait in backoff.
        let vmis: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        for (name, says) in [("anon", "not authorized"), ("elsewhere", "does not exist")] {
            let msg = eventually(Duration::from_secs(60), name, || async {
                let v = vmis.get(name).await.ok()?;
                let c = v
                    .status?
                    .conditions?
                    .into_iter()
                    .find(|c| c.type_ == "Ready")?;
                let pulling = matches!(
                    c.reason.as_deref(),
                    Some("ErrImagePull" | "ImagePullBackOff")
                );
                pulling.then(|| c.message.unwrap_or_default())
            })
            .await
            .map_err(|e| e.to_string())?;
            assert!(msg.to_lowercase().contains(says), "{name}: {msg}");
        }
        for name in ["anon", "elsewhere", "allowed"] {
            let _ = vmis.delete(name, &DeleteParams::default()).await;
        }
        for name in ["anon", "elsewhere", "allowed"] {
            wait_gone(&client, &ns, name, Duration::from_secs(60)).await?;
        }
        let _ = default_secrets
            .delete(&foreign_name, &DeleteParams::default())
            .await;
        h.remove(&client).await;
        Ok::<(), String>(())
    })
    .await;
}
