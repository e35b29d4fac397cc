//! Live migration between two real nodes: the transport and the handler's
//! primitive (issue #18; the Migration object and its controller come
//! later).
//!
//! A test-guest domain (128 MiB, TCG, a qcow2 overlay per node at the same
//! path, a counter printed on its serial console ten times a second) is
//! defined and started on node-1 from the test's own domain XML (no VMI:
//! nothing of the operator or the handlers' VMI path is involved, and the
//! handlers leave domains that are not ironvirt's alone). Then, with
//! `ironvirt_handler::migration` against node-1's libvirtd:
//! - a client without a node certificate is refused by node-2's libvirtd
//!   (a certificate of the cluster CA naming a node; a certificate of the
//!   libvirt CA that is no node's; no client certificate at all), while a
//!   node's certificate is accepted; nothing listens on libvirtd's plain
//!   TCP port;
//! - a migration without TLS is refused (`migrate_tls_force`), the domain
//!   stays on node-1;
//! - a migration slowed to 1 MiB/s runs over TLS (QEMU's migration
//!   parameters name the TLS credentials and node-2's address; node-1's
//!   libvirtd holds a connection to node-2's port 16514 and QEMU one to
//!   node-2's migration port), reports progress, and abort leaves the domain
//!   running on node-1 only, its counter going on;
//! - a migration with TLS and block migration of the overlay ends with the
//!   domain defined and running only on node-2 (undefined on node-1): the
//!   counter continues (no reboot, no new boot marker), the guest's uptime
//!   keeps growing, and the bytes the
//!   guest wrote to its disk on node-1 are read back on node-2. Migration
//!   time, QEMU's downtime and the counter's gap are printed
//!   (`migration_transport timing:`).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ironvirt_handler::libvirt::Libvirt;
use ironvirt_handler::migration::{self, MigrateOptions, MigrationError, MigrationTarget};
use ironvirt_testbed::nodetls;
use ironvirt_testbed::pki::{LeafSpec, Pki};
use ironvirt_tests::TestBed;
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::nodes::{TestNode, delete_node_objects};

const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(120);
/// The switch-over pause the final migration allows (QEMU's default).
const MAX_DOWNTIME: Duration = Duration::from_millis(300);

