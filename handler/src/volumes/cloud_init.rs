//! cloud-init volumes: the files (user-data, meta-data, network-config)
//! from inline text, base64 or Secrets, and the disk that carries them,
//! rebuilt every time: for cloudInitNoCloud a vfat disk labelled CIDATA, for
//! cloudInitConfigDrive an ISO 9660 disk labelled config-2 in OpenStack's
//! layout (as KubeVirt builds it).

use super::*;

pub(super) fn cloud_init_files(
    vmi: &VirtualMachineInstance,
    uid: &str,
    source: &CloudInitNoCloudSource,
    kind: CloudInitKind,
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
    let keys = access_keys(vmi, secrets, kind)?;
    let host = hostname(vmi)?;
    Ok(match kind {
        // NoCloud: the keys join the #cloud-config's ssh_authorized_keys.
        CloudInitKind::NoCloud => CloudInitFiles {
            kind,
            user_data: with_ssh_keys(user_data, &keys, field)?,
            meta_data: format!("instance-id: {uid}\nlocal-hostname: {host}\n"),
            network_config,
        },
        // Config drive: they are meta_data.json's public_keys.
        CloudInitKind::ConfigDrive => CloudInitFiles {
            kind,
            user_data,
            meta_data: config_drive_meta_data(uid, host, &keys),
            network_config,
        },
    })
}

/// A config drive's meta_data.json: the instance's `uuid` and `hostname`,
/// and `public_keys` by index ("0", "1", …) when there are keys.
pub(super) fn config_drive_meta_data(uid: &str, host: &str, keys: &[String]) -> String {
    let mut meta = serde_json::json!({
        "uuid": uid,
        "hostname": host,
        "instance_type": "",
        "availability_zone": "",
    });
    if !keys.is_empty() {
        let public: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (i.to_string(), serde_json::Value::from(k.as_str())))
            .collect();
        meta["public_keys"] = serde_json::Value::Object(public);
    }
    // One member per line: the test guest's init reads it with sed.
    let mut text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    text.push('\n');
    text
}

/// The SSH public keys of the VMI's `accessCredentials` propagated to
/// `kind` (noCloud or configDrive): every value of each Secret, a key per
/// non-empty line, in order and without repeats.
pub(super) fn access_keys(
    vmi: &VirtualMachineInstance,
    secrets: &SecretData,
    kind: CloudInitKind,
) -> Result<Vec<String>, VolumeError> {
    let mut keys: Vec<String> = Vec::new();
    for (i, c) in vmi.spec.access_credentials.iter().flatten().enumerate() {
        let Some(k) = c.ssh_public_key.as_ref().filter(|k| {
            let m = &k.propagation_method;
            match kind {
                CloudInitKind::NoCloud => m.no_cloud.is_some(),
                CloudInitKind::ConfigDrive => m.config_drive.is_some(),
            }
        }) else {
            continue;
        };
        let Some(name) = k.source.secret.as_ref().map(|s| s.secret_name.as_str()) else {
            continue;
        };
        let field = format!("spec.accessCredentials[{i}].sshPublicKey.source.secret");
        let data = secrets
            .get(name)
            .ok_or_else(|| invalid(&field, format!("Secret {name:?} not found")))?;
        for value in data.values() {
            let text = String::from_utf8_lossy(value);
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                if !keys.iter().any(|k| k == line) {
                    keys.push(line.to_owned());
                }
            }
        }
    }
    Ok(keys)
}

/// `user_data` with `keys` in its `ssh_authorized_keys`: empty user-data
/// becomes a `#cloud-config` with them; a `#cloud-config` gets the list
/// appended. Other user-data (a script) cannot carry them, nor can a
/// `#cloud-config` that lists keys itself (they would be two lists).
pub(super) fn with_ssh_keys(
    user_data: Vec<u8>,
    keys: &[String],
    field: &str,
) -> Result<Vec<u8>, VolumeError> {
    if keys.is_empty() {
        return Ok(user_data);
    }
    let text = String::from_utf8_lossy(&user_data).into_owned();
    let mut out = if text.trim().is_empty() {
        "#cloud-config\n".to_owned()
    } else if text.starts_with("#cloud-config") {
        if text.lines().any(|l| l.starts_with("ssh_authorized_keys:")) {
            return Err(invalid(
                format!("{field}.userData"),
                "lists ssh_authorized_keys itself; accessCredentials with propagation noCloud add theirs there: put all keys in one place",
            ));
        }
        let mut t = text;
        if !t.ends_with('\n') {
            t.push('\n');
        }
        t
    } else {
        return Err(invalid(
            format!("{field}.userData"),
            "is not #cloud-config: accessCredentials with propagation noCloud put their keys into a #cloud-config user-data's ssh_authorized_keys",
        ));
    };
    out.push_str("ssh_authorized_keys:\n");
    for k in keys {
        // JSON strings are YAML double-quoted scalars.
        out.push_str(&format!("  - {}\n", serde_json::Value::from(k.as_str())));
    }
    Ok(out.into_bytes())
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
    match files.kind {
        CloudInitKind::NoCloud => prepare_no_cloud(name, path, files),
        CloudInitKind::ConfigDrive => prepare_config_drive(name, path, files),
    }
}

