//! The handler's HTTPS endpoint for the subresource API server: serial console,
//! VNC and port-forward ([`crate::portforward`]) as websockets with binary
//! frames, and the power operations (pause, unpause, soft reboot, reset).
//!
//! Only clients whose certificate chains to the configured CA and whose CN is
//! the API server's are served: `app::run` puts the router behind
//! `ironvirt_stream::serve`. The router itself is a plain value ([`router`])
//! so tests can drive it without sockets.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::VirtualMachineInstancePhase as Phase;
use ironvirt_crds::wire::{STREAM_SUBPROTOCOL, domain_name};
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use ironvirt_stream::ws::{self, bounded, send};

use crate::console::{ConsoleHub, Consoles};
use crate::domxml;
use crate::libvirt::{self, Libvirt, LibvirtError};

/// VNC relay buffer.
const VNC_CHUNK: usize = 64 * 1024;

/// What the stream endpoints need.
#[derive(Clone)]
pub struct StreamState {
    pub node: String,
    pub libvirt: Arc<Libvirt>,
    pub consoles: Arc<Consoles>,
    pub vmis: Store<VirtualMachineInstance>,
    pub vnc: Arc<VncSessions>,
    /// The VMIs' networks, where port-forward connects.
    pub guestnet: Arc<crate::guestnet::GuestNet>,
}

/// The VNC viewer of each domain: one at a time, as in KubeVirt. A new viewer
/// replaces the current one, unless it asks to preserve the session, in which
/// case it is refused while one is open. Screenshots attach as shared and
/// touch nobody.
#[derive(Default)]
pub struct VncSessions {
    viewers:
        std::sync::Mutex<std::collections::HashMap<String, (u64, tokio::sync::watch::Sender<u64>)>>,
}

impl VncSessions {
    /// Claims the viewer slot of `domain`: the token and its watch, or None
    /// when `preserve` is set and a viewer is connected.
    fn claim(
        &self,
        domain: &str,
        preserve: bool,
    ) -> Option<(u64, tokio::sync::watch::Receiver<u64>)> {
        let mut map = self.viewers.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(domain.to_owned())
            .or_insert_with(|| (0, tokio::sync::watch::channel(0).0));
        let active = entry.1.receiver_count() > 0;
        if preserve && active {
            return None;
        }
        entry.0 += 1;
        let token = entry.0;
        entry.1.send_replace(token);
        Some((token, entry.1.subscribe()))
    }
}

/// A Kubernetes Status body with `code`.
pub(crate) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn libvirt_error(e: &LibvirtError) -> Response {
    match e {
        LibvirtError::NoDomain(_) => status(StatusCode::CONFLICT, "Conflict", e.to_string()),
        LibvirtError::Unreachable { .. } => status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            e.to_string(),
        ),
        _ => status(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            e.to_string(),
        ),
    }
}

/// The handler's routes.
pub fn router(state: StreamState) -> Router {
    let base = "/v1/namespaces/{namespace}/virtualmachineinstances/{name}";
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(&format!("{base}/console"), get(console))
        .route(&format!("{base}/vnc"), get(vnc))
        .route(
            &format!("{base}/portforward/{{port}}"),
            get(crate::portforward::tcp),
        )
        .route(
            &format!("{base}/portforward/{{port}}/{{protocol}}"),
            get(crate::portforward::with_protocol),
        )
        .route(&format!("{base}/{{op}}"), put(power))
        .with_state(state)
}

/// How long a stream request waits for the VMI cache to catch up: a VMI's
/// Running status is this handler's own write, which a client can read from
/// kube-apiserver a moment before the cache's watch delivers it.
const CACHE_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3);

