//! `ironctl`: a virtctl-like CLI for ironvirt. It reaches VMs only through
//! kube-apiserver, with the user's kubeconfig: the `subresources.kubevirt.io`
//! API for consoles, VNC and power operations, and `kubevirt.io` for reading
//! VMIs.
#![forbid(unsafe_code)]

pub mod args;
pub mod client;
pub mod console;
pub mod create;
pub mod drain;
pub mod error;
pub mod expand;
pub mod migrate;
pub mod portforward;
pub mod power;
pub mod relay;
pub mod ssh;
pub mod status;
pub mod terminal;
pub mod ui;
pub mod version;
pub mod vmi;
pub mod vnc;

use std::time::Duration;

use args::{Cli, Command, CreateCommand, VncCommand};
pub use error::{Error, Result};

/// Runs a parsed command line. `display` is the name to use in completion
/// scripts (`ironctl`, or `kubectl ironctl` as a plugin).
pub fn run(cli: Cli, display: &'static str) -> Result<()> {
    // Commands that need no cluster.
    match &cli.command {
        Command::Create(CreateCommand::Vm(a)) => return create::run(a),
        Command::Completion(a) => {
            let name = display.replace(' ', "-");
            let mut cmd = args::command(display);
            let mut script = Vec::new();
            clap_complete::generate(a.shell, &mut cmd, name, &mut script);
            return out(&String::from_utf8_lossy(&script));
        }
        Command::Version(v) if v.client => {
            return outln(&version::client_line());
        }
        _ => {}
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Local(format!("cannot start the async runtime: {e}")))?;
    let result = rt.block_on(async {
        let ctx = client::connect(&cli.global).await?;
        let ctx = &ctx;
        match &cli.command {
            Command::Console(a) => console::run(ctx, a).await,
            Command::Vnc(a) => match (&a.command, &a.vmi) {
                (Some(VncCommand::Screenshot(s)), _) => vnc::screenshot(ctx, s).await,
                (None, Some(vmi)) => vnc::proxy(ctx, a, vmi).await,
                (None, None) => Err(Error::Usage("ironctl vnc needs a VMI".into())),
            },
            Command::PortForward(a) => portforward::run(ctx, a).await,
            Command::Ssh(a) => ssh::ssh(a, &cli.global, &ctx.namespace).await,
            Command::Scp(a) => ssh::scp(a, &cli.global, &ctx.namespace).await,
            Command::Start(a) => power::start(ctx, a).await,
            Command::Stop(a) => power::stop(ctx, power::VmOp::Stop, a).await,
            Command::Restart(a) => power::stop(ctx, power::VmOp::Restart, a).await,
            Command::Pause(t) => power::vmi_op(ctx, power::VmiOp::Pause, t).await,
            Command::Unpause(t) => power::vmi_op(ctx, power::VmiOp::Unpause, t).await,
            Command::SoftReboot(t) => power::vmi_op(ctx, power::VmiOp::SoftReboot, t).await,
            Command::Reset(t) => power::vmi_op(ctx, power::VmiOp::Reset, t).await,
            Command::Migrate(a) => migrate::migrate(ctx, a).await,
            Command::MigrateCancel(a) => migrate::cancel(ctx, a).await,
            Command::Drain(a) => drain::drain(ctx, a).await,
            Command::Uncordon(a) => drain::uncordon(ctx, a).await,
            Command::Expand(a) => expand::run(ctx, a, &cli.global).await,
            Command::Ui(a) => ui::run(ctx, a).await,
            Command::Version(v) => version::run(Some(ctx), v).await,
            Command::Create(_) | Command::Completion(_) => Ok(()),
        }
    });
    // A thread blocked reading the terminal must not hold up the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Writes `text` to standard output. A reader that went away (`ironctl … |
/// head`) is not an error worth a message.
pub fn out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::Local(format!("writing to standard output: {e}"))),
    }
}

/// `text` and a newline on standard output.
pub fn outln(text: &str) -> Result<()> {
    out(&format!("{text}\n"))
}

/// Logs go to stderr, and only when RUST_LOG asks for them: ironctl's own
/// errors are its one line, not the libraries' log records.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
