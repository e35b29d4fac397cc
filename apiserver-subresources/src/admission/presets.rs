//! VirtualMachineInstancePresets: which apply to a VMI, whether they conflict,
//! and merging their `spec.domain` into the VMI's.
//!
//! KubeVirt's semantics: a preset never overrides a value the VMI sets; two
//! matching presets that set the same field to different values conflict, and
//! then none is applied. ironvirt merges field by field (a preset's
//! `cpu.cores` fills in a VMI that sets only `cpu.model`); lists and the
//! bootloader are taken whole. Quantities compare by value (`1Gi` = `1024Mi`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ironvirt_crds::VirtualMachineInstancePreset;
use ironvirt_crds::quantity::parse_quantity;
use ironvirt_crds::validate::selector_matches;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Map, Value};

use super::uuid::hash128;

/// The annotation KubeVirt puts on a VMI for each preset applied:
/// `presets.virtualmachines.kubevirt.io/<preset-name>: kubevirt.io/v1`.
pub const PRESET_ANNOTATION_PREFIX: &str = "presets.virtualmachines.kubevirt.io/";
/// A VMI with this annotation set to "true" gets no presets (KubeVirt's).
pub const EXCLUDE_ANNOTATION: &str = "virtualmachineinstancepresets.admission.kubevirt.io/exclude";
/// The annotation that records why matching presets were not applied.
pub const CONFLICT_ANNOTATION: &str = "ironvirt.io/preset-conflict";

/// Subtrees merged whole: one-of choices, where a field-wise merge could
/// produce an invalid mix (bios and efi).
const ATOMIC: [&str; 1] = ["spec.domain.firmware.bootloader"];

/// A preset that matches a VMI: its name and its `spec.domain` as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedPreset {
    /// The preset's name.
    pub name: String,
    /// Its `spec.domain`.
    pub domain: Value,
}

/// What applying the matching presets did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresetOutcome {
    /// These presets contributed (or agreed with) at least one value, by name.
    Applied(Vec<String>),
    /// The presets conflict; none was applied. The message says where.
    Conflict(String),
}

/// The presets among `presets` whose selector matches `labels`, by name.
/// Presets with an invalid selector match nothing (validation refuses them).
pub fn matching_presets(
    presets: &[Arc<VirtualMachineInstancePreset>],
    labels: &BTreeMap<String, String>,
) -> Vec<MatchedPreset> {
    let mut matched: Vec<MatchedPreset> = presets
        .iter()
        .filter(|p| selector_matches(&p.spec.selector, labels))
        .filter_map(|p| {
            let domain = serde_json::to_value(p.spec.domain.as_ref()?).ok()?;
            Some(MatchedPreset {
                name: p.metadata.name.clone().unwrap_or_default(),
                domain,
            })
        })
        .collect();
    matched.sort_by(|a, b| a.name.cmp(&b.name));
    matched
}

/// Whether a raw VMI opts out of presets.
pub fn excluded(vmi: &Value) -> bool {
    vmi.pointer(&format!(
        "/metadata/annotations/{}",
        EXCLUDE_ANNOTATION.replace('~', "~0").replace('/', "~1")
    ))
    .and_then(Value::as_str)
        == Some("true")
}

/// Merges `presets` into `domain` (a VMI's `spec.domain`) unless two of them
/// conflict. `None` when there are no presets.
pub fn apply(domain: &mut Map<String, Value>, presets: &[MatchedPreset]) -> Option<PresetOutcome> {
    if presets.is_empty() {
        return None;
    }
    let mut conflicts = Vec::new();
    for (i, a) in presets.iter().enumerate() {
        for b in &presets[i + 1..] {
            let mut at = Vec::new();
            conflicting_fields(&a.domain, &b.domain, "spec.domain", &mut at);
            if !at.is_empty() {
                conflicts.push(format!(
                    "presets '{}' and '{}' conflict: {}",
                    a.name,
                    b.name,
                    at.join(", ")
                ));
            }
        }
    }
    if !conflicts.is_empty() {
        return Some(PresetOutcome::Conflict(format!(
            "VirtualMachineInstancePresets cannot be applied due to conflicts: {}",
            conflicts.join("; ")
        )));
    }
    let applied = presets
        .iter()
        .filter(|p| match p.domain.as_object() {
            Some(d) => merge(domain, d, "spec.domain"),
            None => false,
        })
        .map(|p| p.name.clone())
        .collect();
    Some(PresetOutcome::Applied(applied))
}

/// The annotation key for an applied preset. Kubernetes limits the name part
/// of a key to 63 characters; a longer preset name is shortened with a hash.
pub fn annotation_key(preset: &str) -> String {
    if preset.len() <= 63 {
        return format!("{PRESET_ANNOTATION_PREFIX}{preset}");
    }
    let head: String = preset.chars().take(50).collect();
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = format!("{:032x}", hash128(preset));
    format!("{PRESET_ANNOTATION_PREFIX}{head}-{}", &hash[..12])
}

/// Fields both presets set to different values, as `path: a != b`.
fn conflicting_fields(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    if a.is_null() || b.is_null() || same(path, a, b) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if !ATOMIC.contains(&path) => {
            for (k, av) in x {
                if let Some(bv) = y.get(k) {
                    conflicting_fields(av, bv, &format!("{path}.{k}"), out);
                }
            }
        }
        _ => out.push(format!("{path}: {a} != {b}")),
    }
}

