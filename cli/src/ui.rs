//! `ironctl ui`: a web console served on this machine. The page (built from
//! `cli/ui` with esbuild, embedded here) lists a namespace's VMs and VMIs,
//! runs power operations and opens serial consoles and VNC screens. Its API
//! calls and websockets go through this server to kube-apiserver with the
//! user's kubeconfig credentials, as `kubectl proxy` does, so RBAC decides
//! what the page may see and do.
//!
//! Other web pages in the same browser must not drive it. Every request must
//! carry the per-run token as the first path segment (`/<token>/…`: the page
//! uses relative URLs only, so the token rides along, including on
//! websockets, which cannot carry headers); the Host header must name the
//! loopback address we listen on (DNS rebinding); and a request with an
//! Origin (every browser websocket and cross-origin fetch) must come from our
//! own origin. No cookie is ever set, so a foreign page has nothing that its
//! requests carry automatically.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::args::UiArgs;
use crate::client::Ctx;
use crate::error::{Error, Result};
use crate::status::chain;

/// The built page, from `cli/ui/dist` (`make ui` rebuilds it).
const INDEX_HTML: &[u8] = include_bytes!("../ui/dist/index.html");
const APP_JS: &[u8] = include_bytes!("../ui/dist/app.js");
const APP_CSS: &[u8] = include_bytes!("../ui/dist/app.css");

/// Connections served at once; more wait for a free slot.
const MAX_CONNECTIONS: usize = 256;
/// The largest request body relayed (a VM manifest or a power operation).
const MAX_REQUEST_BODY: usize = 4 * 1024 * 1024;
/// How long kube-apiserver may take to answer (a watch's body may then run on).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What a request asks for, once it passed the checks.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Page,
    Asset {
        body: &'static [u8],
        content_type: &'static str,
    },
    Config,
    /// `/<token>/k8s/<rest>`: relayed to kube-apiserver as `/<rest>`.
    Api(String),
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: &'static str,
}

fn refuse(status: StatusCode, message: &'static str) -> Refusal {
    Refusal { status, message }
}

/// Where the UI listens, and the values its requests must carry.
#[derive(Clone, Debug)]
pub struct Guard {
    token: String,
    /// The Host header values that name us (`127.0.0.1:port`, `localhost:port`…).
    hosts: Vec<String>,
}

impl Guard {
    pub fn new(token: String, local: SocketAddr) -> Guard {
        let port = local.port();
        let mut hosts = vec![format!("localhost:{port}")];
        match local.ip() {
            IpAddr::V4(ip) => hosts.push(format!("{ip}:{port}")),
            IpAddr::V6(ip) => hosts.push(format!("[{ip}]:{port}")),
        }
        Guard { token, hosts }
    }

    /// The URL to open: our first host, the token, the page.
    pub fn url(&self) -> String {
        let host = self.hosts.last().map(String::as_str).unwrap_or_default();
        format!("http://{host}/{}/", self.token)
    }

