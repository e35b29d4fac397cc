//! VirtualMachine: a VMI template plus a run strategy that decides when a VMI
//! from it runs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::instancetype::{Matcher, StatusRef};
use crate::schema;
use crate::vmi::{Condition, VirtualMachineInstanceTemplateSpec};

/// The specification of a VirtualMachine. Set runStrategy (or the deprecated
/// running), never both.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    singular = "virtualmachine",
    shortname = "vm",
    shortname = "vms",
    category = "all",
    category = "kubevirt",
    namespaced,
    status = "VirtualMachineStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachine keeps a VirtualMachineInstance running, or not, according to its runStrategy, as in KubeVirt (kubevirt.io/v1).",
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.printableStatus"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Ready')].status"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.running) && has(self.runStrategy))").message("spec.running and spec.runStrategy are mutually exclusive: set only runStrategy"))]
pub struct VirtualMachineSpec {
    /// Deprecated: true means runStrategy Always, false means Halted. Mutually
    /// exclusive with runStrategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// When a VMI runs. Always: keep one running, recreating it when it ends.
    /// RerunOnFailure: recreate it only after it failed. Once: run it once.
    /// Manual: start and stop only through the start/stop subresources.
    /// Halted: no VMI; a running one is stopped gracefully.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The VMI to run: its metadata (labels, annotations) and spec.
    pub template: VirtualMachineInstanceTemplateSpec,
    /// The instancetype (vCPUs, memory, …) the VMI gets; the template must
    /// then leave those fields unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<Box<Matcher>>,
    /// The preference whose defaults fill the fields the template leaves unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<Box<Matcher>>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::data_volume_templates")]
    pub data_volume_templates: Option<Box<Value>>,
    /// How volume changes reach a running VMI: Replacement or Migration.
    /// Accepted with a warning: ironvirt applies template changes when the VM
    /// next starts a VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_volumes_strategy: Option<crate::domain::UpdateVolumesStrategy>,
}

/// When a VirtualMachine's VMI runs: Always, RerunOnFailure, Once, Manual or Halted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunStrategy {
    Always,
    RerunOnFailure,
    Once,
    Manual,
    Halted,
}

impl VirtualMachineSpec {
    /// The run strategy in effect: runStrategy, else running (true → Always,
    /// false → Halted), else Halted.
    pub fn effective_run_strategy(&self) -> RunStrategy {
        match (self.run_strategy, self.running) {
            (Some(s), _) => s,
            (None, Some(true)) => RunStrategy::Always,
            _ => RunStrategy::Halted,
        }
    }
}

/// The observed state of a VirtualMachine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Whether the VM's VMI exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// Whether the VM's VMI is running and ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// A one-word summary for humans: Stopped, Provisioning, Starting, Running,
    /// Paused, Stopping, Terminating, CrashLoopBackOff, ErrorUnschedulable, Unknown, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    /// Conditions: Ready, Failure, Paused, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// Start and stop requests from the subresource API, acted on in order
    /// (runStrategy Manual, and restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_change_requests: Option<Vec<StateChangeRequest>>,
    /// Why the VMI keeps failing to start, and when the next try is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<Box<StartFailure>>,
    /// The metadata.generation the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The metadata.generation the running VMI was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_generation: Option<i64>,
    /// The run strategy in effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The instancetype the VM uses, and the ControllerRevision with its copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype_ref: Option<Box<StatusRef>>,
    /// The preference the VM uses, and the ControllerRevision with its copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_ref: Option<Box<StatusRef>>,
}

/// A pending start or stop request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StateChangeRequest {
    /// Start or Stop.
    pub action: StateChangeAction,
    /// Extra data for the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<std::collections::BTreeMap<String, String>>,
    /// For Stop: the UID of the VMI to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A requested action: Start or Stop.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateChangeAction {
    Start,
    Stop,
}

/// Repeated start failures.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    /// How many VMIs in a row failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_fail_count: Option<i32>,
    /// The UID of the last VMI that failed.
    #[serde(
        rename = "lastFailedVMIUID",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_failed_vmi_uid: Option<String>,
    /// Not before this time will the next VMI be created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_timestamp: Option<Time>,
}
