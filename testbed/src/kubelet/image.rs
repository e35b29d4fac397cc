//! Container images made by hand, with no registry: an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) in a tar archive, as
//! `ctr images import` reads it. One layer holds Debian's static busybox
//! (`/bin/busybox`, with `/bin/sh` and `/bin/sleep` linking to it); the
//! sandbox image runs `sleep`, the busybox image a shell.
//!
//! [`import`] imports the archives `make images` builds (ironvirt's images,
//! from `deploy/docker/`) into a running node's containerd.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::KubeletError;

/// One image of the archive: its full name and entrypoint.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub name: String,
    pub entrypoint: Vec<String>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KubeletError + '_ {
    move |source| KubeletError::Io {
        path: path.to_owned(),
        source,
    }
}

fn run(cmd: &mut Command) -> Result<String, KubeletError> {
    let out = cmd.output().map_err(|e| KubeletError::Command {
        command: format!("{cmd:?}"),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hex sha256 of a file (`sha256sum`).
fn sha256_file(path: &Path) -> Result<String, KubeletError> {
    let out = run(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .ok_or_else(|| KubeletError::Command {
            command: format!("sha256sum {}", path.display()),
            output: out.clone(),
        })
}

/// Writes `bytes` as a blob; returns its descriptor's digest and size.
fn put_blob(blobs: &Path, tmp_name: &str, bytes: &[u8]) -> Result<(String, u64), KubeletError> {
    let tmp = blobs.join(tmp_name);
    fs::write(&tmp, bytes).map_err(io(&tmp))?;
    let hex = sha256_file(&tmp)?;
    let dest = blobs.join(&hex);
    fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// A busybox applet name that is safe as a file name in /bin.
pub fn applet_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name != "busybox"
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'['))
}

/// The image config (OCI image-spec) of one image.
pub fn config_json(spec: &ImageSpec, diff_id: &str) -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "ironvirt-testbed (busybox-static from Debian)"}],
    })
}

/// The tag part of a full image name (`registry.k8s.io/pause:3.6` → `3.6`).
pub fn tag_of(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.rsplit_once(':').map_or("latest", |(_, t)| t)
}

/// Builds the OCI archive `work/images.tar` holding `images`, each a layer
/// with `busybox` (a static binary) as /bin/busybox. Returns its path.
pub fn build_archive(
    work: &Path,
    busybox: &Path,
    images: &[ImageSpec],
) -> Result<PathBuf, KubeletError> {
    let _ = fs::remove_dir_all(work);
    let rootfs = work.join("rootfs");
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin).map_err(io(&bin))?;
    let dest = bin.join("busybox");
    fs::copy(busybox, &dest).map_err(io(busybox))?;
    // Every applet busybox lists, as a link (a shell alone would leave
    // `ls` and friends to busybox's own lookup).
    let listed = run(Command::new(busybox).arg("--list")).unwrap_or_default();
    let mut applets: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|a| applet_name_ok(a))
        .collect();
    applets.extend(["sh", "sleep"]);
    applets.sort_unstable();
    applets.dedup();
    for applet in applets {
        let link = bin.join(applet);
        std::os::unix::fs::symlink("busybox", &link).map_err(io(&link))?;
    }
    let layout = work.join("layout");
    let blobs = layout.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    // The layer: reproducible (sorted, owner 0, mtime 0).
    let layer_tmp = blobs.join("layer.tmp");
    run(Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-cf",
        ])
        .arg(&layer_tmp)
        .arg("-C")
        .arg(&rootfs)
        .arg("."))?;
    let layer_hex = sha256_file(&layer_tmp)?;
    let layer_size = fs::metadata(&layer_tmp).map_err(io(&layer_tmp))?.len();
    let layer_path = blobs.join(&layer_hex);
    fs::rename(&layer_tmp, &layer_path).map_err(io(&layer_path))?;
    let layer_digest = format!("sha256:{layer_hex}");

    let mut manifests = Vec::new();
    for (i, spec) in images.iter().enumerate() {
        let config =
            serde_json::to_vec(&config_json(spec, &layer_digest)).map_err(KubeletError::Json)?;
        let (config_digest, config_size) = put_blob(&blobs, &format!("config-{i}.tmp"), &config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size,
            }],
        });
        let manifest = serde_json::to_vec(&manifest).map_err(KubeletError::Json)?;
        let (digest, size) = put_blob(&blobs, &format!("manifest-{i}.tmp"), &manifest)?;
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": tag_of(&spec.name),
            },
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    let index_path = layout.join("index.json");
    fs::write(
        &index_path,
        serde_json::to_vec(&index).map_err(KubeletError::Json)?,
    )
    .map_err(io(&index_path))?;
    let oci_layout = layout.join("oci-layout");
    fs::write(&oci_layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&oci_layout))?;
    let archive = work.join("images.tar");
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-cf"])
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"]))?;
    Ok(archive)
}

