//! Density (issue #20): as many real TCG guests as fit on one node.
//!
//! One node of the bed with its own libvirtd and virtlogd (in namespaces of
//! its own, as [`crate::nodes::TestNode`] runs it, but with the handler of a
//! chosen build), an operator for the run's namespace, and N
//! VirtualMachines (runStrategy Always) of the test guest created one after
//! another. Measured:
//!
//! - create → VMI `Running` (a VMI watch) and create → the guest's marker
//!   (`IRONVIRT-GUEST-READY`) on its serial console, read through the
//!   handler's console websocket (mTLS, ironvirt-api's client certificate),
//!   opened as soon as the VMI runs: the handler keeps the console output
//!   from the domain's start, so a marker printed before the websocket opens
//!   is replayed to it;
//! - memory before the first create and once every guest printed its marker:
//!   the host's `MemAvailable`; the handler's, libvirtd's and virtlogd's RSS;
//!   each guest's QEMU and passt (RSS, PSS, anonymous), found by their
//!   command lines (`guest=<domain>`; passt's socket path names the VMI's
//!   uid);
//! - CPU: the QEMUs' CPU time up to then, and the cores the booted guests
//!   use while idle;
//! - the load average before, during (the highest sample) and after.
//!
//! The guest: a pod network interface with masquerade (KubeVirt's default
//! when none is listed: a passt per VMI), a read-only hostDisk, and by
//! default the small kernel (`disk-small.qcow2`, the image the bed serves
//! under KubeVirt's cirros names) in 64Mi.
//!
//! Everything is removed before [`run`] returns: the VMs (and so the
//! domains), the operator, the node (processes, namespaces, Node and Leases),
//! the namespace and the image copy.
//!
//! `tests/src/bin/density-bench.rs` (`make bench-density`) runs it with 50
//! guests on release builds; `tests/tests/density.rs` runs it bounded in
//! `make test`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironvirt_crds::wire::{STREAM_URL_ANNOTATION, domain_name, handler_lease_name};
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use ironvirt_testbed::TestBed;
use ironvirt_testbed::nodes::{self, NodeRecord, NodeSpec};
use ironvirt_testbed::pki::names;
use ironvirt_testbed::process::Supervisor;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::handler::{TlsTcp, WsSession};
use crate::nodes::{HOSTNAME_LABEL, delete_node_objects, wait_ready_and_renewing};
use crate::operator::{LEASE_NAMESPACE, Operator, TEST_NODE_LABEL, target_dir};

/// What the guest prints on its serial console once booted.
pub const MARKER: &str = "IRONVIRT-GUEST-READY";

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How many VMs.
    pub vms: usize,
    /// `memory.guest` of each.
    pub memory: String,
    /// The small kernel's disk (boots in 64Mi) instead of the cloud kernel's.
    pub small_kernel: bool,
    /// Between two creates (each create is awaited first).
    pub interval: Duration,
    /// The build of the handler and operator: `debug` or `release`.
    pub profile: String,
    /// From the first create until every guest must have printed its marker.
    pub boot_timeout: Duration,
    /// Wait after the last marker before the memory is read.
    pub settle: Duration,
    /// How long the idle guests' CPU use is measured.
    pub idle_window: Duration,
}

impl Config {
    /// The settings from the environment (`DENSITY_VMS`, `DENSITY_MEMORY`,
    /// `DENSITY_KERNEL=small|cloud`, `DENSITY_INTERVAL_MS`,
    /// `DENSITY_PROFILE`, `DENSITY_BOOT_TIMEOUT_S`, `DENSITY_SETTLE_S`,
    /// `DENSITY_IDLE_S`), each defaulting to `base`'s.
    pub fn from_env(base: Config) -> Result<Config, String> {
        fn var<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
            match std::env::var(name) {
                Ok(v) => v
                    .trim()
                    .parse()
                    .map_err(|_| format!("{name}={v:?} is not a valid value")),
                Err(_) => Ok(default),
            }
        }
        let kernel = var(
            "DENSITY_KERNEL",
            if base.small_kernel { "small" } else { "cloud" }.to_owned(),
        )?;
        let small_kernel = match kernel.as_str() {
            "small" => true,
            "cloud" => false,
            other => return Err(format!("DENSITY_KERNEL={other:?}: small or cloud")),
        };
        Ok(Config {
            vms: var("DENSITY_VMS", base.vms)?,
            memory: var("DENSITY_MEMORY", base.memory)?,
            small_kernel,
            interval: Duration::from_millis(var(
                "DENSITY_INTERVAL_MS",
                base.interval.as_millis() as u64,
            )?),
            profile: var("DENSITY_PROFILE", base.profile)?,
            boot_timeout: Duration::from_secs(var(
                "DENSITY_BOOT_TIMEOUT_S",
                base.boot_timeout.as_secs(),
            )?),
            settle: Duration::from_secs(var("DENSITY_SETTLE_S", base.settle.as_secs())?),
            idle_window: Duration::from_secs(var("DENSITY_IDLE_S", base.idle_window.as_secs())?),
        })
    }
}

