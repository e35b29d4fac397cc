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
//!
//! This file holds [`FieldError`] and the entry points, one per kind; each
//! area of the spec has its own file, in the order [`vmi_spec`] checks them:
//! `domain` (resources, memory, CPU, firmware, device switches), `references`
//! (disks ↔ volumes, interfaces ↔ networks, boot orders), `disks` (disk targets
//! and volume sources), `network` (interfaces and networks), `scheduling`
//! (the rest of the spec), then `selector` (label selectors), `names` (DNS
//! labels, label keys and values) and [`unsupported`] (the messages).
//! [`warnings`] lists the fields accepted without effect, for the webhooks'
//! AdmissionReview warnings.
//! [`instancetype`] checks the four `instancetype.kubevirt.io` kinds.
//! [`hostdisk`] holds the cluster's [`VolumePolicy`] (hostDisk on or off and
//! confined to `<root>/<namespace>/`, capacity limits): [`check_volumes`]
//! depends on the namespace and the cluster's settings, so it is not part of
//! [`vmi_spec`]; the webhooks and the handler call it beside it.

mod disks;
mod domain;
pub mod hostdisk;
pub mod instancetype;
pub mod migration;
mod names;
mod network;
pub mod pool;
mod references;
mod scheduling;
mod selector;
pub mod unsupported;
pub mod warnings;

#[cfg(test)]
mod tests;

pub use hostdisk::{
    HostDiskError, HostDiskPolicy, ResolvedHostDisk, VolumePolicy, check_vm_volumes,
    check_vmirs_volumes, check_volumes, resolve_beneath,
};
pub use migration::{migration_spec, migration_target, migration_update};
pub use names::{dns_label, dns_subdomain};
pub use network::NIC_MODELS;
pub use pool::pool_spec;
pub use selector::{label_selector, selector_matches, selects_everything};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::vmi::VirtualMachineInstanceSpec;
use crate::{
    VirtualMachineInstancePresetSpec, VirtualMachineInstanceReplicaSetSpec, VirtualMachineSpec,
};
use disks::{disks, volumes};
use domain::{domain, memory_is_set};
use network::{interfaces, networks};
use references::{boot_orders, disk_references, interface_references};
use scheduling::scheduling;

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

/// Reports as not supported each of `fields` (its name under `path`, whether
/// it is set, the message) that is set. Returns how many are set.
pub(crate) fn unsupported_fields(
    path: &str,
    fields: &[(&str, bool, &str)],
    errors: &mut Vec<FieldError>,
) -> usize {
    let mut set = 0;
    for &(name, is_set, message) in fields {
        if is_set {
            set += 1;
            errors.push(FieldError::unsupported(format!("{path}.{name}"), message));
        }
    }
    set
}

/// Exactly one of a choice (a volume's source, an interface's binding) is set
/// at `field`, of which `count` are: `none` says what to set when none is,
/// `many` that only one may be.
fn exactly_one(count: usize, field: &str, none: &str, many: &str, errors: &mut Vec<FieldError>) {
    match count {
        0 => errors.push(FieldError::required(field, none)),
        1 => {}
        _ => errors.push(FieldError::new(field, many)),
    }
}

/// The template a VM or a VMI ReplicaSet runs (at `spec.template.spec`),
/// validated as a VMI spec; `what` says what it is for when it is missing.
fn template(spec: Option<&VirtualMachineInstanceSpec>, what: &str, errors: &mut Vec<FieldError>) {
    match spec {
        Some(t) => errors.extend(vmi_spec(t, "spec.template.spec")),
        None => errors.push(FieldError::required(
            "spec.template.spec",
            format!("is required: {what}"),
        )),
    }
}

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
    errors.extend(vm_matchers(spec));
    unsupported_fields(
        "spec",
        &[(
            "dataVolumeTemplates",
            spec.data_volume_templates.is_some(),
            unsupported::DATA_VOLUME_TEMPLATES,
        )],
        &mut errors,
    );
    match (&spec.instancetype, spec.template.spec.as_ref()) {
        // An instancetype inferred under policy Ignore may be dropped: the
        // template must then run alone (the controller removes its memory
        // when an instancetype is found, as KubeVirt does).
        (Some(m), Some(t)) if !infers_or_may_drop(m) => {
            // The instancetype owns vCPUs and memory: the template must leave
            // them unset, and is checked as the VMI it expands to would be.
            errors.extend(crate::expand::owned_field_conflicts(
                t,
                "spec.template.spec",
            ));
            let mut expanded = t.clone();
            expanded
                .domain
                .memory
                .get_or_insert_with(Default::default)
                .guest
                .get_or_insert_with(|| {
                    k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into())
                });
            errors.extend(
                vmi_spec(&expanded, "spec.template.spec")
                    .into_iter()
                    .filter(|e| !e.field.starts_with("spec.template.spec.domain.memory")),
            );
        }
        _ => template(spec.template.spec.as_ref(), "the VMI to run", &mut errors),
    }
    errors
}

