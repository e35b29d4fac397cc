//! `ironctl` (also `kubectl-ironctl`, the kubectl plugin): a virtctl-like CLI for ironvirt.
#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    ironvirt_cli::terminal::install_panic_hook();
    let (cli, display) = ironvirt_cli::args::parse();
    ironvirt_cli::init_tracing();
    match ironvirt_cli::run(cli, display) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ironvirt_cli::Error::Exit(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {}", e.line());
            ExitCode::FAILURE
        }
    }
}
