//! The validating webhooks: VMI (create: the whole spec; update: the spec is
//! immutable), VM, VMI ReplicaSet, preset, VM pool, the four instancetype
//! and preference kinds (create, and updates that change the spec), and
//! VirtualMachineInstanceMigration (create: the spec here, the VMI and its
//! other migrations in [`super::migration`]; update: the spec is immutable).

use ironvirt_crds::instancetype::{
    self as instancetype_api, VirtualMachineInstancetypeSpec, VirtualMachinePreferenceSpec,
};
use ironvirt_crds::migration::VirtualMachineInstanceMigration;
use ironvirt_crds::pool::{self as pool_api, VirtualMachinePool};
use ironvirt_crds::validate::{self, FieldError, Reason, instancetype};
use ironvirt_crds::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePreset,
    VirtualMachineInstanceReplicaSet, VirtualMachineInstanceSpec,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::http::{
    VALIDATE_CLUSTER_INSTANCETYPE_PATH, VALIDATE_CLUSTER_PREFERENCE_PATH,
    VALIDATE_INSTANCETYPE_PATH, VALIDATE_MIGRATION_PATH, VALIDATE_POOL_PATH,
    VALIDATE_PREFERENCE_PATH, VALIDATE_PRESET_PATH, VALIDATE_VM_PATH, VALIDATE_VMI_PATH,
    VALIDATE_VMIRS_PATH,
};
use super::review::{Review, Verdict};
use super::state::AdmissionState;
use super::volumes;

/// The kinds the validating webhooks serve, one webhook (and path) each. A new
/// kind is a variant here with an arm in each method, plus its checks in
/// [`check`] and [`warnings`]; the router and the webhook configuration follow
/// [`Kind::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// VirtualMachineInstance
    Vmi,
    /// VirtualMachine
    Vm,
    /// VirtualMachineInstanceReplicaSet
    Vmirs,
    /// VirtualMachineInstancePreset
    Preset,
    /// VirtualMachineInstancetype (instancetype.kubevirt.io)
    Instancetype,
    /// VirtualMachineClusterInstancetype (instancetype.kubevirt.io)
    ClusterInstancetype,
    /// VirtualMachinePreference (instancetype.kubevirt.io)
    Preference,
    /// VirtualMachineClusterPreference (instancetype.kubevirt.io)
    ClusterPreference,
    /// VirtualMachinePool (pool.kubevirt.io)
    Pool,
    /// VirtualMachineInstanceMigration
    Migration,
}

impl Kind {
    /// Every kind, in the order of the webhook configuration.
    pub(crate) const ALL: [Kind; 10] = [
        Kind::Vmi,
        Kind::Vm,
        Kind::Vmirs,
        Kind::Preset,
        Kind::Instancetype,
        Kind::ClusterInstancetype,
        Kind::Preference,
        Kind::ClusterPreference,
        Kind::Pool,
        Kind::Migration,
    ];

