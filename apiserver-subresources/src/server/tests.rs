//! Every route of [`router`], driven with `oneshot` (and, for the websocket
//! routes, one in-memory HTTP connection), against a fake kube-apiserver
//! served by a `tower_test` mock: it answers the SubjectAccessReview, the
//! VMI, VM and Lease reads and the writes, and records what it was asked.

use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode};
use ironvirt_crds::wire::{HANDLER_LEASE_NAMESPACE, STREAM_URL_ANNOTATION, handler_lease_name};
use kube::Client;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiState, router};
use crate::auth::{Peer, RequestHeaderAuth, RequestHeaderConfig};
use crate::metrics::Metrics;

const FRONT_PROXY: &str = "front-proxy-client";
pub(super) const SUB: &str = "/apis/subresources.kubevirt.io/v1";
const NS: &str = "ns";
const SAR_PATH: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
const VMI_PATH: &str = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstances/x";
const VM_PATH: &str = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/x";
/// Where the handler Lease of node n1 is read.
fn lease_path() -> String {
    format!(
        "/apis/coordination.k8s.io/v1/namespaces/{HANDLER_LEASE_NAMESPACE}/leases/{}",
        handler_lease_name("n1")
    )
}

/// One request the fake kube-apiserver saw.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

/// What the fake kube-apiserver answers: (status code, JSON body).
type Answer = Box<dyn FnMut(&Seen) -> (u16, Value) + Send>;

/// The requests the fake kube-apiserver saw, in order.
#[derive(Clone, Default)]
pub(super) struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    pub(super) fn calls(&self) -> Vec<(Method, String)> {
        self.all().into_iter().map(|s| (s.method, s.path)).collect()
    }
}

/// A client whose kube-apiserver is `answer`.
fn cluster(mut answer: Answer) -> (Client, Log) {
    let (service, mut handle) =
        tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
    let log = Log::default();
    let seen = log.clone();
    tokio::spawn(async move {
        while let Some((req, reply)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = axum::body::to_bytes(Body::new(body), usize::MAX)
                .await
                .unwrap();
            let request = Seen {
                method: parts.method,
                path: parts.uri.path().to_owned(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (code, json) = answer(&request);
            seen.0.lock().unwrap().push(request);
            let response = Response::builder()
                .status(code)
                .header("Content-Type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&json).unwrap()))
                .unwrap();
            reply.send_response(response);
        }
    });
    (Client::new(service, "default"), log)
}

/// A kube-apiserver that must not be asked anything.
fn no_cluster() -> (Client, Log) {
    cluster(Box::new(|s| {
        (500, status(500, "unexpected request", &s.path))
    }))
}

/// A self-signed CA, as the front proxy's would be.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

pub(super) fn configured_auth() -> RequestHeaderAuth {
    let auth = RequestHeaderAuth::default();
    let list = |s: &str| vec![s.to_owned()];
    auth.set(RequestHeaderConfig {
        client_ca: ca_pem(),
        allowed_names: list(FRONT_PROXY),
        username_headers: list("X-Remote-User"),
        group_headers: list("X-Remote-Group"),
        uid_headers: list("X-Remote-Uid"),
        extra_prefixes: list("X-Remote-Extra-"),
    })
    .unwrap();
    auth
}

pub(super) fn state_with(client: Client, auth: RequestHeaderAuth) -> ApiState {
    let handler_tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    ApiState {
        client,
        auth,
        handler_tls: Arc::new(handler_tls),
        shared_handler_certificate: false,
        lease_namespace: HANDLER_LEASE_NAMESPACE.to_owned(),
        metrics: Metrics::default(),
        limits: crate::limits::Limits::default(),
    }
}

fn state(client: Client) -> ApiState {
    state_with(client, configured_auth())
}

/// A request through the front proxy (certificate CN `cn`) for alice.
fn request(method: &Method, path: &str, cn: Option<&str>, body: &str) -> Request<Body> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("X-Remote-User", "alice")
        .header("X-Remote-Group", "dev")
        .body(Body::from(body.to_owned()))
        .unwrap();
    if let Some(cn) = cn {
        req.extensions_mut().insert(Peer {
            verified_cn: Some(cn.to_owned()),
        });
    }
    req
}

/// The answer: status code and body (JSON, or text as a JSON string).
async fn call(state: ApiState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = router(state).oneshot(req).await.unwrap();
    let code = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (code, body)
}

/// `call` of `method path` through the front proxy, with `body`.
pub(super) async fn send(
    state: ApiState,
    method: &Method,
    path: &str,
    body: &str,
) -> (StatusCode, Value) {
    call(state, request(method, path, Some(FRONT_PROXY), body)).await
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn missing(what: &str) -> (u16, Value) {
    (404, status(404, "NotFound", &format!("{what} not found")))
}

fn review(allowed: bool) -> (u16, Value) {
    (
        201,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {}, "status": {"allowed": allowed}}),
    )
}

pub(super) fn vmi(phase: &str, node: Option<&str>) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "x", "namespace": NS, "uid": "u1"},
        "spec": {"domain": {}},
        "status": {"phase": phase, "nodeName": node}})
}

