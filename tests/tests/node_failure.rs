//! A node's machine dies and comes back (issue #18, acceptance 5), on two
//! real nodes with the namespace's operator (`--node-lease-timeout 20s`):
//! - a VirtualMachine with runStrategy Always (the test guest booting from a
//!   containerDisk, no network) runs on node-1 (node-2 tainted NoSchedule
//!   while it is placed);
//! - every process of node-1's machine is killed with SIGKILL: the handler
//!   stops renewing its Lease, so the operator fails the VMI
//!   (`NodeUnresponsive`) within the lease timeout plus 10 s, and the VM
//!   runs again as a new VMI on node-2, whose guest boots;
//! - node-1 boots again with its disk (libvirt's definition of the old
//!   domain): its handler destroys and undefines that stale domain within
//!   30 s, never runs a domain of the VM, and the VM's VMI stays the one on
//!   node-2: no VM ever runs twice.
//!
//! A watch records every state of the VM's VMIs: the failed one lives only
//! until the VM controller replaces it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironvirt_crds::vmi::VirtualMachineInstancePhase as Phase;
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{ApiWs, GUEST_IMAGE, GUEST_MARKER, api_port, open_ws};
use ironvirt_tests::e2e::{NsOperator, domains_with_prefix};
use ironvirt_tests::handler::{domain_active, domains_of, wait_gone};
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::nodes::{TestNode, delete_node_objects, wait_ready_and_renewing};
use ironvirt_tests::registry::Registry;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;

/// The operator's `--node-lease-timeout` in this test.
const LEASE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long after the Lease expired the VMI may take to fail (acceptance 5).
const FAIL_SLACK: Duration = Duration::from_secs(10);
const BOOT: Duration = Duration::from_secs(150);
/// How long node-1 may take, once back, to remove its stale domain.
const FENCE: Duration = Duration::from_secs(30);
const VM: &str = "phoenix";
/// A VMI without VM on node-1 too: it fails and is not restarted, and its
/// stale domain must go as well.
const LONE: &str = "lone";
const REPO: &str = "node-failure/guest:v1";
const SUB: &str = "/apis/subresources.kubevirt.io/v1";
/// Taint keeping the VM off node-2 while it is placed.
const HOLD_TAINT: &str = "ironvirt.test/hold";

fn timing(t0: Instant, step: &str) {
    eprintln!(
        "node-failure timing: {step}: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_vm_runs_elsewhere_and_its_return_runs_no_duplicate() {
    let bed = &bed_with_crds().await;
    let reg = registry().await.expect("the registry with the guest");
    let host = reg.host.clone();
    bed.with_namespace("nfail", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let mut world = World::start(bed, &ns, &host)?;
        timing(t0, "2 nodes and the operator started");
        let outcome = story(bed, &ns, &mut world, &host, t0).await;
        world.finish(bed, &ns, outcome, t0).await
    })
    .await;
}

