//! Disks: targets, buses, drive addresses and the files behind them.

use super::*;

// Disks

/// The `<disk>` elements, and whether any needs the virtio-scsi controller.
pub(super) fn disks(
    vmi: &VirtualMachineInstance,
    inputs: &DomainInputs,
) -> Result<(Vec<Element>, bool), XmlError> {
    let disks = vmi
        .spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.disks.as_deref())
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut targets = Targets::default();
    let mut out = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let field = format!("{DISKS}[{i}]");
        if !is_token(&disk.name, "_-") {
            return Err(invalid(
                format!("{field}.name"),
                "use only letters, digits, '-' and '_'",
            ));
        }
        if !names.insert(disk.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("another disk is named {}", disk.name),
            ));
        }
        let volume = disk_volume(vmi, inputs, disk, &field)?;
        let target = disk_target(disk, &field)?;
        out.push(disk_element(disk, &field, volume, &target, &mut targets)?);
    }
    Ok((out, targets.scsi > 0))
}

/// One `<disk>`.
pub(super) fn disk_element(
    disk: &Disk,
    field: &str,
    volume: &ResolvedVolume,
    target: &DiskTarget,
    targets: &mut Targets,
) -> Result<Element, XmlError> {
    let (dev, address) = targets.next(target.bus);
    let mut driver = Element::new("driver").attr("name", "qemu").attr(
        "type",
        match volume.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        },
    );
    if let Some(cache) = disk.cache {
        driver = driver.attr("cache", cache_name(cache));
    }
    if let Some(policy) = disk.error_policy {
        driver = driver.attr("error_policy", policy.as_str());
    }
    let mut target_element = Element::new("target")
        .attr("dev", dev)
        .attr("bus", bus_name(target.bus));
    if let Some(tray) = target.tray {
        target_element = target_element.attr("tray", tray);
    }
    let serial = match disk.serial.as_deref() {
        Some(s) if !is_token(s, "_.+- ") => {
            return Err(invalid(
                format!("{field}.serial"),
                "use only letters, digits, spaces and '_', '.', '+', '-'",
            ));
        }
        s => s,
    };
    let path = path_str(&volume.path, &format!("{field}.name"))?;
    Ok(Element::new("disk")
        .attr("type", "file")
        .attr("device", if target.cdrom { "cdrom" } else { "disk" })
        .child(driver)
        .child(Element::new("source").attr("file", path))
        .child(target_element)
        .child_opt(
            disk.boot_order
                .map(|o| Element::new("boot").attr("order", o)),
        )
        .child_opt(target.readonly.then(|| Element::new("readonly")))
        .child_opt(serial.map(|s| Element::new("serial").text(s)))
        .child(alias(&disk.name))
        .child_opt(address))
}

/// Target names and drive addresses, handed out in spec order.
#[derive(Default)]
pub(super) struct Targets {
    pub(super) virtio: usize,
    pub(super) sd: usize,
    pub(super) sata: usize,
    pub(super) scsi: usize,
}

impl Targets {
    /// The target name of the next disk on `bus` and, for SATA and SCSI, its
    /// drive address: six ports per SATA controller, every SCSI disk on the
    /// one virtio-scsi controller.
    pub(super) fn next(&mut self, bus: DiskBus) -> (String, Option<Element>) {
        if bus == DiskBus::Virtio {
            self.virtio += 1;
            return (format!("vd{}", disk_letters(self.virtio - 1)), None);
        }
        self.sd += 1;
        let dev = format!("sd{}", disk_letters(self.sd - 1));
        let address = match bus {
            DiskBus::Sata => {
                self.sata += 1;
                let n = self.sata - 1;
                Some(drive_address(n / 6, n % 6))
            }
            DiskBus::Scsi => {
                self.scsi += 1;
                Some(drive_address(0, self.scsi - 1))
            }
            DiskBus::Virtio | DiskBus::Usb => None,
        };
        (dev, address)
    }
}

