//! The control plane: etcd, kube-apiserver and kube-controller-manager as local
//! processes on 127.0.0.1, with a generated PKI, RBAC and API aggregation.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::error::{Error, Result, io};
use crate::etcd;
use crate::layout::{ClusterInfo, Layout};
use crate::libvirt;
use crate::pki::{FRONT_PROXY_CLIENT_CN, Pki, names};
use crate::process::Supervisor;

pub const ETCD: &str = etcd::NAME;
pub const APISERVER: &str = "kube-apiserver";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";

/// Start order; `down` stops in the reverse order.
pub const START_ORDER: &[&str] = &[
    ETCD,
    APISERVER,
    CONTROLLER_MANAGER,
    libvirt::VIRTLOGD,
    libvirt::LIBVIRTD,
];

/// The service CIDR; its first address is the `kubernetes` Service.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";

/// The control-plane binaries, built by `hack/build-k8s.sh`.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
}

const BUILD_HINT: &str = "build it with `make build-k8s` (hack/build-k8s.sh)";

impl Binaries {
    /// Binaries from etcd's and Kubernetes' cache directories; fails clearly when
    /// one is missing.
    pub fn from_dirs(etcd_dir: &Path, k8s_dir: &Path) -> Result<Self> {
        let check = |what: &'static str, path: PathBuf| {
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::Missing {
                    what,
                    path,
                    hint: BUILD_HINT,
                })
            }
        };
        Ok(Binaries {
            etcd: check("etcd", etcd_dir.join("etcd"))?,
            kube_apiserver: check("kube-apiserver", k8s_dir.join("kube-apiserver"))?,
            kube_controller_manager: check(
                "kube-controller-manager",
                k8s_dir.join("kube-controller-manager"),
            )?,
            kubectl: check("kubectl", k8s_dir.join("kubectl"))?,
        })
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub binaries: Binaries,
    /// Also start libvirtd and virtlogd (the node).
    pub libvirt: bool,
    /// The test guest's directory, recorded for tests.
    pub guest_dir: Option<PathBuf>,
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago. All listeners
/// are held until every port is chosen, so no two are the same.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)).map_err(Error::NoPort))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().map_err(Error::NoPort)?.port()))
        .collect()
}

fn path_arg(flag: &str, p: &Path) -> String {
    format!("--{flag}={}", p.display())
}

/// kube-apiserver's audit policy on the bed: deletes only, at Metadata level.
pub const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [delete, deletecollection]
- level: None
";
/// Its file under the bed's root, and the audit log's under logs/.
pub const AUDIT_POLICY_FILE: &str = "audit-policy.yaml";
pub const AUDIT_LOG_FILE: &str = "kube-apiserver-audit.log";

/// The command line of kube-apiserver: client-certificate users, Node+RBAC
/// authorization, service-account keys and the front-proxy for aggregation.
pub fn apiserver_args(layout: &Layout, port: u16, etcd_port: u16) -> Vec<String> {
    let pki = Pki::new(layout.pki());
    let mut args: Vec<String> = vec![
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        path_arg("cert-dir", &layout.root().join("apiserver-certs")),
        path_arg("tls-cert-file", &pki.crt(names::APISERVER)),
        path_arg("tls-private-key-file", &pki.key(names::APISERVER)),
        path_arg("client-ca-file", &pki.crt(names::CA)),
        "--authorization-mode=Node,RBAC".into(),
        path_arg("service-account-key-file", &pki.file(names::SA_PUBLIC)),
        path_arg(
            "service-account-signing-key-file",
            &pki.file(names::SA_PRIVATE),
        ),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--endpoint-reconciler-type=none".into(),
        "--allow-privileged=true".into(),
        // API aggregation through the front proxy.
        path_arg(
            "requestheader-client-ca-file",
            &pki.crt(names::FRONT_PROXY_CA),
        ),
        format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}"),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--requestheader-uid-headers=X-Remote-Uid".into(),
        path_arg(
            "proxy-client-cert-file",
            &pki.crt(names::FRONT_PROXY_CLIENT),
        ),
        path_arg("proxy-client-key-file", &pki.key(names::FRONT_PROXY_CLIENT)),
        "--profiling=false".into(),
        // Who deleted what: every delete, at Metadata level (user, object,
        // time), in logs/kube-apiserver-audit.log.
        path_arg("audit-policy-file", &layout.root().join(AUDIT_POLICY_FILE)),
        path_arg("audit-log-path", &layout.logs().join(AUDIT_LOG_FILE)),
        "--audit-log-maxsize=20".into(),
        "--audit-log-maxbackup=1".into(),
    ];
    args.extend(etcd::apiserver_args(layout, etcd_port));
    args
}

