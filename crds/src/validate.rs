//! Checks on the `kubevirt.io/v1` kinds that the CRD schema cannot express (or
//! that the schema does express, repeated so that a webhook reports them all at
//! once with field paths): names and references between disks and volumes,
//! interfaces and networks; memory and CPU consistency; boot orders; label
//! selectors; and fields KubeVirt has that ironvirt does not support.
//!
//! Pure functions over the typed specs. The admission webhooks (ironvirt-api)
//! report every error; the operator applies [`vmi_spec_references`] to VM
//! templates for its `Failure` condition. Messages name the field path, as
//! KubeVirt's webhooks do (`spec.domain.devices.disks[1].name`).

use crate::wire::bus_name;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use crate::quantity::parse_quantity;
use crate::vmi::{
    CloudInitNoCloudSource, Cpu, DiskBus, DomainSpec, HostDiskType, Interface, PortProtocol,
    VirtualMachineInstanceSpec, Volume,
};
use crate::{
    VirtualMachineInstancePresetSpec, VirtualMachineInstanceReplicaSetSpec, VirtualMachineSpec,
};

/// How many errors a message lists; the rest are counted.
pub const MAX_REPORTED: usize = 10;

/// The kind of problem, as Kubernetes' `StatusCause.reason` (metav1.CauseType).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The value is malformed or inconsistent (`FieldValueInvalid`).
    Invalid,
    /// The field is missing (`FieldValueRequired`).
    Required,
    /// The value repeats one that must be unique (`FieldValueDuplicate`).
    Duplicate,
    /// The value refers to something that does not exist (`FieldValueNotFound`).
    NotFound,
    /// A field or value KubeVirt knows and ironvirt does not support (`FieldValueNotSupported`).
    NotSupported,
    /// The field may not be set or changed (`FieldValueForbidden`).
    Forbidden,
}

impl Reason {
    /// The `StatusCause.reason` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Invalid => "FieldValueInvalid",
            Reason::Required => "FieldValueRequired",
            Reason::Duplicate => "FieldValueDuplicate",
            Reason::NotFound => "FieldValueNotFound",
            Reason::NotSupported => "FieldValueNotSupported",
            Reason::Forbidden => "FieldValueForbidden",
        }
    }
}

/// One problem with a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path, for example `spec.domain.devices.disks[1].name`.
    pub field: String,
    /// What is wrong, for a human.
    pub message: String,
    /// The kind of problem.
    pub reason: Reason,
}

impl FieldError {
    /// An invalid value.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(Reason::Invalid, field, message)
    }

    /// A problem of a given kind.
    pub fn with_reason(
        reason: Reason,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
            reason,
        }
    }

    fn required(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(Reason::Required, field, message)
    }

    fn duplicate(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(Reason::Duplicate, field, message)
    }

    fn not_found(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(Reason::NotFound, field, message)
    }

    fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(Reason::NotSupported, field, message)
    }

    fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::with_reason(Reason::Forbidden, field, message)
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// The errors joined with ", " as KubeVirt does, at most [`MAX_REPORTED`] of
/// them, then ", and N more validation errors".
pub fn join(errors: &[FieldError]) -> String {
    let mut s = errors
        .iter()
        .take(MAX_REPORTED)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    s.push_str(&more_suffix(errors.len()));
    s
}

/// ", and N more validation errors" when `total` exceeds [`MAX_REPORTED`], else "".
pub fn more_suffix(total: usize) -> String {
    if total > MAX_REPORTED {
        format!(", and {} more validation errors", total - MAX_REPORTED)
    } else {
        String::new()
    }
}

