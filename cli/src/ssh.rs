//! `ironctl ssh [USER@]TYPE/NAME[.NAMESPACE]` and `ironctl scp`: the system's
//! OpenSSH client, connected through `ironctl port-forward --stdio` as its
//! ProxyCommand (the `portforward` subresource, so RBAC decides). The host
//! ssh sees is `TYPE.NAME.NAMESPACE`, also its HostKeyAlias, so each VM has
//! its own known_hosts entry and scp's `HOST:PATH` parses.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::args::{Global, ScpArgs, SshArgs};
use crate::error::{Error, Result};
use crate::portforward::{Target, parse_target};
use crate::status::Kind;

/// `[USER@]TYPE/NAME[.NAMESPACE]`: the user (if any) and the target.
pub fn parse_user_target(s: &str) -> std::result::Result<(Option<String>, Target), String> {
    match s.split_once('@') {
        Some((user, rest)) if !user.is_empty() => Ok((Some(user.to_owned()), parse_target(rest)?)),
        Some(_) => Err(format!("{s:?}: the user before '@' is empty")),
        None => Ok((None, parse_target(s)?)),
    }
}

/// The host name ssh and scp see: `vm.NAME.NAMESPACE` or `vmi.NAME.NAMESPACE`.
pub fn host_alias(t: &Target, namespace: &str) -> String {
    let kind = match t.kind {
        Kind::Vm => "vm",
        Kind::Vmi => "vmi",
    };
    format!("{kind}.{}.{namespace}", t.name)
}

/// The options that make ssh or scp reach `t` through ironctl.
pub fn proxy_options(
    exe: &std::path::Path,
    global: &Global,
    t: &Target,
    namespace: &str,
    port: u16,
) -> Vec<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut proxy = vec![quote(&exe.display().to_string())];
    if let Some(k) = &global.kubeconfig {
        proxy.push("--kubeconfig".into());
        proxy.push(quote(&k.display().to_string()));
    }
    if let Some(c) = &global.context {
        proxy.push("--context".into());
        proxy.push(quote(c));
    }
    let kind = match t.kind {
        Kind::Vm => "vm",
        Kind::Vmi => "vmi",
    };
    proxy.extend([
        "port-forward".into(),
        "--stdio".into(),
        quote(&format!("{kind}/{}.{namespace}", t.name)),
        port.to_string(),
    ]);
    vec![
        "-o".into(),
        format!("ProxyCommand={}", proxy.join(" ")),
        "-o".into(),
        format!("HostKeyAlias={}", host_alias(t, namespace)),
    ]
}

fn exe() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| {
        Error::Local(format!(
            "cannot find ironctl's own path for ssh's ProxyCommand: {e}"
        ))
    })
}

/// Runs `program` with `args`, its exit code passed on.
async fn run_program(program: &str, args: Vec<OsString>) -> Result<()> {
    let status = tokio::process::Command::new(program)
        .args(&args)
        .status()
        .await
        .map_err(|e| {
            Error::Local(format!(
                "cannot run {program} (is OpenSSH's client installed?): {e}"
            ))
        })?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(Error::Exit(code)),
        None => Err(Error::Local(format!("{program} was killed by a signal"))),
    }
}

/// The ssh arguments for `ironctl ssh`.
pub fn ssh_command(
    args: &SshArgs,
    global: &Global,
    namespace: &str,
    exe: &std::path::Path,
) -> std::result::Result<Vec<String>, String> {
    let (user, target) = parse_user_target(&args.target)?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.to_owned());
    let mut out = proxy_options(exe, global, &target, &namespace, args.port);
    if let Some(i) = &args.identity_file {
        out.extend(["-i".into(), i.display().to_string()]);
    }
    for o in &args.local_ssh_opts {
        out.extend(o.split_whitespace().map(str::to_owned));
    }
    let user = user.or_else(|| args.username.clone());
    let host = host_alias(&target, &namespace);
    out.push(user.map_or(host.clone(), |u| format!("{u}@{host}")));
    if let Some(c) = &args.command {
        out.push("--".into());
        out.push(c.clone());
    }
    Ok(out)
}

