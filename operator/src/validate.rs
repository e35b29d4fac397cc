//! Checks on a VMI spec that the schema cannot express: every disk has its
//! volume, every interface its network, names are unique. Messages name the
//! field path, as KubeVirt's webhook does.

use std::collections::BTreeSet;

use ironvirt_crds::VirtualMachineInstanceSpec;

/// One problem with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// The errors joined with ", " as KubeVirt does, at most 10 of them.
pub fn join(errors: &[FieldError]) -> String {
    let mut s = errors
        .iter()
        .take(10)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if errors.len() > 10 {
        s.push_str(&format!(
            ", and {} more validation errors",
            errors.len() - 10
        ));
    }
    s
}

/// Validates a VMI spec found at `path` (e.g. `spec` or `spec.template.spec`).
pub fn vmi_spec(spec: &VirtualMachineInstanceSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let networks: Vec<&str> = spec
        .networks
        .iter()
        .flatten()
        .map(|n| n.name.as_str())
        .collect();
    let devices = spec.domain.devices.as_ref();
    let disks = devices.and_then(|d| d.disks.as_ref());
    let interfaces = devices.and_then(|d| d.interfaces.as_ref());

    let mut seen = BTreeSet::new();
    for (i, disk) in disks.into_iter().flatten().enumerate() {
        if !seen.insert(disk.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.domain.devices.disks[{i}].name"),
                format!("'{}' is used by more than one disk", disk.name),
            ));
        }
        if !volumes.contains(&disk.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.domain.devices.disks[{i}].name"),
                format!(
                    "'{}' has no volume of the same name in {path}.volumes",
                    disk.name
                ),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        if !seen.insert(*v) {
            errors.push(FieldError::new(
                format!("{path}.volumes[{i}].name"),
                format!("'{v}' is used by more than one volume"),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, iface) in interfaces.into_iter().flatten().enumerate() {
        if !seen.insert(iface.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.domain.devices.interfaces[{i}].name"),
                format!("'{}' is used by more than one interface", iface.name),
            ));
        }
        if !networks.contains(&iface.name.as_str()) {
            errors.push(FieldError::new(
                format!("{path}.domain.devices.interfaces[{i}].name"),
                format!(
                    "'{}' has no network of the same name in {path}.networks",
                    iface.name
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> VirtualMachineInstanceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_valid_spec_has_no_errors() {
        let s = spec(
            "domain: {devices: {disks: [{name: root}], interfaces: [{name: default, masquerade: {}}]}}\nvolumes: [{name: root, hostDisk: {path: /x, type: Disk}}]\nnetworks: [{name: default, pod: {}}]",
        );
        assert!(vmi_spec(&s, "spec").is_empty());
    }

    #[test]
    fn missing_volume_and_network_name_the_field() {
        let s = spec(
            "domain: {devices: {disks: [{name: root}, {name: root}], interfaces: [{name: default, masquerade: {}}]}}",
        );
        let errs = vmi_spec(&s, "spec.template.spec");
        let text = join(&errs);
        assert!(
            text.contains("spec.template.spec.domain.devices.disks[0].name 'root' has no volume"),
            "{text}"
        );
        assert!(
            text.contains("disks[1].name 'root' is used by more than one disk"),
            "{text}"
        );
        assert!(
            text.contains("interfaces[0].name 'default' has no network"),
            "{text}"
        );
    }

    #[test]
    fn join_caps_at_ten() {
        let errs: Vec<_> = (0..12)
            .map(|i| FieldError::new(format!("f{i}"), "bad"))
            .collect();
        assert!(join(&errs).ends_with(", and 2 more validation errors"));
    }
}