    /// The kind's name, as in `request.kind.kind`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Vmi => "VirtualMachineInstance",
            Kind::Vm => "VirtualMachine",
            Kind::Vmirs => "VirtualMachineInstanceReplicaSet",
            Kind::Preset => "VirtualMachineInstancePreset",
            Kind::Instancetype => "VirtualMachineInstancetype",
            Kind::ClusterInstancetype => "VirtualMachineClusterInstancetype",
            Kind::Preference => "VirtualMachinePreference",
            Kind::ClusterPreference => "VirtualMachineClusterPreference",
            Kind::Pool => "VirtualMachinePool",
            Kind::Migration => "VirtualMachineInstanceMigration",
        }
    }

    /// The API group and the version the webhook is registered for (with
    /// matchPolicy Equivalent, requests in other served versions arrive
    /// converted to it).
    pub(crate) fn group_version(self) -> (&'static str, &'static str) {
        match self {
            Kind::Vmi | Kind::Vm | Kind::Vmirs | Kind::Preset | Kind::Migration => {
                (ironvirt_crds::GROUP, ironvirt_crds::VERSION)
            }
            Kind::Instancetype
            | Kind::ClusterInstancetype
            | Kind::Preference
            | Kind::ClusterPreference => (instancetype_api::GROUP, instancetype_api::VERSION),
            Kind::Pool => (pool_api::GROUP, pool_api::VERSION),
        }
    }

    /// The plural resource name.
    pub(crate) fn resource(self) -> &'static str {
        match self {
            Kind::Vmi => "virtualmachineinstances",
            Kind::Vm => "virtualmachines",
            Kind::Vmirs => "virtualmachineinstancereplicasets",
            Kind::Preset => "virtualmachineinstancepresets",
            Kind::Instancetype => "virtualmachineinstancetypes",
            Kind::ClusterInstancetype => "virtualmachineclusterinstancetypes",
            Kind::Preference => "virtualmachinepreferences",
            Kind::ClusterPreference => "virtualmachineclusterpreferences",
            Kind::Pool => "virtualmachinepools",
            Kind::Migration => "virtualmachineinstancemigrations",
        }
    }

    /// Whether the resource is namespaced (else cluster-scoped).
    pub(crate) fn namespaced(self) -> bool {
        !matches!(self, Kind::ClusterInstancetype | Kind::ClusterPreference)
    }

    /// The validating webhook's path.
    pub(crate) fn path(self) -> &'static str {
        match self {
            Kind::Vmi => VALIDATE_VMI_PATH,
            Kind::Vm => VALIDATE_VM_PATH,
            Kind::Vmirs => VALIDATE_VMIRS_PATH,
            Kind::Preset => VALIDATE_PRESET_PATH,
            Kind::Instancetype => VALIDATE_INSTANCETYPE_PATH,
            Kind::ClusterInstancetype => VALIDATE_CLUSTER_INSTANCETYPE_PATH,
            Kind::Preference => VALIDATE_PREFERENCE_PATH,
            Kind::ClusterPreference => VALIDATE_CLUSTER_PREFERENCE_PATH,
            Kind::Pool => VALIDATE_POOL_PATH,
            Kind::Migration => VALIDATE_MIGRATION_PATH,
        }
    }

    /// Fields that must be present before the object can be read at all.
    fn required(self) -> &'static [&'static str] {
        match self {
            Kind::Vmi => &["spec", "spec.domain"],
            Kind::Vm => &["spec", "spec.template"],
            Kind::Vmirs => &["spec", "spec.selector", "spec.template"],
            Kind::Preset => &["spec", "spec.selector"],
            Kind::Instancetype | Kind::ClusterInstancetype => &[
                "spec",
                "spec.cpu",
                "spec.cpu.guest",
                "spec.memory",
                "spec.memory.guest",
            ],
            Kind::Preference | Kind::ClusterPreference => &["spec"],
            Kind::Pool => &[
                "spec",
                "spec.selector",
                "spec.virtualMachineTemplate",
                "spec.virtualMachineTemplate.spec",
                "spec.virtualMachineTemplate.spec.template",
            ],
            Kind::Migration => &["spec"],
        }
    }
}

/// A 400 when the request is for another kind than the endpoint serves.
pub(crate) fn wrong_kind(review: &Review, expected: Kind) -> Option<Verdict> {
    let gvk = &review.request.kind;
    let (group, _) = expected.group_version();
    (gvk.group != group || gvk.kind != expected.name()).then(|| Verdict::Refuse {
        code: 400,
        reason: "BadRequest",
        message: format!(
            "this webhook validates {group}/{}, not {}/{}",
            expected.name(),
            gvk.group,
            gvk.kind
        ),
    })
}

/// The validating webhook for `kind`.
pub(crate) fn review(kind: Kind, review: &Review, state: &AdmissionState) -> Verdict {
    if let Some(v) = wrong_kind(review, kind) {
        return v;
    }
    let Some(object) = &review.object else {
        return Verdict::Allow;
    };
    match (review.operation(), kind) {
        ("CREATE", _) => verdict(check(kind, object, &review.namespace(), state)),
        ("UPDATE", Kind::Vmi) => vmi_update(review, object, state),
        ("UPDATE", Kind::Migration) => super::migration::update(review, object),
        ("UPDATE", _) if spec_unchanged(review, object) || deleting(object) => Verdict::Allow,
        ("UPDATE", _) => verdict(check(kind, object, &review.namespace(), state)),
        _ => Verdict::Allow,
    }
}

