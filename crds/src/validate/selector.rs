//! Label selectors: validation as Kubernetes does it, and matching.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

use super::FieldError;
use super::names::{label_value, qualified_name};

/// Whether a (valid) label selector matches `labels`. An invalid selector
/// matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(labels))
}

/// Whether a selector has no terms (and so matches every object).
pub fn selects_everything(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|e| e.is_empty())
}

/// Validates a label selector as Kubernetes does: label keys and values, and
/// each expression's operator and values.
pub fn label_selector(selector: &LabelSelector, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        let field = format!("{path}.matchLabels");
        if let Err(m) = qualified_name(k) {
            errors.push(FieldError::new(&field, format!("key '{k}': {m}")));
        }
        if let Err(m) = label_value(v) {
            errors.push(FieldError::new(
                &field,
                format!("value '{v}' of '{k}': {m}"),
            ));
        }
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{path}.matchExpressions[{i}]");
        if let Err(m) = qualified_name(&req.key) {
            errors.push(FieldError::new(
                format!("{field}.key"),
                format!("'{}': {m}", req.key),
            ));
        }
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => errors.push(FieldError::required(
                format!("{field}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => errors.push(FieldError::forbidden(
                format!("{field}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(FieldError::unsupported(
                format!("{field}.operator"),
                format!(
                    "'{other}' is not a valid selector operator: use In, NotIn, Exists or DoesNotExist"
                ),
            )),
        }
        for v in values {
            if let Err(m) = label_value(v) {
                errors.push(FieldError::new(
                    format!("{field}.values"),
                    format!("'{v}': {m}"),
                ));
            }
        }
    }
    errors
}
