//! Wires ironvirt-api together: the TLS listener (client certificates are
//! asked for and verified against the request-header CA), the API router, the
//! admission webhooks, and the authentication ConfigMap watch.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use kube::Client;
use tokio::net::{TcpListener, TcpSocket};

use crate::auth::{Peer, RequestHeaderAuth, common_name};
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
}

/// Why ironvirt-api could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path).map_err(|e| RunError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

type Certs = Vec<rustls::pki_types::CertificateDer<'static>>;

fn certs_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Certs, rustls::pki_types::PrivateKeyDer<'static>), RunError> {
    let certs = rustls_pemfile::certs(&mut read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RunError::Tls(format!("{}: {e}", cert.display())))?;
    let key = rustls_pemfile::private_key(&mut read(key)?.as_slice())
        .map_err(|e| RunError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| RunError::Tls(format!("{}: no private key", key.display())))?;
    Ok((certs, key))
}

/// The TLS client config for handlers: their CA, our client certificate.
pub fn handler_tls(cfg: &Config) -> Result<Arc<rustls::ClientConfig>, RunError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read(&cfg.handler_ca)?.as_slice()) {
        let c = c.map_err(|e| RunError::Tls(e.to_string()))?;
        roots.add(c).map_err(|e| RunError::Tls(e.to_string()))?;
    }
    let (certs, key) = certs_and_key(&cfg.handler_client_cert, &cfg.handler_client_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RunError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| RunError::Tls(e.to_string()))?;
    Ok(Arc::new(tls))
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

/// Runs ironvirt-api until SIGTERM or SIGINT.
pub async fn run(cfg: Config) -> Result<(), RunError> {
    let client = Client::try_default().await?;
    let auth = RequestHeaderAuth::default();
    tokio::spawn(auth.clone().watch(client.clone()));

    let (certs, key) = certs_and_key(&cfg.tls_cert, &cfg.tls_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RunError::Tls(e.to_string()))?
        .with_client_cert_verifier(auth.client_verifier())
        .with_single_cert(certs, key)
        .map_err(|e| RunError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = Arc::new(tls);

    let state = ApiState {
        client: client.clone(),
        auth,
        handler_tls: handler_tls(&cfg)?,
        lease_namespace: cfg.lease_namespace.clone(),
        metrics: Metrics::default(),
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
        tracing::info!(%addr, "serving subresources.kubevirt.io and webhooks");
        servers.push(tokio::spawn(serve(listener, Arc::clone(&tls), app.clone())));
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
    let state = crate::admission::AdmissionState::new(store)
        .with_privileged_users(cfg.privileged_users.clone())
        .with_recorder(recorder);
    crate::admission::router(state)
}

async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, app: Router) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer_addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %peer_addr, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let peer = Peer {
                verified_cn: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| common_name(c.as_ref())),
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    let app = app.clone();
                    async move { tower::ServiceExt::oneshot(app, req).await }
                },
            );
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended");
            }
        });
    }
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
