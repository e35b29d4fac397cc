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

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::mount::{MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::process::{ProcessError, Supervisor, process_alive};

pub mod lifecycle;
pub use lifecycle::{kill_node, restart_node};

/// Environment variable choosing the nodes' /24 (`a.b.c.0/24`); unset: the
/// first /24 of 10.213.0.0/16 that no interface or route of the host uses.
pub const SUBNET_ENV: &str = "IRONVIRT_NODE_SUBNET";
/// Where the automatic choice starts.
const AUTO_BASE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
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
const VIRTLOGD_BIN: &str = "/usr/sbin/virtlogd";
const LIBVIRTD_BIN: &str = "/usr/sbin/libvirtd";
const NSENTER: &str = "nsenter";
/// How long libvirtd may take to answer (its first start probes QEMU).
const LIBVIRTD_START: Duration = Duration::from_secs(120);

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

/// The bed's tag: 6 hex digits of a hash (FNV-1a) of its state directory,
/// in every name a bed's nodes use on the machine.
pub fn tag(layout: &Layout) -> String {
    let path = fs::canonicalize(layout.root()).unwrap_or_else(|_| layout.root().to_owned());
    let mut h: u32 = 0x811c_9dc5;
    for b in path.as_os_str().as_encoded_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{:06x}", h & 0x00ff_ffff)
}

/// `<state>/nodes`.
pub fn nodes_dir(layout: &Layout) -> PathBuf {
    layout.root().join("nodes")
}

fn ns_dir(layout: &Layout) -> PathBuf {
    nodes_dir(layout).join(".ns")
}

fn net_record_path(layout: &Layout) -> PathBuf {
    nodes_dir(layout).join("net.json")
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

/// A valid node name: a DNS label (it names the handler's certificate and a
/// network namespace).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NodeError::Config(format!(
            "invalid node name {name:?}: lowercase letters, digits and '-', at most 40"
        )))
    }
}

/// An exclusive lock on a file, held until dropped.
struct FileLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

fn lock(path: &Path) -> Result<FileLock> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| NodeError::Io {
            path: path.to_owned(),
            source: std::io::Error::from(errno),
        },
    )?;
    Ok(FileLock { _lock: lock })
}

