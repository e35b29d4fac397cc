//! The files behind a VMI's volumes: hostDisk images, emptyDisk qcow2 files,
//! containerDisk overlays and cloud-init NoCloud (CIDATA) disks.
//!
//! [`plan`] is pure: it decides, from the VMI and the cluster's
//! [`VolumePolicy`], which file each volume needs and what goes into it.
//! [`prepare`] makes the files (idempotently: a handler killed half-way runs
//! it again) and [`cleanup`] removes the per-VMI files. Per-VMI files live in
//! one directory per VMI uid, so removing that directory removes them all.
//!
//! # The volume policy, enforced on the node
//!
//! The admission webhook checks the same [`VolumePolicy`], but the handler
//! does not trust that it ran (a privileged user may change a VMI's spec, a
//! webhook may be misconfigured):
//!
//! - [`plan`] runs [`check_volumes`] for the VMI's namespace: hostDisk on
//!   (`--host-disk-root`), its paths inside `<root>/<namespace>/`, and the
//!   emptyDisk / DiskOrCreate capacities within the limits. A violation is a
//!   [`VolumeError::Policy`].
//! - [`prepare`] walks each hostDisk path from `<root>/<namespace>` with
//!   [`resolve_beneath`] (no symbolic link, no `..`, a regular file), opens
//!   the image with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and
//!   `O_NOFOLLOW` and checks that what it opened is a regular file. A
//!   DiskOrCreate image (and its missing directories) is created only inside
//!   the namespace's directory, and checked the same way afterwards. A refusal
//!   is a [`VolumeError::HostDisk`] with the reason of [`HostDiskError`].
//! - Before it creates an image (emptyDisk, DiskOrCreate), [`prepare`] checks
//!   the free space of the file system it goes on: a capacity above it is a
//!   [`VolumeError::InsufficientStorage`]. (The images are sparse; a capacity
//!   above all the free space is still refused.)
//!
//! The handler checks paths in its own mount namespace, so the hostDisk root
//! must be mounted into the handler at the path it has on the host (libvirtd
//! opens the images on the host).
//!
//! # Layout
//!
//! This file holds the entry points and what every volume shares (its name,
//! its one source); each kind has a file with its planning and its
//! preparing: `host_disk`, `empty_disk`, `container_disk`, `cloud_init`;
//! `kernel_boot` plans `firmware.kernelBoot.container`, whose files come from
//! the image cache as a containerDisk's do. `files` holds the file-system and
//! tool helpers they use.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::quantity::parse_quantity;
use ironvirt_crds::validate::{
    self, FieldError, HostDiskError, ResolvedHostDisk, VolumePolicy, check_volumes, resolve_beneath,
};
use ironvirt_crds::vmi::{
    CloudInitNoCloudSource, ContainerDiskSource, EmptyDiskSource, HostDisk, HostDiskType, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::domxml::{ImageFormat, ResolvedVolume};

mod cloud_init;
mod container_disk;
mod empty_disk;
mod files;
mod host_disk;
mod kernel_boot;

use cloud_init::*;
pub use container_disk::ContainerDiskPlan;
use container_disk::*;
use empty_disk::*;
use files::*;
use host_disk::*;
pub use kernel_boot::{KernelBootPlan, plan_kernel_boot};

/// Secret data the VMI's cloud-init volumes reference, by Secret name, then key.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// What one volume needs on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// An image at a node path inside `ns_dir`, the VMI namespace's
    /// directory under the hostDisk root (`<root>/<namespace>`), from where
    /// [`prepare`] resolves it. `create` is Some(bytes) for DiskOrCreate.
    HostDisk {
        path: PathBuf,
        create: Option<u64>,
        ns_dir: PathBuf,
    },
    /// A blank qcow2 of `bytes`, private to the VMI.
    EmptyDisk { path: PathBuf, bytes: u64 },
    /// A cloud-init disk holding these files: vfat labelled CIDATA
    /// (NoCloud) or ISO 9660 labelled config-2 (config drive).
    CloudInit {
        path: PathBuf,
        files: CloudInitFiles,
    },
    /// An overlay on an image's disk, pulled first ([`crate::images`]).
    ContainerDisk(ContainerDiskPlan),
}

/// The pulled disks of the VMI's containerDisk volumes, by volume name.
pub type PulledDisks = BTreeMap<String, crate::images::CachedDisk>;

