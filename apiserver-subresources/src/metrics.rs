//! Prometheus metrics of ironvirt-api, served on a plain-HTTP port of their
//! own: requests by route and status code, open console/VNC streams,
//! screenshots in progress, requests refused by a limit (429), and the
//! runtime's live tasks (where a leaked session shows first). Labels are
//! route names, codes and limit names, never object or user names.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    pub route: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// console or vnc.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// streams or screenshots.
    pub kind: &'static str,
    /// user or total.
    pub limit: &'static str,
}

/// The metrics, cheap to clone (shared counters).
#[derive(Clone)]
pub struct Metrics {
    requests: Family<RequestLabel, Counter>,
    streams: Family<StreamLabel, Gauge>,
    screenshots: Gauge,
    limited: Family<LimitLabel, Counter>,
    tasks: Gauge,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ironvirt_api");
        let requests = Family::<RequestLabel, Counter>::default();
        let streams = Family::<StreamLabel, Gauge>::default();
        let screenshots = Gauge::default();
        let limited = Family::<LimitLabel, Counter>::default();
        let tasks = Gauge::default();
        registry.register(
            "requests",
            "Requests answered, by route and HTTP status code",
            requests.clone(),
        );
        registry.register(
            "open_streams",
            "Console and VNC websockets being relayed",
            streams.clone(),
        );
        registry.register(
            "screenshots_in_progress",
            "vnc/screenshot requests being taken",
            screenshots.clone(),
        );
        registry.register(
            "limited_requests",
            "Requests refused with 429, by what was limited (streams, screenshots) and which limit (user, total)",
            limited.clone(),
        );
        registry.register(
            "runtime_alive_tasks",
            "Tasks alive in the async runtime",
            tasks.clone(),
        );
        Metrics {
            requests,
            streams,
            screenshots,
            limited,
            tasks,
            registry: Arc::new(registry),
        }
    }
}

/// Counts one open stream (or screenshot in progress) until dropped.
pub struct StreamGuard {
    gauge: Gauge,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    /// Counts a stream of `kind` as open until the guard is dropped.
    pub fn stream(&self, kind: &'static str) -> StreamGuard {
        let gauge = self.streams.get_or_create(&StreamLabel { kind }).clone();
        gauge.inc();
        StreamGuard { gauge }
    }

    /// Counts a screenshot as in progress until the guard is dropped.
    pub fn screenshot(&self) -> StreamGuard {
        let gauge = self.screenshots.clone();
        gauge.inc();
        StreamGuard { gauge }
    }

    /// Counts a request refused by a limit.
    pub fn limited(&self, kind: &'static str, limit: &'static str) {
        self.limited
            .get_or_create(&LimitLabel { kind, limit })
            .inc();
    }

    pub fn observe(&self, route: &'static str, code: u16) {
        self.requests
            .get_or_create(&RequestLabel { route, code })
            .inc();
    }

    /// The text exposition, with the task gauge read now.
    pub fn encode(&self) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let alive = i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX);
            self.tasks.set(alive);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The route a request path belongs to: a small fixed set of names.
pub fn route_of(path: &str) -> &'static str {
    const SUBRESOURCES: [&str; 10] = [
        "console",
        "vnc",
        "screenshot",
        "pause",
        "unpause",
        "softreboot",
        "reset",
        "start",
        "stop",
        "restart",
    ];
    if path.starts_with("/webhooks/") {
        return "webhook";
    }
    if matches!(path, "/healthz" | "/readyz" | "/livez") {
        return "health";
    }
    let subresources = path
        .strip_prefix("/apis/")
        .is_some_and(|p| p.starts_with(ironvirt_crds::SUBRESOURCES_GROUP));
    if !subresources && path != "/version" {
        return "other";
    }
    if path.contains("/namespaces/") {
        let last = path.rsplit('/').next().unwrap_or_default();
        return SUBRESOURCES
            .iter()
            .find(|s| **s == last)
            .copied()
            .unwrap_or("other");
    }
    "discovery"
}

/// Middleware that counts every answered request.
pub async fn count(
    axum::extract::State(metrics): axum::extract::State<Metrics>,
    req: Request,
    next: Next,
) -> Response {
    let route = route_of(req.uri().path());
    let response = next.run(req).await;
    metrics.observe(route, response.status().as_u16());
    response
}

/// Serves `/metrics` and `/healthz` on `addr` (plain HTTP).
pub async fn serve(addr: SocketAddr, metrics: Metrics) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => {
            tracing::info!(%addr, "serving metrics");
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "metrics server ended");
            }
        }
        Err(e) => tracing::warn!(%addr, error = %e, "cannot listen for metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_a_fixed_set() {
        let ns = "/apis/subresources.kubevirt.io/v1/namespaces/default";
        assert_eq!(
            route_of(&format!("{ns}/virtualmachineinstances/a/console")),
            "console"
        );
        assert_eq!(
            route_of(&format!("{ns}/virtualmachineinstances/a/vnc/screenshot")),
            "screenshot"
        );
        assert_eq!(
            route_of(&format!("{ns}/virtualmachines/a/restart")),
            "restart"
        );
        assert_eq!(
            route_of(&format!("{ns}/virtualmachines/a/whatever")),
            "other"
        );
        assert_eq!(route_of("/apis/subresources.kubevirt.io/v1"), "discovery");
        assert_eq!(route_of("/version"), "discovery");
        assert_eq!(route_of("/webhooks/validate/virtualmachines"), "webhook");
        assert_eq!(route_of("/readyz"), "health");
        assert_eq!(route_of("/etc/passwd"), "other");
    }

    #[test]
    fn streams_are_counted_until_dropped() {
        let m = Metrics::default();
        let a = m.stream("console");
        let b = m.stream("console");
        assert!(
            m.encode()
                .contains("ironvirt_api_open_streams{kind=\"console\"} 2")
        );
        drop(a);
        drop(b);
        assert!(
            m.encode()
                .contains("ironvirt_api_open_streams{kind=\"console\"} 0")
        );
    }

    #[test]
    fn screenshots_and_refusals_are_counted() {
        let m = Metrics::default();
        let shot = m.screenshot();
        m.limited("screenshots", "user");
        m.limited("screenshots", "user");
        let text = m.encode();
        assert!(
            text.contains("ironvirt_api_screenshots_in_progress 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "ironvirt_api_limited_requests_total{kind=\"screenshots\",limit=\"user\"} 2"
            ),
            "{text}"
        );
        drop(shot);
        assert!(
            m.encode()
                .contains("ironvirt_api_screenshots_in_progress 0")
        );
    }
}
