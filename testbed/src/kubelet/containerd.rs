//! `kubelet-run`, the node's process: containerd in a mount namespace of
//! its own, then kubelet, until SIGTERM; then every container removed.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::config::NodePaths;
use super::node_ip::{add_node_ip, read_node_ip};
use super::teardown::{RUN_CONTAINERD_MARKER, netns_names, save_sysctls};
use super::{KubeletError, Result, check_host, io, paths, sweep, valid_name};
use crate::layout::Layout;

/// Where `ip netns add` mounts network namespaces. Pods that mount it with
/// Bidirectional propagation (ironvirt's handler: one namespace per VMI) must
/// reach the host's copy, where QEMU's passt joins them.
pub const RUN_NETNS: &str = "/run/netns";

/// Bind-mounts `dir` on itself (unless it is a mount point already) and makes
/// it shared, as `ip netns add` does for /run/netns.
fn share_dir(dir: &Path) -> Result<()> {
    use nix::mount::{MsFlags, mount};
    fs::create_dir_all(dir).map_err(io(dir))?;
    let errno = |dir: &Path| {
        let dir = dir.to_owned();
        move |e: nix::errno::Errno| KubeletError::Io {
            path: dir,
            source: e.into(),
        }
    };
    if !crate::nodes::mounts_under(dir).iter().any(|m| m == dir) {
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(errno(dir))?;
    }
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(errno(dir))
}

/// What containerd's mount namespace runs before containerd: every mount
/// becomes a slave of the host's (the host's mounts reach containerd, the
/// containers' rootfs and /dev/shm mounts stay in its namespace), except
/// /run/netns, which stays a peer of the host's, so that a namespace a
/// privileged pod adds there with Bidirectional propagation is the host's
/// too. Then /run/containerd (where containerd 1.6 puts its shims' sockets
/// whatever its configuration says) is the node's own directory.
/// `$1`: the node's containerd run directory; `$2`: containerd's config.
pub fn namespace_script() -> String {
    format!(
        r#"while read -r _ _ _ _ mp _; do case "$mp" in {RUN_NETNS}|{RUN_NETNS}/*) ;; *) mount --make-slave "$mp" 2>/dev/null || true ;; esac; done < /proc/self/mountinfo
mount --bind "$1" /run/containerd && exec containerd --config "$2""#
    )
}

/// Sends SIGTERM, waits `grace`, then SIGKILL; waits for the exit.
fn stop_child(child: &mut Child, grace: Duration) {
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = child.wait();
}

fn log_file(layout: &Layout, name: &str) -> Result<(fs::File, fs::File)> {
    let dir = layout.logs();
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{name}.log"));
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(&path))?;
    let g = f.try_clone().map_err(io(&path))?;
    Ok((f, g))
}

fn spawn_logged(layout: &Layout, log: &str, cmd: &mut Command) -> Result<Child> {
    let (out, err) = log_file(layout, log)?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| KubeletError::Command {
            command: format!("{cmd:?}"),
            output: e.to_string(),
        })
}

