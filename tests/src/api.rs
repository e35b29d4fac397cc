//! Reaching ironvirt-api the way users do: through kube-apiserver's
//! aggregation, with websockets for console and VNC (subprotocol
//! `plain.kubevirt.io`, as KubeVirt's virtctl speaks it).

use std::time::{Duration, Instant};

use http::Request;
use hyper_util::rt::TokioIo;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::Api;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::handler::WsSession;

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
pub type ApiWs = WsSession<TokioIo<hyper::upgrade::Upgraded>>;

/// Opens `path` (e.g. /apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/x/console)
/// as a websocket with `client`'s credentials. An HTTP error gives (code, body).
pub async fn open_ws(client: &Client, path: &str) -> Result<ApiWs, (u16, String)> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let req = Request::get(path)
        .header("Connection", "Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", key)
        .header(
            "Sec-WebSocket-Protocol",
            ironvirt_crds::wire::STREAM_SUBPROTOCOL,
        )
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
    Ok(WsSession::new(ws))
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

/// The test bed's ironvirt-api process (started by hack/lib.sh `start_api`).
#[derive(Debug, Clone, Copy)]
pub struct BedApi {
    pub pid: u32,
    pub metrics_port: u16,
}

impl BedApi {
    /// Reads the process id and metrics port `start_api` recorded.
    pub fn of(bed: &ironvirt_testbed::TestBed) -> Result<BedApi, String> {
        let root = bed.layout().root();
        let read = |p: std::path::PathBuf| {
            std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let pid = read(root.join("pids/ironvirt-api.pid"))?;
        let pid = pid
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| format!("no pid in {pid:?}"))?;
        let port = read(root.join("ironvirt-api.metrics-port"))?;
        let metrics_port = port
            .trim()
            .parse()
            .map_err(|e| format!("metrics port {port:?}: {e}"))?;
        Ok(BedApi { pid, metrics_port })
    }
}

/// Another ironvirt-api replica serving the same address as the test bed's
/// (the listeners share the port with SO_REUSEPORT). Killed on drop.
pub struct ApiReplica {
    child: Option<std::process::Child>,
    pub metrics_port: u16,
}

impl ApiReplica {
    pub fn start(bed: &ironvirt_testbed::TestBed, port: u16, log: &std::path::Path) -> ApiReplica {
        use ironvirt_testbed::pki::names;
        let info = bed.info();
        let pki = |n: &str, ext: &str| info.pki_dir.join(format!("{n}.{ext}"));
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let file = std::fs::File::create(log).expect("replica log");
        let bin = crate::operator::target_dir()
            .join("debug")
            .join("ironvirt-api");
        let child = std::process::Command::new(bin)
            .env("KUBECONFIG", &info.kubeconfig)
            .env("RUST_LOG", "info")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--listen", &format!("[::1]:{port}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--tls-cert")
            .arg(pki(names::API_SERVING, "crt"))
            .arg("--tls-key")
            .arg(pki(names::API_SERVING, "key"))
            .arg("--handler-ca")
            .arg(pki(names::IRONVIRT_CA, "crt"))
            .arg("--handler-client-cert")
            .arg(pki(names::HANDLER_CLIENT, "crt"))
            .args(["--host-disk-root", crate::hostdisk::ROOT])
            .arg("--handler-client-key")
            .arg(pki(names::HANDLER_CLIENT, "key"))
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start ironvirt-api");
        ApiReplica {
            child: Some(child),
            metrics_port,
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for ApiReplica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test guest's disk, installed by the test bed.
pub const GUEST_IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";
/// What the test guest prints on its serial console once booted.
pub const GUEST_MARKER: &str = "IRONVIRT-GUEST-READY";

/// A VM of the test guest in `ns` (128Mi, its disk read-only so several
/// share it; the image in `ns`'s hostDisk directory).
pub fn guest_vm(ns: &str, name: &str, strategy: &str) -> ironvirt_crds::VirtualMachine {
    let image = crate::hostdisk::guest_image(ns);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {
            "runStrategy": strategy,
            "template": {"spec": {
                "terminationGracePeriodSeconds": 10,
                "domain": {"memory": {"guest": "128Mi"},
                    "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio", "readonly": true}}]}},
                "volumes": [{"name": "root", "hostDisk": {"path": image, "type": "Disk"}}],
            }},
        },
    }))
    .expect("the guest VM is a valid VirtualMachine")
}

