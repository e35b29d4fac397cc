//! Where hostDisk images may live and how large volumes may be: the cluster's
//! [`VolumePolicy`], checked twice.
//!
//! - [`check_volumes`] is pure and lexical: hostDisk on or off (the
//!   equivalent of KubeVirt's `HostDisk` feature gate), paths inside the VMI
//!   namespace's own directory `<root>/<namespace>/`, compared component by
//!   component (no `.`, `..` or empty components, so no string-prefix tricks),
//!   and capacity limits per emptyDisk / DiskOrCreate volume and per VMI.
//!   The admission webhook reports its errors with field paths; the handler
//!   runs it again before it touches the node.
//! - [`resolve_beneath`] walks the filesystem from `<root>/<namespace>` the way
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` would: no component may
//!   be a symbolic link (the root and the namespace directory included), every
//!   intermediate one must be a directory, and the image must be a regular
//!   file (never a device node, FIFO, socket or directory). For DiskOrCreate a
//!   missing image, and missing directories below the root, are reported as
//!   what to create; all of them lie inside the namespace directory.
//!
//! The walk checks with `symlink_metadata` and so cannot stop a file being
//! swapped between the check and the open: whoever opens the image (the
//! handler) still opens it with `O_NOFOLLOW` and checks what it opened.

use std::fmt;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use super::FieldError;
use crate::quantity::parse_quantity;
use crate::vmi::{HostDiskType, VirtualMachineInstanceSpec};
use crate::{VirtualMachineInstanceReplicaSetSpec, VirtualMachineSpec};

/// 1 TiB: the default largest emptyDisk or DiskOrCreate volume.
pub const DEFAULT_MAX_VOLUME_BYTES: u64 = 1 << 40;
/// 4 TiB: the default largest sum of a VMI's emptyDisk and DiskOrCreate capacities.
pub const DEFAULT_MAX_VMI_BYTES: u64 = 4 << 40;

/// hostDisk is on: images live under `root`, each namespace in its own
/// directory `<root>/<namespace>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDiskPolicy {
    /// An absolute directory on the nodes that the cluster admin controls.
    pub root: PathBuf,
}

impl HostDiskPolicy {
    /// `<root>/<namespace>`: the only directory a VMI of `namespace` may use.
    pub fn namespace_dir(&self, namespace: &str) -> PathBuf {
        self.root.join(namespace)
    }
}

/// What volumes a VMI may have on this cluster.
///
/// The default is the one `deploy/` runs with: hostDisk off, at most 1 TiB per
/// emptyDisk or DiskOrCreate volume ([`DEFAULT_MAX_VOLUME_BYTES`]) and 4 TiB
/// for all of a VMI's ([`DEFAULT_MAX_VMI_BYTES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePolicy {
    /// `None`: hostDisk is off (KubeVirt's `HostDisk` feature gate off).
    pub host_disk: Option<HostDiskPolicy>,
    /// The largest capacity of one emptyDisk or DiskOrCreate hostDisk; `None`: no limit.
    pub max_volume_bytes: Option<u64>,
    /// The largest sum of those capacities in one VMI; `None`: no limit.
    pub max_vmi_bytes: Option<u64>,
}

impl Default for VolumePolicy {
    fn default() -> Self {
        VolumePolicy {
            host_disk: None,
            max_volume_bytes: Some(DEFAULT_MAX_VOLUME_BYTES),
            max_vmi_bytes: Some(DEFAULT_MAX_VMI_BYTES),
        }
    }
}

impl VolumePolicy {
    /// The default limits with hostDisk on under `root`.
    pub fn with_host_disk_root(root: impl Into<PathBuf>) -> Self {
        VolumePolicy {
            host_disk: Some(HostDiskPolicy { root: root.into() }),
            ..Self::default()
        }
    }
}

/// The message for any hostDisk while hostDisk is off.
pub const HOST_DISK_DISABLED: &str = "hostDisk is disabled on this cluster (the equivalent of KubeVirt's HostDisk feature gate is off): the cluster admin turns it on with --host-disk-root; use emptyDisk or containerDisk instead";

