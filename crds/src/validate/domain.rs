//! The domain: resources, memory, CPU, firmware and device switches.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{FieldError, unsupported, unsupported_fields};
use crate::domain::RebootPolicy;
use crate::domain::ResourceRequirements;
use crate::quantity::parse_quantity;
use crate::vmi::{Cpu, DomainSpec, KernelBoot};

/// The smallest guest memory accepted.
pub(super) const MIN_MEMORY_BYTES: i64 = 1 << 20;

/// The domain checks a VMI and a preset share: quantities parse, memory and
/// CPU are consistent, firmware is well formed, no unsupported fields.
pub(super) fn domain(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    resources(d.resources.as_ref(), dpath, errors);
    memory(d, dpath, errors);
    if let Some(cpu) = &d.cpu {
        cpu_topology(cpu, &format!("{dpath}.cpu"), errors);
    }
    firmware(d, dpath, errors);
    device_switches(d, dpath, errors);
    platform(d, dpath, errors);
}

/// Features, clock, inputs and the domain-level fields ironvirt refuses.
fn platform(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    let refused = &[
        (
            "launchSecurity",
            d.launch_security.is_some(),
            unsupported::LAUNCH_SECURITY,
        ),
        (
            "rebootPolicy",
            d.reboot_policy == Some(RebootPolicy::Terminate),
            unsupported::REBOOT_POLICY,
        ),
        (
            "features.hypervPassthrough",
            d.features
                .as_ref()
                .is_some_and(|f| f.hyperv_passthrough.is_some()),
            unsupported::HYPERV_PASSTHROUGH,
        ),
    ];
    unsupported_fields(dpath, refused, errors);
    if let Some(c) = &d.clock
        && c.utc.is_some()
        && c.timezone.is_some()
    {
        errors.push(FieldError::new(
            format!("{dpath}.clock"),
            "set only one of clock.utc and clock.timezone",
        ));
    }
    let secure_boot = d
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref())
        .is_some_and(|e| e.secure_boot != Some(false));
    let smm_off = d
        .features
        .as_ref()
        .and_then(|f| f.smm.as_ref())
        .is_some_and(|s| !s.is_on());
    if secure_boot && smm_off {
        errors.push(FieldError::new(
            format!("{dpath}.features.smm.enabled"),
            "EFI Secure Boot needs SMM: enable smm or set efi.secureBoot to false",
        ));
    }
    let inputs = d.devices.as_ref().and_then(|d| d.inputs.as_ref());
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in inputs.into_iter().flatten().enumerate() {
        if !seen.insert(input.name.as_str()) {
            errors.push(FieldError::duplicate(
                format!("{dpath}.devices.inputs[{i}].name"),
                format!("'{}' is used by more than one input", input.name),
            ));
        }
    }
}