fn vm(strategy: &str) -> Value {
    json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "x", "namespace": NS, "resourceVersion": "7"},
        "spec": {"runStrategy": strategy, "template": {"spec": {"domain": {}}}}})
}

pub(super) fn lease(url: Option<&str>) -> Value {
    let annotations = url.map(|u| json!({STREAM_URL_ANNOTATION: u}));
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": handler_lease_name("n1"), "namespace": HANDLER_LEASE_NAMESPACE,
            "annotations": annotations}})
}

/// A subresource route: method, subresource path below the object, the
/// resource and subresource it authorizes, and the verb.
struct Route {
    method: Method,
    resource: &'static str,
    sub: &'static str,
    verb: &'static str,
    /// More path after the subresource (portforward's port).
    tail: &'static str,
}

impl Route {
    fn path(&self) -> String {
        format!(
            "{SUB}/namespaces/{NS}/{}/x/{}{}",
            self.resource, self.sub, self.tail
        )
    }
}

fn vmi_route(method: Method, sub: &'static str, verb: &'static str) -> Route {
    Route {
        method,
        resource: "virtualmachineinstances",
        sub,
        verb,
        tail: "",
    }
}

/// Every subresource route.
fn routes() -> Vec<Route> {
    let mut all = vec![
        vmi_route(Method::GET, "console", "get"),
        vmi_route(Method::GET, "vnc", "get"),
        vmi_route(Method::GET, "vnc/screenshot", "get"),
        Route {
            tail: "/22",
            ..vmi_route(Method::GET, "portforward", "get")
        },
    ];
    for sub in ["pause", "unpause", "softreboot", "reset"] {
        all.push(vmi_route(Method::PUT, sub, "update"));
    }
    for sub in ["start", "stop", "restart", "migrate"] {
        all.push(Route {
            method: Method::PUT,
            resource: "virtualmachines",
            sub,
            verb: "update",
            tail: "",
        });
    }
    all.push(Route {
        method: Method::GET,
        resource: "virtualmachines",
        sub: "portforward",
        verb: "get",
        tail: "/53/udp",
    });
    all.push(Route {
        method: Method::GET,
        resource: "virtualmachines",
        sub: "expand-spec",
        verb: "get",
        tail: "",
    });
    all
}

/// The VMI routes that look the VMI up without a websocket upgrade.
fn vmi_lookup_routes() -> Vec<Route> {
    routes()
        .into_iter()
        .filter(|r| {
            r.resource == "virtualmachineinstances"
                && !["console", "vnc", "portforward"].contains(&r.sub)
        })
        .collect()
}

/// A cluster that allows every review, has VMI `vmi` (if any) and the
/// handler Lease `lease` (if any).
pub(super) fn vmi_cluster(vmi: Option<Value>, lease: Option<Value>) -> (Client, Log) {
    cluster(Box::new(move |s| {
        match (s.method.as_str(), s.path.as_str()) {
            ("POST", SAR_PATH) => review(true),
            ("GET", VMI_PATH) => vmi
                .clone()
                .map_or_else(|| missing("virtualmachineinstances \"x\""), |v| (200, v)),
            ("GET", p) if p == lease_path() => lease.clone().map_or_else(
                || missing(&format!("leases \"{}\"", handler_lease_name("n1"))),
                |l| (200, l),
            ),
            _ => (500, status(500, "InternalError", "unexpected request")),
        }
    }))
}

