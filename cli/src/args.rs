//! The command line: global flags as kubectl has them, and virtctl's commands.

use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use ironvirt_crds::duration::parse_duration;

/// The name `kubectl` runs this binary under as a plugin (`kubectl ironctl …`).
pub const PLUGIN_BINARY: &str = "kubectl-ironctl";

/// ironctl: consoles, VNC and power operations for ironvirt (and KubeVirt) VMs.
///
/// It talks only to kube-apiserver, with the credentials of your kubeconfig,
/// so RBAC and audit apply as they do for kubectl.
#[derive(Debug, Parser)]
#[command(name = "ironctl", version, about, long_about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes, as kubectl names them.
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace (default: the context's namespace, else "default").
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the serial console of a VMI (Ctrl+] disconnects).
    Console(ConsoleArgs),
    /// Open a local VNC proxy to a VMI and start a viewer; or take a screenshot.
    Vnc(VncArgs),
    /// Start a VM.
    Start(StartArgs),
    /// Stop a VM.
    Stop(StopArgs),
    /// Restart a VM (its VMI is stopped and a new one started).
    Restart(StopArgs),
    /// Pause a VMI (its vCPUs stop; memory and devices stay).
    Pause(VmiTarget),
    /// Unpause a paused VMI.
    Unpause(VmiTarget),
    /// Ask the guest to reboot (ACPI).
    #[command(name = "soft-reboot")]
    SoftReboot(VmiTarget),
    /// Reset a VMI at once, like pressing its reset button.
    Reset(VmiTarget),
    /// Live-migrate a running VM to another node.
    Migrate(MigrateArgs),
    /// Cancel a VM's unfinished live migration.
    #[command(name = "migrate-cancel")]
    MigrateCancel(MigrateCancelArgs),
    /// Drain an ironvirt node: cordon it, add the kubevirt.io/drain taint, and
    /// wait until its VMIs left by their evictionStrategy.
    Drain(DrainArgs),
    /// Let a cordoned or drained node take VMIs again.
    Uncordon(UncordonArgs),
    /// Forward local ports to ports of a VM's guest (TYPE/NAME[.NAMESPACE] [LOCAL:]REMOTE...).
    #[command(name = "port-forward")]
    PortForward(PortForwardArgs),
    /// Open an SSH session to a VM's guest with the system's ssh, through port-forward.
    Ssh(SshArgs),
    /// Copy files to or from a VM's guest with the system's scp, through port-forward.
    Scp(ScpArgs),
    /// Print manifests (YAML) built from flags, ready for kubectl apply or a GitOps repo.
    #[command(subcommand)]
    Create(CreateCommand),
    /// Print a VM with its instancetype and preference expanded into its template.
    Expand(ExpandArgs),
    /// Serve a web console on this machine: VMs, serial consoles and screens in the browser, with your kubeconfig identity.
    Ui(UiArgs),
    /// Print the client's and the server's versions.
    Version(VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
}

#[derive(Debug, Args)]
pub struct UiArgs {
    /// The loopback address to listen on (the UI carries your credentials over
    /// plain HTTP, so only 127.0.0.1, ::1 or localhost).
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// The port to listen on (0: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Print the URL but do not open a browser.
    #[arg(long)]
    pub no_browser: bool,
}

