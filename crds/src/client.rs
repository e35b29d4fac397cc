//! A kube client whose load on kube-apiserver is bounded: at most so many
//! requests in flight, and no more idle connections kept than that.
//!
//! kube's own client builder leaves both unbounded: every request that finds
//! no idle connection opens a new one (TLS buffers, a task and a descriptor
//! each), and all of them stay pooled for 90 s. Under a burst (a controller
//! reconciling thousands of objects, a flood of subresource calls) that is
//! one connection per request in flight. The stack here is kube's own (base
//! URI, retries on 429/503/504, credentials, timeouts) with both bounds.

use std::time::Duration;

use kube::Client;
use kube::client::ConfigExt;
use tower::ServiceBuilder;

/// The client for `config`, with at most `concurrency` requests in flight
/// and as many idle connections kept. A request holds its slot until its
/// response's headers, so watches (and bodies still being read) do not keep
/// others waiting; more connections than `concurrency` can therefore be open
/// at once, but no more than that stay idle. A kubeconfig naming a proxy gets
/// kube's builder with the concurrency limit only.
pub fn bounded(config: kube::Config, concurrency: usize) -> Result<Client, kube::Error> {
    let limit = tower::limit::ConcurrencyLimitLayer::new(concurrency);
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
            .pool_max_idle_per_host(concurrency)
            .pool_idle_timeout(IDLE_TIMEOUT)
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

/// How long an idle connection is kept (hyper's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use std::net::SocketAddr;

    use tokio::net::TcpListener;

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
        const LIMIT: usize = 8;
        let open = Arc::new(AtomicUsize::new(0));
        let addr = slow_body_server(open.clone()).await;
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = bounded(config, LIMIT).unwrap();
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
            idle <= LIMIT,
            "{idle} connections stay open after the burst (peak {peak})"
        );
    }
}
