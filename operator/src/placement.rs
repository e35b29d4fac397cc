//! VMI placement as pure functions: which nodes qualify for a VMI, why the
//! others do not, and which node to choose. [`plan`] decides a whole
//! placement reconcile from these.

pub mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::VirtualMachineInstancePhase as Phase;
use ironvirt_crds::wire::SCHEDULABLE_LABEL;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::jiff::Timestamp;

/// What placement needs to know about a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// Allocatable CPU in millicores and memory in bytes.
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// When the handler last renewed the node's Lease.
    pub lease_renewed: Option<Timestamp>,
    /// Cordoned (`spec.unschedulable`): no new VMIs, no migrations in.
    pub unschedulable: bool,
}

/// CPU (millicores) and memory (bytes) a VMI reserves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Demand {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// Why a node does not qualify; the text matches kube-scheduler's where one exists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rejection {
    HandlerNotReady,
    Unschedulable,
    NotSchedulable,
    NodeSelectorMismatch,
    UntoleratedTaint(String),
    InsufficientCpu,
    InsufficientMemory,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::HandlerNotReady => {
                write!(f, "node(s) had no live ironvirt handler (Lease expired)")
            }
            Rejection::Unschedulable => write!(f, "node(s) were unschedulable"),
            Rejection::NotSchedulable => {
                write!(f, "node(s) were not labelled {SCHEDULABLE_LABEL}=true")
            }
            Rejection::NodeSelectorMismatch => {
                write!(
                    f,
                    "node(s) didn't match the VMI's node selector or affinity"
                )
            }
            Rejection::UntoleratedTaint(t) => write!(f, "node(s) had untolerated taint {{{t}}}"),
            Rejection::InsufficientCpu => write!(f, "Insufficient cpu"),
            Rejection::InsufficientMemory => write!(f, "Insufficient memory"),
        }
    }
}

pub use ironvirt_crds::quantity::parse_quantity;

/// The operator's `--node-label-selector` (`k=v,k2`) as a label selector for
/// [`ironvirt_crds::validate::selector_matches`]: `k=v` wants label `k` with
/// value `v`, a bare `k` wants label `k` with any value; every term must hold.
pub fn node_label_selector(flag: &str) -> LabelSelector {
    let requirement = |key: &str, operator: &str, value: Option<&str>| LabelSelectorRequirement {
        key: key.trim().to_owned(),
        operator: operator.to_owned(),
        values: value.map(|v| vec![v.trim().to_owned()]),
    };
    let terms = flag
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|term| match term.split_once('=') {
            Some((k, v)) => requirement(k, "In", Some(v)),
            None => requirement(term, "Exists", None),
        })
        .collect();
    LabelSelector {
        match_expressions: Some(terms),
        match_labels: None,
    }
}

/// What a VMI reserves: its requests; memory defaults to memory.guest, CPU to
/// nothing (overcommitted), as in KubeVirt.
pub fn demand(vmi: &VirtualMachineInstance) -> Demand {
    let domain = &vmi.spec.domain;
    let requests = domain.resources.as_ref().and_then(|r| r.requests.as_ref());
    let get = |k: &str, millis: bool| {
        requests
            .and_then(|r| r.get(k))
            .and_then(|q| parse_quantity(q, millis))
    };
    let guest = domain
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .and_then(|q| parse_quantity(q, false));
    Demand {
        cpu_millis: get("cpu", true).unwrap_or(0),
        memory_bytes: get("memory", false).or(guest).unwrap_or(0),
    }
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.clone().unwrap_or_default();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term
        .match_expressions
        .iter()
        .flatten()
        .all(|r| requirement_matches(r, node.labels.get(&r.key).map(String::as_str)));
    let fields = term.match_fields.iter().flatten().all(|r| {
        let v = (r.key == "metadata.name").then_some(node.name.as_str());
        requirement_matches(r, v)
    });
    exprs && fields
}