/// Memory of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss: u64,
    pub anon: u64,
    /// Proportional set size: shared pages divided among their users.
    pub pss: u64,
}

/// Reads `VmRSS`, `RssAnon` and the PSS of process `pid` (zeros when gone).
pub fn mem_of(pid: u32) -> Mem {
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Mem {
        rss: field(&status, "VmRSS:"),
        anon: field(&status, "RssAnon:"),
        pss: field(&rollup, "Pss:"),
    }
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command (which may hold spaces) in parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// The host's `MemAvailable`, in KiB.
pub fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// The `p`th percentile (nearest rank) of `sorted`.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The command line of every process: (pid, comm, arguments).
fn processes() -> Vec<(u32, String, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let raw = std::fs::read(e.path().join("cmdline")).ok()?;
            let args = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some((pid, comm.trim().to_owned(), args))
        })
        .collect()
}

/// The QEMU of domain `domain` in `procs`: `-name guest=<domain>,…`.
fn qemu_of(procs: &[(u32, String, Vec<String>)], domain: &str) -> Option<u32> {
    let want = format!("guest={domain},");
    let exact = format!("guest={domain}");
    procs
        .iter()
        .find(|(_, _, args)| {
            args.first().is_some_and(|a| a.contains("qemu"))
                && args.iter().any(|a| a.starts_with(&want) || *a == exact)
        })
        .map(|(pid, _, _)| *pid)
}

/// The passt of VMI `uid` in `procs` (its socket lies in a directory named
/// after the uid).
fn passt_of(procs: &[(u32, String, Vec<String>)], uid: &str) -> Option<u32> {
    let dir = format!("/{uid}/");
    procs
        .iter()
        .find(|(_, comm, args)| comm.starts_with("passt") && args.iter().any(|a| a.contains(&dir)))
        .map(|(pid, _, _)| *pid)
}

/// The memory charged to the memory cgroup of process `pid` (KiB):
/// `memory.current` (cgroup v2) or `memory.usage_in_bytes` (v1).
pub fn cgroup_memory_kib(pid: u32) -> Option<u64> {
    let lines = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let read = |p: PathBuf| -> Option<u64> {
        let v = std::fs::read_to_string(p).ok()?;
        v.trim().parse::<u64>().ok().map(|b| b / 1024)
    };
    let root = std::path::Path::new("/sys/fs/cgroup");
    for l in lines.lines() {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return read(root.join("memory").join(rel).join("memory.usage_in_bytes"));
        }
        if controllers.is_empty()
            && let Some(v) = read(root.join(rel).join("memory.current"))
        {
            return Some(v);
        }
    }
    None
}

/// The node of the run: [`nodes::start_node`] with the handler of the
/// configured build; stopped when dropped.
struct Node {
    layout: ironvirt_testbed::layout::Layout,
    record: NodeRecord,
    stopped: bool,
}

