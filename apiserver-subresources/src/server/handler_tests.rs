//! The routes that reach a handler, against a fake handler on 127.0.0.1
//! with a certificate for `n1.ironvirt-handler` from a test CA: VMI operations
//! forwarded and their answers passed on, a console relayed both ways, a
//! handler's refusal of a websocket passed on, and another node's handler
//! refused.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, RawQuery};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use futures::{SinkExt, StreamExt};
use ironvirt_crds::wire::{STREAM_SUBPROTOCOL, handler_server_name};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use tokio_tungstenite::tungstenite;

use super::ApiState;
use super::tests::{
    SUB, configured_auth, lease, message, open_ws, send, state_with, vmi, vmi_cluster,
};

/// A test CA, a serving certificate from it for the handler of `node`, and a
/// client config that trusts it.
fn pki(node: &str) -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let provider = || Arc::new(rustls::crypto::ring::default_provider());
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![handler_server_name(node)])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// What the fake handler was asked: method, path and query.
type Asked = Arc<Mutex<Vec<String>>>;

/// The fake handler's routes: pause succeeds, reset conflicts, the console
/// echoes, VNC is refused.
fn handler_app(asked: Asked) -> Router {
    let vmi = "/v1/namespaces/{ns}/virtualmachineinstances/{name}";
    let log = move |what: String| asked.lock().unwrap().push(what);
    let (on_put, on_get) = (log.clone(), log);
    Router::new().route(
        &format!("{vmi}/{{op}}"),
        put(move |Path((_, _, op)): Path<(String, String, String)>| {
            on_put(format!("PUT {op}"));
            async move {
                match op.as_str() {
                    "pause" => StatusCode::OK.into_response(),
                    _ => (
                        StatusCode::CONFLICT,
                        axum::Json(json!({"kind": "Status", "reason": "Conflict",
                                "message": "VMI x is paused", "code": 409})),
                    )
                        .into_response(),
                }
            }
        })
        .get(
            move |Path((_, _, sub)): Path<(String, String, String)>,
                  RawQuery(q): RawQuery,
                  ws: WebSocketUpgrade| {
                on_get(format!("GET {sub}?{}", q.unwrap_or_default()));
                async move { stream(sub, ws) }
            },
        ),
    )
}

fn stream(sub: String, ws: WebSocketUpgrade) -> Response {
    if sub != "console" {
        let body = json!({"kind": "Status", "reason": "NotFound",
            "message": "VMI x has no VNC display", "code": 404});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    }
    ws.protocols([STREAM_SUBPROTOCOL])
        .on_upgrade(|mut ws| async move {
            while let Some(Ok(m)) = ws.recv().await {
                if let Message::Binary(b) = &m
                    && &b[..] == b"flood"
                {
                    flood(&mut ws).await;
                    return;
                }
                if let Message::Binary(b) = m
                    && ws.send(Message::Binary(b)).await.is_err()
                {
                    break;
                }
            }
        })
}

/// Small frames sent by the fake console at once, then how many bytes each.
const FLOOD_FRAMES: usize = 600;
const FLOOD_FRAME_BYTES: usize = 500;

/// The bytes of flood frame `i`: its number, then filler.
fn flood_frame(i: usize) -> Vec<u8> {
    let mut v = format!("<{i}>").into_bytes();
    v.resize(FLOOD_FRAME_BYTES, b'.');
    v
}