/// The command line of kube-controller-manager. Each controller uses its own
/// service account, as in kubeadm clusters.
pub fn controller_manager_args(layout: &Layout, port: u16) -> Vec<String> {
    let pki = Pki::new(layout.pki());
    let kc = layout.kcm_kubeconfig();
    vec![
        path_arg("kubeconfig", &kc),
        path_arg("authentication-kubeconfig", &kc),
        path_arg("authorization-kubeconfig", &kc),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        path_arg("tls-cert-file", &pki.crt(names::CONTROLLER_MANAGER_SERVING)),
        path_arg(
            "tls-private-key-file",
            &pki.key(names::CONTROLLER_MANAGER_SERVING),
        ),
        "--leader-elect=false".into(),
        "--use-service-account-credentials=true".into(),
        path_arg(
            "service-account-private-key-file",
            &pki.file(names::SA_PRIVATE),
        ),
        path_arg("root-ca-file", &pki.crt(names::CA)),
        path_arg("cluster-signing-cert-file", &pki.crt(names::CA)),
        path_arg("cluster-signing-key-file", &pki.key(names::CA)),
        "--profiling=false".into(),
    ]
}

/// A kubeconfig for `server` that authenticates with a client certificate.
/// Every value is a quoted (JSON) string, which YAML reads verbatim whatever
/// the path contains.
pub fn kubeconfig_yaml(server: &str, ca: &Path, cert: &Path, key: &Path, user: &str) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: ironvirt-testbed\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: ironvirt-testbed\n  context:\n    cluster: ironvirt-testbed\n    user: {user}\n    namespace: default\ncurrent-context: ironvirt-testbed\n",
        server = q(server),
        ca = q(&ca.to_string_lossy()),
        cert = q(&cert.to_string_lossy()),
        key = q(&key.to_string_lossy()),
        user = q(user),
    )
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.to_owned(),
        source,
    })?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| Error::Kubeconfig {
            path: path.to_owned(),
            source,
        })?;
    Ok(kube::Client::try_from(config)?)
}