/// The warnings for the object of a request to the validating webhook for
/// `kind`: fields it sets that ironvirt accepts without acting on them
/// ([`validate::warnings`]). On create, and on updates that change a VM's,
/// VMI ReplicaSet's or preset's spec (a VMI's spec cannot change).
pub(crate) fn warnings(kind: Kind, review: &Review) -> Vec<String> {
    let Some(object) = &review.object else {
        return Vec::new();
    };
    match (review.operation(), kind) {
        ("CREATE", _) => {}
        ("UPDATE", k) if k != Kind::Vmi && !spec_unchanged(review, object) => {}
        _ => return Vec::new(),
    }
    fn read<K: DeserializeOwned>(object: &Value, f: impl FnOnce(K) -> Vec<String>) -> Vec<String> {
        serde_json::from_value::<K>(object.clone())
            .map(f)
            .unwrap_or_default()
    }
    match kind {
        Kind::Vmi => read(object, |v: VirtualMachineInstance| {
            let mut w = validate::warnings::annotations(
                v.metadata.annotations.as_ref(),
                "metadata.annotations",
            );
            w.extend(validate::warnings::vmi_spec(&v.spec, "spec"));
            w
        }),
        Kind::Vm => read(object, |v: VirtualMachine| {
            validate::warnings::vm_spec(&v.spec)
        }),
        Kind::Vmirs => read(object, |v: VirtualMachineInstanceReplicaSet| {
            validate::warnings::vmirs_spec(&v.spec)
        }),
        Kind::Preset => read(object, |v: VirtualMachineInstancePreset| {
            validate::warnings::preset_spec(&v.spec)
        }),
        Kind::Instancetype | Kind::ClusterInstancetype => {
            read(object, |v: SpecOf<VirtualMachineInstancetypeSpec>| {
                instancetype::instancetype_warnings(&v.spec, "spec")
            })
        }
        Kind::Preference | Kind::ClusterPreference => {
            read(object, |v: SpecOf<VirtualMachinePreferenceSpec>| {
                instancetype::preference_warnings(&v.spec, "spec")
            })
        }
        Kind::Pool => read(object, |v: VirtualMachinePool| {
            validate::pool::pool_warnings(&v.spec)
        }),
        Kind::Migration => Vec::new(),
    }
}

/// The `spec` of an object: the namespaced and cluster instancetype (and
/// preference) kinds share their spec, so both are read as this.
#[derive(Deserialize)]
struct SpecOf<S> {
    spec: S,
}

fn verdict(errors: Vec<FieldError>) -> Verdict {
    if errors.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Invalid(errors)
    }
}

/// Every problem with a raw object of `kind` in `namespace`, its volumes
/// checked against the cluster's volume policy.
pub(crate) fn check(
    kind: Kind,
    object: &Value,
    namespace: &str,
    state: &AdmissionState,
) -> Vec<FieldError> {
    let missing = missing_fields(object, kind.required());
    if !missing.is_empty() {
        return missing;
    }
    let policy = &state.volume_policy;
    let with_volumes =
        |mut errors: Vec<FieldError>, spec: Option<&VirtualMachineInstanceSpec>, path: &str| {
            volumes::merge(&mut errors, volumes::check(spec, namespace, policy, path));
            errors
        };
    match kind {
        Kind::Vmi => typed(object, |v: VirtualMachineInstance| {
            with_volumes(validate::vmi_spec(&v.spec, "spec"), Some(&v.spec), "spec")
        }),
        Kind::Vm => typed(object, |v: VirtualMachine| {
            with_volumes(
                validate::vm_spec(&v.spec),
                v.spec.template.spec.as_ref(),
                "spec.template.spec",
            )
        }),
        Kind::Vmirs => typed(object, |v: VirtualMachineInstanceReplicaSet| {
            with_volumes(
                validate::vmirs_spec(&v.spec),
                v.spec.template.spec.as_ref(),
                "spec.template.spec",
            )
        }),
        Kind::Preset => typed(object, |v: VirtualMachineInstancePreset| {
            validate::preset_spec(&v.spec)
        }),
        Kind::Instancetype | Kind::ClusterInstancetype => layered(
            instancetype::instancetype_values(&object["spec"], "spec"),
            object,
            |v: SpecOf<VirtualMachineInstancetypeSpec>| {
                instancetype::instancetype_spec(&v.spec, "spec")
            },
        ),
        Kind::Preference | Kind::ClusterPreference => layered(
            instancetype::preference_values(&object["spec"], "spec"),
            object,
            |v: SpecOf<VirtualMachinePreferenceSpec>| {
                instancetype::preference_spec(&v.spec, "spec")
            },
        ),
        Kind::Pool => typed(object, |v: VirtualMachinePool| {
            with_volumes(
                validate::pool_spec(&v.spec),
                v.spec.virtual_machine_template.spec.template.spec.as_ref(),
                "spec.virtualMachineTemplate.spec.template.spec",
            )
        }),
        Kind::Migration => typed(object, |m: VirtualMachineInstanceMigration| {
            validate::migration_spec(&m.spec)
        }),
    }
}