pub(super) fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn discovery_version_health_and_openapi_need_no_cluster() {
    let (client, log) = no_cluster();
    let s = state(client);
    let (code, body) = send(s.clone(), &Method::GET, SUB, "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "APIResourceList");
    assert_eq!(body["groupVersion"], "subresources.kubevirt.io/v1");
    let names: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    let mut want: Vec<String> = routes()
        .iter()
        .map(|r| format!("{}/{}", r.resource, r.sub))
        .collect();
    // …/secrets/{secret}, for handlers only (node_secrets.rs).
    let vm_start = want
        .iter()
        .position(|n| n.starts_with("virtualmachines/"))
        .unwrap();
    want.insert(vm_start, "virtualmachineinstances/secrets".into());
    // A resource of its own, with no object (tests_expand.rs).
    want.push("expand-vm-spec".into());
    assert_eq!(names, want);

    let (code, body) = send(
        s.clone(),
        &Method::GET,
        "/apis/subresources.kubevirt.io",
        "",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["kind"], "APIGroup");
    assert_eq!(
        body["preferredVersion"]["groupVersion"],
        "subresources.kubevirt.io/v1"
    );

    for path in ["/version", &format!("{SUB}/version")] {
        let (code, body) = send(s.clone(), &Method::GET, path, "").await;
        assert_eq!(code, StatusCode::OK, "{path}");
        assert_eq!((&body["major"], &body["minor"]), (&json!("1"), &json!("8")));
        assert!(body["gitVersion"].as_str().unwrap().contains("+ironvirt."));
    }
    for path in ["/healthz", "/livez", "/readyz"] {
        let (code, body) = send(s.clone(), &Method::GET, path, "").await;
        assert_eq!((code, body), (StatusCode::OK, json!("ok")), "{path}");
    }
    let (code, body) = send(s.clone(), &Method::GET, "/openapi/v2", "").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["swagger"], "2.0");
    assert_eq!(body["paths"], json!({}));
    let (code, body) = send(s, &Method::GET, "/openapi/v3", "").await;
    assert_eq!((code, body), (StatusCode::OK, json!({"paths": {}})));
    assert!(log.calls().is_empty(), "{:?}", log.calls());
}

#[tokio::test]
async fn readyz_waits_for_the_authentication_config() {
    let (client, _) = no_cluster();
    let s = state_with(client, RequestHeaderAuth::default());
    let (code, body) = send(s, &Method::GET, "/readyz", "").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, json!("authentication config not loaded"));
}

#[tokio::test]
async fn every_route_is_401_without_the_front_proxy_certificate() {
    let (client, log) = no_cluster();
    let s = state(client);
    for route in routes() {
        let no_peer = request(&route.method, &route.path(), None, "{}");
        let mallory = request(&route.method, &route.path(), Some("mallory"), "{}");
        let mut no_cn = request(&route.method, &route.path(), None, "{}");
        no_cn.extensions_mut().insert(Peer::default());
        for mut req in [no_peer, mallory, no_cn] {
            // Forged identity headers count for nothing.
            let headers = req.headers_mut();
            headers.insert("X-Remote-User", "admin".parse().unwrap());
            headers.insert("X-Remote-Group", "system:masters".parse().unwrap());
            let (code, body) = call(s.clone(), req).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{}: {body}", route.path());
            assert_eq!(body["reason"], "Unauthorized");
            assert_eq!(body["code"], 401);
        }
    }
    // Not even the review was asked for.
    assert!(log.calls().is_empty(), "{:?}", log.calls());
}