/// Checks a VMI spec found at `path` (`spec`, or `spec.template.spec`) of a
/// VMI in `namespace` against `policy`: hostDisk on, its paths inside
/// `<root>/<namespace>/`, and the capacities of emptyDisk and DiskOrCreate
/// volumes within the limits. Pure: the filesystem is [`resolve_beneath`]'s.
///
/// Capacities that do not parse are left to [`super::vmi_spec`], which
/// reports them; a relative hostDisk path is reported with the same message
/// it gives.
pub fn check_volumes(
    spec: &VirtualMachineInstanceSpec,
    namespace: &str,
    policy: &VolumePolicy,
    path: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut total: u64 = 0;
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("{path}.volumes[{i}]");
        if let Some(e) = &v.empty_disk {
            let cfield = format!("{field}.emptyDisk.capacity");
            total = total.saturating_add(capacity(&e.capacity, &cfield, policy, &mut errors));
        }
        let Some(h) = &v.host_disk else { continue };
        match &policy.host_disk {
            None => errors.push(FieldError::forbidden(
                format!("{field}.hostDisk"),
                HOST_DISK_DISABLED,
            )),
            Some(hd) => {
                let dir = hd.namespace_dir(namespace);
                if let Err(e) = beneath(&dir, namespace, &h.path) {
                    let pfield = format!("{field}.hostDisk.path");
                    errors.push(match e {
                        HostDiskError::NotAbsolute { path } => {
                            FieldError::new(pfield, format!("'{path}' is not an absolute path"))
                        }
                        e => FieldError::forbidden(pfield, e.to_string()),
                    });
                }
            }
        }
        if let (HostDiskType::DiskOrCreate, Some(c)) = (h.disk_type, &h.capacity) {
            let cfield = format!("{field}.hostDisk.capacity");
            total = total.saturating_add(capacity(c, &cfield, policy, &mut errors));
        }
    }
    if let Some(max) = policy.max_vmi_bytes
        && total > max
    {
        errors.push(FieldError::forbidden(
            format!("{path}.volumes"),
            format!(
                "the emptyDisk and DiskOrCreate capacities add up to {}, more than the maximum of {} per VMI on this cluster",
                human_bytes(total),
                human_bytes(max)
            ),
        ));
    }
    errors
}

/// [`check_volumes`] on a VirtualMachine's template (`spec.template.spec`).
pub fn check_vm_volumes(
    spec: &VirtualMachineSpec,
    namespace: &str,
    policy: &VolumePolicy,
) -> Vec<FieldError> {
    spec.template
        .spec
        .as_ref()
        .map(|t| check_volumes(t, namespace, policy, "spec.template.spec"))
        .unwrap_or_default()
}

/// [`check_volumes`] on a VMI ReplicaSet's template (`spec.template.spec`).
pub fn check_vmirs_volumes(
    spec: &VirtualMachineInstanceReplicaSetSpec,
    namespace: &str,
    policy: &VolumePolicy,
) -> Vec<FieldError> {
    spec.template
        .spec
        .as_ref()
        .map(|t| check_volumes(t, namespace, policy, "spec.template.spec"))
        .unwrap_or_default()
}

/// The capacity in bytes (0 when it does not parse or is negative: reported
/// elsewhere), with an error when it is above the per-volume maximum.
fn capacity(
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    field: &str,
    policy: &VolumePolicy,
    errors: &mut Vec<FieldError>,
) -> u64 {
    let bytes = parse_quantity(q, false)
        .and_then(|b| u64::try_from(b).ok())
        .unwrap_or(0);
    if let Some(max) = policy.max_volume_bytes
        && bytes > max
    {
        errors.push(FieldError::forbidden(
            field,
            format!(
                "'{}' is more than the maximum of {} per volume on this cluster",
                q.0,
                human_bytes(max)
            ),
        ));
    }
    bytes
}

/// `bytes` as a quantity a user would write: `1Ti`, `512Mi`, else a number.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    for (i, unit) in UNITS.iter().enumerate().rev() {
        let size = 1u64 << (10 * (i + 1));
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    bytes.to_string()
}

/// Why a hostDisk path is refused. Each message is a sentence naming the path.
#[derive(Debug)]
pub enum HostDiskError {
    /// The path does not start with `/`.
    NotAbsolute { path: String },
    /// The path has a `.`, `..` or empty component.
    BadComponent { path: String },
    /// The namespace cannot name a directory (empty, `.`, `..`, a `/`).
    BadNamespace { namespace: String },
    /// The path is not inside the namespace's directory.
    Outside { path: String, dir: PathBuf },
    /// A component (`at`) is a symbolic link.
    Symlink { path: String, at: PathBuf },
    /// A component (`at`) that must be a directory is something else.
    NotADirectory { path: String, at: PathBuf },
    /// The image is not a regular file (`kind`: a directory, a device node, …).
    NotRegular { path: String, kind: &'static str },
    /// `at` does not exist (the root, a directory, or the image of a `Disk`).
    Missing { path: String, at: PathBuf },
    /// `at` could not be examined.
    Io {
        path: String,
        at: PathBuf,
        source: io::Error,
    },
}

impl HostDiskError {
    /// Whether the refusal is only that something does not exist (yet). The
    /// admission webhook lets those through (the image may be placed before
    /// the VMI starts, and the webhook may not see the node's files); the
    /// handler refuses them.
    pub fn is_missing(&self) -> bool {
        matches!(self, HostDiskError::Missing { .. })
    }

