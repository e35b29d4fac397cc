//! Machine type, firmware (BIOS or OVMF), `<os>`, `<features>`, `<sysinfo>`,
//! and the boot order of disks and interfaces.

use super::*;

// Machine, firmware, <os>, <features>, <sysinfo>

pub(super) fn machine(vmi: &VirtualMachineInstance, host: &HostEnv) -> Result<String, XmlError> {
    let machine = vmi
        .spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.as_deref())
        .filter(|m| !m.is_empty())
        .unwrap_or(&host.default_machine);
    if is_token(machine, "._-") {
        Ok(machine.to_owned())
    } else {
        Err(invalid(
            "spec.domain.machine.type",
            format!("{machine:?} is not a machine type"),
        ))
    }
}

/// q35 or one of its versions (`pc-q35-7.2`).
pub(super) fn is_q35(machine: &str) -> bool {
    machine == "q35" || machine.starts_with("pc-q35-")
}

/// How the guest boots.
pub(super) enum Firmware {
    /// SeaBIOS; `use_serial` shows its output on the serial console.
    Bios { use_serial: bool },
    /// OVMF from `code` with a variable store made from `vars_template`.
    Efi {
        code: String,
        vars_template: String,
        secure: bool,
    },
}

pub(super) fn firmware(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    machine: &str,
    serial_console: bool,
) -> Result<Firmware, XmlError> {
    let bootloader = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref());
    match bootloader {
        Some(Bootloader {
            bios: Some(_),
            efi: Some(_),
        }) => Err(invalid(
            "spec.domain.firmware.bootloader",
            "set only one of bios and efi",
        )),
        Some(Bootloader { efi: Some(efi), .. }) => efi_firmware(efi, host, machine),
        Some(Bootloader {
            bios: Some(bios), ..
        }) => {
            let use_serial = bios.use_serial == Some(true);
            if use_serial && !serial_console {
                return Err(invalid(
                    "spec.domain.firmware.bootloader.bios.useSerial",
                    "BIOS output on the serial console needs the serial console; \
                     do not set devices.autoattachSerialConsole to false",
                ));
            }
            Ok(Firmware::Bios { use_serial })
        }
        _ => Ok(Firmware::Bios { use_serial: false }),
    }
}

/// OVMF, with Secure Boot unless `secureBoot: false` (KubeVirt's default is on).
pub(super) fn efi_firmware(efi: &Efi, host: &HostEnv, machine: &str) -> Result<Firmware, XmlError> {
    let secure = efi.secure_boot.unwrap_or(true);
    if secure && !is_q35(machine) {
        return Err(invalid(
            SECURE_BOOT,
            format!(
                "Secure Boot needs the q35 machine type, not {machine}; \
                 set machine.type to q35 or secureBoot to false"
            ),
        ));
    }
    let ovmf = host
        .ovmf
        .as_ref()
        .ok_or_else(|| unsupported(EFI, "EFI needs OVMF, which is not installed on this node"))?;
    let (code, vars) = if secure {
        match (&ovmf.secure_code, &ovmf.secure_vars_template) {
            (Some(code), Some(vars)) => (code, vars),
            _ => {
                return Err(unsupported(
                    SECURE_BOOT,
                    "Secure Boot needs an OVMF build with Secure Boot and enrolled keys, \
                     which is not installed on this node; set secureBoot to false",
                ));
            }
        }
    } else {
        (&ovmf.code, &ovmf.vars_template)
    };
    Ok(Firmware::Efi {
        code: path_str(code, EFI)?.to_owned(),
        vars_template: path_str(vars, EFI)?.to_owned(),
        secure,
    })
}

