//! The VMI mutating webhook: presets, defaults and the finalizer on create.
//!
//! Works on the raw JSON the apiserver sent (mutating webhooks run before
//! schema validation, so the object may not even parse as a VMI) and answers
//! with the JSONPatch from that JSON to the mutated one: only what is added
//! changes.
//!
//! `status.phase: Pending` is not set: KubeVirt's webhook sets it, but the
//! ironvirt CRDs have a status subresource, and for those kube-apiserver
//! drops `status` from a create after the mutating webhooks ran
//! (`PrepareForCreate`). An absent phase means Pending to ironvirt's
//! components.

use serde_json::{Map, Value, json};

use super::presets::{self, CONFLICT_ANNOTATION, MatchedPreset, PresetOutcome};
use super::review::{Review, Verdict};
use super::state::{AdmissionState, labels_of};
use super::uuid::firmware_uuid;

/// The finalizer every VMI gets; removed once its node-side resources are gone.
pub use ironvirt_crds::wire::VMI_FINALIZER as FINALIZER;
/// The machine type of a VMI that sets none.
pub const DEFAULT_MACHINE_TYPE: &str = "q35";
/// The value of an applied preset's annotation.
const PRESET_ANNOTATION_VALUE: &str = "kubevirt.io/v1";

/// Who a VMI is, for the defaults that depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The VMI's namespace.
    pub namespace: String,
    /// The VMI's name; empty when the apiserver will generate it.
    pub name: String,
    /// The admission request's uid: stands in for the name when it is not
    /// known yet (generateName), so the UUID is still unique.
    pub request_uid: String,
}

impl Identity {
    fn uuid(&self, object: &Value) -> String {
        if self.name.is_empty() {
            let prefix = object
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .unwrap_or_default();
            firmware_uuid(&self.namespace, &format!("{prefix}{}", self.request_uid))
        } else {
            firmware_uuid(&self.namespace, &self.name)
        }
    }
}

/// The outcome of mutating a VMI.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutated {
    /// The VMI with presets, defaults and the finalizer.
    pub object: Value,
    /// When matching presets conflicted: why (none was applied).
    pub conflict: Option<String>,
}

/// Presets, defaults and the finalizer applied to a raw VMI. Pure.
///
/// Defaults (after the presets, which therefore win over them):
/// `machine.type: q35` when unset or empty; `firmware.uuid` from
/// [`firmware_uuid`]; a disk with no target gets `disk: {bus: virtio}`, a
/// target without a bus gets virtio (disk), sata (cdrom) or scsi (lun);
/// `memory.guest` from the memory request (else limit) and the memory request
/// from `memory.guest`; with no interfaces, no networks and
/// `autoattachPodInterface` not false, the interface `{name: default,
/// masquerade: {}}` on the network `{name: default, pod: {}}`.
pub fn mutate_vmi(object: &Value, id: &Identity, presets: &[MatchedPreset]) -> Mutated {
    let mut obj = object.clone();
    let conflict = apply_presets(&mut obj, presets);
    let uuid = id.uuid(object);
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        defaults(spec, &uuid);
    }
    if let Some(meta) = child(obj.as_object_mut(), "metadata") {
        add_finalizer(meta);
    }
    Mutated {
        object: obj,
        conflict,
    }
}

/// Merges the presets into `spec.domain` and annotates the VMI. Returns the
/// conflict message when they conflict.
fn apply_presets(obj: &mut Value, matched: &[MatchedPreset]) -> Option<String> {
    let domain = obj
        .pointer_mut("/spec/domain")
        .and_then(Value::as_object_mut)?;
    let (annotations, conflict) = match presets::apply(domain, matched)? {
        PresetOutcome::Applied(names) => (
            names
                .iter()
                .map(|n| {
                    (
                        presets::annotation_key(n),
                        PRESET_ANNOTATION_VALUE.to_owned(),
                    )
                })
                .collect::<Vec<_>>(),
            None,
        ),
        PresetOutcome::Conflict(message) => (
            vec![(CONFLICT_ANNOTATION.to_owned(), message.clone())],
            Some(message),
        ),
    };
    let meta = child(obj.as_object_mut(), "metadata");
    if let Some(a) = meta.and_then(|m| child(Some(m), "annotations")) {
        for (k, v) in annotations {
            a.insert(k, Value::String(v));
        }
    }
    conflict
}

