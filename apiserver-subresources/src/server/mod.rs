//! The aggregated API `subresources.kubevirt.io/v1`: discovery, the console
//! and VNC websockets relayed to the VMI's handler, vnc/screenshot, the VMI
//! power operations (forwarded to the handler), VM start/stop/restart, and
//! the expand subresources (a VM with its instancetype and preference
//! expanded).
//!
//! A subresource request goes through the same pipeline, one file a step:
//! 0. the namespace and name from the URL are checked as DNS names
//!    ([`check_names`]) before anything uses them;
//! 1. [`authz`]: authenticate the front proxy ([`crate::auth`]) and authorize
//!    the asserted user with a SubjectAccessReview;
//! 2. [`upstream`]: find the running VMI and its handler (the handler Lease's
//!    stream URL), and dial the handler with mTLS;
//! 3. [`streams`] (console, VNC, screenshot; each holds a permit of
//!    [`crate::limits`] while it lasts, 429 over the limits) or [`power`]
//!    (VMI operations forwarded to the handler, VM start/stop/restart on the
//!    VM object), or [`migrate`] (VM migrate: a
//!    VirtualMachineInstanceMigration of its VMI), or [`expand`] (the VM with
//!    its instancetype and preference expanded; reads only).
//!
//! This file holds the router, the shared state and answers, and the routes
//! that need no cluster: discovery, version, health and OpenAPI.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use kube::Client;
use serde_json::json;

use crate::auth::RequestHeaderAuth;
use crate::limits::{LimitError, Limiter, Permit};

mod authz;
mod expand;
mod migrate;
mod node_secrets;
mod portforward;
mod power;
mod streams;
mod upstream;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod handler_tests;

/// The API group and version served.
pub const GROUP: &str = ironvirt_crds::SUBRESOURCES_GROUP;
pub const VERSION: &str = "v1";

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub client: Client,
    pub auth: RequestHeaderAuth,
    /// TLS client config for handlers (ironvirt-api's client certificate).
    pub handler_tls: Arc<rustls::ClientConfig>,
    /// Handlers share one certificate named `ironvirt-handler` (the
    /// operator's certificate manager, deploy/) instead of one naming their
    /// node each ([`upstream::expected_handler_name`]).
    pub shared_handler_certificate: bool,
    /// Namespace of the handler Leases.
    pub lease_namespace: String,
    pub metrics: crate::metrics::Metrics,
    /// Concurrent streams and screenshots, and the screenshot pixel budget.
    pub limits: crate::limits::Limits,
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

/// A permit of `limiter` for `user`; over a limit, counted and logged, and
/// answered 429 (the [`From`] below).
fn permit(state: &ApiState, limiter: &Limiter, user: &str) -> Result<Permit, LimitError> {
    limiter.acquire(user).inspect_err(|e| {
        state.metrics.limited(e.kind().as_str(), e.scope());
        tracing::info!(user = %user, kind = e.kind().as_str(), limit = e.scope(), "over a limit: 429");
    })
}

impl From<LimitError> for Response {
    fn from(e: LimitError) -> Response {
        status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            e.to_string(),
        )
    }
}

/// At most this many characters of a rejected value are repeated.
const ECHO_MAX: usize = 64;

fn echo(s: &str) -> String {
    match s.char_indices().nth(ECHO_MAX) {
        Some((i, _)) => format!("{:?}…", &s[..i]),
        None => format!("{s:?}"),
    }
}

/// A namespace or name from the URL that is not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BadName {
    #[error("invalid namespace {}: {why}", echo(.value))]
    Namespace { value: String, why: String },
    #[error(
        "invalid name {}: must be an RFC 1123 subdomain: at most 253 characters, dot-separated labels of lowercase letters, digits or '-', each starting and ending with a letter or digit",
        echo(.value)
    )]
    Name { value: String },
}

impl From<BadName> for Response {
    fn from(e: BadName) -> Response {
        status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string())
    }
}

/// The namespace (an RFC 1123 label) and object name (an RFC 1123
/// subdomain) from the URL, checked before any use.
fn check_names(ns: &str, name: &str) -> Result<(), BadName> {
    use ironvirt_crds::validate::{dns_label, dns_subdomain};
    dns_label(ns).map_err(|why| BadName::Namespace {
        value: ns.to_owned(),
        why,
    })?;
    if !dns_subdomain(name) {
        return Err(BadName::Name {
            value: name.to_owned(),
        });
    }
    Ok(())
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
            get(streams::screenshot),
        )
        .route(
            &format!("{base}/virtualmachineinstances/{{name}}/portforward/{{port}}"),
            get(portforward::vmi),
        )
        .route(
            &format!("{base}/virtualmachineinstances/{{name}}/portforward/{{port}}/{{protocol}}"),
            get(portforward::vmi),
        )
        .route(
            &format!("{base}/virtualmachines/{{name}}/portforward/{{port}}"),
            get(portforward::vm),
        )
        .route(
            &format!("{base}/virtualmachines/{{name}}/portforward/{{port}}/{{protocol}}"),
            get(portforward::vm),
        )
        .route(
            &format!("{base}/virtualmachineinstances/{{name}}/{{sub}}"),
            get(streams::vmi_stream).put(power::vmi_power),
        )
        .route(
            &format!("{base}/virtualmachineinstances/{{name}}/secrets/{{secret}}"),
            get(node_secrets::vmi_secret),
        )
        .route(
            &format!("{base}/virtualmachines/{{name}}/{}", expand::EXPAND_SPEC),
            get(expand::expand_spec),
        )
        .route(
            &format!("{base}/virtualmachines/{{name}}/migrate"),
            put(migrate::migrate),
        )
        .route(
            &format!("{base}/virtualmachines/{{name}}/{{op}}"),
            put(power::vm_power),
        )
        .route(
            &format!("{base}/{}", expand::EXPAND_VM_SPEC),
            put(expand::expand_vm_spec),
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
    let vm = |sub: &str, verbs: &[&str]| {
        json!({"name": format!("virtualmachines/{sub}"), "singularName": "",
            "namespaced": true, "kind": "VirtualMachine", "verbs": verbs})
    };
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            vmi("console", &["get"]), vmi("vnc", &["get"]), vmi("vnc/screenshot", &["get"]),
            vmi("portforward", &["get"]),
            vmi("pause", &["update"]), vmi("unpause", &["update"]),
            vmi("softreboot", &["update"]), vmi("reset", &["update"]), vmi("secrets", &["get"]),
            vm("start", &["update"]), vm("stop", &["update"]), vm("restart", &["update"]),
            vm("migrate", &["update"]),
            vm("portforward", &["get"]), vm("expand-spec", &["get"]),
            json!({"name": "expand-vm-spec", "singularName": "", "namespaced": true,
                "kind": "VirtualMachine", "verbs": ["update"]}),
        ],
    })
}

async fn resource_list() -> Response {
    axum::Json(resources()).into_response()
}