/// The test bed's side alone: a killed node's processes are all gone while
/// its disk stays; it boots again with the same record; stopped, nothing of
/// it is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_keeps_its_disk_boots_again_and_stops_clean() {
    let bed = &bed_with_crds().await;
    bed.with_namespace("nkill", |ns| async move {
        let admin = bed.admin();
        let name = format!("nkill-{}", std::process::id());
        let mut node = TestNode::start(bed, &ns, &name)?;
        let outcome = async {
            wait_ready_and_renewing(&admin, &name, Duration::from_secs(60)).await?;
            let before = node.record.clone();
            let pids = node.pids.clone();
            let killed = node.kill()?;
            let mut missing: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|p| !killed.contains(p))
                .collect();
            missing.retain(|p| ironvirt_testbed::process::process_alive(*p));
            if pids.len() != 4 || !missing.is_empty() {
                return Err(format!(
                    "started {pids:?}, killed {killed:?}, alive {missing:?}"
                ));
            }
            if domains_with_prefix(&node.libvirt_uri(), "").is_ok() {
                return Err("the killed node's libvirtd still answers".into());
            }
            for kept in ironvirt_testbed::nodes::lifecycle::kept_dirs(&node.record.dir) {
                if !kept.is_dir() {
                    return Err(format!("{} is gone after the kill", kept.display()));
                }
            }
            if !node.record.dir.join("etc").join("libvirtd.conf").is_file() {
                return Err("the node's libvirtd.conf is gone after the kill".into());
            }
            let link = std::process::Command::new("ip")
                .args(["-o", "link", "show", "dev", &node.record.veth])
                .output()
                .map_err(|e| e.to_string())?;
            let link = String::from_utf8_lossy(&link.stdout).into_owned();
            if !link.contains("state DOWN") {
                return Err(format!("the killed node's veth is not down: {link}"));
            }
            if !node.kill()?.is_empty() {
                return Err("killing a dead node killed something".into());
            }
            node.restart()?;
            if node.record != before {
                return Err(format!(
                    "the node came back as {:?}, was {before:?}",
                    node.record
                ));
            }
            domains_with_prefix(&node.libvirt_uri(), "")?;
            wait_ready_and_renewing(&admin, &name, Duration::from_secs(60)).await?;
            Ok::<(), String>(())
        }
        .await;
        if outcome.is_err() {
            eprintln!("--- handler log of {name} ---\n{}", node.handler_log());
        }
        let stopped = node.stop();
        delete_node_objects(&admin, &name).await;
        outcome?;
        stopped?;
        let left = node.leftovers();
        if !left.is_empty() {
            return Err(format!("left after the node stopped: {left:?}"));
        }
        Ok(())
    })
    .await;
}

/// A registry serving the test guest as containerDisk [`REPO`].
async fn registry() -> Result<Registry, String> {
    let reg = Registry::start().map_err(|e| format!("the registry: {e}"))?;
    let disk = std::fs::read(GUEST_IMAGE)
        .map_err(|e| format!("the test guest's disk {GUEST_IMAGE} (make deps): {e}"))?;
    reg.push(REPO, &[("disk/disk.qcow2", disk)])
        .await
        .map_err(|e| format!("push the guest as a containerDisk: {e}"))?;
    Ok(reg)
}

/// The guest's VMI spec: the containerDisk, no network.
fn guest_spec(registry: &str) -> serde_json::Value {
    serde_json::json!({
        "terminationGracePeriodSeconds": 5,
        "domain": {
            "memory": {"guest": "128Mi"},
            "devices": {
                "autoattachPodInterface": false,
                "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}],
            },
        },
        "volumes": [
            {"name": "containerdisk", "containerDisk": {"image": format!("{registry}/{REPO}")}},
        ],
    })
}

/// The guest as a VirtualMachine with runStrategy Always.
fn guest(registry: &str) -> Result<VirtualMachine, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": VM},
        "spec": {"runStrategy": "Always", "template": {"spec": guest_spec(registry)}},
    }))
    .map_err(|e| format!("VM manifest: {e}"))
}

/// The guest as a VMI of its own (no VM): once failed, it stays Failed.
fn lone(registry: &str) -> Result<VirtualMachineInstance, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": LONE},
        "spec": guest_spec(registry),
    }))
    .map_err(|e| format!("VMI manifest: {e}"))
}

async fn console(admin: &kube::Client, ns: &str) -> Result<ApiWs, String> {
    open_ws(
        admin,
        &format!("{SUB}/namespaces/{ns}/virtualmachineinstances/{VM}/console"),
    )
    .await
    .map_err(|e| format!("console of {VM}: {e:?}"))
}

/// Two nodes pulling from the test's registry, and the namespace's
/// operator with a short lease timeout.
struct World {
    nodes: Vec<TestNode>,
    op: Option<NsOperator>,
    _config: tempfile::TempDir,
}

impl World {
    fn start(bed: &TestBed, ns: &str, registry: &str) -> Result<World, String> {
        let port: u16 = registry
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or("a registry address without port")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("registries.yaml");
        std::fs::write(
            &config,
            format!("registries:\n  \"{registry}\":\n    insecure: true\n"),
        )
        .map_err(|e| e.to_string())?;
        let args = [
            "--registries-config".to_owned(),
            config.display().to_string(),
        ];
        let pid = std::process::id();
        let mut nodes = Vec::new();
        for k in 1..=2 {
            // A node that fails to start stops those started (Drop).
            nodes.push(TestNode::start_with(
                bed,
                ns,
                &format!("nfail-{pid}-{k}"),
                &[port],
                &args,
            )?);
        }
        let timeout = format!("{}s", LEASE_TIMEOUT.as_secs());
        let op = NsOperator::start_with(
            bed,
            ns,
            &format!("nfail-operator-{pid}"),
            &["--node-lease-timeout", &timeout],
        );
        Ok(World {
            nodes,
            op: Some(op),
            _config: dir,
        })
    }

