//! `ironvirt-handler`: the ironvirt node agent.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use ironvirt_crds::validate::{HostDiskPolicy, VolumePolicy};
use ironvirt_crds::wire::API_CLIENT_CN;
use ironvirt_handler::app::{self, Config};
use ironvirt_handler::domxml::DomainType;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Accel {
    /// KVM when /dev/kvm exists, else TCG.
    Auto,
    Kvm,
    /// QEMU's TCG emulation (no hardware virtualisation).
    Qemu,
}

/// The ironvirt node agent: runs the VMIs placed on this node as libvirt domains.
#[derive(Debug, Parser)]
#[command(name = "ironvirt-handler", version, about)]
struct Args {
    /// The node this handler serves.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// libvirt connection URI.
    #[arg(long, default_value = "qemu:///system")]
    libvirt_uri: String,
    /// Hypervisor: kvm, qemu (TCG) or auto.
    #[arg(long, value_enum, default_value = "auto")]
    domain_type: Accel,
    /// Per-VMI files (emptyDisk images, cloud-init disks, NVRAM).
    #[arg(long, default_value = "/var/lib/ironvirt/handler")]
    state_dir: PathBuf,
    /// Create the Node object and post kubelet-style heartbeats (test bed only;
    /// on a real cluster the kubelet does this).
    #[arg(long)]
    register_node: bool,
    /// The Namespace that owns this handler's Lease (kube-node-lease/
    /// ironvirt-handler-<node>), so that uninstalling ironvirt (deleting its
    /// namespace) removes the Lease too. deploy/ passes ironvirt's namespace.
    #[arg(long)]
    lease_owner_namespace: Option<String>,
    /// Labels of a Node created by --register-node, as key=value,...
    #[arg(long, value_delimiter = ',')]
    node_labels: Vec<String>,
    /// Address of the stream server (console, VNC, power operations).
    #[arg(long, default_value = "0.0.0.0:8186")]
    listen: SocketAddr,
    /// URL published for the stream server; defaults to https://<listen address>.
    #[arg(long)]
    advertise_url: Option<String>,
    /// Where this node's libvirtd finds its TLS client certificate when it
    /// opens another node's libvirtd for a live migration (libvirt's
    /// `pkipath`: cacert.pem, clientcert.pem, clientkey.pem); libvirt's
    /// default (/etc/pki) when unset. The migration goes to
    /// qemu+tls://<target node address>/system.
    #[arg(long)]
    migration_pki_dir: Option<PathBuf>,
    /// Bandwidth limit of each live migration out of this node, in MiB/s
    /// (KubeVirt's bandwidthPerMigration; 0: unlimited).
    #[arg(long, default_value_t = 0)]
    migration_bandwidth_mib: u64,
    /// Serving certificate of the stream server (PEM).
    #[arg(long)]
    tls_cert: PathBuf,
    /// Its key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// CA that signs the API server's client certificate (PEM).
    #[arg(long)]
    client_ca: PathBuf,
    /// The only client certificate CN served.
    #[arg(long, default_value = API_CLIENT_CN)]
    allowed_client_cn: String,
    /// Health endpoint address.
    #[arg(long, default_value = "127.0.0.1:8187")]
    health_addr: SocketAddr,
    /// Re-check every VMI this often, besides events (seconds).
    #[arg(long, default_value_t = 30)]
    resync_seconds: u64,
    /// Renew the node heartbeat Lease this often (seconds).
    #[arg(long, default_value_t = 10)]
    renew_seconds: u64,
    /// The IPv4 range this node gives its VMIs' network namespaces, a /30 each
    /// (the VMI's address is the second address of its /30).
    #[arg(long, default_value = "10.250.0.0/16")]
    guest_network_range: String,
    /// Where the VMIs' passt sockets live (a directory only root can write).
    #[arg(long, default_value = "/run/ironvirt/net")]
    guest_network_dir: PathBuf,
    /// The node's containerDisk image cache (default: <state-dir>/image-cache).
    /// libvirtd must be able to read it: the VMIs' overlays refer to it.
    #[arg(long)]
    image_cache_dir: Option<PathBuf>,
    /// The most bytes of disks the image cache keeps; images no VMI uses are
    /// removed, least recently used first, when a VMI goes and at start.
    #[arg(long, value_name = "QUANTITY", default_value = "20Gi", value_parser = byte_quantity)]
    image_cache_size: u64,
    /// The node's registry configuration (YAML: mirrors, plain HTTP, CAs per
    /// registry host); none: every registry over HTTPS, no mirror.
    #[arg(long)]
    registries_config: Option<PathBuf>,
    /// Where QEMU serves the VMIs' serial consoles, a UNIX socket each that
    /// the handler reads (a directory only root can write).
    #[arg(long, default_value = "/run/ironvirt/console")]
    console_dir: PathBuf,
    /// The passt binary that connects a guest NIC to its VMI's namespace.
    #[arg(long, default_value = "passt")]
    passt: PathBuf,
    /// Start passt in the node's mount namespace and cgroup (nsenter into
    /// PID 1's), so guest networks survive a restart of the handler's pod.
    /// Needs hostPID, and `ip` and `passt` installed on the node.
    #[arg(long)]
    passt_on_host: bool,
    /// The node process whose mount namespace and cgroup --passt-on-host
    /// enters: PID 1, the node's init, unless that cannot be entered (the
    /// test bed's machines refuse even root access to their PID 1's
    /// namespaces; there the bed names its kubelet node's process).
    #[arg(long, default_value_t = 1)]
    host_pid: u32,
    /// Turns hostDisk on (KubeVirt's HostDisk feature gate), as ironvirt-api's
    /// flag of the same name: images must lie in <DIR>/<namespace>/ of the
    /// VMI, without symbolic links. Absent: hostDisk is off. The directory must
    /// be mounted into the handler at the path it has on the host.
    #[arg(long, value_name = "DIR", value_parser = host_disk_root)]
    host_disk_root: Option<PathBuf>,
    /// The largest emptyDisk or DiskOrCreate hostDisk capacity (a quantity; 0: no limit).
    #[arg(long, value_name = "QUANTITY", default_value = "1Ti", value_parser = byte_quantity)]
    max_volume_size: u64,
    /// The largest sum of a VMI's emptyDisk and DiskOrCreate capacities (0: no limit).
    #[arg(long, value_name = "QUANTITY", default_value = "4Ti", value_parser = byte_quantity)]
    max_vmi_volume_size: u64,
}