/// Polls `check` until it holds, failing early when the process `name` dies.
pub(crate) async fn wait_ready<F, Fut>(
    sup: &Supervisor,
    name: &str,
    secs: u64,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // One hung probe must not outlast the deadline (a kube client waits minutes).
        if matches!(
            tokio::time::timeout(Duration::from_secs(5), check()).await,
            Ok(true)
        ) {
            return Ok(());
        }
        let running = sup
            .recorded()
            .iter()
            // Just spawned by us: the pid alone tells whether it still runs (the
            // executable check would misjudge a script, whose exe is its shell).
            .any(|r| r.name == name && crate::process::process_alive(r.pid));
        if !running {
            return Err(Error::Exited {
                name: name.to_owned(),
                log: sup.log_path(name),
                tail: sup.log_tail(name, 20),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                name: name.to_owned(),
                secs,
                log: sup.log_path(name),
                tail: sup.log_tail(name, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The supervisor of a state directory.
pub fn supervisor(layout: &Layout) -> Supervisor {
    Supervisor::new(layout.pids(), layout.logs())
}

/// Whether the test bed in `layout` is up: every control-plane process recorded
/// and alive, and kube-apiserver ready.
pub async fn is_up(layout: &Layout) -> Option<ClusterInfo> {
    let info = ClusterInfo::load(layout).ok()?;
    let sup = supervisor(layout);
    let recs = sup.recorded();
    let all_alive = [ETCD, APISERVER, CONTROLLER_MANAGER].iter().all(|n| {
        recs.iter()
            .any(|r| r.name == *n && Supervisor::is_running(r))
    });
    if !all_alive {
        return None;
    }
    let client = client_from_kubeconfig(&info.kubeconfig).await.ok()?;
    readyz(&client).await.ok().filter(|s| s == "ok")?;
    Some(info)
}

/// GET /readyz.
pub async fn readyz(client: &kube::Client) -> Result<String> {
    let req = http::Request::get("/readyz").body(Vec::new())?;
    Ok(client.request_text(req).await?)
}

/// Holds an exclusive lock on a state directory while `up` or `down` runs.
pub struct StateLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

/// Locks the state directory, waiting for another `up`/`down` to finish.
pub fn lock_state(layout: &Layout) -> Result<StateLock> {
    fs::create_dir_all(layout.root()).map_err(io(layout.root()))?;
    let path = layout.lock_file();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, errno)| Error::Io {
            path: path.clone(),
            source: std::io::Error::from(errno),
        },
    )?;
    Ok(StateLock { _lock: lock })
}

/// Starts the test bed (idempotent: an already running one is reused). On any
/// failure, or on SIGINT/SIGTERM while starting, every process started so far
/// is stopped again.
pub async fn up(layout: &Layout, opts: &UpOptions) -> Result<ClusterInfo> {
    let _lock = lock_state(layout)?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io(layout.root()))?;
    tokio::select! {
        res = up_locked(layout, opts) => res,
        _ = tokio::signal::ctrl_c() => {
            tracing::warn!("interrupted; stopping what was started");
            down_locked(layout).await?;
            Err(Error::Interrupted)
        }
        _ = term.recv() => {
            tracing::warn!("terminated; stopping what was started");
            down_locked(layout).await?;
            Err(Error::Interrupted)
        }
    }
}

async fn up_locked(layout: &Layout, opts: &UpOptions) -> Result<ClusterInfo> {
    if let Some(mut info) = is_up(layout).await {
        tracing::info!(state = %layout.root().display(), "control plane already running");
        let sup = supervisor(layout);
        if opts.libvirt && info.libvirt_uri.is_none() {
            info.libvirt_owned = libvirt::start(&sup).await?;
            info.libvirt_uri = Some(libvirt::SYSTEM_URI.to_owned());
        }
        if opts.guest_dir.is_some() {
            info.guest_dir.clone_from(&opts.guest_dir);
        }
        info.save(layout).map_err(io(layout.cluster_info()))?;
        return Ok(info);
    }
    // Leftovers of a test bed that died: stop them before starting afresh.
    down_locked(layout).await?;
    match start(layout, opts).await {
        Ok(info) => Ok(info),
        Err(e) => {
            tracing::error!(error = %e, "start failed; stopping what was started");
            if let Err(stop_err) = down_locked(layout).await {
                tracing::error!(error = %stop_err, "cleanup after a failed start also failed");
            }
            Err(e)
        }
    }
}

async fn start(layout: &Layout, opts: &UpOptions) -> Result<ClusterInfo> {
    let started = Instant::now();
    for dir in [layout.root().to_owned(), layout.logs(), layout.pids()] {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
    }
    let pki = Pki::new(layout.pki());
    pki.ensure()?;
    let sup = supervisor(layout);
    let bins = &opts.binaries;

    // etcd serves TLS and requires a client certificate of its own CA; ready
    // once /health answers over that (verified) connection.
    let (etcd_port, _) = etcd::start(layout, &sup, &bins.etcd).await?;
    tracing::info!(
        port = etcd_port,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "etcd ready (TLS, client certificates required)"
    );
    let ports = free_ports(2)?;
    let (api_port, kcm_port) = (ports[0], ports[1]);

    let api_url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = layout.kubeconfig();
    let admin = kubeconfig_yaml(
        &api_url,
        &pki.crt(names::CA),
        &pki.crt(names::ADMIN),
        &pki.key(names::ADMIN),
        "admin",
    );
    fs::write(&kubeconfig, admin).map_err(io(&kubeconfig))?;
    let kcm = kubeconfig_yaml(
        &api_url,
        &pki.crt(names::CA),
        &pki.crt(names::CONTROLLER_MANAGER),
        &pki.key(names::CONTROLLER_MANAGER),
        "system:kube-controller-manager",
    );
    fs::write(layout.kcm_kubeconfig(), kcm).map_err(io(layout.kcm_kubeconfig()))?;
    let policy = layout.root().join(AUDIT_POLICY_FILE);
    fs::write(&policy, AUDIT_POLICY).map_err(io(&policy))?;

    sup.spawn(
        APISERVER,
        &bins.kube_apiserver,
        &apiserver_args(layout, api_port, etcd_port),
        &[],
    )?;
    let client = client_from_kubeconfig(&kubeconfig).await?;
    wait_ready(&sup, APISERVER, 90, || {
        let client = client.clone();
        async move { matches!(readyz(&client).await.as_deref(), Ok("ok")) }
    })
    .await?;
    tracing::info!(url = %api_url, elapsed_ms = started.elapsed().as_millis() as u64, "kube-apiserver ready");

    sup.spawn(
        CONTROLLER_MANAGER,
        &bins.kube_controller_manager,
        &controller_manager_args(layout, kcm_port),
        &[],
    )?;
    // Healthy on its own port (serving certificate from our CA, verified) …
    let health_kc = layout
        .root()
        .join("kube-controller-manager-health.kubeconfig");
    let health = kubeconfig_yaml(
        &format!("https://127.0.0.1:{kcm_port}"),
        &pki.crt(names::CA),
        &pki.crt(names::ADMIN),
        &pki.key(names::ADMIN),
        "admin",
    );
    fs::write(&health_kc, health).map_err(io(&health_kc))?;
    let kcm_client = client_from_kubeconfig(&health_kc).await?;
    wait_ready(&sup, CONTROLLER_MANAGER, 90, || {
        let c = kcm_client.clone();
        async move {
            let Ok(req) = http::Request::get("/healthz").body(Vec::new()) else {
                return false;
            };
            matches!(c.request_text(req).await.as_deref(), Ok("ok"))
        }
    })
    .await?;
    // … and its service-account controllers run: `default` has its ServiceAccount.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_ready(&sup, CONTROLLER_MANAGER, 90, || {
        let sas = sas.clone();
        async move { matches!(sas.get_opt("default").await, Ok(Some(_))) }
    })
    .await?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "kube-controller-manager ready"
    );

    let mut info = ClusterInfo {
        api_url,
        etcd_url: etcd::client_url(etcd_port),
        kubeconfig,
        kubectl: bins.kubectl.clone(),
        pki_dir: layout.pki(),
        logs_dir: layout.logs(),
        libvirt_owned: false,
        libvirt_uri: None,
        guest_dir: opts.guest_dir.clone(),
    };
    // Saved before libvirt starts, so that a failure there still lets `down` find everything.
    info.save(layout).map_err(io(layout.cluster_info()))?;
    if opts.libvirt {
        info.libvirt_owned = libvirt::start(&sup).await?;
        info.libvirt_uri = Some(libvirt::SYSTEM_URI.to_owned());
        info.save(layout).map_err(io(layout.cluster_info()))?;
        tracing::info!(
            owned = info.libvirt_owned,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "libvirt ready"
        );
    }
    Ok(info)
}