/// The scp arguments for `ironctl scp`: the remote side `[USER@]TYPE/NAME[.NS]:PATH`.
pub fn scp_command(
    args: &ScpArgs,
    global: &Global,
    namespace: &str,
    exe: &std::path::Path,
) -> std::result::Result<Vec<String>, String> {
    let remote = |s: &str| -> Option<(String, String)> {
        let (host, path) = s.split_once(':')?;
        host.contains('/')
            .then(|| (host.to_owned(), path.to_owned()))
    };
    let (remote_arg, is_src) = match (remote(&args.source), remote(&args.destination)) {
        (Some(r), None) => (r, true),
        (None, Some(r)) => (r, false),
        (Some(_), Some(_)) => {
            return Err(
                "copy between a VM and a local path: one side only is TYPE/NAME:PATH".into(),
            );
        }
        (None, None) => return Err("one side must be [USER@]TYPE/NAME[.NAMESPACE]:PATH".into()),
    };
    let (user, target) = parse_user_target(&remote_arg.0)?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| namespace.to_owned());
    let mut out = proxy_options(exe, global, &target, &namespace, args.port);
    // The SCP protocol (OpenSSH 9 speaks SFTP unless told): guests with
    // dropbear or a small sshd have scp, often no sftp-server.
    out.push("-O".into());
    out.push("-P".into());
    out.push(args.port.to_string());
    if let Some(i) = &args.identity_file {
        out.extend(["-i".into(), i.display().to_string()]);
    }
    if args.recursive {
        out.push("-r".into());
    }
    for o in &args.local_ssh_opts {
        out.extend(o.split_whitespace().map(str::to_owned));
    }
    let host = host_alias(&target, &namespace);
    let remote = format!(
        "{}{host}:{}",
        user.map(|u| format!("{u}@")).unwrap_or_default(),
        remote_arg.1
    );
    if is_src {
        out.extend([remote, args.destination.clone()]);
    } else {
        out.extend([args.source.clone(), remote]);
    }
    Ok(out)
}

pub async fn ssh(args: &SshArgs, global: &Global, namespace: &str) -> Result<()> {
    let argv = ssh_command(args, global, namespace, &exe()?).map_err(Error::Usage)?;
    run_program("ssh", argv.into_iter().map(OsString::from).collect()).await
}

pub async fn scp(args: &ScpArgs, global: &Global, namespace: &str) -> Result<()> {
    let argv = scp_command(args, global, namespace, &exe()?).map_err(Error::Usage)?;
    run_program("scp", argv.into_iter().map(OsString::from).collect()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn global() -> Global {
        Global {
            kubeconfig: Some(PathBuf::from("/k/config")),
            context: None,
            namespace: None,
        }
    }

    #[test]
    fn ssh_goes_through_port_forward_with_a_per_vm_host_key() {
        let args = SshArgs {
            target: "root@vm/web".into(),
            identity_file: Some(PathBuf::from("/id")),
            command: Some("uname -a".into()),
            port: 22,
            username: None,
            local_ssh_opts: vec!["-o StrictHostKeyChecking=no".into()],
        };
        let argv = ssh_command(&args, &global(), "prod", Path::new("/bin/ironctl")).unwrap();
        assert_eq!(
            argv,
            [
                "-o",
                "ProxyCommand='/bin/ironctl' --kubeconfig '/k/config' port-forward --stdio 'vm/web.prod' 22",
                "-o",
                "HostKeyAlias=vm.web.prod",
                "-i",
                "/id",
                "-o",
                "StrictHostKeyChecking=no",
                "root@vm.web.prod",
                "--",
                "uname -a",
            ]
        );
    }

    #[test]
    fn scp_names_the_remote_side_by_its_alias() {
        let args = ScpArgs {
            source: "./f".into(),
            destination: "root@vmi/web.dev:/tmp/f".into(),
            identity_file: None,
            recursive: false,
            port: 22,
            local_ssh_opts: vec![],
        };
        let argv = scp_command(&args, &global(), "prod", Path::new("/bin/ironctl")).unwrap();
        assert_eq!(argv[argv.len() - 2..], ["./f", "root@vmi.web.dev:/tmp/f"]);
        assert!(
            argv[1].ends_with("port-forward --stdio 'vmi/web.dev' 22"),
            "{argv:?}"
        );
        let both = ScpArgs {
            source: "vm/a:/x".into(),
            ..args
        };
        assert!(scp_command(&both, &global(), "prod", Path::new("/i")).is_err());
    }

    #[test]
    fn users_and_targets_parse() {
        let (u, t) = parse_user_target("fedora@vmi/web.ns").unwrap();
        assert_eq!(u.as_deref(), Some("fedora"));
        assert_eq!(
            (t.kind, t.name.as_str(), t.namespace.as_deref()),
            (Kind::Vmi, "web", Some("ns"))
        );
        assert!(parse_user_target("@vm/web").is_err());
    }
}
