//! End-to-end: real QEMU guests, driven as a user would, through kube-apiserver
//! with `kubectl` and `ironctl` and a user's kubeconfig (erin, bound to
//! `kubevirt.io:admin` in the test namespace only). The namespace ("e2e-…") has
//! its own operator and handler (node); the test bed runs ironvirt-api.
//!
//! One story, in order, each step timed (`e2e timing: …` lines, and an
//! `E2E-TIMING <seconds> <step>` summary at the end; docs/benchmarks.md has
//! the medians of 5 runs):
//!   1. a Halted VM: `ironctl start` → Running and the console shows the
//!      marker; `ironctl stop` → Stopped, the domain and its files gone;
//!      `ironctl start` again → Running;
//!   2. a VMIRS of 3 (examples/vmirs-busybox.yaml plus an emptyDisk) → 3 domains
//!      with disk files; `kubectl scale --replicas=1` → 2 domains and their
//!      files gone;
//!   3. GitOps: `kubectl apply --server-side` of an unchanged VM manifest
//!      (examples/vm-busybox.yaml), twice → same generation, same spec;
//!   4. deleting the namespace (as admin: namespaces are not erin's to
//!      delete) → no domain named `ironvirt-<ns>_…`, nothing under the
//!      handler's `<state dir>/vmis/`, no Lease in any namespace that names
//!      the namespace or the uid of one of its VMs or VMIs, and no Event about
//!      its objects in another namespace. The handler's own Leases
//!      (`kube-node-lease/<node>`, `ironvirt-handler-<node>`) belong to the
//!      node and stay while it runs; the test checks they exist.
//!
//! Issue #8 lists the GitOps re-apply after the namespace deletion; here it
//! comes before, so that the deletion also covers that VM.

use std::path::PathBuf;
use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{api_port, open_ws};
use ironvirt_tests::cli::ironctl_in;
use ironvirt_tests::e2e::{
    NsOperator, Timings, domain_name, domains_with_prefix, events_about, files_under,
    leases_mentioning, vmi_dir,
};
use ironvirt_tests::handler::{Handler, domains_of, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::{bed_with_crds, kubectl_with, repo_root};
use ironvirt_tests::operator::eventually;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

const QEMU: &str = "qemu:///system";
const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(120);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";
const USER: &str = "erin";

/// The VM of step 1: the test guest, Halted, with a scratch emptyDisk so that
/// it has a disk file of its own on the node.
const HALTED_VM: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: e2e-vm
spec:
  runStrategy: Halted
  template:
    metadata:
      labels:
        kubevirt.io/vm: e2e-vm
    spec:
      terminationGracePeriodSeconds: 10
      domain:
        memory:
          guest: 128Mi
        devices:
          disks:
            - name: rootdisk
              disk:
                bus: virtio
                readonly: true
            - name: scratch
              disk:
                bus: virtio
      volumes:
        - name: rootdisk
          hostDisk:
            path: /var/lib/ironvirt/images/busybox.qcow2
            type: Disk
        - name: scratch
          emptyDisk:
            capacity: 16Mi
"#;

/// What the story works with.
struct Story<'a> {
    bed: &'a TestBed,
    ns: String,
    /// erin's kubeconfig, for kubectl and ironctl.
    kubeconfig: PathBuf,
    /// erin's client, for the console websocket.
    user: Client,
    /// The admin client, for observing.
    admin: Client,
    handler_state: PathBuf,
    /// Every VMI uid the story saw, for the final checks.
    uids: Vec<String>,
    t: Timings,
}

