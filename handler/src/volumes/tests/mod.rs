//! Unit tests of the volume files: planning (pure) and preparing (real files
//! in temporary directories, with the real tools).

use std::os::unix::fs::MetadataExt;

use super::*;

const UID: &str = "0b1e2c3d-4e5f-6a7b-8c9d-0e1f2a3b4c5d";
/// The hostDisk root of [`policy`], and namespace `default`'s directory in it.
const ROOT: &str = "/hd";
const NS_DIR: &str = "/hd/default";

/// hostDisk on under [`ROOT`], the default capacity limits.
fn policy() -> VolumePolicy {
    VolumePolicy::with_host_disk_root(ROOT)
}

/// [`plan`] under [`policy`].
fn plan_on(
    vmi: &VirtualMachineInstance,
    dir: &Path,
    secrets: &SecretData,
) -> Result<BTreeMap<String, VolumePlan>, VolumeError> {
    plan(vmi, dir, &policy(), secrets)
}

/// A VMI named `testvm` with uid [`UID`] and these volumes (YAML flow list).
fn vmi_with(volumes: &str) -> VirtualMachineInstance {
    vmi_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: testvm, namespace: default, uid: {UID}}}\n\
         spec: {{domain: {{}}, volumes: {volumes}}}\n"
    ))
}

fn vmi_yaml(yaml: &str) -> VirtualMachineInstance {
    serde_yaml::from_str(yaml).unwrap()
}

fn no_secrets() -> SecretData {
    SecretData::new()
}

fn secrets(entries: &[(&str, &str, &[u8])]) -> SecretData {
    let mut s = SecretData::new();
    for (name, key, value) in entries {
        s.entry((*name).to_owned())
            .or_default()
            .insert((*key).to_owned(), value.to_vec());
    }
    s
}

fn plan_one(volumes: &str, secrets: &SecretData) -> Result<VolumePlan, VolumeError> {
    let plans = plan_on(&vmi_with(volumes), Path::new("/state/vmis/u"), secrets)?;
    assert_eq!(plans.len(), 1, "{plans:?}");
    Ok(plans.into_values().next().unwrap())
}

fn cloud_init(volumes: &str, secrets: &SecretData) -> CloudInitFiles {
    match plan_one(volumes, secrets).unwrap() {
        VolumePlan::CloudInit { files, .. } => files,
        other => panic!("not a cloud-init plan: {other:?}"),
    }
}

#[track_caller]
fn assert_invalid(result: Result<impl std::fmt::Debug, VolumeError>, field: &str, words: &str) {
    match result {
        Err(VolumeError::Invalid { field: f, reason }) => {
            assert_eq!(f, field, "reason: {reason}");
            assert!(
                reason.contains(words),
                "{reason:?} does not contain {words:?}"
            );
        }
        other => panic!("expected Invalid on {field}, got {other:?}"),
    }
}

/// The message of a [`VolumeError::Policy`] of `reason`.
#[track_caller]
fn assert_policy(
    result: Result<impl std::fmt::Debug, VolumeError>,
    reason: PolicyViolation,
) -> String {
    match result {
        Err(VolumeError::Policy { reason: r, message }) => {
            assert_eq!(r, reason, "message: {message}");
            message
        }
        other => panic!("expected a {reason:?} refusal, got {other:?}"),
    }
}

#[track_caller]
fn assert_unsupported(result: Result<impl std::fmt::Debug, VolumeError>, field: &str) -> String {
    match result {
        Err(VolumeError::Unsupported { field: f, reason }) => {
            assert_eq!(f, field, "reason: {reason}");
            reason
        }
        other => panic!("expected Unsupported on {field}, got {other:?}"),
    }
}

// ---- referenced_secrets ------------------------------------------------

mod plan;
mod prepare;
