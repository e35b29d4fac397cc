//! operator-bench: create N VMs at a fixed interval on the test bed, with a
//! simulated node that marks each placed VMI Running at once, and report
//! create-to-Running latency (P50, P95, max), the stages in between, the
//! operator's API writes per VM by object and part (its
//! `ironvirt_operator_api_writes_total` metric), the simulated node's own
//! writes, the CPU time of the operator and the control plane, and the
//! operator's peak RSS.
//!
//! Arguments: VM counts (default 100 and 1000). `OPBENCH_INTERVAL_MS` sets the
//! interval between creates (default 100); `OPBENCH_TEARDOWN=0` leaves the
//! VMs in place (for a last run on a bed that is stopped next). Run it with `make bench` (a
//! release operator on its own test bed), e.g.
//! `OPBENCH_INTERVAL_MS=20 BENCH=operator hack/bench.sh 10000`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use ironvirt_tests::TestBed;
use ironvirt_tests::kubectl::ensure_crds;
use ironvirt_tests::operator::{Operator, TEST_NODE_LABEL, metrics_text, renew};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::Mutex;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn vm(name: &str) -> anyhow::Result<VirtualMachine> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"memory": {"guest": "64Mi"}}}}},
    }))?)
}

/// Writes the simulated node makes (they are not the operator's).
#[derive(Default)]
struct NodeWrites {
    /// VMI status: Scheduled → Running.
    status: AtomicU64,
    /// VMI finalizer removal on deletion.
    finalizer: AtomicU64,
}

/// The simulated node: a Lease renewed every second, and a watch that marks
/// every VMI placed on it Running at once.
async fn simulated_node(client: Client, ns: String, node: String, writes: Arc<NodeWrites>) {
    let lease_client = client.clone();
    let lease_node = node.clone();
    tokio::spawn(async move {
        loop {
            renew(&lease_client, &lease_node).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let api: Api<VirtualMachineInstance> = Api::namespaced(client, &ns);
    let wc = watcher::Config::default().labels(&format!("kubevirt.io/nodeName={node}"));
    let mut stream = watcher(api.clone(), wc).applied_objects().boxed();
    while let Some(Ok(vmi)) = stream.next().await {
        let phase = vmi.status.as_ref().and_then(|s| s.phase);
        if vmi.metadata.deletion_timestamp.is_some() {
            let patch = json!({"metadata": {"finalizers": null}});
            writes.finalizer.fetch_add(1, Ordering::Relaxed);
            let _ = api
                .patch(
                    &vmi.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
            continue;
        }
        if phase != Some(VirtualMachineInstancePhase::Scheduled) {
            continue;
        }
        let now = Timestamp::now().to_string();
        let apply = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            "phaseTransitionTimestamps": [{"phase": "Running", "phaseTransitionTimestamp": now}],
        }});
        writes.status.fetch_add(1, Ordering::Relaxed);
        // Each VMI on its own, as a handler's workers do: one at a time, the
        // node alone falls behind 50 VMIs a second (each write takes about
        // 30 ms on the loaded bed).
        let (api, name) = (api.clone(), vmi.name_any());
        tokio::spawn(async move {
            let _ = api
                .patch_status(
                    &name,
                    &PatchParams::apply("bench-node").force(),
                    &Patch::Apply(&apply),
                )
                .await;
        });
    }
}

/// When the bench first saw each VMI exist, placed (Scheduled or later) and
/// Running.
#[derive(Default, Clone, Copy)]
struct VmiSeen {
    exists: Option<Instant>,
    scheduled: Option<Instant>,
    running: Option<Instant>,
}

/// The operator's writes by (resource, write), summed over controllers,
/// from its metrics text.
fn writes_by_kind(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("ironvirt_operator_api_writes_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_else(|| "-".to_owned())
        };
        *out.entry((label("resource"), label("write")))
            .or_insert(0.0) += value;
    }
    out
}

/// CPU seconds (user + system) of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the
    // command name; the clock tick is 100 Hz on Linux.
    (ticks(11) + ticks(12)) / 100.0
}

/// The test bed's processes by name (from its pids directory), with CPU seconds.
fn bed_cpu() -> BTreeMap<String, f64> {
    let dir = std::env::var_os("IRONVIRT_STATE")
        .map(std::path::PathBuf::from)
        .unwrap_or_default()
        .join("pids");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|p| p.lines().next()?.trim().parse::<u32>().ok())
        {
            out.insert(name, cpu_seconds(pid));
        }
    }
    out
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn stage(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "  stage {name}: n={} p50_ms={} p95_ms={} max_ms={}",
        d.len(),
        percentile(&d, 50.0).as_millis(),
        percentile(&d, 95.0).as_millis(),
        d.last().copied().unwrap_or_default().as_millis()
    );
}

