//! Real nodes for a test, each in namespaces of its own (issue #18): a
//! network namespace with an address on the bed's bridge, a mount namespace
//! with its own libvirt directories, its own virtlogd, libvirtd and
//! ironvirt-handler ([`ironvirt_testbed::nodes`]). A [`TestNode`] is stopped
//! and removed (processes, QEMU included, namespaces, veth, mounts; the
//! bridge with the bed's last node) when dropped; its pid files live in the
//! bed's `pids/`, so that `make stop` (`ironvirt-testbed down`) also removes
//! what a test that crashed left.
//!
//! A node's machine can die and come back: [`TestNode::kill`] kills every
//! process of it with SIGKILL, keeping its disk (directories, libvirt's
//! domain definitions, the handler's state); [`TestNode::restart`] boots it
//! again with the same name, address and state
//! ([`ironvirt_testbed::nodes::lifecycle`]).
//!
//! The handler runs as [`crate::handler::Handler`] runs it: its node's own
//! identity, `--register-node` with the test namespace's label (for that
//! namespace's operator, [`crate::e2e::NsOperator`]) and
//! `kubernetes.io/hostname=<node>` (for nodeSelectors), hostDisk on.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironvirt_crds::wire::handler_lease_name;
use ironvirt_testbed::TestBed;
use ironvirt_testbed::layout::Layout;
use ironvirt_testbed::nodes::{self, NodeRecord, NodeSpec};
use ironvirt_testbed::process::{Supervisor, process_alive};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams};

use crate::operator::{LEASE_NAMESPACE, TEST_NODE_LABEL, target_dir};

/// The label every node carries with its own name, as a kubelet sets it.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A node of the bed for one test; stopped and removed when dropped.
pub struct TestNode {
    layout: Layout,
    pub record: NodeRecord,
    /// The pids of its processes (virtlogd, libvirtd, forwarder, handler)
    /// of each start, the first one's first.
    pub pids: Vec<u32>,
    /// What it was started with (for [`TestNode::restart`]).
    spec: NodeSpec,
    stopped: bool,
}

/// Grants the handlers' group deploy/'s handler RBAC and lease policy, on a
/// thread of its own (a kube client lives on the runtime that made it).
fn install_access(kubeconfig: &std::path::Path) -> Result<(), String> {
    let kubeconfig = kubeconfig.to_owned();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let admin = ironvirt_testbed::controlplane::client_from_kubeconfig(&kubeconfig)
                .await
                .map_err(|e| e.to_string())?;
            ironvirt_testbed::handlers::install_access(&admin)
                .await
                .map_err(|e| e.to_string())
        })
    })
    .join()
    .map_err(|_| "installing the handlers' access panicked".to_owned())?
}

/// The port of kube-apiserver's URL.
fn api_port(url: &str) -> Result<u16, String> {
    url.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("no port in the API URL {url:?}"))
}

impl TestNode {
    /// Starts node `name` for test namespace `ns` (blocking: namespaces,
    /// libvirtd, forwarder, handler; about a second). A node of that name
    /// the bed already had is replaced.
    pub fn start(bed: &TestBed, ns: &str, name: &str) -> Result<TestNode, String> {
        Self::start_with(bed, ns, name, &[], &[])
    }