/// A VMI of the test guest, for placing directly on a handler's node
/// (`handler::place` moves its image into the namespace's hostDisk directory).
pub fn guest_vmi(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "domain": {"memory": {"guest": "128Mi"},
                "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio", "readonly": true}}]}},
            "volumes": [{"name": "root", "hostDisk": {"path": GUEST_IMAGE, "type": "Disk"}}],
        },
    })
}

/// Binds `user` to ClusterRole `role` in `ns`.
pub async fn bind(client: &Client, ns: &str, user: &str, role: &str) {
    use k8s_openapi::api::rbac::v1::RoleBinding;
    let rb: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{}-{}", user.replace(':', "-"), role.replace([':', '.'], "-"))},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
    }))
    .expect("a valid RoleBinding");
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &rb)
        .await
        .expect("create rolebinding");
}

/// The VM's printableStatus, if it has one.
pub async fn printable(vms: &Api<ironvirt_crds::VirtualMachine>, name: &str) -> Option<String> {
    vms.get_opt(name)
        .await
        .ok()
        .flatten()?
        .status?
        .printable_status
}

/// Waits for a Running VMI `name` other than the one with `old_uid` (a restart).
pub async fn wait_replaced(
    vmis: &Api<ironvirt_crds::VirtualMachineInstance>,
    name: &str,
    old_uid: Option<String>,
    timeout: Duration,
) -> Result<(), String> {
    crate::operator::eventually(timeout, "a new VMI after restart", || async {
        let v = vmis.get_opt(name).await.ok().flatten()?;
        let running = v.status.as_ref().and_then(|s| s.phase)
            == Some(ironvirt_crds::VirtualMachineInstancePhase::Running);
        (kube::ResourceExt::uid(&v) != old_uid && running).then_some(())
    })
    .await
    .map_err(|e| e.to_string())
}

/// A decoded PNG screenshot.
pub struct Screen {
    pub width: u32,
    pub height: u32,
    /// Bytes per pixel.
    pub bpp: usize,
    pub pixels: Vec<u8>,
}

impl Screen {
    pub fn decode(png_bytes: &[u8]) -> Result<Screen, String> {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).map_err(|e| e.to_string())?;
        buf.truncate(info.buffer_size());
        Ok(Screen {
            width: info.width,
            height: info.height,
            bpp: info.color_type.samples() * usize::from(info.bit_depth as u8).div_ceil(8),
            pixels: buf,
        })
    }

    /// (pixels that differ from the first one, all pixels): how far from
    /// blank the screen is.
    pub fn differing(&self) -> (usize, usize) {
        let bpp = self.bpp.max(1);
        let background = &self.pixels[..bpp.min(self.pixels.len())];
        let differing = self.pixels.chunks(bpp).filter(|p| *p != background).count();
        (differing, self.pixels.len() / bpp)
    }
}

/// A GET through kube-apiserver whose body may be binary (a PNG):
/// (status code, body).
pub async fn get_bytes(client: &Client, path: &str) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt;
    let req = match Request::get(path).body(kube::client::Body::empty()) {
        Ok(r) => r,
        Err(e) => return (0, e.to_string().into_bytes()),
    };
    match client.send(req).await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            (code, body)
        }
        Err(e) => (0, e.to_string().into_bytes()),
    }
}

/// The peak resident memory of process `pid` in bytes (VmHWM of
/// /proc/<pid>/status: the high-water mark since the process started).
pub fn peak_rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmHWM in {path}"))
}

/// A TLS connection straight to ironvirt-api on 127.0.0.1:`port`, trusting
/// the serving CA in `ca` and presenting no client certificate (ironvirt-api
/// accepts that and answers 401 where identity matters).
pub async fn tls_to_api(
    ca: &std::path::Path,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| e.to_string())?;
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    // ironvirt-api's serving certificate names its Service.
    let name = rustls::pki_types::ServerName::try_from("ironvirt-api.ironvirt-system.svc")
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS to ironvirt-api: {e}"))
}

/// A client for `user` in `groups` that does not retry: kube's default
/// client answers a 429 (or 503, 504) by trying again after a backoff, which
/// would hide ironvirt-api's limits from a test.
pub async fn client_without_retries(
    bed: &ironvirt_testbed::TestBed,
    user: &str,
    groups: &[&str],
) -> Result<Client, String> {
    let path = bed
        .user_kubeconfig(user, groups)
        .map_err(|e| e.to_string())?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).map_err(|e| e.to_string())?;
    let mut config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    config.default_retry = false;
    Client::try_from(config).map_err(|e| e.to_string())
}
