//! The aggregated API `subresources.kubevirt.io/v1`: discovery, the console
//! and VNC websockets relayed to the VMI's handler, vnc/screenshot, the VMI
//! power operations (forwarded to the handler) and VM start/stop/restart.
//!
//! Every subresource request is authenticated ([`crate::auth`]) and then
//! authorized with a SubjectAccessReview for the asserted user.

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use futures::{SinkExt, StreamExt};
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite;

use ironvirt_crds::wire::{HANDLER_SERVER_NAME, STREAM_SUBPROTOCOL, STREAM_URL_ANNOTATION};
use ironvirt_stream::ws::{self, bounded, send};

use crate::auth::{Peer, RequestHeaderAuth, User};
use crate::vmops::{self, Change, OpError, OpOptions, VmOp};

/// The API group and version served.
pub const GROUP: &str = "subresources.kubevirt.io";
pub const VERSION: &str = "v1";

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub client: Client,
    pub auth: RequestHeaderAuth,
    /// TLS client config for handlers (ironvirt-api's client certificate).
    pub handler_tls: Arc<rustls::ClientConfig>,
    /// Namespace of the handler Leases.
    pub lease_namespace: String,
    pub metrics: crate::metrics::Metrics,
}

/// A Kubernetes Status error.
pub fn status(code: StatusCode, reason: &str, message: impl Into<String>) -> Response {
    let message = message.into();
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn not_found(what: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{what} not found"),
    )
}

fn kube_error(e: &kube::Error) -> Response {
    match e {
        kube::Error::Api(s) => {
            let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            status(code, &s.reason, s.message.clone())
        }
        other => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            other.to_string(),
        ),
    }
}

/// The API's routes (subresources, discovery, health).
pub fn router(state: ApiState) -> Router {
    let base = format!("/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/livez", get(|| async { "ok" }))
        .route("/version", get(version))
        // kube-apiserver's aggregator merges these into its OpenAPI documents;
        // subresources have no schema of their own, so they are empty.
        .route(
            "/openapi/v2",
            get(|| async {
                axum::Json(json!({
                    "swagger": "2.0",
                    "info": {"title": "ironvirt-api", "version": VERSION},
                    "paths": {},
                }))
            }),
        )
        .route(
            "/openapi/v3",
            get(|| async { axum::Json(json!({"paths": {}})) }),
        )
        .route(&format!("/apis/{GROUP}"), get(api_group))
        .route(&format!("/apis/{GROUP}/{VERSION}"), get(resource_list))
        // virtctl asks this before and after its commands.
        .route(&format!("/apis/{GROUP}/{VERSION}/version"), get(version))
        .route(
            &format!("{base}/virtualmachineinstances/{{name}}/vnc/screenshot"),
            get(screenshot),
        )
        .route(
            &format!("{base}/virtualmachineinstances/{{name}}/{{sub}}"),
            get(vmi_stream).put(vmi_power),
        )
        .route(
            &format!("{base}/virtualmachines/{{name}}/{{op}}"),
            put(vm_power),
        )
        .with_state(state)
}

async fn readyz(State(s): State<ApiState>) -> Response {
    if s.auth.is_ready() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "authentication config not loaded",
        )
            .into_response()
    }
}

async fn version() -> Response {
    // KubeVirt's clients compare major.minor with their own: say which
    // KubeVirt API level ironvirt serves.
    axum::Json(json!({
        "major": "1", "minor": "8",
        "gitVersion": concat!("v1.8.0+ironvirt.", env!("CARGO_PKG_VERSION")),
        "platform": "linux/amd64",
    }))
    .into_response()
}

async fn api_group() -> Response {
    let gv = format!("{GROUP}/{VERSION}");
    axum::Json(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": GROUP,
        "versions": [{"groupVersion": gv, "version": VERSION}],
        "preferredVersion": {"groupVersion": gv, "version": VERSION},
    }))
    .into_response()
}

/// The discovery document of `subresources.kubevirt.io/v1`.
pub fn resources() -> serde_json::Value {
    let vmi = |sub: &str, verbs: &[&str]| {
        json!({"name": format!("virtualmachineinstances/{sub}"), "singularName": "",
            "namespaced": true, "kind": "VirtualMachineInstance", "verbs": verbs})
    };
    let vm = |sub: &str| {
        json!({"name": format!("virtualmachines/{sub}"), "singularName": "",
            "namespaced": true, "kind": "VirtualMachine", "verbs": ["update"]})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            vmi("console", &["get"]), vmi("vnc", &["get"]), vmi("vnc/screenshot", &["get"]),
            vmi("pause", &["update"]), vmi("unpause", &["update"]),
            vmi("softreboot", &["update"]), vmi("reset", &["update"]),
            vm("start"), vm("stop"), vm("restart"),
        ],
    })
}

