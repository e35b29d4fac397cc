//! A node's own libvirt: its /etc/libvirt (own `host_uuid`, migration TLS),
//! and its virtlogd and libvirtd, started and waited for.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::start::start_error;
use super::{NodeError, NodeRecord, Result, io_err, run, supervisor};
use crate::layout::Layout;
use crate::process::{Supervisor, process_alive};

const VIRTLOGD_BIN: &str = "/usr/sbin/virtlogd";

const LIBVIRTD_BIN: &str = "/usr/sbin/libvirtd";

/// How long libvirtd may take to answer (its first start probes QEMU).
const LIBVIRTD_START: Duration = Duration::from_secs(120);

/// A random host UUID (version 4).
pub(super) fn host_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// libvirtd.conf of a node: the host's settings without its `host_uuid`,
/// plus the node's own.
fn libvirtd_conf(host: &str, uuid: &str) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| !l.trim_start().starts_with("host_uuid"))
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!(
        "# The node's own host UUID (ironvirt test bed).\nhost_uuid = \"{uuid}\"\n"
    ));
    out
}

/// The node's /etc/libvirt: the host's configuration files (qemu.conf:
/// user and group root, security_driver none) and nwfilters, no domain,
/// network or pool definitions; libvirtd.conf with its own `host_uuid`.
pub(super) fn write_config(dir: &Path, uuid: &str) -> Result<()> {
    let etc = dir.join("etc");
    let host = Path::new("/etc/libvirt");
    let entries = fs::read_dir(host).map_err(io_err(host))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_file() && path.extension().is_some_and(|x| x == "conf") {
            let to = etc.join(e.file_name());
            fs::copy(&path, &to).map_err(io_err(&to))?;
        }
    }
    if host.join("nwfilter").is_dir() {
        run(
            "cp",
            [
                OsStr::new("-a"),
                host.join("nwfilter").as_os_str(),
                etc.as_os_str(),
            ],
        )?;
    }
    fs::create_dir_all(etc.join("qemu")).map_err(io_err(&etc))?;
    let host_conf = fs::read_to_string(host.join("libvirtd.conf")).unwrap_or_default();
    let conf = etc.join("libvirtd.conf");
    fs::write(&conf, libvirtd_conf(&host_conf, uuid)).map_err(io_err(&conf))?;
    // QEMU's capabilities as the host's libvirtd probed them: a node's first
    // start need not probe again (libvirtd re-probes when they are stale).
    let caps = Path::new("/var/cache/libvirt/qemu/capabilities");
    if caps.is_dir() {
        let to = dir.join("cache").join("qemu");
        fs::create_dir_all(&to).map_err(io_err(&to))?;
        let _ = run("cp", [OsStr::new("-a"), caps.as_os_str(), to.as_os_str()]);
    }
    Ok(())
}

/// The node's side of migration between nodes ([`crate::nodetls`]): its
/// certificate of the bed's libvirt CA, libvirtd's TLS listener on the
/// node's address, QEMU's migration over TLS.
pub(super) fn write_migration_tls(layout: &Layout, rec: &NodeRecord) -> Result<()> {
    let etc = rec.dir.join("etc");
    crate::nodetls::write_node_pki(
        &crate::pki::Pki::new(layout.pki()),
        &etc,
        &rec.name,
        rec.addr,
    )
    .map_err(|e| NodeError::Config(format!("node {} certificate: {e}", rec.name)))?;
    for (file, extra) in [
        ("libvirtd.conf", crate::nodetls::libvirtd_conf(rec.addr)),
        ("qemu.conf", crate::nodetls::qemu_conf(rec.addr)),
    ] {
        let path = etc.join(file);
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&extra);
        fs::write(&path, text).map_err(io_err(&path))?;
    }
    Ok(())
}

/// Starts the node's virtlogd and libvirtd and waits until libvirtd answers.
pub(super) fn start_libvirt(layout: &Layout, rec: &NodeRecord, started: Instant) -> Result<()> {
    let sup = supervisor(layout);
    let wrapper = rec.wrapper();
    sup.spawn_in(
        &rec.process("virtlogd"),
        &wrapper,
        Path::new(VIRTLOGD_BIN),
        &["-p".into(), "/run/libvirt/virtlogd.pid".into()],
        &[],
    )?;
    let libvirtd = sup.spawn_in(
        &rec.process("libvirtd"),
        &wrapper,
        Path::new(LIBVIRTD_BIN),
        // --listen: the TLS port of libvirtd.conf (migration).
        &[
            "--listen".into(),
            "-p".into(),
            "/run/libvirt/libvirtd.pid".into(),
        ],
        &[],
    )?;
    wait_libvirtd(&sup, rec, libvirtd.pid)?;
    tracing::info!(node = %rec.name, uri = %rec.libvirt_uri(), elapsed_ms = started.elapsed().as_millis() as u64, "node libvirtd ready");
    Ok(())
}

/// `timeout SECS virsh -c URI ARGS`.
pub(super) fn virsh(uri: &str, secs: u64, args: &[&str]) -> Result<String> {
    let secs = secs.to_string();
    let mut all = vec![secs.as_str(), "virsh", "-c", uri];
    all.extend_from_slice(args);
    run("timeout", all)
}

fn wait_libvirtd(sup: &Supervisor, rec: &NodeRecord, pid: u32) -> Result<()> {
    let deadline = Instant::now() + LIBVIRTD_START;
    let uri = rec.libvirt_uri();
    loop {
        if virsh(&uri, 10, &["version"]).is_ok() {
            return Ok(());
        }
        if !process_alive(pid) {
            return Err(start_error(sup, rec, "libvirtd", "libvirtd exited"));
        }
        if Instant::now() > deadline {
            return Err(start_error(
                sup,
                rec,
                "libvirtd",
                &format!("no answer on {uri} within {} s", LIBVIRTD_START.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirtd_conf_gets_its_own_uuid() {
        let u = host_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let conf = libvirtd_conf("listen_tls = 0\nhost_uuid = \"x\"\n", &u);
        assert!(conf.contains("listen_tls = 0"));
        assert!(!conf.contains("\"x\""));
        assert!(conf.contains(&format!("host_uuid = \"{u}\"")));
    }
}