    /// Checks a request's Host, Origin, Fetch-Metadata and token, and says
    /// what it asks for. Pure.
    pub fn route(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Route, Refusal> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if !host.is_some_and(|h| self.hosts.iter().any(|ours| ours.eq_ignore_ascii_case(h))) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "this server answers only to the loopback address it printed (Host header)",
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let ok = origin.to_str().ok().is_some_and(|o| {
                self.hosts
                    .iter()
                    .any(|h| o.eq_ignore_ascii_case(&format!("http://{h}")))
            });
            if !ok {
                return Err(refuse(
                    StatusCode::FORBIDDEN,
                    "requests from other web pages are refused (Origin)",
                ));
            }
        }
        // A browser says where a request comes from; anything but our own
        // page (or the user typing the URL) is refused, whatever the method.
        if let Some(site) = headers.get("sec-fetch-site")
            && !matches!(site.as_bytes(), b"same-origin" | b"none")
        {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "requests from other web pages are refused (Sec-Fetch-Site)",
            ));
        }
        let rest = path.strip_prefix('/').unwrap_or(path);
        let (token, rest) = match rest.split_once('/') {
            Some((t, r)) => (t, Some(r)),
            None => (rest, None),
        };
        if !same_secret(token.as_bytes(), self.token.as_bytes()) {
            return Err(refuse(
                StatusCode::FORBIDDEN,
                "missing or wrong token: open the URL that ironctl ui printed",
            ));
        }
        let Some(rest) = rest else {
            // `/<token>`: the page is at `/<token>/`, so relative URLs work.
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "the page is at the URL ending in /",
            ));
        };
        let read_only = matches!(*method, Method::GET | Method::HEAD);
        match rest {
            "" | "index.html" if read_only => Ok(Route::Page),
            "app.js" if read_only => Ok(Route::Asset {
                body: APP_JS,
                content_type: "text/javascript; charset=utf-8",
            }),
            "app.css" if read_only => Ok(Route::Asset {
                body: APP_CSS,
                content_type: "text/css; charset=utf-8",
            }),
            "config" if read_only => Ok(Route::Config),
            api if api.starts_with("k8s/") => {
                let upstream = &api["k8s".len()..];
                let allowed = ["/api/", "/apis/", "/version"]
                    .iter()
                    .any(|p| upstream.starts_with(p) || upstream == p.trim_end_matches('/'));
                if !allowed || upstream.split(['/', '?']).any(|s| s == "..") {
                    return Err(refuse(
                        StatusCode::NOT_FOUND,
                        "only the Kubernetes API (/api, /apis, /version) is relayed",
                    ));
                }
                Ok(Route::Api(upstream.to_owned()))
            }
            _ => Err(refuse(StatusCode::NOT_FOUND, "no such page")),
        }
    }
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new token: 32 random bytes, hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves `--address` to a loopback IP, refusing any other.
pub fn loopback(address: &str) -> Result<IpAddr> {
    let ip = match address {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        other => other
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .map_err(|_| Error::Usage(format!("--address {other:?} is not an IP address")))?,
    };
    if !ip.is_loopback() {
        return Err(Error::Usage(format!(
            "--address {address}: ironctl ui relays your kubeconfig credentials over plain HTTP, \
             so it listens only on a loopback address (127.0.0.1, ::1)"
        )));
    }
    Ok(ip)
}

struct Server {
    ctx: Ctx,
    guard: Guard,
}

