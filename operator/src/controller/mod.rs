//! Wiring: the four controllers on their watches, the health and metrics
//! server, CRD readiness, and leader election.

pub mod evacuation;
pub mod migration;
pub mod placement;
pub mod pool;
pub mod replicas;
pub mod vm;
pub mod vmirs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::{FutureExt, StreamExt};
use ironvirt_crds::pool::VirtualMachinePool;
use ironvirt_crds::watch::{NoExtraBackoff, WatchBackoff};
use ironvirt_crds::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceReplicaSet,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::context::Context;
use crate::metrics::Metrics;

/// A change to an object's finalizers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalizerOp {
    Add,
    Remove,
}

/// Whether `obj` carries `finalizer`.
pub fn has_finalizer<K: kube::Resource>(obj: &K, finalizer: &str) -> bool {
    obj.finalizers().iter().any(|f| f == finalizer)
}

/// The patch that applies `op` to `obj`'s finalizers, `None` when there is
/// nothing to do. Both are guarded against concurrent changes: adding is a
/// merge patch of the whole list with the resourceVersion read (a conflict if
/// the object changed since), removing is a JSON patch that first tests the
/// entry is still where it was read.
pub fn finalizer_patch<K: kube::Resource>(
    obj: &K,
    finalizer: &str,
    op: FinalizerOp,
) -> crate::error::Result<Option<kube::api::Patch<serde_json::Value>>> {
    let at = obj.finalizers().iter().position(|f| f == finalizer);
    Ok(match (op, at) {
        (FinalizerOp::Add, Some(_)) | (FinalizerOp::Remove, None) => None,
        (FinalizerOp::Add, None) => {
            let mut finalizers = obj.finalizers().to_vec();
            finalizers.push(finalizer.to_owned());
            Some(kube::api::Patch::Merge(serde_json::json!({
                "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()},
            })))
        }
        (FinalizerOp::Remove, Some(i)) => {
            let ops = serde_json::json!([
                {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer},
                {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
            ]);
            Some(kube::api::Patch::Json(serde_json::from_value(ops)?))
        }
    })
}

/// Adds or removes `finalizer` on `obj` with [`finalizer_patch`]; nothing
/// happens when it is already so. Removing from an object already gone counts
/// as done.
pub async fn update_finalizer<K>(
    api: &Api<K>,
    obj: &K,
    finalizer: &str,
    op: FinalizerOp,
) -> crate::error::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Some(patch) = finalizer_patch(obj, finalizer, op)? else {
        return Ok(());
    };
    match api
        .patch(&obj.name_any(), &kube::api::PatchParams::default(), &patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 && op == FinalizerOp::Remove => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Records `note` about `obj` as an Event of `action`; a failure to record
/// is logged, never an error of the reconcile.
pub async fn publish(
    recorder: &ironvirt_crds::events::Recorder,
    obj: &k8s_openapi::api::core::v1::ObjectReference,
    action: &str,
    note: &crate::events::EventNote,
) {
    use kube::runtime::events::{Event, EventType};
    let ev = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.as_str().to_owned(),
        note: Some(note.message.clone()),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, obj).await {
        tracing::warn!(error = %e, event.reason = note.reason.as_str(), "could not record an event");
    }
}

/// Health state served on the metrics port.
#[derive(Clone, Default)]
pub struct Health {
    pub ready: Arc<AtomicBool>,
    pub metrics: Metrics,
}

/// The router of the health and metrics port: /healthz, /readyz, /metrics.
pub fn health_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(h): State<Health>| async move {
                if h.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(h): State<Health>| async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    h.metrics.encode(),
                )
            }),
        )
        .with_state(health)
}

/// Serves the health router on `addr` until the process ends.
pub async fn serve_health(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.inspect_err(|e| {
        tracing::error!(%addr, error = %e, "cannot listen for health and metrics");
    })?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "health and metrics listening");
    axum::serve(listener, health_router(health)).await
}

