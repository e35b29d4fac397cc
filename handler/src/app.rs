//! Wires the handler together: libvirt, the node heartbeat, the VMI
//! controller, the orphan sweeper, the stream server and the health port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use futures::{StreamExt, TryStreamExt};
use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::events::Recorder;
use ironvirt_crds::validate::VolumePolicy;
use ironvirt_crds::watch::{NoExtraBackoff, WatchBackoff};
use ironvirt_crds::wire::NODE_NAME_LABEL;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use crate::console::Consoles;
use crate::context::{Context, Metrics};
use crate::controller;
use crate::domxml::{DomainType, HostEnv, Ovmf};
use crate::guestnet::{self, GuestNet};
use crate::libvirt::{self, Libvirt};
use crate::node::{self, NodeSettings};
use crate::streams::{self, StreamState};

/// The handler's settings, from flags.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: String,
    pub libvirt_uri: String,
    pub domain_type: DomainType,
    pub state_dir: PathBuf,
    pub register_node: bool,
    /// The Namespace that owns the handler Lease ([`node::NodeSettings`]).
    pub lease_owner_namespace: Option<String>,
    pub node_labels: BTreeMap<String, String>,
    pub listen: SocketAddr,
    /// The URL clients should use; defaults to https://<listen address>.
    pub advertise_url: Option<String>,
    /// libvirt's `pkipath` for migrations out of this node (None: /etc/pki).
    pub migration_pki_dir: Option<PathBuf>,
    /// Bandwidth limit of each migration out of this node, MiB/s (None:
    /// unlimited).
    pub migration_bandwidth_mib: Option<u64>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub client_ca: PathBuf,
    pub allowed_client_cn: String,
    pub health_addr: SocketAddr,
    pub resync: Duration,
    pub renew_every: Duration,
    /// The range of the VMIs' network namespaces ([`crate::guestnet`]).
    pub guest_network_range: crate::guestnet::Range,
    pub guest_network_dir: PathBuf,
    /// Where the serial consoles' sockets live ([`crate::console`]).
    pub console_dir: PathBuf,
    /// The containerDisk cache ([`crate::images`]) and the registries.
    pub image_cache_dir: PathBuf,
    pub image_cache_size: u64,
    pub registries: crate::images::Registries,
    pub passt: PathBuf,
    /// Start passt in the namespaces of this node process
    /// ([`crate::guestnet::Host::passt_on_host`]).
    pub passt_on_host: Option<u32>,
    /// hostDisk on or off and its root, the capacity limits
    /// ([`crate::volumes`]).
    pub volume_policy: VolumePolicy,
}

/// Why the handler could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Tls(#[from] ironvirt_stream::TlsError),
    #[error(
        "preparing the node for guest networks (needs root, nftables, iproute2 and passt): {0}"
    )]
    GuestNetwork(#[from] crate::guestnet::NetError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// OVMF, when installed where Debian puts it.
pub fn detect_ovmf() -> Option<Ovmf> {
    let dir = PathBuf::from("/usr/share/OVMF");
    let pick = |names: &[&str]| names.iter().map(|n| dir.join(n)).find(|p| p.exists());
    Some(Ovmf {
        code: pick(&["OVMF_CODE_4M.fd", "OVMF_CODE.fd"])?,
        secure_code: pick(&["OVMF_CODE_4M.secboot.fd", "OVMF_CODE.secboot.fd"]),
        vars_template: pick(&["OVMF_VARS_4M.fd", "OVMF_VARS.fd"])?,
        secure_vars_template: pick(&["OVMF_VARS_4M.ms.fd", "OVMF_VARS.ms.fd"]),
    })
}

/// Whether swtpm (which libvirt starts for an emulated TPM) is on the PATH.
pub fn detect_swtpm() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("swtpm").is_file()))
}

