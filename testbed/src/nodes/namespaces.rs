//! A node's network and mount namespaces: making them (veth onto the
//! bridge, the node's directories bind-mounted), and finding what runs in them.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::mount::MsFlags;

use super::cgroups::{ensure_node_cgroups, node_cgroup};
use super::layout::ns_dir;
use super::{NODE_MOUNTS, NSENTER, NetRecord, NodeError, NodeRecord, Result, io_err, run};
use crate::layout::Layout;

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

/// The node's directories and their mount points (idempotent).
pub(super) fn make_dirs(rec: &NodeRecord) -> Result<()> {
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
pub(super) fn make_namespaces(
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

/// The (device, inode) of the namespace a file refers to, when it is a
/// namespace file (a bind mount of one, or /proc/PID/ns/…).
pub(super) fn ns_identity(path: &Path) -> Option<(u64, u64)> {
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
pub(super) fn node_namespaces(rec: &NodeRecord) -> Vec<(u64, u64)> {
    [rec.mntns.clone(), rec.netns_path()]
        .iter()
        .filter_map(|p| ns_identity(p))
        .collect()
}

/// The network namespaces the node's handler made for its VMIs (the files
/// of the node's /run/netns, read inside its mount namespace while that
/// exists): passt runs in them, in mount and user namespaces of its own.
pub(super) fn guest_namespaces(mntns: &Path) -> Vec<(u64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
    }
}
