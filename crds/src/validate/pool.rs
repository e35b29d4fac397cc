//! VirtualMachinePool validation: its selector (valid, not empty, matching
//! the VM template's labels), replicas and maxUnavailable, and the VM
//! template checked as a VirtualMachine would be, with paths under
//! `spec.virtualMachineTemplate`.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{FieldError, replicas_and_selector, unsupported, unsupported_fields, vm_spec};
use crate::pool::{SelectionPolicy, VirtualMachinePoolSpec};

/// Where the VM template's spec sits in a pool.
const TEMPLATE_SPEC: &str = "spec.virtualMachineTemplate.spec";

/// Validates a VirtualMachinePool spec (at `spec`).
pub fn pool_spec(spec: &VirtualMachinePoolSpec) -> Vec<FieldError> {
    let mut errors = replicas_and_selector(
        spec.replicas,
        &spec.selector,
        spec.virtual_machine_template.metadata.as_ref(),
        "VM",
        "selector does not match labels of spec.virtualMachineTemplate.metadata.labels",
    );
    if let Some(IntOrString::String(s)) = &spec.max_unavailable {
        let pct = s.strip_suffix('%').and_then(|n| n.parse::<u32>().ok());
        if pct.is_none_or(|p| p > 100) {
            errors.push(FieldError::new(
                "spec.maxUnavailable",
                format!("{s:?} must be a number of VMs or a percentage from 0% to 100%"),
            ));
        }
    }
    if let Some(IntOrString::Int(n)) = spec.max_unavailable
        && n < 0
    {
        errors.push(FieldError::new(
            "spec.maxUnavailable",
            format!("{n} must be greater than or equal to 0"),
        ));
    }
    refused_fields(spec, &mut errors);
    errors.extend(
        vm_spec(&spec.virtual_machine_template.spec)
            .into_iter()
            .map(|e| rebase(e, TEMPLATE_SPEC)),
    );
    errors
}

/// The fields ironvirt refuses (their CRD CEL rules say the same).
fn refused_fields(spec: &VirtualMachinePoolSpec, errors: &mut Vec<FieldError>) {
    unsupported_fields(
        "spec",
        &[(
            "autohealing",
            spec.autohealing.is_some(),
            unsupported::POOL_AUTOHEALING,
        )],
        errors,
    );
    let node_matcher = |p: Option<&SelectionPolicy>| {
        p.and_then(|p| p.selectors.as_ref())
            .is_some_and(|s| s.node_selector_requirement_matcher.is_some())
    };
    let preserved = |s: Option<&String>| s.is_some_and(|s| s != "Disabled");
    if let Some(s) = &spec.scale_in_strategy {
        let proactive = s.proactive.as_ref();
        unsupported_fields(
            "spec.scaleInStrategy.proactive",
            &[
                (
                    "selectionPolicy.selectors.nodeSelectorRequirementMatcher",
                    node_matcher(proactive.and_then(|p| p.selection_policy.as_ref())),
                    unsupported::POOL_NODE_MATCHER,
                ),
                (
                    "statePreservation",
                    preserved(proactive.and_then(|p| p.state_preservation.as_ref())),
                    unsupported::POOL_STATE_PRESERVATION,
                ),
            ],
            errors,
        );
        unsupported_fields(
            "spec.scaleInStrategy.opportunistic",
            &[(
                "statePreservation",
                preserved(
                    s.opportunistic
                        .as_ref()
                        .and_then(|o| o.state_preservation.as_ref()),
                ),
                unsupported::POOL_STATE_PRESERVATION,
            )],
            errors,
        );
    }
    if let Some(u) = &spec.update_strategy {
        unsupported_fields(
            "spec.updateStrategy.proactive",
            &[(
                "selectionPolicy.selectors.nodeSelectorRequirementMatcher",
                node_matcher(
                    u.proactive
                        .as_ref()
                        .and_then(|p| p.selection_policy.as_ref()),
                ),
                unsupported::POOL_NODE_MATCHER,
            )],
            errors,
        );
    }
}