#[tokio::test]
async fn the_authentication_config_must_be_loaded() {
    let (client, log) = no_cluster();
    let s = state_with(client, RequestHeaderAuth::default());
    let (code, body) = send(
        s,
        &Method::PUT,
        &format!("{SUB}/namespaces/ns/virtualmachines/x/start"),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    assert!(message(&body).contains("not loaded"), "{body}");
    assert!(log.calls().is_empty());
}

#[tokio::test]
async fn a_denied_review_is_403_on_every_route() {
    for route in routes() {
        let (client, log) = cluster(Box::new(|_| review(false)));
        let (code, body) = send(state(client), &route.method, &route.path(), "{}").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{}: {body}", route.path());
        assert_eq!(body["reason"], "Forbidden");
        let want = format!(
            "{r} is forbidden: User \"alice\" cannot {v} resource \"{r}/{s}\" in API group \"subresources.kubevirt.io\" in the namespace \"ns\"",
            r = route.resource,
            v = route.verb,
            s = route.sub
        );
        assert_eq!(message(&body), want);
        // One review, for alice, of exactly this request.
        let seen = log.all();
        assert_eq!(seen.len(), 1, "{:?}", log.calls());
        assert_eq!(
            (&seen[0].method, seen[0].path.as_str()),
            (&Method::POST, SAR_PATH)
        );
        let spec = &seen[0].body["spec"];
        assert_eq!(spec["user"], "alice");
        assert_eq!(spec["groups"], json!(["dev"]));
        assert_eq!(
            spec["resourceAttributes"],
            json!({"group": "subresources.kubevirt.io", "version": "v1",
                "resource": route.resource, "subresource": route.sub, "verb": route.verb,
                "namespace": "ns", "name": "x"})
        );
    }
}

#[tokio::test]
async fn a_failing_review_passes_the_api_error_on() {
    let (client, _) = cluster(Box::new(|_| {
        (
            503,
            status(503, "ServiceUnavailable", "the authorizer is down"),
        )
    }));
    let (code, body) = send(
        state(client),
        &Method::PUT,
        &format!("{SUB}/namespaces/ns/virtualmachineinstances/x/pause"),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["reason"], "ServiceUnavailable");
    assert_eq!(message(&body), "the authorizer is down");
}

#[tokio::test]
async fn unknown_subresources_are_404_before_authorization() {
    let (client, log) = no_cluster();
    let s = state(client);
    let vmi = format!("{SUB}/namespaces/ns/virtualmachineinstances/x");
    let vm = format!("{SUB}/namespaces/ns/virtualmachines/x");
    for (method, path, what) in [
        (
            Method::GET,
            format!("{vmi}/bogus"),
            "subresource \"bogus\" of virtualmachineinstances",
        ),
        (
            Method::GET,
            format!("{vmi}/pause"),
            "subresource \"pause\" of virtualmachineinstances",
        ),
        (
            Method::PUT,
            format!("{vmi}/console"),
            "subresource \"console\" of virtualmachineinstances",
        ),
        (
            Method::PUT,
            format!("{vm}/freeze"),
            "subresource \"freeze\" of virtualmachines",
        ),
    ] {
        let (code, body) = send(s.clone(), &method, &path, "").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{method} {path}: {body}");
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(message(&body), format!("{what} not found"));
    }
    // VM operations are PUTs only.
    let (code, _) = send(s, &Method::GET, &format!("{vm}/start"), "").await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    assert!(log.calls().is_empty(), "{:?}", log.calls());
}

#[tokio::test]
async fn a_vmi_that_does_not_exist_is_404() {
    for route in vmi_lookup_routes() {
        let (client, log) = vmi_cluster(None, None);
        let (code, body) = send(state(client), &route.method, &route.path(), "").await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{}: {body}", route.path());
        assert_eq!(body["reason"], "NotFound");
        assert_eq!(message(&body), "virtualmachineinstance \"x\" not found");
        assert_eq!(
            log.calls(),
            vec![
                (Method::POST, SAR_PATH.to_owned()),
                (Method::GET, VMI_PATH.to_owned())
            ]
        );
    }
}

#[tokio::test]
async fn a_vmi_that_is_not_running_is_409() {
    for route in vmi_lookup_routes() {
        for (vmi, want) in [
            (
                vmi("Scheduled", Some("n1")),
                "VMI x is not running (phase Scheduled)",
            ),
            (vmi("Running", None), "VMI x is not placed on a node"),
        ] {
            let (client, log) = vmi_cluster(Some(vmi), None);
            let (code, body) = send(state(client), &route.method, &route.path(), "").await;
            assert_eq!(code, StatusCode::CONFLICT, "{}: {body}", route.path());
            assert_eq!(body["reason"], "Conflict");
            assert_eq!(message(&body), want);
            assert_eq!(log.calls().len(), 2);
        }
    }
}

#[tokio::test]
async fn a_handler_that_cannot_be_reached_is_503() {
    for route in vmi_lookup_routes() {
        for (lease, want) in [
            (None, "the handler of node n1 has not published its address"),
            (
                Some(lease(None)),
                "the handler of node n1 has not published its address",
            ),
            (
                Some(lease(Some("http://127.0.0.1:1"))),
                "handler URL \"http://127.0.0.1:1\" is not https",
            ),
        ] {
            let (client, log) = vmi_cluster(Some(vmi("Running", Some("n1"))), lease);
            let (code, body) = send(state(client), &route.method, &route.path(), "").await;
            assert_eq!(
                code,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}: {body}",
                route.path()
            );
            assert_eq!(body["reason"], "ServiceUnavailable");
            assert!(message(&body).contains(want), "{body}");
            assert_eq!(
                log.calls(),
                vec![
                    (Method::POST, SAR_PATH.to_owned()),
                    (Method::GET, VMI_PATH.to_owned()),
                    (Method::GET, lease_path()),
                ]
            );
        }
    }
}