/// The defaults of a VMI spec (see [`mutate_vmi`]).
fn defaults(spec: &mut Map<String, Value>, uuid: &str) {
    default_volume_disks(spec);
    if let Some(domain) = spec.get_mut("domain").and_then(Value::as_object_mut) {
        default_machine(domain);
        default_firmware_uuid(domain, uuid);
        default_disk_targets(domain);
        default_memory(domain);
    }
    default_pod_network(spec);
}

/// `map[key]` as an object, created when missing or null; `None` when it holds
/// something else (left for validation to report).
fn child<'a>(
    map: Option<&'a mut Map<String, Value>>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let map = map?;
    let entry = map.entry(key.to_owned()).or_insert(Value::Null);
    if entry.is_null() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut()
}

/// Whether `map[key]` is set (present and not null).
fn set(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key).is_some_and(|v| !v.is_null())
}

fn default_machine(domain: &mut Map<String, Value>) {
    if let Some(machine) = child(Some(domain), "machine") {
        let unset = machine
            .get("type")
            .is_none_or(|t| t.is_null() || t.as_str() == Some(""));
        if unset {
            machine.insert("type".into(), json!(DEFAULT_MACHINE_TYPE));
        }
    }
}

fn default_firmware_uuid(domain: &mut Map<String, Value>, uuid: &str) {
    if let Some(firmware) = child(Some(domain), "firmware") {
        let unset = firmware
            .get("uuid")
            .is_none_or(|u| u.is_null() || u.as_str() == Some(""));
        if unset {
            firmware.insert("uuid".into(), json!(uuid));
        }
    }
}

/// A disk for each volume that no disk or filesystem names, as KubeVirt
/// adds one (its target is then defaulted to a virtio disk): KubeVirt's
/// examples list volumes with `devices: {}`.
fn default_volume_disks(spec: &mut Map<String, Value>) {
    let names: Vec<String> = spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return;
    }
    let domain = spec.get_mut("domain").and_then(Value::as_object_mut);
    let Some(devices) = child(domain, "devices") else {
        return;
    };
    let named = |devices: &Map<String, Value>, key: &str| -> Vec<String> {
        devices
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    };
    let mut taken = named(devices, "disks");
    taken.extend(named(devices, "filesystems"));
    let missing: Vec<Value> = names
        .into_iter()
        .filter(|n| !taken.contains(n))
        .map(|n| json!({"name": n}))
        .collect();
    if missing.is_empty() {
        return;
    }
    let disks = devices.entry("disks").or_insert(Value::Null);
    if disks.is_null() {
        *disks = Value::Array(Vec::new());
    }
    if let Some(list) = disks.as_array_mut() {
        list.extend(missing);
    }
}

fn default_disk_targets(domain: &mut Map<String, Value>) {
    let disks = domain
        .get_mut("devices")
        .and_then(|d| d.get_mut("disks"))
        .and_then(Value::as_array_mut);
    for disk in disks.into_iter().flatten().filter_map(Value::as_object_mut) {
        if !set(disk, "disk") && !set(disk, "cdrom") && !set(disk, "lun") {
            disk.insert("disk".into(), json!({"bus": "virtio"}));
            continue;
        }
        for (target, bus) in [("disk", "virtio"), ("cdrom", "sata"), ("lun", "scsi")] {
            if let Some(t) = disk.get_mut(target).and_then(Value::as_object_mut)
                && !set(t, "bus")
            {
                t.insert("bus".into(), json!(bus));
            }
        }
    }
}

fn default_memory(domain: &mut Map<String, Value>) {
    let resource = |domain: &Map<String, Value>, list: &str| {
        domain
            .get("resources")
            .and_then(|r| r.get(list))
            .and_then(|l| l.get("memory"))
            .filter(|q| !q.is_null())
            .cloned()
    };
    let request = resource(domain, "requests");
    let guest = domain
        .get("memory")
        .and_then(|m| m.get("guest"))
        .filter(|g| !g.is_null())
        .cloned();
    let guest = match guest {
        Some(g) => Some(g),
        None => {
            let from = request.clone().or_else(|| resource(domain, "limits"));
            if let Some(g) = &from
                && let Some(memory) = child(Some(domain), "memory")
            {
                memory.insert("guest".into(), g.clone());
            }
            from
        }
    };
    if let (None, Some(g)) = (request, guest)
        && let Some(requests) = child(child(Some(domain), "resources"), "requests")
    {
        requests.insert("memory".into(), g);
    }
}

