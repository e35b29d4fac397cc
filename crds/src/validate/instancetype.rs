//! Checks on the four `instancetype.kubevirt.io/v1beta1` kinds, for their
//! validating webhooks. The cluster kinds have the same spec as the namespaced
//! ones and are checked by the same functions.
//!
//! KubeVirt's admitters check, on top of the schema (`cpu.guest` and
//! `memory.guest` required): `memory.overcommitPercent` within 0–100 and not
//! with `memory.hugepages`; a known `preferredCPUTopology`; for spread, a known
//! `spreadOptions.across` and a ratio of 2 when spreading across cores and
//! threads. Their messages are kept. ironvirt adds what the VM controller
//! would otherwise only find out when it expands a VM: quantities that parse,
//! memory the guest can boot with, known I/O thread policies, buses and NIC
//! models, well-formed node selectors, annotation keys and subdomains.
//!
//! Two layers, as the webhook meets the object: [`instancetype_values`] and
//! [`preference_values`] read the raw JSON for values the typed spec cannot
//! hold (an unknown enum value, a negative count), so that they are reported
//! with their path rather than as an unreadable object; [`instancetype_spec`]
//! and [`preference_spec`] check the typed spec. The `*_warnings` functions
//! give the AdmissionReview warnings (`<field path>: <message>`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use super::FieldError;
use super::domain::{MIN_MEMORY_BYTES, quantity};
use super::names::{dns_label, label_value, qualified_name};
use super::network::NIC_MODELS;
use crate::instancetype::{
    PreferredCpuTopology, SpreadAcross, VirtualMachineInstancetypeSpec,
    VirtualMachinePreferenceSpec,
};

/// The most vCPUs an instancetype gives (the CRD schema's maximum, and a
/// VMI's most cores).
pub const MAX_GUEST_CPUS: i64 = 512;
/// The most sockets `cpu.maxSockets` may name (the CRD schema's maximum).
pub const MAX_SOCKETS: i64 = 64;

/// `preferredCPUTopology`'s values, current spellings first.
pub const CPU_TOPOLOGIES: [&str; 10] = [
    "sockets",
    "cores",
    "threads",
    "spread",
    "any",
    "preferSockets",
    "preferCores",
    "preferThreads",
    "preferSpread",
    "preferAny",
];
/// `spreadOptions.across`'s values.
pub const SPREAD_ACROSS: [&str; 3] = ["SocketsCores", "SocketsCoresThreads", "CoresThreads"];
/// The disk buses a preference may prefer.
pub const DISK_BUSES: [&str; 4] = ["virtio", "sata", "scsi", "usb"];
/// An instancetype's `ioThreadsPolicy` values.
pub const IO_THREADS_POLICIES: [&str; 3] = ["shared", "auto", "supplementalPool"];

/// KubeVirt's message for a ratio other than 2 when spreading across cores and threads.
pub const CORES_THREADS_RATIO: &str =
    "only a ratio of 2 (1 core 2 threads) is allowed when spreading vCPUs over cores and threads";
/// Warning: `spreadOptions` without a spread topology.
pub const SPREAD_OPTIONS_UNUSED: &str =
    "has no effect: spreadOptions apply only when preferredCPUTopology is spread";
/// Warning prefix: instancetype fields for which ironvirt refuses the VMIs of
/// the VMs that use it.
pub const REFUSED_ON_VMI: &str = "VMs that use this instancetype cannot start in ironvirt";

// ---------------------------------------------------------------------------
// Raw values

/// The integer at `pointer` in `spec`, when it is one (`Err` with the JSON
/// value when it is present but not an integer).
fn int_at<'a>(spec: &'a Value, pointer: &str) -> Option<Result<i64, &'a Value>> {
    let v = spec.pointer(pointer).filter(|v| !v.is_null())?;
    Some(v.as_i64().ok_or(v))
}

/// `pointer` (under `path`) holds an integer within `min..=max` when set.
fn int_in_range(
    spec: &Value,
    path: &str,
    pointer: &str,
    (min, max): (i64, Option<i64>),
    errors: &mut Vec<FieldError>,
) {
    let field = format!("{path}{}", pointer.replace('/', "."));
    match int_at(spec, pointer) {
        None => {}
        Some(Err(v)) => errors.push(FieldError::new(field, format!("{v} is not an integer"))),
        Some(Ok(n)) if n < min => errors.push(FieldError::new(
            field,
            format!("{n} must be greater than or equal to {min}"),
        )),
        Some(Ok(n)) if max.is_some_and(|max| n > max) => errors.push(FieldError::new(
            field,
            format!(
                "{n} must be less than or equal to {}",
                max.unwrap_or_default()
            ),
        )),
        Some(Ok(_)) => {}
    }
}

