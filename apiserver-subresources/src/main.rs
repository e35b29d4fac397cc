//! `ironvirt-api`: the aggregated API server for subresources.kubevirt.io and
//! ironvirt's admission webhooks.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use ironvirt_apiserver_subresources::app::{self, Config};

/// ironvirt's aggregated API server (console, VNC, start/stop, …) and admission webhooks.
#[derive(Debug, Parser)]
#[command(name = "ironvirt-api", version, about)]
struct Args {
    /// Addresses to serve on; repeat for several (e.g. 127.0.0.1:8443 and [::1]:8443).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: Vec<SocketAddr>,
    /// Serving certificate (PEM); its DNS names must include <service>.<namespace>.svc.
    #[arg(long)]
    tls_cert: PathBuf,
    /// Its key (PEM).
    #[arg(long)]
    tls_key: PathBuf,
    /// CA of the handlers' stream certificates.
    #[arg(long)]
    handler_ca: PathBuf,
    /// Client certificate presented to handlers (CN ironvirt-api).
    #[arg(long)]
    handler_client_cert: PathBuf,
    /// Its key.
    #[arg(long)]
    handler_client_key: PathBuf,
    /// Namespace of the handlers' Leases.
    #[arg(long, default_value = "kube-node-lease")]
    lease_namespace: String,
    /// Users whose VMI spec changes the webhook admits (ironvirt's own service accounts).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "system:serviceaccount:ironvirt-system:ironvirt-operator,system:serviceaccount:ironvirt-system:ironvirt-handler,system:serviceaccount:ironvirt-system:ironvirt-api"
    )]
    privileged_users: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cfg = Config {
        listen: args.listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        handler_ca: args.handler_ca,
        handler_client_cert: args.handler_client_cert,
        handler_client_key: args.handler_client_key,
        lease_namespace: args.lease_namespace,
        privileged_users: args.privileged_users,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(app::run(cfg))?;
    Ok(())
}