/// Serves the UI until interrupted.
pub async fn run(ctx: &Ctx, args: &UiArgs) -> Result<()> {
    let ip = loopback(&args.address)?;
    let listener = TcpListener::bind((ip, args.port))
        .await
        .map_err(|e| Error::Local(format!("cannot listen on {ip}:{}: {e}", args.port)))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Local(format!("the listening socket: {e}")))?;
    let guard = Guard::new(new_token(), local);
    let url = guard.url();
    crate::outln(&format!(
        "ironvirt web console for {} (namespace {}): {url}\nPress Ctrl+C to stop.",
        ctx.server, ctx.namespace
    ))?;
    if !args.no_browser {
        open_browser(&url);
    }
    let server = Arc::new(Server {
        ctx: ctx.clone(),
        guard,
    });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(|e| Error::Local(e.to_string()))?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let (tcp, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        // Keystrokes are single small frames: send each at once.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "TCP_NODELAY");
        }
        let server = server.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.serve(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "connection ended");
            }
        });
    }
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    match std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(_) => {}
        Err(e) => eprintln!("could not start a browser ({opener}: {e}); open the URL above"),
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The headers every answer carries: no caching, no referrer (the token is
/// in the URL), no framing, and only our own scripts.
fn secure(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    resp
}

/// A Kubernetes Status body, so the page shows every error the same way.
fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": code.canonical_reason().unwrap_or_default().replace(' ', ""),
        "code": code.as_u16(),
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn content(body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(full(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Request headers relayed to kube-apiserver. Credentials are never taken
/// from the browser: the kubeconfig's are added by the client.
const RELAYED_REQUEST: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
];
/// Answer headers relayed to the page.
const RELAYED_ANSWER: [header::HeaderName; 3] = [
    header::CONTENT_TYPE,
    header::WARNING,
    header::SEC_WEBSOCKET_PROTOCOL,
];

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

impl Server {
    async fn serve(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let route = self.guard.route(req.method(), path, req.headers());
        let resp = match route {
            Err(r) => {
                tracing::info!(path = %req.uri().path(), status = %r.status, reason = r.message, "refused");
                status(r.status, r.message)
            }
            Ok(Route::Page) => content(INDEX_HTML, "text/html; charset=utf-8"),
            Ok(Route::Asset { body, content_type }) => content(body, content_type),
            Ok(Route::Config) => content(
                json!({
                    "namespace": self.ctx.namespace,
                    "context": self.ctx.context,
                    "server": self.ctx.server,
                })
                .to_string(),
                "application/json",
            ),
            Ok(Route::Api(upstream)) => {
                if is_websocket(req.headers()) {
                    self.websocket(req, &upstream).await
                } else {
                    self.relay(req, &upstream).await
                }
            }
        };
        secure(resp)
    }

    fn upstream_request(
        &self,
        parts: &http::request::Parts,
        path: &str,
        body: Vec<u8>,
    ) -> std::result::Result<Request<kube::client::Body>, http::Error> {
        let mut builder = Request::builder().method(parts.method.clone()).uri(path);
        for name in RELAYED_REQUEST {
            if let Some(v) = parts.headers.get(&name) {
                builder = builder.header(name, v);
            }
        }
        builder.body(kube::client::Body::from(body))
    }

    /// An ordinary request; the answer's body streams through (watches).
    async fn relay(&self, req: Request<Incoming>, path: &str) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
            Ok(b) => b.to_bytes().to_vec(),
            Err(e) => {
                return status(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("reading the request body: {e} (at most {MAX_REQUEST_BODY} bytes)"),
                );
            }
        };
        let upstream = match self.upstream_request(&parts, path, body) {
            Ok(r) => r,
            Err(e) => return status(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
        };
        let answer =
            match tokio::time::timeout(UPSTREAM_TIMEOUT, self.ctx.client.send(upstream)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => return self.unreachable(&e),
                Err(_) => {
                    return status(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "no answer from {} within {} s",
                            self.ctx.server,
                            UPSTREAM_TIMEOUT.as_secs()
                        ),
                    );
                }
            };
        let (up, body) = answer.into_parts();
        let mut resp = Response::new(body.map_err(|e| Box::new(e) as _).boxed_unsync());
        *resp.status_mut() = up.status;
        copy_headers(&up.headers, resp.headers_mut());
        resp
    }

    fn unreachable(&self, e: &kube::Error) -> Response<Body> {
        let cause = match e {
            kube::Error::Service(inner) => chain(inner.as_ref()),
            other => chain(other),
        };
        status(
            StatusCode::BAD_GATEWAY,
            &format!(
                "cannot reach the Kubernetes API server at {}: {cause}",
                self.ctx.server
            ),
        )
    }

    /// A websocket: the upgrade is passed to kube-apiserver with the
    /// browser's key and subprotocol, and once both sides switched, the bytes
    /// are spliced (frames pass through unchanged, 8 KiB buffers each way).
    async fn websocket(&self, mut req: Request<Incoming>, path: &str) -> Response<Body> {
        let (Some(key), Some(version)) = (
            req.headers().get(header::SEC_WEBSOCKET_KEY).cloned(),
            req.headers().get(header::SEC_WEBSOCKET_VERSION).cloned(),
        ) else {
            return status(
                StatusCode::BAD_REQUEST,
                "a websocket request without Sec-WebSocket-Key/Version",
            );
        };
        let browser = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let upstream = self
            .upstream_request(&parts, path, Vec::new())
            .map(|mut r| {
                let h = r.headers_mut();
                h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                h.insert(header::SEC_WEBSOCKET_KEY, key);
                h.insert(header::SEC_WEBSOCKET_VERSION, version);
                r
            });
        let upstream = match upstream {
            Ok(r) => r,
            Err(e) => return status(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
        };
        let answer =
            match tokio::time::timeout(UPSTREAM_TIMEOUT, self.ctx.client.send(upstream)).await {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => return self.unreachable(&e),
                Err(_) => {
                    return status(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "no answer from {} within {} s",
                            self.ctx.server,
                            UPSTREAM_TIMEOUT.as_secs()
                        ),
                    );
                }
            };
        if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (up, body) = answer.into_parts();
            let body = Limited::new(body, 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let mut resp = Response::new(full(body));
            *resp.status_mut() = up.status;
            copy_headers(&up.headers, resp.headers_mut());
            return resp;
        }
        let mut resp = Response::new(full(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Some(accept) = answer.headers().get(header::SEC_WEBSOCKET_ACCEPT) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept.clone());
        }
        copy_headers(answer.headers(), h);
        let path = path.to_owned();
        tokio::spawn(async move {
            let (ours, theirs) = match tokio::join!(browser, hyper::upgrade::on(answer)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::info!(path = %path, error = %e, "websocket did not switch");
                    return;
                }
            };
            let mut ours = TokioIo::new(ours);
            let mut theirs = TokioIo::new(theirs);
            match tokio::io::copy_bidirectional(&mut ours, &mut theirs).await {
                Ok((up, down)) => tracing::debug!(path = %path, up, down, "websocket ended"),
                Err(e) => tracing::debug!(path = %path, error = %e, "websocket ended"),
            }
        });
        resp
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for name in RELAYED_ANSWER {
        if let Some(v) = from.get(&name) {
            to.insert(name, v.clone());
        }
    }
}

#[cfg(test)]
mod tests;
