//! The disk of a containerDisk image: found in its layers, then checked.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::domxml::ImageFormat;

use super::ImageError;

/// The folder KubeVirt's containerDisks keep their one disk in.
pub const DISK_FOLDER: &str = "disk";

/// Which file of the image is the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The one file under `/disk/` (KubeVirt's default).
    OnlyFileIn(String),
    /// A given file (`containerDisk.path`).
    File(String),
    /// A kernel or initrd (`kernelBoot.container`): a given file, not a disk,
    /// so it is not checked with `qemu-img`.
    BootFile(String),
}

impl Wanted {
    /// From `containerDisk.path`: None or empty means the one file in `/disk`.
    pub fn of(path: Option<&str>) -> Result<Self, String> {
        match path.map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(Wanted::OnlyFileIn(DISK_FOLDER.into())),
            Some(p) => {
                let clean = normalize(p).ok_or_else(|| {
                    format!("{p:?} is not a file path inside the image (no '..', not a folder)")
                })?;
                Ok(Wanted::File(clean))
            }
        }
    }

    /// From `kernelBoot.container.kernelPath` or `initrdPath`.
    pub fn boot_file(path: &str) -> Result<Self, String> {
        normalize(path).map(Wanted::BootFile).ok_or_else(|| {
            format!("{path:?} is not a file path inside the image (no '..', not a folder)")
        })
    }

    /// Whether the file is a disk, checked before it enters the cache.
    pub fn is_disk(&self) -> bool {
        !matches!(self, Wanted::BootFile(_))
    }

    fn wants(&self, path: &str) -> bool {
        match self {
            Wanted::OnlyFileIn(dir) => path
                .strip_prefix(dir.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|name| !name.is_empty()),
            Wanted::File(f) | Wanted::BootFile(f) => path == f,
        }
    }
}

/// A tar path without a leading `/` or `./`, and without `.` parts; None
/// when it has `..`, or names the root.
fn normalize(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// A layer blob on disk and whether it is gzip-compressed.
pub struct Layer {
    pub path: PathBuf,
    pub media_type: String,
}

/// Finds the disk in `layers` (applied in order, with whiteouts) and copies
/// it to `out`. Blocking. Refusals carry KubeVirt's reasons.
pub fn extract(layers: &[Layer], wanted: &Wanted, out: &Path) -> Result<(), ImageError> {
    // Candidate disk files, by path in the image: (layer index, entry index).
    let mut found: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (li, layer) in layers.iter().enumerate() {
        let mut archive = tar::Archive::new(open_layer(layer)?);
        for (ei, entry) in archive.entries().map_err(bad_layer(layer))?.enumerate() {
            let entry = entry.map_err(bad_layer(layer))?;
            let raw = entry.path().map_err(bad_layer(layer))?;
            let Some(path) = raw.to_str().and_then(normalize) else {
                continue;
            };
            let (dir, base) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
            if let Some(gone) = base.strip_prefix(".wh.") {
                if gone == ".wh..opq" {
                    found.retain(|p, _| !p.starts_with(&format!("{dir}/")));
                } else {
                    let gone = if dir.is_empty() {
                        gone.to_owned()
                    } else {
                        format!("{dir}/{gone}")
                    };
                    found.retain(|p, _| p != &gone && !p.starts_with(&format!("{gone}/")));
                }
                continue;
            }
            if !wanted.wants(&path) {
                continue;
            }
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            if !kind.is_file() {
                return Err(ImageError::BadImage(format!(
                    "/{path} is a {kind:?}, not a regular file; the disk must be a file"
                )));
            }
            found.insert(path, (li, ei));
        }
    }
    let (path, (li, ei)) = match (wanted, found.len()) {
        (Wanted::OnlyFileIn(dir), 0) => {
            return Err(ImageError::BadImage(format!(
                "no file found in folder /{dir}, no disk present"
            )));
        }
        (Wanted::File(f) | Wanted::BootFile(f), 0) => {
            return Err(ImageError::BadImage(format!(
                "no file /{f} found in the image"
            )));
        }
        (Wanted::OnlyFileIn(dir), n) if n > 1 => {
            return Err(ImageError::BadImage(format!(
                "more than one file found in folder /{dir}, only one disk is allowed"
            )));
        }
        _ => match found.into_iter().next() {
            Some(x) => x,
            None => return Err(ImageError::BadImage("no disk found".into())),
        },
    };
    let Some(layer) = layers.get(li) else {
        return Err(ImageError::BadImage("no disk found".into()));
    };
    let mut archive = tar::Archive::new(open_layer(layer)?);
    let mut entries = archive.entries().map_err(bad_layer(layer))?;
    let mut entry = match entries.nth(ei) {
        Some(e) => e.map_err(bad_layer(layer))?,
        None => {
            return Err(ImageError::BadImage(format!(
                "/{path} vanished from its layer"
            )));
        }
    };
    let mut file = File::create(out).map_err(io_err(out))?;
    io::copy(&mut entry, &mut file).map_err(io_err(out))?;
    file.sync_all().map_err(io_err(out))?;
    Ok(())
}

fn open_layer(layer: &Layer) -> Result<Box<dyn Read>, ImageError> {
    if layer.media_type.contains("zstd") {
        return Err(ImageError::BadImage(format!(
            "layer media type {} is not supported: use gzip or uncompressed tar layers",
            layer.media_type
        )));
    }
    let mut f = BufReader::new(File::open(&layer.path).map_err(io_err(&layer.path))?);
    // By its first bytes: some registries label gzip layers as plain tar.
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic).map_err(io_err(&layer.path))?;
    let head = io::Cursor::new(magic[..n].to_vec()).chain(f);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(head)))
    } else {
        Ok(Box::new(head))
    }
}

