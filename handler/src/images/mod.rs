//! containerDisk images, pulled by the handler itself: there is no launcher
//! pod, so no kubelet pulls them.
//!
//! One pull per node and image: the disk of each image is kept in a cache
//! keyed by the image manifest's digest and shared by every VMI of the node
//! (each VMI gets its own qcow2 overlay on it). Blobs stream to disk with
//! their digests verified ([`oci_client::Client::pull_blob`]); the disk file
//! is then taken from the layers ([`disk::extract`]) and checked
//! ([`disk::check`]) before it enters the cache under its final name.
//! The bytes of a download are counted as they are written
//! ([`progress::PullProgress`]), for the VMI to show how far it is.
//!
//! # Cache layout (`--image-cache-dir`)
//!
//! - `images/<manifest digest hex>[-<path hash>]/disk`, with `format`
//!   (`qcow2` or `raw`) beside it: a checked disk, read-only; or a kernel
//!   or initrd of `kernelBoot.container` (format `file`, not a disk, so not
//!   checked with `qemu-img`);
//! - `refs/<hash of the reference>`: the manifest digest the reference had
//!   when last pulled (what IfNotPresent and Never look up);
//! - `tmp/`: downloads in progress, removed when they end and at start.
//!
//! A handler restart finds the cache as it was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ironvirt_images::{client_for, reference_for, with_causes};
use oci_client::secrets::RegistryAuth;

use crate::domxml::ImageFormat;

pub mod disk;
pub mod gc;
pub mod progress;
/// References, pull policies and the node's registry configuration live in
/// the shared `ironvirt-images` crate (the operator reads image labels with
/// them too).
pub use ironvirt_images::{reference, registries};

pub use disk::Wanted;
pub use progress::{PullProgress, Stage};
pub use reference::{ImageRef, PullPolicy};
pub use registries::{Endpoint, Registries};

/// How long a just-used image is safe from [`Images::collect`]: a create
/// holds its image a moment after getting it.
pub const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The `format` of a cached kernel or initrd.
const BOOT_FILE: &str = "file";

/// Why an image cannot give a disk.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The registry could not be reached or refused (ErrImagePull): the
    /// message holds each endpoint's answer.
    #[error("pulling {image}: {reason}")]
    Pull { image: String, reason: String },
    /// imagePullPolicy Never and the image is not on the node.
    #[error("{0} is not on the node and imagePullPolicy is Never")]
    NotPresent(String),
    /// The image has no usable disk (KubeVirt's reasons).
    #[error("{0}")]
    BadImage(String),
    /// The node's file system.
    #[error("image cache: {0}")]
    Io(String),
}

/// A checked disk in the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedDisk {
    /// The image manifest's digest (`sha256:…`).
    pub digest: String,
    pub path: PathBuf,
    pub format: ImageFormat,
}

