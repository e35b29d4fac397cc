//! The nodes' cgroups: each node's partition under `machine`, and the
//! cgroups libvirt made for its domains, found and removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::{Result, io_err};

/// The cgroups libvirt made for the domains of `pids` (`/machine/<scope>`,
/// as /proc/PID/cgroup names them): a libvirtd that is gone (a crash) no
/// longer removes them when their QEMU ends.
pub(super) fn machine_cgroups(pids: &[u32]) -> BTreeSet<String> {
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
pub(super) fn node_cgroup(tag: &str, name: &str) -> String {
    format!("ivnode-{tag}-{name}")
}

/// The cgroup hierarchies: /sys/fs/cgroup itself (cgroup v2), or each
/// hierarchy mounted under it (v1, hybrid).
pub(super) fn cgroup_hierarchies() -> Vec<PathBuf> {
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
pub(super) fn stale_node_cgroups(tag: &str) -> BTreeSet<String> {
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
pub(super) fn ensure_node_cgroups(own: &str) -> Result<Vec<(PathBuf, PathBuf)>> {
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
pub(super) fn remove_cgroups(rel: &BTreeSet<String>) {
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
