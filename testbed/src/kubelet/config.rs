//! The files of a kubelet node, as pure functions of its paths and ports:
//! kubelet's KubeletConfiguration, containerd's config.toml and the CNI
//! configuration. Choices, each needed on these machines:
//!
//! - `failCgroupV1: false`: the machines run cgroup v1;
//! - `cgroupDriver: cgroupfs`, `cgroupsPerQOS: false`,
//!   `enforceNodeAllocatable: []`: no systemd, and no QoS cgroup tree of
//!   kubelet's own on a machine others share;
//! - `failSwapOn: false`; eviction thresholds low enough that a busy shared
//!   disk does not taint the node;
//! - every port on 127.0.0.1, and kubelet's serving certificate signed by
//!   the bed's CA for IP 127.0.0.1, so kube-apiserver verifies it;
//! - containerd's CRI `restrict_oom_score_adj = true`: these machines refuse
//!   to lower `oom_score_adj`, even for root, and without it every sandbox
//!   fails with runc's "can't get final child's PID from pipe: EOF";
//! - containerd's root, state, sockets and runc root under the node's
//!   directory, never /var/lib/containerd or /run/containerd;
//! - a CNI configuration with only the `loopback` plugin: the runtime then
//!   reports its network ready (so the node is Ready) and nothing is created
//!   on the host's network; pods that need a network use `hostNetwork`.

use std::path::{Path, PathBuf};

/// The sandbox ("pause") image, imported from a local OCI archive.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.6";
/// A busybox image with `/bin/sh`, imported from a local OCI archive.
pub const BUSYBOX_IMAGE: &str = "ironvirt.local/busybox:1";

/// Where one kubelet node keeps its things: `<state>/kubelet/<node>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    root: PathBuf,
}

impl NodePaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NodePaths { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn containerd_dir(&self) -> PathBuf {
        self.root.join("containerd")
    }
    pub fn containerd_config(&self) -> PathBuf {
        self.containerd_dir().join("config.toml")
    }
    /// containerd's socket: kubelet's CRI endpoint and `ctr --address`.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_dir().join("containerd.sock")
    }
    /// Bind-mounted over /run/containerd in containerd's own mount
    /// namespace: containerd 1.6 puts its shims' sockets in
    /// /run/containerd/s whatever its configuration says.
    pub fn containerd_run(&self) -> PathBuf {
        self.containerd_dir().join("run")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.root.join("kubelet-config.yaml")
    }
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubelet.kubeconfig")
    }
    pub fn pod_logs_dir(&self) -> PathBuf {
        self.root.join("pod-logs")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }
    /// The host sysctls kubelet changes at start, as they were before.
    pub fn saved_sysctls(&self) -> PathBuf {
        self.root.join("sysctls.saved")
    }
    /// The node's address (see [`NODE_IP_PREFIX`]).
    pub fn node_ip_file(&self) -> PathBuf {
        self.root.join("node-ip")
    }
    /// The network namespaces in /run/netns before containerd started.
    pub fn netns_before(&self) -> PathBuf {
        self.root.join("netns.before")
    }
}

/// kubelet's addresses: its API on the node's address, health on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeletPorts {
    /// The node's InternalIP, where kube-apiserver dials kubelet.
    pub node_ip: std::net::Ipv4Addr,
    pub port: u16,
    pub healthz: u16,
}

/// The range the node's address comes from: kubelet refuses a loopback
/// node IP ("nodeIP can't be loopback address") and wants it on one of the
/// host's interfaces, so the node gets one of these as a /32 on `lo`, and
/// an nftables table drops packets for it that come from anywhere but `lo`.
pub const NODE_IP_PREFIX: [u8; 3] = [10, 214, 0];

/// The first address of [`NODE_IP_PREFIX`] not in `taken`.
pub fn choose_node_ip(taken: &[std::net::Ipv4Addr]) -> Option<std::net::Ipv4Addr> {
    let [a, b, c] = NODE_IP_PREFIX;
    (1..=254u8)
        .map(|d| std::net::Ipv4Addr::new(a, b, c, d))
        .find(|ip| !taken.contains(ip))
}

/// The nftables table that keeps the node's address to this host.
pub fn nft_table_name(ip: std::net::Ipv4Addr) -> String {
    format!("ironvirt-kubelet-{}", ip.to_string().replace('.', "-"))
}

/// `nft -f` input creating [`nft_table_name`].
pub fn nft_table(ip: std::net::Ipv4Addr) -> String {
    format!(
        "table inet {name} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname != \"lo\" ip daddr {ip} drop\n  }}\n}}\n",
        name = nft_table_name(ip)
    )
}

fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

/// kubelet's KubeletConfiguration (YAML; every path a quoted string).
pub fn kubelet_config(
    paths: &NodePaths,
    ca: &Path,
    cert: &Path,
    key: &Path,
    ports: KubeletPorts,
) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node_ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
containerRuntimeEndpoint: {endpoint}
podLogsDir: {logs}
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
memorySwap: {{}}
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
nodeStatusUpdateFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 20s
"#,
        node_ip = ports.node_ip,
        port = ports.port,
        healthz = ports.healthz,
        cert = qp(cert),
        key = qp(key),
        ca = qp(ca),
        endpoint = q(&format!("unix://{}", paths.containerd_socket().display())),
        logs = qp(&paths.pod_logs_dir()),
    )
}