/// An ISO 9660 image (with Rock Ridge and Joliet names) labelled config-2:
/// openstack/latest/{meta_data.json,user_data,network_data.json}.
fn prepare_config_drive(
    name: &str,
    path: &Path,
    files: &CloudInitFiles,
) -> Result<ResolvedVolume, VolumeError> {
    let mkisofs = find_tool(&["genisoimage", "mkisofs", "xorrisofs"], "genisoimage")?;
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("meta_data.json", files.meta_data.as_bytes()),
        ("user_data", &files.user_data),
    ];
    if let Some(n) = &files.network_config {
        entries.push(("network_data.json", n));
    }
    let stage = stage_files(path, "openstack/latest", &entries)?;
    let tmp = TempPath::file(tmp_name(path));
    run(Command::new(mkisofs)
        .args([
            "-quiet", "-volid", "config-2", "-joliet", "-rock", "-output",
        ])
        .arg(tmp.path())
        .arg(stage.path()))?;
    sync_file(tmp.path())?;
    rename_into_place(tmp, path)?;
    tracing::info!(
        volume = name,
        path = %path.display(),
        network_config = files.network_config.is_some(),
        "built config drive"
    );
    Ok(resolved(path, ImageFormat::Raw))
}

fn prepare_no_cloud(
    name: &str,
    path: &Path,
    files: &CloudInitFiles,
) -> Result<ResolvedVolume, VolumeError> {
    let mkfs = find_tool(&["mkfs.vfat", "mkfs.fat"], "dosfstools (mkfs.vfat)")?;
    let mcopy = find_tool(&["mcopy"], "mtools (mcopy)")?;
    let mut entries: Vec<(&str, &[u8])> = vec![
        ("user-data", &files.user_data),
        ("meta-data", files.meta_data.as_bytes()),
    ];
    if let Some(n) = &files.network_config {
        entries.push(("network-config", n));
    }
    let stage = stage_files(path, "", &entries)?;

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
    rename_into_place(tmp, path)?;
    tracing::info!(
        volume = name,
        path = %path.display(),
        network_config = files.network_config.is_some(),
        "built cloud-init disk"
    );
    Ok(resolved(path, ImageFormat::Raw))
}

/// Writes `entries` into `sub` (a relative directory, or "") of a fresh
/// staging directory next to the disk at `path`, in the VMI's directory
/// (made if missing); removed when the returned [`TempPath`] drops. Volume
/// names never start with '.', so the stage cannot clash with a volume's file.
fn stage_files(path: &Path, sub: &str, entries: &[(&str, &[u8])]) -> Result<TempPath, VolumeError> {
    let dir = vmi_dir_of(path)?;
    ensure_vmi_dir(dir)?;
    let file_name = path.file_name().unwrap_or_default().to_string_lossy();
    let stage = TempPath::dir(dir.join(format!(".{file_name}.stage-{}", unique_suffix())));
    let target = stage.path().join(sub);
    fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&target)
        .map_err(|e| io_error(format!("creating {}", target.display()), &e))?;
    for (entry, data) in entries {
        let p = target.join(entry);
        fs::write(&p, data).map_err(|e| io_error(format!("writing {}", p.display()), &e))?;
    }
    Ok(stage)
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

#[cfg(test)]
mod ssh_key_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vmi(yaml: &str) -> VirtualMachineInstance {
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: v, namespace: ns}}\nspec:\n{yaml}"
        ))
        .unwrap()
    }

    const CREDS: &str = "  domain: {}\n  accessCredentials:\n  - sshPublicKey:\n      source: {secret: {secretName: keys}}\n      propagationMethod: {noCloud: {}}\n";

    #[test]
    fn keys_come_from_every_value_of_the_secret_a_line_each() {
        let mut secrets = SecretData::new();
        secrets.insert(
            "keys".into(),
            BTreeMap::from([
                (
                    "a".into(),
                    b"ssh-ed25519 AAAA a@x\n\nssh-rsa BBBB b@x\n".to_vec(),
                ),
                ("b".into(), b"# comment\nssh-ed25519 AAAA a@x\n".to_vec()),
            ]),
        );
        assert_eq!(
            access_keys(&vmi(CREDS), &secrets, CloudInitKind::NoCloud).unwrap(),
            ["ssh-ed25519 AAAA a@x", "ssh-rsa BBBB b@x"]
        );
        // Keys propagated by noCloud are not the config drive's.
        assert!(
            access_keys(&vmi(CREDS), &secrets, CloudInitKind::ConfigDrive)
                .unwrap()
                .is_empty()
        );
        let e = access_keys(&vmi(CREDS), &SecretData::new(), CloudInitKind::NoCloud).unwrap_err();
        assert!(
            e.to_string()
                .contains("spec.accessCredentials[0].sshPublicKey.source.secret"),
            "{e}"
        );
    }

    #[test]
    fn keys_join_cloud_config_user_data_and_nothing_else() {
        let keys = vec!["ssh-ed25519 AAAA a@x".to_owned()];
        let f = "spec.volumes[0].cloudInitNoCloud";
        assert_eq!(
            String::from_utf8(with_ssh_keys(Vec::new(), &keys, f).unwrap()).unwrap(),
            "#cloud-config\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA a@x\"\n"
        );
        assert_eq!(
            String::from_utf8(
                with_ssh_keys(b"#cloud-config\nhostname: h".to_vec(), &keys, f).unwrap()
            )
            .unwrap(),
            "#cloud-config\nhostname: h\nssh_authorized_keys:\n  - \"ssh-ed25519 AAAA a@x\"\n"
        );
        assert_eq!(
            with_ssh_keys(b"#!/bin/sh\n".to_vec(), &[], f).unwrap(),
            b"#!/bin/sh\n"
        );
        let e = with_ssh_keys(b"#!/bin/sh\necho hi\n".to_vec(), &keys, f).unwrap_err();
        assert!(e.to_string().contains("is not #cloud-config"), "{e}");
        let e = with_ssh_keys(
            b"#cloud-config\nssh_authorized_keys: [x]\n".to_vec(),
            &keys,
            f,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("lists ssh_authorized_keys itself"),
            "{e}"
        );
    }
}