impl Story<'_> {
    /// `kubectl -n ns ARGS…` as erin; stdout, or an error with stderr.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut all = vec!["-n", self.ns.as_str()];
        all.extend_from_slice(args);
        // hostDisk images lie in the namespace's own directory of the bed's root.
        let stdin = stdin.map(|s| ironvirt_tests::hostdisk::confine_text(s, &self.ns));
        let out = kubectl_with(self.bed, Some(&self.kubeconfig), &all, stdin.as_deref());
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!("kubectl {args:?} as {USER} failed: {}", out.stderr))
        }
    }

    /// `ironctl -n ns ARGS…` as erin; fails unless it exits 0.
    async fn ironctl(&self, args: &[&str]) -> Result<String, String> {
        let run = ironctl_in(
            &self.kubeconfig,
            &self.ns,
            args,
            None,
            Duration::from_secs(60),
        )
        .await;
        run.ok()?;
        Ok(run.stdout_text())
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    /// The namespace's domains on this node.
    fn domains(&self) -> Result<Vec<String>, String> {
        domains_with_prefix(QEMU, &ironvirt_crds::wire::domain_name_prefix(&self.ns))
    }

    async fn wait_printable(
        &self,
        name: &str,
        want: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let vms = self.vms();
        eventually(
            timeout,
            &format!("VM {name} printableStatus {want}"),
            || {
                let vms = vms.clone();
                async move {
                    let vm = vms.get_opt(name).await.ok().flatten()?;
                    (vm.status?.printable_status.as_deref() == Some(want)).then_some(())
                }
            },
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// Waits until VMI `name` runs, with exactly one live domain on the node;
    /// records and returns its uid.
    async fn running(&mut self, name: &str) -> Result<String, String> {
        let vmi = wait_phase(&self.admin, &self.ns, name, "Running", BOOT).await?;
        let uid = vmi.uid().ok_or("a VMI without uid")?;
        let dom = domain_name(&self.ns, name);
        let by_uid = domains_of(QEMU, &uid);
        if by_uid != [dom.clone()] {
            return Err(format!(
                "VMI {name} ({uid}) is Running; want exactly domain {dom} for it, libvirt has {by_uid:?}"
            ));
        }
        if ironvirt_tests::handler::domain_active(QEMU, &dom) != Some(true) {
            return Err(format!("domain {dom} is not running"));
        }
        self.uids.push(uid.clone());
        Ok(uid)
    }

    /// Waits until the console of VMI `name`, opened through kube-apiserver
    /// as erin, shows the guest's marker (from its start: the handler keeps
    /// the console's recent output).
    async fn booted(&self, name: &str) -> Result<(), String> {
        let mut con = open_ws(
            &self.user,
            &format!(
                "{SUB}/namespaces/{}/virtualmachineinstances/{name}/console",
                self.ns
            ),
        )
        .await
        .map_err(|e| format!("console of {name} as {USER}: {e:?}"))?;
        let seen = con.expect_from(0, MARKER, BOOT).await;
        con.close().await;
        seen.map_err(|e| format!("console of {name}: {e}"))
    }

    /// Waits until VMI `uid` has no domain and no files on the node.
    async fn cleaned_up(&self, uid: &str, timeout: Duration) -> Result<(), String> {
        let dir = vmi_dir(&self.handler_state, uid);
        eventually(
            timeout,
            &format!("the domain and files of VMI {uid} to go"),
            || {
                let dir = dir.clone();
                async move { (domains_of(QEMU, uid).is_empty() && !dir.exists()).then_some(()) }
            },
        )
        .await
        .map_err(|e| {
            format!(
                "{e}; domains: {:?}, files: {:?}",
                domains_of(QEMU, uid),
                files_under(&dir)
            )
        })
    }

    /// The disk files the handler made for VMI `uid` (its emptyDisk images).
    fn disk_files(&self, uid: &str) -> Vec<PathBuf> {
        files_under(&vmi_dir(&self.handler_state, uid))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "qcow2"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn end_to_end_as_a_user() {
    let bed = &bed_with_crds().await;
    bed.with_namespace("e2e", |ns| async move {
        api_port(&bed.admin()).await?;
        // A node and an operator Lease whose names do not contain the
        // namespace's: the Lease check of step 4 looks for anything naming it.
        let node = format!("e2e-node-{}", std::process::id());
        let h = Handler::start(bed, &ns, &node, QEMU);
        let op = NsOperator::start(bed, &ns, &format!("e2e-operator-{}", std::process::id()));
        wait_serving(&h, Duration::from_secs(60)).await;

        // erin may administer VMs in this namespace, and nothing else.
        let rb: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "erin-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubevirt.io:admin"},
            "subjects": [{"kind": "User", "name": USER, "apiGroup": "rbac.authorization.k8s.io"}],
        }))
        .map_err(|e| e.to_string())?;
        Api::<RoleBinding>::namespaced(bed.admin(), &ns)
            .create(&PostParams::default(), &rb)
            .await
            .map_err(|e| e.to_string())?;
        let kubeconfig = bed.user_kubeconfig(USER, &[]).map_err(|e| e.to_string())?;
        let user = bed.client_as(USER, &[]).await.map_err(|e| e.to_string())?;
        let mut s = Story {
            bed,
            ns: ns.clone(),
            kubeconfig,
            user,
            admin: bed.admin(),
            handler_state: h.state_dir.clone(),
            uids: Vec::new(),
            t: Timings::new(),
        };

        step1_start_stop_start(&mut s).await?;
        step2_replicaset_scale(&mut s).await?;
        step3_gitops_reapply(&mut s).await?;
        step4_delete_namespace(&mut s, &node).await?;

        eprint!("{}", s.t.summary());
        op.remove(&bed.admin()).await;
        h.remove(&bed.admin()).await;
        Ok::<(), String>(())
    })
    .await;
}

