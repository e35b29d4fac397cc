//! VirtualMachineInstance: one running virtual machine, and the domain and
//! device types every kind shares (volumes and networks are re-exported from
//! [`crate::volumes`] and [`crate::network`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodDNSConfig, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{
    Chassis, Clock, CpuFeature, DiskErrorPolicy, DiskIo, DiskIoThreads, DnsPolicy, Features, Input,
    IoThreadsPolicy, RebootPolicy, ResourceRequirements, TpmDevice, VideoDevice,
};
use crate::schema;

pub use crate::network::*;
pub use crate::volumes::*;

/// The specification of a VirtualMachineInstance: its virtual hardware
/// (domain), the volumes behind its disks, its networks and where it may run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    singular = "virtualmachineinstance",
    shortname = "vmi",
    shortname = "vmis",
    category = "all",
    category = "kubevirt",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineInstance is a running virtual machine, as in KubeVirt (kubevirt.io/v1).",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.interfaces[0].ipAddress"
    ),
    printcolumn(name = "NodeName", type_ = "string", json_path = ".status.nodeName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    ),
    selectable = ".status.nodeName",
    selectable = ".status.phase"
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// The virtual hardware: CPU, memory, firmware, machine type and devices.
    pub domain: DomainSpec,
    /// Volumes that back the disks in domain.devices.disks, matched by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub volumes: Option<Vec<Volume>>,
    /// Networks that back the interfaces in domain.devices.interfaces, matched by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub networks: Option<Vec<Network>>,
    /// Node labels this VMI requires; it is placed only on nodes that carry all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Affinity rules; required node affinity is honoured when placing the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Box<Affinity>>,
    /// Taints this VMI tolerates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Seconds the guest gets to shut down after an ACPI power-off before it is
    /// destroyed. Defaults to 30 (180 for Windows guests in KubeVirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
    /// What happens to the VMI when its node is drained: None, LiveMigrate,
    /// LiveMigrateIfPossible or External. ironvirt does not migrate yet and treats
    /// every value as None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    /// Set to Paused to start the VMI with its vCPUs paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_strategy: Option<StartStrategy>,
    /// The guest's hostname; defaults to the VMI's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub hostname: Option<String>,
    /// With hostname, the guest's fully qualified name is
    /// <hostname>.<subdomain>.<namespace>.svc.<cluster domain>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub subdomain: Option<String>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::probes")]
    pub liveness_probe: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::probes")]
    pub readiness_probe: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::topology_spread")]
    pub topology_spread_constraints: Option<Box<Value>>,
    /// Not supported: ironvirt places VMIs itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::scheduler_name")]
    pub scheduler_name: Option<Box<Value>>,
    /// SSH public keys for the guest, from Secrets (propagation noCloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_credentials: Option<Vec<crate::access::AccessCredential>>,
    /// The PriorityClass KubeVirt gives the VMI's pod. Accepted with a warning:
    /// ironvirt places VMIs without priorities or preemption.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    /// The DNS policy of KubeVirt's pod. Accepted with a warning: the guest's
    /// DNS settings come from the pod network (passt), whatever it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<DnsPolicy>,
    /// DNS settings for KubeVirt's pod. Accepted with a warning, as dnsPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<Box<PodDNSConfig>>,
    /// The guest architecture; ironvirt runs amd64 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::architecture")]
    pub architecture: Option<String>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::resource_claims")]
    pub resource_claims: Option<Box<Value>>,
}

/// What happens to a VMI when its node is drained: None, LiveMigrate,
/// LiveMigrateIfPossible or External.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictionStrategy {
    None,
    LiveMigrate,
    LiveMigrateIfPossible,
    External,
}

/// How a VMI starts: Paused starts it with its vCPUs paused.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartStrategy {
    Paused,
}

