//! The parts of a VMI's domain beyond CPU, memory, firmware and the core
//! devices: resources, guest features (ACPI, APIC, SMM, Hyper-V
//! enlightenments, …), the clock and its timers, input devices, the TPM,
//! SMBIOS chassis, video, I/O threads and CPU features. Shapes are
//! KubeVirt's `kubevirt.io/v1`; which of them ironvirt honours, refuses or
//! accepts with a warning is in `docs/compatibility-fields.md`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Compute resources of a VMI. Only `cpu` and `memory` (and extended
/// resources) are meaningful keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRequirements {
    /// What placement reserves on a node, for example {cpu: 500m, memory: 1Gi}.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<BTreeMap<String, Quantity>>,
    /// Upper bounds; a request may not exceed its limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<BTreeMap<String, Quantity>>,
    /// Leave the guest-management overhead out of placement. ironvirt reserves
    /// no overhead in any case, so this changes nothing (a warning says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit_guest_overhead: Option<bool>,
}

/// On or off for one guest feature; unset `enabled` means on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureState {
    /// Whether the feature is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

impl FeatureState {
    /// On unless `enabled: false`.
    pub fn is_on(&self) -> bool {
        self.enabled != Some(false)
    }
}

/// The APIC, optionally with end-of-interrupt notifications.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureApic {
    /// Whether the APIC is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Tell the guest about end-of-interrupt (PV EOI). Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_of_interrupt: Option<bool>,
}

/// Hyper-V spinlock retries.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureSpinlocks {
    /// Whether the feature is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retries before a spinlock is reported to the hypervisor; at least 4096 (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4096))]
    pub spinlocks: Option<u32>,
}

/// The hypervisor vendor id the guest sees.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureVendorId {
    /// Whether the feature is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The vendor id, at most 12 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 12), regex(pattern = r"^[A-Za-z0-9 ._-]*$"))]
    pub vendorid: Option<String>,
}

/// Hyper-V synthetic timers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SyNicTimer {
    /// Whether the feature is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Direct-mode synthetic timers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<FeatureState>,
}

/// Hyper-V paravirtual TLB flushes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TlbFlush {
    /// Whether the feature is on (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Direct TLB flushes (nested virtualization). Accepted with a warning: not
    /// passed on (libvirt 9.0 lacks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<FeatureState>,
    /// Extended (partial) TLB flushes. Accepted with a warning: not passed on
    /// (libvirt 9.0 lacks it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended: Option<FeatureState>,
}

/// Hyper-V enlightenments for Windows guests; each unset one is off.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureHyperv {
    /// Relaxed timing: the guest disables watchdog timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relaxed: Option<FeatureState>,
    /// Paravirtual APIC access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vapic: Option<FeatureState>,
    /// Spinlock retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spinlocks: Option<FeatureSpinlocks>,
    /// Virtual processor index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpindex: Option<FeatureState>,
    /// Processor time accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<FeatureState>,
    /// The synthetic interrupt controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synic: Option<FeatureState>,
    /// Synthetic timers (needs synic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synictimer: Option<SyNicTimer>,
    /// Hyper-V reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<FeatureState>,
    /// The hypervisor vendor id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendorid: Option<FeatureVendorId>,
    /// TSC and APIC frequencies through MSRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequencies: Option<FeatureState>,
    /// Notifications of TSC frequency changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reenlightenment: Option<FeatureState>,
    /// Paravirtual TLB flushes (needs vpindex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlbflush: Option<TlbFlush>,
    /// Paravirtual inter-processor interrupts (needs vpindex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipi: Option<FeatureState>,
    /// Enlightened VMCS for nested guests (needs vapic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evmcs: Option<FeatureState>,
}

/// How KVM shows itself to the guest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FeatureKvm {
    /// Hide KVM from the guest's hypervisor detection. Defaults to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<bool>,
}

