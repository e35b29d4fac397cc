//! `oneshot` tests of every route of [`super::router`], without sockets:
//! VMIs come from an in-memory reflector store and domains from libvirt's
//! test driver (`test:///default`).
//!
//! A client without a certificate, or with one whose CN is not ironvirt-api's,
//! never reaches this router: `ironvirt_stream::serve` refuses it during the
//! TLS handshake and answers 401. That is tested with real TLS clients in
//! `stream/tests/serve.rs`.

use std::path::Path;

use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode, header};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use tokio::sync::mpsc;
use tower::ServiceExt;

use super::*;

const NODE: &str = "node-a";
const NS: &str = "ns";

/// A router over a fresh test-driver connection and a store holding `vmis`.
fn app(vmis: &[VirtualMachineInstance]) -> Router {
    let (events, _) = mpsc::channel(16);
    let libvirt = Libvirt::new("test:///default", events);
    let consoles = Arc::new(Consoles::new(
        "test:///default",
        libvirt.capabilities(),
        std::env::temp_dir().join("ironvirt-no-consoles"),
    ));
    let (store, mut writer): (_, Writer<VirtualMachineInstance>) = reflector::store();
    for v in vmis {
        writer.apply_watcher_event(&watcher::Event::Apply(v.clone()));
    }
    router(StreamState {
        node: NODE.into(),
        libvirt,
        consoles,
        vmis: store,
        vnc: Arc::default(),
        guestnet: Arc::new(crate::guestnet::GuestNet::new(None)),
    })
}

/// A VMI of this node in `phase` (none: no status yet).
fn vmi(name: &str, phase: Option<&str>) -> VirtualMachineInstance {
    let status = phase.map_or_else(String::new, |p| {
        format!("status: {{phase: {p}, nodeName: {NODE}}}\n")
    });
    let yaml = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: {name}, namespace: {NS}, uid: uid-{name}}}\n\
         spec: {{domain: {{memory: {{guest: 64Mi}}}}}}\n{status}"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

/// Defines and starts the test-driver domain of VMI `name`, with a VNC
/// display on `vnc_port` when given. Each test uses its own VMI names: the
/// test driver's default instance is shared by the whole process.
async fn running_domain_of(app_libvirt: &Arc<Libvirt>, name: &str, vnc_socket: Option<&Path>) {
    let graphics = vnc_socket.map_or_else(String::new, |p| {
        format!("<graphics type='vnc' socket='{}'/>", p.display())
    });
    let xml = format!(
        "<domain type='test'><name>{}</name><memory unit='MiB'>64</memory>\
         <os><type>hvm</type></os><devices>{graphics}</devices></domain>",
        domain_name(NS, name)
    );
    app_libvirt
        .call(move |c| {
            let dom = c.define_domain_xml(&xml).map_err(libvirt::map_err(""))?;
            dom.create().map_err(libvirt::map_err(""))?;
            Ok(())
        })
        .await
        .unwrap();
}

/// A router whose store holds running VMI `name` with a test-driver domain.
async fn app_with_running(name: &str, vnc_socket: Option<&Path>) -> Router {
    let (events, _) = mpsc::channel(16);
    let libvirt = Libvirt::new("test:///default", events);
    running_domain_of(&libvirt, name, vnc_socket).await;
    app(&[vmi(name, Some("Running"))])
}

fn path(name: &str, what: &str) -> String {
    format!("/v1/namespaces/{NS}/virtualmachineinstances/{name}/{what}")
}

async fn put(app: &Router, name: &str, op: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::builder()
        .method(Method::PUT)
        .uri(path(name, op))
        .body(Body::empty())
        .unwrap();
    send(app, req).await
}

/// A websocket upgrade request. With `upgradable`, it carries the upgrade
/// handle hyper gives a real HTTP/1.1 connection (here one that never
/// upgrades), so the route's handler runs as it would for a client.
fn ws_request(uri: &str, upgradable: bool) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .header(header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
        .header(header::SEC_WEBSOCKET_PROTOCOL, STREAM_SUBPROTOCOL)
        .body(Body::empty())
        .unwrap();
    if upgradable {
        let handle = hyper::upgrade::on(Request::new(()));
        req.extensions_mut().insert(handle);
    }
    req
}