/// The virtual hardware of a VMI.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// Compute resources for the VMI, as for a container. Requests are what
    /// placement reserves on a node; when memory is unset, memory.guest counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The vCPU topology and model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// The guest's memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// The emulated machine type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// Firmware: UUID, serial number and bootloader (BIOS or EFI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// Devices: disks, network interfaces, rng, and the serial console and VNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Devices>,
    /// The guest's clock (UTC or a time zone) and timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<Box<Clock>>,
    /// Platform features: ACPI, APIC, SMM, Hyper-V enlightenments, KVM visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Box<Features>>,
    /// How disks share I/O threads. Accepted with a warning: ironvirt's disks use
    /// QEMU's main loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads_policy: Option<IoThreadsPolicy>,
    /// I/O thread settings. Accepted with a warning, as ioThreadsPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads: Option<DiskIoThreads>,
    /// SMBIOS chassis information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<Box<Chassis>>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::launch_security")]
    pub launch_security: Option<Box<Value>>,
    /// What a reboot from inside the guest does; only Reboot (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::reboot_policy")]
    pub reboot_policy: Option<RebootPolicy>,
}

/// The vCPU topology and model. The VMI gets cores × sockets × threads vCPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    /// Cores per socket. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 512))]
    pub cores: Option<u32>,
    /// Sockets. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub sockets: Option<u32>,
    /// Threads per core. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 8))]
    pub threads: Option<u32>,
    /// The CPU model, for example host-model, host-passthrough or a named QEMU
    /// model such as Westmere. Under TCG (no KVM) host-model means QEMU's default
    /// model and host-passthrough is rejected; named models are emulated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::dedicated_cpu")]
    pub dedicated_cpu_placement: Option<Box<Value>>,
    /// The most sockets CPU hotplug could reach. Accepted with a warning:
    /// ironvirt has no CPU hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub max_sockets: Option<u32>,
    /// CPU features to require, force, disable, …, on top of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub features: Option<Vec<CpuFeature>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::numa")]
    pub numa: Option<Box<Value>>,
    /// A dedicated pCPU for QEMU's emulator thread. Accepted with a warning:
    /// ironvirt pins nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::realtime")]
    pub realtime: Option<Box<Value>>,
}

/// The guest's memory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Memory the guest sees, for example 128Mi or 1024M. Defaults to the memory request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<Quantity>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::hugepages")]
    pub hugepages: Option<Box<Value>>,
    /// The most memory hotplug could reach. Accepted with a warning: ironvirt
    /// has no memory hotplug; the guest has memory.guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guest: Option<Quantity>,
}

/// The emulated machine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// QEMU machine type, for example q35 (the default) or pc.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub machine_type: Option<String>,
}

/// Firmware settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Firmware {
    /// The SMBIOS system UUID; defaulted from the VMI's name when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ))]
    pub uuid: Option<String>,
    /// The SMBIOS system serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::firmware_acpi")]
    pub acpi: Option<Box<Value>>,
    /// The bootloader: bios (the default) or efi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootloader: Option<Bootloader>,
    /// Boot a kernel (and initrd) taken from a container image, with kernel
    /// arguments, instead of a bootloader on a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot: Option<Box<KernelBoot>>,
}

/// Direct kernel boot: the kernel and initrd come from a container image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.kernelArgs) || self.kernelArgs == '' || has(self.container)").message("kernelArgs needs kernelBoot.container: the arguments are for the kernel it gives"))]
pub struct KernelBoot {
    /// The kernel command line, for example "console=ttyS0".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub kernel_args: Option<String>,
    /// The container image holding the kernel and initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<KernelBootContainer>,
}

/// The image a kernel boot takes its kernel and initrd from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.kernelPath) && self.kernelPath != '') || (has(self.initrdPath) && self.initrdPath != '')").message("set kernelPath, initrdPath or both"))]
#[x_kube(validation = Rule::new("!has(self.initrdPath) || self.initrdPath == '' || (has(self.kernelPath) && self.kernelPath != '')").message("initrdPath needs kernelPath: an initrd is loaded only with a kernel"))]
pub struct KernelBootContainer {
    /// The container image, for example quay.io/kubevirt/alpine-ext-kernel-boot-demo.
    #[schemars(length(min = 1))]
    pub image: String,
    /// The name of a Secret with registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// The kernel's absolute path inside the image, for example /boot/vmlinuz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
    /// The initrd's absolute path inside the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
}

