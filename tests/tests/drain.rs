//! Draining a node (issue #18, acceptance 4): `ironctl drain node-1` on a
//! bed of two real nodes, with three VMs whose evictionStrategy is
//! LiveMigrate and one whose evictionStrategy is None.
//!
//! - The three move to node-2 by live migration: the same VMIs (same UIDs),
//!   Running there, their domains gone from node-1; one of them counts on
//!   its console before the drain and goes on counting after it, with no
//!   boot marker in between: no reboot.
//! - The None one is stopped, as `kubectl drain` evicts a pod, and its VM
//!   (runStrategy Always) starts a new VMI on node-2.
//! - `ironctl drain` prints what it waits for and ends with "drained";
//!   `ironctl uncordon` undoes the cordon and the taint.
//!
//! Node-2 is cordoned while the VMs start, so that all of them start on
//! node-1 (`ironctl uncordon` then opens it).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::api::{api_port, open_ws};
use ironvirt_tests::cli::ironctl_in;
use ironvirt_tests::handler::{domains_of, wait_gone, wait_phase};
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::migration::{
    BOOT, MARKER, Pair, SUB, guest, guest_registry, shell, start_counting, ticks, timing,
};
use ironvirt_tests::operator::eventually;
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

const MOVERS: [&str; 3] = ["drain-a", "drain-b", "drain-c"];
const STOPPED: &str = "drain-none";

/// The guest VM named `name` with `strategy`.
fn vm(registry: &str, name: &str, strategy: &str) -> Result<VirtualMachine, String> {
    let mut v = serde_json::to_value(guest(registry)?).map_err(|e| e.to_string())?;
    v["metadata"]["name"] = serde_json::json!(name);
    v["spec"]["template"]["spec"]["evictionStrategy"] = serde_json::json!(strategy);
    serde_json::from_value(v).map_err(|e| e.to_string())
}

