//! `ironctl port-forward TYPE/NAME[.NAMESPACE] [LOCAL:]REMOTE...`: local TCP
//! ports forwarded to ports of a VM's guest, as virtctl's port-forward does.
//! Each local connection is one websocket on the `portforward` subresource
//! (through kube-apiserver and ironvirt-api to the VMI's node). With
//! `--stdio`, stdin and stdout are the one connection, for ssh's
//! ProxyCommand.

use std::net::IpAddr;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::args::PortForwardArgs;
use crate::client::Ctx;
use crate::error::{Error, Result};
use crate::relay::{Ended, relay};
use crate::status::{Kind, Subject};

/// What a port-forward names: a VM or a VMI, its name, and a namespace
/// when the target says one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
    pub namespace: Option<String>,
}

impl Target {
    pub fn resource(&self) -> &'static str {
        match self.kind {
            Kind::Vm => "virtualmachines",
            Kind::Vmi => "virtualmachineinstances",
        }
    }
}

/// Parses virtctl's `TYPE/NAME/NAMESPACE` or `TYPE/NAME[.NAMESPACE]`: TYPE
/// is `vm`, `vmi`, `virtualmachine` or `virtualmachineinstance` (plurals too).
pub fn parse_target(s: &str) -> std::result::Result<Target, String> {
    let (kind, rest) = s
        .split_once('/')
        .ok_or_else(|| format!("target {s:?}: write TYPE/NAME, e.g. vm/my-vm or vmi/my-vm"))?;
    let kind = match kind.to_ascii_lowercase().as_str() {
        "vm" | "vms" | "virtualmachine" | "virtualmachines" => Kind::Vm,
        "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => Kind::Vmi,
        other => {
            return Err(format!(
                "target {s:?}: unknown type {other:?}; use vm or vmi"
            ));
        }
    };
    let (name, namespace) = match rest.split_once('/').or_else(|| rest.split_once('.')) {
        Some((n, ns)) => (n, Some(ns.to_owned())),
        None => (rest, None),
    };
    if name.is_empty() || namespace.as_deref() == Some("") {
        return Err(format!("target {s:?}: the name is empty"));
    }
    Ok(Target {
        kind,
        name: name.to_owned(),
        namespace,
    })
}

/// One forwarded port: local and remote (the guest's) TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub local: u16,
    pub remote: u16,
}

