//! Checks on a VM's template before the operator builds its VMI: every disk
//! has its volume, every interface its network, names and boot orders are
//! unique. The implementation is shared with the admission webhooks
//! ([`ironvirt_crds::validate`]); the operator applies only the references
//! part, what it needs to build a VMI at all. The webhooks check the whole spec
//! (memory, CPU, unsupported fields) when the VM is created or changed.

use ironvirt_crds::VirtualMachineInstanceSpec;
pub use ironvirt_crds::validate::{FieldError, join};

/// Validates a VMI spec found at `path` (e.g. `spec` or `spec.template.spec`).
pub fn vmi_spec(spec: &VirtualMachineInstanceSpec, path: &str) -> Vec<FieldError> {
    ironvirt_crds::validate::vmi_spec_references(spec, path)
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