/// Runs the handler until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    std::fs::create_dir_all(cfg.state_dir.join("vmis")).map_err(|source| RunError::StateDir {
        path: cfg.state_dir.clone(),
        source,
    })?;
    let client = Client::try_default().await?;

    let (events_tx, events_rx) = mpsc::channel(1024);
    let lv = Libvirt::new(&cfg.libvirt_uri, events_tx);
    let capacity = lv.call(libvirt::host_capacity).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "host capacity unknown; publishing 1 CPU and 1 GiB");
        (1, 1 << 30)
    });
    let consoles = Arc::new(Consoles::new(
        &cfg.libvirt_uri,
        lv.capabilities(),
        cfg.console_dir.clone(),
    ));

    // The stream server first: its address goes on the Lease.
    let tls = ironvirt_stream::tls::server_config(
        &cfg.tls_cert,
        &cfg.tls_key,
        ironvirt_stream::tls::require_client_ca(&cfg.client_ca)?,
    )?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| RunError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| RunError::Listen {
        addr: cfg.listen,
        source,
    })?;
    let stream_url = cfg
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("https://{bound}"));
    tracing::info!(addr = %bound, url = %stream_url, "stream server listening");

    let settings_url = stream_url.clone();
    let settings = NodeSettings {
        node: cfg.node.clone(),
        stream_url,
        register: cfg.register_node,
        labels: cfg.node_labels.clone(),
        capacity,
        renew_every: cfg.renew_every,
        lease_seconds: 60,
        lease_owner_namespace: cfg.lease_owner_namespace.clone(),
    };
    if cfg.register_node {
        // As a kubelet does: until it works. Right after kube-apiserver
        // starts, its authorizer answers 403 for a moment (found by the
        // chaos run: a handler started then exited).
        node::retry("registering the Node", WatchBackoff::default(), || {
            node::register(&client, &settings)
        })
        .await;
    }
    tokio::spawn(node::heartbeat(client.clone(), settings, lv.health()));
    tokio::spawn(node::watch_libvirt(Arc::clone(&lv), Duration::from_secs(5)));

    let host = HostEnv {
        domain_type: cfg.domain_type,
        ovmf: detect_ovmf(),
        default_machine: "q35".into(),
        swtpm: detect_swtpm(),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ironvirt-handler".into(),
            instance: Some(cfg.node.clone()),
        },
    );
    let guestnet = Arc::new(GuestNet::new(lv.capabilities().guest_network.then(|| {
        guestnet::Host {
            range: cfg.guest_network_range,
            run_dir: cfg.guest_network_dir.clone(),
            passt: cfg.passt.clone(),
            passt_on_host: cfg.passt_on_host,
            node: cfg.node.clone(),
        }
    })));
    guestnet.prepare().await?;
    match &cfg.volume_policy.host_disk {
        Some(hd) if hd.root.is_dir() => {
            tracing::info!(root = %hd.root.display(), "hostDisk is on: images lie in <root>/<namespace>/")
        }
        Some(hd) => tracing::warn!(
            root = %hd.root.display(),
            "hostDisk is on, but its root is not a directory here (is it mounted into the handler at the same path?): every hostDisk fails"
        ),
        None => tracing::info!("hostDisk is off (no --host-disk-root)"),
    }
    let images = Arc::new(
        crate::images::Images::open(&cfg.image_cache_dir, cfg.registries.clone()).map_err(|e| {
            RunError::StateDir {
                path: cfg.image_cache_dir.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?,
    );
    tracing::info!(dir = %cfg.image_cache_dir.display(), max_bytes = cfg.image_cache_size, "containerDisk image cache");
    match images.collect(cfg.image_cache_size, crate::images::GC_GRACE) {
        Ok(c) => tracing::info!(
            removed = c.removed.len(),
            kept_bytes = c.kept_bytes,
            "image cache collected"
        ),
        Err(e) => tracing::warn!(error = %e, "collecting the image cache failed"),
    }
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            cfg.node.clone(),
            Arc::clone(&lv),
            Arc::clone(&consoles),
            Arc::clone(&guestnet),
            host,
            cfg.state_dir.clone(),
            recorder,
            cfg.resync,
        )
        .with_volume_policy(cfg.volume_policy.clone())
        .with_images(images, cfg.image_cache_size)
        .with_migration_address(migration_address(&settings_url))
        .with_migration_pki_dir(cfg.migration_pki_dir.clone())
        .with_migration_bandwidth(cfg.migration_bandwidth_mib),
    );

    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let wc = watcher::Config::default().labels(&format!("{NODE_NAME_LABEL}={}", cfg.node));
    let (store, writer) = kube::runtime::reflector::store();
    let stream = kube::runtime::reflector(
        writer,
        watcher(vmis, wc).map_ok(|ev| ev.modify(|v| v.managed_fields_mut().clear())),
    )
    .backoff(WatchBackoff::default())
    .touched_objects();
    let (one, nudge, all) = controller::route_events(events_rx);
    // When libvirt comes back, look at everything again.
    let mut health = lv.health();
    tokio::spawn(async move {
        while health.changed().await.is_ok() {
            if health.borrow().is_ok() {
                let _ = nudge.try_send(());
            }
        }
    });

    let state = StreamState {
        node: cfg.node.clone(),
        libvirt: Arc::clone(&lv),
        consoles: Arc::clone(&consoles),
        vmis: store.clone(),
        vnc: Arc::default(),
        guestnet: Arc::clone(&guestnet),
    };
    let allowed = cfg.allowed_client_cn.clone();
    tokio::spawn(ironvirt_stream::serve(
        listener,
        tls,
        streams::router(state),
        ironvirt_stream::ServeOptions::default(),
        move |client: &ironvirt_stream::serve::Client| {
            (client.common_name.as_deref() == Some(allowed.as_str())).then_some(())
        },
    ));
    // VMIs migrating to this node: their own watch and controller.
    let targets_wc = watcher::Config::default().labels(&format!(
        "{}={}",
        ironvirt_crds::migration::MIGRATION_TARGET_NODE_LABEL,
        cfg.node
    ));
    let (targets, targets_writer) = kube::runtime::reflector::store();
    let targets_stream = kube::runtime::reflector(
        targets_writer,
        watcher(
            Api::<VirtualMachineInstance>::all(client.clone()),
            targets_wc,
        )
        .map_ok(|ev| ev.modify(|v| v.managed_fields_mut().clear())),
    )
    .backoff(WatchBackoff::default())
    .touched_objects();
    tokio::spawn(
        Controller::for_stream(targets_stream, targets.clone())
            .trigger_backoff(NoExtraBackoff)
            .graceful_shutdown_on(shutdown_signal())
            .run(
                crate::migrate::reconcile_target,
                crate::migrate::error_policy,
                Arc::clone(&ctx),
            )
            .for_each(|_| futures::future::ready(())),
    );
    tokio::spawn(controller::sweep_orphans(
        Arc::clone(&ctx),
        vec![store.clone(), targets],
        Duration::from_secs(30),
    ));
    tokio::spawn(serve_health(cfg.health_addr, ctx.metrics.clone()));

    tracing::info!(node = %cfg.node, uri = %cfg.libvirt_uri, "handler running");
    Controller::for_stream(stream, store)
        .trigger_backoff(NoExtraBackoff)
        .reconcile_on(one)
        .reconcile_all_on(all)
        .graceful_shutdown_on(shutdown_signal())
        .run(controller::reconcile, controller::error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
    tracing::info!("handler stopped; domains keep running");
    Ok(())
}

/// The host of the stream URL (`https://10.213.0.12:8186`): the node's
/// address, where its libvirtd takes migrations.
fn migration_address(stream_url: &str) -> Option<String> {
    let rest = stream_url.split_once("://").map_or(stream_url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    let local = host.is_empty()
        || host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    (!local).then(|| host.to_owned())
}

async fn serve_health(addr: SocketAddr, metrics: Metrics) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || async move { render_metrics(&metrics) }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            if let Err(e) = axum::serve(l, app).await {
                tracing::warn!(error = %e, "health server ended");
            }
        }
        Err(e) => tracing::warn!(%addr, error = %e, "cannot listen for health"),
    }
}

/// The handler's metrics and the runtime's live tasks (where a leaked stream
/// or watch shows first), in Prometheus text format.
fn render_metrics(metrics: &Metrics) -> String {
    use prometheus_client::metrics::gauge::Gauge;
    let mut registry = prometheus_client::registry::Registry::with_prefix("ironvirt_handler");
    metrics.register(&mut registry);
    let tasks = Gauge::<i64>::default();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        tasks.set(i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
    }
    registry.register(
        "runtime_alive_tasks",
        "Tasks alive in the async runtime",
        tasks,
    );
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod migration_address_tests {
    use super::migration_address;

    #[test]
    fn the_node_address_comes_from_the_stream_url() {
        assert_eq!(
            migration_address("https://10.213.0.12:8186").as_deref(),
            Some("10.213.0.12")
        );
        assert_eq!(
            migration_address("https://[fd00::5]:8186/").as_deref(),
            Some("fd00::5")
        );
        assert_eq!(migration_address("https://127.0.0.1:8186"), None);
        assert_eq!(migration_address("https://0.0.0.0:8186"), None);
    }
}