/// The VMI, which must be on this node and running, or the error response.
/// A VMI the cache does not have yet, or has as not yet running (and not
/// finished), is looked up again until [`CACHE_CATCH_UP`] has passed.
pub(crate) async fn running_vmi(
    state: &StreamState,
    ns: &str,
    name: &str,
) -> Result<Arc<VirtualMachineInstance>, Box<Response>> {
    let deadline = tokio::time::Instant::now() + CACHE_CATCH_UP;
    loop {
        let vmi = state.vmis.get(&ObjectRef::new(name).within(ns));
        let phase = vmi
            .as_ref()
            .and_then(|v| v.status.as_ref())
            .and_then(|s| s.phase);
        let settled = phase == Some(Phase::Running) || phase.is_some_and(Phase::is_final);
        if settled || tokio::time::Instant::now() >= deadline {
            return running_now(state, vmi, name, ns);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn running_now(
    state: &StreamState,
    vmi: Option<Arc<VirtualMachineInstance>>,
    name: &str,
    ns: &str,
) -> Result<Arc<VirtualMachineInstance>, Box<Response>> {
    let vmi = vmi.ok_or_else(|| {
        Box::new(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("VMI {ns}/{name} is not on node {}", state.node),
        ))
    })?;
    let phase = vmi.status.as_ref().and_then(|s| s.phase);
    if phase != Some(Phase::Running) {
        let shown = phase.map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"));
        return Err(Box::new(status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VMI {name} is not running (phase {shown})"),
        )));
    }
    Ok(vmi)
}

/// The domain of a VMI that runs on this node, or the error response.
async fn running_domain(
    state: &StreamState,
    ns: &str,
    name: &str,
) -> Result<String, Box<Response>> {
    running_vmi(state, ns, name).await?;
    Ok(domain_name(ns, name))
}

#[derive(Debug, Default, Deserialize)]
struct ConsoleQuery {
    /// Attach as an observer that cannot type.
    #[serde(default)]
    readonly: bool,
}

async fn console(
    State(state): State<StreamState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<ConsoleQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let domain = match running_domain(&state, &ns, &name).await {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let consoles = Arc::clone(&state.consoles);
    let opened = tokio::task::spawn_blocking(move || consoles.ensure(&domain)).await;
    let hub = match opened {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return libvirt_error(&e),
        Err(e) => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("opening the console failed: {e}"),
            );
        }
    };
    tracing::info!(vmi.namespace = %ns, vmi.name = %name, readonly = q.readonly, "console session");
    bounded(ws)
        .protocols([STREAM_SUBPROTOCOL])
        .on_upgrade(move |socket| {
            let why = EndReason {
                vmis: state.vmis.clone(),
                node: state.node.clone(),
                at: ObjectRef::new(&name).within(&ns),
            };
            console_session(socket, hub, q.readonly, why)
        })
}

/// Says why a console ended when its domain went away here.
struct EndReason {
    vmis: kube::runtime::reflector::Store<VirtualMachineInstance>,
    node: String,
    at: ObjectRef<VirtualMachineInstance>,
}

