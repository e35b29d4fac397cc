//! VirtualMachineInstanceMigration: a request to live-migrate a running VMI
//! to another node, and the VMI's `status.migrationState`, as in KubeVirt.
//!
//! Who writes what:
//! - the operator's migration controller writes the migration's status (its
//!   phase) and, on the VMI, the migration's identity, its source and target
//!   node and the `kubevirt.io/migrationTargetNodeName` label;
//! - the target node's handler prepares the target and writes
//!   `targetNodeAddress` and `targetNodeDomainReadyTimestamp`;
//! - the source node's handler migrates and writes `startTimestamp`,
//!   `endTimestamp`, `completed`, `failed` and `failureReason`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::vmi::{Condition, VirtualMachineInstanceSpec};

/// The label the migration webhook puts on every migration: the VMI's name
/// (`virtctl migrate-cancel` finds migrations by it).
pub const VMI_NAME_LABEL: &str = "kubevirt.io/vmi-name";
/// The label the migration controller puts on a VMI while it migrates: the
/// target node's name (the target's handler watches for it).
pub const MIGRATION_TARGET_NODE_LABEL: &str = "kubevirt.io/migrationTargetNodeName";
/// The generateName of migrations the `migrate` subresource creates.
pub const MIGRATE_GENERATE_NAME: &str = "kubevirt-migrate-vm-";

/// The specification of a live migration.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceMigration",
    plural = "virtualmachineinstancemigrations",
    singular = "virtualmachineinstancemigration",
    shortname = "vmim",
    shortname = "vmims",
    category = "all",
    category = "kubevirt",
    namespaced,
    status = "VirtualMachineInstanceMigrationStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineInstanceMigration live-migrates a running VirtualMachineInstance to another node, as in KubeVirt (kubevirt.io/v1).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "VMI", type_ = "string", json_path = ".spec.vmiName"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationSpec {
    /// The name of the VMI to migrate, in the migration's namespace.
    #[serde(default)]
    pub vmi_name: String,
    /// Node labels the target node must carry, on top of the VMI's own node
    /// selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_node_selector: Option<std::collections::BTreeMap<String, String>>,
}

/// The observed state of a migration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    /// Pending, Scheduling, Scheduled, PreparingTarget, TargetReady, Running,
    /// Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    /// When the migration entered each phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["phase"]))]
    pub phase_transition_timestamps: Option<Vec<MigrationPhaseTransitionTimestamp>>,
    /// Conditions of the migration (type Failed carries the failure's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// A copy of the VMI's migration state for this migration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<VirtualMachineInstanceMigrationState>,
}

/// The phase of a migration.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrationPhase {
    Pending,
    Scheduling,
    Scheduled,
    PreparingTarget,
    TargetReady,
    Running,
    Succeeded,
    Failed,
}

impl MigrationPhase {
    /// Succeeded and Failed are final.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }

    /// The phase as KubeVirt spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Scheduling => "Scheduling",
            Self::Scheduled => "Scheduled",
            Self::PreparingTarget => "PreparingTarget",
            Self::TargetReady => "TargetReady",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
        }
    }
}

/// When a migration entered a phase.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPhaseTransitionTimestamp {
    /// The phase entered.
    pub phase: MigrationPhase,
    /// When it was entered.
    pub phase_transition_timestamp: Time,
}

/// The state of a VMI's current or last migration (VMI
/// `status.migrationState`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationState {
    /// The UID of the migration object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_uid: Option<String>,
    /// The node the VMI migrates from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// The node the VMI migrates to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// The address the target node's libvirtd is reached at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_address: Option<String>,
    /// When the target node was ready to receive the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_domain_ready_timestamp: Option<Time>,
    /// Whether the target node has seen the VMI's domain arrive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_domain_detected: Option<bool>,
    /// When the source started migrating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    /// When the migration ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<Time>,
    /// The migration finished: the VMI runs on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// The migration failed: the VMI keeps running on the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    /// Why the migration failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// An abort was asked for (the migration object was deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_requested: Option<bool>,
    /// Succeeded, Failed or Aborting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<String>,
    /// PreCopy (the only mode ironvirt uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl VirtualMachineInstanceMigrationState {
    /// The migration ended, one way or the other.
    pub fn ended(&self) -> bool {
        self.completed == Some(true) || self.failed == Some(true)
    }
}

/// Why a VMI of `spec` cannot live-migrate, as the LiveMigratable
/// condition's (reason, message) with KubeVirt's reasons; None when it can.
/// What ironvirt moves: containerDisks (the base pulled on the target, the
/// overlay copied), emptyDisks (copied), cloud-init disks (made again).
/// What it does not: the pod network (its passt namespace is local to the
/// node), hostDisks (files on the node, not shared storage) and TPM state.
pub fn live_migratable(spec: &VirtualMachineInstanceSpec) -> Option<(&'static str, String)> {
    let devices = spec.domain.devices.as_ref();
    let interfaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let default_pod = interfaces.is_empty()
        && spec.networks.as_ref().is_none_or(Vec::is_empty)
        && devices.and_then(|d| d.autoattach_pod_interface) != Some(false);
    if default_pod || !interfaces.is_empty() {
        return Some((
            "InterfaceNotLiveMigratable",
            "cannot migrate a VMI with a network interface yet: its passt network namespace is local to the node (set autoattachPodInterface: false and no interfaces for a migratable VMI)".into(),
        ));
    }
    for v in spec.volumes.as_deref().unwrap_or_default() {
        if v.host_disk.is_some() {
            return Some((
                "DisksNotLiveMigratable",
                format!(
                    "cannot migrate a VMI with hostDisk {}: the file is on the node, not on shared storage",
                    v.name
                ),
            ));
        }
    }
    if devices.is_some_and(|d| d.tpm.is_some()) {
        return Some((
            "TPMNotLiveMigratable",
            "cannot migrate a VMI with a TPM: its state is local to the node".into(),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_has_kubevirts_names() {
        let crd = VirtualMachineInstanceMigration::crd();
        assert_eq!(crd.spec.names.kind, "VirtualMachineInstanceMigration");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["vmim".to_owned(), "vmims".to_owned()][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
    }

    #[test]
    fn status_round_trips_in_kubevirts_shape() {
        let json = serde_json::json!({
            "phase": "Running",
            "migrationState": {
                "migrationUid": "u", "sourceNode": "node-1", "targetNode": "node-2",
                "targetNodeAddress": "10.213.0.12", "completed": false, "mode": "PreCopy"
            }
        });
        let s: VirtualMachineInstanceMigrationStatus =
            serde_json::from_value(json.clone()).unwrap();
        assert_eq!(s.phase, Some(MigrationPhase::Running));
        assert!(!s.migration_state.as_ref().unwrap().ended());
        assert_eq!(serde_json::to_value(&s).unwrap(), json);
    }
}
