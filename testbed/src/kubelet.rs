//! A real kubelet node in the test bed (issue #21): kubelet v1.36 built from
//! its Go module (`hack/build-kubelet.sh`) with Debian's containerd 1.6 and
//! runc as its CRI runtime, registered as node `<name>` with a client
//! certificate for `system:node:<name>` in `system:nodes`.
//!
//! [`up`] prepares `<state>/kubelet/<name>/` (certificates, configurations,
//! a locally built sandbox image and a busybox image), makes sure
//! kube-apiserver reaches kubelets by InternalIP with a client certificate
//! of its own (restarting it once with those flags when it runs without
//! them), and starts `ironvirt-testbed kubelet-run <name>` under the bed's
//! supervisor, as process `kubelet-node-<name>`. That process runs
//! containerd (in a mount namespace of its own, where a directory of the
//! node is bind-mounted over /run/containerd, since containerd 1.6 puts its
//! shims' sockets there whatever its configuration says) and kubelet, and
//! on SIGTERM (`make stop`, [`down`]) removes every container, stops both,
//! unmounts what kubelet mounted and restores the host sysctls kubelet
//! changed. A sweep ([`sweep`]) does the same after a crash.

pub mod config;
pub mod image;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nix::mount::MntFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::controlplane::{self, APISERVER};
use crate::layout::{ClusterInfo, Layout};
use crate::pki::{LeafSpec, Pki};
use crate::process::{Supervisor, process_alive};
use config::{KubeletPorts, NodePaths};

/// Errors of the kubelet node.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{command} failed: {output}")]
    Command { command: String, output: String },
    #[error("{what} not found at {path}; {hint}")]
    Missing {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("JSON: {0}")]
    Json(serde_json::Error),
    #[error("invalid node name {0:?}: want a DNS label (lower-case letters, digits and '-')")]
    BadName(String),
    #[error("{0}")]
    Bed(#[from] crate::Error),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{what} did not happen within {secs} s; last lines of {log}:\n{tail}")]
    Timeout {
        what: String,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} exited; last lines of {log}:\n{tail}")]
    Exited {
        name: String,
        log: PathBuf,
        tail: String,
    },
}

type Result<T, E = KubeletError> = std::result::Result<T, E>;

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> KubeletError {
    let path = path.into();
    move |source| KubeletError::Io { path, source }
}

/// The binaries a kubelet node runs.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The node's name (a DNS label).
    pub name: String,
    /// kubelet (`hack/build-kubelet.sh` prints its path).
    pub kubelet: PathBuf,
    /// The `ironvirt-testbed` binary, which runs `kubelet-run`.
    pub testbed: PathBuf,
}

/// What the supervisor calls the node's process.
pub fn process_name(node: &str) -> String {
    format!("kubelet-node-{node}")
}

/// The node's directory.
pub fn paths(layout: &Layout, node: &str) -> NodePaths {
    NodePaths::new(layout.root().join("kubelet").join(node))
}

/// The names of the kubelet nodes this bed has a directory for.
pub fn node_names(layout: &Layout) -> Vec<String> {
    let Ok(entries) = fs::read_dir(layout.root().join("kubelet")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    names
}

/// A DNS label, as a node name used in paths and certificates must be.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn require(what: &'static str, hint: &'static str) -> Result<PathBuf> {
    which(what).ok_or(KubeletError::Missing {
        what,
        path: PathBuf::from("$PATH"),
        hint,
    })
}

const DEBIAN_HINT: &str =
    "install Debian's containerd, runc and containernetworking-plugins (make run-node does)";

/// Checks the host programs a node needs.
pub fn check_host() -> Result<()> {
    for what in [
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "runc",
        "unshare",
    ] {
        require(what, DEBIAN_HINT)?;
    }
    let lo = Path::new("/usr/lib/cni/loopback");
    if !lo.is_file() {
        return Err(KubeletError::Missing {
            what: "the CNI loopback plugin",
            path: lo.to_owned(),
            hint: DEBIAN_HINT,
        });
    }
    Ok(())
}

/// The PKI file names of the node and of kube-apiserver's kubelet client.
const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";

