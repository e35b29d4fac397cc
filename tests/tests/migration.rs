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
use ironvirt_crds::{MigrationPhase, VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{ApiWs, api_port, bind, open_ws};
use ironvirt_tests::e2e::NsOperator;
use ironvirt_tests::handler::{domains_of, wait_gone, wait_phase};
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::nodes::{TestNode, delete_node_objects, wait_ready_and_renewing};
use ironvirt_tests::registry::Registry;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(150);
const MOVE: Duration = Duration::from_secs(240);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";
const IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";
const REPO: &str = "migration/guest:v1";

fn timing(t0: Instant, step: &str) {
    eprintln!(
        "migration timing: {step}: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// The guest as a VirtualMachine (runStrategy Always): `virtctl migrate`
/// acts on VMs.
fn guest(registry: &str) -> Result<VirtualMachine, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "mover"},
        "spec": {
            "runStrategy": "Always",
            "template": {"spec": {
                "terminationGracePeriodSeconds": 5,
                "domain": {
                    "memory": {"guest": "128Mi"},
                    "devices": {
                        "autoattachPodInterface": false,
                        "disks": [
                            {"name": "containerdisk", "disk": {"bus": "virtio"}},
                            {"name": "scratch", "disk": {"bus": "virtio"}},
                        ],
                    },
                },
                "volumes": [
                    {"name": "containerdisk", "containerDisk": {"image": format!("{registry}/{REPO}")}},
                    {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
                ],
            }},
        },
    }))
    .map_err(|e| format!("VM manifest: {e}"))
}

