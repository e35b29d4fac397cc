//! Where a bed's nodes live and what they are called: the bed's tag, the
//! nodes' directory, node names, and the records there (under a lock).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{NetRecord, NodeError, NodeRecord, Result, io_err};
use crate::layout::Layout;

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

pub(super) fn ns_dir(layout: &Layout) -> PathBuf {
    nodes_dir(layout).join(".ns")
}

pub(super) fn net_record_path(layout: &Layout) -> PathBuf {
    nodes_dir(layout).join("net.json")
}

/// A valid node name: a DNS label (it names the handler's certificate and a
/// network namespace).
pub(super) fn check_name(name: &str) -> Result<()> {
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
pub(super) struct FileLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

pub(super) fn lock(path: &Path) -> Result<FileLock> {
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

pub(super) fn lock_nodes(layout: &Layout) -> Result<FileLock> {
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

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
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
}