/// The image names an archive holds: the `RepoTags` of a docker-archive
/// (`manifest.json`, as `buildah push … docker-archive:` writes it), read with
/// `tar -xOf`.
pub fn archive_image_names(archive: &Path) -> Result<Vec<String>, KubeletError> {
    let manifest = run(Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("manifest.json"))?;
    repo_tags(&manifest).map_err(|e| KubeletError::Command {
        command: format!("tar -xOf {} manifest.json", archive.display()),
        output: e,
    })
}

/// The `RepoTags` of a docker-archive's `manifest.json`.
pub fn repo_tags(manifest_json: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value =
        serde_json::from_str(manifest_json).map_err(|e| format!("manifest.json: {e}"))?;
    let tags: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|m| m["RepoTags"].as_array().into_iter().flatten())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    if tags.is_empty() {
        return Err(format!("no RepoTags in manifest.json: {manifest_json}"));
    }
    Ok(tags)
}

/// Imports image archives (docker-archive or OCI archive, as `make images`
/// writes them: `hack/build-images.sh`) into the node's containerd, in
/// namespace k8s.io where kubelet finds them. The node must be up. Returns
/// `ctr`'s output.
pub fn import(paths: &super::config::NodePaths, archive: &Path) -> Result<String, KubeletError> {
    if !archive.is_file() {
        return Err(KubeletError::Missing {
            what: "image archive",
            path: archive.to_owned(),
            hint: "build it with `make images` (hack/build-images.sh prints the archives)",
        });
    }
    // Not `super::ctr`: its 20 s total timeout is short for a large image.
    run(Command::new("ctr")
        .arg("--address")
        .arg(paths.containerd_socket())
        .args(["--namespace", "k8s.io", "--timeout", "300s"])
        .args(["images", "import", "--no-unpack"])
        .arg(archive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applet_names() {
        assert!(applet_name_ok("ls"));
        assert!(applet_name_ok("["));
        assert!(applet_name_ok("run-parts"));
        assert!(!applet_name_ok("../x"));
        assert!(!applet_name_ok("a/b"));
        assert!(!applet_name_ok(""));
        assert!(!applet_name_ok("busybox"));
    }

    #[test]
    fn tags() {
        assert_eq!(tag_of("registry.k8s.io/pause:3.6"), "3.6");
        assert_eq!(tag_of("ironvirt.local/busybox:1"), "1");
        assert_eq!(tag_of("127.0.0.1:5000/busybox"), "latest");
    }

    #[test]
    fn docker_archive_tags() {
        let m = r#"[{"Config":"c.json","RepoTags":["ironvirt.local/ironvirt-api:dev"],"Layers":["l.tar"]}]"#;
        assert_eq!(
            repo_tags(m).unwrap(),
            vec!["ironvirt.local/ironvirt-api:dev".to_owned()]
        );
        assert!(repo_tags(r#"[{"Config":"c.json"}]"#).is_err());
        assert!(repo_tags("not json").is_err());
    }

    #[test]
    fn config_names_the_layer_and_entrypoint() {
        let spec = ImageSpec {
            name: "x/y:1".into(),
            entrypoint: vec!["/bin/sleep".into(), "1".into()],
        };
        let v = config_json(&spec, "sha256:00");
        assert_eq!(v["rootfs"]["diff_ids"][0], "sha256:00");
        assert_eq!(v["config"]["Entrypoint"][0], "/bin/sleep");
        assert_eq!(v["os"], "linux");
    }
}