/// The resolved file of the volume named like `disk`.
pub(super) fn disk_volume<'a>(
    vmi: &VirtualMachineInstance,
    inputs: &'a DomainInputs,
    disk: &Disk,
    field: &str,
) -> Result<&'a ResolvedVolume, XmlError> {
    let name = &disk.name;
    let declared = vmi.spec.volumes.iter().flatten().any(|v| &v.name == name);
    if !declared {
        return Err(invalid(
            format!("{field}.name"),
            format!("no volume named {name}"),
        ));
    }
    inputs.volumes.get(name).ok_or_else(|| {
        invalid(
            format!("{field}.name"),
            format!("volume {name} has no file on this node"),
        )
    })
}

/// How a disk attaches, with KubeVirt's defaults.
pub(super) struct DiskTarget {
    /// A CD-ROM rather than a disk (a LUN is a plain SCSI disk).
    pub(super) cdrom: bool,
    pub(super) bus: DiskBus,
    pub(super) readonly: bool,
    /// `open` when the CD-ROM tray is open.
    pub(super) tray: Option<&'static str>,
}

pub(super) fn disk_target(disk: &Disk, field: &str) -> Result<DiskTarget, XmlError> {
    let set = [
        disk.disk.is_some(),
        disk.cdrom.is_some(),
        disk.lun.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(invalid(field, "set at most one of disk, cdrom and lun"));
    }
    if let Some(cdrom) = &disk.cdrom {
        let bus = cdrom.bus.unwrap_or(DiskBus::Sata);
        if !matches!(bus, DiskBus::Sata | DiskBus::Scsi) {
            return Err(invalid(
                format!("{field}.cdrom.bus"),
                format!("a CD-ROM attaches to sata or scsi, not {}", bus_name(bus)),
            ));
        }
        if cdrom.readonly == Some(false) {
            return Err(invalid(
                format!("{field}.cdrom.readonly"),
                "a CD-ROM is always read-only",
            ));
        }
        let tray = match cdrom.tray.as_deref() {
            None | Some("closed") => None,
            Some("open") => Some("open"),
            Some(other) => {
                return Err(invalid(
                    format!("{field}.cdrom.tray"),
                    format!("{other:?} is neither open nor closed"),
                ));
            }
        };
        return Ok(DiskTarget {
            cdrom: true,
            bus,
            readonly: true,
            tray,
        });
    }
    if let Some(lun) = &disk.lun {
        let bus = lun.bus.unwrap_or(DiskBus::Scsi);
        if bus != DiskBus::Scsi {
            return Err(invalid(
                format!("{field}.lun.bus"),
                format!("a LUN attaches to scsi, not {}", bus_name(bus)),
            ));
        }
        return Ok(DiskTarget {
            cdrom: false,
            bus,
            readonly: lun.readonly == Some(true),
            tray: None,
        });
    }
    let plain = disk.disk.as_ref();
    Ok(DiskTarget {
        cdrom: false,
        bus: plain.and_then(|d| d.bus).unwrap_or(DiskBus::Virtio),
        readonly: plain.and_then(|d| d.readonly) == Some(true),
        tray: None,
    })
}

/// The letters of the `n`th disk name (0 → a, 25 → z, 26 → aa, …), as in
/// libvirt's and Linux's disk naming.
pub(super) fn disk_letters(n: usize) -> String {
    let mut letters = Vec::new();
    let mut n = n + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.iter().rev().map(|b| char::from(*b)).collect()
}

pub(super) fn drive_address(controller: usize, unit: usize) -> Element {
    Element::new("address")
        .attr("type", "drive")
        .attr("controller", controller)
        .attr("bus", 0)
        .attr("target", 0)
        .attr("unit", unit)
}

pub(super) fn cache_name(cache: DiskCache) -> &'static str {
    match cache {
        DiskCache::None => "none",
        DiskCache::Writethrough => "writethrough",
        DiskCache::Writeback => "writeback",
    }
}

/// A user alias; libvirt wants `ua-` and then letters, digits, `-` and `_`.
pub(super) fn alias(name: &str) -> Element {
    Element::new("alias").attr("name", format!("ua-{name}"))
}
