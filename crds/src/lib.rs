//! API types for the `kubevirt.io/v1` kinds that ironvirt serves:
//! VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceReplicaSet and
//! VirtualMachineInstancePreset.
//!
//! Field names and JSON shapes are KubeVirt's, so existing manifests apply
//! unchanged. Fields KubeVirt has and ironvirt does not support yet are in the
//! schema and rejected by a CEL rule with a message that names them.
#![forbid(unsafe_code)]
// kube-derive's `printcolumn(...)` and `shortname` repeat keys by design.
#![allow(clippy::duplicated_attributes)]

pub mod access;
pub mod client;
pub mod conditions;
pub mod domain;
pub mod duration;
pub mod events;
pub mod expand;
pub mod instancetype;
pub mod migration;
pub mod network;
pub mod pool;
pub mod preset;
pub mod quantity;
pub mod schema;
pub mod validate;
pub mod vm;
pub mod vmi;
pub mod vmirs;
pub mod volumes;
pub mod watch;
pub mod wire;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use migration::{
    MigrationPhase, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
    VirtualMachineInstanceMigrationState, VirtualMachineInstanceMigrationStatus,
};
pub use preset::{VirtualMachineInstancePreset, VirtualMachineInstancePresetSpec};
pub use vm::{RunStrategy, VirtualMachine, VirtualMachineSpec, VirtualMachineStatus};
pub use vmi::{
    VirtualMachineInstance, VirtualMachineInstancePhase, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus,
};
pub use vmirs::{
    VirtualMachineInstanceReplicaSet, VirtualMachineInstanceReplicaSetSpec,
    VirtualMachineInstanceReplicaSetStatus,
};

/// The API group of the core kinds (VirtualMachine, VirtualMachineInstance, …).
pub const GROUP: &str = "kubevirt.io";
/// The served and stored version of [`GROUP`].
pub const VERSION: &str = "v1";
/// The API group of the aggregated subresource API.
pub const SUBRESOURCES_GROUP: &str = "subresources.kubevirt.io";

/// Every CRD ironvirt installs, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VirtualMachine::crd(),
        VirtualMachineInstance::crd(),
        VirtualMachineInstancePreset::crd(),
        VirtualMachineInstanceReplicaSet::crd(),
        VirtualMachineInstanceMigration::crd(),
        instancetype::VirtualMachineInstancetype::crd(),
        instancetype::VirtualMachineClusterInstancetype::crd(),
        instancetype::VirtualMachinePreference::crd(),
        instancetype::VirtualMachineClusterPreference::crd(),
        pool::VirtualMachinePool::crd(),
    ];
    for crd in &mut crds {
        if crd.spec.group == GROUP {
            add_v1alpha3(crd);
        }
        if crd.spec.group == pool::GROUP {
            add_pool_v1alpha1(crd);
        }
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                tidy_schema(schema);
            }
        }
    }
    crds
}

/// KubeVirt still serves `kubevirt.io/v1alpha3`, deprecated, with v1's
/// schema; manifests written for it (its quick-start lab among them) apply
/// unchanged. Objects are stored as v1 (no conversion is needed: only
/// `apiVersion` differs), so every controller and webhook sees v1.
fn add_v1alpha3(crd: &mut CustomResourceDefinition) {
    let Some(v1) = crd.spec.versions.iter().find(|v| v.name == "v1").cloned() else {
        return;
    };
    crd.spec.versions.push(
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion {
            name: "v1alpha3".into(),
            served: true,
            storage: false,
            deprecated: Some(true),
            deprecation_warning: Some(
                "kubevirt.io/v1alpha3 is deprecated; use kubevirt.io/v1".into(),
            ),
            ..v1
        },
    );
}

/// KubeVirt serves `pool.kubevirt.io/v1alpha1` beside the stored v1beta1;
/// ironvirt serves it with v1beta1's schema (v1alpha1's fields are a subset
/// of it, so no conversion is needed).
fn add_pool_v1alpha1(crd: &mut CustomResourceDefinition) {
    let Some(stored) = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == pool::VERSION)
        .cloned()
    else {
        return;
    };
    crd.spec.versions.push(
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion {
            name: pool::OLD_VERSION.into(),
            served: true,
            storage: false,
            ..stored
        },
    );
}

/// Adjusts what schemars emits to what Kubernetes expects: OpenAPI has no
/// unsigned formats (the apiserver warns on "uint32"), and an optional enum is
/// marked nullable rather than listing null among its values.
fn tidy_schema(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    if let Some(format) = schema.format.as_deref() {
        let replacement = match format {
            "uint8" | "uint16" | "int8" | "int16" => Some("int32"),
            "uint32" | "uint64" | "uint" => Some("int64"),
            _ => None,
        };
        if let Some(r) = replacement {
            schema.format = Some(r.to_owned());
        }
    }
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().filter_map(|i| match i {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(s) => Some(s.as_mut()),
            _ => None,
        }))
        .chain(schema.additional_properties.iter_mut().filter_map(|a| match a {
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(s) => Some(s.as_mut()),
            _ => None,
        }))
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten());
    for child in children {
        tidy_schema(child);
    }
}

/// The file name under deploy/crds for a CRD: `<plural>.<group>.yaml`.
pub fn crd_file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// A CRD as committed YAML, with a header saying how it was made.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated by `cargo run -p ironvirt-crds --bin crdgen`; do not edit.\n{}",
        serde_yaml::to_string(crd)?
    ))
}