/// Parses `[LOCAL:]REMOTE` (LOCAL 0: a free port; only REMOTE: the same
/// local port). `/tcp` may follow; UDP is not forwarded by ironctl.
pub fn parse_forward(s: &str) -> std::result::Result<Forward, String> {
    let (ports, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
    if !protocol.eq_ignore_ascii_case("tcp") {
        return Err(format!(
            "port {s:?}: ironctl forwards TCP only (virtctl port-forward forwards UDP)"
        ));
    }
    let port = |p: &str, zero: bool| {
        p.parse::<u16>()
            .ok()
            .filter(|n| zero || *n > 0)
            .ok_or_else(|| format!("port {s:?}: {p:?} is not a port number"))
    };
    match ports.split_once(':') {
        Some((local, remote)) => Ok(Forward {
            local: port(local, true)?,
            remote: port(remote, false)?,
        }),
        None => {
            let p = port(ports, false)?;
            Ok(Forward {
                local: p,
                remote: p,
            })
        }
    }
}

pub async fn run(ctx: &Ctx, args: &PortForwardArgs) -> Result<()> {
    let target = parse_target(&args.target).map_err(Error::Usage)?;
    let forwards: Vec<Forward> = args
        .ports
        .iter()
        .map(|p| parse_forward(p))
        .collect::<std::result::Result<_, _>>()
        .map_err(Error::Usage)?;
    if forwards.is_empty() {
        return Err(Error::Usage(
            "give at least one port: [LOCAL:]REMOTE".into(),
        ));
    }
    let mut ctx = ctx.clone();
    if let Some(ns) = &target.namespace {
        ctx.namespace.clone_from(ns);
    }
    crate::vmi::check_access(&ctx, "get", target.resource(), "portforward", &target.name).await?;
    if args.stdio {
        let [f] = forwards[..] else {
            return Err(Error::Usage("--stdio forwards exactly one port".into()));
        };
        let ws = open(&ctx, &target, f.remote).await?;
        return match relay(tokio::io::stdin(), tokio::io::stdout(), ws).await {
            Ended::Closed { code: 1000, .. } | Ended::Local => Ok(()),
            other => Err(Error::Session(format!(
                "port {} of {}: {}",
                f.remote,
                target.name,
                other.why().unwrap_or_default()
            ))),
        };
    }
    let address: IpAddr = args
        .address
        .parse()
        .map_err(|_| Error::Usage(format!("--address {:?} is not an IP address", args.address)))?;
    let signal_err = |e: std::io::Error| Error::Local(format!("cannot watch for signals: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_err)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_err)?;
    let mut tasks = tokio::task::JoinSet::new();
    for f in forwards {
        let listener = TcpListener::bind((address, f.local))
            .await
            .map_err(|e| Error::Local(format!("cannot listen on {address}:{}: {e}", f.local)))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::Local(format!("the listener's address: {e}")))?;
        eprintln!(
            "Forwarding from {local} to {}/{}:{}",
            match target.kind {
                Kind::Vm => "vm",
                Kind::Vmi => "vmi",
            },
            target.name,
            f.remote
        );
        tasks.spawn(serve(ctx.clone(), target.clone(), listener, f.remote));
    }
    tokio::select! {
        Some(r) = tasks.join_next() => match r {
            Ok(r) => r,
            Err(e) => Err(Error::Local(format!("a listener stopped: {e}"))),
        },
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
    }
}

/// Accepts connections on `listener`; each gets its own websocket.
async fn serve(ctx: Ctx, target: Target, listener: TcpListener, remote: u16) -> Result<()> {
    loop {
        let (tcp, peer) = listener
            .accept()
            .await
            .map_err(|e| Error::Local(format!("accepting a connection: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let ctx = ctx.clone();
        let target = target.clone();
        tokio::spawn(async move {
            match open(&ctx, &target, remote).await {
                Ok(ws) => {
                    let (rd, wr) = tcp.into_split();
                    let ended = relay(rd, wr, ws).await;
                    if let Ended::Closed { code, reason } = &ended
                        && *code != 1000
                    {
                        eprintln!("{peer} -> port {remote} of {}: {reason}", target.name);
                    } else if let Ended::Broken(why) = &ended {
                        eprintln!("{peer} -> port {remote} of {}: {why}", target.name);
                    }
                }
                Err(e) => eprintln!("{peer} -> port {remote} of {}: {e}", target.name),
            }
        });
    }
}

async fn open(ctx: &Ctx, target: &Target, remote: u16) -> Result<crate::client::Ws> {
    let path = ctx.subresource_path(
        target.resource(),
        &target.name,
        &format!("portforward/{remote}/tcp"),
    );
    let subject = Subject {
        kind: target.kind,
        name: &target.name,
        namespace: &ctx.namespace,
    };
    ctx.open_stream(&path, &subject).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_virtctl_style() {
        let t = |kind, name: &str, ns: Option<&str>| Target {
            kind,
            name: name.into(),
            namespace: ns.map(Into::into),
        };
        assert_eq!(parse_target("vm/web"), Ok(t(Kind::Vm, "web", None)));
        assert_eq!(
            parse_target("vmi/web.prod"),
            Ok(t(Kind::Vmi, "web", Some("prod")))
        );
        assert_eq!(
            parse_target("VirtualMachineInstance/web"),
            Ok(t(Kind::Vmi, "web", None))
        );
        assert!(parse_target("web").unwrap_err().contains("TYPE/NAME"));
        assert!(
            parse_target("pod/web")
                .unwrap_err()
                .contains("unknown type")
        );
        assert!(parse_target("vm/").unwrap_err().contains("empty"));
    }

    #[test]
    fn ports_are_local_colon_remote() {
        assert_eq!(
            parse_forward("8080:80"),
            Ok(Forward {
                local: 8080,
                remote: 80
            })
        );
        assert_eq!(
            parse_forward("22"),
            Ok(Forward {
                local: 22,
                remote: 22
            })
        );
        assert_eq!(
            parse_forward("0:22/tcp"),
            Ok(Forward {
                local: 0,
                remote: 22
            })
        );
        assert!(parse_forward("53/udp").unwrap_err().contains("TCP only"));
        assert!(
            parse_forward("8080:0")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            parse_forward("x:80")
                .unwrap_err()
                .contains("not a port number")
        );
        assert!(
            parse_forward("70000")
                .unwrap_err()
                .contains("not a port number")
        );
    }
}
