//! Who uses a cached disk, and collecting the ones nobody uses.
//!
//! Each VMI whose overlay sits on a cached disk holds it: an empty file
//! `users/<vmi uid>` in the image's directory, made when the VMI's create
//! gets the disk ([`Images::ensure`]) and removed with the VMI's files
//! ([`Images::release`]). Files survive a handler restart, so holds do too.
//! [`Images::collect`] removes unheld images, least recently used first,
//! until the cache fits its size limit.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{CachedDisk, ImageError, Images, io};

/// What [`Images::collect`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Image directories removed.
    pub removed: Vec<PathBuf>,
    /// Bytes of disks the cache still holds.
    pub kept_bytes: u64,
}

/// A cached image as the collector sees it.
#[derive(Debug)]
struct Entry {
    dir: PathBuf,
    bytes: u64,
    last_used: SystemTime,
    held: bool,
}

impl Images {
    /// Records that VMI `user` runs on `disk`, and that the disk was used now.
    pub(super) fn hold(&self, disk: &CachedDisk, user: &str) -> Result<(), ImageError> {
        let Some(dir) = disk.path.parent() else {
            return Ok(());
        };
        let users = dir.join("users");
        std::fs::create_dir_all(&users).map_err(io(&users))?;
        let file = users.join(user);
        std::fs::write(&file, b"").map_err(io(&file))?;
        touch(&dir.join("used"))
    }

    /// VMI `user` is gone: it holds no cached disk any more. Idempotent.
    pub fn release(&self, user: &str) -> Result<(), ImageError> {
        for dir in self.image_dirs()? {
            let file = dir.join("users").join(user);
            match std::fs::remove_file(&file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&file)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes images no VMI holds, least recently used first, until the
    /// disks left take at most `max_bytes`. An image used within `grace` is
    /// kept (a create may be between pulling it and holding it).
    pub fn collect(&self, max_bytes: u64, grace: Duration) -> Result<Collected, ImageError> {
        let mut entries = Vec::new();
        for dir in self.image_dirs()? {
            entries.push(entry(&dir)?);
        }
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        entries.sort_by_key(|e| e.last_used);
        let now = SystemTime::now();
        let mut removed = Vec::new();
        for e in entries {
            if total <= max_bytes {
                break;
            }
            let recent = now
                .duration_since(e.last_used)
                .map_or(true, |age| age < grace);
            if e.held || recent {
                continue;
            }
            std::fs::remove_dir_all(&e.dir).map_err(io(&e.dir))?;
            tracing::info!(dir = %e.dir.display(), bytes = e.bytes, "unused image removed from the cache");
            total = total.saturating_sub(e.bytes);
            removed.push(e.dir);
        }
        Ok(Collected {
            removed,
            kept_bytes: total,
        })
    }

    fn image_dirs(&self) -> Result<Vec<PathBuf>, ImageError> {
        let images = self.dir.join("images");
        let mut dirs = Vec::new();
        for d in std::fs::read_dir(&images).map_err(io(&images))? {
            let d = d.map_err(io(&images))?;
            if d.file_type().map_err(io(&images))?.is_dir() {
                dirs.push(d.path());
            }
        }
        Ok(dirs)
    }
}

fn entry(dir: &Path) -> Result<Entry, ImageError> {
    let bytes = std::fs::metadata(dir.join("disk")).map_or(0, |m| m.len());
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let last_used = stamp(&dir.join("used"))
        .or_else(|| stamp(dir))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let users = dir.join("users");
    let held = match std::fs::read_dir(&users) {
        Ok(mut it) => it.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(&users)(e)),
    };
    Ok(Entry {
        dir: dir.to_owned(),
        bytes,
        last_used,
        held,
    })
}

/// Sets the modification time of `path` to now, making it when missing.
fn touch(path: &Path) -> Result<(), ImageError> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(io(path))?;
    f.set_modified(SystemTime::now()).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domxml::ImageFormat;

    /// A fake cached image of `bytes`, last used `age` ago.
    fn image(cache: &Path, name: &str, bytes: usize, age: Duration) -> CachedDisk {
        let dir = cache.join("images").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk"), vec![0u8; bytes]).unwrap();
        std::fs::write(dir.join("format"), "raw").unwrap();
        let used = std::fs::File::create(dir.join("used")).unwrap();
        used.set_modified(SystemTime::now() - age).unwrap();
        CachedDisk {
            digest: format!("sha256:{name}"),
            path: dir.join("disk"),
            format: ImageFormat::Raw,
        }
    }

    #[test]
    fn unheld_images_go_least_recently_used_first_until_the_cache_fits() {
        let d = tempfile::tempdir().unwrap();
        let images = Images::open(d.path(), Default::default()).unwrap();
        let hour = Duration::from_secs(3600);
        let old = image(d.path(), "old", 100, hour * 3);
        let mid = image(d.path(), "mid", 100, hour * 2);
        let held = image(d.path(), "held", 100, hour * 4);
        let _new = image(d.path(), "new", 100, Duration::ZERO);
        // hold() also marks it used now; age it again.
        images.hold(&held, "vmi-1").unwrap();
        std::fs::File::options()
            .write(true)
            .open(held.path.with_file_name("used"))
            .unwrap()
            .set_modified(SystemTime::now() - hour * 4)
            .unwrap();

        // 400 bytes, limit 250: the oldest unheld one goes, then the next.
        let c = images.collect(250, Duration::from_secs(60)).unwrap();
        let names: Vec<_> = c
            .removed
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["old", "mid"]);
        assert_eq!(c.kept_bytes, 200);
        assert!(!old.path.exists() && !mid.path.exists());
        assert!(held.path.exists(), "a held image was collected");

        // Within the limit: nothing more goes. Limit 0: the recent one stays
        // for its grace period, the released one goes.
        assert!(
            images
                .collect(250, Duration::from_secs(60))
                .unwrap()
                .removed
                .is_empty()
        );
        images.release("vmi-1").unwrap();
        images.release("vmi-1").unwrap();
        let c = images.collect(0, Duration::from_secs(60)).unwrap();
        assert_eq!(c.removed.len(), 1);
        assert!(!held.path.exists());
        // Past the grace period, the last one goes too: no file is left.
        let c = images.collect(0, Duration::ZERO).unwrap();
        assert_eq!(c.removed.len(), 1);
        assert_eq!(
            std::fs::read_dir(d.path().join("images")).unwrap().count(),
            0
        );
    }
}
