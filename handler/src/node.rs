//! The node side: the handler's heartbeat Lease (which the operator's
//! placement reads), the schedulable label and a node condition
//! that follow libvirt's health, and, in the test bed, the Node object itself
//! with the kubelet-style heartbeat a node without a kubelet needs.

use std::collections::BTreeMap;
use std::time::Duration;

use ironvirt_crds::wire::{
    HANDLER_LEASE_NAMESPACE, SCHEDULABLE_LABEL, STREAM_URL_ANNOTATION, handler_lease_name,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::watch;

use crate::libvirt::Health;

/// The node condition that reports whether the handler reaches libvirt.
pub const LIBVIRT_CONDITION: &str = "IronvirtLibvirtReachable";
/// Field manager of the handler's node and Lease writes.
const MANAGER: &str = "ironvirt-handler";

/// How the handler presents its node.
#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node: String,
    /// The stream endpoint, published on the Lease.
    pub stream_url: String,
    /// Create the Node and post kubelet-style heartbeats (test bed only).
    pub register: bool,
    /// Labels for a Node the handler creates.
    pub labels: BTreeMap<String, String>,
    /// CPUs and memory (bytes) for a Node the handler creates.
    pub capacity: (u32, u64),
    /// How often to renew.
    pub renew_every: Duration,
    /// The Lease duration published.
    pub lease_seconds: i32,
    /// The Namespace that owns the handler Lease (ironvirt's own, in a
    /// deployment), so that the garbage collector removes the Lease when
    /// ironvirt is uninstalled; none in the test bed.
    pub lease_owner_namespace: Option<String>,
}

/// The owner reference that makes Namespace `name` (uid `uid`) own a Lease.
pub fn namespace_owner(name: &str, uid: &str) -> serde_json::Value {
    json!([{"apiVersion": "v1", "kind": "Namespace", "name": name, "uid": uid}])
}

/// Creates the Node when missing (test bed), with capacity and a Ready
/// condition, so the node lifecycle controller leaves it untainted.
pub async fn register(client: &Client, s: &NodeSettings) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&s.node).await?.is_none() {
        let mut labels = s.labels.clone();
        labels.insert(SCHEDULABLE_LABEL.to_owned(), "false".to_owned());
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": s.node, "labels": labels},
        }))
        .map_err(kube::Error::SerdeError)?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %s.node, "registered the Node"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    let (cpus, memory) = s.capacity;
    let status = json!({"status": {
        "capacity": {"cpu": cpus.to_string(), "memory": memory.to_string(), "pods": "110"},
        "allocatable": {"cpu": cpus.to_string(), "memory": memory.to_string(), "pods": "110"},
        "conditions": [kubelet_ready()],
    }});
    nodes
        .patch_status(&s.node, &PatchParams::default(), &Patch::Strategic(&status))
        .await?;
    Ok(())
}

/// Runs `op` until it succeeds, waiting `backoff` between attempts and
/// logging each failure.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    mut backoff: impl Iterator<Item = Duration>,
    mut op: F,
) -> T
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt: u32 = 1;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(8));
                tracing::warn!(error = %e, attempt, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn kubelet_ready() -> serde_json::Value {
    let now = Timestamp::now().to_string();
    json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
        "message": "ironvirt-handler registered this node (test bed)",
        "lastHeartbeatTime": now, "lastTransitionTime": now})
}

/// Renews the handler Lease (and, when registering, the kubelet Lease and the
/// Ready heartbeat) every `renew_every`, and keeps the schedulable label and
/// the libvirt condition in line with libvirt's health. Runs until the process ends.
pub async fn heartbeat(client: Client, s: NodeSettings, mut health: watch::Receiver<Health>) {
    let mut tick = tokio::time::interval(s.renew_every);
    let mut owner: Option<serde_json::Value> = None;
    let mut published: Option<Health> = None;
    let mut beats: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = health.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let current = health.borrow().clone();
        if owner.is_none()
            && let Some(ns) = s.lease_owner_namespace.as_deref()
        {
            let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
            match namespaces.get(ns).await {
                Ok(n) => owner = n.metadata.uid.map(|uid| namespace_owner(ns, &uid)),
                Err(e) => tracing::warn!(
                    namespace = ns, error = %e,
                    "reading the Lease's owner Namespace failed; renewing without it"
                ),
            }
        }
        if let Err(e) = renew(&client, &s, owner.as_ref()).await {
            tracing::warn!(node = %s.node, error = %e, "renewing the handler Lease failed");
        }
        if s.register && beats.is_multiple_of(6) {
            // The node lifecycle controller wants a Ready heartbeat now and then.
            let nodes: Api<Node> = Api::all(client.clone());
            let status = json!({"status": {"conditions": [kubelet_ready()]}});
            if let Err(e) = nodes
                .patch_status(&s.node, &PatchParams::default(), &Patch::Strategic(&status))
                .await
            {
                tracing::warn!(node = %s.node, error = %e, "node heartbeat failed");
            }
        }
        beats = beats.wrapping_add(1);
        if published.as_ref() != Some(&current) {
            match publish_health(&client, &s.node, &current).await {
                Ok(()) => published = Some(current),
                Err(e) => {
                    tracing::warn!(node = %s.node, error = %e, "publishing libvirt health failed")
                }
            }
        }
    }
}

