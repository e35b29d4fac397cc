//! The file-system helpers every kind uses: the VMI's private directory,
//! temporary files published without clobbering, and the external tools.

use super::*;

pub(super) fn resolved(path: &Path, format: ImageFormat) -> ResolvedVolume {
    ResolvedVolume {
        path: path.to_path_buf(),
        format,
    }
}

/// The directory of a per-VMI file (the plan puts them all in the VMI's dir).
pub(super) fn vmi_dir_of(path: &Path) -> Result<&Path, VolumeError> {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| VolumeError::Io {
            what: format!("preparing {}", path.display()),
            reason: "the path has no parent directory".to_owned(),
        })
}

/// Creates the VMI's directory, private to root, when missing.
pub(super) fn ensure_vmi_dir(dir: &Path) -> Result<(), VolumeError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(format!("creating {}", dir.display()), &e))
}

/// A temporary file or directory, removed on drop unless kept.
pub(super) struct TempPath {
    pub(super) path: Option<PathBuf>,
    pub(super) dir: bool,
}

impl TempPath {
    pub(super) fn file(path: PathBuf) -> Self {
        // A leftover of the same name cannot be ours to keep.
        let _ = fs::remove_file(&path);
        TempPath {
            path: Some(path),
            dir: false,
        }
    }

    pub(super) fn dir(path: PathBuf) -> Self {
        TempPath {
            path: Some(path),
            dir: true,
        }
    }

    pub(super) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Stops removing the path on drop and returns it.
    pub(super) fn keep(mut self) -> PathBuf {
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
pub(super) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `<path>.tmp-<pid>-<n>`: beside `path`, so renaming it into place is atomic.
pub(super) fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", unique_suffix()));
    path.with_file_name(name)
}

pub(super) fn sync_file(path: &Path) -> Result<(), VolumeError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(format!("syncing {}", path.display()), &e))
}

/// Renames `tmp` to `path`, replacing what is there; `tmp` is removed if the
/// rename fails.
pub(super) fn rename_into_place(tmp: TempPath, path: &Path) -> Result<(), VolumeError> {
    let tmp_path = tmp.keep();
    fs::rename(&tmp_path, path).map_err(|e| {
        let _ = fs::remove_file(&tmp_path);
        io_error(
            format!("renaming {} to {}", tmp_path.display(), path.display()),
            &e,
        )
    })
}

/// Gives the complete file `tmp` its final name `path`, unless `path` exists
/// by now (then `tmp` is dropped and false returned): images may hold data
/// and are never replaced. Falls back to rename where hard links fail.
pub(super) fn publish_no_clobber(tmp: TempPath, path: &Path) -> Result<bool, VolumeError> {
    match fs::hard_link(tmp.path(), path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(_) => {
            rename_into_place(tmp, path)?;
            Ok(true)
        }
    }
    // On the hard-link paths `tmp` drops here and removes the temporary name.
}

/// Finds a tool in the system directories (sbin ones first: PATH may lack
/// them), then in PATH.
pub(super) fn find_tool(names: &[&str], package: &str) -> Result<PathBuf, VolumeError> {
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
pub(super) fn run(cmd: &mut Command) -> Result<(), VolumeError> {
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

/// The bytes available to the handler on the file system holding `dir`.
pub(super) fn free_bytes(dir: &Path) -> Result<u64, VolumeError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| VolumeError::Io {
        what: format!("checking the free space of {}", dir.display()),
        reason: e.desc().to_owned(),
    })?;
    #[allow(clippy::useless_conversion)] // the widths differ between targets
    let (blocks, size) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Ok(blocks.saturating_mul(size))
}

/// Refuses an image of `bytes` for `what` (`emptyDisk scratch`) in `dir`
/// when the file system there has less free space: images are sparse, but a
/// capacity the node could never hold is refused up front.
pub(super) fn check_free_space(
    field: &str,
    what: &str,
    dir: &Path,
    bytes: u64,
) -> Result<(), VolumeError> {
    let free = free_bytes(dir)?;
    if bytes <= free {
        return Ok(());
    }
    Err(VolumeError::InsufficientStorage {
        field: field.to_owned(),
        message: format!(
            "{what} asks for {}; {} has {} free",
            size_text(bytes),
            dir.display(),
            size_text(free)
        ),
    })
}

/// `bytes` for a human, in the largest binary unit it reaches: whole
/// (`2Ti`) when it is a whole number of it, else rounded down to a tenth
/// (`39.8Gi`); plain bytes below 1Ki.
pub(super) fn size_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return bytes.to_string();
    }
    let exp = (bytes.ilog2() / 10).clamp(1, 6);
    let name = UNITS[usize::try_from(exp - 1).unwrap_or(0)];
    let unit = 1u64 << (10 * exp);
    if bytes.is_multiple_of(unit) {
        return format!("{}{name}", bytes / unit);
    }
    let tenths = u128::from(bytes) * 10 / u128::from(unit);
    format!("{}.{}{name}", tenths / 10, tenths % 10)
}