/// A VM's `spec.instancetype` and `spec.preference` (see [`matcher`]); the
/// expand subresources check a posted VM's with this.
pub fn vm_matchers(spec: &VirtualMachineSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let volumes = spec
        .template
        .spec
        .as_ref()
        .and_then(|t| t.volumes.as_deref())
        .unwrap_or_default();
    for (field, m, preference) in [
        ("spec.instancetype", &spec.instancetype, false),
        ("spec.preference", &spec.preference, true),
    ] {
        if let Some(m) = m {
            matcher(m, field, preference, volumes, &mut errors);
        }
    }
    errors
}

/// Whether a matcher is inferred under `inferFromVolumeFailurePolicy: Ignore`
/// (so it may be removed and the template run alone).
fn infers_or_may_drop(m: &crate::instancetype::Matcher) -> bool {
    !m.infer_from_volume.is_empty()
        && m.infer_from_volume_failure_policy.as_deref() == Some("Ignore")
}

/// A VM's `spec.instancetype` or `spec.preference`: a name or a volume of
/// the template to infer it from (not both, as KubeVirt says), a failure
/// policy KubeVirt has, and a kind these resources have.
fn matcher(
    m: &crate::instancetype::Matcher,
    field: &str,
    preference: bool,
    volumes: &[crate::volumes::Volume],
    errors: &mut Vec<FieldError>,
) {
    let volume = &m.infer_from_volume;
    if volume.is_empty() {
        if m.name.is_empty() {
            errors.push(FieldError::required(
                format!("{field}.name"),
                "is required: the name of the object to use (or inferFromVolume, a volume to infer it from)",
            ));
        }
    } else {
        for (set, key) in [(!m.name.is_empty(), "name"), (!m.kind.is_empty(), "kind")] {
            if set {
                errors.push(FieldError::new(
                    format!("{field}.{key}"),
                    format!("must not be set with inferFromVolume: the {key} is inferred from volume {volume}"),
                ));
            }
        }
        if !volumes.iter().any(|v| &v.name == volume) {
            errors.push(FieldError::new(
                format!("{field}.inferFromVolume"),
                format!("volume {volume} is not in spec.template.spec.volumes: name the volume to infer from"),
            ));
        }
    }
    if let Some(p) = m
        .infer_from_volume_failure_policy
        .as_deref()
        .filter(|p| !matches!(*p, "Reject" | "Ignore"))
    {
        errors.push(FieldError::new(
            format!("{field}.inferFromVolumeFailurePolicy"),
            format!("'{p}' is not a policy: use Reject (the default) or Ignore"),
        ));
    }
    if !crate::instancetype::is_known_kind(&m.kind, preference) {
        let kinds = if preference {
            "VirtualMachineClusterPreference (the default) or VirtualMachinePreference"
        } else {
            "VirtualMachineClusterInstancetype (the default) or VirtualMachineInstancetype"
        };
        errors.push(FieldError::new(
            format!("{field}.kind"),
            format!("'{}' is not a kind this can name: use {kinds}", m.kind),
        ));
    }
}

/// The replica count and selector of a set of `kind` objects (a VMI
/// ReplicaSet's VMIs, a pool's VMs): replicas not negative, the selector
/// valid, not empty, and matching the template's labels (`mismatch` if not).
pub(crate) fn replicas_and_selector(
    replicas: Option<i32>,
    selector: &LabelSelector,
    template_meta: Option<&ObjectMeta>,
    kind: &str,
    mismatch: &str,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(r) = replicas.filter(|r| *r < 0) {
        errors.push(FieldError::new(
            "spec.replicas",
            format!("{r} must be greater than or equal to 0"),
        ));
    }
    let selector_errors = label_selector(selector, "spec.selector");
    if selector_errors.is_empty() {
        if selects_everything(selector) {
            errors.push(FieldError::required(
                "spec.selector",
                format!(
                    "must select at least one label: an empty selector would adopt every {kind} in the namespace"
                ),
            ));
        } else {
            let labels = template_meta
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            if !selector_matches(selector, &labels) {
                errors.push(FieldError::new("spec.selector", mismatch));
            }
        }
    }
    errors.extend(selector_errors);
    errors
}

/// Validates a VirtualMachineInstanceReplicaSet spec (at `spec`): replicas,
/// the selector and that it matches the template's labels ("selector does not
/// match labels.", as KubeVirt says), and the template as a VMI spec.
pub fn vmirs_spec(spec: &VirtualMachineInstanceReplicaSetSpec) -> Vec<FieldError> {
    let mut errors = replicas_and_selector(
        spec.replicas,
        &spec.selector,
        spec.template.metadata.as_ref(),
        "VMI",
        "selector does not match labels.",
    );
    template(
        spec.template.spec.as_ref(),
        "the VMIs to create",
        &mut errors,
    );
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
