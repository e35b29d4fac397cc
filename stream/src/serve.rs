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
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
    /// `TCP_NODELAY` on accepted connections: a small write leaves at once
    /// instead of waiting for the peer to ACK the previous one (up to its
    /// delayed-ACK time, ~40 ms). Then the server should write fewer, larger
    /// frames itself (see [`crate::coalesce`]), since every write becomes a
    /// segment.
    pub nodelay: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: None,
            max_connections: None,
            nodelay: false,
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
        if options.nodelay
            && let Err(e) = tcp.set_nodelay(true)
        {
            tracing::debug!(peer = %addr, error = %e, "TCP_NODELAY not set");
        }
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
    // hyper's HTTP/1.1 header timer starts only once the protocol version
    // has been sniffed from the first bytes: bound the wait for those too.
    let io = FirstBytes::new(tls, options.header_read_timeout);
    if let Err(e) = builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service)
        .await
    {
        tracing::debug!(peer = %addr, error = %e, "connection ended");
    }
}

/// A connection whose first read must bring data before a deadline; after
/// that it is the connection itself. hyper-util reads the first bytes to tell
/// HTTP/1.1 from HTTP/2 before hyper's header-read timer starts, so a client
/// that sends nothing at all would otherwise be held forever.
struct FirstBytes<S> {
    inner: S,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> FirstBytes<S> {
    fn new(inner: S, timeout: Option<Duration>) -> Self {
        FirstBytes {
            inner,
            deadline: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.deadline.as_mut() {
            match &polled {
                Poll::Ready(_) if buf.filled().len() > before => this.deadline = None,
                Poll::Ready(_) => {}
                Poll::Pending => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the client sent nothing before the header-read timeout",
                        )));
                    }
                }
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
