//! ironvirt-api's request limits on the real test bed (issue 14, acceptance
//! 7): one user's parallel screenshots through kube-apiserver get 429 over
//! the per-user limit while the rest succeed and ironvirt-api's peak memory
//! stays small; a client that connects and sends no headers is disconnected
//! after the header-read timeout, while kube-apiserver's own traffic is not
//! disturbed by it.
//!
//! This file is its own test binary: while it runs, no other test uses the
//! test bed's ironvirt-api, so its limits and memory are this file's alone.
//! The bed's ironvirt-api runs with the default limits (hack/lib.sh
//! `start_api`): 4 screenshots per user, 10 s to send headers.

use std::time::{Duration, Instant};

use ironvirt_crds::VirtualMachine;
use ironvirt_tests::api::{
    BedApi, GUEST_MARKER as MARKER, Screen, api_port, bind, client_without_retries, get_bytes,
    guest_vm, open_ws, peak_rss, raw, tls_to_api,
};
use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually, scrape};
use kube::api::{Api, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(90);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";
/// Screenshots sent at once.
const PARALLEL: usize = 20;
/// ironvirt-api's default --max-screenshots-per-user.
const PER_USER: usize = 4;
/// The peak resident memory ironvirt-api may reach.
const PEAK_RSS: u64 = 64 * 1024 * 1024;
/// ironvirt-api's default --header-read-timeout.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn vmi_path(ns: &str, name: &str, sub: &str) -> String {
    format!("{SUB}/namespaces/{ns}/virtualmachineinstances/{name}/{sub}")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_users_parallel_screenshots_over_the_limit_get_429_in_bounded_memory() {
    let bed = &bed().await;
    bed.with_namespace("api", |ns| async move {
        let admin = bed.admin();
        api_port(&admin).await?;
        let api = BedApi::of(bed)?;
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        vms.create(&PostParams::default(), &guest_vm(&ns, "shot", "Always"))
            .await
            .map_err(|e| e.to_string())?;
        wait_phase(&admin, &ns, "shot", "Running", BOOT).await?;
        let mut con = open_ws(&admin, &vmi_path(&ns, "shot", "console"))
            .await
            .map_err(|e| format!("{e:?}"))?;
        con.expect_from(0, MARKER, BOOT).await?;
        con.close().await;

        // A user of their own, so no other test's screenshots count.
        let user = format!("{ns}-shooter");
        bind(&admin, &ns, &user, "kubevirt.io:edit").await;
        // kube's default client retries a 429 after a backoff, and so would
        // hide the answers counted here.
        let shooter = client_without_retries(bed, &user, &["dev"]).await?;
        let path = vmi_path(&ns, "shot", "vnc/screenshot");
        // RBAC takes a moment to reach the authorizer's cache.
        eventually(Duration::from_secs(30), "a first screenshot", || async {
            (get_bytes(&shooter, &path).await.0 == 200).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;

        let limited = "ironvirt_api_limited_requests_total{kind=\"screenshots\",limit=\"user\"}";
        let limited_before = scrape(api.metrics_port, limited).await;
        let rss_before = peak_rss(api.pid)?;
        // All at once; those that find four of theirs in progress get 429. A
        // round in which the screenshots happened not to overlap proves
        // nothing, so up to three rounds are sent.
        let mut refused_total = 0usize;
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let answers = futures::future::join_all(
                (0..PARALLEL).map(|_| get_bytes(&shooter, &path)),
            )
            .await;
            let (mut ok, mut refused) = (0usize, 0usize);
            for (code, body) in &answers {
                let text = String::from_utf8_lossy(body);
                match code {
                    200 => {
                        let screen = Screen::decode(body)?;
                        assert!(screen.width >= 320, "{}x{}", screen.width, screen.height);
                        ok += 1;
                    }
                    429 => {
                        let status: serde_json::Value =
                            serde_json::from_slice(body).map_err(|e| format!("{e}: {text}"))?;
                        assert_eq!(status["kind"], "Status", "{text}");
                        assert_eq!(status["reason"], "TooManyRequests", "{text}");
                        assert_eq!(
                            status["message"],
                            format!(
                                "user {user} has {PER_USER} screenshots in progress; the limit is {PER_USER}"
                            ),
                            "{text}"
                        );
                        refused += 1;
                    }
                    other => return Err(format!("screenshot answered {other}: {text}")),
                }
            }
            assert!(ok >= 1, "no screenshot succeeded");
            rounds.push((ok, refused));
            refused_total += refused;
            if refused > 0 {
                break;
            }
        }
        let peak = peak_rss(api.pid)?;
        let limited_after = scrape(api.metrics_port, limited).await;
        eprintln!(
            "{PARALLEL} parallel screenshots of one user, (200, 429) per round: {rounds:?}; \
             ironvirt-api peak RSS (VmHWM) {} KiB before, {} KiB after; \
             limited_requests_total{{screenshots,user}} {limited_before} -> {limited_after}",
            rss_before / 1024,
            peak / 1024
        );
        assert!(
            refused_total > 0,
            "no round of {PARALLEL} parallel screenshots got a 429: {rounds:?}"
        );
        assert_eq!(
            (limited_after - limited_before).round() as usize,
            refused_total,
            "every 429 is counted in /metrics"
        );
        assert!(
            peak < PEAK_RSS,
            "ironvirt-api's peak RSS is {} KiB, over {} KiB",
            peak / 1024,
            PEAK_RSS / 1024
        );
        // Nothing is held once they are all answered.
        let in_progress = scrape(api.metrics_port, "ironvirt_api_screenshots_in_progress").await;
        assert_eq!(in_progress, 0.0, "screenshots still counted as in progress");
        let (code, _) = get_bytes(&shooter, &path).await;
        assert_eq!(code, 200);
        // The VM goes while its handler still runs, so the domain goes too.
        vms.delete("shot", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        wait_gone(&admin, &ns, "shot", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_sends_no_headers_is_disconnected_after_the_header_timeout() {
    let bed = &bed().await;
    let admin = bed.admin();
    let port = api_port(&admin).await.expect("APIService Available");
    let ca = bed.layout().pki().join("ironvirt-ca.crt");

    // Connects, completes TLS, sends nothing.
    let mut silent = tls_to_api(&ca, port).await.expect("TLS to ironvirt-api");
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read_to_end(&mut buf)).await;
    let waited = start.elapsed();
    eprintln!("a silent client was disconnected after {waited:?}");
    assert!(read.is_ok(), "a silent client was kept for a minute");
    assert!(
        waited >= HEADER_TIMEOUT - Duration::from_secs(1)
            && waited < HEADER_TIMEOUT + Duration::from_secs(10),
        "disconnected after {waited:?}, the header timeout is {HEADER_TIMEOUT:?}"
    );
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));

    // One that starts a request and never finishes its headers: the same.
    let mut slow = tls_to_api(&ca, port).await.expect("TLS to ironvirt-api");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let start = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut buf)).await;
    let waited = start.elapsed();
    eprintln!("a client with unfinished headers was disconnected after {waited:?}");
    assert!(read.is_ok() && waited < HEADER_TIMEOUT + Duration::from_secs(10));
    assert!(!String::from_utf8_lossy(&buf).contains("ok"));

    // A keep-alive connection idle after its answer is closed the same way;
    // kube-apiserver (Go's http.Transport) then dials a new one: requests
    // through it before and after a longer idle time both succeed.
    let (code, body) = raw(&admin, "GET", SUB, "").await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(HEADER_TIMEOUT + Duration::from_secs(3)).await;
    for _ in 0..5 {
        let (code, body) = raw(&admin, "GET", SUB, "").await;
        assert_eq!(code, 200, "after an idle time: {body}");
    }
    // And a client that sends its request in time is served.
    let mut quick = tls_to_api(&ca, port).await.expect("TLS to ironvirt-api");
    quick
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), quick.read_to_end(&mut buf))
        .await
        .expect("an answer")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
}