/// containerd's config.toml (version 2, containerd 1.6).
pub fn containerd_config(paths: &NodePaths) -> String {
    let dir = paths.containerd_dir();
    let t = |p: PathBuf| qp(&p);
    format!(
        r#"version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = {sock}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {pause}
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = {runc}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = {cni}
    max_conf_num = 1
"#,
        root = t(dir.join("root")),
        state = t(dir.join("state")),
        sock = qp(&paths.containerd_socket()),
        ttrpc = t(dir.join("containerd.sock.ttrpc")),
        opt = t(dir.join("opt")),
        pause = q(PAUSE_IMAGE),
        runc = t(dir.join("runc")),
        cni = qp(&paths.cni_conf_dir()),
    )
}

/// The CNI configuration: loopback only (see the module's documentation).
pub fn cni_config() -> &'static str {
    r#"{
  "cniVersion": "0.4.0",
  "name": "ironvirt-loopback",
  "plugins": [{"type": "loopback"}]
}
"#
}

/// kube-apiserver's flags for reaching kubelets: by InternalIP (never the
/// node's name through DNS), verifying the kubelet's serving certificate
/// against the bed's CA, authenticating with a client certificate of its own.
pub fn apiserver_kubelet_args(ca: &Path, client_cert: &Path, client_key: &Path) -> Vec<String> {
    vec![
        "--kubelet-preferred-address-types=InternalIP".into(),
        format!("--kubelet-certificate-authority={}", ca.display()),
        format!("--kubelet-client-certificate={}", client_cert.display()),
        format!("--kubelet-client-key={}", client_key.display()),
    ]
}

/// The host sysctls kubelet sets at start (`protectKernelDefaults: false`):
/// saved before and restored when the node stops.
pub const KUBELET_SYSCTLS: &[&str] = &[
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
];

/// `name value` lines of saved sysctls, back to pairs (malformed lines skipped).
pub fn parse_saved_sysctls(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(' ')?;
            KUBELET_SYSCTLS
                .contains(&k)
                .then(|| (k.to_owned(), v.trim().to_owned()))
        })
        .filter(|(_, v)| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> NodePaths {
        NodePaths::new("/state/kubelet/kn-1")
    }

    #[test]
    fn kubelet_config_parses_and_has_what_these_machines_need() {
        let text = kubelet_config(
            &paths(),
            Path::new("/state/pki/ca.crt"),
            Path::new("/c.crt"),
            Path::new("/c.key"),
            KubeletPorts {
                node_ip: std::net::Ipv4Addr::new(10, 214, 0, 1),
                port: 10250,
                healthz: 10248,
            },
        );
        let v: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
        assert_eq!(v["failCgroupV1"], serde_yaml::Value::Bool(false));
        assert_eq!(v["cgroupDriver"].as_str(), Some("cgroupfs"));
        assert_eq!(v["cgroupsPerQOS"], serde_yaml::Value::Bool(false));
        assert_eq!(v["failSwapOn"], serde_yaml::Value::Bool(false));
        assert_eq!(
            v["enforceNodeAllocatable"].as_sequence().map(Vec::len),
            Some(0)
        );
        assert_eq!(v["address"].as_str(), Some("10.214.0.1"));
        assert_eq!(v["healthzBindAddress"].as_str(), Some("127.0.0.1"));
        assert_eq!(v["readOnlyPort"].as_u64(), Some(0));
        assert_eq!(
            v["authentication"]["anonymous"]["enabled"],
            serde_yaml::Value::Bool(false)
        );
        assert_eq!(v["authorization"]["mode"].as_str(), Some("Webhook"));
        assert_eq!(
            v["containerRuntimeEndpoint"].as_str(),
            Some("unix:///state/kubelet/kn-1/containerd/containerd.sock")
        );
    }

    #[test]
    fn containerd_stays_in_the_node_directory() {
        let text = containerd_config(&paths());
        assert!(text.contains("restrict_oom_score_adj = true"));
        assert!(text.contains("root = \"/state/kubelet/kn-1/containerd/root\""));
        assert!(text.contains("state = \"/state/kubelet/kn-1/containerd/state\""));
        assert!(text.contains("Root = \"/state/kubelet/kn-1/containerd/runc\""));
        assert!(!text.contains("/var/lib/containerd"));
        assert!(!text.contains("/run/containerd"));
        assert!(!text.contains("/etc/containerd"));
    }

    #[test]
    fn node_ip_skips_taken_addresses_and_stays_in_its_range() {
        use std::net::Ipv4Addr;
        assert_eq!(choose_node_ip(&[]), Some(Ipv4Addr::new(10, 214, 0, 1)));
        assert_eq!(
            choose_node_ip(&[Ipv4Addr::new(10, 214, 0, 1), Ipv4Addr::new(10, 214, 0, 2)]),
            Some(Ipv4Addr::new(10, 214, 0, 3))
        );
        let all: Vec<Ipv4Addr> = (1..=254).map(|d| Ipv4Addr::new(10, 214, 0, d)).collect();
        assert_eq!(choose_node_ip(&all), None);
        let t = nft_table(Ipv4Addr::new(10, 214, 0, 7));
        assert!(t.contains("table inet ironvirt-kubelet-10-214-0-7"));
        assert!(t.contains("iifname != \"lo\" ip daddr 10.214.0.7 drop"));
    }

    #[test]
    fn cni_config_is_json_with_only_loopback() {
        let v: serde_json::Value = serde_json::from_str(cni_config()).expect("JSON");
        assert_eq!(v["plugins"][0]["type"], "loopback");
        assert_eq!(v["plugins"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn saved_sysctls_round_trip_and_refuse_junk() {
        let got = parse_saved_sysctls(
            "vm.overcommit_memory 0\nkernel.panic 0\nfoo.bar 1\nkernel.panic_on_oops x\n\n",
        );
        assert_eq!(
            got,
            vec![
                ("vm.overcommit_memory".to_owned(), "0".to_owned()),
                ("kernel.panic".to_owned(), "0".to_owned())
            ]
        );
    }
}
