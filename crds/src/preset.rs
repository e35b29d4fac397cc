//! VirtualMachineInstancePreset: a domain fragment the mutating webhook merges
//! into matching VMIs (deprecated in KubeVirt, still served).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::vmi::DomainSpec;

/// The specification of a VMI preset.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstancePreset",
    plural = "virtualmachineinstancepresets",
    singular = "virtualmachineinstancepreset",
    shortname = "vmipreset",
    shortname = "vmipresets",
    category = "all",
    category = "kubevirt",
    namespaced,
    status = "VirtualMachineInstancePresetStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "VirtualMachineInstancePreset adds a domain fragment to the VirtualMachineInstances its selector matches, when they are created (kubevirt.io/v1; deprecated in KubeVirt in favour of instancetypes)."
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstancePresetSpec {
    /// The VMIs (by label) this preset applies to.
    pub selector: LabelSelector,
    /// The domain settings to apply; a VMI's own settings win on conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainSpec>,
}

/// The observed state of a VMI preset. KubeVirt's presets have none; the
/// subresource exists so that every ironvirt kind has one, and nothing writes it yet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstancePresetStatus {
    /// The metadata.generation last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