/// Queues [`FLOOD_FRAMES`] small frames and a close frame, and writes them
/// in one go, as a console's output piles up behind a slow hop.
async fn flood(ws: &mut axum::extract::ws::WebSocket) {
    for i in 0..FLOOD_FRAMES {
        if ws
            .feed(Message::Binary(flood_frame(i).into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let close = Message::Close(Some(axum::extract::ws::CloseFrame {
        code: 1000,
        reason: "the console ended".into(),
    }));
    let _ = ws.feed(close).await;
    let _ = ws.flush().await;
}

/// Starts the fake handler; its URL and what it is asked.
async fn fake_handler(config: Arc<rustls::ServerConfig>) -> (String, Asked) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let asked = Asked::default();
    let app = handler_app(Arc::clone(&asked));
    tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (url, asked)
}

/// ironvirt-api's state with a running VMI x on node n1, whose handler is
/// the fake one.
async fn with_handler() -> (ApiState, Asked) {
    with_handler_of("n1").await
}

/// The same, with the fake handler's certificate naming `node`.
async fn with_handler_of(node: &str) -> (ApiState, Asked) {
    let (server, client_tls) = pki(node);
    let (url, asked) = fake_handler(server).await;
    let (client, _) = vmi_cluster(Some(vmi("Running", Some("n1"))), Some(lease(Some(&url))));
    let mut state = state_with(client, configured_auth());
    state.handler_tls = client_tls;
    (state, asked)
}

fn vmi_sub(sub: &str) -> String {
    format!("{SUB}/namespaces/ns/virtualmachineinstances/x/{sub}")
}

#[tokio::test]
async fn vmi_operations_are_forwarded_and_answers_passed_on() {
    let (state, asked) = with_handler().await;
    let (code, body) = send(state.clone(), &Method::PUT, &vmi_sub("pause"), "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = send(state, &Method::PUT, &vmi_sub("reset"), "").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["reason"], "Conflict");
    assert_eq!(message(&body), "VMI x is paused");
    assert_eq!(*asked.lock().unwrap(), vec!["PUT pause", "PUT reset"]);
}

#[tokio::test]
async fn a_console_is_relayed_to_the_handler_and_counted() {
    let (state, asked) = with_handler().await;
    let metrics = state.metrics.clone();
    let mut ws = open_ws(state, &format!("{}?readonly=true", vmi_sub("console")))
        .await
        .unwrap();
    ws.send(tungstenite::Message::Binary("hello".into()))
        .await
        .unwrap();
    let echoed = loop {
        match ws.next().await.unwrap().unwrap() {
            tungstenite::Message::Binary(b) => break b,
            _ => continue,
        }
    };
    assert_eq!(&echoed[..], b"hello");
    assert!(
        metrics
            .encode()
            .contains("ironvirt_api_open_streams{kind=\"console\"} 1"),
        "{}",
        metrics.encode()
    );
    assert_eq!(*asked.lock().unwrap(), vec!["GET console?readonly=true"]);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn console_frames_waiting_together_are_merged_in_order_and_capped() {
    use ironvirt_stream::coalesce::COALESCE_BYTES;
    let (state, _) = with_handler().await;
    let mut ws = open_ws(state, &vmi_sub("console")).await.unwrap();
    ws.send(tungstenite::Message::Binary("flood".into()))
        .await
        .unwrap();
    let (mut got, mut frames) = (Vec::new(), 0usize);
    let close = loop {
        match ws.next().await.unwrap().unwrap() {
            tungstenite::Message::Binary(b) => {
                assert!(b.len() <= COALESCE_BYTES, "a frame of {} bytes", b.len());
                frames += 1;
                got.extend_from_slice(&b);
            }
            tungstenite::Message::Close(c) => break c,
            _ => continue,
        }
    };
    let want: Vec<u8> = (0..FLOOD_FRAMES).flat_map(flood_frame).collect();
    assert!(got == want, "the bytes differ or are out of order");
    assert!(
        frames < FLOOD_FRAMES / 2,
        "{frames} frames for {FLOOD_FRAMES} written at once"
    );
    // More than one cap's worth was waiting: the cap split it.
    assert!(frames >= want.len().div_ceil(COALESCE_BYTES));
    // The close comes after the data, with the handler's reason, unmerged.
    let close = close.expect("a close frame with a reason");
    assert_eq!(u16::from(close.code), 1000);
    assert_eq!(close.reason.as_str(), "the console ended");
}

#[tokio::test]
async fn a_handler_refusing_a_stream_is_passed_on() {
    let (state, asked) = with_handler().await;
    let (code, body) = open_ws(state, &vmi_sub("vnc")).await.unwrap_err();
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(message(&body), "VMI x has no VNC display");
    assert_eq!(*asked.lock().unwrap(), vec!["GET vnc?"]);
}

/// node n1's Lease points at the handler of n2 (its certificate names n2):
/// ironvirt-api refuses it with a 503 that says so, and the handler is never
/// asked anything.
#[tokio::test]
async fn another_nodes_handler_is_refused() {
    let (state, asked) = with_handler_of("n2").await;
    let (code, body) = send(state.clone(), &Method::PUT, &vmi_sub("pause"), "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reason"], "ServiceUnavailable");
    let msg = message(&body);
    assert!(
        msg.contains("is not the handler of node n1") && msg.contains("n1.ironvirt-handler"),
        "{msg}"
    );
    let (code, body) = open_ws(state, &vmi_sub("console")).await.unwrap_err();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(asked.lock().unwrap().is_empty());
}