fn lock_nodes(layout: &Layout) -> Result<FileLock> {
    lock(&nodes_dir(layout).join(".lock"))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| NodeError::Record {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| NodeError::Record {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, text).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// The bed's bridge, when it has one.
pub fn net_record(layout: &Layout) -> Result<Option<NetRecord>> {
    read_json(&net_record_path(layout))
}

/// Every node record of the bed, by index.
pub fn records(layout: &Layout) -> Result<Vec<NodeRecord>> {
    let dir = nodes_dir(layout);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let hidden = e.file_name().to_string_lossy().starts_with('.');
        if hidden || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Some(rec) = read_json::<NodeRecord>(&e.path().join("node.json"))? {
            out.push(rec);
        }
    }
    out.sort_by_key(|r| r.index);
    Ok(out)
}

/// The record of node `name`.
pub fn record(layout: &Layout, name: &str) -> Result<Option<NodeRecord>> {
    check_name(name)?;
    read_json(&nodes_dir(layout).join(name).join("node.json"))
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Deletes a network interface of the host's namespace; one that is gone
/// (or going: a veth whose peer's namespace was just deleted) is no error.
fn delete_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    match run("ip", ["link", "delete", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        other => other.map(drop),
    }
}

/// Whether two IPv4 prefixes overlap.
fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

/// The prefixes the host uses (interface addresses and routes), except on
/// `except` (the bed's own bridge).
fn host_prefixes(except: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    for line in run("ip", ["-4", "-o", "addr", "show"])?.lines() {
        let mut words = line.split_whitespace();
        let dev = words.nth(1).unwrap_or_default();
        if dev == except {
            continue;
        }
        if let Some(p) = words
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(parse_prefix)
        {
            out.push(p);
        }
    }
    for line in run("ip", ["-4", "-o", "route", "show", "table", "all"])?.lines() {
        if line.contains(&format!("dev {except} ")) || line.ends_with(&format!("dev {except}")) {
            continue;
        }
        let first = line
            .split_whitespace()
            .find(|w| !matches!(*w, "local" | "broadcast" | "unicast" | "blackhole"));
        if let Some(p) = first.and_then(parse_prefix) {
            // A host route (/32) on this machine's own addresses is no network.
            if p.1 < 32 {
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn parse_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    Some((a.parse().ok()?, l.parse().ok()?))
}

/// Parses `a.b.c.0/24`.
fn parse_subnet(s: &str) -> Result<Ipv4Addr> {
    let bad = || {
        NodeError::Config(format!(
            "{SUBNET_ENV}={s:?}: want a /24 such as 10.213.0.0/24"
        ))
    };
    let (addr, len) = parse_prefix(s).ok_or_else(bad)?;
    if len != 24 || u32::from(addr) & 0xff != 0 {
        return Err(bad());
    }
    Ok(addr)
}

/// Creates the bed's bridge when missing (under the nodes lock).
fn ensure_net(layout: &Layout) -> Result<NetRecord> {
    let tag = tag(layout);
    let bridge = format!("ivb{tag}");
    if let Some(rec) = net_record(layout)?
        && link_exists(&rec.bridge)
    {
        return Ok(rec);
    }
    // Machine-wide: two beds must not pick the same /24.
    let _machine = lock(Path::new("/run/lock/ironvirt-node-net.lock"))?;
    let used = host_prefixes(&bridge)?;
    let free = |net: Ipv4Addr| !used.iter().any(|(a, l)| overlaps(net, 24, *a, *l));
    let subnet = match std::env::var(SUBNET_ENV) {
        Ok(s) if !s.is_empty() => {
            let net = parse_subnet(&s)?;
            if !free(net) {
                return Err(NodeError::Config(format!(
                    "{SUBNET_ENV}={s}: the host already uses addresses in it"
                )));
            }
            net
        }
        _ => (0..=255u32)
            .map(|i| Ipv4Addr::from(u32::from(AUTO_BASE) + (i << 8)))
            .find(|n| free(*n))
            .ok_or(NodeError::NoSubnet)?,
    };
    let host_addr = Ipv4Addr::from(u32::from(subnet) + 1);
    let rec = NetRecord {
        tag,
        bridge: bridge.clone(),
        subnet,
        host_addr,
    };
    // Recorded first: `down` removes whatever part of it exists.
    write_json(&net_record_path(layout), &rec)?;
    if !link_exists(&bridge) {
        run("ip", ["link", "add", &bridge, "type", "bridge"])?;
    }
    run("ip", ["addr", "flush", "dev", &bridge])?;
    run(
        "ip",
        ["addr", "add", &format!("{host_addr}/24"), "dev", &bridge],
    )?;
    run("ip", ["link", "set", &bridge, "up"])?;
    // Nodes (and the guests behind them) open no connection to the host:
    // only replies to the host's own (ironvirt-api to a handler) come in.
    let rules = nodes_dir(layout).join("host.nft");
    fs::write(&rules, host_ruleset(&rec.tag, &bridge)).map_err(io_err(&rules))?;
    let _ = run("nft", ["delete", "table", "inet", &host_table(&rec.tag)]);
    run("nft", [OsStr::new("-f"), rules.as_os_str()])?;
    tracing::info!(bridge = %bridge, host = %host_addr, "node bridge up");
    Ok(rec)
}

/// The host's nftables table of a bed's bridge.
fn host_table(tag: &str) -> String {
    format!("ivnodes_{tag}")
}

/// What the host accepts from the bridge: replies, nothing new.
fn host_ruleset(tag: &str, bridge: &str) -> String {
    format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"{bridge}\" ct state established,related accept\n    iifname \"{bridge}\" drop\n  }}\n}}\n",
        table = host_table(tag)
    )
}

/// Unescapes a path of /proc/self/mountinfo (`\040` for a space, …).
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of this mount namespace at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out.dedup();
    out
}

/// The directory for the nodes' mount-namespace files: bind-mounted on
/// itself with private propagation, as a namespace file must be.
fn ensure_ns_dir(layout: &Layout) -> Result<PathBuf> {
    let dir = ns_dir(layout);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let dir = fs::canonicalize(&dir).map_err(io_err(&dir))?;
    if !mounts_under(&dir).contains(&dir) {
        nix::mount::mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| NodeError::Io {
            path: dir.clone(),
            source: e.into(),
        })?;
    }
    nix::mount::mount(
        None::<&str>,
        &dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| NodeError::Io {
        path: dir.clone(),
        source: e.into(),
    })?;
    Ok(dir)
}

/// A random host UUID (version 4).
fn host_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// libvirtd.conf of a node: the host's settings without its `host_uuid`,
/// plus the node's own.
fn libvirtd_conf(host: &str, uuid: &str) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| !l.trim_start().starts_with("host_uuid"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!(
        "# The node's own host UUID (ironvirt test bed).\nhost_uuid = \"{uuid}\"\n"
    ));
    out
}

/// The node's /etc/libvirt: the host's configuration files (qemu.conf:
/// user and group root, security_driver none) and nwfilters, no domain,
/// network or pool definitions; libvirtd.conf with its own `host_uuid`.
fn write_config(dir: &Path, uuid: &str) -> Result<()> {
    let etc = dir.join("etc");
    let host = Path::new("/etc/libvirt");
    let entries = fs::read_dir(host).map_err(io_err(host))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "conf") {
            let to = etc.join(e.file_name());
            fs::copy(&path, &to).map_err(io_err(&to))?;
        }
    }
    if host.join("nwfilter").is_dir() {
        run(
            "cp",
            [
                OsStr::new("-a"),
                host.join("nwfilter").as_os_str(),
                etc.as_os_str(),
            ],
        )?;
    }
    fs::create_dir_all(etc.join("qemu")).map_err(io_err(&etc))?;
    let host_conf = fs::read_to_string(host.join("libvirtd.conf")).unwrap_or_default();
    let conf = etc.join("libvirtd.conf");
    fs::write(&conf, libvirtd_conf(&host_conf, uuid)).map_err(io_err(&conf))?;
    // QEMU's capabilities as the host's libvirtd probed them: a node's first
    // start need not probe again (libvirtd re-probes when they are stale).
    let caps = Path::new("/var/cache/libvirt/qemu/capabilities");
    if caps.is_dir() {
        let to = dir.join("cache").join("qemu");
        fs::create_dir_all(&to).map_err(io_err(&to))?;
        let _ = run("cp", [OsStr::new("-a"), caps.as_os_str(), to.as_os_str()]);
    }
    Ok(())
}

