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
            "accessCredentials",
            spec.access_credentials.is_some(),
            unsupported::ACCESS_CREDENTIALS,
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