/// Waits until the kubevirt.io CRDs this operator needs are Established.
pub async fn wait_for_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let names = [
        "virtualmachines.kubevirt.io",
        "virtualmachineinstances.kubevirt.io",
        "virtualmachineinstancereplicasets.kubevirt.io",
        "virtualmachinepools.pool.kubevirt.io",
        "virtualmachineinstancemigrations.kubevirt.io",
    ];
    loop {
        let mut missing = Vec::new();
        for n in names {
            let established = api.get_opt(n).await.ok().flatten().is_some_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if !established {
                missing.push(n);
            }
        }
        if missing.is_empty() {
            return;
        }
        tracing::info!(?missing, "waiting for CRDs to be Established");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Drops what a controller never reads before objects reach a cache:
/// managedFields (a large JSON tree per object with several field managers)
/// and kubectl's last-applied annotation.
pub(crate) fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A watch of `api` whose objects are slimmed, feeding a new cache.
fn slim_reflector<K>(
    api: Api<K>,
    wc: watcher::Config,
) -> (
    reflector::Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, wc)
            .backoff(WatchBackoff::default())
            .modify(slim),
    )
    .applied_objects();
    (reader, stream)
}

/// A metadata-only watch of `api` that also reports deletions: enough to find
/// owners (owner references) and matching replica sets (labels), at a fraction
/// of the memory of full objects. This is what `Controller::owns` does.
fn meta_stream<K>(
    client: &Client,
    ns: Option<&str>,
    wc: watcher::Config,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + 'static
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    let api: Api<PartialObjectMeta<K>> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(api, wc)
        .backoff(WatchBackoff::default())
        .touched_objects()
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// How many VMIs are placed at once (their API writes overlap).
const PLACEMENT_CONCURRENCY: u16 = 16;

/// How many objects each other controller reconciles at once. Unbounded (kube's
/// default), a backlog of thousands of VMs meant as many reconciles in flight,
/// each with its own request and, through kube's client, its own connection
/// to kube-apiserver: most of the operator's heap at 2,000 VMs (heaptrack,
/// docs/benchmarks.md).
const RECONCILE_CONCURRENCY: u16 = 32;

/// The operator's client: no more idle connections kept than the reconciles
/// that can run at once (four controllers of [`RECONCILE_CONCURRENCY`] and
/// placement), and no in-flight limit. The controllers' concurrency bounds the
/// requests in flight; a client-wide limit would also count the watches'
/// requests, and a request future left unpolled (a watch whose consumer is
/// busy) keeps its slot (`ironvirt_crds::client` tests show it).
pub const API_LIMITS: ironvirt_crds::client::Limits = ironvirt_crds::client::Limits {
    in_flight: None,
    idle: 4 * RECONCILE_CONCURRENCY as usize + PLACEMENT_CONCURRENCY as usize,
};

/// Runs the four controllers until `shutdown` resolves.
pub async fn run_controllers(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let ns = ctx.settings.namespace.clone();
    let wc = watcher::Config::default();
    let shutdown = shutdown.shared();

    // Caches of nodes and handler Leases for placement.
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let node_stream = reflector::reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), wc.clone()).backoff(WatchBackoff::default()),
    )
    .applied_objects()
    .for_each(|_| async {});
    let (leases, leases_writer) = reflector::store::<Lease>();
    let lease_stream = reflector::reflector(
        leases_writer,
        watcher(
            Api::<Lease>::namespaced(client.clone(), &ctx.settings.lease_namespace),
            wc.clone(),
        )
        .backoff(WatchBackoff::default())
        .modify(slim),
    )
    .applied_objects()
    .for_each(|_| async {});

    let (vmi_store, vmi_stream) = slim_reflector(
        scoped::<VirtualMachineInstance>(&client, ns.as_deref()),
        wc.clone(),
    );
    // Placements run concurrently: each decides and records its assumption
    // under one lock, so only the writes overlap.
    let placement_controller = Controller::for_stream(vmi_stream, vmi_store.clone())
        .trigger_backoff(NoExtraBackoff)
        .with_config(ControllerConfig::default().concurrency(PLACEMENT_CONCURRENCY));
    let phases = phase_gauge(ctx.clone(), vmi_store.clone());
    let pctx = Arc::new(placement::PlacementContext::new(
        ctx.clone(),
        nodes.clone(),
        leases.clone(),
        vmi_store,
    ));
    // The VM controller places a VMI in its create (the placement caches,
    // once filled; before that placement does it, as for any VMI).
    let (vm_store, vm_stream) =
        slim_reflector(scoped::<VirtualMachine>(&client, ns.as_deref()), wc.clone());
    let vm_ctx = Arc::new(vm::VmContext::new(ctx.clone(), Some(pctx.clone())));
    let vm_controller = Controller::for_stream(vm_stream, vm_store)
        .trigger_backoff(NoExtraBackoff)
        .with_config(ControllerConfig::default().concurrency(RECONCILE_CONCURRENCY))
        .owns_stream(meta_stream::<VirtualMachineInstance>(
            &client,
            ns.as_deref(),
            wc.clone(),
        ))
        .graceful_shutdown_on(shutdown.clone())
        .run(vm::reconcile, vm::error_policy, vm_ctx)
        .for_each(|_| async {});
    // Migrations: woken by their VMI's changes (metadata is enough to know
    // one changed; the full VMI comes from placement's cache).
    let (mig_store, mig_stream) = slim_reflector(
        scoped::<VirtualMachineInstanceMigration>(&client, ns.as_deref()),
        wc.clone(),
    );
    let mig_lookup = mig_store.clone();
    let mctx = Arc::new(migration::MigrationContext {
        placement: pctx.clone(),
        migrations: mig_store.clone(),
        limits: crate::migration::Limits::default(),
    });
    let migration_controller = Controller::for_stream(mig_stream, mig_store)
        .trigger_backoff(NoExtraBackoff)
        .with_config(ControllerConfig::default().concurrency(RECONCILE_CONCURRENCY))
        .watches_stream(
            meta_stream::<VirtualMachineInstance>(&client, ns.as_deref(), wc.clone()),
            move |vmi| {
                let vmi_ns = vmi.namespace();
                let name = vmi.name_any();
                mig_lookup
                    .state()
                    .into_iter()
                    .filter(|m| m.namespace() == vmi_ns && m.spec.vmi_name == name)
                    .map(|m| ObjectRef::from_obj(&*m))
                    .collect::<Vec<_>>()
            },
        );
    let evacuation = evacuation::run(
        mctx.clone(),
        ctx.settings.default_eviction_strategy,
        Duration::from_secs(3),
    );
    let (nodes_m, leases_m) = (nodes.clone(), leases.clone());
    let migration_shutdown = shutdown.clone();
    let migration_controller = async move {
        // Choosing a target against empty caches would find no node.
        let _ = nodes_m.wait_until_ready().await;
        let _ = leases_m.wait_until_ready().await;
        migration_controller
            .graceful_shutdown_on(migration_shutdown)
            .run(migration::reconcile, migration::error_policy, mctx)
            .for_each(|_| async {})
            .await;
    };
    let nodes_ready = nodes.clone();
    let leases_ready = leases.clone();
    let placement_shutdown = shutdown.clone();
    let placement_controller = async move {
        // Placing against empty caches would report "0/0 nodes".
        let _ = nodes_ready.wait_until_ready().await;
        let _ = leases_ready.wait_until_ready().await;
        placement_controller
            .graceful_shutdown_on(placement_shutdown)
            .run(placement::reconcile, placement::error_policy, pctx)
            .for_each(|_| async {})
            .await;
    };

    let (rs_store, rs_stream) = slim_reflector(
        scoped::<VirtualMachineInstanceReplicaSet>(&client, ns.as_deref()),
        wc.clone(),
    );
    let rs_lookup = rs_store.clone();
    let rs_controller = Controller::for_stream(rs_stream, rs_store)
        .trigger_backoff(NoExtraBackoff)
        .with_config(ControllerConfig::default().concurrency(RECONCILE_CONCURRENCY))
        .owns_stream(meta_stream::<VirtualMachineInstance>(
            &client,
            ns.as_deref(),
            wc.clone(),
        ))
        // Orphans are adopted by any replica set in their namespace whose selector matches.
        .watches_stream(
            meta_stream::<VirtualMachineInstance>(&client, ns.as_deref(), wc.clone()),
            move |vmi| {
                let vmi_ns = vmi.namespace();
                rs_lookup
                    .state()
                    .into_iter()
                    .filter(|rs| rs.namespace() == vmi_ns)
                    .filter(|rs| {
                        ironvirt_crds::validate::selector_matches(&rs.spec.selector, vmi.labels())
                    })
                    .map(|rs| ObjectRef::from_obj(&*rs))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(vmirs::reconcile, vmirs::error_policy, ctx.clone())
        .for_each(|_| async {});

    let (pool_store, pool_stream) = slim_reflector(
        scoped::<VirtualMachinePool>(&client, ns.as_deref()),
        wc.clone(),
    );
    let pool_lookup = pool_store.clone();
    let pool_controller = Controller::for_stream(pool_stream, pool_store)
        .trigger_backoff(NoExtraBackoff)
        .with_config(ControllerConfig::default().concurrency(RECONCILE_CONCURRENCY))
        // VM changes (status.ready among them) wake the pool that owns them.
        .owns_stream(meta_stream::<VirtualMachine>(
            &client,
            ns.as_deref(),
            wc.clone(),
        ))
        // Orphan VMs are adopted by any pool in their namespace whose selector matches.
        .watches_stream(
            meta_stream::<VirtualMachine>(&client, ns.as_deref(), wc.clone()),
            move |vm| {
                if vm
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true))
                {
                    return Vec::new();
                }
                let vm_ns = vm.namespace();
                pool_lookup
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == vm_ns)
                    .filter(|p| {
                        ironvirt_crds::validate::selector_matches(&p.spec.selector, vm.labels())
                    })
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(pool::reconcile, pool::error_policy, ctx.clone())
        .for_each(|_| async {});

    tokio::select! {
        _ = async { tokio::join!(vm_controller, placement_controller) } => {}
        _ = rs_controller => {}
        _ = pool_controller => {}
        _ = migration_controller => {}
        _ = evacuation => {}
        _ = node_stream => {}
        _ = lease_stream => {}
        _ = phases => {}
    }
}