/// KubeVirt's own virtctl (IRONVIRT_VIRTCTL, built by hack/build-virtctl.sh)
/// with `kubeconfig`: (exit code, stdout and stderr).
async fn virtctl(
    kubeconfig: &std::path::Path,
    ns: &str,
    args: &[&str],
) -> Result<(i32, String), String> {
    let bin = std::env::var_os("IRONVIRT_VIRTCTL")
        .ok_or("IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`")?;
    let out = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .map_err(|e| format!("virtctl: {e}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

async fn console(admin: &kube::Client, ns: &str) -> Result<ApiWs, String> {
    open_ws(
        admin,
        &format!("{SUB}/namespaces/{ns}/virtualmachineinstances/mover/console"),
    )
    .await
    .map_err(|e| format!("console of mover: {e:?}"))
}

/// Runs `command` on the guest's shell and waits for `done`, which the
/// command prints computed, so the echoed command line never matches it.
async fn shell(con: &mut ApiWs, command: &str, done: &str) -> Result<usize, String> {
    let from = con.received();
    con.send(format!("{command}\n").as_bytes()).await?;
    con.expect_from(from, done, Duration::from_secs(30)).await?;
    Ok(from)
}

/// The numbers of the `tick-<n>` lines in `text`.
fn ticks(text: &str) -> Vec<u64> {
    text.split("tick-")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The guest's uptime in seconds, printed as `up=<s>:42`.
fn uptime(text: &str) -> Option<f64> {
    let rest = text.rsplit("up=").next()?;
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

async fn read_uptime(con: &mut ApiWs) -> Result<f64, String> {
    let from = shell(
        con,
        "echo up=$(cut -d' ' -f1 /proc/uptime):$((40+2))",
        ":42",
    )
    .await?;
    let text = con.transcript();
    let tail = text.get(from..).unwrap_or(&text).to_owned();
    // The echoed command line has no digits after up=; the answer has.
    tail.split("up=")
        .filter_map(|p| uptime(&format!("up={p}")))
        .last()
        .ok_or_else(|| format!("no uptime in {tail:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_guest_moves_to_the_other_node_without_a_reboot() {
    let bed = &bed_with_crds().await;
    let reg = Registry::start().expect("the registry");
    let disk =
        std::fs::read(IMAGE).expect("the test guest's disk (make deps / hack/build-guest.sh)");
    reg.push(REPO, &[("disk/disk.qcow2", disk)])
        .await
        .expect("push the guest as a containerDisk");
    let host = reg.host.clone();
    bed.with_namespace("migr", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let port: u16 = host
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or("a registry address without port")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("registries.yaml");
        std::fs::write(
            &config,
            format!("registries:\n  \"{host}\":\n    insecure: true\n"),
        )
        .map_err(|e| e.to_string())?;
        let args = vec![
            "--registries-config".to_owned(),
            config.display().to_string(),
        ];
        let pid = std::process::id();
        let mut nodes = Vec::new();
        for k in 1..=2 {
            nodes.push(TestNode::start_with(
                bed,
                &ns,
                &format!("migr-{pid}-{k}"),
                &[port],
                &args,
            )?);
        }
        timing(t0, "2 nodes started");
        let op = NsOperator::start(bed, &ns, &format!("migr-operator-{pid}"));

        let outcome = story(bed, &ns, &nodes, &host, t0).await;

        let admin = bed.admin();
        let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), &ns);
        let _ = migs
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let _ = vms.delete("mover", &DeleteParams::default()).await;
        let gone = wait_gone(&admin, &ns, "mover", Duration::from_secs(90)).await;
        op.remove(&admin).await;
        let mut stop_errors = Vec::new();
        for n in &mut nodes {
            if let Err(e) = n.stop() {
                stop_errors.push(format!("{}: {e}", n.name()));
            }
            delete_node_objects(&admin, n.name()).await;
        }
        timing(t0, "cleaned up");
        if outcome.is_err() {
            for n in &nodes {
                eprintln!("--- handler log of {} ---\n{}", n.name(), n.handler_log());
            }
        }
        outcome?;
        gone?;
        if !stop_errors.is_empty() {
            return Err(format!("stopping the nodes failed: {stop_errors:?}"));
        }
        let left: Vec<String> = nodes.iter().flat_map(TestNode::leftovers).collect();
        if !left.is_empty() {
            return Err(format!("left after the nodes stopped: {left:?}"));
        }
        Ok::<(), String>(())
    })
    .await;
}

async fn story(
    bed: &TestBed,
    ns: &str,
    nodes: &[TestNode],
    registry: &str,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    for n in nodes {
        wait_ready_and_renewing(&admin, n.name(), Duration::from_secs(60))
            .await
            .map_err(|e| format!("{e}; handler log:\n{}", n.handler_log()))?;
    }
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
    vms.create(&PostParams::default(), &guest(registry)?)
        .await
        .map_err(|e| format!("create mover: {e}"))?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
    let vmi = wait_phase(&admin, ns, "mover", "Running", BOOT).await?;
    let uid = vmi.uid().ok_or("a VMI without uid")?;
    let source = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or("a running VMI without nodeName")?;
    let (src, dst) = if nodes[0].name() == source {
        (&nodes[0], &nodes[1])
    } else {
        (&nodes[1], &nodes[0])
    };
    timing(t0, &format!("mover Running on {source}"));
    let migratable = vmi
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "LiveMigratable"))
        .map(|c| c.status.clone());
    if migratable.as_deref() != Some("True") {
        return Err(format!("LiveMigratable is {migratable:?}, want True"));
    }

    // The guest writes a block of its emptyDisk and starts counting.
    let mut con = console(&admin, ns).await?;
    con.expect_from(0, MARKER, BOOT).await?;
    shell(
        &mut con,
        "echo mig-$((6*7)) | dd of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; sync; echo 3 > /proc/sys/vm/drop_caches; echo wrote-$((2*3))",
        "wrote-6",
    )
    .await?;
    shell(
        &mut con,
        "(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done) & echo counting-$((3*3))",
        "counting-9",
    )
    .await?;
    let from = con.received();
    con.expect_from(from, "tick-3", Duration::from_secs(20))
        .await?;
    let up_before = read_uptime(&mut con).await?;
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
    let (code, out) = virtctl(&kubeconfig, ns, &["migrate", "mover"]).await?;
    if code != 0 {
        return Err(format!("virtctl migrate mover: exit {code}: {out}"));
    }
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
    let started = Instant::now();
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
