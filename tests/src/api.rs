//! Reaching ironvirt-api the way users do: through kube-apiserver's
//! aggregation, with websockets for console and VNC (subprotocol
//! `plain.kubevirt.io`, as KubeVirt's virtctl speaks it).

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http::Request;
use hyper_util::rt::TokioIo;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::Api;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{Message, protocol::Role};

/// The APIService ironvirt-api is registered as.
pub const API_SERVICE: &str = "v1.subresources.kubevirt.io";

/// The port ironvirt-api listens on (from the APIService), once it is Available.
pub async fn api_port(client: &Client) -> Result<u16, String> {
    let api: Api<APIService> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let svc = api.get_opt(API_SERVICE).await.map_err(|e| e.to_string())?;
        let Some(svc) = svc else {
            return Err(format!(
                "APIService {API_SERVICE} is not registered: the test bed starts ironvirt-api (hack/lib.sh start_api)"
            ));
        };
        let available = svc
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            });
        let port = svc
            .spec
            .as_ref()
            .and_then(|s| s.service.as_ref())
            .and_then(|s| s.port)
            .and_then(|p| u16::try_from(p).ok());
        if available && let Some(p) = port {
            return Ok(p);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "APIService {API_SERVICE} is not Available: {:?}",
                svc.status
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A websocket opened through kube-apiserver.
pub struct ApiWs {
    ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
    seen: Vec<u8>,
}

/// Opens `path` (e.g. /apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/x/console)
/// as a websocket with `client`'s credentials. An HTTP error gives (code, body).
pub async fn open_ws(client: &Client, path: &str) -> Result<ApiWs, (u16, String)> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let req = Request::get(path)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", key)
        .header("Sec-WebSocket-Protocol", "plain.kubevirt.io")
        .body(kube::client::Body::empty())
        .map_err(|e| (0, e.to_string()))?;
    let resp = client.send(req).await.map_err(|e| (0, e.to_string()))?;
    let code = resp.status().as_u16();
    if code != 101 {
        use http_body_util_compat::collect;
        let body = collect(resp.into_body()).await;
        return Err((code, body));
    }
    let upgraded = hyper::upgrade::on(resp)
        .await
        .map_err(|e| (0, e.to_string()))?;
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    Ok(ApiWs {
        ws,
        seen: Vec::new(),
    })
}

mod http_body_util_compat {
    use http_body_util::BodyExt;

    /// The body as text.
    pub async fn collect(body: kube::client::Body) -> String {
        match body.collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(e) => format!("(body unreadable: {e})"),
        }
    }
}

impl ApiWs {
    /// Sends bytes.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.ws
            .send(Message::Binary(data.to_vec().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads until `needle` shows up after byte `from` of what was received.
    pub async fn expect_from(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut scanned = from.min(self.seen.len());
        loop {
            let start = scanned
                .saturating_sub(needle.len())
                .max(from.min(self.seen.len()));
            if self.seen[start..]
                .windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
            {
                return Ok(());
            }
            scanned = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => self.seen.extend_from_slice(&b),
                Ok(Some(Ok(Message::Text(t)))) => self.seen.extend_from_slice(t.as_bytes()),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Err(format!(
                        "closed ({f:?}) before {needle:?}; tail: {}",
                        self.tail()
                    ));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("websocket error: {e}")),
                Ok(None) => return Err("websocket ended".into()),
                Err(_) => {
                    return Err(format!(
                        "{needle:?} not seen within {timeout:?}; tail: {}",
                        self.tail()
                    ));
                }
            }
        }
    }

    /// Reads until `needle` shows up in what arrives from now on.
    pub async fn expect(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let from = self.seen.len();
        self.expect_from(from, needle, timeout).await
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.seen.len()
    }

    fn tail(&self) -> String {
        let start = self.seen.len().saturating_sub(2000);
        String::from_utf8_lossy(&self.seen[start..]).into_owned()
    }

    /// Closes the websocket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A raw request through kube-apiserver: (status code, body).
pub async fn raw(client: &Client, method: &str, path: &str, body: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("Content-Type", "application/json")
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .expect("request");
    match client.send(req).await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            (code, http_body_util_compat::collect(resp.into_body()).await)
        }
        Err(e) => (0, e.to_string()),
    }
}