#[tokio::test]
async fn console_and_vnc_without_an_upgrade_are_400_after_authorization() {
    for sub in ["console", "vnc"] {
        let (client, log) = vmi_cluster(None, None);
        let path = format!("{SUB}/namespaces/ns/virtualmachineinstances/x/{sub}");
        let (code, body) = send(state(client), &Method::GET, &path, "").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["reason"], "BadRequest");
        assert_eq!(
            message(&body),
            format!("{sub} is a websocket: connect with an Upgrade request")
        );
        assert_eq!(log.calls(), vec![(Method::POST, SAR_PATH.to_owned())]);
    }
}

#[tokio::test]
async fn port_forward_paths_read_port_and_protocol_after_authorization() {
    for (resource, tail, want) in [
        (
            "virtualmachineinstances",
            "22",
            "portforward is a websocket: connect with an Upgrade request",
        ),
        (
            "virtualmachines",
            "53/udp",
            "portforward is a websocket: connect with an Upgrade request",
        ),
        (
            "virtualmachineinstances",
            "22/sctp",
            "protocol \"sctp\": use tcp or udp",
        ),
        (
            "virtualmachines",
            "0",
            "\"0\" is not a port number (1 to 65535)",
        ),
    ] {
        let (client, log) = vmi_cluster(None, None);
        let path = format!("{SUB}/namespaces/ns/{resource}/x/portforward/{tail}");
        let (code, body) = send(state(client), &Method::GET, &path, "").await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(message(&body), want, "{path}");
        assert_eq!(
            log.calls(),
            vec![(Method::POST, SAR_PATH.to_owned())],
            "{path}"
        );
    }
}

/// Opens `path` as a websocket over an in-memory HTTP/1.1 connection to the
/// router (an upgrade needs a real connection); an HTTP error gives
/// (code, Status body).
pub(super) async fn open_ws(
    state: ApiState,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>, (StatusCode, Value)> {
    use tokio_tungstenite::tungstenite;
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let app = router(state).layer(Extension(Peer {
        verified_cn: Some(FRONT_PROXY.to_owned()),
    }));
    let service = hyper_util::service::TowerToHyperService::new(app);
    tokio::spawn(
        hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(theirs), service)
            .with_upgrades(),
    );
    let req = Request::builder()
        .uri(format!("ws://ironvirt-api{path}"))
        .header("Host", "ironvirt-api")
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header(
            "Sec-WebSocket-Key",
            tungstenite::handshake::client::generate_key(),
        )
        .header(
            "Sec-WebSocket-Protocol",
            ironvirt_crds::wire::STREAM_SUBPROTOCOL,
        )
        .header("X-Remote-User", "alice")
        .body(())
        .unwrap();
    match tokio_tungstenite::client_async(req, ours).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let code = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let body = serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
            Err((code, body))
        }
        Err(e) => panic!("websocket to the router: {e}"),
    }
}

