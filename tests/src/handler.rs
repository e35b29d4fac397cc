//! Running `ironvirt-handler` for a test as one node of the test bed, and a
//! client for its stream endpoint that presents ironvirt-api's certificate,
//! as the subresource API server will.
//!
//! Every handler runs with its node's own identity
//! ([`ironvirt_testbed::handlers`]): a serving certificate naming only
//! `<node>.ironvirt-handler`, and a kube-apiserver user
//! `system:ironvirt-handler:<node>` with deploy/'s handler RBAC (no Secret
//! read) and lease policy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use ironvirt_crds::wire::{handler_lease_name, handler_server_name};
use ironvirt_testbed::TestBed;
use ironvirt_testbed::handlers::HandlerIdentity;
use ironvirt_testbed::pki::names;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, DeleteParams};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::operator::{LEASE_NAMESPACE, TEST_NODE_LABEL};

/// The handler's counter of completed orphan sweeps.
const ORPHAN_SWEEPS: &str = "ironvirt_handler_orphan_sweeps_total";

/// A running handler process for node `node`; killed when dropped.
pub struct Handler {
    child: Option<Child>,
    profile: String,
    extra: Vec<String>,
    /// Runs with `--host-disk-root` [`crate::hostdisk::ROOT`], as the bed's
    /// handler does; false: hostDisk off.
    host_disk: bool,
    pub node: String,
    pub uri: String,
    pub ns: String,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    /// Port of /healthz and /metrics.
    pub health_port: u16,
    /// Its own serving certificate and kube-apiserver identity.
    pub identity: HandlerIdentity,
    pki: PathBuf,
}

