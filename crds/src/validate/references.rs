//! References between devices and what backs them, and boot orders: the
//! checks without which no VMI can be built from a spec.

use std::collections::{BTreeMap, BTreeSet};

use super::FieldError;
use crate::vmi::VirtualMachineInstanceSpec;

/// Disk names are unique, each disk has a volume, volume names are unique.
pub(super) fn disk_references(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let volumes = spec.volumes.iter().flatten().map(|v| v.name.as_str());
    let disks = spec.domain.devices.as_ref().and_then(|d| d.disks.as_ref());
    device_names(
        disks.into_iter().flatten().map(|d| d.name.as_str()),
        (&format!("{path}.domain.devices.disks"), "disk"),
        (
            &volumes.clone().collect(),
            &format!("{path}.volumes"),
            "volume",
        ),
        errors,
    );
    backing_names(
        volumes,
        (&format!("{path}.volumes"), "volume"),
        None,
        errors,
    );
}

/// Interface names are unique and each has a network; network names are
/// unique and each network is used by an interface.
pub(super) fn interface_references(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let networks = spec.networks.iter().flatten().map(|n| n.name.as_str());
    let interfaces = spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref());
    let interfaces_path = format!("{path}.domain.devices.interfaces");
    let used = device_names(
        interfaces.into_iter().flatten().map(|i| i.name.as_str()),
        (&interfaces_path, "interface"),
        (
            &networks.clone().collect(),
            &format!("{path}.networks"),
            "network",
        ),
        errors,
    );
    backing_names(
        networks,
        (&format!("{path}.networks"), "network"),
        Some((&used, &format!("interface in {interfaces_path}"))),
        errors,
    );
}

/// The devices `names` of a list (`(path, kind)`, each at `{path}[i].name`)
/// are unique, and each names one of `backing` (`(names, path, kind)`: the
/// volumes or networks). Returns the device names.
fn device_names<'a>(
    names: impl Iterator<Item = &'a str>,
    (list, kind): (&str, &str),
    (backing, backing_list, backing_kind): (&BTreeSet<&str>, &str, &str),
    errors: &mut Vec<FieldError>,
) -> BTreeSet<&'a str> {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        let field = format!("{list}[{i}].name");
        if !seen.insert(name) {
            errors.push(FieldError::duplicate(
                &field,
                format!("'{name}' is used by more than one {kind}"),
            ));
        }
        if !backing.contains(name) {
            errors.push(FieldError::not_found(
                &field,
                format!("'{name}' has no {backing_kind} of the same name in {backing_list}"),
            ));
        }
    }
    seen
}

/// The `names` of a list of volumes or networks (`(path, kind)`, each at
/// `{path}[i].name`) are unique; with `used`, each (first) name is also one of
/// those names, and otherwise is "not used by any" of its description.
fn backing_names<'a>(
    names: impl Iterator<Item = &'a str>,
    (list, kind): (&str, &str),
    used: Option<(&BTreeSet<&str>, &str)>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = BTreeSet::new();
    for (i, name) in names.enumerate() {
        let field = format!("{list}[{i}].name");
        if !seen.insert(name) {
            errors.push(FieldError::duplicate(
                field,
                format!("'{name}' is used by more than one {kind}"),
            ));
        } else if let Some((used, by)) = used
            && !used.contains(name)
        {
            errors.push(FieldError::not_found(
                field,
                format!("'{name}' is not used by any {by}"),
            ));
        }
    }
}

/// Boot orders are at least 1 and unique across disks and interfaces.
pub(super) fn boot_orders(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let devices = spec.domain.devices.as_ref();
    let disks = devices
        .and_then(|d| d.disks.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| (format!("{path}.domain.devices.disks[{i}]"), d.boot_order));
    let interfaces = devices
        .and_then(|d| d.interfaces.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, n)| {
            (
                format!("{path}.domain.devices.interfaces[{i}]"),
                n.boot_order,
            )
        });
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for (device, order) in disks.chain(interfaces) {
        let Some(order) = order else { continue };
        let field = format!("{device}.bootOrder");
        if order == 0 {
            errors.push(FieldError::new(
                field,
                "must be at least 1 (1 boots first); leave it unset for a device that does not boot",
            ));
        } else if let Some(first) = seen.get(&order) {
            errors.push(FieldError::duplicate(
                field,
                format!("boot order {order} is already used by {first}"),
            ));
        } else {
            seen.insert(order, device);
        }
    }
}