/// `<os>`: machine, firmware, a kernel to boot directly, the boot device
/// when no device has a boot order (libvirt refuses both) and no kernel is
/// booted, and SMBIOS from `<sysinfo>`.
pub(super) fn os_element(
    machine: &str,
    firmware: &Firmware,
    nvram: &Path,
    kernel: Option<&KernelFiles>,
    smbios: bool,
    device_boot: bool,
) -> Result<Element, XmlError> {
    let mut os = Element::new("os").child(
        Element::new("type")
            .attr("arch", "x86_64")
            .attr("machine", machine)
            .text("hvm"),
    );
    if let Firmware::Efi {
        code,
        vars_template,
        secure,
    } = firmware
    {
        os = os
            .child(
                Element::new("loader")
                    .attr("readonly", "yes")
                    .attr("secure", if *secure { "yes" } else { "no" })
                    .attr("type", "pflash")
                    .text(code),
            )
            .child(
                Element::new("nvram")
                    .attr("template", vars_template)
                    .text(path_str(nvram, EFI)?),
            );
    }
    if let Some(k) = kernel {
        os = os
            .child(Element::new("kernel").text(path_str(&k.kernel, KERNEL_BOOT)?))
            .child_opt(
                k.initrd
                    .as_deref()
                    .map(|i| path_str(i, KERNEL_BOOT).map(|p| Element::new("initrd").text(p)))
                    .transpose()?,
            )
            .child_opt(
                k.cmdline
                    .as_deref()
                    .map(|c| Element::new("cmdline").text(c)),
            );
    } else if !device_boot {
        os = os.child(Element::new("boot").attr("dev", "hd"));
    }
    if smbios {
        os = os.child(Element::new("smbios").attr("mode", "sysinfo"));
    }
    if let Firmware::Bios { use_serial: true } = firmware {
        os = os.child(Element::new("bios").attr("useserial", "yes"));
    }
    Ok(os)
}

/// The SMBIOS serial number from `firmware.serial`, if set.
pub(super) fn serial_number(vmi: &VirtualMachineInstance) -> Result<Option<String>, XmlError> {
    let serial = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.serial.as_deref())
        .filter(|s| !s.is_empty());
    match serial {
        Some(s) if s.chars().any(char::is_control) => Err(invalid(
            "spec.domain.firmware.serial",
            "must not contain control characters",
        )),
        Some(s) => Ok(Some(s.to_owned())),
        None => Ok(None),
    }
}

/// The SMBIOS chassis entries from `domain.chassis`, if any.
pub(super) fn chassis_entries(
    vmi: &VirtualMachineInstance,
) -> Result<Vec<(&'static str, String)>, XmlError> {
    let Some(chassis) = &vmi.spec.domain.chassis else {
        return Ok(Vec::new());
    };
    chassis
        .entries()
        .into_iter()
        .map(|(name, value)| {
            if value.chars().any(char::is_control) {
                Err(invalid(
                    format!("spec.domain.chassis.{name}"),
                    "must not contain control characters",
                ))
            } else {
                Ok((name, value.to_owned()))
            }
        })
        .collect()
}

/// `<sysinfo type='smbios'>` with the serial number, the domain's UUID
/// (libvirt requires the two UUIDs to agree) and the chassis entries.
pub(super) fn sysinfo_element(
    serial: Option<&str>,
    uuid: &str,
    chassis: &[(&str, String)],
) -> Element {
    let entry = |name: &str, value: &str| Element::new("entry").attr("name", name).text(value);
    let system = Element::new("system")
        .child_opt(serial.map(|s| entry("serial", s)))
        .child(entry("uuid", uuid));
    let chassis = (!chassis.is_empty())
        .then(|| Element::new("chassis").children(chassis.iter().map(|(k, v)| entry(k, v))));
    Element::new("sysinfo")
        .attr("type", "smbios")
        .child(system)
        .child_opt(chassis)
}

// ---------------------------------------------------------------------------
// Boot order

/// Checks that boot orders are positive and unique across disks and
/// interfaces; true when any device has one.
pub(super) fn check_boot_orders(vmi: &VirtualMachineInstance) -> Result<bool, XmlError> {
    let devices = vmi.spec.domain.devices.as_ref();
    let disks = devices.and_then(|d| d.disks.as_deref()).unwrap_or_default();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let orders = disks
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{DISKS}[{i}].bootOrder"), d.boot_order))
        .chain(
            ifaces
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{INTERFACES}[{i}].bootOrder"), n.boot_order)),
        );
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for (field, order) in orders {
        let Some(order) = order else { continue };
        if order == 0 {
            return Err(invalid(field, "must be at least 1"));
        }
        if let Some(first) = seen.get(&order) {
            return Err(invalid(
                field,
                format!("boot order {order} is already used by {first}"),
            ));
        }
        seen.insert(order, field);
    }
    Ok(!seen.is_empty())
}