/// Grants the handlers' group deploy/'s handler RBAC and lease policy, once
/// per test process (on a thread of its own: a kube client lives on the
/// runtime that made it, and `Handler::start` is called from async tests).
fn install_access_once(kubeconfig: &std::path::Path) {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let kubeconfig = kubeconfig.to_owned();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let admin = ironvirt_testbed::controlplane::client_from_kubeconfig(&kubeconfig)
                    .await
                    .expect("admin client");
                ironvirt_testbed::handlers::install_access(&admin)
                    .await
                    .expect("install the handlers' RBAC and lease policy");
            });
        })
        .join()
        .expect("installing the handlers' access");
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Handler {
    /// Starts a handler for `node` on libvirt `uri`, registering the Node with
    /// the test namespace's label so that namespace's operator places there.
    pub fn start(bed: &TestBed, ns: &str, node: &str, uri: &str) -> Handler {
        Self::start_with(bed, ns, node, uri, "debug", &[])
    }

    /// Starts the `profile` build (debug or release) with extra arguments.
    pub fn start_with(
        bed: &TestBed,
        ns: &str,
        node: &str,
        uri: &str,
        profile: &str,
        extra: &[&str],
    ) -> Handler {
        let mut h = Self::new(bed, ns, node, uri, profile, extra);
        h.spawn();
        h
    }

    /// Starts a QEMU handler whose registry configuration
    /// (`--registries-config`) is `yaml`, kept in the returned directory, and
    /// waits until it serves.
    pub async fn start_with_registries(
        bed: &TestBed,
        ns: &str,
        node: &str,
        yaml: &str,
    ) -> Result<(Handler, tempfile::TempDir), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("registries.yaml");
        std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
        let config = config.display().to_string();
        let h = Handler::start_with(
            bed,
            ns,
            node,
            "qemu:///system",
            "debug",
            &["--registries-config", &config],
        );
        wait_serving(&h, Duration::from_secs(60)).await;
        Ok((h, dir))
    }

    /// Starts a handler like [`Handler::start`] but with hostDisk off (no
    /// `--host-disk-root`), as `deploy/` runs it.
    pub fn start_host_disk_off(bed: &TestBed, ns: &str, node: &str, uri: &str) -> Handler {
        let mut h = Self::new(bed, ns, node, uri, "debug", &[]);
        h.host_disk = false;
        h.spawn();
        h
    }

    fn new(
        bed: &TestBed,
        ns: &str,
        node: &str,
        uri: &str,
        profile: &str,
        extra: &[&str],
    ) -> Handler {
        let info = bed.info();
        install_access_once(&info.kubeconfig);
        let identity = ironvirt_testbed::handlers::ensure_identity(bed.layout(), info, node)
            .expect("the handler's identity");
        Handler {
            child: None,
            profile: profile.to_owned(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            host_disk: true,
            node: node.to_owned(),
            uri: uri.to_owned(),
            ns: ns.to_owned(),
            state_dir: info.logs_dir.join(format!("handler-{node}")),
            log: info.logs_dir.join(format!("handler-{node}.log")),
            port: free_port(),
            health_port: free_port(),
            identity,
            pki: info.pki_dir.clone(),
        }
    }

    fn spawn(&mut self) {
        let bin = crate::operator::target_dir()
            .join(&self.profile)
            .join("ironvirt-handler");
        assert!(
            bin.is_file(),
            "{} is missing; run `cargo build --workspace`",
            bin.display()
        );
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("handler log");
        let id = &self.identity;
        let child = Command::new(bin)
            .env("KUBECONFIG", &id.kubeconfig)
            // IRONVIRT_HANDLER_LOG overrides the filter (e.g. to trace kube's watches).
            .env(
                "RUST_LOG",
                std::env::var("IRONVIRT_HANDLER_LOG")
                    .unwrap_or_else(|_| "info,ironvirt_handler=debug,kube_runtime=warn".into()),
            )
            .args(["--node-name", &self.node])
            .args(["--libvirt-uri", &self.uri])
            .args(["--domain-type", "qemu"])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--register-node")
            .args(["--node-labels", &format!("{TEST_NODE_LABEL}={}", self.ns)])
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--tls-cert")
            .arg(&id.tls_cert)
            .arg("--tls-key")
            .arg(&id.tls_key)
            .arg("--client-ca")
            .arg(&id.client_ca)
            .args(["--health-addr", &format!("127.0.0.1:{}", self.health_port)])
            .args(if self.extra.iter().any(|a| a == "--resync-seconds") {
                &["--renew-seconds", "2"][..]
            } else {
                &["--resync-seconds", "5", "--renew-seconds", "2"][..]
            })
            .args(if self.host_disk {
                &["--host-disk-root", crate::hostdisk::ROOT][..]
            } else {
                &[][..]
            })
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start ironvirt-handler");
        self.child = Some(child);
    }

    /// Kills the handler with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again after [`Handler::kill`].
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The handler's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the handler and removes its Node and Leases.
    pub async fn remove(mut self, client: &Client) {
        self.kill();
        let nodes: Api<Node> = Api::all(client.clone());
        let _ = nodes.delete(&self.node, &DeleteParams::default()).await;
        let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
        for l in [handler_lease_name(&self.node), self.node.clone()] {
            let _ = leases.delete(&l, &DeleteParams::default()).await;
        }
    }

    /// Orphan sweeps this handler has completed without an error, from its
    /// `/metrics`.
    pub async fn orphan_sweeps(&self) -> f64 {
        crate::operator::scrape(self.health_port, ORPHAN_SWEEPS).await
    }

    /// Waits until a whole orphan sweep has run after this call: two more
    /// completed sweeps, since one may have been under way already. A sweep
    /// runs when the VMI cache is ready and every 30 s after that.
    pub async fn wait_for_a_full_sweep(&self, timeout: Duration) -> Result<(), String> {
        let start = self.orphan_sweeps().await;
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.orphan_sweeps().await;
            if now >= start + 2.0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "handler {}: {} orphan sweeps completed in {timeout:?}, wanted 2",
                    self.node,
                    now - start
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A client for this handler's stream endpoint.
    pub fn streams(&self) -> StreamClient {
        StreamClient::new(&self.pki, self.port, names::HANDLER_CLIENT, &self.node)
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `/healthz` of the stream endpoint answers (the handler is up).
pub async fn wait_serving(h: &Handler, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let client = h.streams();
    while Instant::now() < deadline {
        if client.get_status("/healthz").await.is_ok_and(|c| c == 200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "handler {} did not serve within {timeout:?}; log:\n{}",
        h.node,
        h.log_text()
    );
}

/// An mTLS client of a handler's stream endpoint.
pub struct StreamClient {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    /// The TLS name verified: the node's handler name.
    server_name: String,
}

impl StreamClient {
    /// Trusts the ironvirt CA, presents the client certificate `cert_name`
    /// from the test bed's PKI, and verifies the handler of `node`.
    pub fn new(pki: &std::path::Path, port: u16, cert_name: &str, node: &str) -> StreamClient {
        let read = |n: &str| std::fs::read(pki.join(n)).expect("pki file");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut read(&format!("{}.crt", names::IRONVIRT_CA)).as_slice())
        {
            roots.add(c.expect("ca")).expect("ca");
        }
        let certs = rustls_pemfile::certs(&mut read(&format!("{cert_name}.crt")).as_slice())
            .collect::<Result<Vec<_>, _>>()
            .expect("cert");
        let key = rustls_pemfile::private_key(&mut read(&format!("{cert_name}.key")).as_slice())
            .expect("key")
            .expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls")
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .expect("client auth");
        StreamClient {
            port,
            tls: Arc::new(tls),
            server_name: handler_server_name(node),
        }
    }

    async fn connect(
        &self,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        // As ironvirt-api's own connections to handlers: no Nagle wait for
        // the request written after the TLS handshake.
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
            .map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.tls))
            .connect(name, tcp)
            .await
    }

    async fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = self.connect().await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.server_name
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok((code, body))
    }

    /// GET `path`; the status code.
    pub async fn get_status(&self, path: &str) -> std::io::Result<u16> {
        self.request("GET", path).await.map(|(c, _)| c)
    }

    /// PUT `path` (a power operation); status code and body.
    pub async fn put(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.request("PUT", path).await
    }

    /// Opens a websocket on `path` (console or vnc).
    pub async fn websocket(&self, path: &str) -> Result<WsSession<TlsTcp>, String> {
        let tls = self.connect().await.map_err(|e| e.to_string())?;
        let url = format!("wss://{}{path}", self.server_name);
        let mut req = url.into_client_request().map_err(|e| e.to_string())?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static("plain.kubevirt.io"),
        );
        let (ws, _) = tokio_tungstenite::client_async(req, tls)
            .await
            .map_err(|e| e.to_string())?;
        Ok(WsSession::new(ws))
    }
}