/// The node's side of migration between nodes ([`crate::nodetls`]): its
/// certificate of the bed's libvirt CA, libvirtd's TLS listener on the
/// node's address, QEMU's migration over TLS.
fn write_migration_tls(layout: &Layout, rec: &NodeRecord) -> Result<()> {
    let etc = rec.dir.join("etc");
    crate::nodetls::write_node_pki(
        &crate::pki::Pki::new(layout.pki()),
        &etc,
        &rec.name,
        rec.addr,
    )
    .map_err(|e| NodeError::Config(format!("node {} certificate: {e}", rec.name)))?;
    for (file, extra) in [
        ("libvirtd.conf", crate::nodetls::libvirtd_conf(rec.addr)),
        ("qemu.conf", crate::nodetls::qemu_conf(rec.addr)),
    ] {
        let path = etc.join(file);
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&extra);
        fs::write(&path, text).map_err(io_err(&path))?;
    }
    Ok(())
}

/// The lowest index ≥ 1 no other node of the bed has.
fn free_index(layout: &Layout) -> Result<u8> {
    let used: BTreeSet<u8> = records(layout)?.iter().map(|r| r.index).collect();
    (1..=200u8)
        .find(|i| !used.contains(i))
        .ok_or_else(|| NodeError::Config("a bed has at most 200 nodes".into()))
}

fn supervisor(layout: &Layout) -> Supervisor {
    Supervisor::new(layout.pids(), layout.logs())
}

/// Starts node `spec.name` (replacing a node of that name the bed already
/// has): namespaces, bridge port, libvirt, forwarder and handler. On
/// failure, what was started is stopped again.
pub fn start_node(layout: &Layout, spec: &NodeSpec) -> Result<NodeRecord> {
    check_name(&spec.name)?;
    let _lock = lock_nodes(layout)?;
    if let Some(old) = record(layout, &spec.name)? {
        // A node that still runs keeps its namespaces, libvirtd and guests
        // (as the host's libvirtd does when `make run` runs again): only its
        // forwarder and handler start again, with `spec`'s settings.
        if let Some(net) = net_record(layout)?
            && node_alive(layout, &old, &net)
        {
            tracing::info!(node = %old.name, "node runs; restarting its forwarder and handler");
            start_services(layout, spec, &old, Instant::now())?;
            return Ok(old);
        }
        stop_node_locked(layout, &spec.name)?;
    }
    let net = ensure_net(layout)?;
    let index = free_index(layout)?;
    let dir = nodes_dir(layout).join(&spec.name);
    let rec = NodeRecord {
        name: spec.name.clone(),
        index,
        netns: format!("ivn-{}-{}", net.tag, spec.name),
        veth: format!("ivv{}{}", net.tag, index),
        addr: Ipv4Addr::from(u32::from(net.subnet) + 10 + u32::from(index)),
        dir: dir.clone(),
        mntns: ns_dir(layout).join(format!("{}.mnt", spec.name)),
        host_uuid: host_uuid(),
    };
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // Recorded before anything exists: a stop finds every part.
    write_json(&dir.join("node.json"), &rec)?;
    match start_locked(layout, spec, &net, &rec) {
        Ok(()) => Ok(rec),
        Err(e) => {
            tracing::error!(node = %rec.name, error = %e, "node start failed; stopping what was started");
            if let Err(stop) = stop_node_locked(layout, &rec.name) {
                tracing::error!(node = %rec.name, error = %stop, "cleanup after the failed start failed too");
            }
            Err(e)
        }
    }
}

fn start_locked(layout: &Layout, spec: &NodeSpec, net: &NetRecord, rec: &NodeRecord) -> Result<()> {
    let started = Instant::now();
    make_dirs(rec)?;
    write_config(&rec.dir, &rec.host_uuid)?;
    write_migration_tls(layout, rec)?;
    make_namespaces(layout, net, rec, started)?;
    start_libvirt(layout, rec, started)?;
    start_services(layout, spec, rec, started)
}

