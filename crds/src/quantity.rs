//! Kubernetes resource quantities ("128Mi", "500m", "1e3") as numbers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::VirtualMachineInstance;

/// Parses a Kubernetes quantity into a number of `unit`s (1 for bytes, 0.001
/// for millicores), rounding up. `None` when it does not parse.
pub fn parse_quantity(q: &Quantity, millis: bool) -> Option<i64> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with('e') || e.starts_with('E') => 10f64.powi(e[1..].parse().ok()?),
        _ => return None,
    };
    let v = value * mult * if millis { 1000.0 } else { 1.0 };
    Some(v.ceil() as i64)
}

/// The memory the guest sees, in bytes: `domain.memory.guest`, else the memory
/// request, else the memory limit, as KubeVirt defaults it. `None` when none is
/// set or it does not parse.
pub fn guest_memory_bytes(vmi: &VirtualMachineInstance) -> Option<i64> {
    let domain = &vmi.spec.domain;
    let resources = domain.resources.as_ref();
    domain
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| {
            resources
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("memory"))
        })
        .or_else(|| {
            resources
                .and_then(|r| r.limits.as_ref())
                .and_then(|r| r.get("memory"))
        })
        .and_then(|q| parse_quantity(q, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_owned())
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity(&q("128Mi"), false), Some(134_217_728));
        assert_eq!(parse_quantity(&q("1024M"), false), Some(1_024_000_000));
        assert_eq!(parse_quantity(&q("500m"), true), Some(500));
        assert_eq!(parse_quantity(&q("2"), true), Some(2000));
        assert_eq!(parse_quantity(&q("1e3"), false), Some(1000));
        assert_eq!(parse_quantity(&q("lots"), false), None);
    }

    #[test]
    fn guest_memory_falls_back_to_requests_then_limits() {
        let vmi = |yaml: &str| -> VirtualMachineInstance {
            serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("fixture: {e}"))
        };
        let base = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: a}\nspec:\n  domain:\n";
        let g = vmi(&format!(
            "{base}    memory: {{guest: 64Mi}}\n    resources: {{requests: {{memory: 128Mi}}}}\n"
        ));
        assert_eq!(guest_memory_bytes(&g), Some(64 << 20));
        let r = vmi(&format!(
            "{base}    resources: {{requests: {{memory: 128Mi}}, limits: {{memory: 256Mi}}}}\n"
        ));
        assert_eq!(guest_memory_bytes(&r), Some(128 << 20));
        let l = vmi(&format!(
            "{base}    resources: {{limits: {{memory: 256Mi}}}}\n"
        ));
        assert_eq!(guest_memory_bytes(&l), Some(256 << 20));
        let none = vmi(&format!("{base}    cpu: {{cores: 1}}\n"));
        assert_eq!(guest_memory_bytes(&none), None);
    }
}
