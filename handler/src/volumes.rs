//! The files behind a VMI's volumes: hostDisk images, emptyDisk qcow2 files
//! and cloud-init NoCloud (CIDATA) disks.
//!
//! [`plan`] is pure: it decides, from the VMI alone, which file each volume
//! needs and what goes into it. [`prepare`] makes the files (idempotently: a
//! handler killed half-way runs it again) and [`cleanup`] removes the per-VMI
//! files. Per-VMI files live in one directory per VMI uid, so removing that
//! directory removes them all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ironvirt_crds::VirtualMachineInstance;

use crate::domxml::ResolvedVolume;

/// Secret data the VMI's cloud-init volumes reference, by Secret name, then key.
pub type SecretData = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// What one volume needs on the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// An image at a node path. `create` is Some(bytes) for DiskOrCreate.
    HostDisk { path: PathBuf, create: Option<u64> },
    /// A blank qcow2 of `bytes`, private to the VMI.
    EmptyDisk { path: PathBuf, bytes: u64 },
    /// A vfat disk labelled CIDATA holding these files.
    CloudInit {
        path: PathBuf,
        files: CloudInitFiles,
    },
}

/// The NoCloud files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudInitFiles {
    pub user_data: Vec<u8>,
    /// `instance-id: <vmi uid>` and `local-hostname: <spec.hostname or name>`.
    pub meta_data: String,
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
    /// The image a hostDisk of type Disk names does not exist.
    #[error("{field}: {path} does not exist on the node")]
    Missing { field: String, path: PathBuf },
    /// A file operation or a tool (qemu-img, mkfs.vfat, mcopy) failed.
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
}

/// The directory holding a VMI's private files: `<state_dir>/vmis/<uid>`.
pub fn vmi_dir(state_dir: &Path, uid: &str) -> PathBuf {
    state_dir.join("vmis").join(uid)
}

/// The names of the Secrets the VMI's cloud-init volumes reference.
pub fn referenced_secrets(vmi: &VirtualMachineInstance) -> Vec<String> {
    let _ = vmi;
    todo!("volumes helper")
}

/// Plans every volume of `vmi`, by volume name. `dir` is the VMI's [`vmi_dir`].
pub fn plan(
    vmi: &VirtualMachineInstance,
    dir: &Path,
    secrets: &SecretData,
) -> Result<BTreeMap<String, VolumePlan>, VolumeError> {
    let _ = (vmi, dir, secrets);
    todo!("volumes helper")
}

/// Makes the files of `plans` (blocking: run it off the async runtime) and
/// says which file and format backs each volume.
pub fn prepare(
    plans: &BTreeMap<String, VolumePlan>,
) -> Result<BTreeMap<String, ResolvedVolume>, VolumeError> {
    let _ = plans;
    todo!("volumes helper")
}

/// Removes a VMI's private files. A missing directory is not an error.
pub fn cleanup(dir: &Path) -> Result<(), VolumeError> {
    let _ = dir;
    todo!("volumes helper")
}
