//! Live migrations that do not complete, and a console across a migration
//! (issue #18, acceptance 3 and the console point), between two real nodes
//! with the guest of `tests/migration.rs` (a VirtualMachine counting on its
//! console, moved by KubeVirt's virtctl as a user with kubevirt.io:edit).
//!
//! - **Cancel.** With `--migration-bandwidth-mib 1` a migration of the
//!   128Mi guest takes minutes. `virtctl migrate-cancel` while it runs: the
//!   migration object is gone within 30 s; the VMI still runs on the source
//!   with `migrationState.failed`, `abortRequested` and abortStatus
//!   Succeeded, without the target label; its domain is only on the source;
//!   the target's handler removed the VMI's directory it had prepared; the
//!   guest goes on counting, no reboot.
//! - **Target failure.** A second migration of the same VM; while it runs
//!   the target node's libvirtd is killed (SIGKILL). The migration fails
//!   with a reason, the VMI keeps running on the source, the guest keeps
//!   counting; the node (its libvirtd dead) still stops without leftovers.
//! - **Console across the move.** At full speed, a console opened through
//!   kube-apiserver before the migration and kept open must, after the
//!   switch-over, go on delivering the guest's ticks or end, within 30 s:
//!   never hang. The test says which happened.
//!
//! The two tests run one after the other (each starts two nodes; the bed
//! has two cores).

use std::time::{Duration, Instant};

use ironvirt_crds::MigrationPhase;
use ironvirt_crds::migration::{MIGRATION_TARGET_NODE_LABEL, VirtualMachineInstanceMigration};
use ironvirt_crds::wire::{NODE_NAME_LABEL, domain_name};
use ironvirt_testbed::process::{Supervisor, process_alive};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{api_port, bind};
use ironvirt_tests::handler::{domain_active, domains_of};
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::migration::{
    MOVE, Pair, VM, boot_counting, guest_registry, last_tick, phase_of, read_uptime,
    still_counting, tail, the_migration, timing, virtctl_ok, vmi_dir_on, vmi_now,
    wait_migration_phase,
};
use ironvirt_tests::nodes::TestNode;
use kube::ResourceExt;
use kube::api::Api;

