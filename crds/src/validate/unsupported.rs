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
/// `volumes[].cloudInitConfigDrive`
pub const CONFIG_DRIVE: &str =
    "cloudInitConfigDrive is not supported by ironvirt yet; use cloudInitNoCloud";
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
/// `domain.devices.tpm`
pub const TPM: &str = "tpm devices are not supported by ironvirt yet";
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
/// VM `instancetype` and `preference`
pub const INSTANCETYPE: &str = "instancetype and preference are not supported by ironvirt yet; set spec.template.spec.domain directly";
/// VM `dataVolumeTemplates`
pub const DATA_VOLUME_TEMPLATES: &str =
    "dataVolumeTemplates are not supported by ironvirt (no CDI)";
/// `topologySpreadConstraints`
pub const TOPOLOGY_SPREAD: &str =
    "topologySpreadConstraints are not supported by ironvirt yet; use affinity";
/// `schedulerName`
pub const SCHEDULER_NAME: &str = "schedulerName is not supported: ironvirt places VMIs itself";
/// `accessCredentials`
pub const ACCESS_CREDENTIALS: &str =
    "accessCredentials are not supported by ironvirt yet; use cloudInitNoCloud user-data";

/// Every message, for tests that compare them with the CRDs.
pub const ALL: [&str; 25] = [
    PVC,
    DATA_VOLUME,
    EPHEMERAL,
    CONFIG_MAP,
    SECRET,
    SERVICE_ACCOUNT,
    CONFIG_DRIVE,
    DOWNWARD_API,
    SYSPREP,
    HUGEPAGES,
    DEDICATED_CPU,
    GPUS,
    WATCHDOG,
    FILESYSTEMS,
    TPM,
    SRIOV,
    PASST,
    BINDING_PLUGIN,
    MULTUS,
    PROBES,
    INSTANCETYPE,
    DATA_VOLUME_TEMPLATES,
    TOPOLOGY_SPREAD,
    SCHEDULER_NAME,
    ACCESS_CREDENTIALS,
];