    /// Removes everything the test made, whatever `outcome` was: the VM
    /// (waiting for its VMI to go), the operator, the nodes and their Node
    /// objects; then checks nothing of the nodes is left on the machine.
    /// Returns `outcome`'s error first.
    async fn finish(
        mut self,
        bed: &TestBed,
        ns: &str,
        outcome: Result<(), String>,
        t0: Instant,
    ) -> Result<(), String> {
        let admin = bed.admin();
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
        let _ = vms.delete(VM, &DeleteParams::default()).await;
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
        let _ = vmis.delete(LONE, &DeleteParams::default()).await;
        let gone = wait_gone(&admin, ns, VM, Duration::from_secs(90))
            .await
            .and(wait_gone(&admin, ns, LONE, Duration::from_secs(90)).await);
        if let Some(op) = self.op.take() {
            op.remove(&admin).await;
        }
        if outcome.is_err() {
            for n in &self.nodes {
                eprintln!("--- handler log of {} ---\n{}", n.name(), n.handler_log());
            }
        }
        let mut stop_errors = Vec::new();
        for n in &mut self.nodes {
            if let Err(e) = n.stop() {
                stop_errors.push(format!("{}: {e}", n.name()));
            }
            delete_node_objects(&admin, n.name()).await;
        }
        timing(t0, "cleaned up");
        outcome?;
        gone?;
        if !stop_errors.is_empty() {
            return Err(format!("stopping the nodes failed: {stop_errors:?}"));
        }
        let left: Vec<String> = self.nodes.iter().flat_map(TestNode::leftovers).collect();
        if !left.is_empty() {
            return Err(format!("left after the nodes stopped: {left:?}"));
        }
        Ok(())
    }
}

/// One state of one of the VM's VMIs, as the watch saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    uid: String,
    phase: Option<Phase>,
    reason: Option<String>,
    node: Option<String>,
    deleted: bool,
}

/// Every state change of the namespace's VMIs, with when it arrived.
type History = Arc<Mutex<Vec<(Instant, Seen)>>>;

fn record(history: &History, seen: Seen) {
    let Ok(mut h) = history.lock() else {
        return;
    };
    let last = h
        .iter()
        .rev()
        .find(|(_, s)| s.uid == seen.uid)
        .map(|(_, s)| s);
    if last != Some(&seen) {
        h.push((Instant::now(), seen));
    }
}

fn seen_of(vmi: &VirtualMachineInstance, deleted: bool) -> Seen {
    let status = vmi.status.as_ref();
    Seen {
        uid: vmi.uid().unwrap_or_default(),
        phase: status.and_then(|s| s.phase),
        reason: status.and_then(|s| s.reason.clone()),
        node: status.and_then(|s| s.node_name.clone()),
        deleted: deleted || vmi.metadata.deletion_timestamp.is_some(),
    }
}

/// Watches the namespace's VMIs into a [`History`] until aborted.
fn watch_vmis(admin: &kube::Client, ns: &str) -> (History, tokio::task::JoinHandle<()>) {
    let history: History = Arc::default();
    let api: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
    let h = Arc::clone(&history);
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Apply(v) | watcher::Event::InitApply(v)) => {
                    record(&h, seen_of(&v, false));
                }
                Ok(watcher::Event::Delete(v)) => record(&h, seen_of(&v, true)),
                Ok(_) => {}
                Err(e) => eprintln!("VMI watch: {e}"),
            }
        }
    });
    (history, task)
}

