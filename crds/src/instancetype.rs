//! `instancetype.kubevirt.io/v1beta1`: instancetypes (the vCPUs and memory a
//! VM gets, and the resource-like settings that go with them) and
//! preferences (defaults for the rest of the VM: buses, models, firmware, CPU
//! topology), namespaced and cluster-wide, with KubeVirt's shapes.
//!
//! A VirtualMachine names them in `spec.instancetype` and `spec.preference`;
//! the VM controller keeps a copy of each in a ControllerRevision and expands
//! them into the VMI ([`crate::expand`]).

pub mod lookup;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The API group of instancetypes and preferences.
pub const GROUP: &str = "instancetype.kubevirt.io";
/// The served and stored version of [`GROUP`].
pub const VERSION: &str = "v1beta1";

/// What an instancetype gives a VM: its vCPUs and memory, required, and
/// settings that belong with them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineInstancetype",
    plural = "virtualmachineinstancetypes",
    singular = "virtualmachineinstancetype",
    shortname = "vminstancetype",
    shortname = "vminstancetypes",
    shortname = "vmf",
    shortname = "vmfs",
    category = "all",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineInstancetype: the vCPUs, memory and related settings of the VMs in its namespace that name it."
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstancetypeSpec {
    /// The guest's vCPUs (required) and CPU settings.
    pub cpu: CpuInstancetype,
    /// The guest's memory (required).
    pub memory: MemoryInstancetype,
    /// Node labels the VMI's node must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// The scheduler for the VMI (refused on the VMI by ironvirt, which places VMIs itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// GPUs to pass through (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_list")]
    pub gpus: Option<Vec<Value>>,
    /// Host devices to pass through (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_list")]
    pub host_devices: Option<Vec<Value>>,
    /// How disks share I/O threads: shared, auto or supplementalPool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads_policy: Option<String>,
    /// I/O thread settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub io_threads: Option<Value>,
    /// Confidential computing (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub launch_security: Option<Value>,
    /// Annotations for the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The cluster-wide instancetype: the same spec, for VMs in every namespace.
#[derive(
    CustomResource, schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq,
)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineClusterInstancetype",
    plural = "virtualmachineclusterinstancetypes",
    singular = "virtualmachineclusterinstancetype",
    shortname = "vmclusterinstancetype",
    shortname = "vmclusterinstancetypes",
    shortname = "vmcf",
    shortname = "vmcfs",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineClusterInstancetype: the vCPUs, memory and related settings of the VMs in any namespace that name it."
)]
#[serde(transparent)]
pub struct VirtualMachineClusterInstancetypeSpec(pub VirtualMachineInstancetypeSpec);

/// The instancetype's CPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuInstancetype {
    /// The number of vCPUs; the preference's preferredCPUTopology lays them out.
    #[schemars(range(min = 1, max = 512))]
    pub guest: u32,
    /// The CPU model, as domain.cpu.model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Dedicated pCPUs (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    /// A pCPU for the emulator thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
    /// NUMA topology (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub numa: Option<Value>,
    /// Realtime tuning (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub realtime: Option<Value>,
    /// The most sockets CPU hotplug could reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_sockets: Option<u32>,
}

/// The instancetype's memory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemoryInstancetype {
    /// The memory the guest sees, for example 2Gi.
    pub guest: Quantity,
    /// Huge pages (refused on the VMI by ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub hugepages: Option<Value>,
    /// Request this much less than the guest's memory (0–100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub overcommit_percent: Option<i32>,
    /// The most memory hotplug could reach.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guest: Option<Quantity>,
}

/// Defaults a preference gives a VM for the fields it leaves unset, and the
/// resources it requires.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachinePreference",
    plural = "virtualmachinepreferences",
    singular = "virtualmachinepreference",
    shortname = "vmpref",
    shortname = "vmprefs",
    shortname = "vmp",
    shortname = "vmps",
    category = "all",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachinePreference: defaults (buses, models, firmware, CPU topology, …) for the VMs in its namespace that name it."
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachinePreferenceSpec {
    /// Clock defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockPreferences>,
    /// The CPU topology to lay the instancetype's vCPUs out in, and CPU features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPreferences>,
    /// Device defaults: buses, models, autoattach switches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DevicePreferences>,
    /// Platform feature defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturePreferences>,
    /// Firmware defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwarePreferences>,
    /// Machine type default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachinePreferences>,
    /// Volume defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<VolumePreferences>,
    /// The VMI's subdomain, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_subdomain: Option<String>,
    /// The VMI's terminationGracePeriodSeconds, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_termination_grace_period_seconds: Option<i64>,
    /// The least vCPUs and memory the VM must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<PreferenceRequirements>,
    /// Annotations for the VMI (the VM's own win).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Sockets per core for preferredCPUTopology spread (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_spread_socket_to_core_ratio: Option<u32>,
    /// The guest architecture, when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_architecture: Option<String>,
}