/// The cloud-init data source a disk is made for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudInitKind {
    /// `cloudInitNoCloud`: user-data, meta-data and network-config on a
    /// vfat disk labelled CIDATA.
    NoCloud,
    /// `cloudInitConfigDrive`: openstack/latest/user_data, meta_data.json
    /// and network_data.json on an ISO 9660 disk labelled config-2.
    ConfigDrive,
}

impl CloudInitKind {
    /// The volume source's field name.
    pub fn field(self) -> &'static str {
        match self {
            CloudInitKind::NoCloud => "cloudInitNoCloud",
            CloudInitKind::ConfigDrive => "cloudInitConfigDrive",
        }
    }
}

/// The cloud-init files of a NoCloud or config drive disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudInitFiles {
    /// Which data source the disk is for.
    pub kind: CloudInitKind,
    /// The user-data; empty when the volume gives none.
    pub user_data: Vec<u8>,
    /// NoCloud: `instance-id: <vmi uid>` and `local-hostname: <spec.hostname
    /// or name>`. Config drive: meta_data.json with `uuid`, `hostname` and
    /// the `public_keys` of accessCredentials propagated by configDrive.
    pub meta_data: String,
    /// The network-config (NoCloud) or network_data.json (config drive),
    /// when the volume gives network data.
    pub network_config: Option<Vec<u8>>,
}

/// Why a volume cannot be made. The message names the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A source ironvirt does not support (yet), e.g. containerDisk.
    #[error("{field}: {reason}")]
    Unsupported { field: String, reason: String },
    /// A bad spec: bad quantity, bad base64, missing secret key, …
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The cluster's [`VolumePolicy`] refuses the volumes (the first error
    /// gives the reason; the message lists them all, with their fields).
    #[error("{message}")]
    Policy {
        reason: PolicyViolation,
        message: String,
    },
    /// A hostDisk path the node refuses: missing (a Disk's image, or the
    /// root), a symbolic link on the way, not a regular file, outside the
    /// namespace's directory.
    #[error("{field}: {source}")]
    HostDisk {
        field: String,
        source: HostDiskError,
    },
    /// The file system an image goes on has less free space than its capacity.
    #[error("{field}: {message}")]
    InsufficientStorage { field: String, message: String },
    /// A file operation or a tool (qemu-img, mkfs.vfat, mcopy) failed.
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
}

/// Which part of the [`VolumePolicy`] a VMI's volumes break.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyViolation {
    /// A hostDisk while hostDisk is off (no `--host-disk-root`).
    HostDiskDisabled,
    /// A hostDisk path outside the namespace's directory, relative, or with
    /// `.`, `..` or empty components.
    HostDiskOutsideRoot,
    /// An emptyDisk / DiskOrCreate capacity, or their sum, above the limit.
    VolumeTooLarge,
}

impl PolicyViolation {
    /// What a [`check_volumes`] error is about, from its field:
    /// `….hostDisk` (hostDisk off), `….hostDisk.path`, or a capacity.
    fn of(e: &FieldError) -> Self {
        if e.field.ends_with(".hostDisk") {
            PolicyViolation::HostDiskDisabled
        } else if e.field.ends_with(".hostDisk.path") {
            PolicyViolation::HostDiskOutsideRoot
        } else {
            PolicyViolation::VolumeTooLarge
        }
    }
}

/// The directory holding a VMI's private files: `<state_dir>/vmis/<uid>`.
pub fn vmi_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("vmis").join(uid)
}

/// The names of the Secrets the VMI references for its guest: cloud-init
/// (`cloudInitNoCloud.secretRef`, `networkDataSecretRef`) and the SSH keys of
/// `accessCredentials`, sorted and
/// without duplicates.
pub fn referenced_secrets(vmi: &VirtualMachineInstance) -> Vec<String> {
    let names: BTreeSet<&str> = vmi
        .spec
        .volumes
        .iter()
        .flatten()
        .filter_map(Volume::cloud_init)
        .flat_map(|c| [c.secret_ref.as_ref(), c.network_data_secret_ref.as_ref()])
        .flatten()
        .map(|r| r.name.as_str())
        .filter(|n| !n.is_empty())
        .chain(ironvirt_crds::access::secret_names(
            vmi.spec.access_credentials.as_deref(),
        ))
        .collect();
    names.into_iter().map(str::to_owned).collect()
}

