//! Who the domain belongs to (name, UUID, ironvirt's metadata element), and
//! the KubeVirt fields ironvirt refuses.

use super::*;
use ironvirt_crds::domain::RebootPolicy;

// Identity, metadata and unsupported fields

/// Who the domain belongs to, and its UUID.
pub(super) struct Identity<'a> {
    pub(super) namespace: &'a str,
    pub(super) name: &'a str,
    pub(super) uid: &'a str,
    pub(super) uuid: String,
}

pub(super) fn identity(vmi: &VirtualMachineInstance) -> Result<Identity<'_>, XmlError> {
    fn required<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, XmlError> {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(field, "missing"))
    }
    let meta = &vmi.metadata;
    let namespace = required(meta.namespace.as_deref(), "metadata.namespace")?;
    let name = required(meta.name.as_deref(), "metadata.name")?;
    let uid = required(meta.uid.as_deref(), "metadata.uid")?;
    let firmware_uuid = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.uuid.as_deref());
    let uuid = match firmware_uuid {
        Some(u) => uuid(u, "spec.domain.firmware.uuid")?,
        None => uuid(uid, "metadata.uid")?,
    };
    Ok(Identity {
        namespace,
        name,
        uid,
        uuid,
    })
}

/// `s` as a lower-case UUID, if it is one (8-4-4-4-12 hex digits).
pub(super) fn uuid(s: &str, field: &str) -> Result<String, XmlError> {
    let groups: Vec<&str> = s.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if lengths == [8, 4, 4, 4, 12] && hex {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(invalid(field, format!("{s:?} is not a UUID")))
    }
}

pub(super) fn metadata_element(id: &Identity<'_>, node: &str) -> Element {
    Element::new("metadata").child(
        Element::new(format!("{METADATA_PREFIX}:vmi"))
            .attr(format!("xmlns:{METADATA_PREFIX}"), METADATA_NS)
            .attr("namespace", id.namespace)
            .attr("name", id.name)
            .attr("uid", id.uid)
            .attr("node", node),
    )
}

/// Refuses the KubeVirt fields ironvirt does not implement. The CRD rejects
/// them already; this keeps a VMI that slipped through from losing them
/// silently.
pub(super) fn reject_unsupported(vmi: &VirtualMachineInstance) -> Result<(), XmlError> {
    let spec = &vmi.spec;
    let domain = &spec.domain;
    let cpu = domain.cpu.as_ref();
    let devices = domain.devices.as_ref();
    let disks = devices.and_then(|d| d.disks.as_deref()).unwrap_or_default();
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let present = [
        (
            "spec.domain.cpu.dedicatedCpuPlacement",
            cpu.is_some_and(|c| c.dedicated_cpu_placement.is_some()),
        ),
        (
            "spec.domain.memory.hugepages",
            domain
                .memory
                .as_ref()
                .is_some_and(|m| m.hugepages.is_some()),
        ),
        (
            "spec.domain.devices.gpus",
            devices.is_some_and(|d| d.gpus.is_some()),
        ),
        (
            "spec.domain.devices.hostDevices",
            devices.is_some_and(|d| d.host_devices.is_some()),
        ),
        (
            "spec.domain.devices.watchdog",
            devices.is_some_and(|d| d.watchdog.is_some()),
        ),
        (
            "spec.domain.devices.filesystems",
            devices.is_some_and(|d| d.filesystems.is_some()),
        ),
        (
            "spec.domain.devices.downwardMetrics",
            devices.is_some_and(|d| d.downward_metrics.is_some()),
        ),
        (
            "spec.domain.devices.panicDevices",
            devices.is_some_and(|d| d.panic_devices.is_some()),
        ),
        (
            "spec.domain.devices.clientPassthrough",
            devices.is_some_and(|d| d.client_passthrough.is_some()),
        ),
        (
            "spec.domain.devices.sound",
            devices.is_some_and(|d| d.sound.is_some()),
        ),
        (
            "spec.domain.devices.autoattachVSOCK",
            devices.is_some_and(|d| d.autoattach_vsock == Some(true)),
        ),
        (
            "spec.domain.devices.useVirtioTransitional",
            devices.is_some_and(|d| d.use_virtio_transitional == Some(true)),
        ),
        (
            "spec.domain.devices.disks[].disk.pciAddress",
            disks
                .iter()
                .any(|d| d.disk.as_ref().is_some_and(|t| t.pci_address.is_some())),
        ),
        (
            "spec.domain.devices.disks[].blockSize",
            disks.iter().any(|d| d.block_size.is_some()),
        ),
        (
            "spec.domain.devices.disks[].lun.reservation",
            disks
                .iter()
                .any(|d| d.lun.as_ref().is_some_and(|l| l.reservation == Some(true))),
        ),
        (
            "spec.domain.devices.interfaces[].pciAddress",
            devices
                .and_then(|d| d.interfaces.as_deref())
                .unwrap_or_default()
                .iter()
                .any(|i| i.pci_address.is_some()),
        ),
        (
            "spec.domain.cpu.numa",
            cpu.is_some_and(|c| c.numa.is_some()),
        ),
        (
            "spec.domain.cpu.realtime",
            cpu.is_some_and(|c| c.realtime.is_some()),
        ),
        (
            "spec.domain.firmware.acpi",
            domain.firmware.as_ref().is_some_and(|f| f.acpi.is_some()),
        ),
        (
            "spec.domain.launchSecurity",
            domain.launch_security.is_some(),
        ),
        (
            "spec.domain.rebootPolicy",
            domain.reboot_policy == Some(RebootPolicy::Terminate),
        ),
        (
            "spec.domain.features.hypervPassthrough",
            domain
                .features
                .as_ref()
                .is_some_and(|f| f.hyperv_passthrough.is_some()),
        ),
        ("spec.resourceClaims", spec.resource_claims.is_some()),
        (
            "spec.architecture",
            spec.architecture
                .as_deref()
                .is_some_and(|a| !a.is_empty() && a != "amd64"),
        ),
        (
            "spec.volumes[].downwardMetrics",
            volumes.iter().any(|v| v.downward_metrics.is_some()),
        ),
        (
            "spec.volumes[].memoryDump",
            volumes.iter().any(|v| v.memory_dump.is_some()),
        ),
        ("spec.livenessProbe", spec.liveness_probe.is_some()),
        ("spec.readinessProbe", spec.readiness_probe.is_some()),
        (
            "spec.topologySpreadConstraints",
            spec.topology_spread_constraints.is_some(),
        ),
        ("spec.schedulerName", spec.scheduler_name.is_some()),
        (
            "spec.accessCredentials[].userPassword",
            spec.access_credentials
                .iter()
                .flatten()
                .any(|c| c.user_password.is_some()),
        ),
        (
            "spec.accessCredentials[].sshPublicKey.propagationMethod",
            spec.access_credentials
                .iter()
                .flatten()
                .filter_map(|c| c.ssh_public_key.as_ref())
                .any(|k| {
                    let m = &k.propagation_method;
                    m.qemu_guest_agent.is_some()
                }),
        ),
    ];
    match present.into_iter().find(|(_, is_set)| *is_set) {
        Some((field, _)) => Err(unsupported(field, "not supported by ironvirt yet")),
        None => Ok(()),
    }
}