/// Keeps the VMIs-by-phase gauge current from the placement controller's VMI
/// cache (no cache of its own: memory matters at thousands of VMIs).
async fn phase_gauge(ctx: Arc<Context>, store: reflector::Store<VirtualMachineInstance>) {
    {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let mut counts: std::collections::BTreeMap<String, i64> = [
                "Pending",
                "Scheduling",
                "Scheduled",
                "Running",
                "Succeeded",
                "Failed",
                "Unknown",
            ]
            .iter()
            .map(|p| ((*p).to_owned(), 0))
            .collect();
            for v in store.state() {
                let phase = v
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or("Pending".to_owned(), |p| format!("{p:?}"));
                *counts.entry(phase).or_default() += 1;
            }
            for (phase, n) in counts {
                ctx.metrics
                    .vmis_by_phase
                    .get_or_create(&crate::metrics::PhaseLabel { phase })
                    .set(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvirt_crds::wire::VMI_FINALIZER;
    use kube::api::Patch;
    use serde_json::json;

    fn vmi(finalizers: &[&str]) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "resourceVersion": "7", "finalizers": finalizers},
            "spec": {"domain": {}},
        }))
        .unwrap()
    }

    fn patch(obj: &VirtualMachineInstance, op: FinalizerOp) -> Option<serde_json::Value> {
        match finalizer_patch(obj, VMI_FINALIZER, op).unwrap()? {
            Patch::Merge(v) => Some(json!({"merge": v})),
            Patch::Json(p) => Some(json!({"json": p})),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn adding_a_finalizer_guards_with_the_resource_version() {
        let v = vmi(&["other"]);
        assert!(!has_finalizer(&v, VMI_FINALIZER));
        assert_eq!(
            patch(&v, FinalizerOp::Add),
            Some(json!({"merge": {"metadata": {
                "finalizers": ["other", VMI_FINALIZER], "resourceVersion": "7"}}}))
        );
        let v = vmi(&[VMI_FINALIZER]);
        assert!(has_finalizer(&v, VMI_FINALIZER));
        assert_eq!(patch(&v, FinalizerOp::Add), None, "already there");
    }

    #[test]
    fn removing_a_finalizer_tests_its_position_first() {
        let v = vmi(&["other", VMI_FINALIZER]);
        assert_eq!(
            patch(&v, FinalizerOp::Remove),
            Some(json!({"json": [
                {"op": "test", "path": "/metadata/finalizers/1", "value": VMI_FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ]}))
        );
        assert_eq!(
            patch(&vmi(&["other"]), FinalizerOp::Remove),
            None,
            "already gone"
        );
    }
}