impl Node {
    async fn start(bed: &TestBed, ns: &str, name: &str, profile: &str) -> Result<Node, String> {
        let info = bed.info();
        ironvirt_testbed::handlers::install_access(&bed.admin())
            .await
            .map_err(|e| format!("the handlers' RBAC: {e}"))?;
        let identity = ironvirt_testbed::handlers::ensure_identity(bed.layout(), info, name)
            .map_err(|e| format!("the identity of the handler of {name}: {e}"))?;
        let handler = target_dir().join(profile).join("ironvirt-handler");
        let testbed_bin = target_dir().join("debug").join("ironvirt-testbed");
        for bin in [&handler, &testbed_bin] {
            if !bin.is_file() {
                return Err(format!(
                    "{} is missing; run `cargo build{} --workspace`",
                    bin.display(),
                    if profile == "release" {
                        " --release"
                    } else {
                        ""
                    }
                ));
            }
        }
        let api_port = info
            .api_url
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
            .ok_or_else(|| format!("no port in the API URL {:?}", info.api_url))?;
        let spec = NodeSpec {
            name: name.to_owned(),
            forward_ports: vec![api_port],
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
                    "--renew-seconds",
                    "2",
                    "--host-disk-root",
                    crate::hostdisk::ROOT,
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
                env: vec![("RUST_LOG".into(), "info,kube_runtime=warn".into())],
            },
        };
        let layout = bed.layout().clone();
        let l = layout.clone();
        let record = tokio::task::spawn_blocking(move || nodes::start_node(&l, &spec))
            .await
            .map_err(|e| format!("starting node {name}: {e}"))?
            .map_err(|e| format!("starting node {name}: {e}"))?;
        Ok(Node {
            layout,
            record,
            stopped: false,
        })
    }

    /// The pid of the node's process `what` (handler, libvirtd, virtlogd).
    fn pid(&self, what: &str) -> Option<u32> {
        let name = self.record.process(what);
        Supervisor::new(self.layout.pids(), self.layout.logs())
            .recorded()
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.pid)
    }

    fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        nodes::stop_node(&self.layout, &self.record.name).map_err(|e| e.to_string())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping node {}: {e}", self.record.name);
        }
    }
}

/// The memory of the node's own processes and the host at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    pub mem_available_kib: u64,
    pub handler: Mem,
    pub libvirtd: Mem,
    pub virtlogd: Mem,
    pub load1: f64,
}

impl Snapshot {
    fn take(node: &Node) -> Snapshot {
        let of = |what| node.pid(what).map(mem_of).unwrap_or_default();
        Snapshot {
            mem_available_kib: mem_available(),
            handler: of("handler"),
            libvirtd: of("libvirtd"),
            virtlogd: of("virtlogd"),
            load1: load1(),
        }
    }
}

