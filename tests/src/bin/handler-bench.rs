//! handler-bench: the handler's own costs, on the test bed with libvirt.
//!
//! - RSS of a release handler with no VMI and with 20 running VMIs on
//!   libvirt's test driver: what the handler adds per VM, beyond QEMU itself.
//! - Scheduled → Running latency: the time from the placement write to the
//!   watch event that shows the VMI Running, on the test driver and on QEMU.
//! - Serial console throughput: the guest prints 1 MB; read through the
//!   handler's websocket, and straight from QEMU's console socket.
//!
//! - containerDisk start (`HANDLER_BENCH=images`, `make bench-images`):
//!   Scheduled → Running of a VMI whose containerDisk is pulled first (cold
//!   cache: each image distinct), of one whose image is cached (warm), and
//!   of the same guest from a hostDisk, alternated with the warm ones.
//!
//! Run it with `make bench` (after the operator benchmark) or
//! `make bench-handler`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ironvirt_crds::{VirtualMachineInstance, VirtualMachineInstancePhase};
use ironvirt_tests::TestBed;
use ironvirt_tests::handler::{Handler, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::ensure_crds;
use kube::api::{Api, DeleteParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::Mutex;

use ironvirt_tests::api::{GUEST_MARKER as MARKER, guest_vmi};
/// Bytes the guest prints for the throughput runs.
const CONSOLE_BYTES: usize = 1_000_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Records when each VMI of `ns` is first seen Running.
fn watch_running(
    client: Client,
    ns: &str,
) -> (
    Arc<Mutex<HashMap<String, Instant>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let api: Api<VirtualMachineInstance> = Api::namespaced(client, ns);
    let out = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default())
            .applied_objects()
            .boxed();
        while let Some(Ok(vmi)) = stream.next().await {
            if vmi.status.as_ref().and_then(|s| s.phase)
                == Some(VirtualMachineInstancePhase::Running)
            {
                out.lock()
                    .await
                    .entry(vmi.name_any())
                    .or_insert_with(Instant::now);
            }
        }
    });
    (seen, task)
}

/// Places `names` on `node` one at a time, `gap` apart, and returns each one's
/// Scheduled → Running latency.
async fn place_and_time(
    client: &Client,
    ns: &str,
    node: &str,
    names: &[String],
    gap: Duration,
    sequential: bool,
) -> anyhow::Result<Vec<Duration>> {
    place_and_time_of(client, ns, node, names, gap, sequential, guest_vmi).await
}

