//! What every reconcile needs: the client, event recorder, metrics and settings.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use ironvirt_crds::events::Recorder;
use kube::Client;
use kube::runtime::events::Reporter;

use crate::metrics::Metrics;

/// Settings shared by the controllers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only this namespace's objects are reconciled (all when `None`).
    pub namespace: Option<String>,
    /// Namespace of the handlers' per-node Leases.
    pub lease_namespace: String,
    /// A node whose Lease is older than this has no live handler.
    pub node_lease_timeout: Duration,
    /// Only nodes with these labels are candidates (`key=value,...`; all when empty).
    pub node_label_selector: Option<String>,
    /// How to reach registries (mirrors, plain HTTP, CAs), for the image
    /// labels `inferFromVolume` reads ([`crate::infer`]); the handlers' file.
    pub registries: ironvirt_images::Registries,
    /// The evictionStrategy of VMIs that set none (KubeVirt's cluster-wide
    /// default; None unless configured).
    pub default_eviction_strategy: ironvirt_crds::vmi::EvictionStrategy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            namespace: None,
            lease_namespace: ironvirt_crds::wire::HANDLER_LEASE_NAMESPACE.to_owned(),
            node_lease_timeout: Duration::from_secs(60),
            node_label_selector: None,
            registries: ironvirt_images::Registries::default(),
            default_eviction_strategy: ironvirt_crds::vmi::EvictionStrategy::None,
        }
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub settings: Settings,
    /// Consecutive failed reconciles per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Metrics,
        settings: Settings,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: "ironvirt-operator".into(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            settings,
            failures: Mutex::default(),
        }
    }

    /// Records a failed reconcile of `key`; returns how long to wait: 1 s,
    /// doubling per consecutive failure, at most 5 minutes.
    pub fn failed(&self, key: &str) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Clears the failure count of `key` after a good reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(key);
    }
}
