//! Step 3 for console, VNC and screenshot: the user's websocket relayed to
//! the handler's, or one VNC frame read from the handler and answered as PNG.
//! Each holds a permit ([`crate::limits`]) from authorization until the
//! stream or screenshot ends, however it ends; over a limit the answer is 429.

use std::time::Duration;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, SinkExt, StreamExt};
use ironvirt_crds::wire::STREAM_SUBPROTOCOL;
use ironvirt_stream::coalesce::{COALESCE_BYTES, Held, Ready, coalesce};
use ironvirt_stream::ws::{self, bounded, send};
use serde::Deserialize;
use tokio_tungstenite::tungstenite;

use super::authz::{attrs, authorize};
use super::upstream::{HandlerWs, handler_ws, running_vmi};
use super::{ApiState, check_names, not_found, permit, status};
use crate::auth::Peer;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct StreamQuery {
    #[serde(default)]
    readonly: bool,
    #[serde(default)]
    preserve_session: bool,
}

/// `GET …/virtualmachineinstances/{name}/{console,vnc}`: a websocket relayed
/// to the handler's.
pub(super) async fn vmi_stream(
    State(state): State<ApiState>,
    Path((ns, name, sub)): Path<(String, String, String)>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    if sub != "console" && sub != "vnc" {
        return Err(not_found(&format!(
            "subresource {sub:?} of virtualmachineinstances"
        )));
    }
    let peer = peer.map(|Extension(p)| p);
    let user = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("get", "virtualmachineinstances", &sub, &ns, &name),
    )
    .await?;
    let Ok(ws) = ws else {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("{sub} is a websocket: connect with an Upgrade request"),
        ));
    };
    let held = permit(&state, &state.limits.streams, &user.name)?;
    let (_vmi, url) = running_vmi(&state, &ns, &name).await?;
    let mut path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/{sub}");
    if sub == "console" && q.readonly {
        path.push_str("?readonly=true");
    }
    if sub == "vnc" && q.preserve_session {
        path.push_str("?preserveSession=true");
    }
    let upstream = handler_ws(&state, &url, &path).await?;
    tracing::info!(vmi.namespace = %ns, vmi.name = %name, sub = %sub, "stream opened");
    let kind = if sub == "console" { "console" } else { "vnc" };
    let open = state.metrics.stream(kind);
    Ok(bounded(ws)
        .protocols([STREAM_SUBPROTOCOL])
        .on_upgrade(move |client| async move {
            // The serial console and RFB are byte streams.
            relay(client, upstream, Framing::ByteStream).await;
            drop(open);
            drop(held);
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, sub = %sub, "stream closed");
        }))
}

/// Whether the frames a relay carries may be merged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// A byte stream (the serial console, VNC's RFB): the handler's frames
    /// that are already waiting go to the user as one
    /// ([`ironvirt_stream::coalesce`]).
    ByteStream,
    /// Every frame is a message of its own (a port-forward: one UDP datagram
    /// per frame): relayed one by one.
    Messages,
}

/// What the handler's side of a relay yields.
type HandlerItem = Option<Result<tungstenite::Message, tungstenite::Error>>;

/// The handler's frame that is ready now, if any, for [`coalesce`]: bytes
/// are merged, pings and pongs passed over, anything else ends the frame.
fn ready_now(upstream: &mut HandlerWs) -> Option<Ready<HandlerItem>> {
    match upstream.next().now_or_never()? {
        Some(Ok(tungstenite::Message::Binary(b))) => Some(Ready::Bytes(b)),
        Some(Ok(tungstenite::Message::Text(t))) => Some(Ready::Bytes(Bytes::from(t))),
        Some(Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_))) => {
            Some(Ready::Skip)
        }
        other => Some(Ready::Boundary(other)),
    }
}

