//! The files behind a VMI's volumes: hostDisk images, emptyDisk qcow2 files
//! and cloud-init NoCloud (CIDATA) disks.
//!
//! [`plan`] is pure: it decides, from the VMI alone, which file each volume
//! needs and what goes into it. [`prepare`] makes the files (idempotently: a
//! handler killed half-way runs it again) and [`cleanup`] removes the per-VMI
//! files. Per-VMI files live in one directory per VMI uid, so removing that
//! directory removes them all.

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
use ironvirt_crds::vmi::{CloudInitNoCloudSource, EmptyDiskSource, HostDisk, HostDiskType, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::domxml::{ImageFormat, ResolvedVolume};

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
    /// The `user-data` file; empty when the volume gives none.
    pub user_data: Vec<u8>,
    /// `instance-id: <vmi uid>` and `local-hostname: <spec.hostname or name>`.
    pub meta_data: String,
    /// The `network-config` file, when the volume gives network data.
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

/// The names of the Secrets the VMI's cloud-init volumes reference
/// (`cloudInitNoCloud.secretRef` and `networkDataSecretRef`), sorted and
/// without duplicates.
pub fn referenced_secrets(vmi: &VirtualMachineInstance) -> Vec<String> {
    let names: BTreeSet<&str> = vmi
        .spec
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.cloud_init_no_cloud.as_ref())
        .flat_map(|c| [c.secret_ref.as_ref(), c.network_data_secret_ref.as_ref()])
        .flatten()
        .map(|r| r.name.as_str())
        .filter(|n| !n.is_empty())
        .collect();
    names.into_iter().map(str::to_owned).collect()
}