/// Plans every volume of `vmi`, by volume name. `dir` is the VMI's
/// [`vmi_dir`]; `policy` the cluster's volume policy, checked first
/// ([`check_volumes`] for the VMI's namespace).
///
/// Pure: it reads neither the file system nor the cluster; the data of the
/// Secrets [`referenced_secrets`] names comes in `secrets`. Errors name the
/// field at fault, for example `spec.volumes[1].emptyDisk.capacity`.
pub fn plan(
    vmi: &VirtualMachineInstance,
    dir: &Path,
    policy: &VolumePolicy,
    secrets: &SecretData,
) -> Result<BTreeMap<String, VolumePlan>, VolumeError> {
    let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let violations = check_volumes(&vmi.spec, namespace, policy, "spec");
    if let Some(first) = violations.first() {
        return Err(VolumeError::Policy {
            reason: PolicyViolation::of(first),
            message: validate::join(&violations),
        });
    }
    let uid = vmi
        .metadata
        .uid
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("metadata.uid", "the VMI has no uid"))?;
    if !uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid(
            "metadata.uid",
            format!("{uid:?} is not a uid (letters, digits and '-')"),
        ));
    }
    let mut plans = BTreeMap::new();
    for (i, volume) in vmi.spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{i}]");
        check_volume_name(&volume.name, &field)?;
        if plans.contains_key(&volume.name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("{:?} is used by more than one volume", volume.name),
            ));
        }
        let plan = plan_volume(vmi, uid, volume, &field, dir, policy, secrets)?;
        plans.insert(volume.name.clone(), plan);
    }
    Ok(plans)
}

/// Makes the files of `plans` (blocking: run it off the async runtime) and
/// says which file and format backs each volume.
///
/// Idempotent, so a handler killed at any instant can run it again: images
/// appear under their final name only once complete (written to a temporary
/// name in the same directory, then renamed), existing hostDisk and emptyDisk
/// images are kept, and cloud-init disks are rebuilt every time. The VMI's
/// directory is created with mode 0700 when missing. hostDisk images are
/// resolved beneath their namespace's directory, and no image is created
/// larger than the free space of its file system (see the module docs).
///
/// `pulled` holds the disk of each containerDisk volume, pulled beforehand.
pub fn prepare(
    plans: &BTreeMap<String, VolumePlan>,
    pulled: &PulledDisks,
) -> Result<BTreeMap<String, ResolvedVolume>, VolumeError> {
    let mut resolved = BTreeMap::new();
    for (name, plan) in plans {
        let volume = match plan {
            VolumePlan::HostDisk {
                path,
                create,
                ns_dir,
            } => prepare_host_disk(name, path, *create, ns_dir)?,
            VolumePlan::EmptyDisk { path, bytes } => prepare_empty_disk(name, path, *bytes)?,
            VolumePlan::CloudInit { path, files } => prepare_cloud_init(name, path, files)?,
            VolumePlan::ContainerDisk(plan) => {
                let base = pulled.get(name).ok_or_else(|| VolumeError::Io {
                    what: format!("containerDisk {name}"),
                    reason: format!("{} was not pulled", plan.image),
                })?;
                prepare_container_disk(name, plan, base)?
            }
        };
        resolved.insert(name.clone(), volume);
    }
    Ok(resolved)
}

/// Removes a VMI's private files. A missing directory is not an error.
///
/// Symbolic links inside `dir` are removed, not followed.
pub fn cleanup(dir: &Path) -> Result<(), VolumeError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {
            tracing::debug!(dir = %dir.display(), "removed the VMI's volume files");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(format!("removing {}", dir.display()), &e)),
    }
}

