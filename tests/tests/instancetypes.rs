//! Instancetypes and preferences on the real test bed: a VM naming a
//! namespaced instancetype and preference runs a VMI (and a libvirt domain)
//! with the instancetype's vCPUs in the preference's topology and its memory,
//! its template untouched; the copy in the VM's ControllerRevision keeps the
//! VM as it was when the instancetype is edited or deleted, until
//! `revisionName` is cleared; a template that sets the instancetype's fields
//! is refused with the field path; a missing instancetype is a Failure
//! condition, not a crash loop; deleting the VM removes its revisions. The
//! common cluster set is installed.

use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::api::guest_vm;
use ironvirt_tests::handler::{Handler, domains_of, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::json;

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(120);

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("instancetype.kubevirt.io", "v1beta1", kind),
        plural,
    )
}

/// The running VMI `name` whose uid is not `old`: (uid, vCPUs as
/// sockets/cores/threads, memory.guest, annotations).
async fn running_vmi(
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    old: &str,
) -> Result<VirtualMachineInstance, String> {
    eventually(BOOT, "a new Running VMI", || async {
        let v = vmis.get_opt(name).await.ok()??;
        let running = v
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(|p| p == ironvirt_crds::VirtualMachineInstancePhase::Running);
        (running && v.metadata.uid.as_deref() != Some(old)).then_some(v)
    })
    .await
    .map_err(|e| e.to_string())
}

fn topology(v: &VirtualMachineInstance) -> (u32, u32, u32, String) {
    let d = &v.spec.domain;
    let cpu = d.cpu.clone().unwrap_or_default();
    (
        cpu.sockets.unwrap_or(1),
        cpu.cores.unwrap_or(1),
        cpu.threads.unwrap_or(1),
        d.memory
            .as_ref()
            .and_then(|m| m.guest.as_ref())
            .map(|q| q.0.clone())
            .unwrap_or_default(),
    )
}

