//! A node's machine dying and coming back (issue #18, node failure).
//!
//! [`kill_node`] is the power cord pulled: every process of the node gets
//! SIGKILL at once, without warning — its handler, virtlogd, libvirtd,
//! forwarder, QEMU, passt and whatever else runs in its namespaces or in
//! its guests' network namespaces — and its veth goes down, so that its
//! address stops answering as a dead machine's does. Everything a disk
//! would keep stays: the node's directories (libvirt's persistent domain
//! definitions in `etc/qemu`, `/var/lib/libvirt`, the handler's state), its
//! record and its namespaces. The cgroups libvirt made for its domains go,
//! as they would with the machine.
//!
//! [`restart_node`] is the machine booting again: what a reboot loses goes
//! (the namespaces, the node's `/run` directories: libvirt's sockets, pid
//! files and live domain status, the handler's console sockets, the guests'
//! network namespaces), then the node comes up with the same record (name,
//! index, address, host UUID) and directories: namespaces, virtlogd,
//! libvirtd (which finds its domains defined and shut off), forwarder and
//! handler. A node that still runs is killed first: a power cycle.
//!
//! [`super::stop_node`] removes a killed or restarted node as any other.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::bridge::{ensure_net, link_exists};
use super::cgroups::{cgroup_hierarchies, node_cgroup, remove_cgroups};
use super::layout::{check_name, lock_nodes};
use super::libvirt::start_libvirt;
use super::namespaces::{guest_namespaces, make_namespaces, node_namespaces};
use super::start::start_services;
use super::teardown::remove_namespaces;
use super::{
    NODE_PROCESSES, NodeError, NodeRecord, NodeSpec, Result, io_err, mounts_under, pids_in, record,
    run, supervisor, tag,
};
use crate::layout::Layout;
use crate::process::{Supervisor, process_alive};

/// The node's directories a reboot empties (`/run` is a tmpfs on a real
/// machine): libvirt's run directory, the handler's, the guests' network
/// namespaces. The others (`lib`, `etc`, `log`, `cache`, `handler`) are the
/// disk's and stay.
pub const VOLATILE_DIRS: &[&str] = &["run", "ironvirt-run", "netns"];

/// How long processes may take to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(15);
/// How long killed domains' cgroups may take to empty.
const CGROUP_WAIT: Duration = Duration::from_secs(5);

fn no_node(name: &str) -> NodeError {
    NodeError::Config(format!("the bed has no node {name}"))
}

/// Kills every process of node `name` with SIGKILL and takes its address
/// off the bridge, keeping its directories, record and namespaces (see the
/// module's documentation). Returns the pids killed; killing a dead node
/// again kills nothing.
pub fn kill_node(layout: &Layout, name: &str) -> Result<Vec<u32>> {
    check_name(name)?;
    let _lock = lock_nodes(layout)?;
    let rec = record(layout, name)?.ok_or_else(|| no_node(name))?;
    kill_locked(layout, &rec)
}

fn kill_locked(layout: &Layout, rec: &NodeRecord) -> Result<Vec<u32>> {
    // Where its processes are: the node's namespaces, its guests' network
    // namespaces (passt), and the supervised processes (the forwarder runs
    // in the host's namespaces).
    let mut ids = node_namespaces(rec);
    ids.extend(guest_namespaces(&rec.mntns));
    let names: Vec<String> = NODE_PROCESSES.iter().map(|p| rec.process(p)).collect();
    let supervised: Vec<u32> = supervisor(layout)
        .recorded()
        .into_iter()
        .filter(|r| names.contains(&r.name) && Supervisor::is_running(r))
        .map(|r| r.pid)
        .collect();
    let killed = kill9(&rec.name, || {
        let mut pids = pids_in(&ids);
        pids.extend(supervised.iter().copied().filter(|p| process_alive(*p)));
        pids
    })?;
    tracing::info!(node = %rec.name, pids = ?killed, "killed every process of the node");
    if link_exists(&rec.veth) {
        run("ip", ["link", "set", &rec.veth, "down"])?;
    }
    remove_domain_cgroups(&tag(layout), &rec.name);
    Ok(killed)
}