/// The node's image puller and cache.
pub struct Images {
    dir: PathBuf,
    registries: Registries,
    /// One lock per reference: concurrent VMIs of one image pull once.
    pulling: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Images {
    /// The cache in `dir` (made when missing; leftover downloads removed).
    pub fn open(dir: &Path, registries: Registries) -> Result<Self, ImageError> {
        for sub in ["images", "refs"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(dir))?;
        }
        let tmp = dir.join("tmp");
        match std::fs::remove_dir_all(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(&tmp)(e));
            }
            _ => {}
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        Ok(Images {
            dir: dir.to_owned(),
            registries,
            pulling: Mutex::default(),
        })
    }

    /// The disk of `image` (the file `wanted` names), from the cache or
    /// pulled as `policy` says, with `auth` for the registry; held for VMI
    /// `user` until [`Images::release`].
    pub async fn ensure(
        &self,
        image: &ImageRef,
        wanted: &Wanted,
        policy: PullPolicy,
        auth: &RegistryAuth,
        user: &str,
    ) -> Result<CachedDisk, ImageError> {
        let progress = PullProgress::new();
        self.ensure_reporting(image, wanted, policy, auth, user, &progress)
            .await
    }

    /// [`Images::ensure`], counting a download's bytes in `progress` (which
    /// stays [`Stage::Idle`] when nothing downloads). The caller ends it
    /// with [`PullProgress::finish`].
    pub async fn ensure_reporting(
        &self,
        image: &ImageRef,
        wanted: &Wanted,
        policy: PullPolicy,
        auth: &RegistryAuth,
        user: &str,
        progress: &PullProgress,
    ) -> Result<CachedDisk, ImageError> {
        let disk = self.get(image, wanted, policy, auth, progress).await?;
        self.hold(&disk, user)?;
        Ok(disk)
    }

    async fn get(
        &self,
        image: &ImageRef,
        wanted: &Wanted,
        policy: PullPolicy,
        auth: &RegistryAuth,
        progress: &PullProgress,
    ) -> Result<CachedDisk, ImageError> {
        let key = image.to_string();
        let lock = {
            let mut pulling = self.pulling.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(pulling.entry(key.clone()).or_default())
        };
        let _held = lock.lock().await;
        let cached = self.cached(image, wanted);
        match (policy, cached) {
            // A private image (pulled with credentials) is served from the
            // cache only to credentials the registry accepted for it: a
            // tenant without them gets no other tenant's private image.
            (PullPolicy::IfNotPresent | PullPolicy::Never, Some(hit))
                if may_use(&hit, &image.registry, auth) =>
            {
                tracing::debug!(image = %key, digest = %hit.digest, "image in the cache");
                return Ok(hit);
            }
            (PullPolicy::Never, Some(_)) => {
                return Err(ImageError::Pull {
                    image: key,
                    reason: "the node holds this image for other registry credentials, and \
                             imagePullPolicy is Never"
                        .into(),
                });
            }
            (PullPolicy::Never, None) => return Err(ImageError::NotPresent(key)),
            _ => {}
        }
        self.pull(image, wanted, auth, progress).await
    }

    /// What the cache holds for `image` by its last known digest.
    pub fn cached(&self, image: &ImageRef, wanted: &Wanted) -> Option<CachedDisk> {
        let digest = match &image.digest {
            Some(d) => d.clone(),
            None => std::fs::read_to_string(self.ref_file(image))
                .ok()?
                .trim()
                .to_owned(),
        };
        self.disk_of(&digest, wanted)
    }

    fn disk_of(&self, digest: &str, wanted: &Wanted) -> Option<CachedDisk> {
        let dir = self.image_dir(digest, wanted);
        let format = match std::fs::read_to_string(dir.join("format")).ok()?.trim() {
            "qcow2" => ImageFormat::Qcow2,
            "raw" => ImageFormat::Raw,
            // A kernel or initrd: not a disk, its format is never used.
            BOOT_FILE if !wanted.is_disk() => ImageFormat::Raw,
            _ => return None,
        };
        let path = dir.join("disk");
        path.is_file().then(|| CachedDisk {
            digest: digest.to_owned(),
            path,
            format,
        })
    }

    fn ref_file(&self, image: &ImageRef) -> PathBuf {
        self.dir.join("refs").join(short_hash(&image.to_string()))
    }

    fn image_dir(&self, digest: &str, wanted: &Wanted) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let name = match wanted {
            Wanted::OnlyFileIn(d) if d == disk::DISK_FOLDER => hex.to_owned(),
            other => format!("{hex}-{}", short_hash(&format!("{other:?}"))),
        };
        self.dir.join("images").join(name)
    }

    /// Pulls from each endpoint in turn until one serves the image.
    async fn pull(
        &self,
        image: &ImageRef,
        wanted: &Wanted,
        auth: &RegistryAuth,
        progress: &PullProgress,
    ) -> Result<CachedDisk, ImageError> {
        let mut answers = Vec::new();
        for endpoint in self.registries.endpoints(&image.registry) {
            // Credentials go only to the registry they are for, never to a
            // mirror the node configured.
            let anonymous = RegistryAuth::Anonymous;
            let auth = if endpoint.host == image.registry {
                auth
            } else {
                &anonymous
            };
            match self
                .pull_from(&endpoint, image, wanted, auth, progress)
                .await
            {
                Ok(disk) => return Ok(disk),
                Err(e @ (ImageError::BadImage(_) | ImageError::Io(_))) => return Err(e),
                Err(e) => {
                    tracing::info!(image = %image, endpoint = %endpoint.host, error = %e, "pull failed");
                    answers.push(format!("{}: {}", endpoint.host, reason_of(e)));
                }
            }
        }
        Err(ImageError::Pull {
            image: image.to_string(),
            reason: answers.join("; "),
        })
    }

    async fn pull_from(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        wanted: &Wanted,
        auth: &RegistryAuth,
        progress: &PullProgress,
    ) -> Result<CachedDisk, ImageError> {
        let client = client_for(endpoint).map_err(|e| ImageError::Io(e.to_string()))?;
        let reference = reference_for(image, endpoint);
        let pull_err = |e: oci_client::errors::OciDistributionError| ImageError::Pull {
            image: image.to_string(),
            reason: with_causes(&e),
        };
        let (manifest, digest) = client
            .pull_image_manifest(&reference, auth)
            .await
            .map_err(pull_err)?;
        if let Some(hit) = self.disk_of(&digest, wanted) {
            self.remember(image, &digest)?;
            allow(&hit, &image.registry, auth)?;
            tracing::info!(image = %image, %digest, "image unchanged; the cached disk is used");
            return Ok(hit);
        }
        let work = tempfile::Builder::new()
            .prefix("pull-")
            .tempdir_in(self.dir.join("tmp"))
            .map_err(io(&self.dir))?;
        let mut layers = Vec::new();
        let mut bytes = 0u64;
        let total = manifest
            .layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(0))
            .fold(0u64, u64::saturating_add);
        tracing::info!(image = %image, endpoint = %endpoint.host, %digest, layers = manifest.layers.len(), total_bytes = total, "downloading the image");
        progress.start(total);
        for (i, layer) in manifest.layers.iter().enumerate() {
            let path = work.path().join(format!("layer-{i}"));
            let file = tokio::fs::File::create(&path).await.map_err(io(&path))?;
            client
                .pull_blob(&reference, layer, progress.counting(file))
                .await
                .map_err(pull_err)?;
            bytes += u64::try_from(layer.size).unwrap_or(0);
            layers.push(disk::Layer {
                path,
                media_type: layer.media_type.clone(),
            });
        }
        progress.unpacking();
        let out = work.path().join("disk");
        let wanted_owned = wanted.clone();
        let out_path = out.clone();
        let format_name = tokio::task::spawn_blocking(move || {
            disk::extract(&layers, &wanted_owned, &out_path)?;
            if !wanted_owned.is_disk() {
                return Ok(BOOT_FILE);
            }
            disk::check(&out_path).map(|f| match f {
                ImageFormat::Qcow2 => "qcow2",
                ImageFormat::Raw => "raw",
            })
        })
        .await
        .map_err(|e| ImageError::Io(format!("extracting the disk panicked: {e}")))??;
        let dir = self.image_dir(&digest, wanted);
        let staged = work.path().join("image");
        std::fs::create_dir(&staged).map_err(io(&staged))?;
        std::fs::rename(&out, staged.join("disk")).map_err(io(&staged))?;
        std::fs::write(staged.join("format"), format_name).map_err(io(&staged))?;
        set_read_only(&staged.join("disk"))?;
        match std::fs::rename(&staged, &dir) {
            Ok(()) => {}
            // Another pull of the same digest (another reference) won.
            Err(_) if dir.join("disk").is_file() => {}
            Err(e) => return Err(io(&dir)(e)),
        }
        self.remember(image, &digest)?;
        tracing::info!(image = %image, %digest, bytes, format = format_name, "image pulled");
        let disk = self
            .disk_of(&digest, wanted)
            .ok_or_else(|| ImageError::Io(format!("{} vanished after the pull", dir.display())))?;
        allow(&disk, &image.registry, auth)?;
        Ok(disk)
    }

    fn remember(&self, image: &ImageRef, digest: &str) -> Result<(), ImageError> {
        if image.digest.is_some() {
            return Ok(());
        }
        let file = self.ref_file(image);
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, digest).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &file).map_err(io(&file))
    }
}

