//! Port-forward: `GET …/virtualmachineinstances/{name}/portforward/{port}[/{protocol}]`,
//! one websocket per connection to a port of the guest (KubeVirt's
//! `plain.kubevirt.io`: raw bytes in binary frames; for UDP, one datagram per
//! frame).
//!
//! The handler reaches the guest the way anyone on the node does: at the
//! VMI's address ([`crate::guestnet`]), where passt forwards the ports the
//! VMI's pod-network interface forwards ([`forward_requests`]). A port it does
//! not forward is refused before the upgrade, naming the ports it does; so is
//! a VMI without a network on this node. The TCP connection is made before the
//! upgrade too, so an unreachable address is a Status, not a closed socket.
//! Each direction moves at most [`CHUNK`] bytes at a time and waits for the
//! other side (no queue grows); a guest that closes or resets the connection
//! ends the websocket with a close frame that says so.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::PortProtocol;
use ironvirt_crds::wire::STREAM_SUBPROTOCOL;
use ironvirt_stream::ws::{self, bounded, send};
use kube::ResourceExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::create_plan::{ForwardRequest, forward_requests};
use crate::streams::{StreamState, running_vmi, status};

/// The most bytes read from the guest per websocket frame.
pub const CHUNK: usize = 32 * 1024;
/// The largest UDP datagram relayed.
const DATAGRAM: usize = 64 * 1024;
/// How long connecting to the guest's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `…/portforward/{port}`: TCP.
pub async fn tcp(
    State(state): State<StreamState>,
    UrlPath((ns, name, port)): UrlPath<(String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    open(state, ns, name, port, "tcp".to_owned(), ws).await
}

/// `…/portforward/{port}/{protocol}`: `tcp` or `udp`.
pub async fn with_protocol(
    State(state): State<StreamState>,
    UrlPath((ns, name, port, protocol)): UrlPath<(String, String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    open(state, ns, name, port, protocol, ws).await
}

/// What a port-forward request asks for, once checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub port: u16,
    pub protocol: PortProtocol,
}

/// Checks the port and protocol of a request against what the VMI's network
/// forwards; the error is (status, reason, message).
pub fn target(
    vmi: &VirtualMachineInstance,
    port: &str,
    protocol: &str,
) -> Result<Target, (StatusCode, &'static str, String)> {
    let name = vmi.name_any();
    let bad = |m: String| (StatusCode::BAD_REQUEST, "BadRequest", m);
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad(format!("{port:?} is not a port number (1 to 65535)")))?;
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => PortProtocol::Tcp,
        "udp" => PortProtocol::Udp,
        _ => return Err(bad(format!("protocol {protocol:?}: use tcp or udp"))),
    };
    let forwards = forward_requests(vmi).map_err(bad)?;
    if forwards
        .iter()
        .any(|f| f.guest_port == port && f.protocol == protocol)
    {
        return Ok(Target { port, protocol });
    }
    let shown = |p: PortProtocol| if p == PortProtocol::Udp { "udp" } else { "tcp" };
    let message = if forwards.is_empty() {
        format!(
            "VMI {name} has no interface on the pod network (masquerade or bridge): port-forward reaches the guest through it"
        )
    } else {
        let list: Vec<String> = forwards
            .iter()
            .map(|f: &ForwardRequest| format!("{}/{}", f.guest_port, shown(f.protocol)))
            .collect();
        format!(
            "port {port}/{} of VMI {name} is not forwarded: its interface {} forwards {}; list the port in its `ports`",
            shown(protocol),
            forwards[0].interface,
            list.join(", ")
        )
    };
    Err(bad(message))
}

async fn open(
    state: StreamState,
    ns: String,
    name: String,
    port: String,
    protocol: String,
    ws: WebSocketUpgrade,
) -> Response {
    let vmi = match running_vmi(&state, &ns, &name).await {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let t = match target(&vmi, &port, &protocol) {
        Ok(t) => t,
        Err((code, reason, message)) => return status(code, reason, message),
    };
    let uid = vmi.uid().unwrap_or_default();
    let Some(address) = state.guestnet.address(&uid).await else {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VMI {name} has no guest network on node {}", state.node),
        );
    };
    let to = SocketAddr::from((address, t.port));
    match t.protocol {
        PortProtocol::Tcp => {
            let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return unreachable(&name, address, t, &e.to_string()),
                Err(_) => return unreachable(&name, address, t, "timed out"),
            };
            let _ = tcp.set_nodelay(true);
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, port = t.port, "port-forward opened");
            bounded(ws)
                .protocols([STREAM_SUBPROTOCOL])
                .on_upgrade(move |socket| async move {
                    let why = relay_tcp(socket, tcp, t.port).await;
                    tracing::info!(vmi.namespace = %ns, vmi.name = %name, port = t.port, ended = %why, "port-forward closed");
                })
        }
        PortProtocol::Udp => {
            let udp = match bind_udp(to).await {
                Ok(s) => s,
                Err(e) => return unreachable(&name, address, t, &e.to_string()),
            };
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, port = t.port, protocol = "udp", "port-forward opened");
            bounded(ws)
                .protocols([STREAM_SUBPROTOCOL])
                .on_upgrade(move |socket| async move {
                    let why = relay_udp(socket, udp, t.port).await;
                    tracing::info!(vmi.namespace = %ns, vmi.name = %name, port = t.port, protocol = "udp", ended = %why, "port-forward closed");
                })
        }
    }
}