/// SIGKILL to every pid `targets` names, again until it names none alive
/// (a process may fork while dying); the pids killed.
fn kill9(node: &str, targets: impl Fn() -> Vec<u32>) -> Result<Vec<u32>> {
    let deadline = Instant::now() + KILL_WAIT;
    let mut killed = BTreeSet::new();
    loop {
        let alive: BTreeSet<u32> = targets()
            .into_iter()
            .filter(|p| process_alive(*p))
            .collect();
        if alive.is_empty() {
            return Ok(killed.into_iter().collect());
        }
        if Instant::now() > deadline {
            return Err(NodeError::Unkillable {
                node: node.to_owned(),
                pids: alive.into_iter().collect(),
            });
        }
        for pid in &alive {
            let Ok(raw) = i32::try_from(*pid) else {
                continue;
            };
            if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                killed.insert(*pid);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The cgroups under `machine/<node cgroup>` of hierarchy `root` (libvirt's
/// domains of the node), relative to `root`.
fn child_cgroups(root: &Path, node_cgroup: &str) -> BTreeSet<String> {
    let base = Path::new("machine").join(node_cgroup);
    fs::read_dir(root.join(&base))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some(base.join(e.file_name().to_str()?).display().to_string()))
        .collect()
}

/// The cgroups of node `name`'s domains that exist now, in every hierarchy
/// (none once [`kill_node`] ran, until the node runs a domain again).
pub fn domain_cgroups(layout: &Layout, name: &str) -> Vec<PathBuf> {
    let own = node_cgroup(&tag(layout), name);
    cgroup_hierarchies()
        .iter()
        .flat_map(|h| child_cgroups(h, &own).into_iter().map(|r| h.join(r)))
        .collect()
}

/// Whether a process is left in cgroup `dir` or one below it.
fn cgroup_busy(dir: &Path) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
        if !procs.trim().is_empty() {
            return true;
        }
        stack.extend(
            fs::read_dir(&d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
    }
    false
}

/// Removes the cgroups of the node's domains (its own partition stays: its
/// mount namespace has it mounted), once the killed QEMUs left them.
fn remove_domain_cgroups(tag: &str, name: &str) {
    let own = node_cgroup(tag, name);
    let hierarchies = cgroup_hierarchies();
    let rel: BTreeSet<String> = hierarchies
        .iter()
        .flat_map(|h| child_cgroups(h, &own))
        .collect();
    if rel.is_empty() {
        return;
    }
    let deadline = Instant::now() + CGROUP_WAIT;
    while Instant::now() < deadline
        && hierarchies
            .iter()
            .any(|h| rel.iter().any(|r| cgroup_busy(&h.join(r))))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_cgroups(&rel);
}

/// Empties the node's [`VOLATILE_DIRS`] under `dir`, as a reboot does;
/// refuses (an error) when something is mounted under one of them in this
/// namespace.
fn clear_volatile(dir: &Path) -> Result<()> {
    for sub in VOLATILE_DIRS {
        let d = dir.join(sub);
        if let Some(m) = mounts_under(&d).first() {
            return Err(NodeError::Config(format!(
                "{} is mounted in the host's namespace; not clearing {}",
                m.display(),
                d.display()
            )));
        }
        match fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&d)(e)),
        }
        fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    Ok(())
}

/// Boots node `spec.name` again after [`kill_node`] (see the module's
/// documentation): same record and directories, fresh namespaces and
/// `/run`, then virtlogd, libvirtd, forwarder and handler (`spec`'s). A
/// node that runs is killed first. On failure the node stays as far as it
/// got; [`super::stop_node`] removes it.
pub fn restart_node(layout: &Layout, spec: &NodeSpec) -> Result<NodeRecord> {
    check_name(&spec.name)?;
    let _lock = lock_nodes(layout)?;
    let rec = record(layout, &spec.name)?.ok_or_else(|| no_node(&spec.name))?;
    let started = Instant::now();
    let killed = kill_locked(layout, &rec)?;
    if !killed.is_empty() {
        tracing::info!(node = %rec.name, pids = ?killed, "the node still ran: power-cycled");
    }
    remove_namespaces(&rec)?;
    clear_volatile(&rec.dir)?;
    let net = ensure_net(layout)?;
    make_namespaces(layout, &net, &rec, started)?;
    start_libvirt(layout, &rec, started)?;
    start_services(layout, spec, &rec, started)?;
    tracing::info!(node = %rec.name, elapsed_ms = started.elapsed().as_millis() as u64, "node booted again");
    Ok(rec)
}

/// The directories of `dir` a reboot keeps (for checks): every node
/// directory but [`VOLATILE_DIRS`].
pub fn kept_dirs(dir: &Path) -> Vec<PathBuf> {
    super::NODE_MOUNTS
        .iter()
        .map(|(sub, _)| *sub)
        .filter(|sub| !VOLATILE_DIRS.contains(sub))
        .map(|sub| dir.join(sub))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_keeps_the_disk_and_empties_run() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        for (sub, _) in super::super::NODE_MOUNTS {
            fs::create_dir_all(dir.join(sub).join("x")).expect("mkdir");
            fs::write(dir.join(sub).join("x").join("f"), b"1").expect("write");
        }
        clear_volatile(dir).expect("clear");
        for sub in VOLATILE_DIRS {
            let d = dir.join(sub);
            assert!(d.is_dir(), "{sub} exists again");
            assert_eq!(fs::read_dir(&d).expect("read").count(), 0, "{sub} empty");
        }
        let kept = kept_dirs(dir);
        for want in ["lib", "etc", "handler", "log", "cache"] {
            assert!(kept.contains(&dir.join(want)), "{want} kept");
            assert!(
                dir.join(want).join("x").join("f").is_file(),
                "{want} intact"
            );
        }
        assert_eq!(
            kept.len() + VOLATILE_DIRS.len(),
            super::super::NODE_MOUNTS.len()
        );
        // Idempotent, also when a directory is missing.
        fs::remove_dir_all(dir.join("netns")).expect("rm");
        clear_volatile(dir).expect("clear again");
        assert!(dir.join("netns").is_dir());
    }

    #[test]
    fn volatile_dirs_are_node_directories() {
        for sub in VOLATILE_DIRS {
            let target = super::super::NODE_MOUNTS
                .iter()
                .find(|(s, _)| s == sub)
                .map(|(_, t)| *t);
            assert!(
                target.is_some_and(|t| t.starts_with("/run/")),
                "{sub} is a node directory under /run: {target:?}"
            );
        }
    }

    #[test]
    fn domain_cgroups_are_the_children_of_the_node_partition() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let own = node_cgroup("abc123", "node-1");
        for d in ["dom-a.libvirt-qemu/emulator", "dom-b.libvirt-qemu"] {
            fs::create_dir_all(root.join("machine").join(&own).join(d)).expect("mkdir");
        }
        fs::write(root.join("machine").join(&own).join("tasks"), b"").expect("file");
        fs::create_dir_all(
            root.join("machine")
                .join(node_cgroup("abc123", "node-2"))
                .join("x"),
        )
        .expect("mkdir");
        let got = child_cgroups(root, &own);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![
                format!("machine/{own}/dom-a.libvirt-qemu"),
                format!("machine/{own}/dom-b.libvirt-qemu"),
            ]
        );
        assert!(child_cgroups(root, "missing").is_empty());
    }

    #[test]
    fn kill9_of_nothing_kills_nothing() {
        assert_eq!(
            kill9("n", Vec::new).expect("nothing to kill"),
            Vec::<u32>::new()
        );
        // A pid that is not alive is not signalled.
        assert_eq!(
            kill9("n", || vec![u32::MAX]).expect("dead pid"),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn kill9_kills_a_process() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        // The child stays a zombie until waited for: not alive.
        let killed = kill9("n", || vec![pid]).expect("killed");
        assert_eq!(killed, vec![pid]);
        let status = child.wait().expect("wait");
        assert!(!status.success());
    }
}