/// The libvirt domain XML of VMI `v`.
fn domain_xml(v: &VirtualMachineInstance) -> String {
    let uid = v.metadata.uid.clone().unwrap_or_default();
    let Some(name) = domains_of(QEMU, &uid).into_iter().next() else {
        return String::new();
    };
    let out = std::process::Command::new("virsh")
        .args(["-c", QEMU, "dumpxml", &name])
        .output()
        .expect("virsh dumpxml");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn restart(vmis: &Api<VirtualMachineInstance>, name: &str, uid: &str) -> Result<(), String> {
    vmis.delete(name, &Default::default())
        .await
        .map_err(|e| e.to_string())?;
    eventually(Duration::from_secs(60), "the old VMI gone", || async {
        let v = vmis.get_opt(name).await.ok()?;
        (v.and_then(|v| v.metadata.uid).as_deref() != Some(uid)).then_some(())
    })
    .await
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_runs_its_instancetype_and_keeps_its_copy_until_asked() {
    let bed = &bed().await;
    bed.with_namespace("itype", |ns| async move {
        let admin = bed.admin();
        // The common cluster set is installed with the CRDs.
        let cluster = Api::<DynamicObject>::all_with(
            admin.clone(),
            &resource("VirtualMachineClusterInstancetype", "virtualmachineclusterinstancetypes"),
        );
        let small = cluster.get("u1.small").await.map_err(|e| e.to_string())?;
        assert_eq!(small.data["spec"]["memory"]["guest"], "2Gi");

        let types = Api::<DynamicObject>::namespaced_with(
            admin.clone(),
            &ns,
            &resource("VirtualMachineInstancetype", "virtualmachineinstancetypes"),
        );
        let prefs = Api::<DynamicObject>::namespaced_with(
            admin.clone(),
            &ns,
            &resource("VirtualMachinePreference", "virtualmachinepreferences"),
        );
        let it: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineInstancetype",
            "metadata": {"name": "tiny"},
            "spec": {"cpu": {"guest": 2}, "memory": {"guest": "160Mi"}},
        }))
        .map_err(|e| e.to_string())?;
        types.create(&PostParams::default(), &it).await.map_err(|e| e.to_string())?;
        let pref: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachinePreference",
            "metadata": {"name": "cores"},
            "spec": {"cpu": {"preferredCPUTopology": "cores"}, "devices": {"preferredDiskBus": "virtio"},
                     "requirements": {"cpu": {"guest": 1}, "memory": {"guest": "64Mi"}}},
        }))
        .map_err(|e| e.to_string())?;
        prefs.create(&PostParams::default(), &pref).await.map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;

        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        let mut vm = serde_json::to_value(guest_vm(&ns, "sized", "Always")).map_err(|e| e.to_string())?;
        vm["spec"]["template"]["spec"]["domain"]
            .as_object_mut()
            .ok_or("domain")?
            .remove("memory");
        vm["spec"]["instancetype"] = json!({"name": "tiny", "kind": "VirtualMachineInstancetype"});
        vm["spec"]["preference"] = json!({"name": "cores", "kind": "virtualmachinepreferences"});
        let template_before = vm["spec"]["template"].clone();
        let vm: VirtualMachine = serde_json::from_value(vm).map_err(|e| e.to_string())?;
        vms.create(&PostParams::default(), &vm).await.map_err(|e| e.to_string())?;

        // 2 vCPUs as cores, 160Mi, in the VMI and in the domain.
        let v = running_vmi(&vmis, "sized", "").await?;
        assert_eq!(topology(&v), (1, 2, 1, "160Mi".to_owned()));
        let ann = v.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get("kubevirt.io/instancetype-name").map(String::as_str), Some("tiny"));
        assert_eq!(ann.get("kubevirt.io/preference-name").map(String::as_str), Some("cores"));
        let xml = domain_xml(&v);
        assert!(xml.contains(">2</vcpu>"), "{xml}");
        assert!(xml.contains("cores='2'"), "{xml}");
        assert!(xml.contains("<memory unit='KiB'>163840</memory>"), "{xml}");

        // The template is as written; the copy is recorded.
        let stored = vms.get("sized").await.map_err(|e| e.to_string())?;
        let stored_json = serde_json::to_value(&stored).map_err(|e| e.to_string())?;
        assert_eq!(stored_json["spec"]["template"], template_before);
        let rev = stored.spec.instancetype.as_ref().map(|m| m.revision_name.clone()).unwrap_or_default();
        assert!(rev.starts_with("sized-tiny-v1beta1-"), "{rev}");
        let status_rev = eventually(Duration::from_secs(30), "status.instancetypeRef", || async {
            let s = vms.get("sized").await.ok()?.status?.instancetype_ref?;
            s.controller_revision_ref.map(|r| r.name)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(status_rev, rev);
        let revisions: Api<ControllerRevision> = Api::namespaced(admin.clone(), &ns);
        let cr = revisions.get(&rev).await.map_err(|e| e.to_string())?;
        assert_eq!(
            cr.metadata.owner_references.as_ref().map(|o| o[0].name.as_str()),
            Some("sized")
        );

        // Edited, then deleted: the next start is as before.
        let patch = json!({"spec": {"cpu": {"guest": 1}, "memory": {"guest": "128Mi"}}});
        types
            .patch("tiny", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| e.to_string())?;
        let uid = v.metadata.uid.clone().unwrap_or_default();
        restart(&vmis, "sized", &uid).await?;
        let v = running_vmi(&vmis, "sized", &uid).await?;
        assert_eq!(topology(&v), (1, 2, 1, "160Mi".to_owned()), "after an edit");

        // Cleared revisionName: the current version (1 vCPU, 128Mi) at the next start.
        let clear = json!({"spec": {"instancetype": {"revisionName": ""}}});
        vms.patch("sized", &PatchParams::default(), &Patch::Merge(&clear))
            .await
            .map_err(|e| e.to_string())?;
        let new_rev = eventually(Duration::from_secs(30), "a new revision", || async {
            let r = vms.get("sized").await.ok()?.spec.instancetype?.revision_name;
            (!r.is_empty() && r != rev).then_some(r)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert!(new_rev.ends_with("-2"), "{new_rev}");
        let uid = v.metadata.uid.clone().unwrap_or_default();
        restart(&vmis, "sized", &uid).await?;
        let v = running_vmi(&vmis, "sized", &uid).await?;
        assert_eq!(topology(&v), (1, 1, 1, "128Mi".to_owned()), "after clearing revisionName");

        types.delete("tiny", &Default::default()).await.map_err(|e| e.to_string())?;
        let uid = v.metadata.uid.clone().unwrap_or_default();
        restart(&vmis, "sized", &uid).await?;
        let v = running_vmi(&vmis, "sized", &uid).await?;
        assert_eq!(topology(&v), (1, 1, 1, "128Mi".to_owned()), "after deleting the instancetype");

        // A template that sets what the instancetype owns is refused.
        let mut bad = guest_vm(&ns, "bad", "Halted");
        bad.spec.instancetype = Some(Box::new(ironvirt_crds::instancetype::Matcher {
            name: "u1.small".into(),
            ..Default::default()
        }));
        let err = vms.create(&PostParams::default(), &bad).await.map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("spec.template.spec.domain.memory.guest")
                && err.contains("conflicts with selected instance type"),
            "{err}"
        );

        // A missing instancetype: a Failure condition, and the VM waits.
        let mut ghost = guest_vm(&ns, "ghost", "Always");
        if let Some(spec) = ghost.spec.template.spec.as_mut() {
            spec.domain.memory = None;
        }
        ghost.spec.instancetype = Some(Box::new(ironvirt_crds::instancetype::Matcher {
            name: "nope".into(),
            ..Default::default()
        }));
        vms.create(&PostParams::default(), &ghost).await.map_err(|e| e.to_string())?;
        let cond = eventually(Duration::from_secs(60), "the Failure condition", || async {
            let s = vms.get("ghost").await.ok()?.status?;
            s.conditions?.into_iter().find(|c| c.type_ == "Failure" && c.status == "True")
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(cond.reason.as_deref(), Some("FailedFindInstancetype"));
        assert!(
            cond.message.as_deref().unwrap_or_default().contains("\"nope\" not found"),
            "{cond:?}"
        );
        assert!(vmis.get_opt("ghost").await.map_err(|e| e.to_string())?.is_none());

        // Deleting the VM deletes its revisions (owner garbage collection).
        for name in ["sized", "ghost"] {
            vms.delete(name, &Default::default()).await.map_err(|e| e.to_string())?;
        }
        eventually(Duration::from_secs(90), "the VM and its revisions gone", || async {
            let left = revisions.list(&Default::default()).await.ok()?.items.len();
            let vm_left = vms.get_opt("sized").await.ok()?.is_some();
            (left == 0 && !vm_left).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}