/// `ctr` against the node's containerd, in namespace k8s.io.
fn ctr(paths: &NodePaths, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("ctr");
    cmd.arg("--address")
        .arg(paths.containerd_socket())
        .args(["--namespace", "k8s.io", "--timeout", "20s"])
        .args(args);
    let out = cmd.output().map_err(|e| KubeletError::Command {
        command: format!("{cmd:?}"),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: format!("ctr {}", args.join(" ")),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ironvirt-testbed kubelet-run NAME`: runs the node's containerd and
/// kubelet until SIGTERM or SIGINT, then removes every container, stops
/// both and sweeps. [`up`](super::up) starts it under the supervisor.
pub async fn run(layout: &Layout, name: &str, kubelet: &Path) -> Result<()> {
    if !valid_name(name) {
        return Err(KubeletError::BadName(name.to_owned()));
    }
    check_host()?;
    let paths = paths(layout, name);
    if !paths.kubelet_config().is_file() {
        return Err(KubeletError::Missing {
            what: "the node's configuration",
            path: paths.kubelet_config(),
            hint: "start the node with `ironvirt-testbed kubelet-up` (make run-node)",
        });
    }
    // A crashed earlier run's leftovers first.
    sweep(&paths);
    save_sysctls(&paths);
    let _ = fs::write(paths.netns_before(), netns_names().join("\n"));
    let node_ip = read_node_ip(&paths).ok_or_else(|| KubeletError::Missing {
        what: "the node's address",
        path: paths.node_ip_file(),
        hint: "start the node with `ironvirt-testbed kubelet-up` (make run-node)",
    })?;
    if let Err(e) = add_node_ip(&paths, node_ip) {
        sweep(&paths);
        return Err(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(io("SIGTERM handler"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(io("SIGINT handler"))?;

    // kubelet mounts pods' volumes under its directory after containerd
    // started in its own mount namespace: a shared bind mount of that
    // directory (a slave of it in containerd's namespace) carries them over.
    // /run/netns likewise, the other way round (see namespace_script).
    if let Err(e) = share_dir(&paths.kubelet_dir()).and_then(|()| share_dir(Path::new(RUN_NETNS))) {
        sweep(&paths);
        return Err(e);
    }
    // kubelet links containers' logs in /var/log/containers (a fixed path).
    if !Path::new("/var/log/containers").exists() {
        let _ = fs::write(paths.root().join("var-log-containers.created"), "");
    }
    if !Path::new("/run/containerd").exists() {
        fs::create_dir_all("/run/containerd").map_err(io("/run/containerd"))?;
        let _ = fs::write(RUN_CONTAINERD_MARKER, "");
    }
    let containerd_log = format!("containerd-{name}");
    let mut containerd = spawn_logged(
        layout,
        &containerd_log,
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "unchanged",
                "--",
                "/bin/sh",
                "-c",
            ])
            .arg(namespace_script())
            .arg("sh")
            .arg(paths.containerd_run())
            .arg(paths.containerd_config()),
    )?;
    let kubelet_log = format!("kubelet-{name}");
    let result = async {
        // containerd answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ctr(&paths, &["version"]).is_ok() {
                break;
            }
            if let Ok(Some(_)) = containerd.try_wait() {
                return Err(exited(layout, &containerd_log));
            }
            if Instant::now() > deadline {
                return Err(timeout(layout, "containerd answering", 60, &containerd_log));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let archive = paths.images_dir().join("images.tar");
        ctr(
            &paths,
            &[
                "images",
                "import",
                "--no-unpack",
                &archive.to_string_lossy(),
            ],
        )?;
        tracing::info!(
            "images imported: {}",
            ctr(&paths, &["images", "ls", "-q"])?.replace('\n', " ")
        );
        let child = spawn_logged(
            layout,
            &kubelet_log,
            Command::new(kubelet)
                .arg(format!("--config={}", paths.kubelet_config().display()))
                .arg(format!("--kubeconfig={}", paths.kubeconfig().display()))
                .arg(format!("--root-dir={}", paths.kubelet_dir().display()))
                .arg(format!("--cert-dir={}", paths.pki_dir().display()))
                .arg(format!("--hostname-override={name}"))
                .arg(format!("--node-ip={node_ip}"))
                .arg("--v=1"),
        )?;
        Ok(child)
    }
    .await;
    let mut kubelet_child = match result {
        Ok(c) => c,
        Err(e) => {
            stop_child(&mut containerd, Duration::from_secs(5));
            sweep(&paths);
            return Err(e);
        }
    };
    tracing::info!(node = name, "containerd and kubelet run");
    let outcome = loop {
        tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Ok(Some(_)) = kubelet_child.try_wait() {
                    break Err(exited(layout, &kubelet_log));
                }
                if let Ok(Some(_)) = containerd.try_wait() {
                    break Err(exited(layout, &containerd_log));
                }
            }
        }
    };
    tracing::info!(
        node = name,
        "stopping kubelet, the containers and containerd"
    );
    stop_child(&mut kubelet_child, Duration::from_secs(5));
    remove_containers(&paths);
    stop_child(&mut containerd, Duration::from_secs(5));
    sweep(&paths);
    tracing::info!(node = name, "stopped");
    outcome
}

/// Kills and deletes every task and container of the node's containerd, so
/// that runc removes their cgroups and containerd their mounts.
fn remove_containers(paths: &NodePaths) {
    let Ok(list) = ctr(paths, &["containers", "ls", "-q"]) else {
        return;
    };
    let ids: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    for id in &ids {
        let _ = ctr(paths, &["tasks", "kill", "--signal", "SIGKILL", id]);
    }
    for id in &ids {
        let _ = ctr(paths, &["tasks", "delete", "--force", id]);
        let _ = ctr(paths, &["containers", "delete", id]);
    }
}

fn exited(layout: &Layout, log: &str) -> KubeletError {
    let path = layout.logs().join(format!("{log}.log"));
    KubeletError::Exited {
        name: log.to_owned(),
        tail: crate::process::tail(&path, 30),
        log: path,
    }
}

fn timeout(layout: &Layout, what: &str, secs: u64, log: &str) -> KubeletError {
    let path = layout.logs().join(format!("{log}.log"));
    KubeletError::Timeout {
        what: what.to_owned(),
        secs,
        tail: crate::process::tail(&path, 30),
        log: path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_namespace_keeps_run_netns_a_peer_of_the_hosts() {
        let s = namespace_script();
        // Every mount but /run/netns (and what is below it) turns slave.
        assert!(s.contains("/run/netns|/run/netns/*) ;;"), "{s}");
        assert!(s.contains(r#"mount --make-slave "$mp""#), "{s}");
        // Then the node's own /run/containerd, then containerd itself.
        let bind = s.find(r#"mount --bind "$1" /run/containerd"#);
        let exec = s.find(r#"exec containerd --config "$2""#);
        assert!(bind.is_some() && exec > bind, "{s}");
    }
}
