//! What a node leaves behind, removed: its processes, mounts, network
//! namespaces, log links and container cgroups; the host's sysctls restored.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::MntFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::config::{self, NodePaths};
use super::node_ip::remove_node_ip;
use crate::process::process_alive;

pub(super) fn save_sysctls(paths: &NodePaths) {
    // Kept from an earlier, crashed run: those are the host's own values.
    if paths.saved_sysctls().exists() {
        return;
    }
    let text: String = config::KUBELET_SYSCTLS
        .iter()
        .filter_map(|k| {
            let v = fs::read_to_string(sysctl_path(k)).ok()?;
            Some(format!("{k} {}\n", v.trim()))
        })
        .collect();
    let _ = fs::write(paths.saved_sysctls(), text);
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

fn restore_sysctls(paths: &NodePaths) {
    let Ok(text) = fs::read_to_string(paths.saved_sysctls()) else {
        return;
    };
    for (k, v) in config::parse_saved_sysctls(&text) {
        let p = sysctl_path(&k);
        if fs::read_to_string(&p).is_ok_and(|cur| cur.trim() != v)
            && let Err(e) = fs::write(&p, &v)
        {
            tracing::warn!(sysctl = %k, error = %e, "could not restore");
        }
    }
    let _ = fs::remove_file(paths.saved_sysctls());
}

pub(super) fn netns_names() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line mentions `dir` (containerd, its shims,
/// kubelet), and separately their descendants (the containers).
fn processes_of(dir: &Path) -> (Vec<u32>, Vec<u32>) {
    let needle = dir.to_string_lossy().into_owned();
    let mut parent = Vec::new();
    let mut roots = Vec::new();
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return (Vec::new(), Vec::new());
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // ppid is the 2nd field after the ")" that ends the command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.push((pid, ppid));
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            roots.push(pid);
        }
    }
    let mut all = roots.clone();
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for (c, pp) in &parent {
            if *pp == p && !all.contains(c) && *c != me {
                all.push(*c);
            }
        }
        i += 1;
    }
    let descendants = all.split_off(roots.len());
    (roots, descendants)
}

/// Kills the node's processes: first its containers (SIGKILL: a container's
/// init ignores SIGTERM), then containerd, shims and kubelet (SIGTERM, then
/// SIGKILL). Every process seen is remembered: a container whose shim died
/// is no longer a descendant of anything of the node.
fn kill_processes(root: &Path, ids: &[String]) {
    let mut seen: Vec<u32> = Vec::new();
    for round in 0..3 {
        let (roots, mut descendants) = processes_of(root);
        // What still runs in the containers' cgroups, whoever its parent.
        descendants.extend(cgroup_pids(ids));
        for p in roots.iter().chain(&descendants) {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        let alive: Vec<u32> = seen.iter().copied().filter(|p| process_alive(*p)).collect();
        if alive.is_empty() {
            break;
        }
        for pid in &alive {
            let sig = if round == 0 && roots.contains(pid) {
                Signal::SIGTERM
            } else {
                Signal::SIGKILL
            };
            let _ = kill(Pid::from_raw(*pid as i32), sig);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && alive.iter().any(|p| process_alive(*p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Removes whatever a node left: its processes (containerd, shims,
/// containers, kubelet), mounts under its directory, the network namespaces
/// its containerd created, kubelet's links in /var/log/containers, empty
/// cgroups of its containers; restores the host sysctls. Safe to repeat.
pub fn sweep(paths: &NodePaths) {
    let root = paths.root();
    let ids = container_ids(paths);
    kill_processes(root, &ids);
    for m in crate::nodes::mounts_under(root) {
        if let Err(e) = nix::mount::umount2(&m, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "could not unmount");
        }
    }
    if let Ok(before) = fs::read_to_string(paths.netns_before()) {
        let before: Vec<&str> = before.lines().collect();
        for n in netns_names() {
            if n.starts_with("cni-") && !before.contains(&n.as_str()) {
                let p = Path::new("/run/netns").join(&n);
                let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&p);
            }
        }
        let _ = fs::remove_file(paths.netns_before());
    }
    if let Ok(rd) = fs::read_dir("/var/log/containers") {
        for e in rd.flatten() {
            let p = e.path();
            if fs::read_link(&p).is_ok_and(|t| t.starts_with(paths.pod_logs_dir())) {
                let _ = fs::remove_file(&p);
            }
        }
    }
    remove_container_cgroups(&ids);
    remove_node_ip(paths);
    restore_sysctls(paths);
    let created = paths.root().join("var-log-containers.created");
    if created.exists() {
        // Made by this node's kubelet; removed when empty.
        let _ = fs::remove_dir("/var/log/containers");
        let _ = fs::remove_file(created);
    }
    let created = Path::new(RUN_CONTAINERD_MARKER);
    if created.exists() {
        // Made by this node for its bind mount; removed when still empty and
        // no other node's containerd has its namespace's /run/containerd
        // mounted there (removing it would detach that mount).
        if !other_node_containerd_runs() && fs::remove_dir("/run/containerd").is_ok() {
            let _ = fs::remove_file(created);
        }
    }
}

/// Says that a kubelet node (of any bed) created /run/containerd, which the
/// last node to stop removes. On the host, beside that directory.
pub(super) const RUN_CONTAINERD_MARKER: &str = "/run/containerd.made-by-ironvirt-kubelet";

/// Whether a containerd of some kubelet node (of any bed) runs.
fn other_node_containerd_runs() -> bool {
    let Ok(rd) = fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|s| s.parse::<u32>().is_ok())
            && fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("containerd\0")
                    && c.contains("/kubelet/")
                    && c.contains("/containerd/config.toml")
            })
    })
}

/// The ids of the containers and sandboxes the node's containerd knows
/// (its CRI store and its tasks' state): runc names their cgroups
/// `/k8s.io/<id>` in every hierarchy.
fn container_ids(paths: &NodePaths) -> Vec<String> {
    let dir = paths.containerd_dir();
    let mut ids = Vec::new();
    for d in [
        dir.join("root/io.containerd.grpc.v1.cri/containers"),
        dir.join("root/io.containerd.grpc.v1.cri/sandboxes"),
        dir.join("state/io.containerd.runtime.v2.task/k8s.io"),
    ] {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if let Some(id) = e.file_name().to_str()
                && id.len() == 64
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && !ids.iter().any(|i| i == id)
            {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// The processes in the cgroups `/k8s.io/<id>` of `ids`, in any hierarchy.
fn cgroup_pids(ids: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") else {
        return pids;
    };
    for c in ctrls.flatten() {
        for id in ids {
            let procs = c.path().join("k8s.io").join(id).join("cgroup.procs");
            for p in fs::read_to_string(procs).unwrap_or_default().lines() {
                if let Ok(pid) = p.trim().parse::<u32>()
                    && !pids.contains(&pid)
                {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

/// Removes the (empty) cgroups of `ids` under `/sys/fs/cgroup/*/k8s.io/`,
/// and that directory when nothing else is left in it.
fn remove_container_cgroups(ids: &[String]) {
    let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in ctrls.flatten() {
        let base = c.path().join("k8s.io");
        if !base.is_dir() {
            continue;
        }
        for id in ids {
            let _ = fs::remove_dir(base.join(id));
        }
        let _ = fs::remove_dir(&base);
    }
}
