//! Several real nodes on one machine (issue #18): each node gets
//! - its own network namespace (`ivn-<tag>-<node>`) with one address on a
//!   bridge the test bed creates in the host namespace (`ivb<tag>`, the
//!   host's side is `.1` of a private /24, node k is `.(10+k)`), and no
//!   other route: traffic between nodes stays on the bridge;
//! - its own mount namespace (persisted as `<state>/nodes/.ns/<node>.mnt`)
//!   in which node-private directories are bind-mounted over /run/libvirt,
//!   /var/lib/libvirt, /var/log/libvirt, /etc/libvirt, /var/cache/libvirt,
//!   /run/ironvirt, /run/netns and /var/lib/ironvirt/handler (the handler's
//!   state, at the same path in every node);
//! - in both namespaces its own virtlogd and libvirtd (own pidfiles, own
//!   `host_uuid`), reachable from the host at
//!   `qemu:///system?socket=<state>/nodes/<node>/run/libvirt-sock`, and its
//!   own ironvirt-handler (`--libvirt-uri qemu:///system`, which inside the
//!   namespaces is the node's libvirtd) serving its streams on the node's
//!   address;
//! - a forwarder ([`crate::forward`]) in the host namespace that listens on
//!   the node namespace's 127.0.0.1 and relays to the control plane's ports
//!   on the host's 127.0.0.1, so that the handler's kubeconfig
//!   (`https://127.0.0.1:<port>`, verified against the cluster CA) works
//!   unchanged and nothing listens outside loopback and the bridge.
//!
//! ironvirt-api (host namespace) reaches a handler at the stream URL it
//! publishes (`https://<node address>:<port>`) through the bridge, and
//! verifies its certificate for `<node>.ironvirt-handler` as everywhere.
//!
//! Every process runs under the bed's [`Supervisor`] (pid files in
//! `<state>/pids`); [`stop_node`] and [`down_all`] also kill whatever else
//! still runs in a node's namespaces (QEMU, passt), unmount, and remove the
//! namespaces, the veth pairs and the bridge, also after `kill -9` of
//! everything. Records in `<state>/nodes/` say what exists; names carry a
//! tag derived from the state directory, so that beds never touch each
//! other's nodes.
//!
//! A node's machine can also die and come back ([`kill_node`],
//! [`restart_node`]: every process killed, its disk kept, booted again with
//! the same name, address and state; module [`lifecycle`]).

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::process::{ProcessError, Supervisor};

mod bridge;
mod cgroups;
mod layout;
mod libvirt;
mod namespaces;
mod start;
mod teardown;

pub mod lifecycle;
pub use layout::{net_record, nodes_dir, record, records, tag};
pub use lifecycle::{kill_node, restart_node};
pub use namespaces::{mounts_under, pids_in};
pub use start::start_node;
pub use teardown::{down_all, stop_node};

/// Environment variable choosing the nodes' /24 (`a.b.c.0/24`); unset: the
/// first /24 of 10.213.0.0/16 that no interface or route of the host uses.
pub const SUBNET_ENV: &str = "IRONVIRT_NODE_SUBNET";