/// The status and the JSON body (Null when the body is not JSON).
async fn send(app: &Router, req: Request<Body>) -> (StatusCode, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn message(body: &serde_json::Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn healthz_answers_ok() {
    let req = Request::get("/healthz").body(Body::empty()).unwrap();
    let resp = app(&[]).oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = to_bytes(resp.into_body(), 1024).await.unwrap();
    assert_eq!(&body[..], b"ok");
}

#[tokio::test]
async fn every_route_answers_404_for_a_vmi_not_on_this_node() {
    let app = app(&[]);
    for op in ["pause", "unpause", "softreboot", "reset"] {
        let (code, body) = put(&app, "ghost", op).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{op}");
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(body["code"], 404);
        assert_eq!(message(&body), "VMI ns/ghost is not on node node-a");
    }
    for what in ["console", "vnc"] {
        let (code, body) = send(&app, ws_request(&path("ghost", what), true)).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{what}");
        assert_eq!(message(&body), "VMI ns/ghost is not on node node-a");
    }
}

#[tokio::test]
async fn every_route_answers_409_for_a_vmi_that_is_not_running() {
    let app = app(&[vmi("waiting", Some("Scheduled")), vmi("new", None)]);
    for op in ["pause", "unpause", "softreboot", "reset"] {
        let (code, body) = put(&app, "waiting", op).await;
        assert_eq!(code, StatusCode::CONFLICT, "{op}");
        assert_eq!(body["reason"], "Conflict");
        assert_eq!(
            message(&body),
            "VMI waiting is not running (phase Scheduled)"
        );
    }
    let (code, body) = put(&app, "new", "pause").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(message(&body), "VMI new is not running (phase Pending)");
    for what in ["console", "vnc"] {
        let (code, body) = send(&app, ws_request(&path("waiting", what), true)).await;
        assert_eq!(code, StatusCode::CONFLICT, "{what}");
        assert_eq!(
            message(&body),
            "VMI waiting is not running (phase Scheduled)"
        );
    }
}

#[tokio::test]
async fn a_running_vmi_without_a_domain_is_a_conflict() {
    let app = app(&[vmi("lost", Some("Running"))]);
    for op in ["pause", "unpause", "softreboot", "reset"] {
        let (code, body) = put(&app, "lost", op).await;
        assert_eq!(code, StatusCode::CONFLICT, "{op}");
        assert_eq!(message(&body), "domain ironvirt-ns_lost does not exist");
    }
    let (code, body) = send(&app, ws_request(&path("lost", "vnc"), true)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(message(&body), "domain ironvirt-ns_lost does not exist");
}

#[tokio::test]
async fn an_unknown_operation_is_404() {
    let app = app_with_running("op-unknown", None).await;
    let (code, body) = put(&app, "op-unknown", "hibernate").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        message(&body),
        "unknown operation \"hibernate\"; expected pause, unpause, softreboot or reset"
    );
}

#[tokio::test]
async fn pause_and_unpause_a_running_domain() {
    let app = app_with_running("op-pause", None).await;
    let (code, _) = put(&app, "op-pause", "pause").await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = put(&app, "op-pause", "pause").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(message(&body), "VMI is already paused");
    let (code, body) = put(&app, "op-pause", "softreboot").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(message(&body), "VMI is paused; unpause it first");
    let (code, _) = put(&app, "op-pause", "unpause").await;
    assert_eq!(code, StatusCode::OK);
    let (code, body) = put(&app, "op-pause", "unpause").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(message(&body), "VMI is not paused");
}

#[tokio::test]
async fn soft_reboot_and_reset_reach_the_domain() {
    let app = app_with_running("op-reboot", None).await;
    for op in ["softreboot", "reset"] {
        let (code, body) = put(&app, "op-reboot", op).await;
        assert_eq!(code, StatusCode::OK, "{op}: {body}");
    }
}

#[tokio::test]
async fn power_operations_are_put_only() {
    let app = app_with_running("op-get", None).await;
    let req = Request::get(path("op-get", "pause"))
        .body(Body::empty())
        .unwrap();
    let (code, _) = send(&app, req).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn websocket_routes_refuse_requests_that_are_not_upgrades() {
    let app = app_with_running("ws-bad", None).await;
    for what in ["console", "vnc"] {
        // A plain GET: no Connection: upgrade.
        let req = Request::get(path("ws-bad", what))
            .body(Body::empty())
            .unwrap();
        let (code, _) = send(&app, req).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{what}");
        // Upgrade headers on a connection that cannot upgrade (HTTP/1.0, say).
        let (code, _) = send(&app, ws_request(&path("ws-bad", what), false)).await;
        assert_eq!(code, StatusCode::UPGRADE_REQUIRED, "{what}");
        // PUT is not a websocket.
        let req = Request::put(path("ws-bad", what))
            .body(Body::empty())
            .unwrap();
        let (code, _) = send(&app, req).await;
        assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED, "{what}");
    }
}

#[tokio::test]
async fn the_test_driver_has_no_console_to_attach() {
    let app = app_with_running("ws-console", None).await;
    let (code, body) = send(&app, ws_request(&path("ws-console", "console"), true)).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["reason"], "InternalError");
    assert_eq!(
        message(&body),
        "libvirt: libvirt's test driver has no serial consoles"
    );
}

#[tokio::test]
async fn vnc_upgrades_when_the_display_answers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vnc.sock");
    let display = tokio::net::UnixListener::bind(&socket).unwrap();
    let app = app_with_running("ws-vnc", Some(&socket)).await;
    let resp = app
        .clone()
        .oneshot(ws_request(&path("ws-vnc", "vnc"), true))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL).unwrap(),
        STREAM_SUBPROTOCOL
    );
    assert_eq!(
        resp.headers().get(header::SEC_WEBSOCKET_ACCEPT).unwrap(),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // The handler dialled the display.
    let accepted = tokio::time::timeout(std::time::Duration::from_secs(5), display.accept()).await;
    assert!(matches!(accepted, Ok(Ok(_))), "the display was not dialled");
}

