//! The cluster's volume settings at admission: hostDisk on or off and
//! confined to `<root>/<namespace>/`, and capacity limits
//! ([`ironvirt_crds::validate::check_volumes`]), plus, where the hostDisk root
//! is visible on the webhook's host (the test bed is one machine), the same
//! walk the handler makes ([`ironvirt_crds::validate::resolve_beneath`]):
//! symbolic links, device nodes and other non-regular files are refused with
//! the field path. What does not exist (yet) passes: the image may be placed
//! before the VMI starts, and the handler refuses it then if it is still
//! missing.

use ironvirt_crds::VirtualMachineInstanceSpec;
use ironvirt_crds::validate::{FieldError, Reason, VolumePolicy, check_volumes, resolve_beneath};
use ironvirt_crds::vmi::HostDiskType;
use std::path::Path;

/// Every volume problem of the VMI spec at `path` of an object in `namespace`.
pub(crate) fn check(
    spec: Option<&VirtualMachineInstanceSpec>,
    namespace: &str,
    policy: &VolumePolicy,
    path: &str,
) -> Vec<FieldError> {
    let Some(spec) = spec else {
        return Vec::new();
    };
    let mut errors = check_volumes(spec, namespace, policy, path);
    let Some(hd) = &policy.host_disk else {
        return errors;
    };
    let dir = hd.namespace_dir(namespace);
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let Some(h) = &v.host_disk else { continue };
        let field = format!("{path}.volumes[{i}].hostDisk.path");
        if errors.iter().any(|e| e.field == field) {
            continue;
        }
        let create = h.disk_type == HostDiskType::DiskOrCreate;
        match resolve_beneath(&dir, Path::new(&h.path), create) {
            Ok(_) => {}
            Err(e) if e.is_missing() => {
                tracing::debug!(namespace, path = %h.path, reason = %e, "hostDisk not on the webhook's host: left to the handler");
            }
            Err(e) => errors.push(FieldError::with_reason(
                Reason::Forbidden,
                field,
                e.to_string(),
            )),
        }
    }
    errors
}

/// `extra` added to `errors`, without repeating an error already there (a
/// relative hostDisk path is reported by both checks with the same words).
pub(crate) fn merge(errors: &mut Vec<FieldError>, extra: Vec<FieldError>) {
    for e in extra {
        if !errors.contains(&e) {
            errors.push(e);
        }
    }
}