#[derive(Debug, Args)]
pub struct PortForwardArgs {
    /// vm/NAME or vmi/NAME, optionally NAME.NAMESPACE.
    #[arg(value_name = "TYPE/NAME")]
    pub target: String,
    /// [LOCAL:]REMOTE: a local TCP port (0: a free one) and the guest's port.
    #[arg(value_name = "[LOCAL:]REMOTE")]
    pub ports: Vec<String>,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Forward stdin and stdout instead of listening (one port), for ssh's
    /// ProxyCommand: ssh -o ProxyCommand='ironctl port-forward --stdio vm/NAME.NS 22' user@vm
    #[arg(long)]
    pub stdio: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// [USER@]vm/NAME or [USER@]vmi/NAME, optionally NAME.NAMESPACE.
    #[arg(value_name = "[USER@]TYPE/NAME")]
    pub target: String,
    /// The private key (ssh's -i).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// Run this command instead of a shell.
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// The guest's SSH port.
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,
    /// The user, when the target names none.
    #[arg(short = 'l', long)]
    pub username: Option<String>,
    /// More options for ssh (repeatable), e.g. -t '-o StrictHostKeyChecking=no'.
    #[arg(short = 't', long, value_name = "OPTS", allow_hyphen_values = true)]
    pub local_ssh_opts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ScpArgs {
    /// A local path, or [USER@]TYPE/NAME[.NAMESPACE]:PATH.
    pub source: String,
    /// A local path, or [USER@]TYPE/NAME[.NAMESPACE]:PATH.
    pub destination: String,
    /// The private key (scp's -i).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity_file: Option<PathBuf>,
    /// Copy directories recursively.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// The guest's SSH port.
    #[arg(short = 'P', long, default_value_t = 22)]
    pub port: u16,
    /// More options for scp (repeatable), e.g. -t '-o StrictHostKeyChecking=no'.
    #[arg(short = 't', long, value_name = "OPTS", allow_hyphen_values = true)]
    pub local_ssh_opts: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    /// The VirtualMachineInstance (a VM's VMI has the VM's name).
    #[arg(value_name = "VMI")]
    pub vmi: String,
    /// How long to wait for the VMI to be running: seconds, or a number with
    /// ms, s, m, h or d (virtctl's --timeout counts minutes). 0 does not wait.
    /// While waiting, each new state of the VMI's image pull (Pulling with
    /// the bytes so far, ErrImagePull, ImagePullBackOff) is a line on stderr.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct VncArgs {
    #[command(subcommand)]
    pub command: Option<VncCommand>,
    /// The VirtualMachineInstance.
    #[arg(value_name = "VMI", required = true)]
    pub vmi: Option<String>,
    /// Local port of the proxy on 127.0.0.1 (0: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Only run the proxy: print {"port":N} and launch no viewer.
    #[arg(long)]
    pub proxy_only: bool,
    /// Keep an existing VNC session instead of taking it over (fails when one is open).
    #[arg(long)]
    pub preserve_session: bool,
}

#[derive(Debug, Subcommand)]
pub enum VncCommand {
    /// Save a screenshot of the VMI's screen as PNG.
    Screenshot(ScreenshotArgs),
}

#[derive(Debug, Args)]
pub struct ScreenshotArgs {
    /// The VirtualMachineInstance.
    #[arg(value_name = "VMI")]
    pub vmi: String,
    /// Where to write the PNG; "-" writes it to standard output.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: String,
    /// Move the mouse pointer first, to wake a screen saver.
    #[arg(short = 'm', long)]
    pub move_cursor: bool,
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The VirtualMachine.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Start the VM with its vCPUs paused.
    #[arg(long)]
    pub paused: bool,
    /// Check the request on the server without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The VirtualMachine.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// Seconds the guest gets to shut down before it is powered off (0 needs --force).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i64).range(0..))]
    pub grace_period: Option<i64>,
    /// Power the VMI off at once (grace period 0).
    #[arg(long)]
    pub force: bool,
    /// Check the request on the server without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The VirtualMachine.
    #[arg(value_name = "VM")]
    pub vm: String,
    /// A node label KEY=VALUE the target node must carry, on top of the VMI's
    /// node selector; repeatable, or comma-separated as virtctl takes it.
    #[arg(
        long,
        visible_alias = "addedNodeSelector",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub added_node_selector: Vec<String>,
    /// Check the request on the server without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The Node.
    #[arg(value_name = "NODE")]
    pub node: String,
    /// How long to wait for the VMIs to leave.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct UncordonArgs {
    /// The Node.
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Args)]
pub struct MigrateCancelArgs {
    /// The VirtualMachine (its VMI has its name).
    #[arg(value_name = "VM")]
    pub vm: String,
}