/// The handler client's transport.
pub type TlsTcp = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A websocket session (to a handler, or through kube-apiserver) with a
/// transcript of what it received.
pub struct WsSession<S> {
    ws: tokio_tungstenite::WebSocketStream<S>,
    seen: Vec<u8>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> WsSession<S> {
    /// Wraps an open websocket.
    pub fn new(ws: tokio_tungstenite::WebSocketStream<S>) -> Self {
        WsSession {
            ws,
            seen: Vec::new(),
        }
    }

    /// Closes the websocket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Everything received so far, as text.
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// The last few KiB received, as text.
    fn tail_text(&self) -> String {
        let start = self.seen.len().saturating_sub(3000);
        String::from_utf8_lossy(&self.seen[start..]).into_owned()
    }

    /// Sends bytes as a binary frame.
    pub async fn send(&mut self, data: &[u8]) -> Result<(), String> {
        self.ws
            .send(Message::Binary(data.to_vec().into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Reads frames until `needle` appears after byte `from` of the transcript.
    pub async fn expect_from(
        &mut self,
        from: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        // Scan only what arrived since the last look (plus an overlap for a
        // needle split across frames): a 1 MB transcript must not be rescanned
        // on every frame.
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
                        "closed ({f:?}) before {needle:?}; transcript tail:\n{}",
                        self.tail_text()
                    ));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("websocket error: {e}")),
                Ok(None) => return Err("websocket ended".into()),
                Err(_) => {
                    return Err(format!(
                        "{needle:?} not seen within {timeout:?}; transcript tail:\n{}",
                        self.tail_text()
                    ));
                }
            }
        }
    }

    /// Reads until `needle` appears anywhere in what is received from now on.
    pub async fn expect(&mut self, needle: &str, timeout: Duration) -> Result<(), String> {
        let from = self.seen.len();
        self.expect_from(from, needle, timeout).await
    }

    /// Waits for the next frame or close; returns the close reason if it
    /// closed (a close frame's reason, or how the connection ended without
    /// one).
    pub async fn next_close(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Some(f.map(|f| f.reason.to_string()).unwrap_or_default());
                }
                Ok(Some(Ok(Message::Binary(b)))) => self.seen.extend_from_slice(&b),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Some(format!("no close frame: {e}")),
                Ok(None) => return Some("no close frame: the stream ended".to_owned()),
                Err(_) => return None,
            }
        }
    }

    /// Reads binary frames until the peer closes, counting their bytes
    /// without keeping them; an error when `timeout` passes first.
    pub async fn drain_to_close(&mut self, timeout: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + timeout;
        let mut n = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => n += b.len(),
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return Ok(n),
                Ok(Some(Ok(_))) => {}
                Err(_) => return Err(format!("no close after {timeout:?} ({n} bytes)")),
            }
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.seen.len()
    }

    /// Reads frames for up to `timeout`, returning the bytes of the first frame.
    pub async fn next_binary(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.seen.extend_from_slice(&b);
                    return Some(b.to_vec());
                }
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => return None,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// Creates `vmi` (a VMI manifest) in `ns` as the operator would leave it placed
/// on `node`: with the VMI finalizer, the node label and status Scheduled.
pub async fn place(
    client: &Client,
    ns: &str,
    mut vmi: serde_json::Value,
    node: &str,
) -> ironvirt_crds::VirtualMachineInstance {
    use kube::api::{Patch, PatchParams, PostParams};
    // hostDisk images lie in the namespace's own directory of the bed's root.
    crate::hostdisk::confine(&mut vmi, ns);
    let meta = &mut vmi["metadata"];
    meta["finalizers"] = serde_json::json!(["kubevirt.io/foregroundDeleteVirtualMachine"]);
    meta["labels"]["kubevirt.io/nodeName"] = serde_json::json!(node);
    let vmi: ironvirt_crds::VirtualMachineInstance =
        serde_json::from_value(vmi).expect("VMI manifest");
    let api: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &vmi)
        .await
        .expect("create VMI");
    let name = kube::ResourceExt::name_any(&created);
    let status = serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "status": {"phase": "Scheduled", "nodeName": node},
    });
    api.patch_status(
        &name,
        &PatchParams::apply("ironvirt-placement").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("place VMI")
}

