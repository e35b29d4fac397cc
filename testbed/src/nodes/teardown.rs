//! Stopping nodes and removing what they had on the machine: processes left
//! in their namespaces, cgroups, namespaces, veths and the bridge.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::MntFlags;

use super::bridge::{delete_link, host_table};
use super::cgroups::{machine_cgroups, node_cgroup, remove_cgroups, stale_node_cgroups};
use super::layout::{lock_nodes, net_record_path, ns_dir};
use super::libvirt::virsh;
use super::namespaces::{guest_namespaces, node_namespaces, ns_identity};
use super::{
    NodeError, NodeRecord, Result, mounts_under, net_record, nodes_dir, pids_in, record, records,
    run, supervisor, tag,
};
use crate::layout::Layout;
use crate::process::{Supervisor, process_alive};

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

pub(super) fn stop_node_locked(layout: &Layout, name: &str) -> Result<()> {
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
pub(super) fn remove_namespaces(rec: &NodeRecord) -> Result<()> {
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
