//! containerDisk on real QEMU guests: the test guest's disk pushed to a real
//! registry ([`ironvirt_tests::registry`]) as KubeVirt's documentation names
//! it (`quay.io/kubevirt/cirros-container-disk-demo`), served by the node's
//! mirror configuration; two VMIs of the image boot from one pull, each on
//! its own overlay.

use std::time::Duration;

use ironvirt_crds::{VirtualMachineInstance, VirtualMachineInstanceReplicaSet};
use ironvirt_tests::handler::{
    Handler, TlsTcp, WsSession, place, wait_gone, wait_phase, wait_serving,
};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use ironvirt_tests::registry::Registry;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
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

async fn handler_with_registries(
    bed: &ironvirt_testbed::harness::TestBed,
    ns: &str,
    node: &str,
    yaml: &str,
) -> Result<(Handler, tempfile::TempDir), String> {
    Handler::start_with_registries(bed, ns, node, yaml).await
}

/// A handler whose node mirrors quay.io to the plain-HTTP registry `host`.
async fn handler_mirroring_quay(
    bed: &ironvirt_testbed::harness::TestBed,
    ns: &str,
    node: &str,
    host: &str,
) -> Result<(Handler, tempfile::TempDir), String> {
    let yaml = format!(
        "registries:\n  quay.io:\n    mirrors: [\"{host}\"]\n  \"{host}\":\n    insecure: true\n"
    );
    handler_with_registries(bed, ns, node, &yaml).await
}