/// Guest-visible platform features.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// ACPI (on by default). Without it the guest cannot be shut down
    /// gracefully: stopping it waits out the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acpi: Option<FeatureState>,
    /// The APIC (the machine type's default when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apic: Option<FeatureApic>,
    /// Refused: turns on every Hyper-V feature; list them under hyperv instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::hyperv_passthrough")]
    pub hyperv_passthrough: Option<serde_json::Value>,
    /// Hyper-V enlightenments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<FeatureHyperv>,
    /// System Management Mode (always on with EFI Secure Boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smm: Option<FeatureState>,
    /// KVM visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<FeatureKvm>,
    /// Paravirtual spinlocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvspinlock: Option<FeatureState>,
}

/// The guest's clock: UTC (optionally offset) or a time zone, and its timers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.utc) && has(self.timezone))").message("set only one of clock.utc and clock.timezone"))]
pub struct Clock {
    /// The clock runs in UTC, optionally offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc: Option<ClockOffsetUtc>,
    /// The clock runs in this time zone, for example Europe/Paris.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+/-]+$"))]
    pub timezone: Option<String>,
    /// The timers the guest has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<Timer>,
}

/// A UTC clock.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClockOffsetUtc {
    /// Seconds added to UTC; with it, time the guest sets is kept across reboots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset_seconds: Option<i64>,
}

/// The guest's timers; each unset one is left to the machine type.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Timer {
    /// The High Precision Event Timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hpet: Option<HpetTimer>,
    /// The paravirtual KVM clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kvm: Option<PresentTimer>,
    /// The Programmable Interval Timer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pit: Option<PitTimer>,
    /// The Real Time Clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<RtcTimer>,
    /// The paravirtual Hyper-V clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hyperv: Option<PresentTimer>,
}

/// A timer that is present or not.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PresentTimer {
    /// Whether the guest has the timer (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// The HPET.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HpetTimer {
    /// Whether the guest has the timer (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// What to do with missed ticks: delay, catchup, merge or discard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<TickPolicy>,
}

/// The PIT.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tickPolicy) || self.tickPolicy != 'merge'").message("pit.tickPolicy is one of delay, catchup and discard"))]
pub struct PitTimer {
    /// Whether the guest has the timer (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// What to do with missed ticks: delay, catchup or discard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<TickPolicy>,
}

/// The RTC.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.tickPolicy) || self.tickPolicy == 'delay' || self.tickPolicy == 'catchup'").message("rtc.tickPolicy is one of delay and catchup"))]
pub struct RtcTimer {
    /// Whether the guest has the timer (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
    /// What to do with missed ticks: delay or catchup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick_policy: Option<TickPolicy>,
    /// What the RTC follows: guest or wall (the host's clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track: Option<RtcTrack>,
}

/// What a timer does with ticks it missed.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TickPolicy {
    Delay,
    Catchup,
    Merge,
    Discard,
}

impl TickPolicy {
    /// The name, as in the API and in libvirt.
    pub fn as_str(self) -> &'static str {
        match self {
            TickPolicy::Delay => "delay",
            TickPolicy::Catchup => "catchup",
            TickPolicy::Merge => "merge",
            TickPolicy::Discard => "discard",
        }
    }
}

/// What the RTC follows: guest or wall.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RtcTrack {
    Guest,
    Wall,
}

/// An input device: a tablet or a keyboard on USB or virtio.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// The device's name, unique among inputs.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,
    /// tablet (absolute pointer, for VNC) or keyboard.
    #[serde(rename = "type")]
    pub input_type: InputType,
    /// usb (default) or virtio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<InputBus>,
}

/// The kind of input device.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    #[default]
    Tablet,
    Keyboard,
}

/// The bus of an input device.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InputBus {
    Usb,
    Virtio,
}

/// An emulated TPM 2.0 (swtpm).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TpmDevice {
    /// false leaves the TPM out (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Keep the TPM's state across VM restarts. Accepted with a warning: the
    /// state lasts as long as the VMI (across guest reboots) only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// The video device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VideoDevice {
    /// The model: vga (the default), virtio, bochs, cirrus or ramfb.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub video_type: Option<VideoType>,
}