#[tokio::test]
async fn console_and_vnc_upgrades_reach_the_vmi_lookup() {
    for sub in ["console", "vnc"] {
        let path = format!("{SUB}/namespaces/ns/virtualmachineinstances/x/{sub}");
        let (client, log) = vmi_cluster(None, None);
        let (code, body) = open_ws(state(client), &path).await.unwrap_err();
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(message(&body), "virtualmachineinstance \"x\" not found");
        assert_eq!(log.calls().len(), 2);

        let (client, _) = vmi_cluster(Some(vmi("Scheduled", Some("n1"))), None);
        let (code, body) = open_ws(state(client), &path).await.unwrap_err();
        assert_eq!(code, StatusCode::CONFLICT, "{body}");
        assert_eq!(message(&body), "VMI x is not running (phase Scheduled)");

        let (client, _) = vmi_cluster(Some(vmi("Running", Some("n1"))), None);
        let (code, body) = open_ws(state(client), &path).await.unwrap_err();
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");

        // Refused by the review before the VMI is looked up.
        let (client, log) = cluster(Box::new(|_| review(false)));
        let (code, _) = open_ws(state(client), &path).await.unwrap_err();
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(log.calls().len(), 1);
    }
}

/// `route` on object `name` in namespace `ns` (raw, as it goes in the URL).
fn path_in(route: &Route, ns: &str, name: &str) -> String {
    format!(
        "{SUB}/namespaces/{ns}/{}/{name}/{}{}",
        route.resource, route.sub, route.tail
    )
}

#[tokio::test]
async fn bad_namespaces_and_names_are_400_before_any_use() {
    let long_label = "a".repeat(64);
    let long_name = ["a".repeat(63).as_str(); 5].join(".");
    let bad_namespaces = [
        "Default",
        "a.b",
        "-ns",
        "ns-",
        "n_s",
        long_label.as_str(),
        "%2E%2E",
        "a%2Fb",
    ];
    let bad_names = [
        "X",
        "a..b",
        ".a",
        "a_b",
        "%2E%2E",
        "a%2F..",
        long_name.as_str(),
    ];
    for route in routes() {
        for ns in bad_namespaces {
            // No review, no read: the fake cluster must not be asked.
            let (client, log) = no_cluster();
            let path = path_in(&route, ns, "x");
            let (code, body) = send(state(client), &route.method, &path, "").await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert_eq!(body["reason"], "BadRequest", "{path}");
            assert!(message(&body).starts_with("invalid namespace "), "{body}");
            assert!(log.calls().is_empty(), "{path}: {:?}", log.calls());
        }
        for name in bad_names {
            let (client, log) = no_cluster();
            let path = path_in(&route, NS, name);
            let (code, body) = send(state(client), &route.method, &path, "").await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{path}: {body}");
            assert!(message(&body).starts_with("invalid name "), "{body}");
            assert!(log.calls().is_empty(), "{path}: {:?}", log.calls());
        }
        // The longest valid ones pass the check (and reach the review).
        let (client, log) = cluster(Box::new(|_| review(false)));
        let ok_name = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
        assert_eq!(ok_name.len(), 253);
        let path = path_in(&route, &"n".repeat(63), &ok_name);
        let (code, body) = send(state(client), &route.method, &path, "").await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{path}: {body}");
        assert_eq!(log.calls().len(), 1);
    }
    // The answer repeats at most 64 characters of what it refuses.
    let (client, _) = no_cluster();
    let path = path_in(&routes()[0], NS, &"X".repeat(300));
    let (_, body) = send(state(client), &Method::GET, &path, "").await;
    assert!(message(&body).len() < 400, "{body}");
}

/// A state whose limits are `streams` and `screenshots` (per user, total).
fn limited_state(client: Client, streams: (usize, usize), screenshots: (usize, usize)) -> ApiState {
    use crate::limits::{Limit, Limits, LimitsConfig};
    let limit = |(per_user, total)| Limit { per_user, total };
    ApiState {
        limits: Limits::new(LimitsConfig {
            streams: limit(streams),
            screenshots: limit(screenshots),
            ..LimitsConfig::default()
        }),
        ..state(client)
    }
}