/// One guest's figures.
#[derive(Debug, Clone, Default)]
pub struct Guest {
    pub name: String,
    pub to_running: Option<Duration>,
    pub to_marker: Option<Duration>,
    /// Why it has no marker.
    pub error: Option<String>,
    pub qemu: Option<Mem>,
    pub qemu_cpu_s: f64,
    pub passt: Option<Mem>,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub vms: usize,
    pub memory: String,
    pub small_kernel: bool,
    pub profile: String,
    pub guests: Vec<Guest>,
    pub before: Snapshot,
    pub after: Snapshot,
    /// The highest 1-minute load average sampled during the run.
    pub load_max: f64,
    /// From the first create to the last marker.
    pub all_booted: Duration,
    /// Cores the booted guests' QEMUs used while idle.
    pub idle_cores: f64,
    /// The memory charged to each QEMU's memory cgroup, its domain's (KiB;
    /// [`cgroup_memory_kib`]): QEMU's memory with the kernel memory and
    /// page cache charged to it.
    pub domain_cgroups_kib: Vec<u64>,
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

fn mean(values: impl Iterator<Item = u64>) -> f64 {
    let v: Vec<u64> = values.collect();
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

impl Figures {
    fn sorted(&self, f: impl Fn(&Guest) -> Option<Duration>) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.guests.iter().filter_map(f).collect();
        v.sort();
        v
    }

    /// create → Running of the guests that ran, sorted.
    pub fn to_running(&self) -> Vec<Duration> {
        self.sorted(|g| g.to_running)
    }

    /// create → marker of the guests that printed it, sorted.
    pub fn to_marker(&self) -> Vec<Duration> {
        self.sorted(|g| g.to_marker)
    }

    /// The guests that printed their marker.
    pub fn booted(&self) -> usize {
        self.guests.iter().filter(|g| g.to_marker.is_some()).count()
    }

    fn n(&self) -> f64 {
        self.vms.max(1) as f64
    }

    /// Mean QEMU memory per guest (KiB).
    pub fn qemu_mean(&self) -> Mem {
        let q: Vec<Mem> = self.guests.iter().filter_map(|g| g.qemu).collect();
        Mem {
            rss: mean(q.iter().map(|m| m.rss)) as u64,
            anon: mean(q.iter().map(|m| m.anon)) as u64,
            pss: mean(q.iter().map(|m| m.pss)) as u64,
        }
    }

    /// Mean passt memory per guest (KiB).
    pub fn passt_mean(&self) -> Mem {
        let p: Vec<Mem> = self.guests.iter().filter_map(|g| g.passt).collect();
        Mem {
            rss: mean(p.iter().map(|m| m.rss)) as u64,
            anon: mean(p.iter().map(|m| m.anon)) as u64,
            pss: mean(p.iter().map(|m| m.pss)) as u64,
        }
    }

    /// Growth of a node process's RSS per guest (KiB, may be negative).
    fn growth(&self, f: impl Fn(&Snapshot) -> Mem) -> f64 {
        (f(&self.after).rss as f64 - f(&self.before).rss as f64) / self.n()
    }

    pub fn handler_growth_per_vm_kib(&self) -> f64 {
        self.growth(|s| s.handler)
    }

    pub fn libvirt_growth_per_vm_kib(&self) -> f64 {
        self.growth(|s| s.libvirtd) + self.growth(|s| s.virtlogd)
    }

    /// Memory per VM beyond QEMU's own (KiB): the handler's and libvirt's
    /// growth per VM and a passt (PSS).
    pub fn overhead_per_vm_kib(&self) -> f64 {
        self.handler_growth_per_vm_kib()
            + self.libvirt_growth_per_vm_kib()
            + self.passt_mean().pss as f64
    }

    /// Mean `memory.current` of the domains' cgroups (KiB).
    pub fn domain_cgroup_mean_kib(&self) -> f64 {
        mean(self.domain_cgroups_kib.iter().copied())
    }

    /// The host's memory in use per guest (KiB): its domain's cgroup (QEMU
    /// and the kernel memory charged to it) and the overhead beyond QEMU.
    pub fn host_per_guest_by_cgroup_kib(&self) -> f64 {
        self.domain_cgroup_mean_kib() + self.overhead_per_vm_kib()
    }

    /// The drop of the host's `MemAvailable` per guest (KiB).
    pub fn host_per_guest_kib(&self) -> f64 {
        (self.before.mem_available_kib as f64 - self.after.mem_available_kib as f64) / self.n()
    }

    /// The report: `key=value` lines for the benchmark's record.
    pub fn report(&self) -> String {
        let ms = |d: Duration| d.as_millis();
        let lat = |v: &[Duration]| {
            format!(
                "n={} p50_ms={} p95_ms={} max_ms={}",
                v.len(),
                ms(percentile(v, 50.0)),
                ms(percentile(v, 95.0)),
                ms(v.last().copied().unwrap_or_default())
            )
        };
        let q = self.qemu_mean();
        let p = self.passt_mean();
        let (b, a) = (&self.before, &self.after);
        let cpu: Vec<f64> = self.guests.iter().map(|g| g.qemu_cpu_s).collect();
        let cpu_mean = if cpu.is_empty() {
            0.0
        } else {
            cpu.iter().sum::<f64>() / cpu.len() as f64
        };
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "density guests: vms={} memory={} kernel={} builds={} booted={} all_booted_s={:.1}",
            self.vms,
            self.memory,
            if self.small_kernel { "small" } else { "cloud" },
            self.profile,
            self.booted(),
            self.all_booted.as_secs_f64()
        ));
        line(format!(
            "density create_to_running: {}",
            lat(&self.to_running())
        ));
        line(format!(
            "density create_to_marker: {}",
            lat(&self.to_marker())
        ));
        line(format!(
            "density handler_rss_mib: before={:.1} after={:.1} (anon {:.1} -> {:.1}) per_vm_kib={:.0}",
            mib(b.handler.rss as f64),
            mib(a.handler.rss as f64),
            mib(b.handler.anon as f64),
            mib(a.handler.anon as f64),
            self.handler_growth_per_vm_kib()
        ));
        line(format!(
            "density libvirt_rss_mib: libvirtd {:.1} -> {:.1}, virtlogd {:.1} -> {:.1}, per_vm_kib={:.0}",
            mib(b.libvirtd.rss as f64),
            mib(a.libvirtd.rss as f64),
            mib(b.virtlogd.rss as f64),
            mib(a.virtlogd.rss as f64),
            self.libvirt_growth_per_vm_kib()
        ));
        line(format!(
            "density qemu_per_vm_mib: rss={:.1} pss={:.1} anon={:.1} (found {}/{})",
            mib(q.rss as f64),
            mib(q.pss as f64),
            mib(q.anon as f64),
            self.guests.iter().filter(|g| g.qemu.is_some()).count(),
            self.vms
        ));
        line(format!(
            "density passt_per_vm_mib: rss={:.2} pss={:.2} anon={:.2} (found {}/{})",
            mib(p.rss as f64),
            mib(p.pss as f64),
            mib(p.anon as f64),
            self.guests.iter().filter(|g| g.passt.is_some()).count(),
            self.vms
        ));
        line(format!(
            "density overhead_beyond_qemu_per_vm_mib: {:.2} (handler {:.2} + libvirtd/virtlogd {:.2} + passt pss {:.2}); KubeVirt reserves ~240 per launcher pod",
            mib(self.overhead_per_vm_kib()),
            mib(self.handler_growth_per_vm_kib()),
            mib(self.libvirt_growth_per_vm_kib()),
            mib(p.pss as f64)
        ));
        line(format!(
            "density host_per_guest_mib: {:.1} (domain cgroup {:.1}, {} cgroups, + overhead {:.1})",
            mib(self.host_per_guest_by_cgroup_kib()),
            mib(self.domain_cgroup_mean_kib()),
            self.domain_cgroups_kib.len(),
            mib(self.overhead_per_vm_kib())
        ));
        line(format!(
            "density host_mem_available_mib: before={:.0} after={:.0} per_guest={:.1} (qemu pss + overhead = {:.1})",
            mib(b.mem_available_kib as f64),
            mib(a.mem_available_kib as f64),
            mib(self.host_per_guest_kib()),
            mib(q.pss as f64 + self.overhead_per_vm_kib())
        ));
        line(format!(
            "density cpu: qemu_cpu_s_per_guest_until_settled={cpu_mean:.1} idle_cores_all_guests={:.2}",
            self.idle_cores
        ));
        line(format!(
            "density load1: before={:.2} max_during={:.2} after={:.2}",
            b.load1, self.load_max, a.load1
        ));
        // Why each guest has no marker: the first line of the error and the
        // last console line (the whole transcript tail is too long for 50).
        for g in self.guests.iter().filter(|g| g.error.is_some()) {
            let e = g.error.as_deref().unwrap_or_default();
            let first = e.lines().next().unwrap_or_default();
            let last = e
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default();
            line(if first == last {
                format!("density failed {}: {first}", g.name)
            } else {
                format!("density failed {}: {first} … {}", g.name, last.trim())
            });
        }
        out
    }
}

