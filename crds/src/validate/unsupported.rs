//! Messages for fields KubeVirt has and ironvirt rejects. They are the CRD's
//! CEL messages (crds/src/schema.rs), so a user sees the same words whichever
//! layer rejects the object first.

/// `volumes[].persistentVolumeClaim`
pub const PVC: &str = "persistentVolumeClaim volumes are not supported by ironvirt yet; use hostDisk, emptyDisk, containerDisk or cloudInitNoCloud";
/// `volumes[].dataVolume`
pub const DATA_VOLUME: &str =
    "dataVolume volumes are not supported by ironvirt (no CDI); use hostDisk or containerDisk";
/// `volumes[].ephemeral`
pub const EPHEMERAL: &str =
    "ephemeral volumes are not supported by ironvirt yet; use containerDisk";
/// `volumes[].configMap`
pub const CONFIG_MAP: &str = "configMap volumes are not supported by ironvirt yet";
/// `volumes[].secret`
pub const SECRET: &str = "secret volumes are not supported by ironvirt yet";
/// `volumes[].serviceAccount`
pub const SERVICE_ACCOUNT: &str = "serviceAccount volumes are not supported by ironvirt yet";
/// `volumes[].downwardAPI`
pub const DOWNWARD_API: &str = "downwardAPI volumes are not supported by ironvirt yet";
/// `volumes[].sysprep`
pub const SYSPREP: &str = "sysprep volumes are not supported by ironvirt yet";
/// `domain.memory.hugepages`
pub const HUGEPAGES: &str = "memory.hugepages is not supported by ironvirt yet";
/// `domain.cpu.dedicatedCpuPlacement`
pub const DEDICATED_CPU: &str = "cpu.dedicatedCpuPlacement is not supported by ironvirt yet";
/// `domain.devices.gpus` and `domain.devices.hostDevices`
pub const GPUS: &str = "gpus and hostDevices are not supported by ironvirt yet";
/// `domain.devices.watchdog`
pub const WATCHDOG: &str = "watchdog devices are not supported by ironvirt yet";
/// `domain.devices.filesystems`
pub const FILESYSTEMS: &str = "filesystems (virtiofs) are not supported by ironvirt yet";
/// `interfaces[].sriov`
pub const SRIOV: &str = "sriov interfaces are not supported by ironvirt; use masquerade or bridge";
/// `interfaces[].passt` and `interfaces[].slirp`
pub const PASST: &str =
    "passt and slirp interfaces are not supported by ironvirt; use masquerade or bridge";
/// `interfaces[].binding`
pub const BINDING_PLUGIN: &str =
    "network binding plugins are not supported by ironvirt; use masquerade or bridge";
/// `networks[].multus`
pub const MULTUS: &str = "multus networks are not supported by ironvirt yet; use pod";
/// `livenessProbe` and `readinessProbe`
pub const PROBES: &str = "liveness and readiness probes are not supported by ironvirt yet";
/// VM `dataVolumeTemplates`
pub const DATA_VOLUME_TEMPLATES: &str =
    "dataVolumeTemplates are not supported by ironvirt (no CDI)";
/// `topologySpreadConstraints`
pub const TOPOLOGY_SPREAD: &str =
    "topologySpreadConstraints are not supported by ironvirt yet; use affinity";
/// `schedulerName`
pub const SCHEDULER_NAME: &str = "schedulerName is not supported: ironvirt places VMIs itself";
/// `accessCredentials[].userPassword`
pub const USER_PASSWORD: &str = "userPassword access credentials are not supported by ironvirt: they need the QEMU guest agent; use sshPublicKey with propagationMethod noCloud or configDrive";
/// `accessCredentials[].sshPublicKey.propagationMethod.qemuGuestAgent`
pub const GUEST_AGENT_PROPAGATION: &str = "propagationMethod qemuGuestAgent is not supported by ironvirt: it needs the QEMU guest agent; use noCloud or configDrive";

/// `domain.launchSecurity`
pub const LAUNCH_SECURITY: &str = "launchSecurity (SEV, SEV-SNP, TDX) is not supported by ironvirt: no confidential-computing hardware here";
/// `resourceClaims`
pub const RESOURCE_CLAIMS: &str =
    "resourceClaims (dynamic resource allocation) are not supported by ironvirt";