/// The errors found in the raw object (values its type cannot hold), then
/// those of the typed checks when it reads; an object that does not read is
/// an error only when the raw checks found nothing to say why.
fn layered<K: DeserializeOwned>(
    mut errors: Vec<FieldError>,
    object: &Value,
    check: impl FnOnce(K) -> Vec<FieldError>,
) -> Vec<FieldError> {
    match serde_json::from_value::<K>(object.clone()) {
        Ok(k) => errors.extend(check(k)),
        Err(e) if errors.is_empty() => {
            errors.push(FieldError::new("spec", format!("cannot be read: {e}")));
        }
        Err(_) => {}
    }
    errors
}

/// The `required` dotted paths that are absent or null (a field under one
/// already missing is not repeated).
fn missing_fields(object: &Value, required: &[&str]) -> Vec<FieldError> {
    let mut missing: Vec<&str> = Vec::new();
    for path in required {
        let under_missing = missing.iter().any(|m| {
            path.strip_prefix(m)
                .is_some_and(|rest| rest.starts_with('.'))
        });
        let absent = object
            .pointer(&format!("/{}", path.replace('.', "/")))
            .is_none_or(Value::is_null);
        if absent && !under_missing {
            missing.push(path);
        }
    }
    missing
        .into_iter()
        .map(|path| FieldError::with_reason(Reason::Required, path, "is required"))
        .collect()
}

/// Reads the object as `K` and checks it; an object that does not read is
/// itself the error (the CRD schema normally refuses it first).
fn typed<K: DeserializeOwned>(
    object: &Value,
    check: impl FnOnce(K) -> Vec<FieldError>,
) -> Vec<FieldError> {
    match serde_json::from_value::<K>(object.clone()) {
        Ok(k) => check(k),
        Err(e) => vec![FieldError::new("spec", format!("cannot be read: {e}"))],
    }
}

fn spec_unchanged(review: &Review, object: &Value) -> bool {
    review
        .old_object
        .as_ref()
        .is_some_and(|old| old.get("spec") == object.get("spec"))
}

