//! `ironvirt-api`: the aggregated API server for subresources.kubevirt.io and
//! ironvirt's admission webhooks.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ironvirt_apiserver_subresources::admission::{
    WebhookClient, WebhookEndpoint, webhook_configurations,
};
use ironvirt_apiserver_subresources::app::{self, Config};
use ironvirt_apiserver_subresources::limits::{self, Limit, LimitsConfig};

/// ironvirt's aggregated API server (console, VNC, start/stop, …) and admission webhooks.
#[derive(Debug, Parser)]
#[command(
    name = "ironvirt-api",
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Addresses to serve on; repeat for several (e.g. 127.0.0.1:8443 and [::1]:8443).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: Vec<SocketAddr>,
    /// Serving certificate (PEM); its DNS names must include <service>.<namespace>.svc.
    #[arg(long, required = true)]
    tls_cert: Option<PathBuf>,
    /// Its key (PEM).
    #[arg(long, required = true)]
    tls_key: Option<PathBuf>,
    /// CA of the handlers' stream certificates.
    #[arg(long, required = true)]
    handler_ca: Option<PathBuf>,
    /// Client certificate presented to handlers (CN ironvirt-api).
    #[arg(long, required = true)]
    handler_client_cert: Option<PathBuf>,
    /// Its key.
    #[arg(long, required = true)]
    handler_client_key: Option<PathBuf>,
    /// Verify every handler by the name `ironvirt-handler`, the one
    /// certificate that the operator's certificate manager (and the
    /// cert-manager overlay) issues to all handlers. Then any handler holding
    /// it can answer for any node. Without it, the handler of node N must
    /// present a certificate naming `N.ironvirt-handler` (what the test bed
    /// issues).
    #[arg(long)]
    shared_handler_certificate: bool,
    /// Namespace of the handlers' Leases.
    #[arg(long, default_value = ironvirt_crds::wire::HANDLER_LEASE_NAMESPACE)]
    lease_namespace: String,
    /// Users whose VMI spec changes the webhook admits (ironvirt's operator and
    /// ironvirt-api; not the handlers, which write only status and finalizers).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "system:serviceaccount:ironvirt-system:ironvirt-operator,system:serviceaccount:ironvirt-system:ironvirt-api"
    )]
    privileged_users: Vec<String>,
    /// Plain-HTTP address of /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Turns hostDisk on (KubeVirt's HostDisk feature gate): images must lie in
    /// <DIR>/<namespace>/ of the VMI, without symbolic links. Absent: hostDisk is off.
    #[arg(long, value_name = "DIR", value_parser = host_disk_root)]
    host_disk_root: Option<PathBuf>,
    /// The largest emptyDisk or DiskOrCreate hostDisk capacity (a quantity; 0: no limit).
    #[arg(long, value_name = "QUANTITY", default_value = "1Ti", value_parser = byte_quantity)]
    max_volume_size: u64,
    /// The largest sum of a VMI's emptyDisk and DiskOrCreate capacities (0: no limit).
    #[arg(long, value_name = "QUANTITY", default_value = "4Ti", value_parser = byte_quantity)]
    max_vmi_volume_size: u64,
    /// Console and VNC streams one user may have open at once (more: 429).
    #[arg(long, default_value_t = limits::DEFAULT_STREAMS.per_user, value_parser = at_least_one)]
    max_streams_per_user: usize,
    /// Console and VNC streams open at once, all users together (more: 429).
    #[arg(long, default_value_t = limits::DEFAULT_STREAMS.total, value_parser = at_least_one)]
    max_streams: usize,
    /// Port-forward connections one user may have open at once (more: 429).
    #[arg(long, default_value_t = limits::DEFAULT_PORT_FORWARDS.per_user, value_parser = at_least_one)]
    max_port_forwards_per_user: usize,
    /// Port-forward connections open at once, all users together (more: 429).
    #[arg(long, default_value_t = limits::DEFAULT_PORT_FORWARDS.total, value_parser = at_least_one)]
    max_port_forwards: usize,
    /// Screenshots one user may have in progress at once (more: 429).
    #[arg(long, default_value_t = limits::DEFAULT_SCREENSHOTS.per_user, value_parser = at_least_one)]
    max_screenshots_per_user: usize,
    /// Screenshots in progress at once, all users together (more: 429).
    #[arg(long, default_value_t = limits::DEFAULT_SCREENSHOTS.total, value_parser = at_least_one)]
    max_screenshots: usize,
    /// The most pixels (width × height) of a screen a screenshot is taken of;
    /// each costs 4 bytes while the screenshot is taken. Larger: 413.
    #[arg(long, default_value_t = limits::DEFAULT_SCREENSHOT_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    max_screenshot_pixels: u64,
    /// Seconds a connection may take to send a request's headers, after the
    /// TLS handshake and between requests (idle keep-alive connections are
    /// closed after this long).
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    header_read_timeout: u64,
    /// Connections served at once on each --listen address; more are closed
    /// on accept.
    #[arg(long, default_value_t = 4096, value_parser = at_least_one)]
    max_connections: usize,
}

