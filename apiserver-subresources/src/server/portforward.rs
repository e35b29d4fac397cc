//! `GET …/{virtualmachineinstances,virtualmachines}/{name}/portforward/{port}[/{protocol}]`:
//! one websocket per forwarded connection, relayed to the handler of the
//! VMI's node, which connects to the guest ([`ironvirt_handler`'s
//! `portforward`]). A VM's port-forward reaches its VMI (the same name).
//!
//! Authorized as `get` on the `portforward` subresource of the resource in the
//! path, as KubeVirt's roles grant it (admin and edit, not view). Each
//! connection holds a port-forward permit ([`crate::limits`]) while open.

use axum::Extension;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use ironvirt_crds::VirtualMachine;
use ironvirt_crds::wire::STREAM_SUBPROTOCOL;
use ironvirt_stream::ws::bounded;
use kube::api::Api;
use serde::Deserialize;

use super::authz::{attrs, authorize};
use super::streams::{Framing, relay};
use super::upstream::{handler_ws, running_vmi};
use super::{ApiState, check_names, kube_error, not_found, permit, status};
use crate::auth::Peer;

/// The resource a port-forward names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum On {
    Vmi,
    Vm,
}

impl On {
    fn resource(self) -> &'static str {
        match self {
            On::Vmi => "virtualmachineinstances",
            On::Vm => "virtualmachines",
        }
    }
}

/// The port and protocol from the URL: a port number 1–65535 and `tcp`
/// (the default) or `udp`, lowercased for the handler.
pub(super) fn port_and_protocol(
    port: &str,
    protocol: Option<&str>,
) -> Result<(u16, &'static str), String> {
    let number = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{} is not a port number (1 to 65535)", super::echo(port)))?;
    let protocol = match protocol.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => "tcp",
        Some("udp") => "udp",
        Some(_) => {
            return Err(format!(
                "protocol {}: use tcp or udp",
                super::echo(protocol.unwrap_or_default())
            ));
        }
    };
    Ok((number, protocol))
}

/// The path's parameters; the protocol segment is optional (TCP then).
#[derive(Debug, Deserialize)]
pub(super) struct Target {
    namespace: String,
    name: String,
    port: String,
    protocol: Option<String>,
}

pub(super) async fn vmi(
    state: State<ApiState>,
    Path(target): Path<Target>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    open(state, On::Vmi, target, headers, peer, ws).await
}

pub(super) async fn vm(
    state: State<ApiState>,
    Path(target): Path<Target>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    open(state, On::Vm, target, headers, peer, ws).await
}

async fn open(
    State(state): State<ApiState>,
    on: On,
    Target {
        namespace: ns,
        name,
        port,
        protocol,
    }: Target,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, Response> {
    check_names(&ns, &name)?;
    let peer = peer.map(|Extension(p)| p);
    let user = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("get", on.resource(), "portforward", &ns, &name),
    )
    .await?;
    let (port, protocol) = port_and_protocol(&port, protocol.as_deref())
        .map_err(|m| status(StatusCode::BAD_REQUEST, "BadRequest", m))?;
    let Ok(ws) = ws else {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "portforward is a websocket: connect with an Upgrade request",
        ));
    };
    let held = permit(&state, &state.limits.port_forwards, &user.name)?;
    if on == On::Vm {
        let vms: Api<VirtualMachine> = Api::namespaced(state.client.clone(), &ns);
        vms.get_opt(&name)
            .await
            .map_err(|e| kube_error(&e))?
            .ok_or_else(|| not_found(&format!("virtualmachine \"{name}\"")))?;
    }
    let (_vmi, url) = running_vmi(&state, &ns, &name).await?;
    let path =
        format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/portforward/{port}/{protocol}");
    let upstream = handler_ws(&state, &url, &path).await?;
    tracing::debug!(vmi.namespace = %ns, vmi.name = %name, port, protocol, "port-forward opened");
    let open = state.metrics.stream("portforward");
    Ok(bounded(ws)
        .protocols([STREAM_SUBPROTOCOL])
        .on_upgrade(move |client| async move {
            // Never merged: a UDP forward carries one datagram per frame.
            relay(client, upstream, Framing::Messages).await;
            drop(open);
            drop(held);
            tracing::debug!(vmi.namespace = %ns, vmi.name = %name, port, protocol, "port-forward closed");
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_protocols_are_checked_and_lowercased() {
        assert_eq!(port_and_protocol("22", None), Ok((22, "tcp")));
        assert_eq!(port_and_protocol("53", Some("UDP")), Ok((53, "udp")));
        assert_eq!(port_and_protocol("65535", Some("tcp")), Ok((65535, "tcp")));
        assert_eq!(
            port_and_protocol("0", None),
            Err("\"0\" is not a port number (1 to 65535)".into())
        );
        assert_eq!(
            port_and_protocol("65536", None),
            Err("\"65536\" is not a port number (1 to 65535)".into())
        );
        assert_eq!(
            port_and_protocol("22", Some("sctp")),
            Err("protocol \"sctp\": use tcp or udp".into())
        );
    }
}