/// Whether the VMI's nodeSelector and required node affinity accept the node.
pub fn selector_matches(vmi: &VirtualMachineInstance, node: &NodeInfo) -> bool {
    let selector_ok = vmi
        .spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    let required = vmi
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|r| {
        r.node_selector_terms.is_empty()
            || r.node_selector_terms.iter().any(|t| term_matches(t, node))
    });
    selector_ok && affinity_ok
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key);
        let op = t.operator.as_deref().unwrap_or("Equal");
        let value_ok = op == "Exists"
            || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
        // An empty key with Exists tolerates everything.
        effect_ok && key_ok && value_ok
    })
}

/// The first taint the VMI does not tolerate (NoSchedule and NoExecute count).
pub fn untolerated_taint(vmi: &VirtualMachineInstance, node: &NodeInfo) -> Option<String> {
    let tolerations = vmi.spec.tolerations.clone().unwrap_or_default();
    node.taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerates(&tolerations, t))
        .map(|t| match t.value.as_deref() {
            Some(v) if !v.is_empty() => format!("{}: {}", t.key, v),
            _ => t.key.clone(),
        })
}

/// Whether the node's handler renewed its Lease within `timeout`.
pub fn handler_alive(node: &NodeInfo, now: Timestamp, timeout: Duration) -> bool {
    node.lease_renewed.is_some_and(|t| {
        let age = now.duration_since(t);
        age.is_negative() || Duration::try_from(age).is_ok_and(|a| a <= timeout)
    })
}

/// Why `node` cannot take `vmi`, given what is already `used` there.
pub fn check_node(
    vmi: &VirtualMachineInstance,
    want: Demand,
    node: &NodeInfo,
    used: Demand,
    now: Timestamp,
    lease_timeout: Duration,
) -> Result<(), Rejection> {
    if !handler_alive(node, now, lease_timeout) {
        return Err(Rejection::HandlerNotReady);
    }
    if node.unschedulable {
        return Err(Rejection::Unschedulable);
    }
    if node.labels.get(SCHEDULABLE_LABEL).map(String::as_str) != Some("true") {
        return Err(Rejection::NotSchedulable);
    }
    if !selector_matches(vmi, node) {
        return Err(Rejection::NodeSelectorMismatch);
    }
    if let Some(t) = untolerated_taint(vmi, node) {
        return Err(Rejection::UntoleratedTaint(t));
    }
    if used.cpu_millis + want.cpu_millis > node.cpu_millis {
        return Err(Rejection::InsufficientCpu);
    }
    if used.memory_bytes + want.memory_bytes > node.memory_bytes {
        return Err(Rejection::InsufficientMemory);
    }
    Ok(())
}

/// Whether a placed VMI still holds its node's capacity.
pub fn holds_capacity(vmi: &VirtualMachineInstance) -> bool {
    let phase = vmi.status.as_ref().and_then(|s| s.phase);
    let node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
    node.is_some() && !phase.is_some_and(Phase::is_final)
}

/// What the placed VMIs use on each node.
pub fn usage<'a>(
    placed: impl IntoIterator<Item = &'a VirtualMachineInstance>,
) -> BTreeMap<String, Demand> {
    let mut out: BTreeMap<String, Demand> = BTreeMap::new();
    for v in placed.into_iter().filter(|v| holds_capacity(v)) {
        let Some(node) = v.status.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let d = demand(v);
        let e = out.entry(node).or_default();
        e.cpu_millis += d.cpu_millis;
        e.memory_bytes += d.memory_bytes;
    }
    out
}

/// The node for `vmi`: among qualifying nodes, the one with the most free
/// memory (ties by name). Otherwise a message in kube-scheduler's style,
/// e.g. "0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match …".
pub fn choose(
    vmi: &VirtualMachineInstance,
    nodes: &[NodeInfo],
    placed: &[VirtualMachineInstance],
    now: Timestamp,
    lease_timeout: Duration,
) -> Result<String, String> {
    choose_with_usage(vmi, nodes, &usage(placed), now, lease_timeout)
}