/// Runs the density measurement with `cfg` in a namespace of its own and
/// removes everything it made.
pub async fn run(bed: &TestBed, cfg: &Config) -> Result<Figures, String> {
    crate::kubectl::ensure_crds(bed);
    let client = bed.admin();
    let ns = bed
        .namespace("density")
        .await
        .map_err(|e| format!("namespace: {e}"))?;
    let result = run_in(bed, &client, &ns, cfg).await;
    let deleted = bed
        .delete_namespace(&ns, Duration::from_secs(300))
        .await
        .map_err(|e| format!("deleting namespace {ns}: {e}"));
    let dir = crate::hostdisk::namespace_dir(&ns);
    let removed = match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    };
    let figures = result?;
    deleted?;
    removed?;
    Ok(figures)
}

/// The guest's disk in `ns`'s hostDisk directory (a copy: QEMU may relabel
/// what it opens, and the cache's file must stay as it is).
fn place_image(bed: &TestBed, ns: &str, small: bool) -> Result<String, String> {
    let guest = bed.guest().map_err(|e| e.to_string())?;
    let from = if small { guest.disk_small } else { guest.disk };
    let dir = crate::hostdisk::namespace_dir(ns);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let to = dir.join(if small {
        "density-small.qcow2"
    } else {
        "density.qcow2"
    });
    std::fs::copy(&from, &to)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), to.display()))?;
    Ok(to.display().to_string())
}

/// A VM of the test guest: a read-only hostDisk, the default pod network
/// (masquerade through passt), destroyed at once when stopped.
fn vm(name: &str, image: &str, memory: &str) -> Result<VirtualMachine, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": "Always",
            "template": {"spec": {
                "terminationGracePeriodSeconds": 0,
                "domain": {"memory": {"guest": memory},
                    "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio", "readonly": true}}]}},
                "volumes": [{"name": "root", "hostDisk": {"path": image, "type": "Disk"}}],
            }},
        },
    }))
    .map_err(|e| format!("the VM manifest: {e}"))
}