fn unreachable(name: &str, address: Ipv4Addr, t: Target, why: &str) -> Response {
    status(
        StatusCode::BAD_GATEWAY,
        "ServiceUnavailable",
        format!(
            "connecting to port {} of VMI {name} ({address}): {why}",
            t.port
        ),
    )
}

async fn bind_udp(to: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).await?;
    s.connect(to).await?;
    Ok(s)
}

/// Relays one TCP connection until either side ends it; says how it ended.
/// A read from the guest waits until its frame is sent, and a frame from
/// the client waits until it is written: each direction holds one buffer.
pub async fn relay_tcp(socket: WebSocket, tcp: TcpStream, port: u16) -> String {
    let (mut rd, mut wr) = tcp.into_split();
    let (mut tx, mut rx) = socket.split();
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        let mut ping = ws::pings();
        let mut answered = false;
        loop {
            tokio::select! {
                n = rd.read(&mut buf) => match n {
                    // Ended before a byte came: nothing listens there (passt
                    // accepts for the guest, then drops what the guest refuses).
                    Ok(0) | Err(_) if !answered => {
                        let why = format!(
                            "port {port} of the guest closed the connection without answering: nothing listens there, or the guest refused it"
                        );
                        let _ = send(&mut tx, ws::close_frame(1011, &why)).await;
                        return why;
                    }
                    Ok(0) => {
                        let why = format!("the guest closed the connection to port {port}");
                        let _ = send(&mut tx, ws::close_frame(1000, &why)).await;
                        return why;
                    }
                    Ok(n) => {
                        answered = true;
                        if !send(&mut tx, Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await {
                            return "the client stopped reading".to_owned();
                        }
                    }
                    Err(e) => {
                        let why = format!("the connection to port {port} of the guest failed: {e}");
                        let _ = send(&mut tx, ws::close_frame(1011, &why)).await;
                        return why;
                    }
                },
                _ = ping.tick() => {
                    if !send(&mut tx, Message::Ping(Bytes::new())).await {
                        return "the client went away".to_owned();
                    }
                }
            }
        }
    };
    let up = async {
        while let Some(m) = rx.next().await {
            let data = match m {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => Bytes::copy_from_slice(t.as_bytes()),
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                Ok(Message::Close(_)) | Err(_) => break,
            };
            if let Err(e) = wr.write_all(&data).await {
                return format!("writing to port {port} of the guest failed: {e}");
            }
        }
        let _ = wr.shutdown().await;
        "the client closed the connection".to_owned()
    };
    tokio::select! {
        why = down => why,
        why = up => why,
    }
}

/// Relays datagrams: one websocket frame each way per datagram.
pub async fn relay_udp(socket: WebSocket, udp: UdpSocket, port: u16) -> String {
    let (mut tx, mut rx) = socket.split();
    let mut buf = vec![0u8; DATAGRAM];
    let mut ping = ws::pings();
    loop {
        tokio::select! {
            n = udp.recv(&mut buf) => match n {
                Ok(n) => {
                    if !send(&mut tx, Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await {
                        return "the client stopped reading".to_owned();
                    }
                }
                Err(e) => {
                    let why = format!("udp port {port} of the guest: {e}");
                    let _ = send(&mut tx, ws::close_frame(1011, &why)).await;
                    return why;
                }
            },
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => { let _ = udp.send(&b).await; }
                Some(Ok(Message::Text(t))) => { let _ = udp.send(t.as_bytes()).await; }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    let _ = tx.close().await;
                    return "the client closed the connection".to_owned();
                }
            },
            _ = ping.tick() => {
                if !send(&mut tx, Message::Ping(Bytes::new())).await {
                    return "the client went away".to_owned();
                }
            }
        }
    }
}