#[tokio::test]
async fn screenshots_over_the_limits_are_429_after_authorization() {
    let path = format!("{SUB}/namespaces/ns/virtualmachineinstances/x/vnc/screenshot");
    // Alice holds two, her limit.
    let (client, log) = vmi_cluster(None, None);
    let s = limited_state(client, (16, 512), (2, 3));
    let held = [
        s.limits.screenshots.acquire("alice").unwrap(),
        s.limits.screenshots.acquire("alice").unwrap(),
    ];
    let (code, body) = send(s.clone(), &Method::GET, &path, "").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["reason"], "TooManyRequests");
    assert_eq!(body["code"], 429);
    assert_eq!(
        message(&body),
        "user alice has 2 screenshots in progress; the limit is 2"
    );
    // Reviewed first (a refused user learns nothing of limits), never looked up.
    assert_eq!(log.calls(), vec![(Method::POST, SAR_PATH.to_owned())]);

    // Alice holds one, Bob two: everyone together is at the total.
    drop(held);
    let _others = [
        s.limits.screenshots.acquire("alice").unwrap(),
        s.limits.screenshots.acquire("bob").unwrap(),
        s.limits.screenshots.acquire("bob").unwrap(),
    ];
    let (code, body) = send(s.clone(), &Method::GET, &path, "").await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(
        message(&body),
        "ironvirt-api has 3 screenshots in progress; the limit is 3"
    );
    let metrics = s.metrics.encode();
    for scope in ["user", "total"] {
        let line = format!(
            "ironvirt_api_limited_requests_total{{kind=\"screenshots\",limit=\"{scope}\"}} 1"
        );
        assert!(metrics.contains(&line), "{metrics}");
    }
    // Streams are counted apart.
    assert_eq!(s.limits.streams.total(), 0);
}

#[tokio::test]
async fn a_screenshot_gives_its_permit_back_on_every_exit() {
    let path = format!("{SUB}/namespaces/ns/virtualmachineinstances/x/vnc/screenshot");
    for (vmi, lease, want) in [
        (None, None, StatusCode::NOT_FOUND),
        (
            Some(vmi("Scheduled", Some("n1"))),
            None,
            StatusCode::CONFLICT,
        ),
        (
            Some(vmi("Running", Some("n1"))),
            Some(lease(Some("https://127.0.0.1:1"))),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        let (client, _) = vmi_cluster(vmi, lease);
        let s = limited_state(client, (16, 512), (1, 1));
        // With a limit of one, each request after the first would be 429 if
        // a permit leaked.
        for _ in 0..3 {
            let (code, body) = send(s.clone(), &Method::GET, &path, "").await;
            assert_eq!(code, want, "{body}");
        }
        assert_eq!(s.limits.screenshots.total(), 0);
        assert!(
            s.metrics
                .encode()
                .contains("ironvirt_api_screenshots_in_progress 0")
        );
    }
}

#[tokio::test]
async fn streams_over_the_limits_are_429_and_failed_upgrades_give_permits_back() {
    for sub in ["console", "vnc"] {
        let path = format!("{SUB}/namespaces/ns/virtualmachineinstances/x/{sub}");
        let (client, log) = vmi_cluster(None, None);
        let s = limited_state(client, (1, 2), (4, 8));
        let mine = s.limits.streams.acquire("alice").unwrap();
        let (code, body) = open_ws(s.clone(), &path).await.unwrap_err();
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["reason"], "TooManyRequests");
        assert_eq!(
            message(&body),
            "user alice has 1 streams in progress; the limit is 1"
        );
        assert_eq!(log.calls(), vec![(Method::POST, SAR_PATH.to_owned())]);
        drop(mine);

        let _others = [
            s.limits.streams.acquire("bob").unwrap(),
            s.limits.streams.acquire("carol").unwrap(),
        ];
        let (code, body) = open_ws(s.clone(), &path).await.unwrap_err();
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(
            message(&body),
            "ironvirt-api has 2 streams in progress; the limit is 2"
        );
        drop(_others);

        // A stream that fails before the upgrade holds nothing afterwards.
        for _ in 0..3 {
            let (code, _) = open_ws(s.clone(), &path).await.unwrap_err();
            assert_eq!(code, StatusCode::NOT_FOUND);
        }
        assert_eq!(s.limits.streams.total(), 0);
        // Screenshots are counted apart.
        assert_eq!(s.limits.screenshots.total(), 0);
    }
}

#[path = "tests_vm_ops.rs"]
mod vm_ops;

#[path = "tests_expand.rs"]
mod expand;

#[path = "tests_migrate.rs"]
mod migrate;
