//! hostDisk volumes: an image at a node path, used as is (type Disk) or made
//! sparse when missing (DiskOrCreate); existing images are probed for their
//! format and refused when they point at other files.

use super::*;

pub(super) fn plan_host_disk(disk: &HostDisk, field: &str) -> Result<VolumePlan, VolumeError> {
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

pub(super) fn prepare_host_disk(
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

/// What is at an image path.
#[derive(Debug)]
pub(super) enum Found {
    Nothing,
    Image(ImageFormat),
    /// Something that must not be used as an image, and why.
    Unusable(String),
}

pub(super) const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// qcow2 v3 incompatible feature bit: the guest data is in an external file.
pub(super) const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Looks at `path`: missing, or an image whose format its first bytes tell.
///
/// qcow2 images that name other files (a backing file, an external data
/// file) are unusable: the image's content, which a guest may have written,
/// would otherwise make QEMU open node paths nobody asked for.
pub(super) fn probe(path: &Path, follow_links: bool) -> io::Result<Found> {
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