/// A count of at least one.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1")),
    }
}

use ironvirt_crds::validate::hostdisk::{
    parse_byte_quantity as byte_quantity, parse_host_disk_root as host_disk_root,
};

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the Validating- and MutatingWebhookConfiguration (a JSON List for
    /// `kubectl apply -f -`) that register the webhooks with kube-apiserver.
    WebhookConfigurations {
        /// Base URL kube-apiserver calls, e.g. https://127.0.0.1:8443 (the test bed).
        #[arg(long, conflicts_with = "service", required_unless_present = "service")]
        url: Option<String>,
        /// The Service kube-apiserver calls, as namespace/name[:port].
        #[arg(long)]
        service: Option<String>,
        /// PEM file of the CA that signed the serving certificate.
        #[arg(long)]
        ca_bundle: PathBuf,
    },
}

/// `namespace/name[:port]` → a Service endpoint.
fn parse_service(s: &str) -> anyhow::Result<WebhookEndpoint> {
    let (namespace, rest) = s
        .split_once('/')
        .with_context(|| format!("--service {s:?}: expected namespace/name[:port]"))?;
    let (name, port) = match rest.split_once(':') {
        Some((name, port)) => (
            name,
            Some(
                port.parse::<i32>()
                    .with_context(|| format!("--service {s:?}: bad port"))?,
            ),
        ),
        None => (rest, None),
    };
    anyhow::ensure!(
        !namespace.is_empty() && !name.is_empty(),
        "--service {s:?}: expected namespace/name[:port]"
    );
    Ok(WebhookEndpoint::Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        port,
    })
}

fn print_webhook_configurations(
    url: Option<String>,
    service: Option<String>,
    ca_bundle: PathBuf,
) -> anyhow::Result<()> {
    let endpoint = match (url, service) {
        (Some(url), _) => WebhookEndpoint::Url(url),
        (None, Some(service)) => parse_service(&service)?,
        (None, None) => anyhow::bail!("give --url or --service"),
    };
    let ca_bundle = std::fs::read(&ca_bundle)
        .with_context(|| format!("reading --ca-bundle {}", ca_bundle.display()))?;
    let (validating, mutating) = webhook_configurations(&WebhookClient {
        endpoint,
        ca_bundle,
    });
    let mut items = Vec::new();
    for (kind, obj) in [
        (
            "ValidatingWebhookConfiguration",
            serde_json::to_value(&validating)?,
        ),
        (
            "MutatingWebhookConfiguration",
            serde_json::to_value(&mutating)?,
        ),
    ] {
        let mut obj = obj;
        if let Some(map) = obj.as_object_mut() {
            map.insert(
                "apiVersion".into(),
                "admissionregistration.k8s.io/v1".into(),
            );
            map.insert("kind".into(), kind.into());
        }
        items.push(obj);
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    println!("{}", serde_json::to_string_pretty(&list)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::WebhookConfigurations {
        url,
        service,
        ca_bundle,
    }) = args.command
    {
        return print_webhook_configurations(url, service, ca_bundle);
    }
    // clap enforces these without a subcommand.
    let (
        Some(tls_cert),
        Some(tls_key),
        Some(handler_ca),
        Some(handler_client_cert),
        Some(handler_client_key),
    ) = (
        args.tls_cert,
        args.tls_key,
        args.handler_ca,
        args.handler_client_cert,
        args.handler_client_key,
    )
    else {
        anyhow::bail!(
            "--tls-cert, --tls-key, --handler-ca, --handler-client-cert and --handler-client-key are required"
        );
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = Config {
        listen: args.listen,
        tls_cert,
        tls_key,
        handler_ca,
        handler_client_cert,
        handler_client_key,
        shared_handler_certificate: args.shared_handler_certificate,
        lease_namespace: args.lease_namespace,
        privileged_users: args.privileged_users,
        metrics_addr: args.metrics_addr,
        volume_policy: ironvirt_crds::validate::VolumePolicy {
            host_disk: args
                .host_disk_root
                .map(|root| ironvirt_crds::validate::HostDiskPolicy { root }),
            max_volume_bytes: Some(args.max_volume_size).filter(|b| *b > 0),
            max_vmi_bytes: Some(args.max_vmi_volume_size).filter(|b| *b > 0),
        },
        limits: LimitsConfig {
            streams: Limit {
                per_user: args.max_streams_per_user,
                total: args.max_streams,
            },
            screenshots: Limit {
                per_user: args.max_screenshots_per_user,
                total: args.max_screenshots,
            },
            port_forwards: Limit {
                per_user: args.max_port_forwards_per_user,
                total: args.max_port_forwards,
            },
            screenshot_pixels: args.max_screenshot_pixels,
        },
        header_read_timeout: std::time::Duration::from_secs(args.header_read_timeout),
        max_connections: args.max_connections,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::run(cfg))?;
    Ok(())
}
