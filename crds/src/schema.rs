//! Hand-written schema fragments: embedded template metadata, and KubeVirt
//! fields that ironvirt knows but does not support yet (rejected with a clear
//! message instead of being silently ignored).

use schemars::{Schema, SchemaGenerator, json_schema};

/// `metadata` of an embedded VMI template: the fields a template may set are
/// typed (so CEL rules can read labels), anything else an ObjectMeta may carry
/// is preserved, as in KubeVirt's own CRDs.
pub fn template_metadata(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "Standard object metadata for the VirtualMachineInstances created from this template: labels, annotations, and optionally name and namespace.",
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "name": {"type": "string", "description": "Name of the created object; defaults to the owner's name."},
            "generateName": {"type": "string", "description": "Prefix for a generated name."},
            "namespace": {"type": "string", "description": "Namespace; always the owner's namespace."},
            "labels": {
                "type": "object",
                "description": "Labels for the created VirtualMachineInstance.",
                "additionalProperties": {"type": "string"}
            },
            "annotations": {
                "type": "object",
                "description": "Annotations for the created VirtualMachineInstance.",
                "additionalProperties": {"type": "string"}
            }
        }
    })
}

/// Declares a schema function for a field KubeVirt has and ironvirt rejects.
/// The field keeps KubeVirt's JSON type (object, array of objects, or string)
/// with any content, and a CEL rule that always fails when the field is present
/// gives the user a message naming it. (CEL rules need a typed node.)
macro_rules! unsupported {
    ($fn_name:ident, object, $msg:literal) => {
        pub fn $fn_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "description": concat!("Known KubeVirt field that ironvirt rejects: ", $msg),
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "x-kubernetes-validations": [{"rule": "false", "message": $msg}]
            })
        }
    };
    ($fn_name:ident, array, $msg:literal) => {
        pub fn $fn_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "description": concat!("Known KubeVirt field that ironvirt rejects: ", $msg),
                "type": "array",
                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "x-kubernetes-validations": [{"rule": "false", "message": $msg}]
            })
        }
    };
    ($fn_name:ident, boolean, $msg:literal) => {
        pub fn $fn_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "description": concat!("Known KubeVirt field that ironvirt rejects: ", $msg),
                "type": "boolean",
                "x-kubernetes-validations": [{"rule": "false", "message": $msg}]
            })
        }
    };
    ($fn_name:ident, string, $msg:literal) => {
        pub fn $fn_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "description": concat!("Known KubeVirt field that ironvirt rejects: ", $msg),
                "type": "string",
                "x-kubernetes-validations": [{"rule": "false", "message": $msg}]
            })
        }
    };
}

unsupported!(
    pvc_volume,
    object,
    "persistentVolumeClaim volumes are not supported by ironvirt yet; use hostDisk, emptyDisk, containerDisk or cloudInitNoCloud"
);
unsupported!(
    data_volume,
    object,
    "dataVolume volumes are not supported by ironvirt (no CDI); use hostDisk or containerDisk"
);
unsupported!(
    ephemeral_volume,
    object,
    "ephemeral volumes are not supported by ironvirt yet; use containerDisk"
);
unsupported!(
    config_map_volume,
    object,
    "configMap volumes are not supported by ironvirt yet"
);
unsupported!(
    secret_volume,
    object,
    "secret volumes are not supported by ironvirt yet"
);
unsupported!(
    service_account_volume,
    object,
    "serviceAccount volumes are not supported by ironvirt yet"
);
unsupported!(
    config_drive_volume,
    object,
    "cloudInitConfigDrive is not supported by ironvirt yet; use cloudInitNoCloud"
);
unsupported!(
    downward_api_volume,
    object,
    "downwardAPI volumes are not supported by ironvirt yet"
);
unsupported!(
    sysprep_volume,
    object,
    "sysprep volumes are not supported by ironvirt yet"
);
unsupported!(
    hugepages,
    object,
    "memory.hugepages is not supported by ironvirt yet"
);
unsupported!(
    dedicated_cpu,
    boolean,
    "cpu.dedicatedCpuPlacement is not supported by ironvirt yet"
);
unsupported!(
    gpus,
    array,
    "gpus and hostDevices are not supported by ironvirt yet"
);
unsupported!(
    watchdog,
    object,
    "watchdog devices are not supported by ironvirt yet"
);
unsupported!(
    filesystems,
    array,
    "filesystems (virtiofs) are not supported by ironvirt yet"
);
unsupported!(tpm, object, "tpm devices are not supported by ironvirt yet");
unsupported!(
    sriov,
    object,
    "sriov interfaces are not supported by ironvirt; use masquerade or bridge"
);
unsupported!(
    passt,
    object,
    "passt and slirp interfaces are not supported by ironvirt; use masquerade or bridge"
);
unsupported!(
    binding_plugin,
    object,
    "network binding plugins are not supported by ironvirt; use masquerade or bridge"
);
unsupported!(
    multus,
    object,
    "multus networks are not supported by ironvirt yet; use pod"
);
unsupported!(
    probes,
    object,
    "liveness and readiness probes are not supported by ironvirt yet"
);
unsupported!(
    instancetype,
    object,
    "instancetype and preference are not supported by ironvirt yet; set spec.template.spec.domain directly"
);
unsupported!(
    data_volume_templates,
    array,
    "dataVolumeTemplates are not supported by ironvirt (no CDI)"
);
unsupported!(
    topology_spread,
    array,
    "topologySpreadConstraints are not supported by ironvirt yet; use affinity"
);
unsupported!(
    scheduler_name,
    string,
    "schedulerName is not supported: ironvirt places VMIs itself"
);
unsupported!(
    access_credentials,
    array,
    "accessCredentials are not supported by ironvirt yet; use cloudInitNoCloud user-data"
);