fn history_text(history: &History, t0: Instant) -> String {
    history
        .lock()
        .map(|h| {
            h.iter()
                .map(|(at, s)| {
                    format!(
                        "  +{:.1} s {} {:?} {:?} on {:?}{}\n",
                        at.duration_since(t0).as_secs_f64(),
                        s.uid,
                        s.phase,
                        s.reason,
                        s.node,
                        if s.deleted { " (deleted)" } else { "" }
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// When the watch first saw a state of `uid` matching `want`.
fn first_seen(
    history: &History,
    uid: &str,
    want: impl Fn(&Seen) -> bool,
) -> Option<(Instant, Seen)> {
    let h = history.lock().ok()?;
    h.iter()
        .find(|(_, s)| s.uid == uid && want(s))
        .map(|(at, s)| (*at, s.clone()))
}

/// `text` without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sets or clears the test's NoSchedule taint on `node`.
async fn hold(admin: &kube::Client, node: &str, on: bool) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(admin.clone());
    let taints = if on {
        serde_json::json!([{"key": HOLD_TAINT, "value": "node-failure", "effect": "NoSchedule"}])
    } else {
        serde_json::Value::Null
    };
    nodes
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"taints": taints}})),
        )
        .await
        .map(drop)
        .map_err(|e| format!("taint {node}: {e}"))
}

/// The domains of VMIs `vmis` at `uri` (by name), and whether any of them
/// runs; an error when libvirt does not answer.
fn vm_domains(uri: &str, ns: &str, vmis: &[&str]) -> Result<(Vec<String>, bool), String> {
    let wanted: Vec<String> = vmis
        .iter()
        .map(|v| ironvirt_crds::wire::domain_name(ns, v))
        .collect();
    let names: Vec<String> = domains_with_prefix(uri, "")?
        .into_iter()
        .filter(|n| wanted.contains(n))
        .collect();
    let active = names.iter().any(|n| domain_active(uri, n).unwrap_or(false));
    Ok((names, active))
}