/// The node directories bind-mounted in a node's mount namespace, as
/// (directory under the node's directory, path inside the namespace).
pub const NODE_MOUNTS: &[(&str, &str)] = &[
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("log", "/var/log/libvirt"),
    ("etc", "/etc/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("ironvirt-run", "/run/ironvirt"),
    ("netns", "/run/netns"),
    ("handler", NODE_HANDLER_STATE),
];

/// The handler's state directory inside every node: the same path on each,
/// as on the machines of a real cluster, so that a VMI's files have the same
/// paths wherever it runs.
pub const NODE_HANDLER_STATE: &str = "/var/lib/ironvirt/handler";

const NSENTER: &str = "nsenter";

/// What can go wrong with a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{0}")]
    Config(String),
    #[error("no /24 in 10.213.0.0/16 is free for the nodes' bridge; set {SUBNET_ENV}")]
    NoSubnet,
    #[error("{what} of node {node} did not start: {reason}; last lines of {log}:\n{tail}")]
    Start {
        what: &'static str,
        node: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("record {path}: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("processes of node {node} survived SIGKILL: {pids:?}")]
    Unkillable { node: String, pids: Vec<u32> },
}

type Result<T, E = NodeError> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs `program args`; its stdout, or an error with its stderr.
fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = format!(
        "{program} {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new(program)
        .args(&args)
        .output()
        .map_err(|e| NodeError::Command {
            command: command.clone(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NodeError::Command {
            command,
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn supervisor(layout: &Layout) -> Supervisor {
    Supervisor::new(layout.pids(), layout.logs())
}

/// The bridge of a bed's nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetRecord {
    pub tag: String,
    pub bridge: String,
    /// The /24's network address.
    pub subnet: Ipv4Addr,
    /// The host's address on the bridge (`.1`).
    pub host_addr: Ipv4Addr,
}

/// One node of a bed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// k of node k: its address is `.(10+k)`.
    pub index: u8,
    /// Its network namespace (`ip netns` name).
    pub netns: String,
    /// The host's end of its veth pair (on the bridge).
    pub veth: String,
    /// Its address on the bridge.
    pub addr: Ipv4Addr,
    /// `<state>/nodes/<node>`.
    pub dir: PathBuf,
    /// The file its mount namespace is persisted at.
    pub mntns: PathBuf,
    /// libvirtd's host UUID.
    pub host_uuid: String,
}

impl NodeRecord {
    /// `/run/netns/<netns>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// Its libvirtd, from the host's namespaces.
    pub fn libvirt_uri(&self) -> String {
        format!(
            "qemu:///system?socket={}",
            self.dir.join("run").join("libvirt-sock").display()
        )
    }

    /// Its libvirtd's TLS endpoint, as another node's libvirtd opens it
    /// (a migration's destination, [`crate::nodetls`]).
    pub fn tls_uri(&self) -> String {
        crate::nodetls::tls_uri(self.addr)
    }

    /// QEMU's migration URI to this node.
    pub fn migration_uri(&self) -> String {
        crate::nodetls::migration_uri(self.addr)
    }

    /// The handler's state directory, from the host ([`NODE_HANDLER_STATE`]
    /// inside the node).
    pub fn handler_state_dir(&self) -> PathBuf {
        self.dir.join("handler")
    }

    /// The supervisor name of one of its processes (`<node>-libvirtd`, …).
    pub fn process(&self, what: &str) -> String {
        process_name(&self.name, what)
    }

    /// Runs a command inside the node's namespaces (`nsenter`); its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all: Vec<std::ffi::OsString> = self.wrapper().into_iter().map(Into::into).collect();
        all.remove(0);
        all.push(program.into());
        all.extend(args.iter().map(Into::into));
        run(NSENTER, all)
    }

    /// `nsenter --mount=… --net=… --`: runs its arguments in the node.
    fn wrapper(&self) -> Vec<String> {
        vec![
            NSENTER.to_owned(),
            format!("--mount={}", self.mntns.display()),
            format!("--net={}", self.netns_path().display()),
            "--".to_owned(),
        ]
    }
}

/// The supervisor name of process `what` of `node`.
pub fn process_name(node: &str, what: &str) -> String {
    format!("{node}-{what}")
}

/// The processes of a node, in start order.
pub const NODE_PROCESSES: &[&str] = &["virtlogd", "libvirtd", "forward", "handler"];

/// The node's handler: what [`start_node`] runs inside the node.
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    pub bin: PathBuf,
    /// Its identity (kubeconfig, serving certificate).
    pub identity: crate::handlers::HandlerIdentity,
    /// `--health-addr` inside the node (default 127.0.0.1:0 there).
    pub health_addr: Option<SocketAddr>,
    /// More arguments (`--register-node`, `--domain-type`, labels, …).
    pub args: Vec<String>,
    /// More environment (`RUST_LOG`, …); KUBECONFIG is the identity's.
    pub env: Vec<(String, String)>,
}

/// What [`start_node`] starts.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    /// Host ports the node reaches on its own 127.0.0.1 (kube-apiserver,
    /// the registry).
    pub forward_ports: Vec<u16>,
    /// The `ironvirt-testbed` binary (runs the forwarder).
    pub testbed_bin: PathBuf,
    pub handler: HandlerSpec,
}
