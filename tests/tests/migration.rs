//! Live migration between two real nodes (issue #18): KubeVirt's own
//! `virtctl migrate` (a user with kubevirt.io:edit) makes a
//! VirtualMachineInstanceMigration, which moves a running guest from one
//! node's libvirtd to the other's, through the operator's migration
//! controller and both nodes' handlers.
//!
//! The guest boots from a containerDisk (pulled from a real registry on each
//! node) with an emptyDisk, no network interface (LiveMigratable), and:
//! - counts on its console once a second; after the move the count goes on
//!   from where it was, the boot marker never shows again and the guest's
//!   uptime kept growing: no reboot;
//! - wrote a block of its emptyDisk before the move and reads it back after,
//!   from the disk (caches dropped): block migration copied it;
//! - the migration passes through KubeVirt's phases to Succeeded, the VMI's
//!   nodeName and node label change, its domain exists only on the target,
//!   and a console opened afterwards works (through ironvirt-api to the
//!   target's handler).

use std::time::{Duration, Instant};

use ironvirt_crds::migration::{MIGRATION_TARGET_NODE_LABEL, VirtualMachineInstanceMigration};
use ironvirt_crds::wire::NODE_NAME_LABEL;
use ironvirt_crds::{MigrationPhase, VirtualMachineInstance};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{api_port, bind};
use ironvirt_tests::handler::domains_of;
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::migration::{
    MOVE, Pair, boot_counting, console, read_uptime, shell, ticks, timing, virtctl_ok,
};
use kube::ResourceExt;
use kube::api::{Api, ListParams};

const MARKER: &str = ironvirt_tests::migration::MARKER;

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_moves_to_the_other_node_without_a_reboot() {
    let bed = &bed_with_crds().await;
    let reg = ironvirt_tests::migration::guest_registry()
        .await
        .expect("the registry with the guest");
    let host = reg.host.clone();
    bed.with_namespace("migr", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let pair = Pair::start(bed, &ns, "migr", &host, &[])?;
        timing(t0, "2 nodes started");
        let outcome = story(bed, &ns, &pair, &host, t0).await;
        pair.finish(bed, &ns, outcome, t0).await
    })
    .await;
}