async fn story(
    bed: &TestBed,
    ns: &str,
    world: &mut World,
    registry: &str,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    for n in &world.nodes {
        wait_ready_and_renewing(&admin, n.name(), Duration::from_secs(60))
            .await
            .map_err(|e| format!("{e}; handler log:\n{}", n.handler_log()))?;
    }
    let (n1, n2) = (
        world.nodes[0].name().to_owned(),
        world.nodes[1].name().to_owned(),
    );
    let (uri1, uri2) = (world.nodes[0].libvirt_uri(), world.nodes[1].libvirt_uri());
    let (history, watch) = watch_vmis(&admin, ns);
    let outcome = async {
        // The VM on node-1: node-2 refuses it while it is placed.
        hold(&admin, &n2, true).await?;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
        vms.create(&Default::default(), &guest(registry)?)
            .await
            .map_err(|e| format!("create {VM}: {e}"))?;
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
        vmis.create(&Default::default(), &lone(registry)?)
            .await
            .map_err(|e| format!("create {LONE}: {e}"))?;
        let vmi = ironvirt_tests::handler::wait_phase(&admin, ns, VM, "Running", BOOT).await?;
        let lone_vmi =
            ironvirt_tests::handler::wait_phase(&admin, ns, LONE, "Running", BOOT).await?;
        hold(&admin, &n2, false).await?;
        let old_uid = vmi.uid().ok_or("a VMI without uid")?;
        let lone_uid = lone_vmi.uid().ok_or("a VMI without uid")?;
        for (name, v) in [(VM, &vmi), (LONE, &lone_vmi)] {
            let on = v.status.as_ref().and_then(|s| s.node_name.clone());
            if on.as_deref() != Some(n1.as_str()) {
                return Err(format!("{name} runs on {on:?}, want {n1}"));
            }
        }
        let mut con = console(&admin, ns).await?;
        con.expect_from(0, GUEST_MARKER, BOOT).await?;
        con.close().await;
        timing(t0, &format!("{VM} ({old_uid}) Running on {n1}, booted"));

        // node-1's machine dies.
        let cgroups_before = world.nodes[0].domain_cgroups().len();
        let killed_at = Instant::now();
        let killed = world.nodes[0].kill()?;
        timing(
            t0,
            &format!(
                "killed {n1}: {} processes in {:.2} s",
                killed.len(),
                killed_at.elapsed().as_secs_f64()
            ),
        );
        let cgroups_after = world.nodes[0].domain_cgroups();
        if cgroups_before == 0 || !cgroups_after.is_empty() {
            return Err(format!(
                "{n1}'s domain cgroups: {cgroups_before} before the kill, after it {cgroups_after:?}"
            ));
        }
        let dom = ironvirt_crds::wire::domain_name(ns, VM);
        for name in [VM, LONE] {
            let def = world.nodes[0].record.dir.join("etc").join("qemu").join(format!(
                "{}.xml",
                ironvirt_crds::wire::domain_name(ns, name)
            ));
            if !def.is_file() {
                return Err(format!(
                    "{n1}'s disk has no definition of {name}'s domain ({}): nothing to fence",
                    def.display()
                ));
            }
        }

        // Both VMIs fail within the lease timeout plus 10 s.
        let deadline = killed_at + LEASE_TIMEOUT + FAIL_SLACK;
        let mut to_failed = Duration::ZERO;
        for (name, uid) in [(VM, &old_uid), (LONE, &lone_uid)] {
            let failed = loop {
                if let Some(found) = first_seen(&history, uid, |s| s.phase == Some(Phase::Failed)) {
                    break found;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{name} on {n1} was not Failed within {:?} after the kill; VMI history:\n{}",
                        LEASE_TIMEOUT + FAIL_SLACK,
                        history_text(&history, t0)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let took = failed.0.duration_since(killed_at);
            eprintln!(
                "node-failure: kill -> VMI {name} Failed: {:.1} s (lease timeout {} s, reason {:?})",
                took.as_secs_f64(),
                LEASE_TIMEOUT.as_secs(),
                failed.1.reason
            );
            if failed.1.reason.as_deref() != Some("NodeUnresponsive") {
                return Err(format!(
                    "{name} failed with reason {:?}, want NodeUnresponsive",
                    failed.1.reason
                ));
            }
            if took > LEASE_TIMEOUT + FAIL_SLACK {
                return Err(format!(
                    "{name} failed {took:?} after the kill, want within {:?}",
                    LEASE_TIMEOUT + FAIL_SLACK
                ));
            }
            to_failed = to_failed.max(took);
        }

        // The VM runs again on node-2, a new VMI whose guest boots.
        let deadline = Instant::now() + BOOT + Duration::from_secs(60);
        let new = loop {
            if let Ok(Some(v)) = vmis.get_opt(VM).await
                && v.uid().as_deref() != Some(old_uid.as_str())
                && v.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running)
            {
                break v;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no new VMI of {VM} Running after the kill; VMI history:\n{}",
                    history_text(&history, t0)
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let to_running = killed_at.elapsed();
        let new_uid = new.uid().ok_or("a VMI without uid")?;
        let on = new.status.as_ref().and_then(|s| s.node_name.clone());
        if on.as_deref() != Some(n2.as_str()) {
            return Err(format!("the new VMI {new_uid} runs on {on:?}, want {n2}"));
        }
        eprintln!(
            "node-failure: kill -> new VMI Running on {n2}: {:.1} s",
            to_running.as_secs_f64()
        );
        let mut con = console(&admin, ns).await?;
        con.expect_from(0, GUEST_MARKER, BOOT).await?;
        con.close().await;
        timing(t0, &format!("{VM} ({new_uid}) Running on {n2}, booted"));

        // node-1 comes back: its stale domain goes, nothing of the VM runs
        // there, and the VM's VMI stays the one on node-2.
        let back_at = Instant::now();
        world.nodes[0].restart()?;
        timing(
            t0,
            &format!(
                "{n1} booted again in {:.1} s",
                back_at.elapsed().as_secs_f64()
            ),
        );
        // The VM's stale domain first (acceptance 5), the lone VMI's within
        // the same time, watched until the checks below are done.
        let mut ran_on_n1 = false;
        let mut first_look = None;
        let mut lone_gone: Option<Duration> = None;
        let mut look = |ran: &mut bool| -> Result<Vec<String>, String> {
            let (names, active) = vm_domains(&uri1, ns, &[VM, LONE])?;
            *ran |= active;
            if lone_gone.is_none()
                && domains_of(&uri1, &lone_uid).is_empty()
                && !names.contains(&ironvirt_crds::wire::domain_name(ns, LONE))
            {
                lone_gone = Some(back_at.elapsed());
            }
            Ok(names)
        };
        let deadline = back_at + FENCE;
        loop {
            let names = look(&mut ran_on_n1)?;
            first_look.get_or_insert_with(|| names.clone());
            let mine = domains_of(&uri1, &old_uid);
            if mine.is_empty() && !names.contains(&dom) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{n1} still has {names:?} ({old_uid}'s: {mine:?}) {FENCE:?} after it came back"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let to_fenced = back_at.elapsed();
        eprintln!(
            "node-failure: restart -> {VM}'s stale domain gone: {:.1} s (seen right after the restart: {first_look:?})",
            to_fenced.as_secs_f64()
        );
        wait_ready_and_renewing(&admin, &n1, Duration::from_secs(60)).await?;
        // Two more handler resyncs (5 s), and the lone VMI's time: nothing
        // of the VM comes back on node-1, nothing runs there.
        let settle = (Instant::now() + Duration::from_secs(10)).max(back_at + FENCE);
        while Instant::now() < settle {
            let names = look(&mut ran_on_n1)?;
            if names.contains(&dom) {
                return Err(format!("{n1} has {names:?} again after it came back"));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        if ran_on_n1 {
            return Err(format!(
                "a domain of {VM} or {LONE} ran on {n1} after it came back"
            ));
        }
        let list = vmis
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let mut now: Vec<(String, String, Option<Phase>, Option<String>)> = list
            .items
            .iter()
            .map(|v| {
                (
                    v.name_any(),
                    v.uid().unwrap_or_default(),
                    v.status.as_ref().and_then(|s| s.phase),
                    v.status.as_ref().and_then(|s| s.node_name.clone()),
                )
            })
            .collect();
        now.sort_by(|a, b| a.0.cmp(&b.0));
        let want = [
            (
                LONE.to_owned(),
                lone_uid.clone(),
                Some(Phase::Failed),
                Some(n1.clone()),
            ),
            (
                VM.to_owned(),
                new_uid.clone(),
                Some(Phase::Running),
                Some(n2.clone()),
            ),
        ];
        if now != want {
            return Err(format!(
                "the namespace's VMIs after {n1} came back: {now:?}; want {want:?}"
            ));
        }
        let (names2, active2) = vm_domains(&uri2, ns, &[VM, LONE])?;
        if names2 != [dom.clone()] || !active2 || domains_of(&uri2, &new_uid) != [dom.clone()] {
            return Err(format!(
                "{n2} has {names2:?} (active: {active2}), want {dom} of {new_uid} running"
            ));
        }
        // What node-1's handler did after it came back (plain text).
        let log = world.nodes[0].handler_log();
        let since = log.rfind("handler running").unwrap_or(0);
        let plain = strip_ansi(&log[since..]);
        let evidence: Vec<&str> = plain
            .lines()
            .filter(|l| !l.contains("DEBUG") || l.contains("step="))
            .filter(|l| l.contains(&old_uid) || l.contains(&lone_uid) || l.contains("_phoenix") || l.contains("name=lone"))
            .take(12)
            .collect();
        eprintln!(
            "node-failure: {n1}'s handler after it came back:\n{}",
            evidence.join("\n")
        );
        eprintln!(
            "node-failure summary: kill -> Failed {:.1} s; kill -> Running on {n2} {:.1} s; restart -> {VM}'s stale domain gone {:.1} s; {LONE}'s (Failed, not deleted) {}",
            to_failed.as_secs_f64(),
            to_running.as_secs_f64(),
            to_fenced.as_secs_f64(),
            lone_gone.map_or_else(
                || format!("still defined after {FENCE:?}"),
                |d| format!("gone after {:.1} s", d.as_secs_f64())
            )
        );
        // Last, so that everything above is checked first: the stale domain
        // of a VMI that failed with the node but still exists (no VM deletes
        // it) must go too ("node-1 coming back destroys its stale domains").
        if lone_gone.is_none() {
            return Err(format!(
                "{n1} came back and still has the (shut off) domain of {LONE} ({lone_uid}, Failed NodeUnresponsive on {n1}) after {FENCE:?}: {:?}",
                domains_of(&uri1, &lone_uid)
            ));
        }
        Ok(())
    }
    .await;
    watch.abort();
    eprintln!("VMI history:\n{}", history_text(&history, t0));
    outcome
}