/// [`place_and_time`] with the VMIs `make` gives for each name.
async fn place_and_time_of(
    client: &Client,
    ns: &str,
    node: &str,
    names: &[String],
    gap: Duration,
    sequential: bool,
    make: impl Fn(&str) -> serde_json::Value,
) -> anyhow::Result<Vec<Duration>> {
    let (seen, task) = watch_running(client.clone(), ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut placed = HashMap::new();
    for n in names {
        place(client, ns, make(n), node).await;
        placed.insert(n.clone(), Instant::now());
        if sequential {
            wait_phase(client, ns, n, "Running", Duration::from_secs(120))
                .await
                .map_err(anyhow::Error::msg)?;
        }
        tokio::time::sleep(gap).await;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while seen.lock().await.len() < names.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    task.abort();
    let seen = seen.lock().await;
    let mut lat: Vec<Duration> = placed
        .iter()
        .filter_map(|(n, t)| seen.get(n).map(|r| r.saturating_duration_since(*t)))
        .collect();
    anyhow::ensure!(
        lat.len() == names.len(),
        "only {} of {} VMIs ran",
        lat.len(),
        names.len()
    );
    lat.sort();
    Ok(lat)
}

async fn delete_all(client: &Client, ns: &str, names: &[String]) -> anyhow::Result<()> {
    let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    for n in names {
        let _ = api.delete(n, &DeleteParams::default()).await;
    }
    for n in names {
        wait_gone(client, ns, n, Duration::from_secs(120))
            .await
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn report(label: &str, lat: &[Duration]) {
    println!(
        "{label}: n={} p50_ms={} p95_ms={} max_ms={}",
        lat.len(),
        percentile(lat, 50.0).as_millis(),
        percentile(lat, 95.0).as_millis(),
        lat.last().copied().unwrap_or_default().as_millis()
    );
}

/// The shell command that prints CONSOLE_BYTES and then an end marker that
/// the typed command's echo does not contain.
fn flood_command() -> String {
    format!(
        "\nyes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW | head -c {CONSOLE_BYTES}; echo FLOOD-$((40+2))-END\n"
    )
}

/// Console throughput through the handler's websocket, in bytes/s.
async fn through_handler(h: &Handler, ns: &str, name: &str) -> anyhow::Result<f64> {
    let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");
    let mut ws = h
        .streams()
        .websocket(&path)
        .await
        .map_err(anyhow::Error::msg)?;
    ws.expect_from(0, MARKER, Duration::from_secs(120))
        .await
        .map_err(anyhow::Error::msg)?;
    let before = ws.received();
    let t0 = Instant::now();
    ws.send(flood_command().as_bytes())
        .await
        .map_err(anyhow::Error::msg)?;
    ws.expect("FLOOD-42-END", Duration::from_secs(600))
        .await
        .map_err(anyhow::Error::msg)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((ws.received() - before) as f64 / secs)
}

/// Console throughput reading QEMU's console socket directly, in bytes/s.
/// The handler must have let go of it first (QEMU serves one client at a
/// time): the caller kills the handler.
fn direct_socket(domain: &str) -> anyhow::Result<f64> {
    use std::os::unix::net::UnixStream;
    let conn = virt::connect::Connect::open(Some("qemu:///system"))?;
    let dom = conn.lookup_domain_by_name(domain)?;
    let xml = dom.xml_desc(0)?;
    let path = xml
        .split("<serial type='unix'")
        .nth(1)
        .and_then(|s| s.split("path='").nth(1))
        .and_then(|s| s.split('\'').next())
        .ok_or_else(|| anyhow::anyhow!("no console socket in the domain XML"))?
        .to_owned();
    let mut f = UnixStream::connect(&path)?;
    f.set_read_timeout(Some(Duration::from_secs(60)))?;
    let t0 = Instant::now();
    f.write_all(flood_command().as_bytes())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    let mut tail = String::new();
    while t0.elapsed() < Duration::from_secs(600) {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n;
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
        if tail.contains("FLOOD-42-END") {
            return Ok(total as f64 / t0.elapsed().as_secs_f64());
        }
        let keep = tail.len().saturating_sub(64);
        let mut k = keep;
        while !tail.is_char_boundary(k) {
            k += 1;
        }
        tail.drain(..k);
    }
    anyhow::bail!("the end marker never came through {path}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bed = TestBed::shared().await?;
    ensure_crds(&bed);
    let client = bed.admin();
    let ns = bed.namespace("bench-handler").await?;
    let result = if std::env::var("HANDLER_BENCH").as_deref() == Ok("images") {
        images(&bed, &client, &ns).await
    } else {
        run(&bed, &client, &ns).await
    };
    bed.delete_namespace(&ns, Duration::from_secs(300)).await?;
    result
}

async fn run(bed: &TestBed, client: &Client, ns: &str) -> anyhow::Result<()> {
    // Test driver: memory with 0 and 20 VMIs, and latency.
    let td = Handler::start_with(bed, ns, "bench-td", "test:///default", "release", &[]);
    wait_serving(&td, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss0 = rss_kib(td.pid(), "VmRSS:");
    let anon0 = rss_kib(td.pid(), "RssAnon:");
    let names: Vec<String> = (0..20).map(|i| format!("td-{i}")).collect();
    let lat = place_and_time(
        client,
        ns,
        &td.node,
        &names,
        Duration::from_millis(200),
        false,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss20 = rss_kib(td.pid(), "VmRSS:");
    let anon20 = rss_kib(td.pid(), "RssAnon:");
    let hwm = rss_kib(td.pid(), "VmHWM:");
    println!(
        "handler_rss_kib: idle={rss0} (anon {anon0}) with_20_vmis={rss20} (anon {anon20}) peak={hwm} per_vmi_kib={:.0}",
        (rss20 as f64 - rss0 as f64) / 20.0
    );
    report(
        "scheduled_to_running test:///default (20 VMIs, 200 ms apart)",
        &lat,
    );
    delete_all(client, ns, &names).await?;
    td.remove(client).await;

    // QEMU: latency one VMI at a time, then console throughput.
    let mut q = Handler::start_with(
        bed,
        ns,
        "bench-q",
        "qemu:///system",
        "release",
        &["--resync-seconds", "3600"],
    );
    wait_serving(&q, Duration::from_secs(60)).await;
    let names: Vec<String> = (0..5).map(|i| format!("q-{i}")).collect();
    let lat = place_and_time(
        client,
        ns,
        &q.node,
        &names,
        Duration::from_millis(500),
        true,
    )
    .await?;
    report(
        "scheduled_to_running qemu:///system TCG (5 VMIs, one at a time)",
        &lat,
    );
    delete_all(client, ns, &names[1..]).await?;
    let ws = through_handler(&q, ns, &names[0]).await?;
    let domain = ironvirt_crds::wire::domain_name(ns, &names[0]);
    // QEMU serves the console socket to one client: the handler lets go of
    // it when it dies (the domain keeps running).
    q.kill();
    let direct = tokio::task::spawn_blocking(move || direct_socket(&domain)).await??;
    println!(
        "console_bytes_per_s: handler_websocket={ws:.0} direct_socket={direct:.0} ratio={:.2}",
        ws / direct
    );
    // Back, so that the last VMI's finalizer is removed.
    q.restart();
    wait_serving(&q, Duration::from_secs(60)).await;
    delete_all(client, ns, &names[..1]).await?;
    q.remove(client).await;
    Ok(())
}

/// The guest of [`guest_vmi`] from the containerDisk `image` instead.
fn container_disk_vmi(name: &str, image: &str) -> serde_json::Value {
    let mut v = guest_vmi(name);
    v["spec"]["domain"]["devices"]["disks"][0]["disk"] = serde_json::json!({"bus": "virtio"});
    v["spec"]["volumes"][0] =
        serde_json::json!({"name": "root", "containerDisk": {"image": image}});
    v
}

/// containerDisk starts: cold (pulled), warm (cached), and hostDisk for
/// comparison, one VMI at a time on a release handler.
async fn images(bed: &TestBed, client: &Client, ns: &str) -> anyhow::Result<()> {
    use ironvirt_tests::registry::Registry;
    const RUNS: usize = 5;
    let reg = Registry::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    let disk = std::fs::read(ironvirt_tests::api::GUEST_IMAGE)?;
    println!("containerdisk_bytes: {}", disk.len());
    // Distinct images (a nonce file beside /disk) so each cold start pulls.
    for i in 0..RUNS {
        let nonce = format!("{i}-{}", std::process::id()).into_bytes();
        let files = [("disk/disk.qcow2", disk.clone()), ("etc/nonce", nonce)];
        reg.push(&format!("bench/cold:{i}"), &files)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    reg.push("bench/warm:v1", &[("disk/disk.qcow2", disk.clone())])
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("registries.yaml");
    let host = reg.host.clone();
    std::fs::write(
        &config,
        format!("registries:\n  \"{host}\":\n    insecure: true\n"),
    )?;
    let config = config.display().to_string();
    let q = Handler::start_with(
        bed,
        ns,
        "bench-img",
        "qemu:///system",
        "release",
        &["--resync-seconds", "3600", "--registries-config", &config],
    );
    wait_serving(&q, Duration::from_secs(60)).await;
    let one = |name: String, vmi: serde_json::Value| {
        let q = &q;
        async move {
            let lat = place_and_time_of(
                client,
                ns,
                &q.node,
                std::slice::from_ref(&name),
                Duration::ZERO,
                true,
                |_| vmi.clone(),
            )
            .await?;
            delete_all(client, ns, std::slice::from_ref(&name)).await?;
            anyhow::Ok(lat[0])
        }
    };
    // The warm image's first pull, not measured.
    one(
        "warmup".into(),
        container_disk_vmi("warmup", &format!("{host}/bench/warm:v1")),
    )
    .await?;
    let (mut cold, mut warm, mut host_disk) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..RUNS {
        let name = format!("cold-{i}");
        let image = format!("{host}/bench/cold:{i}");
        cold.push(one(name.clone(), container_disk_vmi(&name, &image)).await?);
        let name = format!("host-{i}");
        host_disk.push(one(name.clone(), guest_vmi(&name)).await?);
        let name = format!("warm-{i}");
        let image = format!("{host}/bench/warm:v1");
        warm.push(one(name.clone(), container_disk_vmi(&name, &image)).await?);
    }
    for lat in [&mut cold, &mut warm, &mut host_disk] {
        lat.sort();
    }
    report(
        "scheduled_to_running containerDisk cold (pull + start)",
        &cold,
    );
    report("scheduled_to_running containerDisk warm (cached)", &warm);
    report("scheduled_to_running hostDisk", &host_disk);
    let p50 = |l: &[Duration]| percentile(l, 50.0).as_millis() as i128;
    println!(
        "containerdisk_warm_minus_hostdisk_p50_ms: {}",
        p50(&warm) - p50(&host_disk)
    );
    q.remove(client).await;
    Ok(())
}