/// One test at a time: each runs two nodes and a guest.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a migration may take to get to Running (target prepared: the
/// containerDisk pulled there).
const TO_RUNNING: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_or_failed_migration_leaves_the_guest_running_on_its_node() {
    let _one = SERIAL.lock().await;
    let bed = &bed_with_crds().await;
    let reg = guest_registry().await.expect("the registry with the guest");
    let host = reg.host.clone();
    bed.with_namespace("migf", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let slow = ["--migration-bandwidth-mib".to_owned(), "1".to_owned()];
        let pair = Pair::start(bed, &ns, "migf", &host, &slow)?;
        timing(t0, "2 nodes started (1 MiB/s per migration)");
        let outcome = faults(bed, &ns, &pair, &host, t0).await;
        pair.finish(bed, &ns, outcome, t0).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_console_open_across_the_move_goes_on_or_ends() {
    let _one = SERIAL.lock().await;
    let bed = &bed_with_crds().await;
    let reg = guest_registry().await.expect("the registry with the guest");
    let host = reg.host.clone();
    bed.with_namespace("migc", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let pair = Pair::start(bed, &ns, "migc", &host, &[])?;
        timing(t0, "2 nodes started");
        let outcome = console_across(bed, &ns, &pair, &host, t0).await;
        pair.finish(bed, &ns, outcome, t0).await
    })
    .await;
}

/// The guest's state before a fault: its last tick and uptime.
struct Before {
    last_tick: u64,
    uptime: f64,
}

async fn faults(
    bed: &TestBed,
    ns: &str,
    pair: &Pair,
    registry: &str,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    pair.wait_ready(&admin).await?;
    let guest = boot_counting(&admin, ns, registry).await?;
    let (uid, mut con) = (guest.uid, guest.con);
    let (src, dst) = pair.ends(&guest.source)?;
    let uptime = read_uptime(&mut con).await?;
    let before = Before {
        last_tick: last_tick(&con.transcript()),
        uptime,
    };
    con.close().await;
    timing(
        t0,
        &format!(
            "{VM} Running on {}, counting (tick-{})",
            src.name(),
            before.last_tick
        ),
    );
    bind(&admin, ns, "mira", "kubevirt.io:edit").await;
    let kubeconfig = bed
        .user_kubeconfig("mira", &["dev"])
        .map_err(|e| e.to_string())?;

    let before = cancel(&admin, ns, &kubeconfig, (src, dst), &uid, before, t0).await?;
    target_dies(bed, ns, &kubeconfig, (src, dst), &uid, before, t0).await
}

/// Waits until `check` of the VMI says Ok, for up to `timeout`; its last
/// complaint otherwise.
async fn wait_vmi<F>(
    admin: &kube::Client,
    ns: &str,
    timeout: Duration,
    check: F,
) -> Result<(), String>
where
    F: Fn(&ironvirt_crds::VirtualMachineInstance) -> Result<(), String>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let why = match check(&vmi_now(admin, ns).await?) {
            Ok(()) => return Ok(()),
            Err(why) => why,
        };
        if Instant::now() > deadline {
            return Err(format!("after {timeout:?}: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The VMI still runs on `source`, labelled for it, not for a target.
fn on_source(vmi: &ironvirt_crds::VirtualMachineInstance, source: &str) -> Result<(), String> {
    let status = vmi.status.as_ref().ok_or("a VMI without status")?;
    let phase = status.phase.map(|p| format!("{p:?}"));
    if phase.as_deref() != Some("Running") || status.node_name.as_deref() != Some(source) {
        return Err(format!(
            "VMI {phase:?} on {:?}, want Running on {source}",
            status.node_name
        ));
    }
    if vmi.labels().get(NODE_NAME_LABEL).map(String::as_str) != Some(source)
        || vmi.labels().contains_key(MIGRATION_TARGET_NODE_LABEL)
    {
        return Err(format!(
            "labels {:?}: want {NODE_NAME_LABEL}={source} and no {MIGRATION_TARGET_NODE_LABEL}",
            vmi.labels()
        ));
    }
    Ok(())
}

/// Waits until the VMI's domain is on node `on` only, not on `not`.
async fn domain_only_on(
    ns: &str,
    uid: &str,
    on: &TestNode,
    not: &TestNode,
    timeout: Duration,
) -> Result<(), String> {
    let dom = domain_name(ns, VM);
    let deadline = Instant::now() + timeout;
    loop {
        let here = domains_of(&on.libvirt_uri(), uid);
        let there = domains_of(&not.libvirt_uri(), uid);
        if here == [dom.clone()] && there.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "domains after {timeout:?}: {here:?} on {}, {there:?} on {} (want {dom} on {} only)",
                on.name(),
                not.name(),
                on.name()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Starts a migration with virtctl and waits until it runs; its name.
async fn migrate_until_running(
    admin: &kube::Client,
    ns: &str,
    kubeconfig: &std::path::Path,
    t0: Instant,
) -> Result<(Api<VirtualMachineInstanceMigration>, String), String> {
    virtctl_ok(kubeconfig, ns, &["migrate", VM]).await?;
    let name = the_migration(admin, ns).await?.name_any();
    let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), ns);
    let (_, seen) = wait_migration_phase(&migs, &name, MigrationPhase::Running, TO_RUNNING).await?;
    timing(t0, &format!("migration {name} Running: {seen:?}"));
    Ok((migs, name))
}

async fn cancel(
    admin: &kube::Client,
    ns: &str,
    kubeconfig: &std::path::Path,
    (src, dst): (&TestNode, &TestNode),
    uid: &str,
    before: Before,
    t0: Instant,
) -> Result<Before, String> {
    let (migs, name) = migrate_until_running(admin, ns, kubeconfig, t0).await?;
    let mig_uid = migs
        .get(&name)
        .await
        .map_err(|e| e.to_string())?
        .uid()
        .unwrap_or_default();
    let target_dir = vmi_dir_on(dst, uid);
    if !target_dir.is_dir() {
        return Err(format!(
            "the migration runs, but the target has no {} prepared",
            target_dir.display()
        ));
    }

    let asked = Instant::now();
    virtctl_ok(kubeconfig, ns, &["migrate-cancel", VM]).await?;
    // The migration object goes once the source aborted.
    loop {
        match phase_of(&migs, &name).await {
            Err(_) => break,
            Ok((phase, _)) if asked.elapsed() > Duration::from_secs(30) => {
                return Err(format!(
                    "migration {name} still there 30 s after migrate-cancel, phase {phase:?}"
                ));
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let gone_after = asked.elapsed();
    timing(
        t0,
        &format!(
            "cancelled: migration gone {:.1} s after migrate-cancel",
            gone_after.as_secs_f64()
        ),
    );

    // The VMI stays on the source; its state says the abort succeeded.
    let vmi = vmi_now(admin, ns).await?;
    let state = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.clone())
        .ok_or("no migrationState after the cancel")?;
    if state.migration_uid.as_deref() != Some(mig_uid.as_str())
        || state.failed != Some(true)
        || state.completed == Some(true)
        || state.abort_requested != Some(true)
        || state.abort_status.as_deref() != Some("Succeeded")
        || state.failure_reason.is_none()
        || state.end_timestamp.is_none()
    {
        return Err(format!(
            "migrationState after the cancel: {state:?} (want migration {mig_uid} failed, abortRequested, abortStatus Succeeded, a reason, an end)"
        ));
    }
    eprintln!("cancel: failureReason {:?}", state.failure_reason);
    wait_vmi(admin, ns, Duration::from_secs(10), |v| {
        on_source(v, src.name())
    })
    .await?;
    domain_only_on(ns, uid, src, dst, Duration::from_secs(15)).await?;

    // The target removed what it had prepared.
    let deadline = Instant::now() + Duration::from_secs(45);
    while target_dir.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} still on the target 45 s after the cancel",
                target_dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = dst.handler_log();
    let by = if log.contains("the migration failed: removing what was prepared here") {
        "the target's migration reconcile"
    } else if log.contains("removing the network and files of a VMI that is gone") {
        "the target's orphan sweep"
    } else {
        "?"
    };
    timing(
        t0,
        &format!(
            "target directory removed {:.1} s after migrate-cancel (by {by})",
            asked.elapsed().as_secs_f64()
        ),
    );

    let (first, uptime) = still_counting(admin, ns, before.last_tick, before.uptime).await?;
    timing(
        t0,
        &format!(
            "after the cancel: tick-{first} follows tick-{}, uptime {uptime:.1} s",
            before.last_tick
        ),
    );
    let mut con = ironvirt_tests::migration::console(admin, ns).await?;
    let from = con.received();
    con.expect_from(from, "tick-", Duration::from_secs(10))
        .await?;
    let last = last_tick(&con.transcript());
    con.close().await;
    Ok(Before {
        last_tick: last,
        uptime,
    })
}

/// The pid of the running libvirtd of `node`, as the bed's supervisor
/// recorded it.
fn libvirtd_pid(bed: &TestBed, node: &TestNode) -> Result<u32, String> {
    let name = node.record.process("libvirtd");
    Supervisor::new(bed.layout().pids(), bed.layout().logs())
        .recorded()
        .into_iter()
        .find(|r| r.name == name)
        .map(|r| r.pid)
        .filter(|pid| process_alive(*pid))
        .ok_or_else(|| format!("no running {name} recorded"))
}

async fn target_dies(
    bed: &TestBed,
    ns: &str,
    kubeconfig: &std::path::Path,
    (src, dst): (&TestNode, &TestNode),
    uid: &str,
    before: Before,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    let (migs, name) = migrate_until_running(&admin, ns, kubeconfig, t0).await?;
    let pid = libvirtd_pid(bed, dst)?;
    let killed = Instant::now();
    let out = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .output()
        .map_err(|e| format!("kill: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kill -9 {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    timing(
        t0,
        &format!("killed libvirtd (pid {pid}) of the target {}", dst.name()),
    );

    let (m, seen) = wait_migration_phase(&migs, &name, MigrationPhase::Failed, MOVE)
        .await
        .map_err(|e| format!("after the target's libvirtd died: {e}"))?;
    let failed = m
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Failed"))
        .cloned()
        .ok_or_else(|| format!("migration {name} Failed without a Failed condition"))?;
    let reason = failed.message.clone().unwrap_or_default();
    if failed.status != "True" || reason.trim().is_empty() {
        return Err(format!("the Failed condition: {failed:?}"));
    }
    timing(
        t0,
        &format!(
            "migration {name} Failed {:.1} s after the kill ({seen:?}): {:?}: {reason}",
            killed.elapsed().as_secs_f64(),
            failed.reason
        ),
    );
    let state = vmi_now(&admin, ns)
        .await?
        .status
        .and_then(|s| s.migration_state)
        .ok_or("no migrationState after the failure")?;
    if state.failed != Some(true) || state.failure_reason.as_deref().is_none_or(str::is_empty) {
        return Err(format!("migrationState after the failure: {state:?}"));
    }
    wait_vmi(&admin, ns, Duration::from_secs(30), |v| {
        on_source(v, src.name())
    })
    .await?;
    let dom = domain_name(ns, VM);
    let here = domains_of(&src.libvirt_uri(), uid);
    if here != [dom.clone()] {
        return Err(format!(
            "domains on the source after the failure: {here:?}, want [{dom}]"
        ));
    }
    let (first, uptime) = still_counting(&admin, ns, before.last_tick, before.uptime).await?;
    timing(
        t0,
        &format!(
            "after the failure: tick-{first} follows tick-{}, uptime {uptime:.1} s",
            before.last_tick
        ),
    );
    // Reported, not required: the target's handler cannot reach its
    // libvirtd any more.
    let target_dir = vmi_dir_on(dst, uid);
    eprintln!(
        "target failure: {} {}",
        target_dir.display(),
        if target_dir.exists() {
            "is still on the target (its libvirtd is dead)"
        } else {
            "was removed"
        }
    );
    Ok(())
}

/// What a console open across the switch-over did.
enum AfterSwitch {
    /// It went on with the guest's ticks (from the target).
    Delivering { tick: u64, after: Duration },
    /// It closed after the switch-over, with this reason.
    Closed { reason: String, after: Duration },
    /// It closed before the migration ended, in this phase, this long
    /// after the migration began.
    ClosedDuring {
        reason: String,
        phase: Option<MigrationPhase>,
        at: Duration,
    },
}

impl std::fmt::Display for AfterSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AfterSwitch::Delivering { tick, after } => write!(
                f,
                "kept delivering the guest's ticks (tick-{tick} {:.1} s after the switch-over was seen)",
                after.as_secs_f64()
            ),
            AfterSwitch::Closed { reason, after } => write!(
                f,
                "closed {:.1} s after the switch-over was seen, reason {reason:?}",
                after.as_secs_f64()
            ),
            AfterSwitch::ClosedDuring { reason, phase, at } => write!(
                f,
                "closed during the migration (phase {phase:?}, {:.1} s after it began), reason {reason:?}",
                at.as_secs_f64()
            ),
        }
    }
}

/// A console that closes while the migration runs must close because the
/// guest left the source (the switch-over ends the source's QEMU): its
/// domain there is inactive or gone within 5 s of the close. A console that
/// closes while the guest still runs on the source dropped.
async fn source_gone_at_close(dom: &str, src: &TestNode) -> Result<(), String> {
    let closed = Instant::now();
    while domain_active(&src.libvirt_uri(), dom) == Some(true) {
        if closed.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "the console closed during the migration while {dom} still ran on the source {} (5 s later)",
                src.name()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "console across the move: {dom} left the source {:.1} s after the console closed",
        closed.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn console_across(
    bed: &TestBed,
    ns: &str,
    pair: &Pair,
    registry: &str,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    pair.wait_ready(&admin).await?;
    let guest = boot_counting(&admin, ns, registry).await?;
    let (uid, mut con) = (guest.uid, guest.con);
    let (src, dst) = pair.ends(&guest.source)?;
    let uptime = read_uptime(&mut con).await?;
    let first_tick = last_tick(&con.transcript());
    timing(
        t0,
        &format!(
            "{VM} Running on {}, counting (tick-{first_tick}), console open",
            src.name()
        ),
    );
    bind(&admin, ns, "mira", "kubevirt.io:edit").await;
    let kubeconfig = bed
        .user_kubeconfig("mira", &["dev"])
        .map_err(|e| e.to_string())?;
    virtctl_ok(&kubeconfig, ns, &["migrate", VM]).await?;
    let name = the_migration(&admin, ns).await?.name_any();
    let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), ns);
    let dom = domain_name(ns, VM);

    // Read the console while the migration runs.
    let started = Instant::now();
    let mut seen: Vec<MigrationPhase> = Vec::new();
    let mut closed: Option<(String, Option<MigrationPhase>, Duration)> = None;
    let phase = loop {
        if started.elapsed() > MOVE {
            return Err(format!(
                "migration {name} not done within {MOVE:?}; phases seen {seen:?}"
            ));
        }
        let (phase, _) = phase_of(&migs, &name).await?;
        if let Some(p) = phase
            && seen.last() != Some(&p)
        {
            seen.push(p);
        }
        if phase.is_some_and(MigrationPhase::is_final) {
            break phase;
        }
        if closed.is_none() {
            if let Some(reason) = con.next_close(Duration::from_millis(300)).await {
                closed = Some((reason, phase, started.elapsed()));
                source_gone_at_close(&dom, src).await?;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let at_switch = last_tick(&con.transcript());
    let switched = Instant::now();
    timing(
        t0,
        &format!(
            "migration {name} ended {phase:?} after {:.1} s ({seen:?}); console at tick-{at_switch}",
            started.elapsed().as_secs_f64()
        ),
    );
    if phase != Some(MigrationPhase::Succeeded) {
        return Err(format!("migration {name} ended {phase:?}, want Succeeded"));
    }
    let vmi = vmi_now(&admin, ns).await?;
    let on = vmi.status.as_ref().and_then(|s| s.node_name.clone());
    if on.as_deref() != Some(dst.name()) {
        return Err(format!(
            "after the migration {VM} is on {on:?}, want {}",
            dst.name()
        ));
    }
    domain_only_on(ns, &uid, dst, src, Duration::from_secs(15)).await?;

    let after = match closed {
        Some((reason, phase, at)) => AfterSwitch::ClosedDuring { reason, phase, at },
        None => {
            // Ticks well past the switch-over come from the target only.
            let want = at_switch + 3;
            let bound = Duration::from_secs(30);
            loop {
                let now = last_tick(&con.transcript());
                if now >= want {
                    break AfterSwitch::Delivering {
                        tick: now,
                        after: switched.elapsed(),
                    };
                }
                let left = bound.saturating_sub(switched.elapsed());
                if left.is_zero() {
                    return Err(format!(
                        "PRODUCT BUG: the console opened before the migration neither closed nor delivered a tick past tick-{at_switch} within {bound:?} after the switch-over (hangs); last tick tick-{now}; transcript tail {:?}",
                        tail(&con.transcript())
                    ));
                }
                if let Some(reason) = con.next_close(left.min(Duration::from_millis(500))).await {
                    break AfterSwitch::Closed {
                        reason,
                        after: switched.elapsed(),
                    };
                }
            }
        }
    };
    timing(t0, &format!("console across the move: {after}"));
    match &after {
        AfterSwitch::Delivering { .. } => con.close().await,
        // A close says where the guest went, so that the user reconnects.
        AfterSwitch::Closed { reason, .. } | AfterSwitch::ClosedDuring { reason, .. } => {
            let want = format!("the VMI migrated to node {}", dst.name());
            if !reason.contains(&want) {
                return Err(format!(
                    "the console closed with {reason:?}, want it to say {want:?}"
                ));
            }
        }
    }

    // The guest itself went on, and a new console reaches it on the target.
    let (first, up) = still_counting(&admin, ns, at_switch, uptime).await?;
    timing(
        t0,
        &format!("new console on the target: tick-{first}, uptime {up:.1} s"),
    );
    Ok(())
}