fn bad_layer(layer: &Layer) -> impl Fn(io::Error) -> ImageError + '_ {
    move |e| {
        ImageError::BadImage(format!(
            "a layer ({}) is not a valid tar: {e}",
            layer.media_type
        ))
    }
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(format!("{}: {e}", path.display()))
}

/// Checks the disk as KubeVirt does: `qemu-img info` with its address space
/// and CPU time limited (a crafted image cannot exhaust the node), qcow2 or
/// raw only, no backing file, no external data file. Blocking.
pub fn check(path: &Path) -> Result<ImageFormat, ImageError> {
    let out = Command::new("prlimit")
        .args(["--as=1073741824", "--cpu=10", "--"])
        .args(["qemu-img", "info", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| ImageError::Io(format!("running qemu-img info (prlimit): {e}")))?;
    if !out.status.success() {
        return Err(ImageError::BadImage(format!(
            "qemu-img info failed on the disk: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    info_verdict(&out.stdout)
}

/// The verdict on `qemu-img info --output=json` output.
pub fn info_verdict(json: &[u8]) -> Result<ImageFormat, ImageError> {
    let info: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| ImageError::BadImage(format!("qemu-img info gave no JSON: {e}")))?;
    if info.get("backing-filename").is_some() || info.get("full-backing-filename").is_some() {
        return Err(ImageError::BadImage(
            "the disk has a backing file, which is not allowed".into(),
        ));
    }
    if info.pointer("/format-specific/data/data-file").is_some() {
        return Err(ImageError::BadImage(
            "the disk has an external data file, which is not allowed".into(),
        ));
    }
    match info.get("format").and_then(|f| f.as_str()) {
        Some("qcow2") => Ok(ImageFormat::Qcow2),
        Some("raw") => Ok(ImageFormat::Raw),
        Some(other) => Err(ImageError::BadImage(format!(
            "the disk's format is {other}; only qcow2 and raw are allowed"
        ))),
        None => Err(ImageError::BadImage("qemu-img info names no format".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_files() {
        let default = Wanted::of(None).unwrap();
        assert!(default.wants("disk/disk.qcow2"));
        assert!(!default.wants("disk"));
        assert!(!default.wants("diskette/x"));
        let given = Wanted::of(Some("/custom/my.img")).unwrap();
        assert_eq!(given, Wanted::File("custom/my.img".into()));
        assert!(given.wants("custom/my.img"));
        assert!(Wanted::of(Some("../etc/shadow")).is_err());
        assert!(Wanted::of(Some("/")).is_err());
        assert_eq!(normalize("./disk//a.img"), Some("disk/a.img".into()));
    }

    #[test]
    fn qemu_img_verdicts() {
        assert_eq!(
            info_verdict(br#"{"format":"qcow2","virtual-size":1}"#).unwrap(),
            ImageFormat::Qcow2
        );
        assert_eq!(
            info_verdict(br#"{"format":"raw"}"#).unwrap(),
            ImageFormat::Raw
        );
        let backing = info_verdict(br#"{"format":"qcow2","backing-filename":"/etc/x"}"#);
        assert!(backing.unwrap_err().to_string().contains("backing file"));
        let data = info_verdict(
            br#"{"format":"qcow2","format-specific":{"type":"qcow2","data":{"data-file":"/x"}}}"#,
        );
        assert!(data.unwrap_err().to_string().contains("data file"));
        let vmdk = info_verdict(br#"{"format":"vmdk"}"#);
        assert!(vmdk.unwrap_err().to_string().contains("only qcow2 and raw"));
    }

    fn layer_of(dir: &Path, name: &str, files: &[(&str, &[u8])], gzip: bool) -> Layer {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        let w: Box<dyn io::Write> = if gzip {
            Box::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(f)
        };
        let mut b = tar::Builder::new(w);
        for (p, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(107);
            h.set_cksum();
            b.append_data(&mut h, p, *data).unwrap();
        }
        b.into_inner().unwrap().flush().unwrap();
        Layer {
            path,
            media_type: if gzip {
                "application/vnd.oci.image.layer.v1.tar+gzip".into()
            } else {
                "application/vnd.oci.image.layer.v1.tar".into()
            },
        }
    }

    #[test]
    fn the_one_disk_is_found_across_layers_with_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let wanted = Wanted::of(None).unwrap();
        let l1 = layer_of(d.path(), "l1", &[("disk/old.img", b"old")], true);
        let l2 = layer_of(
            d.path(),
            "l2",
            &[
                ("disk/.wh.old.img", b""),
                ("./disk/new.qcow2", b"new"),
                ("etc/x", b"x"),
            ],
            false,
        );
        extract(&[l1, l2], &wanted, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
    }

    #[test]
    fn kubevirts_reasons_for_bad_layouts() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("out");
        let wanted = Wanted::of(None).unwrap();
        let none = layer_of(d.path(), "a", &[("etc/x", b"x")], true);
        let e = extract(&[none], &wanted, &out).unwrap_err().to_string();
        assert!(
            e.contains("no file found in folder /disk, no disk present"),
            "{e}"
        );
        let two = layer_of(d.path(), "b", &[("disk/a", b"a"), ("disk/b", b"b")], true);
        let e = extract(&[two], &wanted, &out).unwrap_err().to_string();
        assert!(
            e.contains("more than one file found in folder /disk, only one disk is allowed"),
            "{e}"
        );
        let custom = layer_of(d.path(), "c", &[("custom/my.img", b"m")], true);
        extract(
            &[custom],
            &Wanted::of(Some("/custom/my.img")).unwrap(),
            &out,
        )
        .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"m");
    }
}