/// The bootloader: set exactly one of bios or efi.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.bios) && has(self.efi))").message("set only one of bootloader.bios and bootloader.efi"))]
pub struct Bootloader {
    /// Legacy BIOS (SeaBIOS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios: Option<Bios>,
    /// UEFI (OVMF), when OVMF is installed on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efi: Option<Efi>,
}

/// Legacy BIOS boot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Bios {
    /// Show BIOS output on the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_serial: Option<bool>,
}

/// UEFI boot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Efi {
    /// Enable Secure Boot (needs an OVMF build with Secure Boot keys). Defaults to true in KubeVirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// Keep EFI variables across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// The VMI's devices.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    /// Disks, each backed by the volume of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub disks: Option<Vec<Disk>>,
    /// Network interfaces, each backed by the network of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub interfaces: Option<Vec<Interface>>,
    /// A virtio random number generator fed from the host's entropy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
    /// Attach a serial console (default true). `ironctl console` and `virtctl console` use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    /// Attach a graphics device with VNC (default true). `ironctl vnc` uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
    /// Attach an interface for the pod network when none is listed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::gpus")]
    pub gpus: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::gpus")]
    pub host_devices: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::watchdog")]
    pub watchdog: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::filesystems")]
    pub filesystems: Option<Box<Value>>,
    /// An emulated TPM 2.0 (swtpm on the node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmDevice>,
    /// Input devices: tablets and keyboards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub inputs: Option<Vec<Input>>,
    /// Add a USB tablet when no inputs are listed (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_input_device: Option<bool>,
    /// true: a virtio memory balloon. Unset or false: none (ironvirt never
    /// resizes guests, so unlike KubeVirt it adds none by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_mem_balloon: Option<bool>,
    /// The video device's model (with the graphics device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoDevice>,
    /// Disk hotplug off. ironvirt has no disk hotplug, so this always holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_hotplug: Option<bool>,
    /// Log the serial console to a file. Accepted with a warning: ironvirt
    /// keeps no console log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_serial_console: Option<bool>,
    /// virtio multi-queue for disks. Accepted with a warning: not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_multi_queue: Option<bool>,
    /// virtio multi-queue for NICs. Accepted with a warning: not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_interface_multiqueue: Option<bool>,
    /// Refused when true.
    #[serde(
        rename = "autoattachVSOCK",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "schema::vsock")]
    pub autoattach_vsock: Option<bool>,
    /// Refused when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::virtio_transitional")]
    pub use_virtio_transitional: Option<bool>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::downward_metrics")]
    pub downward_metrics: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::panic_devices")]
    pub panic_devices: Option<Box<Value>>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::client_passthrough")]
    pub client_passthrough: Option<Box<Value>>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::sound")]
    pub sound: Option<Box<Value>>,
}

/// A virtio RNG device; it has no settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Rng {}