/// Messages for fields KubeVirt has and ironvirt rejects. They are the CRD's
/// CEL messages (crds/src/schema.rs), so a user sees the same words whichever
/// layer rejects the object first.
pub mod unsupported {
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
    /// `domain.firmware.kernelBoot`
    pub const KERNEL_BOOT: &str =
        "firmware.kernelBoot is not supported by ironvirt yet; boot from a disk";
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
    pub const SRIOV: &str =
        "sriov interfaces are not supported by ironvirt; use masquerade or bridge";
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
    pub const ALL: [&str; 26] = [
        PVC,
        DATA_VOLUME,
        EPHEMERAL,
        CONFIG_MAP,
        SECRET,
        SERVICE_ACCOUNT,
        CONFIG_DRIVE,
        DOWNWARD_API,
        SYSPREP,
        KERNEL_BOOT,
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
}

/// NIC models ironvirt (QEMU) provides.
pub const NIC_MODELS: [&str; 6] = ["virtio", "e1000", "e1000e", "rtl8139", "ne2k_pci", "pcnet"];

/// The smallest guest memory accepted.
const MIN_MEMORY_BYTES: i64 = 1 << 20;

/// Validates a whole VMI spec found at `path` (`spec` for a VMI,
/// `spec.template.spec` for a VM or VMI ReplicaSet): references and
/// uniqueness, memory and CPU, devices, volumes, networks and unsupported
/// fields. Errors are in the order of the fields.
pub fn vmi_spec(spec: &VirtualMachineInstanceSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let dpath = format!("{path}.domain");
    domain(&spec.domain, &dpath, &mut errors);
    memory_is_set(&spec.domain, &dpath, &mut errors);
    disks(spec, path, &mut errors);
    interfaces(spec, path, &mut errors);
    boot_orders(spec, path, &mut errors);
    volumes(spec, path, &mut errors);
    networks(spec, path, &mut errors);
    scheduling(spec, path, &mut errors);
    errors
}

/// The checks without which no VMI can be built from a spec: every disk has a
/// volume and every interface a network, names are unique, boot orders are
/// unique. (The operator applies these to VM templates; [`vmi_spec`] includes them.)
pub fn vmi_spec_references(spec: &VirtualMachineInstanceSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    disk_references(spec, path, &mut errors);
    interface_references(spec, path, &mut errors);
    boot_orders(spec, path, &mut errors);
    errors
}

/// Validates a VirtualMachine spec (at `spec`): running and runStrategy are
/// exclusive, unsupported VM fields, and the template as a VMI spec.
pub fn vm_spec(spec: &VirtualMachineSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if spec.running.is_some() && spec.run_strategy.is_some() {
        errors.push(FieldError::new(
            "spec.running",
            "running and runStrategy are mutually exclusive: set only runStrategy (running is deprecated)",
        ));
    }
    for (field, set) in [
        ("spec.instancetype", spec.instancetype.is_some()),
        ("spec.preference", spec.preference.is_some()),
    ] {
        if set {
            errors.push(FieldError::unsupported(field, unsupported::INSTANCETYPE));
        }
    }
    if spec.data_volume_templates.is_some() {
        errors.push(FieldError::unsupported(
            "spec.dataVolumeTemplates",
            unsupported::DATA_VOLUME_TEMPLATES,
        ));
    }
    match &spec.template.spec {
        Some(t) => errors.extend(vmi_spec(t, "spec.template.spec")),
        None => errors.push(FieldError::required(
            "spec.template.spec",
            "is required: the VMI to run",
        )),
    }
    errors
}

/// Validates a VirtualMachineInstanceReplicaSet spec (at `spec`): replicas,
/// the selector and that it matches the template's labels ("selector does not
/// match labels.", as KubeVirt says), and the template as a VMI spec.
pub fn vmirs_spec(spec: &VirtualMachineInstanceReplicaSetSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(r) = spec.replicas.filter(|r| *r < 0) {
        errors.push(FieldError::new(
            "spec.replicas",
            format!("{r} must be greater than or equal to 0"),
        ));
    }
    let selector_errors = label_selector(&spec.selector, "spec.selector");
    if selector_errors.is_empty() {
        if selects_everything(&spec.selector) {
            errors.push(FieldError::required(
                "spec.selector",
                "must select at least one label: an empty selector would adopt every VMI in the namespace",
            ));
        } else {
            let labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !selector_matches(&spec.selector, &labels) {
                errors.push(FieldError::new(
                    "spec.selector",
                    "selector does not match labels.",
                ));
            }
        }
    }
    errors.extend(selector_errors);
    match &spec.template.spec {
        Some(t) => errors.extend(vmi_spec(t, "spec.template.spec")),
        None => errors.push(FieldError::required(
            "spec.template.spec",
            "is required: the VMIs to create",
        )),
    }
    errors
}

/// Validates a VirtualMachineInstancePreset spec (at `spec`): a valid
/// selector, and a domain whose values are consistent. A preset may not add
/// disks or interfaces: they need volumes and networks, which live outside
/// the domain where a preset cannot supply them.
pub fn preset_spec(spec: &VirtualMachineInstancePresetSpec) -> Vec<FieldError> {
    let mut errors = label_selector(&spec.selector, "spec.selector");
    let Some(d) = &spec.domain else {
        errors.push(FieldError::required(
            "spec.domain",
            "is required: the settings the preset applies",
        ));
        return errors;
    };
    domain(d, "spec.domain", &mut errors);
    let devices = d.devices.as_ref();
    if devices.and_then(|d| d.disks.as_ref()).is_some() {
        errors.push(FieldError::forbidden(
            "spec.domain.devices.disks",
            "a preset cannot add disks: each needs a volume, which a preset cannot supply; list disks in the VMI",
        ));
    }
    if devices.and_then(|d| d.interfaces.as_ref()).is_some() {
        errors.push(FieldError::forbidden(
            "spec.domain.devices.interfaces",
            "a preset cannot add interfaces: each needs a network, which a preset cannot supply; list interfaces in the VMI",
        ));
    }
    errors
}

/// Whether a (valid) label selector matches `labels`. An invalid selector
/// matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Whether a selector has no terms (and so matches every object).
pub fn selects_everything(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// Validates a label selector as Kubernetes does: label keys and values, and
/// each expression's operator and values.
pub fn label_selector(selector: &LabelSelector, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        let field = format!("{path}.matchLabels");
        if let Err(m) = qualified_name(k) {
            errors.push(FieldError::new(&field, format!("key '{k}': {m}")));
        }
        if let Err(m) = label_value(v) {
            errors.push(FieldError::new(
                &field,
                format!("value '{v}' of '{k}': {m}"),
            ));
        }
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = qualified_name(&req.key) {
            errors.push(FieldError::new(
                format!("{field}.key"),
                format!("'{}': {m}", req.key),
            ));
        }
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(FieldError::required(
                format!("{field}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(FieldError::forbidden(
                format!("{field}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::unsupported(
                format!("{field}.operator"),
                format!(
                    "'{other}' is not a valid selector operator: use In, NotIn, Exists or DoesNotExist"
                ),
            )),
        }
        for v in values {
            if let Err(m) = label_value(v) {
                errors.push(FieldError::new(
                    format!("{field}.values"),
                    format!("'{v}': {m}"),
                ));
            }
        }
    }
    errors
}

// ---------------------------------------------------------------------------
// Domain: resources, memory, CPU, firmware, device switches

/// The domain checks a VMI and a preset share: quantities parse, memory and
/// CPU are consistent, firmware is well formed, no unsupported fields.
fn domain(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
    resources(d.resources.as_ref(), dpath, errors);
    memory(d, dpath, errors);
    if let Some(cpu) = &d.cpu {
        cpu_topology(cpu, &format!("{dpath}.cpu"), errors);
    }
    firmware(d, dpath, errors);
    device_switches(d, dpath, errors);
}

/// A quantity in bytes (or millicores), or an error naming the field.
fn quantity(q: &Quantity, millis: bool, field: &str, errors: &mut Vec<FieldError>) -> Option<i64> {
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
fn memory_is_set(d: &DomainSpec, dpath: &str, errors: &mut Vec<FieldError>) {
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
    if cpu.dedicated_cpu_placement.is_some() {
        errors.push(FieldError::unsupported(
            format!("{cpath}.dedicatedCpuPlacement"),
            unsupported::DEDICATED_CPU,
        ));
    }
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
    if f.kernel_boot.is_some() {
        errors.push(FieldError::unsupported(
            format!("{fpath}.kernelBoot"),
            unsupported::KERNEL_BOOT,
        ));
    }
}

fn is_uuid(s: &str) -> bool {
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
    let checks = [
        ("gpus", dev.gpus.is_some(), unsupported::GPUS),
        ("hostDevices", dev.host_devices.is_some(), unsupported::GPUS),
        ("watchdog", dev.watchdog.is_some(), unsupported::WATCHDOG),
        (
            "filesystems",
            dev.filesystems.is_some(),
            unsupported::FILESYSTEMS,
        ),
        ("tpm", dev.tpm.is_some(), unsupported::TPM),
    ];
    for (name, set, message) in checks {
        if set {
            errors.push(FieldError::unsupported(
                format!("{dpath}.devices.{name}"),
                message,
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Disks, interfaces and boot order

/// Disk names are unique and each has a volume; disk targets are coherent.
fn disks(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
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


/// Disk names are unique, each disk has a volume, volume names are unique.
fn disk_references(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    let volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let disks = spec.domain.devices.as_ref().and_then(|d| d.disks.as_ref());
    let mut seen = BTreeSet::new();
    for (i, disk) in disks.into_iter().flatten().enumerate() {
        let field = format!("{path}.domain.devices.disks[{i}].name");
        if !seen.insert(disk.name.as_str()) {
            errors.push(FieldError::duplicate(
                &field,
                format!("'{}' is used by more than one disk", disk.name),
            ));
        }
        if !volumes.contains(disk.name.as_str()) {
            errors.push(FieldError::not_found(
                &field,
                format!(
                    "'{}' has no volume of the same name in {path}.volumes",
                    disk.name
                ),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !seen.insert(v.name.as_str()) {
            errors.push(FieldError::duplicate(
                format!("{path}.volumes[{i}].name"),
                format!("'{}' is used by more than one volume", v.name),
            ));
        }
    }
}

/// Interface names are unique and each has a network; network names are
/// unique and each network is used by an interface.
fn interface_references(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let networks: BTreeSet<&str> = spec
        .networks
        .iter()
        .flatten()
        .map(|n| n.name.as_str())
        .collect();
    let interfaces = spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref());
    let mut seen = BTreeSet::new();
    for (i, iface) in interfaces.into_iter().flatten().enumerate() {
        let field = format!("{path}.domain.devices.interfaces[{i}].name");
        if !seen.insert(iface.name.as_str()) {
            errors.push(FieldError::duplicate(
                &field,
                format!("'{}' is used by more than one interface", iface.name),
            ));
        }
        if !networks.contains(iface.name.as_str()) {
            errors.push(FieldError::not_found(
                &field,
                format!(
                    "'{}' has no network of the same name in {path}.networks",
                    iface.name
                ),
            ));
        }
    }
    let mut seen_networks = BTreeSet::new();
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        let field = format!("{path}.networks[{i}].name");
        if !seen_networks.insert(n.name.as_str()) {
            errors.push(FieldError::duplicate(
                &field,
                format!("'{}' is used by more than one network", n.name),
            ));
        } else if !seen.contains(n.name.as_str()) {
            errors.push(FieldError::not_found(
                &field,
                format!(
                    "'{}' is not used by any interface in {path}.domain.devices.interfaces",
                    n.name
                ),
            ));
        }
    }
}

/// Interface names and networks, one binding each, a known model, a MAC
/// address, ports.
fn interfaces(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    interface_references(spec, path, errors);
    let interfaces = spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref());
    for (i, iface) in interfaces.into_iter().flatten().enumerate() {
        interface(
            iface,
            &format!("{path}.domain.devices.interfaces[{i}]"),
            errors,
        );
    }
}

fn interface(iface: &Interface, field: &str, errors: &mut Vec<FieldError>) {
    let unsupported_bindings = [
        ("sriov", iface.sriov.is_some(), unsupported::SRIOV),
        ("passt", iface.passt.is_some(), unsupported::PASST),
        ("slirp", iface.slirp.is_some(), unsupported::PASST),
        (
            "binding",
            iface.binding.is_some(),
            unsupported::BINDING_PLUGIN,
        ),
    ];
    let supported = usize::from(iface.masquerade.is_some()) + usize::from(iface.bridge.is_some());
    let mut bindings = supported;
    for (name, set, message) in unsupported_bindings {
        if set {
            bindings += 1;
            errors.push(FieldError::unsupported(format!("{field}.{name}"), message));
        }
    }
    match bindings {
        0 => errors.push(FieldError::required(
            field,
            "an interface needs a binding: set masquerade or bridge",
        )),
        1 => {}
        _ => errors.push(FieldError::new(
            field,
            "an interface sets exactly one binding: masquerade or bridge",
        )),
    }
    if let Some(model) = iface.model.as_deref()
        && !NIC_MODELS.contains(&model)
    {
        errors.push(FieldError::unsupported(
            format!("{field}.model"),
            format!(
                "'{model}' is not a supported NIC model: use one of {}",
                NIC_MODELS.join(", ")
            ),
        ));
    }
    if let Some(mac) = iface.mac_address.as_deref()
        && !is_mac(mac)
    {
        errors.push(FieldError::new(
            format!("{field}.macAddress"),
            format!("'{mac}' is not a MAC address (for example de:ad:00:00:be:af)"),
        ));
    }
    let mut seen = BTreeSet::new();
    for (j, p) in iface.ports.iter().flatten().enumerate() {
        let pfield = format!("{field}.ports[{j}]");
        if !(1..=65535).contains(&p.port) {
            errors.push(FieldError::new(
                format!("{pfield}.port"),
                format!("{} is not a port number (1 to 65535)", p.port),
            ));
        }
        if !seen.insert((p.port, p.protocol.unwrap_or(PortProtocol::Tcp) as u8)) {
            errors.push(FieldError::duplicate(
                format!("{pfield}.port"),
                format!("{} is listed more than once for the same protocol", p.port),
            ));
        }
    }
}

fn is_mac(s: &str) -> bool {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Boot orders are at least 1 and unique across disks and interfaces.
fn boot_orders(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    let devices = spec.domain.devices.as_ref();
    let disks = devices
        .and_then(|d| d.disks.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, d)| (format!("{path}.domain.devices.disks[{i}]"), d.boot_order));
    let interfaces = devices
        .and_then(|d| d.interfaces.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(i, n)| {
            (
                format!("{path}.domain.devices.interfaces[{i}]"),
                n.boot_order,
            )
        });
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for (device, order) in disks.chain(interfaces) {
        let Some(order) = order else { continue };
        let field = format!("{device}.bootOrder");
        if order == 0 {
            errors.push(FieldError::new(
                field,
                "must be at least 1 (1 boots first); leave it unset for a device that does not boot",
            ));
        } else if let Some(first) = seen.get(&order) {
            errors.push(FieldError::duplicate(
                field,
                format!("boot order {order} is already used by {first}"),
            ));
        } else {
            seen.insert(order, device);
        }
    }
}

// ---------------------------------------------------------------------------
// Volumes and networks

/// Each volume has exactly one (supported) source, and its source is well formed.
fn volumes(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        volume(v, &format!("{path}.volumes[{i}]"), errors);
    }
}

fn volume(v: &Volume, field: &str, errors: &mut Vec<FieldError>) {
    let unsupported_sources = [
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
            "cloudInitConfigDrive",
            v.cloud_init_config_drive.is_some(),
            unsupported::CONFIG_DRIVE,
        ),
        (
            "downwardAPI",
            v.downward_api.is_some(),
            unsupported::DOWNWARD_API,
        ),
        ("sysprep", v.sysprep.is_some(), unsupported::SYSPREP),
    ];
    let supported = [
        v.container_disk.is_some(),
        v.cloud_init_no_cloud.is_some(),
        v.empty_disk.is_some(),
        v.host_disk.is_some(),
    ];
    let mut sources = supported.iter().filter(|s| **s).count();
    for (name, set, message) in unsupported_sources {
        if set {
            sources += 1;
            errors.push(FieldError::unsupported(format!("{field}.{name}"), message));
        }
    }
    match sources {
        0 => errors.push(FieldError::required(
            field,
            "a volume needs a source: set one of containerDisk, cloudInitNoCloud, emptyDisk or hostDisk",
        )),
        1 => {}
        _ => errors.push(FieldError::new(
            field,
            "a volume sets exactly one source: containerDisk, cloudInitNoCloud, emptyDisk or hostDisk",
        )),
    }
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

/// Each network has exactly one (supported) source.
fn networks(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    for (i, n) in spec.networks.iter().flatten().enumerate() {
        let field = format!("{path}.networks[{i}]");
        if n.multus.is_some() {
            errors.push(FieldError::unsupported(
                format!("{field}.multus"),
                unsupported::MULTUS,
            ));
        }
        match (n.pod.is_some(), n.multus.is_some()) {
            (false, false) => errors.push(FieldError::required(
                field,
                "a network needs a source: set pod",
            )),
            (true, true) => errors.push(FieldError::new(
                field,
                "a network sets exactly one source: pod",
            )),
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Scheduling and the rest of the spec

fn scheduling(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    let checks = [
        (
            "livenessProbe",
            spec.liveness_probe.is_some(),
            unsupported::PROBES,
        ),
        (
            "readinessProbe",
            spec.readiness_probe.is_some(),
            unsupported::PROBES,
        ),
        (
            "topologySpreadConstraints",
            spec.topology_spread_constraints.is_some(),
            unsupported::TOPOLOGY_SPREAD,
        ),
        (
            "schedulerName",
            spec.scheduler_name.is_some(),
            unsupported::SCHEDULER_NAME,
        ),
        (
            "accessCredentials",
            spec.access_credentials.is_some(),
            unsupported::ACCESS_CREDENTIALS,
        ),
    ];
    for (name, set, message) in checks {
        if set {
            errors.push(FieldError::unsupported(format!("{path}.{name}"), message));
        }
    }
    if let Some(t) = spec.termination_grace_period_seconds.filter(|t| *t < 0) {
        errors.push(FieldError::new(
            format!("{path}.terminationGracePeriodSeconds"),
            format!("{t} must be greater than or equal to 0"),
        ));
    }
    for (name, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref()
            && let Err(m) = dns_label(v)
        {
            errors.push(FieldError::new(
                format!("{path}.{name}"),
                format!("'{v}': {m}"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Names

/// An RFC 1123 label: at most 63 lowercase alphanumerics or '-', starting and
/// ending with an alphanumeric.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be an RFC 1123 label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit".into())
    }
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters.
fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn name_part(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !s.is_empty()
        && s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label key: an optional DNS subdomain prefix and '/', then a name.
fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| !dns_subdomain(p)) {
        return Err("the prefix must be a DNS subdomain (for example example.com)".into());
    }
    if !name_part(name) {
        return Err("must be at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric, with an optional DNS subdomain prefix and '/'".into());
    }
    Ok(())
}

/// A label value: empty, or a name part.
fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || name_part(s) {
        Ok(())
    } else {
        Err("must be empty or at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric".into())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(yaml: &str) -> VirtualMachineInstanceSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const VALID: &str = "domain:\n  memory: {guest: 128Mi}\n  devices:\n    disks: [{name: root, bootOrder: 1}]\n    interfaces: [{name: default, masquerade: {}, bootOrder: 2}]\nvolumes: [{name: root, hostDisk: {path: /x, type: Disk}}]\nnetworks: [{name: default, pod: {}}]";

    fn fields(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_valid_spec_has_no_errors() {
        assert_eq!(vmi_spec(&spec(VALID), "spec"), vec![]);
    }

    #[test]
    fn missing_volume_and_network_name_the_field() {
        let s = spec(
            "domain: {devices: {disks: [{name: root}, {name: root}], interfaces: [{name: default, masquerade: {}}]}}",
        );
        let errs = vmi_spec_references(&s, "spec.template.spec");
        let text = join(&errs);
        assert!(
            text.contains("spec.template.spec.domain.devices.disks[0].name 'root' has no volume"),
            "{text}"
        );
        assert!(
            text.contains("disks[1].name 'root' is used by more than one disk"),
            "{text}"
        );
        assert!(
            text.contains("interfaces[0].name 'default' has no network"),
            "{text}"
        );
        assert_eq!(errs[1].reason, Reason::Duplicate);
    }

    #[test]
    fn join_caps_at_ten() {
        let errs: Vec<_> = (0..12)
            .map(|i| FieldError::new(format!("f{i}"), "bad"))
            .collect();
        let text = join(&errs);
        assert!(
            text.ends_with("f9 bad, and 2 more validation errors"),
            "{text}"
        );
        assert_eq!(more_suffix(10), "");
    }

    #[test]
    fn memory_must_be_set_and_consistent() {
        let errs = vmi_spec(&spec("domain: {}"), "spec");
        assert_eq!(fields(&errs), ["spec.domain.memory.guest"]);
        assert_eq!(errs[0].reason, Reason::Required);

        let errs = vmi_spec(
            &spec(
                "domain: {memory: {guest: 2Gi}, resources: {requests: {memory: 2Gi, cpu: '2'}, limits: {memory: 1Gi, cpu: 500m}}}",
            ),
            "spec",
        );
        assert_eq!(
            fields(&errs),
            [
                "spec.domain.resources.requests.cpu",
                "spec.domain.resources.requests.memory",
                "spec.domain.memory.guest"
            ]
        );
        assert!(
            errs[2]
                .message
                .contains("greater than spec.domain.resources.limits.memory '1Gi'")
        );

        let errs = vmi_spec(&spec("domain: {memory: {guest: lots}}"), "spec");
        assert!(errs[0].message.contains("'lots' is not a valid quantity"));
        let errs = vmi_spec(
            &spec("domain: {resources: {requests: {memory: 512k}}}"),
            "spec",
        );
        assert!(errs[0].message.contains("too small"), "{errs:?}");
        // 128M (decimal) is fine against a 128Mi limit.
        let ok = vmi_spec(
            &spec("domain: {memory: {guest: 128M}, resources: {limits: {memory: 128Mi}}}"),
            "spec",
        );
        assert_eq!(ok, vec![]);
    }

    #[test]
    fn cpu_topology_is_at_least_one() {
        let errs = vmi_spec(
            &spec("domain: {memory: {guest: 1Gi}, cpu: {cores: 0, sockets: 65, threads: 1}}"),
            "spec",
        );
        assert_eq!(
            fields(&errs),
            ["spec.domain.cpu.cores", "spec.domain.cpu.sockets"]
        );
    }

    #[test]
    fn boot_orders_are_unique_across_disks_and_interfaces() {
        let s = spec(&VALID.replace("bootOrder: 2", "bootOrder: 1"));
        let errs = vmi_spec(&s, "spec");
        assert_eq!(
            fields(&errs),
            ["spec.domain.devices.interfaces[0].bootOrder"]
        );
        assert!(
            errs[0]
                .message
                .contains("already used by spec.domain.devices.disks[0]")
        );
    }

    #[test]
    fn unsupported_fields_are_named() {
        let s = spec(
            "domain: {memory: {guest: 1Gi}, devices: {gpus: [{}], disks: [{name: d}]}}\nvolumes: [{name: d, persistentVolumeClaim: {claimName: x}}]\nlivenessProbe: {}",
        );
        let errs = vmi_spec(&s, "spec");
        assert_eq!(
            fields(&errs),
            [
                "spec.domain.devices.gpus",
                "spec.volumes[0].persistentVolumeClaim",
                "spec.livenessProbe"
            ]
        );
        assert!(errs.iter().all(|e| e.reason == Reason::NotSupported));
    }

    #[test]
    fn unsupported_messages_are_the_crds_messages() {
        let crds = serde_json::to_string(&crate::crds()).unwrap();
        for m in unsupported::ALL {
            assert!(crds.contains(m), "not in the CRDs: {m}");
        }
    }

    #[test]
    fn networks_need_interfaces() {
        let s = spec("domain: {memory: {guest: 1Gi}}\nnetworks: [{name: default, pod: {}}]");
        let errs = vmi_spec(&s, "spec");
        assert_eq!(fields(&errs), ["spec.networks[0].name"]);
    }

    #[test]
    fn vm_running_and_run_strategy_are_exclusive() {
        let vm: VirtualMachineSpec = serde_yaml::from_str(&format!(
            "running: true\nrunStrategy: Always\ntemplate:\n  spec:\n{}",
            VALID
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ))
        .unwrap();
        let errs = vm_spec(&vm);
        assert_eq!(fields(&errs), ["spec.running"]);
        assert!(errs[0].message.contains("mutually exclusive"));
    }

    #[test]
    fn vmirs_selector_must_match_template_labels() {
        let rs = |sel: &str| -> VirtualMachineInstanceReplicaSetSpec {
            serde_yaml::from_str(&format!(
                "replicas: -1\nselector: {sel}\ntemplate:\n  metadata: {{labels: {{app: a}}}}\n  spec: {{domain: {{memory: {{guest: 1Gi}}}}}}\n"
            ))
            .unwrap()
        };
        let errs = vmirs_spec(&rs("{matchLabels: {app: b}}"));
        assert_eq!(fields(&errs), ["spec.replicas", "spec.selector"]);
        assert_eq!(errs[1].message, "selector does not match labels.");
        let errs = vmirs_spec(&rs(
            "{matchExpressions: [{key: app, operator: In, values: [a, b]}]}",
        ));
        assert_eq!(fields(&errs), ["spec.replicas"]);
        let errs = vmirs_spec(&rs("{}"));
        assert!(errs[1].message.contains("empty selector"), "{errs:?}");
    }

    #[test]
    fn label_selectors_are_checked_like_kubernetes() {
        let sel: LabelSelector = serde_yaml::from_str(
            "matchLabels: {'bad key!': x, ok: 'bad value!'}\nmatchExpressions: [{key: a, operator: In}, {key: b, operator: Exists, values: [x]}, {key: c, operator: Like, values: [x]}]",
        )
        .unwrap();
        let errs = label_selector(&sel, "spec.selector");
        assert_eq!(
            fields(&errs),
            [
                "spec.selector.matchLabels",
                "spec.selector.matchLabels",
                "spec.selector.matchExpressions[0].values",
                "spec.selector.matchExpressions[1].values",
                "spec.selector.matchExpressions[2].operator"
            ]
        );
        assert!(qualified_name("kubevirt.io/size").is_ok());
        assert!(qualified_name("Kubevirt.io/size").is_err());
        assert!(label_value("").is_ok());
    }

    #[test]
    fn presets_are_checked_without_requiring_memory() {
        let p: VirtualMachineInstancePresetSpec =
            serde_yaml::from_str("selector: {matchLabels: {a: b}}\ndomain: {cpu: {cores: 1}}")
                .unwrap();
        assert_eq!(preset_spec(&p), vec![]);
        let p: VirtualMachineInstancePresetSpec = serde_yaml::from_str(
            "selector: {}\ndomain: {cpu: {cores: 0}, memory: {guest: x}, devices: {disks: [{name: a}]}}",
        )
        .unwrap();
        assert_eq!(
            fields(&preset_spec(&p)),
            [
                "spec.domain.memory.guest",
                "spec.domain.cpu.cores",
                "spec.domain.devices.disks"
            ]
        );
    }

    #[test]
    fn names_and_macs() {
        assert!(is_uuid("6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"));
        assert!(!is_uuid("6a1f0c2e-3b4d-4e5f-8a9b"));
        assert!(is_mac("de:ad:00:00:be:af") && is_mac("DE-AD-00-00-BE-AF"));
        assert!(!is_mac("de:ad:00:00:be"));
        assert!(dns_label("vm-1").is_ok() && dns_label("Vm").is_err() && dns_label("-a").is_err());
    }
}
