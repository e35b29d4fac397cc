//! `ironctl drain NODE` and `ironctl uncordon NODE`: there are no pods for
//! `kubectl drain` to evict, so ironctl drains an ironvirt node itself. It
//! cordons the node and adds KubeVirt's `kubevirt.io/drain` taint; the
//! operator then moves each VMI away by its evictionStrategy (migrates,
//! stops, or waits: see `ironvirt_operator::evacuation`), and ironctl waits
//! until no VMI runs on the node, saying what it waits for. `uncordon`
//! undoes both. What to patch and what to report are pure functions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::wire::NODE_NAME_LABEL;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::args::{DrainArgs, UncordonArgs};
use crate::client::Ctx;
use crate::error::{Error, Result};

/// KubeVirt's drain taint.
pub const DRAIN_TAINT: &str = "kubevirt.io/drain";
/// How often the drain looks again.
const POLL: Duration = Duration::from_secs(2);

/// The node's taints with the drain taint added (None: already there).
pub fn with_drain_taint(taints: &[Taint]) -> Option<Vec<Taint>> {
    if taints.iter().any(|t| t.key == DRAIN_TAINT) {
        return None;
    }
    let mut out = taints.to_vec();
    out.push(Taint {
        key: DRAIN_TAINT.into(),
        value: Some("draining".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    });
    Some(out)
}

/// The node's taints without the drain taint (None: it has none).
pub fn without_drain_taint(taints: &[Taint]) -> Option<Vec<Taint>> {
    let out: Vec<Taint> = taints
        .iter()
        .filter(|t| t.key != DRAIN_TAINT)
        .cloned()
        .collect();
    (out.len() != taints.len()).then_some(out)
}

/// One line per VMI still on the node: `ns/name (phase, migrating: …)`.
pub fn waiting_for(vmis: &[VirtualMachineInstance]) -> Vec<String> {
    vmis.iter()
        .map(|v| {
            let ns = v.namespace().unwrap_or_default();
            let status = v.status.as_ref();
            let phase = status
                .and_then(|s| s.phase)
                .map_or("Pending".to_owned(), |p| format!("{p:?}"));
            let strategy = v
                .spec
                .eviction_strategy
                .map_or("cluster default".to_owned(), |s| format!("{s:?}"));
            let migrating = status
                .and_then(|s| s.migration_state.as_ref())
                .filter(|m| !m.ended())
                .and_then(|m| m.target_node.clone())
                .map(|t| format!(", migrating to {t}"))
                .unwrap_or_default();
            format!(
                "{ns}/{} ({phase}, evictionStrategy {strategy}{migrating})",
                v.name_any()
            )
        })
        .collect()
}

async fn patch_node(api: &Api<Node>, node: &Node, spec: serde_json::Value) -> Result<()> {
    let body = json!({"metadata": {"resourceVersion": node.resource_version()}, "spec": spec});
    api.patch(
        &node.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&body),
    )
    .await
    .map_err(|e| Error::Api(format!("updating node {}: {e}", node.name_any())))?;
    Ok(())
}

async fn get_node(api: &Api<Node>, name: &str) -> Result<Node> {
    api.get(name)
        .await
        .map_err(|e| Error::Api(format!("node {name}: {e}")))
}

/// `ironctl drain NODE`.
pub async fn drain(ctx: &Ctx, args: &DrainArgs) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = get_node(&nodes, &args.node).await?;
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    match (cordoned, with_drain_taint(&taints)) {
        (true, None) => {}
        (_, added) => {
            let mut spec = json!({"unschedulable": true});
            if let Some(t) = added {
                spec["taints"] = json!(t);
            }
            patch_node(&nodes, &node, spec).await?;
        }
    }
    crate::outln(&format!(
        "node/{} cordoned and tainted {DRAIN_TAINT}=draining:NoSchedule",
        args.node
    ))?;
    let vmis: Api<VirtualMachineInstance> = Api::all(ctx.client.clone());
    let on_node = ListParams::default().labels(&format!("{NODE_NAME_LABEL}={}", args.node));
    let started = Instant::now();
    let mut last: BTreeSet<String> = BTreeSet::new();
    loop {
        let list = vmis
            .list(&on_node)
            .await
            .map_err(|e| Error::Api(format!("listing the VMIs of node {}: {e}", args.node)))?;
        let left: Vec<VirtualMachineInstance> = list
            .items
            .into_iter()
            .filter(|v| {
                !v.status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .is_some_and(|p| p.is_final())
            })
            .collect();
        if left.is_empty() {
            return crate::outln(&format!("node/{} drained", args.node));
        }
        let now: BTreeSet<String> = waiting_for(&left).into_iter().collect();
        if now != last {
            crate::outln(&format!(
                "waiting for {} VMI(s) to leave: {}",
                now.len(),
                now.iter().cloned().collect::<Vec<_>>().join("; ")
            ))?;
            last = now;
        }
        if started.elapsed() >= args.timeout {
            return Err(Error::Api(format!(
                "node {} not drained within {}s; still there: {}",
                args.node,
                args.timeout.as_secs(),
                last.iter().cloned().collect::<Vec<_>>().join("; ")
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `ironctl uncordon NODE`: the node takes VMIs again.
pub async fn uncordon(ctx: &Ctx, args: &UncordonArgs) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let node = get_node(&nodes, &args.node).await?;
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut spec = json!({"unschedulable": null});
    if let Some(t) = without_drain_taint(&taints) {
        spec["taints"] = json!(t);
    }
    patch_node(&nodes, &node, spec).await?;
    crate::outln(&format!("node/{} uncordoned", args.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            ..Taint::default()
        }
    }

    #[test]
    fn the_drain_taint_is_added_once_and_removed_alone() {
        let other = taint("dedicated");
        let added = with_drain_taint(std::slice::from_ref(&other)).unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(added[1].key, DRAIN_TAINT);
        assert_eq!(added[1].value.as_deref(), Some("draining"));
        assert_eq!(with_drain_taint(&added), None);
        assert_eq!(without_drain_taint(&added), Some(vec![other.clone()]));
        assert_eq!(without_drain_taint(&[other]), None);
    }

    #[test]
    fn the_wait_says_which_vmis_and_why() {
        let v: VirtualMachineInstance = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "a", "namespace": "ns"},
            "spec": {"domain": {"devices": {}}, "evictionStrategy": "LiveMigrate"},
            "status": {"phase": "Running", "migrationState": {"migrationUid": "m", "targetNode": "node-2"}},
        }))
        .unwrap();
        assert_eq!(
            waiting_for(&[v]),
            ["ns/a (Running, evictionStrategy LiveMigrate, migrating to node-2)"]
        );
    }
}