/// `pointer` (under `path`) holds one of `known` when set; `message` says
/// what is wrong with another value.
fn one_of(
    spec: &Value,
    path: &str,
    pointer: &str,
    known: &[&str],
    message: impl Fn(&str) -> String,
    errors: &mut Vec<FieldError>,
) {
    let Some(v) = spec.pointer(pointer).filter(|v| !v.is_null()) else {
        return;
    };
    let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    if v.as_str().is_none_or(|s| !known.contains(&s)) {
        errors.push(FieldError::new(
            format!("{path}{}", pointer.replace('/', ".")),
            message(&text),
        ));
    }
}

/// An instancetype spec's values that its typed form cannot hold: vCPU and
/// socket counts out of range.
pub fn instancetype_values(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    int_in_range(
        spec,
        path,
        "/cpu/guest",
        (1, Some(MAX_GUEST_CPUS)),
        &mut errors,
    );
    int_in_range(
        spec,
        path,
        "/cpu/maxSockets",
        (1, Some(MAX_SOCKETS)),
        &mut errors,
    );
    int_in_range(
        spec,
        path,
        "/memory/overcommitPercent",
        (i64::from(i32::MIN), Some(i64::from(i32::MAX))),
        &mut errors,
    );
    errors
}

/// A preference spec's values that its typed form cannot hold: unknown
/// topologies, spreads and buses, negative counts.
pub fn preference_values(spec: &Value, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    one_of(
        spec,
        path,
        "/cpu/preferredCPUTopology",
        &CPU_TOPOLOGIES,
        |v| format!("unknown preferredCPUTopology {v}: use sockets, cores, threads, spread or any"),
        &mut errors,
    );
    one_of(
        spec,
        path,
        "/cpu/spreadOptions/across",
        &SPREAD_ACROSS,
        |v| {
            format!(
                "across {v} is not supported: use {}",
                SPREAD_ACROSS.join(", ")
            )
        },
        &mut errors,
    );
    for bus in ["preferredDiskBus", "preferredCdromBus", "preferredLunBus"] {
        one_of(
            spec,
            path,
            &format!("/devices/{bus}"),
            &DISK_BUSES,
            |v| format!("'{v}' is not a disk bus: use {}", DISK_BUSES.join(", ")),
            &mut errors,
        );
    }
    int_in_range(
        spec,
        path,
        "/cpu/spreadOptions/ratio",
        (1, None),
        &mut errors,
    );
    // 0 is KubeVirt's unset (the default ratio of 2).
    int_in_range(
        spec,
        path,
        "/preferSpreadSocketToCoreRatio",
        (0, None),
        &mut errors,
    );
    int_in_range(
        spec,
        path,
        "/requirements/cpu/guest",
        (1, Some(MAX_GUEST_CPUS)),
        &mut errors,
    );
    errors
}

// ---------------------------------------------------------------------------
// Typed specs

/// Validates an instancetype's spec at `path`: the guest's memory, memory
/// overcommit (0–100, not with hugepages), the I/O thread policy, the node
/// selector and annotations.
pub fn instancetype_spec(spec: &VirtualMachineInstancetypeSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mpath = format!("{path}.memory");
    let guest = guest_memory(&spec.memory.guest, &format!("{mpath}.guest"), &mut errors);
    if let Some(max) = &spec.memory.max_guest {
        let field = format!("{mpath}.maxGuest");
        if let (Some(m), Some(g)) = (quantity(max, false, &field, &mut errors), guest)
            && m < g
        {
            errors.push(FieldError::new(
                field,
                format!(
                    "'{}' must be greater than or equal to {mpath}.guest '{}'",
                    max.0, spec.memory.guest.0
                ),
            ));
        }
    }
    if let Some(p) = spec.memory.overcommit_percent {
        let field = format!("{mpath}.overcommitPercent");
        if !(0..=100).contains(&p) {
            errors.push(FieldError::new(
                &field,
                format!("{field} '{p}': must be in range between 0 and 100."),
            ));
        }
        if p != 0 && spec.memory.hugepages.is_some() {
            errors.push(FieldError::new(
                &field,
                format!("{field} and {mpath}.hugepages should not be requested together."),
            ));
        }
    }
    if let Some(policy) = spec.io_threads_policy.as_deref()
        && !IO_THREADS_POLICIES.contains(&policy)
    {
        errors.push(FieldError::unsupported(
            format!("{path}.ioThreadsPolicy"),
            format!(
                "unknown ioThreadsPolicy '{policy}': use {}",
                IO_THREADS_POLICIES.join(", ")
            ),
        ));
    }
    if let Some(selector) = &spec.node_selector {
        labels(selector, &format!("{path}.nodeSelector"), &mut errors);
    }
    if let Some(a) = &spec.annotations {
        annotation_keys(a, &format!("{path}.annotations"), &mut errors);
    }
    errors
}

