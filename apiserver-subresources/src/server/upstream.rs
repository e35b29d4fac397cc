//! Step 2 of the VMI subresources: the running VMI, the handler of its node
//! (found through the handler's Lease, whose annotation carries its stream
//! URL), and the mTLS connection to it — a websocket for console and VNC, a
//! plain PUT for the power operations.
//!
//! The Lease only says where to dial; who answers is checked by TLS: the
//! handler's certificate must name the VMI's node
//! ([`handler_server_name`]`(status.nodeName)`), so a Lease pointing at another
//! node's handler (or anything else) gets a 503, never that handler.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::Response;
use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::wire::{
    HANDLER_SERVER_NAME, STREAM_SUBPROTOCOL, STREAM_URL_ANNOTATION, handler_lease_name,
    handler_server_name,
};
use ironvirt_stream::ws;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use tokio_tungstenite::tungstenite;

use super::{ApiState, kube_error, not_found, status};

/// The TLS connection to a handler.
pub(super) type HandlerStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A websocket to a handler.
pub(super) type HandlerWs = tokio_tungstenite::WebSocketStream<HandlerStream>;

/// Where the handler of a node serves (its Lease's stream URL), and the node
/// whose name its certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HandlerAddr {
    pub node: String,
    pub url: String,
}

/// The VMI, which must be running, and its handler's address: 404 when there is
/// no such VMI, 409 when it is not running or not placed, 503 when its
/// handler has not published where it serves.
pub(super) async fn running_vmi(
    state: &ApiState,
    ns: &str,
    name: &str,
) -> Result<(VirtualMachineInstance, HandlerAddr), Response> {
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
        .get_opt(&handler_lease_name(&node))
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
    Ok((vmi, HandlerAddr { node, url }))
}

/// Opens an mTLS connection to the handler of `addr.node` at `addr.url`
/// (https://host:port): its certificate must name that node.
async fn dial_handler(state: &ApiState, addr: &HandlerAddr) -> Result<HandlerStream, String> {
    let HandlerAddr { node, url } = addr;
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
    let expected = expected_handler_name(node, state.shared_handler_certificate);
    let name = rustls::pki_types::ServerName::try_from(expected.clone())
        .map_err(|e| format!("node name {node:?} is not a TLS server name: {e}"))?;
    tokio_rustls::TlsConnector::from(Arc::clone(&state.handler_tls))
        .connect(name, tcp)
        .await
        .map_err(|e| {
            tracing::warn!(node = %node, url = %url, error = %e, "handler TLS refused");
            format!(
                "the server at {url} (stream URL of node {node}'s handler Lease) is not the handler of node {node}: TLS with the name {expected} failed: {e}"
            )
        })
}

/// The name a handler's certificate must carry: its node's
/// (`<node>.ironvirt-handler`), or with one certificate shared by every
/// handler, `ironvirt-handler`. That certificate's `*.ironvirt-handler` does
/// not stand in for the per-node name: rustls, like NSS, wants two labels
/// after a wildcard, and a wildcard matches one label, not a dotted node name.
pub(super) fn expected_handler_name(node: &str, shared: bool) -> String {
    if shared {
        HANDLER_SERVER_NAME.to_owned()
    } else {
        handler_server_name(node)
    }
}

fn unavailable(message: String) -> Response {
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        message,
    )
}

/// The reason and message of a handler's Status error body; a body that is
/// not a Status is the message itself.
pub(super) fn handler_status(body: String) -> (Option<String>, String) {
    let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
    let field = |key: &str| {
        parsed
            .as_ref()
            .and_then(|v| v[key].as_str().map(str::to_owned))
    };
    let reason = field("reason");
    let message = field("message").unwrap_or(body);
    (reason, message)
}

/// Opens the handler's websocket for `path` (below /v1/namespaces/…).
pub(super) async fn handler_ws(
    state: &ApiState,
    addr: &HandlerAddr,
    path: &str,
) -> Result<HandlerWs, Response> {
    let tls = dial_handler(state, addr).await.map_err(unavailable)?;
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
            let (reason, message) = handler_status(body);
            let reason = reason.unwrap_or_else(|| "InternalError".to_owned());
            Err(status(code, &reason, message))
        }
        Err(e) => Err(unavailable(format!("websocket to the handler: {e}"))),
    }
}

/// A PUT to the handler; (status code, body).
pub(super) async fn forward_put(
    state: &ApiState,
    addr: &HandlerAddr,
    path: &str,
) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = dial_handler(state, addr).await?;
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

#[cfg(test)]
mod name_tests {
    use super::expected_handler_name;

    #[test]
    fn handlers_are_verified_by_their_node_or_by_the_shared_name() {
        assert_eq!(expected_handler_name("n1", false), "n1.ironvirt-handler");
        assert_eq!(
            expected_handler_name("ip-10-0-0-1.ec2.internal", false),
            "ip-10-0-0-1.ec2.internal.ironvirt-handler"
        );
        assert_eq!(expected_handler_name("n1", true), "ironvirt-handler");
    }

    /// Why the shared certificate needs its own mode: its `*.ironvirt-handler`
    /// is not a name rustls accepts (two labels must follow a wildcard).
    #[test]
    fn a_wildcard_over_one_label_is_not_a_valid_presented_name() {
        use rustls::pki_types::{CertificateDer, ServerName};
        let mut params = rcgen::CertificateParams::new(vec![
            "ironvirt-handler".to_owned(),
            "*.ironvirt-handler".to_owned(),
        ])
        .expect("params");
        params.is_ca = rcgen::IsCa::NoCa;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let der = CertificateDer::from(cert.der().to_vec());
        let ee = webpki::EndEntityCert::try_from(&der).expect("end entity");
        let ok = |name: &str| {
            let name = ServerName::try_from(name.to_owned()).expect("name");
            ee.verify_is_valid_for_subject_name(&name).is_ok()
        };
        assert!(ok("ironvirt-handler"));
        assert!(!ok("n1.ironvirt-handler"));
    }
}