/// A quantity in bytes (or millicores), or an error naming the field.
pub(super) fn quantity(
    q: &Quantity,
    millis: bool,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<i64> {
    match parse_quantity(q, millis) {
        Some(v) if v < 0 => {
            errors.push(FieldError::new(
                field,
                format!("'{}' must be greater than or equal to 0", q.0),
            ));
            None
        }
        Some(v) => Some(v),
        None => {
            errors.push(FieldError::new(
                field,
                format!(
                    "'{}' is not a valid quantity (for example 128Mi, 1G or 500m)",
                    q.0
                ),
            ));
            None
        }
    }
}

/// Requests and limits parse, and each request is at most its limit.
fn resources(r: Option<&ResourceRequirements>, dpath: &str, errors: &mut Vec<FieldError>) {
    let Some(r) = r else { return };
    let rpath = format!("{dpath}.resources");
    let mut parsed: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (list, map) in [("requests", &r.requests), ("limits", &r.limits)] {
        for (key, q) in map.iter().flatten() {
            let field = format!("{rpath}.{list}.{key}");
            if let Some(v) = quantity(q, key == "cpu", &field, errors) {
                parsed.insert((list, key.as_str()), v);
            }
        }
    }
    for key in ["cpu", "memory"] {
        if let (Some(req), Some(lim)) =
            (parsed.get(&("requests", key)), parsed.get(&("limits", key)))
            && req > lim
        {
            errors.push(FieldError::new(
                format!("{rpath}.requests.{key}"),
                format!(
                    "'{}' is greater than {rpath}.limits.{key} '{}'",
                    quantity_text(r.requests.as_ref(), key),
                    quantity_text(r.limits.as_ref(), key)
                ),
            ));
        }
    }
}

fn quantity_text(map: Option<&BTreeMap<String, Quantity>>, key: &str) -> String {
    map.and_then(|m| m.get(key))
        .map(|q| q.0.clone())
        .unwrap_or_default()
}

/// memory.guest parses, is at least 1Mi and at most the memory limit; no hugepages.
fn memory(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    let Some(m) = &d.memory else { return };
    if m.hugepages.is_some() {
        errors.push(FieldError::unsupported(
            format!("{dpath}.memory.hugepages"),
            unsupported::HUGEPAGES,
        ));
    }
    let Some(guest) = &m.guest else { return };
    let field = format!("{dpath}.memory.guest");
    let Some(g) = quantity(guest, false, &field, errors) else {
        return;
    };
    if g < MIN_MEMORY_BYTES {
        errors.push(FieldError::new(
            &field,
            format!("'{}' is too small: the guest needs at least 1Mi", guest.0),
        ));
    }
    let limit = d
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"));
    if let Some(limit) = limit
        && parse_quantity(limit, false).is_some_and(|l| g > l)
    {
        errors.push(FieldError::new(
            &field,
            format!(
                "'{}' is greater than {dpath}.resources.limits.memory '{}'",
                guest.0, limit.0
            ),
        ));
    }
}

/// A VMI needs its memory size: memory.guest, a memory request or a memory limit.
pub(super) fn memory_is_set(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    let guest = d.memory.as_ref().and_then(|m| m.guest.as_ref());
    let resource =
        |list: Option<&BTreeMap<String, Quantity>>| list.is_some_and(|l| l.contains_key("memory"));
    let r = d.resources.as_ref();
    let set = guest.is_some()
        || resource(r.and_then(|r| r.requests.as_ref()))
        || resource(r.and_then(|r| r.limits.as_ref()));
    if !set {
        errors.push(FieldError::required(
            format!("{dpath}.memory.guest"),
            format!(
                "the guest's memory is required: set {dpath}.memory.guest or {dpath}.resources.requests.memory"
            ),
        ));
    } else if guest.is_none() {
        // The request (or limit) becomes the guest's memory: it must be big enough.
        let q = r
            .and_then(|r| r.requests.as_ref().and_then(|l| l.get("memory")))
            .or_else(|| r.and_then(|r| r.limits.as_ref().and_then(|l| l.get("memory"))));
        if let Some(q) = q
            && parse_quantity(q, false).is_some_and(|v| (0..MIN_MEMORY_BYTES).contains(&v))
        {
            errors.push(FieldError::new(
                format!("{dpath}.resources.requests.memory"),
                format!("'{}' is too small: the guest needs at least 1Mi", q.0),
            ));
        }
    }
}

/// cores, sockets and threads are at least 1 (and within the schema's maxima).
fn cpu_topology(cpu: &Cpu, cpath: &str, errors: &mut Vec<FieldError>) {
    for (name, value, max) in [
        ("cores", cpu.cores, 512),
        ("sockets", cpu.sockets, 64),
        ("threads", cpu.threads, 8),
    ] {
        match value {
            Some(0) => errors.push(FieldError::new(
                format!("{cpath}.{name}"),
                "must be at least 1",
            )),
            Some(v) if v > max => errors.push(FieldError::new(
                format!("{cpath}.{name}"),
                format!("{v} is more than the maximum of {max}"),
            )),
            _ => {}
        }
    }
    let refused = &[
        (
            "dedicatedCpuPlacement",
            cpu.dedicated_cpu_placement.is_some(),
            unsupported::DEDICATED_CPU,
        ),
        ("numa", cpu.numa.is_some(), unsupported::NUMA),
        ("realtime", cpu.realtime.is_some(), unsupported::REALTIME),
    ];
    unsupported_fields(cpath, refused, errors);
}

/// The firmware UUID is a UUID; one bootloader at most; no kernelBoot.
fn firmware(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    let Some(f) = &d.firmware else { return };
    let fpath = format!("{dpath}.firmware");
    if let Some(u) = f.uuid.as_deref()
        && !is_uuid(u)
    {
        errors.push(FieldError::new(
            format!("{fpath}.uuid"),
            format!("'{u}' is not a UUID (8-4-4-4-12 hexadecimal digits)"),
        ));
    }
    if let Some(b) = &f.bootloader
        && b.bios.is_some()
        && b.efi.is_some()
    {
        errors.push(FieldError::new(
            format!("{fpath}.bootloader"),
            "set only one of bootloader.bios and bootloader.efi",
        ));
    }
    let serial_console = d
        .devices
        .as_ref()
        .and_then(|dev| dev.autoattach_serial_console)
        != Some(false);
    if f.bootloader
        .as_ref()
        .and_then(|b| b.bios.as_ref())
        .is_some_and(|b| b.use_serial == Some(true))
        && !serial_console
    {
        errors.push(FieldError::new(
            format!("{fpath}.bootloader.bios.useSerial"),
            "BIOS output on the serial console needs the serial console; \
             do not set devices.autoattachSerialConsole to false",
        ));
    }
    if f.acpi.is_some() {
        errors.push(FieldError::unsupported(
            format!("{fpath}.acpi"),
            unsupported::FIRMWARE_ACPI,
        ));
    }
    if let Some(k) = &f.kernel_boot {
        kernel_boot(k, &format!("{fpath}.kernelBoot"), errors);
    }
}

/// kernelArgs only with a container; the container names a kernel (and
/// perhaps an initrd) by absolute paths without `.` or `..` parts.
fn kernel_boot(k: &KernelBoot, kpath: &str, errors: &mut Vec<FieldError>) {
    let given = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).is_some();
    let Some(c) = &k.container else {
        if given(&k.kernel_args) {
            errors.push(FieldError::new(
                format!("{kpath}.kernelArgs"),
                "kernelArgs needs kernelBoot.container: the arguments are for the kernel it gives",
            ));
        }
        return;
    };
    let cpath = format!("{kpath}.container");
    if c.image.trim().is_empty() {
        errors.push(FieldError::new(
            format!("{cpath}.image"),
            "must not be empty",
        ));
    }
    match (given(&c.kernel_path), given(&c.initrd_path)) {
        (false, false) => errors.push(FieldError::new(
            cpath.clone(),
            "set kernelPath, initrdPath or both",
        )),
        (false, true) => errors.push(FieldError::new(
            format!("{cpath}.initrdPath"),
            "initrdPath needs kernelPath: an initrd is loaded only with a kernel",
        )),
        _ => {}
    }
    for (name, value) in [
        ("kernelPath", &c.kernel_path),
        ("initrdPath", &c.initrd_path),
    ] {
        if let Some(p) = value.as_deref().filter(|p| !p.is_empty())
            && !is_clean_absolute(p)
        {
            errors.push(FieldError::new(
                format!("{cpath}.{name}"),
                format!("'{p}' must be an absolute path to a file, without '.' or '..' parts"),
            ));
        }
    }
}