async fn step1_start_stop_start(s: &mut Story<'_>) -> Result<(), String> {
    s.kubectl(&["apply", "-f", "-"], Some(HALTED_VM))?;
    s.wait_printable("e2e-vm", "Stopped", Duration::from_secs(30))
        .await?;
    if s.vmis()
        .get_opt("e2e-vm")
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err("a Halted VM has a VMI".into());
    }
    s.t.restart();

    // Start: Running, one live domain, its emptyDisk file on the node.
    s.ironctl(&["start", "e2e-vm"]).await?;
    let first = s.running("e2e-vm").await?;
    s.wait_printable("e2e-vm", "Running", Duration::from_secs(30))
        .await?;
    let disks = s.disk_files(&first);
    if disks.len() != 1 {
        return Err(format!(
            "want one emptyDisk image for VMI {first}, found {disks:?}"
        ));
    }
    s.t.done("1a ironctl start -> Running");

    // The console, through kube-apiserver as erin, shows the guest's marker.
    s.booted("e2e-vm").await?;
    s.t.done("1b console shows the marker");

    // Stop: Stopped, the VMI, its domain and its files gone.
    s.ironctl(&["stop", "e2e-vm"]).await?;
    s.wait_printable("e2e-vm", "Stopped", Duration::from_secs(60))
        .await?;
    wait_gone(&s.admin, &s.ns, "e2e-vm", Duration::from_secs(60)).await?;
    s.cleaned_up(&first, Duration::from_secs(30)).await?;
    let left = s.domains()?;
    if !left.is_empty() {
        return Err(format!("stopped, yet domains are left: {left:?}"));
    }
    s.t.done("1c ironctl stop -> Stopped, domain gone");

    // Start again: a new VMI, Running.
    s.ironctl(&["start", "e2e-vm"]).await?;
    let second = s.running("e2e-vm").await?;
    if second == first {
        return Err("the second start reused the first VMI".into());
    }
    s.wait_printable("e2e-vm", "Running", Duration::from_secs(30))
        .await?;
    s.t.done("1d ironctl start again -> Running");
    Ok(())
}

