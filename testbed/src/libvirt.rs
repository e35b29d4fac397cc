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

/// How long one virsh call may take before libvirtd counts as not answering.
const VIRSH_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `virsh -c qemu:///system ARGS` with a timeout.
async fn virsh(args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new("virsh");
    cmd.args(["-c", SYSTEM_URI]).args(args).kill_on_drop(true);
    match tokio::time::timeout(VIRSH_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(Error::Libvirt(format!("cannot run virsh: {e}"))),
        Err(_) => Err(Error::Libvirt(format!(
            "libvirtd is not answering on {SYSTEM_URI} (virsh {} took over {} s)",
            args.join(" "),
            VIRSH_TIMEOUT.as_secs()
        ))),
    }
}

/// Whether a libvirtd answers on `qemu:///system`.
pub async fn responding() -> bool {
    virsh(&["version"]).await.is_ok_and(|o| o.status.success())
}

/// Whether the pid in `path` is a live process running `exe`.
fn pidfile_alive(path: &str, exe: &str) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .is_some_and(|pid| {
            process_alive(pid)
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| p == Path::new(exe))
        })
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
    if !pidfile_alive(VIRTLOGD_PIDFILE, VIRTLOGD_BIN) {
        sup.spawn(VIRTLOGD, Path::new(VIRTLOGD_BIN), &[], &[])?;
    }
    sup.spawn(LIBVIRTD, Path::new(LIBVIRTD_BIN), &[], &[])?;
    // The first start probes QEMU's capabilities, which takes a while under TCG.
    const START_SECS: u64 = 120;
    let deadline = Instant::now() + Duration::from_secs(START_SECS);
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
                secs: START_SECS,
                log: sup.log_path(LIBVIRTD),
                tail: sup.log_tail(LIBVIRTD, 20),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether a domain belongs to ironvirt: its name starts with `ironvirt-`, or
/// its metadata carries ironvirt's namespace.
pub fn is_ironvirt_domain(name: &str, xml: &str) -> bool {
    name.starts_with("ironvirt-") || xml.contains(METADATA_NS)
}

/// The XML namespace of ironvirt's domain metadata.
pub const METADATA_NS: &str = "https://ironvirt.io/domain/v1";

/// Destroys and undefines ironvirt's domains on `qemu:///system` (see
/// [`is_ironvirt_domain`]); nobody else's. Used when this test bed owns
/// libvirtd, so that no QEMU of ours outlives `make stop`.
pub async fn destroy_ironvirt_domains() -> Result<()> {
    let out = virsh(&["list", "--all", "--name"]).await?;
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
        let xml = virsh(&["dumpxml", name]).await?;
        if !is_ironvirt_domain(name, &String::from_utf8_lossy(&xml.stdout)) {
            continue;
        }
        tracing::info!(domain = name, "destroying leftover domain");
        let _ = virsh(&["destroy", name]).await;
        let _ = virsh(&["undefine", "--nvram", name]).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ironvirt_domains_are_ours() {
        assert!(is_ironvirt_domain("ironvirt-test-1", "<domain/>"));
        assert!(is_ironvirt_domain(
            "default_vm1",
            "<domain><metadata><ironvirt:vmi xmlns:ironvirt='https://ironvirt.io/domain/v1'/></metadata></domain>"
        ));
        assert!(!is_ironvirt_domain("my-windows-vm", "<domain/>"));
    }
}