/// Fills in what `target` leaves unset from `preset`. True when the preset
/// contributed or agreed with at least one value.
fn merge(target: &mut Map<String, Value>, preset: &Map<String, Value>, path: &str) -> bool {
    let mut applied = false;
    for (k, pv) in preset {
        if pv.is_null() {
            continue;
        }
        let p = format!("{path}.{k}");
        match target.get_mut(k) {
            None | Some(Value::Null) => {
                target.insert(k.clone(), pv.clone());
                applied = true;
            }
            Some(tv) if same(&p, tv, pv) => applied = true,
            Some(Value::Object(t)) if !ATOMIC.contains(&p.as_str()) => {
                if let Some(pm) = pv.as_object() {
                    applied |= merge(t, pm, &p);
                }
            }
            // The VMI's own value wins.
            Some(_) => {}
        }
    }
    applied
}

/// Equal values; quantities (resources, memory.guest) compare by value.
fn same(path: &str, a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let is_quantity =
        path.starts_with("spec.domain.resources.") || path == "spec.domain.memory.guest";
    is_quantity && matches!((quantity(a), quantity(b)), (Some(x), Some(y)) if x == y)
}

fn quantity(v: &Value) -> Option<i64> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    parse_quantity(&Quantity(s), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn preset(name: &str, domain: Value) -> MatchedPreset {
        MatchedPreset {
            name: name.into(),
            domain,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_preset_fills_in_and_never_overrides() {
        let mut d = obj(json!({"cpu": {"model": "Westmere", "cores": 4}, "resources": {}}));
        let p = preset(
            "small",
            json!({"cpu": {"cores": 1, "sockets": 2}, "memory": {"guest": "128Mi"}, "resources": {"requests": {"memory": "128Mi"}}}),
        );
        let out = apply(&mut d, &[p]);
        assert_eq!(out, Some(PresetOutcome::Applied(vec!["small".into()])));
        assert_eq!(
            Value::Object(d),
            json!({"cpu": {"model": "Westmere", "cores": 4, "sockets": 2}, "memory": {"guest": "128Mi"}, "resources": {"requests": {"memory": "128Mi"}}})
        );
    }

    #[test]
    fn a_preset_the_vmi_overrides_entirely_is_not_applied() {
        let mut d = obj(json!({"cpu": {"cores": 4}}));
        let out = apply(&mut d, &[preset("p", json!({"cpu": {"cores": 1}}))]);
        assert_eq!(out, Some(PresetOutcome::Applied(vec![])));
    }

    #[test]
    fn conflicting_presets_apply_nothing() {
        let mut d = obj(json!({}));
        let out = apply(
            &mut d,
            &[
                preset(
                    "a",
                    json!({"cpu": {"cores": 1}, "memory": {"guest": "1Gi"}}),
                ),
                preset(
                    "b",
                    json!({"cpu": {"cores": 2}, "memory": {"guest": "1024Mi"}}),
                ),
            ],
        );
        let Some(PresetOutcome::Conflict(m)) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            m,
            "VirtualMachineInstancePresets cannot be applied due to conflicts: presets 'a' and 'b' conflict: spec.domain.cpu.cores: 1 != 2"
        );
        assert!(d.is_empty());
    }

    #[test]
    fn agreeing_presets_both_apply() {
        let mut d = obj(json!({}));
        let out = apply(
            &mut d,
            &[
                preset("a", json!({"resources": {"requests": {"memory": "1Gi"}}})),
                preset(
                    "b",
                    json!({"resources": {"requests": {"memory": "1024Mi", "cpu": "1"}}}),
                ),
            ],
        );
        assert_eq!(
            out,
            Some(PresetOutcome::Applied(vec!["a".into(), "b".into()]))
        );
        assert_eq!(
            Value::Object(d),
            json!({"resources": {"requests": {"memory": "1Gi", "cpu": "1"}}})
        );
    }

    #[test]
    fn the_bootloader_is_taken_whole() {
        let mut d = obj(json!({"firmware": {"bootloader": {"efi": {}}}}));
        apply(
            &mut d,
            &[preset(
                "p",
                json!({"firmware": {"bootloader": {"bios": {}}, "serial": "s"}}),
            )],
        );
        assert_eq!(
            Value::Object(d),
            json!({"firmware": {"bootloader": {"efi": {}}, "serial": "s"}})
        );
        let mut out = Vec::new();
        conflicting_fields(
            &json!({"firmware": {"bootloader": {"efi": {}}}}),
            &json!({"firmware": {"bootloader": {"bios": {}}}}),
            "spec.domain",
            &mut out,
        );
        assert_eq!(out.len(), 1, "{out:?}");
    }

    #[test]
    fn exclusion_and_annotation_keys() {
        assert!(excluded(
            &json!({"metadata": {"annotations": {EXCLUDE_ANNOTATION: "true"}}})
        ));
        assert!(!excluded(&json!({"metadata": {}})));
        assert_eq!(
            annotation_key("small"),
            "presets.virtualmachines.kubevirt.io/small"
        );
        let long = annotation_key(&"x".repeat(100));
        let name = long.strip_prefix(PRESET_ANNOTATION_PREFIX).unwrap();
        assert!(name.len() <= 63, "{name}");
        assert_ne!(long, annotation_key(&"x".repeat(101)));
    }
}
