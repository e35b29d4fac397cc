//! Wires ironvirt-api together: the TLS listener (client certificates are
//! asked for and verified against the request-header CA), the API router, the
//! admission webhooks, and the authentication ConfigMap watch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use kube::Client;
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::{Peer, RequestHeaderAuth};
use crate::metrics::{self, Metrics};
use crate::server::{self, ApiState};

/// ironvirt-api's settings, from flags.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to serve on (several: 127.0.0.1 and ::1 in the test bed).
    pub listen: Vec<SocketAddr>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// CA of the handlers' serving certificates.
    pub handler_ca: PathBuf,
    /// ironvirt-api's client certificate and key for handlers.
    pub handler_client_cert: PathBuf,
    pub handler_client_key: PathBuf,
    /// Verify handlers by the shared name `ironvirt-handler`, not by
    /// `<node>.ironvirt-handler`.
    pub shared_handler_certificate: bool,
    pub lease_namespace: String,
    /// Usernames whose VMI spec updates the webhook lets through.
    pub privileged_users: Vec<String>,
    /// Plain-HTTP address of /metrics and /healthz.
    pub metrics_addr: SocketAddr,
    /// hostDisk on (under a root) or off, and the capacity limits the
    /// validating webhooks enforce.
    pub volume_policy: ironvirt_crds::validate::VolumePolicy,
    /// Concurrent streams and screenshots, per user and in total, and the
    /// screenshot pixel budget.
    pub limits: crate::limits::LimitsConfig,
    /// A connection that has not sent a request's headers this long after
    /// the TLS handshake (or after its previous response) is closed.
    pub header_read_timeout: Duration,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

/// Why ironvirt-api could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] ironvirt_stream::TlsError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The TLS client config for handlers: their CA, our client certificate.
pub fn handler_tls(cfg: &Config) -> Result<Arc<rustls::ClientConfig>, RunError> {
    Ok(ironvirt_stream::tls::client_config(
        &cfg.handler_ca,
        &cfg.handler_client_cert,
        &cfg.handler_client_key,
    )?)
}

/// A listener that shares its port with other replicas (SO_REUSEPORT), so
/// several ironvirt-api processes on one machine serve one address.
fn listen(addr: SocketAddr) -> Result<TcpListener, RunError> {
    let err = |source| RunError::Listen { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(1024).map_err(err)
}

/// The most requests ironvirt-api has in flight to kube-apiserver at once,
/// and the most idle connections its client keeps to it
/// ([`ironvirt_crds::client::bounded`]): a burst of subresource calls (50
/// port-forward connections: a review, a VMI and a Lease each) would
/// otherwise leave as many idle connections behind as it ever had open.
pub const API_CLIENT_CONCURRENCY: usize = 8;

/// The client for kube-apiserver, bounded to [`API_CLIENT_CONCURRENCY`].
pub async fn client() -> Result<Client, RunError> {
    let config = kube::Config::infer().await?;
    // Every request of ironvirt-api is awaited to its response at once (a
    // subresource call, a review, a watch its task drains), so an in-flight
    // limit cannot be held by a request nobody polls.
    Ok(ironvirt_crds::client::bounded(
        config,
        ironvirt_crds::client::Limits {
            in_flight: Some(API_CLIENT_CONCURRENCY),
            idle: API_CLIENT_CONCURRENCY,
        },
    )?)
}

/// Runs ironvirt-api until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let client = client().await?;
    let auth = RequestHeaderAuth::default();
    tokio::spawn(auth.clone().watch(client.clone()));

    let tls =
        ironvirt_stream::tls::server_config(&cfg.tls_cert, &cfg.tls_key, auth.client_verifier())?;

    let state = ApiState {
        client: client.clone(),
        auth,
        handler_tls: handler_tls(&cfg)?,
        shared_handler_certificate: cfg.shared_handler_certificate,
        lease_namespace: cfg.lease_namespace.clone(),
        metrics: Metrics::default(),
        limits: crate::limits::Limits::new(cfg.limits),
    };
    tracing::info!(
        max_streams_per_user = cfg.limits.streams.per_user,
        max_streams = cfg.limits.streams.total,
        max_screenshots_per_user = cfg.limits.screenshots.per_user,
        max_screenshots = cfg.limits.screenshots.total,
        max_screenshot_pixels = cfg.limits.screenshot_pixels,
        header_read_timeout = ?cfg.header_read_timeout,
        max_connections = cfg.max_connections,
        "limits"
    );
    // The cap is per listening address; several addresses share the limits
    // of streams and screenshots, which are the ones that hold memory.
    // No TCP_NODELAY (yet): with it, and the relays merging the frames that
    // wait together, a console through kube-apiserver still got 0.32 of the
    // direct path's throughput (make bench-api, 2026-12-03), and the first
    // frame after a stream's 101 still waited ~40 ms, in the handler.
    let serve_options = ironvirt_stream::ServeOptions {
        header_read_timeout: Some(cfg.header_read_timeout),
        max_connections: Some(cfg.max_connections),
        nodelay: false,
        ..ironvirt_stream::ServeOptions::default()
    };
    tokio::spawn(metrics::serve(cfg.metrics_addr, state.metrics.clone()));
    let app = server::router(state.clone())
        .merge(admission_router(&client, &cfg))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::count,
        ));

    let mut servers = Vec::new();
    for addr in &cfg.listen {
        let listener = listen(*addr)?;
        tracing::info!(%addr, group = ironvirt_crds::SUBRESOURCES_GROUP, "serving the subresource API and webhooks");
        servers.push(tokio::spawn(ironvirt_stream::serve(
            listener,
            Arc::clone(&tls),
            app.clone(),
            serve_options.clone(),
            // Every verified client is served; the front-proxy check happens
            // per request (auth.rs), where a 401 can be answered.
            |client: &ironvirt_stream::serve::Client| {
                Some(Peer {
                    verified_cn: client.common_name.clone(),
                })
            },
        )));
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    for s in servers {
        s.abort();
    }
    Ok(())
}

/// The admission webhooks, with a preset cache fed by a watch.
fn admission_router(client: &Client, cfg: &Config) -> Router {
    use futures::StreamExt;
    use ironvirt_crds::VirtualMachineInstancePreset;
    use ironvirt_crds::events::Recorder;
    use kube::runtime::events::Reporter;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (store, writer) = reflector::store();
    let api: kube::Api<VirtualMachineInstancePreset> = kube::Api::all(client.clone());
    let stream = reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|_| futures::future::ready(()));
    tokio::spawn(stream);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ironvirt-api".into(),
            instance: None,
        },
    );
    match &cfg.volume_policy.host_disk {
        Some(hd) => {
            tracing::info!(root = %hd.root.display(), "hostDisk is on: images lie in <root>/<namespace>/")
        }
        None => tracing::info!("hostDisk is off (no --host-disk-root)"),
    }
    let state = crate::admission::AdmissionState::new(store)
        .with_privileged_users(cfg.privileged_users.clone())
        .with_volume_policy(cfg.volume_policy.clone())
        .with_recorder(recorder)
        .with_client(client.clone());
    crate::admission::router(state)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending::<()>().await,
    }
}