    /// A short stable reason, for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            HostDiskError::NotAbsolute { .. }
            | HostDiskError::BadComponent { .. }
            | HostDiskError::BadNamespace { .. }
            | HostDiskError::Outside { .. } => "HostDiskOutsideRoot",
            HostDiskError::Symlink { .. } => "HostDiskSymlink",
            HostDiskError::NotADirectory { .. } | HostDiskError::NotRegular { .. } => {
                "HostDiskNotRegularFile"
            }
            HostDiskError::Missing { .. } => "HostDiskMissing",
            HostDiskError::Io { .. } => "HostDiskUnreadable",
        }
    }
}

impl fmt::Display for HostDiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostDiskError::NotAbsolute { path } => write!(f, "'{path}' is not an absolute path"),
            HostDiskError::BadComponent { path } => write!(
                f,
                "'{path}' has a '.', '..' or empty component: hostDisk paths are taken literally, without resolving them"
            ),
            HostDiskError::BadNamespace { namespace } => {
                write!(
                    f,
                    "namespace '{namespace}' cannot name a hostDisk directory"
                )
            }
            HostDiskError::Outside { path, dir } => write!(
                f,
                "'{path}' is not inside {}/: on this cluster a VMI's hostDisk images must lie in its namespace's own directory",
                dir.display()
            ),
            HostDiskError::Symlink { path, at } => write!(
                f,
                "'{path}' is refused: {} is a symbolic link, and hostDisk paths are resolved without following links",
                at.display()
            ),
            HostDiskError::NotADirectory { path, at } => write!(
                f,
                "'{path}' is refused: {} is not a directory",
                at.display()
            ),
            HostDiskError::NotRegular { path, kind } => write!(
                f,
                "'{path}' is {kind}: a hostDisk image must be a regular file"
            ),
            HostDiskError::Missing { path, at } => {
                if Path::new(path) == at {
                    write!(f, "'{path}' does not exist on the node")
                } else {
                    write!(
                        f,
                        "'{path}' does not exist on the node: {} is missing",
                        at.display()
                    )
                }
            }
            HostDiskError::Io { path, at, source } => {
                write!(f, "'{path}' cannot be examined: {}: {source}", at.display())
            }
        }
    }
}

impl std::error::Error for HostDiskError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HostDiskError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The components of `path` below `ns_dir` (at least one), lexically: `path`
/// absolute, without `.`, `..` or empty components, and inside `ns_dir`
/// component by component. `namespace` is `ns_dir`'s last component.
fn beneath<'p>(
    ns_dir: &Path,
    namespace: &str,
    path: &'p str,
) -> Result<Vec<&'p str>, HostDiskError> {
    if namespace.is_empty() || namespace == "." || namespace == ".." || namespace.contains('/') {
        return Err(HostDiskError::BadNamespace {
            namespace: namespace.to_owned(),
        });
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(HostDiskError::NotAbsolute {
            path: path.to_owned(),
        });
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err(HostDiskError::BadComponent {
            path: path.to_owned(),
        });
    }
    let outside = || HostDiskError::Outside {
        path: path.to_owned(),
        dir: ns_dir.to_owned(),
    };
    let mut dir = Vec::new();
    for c in ns_dir.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => dir.push(n.to_str().ok_or_else(outside)?),
            // A relative or `..`-laden root is a configuration error: nothing is inside it.
            _ => return Err(outside()),
        }
    }
    if !ns_dir.is_absolute() || parts.len() <= dir.len() || parts[..dir.len()] != dir[..] {
        return Err(outside());
    }
    Ok(parts[dir.len()..].to_vec())
}

/// A hostDisk path that [`resolve_beneath`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolvedHostDisk {
    /// A regular file of `bytes`.
    File { path: PathBuf, bytes: u64 },
    /// DiskOrCreate, and the image does not exist: create `dirs` (outermost
    /// first, each inside the namespace directory, which may be the first),
    /// then the image at `path`.
    Create { path: PathBuf, dirs: Vec<PathBuf> },
}

