//! api-bench: what ironvirt-api costs on the console path, on the test bed
//! with libvirt/QEMU and release builds of ironvirt-api and the handler.
//!
//! - Console throughput (the guest prints 1 MB) along kube-apiserver →
//!   ironvirt-api → handler, and reading the handler's stream directly:
//!   [`floods`] per path (`IRONVIRT_BENCH_FLOODS`, default 5), the paths
//!   alternating in ABBA order so that drift in the machine's load hits both;
//!   every sample, the ratio of the medians and the median of the paired
//!   ratios, with the load average.
//! - Console open: the time to the 101 and to the first frame (the handler
//!   replays the console's recent output at once), both paths in turn.
//! - Added latency: the round trip of a typed line to the guest's tty echo,
//!   both ways; the difference of the medians.
//! - Port-forward throughput (a 16 MiB HTTP download from the guest's
//!   pagesrv) and connect latency (websocket open, and first byte of a small
//!   answer) along kube-apiserver → ironvirt-api → handler and straight to
//!   the handler; the ratios.
//! - ironvirt-api's RSS idle and with 50 open console sessions (one writer and
//!   49 read-only observers of one VMI: what ironvirt-api holds per session
//!   does not depend on the VMI).
//!
//! Run it with `make bench` or `make bench-api`.

