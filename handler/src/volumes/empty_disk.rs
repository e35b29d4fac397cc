//! emptyDisk volumes: a blank qcow2 of the asked capacity, private to the VMI
//! and made once, when the VMI directory's file system has that much free
//! space.

use super::*;

/// A positive number of bytes.
pub(super) fn capacity(q: &Quantity, field: &str) -> Result<u64, VolumeError> {
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

pub(super) fn prepare_empty_disk(
    name: &str,
    path: &Path,
    bytes: u64,
) -> Result<ResolvedVolume, VolumeError> {
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
    check_free_space(
        &volume_field(name, "emptyDisk.capacity"),
        &format!("emptyDisk {name}"),
        dir,
        bytes,
    )?;
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
