//! hostDisk volumes: an image at a node path inside the VMI namespace's
//! directory under the hostDisk root, used as is (type Disk) or made sparse
//! when missing (DiskOrCreate); existing images are opened without following
//! links, probed for their format and refused when they point at other files.

use super::*;

pub(super) fn plan_host_disk(
    disk: &HostDisk,
    field: &str,
    namespace: &str,
    policy: &VolumePolicy,
) -> Result<VolumePlan, VolumeError> {
    // check_volumes refused every hostDisk already when hostDisk is off.
    let Some(host_disk) = &policy.host_disk else {
        return Err(VolumeError::Policy {
            reason: PolicyViolation::HostDiskDisabled,
            message: format!("{field} {}", validate::hostdisk::HOST_DISK_DISABLED),
        });
    };
    let ns_dir = host_disk.namespace_dir(namespace);
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
    Ok(VolumePlan::HostDisk {
        path,
        create,
        ns_dir,
    })
}

/// Resolves `path` beneath `ns_dir` ([`resolve_beneath`]), creates it when
/// missing and `create` (DiskOrCreate) says how large, and probes the image
/// it then opens without following links.
pub(super) fn prepare_host_disk(
    name: &str,
    path: &Path,
    create: Option<u64>,
    ns_dir: &Path,
) -> Result<ResolvedVolume, VolumeError> {
    let field = volume_field(name, "hostDisk.path");
    match resolve_beneath(ns_dir, path, create.is_some()).map_err(|e| host_disk_error(&field, e))? {
        ResolvedHostDisk::File { .. } => use_image(name, &field, ns_dir, path),
        ResolvedHostDisk::Create { path: _, dirs } => {
            let bytes = create.ok_or_else(|| VolumeError::Io {
                what: format!("resolving {}", path.display()),
                reason: "asked to create an image of a hostDisk of type Disk".to_owned(),
            })?;
            create_image(name, &field, ns_dir, path, &dirs, bytes)
        }
    }
}

/// A refusal of [`resolve_beneath`] or of [`open_beneath`]; what could not
/// be examined (EACCES, EIO, …) is I/O, which is retried.
fn host_disk_error(field: &str, e: HostDiskError) -> VolumeError {
    match e {
        HostDiskError::Io { path, at, source } => VolumeError::Io {
            what: format!("checking hostDisk {path} at {}", at.display()),
            reason: source.to_string(),
        },
        source => VolumeError::HostDisk {
            field: field.to_owned(),
            source,
        },
    }
}

/// Creates the missing `dirs` (each inside `ns_dir`, outermost first) and a
/// sparse raw image of `bytes` at `path`, after checking the free space, then
/// uses it as an existing image. Someone else creating it meanwhile is fine:
/// the image is never replaced.
fn create_image(
    name: &str,
    field: &str,
    ns_dir: &Path,
    path: &Path,
    dirs: &[PathBuf],
    bytes: u64,
) -> Result<ResolvedVolume, VolumeError> {
    for dir in dirs {
        match fs::DirBuilder::new().mode(0o755).create(dir) {
            Ok(()) => {
                tracing::info!(volume = name, dir = %dir.display(), "created hostDisk directory")
            }
            // Made meanwhile: the walk below checks what it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(format!("creating {}", dir.display()), &e)),
        }
    }
    // Walk again: the directories just made (or found) must be directories,
    // not links someone put there meanwhile.
    match resolve_beneath(ns_dir, path, true).map_err(|e| host_disk_error(field, e))? {
        ResolvedHostDisk::File { .. } => return use_image(name, field, ns_dir, path),
        ResolvedHostDisk::Create { dirs, .. } if !dirs.is_empty() => {
            return Err(VolumeError::Io {
                what: format!("creating {}", path.display()),
                reason: format!("{} vanished right after it was created", dirs[0].display()),
            });
        }
        ResolvedHostDisk::Create { .. } => {}
    }
    let parent = vmi_dir_of(path)?;
    check_free_space(
        &volume_field(name, "hostDisk.capacity"),
        &format!("hostDisk {name}"),
        parent,
        bytes,
    )?;
    let tmp = TempPath::file(tmp_name(path));
    let what = || format!("creating {}", tmp.path().display());
    // create_new (O_EXCL) never follows a link at the temporary name.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
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
    }
    // Made by us or, meanwhile, by another VMI sharing the path: checked
    // like any existing image.
    use_image(name, field, ns_dir, path)
}