/// The node's directories and their mount points (idempotent).
fn make_dirs(rec: &NodeRecord) -> Result<()> {
    for (sub, target) in NODE_MOUNTS {
        let d = rec.dir.join(sub);
        fs::create_dir_all(&d).map_err(io_err(&d))?;
        fs::create_dir_all(target).map_err(io_err(Path::new(target)))?;
    }
    fs::create_dir_all(rec.handler_state_dir()).map_err(io_err(&rec.dir))
}

/// The node's network namespace (with its veth onto the bridge), its mount
/// namespace (with the node's directories over libvirt's and ironvirt's)
/// and its cgroup partition.
fn make_namespaces(
    layout: &Layout,
    net: &NetRecord,
    rec: &NodeRecord,
    started: Instant,
) -> Result<()> {
    make_dirs(rec)?;
    // Network: its namespace, loopback up, a veth pair onto the bridge.
    run("ip", ["netns", "add", &rec.netns])?;
    run("ip", ["-n", &rec.netns, "link", "set", "lo", "up"])?;
    run(
        "ip",
        [
            "link", "add", &rec.veth, "type", "veth", "peer", "name", "eth0", "netns", &rec.netns,
        ],
    )?;
    run(
        "ip",
        ["link", "set", &rec.veth, "master", &net.bridge, "up"],
    )?;
    run(
        "ip",
        [
            "-n",
            &rec.netns,
            "addr",
            "add",
            &format!("{}/24", rec.addr),
            "dev",
            "eth0",
        ],
    )?;
    run("ip", ["-n", &rec.netns, "link", "set", "eth0", "up"])?;

    // Mount namespace, persisted in the private directory; inside it, that
    // directory's copy goes (no node holds another's namespace) and the
    // node's directories cover libvirt's and ironvirt's.
    ensure_ns_dir(layout)?;
    fs::write(&rec.mntns, b"").map_err(io_err(&rec.mntns))?;
    run(
        "unshare",
        [
            format!("--mount={}", rec.mntns.display()).as_str(),
            "--propagation",
            "private",
            "true",
        ],
    )?;
    let enter = format!("--mount={}", rec.mntns.display());
    let ns_copy = fs::canonicalize(ns_dir(layout)).map_err(io_err(&rec.mntns))?;
    run(
        NSENTER,
        [
            OsStr::new(&enter),
            OsStr::new("--"),
            OsStr::new("umount"),
            OsStr::new("-l"),
            ns_copy.as_os_str(),
        ],
    )?;
    for (sub, target) in NODE_MOUNTS {
        let src = rec.dir.join(sub);
        run(
            NSENTER,
            [
                OsStr::new(&enter),
                OsStr::new("--"),
                OsStr::new("mount"),
                OsStr::new("--bind"),
                src.as_os_str(),
                OsStr::new(target),
            ],
        )?;
    }
    // The node's own cgroup partition: its libvirtd's /machine is
    // /machine/<node cgroup> of the machine, so that a domain migrating
    // between two nodes (the same name on both, often the same id) gets a
    // cgroup on each, as on two machines.
    for (machine, own) in ensure_node_cgroups(&node_cgroup(&net.tag, &rec.name))? {
        run(
            NSENTER,
            [
                OsStr::new(&enter),
                OsStr::new("--"),
                OsStr::new("mount"),
                OsStr::new("--bind"),
                own.as_os_str(),
                machine.as_os_str(),
            ],
        )?;
    }
    tracing::info!(node = %rec.name, addr = %rec.addr, elapsed_ms = started.elapsed().as_millis() as u64, "node namespaces ready");
    Ok(())
}

/// Starts the node's virtlogd and libvirtd and waits until libvirtd answers.
fn start_libvirt(layout: &Layout, rec: &NodeRecord, started: Instant) -> Result<()> {
    let sup = supervisor(layout);
    let wrapper = rec.wrapper();
    sup.spawn_in(
        &rec.process("virtlogd"),
        &wrapper,
        Path::new(VIRTLOGD_BIN),
        &["-p".into(), "/run/libvirt/virtlogd.pid".into()],
        &[],
    )?;
    let libvirtd = sup.spawn_in(
        &rec.process("libvirtd"),
        &wrapper,
        Path::new(LIBVIRTD_BIN),
        // --listen: the TLS port of libvirtd.conf (migration).
        &[
            "--listen".into(),
            "-p".into(),
            "/run/libvirt/libvirtd.pid".into(),
        ],
        &[],
    )?;
    wait_libvirtd(&sup, rec, libvirtd.pid)?;
    tracing::info!(node = %rec.name, uri = %rec.libvirt_uri(), elapsed_ms = started.elapsed().as_millis() as u64, "node libvirtd ready");
    Ok(())
}