impl EndReason {
    /// "the VMI stopped", or, when a live migration moved the guest, where
    /// to (the console reconnects there).
    async fn text(&self) -> String {
        // The migration's end reaches the cache a moment after the domain
        // left: look for a little while.
        for _ in 0..20 {
            let Some(v) = self.vmis.get(&self.at) else {
                break;
            };
            let leaving = v
                .status
                .as_ref()
                .and_then(|s| s.migration_state.as_ref())
                .is_some_and(|m| {
                    m.source_node.as_deref() == Some(self.node.as_str()) && m.failed != Some(true)
                });
            if !leaving {
                break;
            }
            if crate::migrate::migrated_away(&v, &self.node) {
                let to = v
                    .status
                    .as_ref()
                    .and_then(|s| s.migration_state.as_ref())
                    .and_then(|m| m.target_node.clone())
                    .unwrap_or_default();
                return format!(
                    "the console ended: the VMI migrated to node {to}; open the console again"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        "the console ended: the VMI stopped".to_owned()
    }
}

async fn close(ws: &mut WebSocket, code: u16, reason: &str) {
    let _ = send(ws, ws::close_frame(code, reason)).await;
}

/// One client of a console hub, until either side goes away.
async fn console_session(mut ws: WebSocket, hub: Arc<ConsoleHub>, readonly: bool, why: EndReason) {
    let mut att = hub.attach_client();
    let (token, mut writer) = if readonly {
        (0, None)
    } else {
        let (t, rx) = hub.take_writer();
        (t, Some(rx))
    };
    if !att.backlog.is_empty()
        && !send(
            &mut ws,
            Message::Binary(Bytes::from(std::mem::take(&mut att.backlog))),
        )
        .await
    {
        return;
    }
    let mut ping = ws::pings();
    loop {
        tokio::select! {
            out = att.output.recv() => match out {
                Ok(chunk) => {
                    let frame = coalesce(chunk, &mut att.output);
                    if !send(&mut ws, Message::Binary(frame)).await {
                        break;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(skipped = n, "console client fell behind; output dropped for it");
                }
                Err(RecvError::Closed) => {
                    close(&mut ws, 1000, "the console ended").await;
                    break;
                }
            },
            changed = att.closed.changed() => {
                if changed.is_err() || *att.closed.borrow() {
                    close(&mut ws, 1000, &why.text().await).await;
                    break;
                }
            }
            incoming = ws.recv() => match incoming {
                Some(Ok(Message::Binary(data))) => {
                    if !readonly && !hub.write(data.to_vec()).await {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    if !readonly && !hub.write(text.as_bytes().to_vec()).await {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            took = async {
                match writer.as_mut() {
                    Some(rx) => rx.changed().await.map(|()| *rx.borrow() != token),
                    None => std::future::pending().await,
                }
            } => {
                if took.unwrap_or(true) {
                    close(&mut ws, 4000, "another client took over the console").await;
                    break;
                }
            }
            _ = ping.tick() => {
                if !send(&mut ws, Message::Ping(Bytes::new())).await {
                    break;
                }
            }
        }
    }
}

/// The most output bytes sent in one websocket frame.
const FRAME_BYTES: usize = 16 * 1024;

/// `first` and the output chunks already waiting behind it, up to
/// [`FRAME_BYTES`], as one frame: the serial port delivers a few bytes per
/// read, and a frame per read would cost each hop to the user a message.
fn coalesce(first: Bytes, output: &mut broadcast::Receiver<Bytes>) -> Bytes {
    if first.len() >= FRAME_BYTES {
        return first;
    }
    let mut frame: Option<Vec<u8>> = None;
    while frame.as_ref().map_or(first.len(), Vec::len) < FRAME_BYTES {
        match output.try_recv() {
            Ok(more) => frame
                .get_or_insert_with(|| first.to_vec())
                .extend_from_slice(&more),
            Err(TryRecvError::Lagged(n)) => {
                tracing::debug!(
                    skipped = n,
                    "console client fell behind; output dropped for it"
                );
            }
            // Nothing more yet, or the end: the loop's next recv sees it.
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        }
    }
    frame.map_or(first, Bytes::from)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VncQuery {
    /// Refuse (503) instead of replacing a connected viewer.
    #[serde(default)]
    preserve_session: bool,
    /// Attach beside any viewer (screenshots).
    #[serde(default)]
    shared: bool,
}

async fn vnc(
    State(state): State<StreamState>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(q): Query<VncQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let domain = match running_domain(&state, &ns, &name).await {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let viewer = if q.shared {
        None
    } else {
        match state.vnc.claim(&domain, q.preserve_session) {
            Some(v) => Some(v),
            None => {
                return status(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!(
                        "VMI {name} already has a VNC viewer; connect without preserveSession to take over"
                    ),
                );
            }
        }
    };
    let lookup = domain.clone();
    let xml = state
        .libvirt
        .call(move |conn| libvirt::with_domain(conn, &lookup, libvirt::live_xml))
        .await;
    let socket = match xml {
        Ok(x) => domxml::parse_live(&x).vnc_socket,
        Err(e) => return libvirt_error(&e),
    };
    let Some(socket) = socket else {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VMI {name} has no VNC display (autoattachGraphicsDevice is false)"),
        );
    };
    let vnc = match UnixStream::connect(&socket).await {
        Ok(t) => t,
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("VNC of VMI {name} is unreachable: {e}"),
            );
        }
    };
    tracing::info!(vmi.namespace = %ns, vmi.name = %name, socket = %socket.display(), "vnc session");
    bounded(ws)
        .protocols([STREAM_SUBPROTOCOL])
        .on_upgrade(move |ws| vnc_session(ws, vnc, viewer))
}

async fn vnc_session(
    mut ws: WebSocket,
    vnc: UnixStream,
    mut viewer: Option<(u64, tokio::sync::watch::Receiver<u64>)>,
) {
    let (mut rd, mut wr) = vnc.into_split();
    let mut buf = vec![0u8; VNC_CHUNK];
    let mut ping = ws::pings();
    loop {
        tokio::select! {
            replaced = async {
                match viewer.as_mut() {
                    Some((token, rx)) => rx.changed().await.map(|()| *rx.borrow() != *token),
                    None => std::future::pending().await,
                }
            } => {
                if replaced.unwrap_or(true) {
                    close(&mut ws, 4000, "another client took over the VNC session").await;
                    break;
                }
            }
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => {
                    close(&mut ws, 1000, "the VNC server closed the connection").await;
                    break;
                }
                Ok(n) => {
                    if !send(&mut ws, Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await {
                        break;
                    }
                }
            },
            incoming = ws.recv() => match incoming {
                Some(Ok(Message::Binary(data))) => {
                    if wr.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            _ = ping.tick() => {
                if !send(&mut ws, Message::Ping(Bytes::new())).await {
                    break;
                }
            }
        }
    }
}

/// The power operations the subresource API forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerOp {
    Pause,
    Unpause,
    SoftReboot,
    Reset,
}

impl PowerOp {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "pause" => Some(PowerOp::Pause),
            "unpause" => Some(PowerOp::Unpause),
            "softreboot" => Some(PowerOp::SoftReboot),
            "reset" => Some(PowerOp::Reset),
            _ => None,
        }
    }
}

async fn power(
    State(state): State<StreamState>,
    UrlPath((ns, name, op)): UrlPath<(String, String, String)>,
) -> Response {
    let Some(op) = PowerOp::parse(&op) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("unknown operation {op:?}; expected pause, unpause, softreboot or reset"),
        );
    };
    let domain = match running_domain(&state, &ns, &name).await {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let result = state
        .libvirt
        .call(move |conn| {
            libvirt::with_domain(conn, &domain, |dom| {
                let st = libvirt::domain_state(dom)?;
                let paused = matches!(st, libvirt::DomState::Paused { .. });
                match op {
                    PowerOp::Pause if paused => Ok(Some("VMI is already paused")),
                    PowerOp::Unpause if !paused => Ok(Some("VMI is not paused")),
                    PowerOp::Pause => dom.suspend().map(|()| None),
                    PowerOp::Unpause => dom.resume().map(|()| None),
                    PowerOp::SoftReboot if paused => Ok(Some("VMI is paused; unpause it first")),
                    PowerOp::SoftReboot => libvirt::soft_reboot(dom).map(|()| None),
                    PowerOp::Reset => dom.reset().map(|()| None),
                }
            })
        })
        .await;
    match result {
        Ok(None) => {
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, ?op, "power operation done");
            StatusCode::OK.into_response()
        }
        Ok(Some(conflict)) => status(StatusCode::CONFLICT, "Conflict", conflict.to_owned()),
        Err(e) => libvirt_error(&e),
    }
}

#[cfg(test)]
#[path = "streams_tests.rs"]
mod tests;