async fn story(
    bed: &TestBed,
    ns: &str,
    pair: &Pair,
    registry: &str,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    pair.wait_ready(&admin).await?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
    // The guest counts, and writes a block of its emptyDisk.
    let guest = boot_counting(&admin, ns, registry).await?;
    let (uid, source, mut con) = (guest.uid, guest.source, guest.con);
    let (src, dst) = pair.ends(&source)?;
    timing(t0, &format!("mover Running on {source}, counting"));
    shell(
        &mut con,
        "echo mig-$((6*7)) | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; echo wrote-$((2*3))",
        "wrote-6",
    )
    .await?;
    // The guest's clock stops while QEMU pauses it (no kvmclock, no NTP
    // here): how far it falls behind the host's clock across the move is the
    // pause the guest lived through. A control first, without a migration.
    let (control_up, control_at) = (read_uptime(&mut con).await?, Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let up_before = read_uptime(&mut con).await?;
    let host_before = Instant::now();
    let control_lag = (host_before - control_at).as_secs_f64() - (up_before - control_up);
    let before_ticks = ticks(&con.transcript());
    let last_before = before_ticks.iter().copied().max().unwrap_or(0);
    con.close().await;
    timing(
        t0,
        &format!("guest counting (tick-{last_before}), uptime {up_before:.1} s"),
    );

    // Migrate, with KubeVirt's virtctl, as a user with kubevirt.io:edit.
    bind(&admin, ns, "mira", "kubevirt.io:edit").await;
    let kubeconfig = bed
        .user_kubeconfig("mira", &["dev"])
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    virtctl_ok(&kubeconfig, ns, &["migrate", "mover"]).await?;
    let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), ns);
    let list = migs
        .list(&ListParams::default().labels("kubevirt.io/vmi-name=mover"))
        .await
        .map_err(|e| e.to_string())?;
    let [m] = list.items.as_slice() else {
        return Err(format!(
            "virtctl migrate made {} migrations",
            list.items.len()
        ));
    };
    let name = m.name_any();
    let mut seen: Vec<MigrationPhase> = Vec::new();
    let done = loop {
        if started.elapsed() > MOVE {
            return Err(format!(
                "migration {name} not done within {MOVE:?}; phases seen {seen:?}"
            ));
        }
        let cur = migs.get(&name).await.map_err(|e| e.to_string())?;
        let phase = cur.status.as_ref().and_then(|s| s.phase);
        if let Some(p) = phase
            && seen.last() != Some(&p)
        {
            seen.push(p);
        }
        if phase.is_some_and(MigrationPhase::is_final) {
            break cur;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    timing(
        t0,
        &format!(
            "migration {name} ended after {:.1} s: {seen:?}",
            took.as_secs_f64()
        ),
    );
    if done.status.as_ref().and_then(|s| s.phase) != Some(MigrationPhase::Succeeded) {
        return Err(format!(
            "migration ended {:?}: {:?}",
            done.status.as_ref().and_then(|s| s.phase),
            done.status.as_ref().and_then(|s| s.conditions.clone())
        ));
    }
    // The phases go forward in KubeVirt's order.
    let order = |p: &MigrationPhase| *p as usize;
    if !seen.windows(2).all(|w| order(&w[0]) < order(&w[1])) {
        return Err(format!("phases out of order: {seen:?}"));
    }

    // The VMI is on the target, its domain only there.
    let vmi = vmis.get("mover").await.map_err(|e| e.to_string())?;
    let on = vmi.status.as_ref().and_then(|s| s.node_name.clone());
    if on.as_deref() != Some(dst.name()) {
        return Err(format!(
            "after the migration mover is on {on:?}, want {}",
            dst.name()
        ));
    }
    if vmi.labels().get(NODE_NAME_LABEL).map(String::as_str) != Some(dst.name())
        || vmi.labels().contains_key(MIGRATION_TARGET_NODE_LABEL)
    {
        return Err(format!("labels after the migration: {:?}", vmi.labels()));
    }
    let state = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.clone())
        .ok_or("no migrationState")?;
    if state.completed != Some(true)
        || state.source_node.as_deref() != Some(src.name())
        || state.target_node.as_deref() != Some(dst.name())
        || state.start_timestamp.is_none()
        || state.end_timestamp.is_none()
    {
        return Err(format!("migrationState after the migration: {state:?}"));
    }
    let dom = ironvirt_crds::wire::domain_name(ns, "mover");
    let there = domains_of(&dst.libvirt_uri(), &uid);
    let here = domains_of(&src.libvirt_uri(), &uid);
    if there != [dom.clone()] || !here.is_empty() {
        return Err(format!(
            "domains after the migration: target {there:?}, source {here:?} (want {dom} on the target only)"
        ));
    }

    // The same guest, still counting, its disk block kept.
    let mut con = console(&admin, ns).await?;
    let from = con.received();
    con.expect_from(from, "tick-", Duration::from_secs(20))
        .await?;
    let up_after = read_uptime(&mut con).await?;
    let lag = host_before.elapsed().as_secs_f64() - (up_after - up_before);
    eprintln!(
        "migration bench: {:.1} s from virtctl migrate to Succeeded; the guest's clock fell {:.0} ms behind the host's across the move (control without a migration: {:.0} ms over 3 s; QEMU's default max downtime 300 ms, no bandwidth limit, {} copied disks)",
        took.as_secs_f64(),
        lag * 1000.0,
        control_lag * 1000.0,
        2
    );
    shell(
        &mut con,
        "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vdb bs=512 count=1 2>/dev/null | head -c 6; echo; echo read-$((4*2))",
        "read-8",
    )
    .await?;
    let text = con.transcript();
    con.close().await;
    let after_ticks = ticks(&text);
    let first_after = after_ticks.iter().copied().min().unwrap_or(0);
    if text.contains(MARKER) {
        return Err("the guest printed its boot marker again: it rebooted".into());
    }
    if first_after <= last_before {
        return Err(format!(
            "the count did not go on: tick-{last_before} before, tick-{first_after} first after"
        ));
    }
    if up_after <= up_before {
        return Err(format!(
            "uptime {up_before} s before, {up_after} s after: a reboot"
        ));
    }
    if !text.contains("mig-42") {
        return Err(format!(
            "the emptyDisk block is not there after the migration: {text:?}"
        ));
    }
    timing(
        t0,
        &format!("after: tick-{first_after}.., uptime {up_after:.1} s, emptyDisk block kept"),
    );
    Ok(())
}