#[tokio::test]
async fn vnc_without_a_display_or_with_a_dead_one_is_refused() {
    let app = app_with_running("ws-novnc", None).await;
    let (code, body) = send(&app, ws_request(&path("ws-novnc", "vnc"), true)).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(
        message(&body),
        "VMI ws-novnc has no VNC display (autoattachGraphicsDevice is false)"
    );

    // A display socket nothing listens on.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vnc.sock");
    let app = app_with_running("ws-deadvnc", Some(&socket)).await;
    let (code, body) = send(&app, ws_request(&path("ws-deadvnc", "vnc"), true)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        message(&body).starts_with("VNC of VMI ws-deadvnc is unreachable"),
        "{body}"
    );
}

#[test]
fn console_output_waiting_together_goes_out_as_one_frame() {
    use axum::body::Bytes;
    let (tx, mut rx) = tokio::sync::broadcast::channel(16);
    for part in ["b", "c", "d"] {
        tx.send(Bytes::from(part)).unwrap();
    }
    assert_eq!(coalesce(Bytes::from("a"), &mut rx), Bytes::from("abcd"));
    // Nothing waiting: the chunk as it is.
    assert_eq!(coalesce(Bytes::from("e"), &mut rx), Bytes::from("e"));
    // A frame stops growing at FRAME_BYTES; the rest waits for the next one.
    tx.send(Bytes::from(vec![b'x'; FRAME_BYTES])).unwrap();
    tx.send(Bytes::from("tail")).unwrap();
    assert_eq!(coalesce(Bytes::from("y"), &mut rx).len(), FRAME_BYTES + 1);
    assert_eq!(rx.try_recv().unwrap(), Bytes::from("tail"));
}

/// A running VMI of this node with `interfaces` (YAML flow list) on the pod network.
fn vmi_with(name: &str, interfaces: &str) -> VirtualMachineInstance {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: {name}, namespace: {NS}, uid: uid-{name}}}\n\
         spec:\n  domain:\n    memory: {{guest: 64Mi}}\n    devices:\n      interfaces: {interfaces}\n  \
         networks: [{{name: nic, pod: {{}}}}]\n\
         status: {{phase: Running, nodeName: {NODE}}}\n"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

