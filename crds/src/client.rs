//! A kube client whose load on kube-apiserver is bounded: no more idle
//! connections kept than a limit, and optionally no more requests in flight.
//!
//! kube's own client builder leaves both unbounded: every request that finds
//! no idle connection opens a new one (TLS buffers, a task and a descriptor
//! each), and all of them stay pooled for 90 s. Under a burst (a controller
//! reconciling thousands of objects, a flood of subresource calls) that is
//! one connection per request in flight. The stack here is kube's own (base
//! URI, retries on 429/503/504, credentials, timeouts) with the bounds.

use std::time::Duration;

use kube::Client;
use kube::client::ConfigExt;
use tower::ServiceBuilder;

/// How a client built by [`bounded`] is bounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most requests in flight at once, or none.
    ///
    /// A request holds its slot until its response's headers have been
    /// *polled*: a request future that its owner stops polling (a watch
    /// stream whose consumer is busy, a reconcile parked elsewhere) keeps
    /// its slot. Give a limit only to a client whose every request is
    /// awaited to its headers at once, such as a server's per-call client;
    /// a controller process bounds its reconciles instead.
    pub in_flight: Option<usize>,
    /// The most idle connections kept (hyper's pool, per host).
    pub idle: usize,
}

/// The client for `config`, bounded by `limits`. More connections than
/// `limits.idle` can be open at once (watches, bodies still being read), but
/// no more than that stay idle. A kubeconfig naming a proxy gets kube's
/// builder with the in-flight limit only.
pub fn bounded(config: kube::Config, limits: Limits) -> Result<Client, kube::Error> {
    let limit = limits
        .in_flight
        .map(tower::limit::ConcurrencyLimitLayer::new);
    if config.proxy_url.is_some() {
        let builder = kube::client::ClientBuilder::try_from(config)?;
        return Ok(match limit {
            Some(limit) => builder.with_layer(&limit).build(),
            None => builder.build(),
        });
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
            .pool_max_idle_per_host(limits.idle)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(connector);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    let service = ServiceBuilder::new()
        .option_layer(limit)
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
        let client = bounded(
            config,
            Limits {
                in_flight: Some(LIMIT),
                idle: LIMIT,
            },
        )
        .unwrap();
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

    /// Why a controller process gets no in-flight limit: a request future
    /// that nobody polls past its dispatch keeps its slot, so with a limit
    /// of one the next request waits for ever; without a limit it is
    /// served.
    #[tokio::test]
    async fn a_request_nobody_polls_holds_up_others_only_under_an_in_flight_limit() {
        let open = Arc::new(AtomicUsize::new(0));
        let addr = slow_body_server(open).await;
        let get = |client: &Client| {
            let client = client.clone();
            async move {
                let req = http::Request::get("/version").body(Vec::new()).unwrap();
                client.request_text(req).await
            }
        };
        for (in_flight, served) in [(Some(1), false), (None, true)] {
            let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
            let client = bounded(config, Limits { in_flight, idle: 1 }).unwrap();
            // Dispatched (it went through kube's buffer and holds its slot),
            // then left alone, as a stream nobody polls leaves its request.
            let mut parked = Box::pin(get(&client));
            assert!(futures::poll!(parked.as_mut()).is_pending());
            tokio::time::sleep(Duration::from_millis(200)).await;
            let next = tokio::time::timeout(Duration::from_secs(2), get(&client)).await;
            assert_eq!(
                next.is_ok(),
                served,
                "in_flight {in_flight:?}: the next request was {}",
                if next.is_ok() { "served" } else { "held up" }
            );
            drop(parked);
        }
    }
}