async fn run(bed: &TestBed, n: usize, interval: Duration) -> anyhow::Result<()> {
    let client = bed.admin();
    let ns = bed.namespace("bench").await?;
    let node = format!("{ns}-node");
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": node,
            "labels": {"kubevirt.io/schedulable": "true", TEST_NODE_LABEL: ns}}}))?,
        )
        .await?;
    nodes
        .patch_status(
            &node,
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {
            "capacity": {"cpu": "100000", "memory": "100Ti"},
            "allocatable": {"cpu": "100000", "memory": "100Ti"}}})),
        )
        .await?;
    renew(&client, &node).await;
    let op = Operator::start_profile(bed, "release", &ns, "bench", &[]);
    let node_writes = Arc::new(NodeWrites::default());
    let sim = tokio::spawn(simulated_node(
        client.clone(),
        ns.clone(),
        node.clone(),
        node_writes.clone(),
    ));

    // Watch VMs: the first time each shows Running.
    let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), &ns);
    let seen = running.clone();
    let watch = tokio::spawn({
        let vms = vms.clone();
        async move {
            let mut stream = watcher(vms, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(vm)) = stream.next().await {
                let up = vm
                    .status
                    .as_ref()
                    .and_then(|s| s.printable_status.as_deref())
                    == Some("Running");
                if up {
                    seen.lock()
                        .await
                        .entry(vm.name_any())
                        .or_insert_with(Instant::now);
                }
            }
        }
    });
    // Watch VMIs: when each first exists, is placed and runs.
    let vmi_seen: Arc<Mutex<HashMap<String, VmiSeen>>> = Arc::default();
    let vmi_watch = tokio::spawn({
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let seen = vmi_seen.clone();
        async move {
            let mut stream = watcher(vmis, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(vmi)) = stream.next().await {
                let now = Instant::now();
                let phase = vmi.status.as_ref().and_then(|s| s.phase);
                let mut map = seen.lock().await;
                let e = map.entry(vmi.name_any()).or_default();
                e.exists.get_or_insert(now);
                if matches!(
                    phase,
                    Some(
                        VirtualMachineInstancePhase::Scheduled
                            | VirtualMachineInstancePhase::Running
                    )
                ) {
                    e.scheduled.get_or_insert(now);
                }
                if phase == Some(VirtualMachineInstancePhase::Running) {
                    e.running.get_or_insert(now);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_op_before = cpu_seconds(op.pid());
    let cpu_bed_before = bed_cpu();

    // One create every `interval`, each sent at its time whether or not the
    // ones before it have been answered (the API's own latency is part of
    // create → Running).
    let mut created: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    let mut creates = Vec::with_capacity(n);
    let mut late = 0usize;
    for i in 0..n {
        let at = start + interval * u32::try_from(i)?;
        tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
        let name = format!("vm{i:05}");
        let t = Instant::now();
        if t > at + Duration::from_millis(5) {
            late += 1;
        }
        let (vms, obj) = (vms.clone(), vm(&name)?);
        creates.push(tokio::spawn(async move {
            vms.create(&PostParams::default(), &obj).await.map(|_| ())
        }));
        created.insert(name, t);
    }
    for c in creates {
        c.await??;
    }
    let create_secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(120) + interval * u32::try_from(n)?;
    while running.lock().await.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_secs = start.elapsed().as_secs_f64();
    // Let writes that trail Running (none are expected) show in the metric.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu_op = cpu_seconds(op.pid()) - cpu_op_before;
    let cpu_bed: BTreeMap<String, f64> = bed_cpu()
        .into_iter()
        .map(|(k, v)| {
            let before = cpu_bed_before.get(&k).copied().unwrap_or(0.0);
            (k, v - before)
        })
        .collect();
    let done = running.lock().await.clone();
    let mut lat: Vec<Duration> = created
        .iter()
        .filter_map(|(name, t)| done.get(name).map(|r| r.saturating_duration_since(*t)))
        .collect();
    lat.sort();
    let text = metrics_text(op.metrics_port).await;
    let by_kind = writes_by_kind(&text);
    let writes: f64 = by_kind.values().sum();
    let events: f64 = by_kind
        .iter()
        .filter(|((r, _), _)| r == "event")
        .map(|(_, v)| v)
        .sum();
    let object_writes = writes - events;
    let vmi_writes: f64 = by_kind
        .iter()
        .filter(|((r, _), _)| r == "vmi")
        .map(|(_, v)| v)
        .sum();
    let rss = op.peak_rss_kib().unwrap_or(0);
    println!(
        "vms={n} interval_ms={} running={} p50_ms={} p95_ms={} max_ms={} operator_writes={} writes_per_vm={:.2} vmi_object_writes_per_vm={:.2} events_per_vm={:.2} operator_peak_rss_mib={:.1}",
        interval.as_millis(),
        lat.len(),
        percentile(&lat, 50.0).as_millis(),
        percentile(&lat, 95.0).as_millis(),
        lat.last().copied().unwrap_or_default().as_millis(),
        object_writes,
        object_writes / n as f64,
        vmi_writes / n as f64,
        events / n as f64,
        rss as f64 / 1024.0,
    );
    for ((resource, write), v) in &by_kind {
        println!(
            "  operator writes {resource}/{write}: {v} ({:.3} per VM)",
            v / n as f64
        );
    }
    println!(
        "  simulated node writes (not the operator's): vmi/status {} ({:.3} per VM); lease renewals not counted",
        node_writes.status.load(Ordering::Relaxed),
        node_writes.status.load(Ordering::Relaxed) as f64 / n as f64,
    );
    // Where the time goes: create → VMI exists → placed → VMI Running → VM Running.
    let seen = vmi_seen.lock().await.clone();
    let mut to_vmi = Vec::new();
    let mut to_sched = Vec::new();
    let mut to_vmi_run = Vec::new();
    let mut to_vm_run = Vec::new();
    for (name, t) in &created {
        let s = seen.get(name).copied().unwrap_or_default();
        if let Some(e) = s.exists {
            to_vmi.push(e.saturating_duration_since(*t));
            if let Some(sc) = s.scheduled {
                to_sched.push(sc.saturating_duration_since(e));
                if let Some(r) = s.running {
                    to_vmi_run.push(r.saturating_duration_since(sc));
                    if let Some(v) = done.get(name) {
                        to_vm_run.push(v.saturating_duration_since(r));
                    }
                }
            }
        }
    }
    stage("create → VMI exists", to_vmi);
    stage("VMI exists → Scheduled", to_sched);
    stage("Scheduled → VMI Running (simulated node)", to_vmi_run);
    stage("VMI Running → VM Running", to_vm_run);
    println!(
        "  creates sent and answered in {create_secs:.1} s ({late} sent over 5 ms late), all Running after {all_secs:.1} s; load average {}",
        loadavg()
    );
    println!(
        "  CPU seconds during the run: operator {cpu_op:.1}, {}",
        cpu_bed
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    watch.abort();
    vmi_watch.abort();
    if std::env::var("OPBENCH_TEARDOWN").as_deref() == Ok("0") {
        // The bed goes away after this run (hack/bench.sh stops it).
        sim.abort();
        anyhow::ensure!(
            lat.len() == n,
            "only {} of {n} VMs reached Running",
            lat.len()
        );
        return Ok(());
    }
    // Tear down while the operator runs, so finalizers are honoured: the VMs
    // first (the operator's leader-election Lease is in the namespace, and a
    // namespace being deleted accepts no renewal), then the namespace.
    let teardown = Instant::now();
    let timeout = Duration::from_secs(300) + Duration::from_millis(60) * u32::try_from(n)?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let gone_by = Instant::now() + timeout;
    // kube-apiserver gives a deletecollection 60 s (its request timeout) and
    // stops there: at 10,000 VMs the bench saw 504 Timeout (which the client
    // reports as "client error (SendRequest)") after deleting only some. So it
    // asks again until one completes, then waits for the VMs and VMIs to go.
    let mut asked = false;
    loop {
        if !asked {
            match vms
                .delete_collection(&DeleteParams::default(), &Default::default())
                .await
            {
                Ok(_) => asked = true,
                Err(kube::Error::Api(e)) if e.code != 504 => {
                    return Err(kube::Error::Api(e).into());
                }
                Err(e) => eprintln!("  deleting the VMs did not complete ({e}); asking again"),
            }
        }
        let left = vms.list_metadata(&Default::default()).await?.items.len()
            + vmis.list_metadata(&Default::default()).await?.items.len();
        if left == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < gone_by,
            "{left} VMs and VMIs left after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bed.delete_namespace(&ns, timeout).await?;
    println!(
        "  namespace deleted in {:.1} s (simulated node: {} VMI finalizer removals)",
        teardown.elapsed().as_secs_f64(),
        node_writes.finalizer.load(Ordering::Relaxed)
    );
    sim.abort();
    drop(op);
    let _ = nodes.delete(&node, &DeleteParams::default()).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), ironvirt_tests::operator::LEASE_NAMESPACE);
    let _ = leases.delete(&node, &DeleteParams::default()).await;
    let _ = leases
        .delete(
            &format!("ironvirt-handler-{node}"),
            &DeleteParams::default(),
        )
        .await;
    anyhow::ensure!(
        lat.len() == n,
        "only {} of {n} VMs reached Running",
        lat.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counts: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() {
        vec![100, 1000]
    } else {
        counts
    };
    let interval = match std::env::var("OPBENCH_INTERVAL_MS") {
        Ok(v) => Duration::from_millis(v.parse()?),
        Err(_) => Duration::from_millis(100),
    };
    let bed = TestBed::shared().await?;
    ensure_crds(&bed);
    // SIGTERM or Ctrl-C ends the run by dropping it, so the operator it
    // started is killed too (a signal's default action would leave it
    // running after the bench is gone).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let runs = async {
        for n in counts {
            run(&bed, n, interval).await?;
        }
        anyhow::Ok(())
    };
    tokio::select! {
        done = runs => done,
        _ = term.recv() => anyhow::bail!("stopped by SIGTERM"),
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped by Ctrl-C"),
    }
}