/// Plans every volume of `vmi`, by volume name. `dir` is the VMI's [`vmi_dir`].
///
/// Pure: it reads neither the file system nor the cluster; the data of the
/// Secrets [`referenced_secrets`] names comes in `secrets`. Errors name the
/// field at fault, for example `spec.volumes[1].emptyDisk.capacity`.
pub fn plan(
    vmi: &VirtualMachineInstance,
    dir: &Path,
    secrets: &SecretData,
) -> Result<BTreeMap<String, VolumePlan>, VolumeError> {
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
        let plan = plan_volume(vmi, uid, volume, &field, dir, secrets)?;
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
/// directory is created with mode 0700 when missing.
pub fn prepare(
    plans: &BTreeMap<String, VolumePlan>,
) -> Result<BTreeMap<String, ResolvedVolume>, VolumeError> {
    let mut resolved = BTreeMap::new();
    for (name, plan) in plans {
        let volume = match plan {
            VolumePlan::HostDisk { path, create } => prepare_host_disk(name, path, *create)?,
            VolumePlan::EmptyDisk { path, bytes } => prepare_empty_disk(name, path, *bytes)?,
            VolumePlan::CloudInit { path, files } => prepare_cloud_init(name, path, files)?,
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

// ---------------------------------------------------------------------------
// Planning

/// The volume sources a [`Volume`] may set, borrowed.
enum Source<'a> {
    HostDisk(&'a HostDisk),
    EmptyDisk(&'a EmptyDiskSource),
    CloudInit(&'a CloudInitNoCloudSource),
    ContainerDisk,
    /// A source ironvirt does not support, by its field name.
    Other(&'static str),
}

impl Source<'_> {
    fn field(&self) -> &'static str {
        match self {
            Source::HostDisk(_) => "hostDisk",
            Source::EmptyDisk(_) => "emptyDisk",
            Source::CloudInit(_) => "cloudInitNoCloud",
            Source::ContainerDisk => "containerDisk",
            Source::Other(field) => field,
        }
    }
}

/// Every source `volume` sets, in field order.
fn sources(volume: &Volume) -> Vec<Source<'_>> {
    let mut sources = Vec::new();
    if volume.container_disk.is_some() {
        sources.push(Source::ContainerDisk);
    }
    if let Some(c) = &volume.cloud_init_no_cloud {
        sources.push(Source::CloudInit(c));
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
        (
            "cloudInitConfigDrive",
            volume.cloud_init_config_drive.is_some(),
        ),
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
const SUPPORTED: &str = "hostDisk, emptyDisk or cloudInitNoCloud";

fn plan_volume(
    vmi: &VirtualMachineInstance,
    uid: &str,
    volume: &Volume,
    field: &str,
    dir: &Path,
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
        Source::HostDisk(h) => plan_host_disk(h, &format!("{field}.hostDisk")),
        Source::EmptyDisk(e) => Ok(VolumePlan::EmptyDisk {
            path: dir.join(format!("{}.qcow2", volume.name)),
            bytes: capacity(&e.capacity, &format!("{field}.emptyDisk.capacity"))?,
        }),
        Source::CloudInit(c) => Ok(VolumePlan::CloudInit {
            path: dir.join(format!("{}.cidata.img", volume.name)),
            files: cloud_init_files(vmi, uid, c, &format!("{field}.cloudInitNoCloud"), secrets)?,
        }),
        Source::ContainerDisk => Err(VolumeError::Unsupported {
            field: format!("{field}.containerDisk"),
            reason: format!("containerDisk is not supported yet; use {SUPPORTED}"),
        }),
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

fn plan_host_disk(disk: &HostDisk, field: &str) -> Result<VolumePlan, VolumeError> {
    let path = PathBuf::from(&disk.path);
    let path_field = format!("{field}.path");
    if disk.path.contains('\0') {
        return Err(invalid(path_field, "the path contains a NUL character"));
    }
    if !path.is_absolute() {
        return Err(invalid(
            path_field,
            format!("{:?} is not an absolute path", disk.path),
        ));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(invalid(
            path_field,
            format!("{:?} must not contain '..'", disk.path),
        ));
    }
    if path.file_name().is_none() {
        return Err(invalid(
            path_field,
            format!("{:?} does not name a file", disk.path),
        ));
    }
    let create = match disk.disk_type {
        HostDiskType::Disk => None,
        HostDiskType::DiskOrCreate => {
            let capacity_field = format!("{field}.capacity");
            let q = disk.capacity.as_ref().ok_or_else(|| {
                invalid(
                    capacity_field.as_str(),
                    "a hostDisk of type DiskOrCreate needs a capacity",
                )
            })?;
            Some(capacity(q, &capacity_field)?)
        }
    };
    Ok(VolumePlan::HostDisk { path, create })
}

/// A positive number of bytes.
fn capacity(q: &Quantity, field: &str) -> Result<u64, VolumeError> {
    parse_quantity(q, false)
        .and_then(|n| u64::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            invalid(
                field,
                format!("{:?} is not a positive quantity of bytes", q.0),
            )
        })
}

fn cloud_init_files(
    vmi: &VirtualMachineInstance,
    uid: &str,
    source: &CloudInitNoCloudSource,
    field: &str,
    secrets: &SecretData,
) -> Result<CloudInitFiles, VolumeError> {
    // The CRD allows at most one user-data source (and at most one of the
    // inline network-data forms); should several be set anyway, the Secret
    // wins, then base64, then the inline text, as in KubeVirt.
    let user_data = if let Some(r) = &source.secret_ref {
        secret_value(
            secrets,
            &r.name,
            &["userdata", "userData"],
            &format!("{field}.secretRef"),
        )?
    } else if let Some(b) = &source.user_data_base64 {
        decode_base64(b, &format!("{field}.userDataBase64"))?
    } else if let Some(text) = &source.user_data {
        text.as_bytes().to_vec()
    } else {
        Vec::new()
    };
    let network_config = if let Some(r) = &source.network_data_secret_ref {
        Some(secret_value(
            secrets,
            &r.name,
            &["networkdata", "networkData"],
            &format!("{field}.networkDataSecretRef"),
        )?)
    } else if let Some(b) = &source.network_data_base64 {
        Some(decode_base64(b, &format!("{field}.networkDataBase64"))?)
    } else {
        source.network_data.as_ref().map(|t| t.as_bytes().to_vec())
    };
    // Like KubeVirt, empty network data means none: no network-config file.
    let network_config = network_config.filter(|n| !n.is_empty());
    Ok(CloudInitFiles {
        user_data,
        meta_data: format!("instance-id: {uid}\nlocal-hostname: {}\n", hostname(vmi)?),
        network_config,
    })
}

/// `spec.hostname`, else the VMI's name; checked, since it goes into
/// meta-data (YAML) verbatim.
fn hostname(vmi: &VirtualMachineInstance) -> Result<&str, VolumeError> {
    if let Some(h) = vmi.spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        let label = h.len() <= 63
            && h.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !h.starts_with('-')
            && !h.ends_with('-');
        return if label {
            Ok(h)
        } else {
            Err(invalid(
                "spec.hostname",
                format!("{h:?} is not a DNS label (lower-case letters, digits and '-')"),
            ))
        };
    }
    let name = vmi
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("metadata.name", "the VMI has no name"))?;
    if name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        Ok(name)
    } else {
        Err(invalid(
            "metadata.name",
            format!("{name:?} is not a DNS name and cannot be the hostname"),
        ))
    }
}

/// The first of `keys` in Secret `name`.
fn secret_value(
    secrets: &SecretData,
    name: &str,
    keys: &[&str],
    field: &str,
) -> Result<Vec<u8>, VolumeError> {
    let data = secrets
        .get(name)
        .ok_or_else(|| invalid(field, format!("Secret {name:?} not found")))?;
    keys.iter()
        .find_map(|k| data.get(*k))
        .cloned()
        .ok_or_else(|| {
            let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
            invalid(
                field,
                format!("Secret {name:?} has no key {}", keys.join(" or ")),
            )
        })
}

/// Standard base64; line breaks are ignored, as Go's decoder (KubeVirt's) does.
fn decode_base64(text: &str, field: &str) -> Result<Vec<u8>, VolumeError> {
    let compact: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    BASE64
        .decode(compact.as_bytes())
        .map_err(|e| invalid(field, format!("not valid base64: {e}")))
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> VolumeError {
    VolumeError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------
// Preparing

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

fn prepare_host_disk(
    name: &str,
    path: &Path,
    create: Option<u64>,
) -> Result<ResolvedVolume, VolumeError> {
    let field = volume_field(name, "hostDisk.path");
    // hostDisk paths are the user's choice of node path: links are followed.
    match probe(path, true).map_err(|e| io_error(format!("reading {}", path.display()), &e))? {
        Found::Image(format) => {
            tracing::debug!(
                volume = name,
                path = %path.display(),
                ?format,
                "hostDisk image exists"
            );
            Ok(resolved(path, format))
        }
        Found::Unusable(why) => Err(invalid(field, format!("{}: {why}", path.display()))),
        Found::Nothing => {
            let Some(bytes) = create else {
                return Err(VolumeError::Missing {
                    field,
                    path: path.to_path_buf(),
                });
            };
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)
                    .map_err(|e| io_error(format!("creating {}", parent.display()), &e))?;
            }
            let tmp = TempPath::file(tmp_name(path));
            let what = || format!("creating {}", tmp.path().display());
            let file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(tmp.path())
                .map_err(|e| io_error(what(), &e))?;
            // set_len on a new file makes it sparse: no blocks are written.
            file.set_len(bytes).map_err(|e| io_error(what(), &e))?;
            file.sync_all().map_err(|e| io_error(what(), &e))?;
            drop(file);
            if publish_no_clobber(tmp, path)? {
                tracing::info!(
                    volume = name,
                    path = %path.display(),
                    bytes,
                    "created hostDisk image"
                );
                Ok(resolved(path, ImageFormat::Raw))
            } else {
                // Someone (another VMI sharing the path) made it meanwhile.
                prepare_host_disk(name, path, None)
            }
        }
    }
}

fn prepare_empty_disk(name: &str, path: &Path, bytes: u64) -> Result<ResolvedVolume, VolumeError> {
    let dir = vmi_dir_of(path)?;
    ensure_vmi_dir(dir)?;
    let check = |found: Found| -> Result<Option<ResolvedVolume>, VolumeError> {
        match found {
            Found::Nothing => Ok(None),
            Found::Image(ImageFormat::Qcow2) => Ok(Some(resolved(path, ImageFormat::Qcow2))),
            Found::Image(ImageFormat::Raw) => Err(VolumeError::Io {
                what: format!("checking {}", path.display()),
                reason: "the emptyDisk image exists but is not a qcow2 image".to_owned(),
            }),
            Found::Unusable(why) => Err(VolumeError::Io {
                what: format!("checking {}", path.display()),
                reason: why,
            }),
        }
    };
    let probe_path =
        || probe(path, false).map_err(|e| io_error(format!("reading {}", path.display()), &e));
    if let Some(existing) = check(probe_path()?)? {
        // The image holds the running VMI's data: keep it.
        tracing::debug!(volume = name, path = %path.display(), "emptyDisk image exists");
        return Ok(existing);
    }
    let qemu_img = find_tool(&["qemu-img"], "qemu-utils (qemu-img)")?;
    let tmp = TempPath::file(tmp_name(path));
    run(Command::new(qemu_img)
        .args(["create", "-f", "qcow2", "-q"])
        .arg(tmp.path())
        .arg(bytes.to_string()))?;
    sync_file(tmp.path())?;
    if publish_no_clobber(tmp, path)? {
        tracing::info!(
            volume = name,
            path = %path.display(),
            bytes,
            "created emptyDisk image"
        );
    }
    check(probe_path()?)?.ok_or_else(|| VolumeError::Io {
        what: format!("creating {}", path.display()),
        reason: "the image vanished right after it was created".to_owned(),
    })
}

fn prepare_cloud_init(
    name: &str,
    path: &Path,
    files: &CloudInitFiles,
) -> Result<ResolvedVolume, VolumeError> {
    let dir = vmi_dir_of(path)?;
    ensure_vmi_dir(dir)?;
    let mkfs = find_tool(&["mkfs.vfat", "mkfs.fat"], "dosfstools (mkfs.vfat)")?;
    let mcopy = find_tool(&["mcopy"], "mtools (mcopy)")?;

    // Stage the files under the names they get on the disk. Volume names
    // never start with '.', so this cannot clash with a volume's file.
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let stage = TempPath::dir(dir.join(format!(".{file_name}.stage-{}", unique_suffix())));
    fs::DirBuilder::new()
        .mode(0o700)
        .create(stage.path())
        .map_err(|e| io_error(format!("creating {}", stage.path().display()), &e))?;
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("user-data", &files.user_data),
        ("meta-data", files.meta_data.as_bytes()),
    ];
    if let Some(n) = &files.network_config {
        entries.push(("network-config", n));
    }
    for (entry, data) in &entries {
        let p = stage.path().join(entry);
        fs::write(&p, data).map_err(|e| io_error(format!("writing {}", p.display()), &e))?;
    }

    let tmp = TempPath::file(tmp_name(path));
    run(Command::new(mkfs)
        .args(["-n", "CIDATA", "-C"])
        .arg(tmp.path())
        .arg(cidata_kib(files).to_string()))?;
    for (entry, _) in &entries {
        run(Command::new(&mcopy)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(tmp.path())
            .arg(stage.path().join(entry))
            .arg(format!("::{entry}")))?;
    }
    sync_file(tmp.path())?;
    let tmp_path = tmp.keep();
    fs::rename(&tmp_path, path).map_err(|e| {
        let _ = fs::remove_file(&tmp_path);
        io_error(
            format!("renaming {} to {}", tmp_path.display(), path.display()),
            &e,
        )
    })?;
    tracing::info!(
        volume = name,
        path = %path.display(),
        network_config = files.network_config.is_some(),
        "built cloud-init disk"
    );
    Ok(resolved(path, ImageFormat::Raw))
}

/// The size of a CIDATA disk in KiB: each file rounded up to 64 KiB, a
/// quarter more and 512 KiB for the file system's own structures; at least
/// 1 MiB.
fn cidata_kib(files: &CloudInitFiles) -> u64 {
    const SLACK: u64 = 64 * 1024;
    let lengths = [
        files.user_data.len(),
        files.meta_data.len(),
        files.network_config.as_ref().map_or(0, Vec::len),
    ];
    let data: u64 = lengths
        .iter()
        .map(|l| (*l as u64).div_ceil(SLACK) * SLACK)
        .sum();
    ((data + data / 4).div_ceil(1024) + 512).max(1024)
}

fn resolved(path: &Path, format: ImageFormat) -> ResolvedVolume {
    ResolvedVolume {
        path: path.to_path_buf(),
        format,
    }
}

/// The directory of a per-VMI file (the plan puts them all in the VMI's dir).
fn vmi_dir_of(path: &Path) -> Result<&Path, VolumeError> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| VolumeError::Io {
            what: format!("preparing {}", path.display()),
            reason: "the path has no parent directory".to_owned(),
        })
}