/// The credentials for `registry` in a Docker config JSON (the
/// `.dockerconfigjson` of a `kubernetes.io/dockerconfigjson` Secret): its
/// `auths` entry for the host (written bare or as a URL; Docker Hub's
/// `https://index.docker.io/v1/` counts for docker.io), with `username` and
/// `password` or `auth` (base64 of `user:password`).
pub fn docker_config_auth(json: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    use base64::Engine;
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: std::collections::BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        username: Option<String>,
        password: Option<String>,
        auth: Option<String>,
    }
    let config: Config =
        serde_json::from_slice(json).map_err(|e| format!("not a Docker config JSON: {e}"))?;
    let host_of = |key: &str| {
        let rest = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        rest.split('/').next().unwrap_or_default().to_owned()
    };
    let wanted = |host: &str| {
        host == registry
            || (registry == "docker.io"
                && matches!(host, "index.docker.io" | "registry-1.docker.io"))
    };
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| wanted(&host_of(k)))
        .map(|(_, e)| e)
        .ok_or_else(|| format!("it has no credentials for {registry}"))?;
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    let encoded = entry.auth.as_deref().ok_or_else(|| {
        format!("its entry for {registry} has neither username/password nor auth")
    })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("its auth for {registry} is not base64: {e}"))?;
    let text =
        String::from_utf8(decoded).map_err(|_| format!("its auth for {registry} is not UTF-8"))?;
    let (u, p) = text
        .split_once(':')
        .ok_or_else(|| format!("its auth for {registry} is not user:password"))?;
    Ok(RegistryAuth::Basic(u.to_owned(), p.to_owned()))
}

