//! Disks and volumes: disk targets, volume sources and cloud-init.

use super::domain::quantity;
use super::references::disk_references;
use super::{FieldError, exactly_one, unsupported, unsupported_fields};
use crate::vmi::{
    CloudInitNoCloudSource, DiskBus, HostDiskType, VirtualMachineInstanceSpec, Volume,
};
use crate::wire::bus_name;

/// Disk names are unique and each has a volume; disk targets are coherent.
pub(super) fn disks(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    disk_references(spec, path, errors);
    let disks = spec.domain.devices.as_ref().and_then(|d| d.disks.as_ref());
    for (i, disk) in disks.into_iter().flatten().enumerate() {
        let field = format!("{path}.domain.devices.disks[{i}]");
        let targets = [
            disk.disk.is_some(),
            disk.cdrom.is_some(),
            disk.lun.is_some(),
        ];
        if targets.iter().filter(|t| **t).count() > 1 {
            errors.push(FieldError::new(
                &field,
                "a disk sets at most one of disk, cdrom and lun",
            ));
        }
        let refused = &[
            (
                "disk.pciAddress",
                disk.disk.as_ref().is_some_and(|d| d.pci_address.is_some()),
                unsupported::PCI_ADDRESS,
            ),
            (
                "lun.reservation",
                disk.lun
                    .as_ref()
                    .is_some_and(|l| l.reservation == Some(true)),
                unsupported::LUN_RESERVATION,
            ),
            (
                "blockSize",
                disk.block_size.is_some(),
                unsupported::BLOCK_SIZE,
            ),
        ];
        unsupported_fields(&field, refused, errors);
        if let Some(bus) = disk.lun.as_ref().and_then(|l| l.bus)
            && bus != DiskBus::Scsi
        {
            errors.push(FieldError::unsupported(
                format!("{field}.lun.bus"),
                format!("a LUN attaches to scsi, not {}", bus_name(bus)),
            ));
        }
        if let Some(serial) = disk.serial.as_deref()
            && (serial.is_empty()
                || !serial
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.+- ".contains(c)))
        {
            errors.push(FieldError::new(
                format!("{field}.serial"),
                "use only letters, digits, spaces and '_', '.', '+', '-'",
            ));
        }
        if let Some(cdrom) = &disk.cdrom {
            if let Some(bus @ (DiskBus::Virtio | DiskBus::Usb)) = cdrom.bus {
                errors.push(FieldError::unsupported(
                    format!("{field}.cdrom.bus"),
                    format!("a CD-ROM attaches to sata or scsi, not {}", bus_name(bus)),
                ));
            }
            if cdrom.readonly == Some(false) {
                errors.push(FieldError::new(
                    format!("{field}.cdrom.readonly"),
                    "a CD-ROM is always read-only",
                ));
            }
        }
    }
}

/// Each volume has exactly one (supported) source, and its source is well formed.
pub(super) fn volumes(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volume(v, &format!("{path}.volumes[{i}]"), errors);
    }
}

fn volume(v: &Volume, field: &str, errors: &mut Vec<FieldError>) {
    let unsupported_sources = &[
        (
            "persistentVolumeClaim",
            v.persistent_volume_claim.is_some(),
            unsupported::PVC,
        ),
        (
            "dataVolume",
            v.data_volume.is_some(),
            unsupported::DATA_VOLUME,
        ),
        ("ephemeral", v.ephemeral.is_some(), unsupported::EPHEMERAL),
        ("configMap", v.config_map.is_some(), unsupported::CONFIG_MAP),
        ("secret", v.secret.is_some(), unsupported::SECRET),
        (
            "serviceAccount",
            v.service_account.is_some(),
            unsupported::SERVICE_ACCOUNT,
        ),
        (
            "downwardAPI",
            v.downward_api.is_some(),
            unsupported::DOWNWARD_API,
        ),
        ("sysprep", v.sysprep.is_some(), unsupported::SYSPREP),
        (
            "downwardMetrics",
            v.downward_metrics.is_some(),
            unsupported::DOWNWARD_METRICS,
        ),
        (
            "memoryDump",
            v.memory_dump.is_some(),
            unsupported::MEMORY_DUMP,
        ),
    ];
    let supported = [
        v.container_disk.is_some(),
        v.cloud_init_no_cloud.is_some(),
        v.cloud_init_config_drive.is_some(),
        v.empty_disk.is_some(),
        v.host_disk.is_some(),
    ];
    let sources = supported.iter().filter(|s| **s).count()
        + unsupported_fields(field, unsupported_sources, errors);
    exactly_one(
        sources,
        field,
        "a volume needs a source: set one of containerDisk, cloudInitNoCloud, cloudInitConfigDrive, emptyDisk or hostDisk",
        "a volume sets exactly one source: containerDisk, cloudInitNoCloud, cloudInitConfigDrive, emptyDisk or hostDisk",
        errors,
    );
    if let Some(c) = &v.container_disk
        && c.image.trim().is_empty()
    {
        errors.push(FieldError::required(
            format!("{field}.containerDisk.image"),
            "is required: the container image that holds the disk",
        ));
    }
    if let Some(e) = &v.empty_disk {
        let cfield = format!("{field}.emptyDisk.capacity");
        if quantity(&e.capacity, false, &cfield, errors) == Some(0) {
            errors.push(FieldError::new(cfield, "must be greater than 0"));
        }
    }
    if let Some(h) = &v.host_disk {
        if !h.path.starts_with('/') {
            errors.push(FieldError::new(
                format!("{field}.hostDisk.path"),
                format!("'{}' is not an absolute path", h.path),
            ));
        }
        match (&h.capacity, h.disk_type) {
            (None, HostDiskType::DiskOrCreate) => errors.push(FieldError::required(
                format!("{field}.hostDisk.capacity"),
                "hostDisk of type DiskOrCreate needs a capacity",
            )),
            (Some(c), _) => {
                quantity(c, false, &format!("{field}.hostDisk.capacity"), errors);
            }
            (None, HostDiskType::Disk) => {}
        }
    }
    if let Some(c) = &v.cloud_init_no_cloud {
        cloud_init(c, &format!("{field}.cloudInitNoCloud"), errors);
    }
    if let Some(c) = &v.cloud_init_config_drive {
        cloud_init(c, &format!("{field}.cloudInitConfigDrive"), errors);
    }
}

fn cloud_init(c: &CloudInitNoCloudSource, field: &str, errors: &mut Vec<FieldError>) {
    let user = [
        c.user_data.is_some(),
        c.user_data_base64.is_some(),
        c.secret_ref.is_some(),
    ];
    let network = [
        c.network_data.is_some(),
        c.network_data_base64.is_some(),
        c.network_data_secret_ref.is_some(),
    ];
    let count = |s: &[bool]| s.iter().filter(|b| **b).count();
    if count(&user) > 1 {
        errors.push(FieldError::new(
            field,
            "set at most one of userData, userDataBase64 and secretRef",
        ));
    }
    if count(&network) > 1 {
        errors.push(FieldError::new(
            field,
            "set at most one of networkData, networkDataBase64 and networkDataSecretRef",
        ));
    }
    if count(&user) + count(&network) == 0 {
        errors.push(FieldError::required(
            field,
            "needs user-data or network-config: set userData, userDataBase64, secretRef, networkData, networkDataBase64 or networkDataSecretRef",
        ));
    }
}