/// Whether node `rec` still runs: its namespaces, veth and bridge exist,
/// and its virtlogd and libvirtd run and answer.
fn node_alive(layout: &Layout, rec: &NodeRecord, net: &NetRecord) -> bool {
    let sup = supervisor(layout);
    let recorded = sup.recorded();
    let running = |what: &str| {
        let name = rec.process(what);
        recorded
            .iter()
            .any(|r| r.name == name && Supervisor::is_running(r))
    };
    ns_identity(&rec.mntns).is_some()
        && ns_identity(&rec.netns_path()).is_some()
        && link_exists(&rec.veth)
        && link_exists(&net.bridge)
        && running("virtlogd")
        && running("libvirtd")
        && virsh(&rec.libvirt_uri(), 10, &["version"]).is_ok()
}

/// (Re)starts the node's forwarder and handler.
fn start_services(
    layout: &Layout,
    spec: &NodeSpec,
    rec: &NodeRecord,
    started: Instant,
) -> Result<()> {
    let sup = supervisor(layout);
    let wrapper = rec.wrapper();
    for what in ["handler", "forward"] {
        sup.stop(&rec.process(what), Duration::from_secs(15))?;
    }
    // The control plane on the node's 127.0.0.1.
    let ready = rec.dir.join("forward.ready");
    let _ = fs::remove_file(&ready);
    let mut fwd_args = vec![
        "forward".to_owned(),
        "--netns".to_owned(),
        rec.netns_path().display().to_string(),
        "--ready-file".to_owned(),
        ready.display().to_string(),
    ];
    for p in &spec.forward_ports {
        fwd_args.push("--port".into());
        fwd_args.push(p.to_string());
    }
    let fwd = sup.spawn(&rec.process("forward"), &spec.testbed_bin, &fwd_args, &[])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        if !process_alive(fwd.pid) || Instant::now() > deadline {
            return Err(start_error(
                &sup,
                rec,
                "forward",
                "the forwarder did not listen",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let h = &spec.handler;
    let health = h
        .health_addr
        .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut args: Vec<String> = vec![
        "--node-name".into(),
        rec.name.clone(),
        "--libvirt-uri".into(),
        crate::libvirt::SYSTEM_URI.into(),
        "--state-dir".into(),
        NODE_HANDLER_STATE.into(),
        "--listen".into(),
        format!("{}:0", rec.addr),
        "--health-addr".into(),
        health,
        "--tls-cert".into(),
        h.identity.tls_cert.display().to_string(),
        "--tls-key".into(),
        h.identity.tls_key.display().to_string(),
        "--client-ca".into(),
        h.identity.client_ca.display().to_string(),
    ];
    args.extend(h.args.iter().cloned());
    let kubeconfig = h.identity.kubeconfig.display().to_string();
    let mut env: Vec<(&str, &str)> = vec![("KUBECONFIG", kubeconfig.as_str())];
    env.extend(h.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let handler = sup.spawn_in(&rec.process("handler"), &wrapper, &h.bin, &args, &env)?;
    std::thread::sleep(Duration::from_millis(300));
    if !process_alive(handler.pid) {
        return Err(start_error(&sup, rec, "handler", "ironvirt-handler exited"));
    }
    tracing::info!(node = %rec.name, elapsed_ms = started.elapsed().as_millis() as u64, "node started");
    Ok(())
}

fn start_error(sup: &Supervisor, rec: &NodeRecord, what: &'static str, reason: &str) -> NodeError {
    let name = rec.process(what);
    NodeError::Start {
        what,
        node: rec.name.clone(),
        reason: reason.to_owned(),
        log: sup.log_path(&name),
        tail: sup.log_tail(&name, 20),
    }
}

/// `timeout SECS virsh -c URI ARGS`.
fn virsh(uri: &str, secs: u64, args: &[&str]) -> Result<String> {
    let secs = secs.to_string();
    let mut all = vec![secs.as_str(), "virsh", "-c", uri];
    all.extend_from_slice(args);
    run("timeout", all)
}

fn wait_libvirtd(sup: &Supervisor, rec: &NodeRecord, pid: u32) -> Result<()> {
    let deadline = Instant::now() + LIBVIRTD_START;
    let uri = rec.libvirt_uri();
    loop {
        if virsh(&uri, 10, &["version"]).is_ok() {
            return Ok(());
        }
        if !process_alive(pid) {
            return Err(start_error(sup, rec, "libvirtd", "libvirtd exited"));
        }
        if Instant::now() > deadline {
            return Err(start_error(
                sup,
                rec,
                "libvirtd",
                &format!("no answer on {uri} within {} s", LIBVIRTD_START.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The (device, inode) of the namespace a file refers to, when it is a
/// namespace file (a bind mount of one, or /proc/PID/ns/…).
fn ns_identity(path: &Path) -> Option<(u64, u64)> {
    let nsfs = fs::metadata("/proc/self/ns/net").ok()?.dev();
    let md = fs::metadata(path).ok()?;
    (md.dev() == nsfs).then(|| (md.dev(), md.ino()))
}

/// The pids of every process in one of the namespaces `ids`.
pub fn pids_in(ids: &[(u64, u64)]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let me = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            ["mnt", "net"].iter().any(|kind| {
                ns_identity(&PathBuf::from(format!("/proc/{pid}/ns/{kind}")))
                    .is_some_and(|id| ids.contains(&id))
            })
        })
        .collect()
}

/// The namespaces of a node that still exist.
fn node_namespaces(rec: &NodeRecord) -> Vec<(u64, u64)> {
    [rec.mntns.clone(), rec.netns_path()]
        .iter()
        .filter_map(|p| ns_identity(p))
        .collect()
}

/// The network namespaces the node's handler made for its VMIs (the files
/// of the node's /run/netns, read inside its mount namespace while that
/// exists): passt runs in them, in mount and user namespaces of its own.
fn guest_namespaces(mntns: &Path) -> Vec<(u64, u64)> {
    let Some((nsfs, _)) = ns_identity(mntns) else {
        return Vec::new();
    };
    let script = r#"for f in /run/netns/*; do [ -e "$f" ] && stat -c '%d %i' "$f"; done; true"#;
    let enter = format!("--mount={}", mntns.display());
    let Ok(out) = run(NSENTER, [enter.as_str(), "--", "sh", "-c", script]) else {
        return Vec::new();
    };
    out.lines()
        .filter_map(|l| {
            let (d, i) = l.split_once(' ')?;
            Some((d.trim().parse().ok()?, i.trim().parse().ok()?))
        })
        .filter(|(d, _)| *d == nsfs)
        .collect()
}

/// The cgroups libvirt made for the domains of `pids` (`/machine/<scope>`,
/// as /proc/PID/cgroup names them): a libvirtd that is gone (a crash) no
/// longer removes them when their QEMU ends.
fn machine_cgroups(pids: &[u32]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for pid in pids {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        for line in text.lines() {
            let Some(path) = line.splitn(3, ':').nth(2) else {
                continue;
            };
            let mut parts = path.split('/').filter(|p| !p.is_empty());
            if let (Some("machine"), Some(scope)) = (parts.next(), parts.next())
                && scope.ends_with(".libvirt-qemu")
            {
                out.insert(format!("machine/{scope}"));
            }
        }
    }
    out
}

/// The cgroup of node `name` under every hierarchy's `machine` partition.
fn node_cgroup(tag: &str, name: &str) -> String {
    format!("ivnode-{tag}-{name}")
}

/// The cgroup hierarchies: /sys/fs/cgroup itself (cgroup v2), or each
/// hierarchy mounted under it (v1, hybrid).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.procs").exists() {
        return vec![root.to_owned()];
    }
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// The node cgroups of a bed's tag on the machine (`machine/ivnode-<tag>-*`).
fn stale_node_cgroups(tag: &str) -> BTreeSet<String> {
    let prefix = node_cgroup(tag, "");
    cgroup_hierarchies()
        .iter()
        .flat_map(|h| {
            fs::read_dir(h.join("machine"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            name.starts_with(&prefix).then(|| format!("machine/{name}"))
        })
        .collect()
}

/// Makes `machine/<own>` in every cgroup hierarchy (and `machine` where
/// missing), ready for libvirt's domains: cpuset's CPUs and memory nodes
/// copied from the parent (v1 starts them empty), v2's controllers enabled
/// for the children. Returns (machine, machine/own) per hierarchy.
fn ensure_node_cgroups(own: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    for h in cgroup_hierarchies() {
        let machine = h.join("machine");
        let mine = machine.join(own);
        for (parent, dir) in [(&h, &machine), (&machine, &mine)] {
            if !dir.is_dir() {
                fs::create_dir(dir).map_err(io_err(dir))?;
            }
            for f in ["cpuset.cpus", "cpuset.mems"] {
                let at = dir.join(f);
                if at.exists()
                    && fs::read_to_string(&at)
                        .unwrap_or_default()
                        .trim()
                        .is_empty()
                {
                    let from = fs::read_to_string(parent.join(f)).map_err(io_err(parent))?;
                    fs::write(&at, from.trim()).map_err(io_err(&at))?;
                }
            }
            // cgroup v2: what the parent may hand down, handed down.
            if let Ok(avail) = fs::read_to_string(dir.join("cgroup.controllers")) {
                let want: Vec<String> = avail.split_whitespace().map(|c| format!("+{c}")).collect();
                if !want.is_empty() {
                    let _ = fs::write(dir.join("cgroup.subtree_control"), want.join(" "));
                }
            }
        }
        out.push((machine, mine));
    }
    Ok(out)
}

/// Removes the (empty) cgroup directories `rel` in every cgroup hierarchy,
/// deepest first; a cgroup that still has processes stays.
fn remove_cgroups(rel: &BTreeSet<String>) {
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_owned()];
    hierarchies.extend(
        fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    for h in hierarchies {
        for r in rel {
            let dir = h.join(r);
            if !dir.is_dir() {
                continue;
            }
            let mut dirs = vec![dir.clone()];
            let mut i = 0;
            while i < dirs.len() {
                let subs: Vec<PathBuf> = fs::read_dir(&dirs[i])
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect();
                dirs.extend(subs);
                i += 1;
            }
            for d in dirs.iter().rev() {
                if let Err(e) = fs::remove_dir(d) {
                    tracing::warn!(cgroup = %d.display(), error = %e, "cannot remove the cgroup");
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL, to every process in the namespaces `ids`.
fn kill_all_in(node: &str, ids: &[(u64, u64)]) -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for (signal, wait) in [
        (Signal::SIGTERM, Duration::from_secs(5)),
        (Signal::SIGKILL, Duration::from_secs(10)),
    ] {
        let pids = pids_in(ids);
        if pids.is_empty() {
            return Ok(());
        }
        tracing::info!(
            node,
            ?pids,
            ?signal,
            "ending the processes left in the node"
        );
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), signal);
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && pids.iter().any(|p| process_alive(*p)) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let left: Vec<u32> = pids_in(ids)
        .into_iter()
        .filter(|p| process_alive(*p))
        .collect();
    if left.is_empty() {
        Ok(())
    } else {
        Err(NodeError::Unkillable {
            node: node.to_owned(),
            pids: left,
        })
    }
}

/// Stops node `name` and removes everything it had on the machine (its
/// log directory stays); the bridge goes with the bed's last node.
/// Idempotent.
pub fn stop_node(layout: &Layout, name: &str) -> Result<()> {
    let _lock = lock_nodes(layout)?;
    stop_node_locked(layout, name)?;
    if records(layout)?.is_empty() {
        remove_net_locked(layout)?;
    }
    Ok(())
}

fn stop_node_locked(layout: &Layout, name: &str) -> Result<()> {
    let Some(rec) = record(layout, name)? else {
        return Ok(());
    };
    let sup = supervisor(layout);
    let grace = Duration::from_secs(15);
    let mut first_err: Option<NodeError> = None;
    let mut keep = |r: Result<()>| {
        if let Err(e) = r {
            tracing::warn!(node = %rec.name, error = %e, "node stop");
            first_err.get_or_insert(e);
        }
    };
    keep(sup.stop(&rec.process("handler"), grace).map_err(Into::into));
    // Its guests, through its libvirtd, while it runs.
    let libvirtd_up = sup
        .recorded()
        .iter()
        .any(|r| r.name == rec.process("libvirtd") && Supervisor::is_running(r));
    if libvirtd_up {
        let uri = rec.libvirt_uri();
        if let Ok(list) = virsh(&uri, 20, &["list", "--all", "--name"]) {
            for dom in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
                tracing::info!(node = %rec.name, domain = dom, "destroying domain");
                let _ = virsh(&uri, 30, &["destroy", dom]);
                let _ = virsh(&uri, 20, &["undefine", "--nvram", dom]);
            }
        }
    }
    for what in ["libvirtd", "virtlogd", "forward"] {
        keep(sup.stop(&rec.process(what), grace).map_err(Into::into));
    }
    // Whatever else runs in its namespaces (QEMU, passt, a process whose
    // pid file a crash lost).
    let mut ids = node_namespaces(&rec);
    ids.extend(guest_namespaces(&rec.mntns));
    let mut cgroups = machine_cgroups(&pids_in(&ids));
    keep(kill_all_in(&rec.name, &ids));
    cgroups.insert(format!("machine/{}", node_cgroup(&tag(layout), &rec.name)));
    remove_cgroups(&cgroups);
    keep(remove_namespaces(&rec));
    // Mounts of the node's directories in this namespace (none unless
    // someone bound them here).
    for m in mounts_under(&rec.dir) {
        keep(
            nix::mount::umount2(&m, MntFlags::MNT_DETACH).map_err(|e| NodeError::Io {
                path: m.clone(),
                source: e.into(),
            }),
        );
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    // Its files, but for libvirt's logs (the guests' QEMU logs).
    if let Ok(entries) = fs::read_dir(&rec.dir) {
        for e in entries.flatten() {
            if e.file_name() != "log" {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    tracing::info!(node = %rec.name, "node stopped and removed");
    Ok(())
}

/// Removes the node's mount namespace (its file), veth pair and network
/// namespace, those that exist; tries each, returns the first error.
fn remove_namespaces(rec: &NodeRecord) -> Result<()> {
    let mut first_err = None;
    if ns_identity(&rec.mntns).is_some()
        && let Err(e) = nix::mount::umount2(&rec.mntns, MntFlags::MNT_DETACH)
    {
        first_err.get_or_insert(NodeError::Io {
            path: rec.mntns.clone(),
            source: e.into(),
        });
    }
    let _ = fs::remove_file(&rec.mntns);
    // The veth pair first (its other end goes with it), then the namespace.
    if let Err(e) = delete_link(&rec.veth) {
        first_err.get_or_insert(e);
    }
    if Path::new("/run/netns").join(&rec.netns).exists()
        && let Err(e) = run("ip", ["netns", "delete", &rec.netns])
    {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

fn remove_net_locked(layout: &Layout) -> Result<()> {
    let tag = tag(layout);
    let bridge = net_record(layout)?.map_or_else(|| format!("ivb{tag}"), |r| r.bridge);
    delete_link(&bridge)?;
    let _ = run("nft", ["delete", "table", "inet", &host_table(&tag)]);
    let _ = fs::remove_file(nodes_dir(layout).join("host.nft"));
    let dir = ns_dir(layout);
    if let Ok(dir) = fs::canonicalize(&dir) {
        for m in mounts_under(&dir) {
            let _ = nix::mount::umount2(&m, MntFlags::MNT_DETACH);
        }
    }
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(net_record_path(layout));
    Ok(())
}

/// Stops every node of the bed and removes the bridge, the namespaces and
/// the mounts, including leftovers without a record (a crash while
/// starting). Idempotent.
pub fn down_all(layout: &Layout) -> Result<()> {
    if !nodes_dir(layout).exists() {
        return Ok(());
    }
    let _lock = lock_nodes(layout)?;
    let mut first_err = None;
    for rec in records(layout)? {
        if let Err(e) = stop_node_locked(layout, &rec.name) {
            first_err.get_or_insert(e);
        }
    }
    // Namespaces and veths of this bed's tag that no record names.
    let tag = tag(layout);
    let prefix = format!("ivn-{tag}-");
    if let Ok(list) = run("ip", ["netns", "list"]) {
        for name in list
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&prefix))
        {
            let path = Path::new("/run/netns").join(name);
            if let Some(id) = ns_identity(&path)
                && let Err(e) = kill_all_in(name, &[id])
            {
                first_err.get_or_insert(e);
            }
            if let Err(e) = run("ip", ["netns", "delete", name]) {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Ok(links) = run("ip", ["-o", "link", "show"]) {
        let veth = format!("ivv{tag}");
        for name in links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .filter(|n| n.starts_with(&veth))
        {
            let _ = delete_link(name);
        }
    }
    if let Ok(dir) = fs::canonicalize(ns_dir(layout)) {
        for f in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = f.path();
            if let Some(id) = ns_identity(&p) {
                let mut ids = guest_namespaces(&p);
                ids.push(id);
                let cgroups = machine_cgroups(&pids_in(&ids));
                if let Err(e) = kill_all_in("(unrecorded)", &ids) {
                    first_err.get_or_insert(e);
                }
                remove_cgroups(&cgroups);
                let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
            }
        }
    }
    // Node cgroups no record names (a crash while starting).
    remove_cgroups(&stale_node_cgroups(&tag));
    if let Err(e) = remove_net_locked(layout) {
        first_err.get_or_insert(e);
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits() {
        let layout = Layout::new("/some/state/dir");
        let t = tag(&layout);
        assert_eq!(t.len(), 6);
        assert_eq!(t, tag(&Layout::new("/some/state/dir")), "stable");
        assert_ne!(t, tag(&Layout::new("/other/state/dir")));
        // Interface names: at most 15 bytes.
        assert!(format!("ivb{t}").len() <= 15);
        assert!(format!("ivv{t}200").len() <= 15);
    }

    #[test]
    fn node_names_are_dns_labels() {
        assert!(check_name("node-1").is_ok());
        for bad in ["", "-a", "a-", "Node", "a/b", "a.b", &"x".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_overlap() {
        let n = Ipv4Addr::new(10, 213, 0, 0);
        assert!(overlaps(n, 24, Ipv4Addr::new(10, 213, 0, 7), 32));
        assert!(overlaps(n, 24, Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(!overlaps(n, 24, Ipv4Addr::new(10, 213, 1, 0), 24));
        assert!(overlaps(n, 24, Ipv4Addr::new(0, 0, 0, 0), 0));
        assert_eq!(
            parse_subnet("10.213.4.0/24").unwrap(),
            Ipv4Addr::new(10, 213, 4, 0)
        );
        assert!(parse_subnet("10.213.4.1/24").is_err());
        assert!(parse_subnet("10.213.0.0/16").is_err());
    }

    #[test]
    fn libvirtd_conf_gets_its_own_uuid() {
        let u = host_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let conf = libvirtd_conf("listen_tls = 0\nhost_uuid = \"x\"\n", &u);
        assert!(conf.contains("listen_tls = 0"));
        assert!(!conf.contains("\"x\""));
        assert!(conf.contains(&format!("host_uuid = \"{u}\"")));
    }

    #[test]
    fn the_host_takes_only_replies_from_the_bridge() {
        let rules = host_ruleset("abc123", "ivbabc123");
        assert!(rules.starts_with("table inet ivnodes_abc123 {"));
        assert!(rules.contains("iifname \"ivbabc123\" ct state established,related accept"));
        assert!(rules.contains("iifname \"ivbabc123\" drop"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