/// Places a VMI whose volumes the admission webhook would refuse, to hand
/// them to the handler as they are: creates `vmi` with `admissible` as its
/// `spec.volumes` (and no node label, so no handler acts on it), then, as the
/// bed's admin (a privileged user of the webhooks, whose VMI spec updates
/// are not validated), sets the real volumes, then places it on `node` like
/// [`place`]. The hostDisk paths are taken as given (not confined).
pub async fn place_unchecked(
    client: &Client,
    ns: &str,
    mut vmi: serde_json::Value,
    admissible: serde_json::Value,
    node: &str,
) -> ironvirt_crds::VirtualMachineInstance {
    use kube::api::{Patch, PatchParams, PostParams};
    let volumes = vmi["spec"]["volumes"].take();
    vmi["spec"]["volumes"] = admissible;
    let vmi: ironvirt_crds::VirtualMachineInstance =
        serde_json::from_value(vmi).expect("VMI manifest");
    let api: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let created = api
        .create(&PostParams::default(), &vmi)
        .await
        .expect("create VMI");
    let name = kube::ResourceExt::name_any(&created);
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": ["kubevirt.io/foregroundDeleteVirtualMachine"],
            "labels": {"kubevirt.io/nodeName": node},
        },
        "spec": {"volumes": volumes},
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("set the VMI's volumes (as a privileged user)");
    let status = serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "status": {"phase": "Scheduled", "nodeName": node},
    });
    api.patch_status(
        &name,
        &PatchParams::apply("ironvirt-placement").force(),
        &Patch::Apply(&status),
    )
    .await
    .expect("place VMI")
}

/// Waits until the VMI `name` has `phase`; returns it.
pub async fn wait_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
    timeout: Duration,
) -> Result<ironvirt_crds::VirtualMachineInstance, String> {
    let api: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(v)) = api.get_opt(name).await {
            let p = v.status.as_ref().and_then(|s| s.phase);
            if p.map(|p| format!("{p:?}")).as_deref() == Some(phase) {
                return Ok(v);
            }
            last = Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "VMI {ns}/{name} did not reach {phase} within {timeout:?}; last seen status: {}",
        last.and_then(|v| serde_json::to_string(&v.status).ok())
            .unwrap_or_else(|| "(no VMI)".into())
    ))
}

/// Waits until the VMI `name` is gone.
pub async fn wait_gone(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> Result<(), String> {
    let api: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(api.get_opt(name).await, Ok(None)) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("VMI {ns}/{name} still exists after {timeout:?}"))
}

/// The names of the libvirt domains at `uri` whose ironvirt metadata names
/// the VMI uid `uid`.
pub fn domains_of(uri: &str, uid: &str) -> Vec<String> {
    let Ok(conn) = virt::connect::Connect::open(Some(uri)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for d in conn.list_all_domains(0).unwrap_or_default() {
        let meta = d
            .metadata(
                virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
                Some("https://ironvirt.io/domain/v1"),
                0,
            )
            .unwrap_or_default();
        if meta.contains(&format!("uid=\"{uid}\"")) || meta.contains(&format!("uid='{uid}'")) {
            out.push(d.name().unwrap_or_default());
        }
    }
    out
}

/// Whether the domain `name` at `uri` is running.
pub fn domain_active(uri: &str, name: &str) -> Option<bool> {
    let conn = virt::connect::Connect::open(Some(uri)).ok()?;
    let d = conn.lookup_domain_by_name(name).ok()?;
    d.is_active().ok()
}

/// Connects to `addr`, says hello, and reads until `needle` arrives (a guest's
/// `nc -l` keeps the connection open after it wrote), for at most `timeout`.
/// The client speaks first: Debian 12's passt opens the connection to the
/// guest only when the first bytes come from the client.
pub async fn read_until(
    addr: (std::net::Ipv4Addr, u16),
    needle: &str,
    timeout: Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"hello\n").await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut chunk = [0u8; 512];
        while let Ok(n) = s.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if String::from_utf8_lossy(&buf).contains(needle) {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.contains(needle).then_some(text)
}