/// kube-apiserver's kubelet flags, with its client certificate minted once.
fn apiserver_kubelet_args(layout: &Layout) -> Result<Vec<String>> {
    let pki = Pki::new(layout.pki());
    if !(pki.crt(APISERVER_KUBELET_CLIENT).exists() && pki.key(APISERVER_KUBELET_CLIENT).exists()) {
        pki.mint_user("kube-apiserver-kubelet-client", &["system:masters"])?
            .write(pki.dir(), APISERVER_KUBELET_CLIENT)?;
    }
    Ok(config::apiserver_kubelet_args(
        &pki.crt(crate::pki::names::CA),
        &pki.crt(APISERVER_KUBELET_CLIENT),
        &pki.key(APISERVER_KUBELET_CLIENT),
    ))
}

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Makes kube-apiserver reach kubelets by InternalIP, verifying them and
/// authenticating as `kube-apiserver-kubelet-client`: when the running one
/// lacks those flags, it is restarted once with its own flags plus these.
pub async fn ensure_apiserver_reaches_kubelets(layout: &Layout, info: &ClusterInfo) -> Result<()> {
    let extra = apiserver_kubelet_args(layout)?;
    let _lock = controlplane::lock_state(layout)?;
    let sup = controlplane::supervisor(layout);
    let rec = sup
        .recorded()
        .into_iter()
        .find(|r| r.name == APISERVER && Supervisor::is_running(r))
        .ok_or_else(|| crate::Error::NotRunning(layout.cluster_info()))?;
    let cmdline = fs::read(format!("/proc/{}/cmdline", rec.pid)).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if extra.iter().all(|e| args.contains(e)) {
        return Ok(());
    }
    let (Some(api_port), Some(etcd_port)) = (port_of(&info.api_url), port_of(&info.etcd_url))
    else {
        return Err(KubeletError::Command {
            command: "reading the bed's ports".into(),
            output: format!("no port in {} or {}", info.api_url, info.etcd_url),
        });
    };
    tracing::info!("restarting kube-apiserver with the kubelet flags {extra:?}");
    let mut new_args = controlplane::apiserver_args(layout, api_port, etcd_port);
    new_args.extend(extra);
    // Its watches keep it from exiting on SIGTERM for long; etcd holds the
    // state, so a short grace is enough.
    sup.stop(APISERVER, Duration::from_secs(3))?;
    sup.spawn(APISERVER, &rec.exe, &new_args, &[])?;
    let client = controlplane::client_from_kubeconfig(&info.kubeconfig).await?;
    controlplane::wait_ready(&sup, APISERVER, 90, || {
        let client = client.clone();
        async move { matches!(controlplane::readyz(&client).await.as_deref(), Ok("ok")) }
    })
    .await?;
    Ok(())
}