/// The cluster-wide preference: the same spec, for VMs in every namespace.
#[derive(
    CustomResource, schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq,
)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineClusterPreference",
    plural = "virtualmachineclusterpreferences",
    singular = "virtualmachineclusterpreference",
    shortname = "vmcp",
    shortname = "vmcps",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineClusterPreference: defaults (buses, models, firmware, CPU topology, …) for the VMs in any namespace that name it."
)]
#[serde(transparent)]
pub struct VirtualMachineClusterPreferenceSpec(pub VirtualMachinePreferenceSpec);

/// Clock defaults.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClockPreferences {
    /// The clock offset (utc or timezone), when the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_clock_offset: Option<Value>,
    /// Timers, when the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_timer: Option<Value>,
}

/// How the instancetype's vCPUs become sockets, cores and threads.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreferredCpuTopology {
    #[serde(rename = "sockets")]
    Sockets,
    #[serde(rename = "cores")]
    Cores,
    #[serde(rename = "threads")]
    Threads,
    #[serde(rename = "spread")]
    Spread,
    #[serde(rename = "any")]
    Any,
    /// Deprecated spelling of sockets.
    #[serde(rename = "preferSockets")]
    PreferSockets,
    /// Deprecated spelling of cores.
    #[serde(rename = "preferCores")]
    PreferCores,
    /// Deprecated spelling of threads.
    #[serde(rename = "preferThreads")]
    PreferThreads,
    /// Deprecated spelling of spread.
    #[serde(rename = "preferSpread")]
    PreferSpread,
    /// Deprecated spelling of any.
    #[serde(rename = "preferAny")]
    PreferAny,
}

impl PreferredCpuTopology {
    /// The current spelling (the `prefer*` values are deprecated aliases).
    pub fn normalized(self) -> PreferredCpuTopology {
        match self {
            PreferredCpuTopology::PreferSockets => PreferredCpuTopology::Sockets,
            PreferredCpuTopology::PreferCores => PreferredCpuTopology::Cores,
            PreferredCpuTopology::PreferThreads => PreferredCpuTopology::Threads,
            PreferredCpuTopology::PreferSpread => PreferredCpuTopology::Spread,
            PreferredCpuTopology::PreferAny => PreferredCpuTopology::Any,
            other => other,
        }
    }
}

/// What spread lays the vCPUs across.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpreadAcross {
    SocketsCoresThreads,
    SocketsCores,
    CoresThreads,
}

/// CPU preferences.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CpuPreferences {
    /// sockets (the default), cores, threads, spread or any.
    #[serde(
        rename = "preferredCPUTopology",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub preferred_cpu_topology: Option<PreferredCpuTopology>,
    /// For spread: across what, and in which ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_options: Option<SpreadOptions>,
    /// CPU features added unless the VM names them.
    #[serde(
        rename = "preferredCPUFeatures",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub preferred_cpu_features: Option<Vec<crate::domain::CpuFeature>>,
}

/// How spread lays vCPUs out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SpreadOptions {
    /// SocketsCores (the default), SocketsCoresThreads or CoresThreads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub across: Option<SpreadAcross>,
    /// Cores per socket (or threads per core) the vCPUs are spread in (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub ratio: Option<u32>,
}

/// Device preferences: each applies only where the VM leaves the field unset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct DevicePreferences {
    /// The bus of disks that set none (virtio, sata, scsi, usb).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_bus: Option<crate::vmi::DiskBus>,
    /// The bus of CD-ROMs that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_cdrom_bus: Option<crate::vmi::DiskBus>,
    /// The bus of LUNs that set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_lun_bus: Option<crate::vmi::DiskBus>,
    /// The model of interfaces that set none (virtio, e1000, e1000e, rtl8139, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_interface_model: Option<String>,
    /// A virtio RNG, when the VM has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_rng: Option<Value>,
    /// The remaining device preferences (autoattach switches, disk cache
    /// and I/O, TPM, sound, video, input, …), kept as written.
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, Value>,
}