/// Creates the VMI's directory, private to root, when missing.
fn ensure_vmi_dir(dir: &Path) -> Result<(), VolumeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(format!("creating {}", dir.display()), &e))
}

/// What is at an image path.
#[derive(Debug)]
enum Found {
    Nothing,
    Image(ImageFormat),
    /// Something that must not be used as an image, and why.
    Unusable(String),
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 v3 incompatible feature bit: the guest data is in an external file.
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Looks at `path`: missing, or an image whose format its first bytes tell.
///
/// qcow2 images that name other files (a backing file, an external data
/// file) are unusable: the image's content, which a guest may have written,
/// would otherwise make QEMU open node paths nobody asked for.
fn probe(path: &Path, follow_links: bool) -> io::Result<Found> {
    let meta = if follow_links {
        fs::metadata(path)
    } else {
        fs::symlink_metadata(path)
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Nothing),
        Err(e) => return Err(e),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Ok(Found::Unusable(
            "is a symbolic link, which ironvirt does not follow here".to_owned(),
        ));
    }
    if kind.is_dir() {
        return Ok(Found::Unusable("is a directory, not an image".to_owned()));
    }
    let mut header = Vec::with_capacity(80);
    fs::File::open(path)?.take(80).read_to_end(&mut header)?;
    if !header.starts_with(QCOW2_MAGIC) {
        return Ok(Found::Image(ImageFormat::Raw));
    }
    let be_u32 = |at: usize| {
        header
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    let be_u64 = |at: usize| {
        header
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let (Some(version), Some(backing_offset)) = (be_u32(4), be_u64(8)) else {
        return Ok(Found::Unusable(
            "starts like a qcow2 image but its header is cut short".to_owned(),
        ));
    };
    if backing_offset != 0 {
        return Ok(Found::Unusable(
            "is a qcow2 image with a backing file, which ironvirt does not follow".to_owned(),
        ));
    }
    if version >= 3 && be_u64(72).unwrap_or(0) & QCOW2_EXTERNAL_DATA_FILE != 0 {
        return Ok(Found::Unusable(
            "is a qcow2 image with an external data file, which ironvirt does not follow"
                .to_owned(),
        ));
    }
    Ok(Found::Image(ImageFormat::Qcow2))
}

/// A temporary file or directory, removed on drop unless kept.
struct TempPath {
    path: Option<PathBuf>,
    dir: bool,
}

impl TempPath {
    fn file(path: PathBuf) -> Self {
        // A leftover of the same name cannot be ours to keep.
        let _ = fs::remove_file(&path);
        TempPath {
            path: Some(path),
            dir: false,
        }
    }

    fn dir(path: PathBuf) -> Self {
        TempPath {
            path: Some(path),
            dir: true,
        }
    }

    fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Stops removing the path on drop and returns it.
    fn keep(mut self) -> PathBuf {
        self.path.take().unwrap_or_default()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let result = if self.dir {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(e) = result
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "could not remove a temporary file"
                );
            }
        }
    }
}

/// `<pid>-<n>`, unique among this process's temporary files.
fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `<path>.tmp-<pid>-<n>`: beside `path`, so renaming it into place is atomic.
fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", unique_suffix()));
    path.with_file_name(name)
}

fn sync_file(path: &Path) -> Result<(), VolumeError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(format!("syncing {}", path.display()), &e))
}

/// Gives the complete file `tmp` its final name `path`, unless `path` exists
/// by now (then `tmp` is dropped and false returned): images may hold data
/// and are never replaced. Falls back to rename where hard links fail.
fn publish_no_clobber(tmp: TempPath, path: &Path) -> Result<bool, VolumeError> {
    match fs::hard_link(tmp.path(), path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            let tmp_path = tmp.keep();
            fs::rename(&tmp_path, path).map_err(|e| {
                let _ = fs::remove_file(&tmp_path);
                io_error(
                    format!("renaming {} to {}", tmp_path.display(), path.display()),
                    &e,
                )
            })?;
            Ok(true)
        }
    }
    // On the hard-link paths `tmp` drops here and removes the temporary name.
}

/// Finds a tool in the system directories (sbin ones first: PATH may lack
/// them), then in PATH.
fn find_tool(names: &[&str], package: &str) -> Result<PathBuf, VolumeError> {
    const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    SYSTEM_DIRS
        .iter()
        .map(PathBuf::from)
        .chain(path_dirs)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| VolumeError::Io {
            what: format!("looking for {}", names.join(" or ")),
            reason: format!(
                "not found in {} or PATH; install {package}",
                SYSTEM_DIRS.join(", ")
            ),
        })
}

