//! VirtualMachinePool on the real test bed: `kubectl scale vmpool` makes
//! `<pool>-0…2` Running (libvirt domains), scaling in removes the VMs the
//! scale-in strategy names, a template change rolls the revision label (and
//! the new template) onto each VM and restarts its VMI, v1alpha1 reads the
//! same object, and deleting the pool leaves no VM, VMI or domain.

use std::collections::BTreeSet;
use std::time::Duration;

use ironvirt_crds::pool::{REVISION_LABEL, VirtualMachinePool};
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use ironvirt_tests::api::guest_vm;
use ironvirt_tests::handler::{Handler, domains_of, wait_serving};
use ironvirt_tests::kubectl::{bed_with_crds as bed, kubectl};
use ironvirt_tests::operator::{Operator, eventually};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::json;

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(180);

/// The names of the Running VMIs among `vmis` whose memory is `memory`.
async fn running(vmis: &Api<VirtualMachineInstance>, memory: &str) -> BTreeSet<String> {
    vmis.list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|v| {
            v.metadata.deletion_timestamp.is_none()
                && v.status.as_ref().and_then(|s| s.phase)
                    == Some(VirtualMachineInstancePhase::Running)
                && v.spec
                    .domain
                    .memory
                    .as_ref()
                    .and_then(|m| m.guest.as_ref())
                    .map(|q| q.0.as_str())
                    == Some(memory)
        })
        .map(|v| v.name_any())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_scales_rolls_out_its_template_and_leaves_nothing_behind() {
    let bed = &bed().await;
    bed.with_namespace("pool", |ns| async move {
        let admin = bed.admin();
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;

        // The pool, written as KubeVirt's example is, with a guest VM template.
        let vm = serde_json::to_value(guest_vm(&ns, "unused", "Always")).map_err(|e| e.to_string())?;
        let mut vm_spec = vm["spec"].clone();
        vm_spec["template"]["metadata"] = json!({"labels": {"kubevirt.io/vmpool": "p"}});
        let pool = json!({
            "apiVersion": "pool.kubevirt.io/v1beta1", "kind": "VirtualMachinePool",
            "metadata": {"name": "p", "namespace": ns},
            "spec": {
                "replicas": 0,
                "maxUnavailable": 1,
                "selector": {"matchLabels": {"kubevirt.io/vmpool": "p"}},
                "scaleInStrategy": {"proactive": {"selectionPolicy": {
                    "selectors": {"labelSelector": {"matchLabels": {"drain": "yes"}}},
                    "sortPolicy": "DescendingOrder"}}},
                "virtualMachineTemplate": {
                    "metadata": {"labels": {"kubevirt.io/vmpool": "p"}},
                    "spec": vm_spec,
                },
            },
        });
        let out = ironvirt_tests::kubectl::kubectl_with(
            bed,
            None,
            &["apply", "-f", "-"],
            Some(&pool.to_string()),
        );
        assert!(out.success, "{}", out.stderr);

        // kubectl scale, through the scale subresource.
        let out = kubectl(bed, &["-n", &ns, "scale", "vmpool", "p", "--replicas=3"]);
        assert!(out.success, "{}", out.stderr);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let pools: Api<VirtualMachinePool> = Api::namespaced(admin.clone(), &ns);
        eventually(BOOT, "p-0, p-1 and p-2 Running", || async {
            (running(&vmis, "128Mi").await == set(&["p-0", "p-1", "p-2"])).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        for name in ["p-0", "p-1", "p-2"] {
            let vmi = vmis.get(name).await.map_err(|e| e.to_string())?;
            let uid = vmi.metadata.uid.clone().unwrap_or_default();
            assert_eq!(domains_of(QEMU, &uid).len(), 1, "{name} has a domain");
            let vm = vms.get(name).await.map_err(|e| e.to_string())?;
            assert_eq!(vm.owner_references()[0].kind, "VirtualMachinePool");
        }
        let status = eventually(Duration::from_secs(120), "readyReplicas 3", || async {
            let s = pools.get("p").await.ok()?.status?;
            (s.ready_replicas == Some(3)).then_some(s)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(status.replicas, Some(3));
        assert_eq!(status.label_selector.as_deref(), Some("kubevirt.io/vmpool=p"));
        let first_rev = status.current_revision.clone().unwrap_or_default();
        assert!(first_rev.starts_with("p-"), "{first_rev}");
        // KubeVirt's columns, and the same object through v1alpha1.
        let out = kubectl(bed, &["-n", &ns, "get", "vmpool", "p"]);
        assert!(out.stdout.contains("DESIRED") && out.stdout.contains("READY"), "{}", out.stdout);
        let old = Api::<DynamicObject>::namespaced_with(
            admin.clone(),
            &ns,
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("pool.kubevirt.io", "v1alpha1", "VirtualMachinePool"),
                "virtualmachinepools",
            ),
        );
        let alpha = old.get("p").await.map_err(|e| e.to_string())?;
        assert_eq!(alpha.data["spec"]["replicas"], 3);

        // Scale in to 1: the strategy names p-0 (its label matches) and then
        // the highest index, p-2.
        vms.patch("p-0", &PatchParams::default(), &Patch::Merge(&json!({"metadata": {"labels": {"drain": "yes"}}})))
            .await
            .map_err(|e| e.to_string())?;
        let out = kubectl(bed, &["-n", &ns, "scale", "vmpool", "p", "--replicas=1"]);
        assert!(out.success, "{}", out.stderr);
        eventually(Duration::from_secs(120), "only p-1 left", || async {
            let left: BTreeSet<String> = vms.list(&Default::default()).await.ok()?.items.iter().map(|v| v.name_any()).collect();
            let vmis_left: BTreeSet<String> = vmis.list(&Default::default()).await.ok()?.items.iter().map(|v| v.name_any()).collect();
            (left == set(&["p-1"]) && vmis_left == set(&["p-1"])).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;

        // A template change: back to 2 replicas, then new memory. Every VM
        // gets the new revision label and template; its VMI restarts with it.
        let out = kubectl(bed, &["-n", &ns, "scale", "vmpool", "p", "--replicas=2"]);
        assert!(out.success, "{}", out.stderr);
        eventually(BOOT, "p-0 and p-1 Running", || async {
            (running(&vmis, "128Mi").await == set(&["p-0", "p-1"])).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let patch = json!({"spec": {"virtualMachineTemplate": {"spec": {"template": {"spec": {"domain": {"memory": {"guest": "96Mi"}}}}}}}});
        pools
            .patch("p", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| e.to_string())?;
        let new_rev = eventually(Duration::from_secs(60), "a new current revision", || async {
            let r = pools.get("p").await.ok()?.status?.current_revision?;
            (r != first_rev).then_some(r)
        })
        .await
        .map_err(|e| e.to_string())?;
        // maxUnavailable 1: one VMI restarts at a time; the other keeps
        // running (sampled through the rollout).
        let fewest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(2));
        eventually(BOOT, "both VMIs restarted with 96Mi", || {
            let (vmis, fewest) = (vmis.clone(), fewest.clone());
            async move {
                let up = running(&vmis, "128Mi").await.len() + running(&vmis, "96Mi").await.len();
                fewest.fetch_min(up, std::sync::atomic::Ordering::Relaxed);
                (running(&vmis, "96Mi").await == set(&["p-0", "p-1"])).then_some(())
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        let fewest = fewest.load(std::sync::atomic::Ordering::Relaxed);
        assert!(fewest >= 1, "both VMIs were down at once during the rollout");
        for name in ["p-0", "p-1"] {
            let vm = vms.get(name).await.map_err(|e| e.to_string())?;
            assert_eq!(vm.labels().get(REVISION_LABEL), Some(&new_rev), "{name}");
            let vmi = vmis.get(name).await.map_err(|e| e.to_string())?;
            assert_eq!(vmi.labels().get(REVISION_LABEL), Some(&new_rev), "{name}'s VMI");
        }
        let s = eventually(Duration::from_secs(60), "updatedReplicas 2", || async {
            let s = pools.get("p").await.ok()?.status?;
            (s.updated_replicas == Some(2)).then_some(s)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(s.current_revision.as_deref(), Some(new_rev.as_str()));

        // Deleting the pool leaves no VM, VMI or domain.
        let uids: Vec<String> = vmis
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .filter_map(|v| v.metadata.uid.clone())
            .collect();
        let out = kubectl(bed, &["-n", &ns, "delete", "vmpool", "p", "--wait=true"]);
        assert!(out.success, "{}", out.stderr);
        eventually(Duration::from_secs(120), "no VM, VMI or domain", || async {
            let vm_left = vms.list(&Default::default()).await.ok()?.items.len();
            let vmi_left = vmis.list(&Default::default()).await.ok()?.items.len();
            let domains: usize = uids.iter().map(|u| domains_of(QEMU, u).len()).sum();
            (vm_left + vmi_left + domains == 0).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    })
    .await;
}