/// `domain.devices.downwardMetrics` and `volumes[].downwardMetrics`
pub const DOWNWARD_METRICS: &str = "downwardMetrics are not supported by ironvirt yet";
/// `volumes[].memoryDump`
pub const MEMORY_DUMP: &str = "memoryDump volumes are not supported by ironvirt yet";
/// `domain.cpu.numa`
pub const NUMA: &str = "cpu.numa is not supported by ironvirt yet";
/// `domain.cpu.realtime`
pub const REALTIME: &str = "cpu.realtime is not supported by ironvirt yet";
/// `domain.firmware.acpi`
pub const FIRMWARE_ACPI: &str =
    "firmware.acpi (SLIC and MSDM tables) is not supported by ironvirt yet";
/// `domain.devices.panicDevices`
pub const PANIC_DEVICES: &str = "panicDevices are not supported by ironvirt yet";
/// `domain.devices.clientPassthrough`
pub const CLIENT_PASSTHROUGH: &str =
    "clientPassthrough (USB redirection) is not supported by ironvirt";
/// `domain.devices.sound`
pub const SOUND: &str = "sound devices are not supported by ironvirt yet";
/// `domain.features.hypervPassthrough`
pub const HYPERV_PASSTHROUGH: &str = "features.hypervPassthrough is not supported by ironvirt; list the features under features.hyperv";
/// `disks[].disk.pciAddress` and `interfaces[].pciAddress`
pub const PCI_ADDRESS: &str =
    "pciAddress is not supported by ironvirt: libvirt assigns PCI addresses";
/// `disks[].blockSize`
pub const BLOCK_SIZE: &str = "disk blockSize is not supported by ironvirt yet";
/// `interfaces[].macvtap` and `interfaces[].passtBinding`
pub const MACVTAP: &str =
    "macvtap and passtBinding interfaces are not supported by ironvirt; use masquerade or bridge";
/// `domain.devices.autoattachVSOCK: true`
pub const VSOCK: &str = "autoattachVSOCK is not supported by ironvirt yet";
/// `domain.devices.useVirtioTransitional: true`
pub const VIRTIO_TRANSITIONAL: &str =
    "useVirtioTransitional is not supported by ironvirt: the guest needs virtio 1.0 drivers";
/// `disks[].lun.reservation: true`
pub const LUN_RESERVATION: &str =
    "lun.reservation (SCSI persistent reservations) is not supported by ironvirt";
/// `architecture` other than amd64
pub const ARCHITECTURE: &str =
    "ironvirt runs amd64 guests only: set architecture to amd64 or leave it unset";
/// `domain.rebootPolicy: Terminate`
pub const REBOOT_POLICY: &str =
    "rebootPolicy Terminate is not supported by ironvirt yet; use Reboot";

/// Pool `autohealing`
pub const POOL_AUTOHEALING: &str =
    "VirtualMachinePool autohealing is not supported by ironvirt yet";
/// Pool `selectionPolicy.selectors.nodeSelectorRequirementMatcher`
pub const POOL_NODE_MATCHER: &str =
    "nodeSelectorRequirementMatcher is not supported by ironvirt yet; use labelSelector";
/// Pool `statePreservation` other than Disabled
pub const POOL_STATE_PRESERVATION: &str = "statePreservation Offline and Online are not supported by ironvirt: it has no persistent volumes to keep; use Disabled";

/// Every message, for tests that compare them with the CRDs.
pub const ALL: [&str; 45] = [
    PVC,
    DATA_VOLUME,
    EPHEMERAL,
    CONFIG_MAP,
    SECRET,
    SERVICE_ACCOUNT,
    DOWNWARD_API,
    SYSPREP,
    HUGEPAGES,
    DEDICATED_CPU,
    GPUS,
    WATCHDOG,
    FILESYSTEMS,
    SRIOV,
    PASST,
    BINDING_PLUGIN,
    MULTUS,
    PROBES,
    DATA_VOLUME_TEMPLATES,
    TOPOLOGY_SPREAD,
    SCHEDULER_NAME,
    USER_PASSWORD,
    GUEST_AGENT_PROPAGATION,
    LAUNCH_SECURITY,
    RESOURCE_CLAIMS,
    DOWNWARD_METRICS,
    MEMORY_DUMP,
    NUMA,
    REALTIME,
    FIRMWARE_ACPI,
    PANIC_DEVICES,
    CLIENT_PASSTHROUGH,
    SOUND,
    HYPERV_PASSTHROUGH,
    PCI_ADDRESS,
    BLOCK_SIZE,
    MACVTAP,
    VSOCK,
    VIRTIO_TRANSITIONAL,
    LUN_RESERVATION,
    ARCHITECTURE,
    REBOOT_POLICY,
    POOL_AUTOHEALING,
    POOL_NODE_MATCHER,
    POOL_STATE_PRESERVATION,
];