/// Relays frames between the user's websocket and the handler's until either
/// side closes. Pings keep idle sessions alive through proxies. With
/// [`Framing::ByteStream`], each frame from the handler takes the ones
/// already waiting behind it along (up to [`COALESCE_BYTES`]): ironvirt-api
/// sets `TCP_NODELAY`, so each frame sent is a segment on its way to the user.
pub(super) async fn relay(mut client: WebSocket, mut upstream: HandlerWs, framing: Framing) {
    enum Event {
        User(Option<Result<Message, axum::Error>>),
        Handler(HandlerItem),
        Ping,
    }
    let mut ping = ws::pings();
    // A frame taken while merging but not merged: handled before reading on.
    let mut held: Option<HandlerItem> = None;
    loop {
        let event = match held.take() {
            Some(item) => Event::Handler(item),
            None => tokio::select! {
                m = client.recv() => Event::User(m),
                m = upstream.next() => Event::Handler(m),
                _ = ping.tick() => Event::Ping,
            },
        };
        match event {
            Event::User(from_user) => match from_user {
                Some(Ok(Message::Binary(b))) => {
                    if upstream
                        .send(tungstenite::Message::Binary(b))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let bytes = Bytes::copy_from_slice(t.as_bytes());
                    if upstream
                        .send(tungstenite::Message::Binary(bytes))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    let _ = upstream.close(None).await;
                    break;
                }
            },
            Event::Handler(from_handler) => {
                let data = match from_handler {
                    Some(Ok(tungstenite::Message::Binary(b))) => b,
                    Some(Ok(tungstenite::Message::Text(t))) => Bytes::from(t),
                    Some(Ok(tungstenite::Message::Close(frame))) => {
                        let frame = frame.map(|f| CloseFrame {
                            code: f.code.into(),
                            reason: f.reason.as_str().into(),
                        });
                        let _ = send(&mut client, Message::Close(frame)).await;
                        break;
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => {
                        let _ = send(
                            &mut client,
                            Message::Close(Some(CloseFrame {
                                code: 1011,
                                reason: "the handler connection ended".into(),
                            })),
                        )
                        .await;
                        break;
                    }
                };
                let frame = match framing {
                    Framing::Messages => data,
                    Framing::ByteStream => {
                        let (frame, rest) =
                            coalesce(data, COALESCE_BYTES, || ready_now(&mut upstream));
                        held = rest.map(|h| match h {
                            Held::Bytes(b) => Some(Ok(tungstenite::Message::Binary(b))),
                            Held::Boundary(item) => item,
                        });
                        frame
                    }
                };
                if !send(&mut client, Message::Binary(frame)).await {
                    break;
                }
            }
            Event::Ping => {
                if !send(&mut client, Message::Ping(Bytes::new())).await {
                    break;
                }
            }
        }
    }
}

/// `GET …/virtualmachineinstances/{name}/vnc/screenshot`: one frame of the
/// VMI's screen as PNG, read over a shared VNC session.
pub(super) async fn screenshot(
    State(state): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    let peer = peer.map(|Extension(p)| p);
    let user = authorize(
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
    .await?;
    // Held until this function returns, on every path.
    let _held = permit(&state, &state.limits.screenshots, &user.name)?;
    let _counted = state.metrics.screenshot();
    let (_vmi, url) = running_vmi(&state, &ns, &name).await?;
    let path = format!(
        "/v1/namespaces/{ns}/virtualmachineinstances/{name}/vnc?preserveSession=true&shared=true"
    );
    let upstream = handler_ws(&state, &url, &path).await?;
    let (ours, theirs) = tokio::io::duplex(256 * 1024);
    let pump = tokio::spawn(pump_ws(upstream, theirs));
    let budget = state.limits.screenshot_pixels;
    let shot = crate::rfb::screenshot_within(ours, Duration::from_secs(20), budget).await;
    pump.abort();
    match shot {
        Ok(s) => Ok(([(header::CONTENT_TYPE, "image/png")], s.png).into_response()),
        Err(e @ crate::rfb::RfbError::OverBudget { .. }) => {
            tracing::info!(vmi.namespace = %ns, vmi.name = %name, error = %e, "screenshot refused");
            Err(status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("taking a screenshot of VMI {name}: {e} (--max-screenshot-pixels)"),
            ))
        }
        Err(e) => Err(status(
            StatusCode::BAD_GATEWAY,
            "InternalError",
            format!("taking a screenshot of VMI {name}: {e}"),
        )),
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
