//! Running `ironvirt-operator` for a test, scoped to the test's namespace, and
//! simulated nodes: a Node object, a handler Lease renewed in the background,
//! and a stand-in handler that moves placed VMIs to Running (or Failed) and
//! releases the VMI finalizer on deletion, as the real handler does. Every
//! name the operator and a handler share comes from [`ironvirt_crds::wire`].

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::wire::{
    HANDLER_LEASE_NAMESPACE, NODE_NAME_LABEL, SCHEDULABLE_LABEL, VMI_FINALIZER, handler_lease_name,
};
use ironvirt_testbed::TestBed;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// Label that ties simulated nodes to one test's operator.
pub const TEST_NODE_LABEL: &str = "ironvirt.io/test-ns";
/// Where handler (and kubelet) Leases live.
pub const LEASE_NAMESPACE: &str = HANDLER_LEASE_NAMESPACE;

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::kubectl::repo_root().join("target"))
}

/// A running operator process; killed when dropped.
pub struct Operator {
    child: Option<Child>,
    /// Started under IRONVIRT_OPERATOR_WRAP: the wrapper (heaptrack is a
    /// shell script) runs the operator as its child, in a process group of
    /// their own, and signals go to the whole group; a signal to the wrapper
    /// alone left the operator running.
    group: bool,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts the debug `ironvirt-operator` for namespace `ns` with extra arguments.
    pub fn start(bed: &TestBed, ns: &str, identity: &str, extra: &[&str]) -> Operator {
        Self::start_profile(bed, "debug", ns, identity, extra)
    }

