//! Where a test bed keeps its things: one state directory holds data, logs,
//! pids and PKI; `cluster.json` in it describes the running test bed.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Environment variable naming the state directory.
pub const STATE_ENV: &str = "IRONVIRT_STATE";

/// The directory layout of one test bed.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    /// The state directory named by `$IRONVIRT_STATE`, or the checkout's
    /// `.state/run` (where `make run` keeps it). Never a shared /tmp path.
    pub fn from_env() -> Self {
        match std::env::var_os(STATE_ENV) {
            Some(dir) if !dir.is_empty() => Layout::new(dir),
            _ => Layout::new(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join(".state")
                    .join("run"),
            ),
        }
    }

    /// The lock file that serialises `up` and `down` on this state directory.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join(".lock")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn pids(&self) -> PathBuf {
        self.root.join("pids")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn users(&self) -> PathBuf {
        self.root.join("users")
    }
    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn kcm_kubeconfig(&self) -> PathBuf {
        self.root.join("kube-controller-manager.kubeconfig")
    }
    pub fn cluster_info(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
}

/// What `up` wrote about the running test bed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    /// https://127.0.0.1:PORT
    pub api_url: String,
    /// https://127.0.0.1:PORT; etcd accepts only client certificates of its own
    /// CA (`pki/etcd-ca.crt`), such as `pki/apiserver-etcd-client.crt`.
    pub etcd_url: String,
    pub kubeconfig: PathBuf,
    /// The kubectl built with the control plane (same version).
    pub kubectl: PathBuf,
    pub pki_dir: PathBuf,
    pub logs_dir: PathBuf,
    /// Whether this test bed started libvirtd (and so must stop it).
    #[serde(default)]
    pub libvirt_owned: bool,
    /// The libvirt URI of the node, when libvirt runs.
    #[serde(default)]
    pub libvirt_uri: Option<String>,
    /// The directory holding the test guest, when built.
    #[serde(default)]
    pub guest_dir: Option<PathBuf>,
}

impl ClusterInfo {
    pub fn load(layout: &Layout) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(layout.cluster_info())?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }

    pub fn save(&self, layout: &Layout) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(layout.cluster_info(), text)
    }
}