fn default_pod_network(spec: &mut Map<String, Value>) {
    let empty = |v: Option<&Value>| {
        v.is_none_or(|v| v.is_null() || v.as_array().is_some_and(Vec::is_empty))
    };
    let devices = spec.get("domain").and_then(|d| d.get("devices"));
    let autoattach = devices
        .and_then(|d| d.get("autoattachPodInterface"))
        .and_then(Value::as_bool)
        != Some(false);
    let no_interfaces = empty(devices.and_then(|d| d.get("interfaces")));
    if !(autoattach && no_interfaces && empty(spec.get("networks"))) {
        return;
    }
    let domain = spec.get_mut("domain").and_then(Value::as_object_mut);
    if let Some(devices) = child(domain, "devices") {
        devices.insert(
            "interfaces".into(),
            json!([{"name": "default", "masquerade": {}}]),
        );
        spec.insert("networks".into(), json!([{"name": "default", "pod": {}}]));
    }
}

fn add_finalizer(meta: &mut Map<String, Value>) {
    let entry = meta.entry("finalizers").or_insert(Value::Null);
    if entry.is_null() {
        *entry = json!([]);
    }
    if let Some(list) = entry.as_array_mut()
        && !list.iter().any(|f| f.as_str() == Some(FINALIZER))
    {
        list.push(json!(FINALIZER));
    }
}