/// Runs a tool; a failure is an [`VolumeError::Io`] with the command line and
/// the tool's stderr.
fn run(cmd: &mut Command) -> Result<(), VolumeError> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let output = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io_error(line.as_str(), &e))?;
    if output.status.success() {
        tracing::debug!(command = %line, "ran");
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(VolumeError::Io {
        what: line,
        reason: if stderr.is_empty() {
            format!("failed with {}", output.status)
        } else {
            stderr
        },
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const UID: &str = "0b1e2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";

    /// A VMI named `testvm` with uid [`UID`] and these volumes (YAML flow list).
    fn vmi_with(volumes: &str) -> VirtualMachineInstance {
        vmi_yaml(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {{name: testvm, namespace: default, uid: {UID}}}\n\
             spec: {{domain: {{}}, volumes: {volumes}}}\n"
        ))
    }

    fn vmi_yaml(yaml: &str) -> VirtualMachineInstance {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn no_secrets() -> SecretData {
        SecretData::new()
    }

    fn secrets(entries: &[(&str, &str, &[u8])]) -> SecretData {
        let mut s = SecretData::new();
        for (name, key, value) in entries {
            s.entry((*name).to_owned())
                .or_default()
                .insert((*key).to_owned(), value.to_vec());
        }
        s
    }

    fn plan_one(volumes: &str, secrets: &SecretData) -> Result<VolumePlan, VolumeError> {
        let plans = plan(&vmi_with(volumes), Path::new("/state/vmis/u"), secrets)?;
        assert_eq!(plans.len(), 1, "{plans:?}");
        Ok(plans.into_values().next().unwrap())
    }

    fn cloud_init(volumes: &str, secrets: &SecretData) -> CloudInitFiles {
        match plan_one(volumes, secrets).unwrap() {
            VolumePlan::CloudInit { files, .. } => files,
            other => panic!("not a cloud-init plan: {other:?}"),
        }
    }

    #[track_caller]
    fn assert_invalid(result: Result<impl std::fmt::Debug, VolumeError>, field: &str, words: &str) {
        match result {
            Err(VolumeError::Invalid { field: f, reason }) => {
                assert_eq!(f, field, "reason: {reason}");
                assert!(
                    reason.contains(words),
                    "{reason:?} does not contain {words:?}"
                );
            }
            other => panic!("expected Invalid on {field}, got {other:?}"),
        }
    }

    #[track_caller]
    fn assert_unsupported(
        result: Result<impl std::fmt::Debug, VolumeError>,
        field: &str,
    ) -> String {
        match result {
            Err(VolumeError::Unsupported { field: f, reason }) => {
                assert_eq!(f, field, "reason: {reason}");
                reason
            }
            other => panic!("expected Unsupported on {field}, got {other:?}"),
        }
    }

    // ---- referenced_secrets ------------------------------------------------

    #[test]
    fn referenced_secrets_are_sorted_and_unique() {
        let vmi = vmi_with(
            "[{name: a, cloudInitNoCloud: {secretRef: {name: zeta}, networkDataSecretRef: {name: alpha}}},\
              {name: b, cloudInitNoCloud: {secretRef: {name: alpha}}},\
              {name: c, cloudInitNoCloud: {userData: hi, networkDataSecretRef: {name: mid}}},\
              {name: d, hostDisk: {path: /x, type: Disk}}]",
        );
        assert_eq!(referenced_secrets(&vmi), ["alpha", "mid", "zeta"]);
    }

    #[test]
    fn no_cloud_init_means_no_secrets() {
        assert!(
            referenced_secrets(&vmi_with("[{name: d, emptyDisk: {capacity: 1Gi}}]")).is_empty()
        );
        let no_volumes = vmi_yaml(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {{name: x, uid: {UID}}}\nspec: {{domain: {{}}}}\n"
        ));
        assert!(referenced_secrets(&no_volumes).is_empty());
        assert!(
            plan(&no_volumes, Path::new("/d"), &no_secrets())
                .unwrap()
                .is_empty()
        );
    }

    // ---- plan: hostDisk ----------------------------------------------------

    #[test]
    fn host_disk_of_type_disk_is_used_as_is() {
        assert_eq!(
            plan_one(
                "[{name: root, hostDisk: {path: /var/lib/images/a.img, type: Disk}}]",
                &no_secrets()
            )
            .unwrap(),
            VolumePlan::HostDisk {
                path: PathBuf::from("/var/lib/images/a.img"),
                create: None
            }
        );
        // A capacity on a Disk means nothing.
        assert_eq!(
            plan_one(
                "[{name: root, hostDisk: {path: /a.img, type: Disk, capacity: nonsense}}]",
                &no_secrets()
            )
            .unwrap(),
            VolumePlan::HostDisk {
                path: PathBuf::from("/a.img"),
                create: None
            }
        );
    }

    #[test]
    fn host_disk_or_create_carries_its_capacity() {
        assert_eq!(
            plan_one(
                "[{name: data, hostDisk: {path: /d/data.img, type: DiskOrCreate, capacity: 1Gi}}]",
                &no_secrets()
            )
            .unwrap(),
            VolumePlan::HostDisk {
                path: PathBuf::from("/d/data.img"),
                create: Some(1 << 30)
            }
        );
        assert_eq!(
            plan_one(
                "[{name: data, hostDisk: {path: /d/data.img, type: DiskOrCreate, capacity: '5M'}}]",
                &no_secrets()
            )
            .unwrap(),
            VolumePlan::HostDisk {
                path: PathBuf::from("/d/data.img"),
                create: Some(5_000_000)
            }
        );
    }

    #[test]
    fn host_disk_or_create_needs_a_good_capacity() {
        let field = "spec.volumes[1].hostDisk.capacity";
        let with = |hd: &str| {
            plan(
                &vmi_with(&format!(
                    "[{{name: a, emptyDisk: {{capacity: 1Mi}}}}, {{name: b, hostDisk: {hd}}}]"
                )),
                Path::new("/d"),
                &no_secrets(),
            )
        };
        assert_invalid(
            with("{path: /b.img, type: DiskOrCreate}"),
            field,
            "needs a capacity",
        );
        assert_invalid(
            with("{path: /b.img, type: DiskOrCreate, capacity: lots}"),
            field,
            "\"lots\"",
        );
        assert_invalid(
            with("{path: /b.img, type: DiskOrCreate, capacity: '0'}"),
            field,
            "positive",
        );
        assert_invalid(
            with("{path: /b.img, type: DiskOrCreate, capacity: '-1Gi'}"),
            field,
            "positive",
        );
    }

    #[test]
    fn host_disk_paths_must_be_absolute_without_dot_dot() {
        let field = "spec.volumes[0].hostDisk.path";
        for (path, words) in [
            ("images/a.img", "not an absolute path"),
            ("./a.img", "not an absolute path"),
            ("''", "not an absolute path"),
            ("/images/../etc/shadow", "'..'"),
            ("/images/..", "'..'"),
            ("/", "does not name a file"),
            ("\"/a\\0b\"", "NUL"),
        ] {
            assert_invalid(
                plan_one(
                    &format!("[{{name: root, hostDisk: {{path: {path}, type: Disk}}}}]"),
                    &no_secrets(),
                ),
                field,
                words,
            );
        }
    }

    // ---- plan: emptyDisk ---------------------------------------------------

    #[test]
    fn empty_disk_lives_in_the_vmi_dir() {
        let plans = plan(
            &vmi_with("[{name: scratch, emptyDisk: {capacity: 2Gi}}, {name: small, emptyDisk: {capacity: '1000'}}]"),
            Path::new("/state/vmis/u"),
            &no_secrets(),
        )
        .unwrap();
        assert_eq!(
            plans["scratch"],
            VolumePlan::EmptyDisk {
                path: PathBuf::from("/state/vmis/u/scratch.qcow2"),
                bytes: 2 << 30
            }
        );
        assert_eq!(
            plans["small"],
            VolumePlan::EmptyDisk {
                path: PathBuf::from("/state/vmis/u/small.qcow2"),
                bytes: 1000
            }
        );
    }

    #[test]
    fn empty_disk_needs_a_positive_capacity() {
        let field = "spec.volumes[0].emptyDisk.capacity";
        assert_invalid(
            plan_one("[{name: s, emptyDisk: {capacity: big}}]", &no_secrets()),
            field,
            "\"big\"",
        );
        assert_invalid(
            plan_one("[{name: s, emptyDisk: {capacity: '0'}}]", &no_secrets()),
            field,
            "positive",
        );
        assert_invalid(
            plan_one("[{name: s, emptyDisk: {capacity: 1Qi}}]", &no_secrets()),
            field,
            "\"1Qi\"",
        );
    }

    // ---- plan: cloudInitNoCloud --------------------------------------------

    #[test]
    fn cloud_init_inline_user_data_and_meta_data() {
        let plan = plan_one(
            "[{name: cloudinit, cloudInitNoCloud: {userData: \"#!/bin/sh\\necho hi\\n\"}}]",
            &no_secrets(),
        )
        .unwrap();
        assert_eq!(
            plan,
            VolumePlan::CloudInit {
                path: PathBuf::from("/state/vmis/u/cloudinit.cidata.img"),
                files: CloudInitFiles {
                    user_data: b"#!/bin/sh\necho hi\n".to_vec(),
                    meta_data: format!("instance-id: {UID}\nlocal-hostname: testvm\n"),
                    network_config: None,
                }
            }
        );
    }

    #[test]
    fn cloud_init_hostname_comes_from_the_spec_when_set() {
        let vmi = vmi_yaml(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {{name: testvm, uid: {UID}}}\n\
             spec: {{domain: {{}}, hostname: guest-1, volumes: [{{name: ci, cloudInitNoCloud: {{}}}}]}}\n"
        ));
        let plans = plan(&vmi, Path::new("/d"), &no_secrets()).unwrap();
        let VolumePlan::CloudInit { files, .. } = &plans["ci"] else {
            panic!("{plans:?}")
        };
        assert_eq!(
            files.meta_data,
            format!("instance-id: {UID}\nlocal-hostname: guest-1\n")
        );
    }

    #[test]
    fn cloud_init_rejects_a_hostname_that_is_not_a_dns_label() {
        for bad in ["\"Guest\"", "\"a\\ninstance-id: x\"", "\"-a\"", "\"a.b\""] {
            let vmi = vmi_yaml(&format!(
                "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
                 metadata: {{name: testvm, uid: {UID}}}\n\
                 spec: {{domain: {{}}, hostname: {bad}, volumes: [{{name: ci, cloudInitNoCloud: {{}}}}]}}\n"
            ));
            assert_invalid(
                plan(&vmi, Path::new("/d"), &no_secrets()),
                "spec.hostname",
                "DNS label",
            );
        }
    }

    #[test]
    fn cloud_init_without_user_data_has_empty_user_data() {
        let files = cloud_init("[{name: ci, cloudInitNoCloud: {}}]", &no_secrets());
        assert!(files.user_data.is_empty());
        assert_eq!(files.network_config, None);
    }

    #[test]
    fn cloud_init_user_data_base64() {
        // "#cloud-config\n" wrapped over two lines, as base64 tools do.
        let files = cloud_init(
            "[{name: ci, cloudInitNoCloud: {userDataBase64: \"I2Nsb3Vk\\nLWNvbmZpZwo=\"}}]",
            &no_secrets(),
        );
        assert_eq!(files.user_data, b"#cloud-config\n");
    }

    #[test]
    fn cloud_init_bad_base64_names_the_field() {
        assert_invalid(
            plan_one(
                "[{name: ci, cloudInitNoCloud: {userDataBase64: 'not base64!'}}]",
                &no_secrets(),
            ),
            "spec.volumes[0].cloudInitNoCloud.userDataBase64",
            "base64",
        );
        assert_invalid(
            plan_one(
                "[{name: ci, cloudInitNoCloud: {userData: x, networkDataBase64: 'bad*'}}]",
                &no_secrets(),
            ),
            "spec.volumes[0].cloudInitNoCloud.networkDataBase64",
            "base64",
        );
    }

    #[test]
    fn cloud_init_user_data_from_a_secret() {
        let vol = "[{name: ci, cloudInitNoCloud: {secretRef: {name: my-secret}}}]";
        let files = cloud_init(
            vol,
            &secrets(&[("my-secret", "userdata", b"from userdata")]),
        );
        assert_eq!(files.user_data, b"from userdata");
        let files = cloud_init(
            vol,
            &secrets(&[("my-secret", "userData", b"from userData")]),
        );
        assert_eq!(files.user_data, b"from userData");
        // `userdata` wins over `userData`.
        let both = secrets(&[
            ("my-secret", "userData", b"camel"),
            ("my-secret", "userdata", b"lower"),
        ]);
        assert_eq!(cloud_init(vol, &both).user_data, b"lower");
    }

    #[test]
    fn cloud_init_missing_secret_or_key_names_the_field_and_key() {
        let vol = "[{name: ci, cloudInitNoCloud: {secretRef: {name: my-secret}}}]";
        let field = "spec.volumes[0].cloudInitNoCloud.secretRef";
        assert_invalid(
            plan_one(vol, &no_secrets()),
            field,
            "Secret \"my-secret\" not found",
        );
        let wrong = secrets(&[("my-secret", "user-data", b"x")]);
        assert_invalid(
            plan_one(vol, &wrong),
            field,
            "no key \"userdata\" or \"userData\"",
        );
    }

    #[test]
    fn cloud_init_network_config_sources() {
        let inline = cloud_init(
            "[{name: ci, cloudInitNoCloud: {networkData: \"version: 2\\n\"}}]",
            &no_secrets(),
        );
        assert_eq!(inline.network_config.as_deref(), Some(&b"version: 2\n"[..]));

        let b64 = cloud_init(
            "[{name: ci, cloudInitNoCloud: {networkDataBase64: dmVyc2lvbjogMgo=}}]",
            &no_secrets(),
        );
        assert_eq!(b64.network_config.as_deref(), Some(&b"version: 2\n"[..]));

        let vol =
            "[{name: ci, cloudInitNoCloud: {userData: u, networkDataSecretRef: {name: net}}}]";
        let lower = cloud_init(vol, &secrets(&[("net", "networkdata", b"lower")]));
        assert_eq!(lower.network_config.as_deref(), Some(&b"lower"[..]));
        assert_eq!(lower.user_data, b"u");
        let camel = cloud_init(vol, &secrets(&[("net", "networkData", b"camel")]));
        assert_eq!(camel.network_config.as_deref(), Some(&b"camel"[..]));

        let field = "spec.volumes[0].cloudInitNoCloud.networkDataSecretRef";
        assert_invalid(
            plan_one(vol, &no_secrets()),
            field,
            "Secret \"net\" not found",
        );
        assert_invalid(
            plan_one(vol, &secrets(&[("net", "userdata", b"x")])),
            field,
            "no key \"networkdata\" or \"networkData\"",
        );

        // Empty network data means no network-config file, as in KubeVirt.
        let empty = cloud_init(
            "[{name: ci, cloudInitNoCloud: {networkData: ''}}]",
            &no_secrets(),
        );
        assert_eq!(empty.network_config, None);
    }

    #[test]
    fn cloud_init_needs_the_vmi_uid() {
        let vmi = vmi_yaml(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {name: testvm}\n\
             spec: {domain: {}, volumes: [{name: ci, cloudInitNoCloud: {}}]}\n",
        );
        assert_invalid(
            plan(&vmi, Path::new("/d"), &no_secrets()),
            "metadata.uid",
            "no uid",
        );
        let odd_uid = vmi_yaml(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
             metadata: {name: testvm, uid: '../x'}\n\
             spec: {domain: {}, volumes: [{name: ci, cloudInitNoCloud: {}}]}\n",
        );
        assert_invalid(
            plan(&odd_uid, Path::new("/d"), &no_secrets()),
            "metadata.uid",
            "not a uid",
        );
    }

    // ---- plan: unsupported and malformed volumes ---------------------------

    #[test]
    fn container_disk_is_unsupported() {
        let reason = assert_unsupported(
            plan(
                &vmi_with(
                    "[{name: a, emptyDisk: {capacity: 1Gi}}, {name: root, containerDisk: {image: quay.io/x/y}}]",
                ),
                Path::new("/d"),
                &no_secrets(),
            ),
            "spec.volumes[1].containerDisk",
        );
        assert_eq!(
            reason,
            "containerDisk is not supported yet; use hostDisk, emptyDisk or cloudInitNoCloud"
        );
    }

    #[test]
    fn every_other_source_is_unsupported_by_its_field_name() {
        for source in [
            "persistentVolumeClaim",
            "dataVolume",
            "ephemeral",
            "configMap",
            "secret",
            "serviceAccount",
            "cloudInitConfigDrive",
            "downwardAPI",
            "sysprep",
        ] {
            let reason = assert_unsupported(
                plan_one(&format!("[{{name: v, {source}: {{x: y}}}}]"), &no_secrets()),
                &format!("spec.volumes[0].{source}"),
            );
            assert!(reason.contains("not supported"), "{reason}");
        }
    }

    #[test]
    fn a_volume_needs_exactly_one_source() {
        assert_invalid(
            plan_one("[{name: v}]", &no_secrets()),
            "spec.volumes[0]",
            "no volume source",
        );
        assert_invalid(
            plan_one(
                "[{name: v, emptyDisk: {capacity: 1Gi}, hostDisk: {path: /a, type: Disk}}]",
                &no_secrets(),
            ),
            "spec.volumes[0]",
            "found emptyDisk and hostDisk",
        );
    }

    #[test]
    fn volume_names_must_be_safe_file_names() {
        for bad in ["a/b", "../x", ".hidden", ".", "''", "\"a b\"", "\"a\\0\""] {
            assert_invalid(
                plan_one(
                    &format!("[{{name: {bad}, emptyDisk: {{capacity: 1Gi}}}}]"),
                    &no_secrets(),
                ),
                "spec.volumes[0].name",
                "not a valid volume name",
            );
        }
        let long = "a".repeat(64);
        assert_invalid(
            plan_one(
                &format!("[{{name: {long}, emptyDisk: {{capacity: 1Gi}}}}]"),
                &no_secrets(),
            ),
            "spec.volumes[0].name",
            "not a valid volume name",
        );
        for good in ["root", "data-1", "a_b", "v1.2", &"a".repeat(63)] {
            plan_one(
                &format!("[{{name: '{good}', emptyDisk: {{capacity: 1Gi}}}}]"),
                &no_secrets(),
            )
            .unwrap();
        }
    }

    #[test]
    fn volume_names_must_be_unique() {
        assert_invalid(
            plan(
                &vmi_with(
                    "[{name: a, emptyDisk: {capacity: 1Gi}}, {name: a, hostDisk: {path: /a, type: Disk}}]",
                ),
                Path::new("/d"),
                &no_secrets(),
            ),
            "spec.volumes[1].name",
            "more than one volume",
        );
    }

    #[test]
    fn a_full_vmi_plans_every_volume() {
        let plans = plan(
            &vmi_with(
                "[{name: root, hostDisk: {path: /img/root.qcow2, type: Disk}},\
                  {name: scratch, emptyDisk: {capacity: 1Gi}},\
                  {name: cloudinit, cloudInitNoCloud: {userData: hello}}]",
            ),
            Path::new("/run/ironvirt/vmis/u"),
            &no_secrets(),
        )
        .unwrap();
        assert_eq!(
            plans.keys().collect::<Vec<_>>(),
            ["cloudinit", "root", "scratch"]
        );
        // Per-VMI files stay inside the VMI's directory.
        for p in plans.values() {
            if let VolumePlan::EmptyDisk { path, .. } | VolumePlan::CloudInit { path, .. } = p {
                assert_eq!(path.parent(), Some(Path::new("/run/ironvirt/vmis/u")));
            }
        }
    }

    // ---- prepare -----------------------------------------------------------

    /// The path of a tool the tests need; fails with a clear message when it
    /// is not installed.
    fn tool(names: &[&str], package: &str) -> PathBuf {
        find_tool(names, package)
            .unwrap_or_else(|e| panic!("these tests need {package}, which is not installed: {e}"))
    }

    /// Runs an mtools command on an image and returns its stdout.
    fn mtools(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(tool(&[cmd], "mtools"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn qemu_img(args: &[&str]) {
        let out = Command::new(tool(&["qemu-img"], "qemu-utils (qemu-img)"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn one(name: &str, plan: VolumePlan) -> BTreeMap<String, VolumePlan> {
        BTreeMap::from([(name.to_owned(), plan)])
    }

    fn prepare_one(name: &str, plan: VolumePlan) -> Result<ResolvedVolume, VolumeError> {
        let mut resolved = prepare(&one(name, plan))?;
        assert_eq!(resolved.len(), 1);
        Ok(resolved.remove(name).unwrap())
    }

    /// The names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn disk_or_create_makes_a_sparse_raw_image() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("new/parent/data.img");
        let plan = VolumePlan::HostDisk {
            path: path.clone(),
            create: Some(1 << 30),
        };
        let r = prepare_one("data", plan.clone()).unwrap();
        assert_eq!(
            r,
            ResolvedVolume {
                path: path.clone(),
                format: ImageFormat::Raw
            }
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 30);
        assert!(
            meta.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            meta.blocks()
        );
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(listing(&tmp.path().join("new/parent")), ["data.img"]);

        // Again: the image, and what the guest wrote, stay.
        fs::write(&path, b"guest data").unwrap();
        let r = prepare_one("data", plan).unwrap();
        assert_eq!(r.format, ImageFormat::Raw);
        assert_eq!(fs::read(&path).unwrap(), b"guest data");
        assert_eq!(listing(&tmp.path().join("new/parent")), ["data.img"]);
    }

    #[test]
    fn a_missing_disk_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nope.img");
        match prepare_one(
            "root",
            VolumePlan::HostDisk {
                path: path.clone(),
                create: None,
            },
        ) {
            Err(e @ VolumeError::Missing { .. }) => {
                let VolumeError::Missing { field, path: p } = &e else {
                    unreachable!()
                };
                assert_eq!(field, "spec.volumes[name=root].hostDisk.path");
                assert_eq!(p, &path);
                assert!(
                    e.to_string()
                        .ends_with("nope.img does not exist on the node"),
                    "{e}"
                );
            }
            other => panic!("expected Missing, got {other:?}"),
        }
        assert!(!path.exists());
    }

    #[test]
    fn existing_host_disks_are_probed() {
        let tmp = tempfile::tempdir().unwrap();
        let qcow = tmp.path().join("root.qcow2");
        qemu_img(&["create", "-q", "-f", "qcow2", qcow.to_str().unwrap(), "16M"]);
        let raw = tmp.path().join("root.img");
        fs::write(&raw, vec![0u8; 4096]).unwrap();
        let tiny = tmp.path().join("tiny.img");
        fs::write(&tiny, b"QF").unwrap();
        let plans = BTreeMap::from([
            (
                "q".to_owned(),
                VolumePlan::HostDisk {
                    path: qcow.clone(),
                    create: None,
                },
            ),
            // DiskOrCreate keeps an existing image, whatever its format.
            (
                "qc".to_owned(),
                VolumePlan::HostDisk {
                    path: qcow.clone(),
                    create: Some(1 << 20),
                },
            ),
            (
                "r".to_owned(),
                VolumePlan::HostDisk {
                    path: raw.clone(),
                    create: None,
                },
            ),
            (
                "t".to_owned(),
                VolumePlan::HostDisk {
                    path: tiny.clone(),
                    create: None,
                },
            ),
        ]);
        let r = prepare(&plans).unwrap();
        assert_eq!(
            r["q"],
            ResolvedVolume {
                path: qcow.clone(),
                format: ImageFormat::Qcow2
            }
        );
        assert_eq!(
            r["qc"],
            ResolvedVolume {
                path: qcow.clone(),
                format: ImageFormat::Qcow2
            }
        );
        assert_eq!(
            r["r"],
            ResolvedVolume {
                path: raw,
                format: ImageFormat::Raw
            }
        );
        assert_eq!(
            r["t"],
            ResolvedVolume {
                path: tiny,
                format: ImageFormat::Raw
            }
        );
        // DiskOrCreate left the existing image alone.
        assert_eq!(&fs::read(&qcow).unwrap()[..4], QCOW2_MAGIC);
    }

    #[test]
    fn host_disks_that_point_elsewhere_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.img");
        fs::write(&base, b"secret").unwrap();
        let overlay = tmp.path().join("overlay.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            base.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ]);
        assert_invalid(
            prepare_one(
                "root",
                VolumePlan::HostDisk {
                    path: overlay,
                    create: None,
                },
            ),
            "spec.volumes[name=root].hostDisk.path",
            "backing file",
        );
        assert_invalid(
            prepare_one(
                "root",
                VolumePlan::HostDisk {
                    path: tmp.path().to_path_buf(),
                    create: Some(1),
                },
            ),
            "spec.volumes[name=root].hostDisk.path",
            "is a directory",
        );
    }

    #[test]
    fn empty_disk_is_a_qcow2_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = vmi_dir(tmp.path(), UID);
        let path = dir.join("scratch.qcow2");
        let plan = VolumePlan::EmptyDisk {
            path: path.clone(),
            bytes: 64 << 20,
        };
        let r = prepare_one("scratch", plan.clone()).unwrap();
        assert_eq!(
            r,
            ResolvedVolume {
                path: path.clone(),
                format: ImageFormat::Qcow2
            }
        );
        let header = fs::read(&path).unwrap();
        assert_eq!(&header[..4], b"QFI\xfb");
        // The virtual size, at offset 24 of the header.
        assert_eq!(
            u64::from_be_bytes(header[24..32].try_into().unwrap()),
            64 << 20
        );
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(listing(&dir), ["scratch.qcow2"]);

        let before = fs::metadata(&path).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = prepare_one("scratch", plan).unwrap();
        assert_eq!(again, r);
        let after = fs::metadata(&path).unwrap();
        assert_eq!(
            (after.ino(), after.mtime(), after.mtime_nsec()),
            (before.ino(), before.mtime(), before.mtime_nsec())
        );
        assert_eq!(listing(&dir), ["scratch.qcow2"]);
    }

    #[test]
    fn empty_disk_that_is_not_qcow2_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("scratch.qcow2");
        fs::write(&path, b"raw bytes").unwrap();
        let e = prepare_one(
            "scratch",
            VolumePlan::EmptyDisk {
                path: path.clone(),
                bytes: 1 << 20,
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, VolumeError::Io { reason, .. } if reason.contains("not a qcow2")),
            "{e:?}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"raw bytes");

        // A link in the VMI's directory is not followed.
        let target = tmp.path().join("elsewhere.qcow2");
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            target.to_str().unwrap(),
            "1M",
        ]);
        let link = tmp.path().join("linked.qcow2");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = prepare_one(
            "linked",
            VolumePlan::EmptyDisk {
                path: link,
                bytes: 1 << 20,
            },
        )
        .unwrap_err();
        assert!(
            matches!(&e, VolumeError::Io { reason, .. } if reason.contains("symbolic link")),
            "{e:?}"
        );
    }

    #[test]
    fn tool_failures_carry_the_command_and_its_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("huge.qcow2");
        let e = prepare_one(
            "huge",
            VolumePlan::EmptyDisk {
                path: path.clone(),
                bytes: u64::MAX,
            },
        )
        .unwrap_err();
        let VolumeError::Io { what, reason } = &e else {
            panic!("{e:?}")
        };
        assert!(what.contains("qemu-img create -f qcow2 -q"), "{what}");
        assert!(what.ends_with(&u64::MAX.to_string()), "{what}");
        assert!(!reason.is_empty() && reason == reason.trim(), "{reason:?}");
        // Nothing is left behind.
        assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    }

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let e = find_tool(&["ironvirt-no-such-tool"], "some-package").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("ironvirt-no-such-tool"), "{text}");
        assert!(text.contains("/usr/sbin, /sbin"), "{text}");
        assert!(text.contains("install some-package"), "{text}");
        // mkfs.vfat is found even when PATH lacks the sbin directories.
        assert!(
            find_tool(&["mkfs.vfat", "mkfs.fat"], "dosfstools")
                .unwrap()
                .is_absolute()
        );
    }

    #[test]
    fn cidata_size_grows_from_one_mib() {
        let files = |user: usize| CloudInitFiles {
            user_data: vec![0; user],
            meta_data: "instance-id: x\n".to_owned(),
            network_config: None,
        };
        assert_eq!(cidata_kib(&files(0)), 1024);
        assert_eq!(cidata_kib(&files(100_000)), 1024);
        let big = cidata_kib(&files(10 << 20));
        assert!(big > 10 * 1024 + 512, "{big} KiB");
        assert!(big < 14 * 1024, "{big} KiB");
    }

    fn cidata_plan(dir: &Path, user_data: &[u8], network: Option<&[u8]>) -> VolumePlan {
        VolumePlan::CloudInit {
            path: dir.join("cloudinit.cidata.img"),
            files: CloudInitFiles {
                user_data: user_data.to_vec(),
                meta_data: format!("instance-id: {UID}\nlocal-hostname: testvm\n"),
                network_config: network.map(<[u8]>::to_vec),
            },
        }
    }

    /// The volume label in the boot sector of a FAT image (offset 43 on
    /// FAT12/16, 71 on FAT32) and the FAT type.
    fn boot_sector_label(img: &Path) -> (String, String) {
        let bytes = fs::read(img).unwrap();
        let text =
            |r: std::ops::Range<usize>| String::from_utf8_lossy(&bytes[r]).trim_end().to_owned();
        if text(82..90) == "FAT32" {
            (text(71..82), "FAT32".to_owned())
        } else {
            (text(43..54), text(54..62))
        }
    }

    #[test]
    fn cloud_init_disk_is_a_cidata_vfat_with_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = vmi_dir(tmp.path(), UID);
        let plan = cidata_plan(&dir, b"#!/bin/sh\necho hello\n", Some(b"version: 2\n"));
        let r = prepare_one("cloudinit", plan).unwrap();
        let img = dir.join("cloudinit.cidata.img");
        assert_eq!(
            r,
            ResolvedVolume {
                path: img.clone(),
                format: ImageFormat::Raw
            }
        );
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(listing(&dir), ["cloudinit.cidata.img"]);
        assert_eq!(fs::metadata(&img).unwrap().len(), 1024 * 1024);

        let i = img.to_str().unwrap();
        let names = mtools("mdir", &["-i", i, "-b", "::"]);
        let mut names: Vec<&str> = names.lines().collect();
        names.sort_unstable();
        assert_eq!(names, ["::/meta-data", "::/network-config", "::/user-data"]);
        assert_eq!(
            mtools("mtype", &["-i", i, "::user-data"]),
            "#!/bin/sh\necho hello\n"
        );
        assert_eq!(
            mtools("mtype", &["-i", i, "::meta-data"]),
            format!("instance-id: {UID}\nlocal-hostname: testvm\n")
        );
        assert_eq!(
            mtools("mtype", &["-i", i, "::network-config"]),
            "version: 2\n"
        );
        assert!(mtools("mlabel", &["-i", i, "-s", "::"]).contains("Volume label is CIDATA"));
        assert_eq!(
            boot_sector_label(&img),
            ("CIDATA".to_owned(), "FAT12".to_owned())
        );
    }

    #[test]
    fn cloud_init_disk_is_rebuilt_each_time() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vmi");
        let img = dir.join("cloudinit.cidata.img");
        prepare_one("cloudinit", cidata_plan(&dir, b"first", Some(b"net"))).unwrap();
        let first = fs::metadata(&img).unwrap();

        prepare_one("cloudinit", cidata_plan(&dir, b"second", None)).unwrap();
        let second = fs::metadata(&img).unwrap();
        assert_ne!(
            first.ino(),
            second.ino(),
            "replaced by rename, not rewritten in place"
        );
        let i = img.to_str().unwrap();
        assert_eq!(mtools("mtype", &["-i", i, "::user-data"]), "second");
        let names = mtools("mdir", &["-i", i, "-b", "::"]);
        assert!(!names.contains("network-config"), "{names}");
        assert_eq!(listing(&dir), ["cloudinit.cidata.img"]);
    }

    #[test]
    fn cloud_init_disk_grows_with_its_content() {
        let tmp = tempfile::tempdir().unwrap();
        // Three MiB that do not compress into fewer clusters.
        let big: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let r = prepare_one("cloudinit", cidata_plan(tmp.path(), &big, None)).unwrap();
        let i = r.path.to_str().unwrap();
        let out = Command::new(tool(&["mtype"], "mtools"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i", i, "::user-data"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), big.len());
        assert!(out.stdout == big, "user-data differs");
        assert_eq!(boot_sector_label(&r.path).0, "CIDATA");
    }

    #[test]
    fn empty_user_data_still_makes_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let r = prepare_one("cloudinit", cidata_plan(tmp.path(), b"", None)).unwrap();
        let i = r.path.to_str().unwrap();
        assert_eq!(mtools("mtype", &["-i", i, "::user-data"]), "");
        assert!(mtools("mdir", &["-i", i, "-b", "::"]).contains("::/user-data"));
    }

    #[test]
    fn prepare_does_the_whole_plan() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = vmi_dir(tmp.path(), UID);
        let root = tmp.path().join("images/root.img");
        let vmi = vmi_with(&format!(
            "[{{name: root, hostDisk: {{path: {}, type: DiskOrCreate, capacity: 8Mi}}}},\
              {{name: scratch, emptyDisk: {{capacity: 8Mi}}}},\
              {{name: cloudinit, cloudInitNoCloud: {{secretRef: {{name: s}}}}}}]",
            root.display()
        ));
        let plans = plan(
            &vmi,
            &dir,
            &secrets(&[("s", "userdata", b"#cloud-config\n")]),
        )
        .unwrap();
        let r = prepare(&plans).unwrap();
        assert_eq!(
            r["root"],
            ResolvedVolume {
                path: root,
                format: ImageFormat::Raw
            }
        );
        assert_eq!(
            r["scratch"],
            ResolvedVolume {
                path: dir.join("scratch.qcow2"),
                format: ImageFormat::Qcow2
            }
        );
        assert_eq!(
            r["cloudinit"],
            ResolvedVolume {
                path: dir.join("cloudinit.cidata.img"),
                format: ImageFormat::Raw
            }
        );
        assert_eq!(listing(&dir), ["cloudinit.cidata.img", "scratch.qcow2"]);
        assert_eq!(prepare(&plans).unwrap(), r);
        assert_eq!(listing(&dir), ["cloudinit.cidata.img", "scratch.qcow2"]);
    }

    // ---- cleanup -----------------------------------------------------------

    #[test]
    fn cleanup_removes_the_dir_and_tolerates_a_missing_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = vmi_dir(tmp.path(), UID);
        prepare_one(
            "scratch",
            VolumePlan::EmptyDisk {
                path: dir.join("scratch.qcow2"),
                bytes: 1 << 20,
            },
        )
        .unwrap();
        // A link inside is removed, not followed.
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        cleanup(&dir).unwrap();
        assert!(!dir.exists());
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        cleanup(&dir).unwrap();
        assert!(tmp.path().join("vmis").exists());
    }
}