use ironvirt_crds::validate::hostdisk::{
    parse_byte_quantity as byte_quantity, parse_host_disk_root as host_disk_root,
};

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut node_labels = BTreeMap::new();
    for kv in args.node_labels.iter().filter(|s| !s.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--node-labels: {kv:?} is not key=value"))?;
        node_labels.insert(k.to_owned(), v.to_owned());
    }
    let domain_type = match args.domain_type {
        Accel::Kvm => DomainType::Kvm,
        Accel::Qemu => DomainType::Qemu,
        Accel::Auto if std::path::Path::new("/dev/kvm").exists() => DomainType::Kvm,
        Accel::Auto => DomainType::Qemu,
    };
    let state_dir = args.state_dir.clone();
    let image_cache_dir = args.image_cache_dir.clone();
    let cfg = Config {
        node: args.node_name,
        libvirt_uri: args.libvirt_uri,
        domain_type,
        state_dir: state_dir.clone(),
        register_node: args.register_node,
        lease_owner_namespace: args.lease_owner_namespace,
        node_labels,
        listen: args.listen,
        advertise_url: args.advertise_url,
        migration_pki_dir: args.migration_pki_dir,
        migration_bandwidth_mib: (args.migration_bandwidth_mib > 0)
            .then_some(args.migration_bandwidth_mib),
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        client_ca: args.client_ca,
        allowed_client_cn: args.allowed_client_cn,
        health_addr: args.health_addr,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        renew_every: Duration::from_secs(args.renew_seconds.max(1)),
        guest_network_range: ironvirt_handler::guestnet::Range::parse(&args.guest_network_range)
            .context("--guest-network-range")?,
        guest_network_dir: args.guest_network_dir,
        console_dir: args.console_dir,
        image_cache_dir: image_cache_dir.unwrap_or_else(|| state_dir.join("image-cache")),
        image_cache_size: args.image_cache_size,
        registries: match &args.registries_config {
            Some(path) => ironvirt_handler::images::Registries::load(path)
                .map_err(anyhow::Error::msg)
                .context("--registries-config")?,
            None => ironvirt_handler::images::Registries::default(),
        },
        passt: args.passt,
        passt_on_host: args.passt_on_host.then_some(args.host_pid),
        volume_policy: VolumePolicy {
            host_disk: args.host_disk_root.map(|root| HostDiskPolicy { root }),
            max_volume_bytes: Some(args.max_volume_size).filter(|b| *b > 0),
            max_vmi_bytes: Some(args.max_vmi_volume_size).filter(|b| *b > 0),
        },
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::run(cfg))?;
    Ok(())
}
