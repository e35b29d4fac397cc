//! `ironvirt-operator`: the ironvirt controllers (VirtualMachine, VMI placement,
//! VMI ReplicaSet), leader-elected, with health and metrics on their own port.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ironvirt_crds::duration::parse_duration;
use ironvirt_crds::wire;
use ironvirt_operator::context::{Context, Settings};
use ironvirt_operator::controller::{self, Health};
use ironvirt_operator::leader::{Election, Elector};

#[derive(Debug, Parser)]
#[command(
    name = "ironvirt-operator",
    version,
    about = "ironvirt's controllers: VirtualMachine, VMI placement, VMI ReplicaSet"
)]
struct Args {
    /// Reconcile only this namespace (default: all namespaces).
    #[arg(long)]
    namespace: Option<String>,
    /// Namespace of the handlers' per-node Leases.
    #[arg(long, default_value = wire::HANDLER_LEASE_NAMESPACE)]
    node_lease_namespace: String,
    /// A node whose handler Lease is older than this is unresponsive.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    node_lease_timeout: Duration,
    /// Place VMIs only on nodes with these labels (k=v,k2=v2).
    #[arg(long)]
    node_label_selector: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "127.0.0.1:9464")]
    metrics_addr: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ironvirt-operator")]
    leader_election_name: String,
    /// This replica's identity (default: hostname and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a silent leader keeps the lease.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    lease_duration: Duration,
    /// How often the leader renews the lease.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    renew_interval: Duration,
    /// The nodes' registry configuration (YAML: mirrors, plain HTTP, CAs;
    /// the handler's `--registries-config` format), used to read the labels
    /// of containerDisk images for `inferFromVolume`.
    #[arg(long)]
    registries_config: Option<std::path::PathBuf>,
    /// The evictionStrategy of VMIs that set none: None (KubeVirt's
    /// default), LiveMigrate, LiveMigrateIfPossible or External.
    #[arg(long, default_value = "None", value_parser = parse_eviction_strategy)]
    default_eviction_strategy: ironvirt_crds::vmi::EvictionStrategy,
    #[command(flatten)]
    certs: ironvirt_operator::certs::CertArgs,
}

fn parse_eviction_strategy(s: &str) -> Result<ironvirt_crds::vmi::EvictionStrategy, String> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
        format!(
            "{s:?} is not an evictionStrategy: None, LiveMigrate, LiveMigrateIfPossible or External"
        )
    })
}

// One worker thread: the operator's work is I/O-bound and light, and each
// extra thread that allocates gets a malloc arena of its own, which showed as
// resident memory at 1000 VMs (docs/benchmarks.md).
#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let registries = match &args.registries_config {
        Some(path) => ironvirt_images::Registries::load(path)
            .map_err(anyhow::Error::msg)
            .context("--registries-config")?,
        None => ironvirt_images::Registries::default(),
    };
    let client = ironvirt_crds::client::bounded(
        kube::Config::infer().await?,
        ironvirt_operator::controller::API_LIMITS,
    )?;
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let settings = Settings {
        namespace: args.namespace.clone(),
        lease_namespace: args.node_lease_namespace.clone(),
        node_lease_timeout: args.node_lease_timeout,
        node_label_selector: args.node_label_selector.clone(),
        registries,
        default_eviction_strategy: args.default_eviction_strategy,
    };
    let health = Health::default();
    let ctx = Arc::new(Context::new(
        client.clone(),
        health.metrics.clone(),
        settings,
        Some(identity.clone()),
    ));
    tokio::spawn(controller::serve_health(args.metrics_addr, health.clone()));

    controller::wait_for_crds(&client).await;
    health.ready.store(true, Ordering::Relaxed);

    let mut elector = Elector::new(
        client.clone(),
        Election {
            namespace: args.leader_election_namespace.clone(),
            name: args.leader_election_name.clone(),
            identity,
            lease_duration: args.lease_duration,
            renew_interval: args.renew_interval,
        },
    );
    // Lead, and when leadership is lost (another replica took the lease, or
    // kube-apiserver could not be reached for a whole lease duration), stop
    // the controllers at once, rather than act on stale state, and stand for
    // election again: an outage of the control plane needs no restart.
    loop {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown_signal() => return Ok(()),
        }
        // The certificate manager runs on the leader only; it is idempotent, so
        // stopping it anywhere is safe.
        let certs = args.certs.manage_certs.then(|| {
            tokio::spawn(ironvirt_operator::certs::run(
                client.clone(),
                args.certs.config(),
            ))
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut controllers = tokio::spawn(controller::run_controllers(ctx.clone(), async move {
            let _ = stop_rx.await;
        }));
        let lost = tokio::select! {
            _ = elector.hold() => true,
            _ = shutdown_signal() => false,
            // The controllers never end on their own; if they do, say so and
            // step down, so that a standby (or this process, again) takes over.
            r = &mut controllers => {
                tracing::error!(result = ?r.map_err(|e| e.to_string()), "the controllers ended");
                true
            }
        };
        let _ = stop_tx.send(());
        if let Some(certs) = certs {
            certs.abort();
        }
        if lost {
            controllers.abort();
            let _ = controllers.await;
            tracing::warn!("lost leadership: controllers stopped; standing for election again");
            continue;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
        elector.release().await;
        tracing::info!("stopped");
        return Ok(());
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
