//! The one mTLS accept loop of ironvirt's HTTPS servers.
//!
//! Per connection: the TLS handshake runs under a deadline; the verified
//! client certificate's common name goes to an `admit` function, which either
//! refuses the connection or returns a value that every request of the
//! connection carries as an extension (how the routers learn who is calling);
//! then hyper serves HTTP/1.1 or HTTP/2, with upgrades for websockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::tls::common_name;

/// Limits of the accept loop.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A client that has not finished the TLS handshake by then is dropped.
    pub handshake_timeout: Duration,
    /// A client that has not sent a request's headers by then is dropped
    /// (HTTP/1.1). `None`: no limit.
    pub header_read_timeout: Option<Duration>,
    /// Connections served at once; more are closed on accept. `None`: no cap.
    pub max_connections: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: None,
            max_connections: None,
        }
    }
}

/// What the accept loop knows of a client before its first request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    pub addr: SocketAddr,
    /// The common name of the client certificate the TLS layer verified.
    pub common_name: Option<String>,
}

/// Serves `app` over TLS on `listener` until the task is dropped. `admit`
/// decides per connection: `None` closes it, `Some(ext)` serves it with
/// `ext` inserted into every request's extensions.
pub async fn serve<E, F>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    options: ServeOptions,
    admit: F,
) where
    F: Fn(&Client) -> Option<E> + Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = options.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match &slots {
            Some(s) => match Arc::clone(s).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    tracing::warn!(peer = %addr, "connection limit reached; closing the new connection");
                    continue;
                }
            },
            None => None,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let admit = admit.clone();
        let options = options.clone();
        tokio::spawn(async move {
            serve_one(acceptor, tcp, addr, app, &options, admit).await;
            drop(permit);
        });
    }
}

async fn serve_one<E, F>(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    app: Router,
    options: &ServeOptions,
    admit: F,
) where
    F: Fn(&Client) -> Option<E>,
    E: Clone + Send + Sync + 'static,
{
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let client = Client {
        addr,
        common_name: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| common_name(c.as_ref())),
    };
    let Some(ext) = admit(&client) else {
        tracing::warn!(peer = %addr, client = ?client.common_name, "client certificate not accepted here; closing");
        return;
    };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ext.clone());
            let app = app.clone();
            async move { tower::ServiceExt::oneshot(app, req).await }
        });
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    if let Some(t) = options.header_read_timeout {
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(t);
    }
    if let Err(e) = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(peer = %addr, error = %e, "connection ended");
    }
}
