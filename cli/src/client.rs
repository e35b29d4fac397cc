//! The connection to kube-apiserver, from the user's kubeconfig, and the
//! requests ironctl makes through it: plain HTTP and websocket upgrades. ironctl
//! never talks to ironvirt-api or a handler directly.

use std::time::Duration;

use http::{Method, Request, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use ironvirt_crds::wire::STREAM_SUBPROTOCOL;

use crate::args::Global;
use crate::error::{Error, Result};
use crate::status::{Failure, Subject, chain, describe};

/// The subresource API's path prefix.
pub const SUBRESOURCE_PREFIX: &str = "/apis/subresources.kubevirt.io/v1";
/// The largest response body read (a screenshot is far smaller).
const MAX_BODY: usize = 32 * 1024 * 1024;
/// How long an ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client for the user's cluster and the namespace to work in.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub namespace: String,
    /// kube-apiserver's URL, for messages.
    pub server: String,
    /// The kubeconfig context in use, if the kubeconfig names one.
    pub context: Option<String>,
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn failure(&self) -> Failure {
        Failure::parse(self.code, &self.body)
    }
}

/// A websocket through kube-apiserver.
pub type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Why a websocket did not open.
#[derive(Debug)]
pub enum WsError {
    /// The API answered with an error instead of switching protocols.
    Http(Failure),
    /// Anything else: connection, TLS, handshake.
    Other(String),
}

fn kubeconfig_error(e: &KubeconfigError) -> Error {
    match e {
        KubeconfigError::FindPath => Error::Kubeconfig(
            "none found: set KUBECONFIG or pass --kubeconfig (~/.kube/config does not exist)"
                .into(),
        ),
        KubeconfigError::ReadConfig(io, path) => {
            Error::Kubeconfig(format!("cannot read {}: {}", path.display(), chain(io)))
        }
        other => Error::Kubeconfig(chain(other)),
    }
}

/// Connects with the kubeconfig, context and namespace the flags name.
pub async fn connect(global: &Global) -> Result<Ctx> {
    let kubeconfig = match &global.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| kubeconfig_error(&e))?;
    let context = global
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone());
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    if let Some(ctx) = &global.context
        && !kubeconfig.contexts.iter().any(|c| &c.name == ctx)
    {
        return Err(Error::Kubeconfig(format!(
            "context \"{ctx}\" does not exist"
        )));
    }
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| kubeconfig_error(&e))?;
    if config.accept_invalid_certs {
        return Err(Error::Kubeconfig(
            "the cluster sets insecure-skip-tls-verify; ironctl always verifies kube-apiserver's \
             certificate: give certificate-authority(-data) instead"
                .into(),
        ));
    }
    config.connect_timeout = Some(Duration::from_secs(15));
    let server = config.cluster_url.to_string();
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| Error::Kubeconfig(chain(&e)))?;
    Ok(Ctx {
        client,
        namespace,
        server: server.trim_end_matches('/').to_owned(),
        context,
    })
}

impl Ctx {
    fn unreachable(&self, e: &kube::Error) -> Error {
        // The transport's own words, without kube's variant name in front.
        let cause = match e {
            kube::Error::Service(inner) => chain(inner.as_ref()),
            kube::Error::HyperError(inner) => chain(inner),
            other => chain(other),
        };
        Error::Unreachable {
            server: self.server.clone(),
            cause,
        }
    }

    /// `/apis/subresources.kubevirt.io/v1/namespaces/{ns}/{resource}/{name}/{sub}`.
    pub fn subresource_path(&self, resource: &str, name: &str, sub: &str) -> String {
        format!(
            "{SUBRESOURCE_PREFIX}/namespaces/{}/{resource}/{name}/{sub}",
            self.namespace
        )
    }

    /// Sends a request; a JSON `body` is sent as application/json.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply> {
        let mut req = Request::builder().method(method).uri(path);
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(v).map_err(|e| Error::Local(e.to_string()))?
            }
            None => Vec::new(),
        };
        let req = req
            .body(kube::client::Body::from(bytes))
            .map_err(|e| Error::Usage(format!("bad request path {path:?}: {e}")))?;
        let call = async {
            let resp = self
                .client
                .send(req)
                .await
                .map_err(|e| self.unreachable(&e))?;
            let code = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| Error::Api(format!("reading the answer to {path}: {e}")))?
                .to_bytes()
                .to_vec();
            Ok(Reply {
                code,
                content_type,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| Error::Unreachable {
                server: self.server.clone(),
                cause: format!("no answer to {path} within {} s", REQUEST_TIMEOUT.as_secs()),
            })?
    }

    /// Sends a request and fails with the described error unless it succeeded.
    pub async fn expect_success(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        subject: &Subject<'_>,
    ) -> Result<Reply> {
        let reply = self.request(method, path, body).await?;
        if reply.is_success() {
            Ok(reply)
        } else {
            Err(Error::Api(describe(subject, &reply.failure())))
        }
    }

    /// Opens `path` as a websocket with KubeVirt's subprotocol (`wire::STREAM_SUBPROTOCOL`).
    pub async fn open_ws(&self, path: &str) -> Result<Ws, WsError> {
        let key = generate_key();
        let req = Request::get(path)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_VERSION, "13")
            .header(header::SEC_WEBSOCKET_KEY, &key)
            .header(header::SEC_WEBSOCKET_PROTOCOL, STREAM_SUBPROTOCOL)
            .body(kube::client::Body::empty())
            .map_err(|e| WsError::Other(e.to_string()))?;
        let resp = tokio::time::timeout(REQUEST_TIMEOUT, self.client.send(req))
            .await
            .map_err(|_| {
                WsError::Other(format!(
                    "no answer to {path} within {} s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| WsError::Other(self.unreachable(&e).to_string()))?;
        let code = resp.status().as_u16();
        if code != 101 {
            let body = Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            return Err(WsError::Http(Failure::parse(code, &body)));
        }
        let accept = resp
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .and_then(|v| v.to_str().ok());
        if accept != Some(derive_accept_key(key.as_bytes()).as_str()) {
            return Err(WsError::Other(
                "the server's websocket handshake is invalid (Sec-WebSocket-Accept)".into(),
            ));
        }
        if let Some(p) = resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL)
            && p.as_bytes() != STREAM_SUBPROTOCOL.as_bytes()
        {
            return Err(WsError::Other(format!(
                "the server chose websocket subprotocol {:?}, not {STREAM_SUBPROTOCOL}",
                String::from_utf8_lossy(p.as_bytes())
            )));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| WsError::Other(format!("switching to the websocket: {}", chain(&e))))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(16 << 20))
            .max_frame_size(Some(16 << 20))
            .max_write_buffer_size(4 << 20);
        Ok(
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, Some(config))
                .await,
        )
    }

    /// Opens a websocket, describing a failure for the user.
    pub async fn open_stream(&self, path: &str, subject: &Subject<'_>) -> Result<Ws> {
        self.open_ws(path).await.map_err(|e| match e {
            WsError::Http(f) => Error::Api(describe(subject, &f)),
            WsError::Other(m) => Error::Session(m),
        })
    }
}
