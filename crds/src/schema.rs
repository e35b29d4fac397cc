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

/// Declares a schema function for a field whose value ironvirt accepts only
/// when `rule` (a CEL expression over `self`) holds; `$ty` is the JSON type.
macro_rules! refused_value {
    ($fn_name:ident, $ty:literal, $rule:literal, $msg:literal) => {
        pub fn $fn_name(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "description": concat!("Known KubeVirt field; some values are refused: ", $msg),
                "type": $ty,
                "x-kubernetes-validations": [{"rule": $rule, "message": $msg}]
            })
        }
    };
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
    data_volume_templates,
    array,
    "dataVolumeTemplates are not supported by ironvirt (no CDI)"
);
unsupported!(
    pool_autohealing,
    object,
    "VirtualMachinePool autohealing is not supported by ironvirt yet"
);
unsupported!(
    pool_node_selector_matcher,
    array,
    "nodeSelectorRequirementMatcher is not supported by ironvirt yet; use labelSelector"
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
    user_password,
    object,
    "userPassword access credentials are not supported by ironvirt: they need the QEMU guest agent; use sshPublicKey with propagationMethod noCloud or configDrive"
);
unsupported!(
    guest_agent_propagation,
    object,
    "propagationMethod qemuGuestAgent is not supported by ironvirt: it needs the QEMU guest agent; use noCloud or configDrive"
);
unsupported!(
    launch_security,
    object,
    "launchSecurity (SEV, SEV-SNP, TDX) is not supported by ironvirt: no confidential-computing hardware here"
);
unsupported!(
    resource_claims,
    array,
    "resourceClaims (dynamic resource allocation) are not supported by ironvirt"
);
unsupported!(
    downward_metrics,
    object,
    "downwardMetrics are not supported by ironvirt yet"
);
unsupported!(
    memory_dump_volume,
    object,
    "memoryDump volumes are not supported by ironvirt yet"
);
unsupported!(numa, object, "cpu.numa is not supported by ironvirt yet");
unsupported!(
    realtime,
    object,
    "cpu.realtime is not supported by ironvirt yet"
);
unsupported!(
    firmware_acpi,
    object,
    "firmware.acpi (SLIC and MSDM tables) is not supported by ironvirt yet"
);
unsupported!(
    panic_devices,
    array,
    "panicDevices are not supported by ironvirt yet"
);
unsupported!(
    client_passthrough,
    object,
    "clientPassthrough (USB redirection) is not supported by ironvirt"
);
unsupported!(
    sound,
    object,
    "sound devices are not supported by ironvirt yet"
);
unsupported!(
    hyperv_passthrough,
    object,
    "features.hypervPassthrough is not supported by ironvirt; list the features under features.hyperv"
);
unsupported!(
    pci_address,
    string,
    "pciAddress is not supported by ironvirt: libvirt assigns PCI addresses"
);
unsupported!(
    block_size,
    object,
    "disk blockSize is not supported by ironvirt yet"
);
unsupported!(
    macvtap,
    object,
    "macvtap and passtBinding interfaces are not supported by ironvirt; use masquerade or bridge"
);
refused_value!(
    vsock,
    "boolean",
    "!self",
    "autoattachVSOCK is not supported by ironvirt yet"
);
refused_value!(
    virtio_transitional,
    "boolean",
    "!self",
    "useVirtioTransitional is not supported by ironvirt: the guest needs virtio 1.0 drivers"
);
refused_value!(
    lun_reservation,
    "boolean",
    "!self",
    "lun.reservation (SCSI persistent reservations) is not supported by ironvirt"
);
refused_value!(
    pool_state_preservation,
    "string",
    "self == 'Disabled'",
    "statePreservation Offline and Online are not supported by ironvirt: it has no persistent volumes to keep; use Disabled"
);
refused_value!(
    architecture,
    "string",
    "self == '' || self == 'amd64'",
    "ironvirt runs amd64 guests only: set architecture to amd64 or leave it unset"
);

/// `rebootPolicy`: Reboot is what every ironvirt domain does; Terminate is
/// refused with a message.
pub fn reboot_policy(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "What a reboot from inside the guest does: Reboot restarts the guest (the default). Terminate (end the VMI) is refused: rebootPolicy Terminate is not supported by ironvirt yet; use Reboot",
        "type": "string",
        "enum": ["Reboot", "Terminate"],
        "x-kubernetes-validations": [{"rule": "self == 'Reboot'", "message": "rebootPolicy Terminate is not supported by ironvirt yet; use Reboot"}]
    })
}

/// An object kept as written (KubeVirt's shape, passed on to the VMI where
/// the VMI's own schema checks it).
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// A list of objects kept as written.
pub fn any_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "nullable": true,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}