    /// Starts `ironvirt-operator` from the `profile` build (debug or release).
    pub fn start_profile(
        bed: &TestBed,
        profile: &str,
        ns: &str,
        identity: &str,
        extra: &[&str],
    ) -> Operator {
        let bin = target_dir().join(profile).join("ironvirt-operator");
        assert!(
            bin.is_file(),
            "{} is missing; run `cargo build --workspace`",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let log = bed
            .info()
            .logs_dir
            .join(format!("operator-{ns}-{identity}.log"));
        // Appended to: an operator started again under the same identity (a
        // chaos restart) keeps the log of the one before.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("operator log");
        // IRONVIRT_OPERATOR_WRAP: a command to run the operator under, e.g.
        // "heaptrack -o /tmp/op" for a heap profile (pid and RSS are then the
        // wrapper's).
        let wrap: Vec<String> = std::env::var("IRONVIRT_OPERATOR_WRAP")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut command = match wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                std::os::unix::process::CommandExt::process_group(&mut c, 0);
                c
            }
            None => Command::new(&bin),
        };
        let child = command
            .env("KUBECONFIG", &bed.info().kubeconfig)
            .env("RUST_LOG", "info,ironvirt_operator=debug,kube_runtime=warn")
            .args(["--namespace", ns])
            .args(["--node-label-selector", &format!("{TEST_NODE_LABEL}={ns}")])
            .args(["--leader-election-namespace", ns])
            .args(["--identity", identity])
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start ironvirt-operator");
        Operator {
            child: Some(child),
            group: !wrap.is_empty(),
            metrics_port: port,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; returns
    /// its exit code (None when it did not exit in time or died by a signal).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let target = self.signal_target()?;
        let child = self.child.as_mut()?;
        let _ = Command::new("kill").args(["-TERM", "--", &target]).status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kills the operator with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if self.group
            && let Some(target) = self.signal_target()
        {
            let _ = Command::new("kill").args(["-KILL", "--", &target]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What `kill` signals: the process, or its group (`-pid`) when wrapped.
    fn signal_target(&self) -> Option<String> {
        let pid = self.child.as_ref()?.id();
        Some(if self.group {
            format!("-{pid}")
        } else {
            pid.to_string()
        })
    }

    /// The value of a metric line starting with `prefix`, summed.
    pub async fn metric(&self, prefix: &str) -> f64 {
        scrape(self.metrics_port, prefix).await
    }

    /// Whether the operator answers 200 on /readyz: it serves health before
    /// it waits for the CRDs and then for leadership, and turns ready in
    /// between, so a ready replica is in the election.
    pub async fn ready(&self) -> bool {
        http_get(self.metrics_port, "/readyz")
            .await
            .is_some_and(|r| r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
    }

    /// The operator's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a simulated node's stand-in handler treats placed VMIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Scheduled → Running and Ready.
    Run,
    /// Scheduled → Failed (a crashing guest).
    Fail,
    /// Scheduled → Succeeded (a guest that powers off at once).
    Succeed,
}

/// A simulated node; `stop` removes it.
pub struct FakeNode {
    pub name: String,
    client: Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl FakeNode {
    /// Registers a node with `cpu` cores and `memory` (e.g. "4Gi"), for namespace `ns`.
    pub async fn start(
        client: Client,
        ns: &str,
        name: &str,
        cpu: &str,
        memory: &str,
        behavior: Behavior,
    ) -> FakeNode {
        let nodes: Api<Node> = Api::all(client.clone());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {
                SCHEDULABLE_LABEL: "true",
                TEST_NODE_LABEL: ns,
            }},
        }))
        .expect("node");
        let _ = nodes.delete(name, &DeleteParams::default()).await;
        wait_gone(&nodes, name).await;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        let status = json!({"status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": ready_condition(),
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .expect("node status");
        let mut node = FakeNode {
            name: name.to_owned(),
            client: client.clone(),
            tasks: Vec::new(),
        };
        node.renew_lease().await;
        // New Nodes get the node.kubernetes.io/not-ready taint at admission; the
        // node lifecycle controller lifts it once it sees the Ready heartbeat.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tainted = nodes.get(name).await.ok().is_some_and(|n| {
                n.spec
                    .and_then(|s| s.taints)
                    .unwrap_or_default()
                    .iter()
                    .any(|t| t.key.starts_with("node.kubernetes.io/"))
            });
            if !tainted || Instant::now() > deadline {
                break;
            }
            node.renew_lease().await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let lease_node = name.to_owned();
        let lease_client = client.clone();
        node.tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                renew(&lease_client, &lease_node).await;
            }
        }));
        let handler_node = name.to_owned();
        let handler_ns = ns.to_owned();
        node.tasks.push(tokio::spawn(async move {
            loop {
                handle_once(&client, &handler_ns, &handler_node, behavior).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        node
    }

    async fn renew_lease(&self) {
        renew(&self.client, &self.name).await;
    }

    /// Stops renewing the Lease and handling VMIs: the node goes silent.
    pub fn go_silent(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Removes the node and its Lease.
    pub async fn stop(mut self) {
        self.go_silent();
        let nodes: Api<Node> = Api::all(self.client.clone());
        let _ = nodes.delete(&self.name, &DeleteParams::default()).await;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let _ = leases
            .delete(&handler_lease_name(&self.name), &DeleteParams::default())
            .await;
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

async fn wait_gone(nodes: &Api<Node>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && matches!(nodes.get_opt(name).await, Ok(Some(_))) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Ready node condition, as a kubelet posts it: without it the node lifecycle
/// controller taints the node not-ready and nothing may be placed there.
/// Sums the lines of `127.0.0.1:port/metrics` that start with `prefix` (0
/// when nothing answers).
pub async fn scrape(port: u16, prefix: &str) -> f64 {
    let Some(buf) = http_get(port, "/metrics").await else {
        return 0.0;
    };
    buf.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The body of `127.0.0.1:port/metrics` (empty when nothing answers).
pub async fn metrics_text(port: u16) -> String {
    let Some(buf) = http_get(port, "/metrics").await else {
        return String::new();
    };
    buf.split_once("\r\n\r\n")
        .map_or(buf.clone(), |(_, body)| body.to_owned())
}

/// The whole HTTP/1.0 response (status line, headers, body) of
/// `GET 127.0.0.1:port/path`, or `None` when nothing answers.
async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf).await;
    Some(buf)
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

pub fn ready_condition() -> serde_json::Value {
    let now = Timestamp::now().to_string();
    json!([{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "simulated node", "lastHeartbeatTime": now, "lastTransitionTime": now}])
}

/// Renews the handler Lease of `node` once, and the kubelet-style node Lease
/// and Ready heartbeat the node lifecycle controller watches.
pub async fn renew(client: &Client, node: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let kubelet_lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": node},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 40,
            "renewTime": MicroTime(Timestamp::now())},
    });
    let _ = leases
        .patch(
            node,
            &PatchParams::apply("fake-kubelet").force(),
            &Patch::Apply(&kubelet_lease),
        )
        .await;
    let name = handler_lease_name(node);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_owned()),
            lease_duration_seconds: Some(60),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        }),
    };
    let apply = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name},
        "spec": lease.spec,
    });
    let _ = leases
        .patch(
            &name,
            &PatchParams::apply("fake-handler").force(),
            &Patch::Apply(&apply),
        )
        .await;
}

/// One pass of the stand-in handler over the VMIs placed on `node`.
async fn handle_once(client: &Client, ns: &str, node: &str, behavior: Behavior) {
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{NODE_NAME_LABEL}={node}"));
    let Ok(list) = api.list(&lp).await else {
        return;
    };
    for vmi in list.items {
        let name = vmi.name_any();
        if vmi.metadata.deletion_timestamp.is_some() {
            let keep: Vec<String> = vmi
                .finalizers()
                .iter()
                .filter(|f| *f != VMI_FINALIZER)
                .cloned()
                .collect();
            let patch = json!({"metadata": {"finalizers": keep}});
            let _ = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
            continue;
        }
        let phase = vmi.status.as_ref().and_then(|s| s.phase);
        if phase != Some(ironvirt_crds::VirtualMachineInstancePhase::Scheduled) {
            continue;
        }
        let now = Timestamp::now().to_string();
        let (phase, ready) = match behavior {
            Behavior::Run => ("Running", "True"),
            Behavior::Fail => ("Failed", "False"),
            Behavior::Succeed => ("Succeeded", "False"),
        };
        let apply = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": now}],
                "phaseTransitionTimestamps": [{"phase": phase, "phaseTransitionTimestamp": now}],
            },
        });
        let _ = api
            .patch_status(
                &name,
                &PatchParams::apply("fake-handler").force(),
                &Patch::Apply(&apply),
            )
            .await;
    }
}

/// Polls `f` until it returns `Some`, or fails with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