/// Validates a preference's spec at `path`: spread options (KubeVirt's
/// cores-and-threads ratio), the NIC model, subdomain, grace period,
/// requirements and annotations.
pub fn preference_spec(spec: &VirtualMachinePreferenceSpec, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let cpu = spec.cpu.as_ref();
    let spread = cpu
        .and_then(|c| c.preferred_cpu_topology)
        .is_some_and(|t| t.normalized() == PreferredCpuTopology::Spread);
    if let Some(options) = cpu.and_then(|c| c.spread_options.as_ref())
        && spread
        && options.across == Some(SpreadAcross::CoresThreads)
    {
        // The ratio is spreadOptions.ratio, else preferSpreadSocketToCoreRatio
        // (0 is unset), else 2.
        let (ratio, field) = match (options.ratio, spec.prefer_spread_socket_to_core_ratio) {
            (Some(r), _) => (r, format!("{path}.cpu.spreadOptions.ratio")),
            (None, Some(r)) if r > 0 => (r, format!("{path}.preferSpreadSocketToCoreRatio")),
            _ => (2, String::new()),
        };
        if ratio != 2 {
            errors.push(FieldError::new(field, CORES_THREADS_RATIO));
        }
    }
    if let Some(model) = spec
        .devices
        .as_ref()
        .and_then(|d| d.preferred_interface_model.as_deref())
        && !NIC_MODELS.contains(&model)
    {
        errors.push(FieldError::unsupported(
            format!("{path}.devices.preferredInterfaceModel"),
            format!(
                "'{model}' is not a supported NIC model: use one of {}",
                NIC_MODELS.join(", ")
            ),
        ));
    }
    if let Some(sub) = spec.preferred_subdomain.as_deref()
        && let Err(e) = dns_label(sub)
    {
        errors.push(FieldError::new(
            format!("{path}.preferredSubdomain"),
            format!("'{sub}' {e}"),
        ));
    }
    if let Some(s) = spec
        .preferred_termination_grace_period_seconds
        .filter(|s| *s < 0)
    {
        errors.push(FieldError::new(
            format!("{path}.preferredTerminationGracePeriodSeconds"),
            format!("{s} must be greater than or equal to 0"),
        ));
    }
    if let Some(m) = spec.requirements.as_ref().and_then(|r| r.memory.as_ref()) {
        guest_memory(
            &m.guest,
            &format!("{path}.requirements.memory.guest"),
            &mut errors,
        );
    }
    if let Some(a) = &spec.annotations {
        annotation_keys(a, &format!("{path}.annotations"), &mut errors);
    }
    errors
}

/// A guest memory size at `field`: a quantity of at least 1Mi. Its bytes.
fn guest_memory(q: &Quantity, field: &str, errors: &mut Vec<FieldError>) -> Option<i64> {
    let bytes = quantity(q, false, field, errors)?;
    if bytes < MIN_MEMORY_BYTES {
        errors.push(FieldError::new(
            field,
            format!("'{}' is too small: the guest needs at least 1Mi", q.0),
        ));
        return None;
    }
    Some(bytes)
}