/// Walks `path` from `root_ns_dir` (`<root>/<namespace>`) without following
/// symbolic links or `..`, the equivalent of
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`:
///
/// - `path` must be absolute, inside `root_ns_dir` (component by component)
///   and free of `.`, `..` and empty components;
/// - the root (`root_ns_dir`'s parent) must be an existing directory, and
///   neither it, the namespace directory nor any component below may be a
///   symbolic link; every intermediate component must be a directory;
/// - the image must be a regular file: never a device node, FIFO, socket or
///   directory;
/// - when it is missing, `create` (DiskOrCreate) gives
///   [`ResolvedHostDisk::Create`] with the directories to make, all inside
///   the namespace directory; otherwise [`HostDiskError::Missing`].
pub fn resolve_beneath(
    root_ns_dir: &Path,
    path: &Path,
    create: bool,
) -> Result<ResolvedHostDisk, HostDiskError> {
    let path_text = path.to_string_lossy().into_owned();
    let namespace = root_ns_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parts = beneath(root_ns_dir, &namespace, &path_text)?;
    let text = path_text.clone();
    let Some(root) = root_ns_dir.parent() else {
        return Err(HostDiskError::Outside {
            path: text,
            dir: root_ns_dir.to_owned(),
        });
    };
    match kind_of(&text, root)? {
        Some(Kind::Dir) => {}
        Some(_) => {
            return Err(HostDiskError::NotADirectory {
                path: text,
                at: root.to_owned(),
            });
        }
        None => {
            return Err(HostDiskError::Missing {
                path: text,
                at: root.to_owned(),
            });
        }
    }
    let mut dirs = Vec::new();
    let mut cur = root_ns_dir.to_owned();
    let (last, middle) = match parts.split_last() {
        Some(split) => split,
        None => {
            return Err(HostDiskError::Outside {
                path: text,
                dir: root_ns_dir.to_owned(),
            });
        }
    };
    // The namespace directory, then each directory below it.
    let check_dir = |at: &Path, dirs: &mut Vec<PathBuf>| -> Result<(), HostDiskError> {
        if !dirs.is_empty() {
            // Below a missing directory everything is missing.
            dirs.push(at.to_owned());
            return Ok(());
        }
        match kind_of(&text, at)? {
            Some(Kind::Dir) => Ok(()),
            Some(Kind::Other) => Err(HostDiskError::NotADirectory {
                path: text.clone(),
                at: at.to_owned(),
            }),
            None if create => {
                dirs.push(at.to_owned());
                Ok(())
            }
            None => Err(HostDiskError::Missing {
                path: text.clone(),
                at: at.to_owned(),
            }),
        }
    };
    check_dir(&cur, &mut dirs)?;
    for part in middle {
        cur.push(part);
        check_dir(&cur, &mut dirs)?;
    }
    cur.push(last);
    if !dirs.is_empty() {
        return Ok(ResolvedHostDisk::Create { path: cur, dirs });
    }
    match std::fs::symlink_metadata(&cur) {
        Ok(m) if m.file_type().is_symlink() => Err(HostDiskError::Symlink {
            path: text,
            at: cur,
        }),
        Ok(m) if m.file_type().is_file() => Ok(ResolvedHostDisk::File {
            path: cur,
            bytes: m.len(),
        }),
        Ok(m) => Err(HostDiskError::NotRegular {
            path: text,
            kind: describe(&m.file_type()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            Ok(ResolvedHostDisk::Create { path: cur, dirs })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(HostDiskError::Missing {
            path: text,
            at: cur,
        }),
        Err(source) => Err(HostDiskError::Io {
            path: text,
            at: cur,
            source,
        }),
    }
}

enum Kind {
    Dir,
    Other,
}

/// What `at` is, without following a link: `None` when it does not exist, an
/// error when it is a link or cannot be examined.
fn kind_of(path: &str, at: &Path) -> Result<Option<Kind>, HostDiskError> {
    match std::fs::symlink_metadata(at) {
        Ok(m) if m.file_type().is_symlink() => Err(HostDiskError::Symlink {
            path: path.to_owned(),
            at: at.to_owned(),
        }),
        Ok(m) if m.is_dir() => Ok(Some(Kind::Dir)),
        Ok(_) => Ok(Some(Kind::Other)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HostDiskError::Io {
            path: path.to_owned(),
            at: at.to_owned(),
            source,
        }),
    }
}

/// What a file type is, for messages ("a directory", "a FIFO", …).
pub fn describe(t: &std::fs::FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_file() {
        "a regular file"
    } else {
        "not a regular file"
    }
}

/// The `--host-disk-root` flag of ironvirt-api and the handler: an absolute
/// directory without `.` or `..` components.
pub fn parse_host_disk_root(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    let plain = p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if p.is_absolute() && plain {
        Ok(p)
    } else {
        Err(format!(
            "{s:?} is not an absolute directory without '.' or '..' components"
        ))
    }
}

/// The capacity flags of ironvirt-api and the handler: a quantity of bytes
/// such as 1Ti or 500Gi.
pub fn parse_byte_quantity(s: &str) -> Result<u64, String> {
    let q = k8s_openapi::apimachinery::pkg::api::resource::Quantity(s.to_owned());
    parse_quantity(&q, false)
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("{s:?} is not a quantity of bytes such as 1Ti or 500Gi"))
}

#[cfg(test)]
#[path = "hostdisk_tests.rs"]
mod tests;
