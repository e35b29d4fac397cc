//! VirtualMachineInstanceReplicaSet: keeps a number of identical VMIs running.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::vmi::{Condition, VirtualMachineInstanceTemplateSpec};

fn default_replicas() -> Option<i32> {
    Some(1)
}

/// The specification of a VMI ReplicaSet.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceReplicaSet",
    plural = "virtualmachineinstancereplicasets",
    singular = "virtualmachineinstancereplicaset",
    shortname = "vmirs",
    shortname = "vmirss",
    category = "all",
    category = "kubevirt",
    namespaced,
    status = "VirtualMachineInstanceReplicaSetStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineInstanceReplicaSet keeps a number of identical VirtualMachineInstances running, as in KubeVirt (kubevirt.io/v1).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.labelSelector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Current", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetSpec {
    /// How many VMIs to keep running (default 1).
    #[serde(default = "default_replicas", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Selects the VMIs this replica set owns; must match the template's labels
    /// (checked by the validating webhook: a CEL rule over two unbounded label
    /// maps exceeds the apiserver's cost budget).
    pub selector: LabelSelector,
    /// The VMIs to create.
    pub template: VirtualMachineInstanceTemplateSpec,
    /// While true, the replica set neither creates nor deletes VMIs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// The observed state of a VMI ReplicaSet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceReplicaSetStatus {
    /// How many VMIs the replica set owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// How many of them are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The selector in string form, for the scale subresource and HorizontalPodAutoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Conditions: ReplicaFailure, ReplicaPaused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
}