/// The mutating webhook for VMIs: on create, the patch from the object sent to
/// [`mutate_vmi`]'s result; other operations pass unchanged.
pub(crate) async fn review_vmi(review: &Review, state: &AdmissionState) -> Verdict {
    if review.operation() != "CREATE" {
        return Verdict::Allow;
    }
    let Some(object) = &review.object else {
        return Verdict::Allow;
    };
    let id = Identity {
        namespace: review.namespace(),
        name: object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| review.request.name.clone()),
        request_uid: review.request.uid.clone(),
    };
    let matched = if presets::excluded(object) {
        Vec::new()
    } else {
        match state.presets_in(&id.namespace).await {
            Ok(all) => presets::matching_presets(&all, &labels_of(object)),
            Err(message) => {
                tracing::warn!(vmi.namespace = %id.namespace, vmi.name = %id.name, %message, "presets unavailable");
                return Verdict::Refuse {
                    code: 503,
                    reason: "ServiceUnavailable",
                    message,
                };
            }
        }
    };
    let mutated = mutate_vmi(object, &id, &matched);
    if let Some(conflict) = &mutated.conflict {
        tracing::warn!(vmi.namespace = %id.namespace, vmi.name = %id.name, %conflict, "presets not applied");
        // No Event on dry runs, nor for a VMI whose name the apiserver has
        // yet to generate (an Event needs it; the annotation says it all).
        if !review.request.dry_run && !id.name.is_empty() {
            state.preset_failed(&id.namespace, &id.name, conflict);
        }
    }
    let patch = json_patch::diff(object, &mutated.object);
    if patch.0.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Patch(patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            namespace: "ns".into(),
            name: "vm".into(),
            request_uid: "r".into(),
        }
    }

    fn mutate(v: Value) -> Value {
        mutate_vmi(&v, &id(), &[]).object
    }

    #[test]
    fn a_minimal_vmi_gets_every_default() {
        let out = mutate(
            json!({"metadata": {"name": "vm"}, "spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "a"}, {"name": "b", "disk": {}}, {"name": "c", "cdrom": {}}, {"name": "d", "lun": {"bus": "sata"}}]}}}}),
        );
        assert_eq!(
            out,
            json!({
                "metadata": {"name": "vm", "finalizers": [FINALIZER]},
                "spec": {
                    "domain": {
                        "memory": {"guest": "64Mi"},
                        "resources": {"requests": {"memory": "64Mi"}},
                        "machine": {"type": "q35"},
                        "firmware": {"uuid": firmware_uuid("ns", "vm")},
                        "devices": {
                            "disks": [
                                {"name": "a", "disk": {"bus": "virtio"}},
                                {"name": "b", "disk": {"bus": "virtio"}},
                                {"name": "c", "cdrom": {"bus": "sata"}},
                                {"name": "d", "lun": {"bus": "sata"}}
                            ],
                            "interfaces": [{"name": "default", "masquerade": {}}]
                        }
                    },
                    "networks": [{"name": "default", "pod": {}}]
                }
            })
        );
    }

    #[test]
    fn volumes_without_disks_get_virtio_disks() {
        let v = mutate(json!({"metadata": {"name": "vm"}, "spec": {
            "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "a", "cdrom": {}}]}},
            "volumes": [{"name": "a", "emptyDisk": {"capacity": "1Gi"}}, {"name": "b", "containerDisk": {"image": "x"}}]}}));
        assert_eq!(
            v["spec"]["domain"]["devices"]["disks"],
            json!([{"name": "a", "cdrom": {"bus": "sata"}}, {"name": "b", "disk": {"bus": "virtio"}}])
        );
        // `devices: {}`, as KubeVirt's vmi-sata example has it.
        let v = mutate(json!({"metadata": {"name": "vm"}, "spec": {
            "domain": {"memory": {"guest": "64Mi"}, "devices": {}},
            "volumes": [{"name": "c", "containerDisk": {"image": "x"}}]}}));
        assert_eq!(
            v["spec"]["domain"]["devices"]["disks"],
            json!([{"name": "c", "disk": {"bus": "virtio"}}])
        );
    }

    #[test]
    fn set_values_are_kept() {
        let v = json!({"metadata": {"name": "vm", "finalizers": [FINALIZER]}, "spec": {"domain": {
            "memory": {"guest": "64Mi"}, "resources": {"requests": {"memory": "128Mi"}},
            "machine": {"type": "pc"}, "firmware": {"uuid": "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"},
            "devices": {"autoattachPodInterface": false}}}});
        assert_eq!(mutate(v.clone()), v);
    }

    #[test]
    fn guest_memory_comes_from_the_request_then_the_limit() {
        let out = mutate(
            json!({"spec": {"domain": {"resources": {"requests": {"memory": "1G"}, "limits": {"memory": "2G"}}}}}),
        );
        assert_eq!(out["spec"]["domain"]["memory"]["guest"], "1G");
        let out = mutate(json!({"spec": {"domain": {"resources": {"limits": {"memory": "2G"}}}}}));
        assert_eq!(out["spec"]["domain"]["memory"]["guest"], "2G");
        assert_eq!(
            out["spec"]["domain"]["resources"]["requests"]["memory"],
            "2G"
        );
        let out = mutate(json!({"spec": {"domain": {}}}));
        assert!(out["spec"]["domain"].get("memory").is_none());
    }

    #[test]
    fn an_empty_machine_type_is_defaulted() {
        let out = mutate(json!({"spec": {"domain": {"machine": {"type": ""}}}}));
        assert_eq!(out["spec"]["domain"]["machine"]["type"], "q35");
    }

    #[test]
    fn networks_without_interfaces_are_left_to_validation() {
        let out = mutate(json!({"spec": {"domain": {}, "networks": [{"name": "x", "pod": {}}]}}));
        assert!(out["spec"]["domain"].get("devices").is_none());
    }

    #[test]
    fn objects_that_are_not_vmis_are_left_alone() {
        assert_eq!(mutate(json!("text")), json!("text"));
        let out = mutate(json!({"metadata": {"name": "vm"}, "spec": "odd"}));
        assert_eq!(out["spec"], "odd");
        assert_eq!(out["metadata"]["finalizers"], json!([FINALIZER]));
    }

    #[test]
    fn a_generated_name_uses_the_request_uid() {
        let mut i = id();
        i.name.clear();
        let v = json!({"metadata": {"generateName": "vm-"}, "spec": {"domain": {}}});
        let out = mutate_vmi(&v, &i, &[]).object;
        assert_eq!(
            out["spec"]["domain"]["firmware"]["uuid"],
            firmware_uuid("ns", "vm-r")
        );
    }

    #[test]
    fn conflicts_are_annotated() {
        let presets = [
            MatchedPreset {
                name: "a".into(),
                domain: json!({"cpu": {"cores": 1}}),
            },
            MatchedPreset {
                name: "b".into(),
                domain: json!({"cpu": {"cores": 2}}),
            },
        ];
        let m = mutate_vmi(&json!({"spec": {"domain": {}}}), &id(), &presets);
        let conflict = m.conflict.unwrap();
        assert_eq!(
            m.object["metadata"]["annotations"][CONFLICT_ANNOTATION],
            conflict.as_str()
        );
        assert!(m.object["spec"]["domain"].get("cpu").is_none());
    }
}