async fn renew(
    client: &Client,
    s: &NodeSettings,
    owner: Option<&serde_json::Value>,
) -> Result<(), kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), HANDLER_LEASE_NAMESPACE);
    let now = MicroTime(Timestamp::now());
    let name = handler_lease_name(&s.node);
    let mut lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "annotations": {STREAM_URL_ANNOTATION: s.stream_url}},
        "spec": {"holderIdentity": s.node, "leaseDurationSeconds": s.lease_seconds, "renewTime": now},
    });
    if let Some(owner) = owner {
        lease["metadata"]["ownerReferences"] = owner.clone();
    }
    leases
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await?;
    if s.register {
        let kubelet = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": s.node},
            "spec": {"holderIdentity": s.node, "leaseDurationSeconds": 40, "renewTime": now},
        });
        leases
            .patch(
                &s.node,
                &PatchParams::apply(&format!("{MANAGER}-kubelet")).force(),
                &Patch::Apply(&kubelet),
            )
            .await?;
    }
    Ok(())
}

/// The label and condition that say whether this node can run VMIs now.
pub fn health_patches(health: &Health) -> (serde_json::Value, serde_json::Value) {
    let now = Timestamp::now().to_string();
    let (schedulable, status, reason, message) = match health {
        Ok(()) => (
            "true",
            "True",
            "LibvirtConnected",
            "the handler reaches libvirt".to_owned(),
        ),
        Err(e) => ("false", "False", "LibvirtUnreachable", e.clone()),
    };
    (
        json!({"metadata": {"labels": {SCHEDULABLE_LABEL: schedulable}}}),
        json!({"status": {"conditions": [{
            "type": LIBVIRT_CONDITION, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }]}}),
    )
}

async fn publish_health(client: &Client, node: &str, health: &Health) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (label, condition) = health_patches(health);
    // Strategic merge keeps the kubelet's conditions: they merge by type.
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&condition))
        .await?;
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    match health {
        Ok(()) => tracing::info!(node, "libvirt reachable; node schedulable"),
        Err(e) => tracing::warn!(node, error = %e, "libvirt unreachable; node unschedulable"),
    }
    Ok(())
}

/// Checks libvirt every `every`, reconnecting as needed, so health follows
/// the daemon even when no VMI needs anything.
pub async fn watch_libvirt(libvirt: std::sync::Arc<crate::libvirt::Libvirt>, every: Duration) {
    loop {
        let _ = libvirt
            .call(|c| {
                c.is_alive()
                    .map_err(crate::libvirt::map_err(""))
                    .and_then(|alive| {
                        if alive {
                            Ok(())
                        } else {
                            Err(crate::libvirt::LibvirtError::Unreachable {
                                uri: String::new(),
                                reason: "connection is not alive".into(),
                            })
                        }
                    })
            })
            .await;
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn registration_is_retried_until_kube_apiserver_lets_it_through() {
        let calls = std::cell::Cell::new(0u32);
        let started = tokio::time::Instant::now();
        let got = retry(
            "registering the Node",
            ironvirt_crds::watch::WatchBackoff::default(),
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n <= 3 {
                        Err(format!("403 forbidden (attempt {n})"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(got, 4);
        // 0.5 + 1 + 2 s between the four attempts.
        assert_eq!(started.elapsed(), Duration::from_millis(3500));
    }

    #[test]
    fn health_turns_into_label_and_condition() {
        let (label, cond) = health_patches(&Ok(()));
        assert_eq!(label["metadata"]["labels"][SCHEDULABLE_LABEL], "true");
        assert_eq!(cond["status"]["conditions"][0]["status"], "True");
        let (label, cond) = health_patches(&Err("connection refused".into()));
        assert_eq!(label["metadata"]["labels"][SCHEDULABLE_LABEL], "false");
        assert_eq!(
            cond["status"]["conditions"][0]["reason"],
            "LibvirtUnreachable"
        );
        assert_eq!(
            cond["status"]["conditions"][0]["message"],
            "connection refused"
        );
    }
}

#[cfg(test)]
mod owner_tests {
    use super::namespace_owner;

    #[test]
    fn the_lease_is_owned_by_the_namespace() {
        let o = namespace_owner("ironvirt-system", "u-1");
        assert_eq!(o[0]["kind"], "Namespace");
        assert_eq!(o[0]["apiVersion"], "v1");
        assert_eq!(o[0]["name"], "ironvirt-system");
        assert_eq!(o[0]["uid"], "u-1");
        // An owner reference for the garbage collector only: it must not
        // block the Namespace's deletion or claim to control the Lease.
        assert!(o[0].get("blockOwnerDeletion").is_none());
        assert!(o[0].get("controller").is_none());
    }
}