#[tokio::test]
async fn port_forward_checks_the_vmi_the_port_and_the_protocol_before_the_upgrade() {
    let app = app(&[
        vmi("waiting", Some("Scheduled")),
        vmi_with(
            "web",
            "[{name: nic, masquerade: {}, ports: [{port: 80}, {port: 53, protocol: UDP}]}]",
        ),
        vmi_with("plain", "[{name: nic, masquerade: {}}]"),
    ]);
    let pf = |name: &str, rest: &str| {
        format!("/v1/namespaces/{NS}/virtualmachineinstances/{name}/portforward/{rest}")
    };
    let cases = [
        (pf("ghost", "80"), StatusCode::NOT_FOUND, "VMI ns/ghost is not on node node-a".to_owned()),
        (pf("waiting", "80"), StatusCode::CONFLICT, "VMI waiting is not running (phase Scheduled)".to_owned()),
        (pf("web", "0"), StatusCode::BAD_REQUEST, "\"0\" is not a port number (1 to 65535)".to_owned()),
        (pf("web", "http"), StatusCode::BAD_REQUEST, "\"http\" is not a port number (1 to 65535)".to_owned()),
        (pf("web", "80/sctp"), StatusCode::BAD_REQUEST, "protocol \"sctp\": use tcp or udp".to_owned()),
        (
            pf("web", "22"),
            StatusCode::BAD_REQUEST,
            "port 22/tcp of VMI web is not forwarded: its interface nic forwards 80/tcp, 53/udp; list the port in its `ports`".to_owned(),
        ),
        (
            pf("web", "80/udp"),
            StatusCode::BAD_REQUEST,
            "port 80/udp of VMI web is not forwarded: its interface nic forwards 80/tcp, 53/udp; list the port in its `ports`".to_owned(),
        ),
        // Forwarded, but this handler (the test driver) has no guest network.
        (pf("web", "80"), StatusCode::CONFLICT, "VMI web has no guest network on node node-a".to_owned()),
        (pf("web", "53/UDP"), StatusCode::CONFLICT, "VMI web has no guest network on node node-a".to_owned()),
        // No ports declared: the default ones (SSH among them).
        (pf("plain", "22/tcp"), StatusCode::CONFLICT, "VMI plain has no guest network on node node-a".to_owned()),
        (
            pf("plain", "5432"),
            StatusCode::BAD_REQUEST,
            "port 5432/tcp of VMI plain is not forwarded: its interface nic forwards 22/tcp, 80/tcp, 443/tcp, 3389/tcp, 8080/tcp, 8443/tcp; list the port in its `ports`".to_owned(),
        ),
    ];
    for (uri, code, want) in cases {
        let (got, body) = send(&app, ws_request(&uri, true)).await;
        assert_eq!(got, code, "{uri}: {body}");
        assert_eq!(message(&body), want, "{uri}");
    }
}

#[test]
fn a_vmi_without_a_pod_network_interface_has_nothing_to_forward() {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: alone, namespace: {NS}}}\n\
         spec: {{domain: {{devices: {{autoattachPodInterface: false}}}}}}\n"
    );
    let v: VirtualMachineInstance = serde_yaml::from_str(&yaml).unwrap();
    let (code, _, message) = crate::portforward::target(&v, "22", "tcp").unwrap_err();
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(
        message,
        "VMI alone has no interface on the pod network (masquerade or bridge): port-forward reaches the guest through it"
    );
}

/// A client can read a VMI's Running status from kube-apiserver a moment
/// before the handler's cache has it: a stream request waits for the cache
/// (the CI run of 1bea697 got 409 "not running" right after Running).
#[tokio::test]
async fn a_request_waits_for_the_cache_to_see_the_vmi_running() {
    let (events, _) = mpsc::channel(16);
    let libvirt = Libvirt::new("test:///default", events);
    let consoles = Arc::new(Consoles::new(
        "test:///default",
        libvirt.capabilities(),
        std::env::temp_dir().join("ironvirt-no-consoles"),
    ));
    let (store, mut writer): (_, Writer<VirtualMachineInstance>) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Apply(vmi("late", Some("Scheduled"))));
    let state = StreamState {
        node: NODE.into(),
        libvirt,
        consoles,
        vmis: store,
        vnc: Arc::default(),
        guestnet: Arc::new(crate::guestnet::GuestNet::new(None)),
    };
    let flip = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        writer.apply_watcher_event(&watcher::Event::Apply(vmi("late", Some("Running"))));
        writer
    });
    let got = running_vmi(&state, NS, "late").await;
    assert!(got.is_ok(), "the request did not wait for the cache");
    let _writer = flip.await.unwrap();
    // A finished VMI is refused at once.
    let (_s, mut w) = reflector::store::<VirtualMachineInstance>();
    w.apply_watcher_event(&watcher::Event::Apply(vmi("done", Some("Succeeded"))));
    let started = std::time::Instant::now();
    let state = StreamState { vmis: _s, ..state };
    assert!(running_vmi(&state, NS, "done").await.is_err());
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
}