async fn resource_list() -> Response {
    axum::Json(resources()).into_response()
}

/// Authenticates the request and authorizes `verb` on `resource/subresource`.
async fn authorize(
    state: &ApiState,
    req_peer: Option<&Peer>,
    headers: &HeaderMap,
    attrs: ResourceAttributes,
) -> Result<User, Response> {
    let peer = req_peer.cloned().unwrap_or_default();
    let user = state.auth.authenticate(&peer, headers).map_err(|e| {
        tracing::info!(error = %e, "unauthenticated request");
        status(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string())
    })?;
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.name.clone()),
            groups: Some(user.groups.clone()),
            uid: user.uid.clone(),
            extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
            resource_attributes: Some(attrs.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(state.client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| kube_error(&e))?;
    let allowed = answer.status.as_ref().is_some_and(|s| s.allowed);
    if !allowed {
        let sub = attrs.subresource.clone().unwrap_or_default();
        let message = format!(
            "{} is forbidden: User \"{}\" cannot {} resource \"{}/{}\" in API group \"{}\" in the namespace \"{}\"",
            attrs.resource.clone().unwrap_or_default(),
            user.name,
            attrs.verb.clone().unwrap_or_default(),
            attrs.resource.clone().unwrap_or_default(),
            sub,
            GROUP,
            attrs.namespace.clone().unwrap_or_default()
        );
        return Err(status(StatusCode::FORBIDDEN, "Forbidden", message));
    }
    Ok(user)
}

fn attrs(verb: &str, resource: &str, sub: &str, ns: &str, name: &str) -> ResourceAttributes {
    ResourceAttributes {
        group: Some(GROUP.into()),
        version: Some(VERSION.into()),
        resource: Some(resource.into()),
        subresource: Some(sub.into()),
        verb: Some(verb.into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// The VMI, which must be running, and its handler's URL.
async fn running_vmi(
    state: &ApiState,
    ns: &str,
    name: &str,
) -> Result<(VirtualMachineInstance, String), Response> {
    let api: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), ns);
    let vmi = api
        .get_opt(name)
        .await
        .map_err(|e| kube_error(&e))?
        .ok_or_else(|| not_found(&format!("virtualmachineinstance \"{name}\"")))?;
    let st = vmi.status.clone().unwrap_or_default();
    if st.phase != Some(ironvirt_crds::VirtualMachineInstancePhase::Running) {
        let phase = st
            .phase
            .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"));
        return Err(status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VMI {name} is not running (phase {phase})"),
        ));
    }
    let node = st.node_name.ok_or_else(|| {
        status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VMI {name} is not placed on a node"),
        )
    })?;
    let leases: Api<Lease> = Api::namespaced(state.client.clone(), &state.lease_namespace);
    let lease = leases
        .get_opt(&ironvirt_crds::wire::handler_lease_name(&node))
        .await
        .map_err(|e| kube_error(&e))?;
    let url = lease
        .and_then(|l| l.metadata.annotations)
        .and_then(|a| a.get(STREAM_URL_ANNOTATION).cloned())
        .ok_or_else(|| {
            status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("the handler of node {node} has not published its address"),
            )
        })?;
    Ok((vmi, url))
}

type HandlerStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Opens an mTLS connection to a handler at `url` (https://host:port).
async fn dial_handler(state: &ApiState, url: &str) -> Result<HandlerStream, String> {
    let hostport = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("handler URL {url:?} is not https"))?
        .trim_end_matches('/');
    let tcp = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(hostport),
    )
    .await
    .map_err(|_| format!("connecting to the handler at {url} timed out"))?
    .map_err(|e| format!("connecting to the handler at {url}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name =
        rustls::pki_types::ServerName::try_from(HANDLER_SERVER_NAME).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::clone(&state.handler_tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to the handler at {url}: {e}"))
}

type HandlerWs = tokio_tungstenite::WebSocketStream<HandlerStream>;

/// Opens the handler's websocket for `path` (below /v1/namespaces/…).
async fn handler_ws(state: &ApiState, url: &str, path: &str) -> Result<HandlerWs, Response> {
    let unavailable = |m: String| status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", m);
    let tls = dial_handler(state, url).await.map_err(unavailable)?;
    let request = http::Request::builder()
        .uri(format!("wss://{HANDLER_SERVER_NAME}{path}"))
        .header("Host", HANDLER_SERVER_NAME)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .header("Sec-WebSocket-Protocol", STREAM_SUBPROTOCOL)
        .body(())
        .map_err(|e| unavailable(e.to_string()))?;
    match tokio_tungstenite::client_async_with_config(request, tls, Some(ws::client_config())).await
    {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            // The handler's own Status error, passed on.
            let code =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
            let reason = parsed
                .as_ref()
                .and_then(|v| v["reason"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "InternalError".to_owned());
            let message = parsed
                .as_ref()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            Err(status(code, &reason, message))
        }
        Err(e) => Err(unavailable(format!("websocket to the handler: {e}"))),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StreamQuery {
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    preserve_session: bool,
}

async fn vmi_stream(
    State(state): State<ApiState>,
    Path((ns, name, sub)): Path<(String, String, String)>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if sub != "console" && sub != "vnc" {
        return not_found(&format!("subresource {sub:?} of virtualmachineinstances"));
    }
    let peer = peer.map(|Extension(p)| p);
    if let Err(r) = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("get", "virtualmachineinstances", &sub, &ns, &name),
    )
    .await
    {
        return r;
    }
    let Ok(ws) = ws else {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{sub} is a websocket: connect with an Upgrade request"),
        );
    };
    let (_vmi, url) = match running_vmi(&state, &ns, &name).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/{sub}");
    if sub == "console" && q.readonly {
        path.push_str("?readonly=true");
    }
    if sub == "vnc" && q.preserve_session {
        path.push_str("?preserveSession=true");
    }
    let upstream = match handler_ws(&state, &url, &path).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    tracing::info!(vmi.namespace = %ns, vmi.name = %name, sub = %sub, "stream opened");
    let kind = if sub == "console" { "console" } else { "vnc" };
    let open = state.metrics.stream(kind);
    bounded(ws)
        .protocols([STREAM_SUBPROTOCOL])
        .on_upgrade(move |client| async move {
            relay(client, upstream).await;
            drop(open);
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, sub = %sub, "stream closed");
        })
}

/// Relays frames between the user's websocket and the handler's until either
/// side closes. Pings keep idle sessions alive through proxies.
async fn relay(mut client: WebSocket, mut upstream: HandlerWs) {
    let mut ping = ws::pings();
    loop {
        tokio::select! {
            from_user = client.recv() => match from_user {
                Some(Ok(Message::Binary(b))) => {
                    if upstream.send(tungstenite::Message::Binary(b)).await.is_err() { break; }
                }
                Some(Ok(Message::Text(t))) => {
                    let bytes = Bytes::copy_from_slice(t.as_bytes());
                    if upstream.send(tungstenite::Message::Binary(bytes)).await.is_err() { break; }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    let _ = upstream.close(None).await;
                    break;
                }
            },
            from_handler = upstream.next() => match from_handler {
                Some(Ok(tungstenite::Message::Binary(b))) => {
                    if !send(&mut client, Message::Binary(b)).await { break; }
                }
                Some(Ok(tungstenite::Message::Text(t))) => {
                    let bytes = Bytes::copy_from_slice(t.as_bytes());
                    if !send(&mut client, Message::Binary(bytes)).await { break; }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    let frame = frame.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() });
                    let _ = send(&mut client, Message::Close(frame)).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let _ = send(&mut client, Message::Close(Some(CloseFrame { code: 1011, reason: "the handler connection ended".into() }))).await;
                    break;
                }
            },
            _ = ping.tick() => {
                if !send(&mut client, Message::Ping(Bytes::new())).await { break; }
            }
        }
    }
}

async fn screenshot(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
) -> Response {
    let peer = peer.map(|Extension(p)| p);
    if let Err(r) = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs(
            "get",
            "virtualmachineinstances",
            "vnc/screenshot",
            &ns,
            &name,
        ),
    )
    .await
    {
        return r;
    }
    let (_vmi, url) = match running_vmi(&state, &ns, &name).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let path = format!(
        "/v1/namespaces/{ns}/virtualmachineinstances/{name}/vnc?preserveSession=true&shared=true"
    );
    let upstream = match handler_ws(&state, &url, &path).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let pump = tokio::spawn(pump_ws(upstream, theirs));
    let shot = crate::rfb::screenshot(ours, Duration::from_secs(20)).await;
    pump.abort();
    match shot {
        Ok(s) => ([(header::CONTENT_TYPE, "image/png")], s.png).into_response(),
        Err(e) => status(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            format!("taking a screenshot of VMI {name}: {e}"),
        ),
    }
}