async fn run_in(bed: &TestBed, client: &Client, ns: &str, cfg: &Config) -> Result<Figures, String> {
    let image = place_image(bed, ns, cfg.small_kernel)?;
    let node_name = format!("density-{}", std::process::id());
    let mut node = Node::start(bed, ns, &node_name, &cfg.profile).await?;
    let ready = wait_ready_and_renewing(client, &node_name, Duration::from_secs(60)).await;
    let mut operator = None;
    let result = match ready {
        Ok(()) => {
            operator = Some(Operator::start_profile(
                bed,
                &cfg.profile,
                ns,
                "density",
                &[],
            ));
            measure(bed, client, ns, &node, &image, cfg).await
        }
        Err(e) => Err(e),
    };
    let torn = teardown(client, ns).await;
    if let Some(mut op) = operator {
        op.kill();
    }
    let stopped = node.stop();
    delete_node_objects(client, &node_name).await;
    let figures = result?;
    torn?;
    stopped?;
    Ok(figures)
}

/// Deletes every VM of `ns` and waits until the VMs and their VMIs are gone.
///
/// The VMs, not only their VMIs: a VM keeps the operator's finalizer until
/// the operator has seen its VMI go, and the run stops the operator right
/// after this. Waiting for the VMIs alone left VMs whose finalizer nobody
/// would remove, and the namespace terminating for good (the failure of the
/// bounded density test in a clean-clone `make test`).
async fn teardown(client: &Client, ns: &str) -> Result<(), String> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let _ = vms
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let count = |l: Result<usize, kube::Error>| l.unwrap_or(usize::MAX);
        let left_vms = count(
            vms.list(&ListParams::default())
                .await
                .map(|l| l.items.len()),
        );
        let left_vmis = count(
            vmis.list(&ListParams::default())
                .await
                .map(|l| l.items.len()),
        );
        if left_vms == 0 && left_vmis == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{left_vms} VMs and {left_vmis} VMIs of {ns} left 300 s after deleting the VMs"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The handler's stream endpoint (`host:port`) from its Lease.
async fn stream_addr(client: &Client, node: &str) -> Result<String, String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let lease = leases
        .get(&handler_lease_name(node))
        .await
        .map_err(|e| format!("the handler Lease of {node}: {e}"))?;
    lease
        .annotations()
        .get(STREAM_URL_ANNOTATION)
        .map(|u| {
            u.trim_start_matches("https://")
                .trim_end_matches('/')
                .to_owned()
        })
        .ok_or_else(|| format!("the handler Lease of {node} has no {STREAM_URL_ANNOTATION}"))
}

/// TLS for the handler's stream endpoint: trusts the ironvirt CA and
/// presents ironvirt-api's client certificate.
fn stream_tls(pki: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |n: &str| {
        let p: PathBuf = pki.join(n);
        std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read(&format!("{}.crt", names::IRONVIRT_CA))?.as_slice()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let certs =
        rustls_pemfile::certs(&mut read(&format!("{}.crt", names::HANDLER_CLIENT))?.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
    let key = rustls_pemfile::private_key(
        &mut read(&format!("{}.key", names::HANDLER_CLIENT))?.as_slice(),
    )
    .map_err(|e| e.to_string())?
    .ok_or("no client key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(tls))
}

/// Opens the console websocket of VMI `ns/name` on the handler at `addr`.
async fn open_console(
    tls: Arc<rustls::ClientConfig>,
    addr: &str,
    node: &str,
    ns: &str,
    name: &str,
) -> Result<WsSession<TlsTcp>, String> {
    let server_name = ironvirt_crds::wire::handler_server_name(node);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let sni =
        rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(|e| e.to_string())?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(sni, tcp)
        .await
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    let url =
        format!("wss://{server_name}/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        http::HeaderValue::from_static(ironvirt_crds::wire::STREAM_SUBPROTOCOL),
    );
    let (ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .map_err(|e| format!("console of {name}: {e}"))?;
    Ok(WsSession::new(ws))
}

/// When each VMI of `ns` was first seen Running, and the VMIs seen Failed.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    failed: HashMap<String, String>,
}

fn watch_vmis(client: Client, ns: &str) -> (Arc<Mutex<Seen>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let api: Api<VirtualMachineInstance> = Api::namespaced(client, ns);
    let out = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(ev) = stream.next().await {
            let Ok(vmi) = ev else { continue };
            let phase = vmi.status.as_ref().and_then(|s| s.phase);
            let Ok(mut s) = out.lock() else { return };
            match phase {
                Some(VirtualMachineInstancePhase::Running) => {
                    s.running.entry(vmi.name_any()).or_insert_with(Instant::now);
                }
                Some(VirtualMachineInstancePhase::Failed) => {
                    let why = vmi
                        .status
                        .as_ref()
                        .and_then(|st| serde_json::to_string(&st.conditions).ok())
                        .unwrap_or_default();
                    s.failed.insert(vmi.name_any(), why);
                }
                _ => {}
            }
        }
    });
    (seen, task)
}

/// Samples the 1-minute load average every 2 s; the highest so far.
fn sample_load() -> (Arc<Mutex<f64>>, tokio::task::JoinHandle<()>) {
    let max = Arc::new(Mutex::new(load1()));
    let out = Arc::clone(&max);
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let l = load1();
            if let Ok(mut m) = out.lock()
                && l > *m
            {
                *m = l;
            }
        }
    });
    (max, task)
}