    /// [`TestNode::start`], with more of the host's loopback ports relayed
    /// into the node's loopback (a test registry, say) and more handler
    /// arguments.
    pub fn start_with(
        bed: &TestBed,
        ns: &str,
        name: &str,
        forward_ports: &[u16],
        handler_args: &[String],
    ) -> Result<TestNode, String> {
        let info = bed.info();
        install_access(&info.kubeconfig)?;
        let identity = ironvirt_testbed::handlers::ensure_identity(bed.layout(), info, name)
            .map_err(|e| format!("the identity of the handler of {name}: {e}"))?;
        let debug = target_dir().join("debug");
        let handler = debug.join("ironvirt-handler");
        let testbed_bin = debug.join("ironvirt-testbed");
        for bin in [&handler, &testbed_bin] {
            if !bin.is_file() {
                return Err(format!(
                    "{} is missing; run `cargo build --workspace`",
                    bin.display()
                ));
            }
        }
        let spec = NodeSpec {
            name: name.to_owned(),
            forward_ports: std::iter::once(api_port(&info.api_url)?)
                .chain(forward_ports.iter().copied())
                .collect(),
            testbed_bin,
            handler: nodes::HandlerSpec {
                bin: handler,
                identity,
                health_addr: None,
                args: [
                    "--domain-type",
                    "qemu",
                    "--register-node",
                    "--node-labels",
                    &format!("{TEST_NODE_LABEL}={ns},{HOSTNAME_LABEL}={name}"),
                    "--resync-seconds",
                    "5",
                    "--renew-seconds",
                    "2",
                    "--host-disk-root",
                    crate::hostdisk::ROOT,
                    "--migration-pki-dir",
                    ironvirt_testbed::nodetls::NODE_PKI_DIR,
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .chain(handler_args.iter().cloned())
                .collect(),
                env: vec![(
                    "RUST_LOG".into(),
                    "info,ironvirt_handler=debug,kube_runtime=warn".into(),
                )],
            },
        };
        let layout = bed.layout().clone();
        let record = nodes::start_node(&layout, &spec).map_err(|e| e.to_string())?;
        let pids = node_pids(&layout, &record);
        Ok(TestNode {
            layout,
            record,
            pids,
            spec,
            stopped: false,
        })
    }

    /// Kills the node's machine: SIGKILL to every process of it (handler,
    /// virtlogd, libvirtd, forwarder, QEMU, passt, …) at once, and its
    /// address off the bridge; its directories, libvirt's domain
    /// definitions and the handler's state stay. The pids killed.
    pub fn kill(&mut self) -> Result<Vec<u32>, String> {
        if self.stopped {
            return Err(format!("node {} was stopped", self.record.name));
        }
        nodes::kill_node(&self.layout, &self.record.name).map_err(|e| e.to_string())
    }

    /// Boots the node again after [`TestNode::kill`] (blocking): the same
    /// name, address and directories, a fresh `/run`, then virtlogd,
    /// libvirtd, forwarder and a handler with the arguments it started
    /// with. A node that runs is killed first.
    pub fn restart(&mut self) -> Result<(), String> {
        if self.stopped {
            return Err(format!("node {} was stopped", self.record.name));
        }
        self.record = nodes::restart_node(&self.layout, &self.spec).map_err(|e| e.to_string())?;
        for pid in node_pids(&self.layout, &self.record) {
            if !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
        Ok(())
    }

    /// The pid of its process `what` (`handler`, `libvirtd`, …) when it
    /// runs.
    pub fn process_pid(&self, what: &str) -> Option<u32> {
        let name = self.record.process(what);
        Supervisor::new(self.layout.pids(), self.layout.logs())
            .recorded()
            .into_iter()
            .find(|r| r.name == name && Supervisor::is_running(r))
            .map(|r| r.pid)
    }

    /// Starts its handler (and forwarder) again, as after the handler
    /// crashed, with the arguments it started with (blocking). Its libvirtd
    /// must run: a node without one would be started from scratch.
    pub fn restart_handler(&mut self) -> Result<(), String> {
        if self.stopped {
            return Err(format!("node {} was stopped", self.record.name));
        }
        if self.process_pid("libvirtd").is_none() {
            return Err(format!(
                "node {}: its libvirtd does not run; start it first",
                self.record.name
            ));
        }
        nodes::start_node(&self.layout, &self.spec).map_err(|e| e.to_string())?;
        self.note_pids();
        Ok(())
    }

    /// Starts its libvirtd again, as after libvirtd crashed (its guests'
    /// QEMUs kept running), with the command line the node starts it with,
    /// and waits until it answers (blocking, at most 30 s).
    pub fn restart_libvirtd(&mut self) -> Result<(), String> {
        if self.stopped {
            return Err(format!("node {} was stopped", self.record.name));
        }
        if let Some(pid) = self.process_pid("libvirtd") {
            return Err(format!(
                "node {}: its libvirtd runs (pid {pid})",
                self.record.name
            ));
        }
        let rec = &self.record;
        let wrapper = vec![
            "nsenter".to_owned(),
            format!("--mount={}", rec.mntns.display()),
            format!("--net={}", rec.netns_path().display()),
            "--".to_owned(),
        ];
        let started = Supervisor::new(self.layout.pids(), self.layout.logs())
            .spawn_in(
                &rec.process("libvirtd"),
                &wrapper,
                std::path::Path::new("/usr/sbin/libvirtd"),
                &[
                    "--listen".into(),
                    "-p".into(),
                    "/run/libvirt/libvirtd.pid".into(),
                ],
                &[],
            )
            .map_err(|e| format!("starting the libvirtd of {}: {e}", rec.name))?;
        self.note_pids();
        let uri = self.libvirt_uri();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if virt::connect::Connect::open(Some(&uri)).is_ok() {
                return Ok(());
            }
            if !process_alive(started.pid) || Instant::now() > deadline {
                return Err(format!(
                    "the libvirtd of {} (pid {}) did not answer on {uri} within 30 s",
                    self.record.name, started.pid
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn note_pids(&mut self) {
        for pid in node_pids(&self.layout, &self.record) {
            if !self.pids.contains(&pid) {
                self.pids.push(pid);
            }
        }
    }

    /// Starts `count` nodes `<prefix>-1` … `<prefix>-<count>` for test
    /// namespace `ns` (a bed with N nodes); those started are stopped again
    /// when one fails.
    pub fn start_many(
        bed: &TestBed,
        ns: &str,
        prefix: &str,
        count: usize,
    ) -> Result<Vec<TestNode>, String> {
        (1..=count)
            .map(|k| TestNode::start(bed, ns, &format!("{prefix}-{k}")))
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// Its libvirtd, from the host: `qemu:///system?socket=…`.
    pub fn libvirt_uri(&self) -> String {
        self.record.libvirt_uri()
    }

    /// Its address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.record.addr
    }

    /// Its handler's log so far.
    pub fn handler_log(&self) -> String {
        let path = self
            .layout
            .logs()
            .join(format!("{}.log", self.record.process("handler")));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Every TCP listener inside the node's network namespace.
    pub fn listeners(&self) -> Result<Vec<Listener>, String> {
        listeners(Some(&self.record.netns))
    }

    /// Stops the node and removes it from the machine (idempotent).
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        nodes::stop_node(&self.layout, &self.record.name).map_err(|e| e.to_string())
    }

    /// Stops the node and deletes its Node and Leases.
    pub async fn remove(mut self, client: &Client) -> Result<(), String> {
        self.stop()?;
        delete_node_objects(client, &self.record.name).await;
        Ok(())
    }

    /// The cgroups libvirt made for the node's domains that exist now.
    pub fn domain_cgroups(&self) -> Vec<PathBuf> {
        nodes::lifecycle::domain_cgroups(&self.layout, &self.record.name)
    }

    /// What is left of the node on the machine after [`TestNode::stop`]:
    /// its network namespace, veth, mount-namespace file or mounts, a
    /// process of it still running; empty when nothing is.
    pub fn leftovers(&self) -> Vec<String> {
        let rec = &self.record;
        let mut left = Vec::new();
        if rec.netns_path().exists() {
            left.push(format!("network namespace {}", rec.netns));
        }
        if link_exists(&rec.veth) {
            left.push(format!("veth {}", rec.veth));
        }
        if rec.mntns.exists() {
            left.push(format!("mount namespace file {}", rec.mntns.display()));
        }
        for m in nodes::mounts_under(&rec.dir) {
            left.push(format!("mount {}", m.display()));
        }
        for pid in self.pids.iter().filter(|p| process_alive(**p)) {
            left.push(format!("process {pid}"));
        }
        if let Ok(entries) = std::fs::read_dir(&rec.dir) {
            for e in entries.flatten().filter(|e| e.file_name() != "log") {
                left.push(format!("file {}", e.path().display()));
            }
        }
        left
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping node {}: {e}", self.record.name);
        }
    }
}

/// The pids of the node's supervised processes now.
fn node_pids(layout: &Layout, record: &NodeRecord) -> Vec<u32> {
    let wanted: Vec<String> = nodes::NODE_PROCESSES
        .iter()
        .map(|p| record.process(p))
        .collect();
    Supervisor::new(layout.pids(), layout.logs())
        .recorded()
        .into_iter()
        .filter(|r| wanted.contains(&r.name))
        .map(|r| r.pid)
        .collect()
}

/// Deletes the Node `name` and its Leases.
pub async fn delete_node_objects(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    for l in [handler_lease_name(name), name.to_owned()] {
        let _ = leases.delete(&l, &DeleteParams::default()).await;
    }
}

/// Whether a network interface of the host's namespace exists.
pub fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The bed's bridge (name, host address), when it has one.
pub fn bridge(layout: &Layout) -> Option<(String, Ipv4Addr)> {
    nodes::net_record(layout)
        .ok()
        .flatten()
        .map(|n| (n.bridge, n.host_addr))
}

/// A TCP listener as `ss -ltnpH` shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listener {
    pub addr: Option<IpAddr>,
    /// The local address column as printed (`127.0.0.1:6443`, `*:22`, …).
    pub local: String,
    /// The process column (`users:(("name",pid=…))`), when ss shows it.
    pub process: String,
}

impl Listener {
    /// Whether it listens on loopback only.
    pub fn loopback(&self) -> bool {
        self.addr.is_some_and(|a| a.is_loopback())
    }
}

/// Parses the output of `ss -ltnpH`.
pub fn parse_ss(text: &str) -> Vec<Listener> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let local = (*cols.get(3)?).to_owned();
            let host = local.rsplit_once(':').map_or("", |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = host.split('%').next().unwrap_or(host);
            Some(Listener {
                addr: host.parse().ok(),
                local,
                process: cols.get(5).copied().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// Every TCP listener in the host's network namespace (`None`) or in the
/// named one.
pub fn listeners(netns: Option<&str>) -> Result<Vec<Listener>, String> {
    let out = match netns {
        None => std::process::Command::new("ss").arg("-ltnpH").output(),
        Some(ns) => std::process::Command::new("ip")
            .args(["netns", "exec", ns, "ss", "-ltnpH"])
            .output(),
    }
    .map_err(|e| format!("ss: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ss in {netns:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(parse_ss(&String::from_utf8_lossy(&out.stdout)))
}

/// The listeners of `now` that `before` did not have.
pub fn new_listeners(before: &[Listener], now: &[Listener]) -> Vec<Listener> {
    let known: BTreeSet<&str> = before.iter().map(|l| l.local.as_str()).collect();
    now.iter()
        .filter(|l| !known.contains(l.local.as_str()))
        .cloned()
        .collect()
}

/// Waits until the Node `name` is Ready and its handler's Lease was renewed
/// after this call (so it renews, not just registered once).
pub async fn wait_ready_and_renewing(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let deadline = Instant::now() + timeout;
    let mut first_renew = None;
    loop {
        let ready = nodes.get_opt(name).await.ok().flatten().is_some_and(|n| {
            n.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        let renew = leases
            .get_opt(&handler_lease_name(name))
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.renew_time)
            .map(|t| t.0.to_string());
        if let Some(r) = &renew {
            match &first_renew {
                None => first_renew = Some(r.clone()),
                Some(first) if ready && first != r => return Ok(()),
                Some(_) => {}
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node {name}: Ready {ready}, handler Lease renewTime first {first_renew:?}, last {renew:?} within {timeout:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The node directories of the bed (for checks): `<state>/nodes`.
pub fn nodes_dir(layout: &Layout) -> PathBuf {
    nodes::nodes_dir(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_listeners() {
        let text = "LISTEN 0      4096       127.0.0.1:44129      0.0.0.0:*    users:((\"kube-apiserver\",pid=1,fd=3))\n\
                    LISTEN 0      128          0.0.0.0:2024       0.0.0.0:*\n\
                    LISTEN 0      4096           [::1]:46057         [::]:*    users:((\"ironvirt-api\",pid=2,fd=9))\n\
                    LISTEN 0      4096    10.213.0.11%eth0:44389      0.0.0.0:*\n\
                    LISTEN 0      128                *:22               *:*\n";
        let l = parse_ss(text);
        assert_eq!(l.len(), 5);
        assert!(l[0].loopback());
        assert!(l[0].process.contains("kube-apiserver"));
        assert!(!l[1].loopback());
        assert_eq!(l[1].addr, Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)));
        assert!(l[2].loopback());
        assert_eq!(l[3].addr, Some(IpAddr::V4(Ipv4Addr::new(10, 213, 0, 11))));
        assert_eq!(l[4].addr, None, "a wildcard is no loopback");
        assert_eq!(new_listeners(&l[..2], &l), l[2..].to_vec());
    }
}