/// `NAME`, or virtctl's `vm NAME` / `vmi NAME`.
#[derive(Debug, Args)]
pub struct VmiTarget {
    /// The VMI's name; or `vm`/`vmi` followed by the name.
    #[arg(value_name = "VMI", num_args = 1..=2, required = true)]
    pub words: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Print a VirtualMachine manifest.
    Vm(CreateVmArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CreateVmArgs {
    /// The VM's name (default: vm- and five random characters).
    #[arg(long)]
    pub name: Option<String>,
    /// Guest memory, as a Kubernetes quantity (default 512Mi; with
    /// --instancetype, the instancetype's).
    #[arg(long)]
    pub memory: Option<String>,
    /// vCPUs: a number of cores, or cores:N,sockets:N,threads:N.
    #[arg(long, value_name = "CPU")]
    pub cpu: Option<String>,
    /// Always, RerunOnFailure, Once, Manual or Halted.
    #[arg(long, default_value = "Always")]
    pub run_strategy: String,
    /// Seconds the guest gets to shut down when it is stopped.
    #[arg(long, default_value_t = 180, value_parser = clap::value_parser!(i64).range(0..))]
    pub termination_grace_period: i64,
    /// A containerDisk volume: src:IMAGE[,name:NAME][,bootorder:N]. Repeatable.
    #[arg(long, value_name = "PARAMS")]
    pub volume_containerdisk: Vec<String>,
    /// A hostDisk volume: path:/ABS/PATH[,name:NAME][,type:Disk|DiskOrCreate]
    /// [,capacity:SIZE][,readonly:true][,bootorder:N]. Repeatable.
    #[arg(long, value_name = "PARAMS")]
    pub volume_hostdisk: Vec<String>,
    /// Cloud-init user-data, base64-encoded (as virtctl takes it).
    #[arg(
        long,
        value_name = "BASE64",
        conflicts_with = "cloud_init_user_data_file"
    )]
    pub cloud_init_user_data: Option<String>,
    /// Cloud-init user-data from a file.
    #[arg(long, value_name = "FILE")]
    pub cloud_init_user_data_file: Option<PathBuf>,
    /// The instancetype that sizes the VM: [KIND/]NAME, a cluster instancetype
    /// unless KIND is virtualmachineinstancetype.
    #[arg(long, value_name = "[KIND/]NAME")]
    pub instancetype: Option<String>,
    /// The preference for the VM's defaults: [KIND/]NAME, a cluster
    /// preference unless KIND is virtualmachinepreference.
    #[arg(long, value_name = "[KIND/]NAME")]
    pub preference: Option<String>,
}

/// `ironctl expand`: which VM, and how to print it.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["vm", "file"])))]
pub struct ExpandArgs {
    /// A VirtualMachine in the cluster (expanded as its VM controller would).
    #[arg(long, value_name = "NAME")]
    pub vm: Option<String>,
    /// A VirtualMachine manifest (YAML or JSON; "-" reads standard input),
    /// expanded with the cluster's current instancetypes and preferences.
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// yaml or json.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
}

/// How a printed object is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print the client's version only.
    #[arg(short = 'c', long)]
    pub client: bool,
}

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The name to show in usage: `kubectl ironctl` when run as the kubectl plugin.
pub fn display_name(argv0: Option<&std::ffi::OsStr>) -> &'static str {
    let base = argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|f| f.to_str())
        .unwrap_or("ironctl");
    if base == PLUGIN_BINARY {
        "kubectl ironctl"
    } else {
        "ironctl"
    }
}

/// The clap command, named for how it was invoked.
pub fn command(display: &'static str) -> clap::Command {
    Cli::command().bin_name(display)
}