/// A disk of the VMI. Set at most one of disk, cdrom and lun; with none the disk
/// is a plain `disk: {}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.disk) ? 1 : 0) + (has(self.cdrom) ? 1 : 0) + (has(self.lun) ? 1 : 0) <= 1").message("a disk sets at most one of disk, cdrom and lun"))]
pub struct Disk {
    /// The disk's name; the volume with the same name backs it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Attach as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// Attach as a CD-ROM (always read-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromTarget>,
    /// Attach as a LUN (SCSI pass-through in KubeVirt; a plain SCSI disk in ironvirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<LunTarget>,
    /// Boot order among disks and interfaces; 1 boots first. Unset disks do not boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub boot_order: Option<u32>,
    /// The disk's serial number, as the guest sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.+-]+$"), length(max = 20))]
    pub serial: Option<String>,
    /// Host cache mode: none, writethrough or writeback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<DiskCache>,
    /// What the guest sees on an I/O error: stop (pause the guest), ignore,
    /// report or enospace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_policy: Option<DiskErrorPolicy>,
    /// QEMU's I/O mode. Accepted with a warning: ironvirt leaves it to QEMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<DiskIo>,
    /// An exclusive I/O thread. Accepted with a warning: not applied.
    #[serde(
        rename = "dedicatedIOThread",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dedicated_io_thread: Option<bool>,
    /// A tag for config-drive metadata. Accepted with a warning: ironvirt has
    /// no config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Let several guests write the disk. Accepted with a warning: not applied
    /// (ironvirt's overlays are per VMI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shareable: Option<bool>,
    /// Changed-block tracking for backups. Accepted with a warning: ironvirt
    /// has no backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<bool>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::block_size")]
    pub block_size: Option<Value>,
}

/// The bus a disk attaches to: virtio, sata, scsi or usb.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
    Usb,
}

/// Host cache mode of a disk: none, writethrough or writeback.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskCache {
    None,
    Writethrough,
    Writeback,
}

/// A disk attached as a disk.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    /// The bus: virtio (default), sata, scsi or usb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pci_address")]
    pub pci_address: Option<String>,
}

/// A disk attached as a CD-ROM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CdromTarget {
    /// The bus: sata (default) or scsi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Always true for a CD-ROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// The tray: closed (default) or open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tray: Option<String>,
}

/// A disk attached as a LUN.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LunTarget {
    /// The bus: scsi (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// Refused when true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::lun_reservation")]
    pub reservation: Option<bool>,
}

/// The observed state of a VMI.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// Pending, Scheduling, Scheduled, Running, Succeeded, Failed or Unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VirtualMachineInstancePhase>,
    /// Conditions: Ready, Paused, Provisioning, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// The node the VMI is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// A short machine-readable reason for the current phase, for example NodeUnresponsive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The guest's network interfaces: MAC and, where known, IP addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<VirtualMachineInstanceNetworkInterface>>,
    /// When the VMI entered each phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["phase"]))]
    pub phase_transition_timestamps: Option<Vec<PhaseTransitionTimestamp>>,
    /// What the guest agent reports about the guest OS, when an agent runs.
    #[serde(
        rename = "guestOSInfo",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub guest_os_info: Option<Box<GuestOsInfo>>,
    /// The VMI's current or last live migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<Box<crate::migration::VirtualMachineInstanceMigrationState>>,
    /// How the VMI migrates: BlockMigration (its disks are copied) or
    /// LiveMigration (its disks are on shared storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_method: Option<String>,
}

/// The lifecycle phase of a VMI.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VirtualMachineInstancePhase {
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl VirtualMachineInstancePhase {
    /// Succeeded and Failed are final: the VMI never runs again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// A condition of a VMI or VM, shaped like Kubernetes conditions.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, for example Ready or Paused.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// A short machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// A network interface as the guest has it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceNetworkInterface {
    /// The interface's name in the VMI spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The primary IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// Every IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_addresses: Option<Vec<String>>,
    /// The MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The interface's name inside the guest, for example eth0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// Where the information comes from: domain, guest-agent, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_source: Option<String>,
}

/// When a VMI entered a phase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransitionTimestamp {
    /// The phase entered.
    pub phase: VirtualMachineInstancePhase,
    /// When it was entered.
    pub phase_transition_timestamp: Time,
}

/// The guest OS, as a guest agent reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GuestOsInfo {
    /// The OS name, for example Debian GNU/Linux.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The OS id, for example debian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The OS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The OS version id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// A human-readable OS name and version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// The kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// The kernel version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// The machine architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// A VMI template: the metadata and spec of the VMIs an owner creates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    /// Labels and annotations for the created VMIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::template_metadata")]
    pub metadata: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    /// The spec of the created VMIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<VirtualMachineInstanceSpec>,
}
