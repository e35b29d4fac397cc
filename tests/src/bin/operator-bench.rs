//! operator-bench: create N VMs 100 ms apart on the test bed, with a simulated
//! node that marks each placed VMI Running at once, and report create-to-Running
//! latency (P50, P95), the operator's API writes per VMI and its peak RSS.
//!
//! Run it with `make bench` (a release operator on its own test bed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase};
use ironvirt_tests::TestBed;
use ironvirt_tests::kubectl::ensure_crds;
use ironvirt_tests::operator::{Operator, TEST_NODE_LABEL, renew};
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

/// The simulated node: a Lease renewed every second, and a watch that marks
/// every VMI placed on it Running at once.
async fn simulated_node(client: Client, ns: String, node: String) {
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
        let _ = api
            .patch_status(
                &vmi.name_any(),
                &PatchParams::apply("bench-node").force(),
                &Patch::Apply(&apply),
            )
            .await;
    }
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
    let sim = tokio::spawn(simulated_node(client.clone(), ns.clone(), node.clone()));

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
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut created: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        let name = format!("vm{i:04}");
        let t = Instant::now();
        vms.create(&PostParams::default(), &vm(&name)?).await?;
        created.insert(name, t);
        let next = start + interval * u32::try_from(i + 1)?;
        tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
    }
    let deadline = Instant::now() + Duration::from_secs(120) + interval * u32::try_from(n)?;
    while running.lock().await.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = running.lock().await.clone();
    let mut lat: Vec<Duration> = created
        .iter()
        .filter_map(|(name, t)| done.get(name).map(|r| r.saturating_duration_since(*t)))
        .collect();
    lat.sort();
    let writes = op.metric("ironvirt_operator_api_writes_total").await;
    let vmi_writes = op
        .metric("ironvirt_operator_api_writes_total{controller=\"placement\",resource=\"vmi\"}")
        .await
        + op.metric("ironvirt_operator_api_writes_total{controller=\"vm\",resource=\"vmi\"}")
            .await;
    let rss = op.peak_rss_kib().unwrap_or(0);
    println!(
        "vms={n} running={} p50_ms={} p95_ms={} max_ms={} operator_writes={} writes_per_vmi={:.2} vmi_object_writes_per_vmi={:.2} operator_peak_rss_mib={:.1}",
        lat.len(),
        percentile(&lat, 50.0).as_millis(),
        percentile(&lat, 95.0).as_millis(),
        lat.last().copied().unwrap_or_default().as_millis(),
        writes,
        writes / n as f64,
        vmi_writes / n as f64,
        rss as f64 / 1024.0,
    );
    watch.abort();
    // Tear down while the operator runs, so finalizers are honoured.
    bed.delete_namespace(&ns, Duration::from_secs(300)).await?;
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
    let bed = TestBed::shared().await?;
    ensure_crds(&bed);
    for n in counts {
        run(&bed, n, Duration::from_millis(100)).await?;
    }
    Ok(())
}