async fn measure(
    bed: &TestBed,
    client: &Client,
    ns: &str,
    node: &Node,
    image: &str,
    cfg: &Config,
) -> Result<Figures, String> {
    let node_name = node.record.name.clone();
    let addr = stream_addr(client, &node_name).await?;
    let tls = stream_tls(&bed.info().pki_dir)?;
    // The node idle first.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = Snapshot::take(node);
    let (seen, watch) = watch_vmis(client.clone(), ns);
    let (load_max, load_task) = sample_load();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..cfg.vms).map(|i| format!("d-{i:03}")).collect();
    let t0 = Instant::now();
    let deadline = t0 + cfg.boot_timeout;
    let mut consoles = tokio::task::JoinSet::new();
    let mut created = HashMap::new();
    for name in &names {
        let manifest = vm(name, image, &cfg.memory)?;
        let at = Instant::now();
        vms.create(&PostParams::default(), &manifest)
            .await
            .map_err(|e| format!("create VM {name}: {e}"))?;
        created.insert(name.clone(), at);
        // Its console, as soon as its VMI runs.
        let (seen, tls, addr, node_name, ns, name) = (
            Arc::clone(&seen),
            Arc::clone(&tls),
            addr.clone(),
            node_name.clone(),
            ns.to_owned(),
            name.clone(),
        );
        consoles.spawn(async move {
            let r = marker(&seen, tls, &addr, &node_name, &ns, &name, deadline).await;
            (name, r)
        });
        tokio::time::sleep(cfg.interval).await;
    }
    let mut markers = HashMap::new();
    while let Some(done) = consoles.join_next().await {
        let (name, r) = done.map_err(|e| format!("a console task: {e}"))?;
        markers.insert(name, r);
    }
    let all_booted = markers
        .values()
        .filter_map(|r| r.as_ref().ok())
        .max()
        .map_or(Duration::ZERO, |t| t.saturating_duration_since(t0));

    // Memory once settled.
    tokio::time::sleep(cfg.settle).await;
    let procs = processes();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let uids: HashMap<String, String> = vmis
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list VMIs: {e}"))?
        .items
        .into_iter()
        .filter_map(|v| Some((v.name_any(), v.uid()?)))
        .collect();
    let after = Snapshot::take(node);
    let domain_cgroups_kib: Vec<u64> = names
        .iter()
        .filter_map(|n| qemu_of(&procs, &domain_name(ns, n)))
        .filter_map(cgroup_memory_kib)
        .collect();
    let load_max = load_max.lock().map(|m| *m).unwrap_or_default();
    load_task.abort();
    watch.abort();

    let (running, failed) = {
        let s = seen
            .lock()
            .map_err(|_| "the VMI watch panicked".to_owned())?;
        (s.running.clone(), s.failed.clone())
    };
    let mut guests = Vec::new();
    let mut qemu_pids = Vec::new();
    for name in &names {
        let at = created.get(name).copied().unwrap_or(t0);
        let dom = domain_name(ns, name);
        let qemu = qemu_of(&procs, &dom);
        qemu_pids.extend(qemu);
        let passt = uids.get(name).and_then(|uid| passt_of(&procs, uid));
        let (to_marker, error) = match markers.remove(name) {
            Some(Ok(t)) => (Some(t.saturating_duration_since(at)), None),
            Some(Err(e)) => (
                None,
                Some(failed.get(name).map_or(e, |f| format!("Failed: {f}"))),
            ),
            None => (None, Some("no console task".to_owned())),
        };
        guests.push(Guest {
            name: name.clone(),
            to_running: running.get(name).map(|r| r.saturating_duration_since(at)),
            to_marker,
            error,
            qemu: qemu.map(mem_of),
            qemu_cpu_s: qemu.map(cpu_seconds).unwrap_or_default(),
            passt: passt.map(mem_of),
        });
    }

    // The booted guests' CPU use while idle.
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let c0 = cpu(&qemu_pids);
    let w0 = Instant::now();
    tokio::time::sleep(cfg.idle_window).await;
    let idle_cores = (cpu(&qemu_pids) - c0) / w0.elapsed().as_secs_f64().max(0.001);

    Ok(Figures {
        vms: cfg.vms,
        memory: cfg.memory.clone(),
        small_kernel: cfg.small_kernel,
        profile: cfg.profile.clone(),
        guests,
        before,
        after,
        load_max,
        all_booted,
        idle_cores,
        domain_cgroups_kib,
    })
}