use std::time::{Duration, Instant};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{BedApi, api_port, open_ws};
use ironvirt_tests::handler::{Handler, WsSession, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::ensure_crds;
use kube::api::{Api, DeleteParams};

use ironvirt_tests::api::{GUEST_MARKER as MARKER, guest_vmi};
const CONSOLE_BYTES: usize = 1_000_000;
/// Port-forward downloads per path.
const RUNS: usize = 3;
/// Console floods per path unless `IRONVIRT_BENCH_FLOODS` says otherwise.
const FLOODS: usize = 5;
/// Console opens per path.
const OPENS: usize = 20;
const ROUND_TRIPS: usize = 40;
const SESSIONS: usize = 50;
/// The port-forward download's size, and the guest ports serving it and a
/// small answer.
const PF_BYTES: usize = 16 << 20;
const PF_BIG: u16 = 8080;
const PF_SMALL: u16 = 8081;
const CONNECTS: usize = 30;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// The number of console floods per path.
fn floods() -> usize {
    std::env::var("IRONVIRT_BENCH_FLOODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(FLOODS)
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Prints CONSOLE_BYTES and then an end marker the typed echo lacks.
fn flood_command(run: usize) -> String {
    format!(
        "\nyes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW | head -c {CONSOLE_BYTES}; echo FLOOD-{run}-$((40+2))-END\n"
    )
}

/// Bytes per second of one flood read through `ws`.
async fn flood<S>(ws: &mut WsSession<S>, run: usize) -> anyhow::Result<f64>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let before = ws.received();
    let t0 = Instant::now();
    ws.send(flood_command(run).as_bytes())
        .await
        .map_err(anyhow::Error::msg)?;
    ws.expect(&format!("FLOOD-{run}-42-END"), Duration::from_secs(600))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok((ws.received() - before) as f64 / t0.elapsed().as_secs_f64())
}

/// Round trips (ms) of typed text to its echo, sorted. `cat` runs in the
/// guest meanwhile, so the echo comes from the guest kernel's tty (canonical
/// mode), not from the shell's line editor, which asks the terminal for the
/// cursor position and waits for an answer.
async fn round_trips<S>(ws: &mut WsSession<S>, tag: &str) -> anyhow::Result<Vec<f64>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ready = format!("cat-{tag}-ready");
    ws.send(format!("\necho {ready}; cat\n").as_bytes())
        .await
        .map_err(anyhow::Error::msg)?;
    ws.expect(&format!("\n{ready}"), Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS {
        let token = format!("rt{tag}{i}x");
        let t0 = Instant::now();
        ws.send(token.as_bytes())
            .await
            .map_err(anyhow::Error::msg)?;
        ws.expect(&token, Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // Ctrl-C ends cat; back at the prompt.
    ws.send(b"\x03\n").await.map_err(anyhow::Error::msg)?;
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Bytes per second of one download of [`PF_BYTES`] through `ws`, a
/// port-forward to [`PF_BIG`].
async fn pf_download<S>(ws: &mut WsSession<S>) -> anyhow::Result<f64>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let t0 = Instant::now();
    ws.send(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .map_err(anyhow::Error::msg)?;
    let n = ws
        .drain_to_close(Duration::from_secs(600))
        .await
        .map_err(anyhow::Error::msg)?;
    let secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(n >= PF_BYTES, "the download ended after {n} bytes");
    Ok(n as f64 / secs)
}

/// Milliseconds from sending a request on `ws` (a port-forward to
/// [`PF_SMALL`]) to the answer's first byte; reads the rest.
async fn pf_first_byte<S>(ws: &mut WsSession<S>) -> anyhow::Result<f64>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let t0 = Instant::now();
    ws.send(b"GET / HTTP/1.0\r\n\r\n")
        .await
        .map_err(anyhow::Error::msg)?;
    ws.next_binary(Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer through the port-forward"))?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    ws.drain_to_close(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(ms)
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("load_average at the start: {}", loadavg());
    let bed = TestBed::shared().await?;
    ensure_crds(&bed);
    let client = bed.admin();
    api_port(&client).await.map_err(anyhow::Error::msg)?;
    let api = BedApi::of(&bed).map_err(anyhow::Error::msg)?;
    let ns = bed.namespace("bench-api").await?;
    let h = Handler::start_with(
        &bed,
        &ns,
        "bench-api-q",
        "qemu:///system",
        "release",
        &["--resync-seconds", "3600"],
    );
    wait_serving(&h, Duration::from_secs(60)).await;
    let name = "c-0";
    let mut vmi = guest_vmi(name);
    vmi["spec"]["domain"]["devices"]["interfaces"] = serde_json::json!([{
        "name": "default", "masquerade": {}, "ports": [{"port": PF_BIG}, {"port": PF_SMALL}],
    }]);
    vmi["spec"]["networks"] = serde_json::json!([{"name": "default", "pod": {}}]);
    place(&client, &ns, vmi, &h.node).await;
    wait_phase(&client, &ns, name, "Running", Duration::from_secs(180))
        .await
        .map_err(anyhow::Error::msg)?;
    let via_api = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/console"
    );
    let direct = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");

    let mut a = open_ws(&client, &via_api)
        .await
        .map_err(|(c, b)| anyhow::anyhow!("console via kube-apiserver: {c} {b}"))?;
    a.expect_from(0, MARKER, Duration::from_secs(120))
        .await
        .map_err(anyhow::Error::msg)?;
    // The guest's servers for the port-forward measurements.
    a.send(
        format!(
            "\ndd if=/dev/zero of=/tmp/big bs=1M count={} 2>/dev/null; echo small > /tmp/small; \
             (pagesrv {PF_BIG} /tmp/big &); (pagesrv {PF_SMALL} /tmp/small &); echo pf-$((3+4))-ready\n",
            PF_BYTES >> 20
        )
        .as_bytes(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    a.expect("pf-7-ready", Duration::from_secs(60))
        .await
        .map_err(anyhow::Error::msg)?;
    a.close().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_kib = rss_kib(api.pid);

    println!("load_average before the console rounds: {}", loadavg());
    // Opening a console: to the 101, and to the first frame (the handler's
    // replay of recent output, sent right after the 101). Read-only, so no
    // writer is taken over.
    let (mut up_a, mut up_d, mut first_a, mut first_d) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..OPENS {
        let t0 = Instant::now();
        let mut ws = open_ws(&client, &format!("{via_api}?readonly=true"))
            .await
            .map_err(|(c, b)| anyhow::anyhow!("console via kube-apiserver: {c} {b}"))?;
        up_a.push(ms_since(t0));
        ws.next_binary(Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow::anyhow!("no replay on a console via kube-apiserver"))?;
        first_a.push(ms_since(t0));
        ws.close().await;
        let t0 = Instant::now();
        let mut ws = h
            .streams()
            .websocket(&format!("{direct}?readonly=true"))
            .await
            .map_err(anyhow::Error::msg)?;
        up_d.push(ms_since(t0));
        ws.next_binary(Duration::from_secs(30))
            .await
            .ok_or_else(|| anyhow::anyhow!("no replay on a direct console"))?;
        first_d.push(ms_since(t0));
        ws.close().await;
    }
    for v in [&mut up_a, &mut up_d, &mut first_a, &mut first_d] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "console_open_ms (n={OPENS}, read-only): to_101 via_kube_apiserver p50={:.2} p95={:.2}, handler_direct p50={:.2} p95={:.2}; to_first_frame via_kube_apiserver p50={:.2} p95={:.2}, handler_direct p50={:.2} p95={:.2}; first_frame_after_101 via p50={:.2} direct p50={:.2}",
        percentile(&up_a, 50.0),
        percentile(&up_a, 95.0),
        percentile(&up_d, 50.0),
        percentile(&up_d, 95.0),
        percentile(&first_a, 50.0),
        percentile(&first_a, 95.0),
        percentile(&first_d, 50.0),
        percentile(&first_d, 95.0),
        percentile(&first_a, 50.0) - percentile(&up_a, 50.0),
        percentile(&first_d, 50.0) - percentile(&up_d, 50.0),
    );

    // Throughput and latency, the two paths in turn (ABBA: via first in even
    // rounds, direct first in odd ones). A new writer takes the console over
    // from the previous one, so each flood opens its own session.
    let n_floods = floods();
    let (mut tp_api, mut tp_direct) = (Vec::new(), Vec::new());
    let (mut rt_api, mut rt_direct) = (Vec::new(), Vec::new());
    let load_before = loadavg();
    for run in 0..n_floods {
        for via in [run % 2 == 0, run % 2 == 1] {
            if via {
                let mut ws = open_ws(&client, &via_api)
                    .await
                    .map_err(|(c, b)| anyhow::anyhow!("console via kube-apiserver: {c} {b}"))?;
                tp_api.push(flood(&mut ws, run * 2).await?);
                rt_api.extend(round_trips(&mut ws, &format!("a{run}")).await?);
                ws.close().await;
            } else {
                let mut ws = h
                    .streams()
                    .websocket(&direct)
                    .await
                    .map_err(anyhow::Error::msg)?;
                tp_direct.push(flood(&mut ws, run * 2 + 1).await?);
                rt_direct.extend(round_trips(&mut ws, &format!("d{run}")).await?);
                ws.close().await;
            }
        }
        println!(
            "  console flood {run}: via_kube_apiserver={:.0} handler_direct={:.0} B/s ratio={:.2} (load average {})",
            tp_api[run],
            tp_direct[run],
            tp_api[run] / tp_direct[run],
            loadavg()
        );
    }
    rt_api.sort_by(f64::total_cmp);
    rt_direct.sort_by(f64::total_cmp);
    let (api_bps, direct_bps) = (median(tp_api.clone()), median(tp_direct.clone()));
    let paired = median(tp_api.iter().zip(&tp_direct).map(|(a, d)| a / d).collect());
    println!(
        "console_bytes_per_s (median of {n_floods}): via_kube_apiserver={api_bps:.0} handler_direct={direct_bps:.0} ratio={:.2} paired_ratio_median={paired:.2} (runs: {tp_api:.0?} / {tp_direct:.0?}; load average before {load_before}, after {})",
        api_bps / direct_bps,
        loadavg()
    );
    println!(
        "echo_round_trip_ms (n={}): via_kube_apiserver p50={:.2} p95={:.2}; handler_direct p50={:.2} p95={:.2}; added_p50={:.2}",
        rt_api.len(),
        percentile(&rt_api, 50.0),
        percentile(&rt_api, 95.0),
        percentile(&rt_direct, 50.0),
        percentile(&rt_direct, 95.0),
        percentile(&rt_api, 50.0) - percentile(&rt_direct, 50.0),
    );

    println!("load_average after the console rounds: {}", loadavg());
    // Port-forward: downloads, then connects, the two paths in turn.
    let pf = |port: u16| {
        (
            format!(
                "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/portforward/{port}"
            ),
            format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/portforward/{port}"),
        )
    };
    let open_api = |path: String| {
        let client = client.clone();
        async move {
            open_ws(&client, &path)
                .await
                .map_err(|(c, b)| anyhow::anyhow!("port-forward via kube-apiserver: {c} {b}"))
        }
    };
    let (big_api, big_direct) = pf(PF_BIG);
    let (mut dl_api, mut dl_direct) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let mut ws = open_api(big_api.clone()).await?;
        dl_api.push(pf_download(&mut ws).await?);
        let mut ws = h
            .streams()
            .websocket(&big_direct)
            .await
            .map_err(anyhow::Error::msg)?;
        dl_direct.push(pf_download(&mut ws).await?);
    }
    let (dl_api_bps, dl_direct_bps) = (median(dl_api.clone()), median(dl_direct.clone()));
    println!(
        "portforward_bytes_per_s ({} MiB download, median of {RUNS}): via_kube_apiserver={dl_api_bps:.0} handler_direct={dl_direct_bps:.0} ratio={:.2} (runs: {dl_api:.0?} / {dl_direct:.0?})",
        PF_BYTES >> 20,
        dl_api_bps / dl_direct_bps
    );
    let (small_api, small_direct) = pf(PF_SMALL);
    let (mut open_a, mut open_d, mut first_a, mut first_d) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CONNECTS {
        let t0 = Instant::now();
        let mut ws = open_api(small_api.clone()).await?;
        open_a.push(ms_since(t0));
        first_a.push(pf_first_byte(&mut ws).await?);
        let t0 = Instant::now();
        let mut ws = h
            .streams()
            .websocket(&small_direct)
            .await
            .map_err(anyhow::Error::msg)?;
        open_d.push(ms_since(t0));
        first_d.push(pf_first_byte(&mut ws).await?);
    }
    for v in [&mut open_a, &mut open_d, &mut first_a, &mut first_d] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "portforward_connect_ms (n={CONNECTS}, websocket open incl. the handler's connect to the guest): via_kube_apiserver p50={:.2} p95={:.2}; handler_direct p50={:.2} p95={:.2}; ratio_p50={:.2}",
        percentile(&open_a, 50.0),
        percentile(&open_a, 95.0),
        percentile(&open_d, 50.0),
        percentile(&open_d, 95.0),
        percentile(&open_a, 50.0) / percentile(&open_d, 50.0),
    );
    println!(
        "portforward_first_byte_ms (request to first answer byte on an open forward): via_kube_apiserver p50={:.2} p95={:.2}; handler_direct p50={:.2} p95={:.2}; added_p50={:.2}",
        percentile(&first_a, 50.0),
        percentile(&first_a, 95.0),
        percentile(&first_d, 50.0),
        percentile(&first_d, 95.0),
        percentile(&first_a, 50.0) - percentile(&first_d, 50.0),
    );

    println!("load_average after the port-forward rounds: {}", loadavg());
    // 50 sessions: one writer and read-only observers.
    let mut sessions = Vec::with_capacity(SESSIONS);
    let writer = open_ws(&client, &via_api)
        .await
        .map_err(|(c, b)| anyhow::anyhow!("console: {c} {b}"))?;
    sessions.push(writer);
    for _ in 1..SESSIONS {
        let s = open_ws(&client, &format!("{via_api}?readonly=true"))
            .await
            .map_err(|(c, b)| anyhow::anyhow!("read-only console: {c} {b}"))?;
        sessions.push(s);
    }
    if let Some(w) = sessions.first_mut() {
        w.send(b"\necho all-$((25*2))-open\n")
            .await
            .map_err(anyhow::Error::msg)?;
    }
    for s in &mut sessions {
        s.expect("all-50-open", Duration::from_secs(30))
            .await
            .map_err(anyhow::Error::msg)?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy_kib = rss_kib(api.pid);
    println!(
        "ironvirt_api_rss_kib: idle={idle_kib} with_{SESSIONS}_consoles={busy_kib} per_session={:.0}",
        (busy_kib as f64 - idle_kib as f64) / SESSIONS as f64
    );
    for s in sessions {
        s.close().await;
    }
    println!("load_average at the end: {}", loadavg());

    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let _ = vmis.delete(name, &DeleteParams::default()).await;
    wait_gone(&client, &ns, name, Duration::from_secs(120))
        .await
        .map_err(anyhow::Error::msg)?;
    h.remove(&client).await;
    bed.delete_namespace(&ns, Duration::from_secs(60)).await?;
    Ok(())
}