/// Runs `command` on the guest's shell and waits for `done`, which the
/// command prints computed (`$((…))`), so the echoed command line never
/// matches it.
async fn shell(con: &mut WsSession<TlsTcp>, command: &str, done: &str) -> Result<(), String> {
    let from = con.received();
    con.send(format!("{command}\n").as_bytes()).await?;
    con.expect_from(from, done, Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replicaset_of_three_boots_from_one_pull_with_private_writes_and_survives_a_restart() {
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
        let (mut h, _config) = handler_mirroring_quay(bed, &ns, &node, &host)
        .await?;
        let _op = Operator::start(bed, &ns, "cdisk", &[]);
        let template = from_image("unused");
        let rs: VirtualMachineInstanceReplicaSet = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
            "metadata": {"name": "cirros"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "cirros"}},
                "template": {"metadata": {"labels": {"app": "cirros"}}, "spec": template["spec"]},
            },
        }))
        .map_err(|e| e.to_string())?;
        let rss: Api<VirtualMachineInstanceReplicaSet> = Api::namespaced(client.clone(), &ns);
        rss.create(&PostParams::default(), &rs).await.map_err(|e| e.to_string())?;
        let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let names = eventually(BOOT, "three replicas", || {
            let api = api.clone();
            async move {
                let list = api.list(&ListParams::default()).await.ok()?;
                let names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
                (names.len() == 3).then_some(names)
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let mut consoles = Vec::new();
        for name in &names {
            wait_phase(&client, &ns, name, "Running", BOOT).await?;
            let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");
            let mut con = h.streams().websocket(&path).await?;
            con.expect_from(0, MARKER, BOOT).await?;
            consoles.push(con);
        }
        // One download for all three: the manifest may be asked for more
        // than once (VMIs wait for the first one's pull), the layer once.
        assert_eq!(reg.requests("/blobs/"), 1, "the image's layer was downloaded more than once");
        // Each VMI writes to its own overlay on the one cached disk.
        let vmis_dir = h.state_dir.join("vmis");
        let overlays: Vec<_> = std::fs::read_dir(&vmis_dir)
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|d| d.path().join("containerdisk.overlay.qcow2"))
            .filter(|p| p.is_file())
            .collect();
        assert_eq!(overlays.len(), 3, "{overlays:?}");
        let cached: Vec<_> = std::fs::read_dir(h.state_dir.join("image-cache/images"))
            .map_err(|e| e.to_string())?
            .collect();
        assert_eq!(cached.len(), 1, "one cached disk");
        // A file the first guest writes to its disk (a FAT file system) is
        // its own: the second guest's disk does not have it.
        let (first, rest) = consoles.split_at_mut(1);
        let (a, b) = (&mut first[0], &mut rest[0]);
        shell(
            a,
            "mount -t vfat -o iocharset=iso8859-1 /dev/vda /mnt && echo mine > /mnt/owned.txt && sync && umount /mnt && echo WROTE-$((20+1))",
            "WROTE-21",
        )
        .await?;
        shell(
            a,
            "mount -t vfat -o iocharset=iso8859-1 /dev/vda /mnt && [ \"$(cat /mnt/owned.txt)\" = mine ] && umount /mnt && echo KEPT-$((20+2))",
            "KEPT-22",
        )
        .await?;
        shell(
            b,
            "mount -t vfat -o iocharset=iso8859-1 /dev/vda /mnt && { [ -e /mnt/owned.txt ] && echo SEEN-$((30+1)) || echo UNSEEN-$((30+1)); umount /mnt; }",
            "UNSEEN-31",
        )
        .await?;
        drop(consoles);

        // A handler restart finds the cache: a new VMI of the image starts
        // without asking the registry (the tag's policy is IfNotPresent).
        let manifests = reg.requests("/manifests/");
        h.restart();
        wait_serving(&h, Duration::from_secs(60)).await;
        place(&client, &ns, from_image("after-restart"), &node).await;
        wait_phase(&client, &ns, "after-restart", "Running", BOOT).await?;
        assert_eq!(reg.requests("/manifests/"), manifests, "the restarted handler asked the registry");
        assert_eq!(reg.requests("/blobs/"), 1, "the restarted handler downloaded the image again");
        let _ = api.delete("after-restart", &DeleteParams::default()).await;

        rss.delete("cirros", &DeleteParams::default()).await.map_err(|e| e.to_string())?;
        for name in &names {
            let _ = api.delete(name, &DeleteParams::default()).await;
        }
        for name in names.iter().map(String::as_str).chain(["after-restart"]) {
            wait_gone(&client, &ns, name, Duration::from_secs(90)).await?;
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

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_boot_vmi_boots_the_kernel_and_initrd_of_an_image() {
    let bed = &bed().await;
    let guest = bed.guest().expect("the test guest");
    let reg = Registry::start().expect("the registry");
    let read = |p: &std::path::Path| std::fs::read(p).expect("the test guest's kernel and initrd");
    // KubeVirt's kernel-boot demo image keeps them here.
    reg.push(
        "kubevirt/alpine-ext-kernel-boot-demo:latest",
        &[
            ("boot/vmlinuz-virt", read(&guest.kernel)),
            ("boot/initramfs-virt", read(&guest.initramfs)),
        ],
    )
    .await
    .expect("push the kernel-boot image");
    let host = reg.host.clone();
    bed.with_namespace("kboot", |ns| async move {
        let client = bed.admin();
        let node = format!("{ns}-n");
        let (h, _config) = handler_mirroring_quay(bed, &ns, &node, &host).await?;
        // KubeVirt's vmi-kernel-boot example, with the test guest's
        // command line and less memory.
        let vmi = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "kboot"},
            "spec": {
                "terminationGracePeriodSeconds": 5,
                "domain": {
                    "devices": {},
                    "firmware": {"kernelBoot": {
                        "container": {
                            "image": "quay.io/kubevirt/alpine-ext-kernel-boot-demo",
                            "kernelPath": "/boot/vmlinuz-virt",
                            "initrdPath": "/boot/initramfs-virt",
                            "imagePullPolicy": "Always",
                        },
                        "kernelArgs": ironvirt_testbed::guest::CMDLINE,
                    }},
                    "resources": {"requests": {"memory": "128Mi"}},
                },
            },
        });
        let created = place(&client, &ns, vmi, &node).await;
        wait_phase(&client, &ns, "kboot", "Running", BOOT).await?;
        let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/kboot/console");
        let mut con = h.streams().websocket(&path).await?;
        con.expect_from(0, MARKER, BOOT).await?;
        // The domain boots the cached files directly.
        let uid = created.metadata.uid.clone().unwrap_or_default();
        let domain = ironvirt_tests::handler::domains_of(QEMU, &uid)
            .into_iter()
            .next()
            .ok_or("no domain for the VMI")?;
        let xml = std::process::Command::new("virsh")
            .args(["-c", QEMU, "dumpxml", &domain])
            .output()
            .map_err(|e| e.to_string())?;
        let xml = String::from_utf8_lossy(&xml.stdout).into_owned();
        let cache = h.state_dir.join("image-cache/images");
        assert!(
            xml.contains(&format!("<kernel>{}", cache.display())),
            "the kernel is not the cached file:\n{xml}"
        );
        assert!(xml.contains("<initrd>"), "{xml}");
        assert!(xml.contains("<cmdline>console=tty0 console=ttyS0"), "{xml}");
        assert_eq!(
            reg.requests("/blobs/"),
            2,
            "kernel and initrd: one layer each way"
        );

        let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let _ = api.delete("kboot", &DeleteParams::default()).await;
        wait_gone(&client, &ns, "kboot", Duration::from_secs(60)).await?;
        h.remove(&client).await;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_tag_backs_off_then_runs_once_it_is_pushed() {
    let bed = &bed().await;
    let reg = Registry::start().expect("the registry");
    let host = reg.host.clone();
    let reg = &reg;
    bed.with_namespace("cdlate", |ns| async move {
        let client = bed.admin();
        let node = format!("{ns}-n");
        let (h, _config) = handler_mirroring_quay(bed, &ns, &node, &host).await?;
        let mut vmi = from_image("late");
        vmi["spec"]["volumes"][0]["containerDisk"]["image"] =
            json!("quay.io/kubevirt/cirros-container-disk-demo:late");
        place(&client, &ns, vmi, &node).await;
        let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let reason_of = |v: &VirtualMachineInstance| {
            v.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .map(|c| {
                    (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                })
        };
        // The registry's own answer, then backoff; the VMI waits.
        for wanted in ["ErrImagePull", "ImagePullBackOff"] {
            let msg = eventually(Duration::from_secs(60), wanted, || async {
                let v = api.get("late").await.ok()?;
                let (reason, msg) = reason_of(&v)?;
                (reason == wanted).then_some(msg)
            })
            .await
            .map_err(|e| e.to_string())?;
            assert!(
                msg.to_lowercase().contains("manifest unknown"),
                "{wanted}: {msg}"
            );
        }
        // The tag appears: the same VMI runs, with no action on it.
        let uid = api
            .get("late")
            .await
            .map_err(|e| e.to_string())?
            .metadata
            .uid;
        let disk = std::fs::read(IMAGE).map_err(|e| e.to_string())?;
        reg.push(
            "kubevirt/cirros-container-disk-demo:late",
            &[("disk/disk.qcow2", disk)],
        )
        .await
        .map_err(|e| e.to_string())?;
        wait_phase(&client, &ns, "late", "Running", BOOT).await?;
        let after = api.get("late").await.map_err(|e| e.to_string())?;
        assert_eq!(after.metadata.uid, uid, "the VMI was recreated");
        // The download was announced (its progress went to the Ready
        // condition), then its end.
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
        let notes: Vec<(String, String)> = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("late"))
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect();
        for reason in ["Pulling", "Pulled"] {
            assert!(
                notes
                    .iter()
                    .any(|(r, n)| r == reason && n.contains("cirros-container-disk-demo:late")),
                "no {reason} event naming the image: {notes:?}"
            );
        }
        let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/late/console");
        let mut con = h.streams().websocket(&path).await?;
        con.expect_from(0, MARKER, BOOT).await?;
        let _ = api.delete("late", &DeleteParams::default()).await;
        wait_gone(&client, &ns, "late", Duration::from_secs(60)).await?;
        h.remove(&client).await;
        Ok::<(), String>(())
    })
    .await;
}