fn deleting(object: &Value) -> bool {
    object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

/// A VMI's spec is immutable once created, except for the privileged users.
/// Changes to metadata and status pass.
fn vmi_update(review: &Review, object: &Value, state: &AdmissionState) -> Verdict {
    if state.is_privileged(review.username()) {
        return Verdict::Allow;
    }
    let null = Value::Null;
    let old = review
        .old_object
        .as_ref()
        .and_then(|o| o.get("spec"))
        .unwrap_or(&null);
    let new = object.get("spec").unwrap_or(&null);
    verdict(changed_fields(old, new, "spec"))
}

/// One Forbidden error per field that differs between `old` and `new`.
fn changed_fields(old: &Value, new: &Value, root: &str) -> Vec<FieldError> {
    let mut fields: Vec<String> = json_patch::diff(old, new)
        .0
        .iter()
        .map(|op| {
            let tokens: Vec<String> = op
                .path()
                .tokens()
                .map(|t| t.decoded().into_owned())
                .collect();
            field_path(root, &tokens, old, new)
        })
        .collect();
    fields.dedup();
    fields
        .into_iter()
        .map(|f| {
            FieldError::with_reason(
                Reason::Forbidden,
                f,
                "is immutable: a VirtualMachineInstance's spec cannot change after it is created",
            )
        })
        .collect()
}

/// `root.a.b[1].c` for the tokens `a b 1 c`: an index where the value walked
/// (in `new`, else `old`) is an array.
fn field_path(root: &str, tokens: &[String], old: &Value, new: &Value) -> String {
    let mut path = root.to_owned();
    let (mut o, mut n) = (Some(old), Some(new));
    for t in tokens {
        let in_array = n.or(o).is_some_and(Value::is_array);
        if in_array {
            path.push_str(&format!("[{t}]"));
        } else {
            path.push('.');
            path.push_str(t);
        }
        o = o.and_then(|v| child(v, t));
        n = n.and_then(|v| child(v, t));
    }
    path
}

/// The element or member `token` of `v`.
fn child<'a>(v: &'a Value, token: &str) -> Option<&'a Value> {
    match v {
        Value::Array(a) => a.get(token.parse::<usize>().ok()?),
        Value::Object(m) => m.get(token),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_fields_name_the_paths() {
        let old = json!({"domain": {"cpu": {"cores": 1}, "devices": {"disks": [{"name": "a"}, {"name": "b"}]}}, "nodeSelector": {"kubernetes.io/os": "linux"}});
        let new = json!({"domain": {"cpu": {"cores": 2}, "devices": {"disks": [{"name": "a"}, {"name": "c"}]}}, "nodeSelector": {}});
        let fields: Vec<String> = changed_fields(&old, &new, "spec")
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.domain.cpu.cores",
                "spec.domain.devices.disks[1].name",
                "spec.nodeSelector.kubernetes.io/os"
            ]
        );
        assert!(changed_fields(&old, &old, "spec").is_empty());
    }

    #[test]
    fn missing_fields_are_required() {
        let state = AdmissionState::without_presets();
        let errs = check(
            Kind::Vmirs,
            &json!({"spec": {"template": null}}),
            "default",
            &state,
        );
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.selector", "spec.template"]);
        assert!(errs.iter().all(|e| e.reason == Reason::Required));
    }

    #[test]
    fn every_kind_has_its_own_path_resource_and_group() {
        let mut paths: Vec<_> = Kind::ALL.iter().map(|k| k.path()).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), Kind::ALL.len());
        for k in Kind::ALL {
            assert!(k.path().ends_with(&format!("/{}", k.resource())), "{k:?}");
            assert_eq!(k.resource(), format!("{}s", k.name().to_lowercase()));
            let (group, version) = k.group_version();
            let instancetypes =
                k.name().contains("Instancetype") || k.name().contains("Preference");
            assert_eq!(
                (group, version),
                if instancetypes {
                    ("instancetype.kubevirt.io", "v1beta1")
                } else if k == Kind::Pool {
                    ("pool.kubevirt.io", "v1beta1")
                } else {
                    ("kubevirt.io", "v1")
                }
            );
            assert_eq!(k.namespaced(), !k.name().contains("Cluster"));
        }
    }

    #[test]
    fn instancetypes_need_cpu_and_memory_guests() {
        let state = AdmissionState::without_presets();
        for kind in [Kind::Instancetype, Kind::ClusterInstancetype] {
            let errs = check(
                kind,
                &json!({"spec": {"cpu": {"model": "host-model"}}}),
                "",
                &state,
            );
            let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
            assert_eq!(fields, ["spec.cpu.guest", "spec.memory"], "{kind:?}");
            assert!(errs.iter().all(|e| e.reason == Reason::Required));
        }
        // A preference needs no field at all.
        assert!(check(Kind::ClusterPreference, &json!({"spec": {}}), "", &state).is_empty());
    }

    #[test]
    fn raw_values_are_reported_by_path_not_as_unreadable() {
        let state = AdmissionState::without_presets();
        let errs = check(
            Kind::Instancetype,
            &json!({"spec": {"cpu": {"guest": -2}, "memory": {"guest": "1Gi"}}}),
            "default",
            &state,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.cpu.guest");
        assert_eq!(errs[0].message, "-2 must be greater than or equal to 1");
        // Raw and typed problems together.
        let errs = check(
            Kind::Instancetype,
            &json!({"spec": {"cpu": {"guest": 0}, "memory": {"guest": "1Gi", "overcommitPercent": 101}}}),
            "default",
            &state,
        );
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.cpu.guest", "spec.memory.overcommitPercent"]);
        let errs = check(
            Kind::Preference,
            &json!({"spec": {"cpu": {"preferredCPUTopology": "diagonal"}}}),
            "default",
            &state,
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].field, "spec.cpu.preferredCPUTopology");
        // What the raw checks do not cover is still an unreadable object.
        let errs = check(
            Kind::Preference,
            &json!({"spec": {"preferredSubdomain": 7}}),
            "default",
            &state,
        );
        assert!(errs[0].message.starts_with("cannot be read: "), "{errs:?}");
    }

    #[test]
    fn unreadable_objects_are_errors() {
        let state = AdmissionState::without_presets();
        let errs = check(
            Kind::Vmi,
            &json!({"metadata": {"name": "x"}, "spec": {"domain": {"cpu": {"cores": "two"}}}}),
            "default",
            &state,
        );
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.starts_with("cannot be read: "), "{errs:?}");
    }
}