/// The host's IPv4 addresses (`ip -4 -o addr`).
fn host_ipv4s() -> Result<Vec<std::net::Ipv4Addr>> {
    let out = image_run(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

fn image_run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| KubeletError::Command {
        command: format!("{cmd:?}"),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's address: the one recorded in its directory when there is one
/// (and not taken by something else since), else the first free one of
/// [`config::NODE_IP_PREFIX`], recorded.
fn choose_node_ip_now(paths: &NodePaths) -> Result<std::net::Ipv4Addr> {
    let file = paths.node_ip_file();
    if let Some(ip) = read_node_ip(paths) {
        return Ok(ip);
    }
    let taken = host_ipv4s()?;
    let ip = config::choose_node_ip(&taken).ok_or_else(|| KubeletError::Command {
        command: "choosing the node's address".into(),
        output: "every address of 10.214.0.0/24 is taken on this host".into(),
    })?;
    fs::write(&file, ip.to_string()).map_err(io(&file))?;
    Ok(ip)
}

fn read_node_ip(paths: &NodePaths) -> Option<std::net::Ipv4Addr> {
    fs::read_to_string(paths.node_ip_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Puts the node's address on `lo` and the nftables table that keeps it to
/// this host (a marker file says the address is ours to remove).
fn add_node_ip(paths: &NodePaths, ip: std::net::Ipv4Addr) -> Result<()> {
    let mut nft = Command::new("nft");
    nft.arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = nft.spawn().map_err(|e| KubeletError::Command {
        command: "nft -f -".into(),
        output: e.to_string(),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(config::nft_table(ip).as_bytes())
            .map_err(io("nft stdin"))?;
    }
    let out = child.wait_with_output().map_err(io("nft"))?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: "nft -f - (the node address's table)".into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    if !host_ipv4s()?.contains(&ip) {
        image_run(Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]))?;
        let marker = paths.root().join("node-ip.added");
        fs::write(&marker, "").map_err(io(&marker))?;
    }
    Ok(())
}

/// Bind-mounts kubelet's directory on itself with shared propagation.
fn share_kubelet_dir(paths: &NodePaths) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    let dir = paths.kubelet_dir();
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let errno = |dir: &Path| {
        let dir = dir.to_owned();
        move |e: nix::errno::Errno| KubeletError::Io {
            path: dir,
            source: e.into(),
        }
    };
    if !crate::nodes::mounts_under(&dir).contains(&dir) {
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(errno(&dir))?;
    }
    mount(
        None::<&str>,
        &dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(errno(&dir))
}

/// Removes what [`add_node_ip`] added.
fn remove_node_ip(paths: &NodePaths) {
    let Some(ip) = read_node_ip(paths) else {
        return;
    };
    let marker = paths.root().join("node-ip.added");
    if marker.exists() {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_file(marker);
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", &config::nft_table_name(ip)])
        .stderr(Stdio::null())
        .status();
}

/// Writes the node's directory: certificates, kubeconfig, kubelet and
/// containerd configurations, the CNI configuration and the image archive.
pub fn prepare(layout: &Layout, info: &ClusterInfo, name: &str) -> Result<NodePaths> {
    let paths = paths(layout, name);
    for d in [
        paths.root().to_owned(),
        paths.containerd_dir(),
        paths.containerd_run(),
        paths.cni_conf_dir(),
        paths.kubelet_dir(),
        paths.pod_logs_dir(),
        paths.pki_dir(),
    ] {
        fs::create_dir_all(&d).map_err(io(&d))?;
    }
    let pki = Pki::new(layout.pki());
    let node_pki = paths.pki_dir();
    // Its user: system:node:<name> in system:nodes (the Node authorizer's).
    let user = format!("system:node:{name}");
    pki.mint_user(&user, &["system:nodes"])?
        .write(&node_pki, "kubelet-client")?;
    // Its serving certificate: the node's address, which kube-apiserver
    // dials, and loopback.
    let node_ip = choose_node_ip_now(&paths)?;
    let mut serving = LeafSpec::loopback_server(name, &[name]);
    serving.ips.push(std::net::IpAddr::V4(node_ip));
    pki.cluster_ca()?
        .issue(&serving)?
        .write(&node_pki, "kubelet-serving")?;
    let ca = pki.crt(crate::pki::names::CA);
    let kubeconfig = controlplane::kubeconfig_yaml(
        &info.api_url,
        &ca,
        &node_pki.join("kubelet-client.crt"),
        &node_pki.join("kubelet-client.key"),
        &user,
    );
    fs::write(paths.kubeconfig(), kubeconfig).map_err(io(paths.kubeconfig()))?;
    let node_ip = choose_node_ip_now(&paths)?;
    let ports = controlplane::free_ports(2)?;
    let kc = config::kubelet_config(
        &paths,
        &ca,
        &node_pki.join("kubelet-serving.crt"),
        &node_pki.join("kubelet-serving.key"),
        KubeletPorts {
            node_ip,
            port: ports[0],
            healthz: ports[1],
        },
    );
    fs::write(paths.kubelet_config(), kc).map_err(io(paths.kubelet_config()))?;
    fs::write(paths.containerd_config(), config::containerd_config(&paths))
        .map_err(io(paths.containerd_config()))?;
    let cni = paths.cni_conf_dir().join("10-ironvirt-loopback.conflist");
    fs::write(&cni, config::cni_config()).map_err(io(&cni))?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(KubeletError::Missing {
            what: "busybox (static)",
            path: busybox.to_owned(),
            hint: "install Debian's busybox-static (make deps)",
        });
    }
    image::build_archive(
        &paths.images_dir(),
        busybox,
        &[
            image::ImageSpec {
                name: config::PAUSE_IMAGE.into(),
                entrypoint: vec!["/bin/sleep".into(), "2147483647".into()],
            },
            image::ImageSpec {
                name: config::BUSYBOX_IMAGE.into(),
                entrypoint: vec!["/bin/sh".into()],
            },
        ],
    )?;
    Ok(paths)
}

/// Starts kubelet node `spec.name` in the bed of `layout` and waits until
/// its Node is Ready (`timeout`). Idempotent: a running node is kept.
pub async fn up(layout: &Layout, spec: &NodeSpec, timeout: Duration) -> Result<NodePaths> {
    if !valid_name(&spec.name) {
        return Err(KubeletError::BadName(spec.name.clone()));
    }
    check_host()?;
    for (what, p) in [
        ("kubelet", &spec.kubelet),
        ("ironvirt-testbed", &spec.testbed),
    ] {
        if !p.is_file() {
            return Err(KubeletError::Missing {
                what,
                path: p.clone(),
                hint: "build it first (hack/build-kubelet.sh, cargo build)",
            });
        }
    }
    let info =
        ClusterInfo::load(layout).map_err(|_| crate::Error::NotRunning(layout.cluster_info()))?;
    ensure_apiserver_reaches_kubelets(layout, &info).await?;
    let sup = controlplane::supervisor(layout);
    let pname = process_name(&spec.name);
    let running = sup
        .recorded()
        .iter()
        .any(|r| r.name == pname && Supervisor::is_running(r));
    let client = controlplane::client_from_kubeconfig(&info.kubeconfig).await?;
    let nodes: Api<Node> = Api::all(client);
    let paths = if running {
        paths(layout, &spec.name)
    } else {
        // A Node left by an earlier run would read Ready until it goes stale.
        match nodes.delete(&spec.name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        let p = prepare(layout, &info, &spec.name)?;
        let kubelet = spec.kubelet.to_string_lossy().into_owned();
        let state = layout.root().to_string_lossy().into_owned();
        sup.spawn(
            &pname,
            &spec.testbed,
            &[
                "--state".into(),
                state,
                "kubelet-run".into(),
                spec.name.clone(),
                "--kubelet".into(),
                kubelet,
            ],
            &[("RUST_LOG", "info")],
        )?;
        p
    };
    let name = spec.name.clone();
    let secs = timeout.as_secs();
    let ready = controlplane::wait_ready(&sup, &pname, secs, || {
        let nodes = nodes.clone();
        let name = name.clone();
        async move { matches!(nodes.get_opt(&name).await, Ok(Some(n)) if node_ready(&n)) }
    })
    .await;
    if let Err(e) = ready {
        let klog = layout.logs().join(format!("kubelet-{}.log", spec.name));
        return Err(KubeletError::Timeout {
            what: format!("node {} Ready ({e})", spec.name),
            secs,
            tail: crate::process::tail(&klog, 30),
            log: klog,
        });
    }
    Ok(paths)
}

/// Whether a Node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Stops kubelet node `name` (its process cleans up on SIGTERM), then sweeps
/// whatever a crashed one may have left.
pub fn down(layout: &Layout, name: &str) -> Result<()> {
    let sup = controlplane::supervisor(layout);
    sup.stop(&process_name(name), Duration::from_secs(14))?;
    sweep(&paths(layout, name));
    Ok(())
}

/// Sends SIGTERM, waits `grace`, then SIGKILL; waits for the exit.
fn stop_child(child: &mut Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
}

fn log_file(layout: &Layout, name: &str) -> Result<(fs::File, fs::File)> {
    let dir = layout.logs();
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{name}.log"));
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    let g = f.try_clone().map_err(io(&path))?;
    Ok((f, g))
}

fn spawn_logged(layout: &Layout, log: &str, cmd: &mut Command) -> Result<Child> {
    let (out, err) = log_file(layout, log)?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| KubeletError::Command {
            command: format!("{cmd:?}"),
            output: e.to_string(),
        })
}

/// `ctr` against the node's containerd, in namespace k8s.io.
fn ctr(paths: &NodePaths, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(paths.containerd_socket())
        .args(["--namespace", "k8s.io", "--timeout", "20s"])
        .args(args);
    let out = cmd.output().map_err(|e| KubeletError::Command {
        command: format!("{cmd:?}"),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: format!("ctr {}", args.join(" ")),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn save_sysctls(paths: &NodePaths) {
    // Kept from an earlier, crashed run: those are the host's own values.
    if paths.saved_sysctls().exists() {
        return;
    }
    let text: String = config::KUBELET_SYSCTLS
        .iter()
        .filter_map(|k| {
            let v = fs::read_to_string(sysctl_path(k)).ok()?;
            Some(format!("{k} {}\n", v.trim()))
        })
        .collect();
    let _ = fs::write(paths.saved_sysctls(), text);
}

fn sysctl_path(name: &str) -> PathBuf {
    Path::new("/proc/sys").join(name.replace('.', "/"))
}

fn restore_sysctls(paths: &NodePaths) {
    let Ok(text) = fs::read_to_string(paths.saved_sysctls()) else {
        return;
    };
    for (k, v) in config::parse_saved_sysctls(&text) {
        let p = sysctl_path(&k);
        if fs::read_to_string(&p).is_ok_and(|cur| cur.trim() != v)
            && let Err(e) = fs::write(&p, &v)
        {
            tracing::warn!(sysctl = %k, error = %e, "could not restore");
        }
    }
    let _ = fs::remove_file(paths.saved_sysctls());
}

fn netns_names() -> Vec<String> {
    fs::read_dir("/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes whose command line mentions `dir` (containerd, its shims,
/// kubelet), and separately their descendants (the containers).
fn processes_of(dir: &Path) -> (Vec<u32>, Vec<u32>) {
    let needle = dir.to_string_lossy().into_owned();
    let mut parent = Vec::new();
    let mut roots = Vec::new();
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return (Vec::new(), Vec::new());
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // ppid is the 2nd field after the ")" that ends the command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parent.push((pid, ppid));
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            roots.push(pid);
        }
    }
    let mut all = roots.clone();
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for (c, pp) in &parent {
            if *pp == p && !all.contains(c) && *c != me {
                all.push(*c);
            }
        }
        i += 1;
    }
    let descendants = all.split_off(roots.len());
    (roots, descendants)
}

/// Kills the node's processes: first its containers (SIGKILL: a container's
/// init ignores SIGTERM), then containerd, shims and kubelet (SIGTERM, then
/// SIGKILL). Every process seen is remembered: a container whose shim died
/// is no longer a descendant of anything of the node.
fn kill_processes(root: &Path, ids: &[String]) {
    let mut seen: Vec<u32> = Vec::new();
    for round in 0..3 {
        let (roots, mut descendants) = processes_of(root);
        // What still runs in the containers' cgroups, whoever its parent.
        descendants.extend(cgroup_pids(ids));
        for p in roots.iter().chain(&descendants) {
            if !seen.contains(p) {
                seen.push(*p);
            }
        }
        let alive: Vec<u32> = seen.iter().copied().filter(|p| process_alive(*p)).collect();
        if alive.is_empty() {
            break;
        }
        for pid in &alive {
            let sig = if round == 0 && roots.contains(pid) {
                Signal::SIGTERM
            } else {
                Signal::SIGKILL
            };
            let _ = kill(Pid::from_raw(*pid as i32), sig);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && alive.iter().any(|p| process_alive(*p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Removes whatever a node left: its processes (containerd, shims,
/// containers, kubelet), mounts under its directory, the network namespaces
/// its containerd created, kubelet's links in /var/log/containers, empty
/// cgroups of its containers; restores the host sysctls. Safe to repeat.
pub fn sweep(paths: &NodePaths) {
    let root = paths.root();
    let ids = container_ids(paths);
    kill_processes(root, &ids);
    for m in crate::nodes::mounts_under(root) {
        if let Err(e) = nix::mount::umount2(&m, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %m.display(), error = %e, "could not unmount");
        }
    }
    if let Ok(before) = fs::read_to_string(paths.netns_before()) {
        let before: Vec<&str> = before.lines().collect();
        for n in netns_names() {
            if n.starts_with("cni-") && !before.contains(&n.as_str()) {
                let p = Path::new("/run/netns").join(&n);
                let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&p);
            }
        }
        let _ = fs::remove_file(paths.netns_before());
    }
    if let Ok(rd) = fs::read_dir("/var/log/containers") {
        for e in rd.flatten() {
            let p = e.path();
            if fs::read_link(&p).is_ok_and(|t| t.starts_with(paths.pod_logs_dir())) {
                let _ = fs::remove_file(&p);
            }
        }
    }
    remove_container_cgroups(&ids);
    remove_node_ip(paths);
    restore_sysctls(paths);
    let created = paths.root().join("var-log-containers.created");
    if created.exists() {
        // Made by this node's kubelet; removed when empty.
        let _ = fs::remove_dir("/var/log/containers");
        let _ = fs::remove_file(created);
    }
    let created = Path::new(RUN_CONTAINERD_MARKER);
    if created.exists() {
        // Made by this node for its bind mount; removed when still empty and
        // no other node's containerd has its namespace's /run/containerd
        // mounted there (removing it would detach that mount).
        if !other_node_containerd_runs() && fs::remove_dir("/run/containerd").is_ok() {
            let _ = fs::remove_file(created);
        }
    }
}

/// Says that a kubelet node (of any bed) created /run/containerd, which the
/// last node to stop removes. On the host, beside that directory.
const RUN_CONTAINERD_MARKER: &str = "/run/containerd.made-by-ironvirt-kubelet";

/// Whether a containerd of some kubelet node (of any bed) runs.
fn other_node_containerd_runs() -> bool {
    let Ok(rd) = fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        e.file_name()
            .to_str()
            .is_some_and(|s| s.parse::<u32>().is_ok())
            && fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.starts_with("containerd\0")
                    && c.contains("/kubelet/")
                    && c.contains("/containerd/config.toml")
            })
    })
}

/// The ids of the containers and sandboxes the node's containerd knows
/// (its CRI store and its tasks' state): runc names their cgroups
/// `/k8s.io/<id>` in every hierarchy.
fn container_ids(paths: &NodePaths) -> Vec<String> {
    let dir = paths.containerd_dir();
    let mut ids = Vec::new();
    for d in [
        dir.join("root/io.containerd.grpc.v1.cri/containers"),
        dir.join("root/io.containerd.grpc.v1.cri/sandboxes"),
        dir.join("state/io.containerd.runtime.v2.task/k8s.io"),
    ] {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if let Some(id) = e.file_name().to_str()
                && id.len() == 64
                && id.bytes().all(|b| b.is_ascii_hexdigit())
                && !ids.iter().any(|i| i == id)
            {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

/// The processes in the cgroups `/k8s.io/<id>` of `ids`, in any hierarchy.
fn cgroup_pids(ids: &[String]) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") else {
        return pids;
    };
    for c in ctrls.flatten() {
        for id in ids {
            let procs = c.path().join("k8s.io").join(id).join("cgroup.procs");
            for p in fs::read_to_string(procs).unwrap_or_default().lines() {
                if let Ok(pid) = p.trim().parse::<u32>()
                    && !pids.contains(&pid)
                {
                    pids.push(pid);
                }
            }
        }
    }
    pids
}

/// Removes the (empty) cgroups of `ids` under `/sys/fs/cgroup/*/k8s.io/`,
/// and that directory when nothing else is left in it.
fn remove_container_cgroups(ids: &[String]) {
    let Ok(ctrls) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for c in ctrls.flatten() {
        let base = c.path().join("k8s.io");
        if !base.is_dir() {
            continue;
        }
        for id in ids {
            let _ = fs::remove_dir(base.join(id));
        }
        let _ = fs::remove_dir(&base);
    }
}

/// `ironvirt-testbed kubelet-run NAME`: runs the node's containerd and
/// kubelet until SIGTERM or SIGINT, then removes every container, stops
/// both and sweeps. [`up`] starts it under the supervisor.
pub async fn run(layout: &Layout, name: &str, kubelet: &Path) -> Result<()> {
    if !valid_name(name) {
        return Err(KubeletError::BadName(name.to_owned()));
    }
    check_host()?;
    let paths = paths(layout, name);
    if !paths.kubelet_config().is_file() {
        return Err(KubeletError::Missing {
            what: "the node's configuration",
            path: paths.kubelet_config(),
            hint: "start the node with `ironvirt-testbed kubelet-up` (make run-node)",
        });
    }
    // A crashed earlier run's leftovers first.
    sweep(&paths);
    save_sysctls(&paths);
    let _ = fs::write(paths.netns_before(), netns_names().join("\n"));
    let node_ip = read_node_ip(&paths).ok_or_else(|| KubeletError::Missing {
        what: "the node's address",
        path: paths.node_ip_file(),
        hint: "start the node with `ironvirt-testbed kubelet-up` (make run-node)",
    })?;
    if let Err(e) = add_node_ip(&paths, node_ip) {
        sweep(&paths);
        return Err(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("SIGTERM handler"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io("SIGINT handler"))?;

    // kubelet mounts pods' volumes under its directory after containerd
    // started in its own mount namespace: a shared bind mount of that
    // directory (a slave of it in containerd's namespace) carries them over.
    if let Err(e) = share_kubelet_dir(&paths) {
        sweep(&paths);
        return Err(e);
    }
    // kubelet links containers' logs in /var/log/containers (a fixed path).
    if !Path::new("/var/log/containers").exists() {
        let _ = fs::write(paths.root().join("var-log-containers.created"), "");
    }
    if !Path::new("/run/containerd").exists() {
        fs::create_dir_all("/run/containerd").map_err(io("/run/containerd"))?;
        let _ = fs::write(RUN_CONTAINERD_MARKER, "");
    }
    let containerd_log = format!("containerd-{name}");
    let mut containerd = spawn_logged(
        layout,
        &containerd_log,
        Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "--", "/bin/sh", "-c"])
            .arg(r#"mount --bind "$1" /run/containerd && exec containerd --config "$2""#)
            .arg("sh")
            .arg(paths.containerd_run())
            .arg(paths.containerd_config()),
    )?;
    let kubelet_log = format!("kubelet-{name}");
    let result = async {
        // containerd answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ctr(&paths, &["version"]).is_ok() {
                break;
            }
            if let Ok(Some(_)) = containerd.try_wait() {
                return Err(exited(layout, &containerd_log));
            }
            if Instant::now() > deadline {
                return Err(timeout(layout, "containerd answering", 60, &containerd_log));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let archive = paths.images_dir().join("images.tar");
        ctr(
            &paths,
            &[
                "images",
                "import",
                "--no-unpack",
                &archive.to_string_lossy(),
            ],
        )?;
        tracing::info!(
            "images imported: {}",
            ctr(&paths, &["images", "ls", "-q"])?.replace('\n', " ")
        );
        let child = spawn_logged(
            layout,
            &kubelet_log,
            Command::new(kubelet)
                .arg(format!("--config={}", paths.kubelet_config().display()))
                .arg(format!("--kubeconfig={}", paths.kubeconfig().display()))
                .arg(format!("--root-dir={}", paths.kubelet_dir().display()))
                .arg(format!("--cert-dir={}", paths.pki_dir().display()))
                .arg(format!("--hostname-override={name}"))
                .arg(format!("--node-ip={node_ip}"))
                .arg("--v=1"),
        )?;
        Ok(child)
    }
    .await;
    let mut kubelet_child = match result {
        Ok(c) => c,
        Err(e) => {
            stop_child(&mut containerd, Duration::from_secs(5));
            sweep(&paths);
            return Err(e);
        }
    };
    tracing::info!(node = name, "containerd and kubelet run");
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Ok(Some(_)) = kubelet_child.try_wait() {
                    break Err(exited(layout, &kubelet_log));
                }
                if let Ok(Some(_)) = containerd.try_wait() {
                    break Err(exited(layout, &containerd_log));
                }
            }
        }
    };
    tracing::info!(
        node = name,
        "stopping kubelet, the containers and containerd"
    );
    stop_child(&mut kubelet_child, Duration::from_secs(5));
    remove_containers(&paths);
    stop_child(&mut containerd, Duration::from_secs(5));
    sweep(&paths);
    tracing::info!(node = name, "stopped");
    outcome
}

/// Kills and deletes every task and container of the node's containerd, so
/// that runc removes their cgroups and containerd their mounts.
fn remove_containers(paths: &NodePaths) {
    let Ok(list) = ctr(paths, &["containers", "ls", "-q"]) else {
        return;
    };
    let ids: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    for id in &ids {
        let _ = ctr(paths, &["tasks", "kill", "--signal", "SIGKILL", id]);
    }
    for id in &ids {
        let _ = ctr(paths, &["tasks", "delete", "--force", id]);
        let _ = ctr(paths, &["containers", "delete", id]);
    }
}

fn exited(layout: &Layout, log: &str) -> KubeletError {
    let path = layout.logs().join(format!("{log}.log"));
    KubeletError::Exited {
        name: log.to_owned(),
        tail: crate::process::tail(&path, 30),
        log: path,
    }
}

fn timeout(layout: &Layout, what: &str, secs: u64, log: &str) -> KubeletError {
    let path = layout.logs().join(format!("{log}.log"));
    KubeletError::Timeout {
        what: what.to_owned(),
        secs,
        tail: crate::process::tail(&path, 30),
        log: path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_labels() {
        assert!(valid_name("kubelet-1"));
        assert!(!valid_name("Kubelet"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name("-a"));
        assert!(!valid_name(""));
        assert!(!valid_name("../x"));
    }

    #[test]
    fn ports_from_urls() {
        assert_eq!(port_of("https://127.0.0.1:6443"), Some(6443));
        assert_eq!(port_of("https://127.0.0.1:2379/"), Some(2379));
        assert_eq!(port_of("https://127.0.0.1"), None);
    }
}
