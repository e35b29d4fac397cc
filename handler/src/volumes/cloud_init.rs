//! cloudInitNoCloud volumes: the NoCloud files (user-data, meta-data,
//! network-config) from inline text, base64 or Secrets, and the vfat disk
//! labelled CIDATA that carries them, rebuilt every time.

use super::*;

pub(super) fn cloud_init_files(
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
pub(super) fn hostname(vmi: &VirtualMachineInstance) -> Result<&str, VolumeError> {
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
pub(super) fn secret_value(
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
pub(super) fn decode_base64(text: &str, field: &str) -> Result<Vec<u8>, VolumeError> {
    let compact: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    BASE64
        .decode(compact.as_bytes())
        .map_err(|e| invalid(field, format!("not valid base64: {e}")))
}

pub(super) fn prepare_cloud_init(
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
pub(super) fn cidata_kib(files: &CloudInitFiles) -> u64 {
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