/// Waits until VMI `name` runs, opens its console and waits for the marker;
/// the moment it arrived.
async fn marker(
    seen: &Mutex<Seen>,
    tls: Arc<rustls::ClientConfig>,
    addr: &str,
    node: &str,
    ns: &str,
    name: &str,
    deadline: Instant,
) -> Result<Instant, String> {
    loop {
        {
            let s = seen
                .lock()
                .map_err(|_| "the VMI watch panicked".to_owned())?;
            if s.running.contains_key(name) {
                break;
            }
            if let Some(f) = s.failed.get(name) {
                return Err(format!("VMI Failed: {f}"));
            }
        }
        if Instant::now() > deadline {
            return Err("the VMI did not run in time".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = String::new();
    while Instant::now() < deadline {
        match open_console(Arc::clone(&tls), addr, node, ns, name).await {
            Ok(mut ws) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = ws.expect_from(0, MARKER, left).await;
                let at = Instant::now();
                ws.close().await;
                return match r {
                    Ok(()) => Ok(at),
                    Err(e) => Err(format!("no marker: {e}")),
                };
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("the console did not open in time: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_secs(10));
        assert_eq!(percentile(&v, 95.0), Duration::from_secs(19));
        assert_eq!(percentile(&v, 100.0), Duration::from_secs(20));
        assert_eq!(percentile(&v[..1], 95.0), Duration::from_secs(1));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn finds_qemu_and_passt_by_command_line() {
        let p = |pid, comm: &str, args: &[&str]| {
            (
                pid,
                comm.to_owned(),
                args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
            )
        };
        let procs = vec![
            p(
                10,
                "qemu-system-x86",
                &[
                    "/usr/bin/qemu-system-x86_64",
                    "-name",
                    "guest=ironvirt-ns_d-001,debug-threads=on",
                ],
            ),
            p(
                11,
                "qemu-system-x86",
                &[
                    "/usr/bin/qemu-system-x86_64",
                    "-name",
                    "guest=ironvirt-ns_d-0010,debug-threads=on",
                ],
            ),
            p(
                12,
                "passt.avx2",
                &["passt", "--socket", "/run/ironvirt/net/u-1/passt.sock"],
            ),
            p(13, "bash", &["bash", "-c", "guest=ironvirt-ns_d-001,"]),
        ];
        assert_eq!(qemu_of(&procs, "ironvirt-ns_d-001"), Some(10));
        assert_eq!(qemu_of(&procs, "ironvirt-ns_d-0010"), Some(11));
        assert_eq!(qemu_of(&procs, "ironvirt-ns_d-002"), None);
        assert_eq!(passt_of(&procs, "u-1"), Some(12));
        assert_eq!(passt_of(&procs, "u-2"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let m = mem_of(me);
        assert!(m.rss > 0 && m.pss > 0, "{m:?}");
        assert!(mem_available() > 0);
        assert!(cpu_seconds(me) >= 0.0);
    }
}