/// examples/vmirs-busybox.yaml with an emptyDisk volume added.
fn vmirs_manifest() -> Result<String, String> {
    let path = repo_root().join("examples/vmirs-busybox.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rs: serde_json::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec = &mut rs["spec"]["template"]["spec"];
    spec["domain"]["devices"]["disks"]
        .as_array_mut()
        .ok_or("the example has no disks list")?
        .push(json!({"name": "scratch", "disk": {"bus": "virtio"}}));
    spec["volumes"]
        .as_array_mut()
        .ok_or("the example has no volumes list")?
        .push(json!({"name": "scratch", "emptyDisk": {"capacity": "16Mi"}}));
    spec["terminationGracePeriodSeconds"] = json!(10);
    if rs["spec"]["replicas"] != json!(3) {
        return Err(format!(
            "examples/vmirs-busybox.yaml: want 3 replicas, it has {}",
            rs["spec"]["replicas"]
        ));
    }
    serde_json::to_string(&rs).map_err(|e| e.to_string())
}

async fn step2_replicaset_scale(s: &mut Story<'_>) -> Result<(), String> {
    let manifest = vmirs_manifest()?;
    s.t.restart();
    s.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
    let vmis = s.vmis();
    let selector = ListParams::default().labels("app=vmirs-busybox");
    let three = eventually(BOOT, "3 VMIs of vmirs-busybox Running", || {
        let vmis = vmis.clone();
        let selector = selector.clone();
        async move {
            let list = vmis.list(&selector).await.ok()?;
            let up: Vec<VirtualMachineInstance> = list
                .items
                .into_iter()
                .filter(|v| {
                    v.metadata.deletion_timestamp.is_none()
                        && v.status
                            .as_ref()
                            .and_then(|s| s.phase)
                            .map(|p| format!("{p:?}"))
                            == Some("Running".into())
                })
                .collect();
            (up.len() == 3).then_some(up)
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut uids = Vec::new();
    for v in &three {
        uids.push(s.running(&v.name_any()).await?);
    }
    // Booted, too: a guest still booting ignores the ACPI power button, and
    // step 2b would time the grace period instead of a clean shutdown.
    for v in &three {
        s.booted(&v.name_any()).await?;
    }
    for uid in &uids {
        let disks = s.disk_files(uid);
        if disks.len() != 1 {
            return Err(format!(
                "want one emptyDisk image for VMI {uid}, found {disks:?}"
            ));
        }
    }
    // e2e-vm and the three replicas.
    let doms = s.domains()?;
    if doms.len() != 4 {
        return Err(format!(
            "want 4 domains in the namespace, libvirt has {doms:?}"
        ));
    }
    s.t.done("2a VMIRS of 3 -> 3 domains, guests booted");

    s.kubectl(&["scale", "vmirs", "vmirs-busybox", "--replicas=1"], None)?;
    // Exactly one VMI left (none terminating), the other two cleaned up.
    let left = eventually(
        Duration::from_secs(90),
        "vmirs-busybox down to 1 VMI",
        || {
            let vmis = vmis.clone();
            let selector = selector.clone();
            async move {
                let list = vmis.list(&selector).await.ok()?;
                (list.items.len() == 1).then(|| list.items[0].uid().unwrap_or_default())
            }
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    if !uids.contains(&left) {
        return Err(format!(
            "the VMI left ({left}) is not one of the three ({uids:?})"
        ));
    }
    for uid in uids.iter().filter(|u| **u != left) {
        s.cleaned_up(uid, Duration::from_secs(30)).await?;
    }
    if domains_of(QEMU, &left).len() != 1 || s.disk_files(&left).len() != 1 {
        return Err(format!(
            "the remaining VMI {left} lost its domain or its disk"
        ));
    }
    let doms = s.domains()?;
    if doms.len() != 2 {
        return Err(format!(
            "after scaling to 1 want 2 domains (e2e-vm and one replica), libvirt has {doms:?}"
        ));
    }
    s.t.done("2b scale to 1 -> 2 domains and disks removed");
    Ok(())
}

/// generation and spec of VM `name`.
async fn generation_and_spec(
    s: &Story<'_>,
    name: &str,
) -> Result<(i64, serde_json::Value), String> {
    let vm = s.vms().get(name).await.map_err(|e| e.to_string())?;
    let generation = vm.metadata.generation.ok_or("a VM without generation")?;
    let spec = serde_json::to_value(&vm.spec).map_err(|e| e.to_string())?;
    Ok((generation, spec))
}

async fn step3_gitops_reapply(s: &mut Story<'_>) -> Result<(), String> {
    // The example as a file would be applied, through stdin so that its
    // hostDisk path moves into the test namespace's directory.
    let path = repo_root().join("examples/vm-busybox.yaml");
    let file = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let apply = ["apply", "--server-side", "-f", "-"];
    s.t.restart();
    s.kubectl(&apply, Some(&file))?;
    s.running("vm-busybox").await?;
    s.wait_printable("vm-busybox", "Running", Duration::from_secs(30))
        .await?;
    let before = generation_and_spec(s, "vm-busybox").await?;
    s.t.done("3a apply --server-side -> Running");

    for round in 1..=2 {
        let out = s.kubectl(&apply, Some(&file))?;
        let after = generation_and_spec(s, "vm-busybox").await?;
        if after.0 != before.0 {
            return Err(format!(
                "re-apply {round} of an unchanged manifest moved metadata.generation {} -> {} (kubectl: {out})",
                before.0, after.0
            ));
        }
        if after.1 != before.1 {
            return Err(format!(
                "re-apply {round} changed the spec:\nbefore: {}\nafter:  {}",
                before.1, after.1
            ));
        }
    }
    s.t.done("3b 2x unchanged re-apply -> no change");
    // Nothing reacts late either (the operator, the webhooks): still the same
    // 2 s later (not timed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = generation_and_spec(s, "vm-busybox").await?;
    if settled != before {
        return Err(format!(
            "after the re-applies the VM drifted: generation {} -> {}, spec before {} after {}",
            before.0, settled.0, before.1, settled.1
        ));
    }
    Ok(())
}

async fn step4_delete_namespace(s: &mut Story<'_>, node: &str) -> Result<(), String> {
    // What the namespace holds now: VMIs of e2e-vm, a replica and vm-busybox.
    let vmis = s
        .vmis()
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    if vmis.items.len() != 3 {
        return Err(format!(
            "want 3 VMIs before deleting the namespace, found {}",
            vmis.items.len()
        ));
    }
    let vms = s
        .vms()
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut needles: Vec<String> = vec![s.ns.clone()];
    needles.extend(s.uids.iter().cloned());
    needles.extend(vms.items.iter().filter_map(|v| v.uid()));
    for v in &vmis.items {
        let uid = v.uid().ok_or("a VMI without uid")?;
        // e2e-vm and the replica have an emptyDisk; vm-busybox has none.
        if v.name_any() != "vm-busybox" && s.disk_files(&uid).is_empty() {
            return Err(format!(
                "VMI {} has no disk file before the deletion",
                v.name_any()
            ));
        }
        needles.push(uid);
        // A guest that is still booting ignores the ACPI power button and is
        // stopped only after its grace period: wait until each one is up, so
        // that the timing measures a clean shutdown (not timed).
        s.booted(&v.name_any()).await?;
    }
    s.t.restart();

    let namespaces: Api<Namespace> = Api::all(s.admin.clone());
    namespaces
        .delete(&s.ns, &DeleteParams::foreground())
        .await
        .map_err(|e| format!("deleting namespace {}: {e}", s.ns))?;
    let vmi_files = s.handler_state.join("vmis");
    eventually(
        Duration::from_secs(120),
        "the namespace's domains and VMI files to go",
        || {
            let gone =
                s.domains().is_ok_and(|d| d.is_empty()) && files_under(&vmi_files).is_empty();
            async move { gone.then_some(()) }
        },
    )
    .await
    .map_err(|e| {
        format!(
            "{e}; domains: {:?}, files: {:?}",
            s.domains(),
            files_under(&vmi_files)
        )
    })?;
    s.t.done("4a delete namespace -> domains and disk files gone");
    eventually(
        Duration::from_secs(180),
        "the namespace to be deleted",
        || {
            let namespaces = namespaces.clone();
            let ns = s.ns.clone();
            async move { matches!(namespaces.get_opt(&ns).await, Ok(None)).then_some(()) }
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    s.t.done("4b delete namespace -> namespace gone");

    // The namespace is gone only once its VMIs are, and a VMI only once the
    // handler destroyed its domain and removed its files: check all at once.
    let left = s.domains()?;
    if !left.is_empty() {
        return Err(format!(
            "namespace deleted, yet its domains are left: {left:?}"
        ));
    }
    let files = files_under(&s.handler_state.join("vmis"));
    if !files.is_empty() {
        return Err(format!(
            "namespace deleted, yet the handler's VMI files are left: {files:?}"
        ));
    }
    let dirs: Vec<_> = std::fs::read_dir(s.handler_state.join("vmis"))
        .map_err(|e| format!("{}: {e}", s.handler_state.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    if !dirs.is_empty() {
        return Err(format!(
            "namespace deleted, yet VMI directories are left: {dirs:?}"
        ));
    }
    for uid in &s.uids {
        let d = domains_of(QEMU, uid);
        if !d.is_empty() {
            return Err(format!("VMI {uid} still has domains {d:?}"));
        }
    }
    // Leases: none, in any namespace, names the namespace or one of its VMs'
    // or VMIs' uids. The handler's own Leases (kube-node-lease/<node> and
    // ironvirt-handler-<node>) belong to the node and stay while it runs.
    let leases = leases_mentioning(&s.admin, &needles).await?;
    if !leases.is_empty() {
        return Err(format!(
            "Leases left that belong to namespace {}: {leases:?}",
            s.ns
        ));
    }
    let node_leases = leases_mentioning(&s.admin, &[node.to_owned()]).await?;
    if node_leases.is_empty() {
        return Err(format!(
            "the node's Leases are missing (the check above would prove nothing): {node_leases:?}"
        ));
    }
    // Events about the namespace's objects, recorded in another namespace.
    let events = events_about(&s.admin, &s.ns).await?;
    if !events.is_empty() {
        return Err(format!("Events about namespace {} left: {events:?}", s.ns));
    }
    Ok(())
}