/// Parses the process's arguments; prints help/usage errors and exits as clap does.
pub fn parse() -> (Cli, &'static str) {
    let argv0 = std::env::args_os().next();
    let display = display_name(argv0.as_deref());
    let matches = command(display).get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => (cli, display),
        Err(e) => e.exit(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse_args(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = command("ironctl").try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        command("ironctl").debug_assert();
    }

    #[test]
    fn expand_takes_a_vm_or_a_file_and_an_output_format() {
        let cli = parse_args(&["ironctl", "expand", "--vm", "v"]).unwrap();
        let Command::Expand(a) = cli.command else {
            panic!("not expand")
        };
        assert_eq!(
            (a.vm.as_deref(), a.file.is_none(), a.output),
            (Some("v"), true, OutputFormat::Yaml)
        );
        let cli = parse_args(&["ironctl", "expand", "-f", "vm.yaml", "-o", "json"]).unwrap();
        let Command::Expand(a) = cli.command else {
            panic!("not expand")
        };
        assert_eq!(
            (a.file, a.output),
            (Some(PathBuf::from("vm.yaml")), OutputFormat::Json)
        );
        assert!(parse_args(&["ironctl", "expand"]).is_err());
        assert!(parse_args(&["ironctl", "expand", "--vm", "v", "--file", "f"]).is_err());
        assert!(parse_args(&["ironctl", "expand", "--vm", "v", "-o", "wide"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(5 * 86_400)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse_args(&["ironctl", "console", "x", "-n", "ns", "--context", "c"]).unwrap();
        assert_eq!(cli.global.namespace.as_deref(), Some("ns"));
        assert_eq!(cli.global.context.as_deref(), Some("c"));
        let cli = parse_args(&["ironctl", "--kubeconfig", "/k", "start", "vm1"]).unwrap();
        assert_eq!(cli.global.kubeconfig, Some(PathBuf::from("/k")));
    }

    #[test]
    fn vnc_takes_a_vmi_or_the_screenshot_command() {
        let cli = parse_args(&["ironctl", "vnc", "--proxy-only", "v"]).unwrap();
        let Command::Vnc(v) = cli.command else {
            panic!("not vnc")
        };
        assert!(v.proxy_only && v.command.is_none());
        assert_eq!(v.vmi.as_deref(), Some("v"));
        let cli = parse_args(&["ironctl", "vnc", "screenshot", "v", "-f", "-"]).unwrap();
        let Command::Vnc(v) = cli.command else {
            panic!("not vnc")
        };
        assert!(matches!(v.command, Some(VncCommand::Screenshot(ref s)) if s.file == "-"));
        assert!(parse_args(&["ironctl", "vnc"]).is_err());
        assert!(parse_args(&["ironctl", "vnc", "screenshot", "v"]).is_err());
    }

    #[test]
    fn pause_takes_virtctl_forms() {
        for args in [
            &["ironctl", "pause", "x"][..],
            &["ironctl", "pause", "vm", "x"],
            &["ironctl", "pause", "vmi", "x"],
        ] {
            assert!(parse_args(args).is_ok(), "{args:?}");
        }
        assert!(parse_args(&["ironctl", "pause", "a", "b", "c"]).is_err());
    }

    #[test]
    fn migrate_takes_node_selectors_repeated_or_comma_separated() {
        let cli = parse_args(&[
            "ironctl",
            "migrate",
            "v",
            "--added-node-selector",
            "a=1,b=2",
            "--addedNodeSelector",
            "c=3",
            "--dry-run",
        ])
        .unwrap();
        let Command::Migrate(m) = cli.command else {
            panic!("not migrate")
        };
        assert_eq!(m.vm, "v");
        assert_eq!(m.added_node_selector, ["a=1", "b=2", "c=3"]);
        assert!(m.dry_run);
        let cli = parse_args(&["ironctl", "migrate-cancel", "v"]).unwrap();
        assert!(matches!(cli.command, Command::MigrateCancel(ref c) if c.vm == "v"));
        assert!(parse_args(&["ironctl", "migrate"]).is_err());
    }

    #[test]
    fn grace_period_is_not_negative() {
        assert!(parse_args(&["ironctl", "stop", "v", "--grace-period", "-1"]).is_err());
        assert!(parse_args(&["ironctl", "stop", "v", "--grace-period", "5"]).is_ok());
    }

    #[test]
    fn the_plugin_name_is_recognised() {
        use std::ffi::OsStr;
        assert_eq!(
            display_name(Some(OsStr::new("/usr/bin/kubectl-ironctl"))),
            "kubectl ironctl"
        );
        assert_eq!(display_name(Some(OsStr::new("./ironctl"))), "ironctl");
        assert_eq!(display_name(None), "ironctl");
    }
}
