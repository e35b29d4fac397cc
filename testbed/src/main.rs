//! `ironvirt-testbed`: starts and stops the local test bed, and mints user
//! certificates for it.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ironvirt_testbed::controlplane::{self, Binaries, UpOptions};
use ironvirt_testbed::harness::write_user_kubeconfig;
use ironvirt_testbed::kubelet;
use ironvirt_testbed::layout::{ClusterInfo, Layout, STATE_ENV};
use ironvirt_testbed::nodes;

#[derive(Debug, Parser)]
#[command(
    name = "ironvirt-testbed",
    version,
    about = "Drive ironvirt's local test bed"
)]
struct Args {
    /// The state directory: data, logs, pids and PKI.
    #[arg(long, env = STATE_ENV, global = true)]
    state: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start etcd, kube-apiserver, kube-controller-manager and (optionally) libvirt.
    Up {
        /// Directory holding the etcd binary.
        #[arg(long, env = "IRONVIRT_ETCD_BIN")]
        etcd_bin: PathBuf,
        /// Directory holding kube-apiserver, kube-controller-manager and kubectl.
        #[arg(long, env = "IRONVIRT_K8S_BIN")]
        k8s_bin: PathBuf,
        /// Also start virtlogd and libvirtd (qemu:///system).
        #[arg(long)]
        libvirt: bool,
        /// The test guest's directory, recorded for tests.
        #[arg(long, env = "IRONVIRT_GUEST_DIR")]
        guest_dir: Option<PathBuf>,
    },
    /// Stop every process the test bed started, by its own pid.
    Down,
    /// Print what runs, and exit 1 when the control plane is down.
    Status,
    /// Start a component in the background as part of the test bed: recorded by
    /// pid, logged to <state>/logs/NAME.log, stopped by `down`.
    Spawn {
        name: String,
        /// An environment variable for the process (KEY=VALUE, repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// The program and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print a free TCP port on 127.0.0.1 (and ::1).
    FreePort,
    /// Mint the identity of the handler of NODE (its own serving certificate
    /// and kube-apiserver user), grant the handlers' group deploy/'s handler
    /// RBAC and lease policy, and print the paths as shell assignments.
    HandlerIdentity { node: String },
    /// Start node NAME in namespaces of its own (issue #18): network and
    /// mount namespaces, an address on the bed's bridge, its own virtlogd,
    /// libvirtd and ironvirt-handler (arguments after `--` go to the
    /// handler), and a forwarder of kube-apiserver's port (and
    /// --forward-port) onto its loopback. Prints shell assignments.
    NodeUp {
        name: String,
        /// The ironvirt-handler binary.
        #[arg(long)]
        handler: PathBuf,
        /// Another host port the node reaches on its 127.0.0.1 (repeatable).
        #[arg(long = "forward-port")]
        forward_ports: Vec<u16>,
        /// An environment variable for the handler (KEY=VALUE, repeatable).
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        /// More arguments for the handler, after `--`.
        #[arg(last = true)]
        handler_args: Vec<String>,
    },
    /// Stop node NAME and remove its namespaces, mounts and veth (the bridge
    /// goes with the last node).
    NodeDown { name: String },
    /// Stop every node of the bed and remove the bridge (`down` does this too).
    NodesDown,
    /// List the bed's nodes.
    Nodes,
    /// Forward ports from a network namespace's 127.0.0.1 to this
    /// namespace's 127.0.0.1 (what node-up runs for each node).
    Forward {
        /// The network namespace file (/run/netns/NAME).
        #[arg(long)]
        netns: PathBuf,
        #[arg(long = "port", required = true)]
        ports: Vec<u16>,
        /// Created once every port listens.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Start a kubelet node NAME (issue #21): kubelet with Debian's
    /// containerd and runc, registered as node NAME; waits until it is Ready
    /// and prints the node's directory. `down` (make stop) stops it.
    KubeletUp {
        name: String,
        /// The kubelet binary (hack/build-kubelet.sh prints it).
        #[arg(long, env = "IRONVIRT_KUBELET_BIN")]
        kubelet: PathBuf,
        /// kube-scheduler, which the bed runs once it has a kubelet node
        /// (default: beside kubelet, where hack/build-kubelet.sh puts it).
        #[arg(long, env = "IRONVIRT_KUBE_SCHEDULER_BIN")]
        scheduler: Option<PathBuf>,
        /// kube-apiserver calls APIServices and webhooks at their Services'
        /// endpoints (--enable-aggregator-routing), for ironvirt installed in
        /// pods. Not on the bed of `make run`: it breaks ExternalName Services.
        #[arg(long)]
        aggregator_routing: bool,
        /// Seconds to wait for the node to be Ready.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Stop kubelet node NAME and remove what it made (containers, mounts).
    KubeletDown { name: String },
    /// Run kubelet node NAME's containerd and kubelet in the foreground until
    /// SIGTERM (what kubelet-up starts under the supervisor).
    KubeletRun {
        name: String,
        #[arg(long)]
        kubelet: PathBuf,
    },
    /// Mint a client certificate (CN = user, O = groups) and print its kubeconfig's path.
    User {
        name: String,
        /// A group (repeatable).
        #[arg(long = "group", short = 'g')]
        groups: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_client=off")),
        )
        .init();
    let args = Args::parse();
    let layout = args.state.map_or_else(Layout::from_env, Layout::new);
    match args.command {
        Cmd::Up {
            etcd_bin,
            k8s_bin,
            libvirt,
            guest_dir,
        } => {
            let opts = UpOptions {
                binaries: Binaries::from_dirs(&etcd_bin, &k8s_bin)?,
                libvirt,
                guest_dir,
            };
            let info = controlplane::up(&layout, &opts).await?;
            println!("{}", info.kubeconfig.display());
        }
        Cmd::Down => controlplane::down(&layout).await?,
        Cmd::Status => {
            let sup = controlplane::supervisor(&layout);
            for rec in sup.recorded() {
                let state = if ironvirt_testbed::process::Supervisor::is_running(&rec) {
                    "running"
                } else {
                    "dead"
                };
                println!("{:<26} pid {:<8} {state}", rec.name, rec.pid);
            }
            match controlplane::is_up(&layout).await {
                Some(info) => println!("control plane ready at {}", info.api_url),
                None => anyhow::bail!(
                    "the control plane in {} is not running",
                    layout.root().display()
                ),
            }
        }
        Cmd::Spawn { name, env, command } => {
            let env: Vec<(&str, &str)> = env
                .iter()
                .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), "")))
                .collect();
            let (program, args) = command
                .split_first()
                .context("spawn needs a program after --")?;
            let sup = controlplane::supervisor(&layout);
            let _ = sup.stop(&name, std::time::Duration::from_secs(10));
            let rec = sup.spawn(&name, std::path::Path::new(program), args, &env)?;
            println!("{}", rec.pid);
        }
        Cmd::FreePort => {
            // A port free on both loopback addresses, for servers that listen on both.
            let port = (0..50)
                .find_map(|_| {
                    let v4 = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
                    let port = v4.local_addr().ok()?.port();
                    std::net::TcpListener::bind(("::1", port)).ok()?;
                    Some(port)
                })
                .context("no port free on both 127.0.0.1 and ::1")?;
            println!("{port}");
        }
        Cmd::HandlerIdentity { node } => {
            let info = ClusterInfo::load(&layout).with_context(|| {
                format!("the test bed in {} is not running", layout.root().display())
            })?;
            let id = ironvirt_testbed::handlers::ensure_identity(&layout, &info, &node)?;
            let admin = controlplane::client_from_kubeconfig(&info.kubeconfig).await?;
            ironvirt_testbed::handlers::install_access(&admin).await?;
            print!("{}", ironvirt_testbed::handlers::shell_vars(&id));
        }
        Cmd::NodeUp {
            name,
            handler,
            forward_ports,
            env,
            handler_args,
        } => {
            let info = ClusterInfo::load(&layout).with_context(|| {
                format!("the test bed in {} is not running", layout.root().display())
            })?;
            let identity = ironvirt_testbed::handlers::ensure_identity(&layout, &info, &name)?;
            let admin = controlplane::client_from_kubeconfig(&info.kubeconfig).await?;
            ironvirt_testbed::handlers::install_access(&admin).await?;
            let mut ports = vec![api_port(&info.api_url)?];
            ports.extend(forward_ports);
            let spec = nodes::NodeSpec {
                name,
                forward_ports: ports,
                testbed_bin: std::env::current_exe().context("this program's path")?,
                handler: nodes::HandlerSpec {
                    bin: handler,
                    identity,
                    health_addr: None,
                    args: handler_args,
                    env: env
                        .iter()
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
                            (k.to_owned(), v.to_owned())
                        })
                        .collect(),
                },
            };
            let rec = tokio::task::spawn_blocking(move || nodes::start_node(&layout, &spec))
                .await
                .context("node-up")??;
            print!("{}", node_vars(&rec));
        }
        Cmd::NodeDown { name } => {
            tokio::task::spawn_blocking(move || nodes::stop_node(&layout, &name))
                .await
                .context("node-down")??;
        }
        Cmd::NodesDown => {
            tokio::task::spawn_blocking(move || nodes::down_all(&layout))
                .await
                .context("nodes-down")??;
        }
        Cmd::Nodes => {
            if let Some(net) = nodes::net_record(&layout)? {
                println!(
                    "bridge {} {}/24 (host {})",
                    net.bridge, net.subnet, net.host_addr
                );
            }
            for rec in nodes::records(&layout)? {
                println!(
                    "{:<16} {:<15} netns {:<28} {}",
                    rec.name,
                    rec.addr,
                    rec.netns,
                    rec.libvirt_uri()
                );
            }
        }
        Cmd::Forward {
            netns,
            ports,
            ready_file,
        } => {
            let listeners = ironvirt_testbed::forward::listen_in(&netns, &ports)?;
            tracing::info!(netns = %netns.display(), ?ports, "forwarding to the host's 127.0.0.1");
            if let Some(f) = ready_file {
                std::fs::write(&f, b"").with_context(|| format!("{}", f.display()))?;
            }
            ironvirt_testbed::forward::serve(listeners).await?;
        }
        Cmd::KubeletUp {
            name,
            kubelet,
            scheduler,
            aggregator_routing,
            timeout,
        } => {
            let scheduler = scheduler.unwrap_or_else(|| kubelet.with_file_name("kube-scheduler"));
            let spec = kubelet::NodeSpec {
                name,
                kubelet,
                scheduler,
                testbed: std::env::current_exe().context("this program's path")?,
                aggregator_routing,
            };
            let paths =
                kubelet::up(&layout, &spec, std::time::Duration::from_secs(timeout)).await?;
            println!("{}", paths.root().display());
        }
        Cmd::KubeletDown { name } => {
            tokio::task::spawn_blocking(move || kubelet::down(&layout, &name))
                .await
                .context("kubelet-down")??;
        }
        Cmd::KubeletRun { name, kubelet } => kubelet::run(&layout, &name, &kubelet).await?,
        Cmd::User { name, groups } => {
            let info = ClusterInfo::load(&layout).with_context(|| {
                format!("the test bed in {} is not running", layout.root().display())
            })?;
            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
            let path = write_user_kubeconfig(&layout, &info, &name, &groups)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

/// The port of kube-apiserver's URL (https://127.0.0.1:PORT).
fn api_port(url: &str) -> anyhow::Result<u16> {
    url.rsplit_once(':')
        .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
        .with_context(|| format!("no port in the API URL {url:?}"))
}

/// A node's facts as shell assignments (for hack/run.sh).
fn node_vars(rec: &nodes::NodeRecord) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    format!(
        "NODE_NAME={}\nNODE_ADDR={}\nNODE_NETNS={}\nNODE_LIBVIRT_URI={}\nNODE_STATE_DIR={}\n",
        q(&rec.name),
        q(&rec.addr.to_string()),
        q(&rec.netns),
        q(&rec.libvirt_uri()),
        q(&rec.handler_state_dir().display().to_string())
    )
}
