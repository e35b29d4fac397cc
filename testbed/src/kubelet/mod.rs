//! A real kubelet node in the test bed (issue #21): kubelet v1.36 built from
//! its Go module (`hack/build-kubelet.sh`) with Debian's containerd 1.6 and
//! runc as its CRI runtime, registered as node `<name>` with a client
//! certificate for `system:node:<name>` in `system:nodes`.
//!
//! [`up`] prepares `<state>/kubelet/<name>/` (certificates, configurations,
//! a locally built sandbox image and a busybox image), makes sure
//! kube-apiserver reaches kubelets by InternalIP with a client certificate
//! of its own (restarting it once with those flags when it runs without
//! them) and runs kube-scheduler for the bed ([`ensure_scheduler`]), and
//! starts `ironvirt-testbed kubelet-run <name>` under the bed's
//! supervisor, as process `kubelet-node-<name>`. That process runs
//! containerd (in a mount namespace of its own, where a directory of the
//! node is bind-mounted over /run/containerd, since containerd 1.6 puts its
//! shims' sockets there whatever its configuration says) and kubelet, and
//! on SIGTERM (`make stop`, [`down`]) removes every container, stops both,
//! unmounts what kubelet mounted and restores the host sysctls kubelet
//! changed. A sweep ([`sweep`]) does the same after a crash.

pub mod config;
pub mod image;
pub mod overlay;

mod apiserver;
mod containerd;
mod node_ip;
mod prepare;
mod scheduler;
mod teardown;

pub use apiserver::{AGGREGATOR_ROUTING, ensure_apiserver_reaches_kubelets};
pub use containerd::run;
pub use prepare::prepare;
pub use scheduler::{SCHEDULER, ensure_scheduler};
pub use teardown::sweep;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::controlplane;
use crate::layout::{ClusterInfo, Layout};
use crate::process::Supervisor;
use config::NodePaths;

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
    /// kube-scheduler, which the bed runs once it has a kubelet node
    /// (`hack/build-kubelet.sh` builds it beside kubelet).
    pub scheduler: PathBuf,
    /// The `ironvirt-testbed` binary, which runs `kubelet-run`.
    pub testbed: PathBuf,
    /// kube-apiserver routes to Services' endpoints
    /// ([`apiserver::AGGREGATOR_ROUTING`]): for ironvirt installed in pods.
    /// Never on the bed of `make run`, whose ExternalName Service it breaks.
    pub aggregator_routing: bool,
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

/// Starts kubelet node `spec.name` in the bed of `layout` and waits until
/// its Node is Ready (`timeout`). Idempotent: a running node is kept.
pub async fn up(layout: &Layout, spec: &NodeSpec, timeout: Duration) -> Result<NodePaths> {
    if !valid_name(&spec.name) {
        return Err(KubeletError::BadName(spec.name.clone()));
    }
    check_host()?;
    for (what, p) in [
        ("kubelet", &spec.kubelet),
        ("kube-scheduler", &spec.scheduler),
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
    ensure_apiserver_reaches_kubelets(layout, &info, spec.aggregator_routing).await?;
    ensure_scheduler(layout, &info, &spec.scheduler).await?;
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
}
