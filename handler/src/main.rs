//! `ironvirt-handler`: the ironvirt node agent.
#![forbid(unsafe_code)]

use clap::Parser;

/// the ironvirt node agent.
#[derive(Debug, Parser)]
#[command(name = "ironvirt-handler", version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    anyhow::bail!("ironvirt-handler is not built yet: its issue (handler) is still open")
}
