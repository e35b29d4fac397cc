//! VirtualMachinePool (`pool.kubevirt.io`): a number of VirtualMachines made
//! from one template, named `<pool>-<n>`, as in KubeVirt. v1beta1 is stored;
//! v1alpha1 is served with the same schema.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::schema;
use crate::vm::VirtualMachineSpec;
use crate::vmi::Condition;

/// The API group of VirtualMachinePool.
pub const GROUP: &str = "pool.kubevirt.io";
/// The stored version.
pub const VERSION: &str = "v1beta1";
/// The older version, served with the same schema.
pub const OLD_VERSION: &str = "v1alpha1";
/// Label on each VM (and its VMI) naming the pool revision it was made from.
pub const REVISION_LABEL: &str = "kubevirt.io/vm-pool-revision-name";
/// Label on the pool's ControllerRevisions naming the pool.
pub const POOL_LABEL: &str = "pool.kubevirt.io/pool-name";

fn default_replicas() -> Option<i32> {
    Some(1)
}

/// The specification of a VirtualMachinePool.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "pool.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachinePool",
    plural = "virtualmachinepools",
    singular = "virtualmachinepool",
    shortname = "vmpool",
    shortname = "vmpools",
    category = "all",
    category = "kubevirt",
    namespaced,
    status = "VirtualMachinePoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachinePool keeps a number of VirtualMachines made from one template, named <pool>-<n>, as in KubeVirt (pool.kubevirt.io).",
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
pub struct VirtualMachinePoolSpec {
    /// How many VMs the pool keeps (default 1).
    #[serde(default = "default_replicas", skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Selects the VMs this pool owns; must match the template's labels
    /// (checked by the validating webhook).
    pub selector: LabelSelector,
    /// The VMs to create.
    pub virtual_machine_template: VirtualMachineTemplateSpec,
    /// While true, the pool neither creates, deletes nor updates VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// How many VMs a proactive update may have down at once: a number or a
    /// percentage of replicas, rounded down (default 100%; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
    /// Per-index suffixes for the ConfigMap and Secret volumes of each VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_generation: Option<NameGeneration>,
    /// Which VMs go when the pool scales in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in_strategy: Option<ScaleInStrategy>,
    /// How template changes reach existing VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pool_autohealing")]
    pub autohealing: Option<serde_json::Value>,
}

/// A VM template: the metadata and spec of the VMs a pool creates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateSpec {
    /// Labels and annotations for the created VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::template_metadata")]
    pub metadata: Option<ObjectMeta>,
    /// The spec of the created VMs.
    pub spec: VirtualMachineSpec,
}

/// Per-index name suffixes (`-<n>`) for the references of each VM.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NameGeneration {
    /// Append `-<n>` to the name of each configMap volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_index_to_config_map_refs: Option<bool>,
    /// Append `-<n>` to the name of each secret volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append_index_to_secret_refs: Option<bool>,
}

/// Which VMs go on scale-in. Exactly one of the three may be set; none means
/// proactive with the default order.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.proactive), has(self.opportunistic), has(self.unmanaged)].filter(x, x).size() <= 1").message("set at most one of proactive, opportunistic and unmanaged"))]
pub struct ScaleInStrategy {
    /// The pool deletes VMs to reach the replica count (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proactive: Option<ProactiveScaleIn>,
    /// The pool waits for VMs to go by other means, and does not replace them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunistic: Option<OpportunisticScaleIn>,
    /// The pool never deletes a VM it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_object")]
    pub unmanaged: Option<serde_json::Value>,
}

/// Proactive scale-in: which VMs go, and what is kept of them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProactiveScaleIn {
    /// Which VMs go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_policy: Option<SelectionPolicy>,
    /// What is kept of the VMs that go. Only Disabled (nothing kept) is
    /// supported by ironvirt: it has no persistent volumes to keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pool_state_preservation")]
    pub state_preservation: Option<String>,
}

/// Opportunistic scale-in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpportunisticScaleIn {
    /// Only Disabled is supported (see the proactive strategy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pool_state_preservation")]
    pub state_preservation: Option<String>,
}

/// The order in which VMs are chosen: VMs the selectors match first, then
/// the sort policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SelectionPolicy {
    /// VMs matching these go first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selectors: Option<PoolSelectors>,
    /// The order among the rest (default DescendingOrder: highest index first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_policy: Option<SortPolicy>,
}

/// Selectors of a selection policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolSelectors {
    /// VMs whose labels match are chosen first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pool_node_selector_matcher")]
    pub node_selector_requirement_matcher: Option<serde_json::Value>,
}

/// The order in which VMs are chosen.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortPolicy {
    /// Lowest index first.
    AscendingOrder,
    /// Highest index first.
    DescendingOrder,
    /// Most recently created first.
    Newest,
    /// Least recently created first.
    Oldest,
    /// In no particular order (ironvirt: a hash of the name, stable between reconciles).
    Random,
}

/// How template changes reach existing VMs. At most one may be set; none
/// means proactive.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.proactive), has(self.opportunistic), has(self.unmanaged)].filter(x, x).size() <= 1").message("set at most one of proactive, opportunistic and unmanaged"))]
pub struct UpdateStrategy {
    /// The VM is updated and its VMI restarted, maxUnavailable at a time (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proactive: Option<ProactiveUpdate>,
    /// The VM is updated; its VMI picks the change up when it next starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opportunistic: Option<ProactiveUpdate>,
    /// VMs are never updated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::any_object")]
    pub unmanaged: Option<serde_json::Value>,
}

/// Proactive update.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProactiveUpdate {
    /// Which VMs are restarted first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection_policy: Option<SelectionPolicy>,
}

/// The observed state of a VirtualMachinePool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachinePoolStatus {
    /// How many VMs the pool owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// How many of them have a ready VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// The selector in string form, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// Conditions: ReplicaFailure, ReplicaPaused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// The revision (ControllerRevision name) of the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// How many VMs are made from the current template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_replicas: Option<i32>,
}

impl VirtualMachinePoolSpec {
    /// The scale-in strategy in effect.
    pub fn scale_in(&self) -> ScaleIn {
        match &self.scale_in_strategy {
            Some(s) if s.unmanaged.is_some() => ScaleIn::Unmanaged,
            Some(s) if s.opportunistic.is_some() => ScaleIn::Opportunistic,
            Some(ScaleInStrategy {
                proactive: Some(p), ..
            }) => ScaleIn::Proactive(p.selection_policy.clone().unwrap_or_default()),
            _ => ScaleIn::Proactive(SelectionPolicy::default()),
        }
    }

    /// The update strategy in effect.
    pub fn update(&self) -> Update {
        match &self.update_strategy {
            Some(s) if s.unmanaged.is_some() => Update::Unmanaged,
            Some(UpdateStrategy {
                opportunistic: Some(o),
                ..
            }) => Update::Opportunistic(o.selection_policy.clone().unwrap_or_default()),
            Some(UpdateStrategy {
                proactive: Some(p), ..
            }) => Update::Proactive(p.selection_policy.clone().unwrap_or_default()),
            _ => Update::Proactive(SelectionPolicy::default()),
        }
    }
}

/// A pool's scale-in strategy, resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum ScaleIn {
    Proactive(SelectionPolicy),
    Opportunistic,
    Unmanaged,
}

/// A pool's update strategy, resolved: which VMs it updates (a selection
/// policy's labelSelector limits them; its order ranks the restarts).
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Proactive(SelectionPolicy),
    Opportunistic(SelectionPolicy),
    Unmanaged,
}