fn timing(t0: Instant, step: &str) {
    eprintln!(
        "migration_transport timing: {step}: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// `timeout 60 virsh -c URI ARGS`: stdout, or stderr as the error.
fn virsh(uri: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["60", "virsh", "-c", uri])
        .args(args)
        .output()
        .map_err(|e| format!("virsh: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh -c {uri} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether domain `dom` runs on the libvirtd at `uri`.
fn runs_on(uri: &str, dom: &str) -> bool {
    virsh(uri, &["list", "--name", "--state-running"])
        .is_ok_and(|l| l.lines().any(|n| n.trim() == dom))
}

/// Whether domain `dom` exists (in any state) on the libvirtd at `uri`.
fn exists_on(uri: &str, dom: &str) -> bool {
    virsh(uri, &["list", "--name", "--all"]).is_ok_and(|l| l.lines().any(|n| n.trim() == dom))
}

struct Guest {
    name: String,
    /// The overlay, at the same path in every node.
    disk_dir: String,
}

impl Guest {
    fn serial_log(&self, n: &TestNode) -> PathBuf {
        n.record
            .dir
            .join("log")
            .join(format!("{}-serial.log", self.name))
    }

    fn serial_socket(&self, n: &TestNode) -> PathBuf {
        n.record
            .dir
            .join("run")
            .join("qemu")
            .join(format!("{}.serial", self.name))
    }

    fn console_text(&self, n: &TestNode) -> String {
        std::fs::read(self.serial_log(n))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Types `line` on the guest's serial console on node `n`.
    fn type_line(&self, n: &TestNode, line: &str) -> Result<(), String> {
        let path = self.serial_socket(n);
        let mut s = UnixStream::connect(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        s.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    fn xml(&self, kernel: &Path, initrd: &Path) -> String {
        let name = &self.name;
        format!(
            "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>{kernel}</kernel><initrd>{initrd}</initrd>
    <cmdline>console=ttyS0 no_timer_check</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{dir}/data.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <serial type='unix'><source mode='bind' path='/run/libvirt/qemu/{name}.serial'/>
      <log file='/var/log/libvirt/{name}-serial.log' append='on'/><target port='0'/></serial>
    <console type='unix'><source mode='bind' path='/run/libvirt/qemu/{name}.serial'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>",
            kernel = kernel.display(),
            initrd = initrd.display(),
            dir = self.disk_dir,
        )
    }
}

/// The guest's counter lines (`TICK n uptime`) in `text`.
fn ticks(text: &str) -> Vec<(u64, f64)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("TICK ")?;
            let mut w = rest.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect()
}

/// Waits until `pred` holds for the console text on `n`.
async fn wait_console(
    g: &Guest,
    n: &TestNode,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&str) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = g.console_text(n);
        if pred(&text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let tail: String = text
                .chars()
                .rev()
                .take(600)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(format!(
                "{what} on {}'s console within {timeout:?}; its end:\n{tail}",
                n.name()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client directory for `virsh -c qemu+tls://…?pkipath=DIR`.
fn client_dir(
    root: &Path,
    name: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<String, String> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    for (f, text) in [
        ("cacert.pem", ca_pem),
        ("clientcert.pem", cert_pem),
        ("clientkey.pem", key_pem),
    ] {
        std::fs::write(dir.join(f), text).map_err(|e| e.to_string())?;
    }
    Ok(dir.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_migration_between_two_nodes_moves_a_running_guest() {
    let bed = &bed_with_crds().await;
    bed.with_namespace("migration", |ns| async move {
        let t0 = Instant::now();
        let pid = std::process::id();
        let mut nodes = TestNode::start_many(bed, &ns, &format!("mig-{pid}"), 2)?;
        timing(t0, "2 nodes started");
        let guest = Guest {
            name: format!("ivmig-{pid}"),
            disk_dir: format!(
                "{}/migration-{pid}",
                ironvirt_testbed::nodes::NODE_HANDLER_STATE
            ),
        };

        let outcome = story(bed, &nodes, &guest, t0).await;

        for n in &nodes {
            let uri = n.libvirt_uri();
            if exists_on(&uri, &guest.name) {
                let _ = virsh(&uri, &["destroy", &guest.name]);
                let _ = virsh(&uri, &["undefine", &guest.name]);
            }
        }
        let mut stop_errors = Vec::new();
        for n in &mut nodes {
            if let Err(e) = n.stop() {
                stop_errors.push(format!("{}: {e}", n.name()));
            }
            delete_node_objects(&bed.admin(), n.name()).await;
        }
        outcome?;
        if !stop_errors.is_empty() {
            return Err(format!("stopping the nodes failed: {stop_errors:?}"));
        }
        for n in &nodes {
            let left = n.leftovers();
            if !left.is_empty() {
                return Err(format!("{} left {left:?}", n.name()));
            }
        }
        Ok::<(), String>(())
    })
    .await;
}

async fn story(bed: &TestBed, nodes: &[TestNode], g: &Guest, t0: Instant) -> Result<(), String> {
    let (n1, n2) = (&nodes[0], &nodes[1]);
    let (u1, u2) = (n1.libvirt_uri(), n2.libvirt_uri());

    // Nothing listens on libvirtd's plain port; TLS only on the node's address.
    for n in nodes {
        let ls = n.listeners()?;
        let tls = format!("{}:{}", n.addr(), nodetls::TLS_PORT);
        if !ls
            .iter()
            .any(|l| l.local == tls && l.process.contains("libvirtd"))
        {
            return Err(format!(
                "{}: libvirtd does not listen on {tls}: {ls:?}",
                n.name()
            ));
        }
        if let Some(l) = ls.iter().find(|l| l.local.ends_with(":16509")) {
            return Err(format!(
                "{}: libvirtd's plain TCP port is open: {l:?}",
                n.name()
            ));
        }
    }

    // Who may open node-2's libvirtd.
    let pki = Pki::new(bed.layout().pki());
    let libvirt_ca = pki.libvirt_ca().map_err(|e| e.to_string())?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let target = format!("qemu+tls://{}/system", n2.addr());
    let node_dir = n1.record.dir.join("etc").join("pki").display().to_string();
    virsh(&format!("{target}?pkipath={node_dir}"), &["hostname"])
        .map_err(|e| format!("a node's certificate must open node-2's libvirtd: {e}"))?;
    let wrong_ca = LeafSpec::client(n1.name(), &[nodetls::NODE_ORG]);
    let forged = pki
        .cluster_ca()
        .map_err(|e| e.to_string())?
        .issue(&wrong_ca)
        .map_err(|e| e.to_string())?;
    let stranger = libvirt_ca
        .issue(&LeafSpec::client("mallory", &["attackers"]))
        .map_err(|e| e.to_string())?;
    for (what, pair) in [
        ("a cluster-CA certificate naming a node", &forged),
        ("a libvirt-CA certificate of no node", &stranger),
    ] {
        let dir = client_dir(
            tmp.path(),
            &what.replace(' ', "-"),
            libvirt_ca.cert_pem(),
            &pair.cert_pem,
            &pair.key_pem,
        )?;
        if let Ok(out) = virsh(&format!("{target}?pkipath={dir}"), &["hostname"]) {
            return Err(format!("node-2's libvirtd accepted {what}: {out}"));
        }
    }
    // No client certificate at all: the handshake ends (a node's is kept).
    let ca_file = pki.crt(ironvirt_testbed::pki::names::LIBVIRT_CA);
    let peer = format!("{}:{}", n2.addr(), nodetls::TLS_PORT);
    let node_pki = n1.record.dir.join("etc").join("pki");
    if !tls_session_kept(&peer, &ca_file, Some(&node_pki))? {
        return Err(format!(
            "{peer} ended a TLS session with node-1's certificate"
        ));
    }
    if tls_session_kept(&peer, &ca_file, None)? {
        return Err(format!(
            "{peer} kept a TLS session without a client certificate"
        ));
    }
    let log = std::fs::read_to_string(
        bed.layout()
            .logs()
            .join(format!("{}.log", n2.record.process("libvirtd"))),
    )
    .unwrap_or_default();
    if !log.contains("not on the list of allowed clients") {
        return Err("node-2's libvirtd log does not show the refused distinguished name".into());
    }
    timing(t0, "clients without a node certificate refused");

    // The guest on node-1; its overlay at the same path on both nodes.
    let guest = bed.guest().map_err(|e| e.to_string())?;
    for n in nodes {
        let dir = n.record.handler_state_dir().join(
            g.disk_dir
                .trim_start_matches(ironvirt_testbed::nodes::NODE_HANDLER_STATE)
                .trim_start_matches('/'),
        );
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(dir.join("data.qcow2"))
            .arg("64M")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "qemu-img: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let xml_path = tmp.path().join("domain.xml");
    std::fs::write(&xml_path, g.xml(&guest.kernel, &guest.initramfs)).map_err(|e| e.to_string())?;
    // Defined, then started, as the handler makes its domains.
    virsh(&u1, &["define", &xml_path.display().to_string()])?;
    virsh(&u1, &["start", &g.name])?;
    wait_console(g, n1, "the boot marker", BOOT, |t| t.contains(MARKER)).await?;
    let data = format!("MIGRATED-DATA-{}", std::process::id());
    let start = format!(
        "echo {data} | dd of=/dev/vda conv=fsync 2>/dev/null; \
         (i=0; while :; do i=$((i+1)); echo \"TICK $i $(cut -d' ' -f1 /proc/uptime)\"; sleep 0.1; done) &"
    );
    // Typed again only when no counter line came at all (the shell was not
    // reading yet), so that one counter runs.
    let mut typed = 0;
    loop {
        g.type_line(n1, &start)?;
        typed += 1;
        let counting = wait_console(g, n1, "the counter", Duration::from_secs(20), |t| {
            ticks(t).len() >= 5
        })
        .await;
        match counting {
            Ok(()) => break,
            Err(_) if typed < 3 && ticks(&g.console_text(n1)).is_empty() => continue,
            Err(e) => return Err(e),
        }
    }
    timing(t0, "guest up on node-1, counting");

    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let lv = Libvirt::new(&u1, tx);
    let tgt = MigrationTarget {
        libvirt_uri: n2.record.tls_uri(),
        migration_uri: Some(n2.record.migration_uri()),
    };
    let disks = vec!["vda".to_owned()];

    // Without TLS: refused.
    let plain = MigrateOptions {
        tls: false,
        copy_disks: disks.clone(),
        persistent: true,
        ..MigrateOptions::default()
    };
    match migration::migrate(&lv, &g.name, &tgt, &plain).await {
        Err(MigrationError::Failed { reason, .. }) => {
            eprintln!("migration_transport: without TLS: {reason}");
        }
        other => return Err(format!("a migration without TLS: {other:?}")),
    }
    if !runs_on(&u1, &g.name) || exists_on(&u2, &g.name) {
        return Err("after the refused plain migration the domain must run on node-1 only".into());
    }

    // Slowed down, seen on the wire, aborted.
    let slow = MigrateOptions {
        bandwidth_mib: Some(1),
        copy_disks: disks.clone(),
        persistent: true,
        ..MigrateOptions::default()
    };
    let running = {
        let lv = lv.clone();
        let (name, tgt) = (g.name.clone(), tgt.clone());
        tokio::spawn(async move { migration::migrate(&lv, &name, &tgt, &slow).await })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = None;
    while Instant::now() < deadline && !running.is_finished() {
        if let Ok(p) = migration::progress(&lv, &g.name).await
            && p.active
            && p.mem_processed.unwrap_or(0) > 0
        {
            seen = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wire = check_wire(n1, n2, &u1, &g.name);
    let abort_at = Instant::now();
    let abort = migration::abort(&lv, &g.name).await;
    let result = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .map_err(|_| "the aborted migration did not return within 60 s".to_owned())?
        .map_err(|e| e.to_string())?;
    eprintln!(
        "migration_transport timing: abort to the migration's return: {} ms",
        abort_at.elapsed().as_millis()
    );
    let seen = seen.ok_or("no progress of the slowed migration within 60 s")?;
    eprintln!("migration_transport: slowed migration progress before abort: {seen:?}");
    wire?;
    abort.map_err(|e| format!("abort: {e}"))?;
    if !matches!(result, Err(MigrationError::Aborted { .. })) {
        return Err(format!("the aborted migration ended with {result:?}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists_on(&u2, &g.name) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !runs_on(&u1, &g.name) || exists_on(&u2, &g.name) {
        return Err("after abort the domain must run on node-1 only".into());
    }
    let before = ticks(&g.console_text(n1)).last().map_or(0, |t| t.0);
    wait_console(
        g,
        n1,
        "the counter after abort",
        Duration::from_secs(30),
        |t| ticks(t).last().is_some_and(|l| l.0 > before + 5),
    )
    .await?;
    timing(
        t0,
        "slowed migration over TLS aborted; the guest runs on node-1",
    );

    // The migration: TLS, the overlay copied, a counter watched on both
    // nodes' consoles.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (log1, log2) = (g.serial_log(n1), g.serial_log(n2));
        let watching = watching.clone();
        std::thread::spawn(move || watch_ticks(&log1, &log2, &watching))
    };
    let opts = MigrateOptions {
        max_downtime: Some(MAX_DOWNTIME),
        copy_disks: disks,
        persistent: true,
        ..MigrateOptions::default()
    };
    let started = Instant::now();
    let moved = migration::migrate(&lv, &g.name, &tgt, &opts).await;
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    watching.store(false, Ordering::Relaxed);
    let arrivals = watcher.join().map_err(|_| "the tick watcher panicked")?;
    moved.map_err(|e| e.to_string())?;
    if exists_on(&u1, &g.name) || !runs_on(&u2, &g.name) {
        return Err("after the migration the domain must run on node-2 only".into());
    }
    let persistent = virsh(&u2, &["dominfo", &g.name])?;
    if !persistent
        .lines()
        .any(|l| l.starts_with("Persistent:") && l.trim_end().ends_with("yes"))
    {
        return Err(format!(
            "the domain is not defined on node-2:\n{persistent}"
        ));
    }
    let (tx2, _rx2) = tokio::sync::mpsc::channel(64);
    let lv2 = Libvirt::new(&u2, tx2);
    let done = migration::completed(&lv2, &g.name)
        .await
        .map_err(|e| e.to_string())?;

    // No reboot: the counter and the uptime go on, no new boot.
    let last1 = *ticks(&g.console_text(n1))
        .last()
        .ok_or("no tick on node-1")?;
    wait_console(
        g,
        n2,
        "the counter continuing",
        Duration::from_secs(30),
        |t| ticks(t).last().is_some_and(|l| l.0 > last1.0 + 10),
    )
    .await?;
    let text2 = g.console_text(n2);
    let t2 = ticks(&text2);
    let first2 = t2.first().copied().ok_or("no tick on node-2")?;
    // (A line cut by the switch-over may be lost to the parser.)
    if !(last1.0 + 1..=last1.0 + 2).contains(&first2.0) || first2.1 < last1.1 {
        return Err(format!(
            "the counter restarted: last on node-1 {last1:?}, first on node-2 {first2:?}"
        ));
    }
    if text2.contains(MARKER) {
        return Err("the guest booted again on node-2".into());
    }
    g.type_line(n2, "dd if=/dev/vda bs=64 count=1 2>/dev/null | head -n 1")?;
    wait_console(
        g,
        n2,
        "the data written on node-1",
        Duration::from_secs(30),
        |t| t.matches(&data).count() >= 1,
    )
    .await?;

    let gap = arrivals
        .windows(2)
        .filter(|w| w[0].1 != w[1].1)
        .map(|w| w[1].0.duration_since(w[0].0))
        .next();
    eprintln!(
        "migration_transport timing: migration of the 128 MiB TCG guest with its overlay over TLS, max downtime {} ms: {:.2} s (libvirt: {} ms elapsed, {} MiB memory in {} iterations); downtime by QEMU {} ms; counter gap between the last line from node-1 and the first from node-2 {} ms (the counter ticks every 100 ms)",
        MAX_DOWNTIME.as_millis(),
        took.as_secs_f64(),
        done.time_elapsed_ms.unwrap_or(0),
        done.mem_processed.unwrap_or(0) >> 20,
        done.mem_iteration.unwrap_or(0),
        done.downtime_ms.map_or("?".to_owned(), |d| d.to_string()),
        gap.map_or("?".to_owned(), |d| d.as_millis().to_string()),
    );
    timing(
        t0,
        "migrated to node-2 over TLS; counter, uptime and disk data kept",
    );
    Ok(())
}

/// Whether `peer` keeps a TLS session open for 2 s (`openssl s_client`,
/// the server verified against `ca`), with the client certificate in
/// `pki_dir` (libvirt's names) or none.
fn tls_session_kept(peer: &str, ca: &Path, pki_dir: Option<&Path>) -> Result<bool, String> {
    let mut cmd = format!(
        "sleep 2 | timeout 15 openssl s_client -connect {peer} -CAfile '{}' -verify_return_error",
        ca.display()
    );
    if let Some(d) = pki_dir {
        cmd.push_str(&format!(
            " -cert '{}' -key '{}'",
            d.join("clientcert.pem").display(),
            d.join("clientkey.pem").display()
        ));
    }
    let out = Command::new("sh")
        .args(["-c", &cmd])
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    Ok(out.status.success())
}

/// During the slowed migration: QEMU's migration runs with TLS credentials
/// for node-2's address, node-1's libvirtd is connected to node-2's TLS
/// port, and QEMU to node-2's QEMU.
fn check_wire(n1: &TestNode, n2: &TestNode, u1: &str, dom: &str) -> Result<(), String> {
    let params = virsh(
        u1,
        &[
            "qemu-monitor-command",
            dom,
            "--hmp",
            "info migrate_parameters",
        ],
    )?;
    let field = |k: &str| {
        params
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(k)
                    .map(|v| v.trim().trim_matches('\'').to_owned())
            })
            .unwrap_or_default()
    };
    let (creds, host) = (field("tls-creds:"), field("tls-hostname:"));
    if creds.is_empty() || host != n2.addr().to_string() {
        return Err(format!(
            "QEMU's migration is not TLS to {}: tls-creds {creds:?}, tls-hostname {host:?}",
            n2.addr()
        ));
    }
    let ss = n1
        .record
        .exec("ss", &["-tnpH"])
        .map_err(|e| e.to_string())?;
    let to = |port_ok: &dyn Fn(u16) -> bool, proc_name: &str| {
        ss.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let peer = cols.get(4).copied().unwrap_or_default();
            let Some((h, p)) = peer.rsplit_once(':') else {
                return false;
            };
            h == n2.addr().to_string()
                && p.parse().is_ok_and(port_ok)
                && l.contains(proc_name)
                && cols.first() == Some(&"ESTAB")
        })
    };
    if !to(&|p| p == nodetls::TLS_PORT, "libvirtd") {
        return Err(format!(
            "node-1's libvirtd has no connection to {}:{}:\n{ss}",
            n2.addr(),
            nodetls::TLS_PORT
        ));
    }
    if !to(&|p| (49152..=49215).contains(&p), "qemu") {
        return Err(format!(
            "node-1's QEMU has no connection to node-2's migration ports:\n{ss}"
        ));
    }
    eprintln!("migration_transport: QEMU migration tls-creds {creds}, tls-hostname {host}");
    Ok(())
}

/// Records when each new counter line first appears on either node's
/// console: (when, node index, tick).
fn watch_ticks(log1: &Path, log2: &Path, watching: &AtomicBool) -> Vec<(Instant, usize, u64)> {
    let mut out: Vec<(Instant, usize, u64)> = Vec::new();
    let mut last = [0u64; 2];
    for (i, p) in [log1, log2].iter().enumerate() {
        last[i] = std::fs::read(p)
            .map(|b| {
                ticks(&String::from_utf8_lossy(&b))
                    .last()
                    .map_or(0, |t| t.0)
            })
            .unwrap_or(0);
    }
    while watching.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (i, p) in [log1, log2].iter().enumerate() {
            let Ok(b) = std::fs::read(p) else { continue };
            for (n, _) in ticks(&String::from_utf8_lossy(&b)) {
                if n > last[i] {
                    last[i] = n;
                    out.push((now, i, n));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    out
}