/// `/a/b`: absolute, no empty, `.` or `..` parts, not the root.
fn is_clean_absolute(p: &str) -> bool {
    p.strip_prefix('/').is_some_and(|rest| {
        !rest.is_empty() && rest.split('/').all(|c| !matches!(c, "" | "." | ".."))
    })
}

pub(super) fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Device-level fields ironvirt does not support.
fn device_switches(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    let Some(dev) = &d.devices else { return };
    let checks = &[
        ("gpus", dev.gpus.is_some(), unsupported::GPUS),
        ("hostDevices", dev.host_devices.is_some(), unsupported::GPUS),
        ("watchdog", dev.watchdog.is_some(), unsupported::WATCHDOG),
        (
            "filesystems",
            dev.filesystems.is_some(),
            unsupported::FILESYSTEMS,
        ),
        (
            "downwardMetrics",
            dev.downward_metrics.is_some(),
            unsupported::DOWNWARD_METRICS,
        ),
        (
            "panicDevices",
            dev.panic_devices.is_some(),
            unsupported::PANIC_DEVICES,
        ),
        (
            "clientPassthrough",
            dev.client_passthrough.is_some(),
            unsupported::CLIENT_PASSTHROUGH,
        ),
        ("sound", dev.sound.is_some(), unsupported::SOUND),
        (
            "autoattachVSOCK",
            dev.autoattach_vsock == Some(true),
            unsupported::VSOCK,
        ),
        (
            "useVirtioTransitional",
            dev.use_virtio_transitional == Some(true),
            unsupported::VIRTIO_TRANSITIONAL,
        ),
    ];
    unsupported_fields(&format!("{dpath}.devices"), checks, errors);
}