/// The warnings for a VirtualMachinePool spec: its VM template's, with paths
/// under `spec.virtualMachineTemplate`.
pub fn pool_warnings(spec: &VirtualMachinePoolSpec) -> Vec<String> {
    super::warnings::vm_spec(&spec.virtual_machine_template.spec)
        .into_iter()
        .map(|w| match w.strip_prefix("spec") {
            Some(rest) => format!("{TEMPLATE_SPEC}{rest}"),
            None => w,
        })
        .collect()
}

/// A VM spec's error (its path under `spec`) as a path under `base`.
fn rebase(mut e: FieldError, base: &str) -> FieldError {
    if let Some(rest) = e.field.strip_prefix("spec") {
        e.field = format!("{base}{rest}");
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(extra: &str, template_labels: &str, domain: &str) -> VirtualMachinePoolSpec {
        serde_yaml::from_str(&format!(
            "selector: {{matchLabels: {{app: x}}}}
virtualMachineTemplate:
  metadata: {{labels: {template_labels}}}
  spec:
    runStrategy: Always
    template: {{spec: {{domain: {domain}}}}}
{extra}"
        ))
        .unwrap()
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn a_good_pool_passes() {
        let p = pool("maxUnavailable: 30%", "{app: x}", "{memory: {guest: 64Mi}}");
        assert_eq!(pool_spec(&p), []);
    }

    #[test]
    fn the_selector_must_match_the_vm_template() {
        let p = pool("", "{app: y}", "{memory: {guest: 64Mi}}");
        let errs = pool_spec(&p);
        assert_eq!(fields(&errs), ["spec.selector"]);
        assert!(
            errs[0].message.contains("does not match"),
            "{}",
            errs[0].message
        );
        let mut p = pool("", "{app: x}", "{memory: {guest: 64Mi}}");
        p.selector = Default::default();
        assert_eq!(fields(&pool_spec(&p)), ["spec.selector"]);
    }

    #[test]
    fn template_errors_name_the_path_in_the_pool() {
        let p = pool(
            "",
            "{app: x}",
            "{memory: {guest: 64Mi}, devices: {disks: [{name: d}]}}",
        );
        let errs = pool_spec(&p);
        assert!(!errs.is_empty());
        for e in &errs {
            assert!(
                e.field
                    .starts_with("spec.virtualMachineTemplate.spec.template.spec."),
                "{}",
                e.field
            );
        }
    }

    #[test]
    fn refused_fields_name_their_path() {
        let p = pool(
            "autohealing: {}\nscaleInStrategy: {proactive: {statePreservation: Offline, selectionPolicy: {selectors: {nodeSelectorRequirementMatcher: []}}}}",
            "{app: x}",
            "{memory: {guest: 64Mi}}",
        );
        let errs = pool_spec(&p);
        assert_eq!(
            fields(&errs),
            [
                "spec.autohealing",
                "spec.scaleInStrategy.proactive.selectionPolicy.selectors.nodeSelectorRequirementMatcher",
                "spec.scaleInStrategy.proactive.statePreservation",
            ]
        );
        let ok = pool(
            "scaleInStrategy: {proactive: {statePreservation: Disabled}}",
            "{app: x}",
            "{memory: {guest: 64Mi}}",
        );
        assert_eq!(pool_spec(&ok), []);
    }

    #[test]
    fn warnings_name_the_path_in_the_pool() {
        let mut p = pool("", "{app: x}", "{memory: {guest: 64Mi}}");
        p.virtual_machine_template.spec.update_volumes_strategy =
            serde_json::from_value(serde_json::json!("Replacement")).ok();
        let w = pool_warnings(&p);
        assert!(
            w.iter()
                .any(|w| w.starts_with("spec.virtualMachineTemplate.spec.updateVolumesStrategy: ")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .all(|w| w.starts_with("spec.virtualMachineTemplate.spec.")),
            "{w:?}"
        );
    }

    #[test]
    fn max_unavailable_is_a_count_or_a_percentage() {
        for bad in [
            "maxUnavailable: 120%",
            "maxUnavailable: lots",
            "maxUnavailable: -1",
        ] {
            let p = pool(bad, "{app: x}", "{memory: {guest: 64Mi}}");
            assert_eq!(fields(&pool_spec(&p)), ["spec.maxUnavailable"], "{bad}");
        }
    }
}