async fn cordon(admin: &kube::Client, node: &str, on: bool) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(admin.clone());
    let body = serde_json::json!({"spec": {"unschedulable": if on { Some(true) } else { None }}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
        .map_err(|e| format!("cordon {node}: {e}"))
}

/// Each VMI's (uid, node).
async fn where_they_run(
    vmis: &Api<VirtualMachineInstance>,
) -> Result<BTreeMap<String, (String, String)>, String> {
    let list = vmis
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .map(|v| {
            let node = v
                .status
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            (v.name_any(), (v.uid().unwrap_or_default(), node))
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn ironctl_drain_moves_live_migratable_vmis_and_stops_the_others() {
    let bed = &bed_with_crds().await;
    let reg = guest_registry().await.expect("the registry");
    let host = reg.host.clone();
    bed.with_namespace("drain", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let pair = Pair::start(bed, &ns, "drain", &host, &[])?;
        timing(t0, "2 nodes started");
        let outcome = story(bed, &ns, &pair, &host, t0).await;
        let admin = bed.admin();
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        for name in MOVERS.iter().chain([&STOPPED]) {
            let _ = vms.delete(name, &DeleteParams::default()).await;
        }
        for name in MOVERS.iter().chain([&STOPPED]) {
            let _ = wait_gone(&admin, &ns, name, Duration::from_secs(90)).await;
        }
        for n in &pair.nodes {
            let _ = cordon(&admin, n.name(), false).await;
        }
        pair.finish(bed, &ns, outcome, t0).await
    })
    .await;
}

async fn story(
    bed: &ironvirt_tests::TestBed,
    ns: &str,
    pair: &Pair,
    registry: &str,
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    pair.wait_ready(&admin).await?;
    let (n1, n2) = (&pair.nodes[0], &pair.nodes[1]);
    cordon(&admin, n2.name(), true).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
    for name in MOVERS {
        vms.create(&PostParams::default(), &vm(registry, name, "LiveMigrate")?)
            .await
            .map_err(|e| format!("create {name}: {e}"))?;
    }
    vms.create(&PostParams::default(), &vm(registry, STOPPED, "None")?)
        .await
        .map_err(|e| format!("create {STOPPED}: {e}"))?;
    for name in MOVERS.iter().chain([&STOPPED]) {
        wait_phase(&admin, ns, name, "Running", BOOT).await?;
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
    let before = where_they_run(&vmis).await?;
    if let Some((name, (_, node))) = before.iter().find(|(_, (_, node))| node != n1.name()) {
        return Err(format!("{name} started on {node}, want {}", n1.name()));
    }
    timing(t0, "4 VMs Running on node-1");

    // drain-a counts on its console.
    let path = format!(
        "{SUB}/namespaces/{ns}/virtualmachineinstances/{}/console",
        MOVERS[0]
    );
    let mut con = open_ws(&admin, &path)
        .await
        .map_err(|e| format!("console of {}: {e:?}", MOVERS[0]))?;
    con.expect_from(0, MARKER, BOOT).await?;
    start_counting(&mut con).await?;
    let last_before = ticks(&con.transcript()).into_iter().max().unwrap_or(0);
    con.close().await;

    // Open node-2, drain node-1.
    let kubeconfig = bed.info().kubeconfig.clone();
    let un = ironctl_in(
        &kubeconfig,
        ns,
        &["uncordon", n2.name()],
        None,
        Duration::from_secs(30),
    )
    .await;
    un.ok()?;
    let started = Instant::now();
    let drained = ironctl_in(
        &kubeconfig,
        ns,
        &["drain", n1.name(), "--timeout", "5m"],
        None,
        Duration::from_secs(330),
    )
    .await;
    let took = started.elapsed();
    let out = drained.stdout_text();
    drained
        .ok()
        .map_err(|e| format!("ironctl drain: {e}; said: {out}"))?;
    timing(
        t0,
        &format!("ironctl drain took {:.1} s", took.as_secs_f64()),
    );
    eprintln!("ironctl drain said:\n{out}");
    if !out.contains(&format!("node/{} drained", n1.name())) || !out.contains("waiting for") {
        return Err(format!("ironctl drain's output: {out}"));
    }
    let node1: Node = Api::<Node>::all(admin.clone())
        .get(n1.name())
        .await
        .map_err(|e| e.to_string())?;
    let spec = node1.spec.unwrap_or_default();
    if spec.unschedulable != Some(true)
        || !spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "kubevirt.io/drain")
    {
        return Err("the drained node is not cordoned and tainted kubevirt.io/drain".into());
    }

    // The movers: same VMIs, on node-2, migrated.
    let after = eventually(
        Duration::from_secs(120),
        "all 4 VMIs Running on node-2",
        || {
            let vmis = vmis.clone();
            let n2 = n2.name().to_owned();
            async move {
                let list = vmis.list(&ListParams::default()).await.ok()?;
                let all = list.items.len() == 4
                    && list.items.iter().all(|v| {
                        let s = v.status.as_ref();
                        s.and_then(|s| s.node_name.as_deref()) == Some(n2.as_str())
                            && s.and_then(|s| s.phase).map(|p| format!("{p:?}")).as_deref()
                                == Some("Running")
                    });
                all.then_some(())
            }
        },
    )
    .await
    .map_err(|e| format!("{e}; now: {:?}", before));
    after?;
    let now = where_they_run(&vmis).await?;
    for name in MOVERS {
        let (uid_before, _) = &before[name];
        let (uid_now, node) = &now[name];
        if uid_now != uid_before {
            return Err(format!(
                "{name} was restarted (uid {uid_before} -> {uid_now}), not migrated"
            ));
        }
        let v = vmis.get(name).await.map_err(|e| e.to_string())?;
        let state = v.status.and_then(|s| s.migration_state).unwrap_or_default();
        if state.completed != Some(true) || state.target_node.as_deref() != Some(node.as_str()) {
            return Err(format!("{name}'s migrationState: {state:?}"));
        }
        if !domains_of(&n1.libvirt_uri(), uid_now).is_empty() {
            return Err(format!("{name}'s domain is still on {}", n1.name()));
        }
    }
    // The None one: a new VMI on node-2.
    if now[STOPPED].0 == before[STOPPED].0 {
        return Err(format!("{STOPPED} (evictionStrategy None) kept its VMI"));
    }
    if !domains_of(&n1.libvirt_uri(), &before[STOPPED].0).is_empty() {
        return Err(format!("{STOPPED}'s old domain is still on {}", n1.name()));
    }
    // drain-a never rebooted.
    let mut con = open_ws(&admin, &path)
        .await
        .map_err(|e| format!("console of {} after the drain: {e:?}", MOVERS[0]))?;
    let from = con.received();
    con.expect_from(from, "tick-", Duration::from_secs(20))
        .await?;
    shell(&mut con, "echo alive-$((5*5))", "alive-25").await?;
    let text = con.transcript();
    con.close().await;
    let first_after = ticks(&text).into_iter().min().unwrap_or(0);
    if text.contains(MARKER) || first_after <= last_before {
        return Err(format!(
            "{} rebooted: tick-{last_before} before, tick-{first_after} after",
            MOVERS[0]
        ));
    }
    timing(
        t0,
        "3 VMIs migrated to node-2 without a reboot, the None one restarted there",
    );

    // uncordon undoes both.
    let un = ironctl_in(
        &kubeconfig,
        ns,
        &["uncordon", n1.name()],
        None,
        Duration::from_secs(30),
    )
    .await;
    un.ok()?;
    let node1: Node = Api::<Node>::all(admin.clone())
        .get(n1.name())
        .await
        .map_err(|e| e.to_string())?;
    let spec = node1.spec.unwrap_or_default();
    if spec.unschedulable == Some(true)
        || spec
            .taints
            .unwrap_or_default()
            .iter()
            .any(|t| t.key == "kubevirt.io/drain")
    {
        return Err("ironctl uncordon left the cordon or the taint".into());
    }
    Ok(())
}