/// Label keys and values (a node selector).
fn labels(map: &BTreeMap<String, String>, path: &str, errors: &mut Vec<FieldError>) {
    for (k, v) in map {
        if let Err(e) = qualified_name(k) {
            errors.push(FieldError::new(
                format!("{path}.{k}"),
                format!("'{k}' is not a valid label key: it {e}"),
            ));
        } else if let Err(e) = label_value(v) {
            errors.push(FieldError::new(
                format!("{path}.{k}"),
                format!("'{v}' is not a valid label value: it {e}"),
            ));
        }
    }
}

/// Annotation keys (qualified names).
fn annotation_keys(map: &BTreeMap<String, String>, path: &str, errors: &mut Vec<FieldError>) {
    for k in map.keys() {
        if let Err(e) = qualified_name(k) {
            errors.push(FieldError::new(
                format!("{path}.{k}"),
                format!("'{k}' is not a valid annotation key: it {e}"),
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Warnings

/// An instancetype's warnings: the fields that make ironvirt refuse the VMIs
/// of the VMs that use it (KubeVirt accepts the instancetype, and so does
/// ironvirt, so that KubeVirt's bundles install).
pub fn instancetype_warnings(spec: &VirtualMachineInstancetypeSpec, path: &str) -> Vec<String> {
    use super::unsupported as u;
    let set = [
        (
            "cpu.dedicatedCpuPlacement",
            spec.cpu.dedicated_cpu_placement == Some(true),
            u::DEDICATED_CPU,
        ),
        ("cpu.numa", spec.cpu.numa.is_some(), u::NUMA),
        ("cpu.realtime", spec.cpu.realtime.is_some(), u::REALTIME),
        (
            "memory.hugepages",
            spec.memory.hugepages.is_some(),
            u::HUGEPAGES,
        ),
        ("gpus", spec.gpus.is_some(), u::GPUS),
        ("hostDevices", spec.host_devices.is_some(), u::GPUS),
        (
            "launchSecurity",
            spec.launch_security.is_some(),
            u::LAUNCH_SECURITY,
        ),
        (
            "schedulerName",
            spec.scheduler_name.is_some(),
            u::SCHEDULER_NAME,
        ),
    ];
    set.into_iter()
        .filter(|(_, on, _)| *on)
        .map(|(field, _, why)| format!("{path}.{field}: {REFUSED_ON_VMI}: {why}"))
        .collect()
}

/// A preference's warnings: a deprecated `preferredCPUTopology` spelling (as
/// KubeVirt warns), and spreadOptions without spread.
pub fn preference_warnings(spec: &VirtualMachinePreferenceSpec, path: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    let Some(cpu) = &spec.cpu else {
        return warnings;
    };
    if let Some(t) = cpu.preferred_cpu_topology
        && t.normalized() != t
    {
        warnings.push(format!(
            "PreferredCPUTopology {} is deprecated for removal in a future release, please use {} instead",
            topology_name(t),
            topology_name(t.normalized())
        ));
    }
    let spread = cpu
        .preferred_cpu_topology
        .is_some_and(|t| t.normalized() == PreferredCpuTopology::Spread);
    if cpu.spread_options.is_some() && !spread {
        warnings.push(format!("{path}.cpu.spreadOptions: {SPREAD_OPTIONS_UNUSED}"));
    }
    warnings
}

/// A topology as written.
fn topology_name(t: PreferredCpuTopology) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn it(v: Value) -> VirtualMachineInstancetypeSpec {
        serde_json::from_value(v).unwrap()
    }

    fn pref(v: Value) -> VirtualMachinePreferenceSpec {
        serde_json::from_value(v).unwrap()
    }

    fn causes(errors: &[FieldError]) -> Vec<(&str, &str)> {
        errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect()
    }

    #[test]
    fn a_plain_instancetype_and_preference_pass() {
        let spec = json!({"cpu": {"guest": 2}, "memory": {"guest": "2Gi", "overcommitPercent": 10},
            "ioThreadsPolicy": "auto", "nodeSelector": {"kubernetes.io/arch": "amd64"}});
        assert_eq!(instancetype_values(&spec, "spec"), vec![]);
        assert_eq!(instancetype_spec(&it(spec), "spec"), vec![]);
        let spec = json!({"cpu": {"preferredCPUTopology": "spread",
            "spreadOptions": {"across": "CoresThreads", "ratio": 2}},
            "devices": {"preferredDiskBus": "virtio", "preferredInterfaceModel": "e1000e"},
            "preferredSubdomain": "vms", "requirements": {"cpu": {"guest": 1}, "memory": {"guest": "512Mi"}}});
        assert_eq!(preference_values(&spec, "spec"), vec![]);
        assert_eq!(preference_spec(&pref(spec.clone()), "spec"), vec![]);
        assert!(preference_warnings(&pref(spec), "spec").is_empty());
    }

    #[test]
    fn instancetype_counts_out_of_range_name_their_fields() {
        let spec = json!({"cpu": {"guest": 0, "maxSockets": 65}, "memory": {"guest": "1Gi"}});
        assert_eq!(
            causes(&instancetype_values(&spec, "spec")),
            [
                ("spec.cpu.guest", "0 must be greater than or equal to 1"),
                ("spec.cpu.maxSockets", "65 must be less than or equal to 64"),
            ]
        );
        let spec = json!({"cpu": {"guest": "two"}, "memory": {"guest": "1Gi"}});
        assert_eq!(
            causes(&instancetype_values(&spec, "spec")),
            [("spec.cpu.guest", "\"two\" is not an integer")]
        );
    }

    #[test]
    fn instancetype_memory_is_checked_as_kubevirt_does() {
        let errors = instancetype_spec(
            &it(
                json!({"cpu": {"guest": 1}, "memory": {"guest": "1Gi", "overcommitPercent": 150,
                "hugepages": {"pageSize": "2Mi"}}}),
            ),
            "spec",
        );
        assert_eq!(
            causes(&errors),
            [
                (
                    "spec.memory.overcommitPercent",
                    "spec.memory.overcommitPercent '150': must be in range between 0 and 100."
                ),
                (
                    "spec.memory.overcommitPercent",
                    "spec.memory.overcommitPercent and spec.memory.hugepages should not be requested together."
                ),
            ]
        );
        // overcommitPercent 0 goes with hugepages.
        let ok = it(
            json!({"cpu": {"guest": 1}, "memory": {"guest": "1Gi", "overcommitPercent": 0, "hugepages": {}}}),
        );
        assert_eq!(instancetype_spec(&ok, "spec"), vec![]);
        let errors = instancetype_spec(
            &it(json!({"cpu": {"guest": 1}, "memory": {"guest": "0", "maxGuest": "lots"}})),
            "spec",
        );
        assert_eq!(
            causes(&errors),
            [
                (
                    "spec.memory.guest",
                    "'0' is too small: the guest needs at least 1Mi"
                ),
                (
                    "spec.memory.maxGuest",
                    "'lots' is not a valid quantity (for example 128Mi, 1G or 500m)"
                ),
            ]
        );
        let errors = instancetype_spec(
            &it(json!({"cpu": {"guest": 1}, "memory": {"guest": "2Gi", "maxGuest": "1Gi"}})),
            "spec",
        );
        assert_eq!(
            causes(&errors),
            [(
                "spec.memory.maxGuest",
                "'1Gi' must be greater than or equal to spec.memory.guest '2Gi'"
            )]
        );
    }

    #[test]
    fn instancetype_policy_selector_and_annotations() {
        let errors = instancetype_spec(
            &it(
                json!({"cpu": {"guest": 1}, "memory": {"guest": "1Gi"}, "ioThreadsPolicy": "many",
                "nodeSelector": {"-bad": "x", "ok": "not ok!"}, "annotations": {"a/b/c": "x"}}),
            ),
            "spec",
        );
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.ioThreadsPolicy",
                "spec.nodeSelector.-bad",
                "spec.nodeSelector.ok",
                "spec.annotations.a/b/c"
            ]
        );
        assert!(errors[0].message.contains("unknown ioThreadsPolicy 'many'"));
    }

    #[test]
    fn preference_values_unknown_to_kubevirt_are_refused() {
        let spec = json!({"cpu": {"preferredCPUTopology": "diagonal",
            "spreadOptions": {"across": "Sockets", "ratio": 0}},
            "devices": {"preferredDiskBus": "ide"}, "preferSpreadSocketToCoreRatio": -1,
            "requirements": {"cpu": {"guest": 0}}});
        let errors = preference_values(&spec, "spec");
        assert_eq!(
            causes(&errors),
            [
                (
                    "spec.cpu.preferredCPUTopology",
                    "unknown preferredCPUTopology diagonal: use sockets, cores, threads, spread or any"
                ),
                (
                    "spec.cpu.spreadOptions.across",
                    "across Sockets is not supported: use SocketsCores, SocketsCoresThreads, CoresThreads"
                ),
                (
                    "spec.devices.preferredDiskBus",
                    "'ide' is not a disk bus: use virtio, sata, scsi, usb"
                ),
                (
                    "spec.cpu.spreadOptions.ratio",
                    "0 must be greater than or equal to 1"
                ),
                (
                    "spec.preferSpreadSocketToCoreRatio",
                    "-1 must be greater than or equal to 0"
                ),
                (
                    "spec.requirements.cpu.guest",
                    "0 must be greater than or equal to 1"
                ),
            ]
        );
    }

    #[test]
    fn spreading_across_cores_and_threads_needs_a_ratio_of_two() {
        let bad = pref(json!({"cpu": {"preferredCPUTopology": "spread",
            "spreadOptions": {"across": "CoresThreads", "ratio": 4}}}));
        assert_eq!(
            causes(&preference_spec(&bad, "spec")),
            [("spec.cpu.spreadOptions.ratio", CORES_THREADS_RATIO)]
        );
        // The ratio through preferSpreadSocketToCoreRatio, and the deprecated spelling.
        let bad = pref(json!({"preferSpreadSocketToCoreRatio": 3,
            "cpu": {"preferredCPUTopology": "preferSpread", "spreadOptions": {"across": "CoresThreads"}}}));
        assert_eq!(
            causes(&preference_spec(&bad, "spec")),
            [("spec.preferSpreadSocketToCoreRatio", CORES_THREADS_RATIO)]
        );
        // Other spreads take any ratio; without spread the options do nothing.
        for ok in [
            json!({"cpu": {"preferredCPUTopology": "spread", "spreadOptions": {"across": "SocketsCores", "ratio": 4}}}),
            json!({"cpu": {"preferredCPUTopology": "spread", "spreadOptions": {"across": "CoresThreads"}}}),
            json!({"cpu": {"preferredCPUTopology": "cores", "spreadOptions": {"across": "CoresThreads", "ratio": 3}}}),
        ] {
            assert_eq!(preference_spec(&pref(ok.clone()), "spec"), vec![], "{ok}");
        }
    }

    #[test]
    fn preference_fields_name_their_paths() {
        let errors = preference_spec(
            &pref(json!({"devices": {"preferredInterfaceModel": "vmxnet3"},
                "preferredSubdomain": "Not_A_Label", "preferredTerminationGracePeriodSeconds": -5,
                "requirements": {"memory": {"guest": "1Ki"}}})),
            "spec",
        );
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.devices.preferredInterfaceModel",
                "spec.preferredSubdomain",
                "spec.preferredTerminationGracePeriodSeconds",
                "spec.requirements.memory.guest"
            ]
        );
    }

    #[test]
    fn warnings_for_deprecated_topologies_unused_spread_and_refused_fields() {
        let w = preference_warnings(
            &pref(
                json!({"cpu": {"preferredCPUTopology": "preferCores", "spreadOptions": {"ratio": 2}}}),
            ),
            "spec",
        );
        assert_eq!(
            w,
            [
                "PreferredCPUTopology preferCores is deprecated for removal in a future release, please use cores instead".to_owned(),
                format!("spec.cpu.spreadOptions: {SPREAD_OPTIONS_UNUSED}"),
            ]
        );
        let w = instancetype_warnings(
            &it(
                json!({"cpu": {"guest": 2, "dedicatedCpuPlacement": true}, "memory": {"guest": "1Gi", "hugepages": {"pageSize": "2Mi"}}}),
            ),
            "spec",
        );
        assert_eq!(
            w,
            [
                format!(
                    "spec.cpu.dedicatedCpuPlacement: {REFUSED_ON_VMI}: {}",
                    super::super::unsupported::DEDICATED_CPU
                ),
                format!(
                    "spec.memory.hugepages: {REFUSED_ON_VMI}: {}",
                    super::super::unsupported::HUGEPAGES
                ),
            ]
        );
        assert!(
            instancetype_warnings(
                &it(json!({"cpu": {"guest": 2, "dedicatedCpuPlacement": false}, "memory": {"guest": "1Gi"}})),
                "spec"
            )
            .is_empty()
        );
    }
}