/// Stops every process of the test bed in `layout`, by its own pid. ironvirt's
/// domains are destroyed first when this test bed owns libvirtd. Idempotent.
pub async fn down(layout: &Layout) -> Result<()> {
    let _lock = lock_state(layout)?;
    down_locked(layout).await
}

async fn down_locked(layout: &Layout) -> Result<()> {
    // The nodes first (issue #18): their handlers, guests, libvirtds,
    // namespaces, mounts and bridge.
    let nodes_layout = layout.clone();
    let nodes = tokio::task::spawn_blocking(move || crate::nodes::down_all(&nodes_layout))
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
    if let Err(e) = &nodes {
        tracing::error!(error = %e, "stopping the nodes failed; stopping the rest");
    }
    let sup = supervisor(layout);
    let owns_libvirt = sup
        .recorded()
        .iter()
        .any(|r| r.name == libvirt::LIBVIRTD && Supervisor::is_running(r));
    if owns_libvirt && let Err(e) = libvirt::destroy_ironvirt_domains().await {
        tracing::warn!(error = %e, "could not destroy the remaining domains");
    }
    let sup2 = sup.clone();
    tokio::task::spawn_blocking(move || sup2.stop_all(START_ORDER, Duration::from_secs(15)))
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    // Kubelet nodes (issue #21) clean up after themselves on SIGTERM; one
    // whose supervised process died without doing so (SIGKILL) left its
    // containerd, kubelet, containers, mounts, address and sysctls behind.
    // The sweep removes them, and is a no-op after a clean stop.
    let kubelet_layout = layout.clone();
    tokio::task::spawn_blocking(move || {
        for name in crate::kubelet::node_names(&kubelet_layout) {
            crate::kubelet::sweep(&crate::kubelet::paths(&kubelet_layout, &name));
        }
    })
    .await
    .map_err(|e| Error::Task(e.to_string()))?;
    let _ = fs::remove_file(layout.cluster_info());
    nodes?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_flags_enable_rbac_and_aggregation() {
        let layout = Layout::new("/state");
        let args = apiserver_args(&layout, 6443, 2379);
        let has = |s: &str| args.iter().any(|a| a == s);
        assert!(has("--authorization-mode=Node,RBAC"));
        assert!(has("--audit-log-path=/state/logs/kube-apiserver-audit.log"));
        assert!(has("--secure-port=6443"));
        assert!(has("--etcd-servers=https://127.0.0.1:2379"));
        assert!(has("--etcd-cafile=/state/pki/etcd-ca.crt"));
        assert!(has("--etcd-certfile=/state/pki/apiserver-etcd-client.crt"));
        assert!(has("--etcd-keyfile=/state/pki/apiserver-etcd-client.key"));
        assert!(has("--requestheader-allowed-names=front-proxy-client"));
        assert!(has(
            "--requestheader-client-ca-file=/state/pki/front-proxy-ca.crt"
        ));
        assert!(has("--client-ca-file=/state/pki/ca.crt"));
        // The front-proxy CA differs from the client CA.
        assert!(!has("--requestheader-client-ca-file=/state/pki/ca.crt"));
        assert!(has("--advertise-address=127.0.0.1"));
    }

    #[test]
    fn kubeconfig_parses_and_names_the_user() {
        let yaml = kubeconfig_yaml(
            "https://127.0.0.1:1",
            Path::new("/p/ca.crt"),
            Path::new("/p/u.crt"),
            Path::new("/p/u.key"),
            "system:kube-controller-manager",
        );
        let kc: Kubeconfig = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("ironvirt-testbed"));
        assert_eq!(kc.auth_infos[0].name, "system:kube-controller-manager");
        assert_eq!(
            kc.clusters[0].cluster.as_ref().unwrap().server.as_deref(),
            Some("https://127.0.0.1:1")
        );
    }

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let err = Binaries::from_dirs(Path::new("/nope"), Path::new("/nope")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nope/etcd"), "{msg}");
        assert!(msg.contains("make build-k8s"), "{msg}");
    }
}