/// An existing image: opened beneath `ns_dir` without following links,
/// checked to be a regular file, and probed for its format.
fn use_image(
    name: &str,
    field: &str,
    ns_dir: &Path,
    path: &Path,
) -> Result<ResolvedVolume, VolumeError> {
    let mut file = open_beneath(ns_dir, path).map_err(|e| host_disk_error(field, e))?;
    match probe_file(&mut file).map_err(|e| io_error(format!("reading {}", path.display()), &e))? {
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
        Found::Nothing => Err(VolumeError::Io {
            what: format!("reading {}", path.display()),
            reason: "the image vanished while it was opened".to_owned(),
        }),
    }
}

/// Opens the image `path` (inside `ns_dir`) for reading the way
/// [`resolve_beneath`] walks it, but atomically: `openat2` from `ns_dir`
/// (itself opened with `O_NOFOLLOW`) with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`, and `O_NOFOLLOW | O_NONBLOCK` (a FIFO swapped in
/// cannot block the open); where the kernel has no `openat2`, a plain
/// `O_NOFOLLOW` open after the walk. What was opened must be a regular file.
pub(super) fn open_beneath(ns_dir: &Path, path: &Path) -> Result<fs::File, HostDiskError> {
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    use nix::sys::stat::Mode;

    let text = path.to_string_lossy().into_owned();
    let io_err = |at: &Path, source: io::Error| HostDiskError::Io {
        path: text.clone(),
        at: at.to_owned(),
        source,
    };
    let rel = path
        .strip_prefix(ns_dir)
        .map_err(|_| HostDiskError::Outside {
            path: text.clone(),
            dir: ns_dir.to_owned(),
        })?;
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let dir = fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
        .open(ns_dir)
        .map_err(|e| io_err(ns_dir, e))?;
    let how = OpenHow::new()
        .flags(flags)
        .mode(Mode::empty())
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let file = match openat2(&dir, rel, how) {
        Ok(fd) => fs::File::from(fd),
        // A link on the way (ELOOP), or an escape (EXDEV), appeared after the walk.
        Err(Errno::ELOOP | Errno::EXDEV) => {
            return Err(HostDiskError::Symlink {
                path: text.clone(),
                at: path.to_owned(),
            });
        }
        Err(Errno::ENOSYS | Errno::EPERM) => fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
            .open(path)
            .map_err(|e| {
                if e.raw_os_error() == Some(Errno::ELOOP as i32) {
                    HostDiskError::Symlink {
                        path: text.clone(),
                        at: path.to_owned(),
                    }
                } else {
                    io_err(path, e)
                }
            })?,
        Err(Errno::ENOENT) => {
            return Err(HostDiskError::Missing {
                path: text.clone(),
                at: path.to_owned(),
            });
        }
        Err(e) => return Err(io_err(path, e.into())),
    };
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    if !meta.file_type().is_file() {
        return Err(HostDiskError::NotRegular {
            path: text,
            kind: ironvirt_crds::validate::hostdisk::describe(&meta.file_type()),
        });
    }
    Ok(file)
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
    probe_file(&mut fs::File::open(path)?)
}

/// The format of the open image `file`, from its first bytes.
pub(super) fn probe_file(file: &mut fs::File) -> io::Result<Found> {
    let mut header = Vec::with_capacity(80);
    file.by_ref().take(80).read_to_end(&mut header)?;
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
