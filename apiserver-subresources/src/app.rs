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
/// and the most idle connections its client keeps to it. The client speaks
/// HTTP/1.1, one request per connection at a time: a burst of subresource
/// calls (50 port-forward connections: a review, a VMI and a Lease each)
/// would otherwise leave as many idle connections behind as it ever had
/// open, each with a task and a descriptor, for the pool's 90 s. Watches hold
/// a slot only until their headers, so more connections than this can be
/// open, but no more than this stay idle.
pub const API_CLIENT_CONCURRENCY: usize = 8;

/// The client for kube-apiserver: kube's own stack (base URI, retries on
/// 429/503/504, credentials, timeouts), with at most
/// [`API_CLIENT_CONCURRENCY`] requests in flight and as many idle
/// connections kept. kube's builder leaves the idle pool unbounded, so the
/// stack is put together here; a kubeconfig naming a proxy gets kube's
/// builder as it is.
pub async fn client() -> Result<Client, RunError> {
    client_for(kube::Config::infer().await?)
}

/// [`client`] for a given configuration.
pub fn client_for(config: kube::Config) -> Result<Client, RunError> {
    use kube::client::ConfigExt;
    use tower::ServiceBuilder;

    let limit = tower::limit::ConcurrencyLimitLayer::new(API_CLIENT_CONCURRENCY);
    if config.proxy_url.is_some() {
        return Ok(kube::client::ClientBuilder::try_from(config)?
            .with_layer(&limit)
            .build());
    }
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    let mut connector =
        hyper_timeout::TimeoutConnector::new(config.rustls_https_connector_with_connector(http)?);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(API_CLIENT_CONCURRENCY)
            .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .layer(limit)
        .layer(config.base_uri_layer())
        .option_layer(retry)
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(http_client);
    Ok(Client::new(service, config.default_namespace))
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
    use kube::runtime::events::{Recorder, Reporter};
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A kube-apiserver stand-in that sends each response's headers at once
    /// and its body 100 ms later, so that requests that have their headers
    /// (and have given up their slot of the concurrency limit) still hold
    /// their connection; it counts the connections open.
    async fn slow_body_server(open: Arc<AtomicUsize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let open = open.clone();
                open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'conn: loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => break 'conn,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n";
                        if conn.write_all(head.as_bytes()).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if conn.write_all(b"{}").await.is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_burst_leaves_no_more_idle_connections_to_kube_apiserver_than_the_limit() {
        let open = Arc::new(AtomicUsize::new(0));
        let addr = slow_body_server(open.clone()).await;
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = client_for(config).unwrap();
        let burst = (0..40).map(|_| {
            let client = client.clone();
            async move {
                let req = http::Request::get("/version").body(Vec::new()).unwrap();
                client.request_text(req).await
            }
        });
        let results = futures::future::join_all(burst).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        let peak = open.load(Ordering::SeqCst);
        // The pool closes what it does not keep when it gets it back.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = open.load(Ordering::SeqCst);
        assert!(
            idle <= API_CLIENT_CONCURRENCY,
            "{idle} connections stay open after the burst (peak {peak})"
        );
    }
}
