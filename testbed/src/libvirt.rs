//! The node: virtlogd and libvirtd started without systemd, so that
//! `qemu:///system` works as root. QEMU runs under TCG on these machines.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::error::{Error, Result};
use crate::process::{Supervisor, process_alive};

pub const LIBVIRTD: &str = "libvirtd";
pub const VIRTLOGD: &str = "virtlogd";
pub const SYSTEM_URI: &str = "qemu:///system";

const LIBVIRTD_BIN: &str = "/usr/sbin/libvirtd";
const VIRTLOGD_BIN: &str = "/usr/sbin/virtlogd";
const VIRTLOGD_PIDFILE: &str = "/run/virtlogd.pid";
const DEPS_HINT: &str = "install the node packages with `make deps` (hack/install-deps.sh)";

/// Whether a libvirtd answers on `qemu:///system`.
pub async fn responding() -> bool {
    Command::new("virsh")
        .args(["-c", SYSTEM_URI, "version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

fn pidfile_alive(path: &str) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(process_alive)
}

/// Starts virtlogd and libvirtd unless a libvirtd already answers. Returns
/// whether this call started libvirtd (and so owns it).
pub async fn start(sup: &Supervisor) -> Result<bool> {
    if responding().await {
        tracing::info!("libvirtd already running; using it");
        return Ok(false);
    }
    for (what, bin) in [("libvirtd", LIBVIRTD_BIN), ("virtlogd", VIRTLOGD_BIN)] {
        if !Path::new(bin).is_file() {
            return Err(Error::Missing {
                what,
                path: bin.into(),
                hint: DEPS_HINT,
            });
        }
    }
    if !Path::new("/usr/bin/virsh").is_file() {
        return Err(Error::Missing {
            what: "virsh",
            path: "/usr/bin/virsh".into(),
            hint: DEPS_HINT,
        });
    }
    for dir in [
        "/var/run/libvirt",
        "/var/log/libvirt/qemu",
        "/var/lib/libvirt/qemu",
    ] {
        std::fs::create_dir_all(dir).map_err(crate::error::io(dir))?;
    }
    if !pidfile_alive(VIRTLOGD_PIDFILE) {
        sup.spawn(VIRTLOGD, Path::new(VIRTLOGD_BIN), &[], &[])?;
    }
    sup.spawn(LIBVIRTD, Path::new(LIBVIRTD_BIN), &[], &[])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if responding().await {
            return Ok(true);
        }
        let alive = sup
            .recorded()
            .iter()
            .any(|r| r.name == LIBVIRTD && Supervisor::is_running(r));
        if !alive {
            return Err(Error::Exited {
                name: LIBVIRTD.into(),
                log: sup.log_path(LIBVIRTD),
                tail: sup.log_tail(LIBVIRTD, 20),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                name: LIBVIRTD.into(),
                secs: 30,
                log: sup.log_path(LIBVIRTD),
                tail: sup.log_tail(LIBVIRTD, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Destroys and undefines every domain on `qemu:///system`. Used only when this
/// test bed owns libvirtd, so that no QEMU outlives `make stop`.
pub async fn destroy_all_domains() -> Result<()> {
    let out = Command::new("virsh")
        .args(["-c", SYSTEM_URI, "list", "--all", "--name"])
        .output()
        .await
        .map_err(|e| Error::Libvirt(format!("virsh list: {e}")))?;
    if !out.status.success() {
        return Err(Error::Libvirt(format!(
            "virsh list: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for name in String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        tracing::info!(domain = name, "destroying leftover domain");
        for args in [vec!["destroy", name], vec!["undefine", "--nvram", name]] {
            let _ = Command::new("virsh")
                .args(["-c", SYSTEM_URI])
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await;
        }
    }
    Ok(())
}
