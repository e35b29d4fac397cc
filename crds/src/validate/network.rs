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
    let disk_names: BTreeSet<&str> = spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.disks.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    let mut masquerade: Option<&str> = None;
    let mut macs: Vec<(String, &str)> = Vec::new();
    for (i, iface) in interfaces.into_iter().flatten().enumerate() {
        let field = format!("{path}.domain.devices.interfaces[{i}]");
        interface(iface, &field, errors);
        // The handler names each device after its disk or interface.
        if disk_names.contains(iface.name.as_str()) {
            errors.push(FieldError::new(
                format!("{field}.name"),
                format!(
                    "a disk is also named {}; ironvirt needs distinct disk and interface names",
                    iface.name
                ),
            ));
        }
        if iface.masquerade.is_some() {
            match masquerade {
                Some(first) => errors.push(FieldError::unsupported(
                    format!("{field}.masquerade"),
                    format!(
                        "interface {first} is the VMI's masquerade interface already; \
                         ironvirt connects one (the pod network)"
                    ),
                )),
                None => masquerade = Some(iface.name.as_str()),
            }
        }
        if let Some(mac) = iface.mac_address.as_deref().and_then(canonical_mac) {
            if let Some((_, other)) = macs.iter().find(|(m, _)| *m == mac) {
                errors.push(FieldError::duplicate(
                    format!("{field}.macAddress"),
                    format!("interface {other} has the same MAC {mac}"),
                ));
            }
            macs.push((mac, iface.name.as_str()));
        }
    }
}

/// A MAC address in lower case with colons, if it is one.
fn canonical_mac(s: &str) -> Option<String> {
    is_mac(s).then(|| s.to_ascii_lowercase().replace('-', ":"))
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
    if let Some(mac) = iface.mac_address.as_deref() {
        if !is_mac(mac) {
            errors.push(FieldError::new(
                format!("{field}.macAddress"),
                format!("'{mac}' is not a MAC address (for example de:ad:00:00:be:af)"),
            ));
        } else if is_multicast(mac) {
            errors.push(FieldError::new(
                format!("{field}.macAddress"),
                format!(
                    "'{mac}' is a multicast address (the low bit of its first byte is set): \
                     a NIC needs a unicast one such as 02:00:00:00:00:01"
                ),
            ));
        }
    }
    if iface.bridge.is_some()
        && iface.masquerade.is_none()
        && iface.ports.as_ref().is_some_and(|p| !p.is_empty())
    {
        errors.push(FieldError::new(
            format!("{field}.ports"),
            "forwarding ports needs the masquerade binding",
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

/// Whether a well-formed MAC address is a multicast (group) address.
fn is_multicast(mac: &str) -> bool {
    u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 1)
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