/// The registry's own words, without oci-client's wrapping where it adds none.
fn reason_of(e: ImageError) -> String {
    match e {
        ImageError::Pull { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// The file recording that `auth` got the image of `disk` from `registry`:
/// None for anonymous pulls.
fn grant_file(disk: &CachedDisk, registry: &str, auth: &RegistryAuth) -> Option<PathBuf> {
    let RegistryAuth::Basic(user, password) = auth else {
        return None;
    };
    let dir = disk.path.parent()?;
    Some(
        dir.join("grants")
            .join(short_hash(&format!("{registry}\n{user}\n{password}"))),
    )
}

/// Records that the registry gave the image of `disk` to `auth`; the first
/// pull with credentials marks the image private.
fn allow(disk: &CachedDisk, registry: &str, auth: &RegistryAuth) -> Result<(), ImageError> {
    let Some(file) = grant_file(disk, registry, auth) else {
        return Ok(());
    };
    if let Some(grants) = file.parent() {
        std::fs::create_dir_all(grants).map_err(io(grants))?;
    }
    std::fs::write(&file, b"").map_err(io(&file))
}

/// Whether `auth` may have `disk` without asking the registry: the image is
/// public (no pull needed credentials), or these credentials got it before.
fn may_use(disk: &CachedDisk, registry: &str, auth: &RegistryAuth) -> bool {
    let Some(dir) = disk.path.parent() else {
        return false;
    };
    let private = std::fs::read_dir(dir.join("grants")).is_ok_and(|mut d| d.next().is_some());
    !private || grant_file(disk, registry, auth).is_some_and(|f| f.is_file())
}

fn set_read_only(path: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444)).map_err(io(path))
}

/// A short stable name for `text` (file names of the cache).
fn short_hash(text: &str) -> String {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(text.as_bytes());
    sum.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |e| ImageError::Io(format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        let json = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTE6cDE="},"127.0.0.1:5000":{"username":"u2","password":"p2"}}}"#;
        assert_eq!(
            docker_config_auth(json, "docker.io").unwrap(),
            RegistryAuth::Basic("u1".into(), "p1".into())
        );
        assert_eq!(
            docker_config_auth(json, "127.0.0.1:5000").unwrap(),
            RegistryAuth::Basic("u2".into(), "p2".into())
        );
        let e = docker_config_auth(json, "quay.io").unwrap_err();
        assert!(e.contains("no credentials for quay.io"), "{e}");
        assert!(docker_config_auth(b"{", "quay.io").is_err());
    }

    #[tokio::test]
    async fn a_cache_hit_downloads_nothing() {
        let d = tempfile::tempdir().unwrap();
        let images = Images::open(d.path(), Registries::default()).unwrap();
        let hex = "ab".repeat(32);
        // An unreachable registry: only the cache can answer.
        let image = ImageRef::parse(&format!("127.0.0.1:1/x/disk@sha256:{hex}")).unwrap();
        let wanted = Wanted::of(None).unwrap();
        let dir = d.path().join("images").join(&hex);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("disk"), b"disk").unwrap();
        std::fs::write(dir.join("format"), "raw").unwrap();
        let progress = PullProgress::new();
        let got = images
            .ensure_reporting(
                &image,
                &wanted,
                PullPolicy::IfNotPresent,
                &RegistryAuth::Anonymous,
                "vmi-a",
                &progress,
            )
            .await
            .unwrap();
        assert_eq!(got.path, dir.join("disk"));
        assert_eq!(progress.stage(), Stage::Idle);
        assert_eq!(progress.done(), 0);
    }
}
