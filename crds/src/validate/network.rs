//! Interfaces and networks: bindings, NIC models, MAC addresses, ports and
//! network sources.

use std::collections::BTreeSet;

use super::references::interface_references;
use super::{FieldError, exactly_one, unsupported, unsupported_fields};
use crate::vmi::{Interface, PortProtocol, VirtualMachineInstanceSpec};

/// NIC models ironvirt (QEMU) provides.
pub const NIC_MODELS: [&str; 6] = ["virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"];

/// Interface names and networks, one binding each, a known model, a MAC
/// address, ports.
pub(super) fn interfaces(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    interface_references(spec, path, errors);
    let interfaces = spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref());
    for (i, iface) in interfaces.into_iter().flatten().enumerate() {
        interface(
            iface,
            &format!("{path}.domain.devices.interfaces[{i}]"),
            errors,
        );
    }
}

fn interface(iface: &Interface, field: &str, errors: &mut Vec<FieldError>) {
    let unsupported_bindings = &[
        ("sriov", iface.sriov.is_some(), unsupported::SRIOV),
        ("passt", iface.passt.is_some(), unsupported::PASST),
        ("slirp", iface.slirp.is_some(), unsupported::PASST),
        (
            "binding",
            iface.binding.is_some(),
            unsupported::BINDING_PLUGIN,
        ),
        ("macvtap", iface.macvtap.is_some(), unsupported::MACVTAP),
        (
            "passtBinding",
            iface.passt_binding.is_some(),
            unsupported::MACVTAP,
        ),
    ];
    let supported = usize::from(iface.masquerade.is_some()) + usize::from(iface.bridge.is_some());
    let bindings = supported + unsupported_fields(field, unsupported_bindings, errors);
    exactly_one(
        bindings,
        field,
        "an interface needs a binding: set masquerade or bridge",
        "an interface sets exactly one binding: masquerade or bridge",
        errors,
    );
    if iface.pci_address.is_some() {
        errors.push(FieldError::unsupported(
            format!("{field}.pciAddress"),
            unsupported::PCI_ADDRESS,
        ));
    }
    if let Some(model) = iface.model.as_deref()
        && !NIC_MODELS.contains(&model)
    {
        errors.push(FieldError::unsupported(
            format!("{field}.model"),
            format!(
                "'{model}' is not a supported NIC model: use one of {}",
                NIC_MODELS.join(", ")
            ),
        ));
    }
    if let Some(mac) = iface.mac_address.as_deref()
        && !is_mac(mac)
    {
        errors.push(FieldError::new(
            format!("{field}.macAddress"),
            format!("'{mac}' is not a MAC address (for example de:ad:00:00:be:af)"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (j, p) in iface.ports.iter().flatten().enumerate() {
        let pfield = format!("{field}.ports[{j}]");
        if !(1..=65535).contains(&p.port) {
            errors.push(FieldError::new(
                format!("{pfield}.port"),
                format!("{} is not a port number (1 to 65535)", p.port),
            ));
        }
        if !seen.insert((p.port, p.protocol.unwrap_or(PortProtocol::Tcp) as u8)) {
            errors.push(FieldError::duplicate(
                format!("{pfield}.port"),
                format!("{} is listed more than once for the same protocol", p.port),
            ));
        }
    }
}

pub(super) fn is_mac(s: &str) -> bool {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Each network has exactly one (supported) source.
pub(super) fn networks(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        let field = format!("{path}.networks[{i}]");
        let multus = [("multus", n.multus.is_some(), unsupported::MULTUS)];
        let sources = usize::from(n.pod.is_some()) + unsupported_fields(&field, &multus, errors);
        exactly_one(
            sources,
            &field,
            "a network needs a source: set pod",
            "a network sets exactly one source: pod",
            errors,
        );
    }
}
