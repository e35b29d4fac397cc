//! `ironctl`: a virtctl-like CLI for ironvirt.
#![forbid(unsafe_code)]

use clap::Parser;

/// a virtctl-like CLI for ironvirt.
#[derive(Debug, Parser)]
#[command(name = "ironctl", version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    anyhow::bail!("ironctl is not built yet: its issue (ironctl) is still open")
}
