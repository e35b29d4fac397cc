//! VirtualMachineInstanceMigration: what its spec must say, whether the VMI
//! it names can be migrated now, and what may change on an update. Pure
//! functions; the validating webhook (ironvirt-api) reads the VMI and the
//! namespace's other migrations of it and calls [`migration_target`].
//!
//! The messages are KubeVirt's where KubeVirt has one (the in-flight
//! migration, a VMI that is not live-migratable), with the field path
//! `spec.vmiName` in front as the webhook reports them.

use crate::migration::{
    VMI_NAME_LABEL, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
};
use crate::vmi::{VirtualMachineInstance, VirtualMachineInstancePhase};

use super::FieldError;
use super::names::{dns_subdomain, label_value, qualified_name};

/// The VMI condition that says whether it can be live-migrated.
pub const LIVE_MIGRATABLE_CONDITION: &str = "LiveMigratable";

/// The longest VMI name a migration can name: it is the value of the label
/// [`VMI_NAME_LABEL`], and label values have at most 63 characters.
const MAX_VMI_NAME: usize = 63;

const VMI_NAME_FIELD: &str = "spec.vmiName";

/// Every problem with a migration's spec on its own: `spec.vmiName` is set,
/// a DNS subdomain and usable as a label value; the keys and values of
/// `spec.addedNodeSelector` are label keys and values.
pub fn migration_spec(spec: &VirtualMachineInstanceMigrationSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = spec.vmi_name.as_str();
    if name.is_empty() {
        errors.push(FieldError::required(
            VMI_NAME_FIELD,
            "is required: the name of the VirtualMachineInstance to migrate",
        ));
    } else if !dns_subdomain(name) {
        errors.push(FieldError::new(
            VMI_NAME_FIELD,
            format!(
                "{name:?} must be an RFC 1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters, digits or '-', each starting and ending with a letter or digit"
            ),
        ));
    } else if name.len() > MAX_VMI_NAME {
        errors.push(FieldError::new(
            VMI_NAME_FIELD,
            format!(
                "must be at most {MAX_VMI_NAME} characters (it is the value of the label {VMI_NAME_LABEL}), got {}",
                name.len()
            ),
        ));
    }
    for (key, value) in spec.added_node_selector.iter().flatten() {
        let field = format!("spec.addedNodeSelector[{key}]");
        if let Err(why) = qualified_name(key) {
            errors.push(FieldError::new(
                field.clone(),
                format!("the key {key:?} {why}"),
            ));
        }
        if let Err(why) = label_value(value) {
            errors.push(FieldError::new(field, format!("the value {value:?} {why}")));
        }
    }
    errors
}

/// Whether the VMI `vmi_name` in `namespace` (`vmi`, `None` when it does not
/// exist) can be migrated now, given the namespace's migrations of it
/// (`others`, not including the one being created). `None` when it can; else
/// the problem, at `spec.vmiName`.
///
/// In order: the VMI exists and is not being deleted; it is Running on a
/// node; its `LiveMigratable` condition is not False; no migration of it is
/// in flight, by its `status.migrationState` (a migration UID, neither
/// completed nor failed) or by another migration object that has not reached
/// Succeeded or Failed.
pub fn migration_target(
    namespace: &str,
    vmi_name: &str,
    vmi: Option<&VirtualMachineInstance>,
    others: &[VirtualMachineInstanceMigration],
) -> Option<FieldError> {
    let Some(vmi) = vmi else {
        return Some(FieldError::not_found(
            VMI_NAME_FIELD,
            format!("the VMI \"{namespace}/{vmi_name}\" does not exist"),
        ));
    };
    if vmi.metadata.deletion_timestamp.is_some() {
        return Some(FieldError::new(
            VMI_NAME_FIELD,
            format!("the VMI \"{namespace}/{vmi_name}\" is being deleted"),
        ));
    }
    let status = vmi.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    if phase != Some(VirtualMachineInstancePhase::Running) {
        let phase = phase.map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"));
        return Some(FieldError::new(
            VMI_NAME_FIELD,
            format!(
                "the VMI \"{namespace}/{vmi_name}\" is not running (phase {phase}): only a running VMI can be migrated"
            ),
        ));
    }
    if status
        .and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
    {
        return Some(FieldError::new(
            VMI_NAME_FIELD,
            format!("the VMI \"{namespace}/{vmi_name}\" is not placed on a node"),
        ));
    }
    let not_migratable = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == LIVE_MIGRATABLE_CONDITION && c.status == "False");
    if let Some(c) = not_migratable {
        return Some(FieldError::new(
            VMI_NAME_FIELD,
            format!(
                "Cannot migrate VMI, Reason: {}, Message: {}",
                c.reason.as_deref().unwrap_or_default(),
                c.message.as_deref().unwrap_or_default()
            ),
        ));
    }
    let in_flight = status
        .and_then(|s| s.migration_state.as_ref())
        .filter(|m| !m.ended())
        .and_then(|m| m.migration_uid.as_deref())
        .filter(|uid| !uid.is_empty());
    if let Some(uid) = in_flight {
        return Some(in_flight_error(uid, vmi_name));
    }
    let active = others.iter().find(|m| {
        m.spec.vmi_name == vmi_name
            && !m
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_final())
    });
    active.map(|m| in_flight_error(m.metadata.uid.as_deref().unwrap_or_default(), vmi_name))
}