/// [`choose`], given what is already used on each node.
pub fn choose_with_usage(
    vmi: &VirtualMachineInstance,
    nodes: &[NodeInfo],
    used: &BTreeMap<String, Demand>,
    now: Timestamp,
    lease_timeout: Duration,
) -> Result<String, String> {
    let want = demand(vmi);
    let mut best: Option<(i64, &str)> = None;
    let mut why: BTreeMap<Rejection, usize> = BTreeMap::new();
    for node in nodes {
        let u = used.get(&node.name).copied().unwrap_or_default();
        match check_node(vmi, want, node, u, now, lease_timeout) {
            Ok(()) => {
                let free = node.memory_bytes - u.memory_bytes;
                if best.is_none_or(|(f, n)| free > f || (free == f && node.name.as_str() < n)) {
                    best = Some((free, &node.name));
                }
            }
            Err(r) => *why.entry(r).or_default() += 1,
        }
    }
    match best {
        Some((_, name)) => Ok(name.to_owned()),
        None if nodes.is_empty() => {
            Err("0/0 nodes are available: no node runs an ironvirt handler".into())
        }
        None => Err(format!(
            "0/{} nodes are available: {}",
            nodes.len(),
            why.iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    pub(crate) fn node(name: &str, cpu: i64, mem_mi: i64) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: [(SCHEDULABLE_LABEL.to_owned(), "true".to_owned())].into(),
            taints: vec![],
            cpu_millis: cpu,
            memory_bytes: mem_mi * 1024 * 1024,
            lease_renewed: Some(at(1000)),
            unschedulable: false,
        }
    }

    fn vmi(yaml: &str) -> VirtualMachineInstance {
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: v}}\nspec:\n{yaml}"
        ))
        .unwrap()
    }

    pub(crate) const T: Duration = Duration::from_secs(60);

    #[test]
    fn guest_memory_counts_when_requests_are_unset() {
        let v = vmi("  domain: {memory: {guest: 128Mi}}");
        assert_eq!(demand(&v).memory_bytes, 128 * 1024 * 1024);
        let v = vmi(
            "  domain: {memory: {guest: 128Mi}, resources: {requests: {memory: 64Mi, cpu: 250m}}}",
        );
        assert_eq!(
            demand(&v),
            Demand {
                cpu_millis: 250,
                memory_bytes: 64 * 1024 * 1024
            }
        );
    }

    #[test]
    fn picks_the_node_with_most_free_memory() {
        let v = vmi("  domain: {memory: {guest: 128Mi}}");
        let nodes = [node("a", 1000, 512), node("b", 1000, 1024)];
        assert_eq!(choose(&v, &nodes, &[], at(1010), T), Ok("b".into()));
    }

    #[test]
    fn unschedulable_reasons_are_counted_per_kind() {
        let v = vmi(
            "  domain: {memory: {guest: 1Gi}, resources: {requests: {cpu: '4'}}}\n  nodeSelector: {disk: ssd}\n",
        );
        let mut small_cpu = node("cpu", 1000, 4096);
        small_cpu.labels.insert("disk".into(), "ssd".into());
        let mut small_mem = node("mem", 8000, 512);
        small_mem.labels.insert("disk".into(), "ssd".into());
        let other = node("hdd", 8000, 4096);
        let mut tainted = node("tainted", 8000, 4096);
        tainted.labels.insert("disk".into(), "ssd".into());
        tainted.taints.push(Taint {
            key: "dedicated".into(),
            value: Some("db".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        let mut dead = node("dead", 8000, 4096);
        dead.lease_renewed = Some(at(0));
        let err = choose(
            &v,
            &[small_cpu, small_mem, other, tainted, dead],
            &[],
            at(1010),
            T,
        )
        .unwrap_err();
        assert!(err.starts_with("0/5 nodes are available: "), "{err}");
        for part in [
            "1 node(s) had no live ironvirt handler",
            "1 node(s) didn't match the VMI's node selector or affinity",
            "1 node(s) had untolerated taint {dedicated: db}",
            "1 Insufficient cpu",
            "1 Insufficient memory",
        ] {
            assert!(err.contains(part), "{part} missing from {err}");
        }
    }

    #[test]
    fn tolerations_and_affinity() {
        let mut n = node("n", 1000, 1024);
        n.taints.push(Taint {
            key: "dedicated".into(),
            value: Some("vms".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        });
        n.labels.insert("zone".into(), "a".into());
        let tolerating = vmi(
            "  domain: {}\n  tolerations: [{key: dedicated, operator: Equal, value: vms, effect: NoSchedule}]\n  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a, b]}]}]}}}",
        );
        assert_eq!(
            choose(&tolerating, std::slice::from_ref(&n), &[], at(1000), T),
            Ok("n".into())
        );
        let wrong_zone = vmi(
            "  domain: {}\n  tolerations: [{operator: Exists}]\n  affinity: {nodeAffinity: {requiredDuringSchedulingIgnoredDuringExecution: {nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: NotIn, values: [a]}]}]}}}",
        );
        assert!(choose(&wrong_zone, std::slice::from_ref(&n), &[], at(1000), T).is_err());
        let untolerating = vmi("  domain: {}");
        assert!(
            choose(&untolerating, &[n], &[], at(1000), T)
                .unwrap_err()
                .contains("untolerated taint")
        );
    }

    #[test]
    fn capacity_frees_when_placed_vmis_finish() {
        let want = vmi("  domain: {memory: {guest: 600Mi}}");
        let mut placed = vmi("  domain: {memory: {guest: 600Mi}}");
        placed.status = Some(serde_yaml::from_str("{phase: Running, nodeName: n}").unwrap());
        let nodes = [node("n", 1000, 1024)];
        assert!(
            choose(&want, &nodes, std::slice::from_ref(&placed), at(1000), T)
                .unwrap_err()
                .contains("Insufficient memory")
        );
        placed.status = Some(serde_yaml::from_str("{phase: Succeeded, nodeName: n}").unwrap());
        assert_eq!(
            choose(&want, &nodes, &[placed], at(1000), T),
            Ok("n".into())
        );
    }

    #[test]
    fn a_cordoned_node_takes_no_vmi() {
        let v = vmi("  domain: {memory: {guest: 128Mi}}");
        let mut cordoned = node("a", 1000, 4096);
        cordoned.unschedulable = true;
        assert_eq!(
            choose(&v, &[cordoned.clone()], &[], at(1010), T),
            Err("0/1 nodes are available: 1 node(s) were unschedulable".into())
        );
        let nodes = [cordoned, node("b", 1000, 512)];
        assert_eq!(choose(&v, &nodes, &[], at(1010), T), Ok("b".into()));
    }

    #[test]
    fn lease_age_decides_liveness() {
        let n = node("n", 1, 1);
        assert!(handler_alive(&n, at(1060), T));
        assert!(!handler_alive(&n, at(1061), T));
        assert!(!handler_alive(
            &NodeInfo {
                lease_renewed: None,
                ..n
            },
            at(0),
            T
        ));
    }

    #[test]
    fn the_node_label_selector_flag() {
        use ironvirt_crds::validate::selector_matches;
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let node = labels(&[("zone", "a"), ("gpu", ""), ("ironvirt.io/test-ns", "ns1")]);
        for (flag, want) in [
            ("", true),
            (" , ", true),
            ("zone=a", true),
            (" zone = a ,gpu", true),
            ("ironvirt.io/test-ns=ns1", true),
            ("zone=b", false),
            ("zone=a,disk", false),
            ("zone=a,zone=b", false),
            ("disk", false),
        ] {
            assert_eq!(
                selector_matches(&node_label_selector(flag), &node),
                want,
                "{flag:?}"
            );
        }
    }
}