/// Joins a websocket carrying binary frames to a byte stream.
async fn pump_ws(mut ws: HandlerWs, io: tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(tungstenite::Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() { break; }
                }
            },
            m = ws.next() => match m {
                Some(Ok(tungstenite::Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() { break; }
                }
                Some(Ok(tungstenite::Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = ws.close(None).await;
}

async fn vmi_power(
    State(state): State<ApiState>,
    Path((ns, name, sub)): Path<(String, String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
) -> Response {
    if !["pause", "unpause", "softreboot", "reset"].contains(&sub.as_str()) {
        return not_found(&format!("subresource {sub:?} of virtualmachineinstances"));
    }
    let peer = peer.map(|Extension(p)| p);
    if let Err(r) = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("update", "virtualmachineinstances", &sub, &ns, &name),
    )
    .await
    {
        return r;
    }
    let (_vmi, url) = match running_vmi(&state, &ns, &name).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match forward_put(
        &state,
        &url,
        &format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/{sub}"),
    )
    .await
    {
        Ok((200, _)) => {
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, op = %sub, "done");
            StatusCode::OK.into_response()
        }
        Ok((code, body)) => {
            let code = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            let reason = if code == StatusCode::CONFLICT {
                "Conflict"
            } else {
                "InternalError"
            };
            status(code, reason, message)
        }
        Err(e) => status(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", e),
    }
}

/// A PUT to the handler; (status code, body).
async fn forward_put(state: &ApiState, url: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = dial_handler(state, url).await?;
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {HANDLER_SERVER_NAME}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut buf))
        .await
        .map_err(|_| "the handler did not answer in 30 s".to_owned())?
        .or_else(|e| {
            if buf.is_empty() {
                Err(e.to_string())
            } else {
                Ok(0)
            }
        })?;
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| "the handler sent no HTTP status".to_owned())?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((code, body))
}

async fn vm_power(
    State(state): State<ApiState>,
    Path((ns, name, op)): Path<(String, String, String)>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    let Some(vm_op) = VmOp::parse(&op) else {
        return not_found(&format!("subresource {op:?} of virtualmachines"));
    };
    let peer = req.extensions().get::<Peer>().cloned();
    if let Err(r) = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("update", "virtualmachines", &op, &ns, &name),
    )
    .await
    {
        return r;
    }
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("reading the body: {e}"),
            );
        }
    };
    let opts: OpOptions = if body.iter().all(u8::is_ascii_whitespace) {
        OpOptions::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(o) => o,
            Err(e) => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    format!("the {op} options do not parse: {e}"),
                );
            }
        }
    };
    let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), &ns);
    // Read, decide, write with the VM's resourceVersion as precondition; a
    // conflict (the VM controller wrote meanwhile) means: read again.
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
        }
        match vm_power_once(&vms, &vmis, &name, vm_op, &opts).await {
            Err(VmPowerError::Stale) => continue,
            Err(VmPowerError::Answer(r)) => return *r,
            Ok(()) => {
                tracing::info!(vm.namespace = %ns, vm.name = %name, op = %op, dry_run = opts.is_dry_run(), "accepted");
                return StatusCode::ACCEPTED.into_response();
            }
        }
    }
    status(
        StatusCode::CONFLICT,
        "Conflict",
        format!("VM {name} keeps changing; try the {op} again"),
    )
}

enum VmPowerError {
    /// The VM changed between read and write.
    Stale,
    /// The answer to give.
    Answer(Box<Response>),
}

fn answer(r: Response) -> VmPowerError {
    VmPowerError::Answer(Box::new(r))
}

async fn vm_power_once(
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    name: &str,
    vm_op: VmOp,
    opts: &OpOptions,
) -> Result<(), VmPowerError> {
    let vm = match vms.get_opt(name).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(answer(not_found(&format!("virtualmachine \"{name}\"")))),
        Err(e) => return Err(answer(kube_error(&e))),
    };
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(|e| answer(kube_error(&e)))?;
    let plan = match vmops::plan(&vm, vmi.as_ref(), vm_op, opts) {
        Ok(p) => p,
        Err(OpError::Conflict(m)) => {
            return Err(answer(status(StatusCode::CONFLICT, "Conflict", m)));
        }
        Err(OpError::BadRequest(m)) => {
            return Err(answer(status(StatusCode::BAD_REQUEST, "BadRequest", m)));
        }
    };
    if opts.is_dry_run() {
        return Ok(());
    }
    if let (Some(grace), Some(_)) = (plan.vmi_grace, vmi.as_ref()) {
        let patch = json!({"spec": {"terminationGracePeriodSeconds": grace}});
        vmis.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| answer(kube_error(&e)))?;
    }
    let rv = vm.metadata.resource_version.clone();
    let result = match plan.change {
        Change::Spec(mut patch) => {
            patch["metadata"] = json!({"resourceVersion": rv});
            vms.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Change::Requests(requests) => {
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "status": {"stateChangeRequests": requests},
            });
            vms.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(|_| ())
        }
        Change::DeleteVmi => vmis
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(VmPowerError::Stale),
        Err(e) => Err(answer(kube_error(&e))),
    }
}
