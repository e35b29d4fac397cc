//! Everything a reconcile needs: the cluster client and event recorder, the
//! libvirt connection and console hubs, facts about the host, and the little
//! state the handler keeps between reconciles (power buttons pressed,
//! consecutive failures for backoff, metrics).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::events::Recorder;
use ironvirt_crds::validate::VolumePolicy;
use kube::Client;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::console::Consoles;
use crate::domxml::HostEnv;
use crate::error::backoff;
use crate::guestnet::GuestNet;
use crate::libvirt::Libvirt;

/// The handler's own metrics, served on the health port beside the runtime's.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Orphan sweeps that went through every domain and directory of the
    /// node without an error.
    pub orphan_sweeps: Counter,
}

impl Metrics {
    /// Registers the metrics in `registry` (prefix `ironvirt_handler`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "orphan_sweeps",
            "Orphan sweeps completed: every domain and file of the node checked against the VMI cache",
            self.orphan_sweeps.clone(),
        );
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub node: String,
    pub libvirt: Arc<Libvirt>,
    pub consoles: Arc<Consoles>,
    /// The VMIs' network namespaces.
    pub guestnet: Arc<GuestNet>,
    pub host: HostEnv,
    pub state_dir: PathBuf,
    pub recorder: Recorder,
    pub resync: Duration,
    pub metrics: Metrics,
    /// What volumes VMIs may have on this node: hostDisk on or off and its
    /// root, the capacity limits ([`crate::volumes`]).
    pub volume_policy: VolumePolicy,
    /// VMIs (by uid) whose power button this handler already pressed.
    shutdown_sent: Mutex<HashSet<String>>,
    /// Consecutive failed reconciles per VMI, for exponential backoff.
    pub failures: Failures,
    /// The node's containerDisk puller and cache; None: containerDisks are
    /// refused.
    pub images: Option<Arc<crate::images::Images>>,
    /// The image cache's size limit ([`crate::images::Images::collect`]).
    pub image_cache_bytes: u64,
    /// Consecutive failed image pulls per VMI (ErrImagePull, then
    /// ImagePullBackOff with backoff).
    pub pull_failures: Failures,
    /// When each VMI whose pull failed may pull again: reconciles before
    /// then (its own status write triggers one) wait instead.
    pub pull_not_before: Mutex<HashMap<ObjectRef<VirtualMachineInstance>, std::time::Instant>>,
    /// The address other nodes' libvirtds reach this node's libvirtd at,
    /// for live migration (None: this node takes no migrations).
    pub migration_address: Option<String>,
    /// libvirt's `pkipath` for migrations out of this node.
    pub migration_pki_dir: Option<PathBuf>,
    /// Bandwidth limit of each migration out of this node, MiB/s.
    pub migration_bandwidth_mib: Option<u64>,
    /// The live migrations this node runs as their source.
    pub migrations: crate::migrate::Outgoing,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        node: String,
        libvirt: Arc<Libvirt>,
        consoles: Arc<Consoles>,
        guestnet: Arc<GuestNet>,
        host: HostEnv,
        state_dir: PathBuf,
        recorder: Recorder,
        resync: Duration,
    ) -> Self {
        Context {
            client,
            node,
            libvirt,
            consoles,
            guestnet,
            host,
            state_dir,
            recorder,
            resync,
            metrics: Metrics::default(),
            volume_policy: VolumePolicy::default(),
            shutdown_sent: Mutex::default(),
            failures: Failures::default(),
            images: None,
            image_cache_bytes: 0,
            pull_failures: Failures::default(),
            pull_not_before: Mutex::default(),
            migration_address: None,
            migration_pki_dir: None,
            migration_bandwidth_mib: None,
            migrations: crate::migrate::Outgoing::default(),
        }
    }

    /// The same context taking migrations at `address` (this node's
    /// address, where its libvirtd listens for TLS).
    pub fn with_migration_address(mut self, address: Option<String>) -> Self {
        self.migration_address = address;
        self
    }

    /// The same context limiting each migration out to `mib` MiB/s.
    pub fn with_migration_bandwidth(mut self, mib: Option<u64>) -> Self {
        self.migration_bandwidth_mib = mib;
        self
    }

    /// The same context migrating out with libvirt's `pkipath` `dir`.
    pub fn with_migration_pki_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.migration_pki_dir = dir;
        self
    }

    /// The same context pulling containerDisks with `images`, a cache of at
    /// most `cache_bytes` of disks.
    pub fn with_images(mut self, images: Arc<crate::images::Images>, cache_bytes: u64) -> Self {
        self.images = Some(images);
        self.image_cache_bytes = cache_bytes;
        self
    }

    /// The same context with `policy` as its volume policy (the default:
    /// hostDisk off, the default capacity limits).
    pub fn with_volume_policy(mut self, policy: VolumePolicy) -> Self {
        self.volume_policy = policy;
        self
    }

    /// Whether this handler already pressed the power button of VMI `uid`.
    pub fn sent(&self, uid: &str) -> bool {
        let set = self.shutdown_sent.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(uid)
    }

    /// Records (or forgets) that the power button of VMI `uid` was pressed.
    pub fn mark_sent(&self, uid: &str, sent: bool) {
        let mut set = self.shutdown_sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent {
            set.insert(uid.to_owned());
        } else {
            set.remove(uid);
        }
    }
}

/// Consecutive failed reconciles per VMI.
#[derive(Debug, Default)]
pub struct Failures(Mutex<HashMap<ObjectRef<VirtualMachineInstance>, u32>>);

impl Failures {
    /// Records a failed reconcile of `vmi`; returns how long to wait before
    /// the next one: [`backoff`] of its consecutive failures, at least `floor`.
    pub fn failed(&self, vmi: &ObjectRef<VirtualMachineInstance>, floor: Duration) -> Duration {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(vmi.clone()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n, floor)
    }

    /// Clears the failure count of `vmi` after a good reconcile.
    pub fn succeeded(&self, vmi: &ObjectRef<VirtualMachineInstance>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(vmi);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_per_vmi_and_reset_on_success() {
        let f = Failures::default();
        let a = ObjectRef::new("a").within("ns");
        let b = ObjectRef::new("b").within("ns");
        let zero = Duration::ZERO;
        assert_eq!(f.failed(&a, zero), Duration::from_secs(2));
        assert_eq!(f.failed(&a, zero), Duration::from_secs(4));
        assert_eq!(f.failed(&a, zero), Duration::from_secs(8));
        // Another VMI has its own count.
        assert_eq!(f.failed(&b, zero), Duration::from_secs(2));
        // A floor lifts the wait, and still counts the failure.
        assert_eq!(f.failed(&b, Duration::from_secs(5)), Duration::from_secs(5));
        assert_eq!(f.failed(&b, zero), Duration::from_secs(8));
        f.succeeded(&a);
        assert_eq!(f.failed(&a, zero), Duration::from_secs(2));
        assert_eq!(f.failed(&b, zero), Duration::from_secs(16));
    }
}