/// The volume sources a [`Volume`] may set, borrowed.
enum Source<'a> {
    HostDisk(&'a HostDisk),
    EmptyDisk(&'a EmptyDiskSource),
    CloudInit(&'a CloudInitNoCloudSource, CloudInitKind),
    ContainerDisk(&'a ContainerDiskSource),
    /// A source ironvirt does not support, by its field name.
    Other(&'static str),
}

impl Source<'_> {
    fn field(&self) -> &'static str {
        match self {
            Source::HostDisk(_) => "hostDisk",
            Source::EmptyDisk(_) => "emptyDisk",
            Source::CloudInit(_, kind) => kind.field(),
            Source::ContainerDisk(_) => "containerDisk",
            Source::Other(field) => field,
        }
    }
}

/// Every source `volume` sets, in field order.
fn sources(volume: &Volume) -> Vec<Source<'_>> {
    let mut sources = Vec::new();
    if let Some(c) = &volume.container_disk {
        sources.push(Source::ContainerDisk(c));
    }
    if let Some(c) = &volume.cloud_init_no_cloud {
        sources.push(Source::CloudInit(c, CloudInitKind::NoCloud));
    }
    if let Some(c) = &volume.cloud_init_config_drive {
        sources.push(Source::CloudInit(c, CloudInitKind::ConfigDrive));
    }
    if let Some(e) = &volume.empty_disk {
        sources.push(Source::EmptyDisk(e));
    }
    if let Some(h) = &volume.host_disk {
        sources.push(Source::HostDisk(h));
    }
    let others = [
        (
            "persistentVolumeClaim",
            volume.persistent_volume_claim.is_some(),
        ),
        ("dataVolume", volume.data_volume.is_some()),
        ("ephemeral", volume.ephemeral.is_some()),
        ("configMap", volume.config_map.is_some()),
        ("secret", volume.secret.is_some()),
        ("serviceAccount", volume.service_account.is_some()),
        ("downwardAPI", volume.downward_api.is_some()),
        ("sysprep", volume.sysprep.is_some()),
    ];
    sources.extend(
        others
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(field, _)| Source::Other(field)),
    );
    sources
}

/// The sources ironvirt supports, for messages.
const SUPPORTED: &str =
    "containerDisk, hostDisk, emptyDisk, cloudInitNoCloud or cloudInitConfigDrive";

fn plan_volume(
    vmi: &VirtualMachineInstance,
    uid: &str,
    volume: &Volume,
    field: &str,
    dir: &Path,
    policy: &VolumePolicy,
    secrets: &SecretData,
) -> Result<VolumePlan, VolumeError> {
    let mut sources = sources(volume);
    if sources.len() > 1 {
        let names: Vec<&str> = sources.iter().map(Source::field).collect();
        return Err(invalid(
            field,
            format!(
                "set exactly one volume source; found {}",
                names.join(" and ")
            ),
        ));
    }
    let Some(source) = sources.pop() else {
        return Err(invalid(
            field,
            format!("no volume source is set; set one of {SUPPORTED}"),
        ));
    };
    match source {
        Source::HostDisk(h) => {
            let namespace = vmi.metadata.namespace.as_deref().unwrap_or_default();
            plan_host_disk(h, &format!("{field}.hostDisk"), namespace, policy)
        }
        Source::EmptyDisk(e) => Ok(VolumePlan::EmptyDisk {
            path: dir.join(format!("{}.qcow2", volume.name)),
            bytes: capacity(&e.capacity, &format!("{field}.emptyDisk.capacity"))?,
        }),
        Source::CloudInit(c, kind) => Ok(VolumePlan::CloudInit {
            path: dir.join(match kind {
                CloudInitKind::NoCloud => format!("{}.cidata.img", volume.name),
                CloudInitKind::ConfigDrive => format!("{}.config-2.iso", volume.name),
            }),
            files: cloud_init_files(
                vmi,
                uid,
                c,
                kind,
                &format!("{field}.{}", kind.field()),
                secrets,
            )?,
        }),
        Source::ContainerDisk(c) => {
            plan_container_disk(c, &format!("{field}.containerDisk"), dir, &volume.name)
        }
        Source::Other(name) => Err(VolumeError::Unsupported {
            field: format!("{field}.{name}"),
            reason: format!("{name} volumes are not supported yet; use {SUPPORTED}"),
        }),
    }
}

/// Volume names become file names in the VMI's directory: letters, digits,
/// '-', '_' and '.', not starting with '.', at most 63 characters.
fn check_volume_name(name: &str, field: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            format!("{field}.name"),
            format!(
                "{name:?} is not a valid volume name (1 to 63 letters, digits, '-', '_' or '.', \
                 not starting with '.')"
            ),
        ))
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> VolumeError {
    VolumeError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The field of a volume in messages of [`prepare`], which knows volumes by
/// name only: `spec.volumes[name=root].hostDisk.path`.
fn volume_field(name: &str, rest: &str) -> String {
    format!("spec.volumes[name={name}].{rest}")
}

fn io_error(what: impl Into<String>, e: &io::Error) -> VolumeError {
    VolumeError::Io {
        what: what.into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests;