/// Platform feature preferences.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FeaturePreferences {
    /// ACPI, when the VM sets no features.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_acpi: Option<Value>,
    /// APIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_apic: Option<Value>,
    /// Hyper-V enlightenments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_hyperv: Option<Value>,
    /// KVM visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_kvm: Option<Value>,
    /// Paravirtual spinlocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_pvspinlock: Option<Value>,
    /// System management mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_smm: Option<Value>,
}

/// Firmware preferences, applied when the VM chooses neither BIOS nor EFI.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FirmwarePreferences {
    /// Boot with BIOS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_bios: Option<bool>,
    /// BIOS output on the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_bios_serial: Option<bool>,
    /// Boot with EFI (deprecated for preferredEfi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_efi: Option<bool>,
    /// EFI Secure Boot (deprecated for preferredEfi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_secure_boot: Option<bool>,
    /// The EFI settings, as domain.firmware.bootloader.efi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub preferred_efi: Option<Value>,
}

/// Machine preferences.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachinePreferences {
    /// The machine type, when the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_machine_type: Option<String>,
}

/// Volume preferences.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumePreferences {
    /// The storage class of DataVolumes (no effect in ironvirt, which has no DataVolumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_storage_class_name: Option<String>,
}

/// What the VM must have for the preference to apply.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceRequirements {
    /// The least vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuRequirement>,
    /// The least memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRequirement>,
    /// The architecture the VM must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// The least vCPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuRequirement {
    /// vCPUs.
    pub guest: u32,
}

/// The least memory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct MemoryRequirement {
    /// Memory, for example 2Gi.
    pub guest: Quantity,
}

/// A VM's reference to an instancetype or preference (`spec.instancetype`,
/// `spec.preference`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Matcher {
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The kind: VirtualMachineClusterInstancetype (empty means this) or
    /// VirtualMachineInstancetype; VirtualMachineClusterPreference or
    /// VirtualMachinePreference. Singular or plural resource names count too.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The ControllerRevision holding the copy the VM uses; set by the VM
    /// controller. Clear it to take up the object's current version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision_name: String,
    /// Infer the name and kind from the labels of this volume of the
    /// template (a containerDisk's image config labels
    /// instancetype.kubevirt.io/default-instancetype, -kind,
    /// default-preference, -kind); the VM controller then sets name and kind
    /// and removes this field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub infer_from_volume: String,
    /// Reject (the default: a failed inference is the VM's Failure
    /// condition, retried) or Ignore (a missing label or a volume without
    /// labels removes the matcher; the template must then set memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume_failure_policy: Option<String>,
}

/// Whether a matcher names the namespaced kind (else the cluster kind).
pub fn is_namespaced_kind(kind: &str, preference: bool) -> bool {
    let k = kind.to_ascii_lowercase();
    if preference {
        matches!(
            k.as_str(),
            "virtualmachinepreference" | "virtualmachinepreferences"
        )
    } else {
        matches!(
            k.as_str(),
            "virtualmachineinstancetype" | "virtualmachineinstancetypes"
        )
    }
}

/// Whether `kind` is one a matcher may name (empty included).
pub fn is_known_kind(kind: &str, preference: bool) -> bool {
    let k = kind.to_ascii_lowercase();
    k.is_empty()
        || is_namespaced_kind(kind, preference)
        || if preference {
            matches!(
                k.as_str(),
                "virtualmachineclusterpreference" | "virtualmachineclusterpreferences"
            )
        } else {
            matches!(
                k.as_str(),
                "virtualmachineclusterinstancetype" | "virtualmachineclusterinstancetypes"
            )
        }
}

/// `status.instancetypeRef` / `status.preferenceRef`: what the VM uses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StatusRef {
    /// The object's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The object's kind.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// The ControllerRevision with the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller_revision_ref: Option<ControllerRevisionRef>,
}

/// A ControllerRevision by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ControllerRevisionRef {
    /// The ControllerRevision's name, in the VM's namespace.
    pub name: String,
}