/// KubeVirt's message for a migration of a VMI that already has one in flight.
fn in_flight_error(uid: &str, vmi_name: &str) -> FieldError {
    FieldError::new(
        VMI_NAME_FIELD,
        format!(
            "in-flight migration detected. Active migration job ({uid}) is currently already in progress for VMI {vmi_name}."
        ),
    )
}

/// What an update of a migration may not change: its spec, and the label
/// [`VMI_NAME_LABEL`] (by which migrations of a VMI are found) once it is set.
pub fn migration_update(
    old: &VirtualMachineInstanceMigration,
    new: &VirtualMachineInstanceMigration,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if old.spec != new.spec {
        errors.push(FieldError::forbidden(
            "spec",
            "spec is immutable after creation",
        ));
    }
    let label = |m: &VirtualMachineInstanceMigration| {
        m.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(VMI_NAME_LABEL))
            .cloned()
    };
    if let Some(before) = label(old)
        && label(new).as_ref() != Some(&before)
    {
        errors.push(FieldError::forbidden(
            format!("metadata.labels[{VMI_NAME_LABEL}]"),
            format!("is immutable after creation: it must stay {before:?}"),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Reason;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> VirtualMachineInstanceMigrationSpec {
        serde_json::from_value(v).unwrap()
    }

    fn vmi(status: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "namespace": "ns"},
            "spec": {"domain": {}},
            "status": status,
        }))
        .unwrap()
    }

    fn running() -> serde_json::Value {
        json!({"phase": "Running", "nodeName": "node-1"})
    }

    fn mig(uid: &str, vmi: &str, phase: Option<&str>) -> VirtualMachineInstanceMigration {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": format!("m-{uid}"), "uid": uid,
                "labels": {VMI_NAME_LABEL: vmi}},
            "spec": {"vmiName": vmi},
            "status": phase.map(|p| json!({"phase": p})),
        }))
        .unwrap()
    }

    fn target(
        vmi: Option<&VirtualMachineInstance>,
        others: &[VirtualMachineInstanceMigration],
    ) -> Option<String> {
        migration_target("ns", "v", vmi, others).map(|e| {
            assert_eq!(e.field, "spec.vmiName");
            e.message
        })
    }

    #[test]
    fn the_vmi_name_is_required_and_a_dns_name_short_enough_for_a_label() {
        let errs = migration_spec(&spec(json!({})));
        assert_eq!(errs.len(), 1);
        assert_eq!(
            (errs[0].field.as_str(), errs[0].reason),
            ("spec.vmiName", Reason::Required)
        );
        for bad in ["Upper", "a_b", "-a", "a..b"] {
            let errs = migration_spec(&spec(json!({"vmiName": bad})));
            assert_eq!(errs.len(), 1, "{bad}");
            assert!(errs[0].message.contains("RFC 1123 subdomain"), "{errs:?}");
        }
        let long = format!("{}.{}", "a".repeat(32), "b".repeat(32));
        let errs = migration_spec(&spec(json!({"vmiName": long})));
        assert!(
            errs[0].message.starts_with("must be at most 63 characters"),
            "{errs:?}"
        );
        assert!(migration_spec(&spec(json!({"vmiName": "vm-1.a"}))).is_empty());
    }

    #[test]
    fn added_node_selectors_are_labels() {
        let errs = migration_spec(&spec(json!({"vmiName": "v",
            "addedNodeSelector": {"kubernetes.io/hostname": "node-2", "bad key": "x", "k": "bad value"}})));
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.addedNodeSelector[bad key]",
                "spec.addedNodeSelector[k]"
            ]
        );
    }

    #[test]
    fn a_running_placed_vmi_without_migrations_can_migrate() {
        assert_eq!(target(Some(&vmi(running())), &[]), None);
        // Finished migrations of it, and migrations of other VMIs, do not count.
        let others = [
            mig("u1", "v", Some("Succeeded")),
            mig("u2", "v", Some("Failed")),
            mig("u3", "other", Some("Running")),
        ];
        assert_eq!(target(Some(&vmi(running())), &others), None);
        // A migration state that ended does not either.
        let mut status = running();
        status["migrationState"] = json!({"migrationUid": "u1", "completed": true});
        assert_eq!(target(Some(&vmi(status)), &[]), None);
    }

    #[test]
    fn the_vmi_must_exist_and_run_on_a_node() {
        assert_eq!(
            target(None, &[]).as_deref(),
            Some("the VMI \"ns/v\" does not exist")
        );
        assert_eq!(
            target(
                Some(&vmi(json!({"phase": "Scheduled", "nodeName": "node-1"}))),
                &[]
            )
            .as_deref(),
            Some(
                "the VMI \"ns/v\" is not running (phase Scheduled): only a running VMI can be migrated"
            )
        );
        assert!(target(Some(&vmi(json!({}))), &[]).is_some_and(|m| m.contains("(phase Pending)")));
        assert_eq!(
            target(Some(&vmi(json!({"phase": "Running"}))), &[]).as_deref(),
            Some("the VMI \"ns/v\" is not placed on a node")
        );
        let mut deleting = serde_json::to_value(vmi(running())).unwrap();
        deleting["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        let deleting: VirtualMachineInstance = serde_json::from_value(deleting).unwrap();
        assert_eq!(
            target(Some(&deleting), &[]).as_deref(),
            Some("the VMI \"ns/v\" is being deleted")
        );
    }

    #[test]
    fn a_vmi_that_is_not_live_migratable_is_refused_with_its_reason() {
        let mut status = running();
        status["conditions"] = json!([{"type": "LiveMigratable", "status": "False",
            "reason": "DisksNotLiveMigratable", "message": "hostDisk root is not shared"}]);
        assert_eq!(
            target(Some(&vmi(status)), &[]).as_deref(),
            Some(
                "Cannot migrate VMI, Reason: DisksNotLiveMigratable, Message: hostDisk root is not shared"
            )
        );
        let mut status = running();
        status["conditions"] = json!([{"type": "LiveMigratable", "status": "True"}]);
        assert_eq!(target(Some(&vmi(status)), &[]), None);
    }

    #[test]
    fn a_migration_in_flight_is_refused() {
        let want = "in-flight migration detected. Active migration job (u7) is currently already in progress for VMI v.";
        let mut status = running();
        status["migrationState"] = json!({"migrationUid": "u7", "sourceNode": "node-1"});
        assert_eq!(target(Some(&vmi(status)), &[]).as_deref(), Some(want));
        // Another migration object not yet final, whatever its phase (none yet included).
        for phase in [None, Some("Pending"), Some("Scheduling"), Some("Running")] {
            let others = [mig("u1", "v", Some("Failed")), mig("u7", "v", phase)];
            assert_eq!(
                target(Some(&vmi(running())), &others).as_deref(),
                Some(want),
                "{phase:?}"
            );
        }
    }

    #[test]
    fn updates_keep_the_spec_and_the_vmi_label() {
        let old = mig("u1", "v", None);
        let mut status_only = old.clone();
        status_only.status = Some(Default::default());
        assert!(migration_update(&old, &status_only).is_empty());
        let mut other = old.clone();
        other.spec.vmi_name = "w".into();
        let errs = migration_update(&old, &other);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            (
                errs[0].field.as_str(),
                errs[0].message.as_str(),
                errs[0].reason
            ),
            (
                "spec",
                "spec is immutable after creation",
                Reason::Forbidden
            )
        );
        let mut relabelled = old.clone();
        relabelled.metadata.labels = None;
        let errs = migration_update(&old, &relabelled);
        assert_eq!(errs[0].field, "metadata.labels[kubevirt.io/vmi-name]");
        // A migration created without the label may get it.
        let mut unlabelled = old.clone();
        unlabelled.metadata.labels = None;
        assert!(migration_update(&unlabelled, &old).is_empty());
    }
}
