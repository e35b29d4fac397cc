//! Scheduling and the rest of the spec: probes, placement fields, the
//! termination grace period, hostname and subdomain.

use super::names::dns_label;
use super::{FieldError, unsupported, unsupported_fields};
use crate::vmi::VirtualMachineInstanceSpec;

pub(super) fn scheduling(
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let checks = &[
        (
            "livenessProbe",
            spec.liveness_probe.is_some(),
            unsupported::PROBES,
        ),
        (
            "readinessProbe",
            spec.readiness_probe.is_some(),
            unsupported::PROBES,
        ),
        (
            "topologySpreadConstraints",
            spec.topology_spread_constraints.is_some(),
            unsupported::TOPOLOGY_SPREAD,
        ),
        (
            "schedulerName",
            spec.scheduler_name.is_some(),
            unsupported::SCHEDULER_NAME,
        ),
        (
            "resourceClaims",
            spec.resource_claims.is_some(),
            unsupported::RESOURCE_CLAIMS,
        ),
        (
            "architecture",
            spec.architecture
                .as_deref()
                .is_some_and(|a| !a.is_empty() && a != "amd64"),
            unsupported::ARCHITECTURE,
        ),
    ];
    unsupported_fields(path, checks, errors);
    access_credentials(spec, path, errors);
    if let Some(t) = spec.termination_grace_period_seconds.filter(|t| *t < 0) {
        errors.push(FieldError::new(
            format!("{path}.terminationGracePeriodSeconds"),
            format!("{t} must be greater than or equal to 0"),
        ));
    }
    for (name, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(v) = value.as_deref()
            && let Err(m) = dns_label(v)
        {
            errors.push(FieldError::new(
                format!("{path}.{name}"),
                format!("'{v}': {m}"),
            ));
        }
    }
}

/// Each access credential is SSH keys from a Secret, propagated by noCloud
/// into the VMI's cloudInitNoCloud volume or by configDrive into its
/// cloudInitConfigDrive volume.
fn access_credentials(spec: &VirtualMachineInstanceSpec, path: &str, errors: &mut Vec<FieldError>) {
    let volumes = || spec.volumes.iter().flatten();
    let has_no_cloud = volumes().any(|v| v.cloud_init_no_cloud.is_some());
    let has_config_drive = volumes().any(|v| v.cloud_init_config_drive.is_some());
    for (i, c) in spec.access_credentials.iter().flatten().enumerate() {
        let field = format!("{path}.accessCredentials[{i}]");
        let refused = [(
            "userPassword",
            c.user_password.is_some(),
            unsupported::USER_PASSWORD,
        )];
        let kinds =
            usize::from(c.ssh_public_key.is_some()) + unsupported_fields(&field, &refused, errors);
        if kinds != 1 {
            errors.push(FieldError::new(
                field.clone(),
                "an access credential sets exactly one of sshPublicKey or userPassword",
            ));
        }
        let Some(key) = &c.ssh_public_key else {
            continue;
        };
        let kfield = format!("{field}.sshPublicKey");
        if key.source.secret.is_none() {
            errors.push(FieldError::new(
                format!("{kfield}.source.secret"),
                "the keys' Secret is required (source.secret.secretName)",
            ));
        }
        let m = &key.propagation_method;
        let pfield = format!("{kfield}.propagationMethod");
        let refused = [(
            "qemuGuestAgent",
            m.qemu_guest_agent.is_some(),
            unsupported::GUEST_AGENT_PROPAGATION,
        )];
        let methods = usize::from(m.no_cloud.is_some())
            + usize::from(m.config_drive.is_some())
            + unsupported_fields(&pfield, &refused, errors);
        if methods != 1 {
            errors.push(FieldError::new(
                pfield.clone(),
                "set exactly one propagation method: noCloud or configDrive",
            ));
        }
        if m.config_drive.is_some() && !has_config_drive {
            errors.push(FieldError::new(
                format!("{pfield}.configDrive"),
                "propagation configDrive needs a cloudInitConfigDrive volume: the keys go into its meta_data.json",
            ));
        }
        if m.no_cloud.is_some() && !has_no_cloud {
            errors.push(FieldError::new(
                format!("{pfield}.noCloud"),
                "propagation noCloud needs a cloudInitNoCloud volume: the keys go into its user-data",
            ));
        }
    }
}
