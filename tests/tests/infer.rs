//! `inferFromVolume` on the real test bed: a containerDisk image whose config
//! carries KubeVirt's `instancetype.kubevirt.io/default-*` labels is pushed
//! to a real registry; the operator (`--registries-config`) reads them and
//! fills the VM's instancetype and preference (inferFromVolume cleared, as
//! KubeVirt stores it), and the VMI runs with the instancetype's vCPUs and
//! memory. An image without the labels is the VM's Failure condition under
//! the default policy (no VMI), and under Ignore the matcher is removed and
//! the VM runs on its template.

use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use ironvirt_tests::handler::Handler;
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use ironvirt_tests::registry::Registry;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

const IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";
const BOOT: Duration = Duration::from_secs(120);

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("instancetype.kubevirt.io", "v1beta1", kind),
        plural,
    )
}

/// A VM booting containerDisk `image` from volume `disk`, with `matchers`
/// (instancetype/preference) and, when given, the template's memory.
fn vm(
    name: &str,
    image: &str,
    matchers: serde_json::Value,
    memory: Option<&str>,
) -> VirtualMachine {
    let mut domain = json!({"devices": {"disks": [{"name": "disk", "disk": {"bus": "virtio"}}]}});
    if let Some(m) = memory {
        domain["memory"] = json!({"guest": m});
    }
    let mut spec = json!({
        "runStrategy": "Always",
        "template": {"spec": {
            "terminationGracePeriodSeconds": 5,
            "domain": domain,
            "volumes": [{"name": "disk", "containerDisk": {"image": image}}],
        }},
    });
    if let Some(m) = matchers.as_object() {
        for (k, v) in m {
            spec[k] = v.clone();
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a valid VirtualMachine")
}

async fn running(
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
) -> Result<VirtualMachineInstance, String> {
    eventually(BOOT, &format!("VMI {name} Running"), || async {
        let v = vmis.get_opt(name).await.ok()??;
        let phase = v.status.as_ref().and_then(|s| s.phase);
        (phase == Some(VirtualMachineInstancePhase::Running)).then_some(v)
    })
    .await
    .map_err(|e| e.to_string())
}

fn cpu_and_memory(v: &VirtualMachineInstance) -> (u32, String) {
    let d = &v.spec.domain;
    let cpu = d.cpu.clone().unwrap_or_default();
    let vcpus = cpu.sockets.unwrap_or(1) * cpu.cores.unwrap_or(1) * cpu.threads.unwrap_or(1);
    let memory = d
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .map(|q| q.0.clone())
        .unwrap_or_default();
    (vcpus, memory)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_takes_its_instancetype_and_preference_from_its_container_disks_labels() {
    let bed = &bed().await;
    let reg = Registry::start().expect("the registry");
    let disk =
        std::fs::read(IMAGE).expect("the test guest's disk (make deps / hack/build-guest.sh)");
    let files = [("disk/disk.qcow2", disk)];
    reg.push_labelled(
        "os/labelled:v1",
        &files,
        &[
            ("instancetype.kubevirt.io/default-instancetype", "inferred"),
            (
                "instancetype.kubevirt.io/default-instancetype-kind",
                "VirtualMachineInstancetype",
            ),
            (
                "instancetype.kubevirt.io/default-preference",
                "inferred-pref",
            ),
            (
                "instancetype.kubevirt.io/default-preference-kind",
                "VirtualMachinePreference",
            ),
        ],
    )
    .await
    .expect("push the labelled image");
    reg.push("os/bare:v1", &files)
        .await
        .expect("push the bare image");
    let labelled = format!("{}/os/labelled:v1", reg.host);
    let bare = format!("{}/os/bare:v1", reg.host);
    let registries = format!("registries:\n  \"{}\":\n    insecure: true\n", reg.host);

    bed.with_namespace("infer", |ns| async move {
        let admin = bed.admin();
        let types = Api::<DynamicObject>::namespaced_with(
            admin.clone(),
            &ns,
            &resource("VirtualMachineInstancetype", "virtualmachineinstancetypes"),
        );
        let it: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineInstancetype",
            "metadata": {"name": "inferred"},
            "spec": {"cpu": {"guest": 2}, "memory": {"guest": "160Mi"}},
        }))
        .map_err(|e| e.to_string())?;
        types
            .create(&PostParams::default(), &it)
            .await
            .map_err(|e| e.to_string())?;
        let prefs = Api::<DynamicObject>::namespaced_with(
            admin.clone(),
            &ns,
            &resource("VirtualMachinePreference", "virtualmachinepreferences"),
        );
        let pref: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachinePreference",
            "metadata": {"name": "inferred-pref"},
            "spec": {"cpu": {"preferredCPUTopology": "cores"}},
        }))
        .map_err(|e| e.to_string())?;
        prefs
            .create(&PostParams::default(), &pref)
            .await
            .map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let (_h, dir) = Handler::start_with_registries(bed, &ns, &node, &registries).await?;
        let config = dir.path().join("registries.yaml").display().to_string();
        let _op = Operator::start(bed, &ns, "op", &["--registries-config", &config]);

        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);

        // Labelled: name and kind filled, inference cleared, 2 vCPUs as
        // cores and 160Mi in the VMI.
        let matchers = json!({
            "instancetype": {"inferFromVolume": "disk"},
            "preference": {"inferFromVolume": "disk"},
        });
        vms.create(
            &PostParams::default(),
            &vm("labelled", &labelled, matchers, None),
        )
        .await
        .map_err(|e| e.to_string())?;
        let stored = eventually(Duration::from_secs(60), "the matchers inferred", || async {
            let v = vms.get("labelled").await.ok()?;
            let it = v.spec.instancetype.clone()?;
            (!it.name.is_empty()).then_some(v)
        })
        .await
        .map_err(|e| e.to_string())?;
        let it = stored.spec.instancetype.clone().unwrap_or_default();
        let pref = stored.spec.preference.clone().unwrap_or_default();
        assert_eq!(
            (it.name.as_str(), it.kind.as_str()),
            ("inferred", "VirtualMachineInstancetype")
        );
        assert_eq!(
            (pref.name.as_str(), pref.kind.as_str()),
            ("inferred-pref", "VirtualMachinePreference")
        );
        assert!(
            it.infer_from_volume.is_empty() && pref.infer_from_volume.is_empty(),
            "{stored:?}"
        );
        assert!(it.infer_from_volume_failure_policy.is_none());
        let v = running(&vmis, "labelled").await?;
        assert_eq!(cpu_and_memory(&v), (2, "160Mi".to_owned()));
        assert_eq!(
            v.spec.domain.cpu.as_ref().and_then(|c| c.cores),
            Some(2),
            "the preference's topology"
        );

        // No labels, default policy (Reject): the VM's Failure condition
        // names the reason, and no VMI is made.
        vms.create(
            &PostParams::default(),
            &vm(
                "rejected",
                &bare,
                json!({"instancetype": {"inferFromVolume": "disk"}}),
                None,
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
        let cond = eventually(Duration::from_secs(60), "the Failure condition", || async {
            let s = vms.get("rejected").await.ok()?.status?;
            s.conditions?
                .into_iter()
                .find(|c| c.type_ == "Failure" && c.status == "True")
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(
            cond.reason.as_deref(),
            Some("FailedInferInstancetype"),
            "{cond:?}"
        );
        let message = cond.message.clone().unwrap_or_default();
        assert!(
            message.contains("from volume disk")
                && message.contains("no instancetype.kubevirt.io/default-instancetype label"),
            "{message}"
        );
        let kept = vms.get("rejected").await.map_err(|e| e.to_string())?;
        assert_eq!(
            kept.spec
                .instancetype
                .map(|m| m.infer_from_volume)
                .as_deref(),
            Some("disk"),
            "the VM keeps waiting for inference"
        );
        assert!(
            vmis.get_opt("rejected")
                .await
                .map_err(|e| e.to_string())?
                .is_none()
        );

        // No labels, policy Ignore: the matcher is removed and the VM runs
        // on its template's memory.
        let ignoring = json!({
            "instancetype": {"inferFromVolume": "disk", "inferFromVolumeFailurePolicy": "Ignore"},
            "preference": {"inferFromVolume": "disk", "inferFromVolumeFailurePolicy": "Ignore"},
        });
        vms.create(
            &PostParams::default(),
            &vm("ignored", &bare, ignoring, Some("128Mi")),
        )
        .await
        .map_err(|e| e.to_string())?;
        let v = running(&vmis, "ignored").await?;
        assert_eq!(cpu_and_memory(&v), (1, "128Mi".to_owned()));
        let stored = vms.get("ignored").await.map_err(|e| e.to_string())?;
        assert!(
            stored.spec.instancetype.is_none() && stored.spec.preference.is_none(),
            "{:?}",
            stored.spec
        );
        assert!(
            reg.requests("/v2/os/bare/manifests/v1") >= 2,
            "the labels came from the registry"
        );

        for name in ["labelled", "rejected", "ignored"] {
            vms.delete(name, &Default::default())
                .await
                .map_err(|e| e.to_string())?;
        }
        eventually(Duration::from_secs(90), "the VMs gone", || async {
            let left = vms.list(&Default::default()).await.ok()?.items.len();
            (left == 0).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await;
}