/// A video model.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VideoType {
    Vga,
    Virtio,
    Bochs,
    Cirrus,
    Ramfb,
}

impl VideoType {
    /// The libvirt model name.
    pub fn as_str(self) -> &'static str {
        match self {
            VideoType::Vga => "vga",
            VideoType::Virtio => "virtio",
            VideoType::Bochs => "bochs",
            VideoType::Cirrus => "cirrus",
            VideoType::Ramfb => "ramfb",
        }
    }
}

/// SMBIOS chassis information.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Chassis {
    /// The manufacturer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// The version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The serial number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The asset tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset: Option<String>,
    /// The SKU number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
}

impl Chassis {
    /// The set entries, in SMBIOS order, by libvirt name.
    pub fn entries(&self) -> Vec<(&'static str, &str)> {
        [
            ("manufacturer", &self.manufacturer),
            ("version", &self.version),
            ("serial", &self.serial),
            ("asset", &self.asset),
            ("sku", &self.sku),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }
}

/// How disks share I/O threads: shared, auto or supplementalPool.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum IoThreadsPolicy {
    Shared,
    Auto,
    SupplementalPool,
}

/// I/O thread settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DiskIoThreads {
    /// I/O threads for the supplementalPool policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplemental_pool_thread_count: Option<u32>,
}

/// What a guest-initiated reboot does: Reboot (restart the guest) or
/// Terminate (end the VMI).
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RebootPolicy {
    Reboot,
    Terminate,
}

/// A CPU feature and what to do about it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CpuFeature {
    /// The feature's name as libvirt knows it, for example vmx or pcid.
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_.-]+$"))]
    pub name: String,
    /// force, require (the default), optional, disable or forbid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<CpuFeaturePolicy>,
}

/// What to do about a CPU feature.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CpuFeaturePolicy {
    Force,
    Require,
    Optional,
    Disable,
    Forbid,
}

impl CpuFeaturePolicy {
    /// The libvirt policy name.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuFeaturePolicy::Force => "force",
            CpuFeaturePolicy::Require => "require",
            CpuFeaturePolicy::Optional => "optional",
            CpuFeaturePolicy::Disable => "disable",
            CpuFeaturePolicy::Forbid => "forbid",
        }
    }
}

/// A disk's error policy: stop, ignore, report or enospace.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskErrorPolicy {
    Stop,
    Ignore,
    Report,
    Enospace,
}

impl DiskErrorPolicy {
    /// The libvirt name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskErrorPolicy::Stop => "stop",
            DiskErrorPolicy::Ignore => "ignore",
            DiskErrorPolicy::Report => "report",
            DiskErrorPolicy::Enospace => "enospace",
        }
    }
}

/// A disk's I/O mode: native, default or threads.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskIo {
    Native,
    Default,
    Threads,
}

/// DHCP options an interface passes to the guest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpOptions {
    /// DHCP option 67, the boot file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_file_name: Option<String>,
    /// DHCP option 66, the TFTP server.
    #[serde(
        rename = "tftpServerName",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tftp_server_name: Option<String>,
    /// DHCP option 42, NTP servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp_servers: Option<Vec<String>>,
    /// Private DHCP options (224 to 254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_options: Option<Vec<DhcpPrivateOption>>,
}

/// A private DHCP option.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DhcpPrivateOption {
    /// The option number, 224 to 254.
    #[schemars(range(min = 224, max = 254))]
    pub option: i32,
    /// Its value.
    pub value: String,
}

/// The requested link state of an interface: up, down or absent.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceState {
    Up,
    Down,
    Absent,
}

/// How a VM applies changes to its volumes: Replacement or Migration.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateVolumesStrategy {
    Replacement,
    Migration,
}

/// The Pod DNS policy KubeVirt copies to the VMI's pod.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsPolicy {
    ClusterFirstWithHostNet,
    ClusterFirst,
    Default,
    None,
}
