//! ironvirt-api as processes: a console left idle for two minutes still works,
//! closing sessions leaves no task or file descriptor behind (in ironvirt-api
//! and in the handler), and two replicas serve at once, so that killing one
//! does not break new sessions.
//!
//! This file is its own test binary on purpose: cargo runs test binaries one
//! after another, so while it runs no other test uses the test bed's
//! ironvirt-api, and its task and descriptor counts are this test's alone.

use std::time::Duration;

use ironvirt_crds::VirtualMachine;
use ironvirt_tests::api::{
    ApiReplica, ApiWs, BedApi, GUEST_MARKER as MARKER, api_port, guest_vm, open_ws,
};
use ironvirt_tests::footprint::{Footprint, settles_to, steady};
use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually, scrape};
use kube::api::{Api, PostParams};

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(90);
const IDLE: Duration = Duration::from_secs(125);

/// Sessions opened and closed after the idle one: a leak of even one task or
/// descriptor per session shows as CHURN of them.
const CHURN: usize = 20;
async fn console(client: &kube::Client, path: &str) -> Result<ApiWs, String> {
    open_ws(client, path)
        .await
        .map_err(|(code, body)| format!("console: HTTP {code}: {body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_consoles_survive_and_replicas_fail_over_without_leaks() {
    let bed = &bed().await;
    bed.with_namespace("api", |ns| async move {
        let admin = bed.admin();
        let port = api_port(&admin).await?;
        let api = BedApi::of(bed)?;
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        vms.create(&PostParams::default(), &guest_vm(&ns, "soak", "Always"))
            .await
            .map_err(|e| e.to_string())?;
        wait_phase(&admin, &ns, "soak", "Running", BOOT).await?;
        let path = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/soak/console"
        );

        // One session first, so that connection pools and caches exist
        // before the baseline is taken.
        let mut warm = console(&admin, &path).await?;
        warm.expect_from(0, MARKER, BOOT).await?;
        warm.close().await;
        let base = steady(api, &h).await;
        eprintln!("baseline: {base:?}");

        // Idle for two minutes: pings keep the session (and every hop on the
        // way) alive; reading answers them as a client does. This wait is the
        // idle period under test, not a check that nothing happened: what
        // follows shows the session survived it.
        let mut con = console(&admin, &path).await?;
        let idle = con.expect("this text never comes", IDLE).await;
        assert!(idle.is_err(), "the guest printed by itself");
        con.send(b"\necho idle-$((6*7))\n").await?;
        con.expect("idle-42", Duration::from_secs(30)).await?;
        let during = Footprint::now(api, &h).await;
        let streams = scrape(api.metrics_port, "ironvirt_api_open_streams").await;
        assert_eq!(streams, 1.0, "the open session is counted");
        con.close().await;
        // Then many more sessions, each opened, used and closed.
        for i in 0..CHURN {
            let mut s = console(&admin, &path).await?;
            s.send(format!("\necho churn-{i}-$((2+2))\n").as_bytes())
                .await?;
            s.expect(&format!("churn-{i}-4"), Duration::from_secs(30))
                .await?;
            s.close().await;
        }
        let after = settles_to(api, &h, &base).await?;
        eprintln!(
            "with the idle session: {during:?}; after it and {CHURN} more were closed: {after:?}"
        );
        assert_eq!(
            scrape(api.metrics_port, "ironvirt_api_open_streams").await,
            0.0
        );

        // A second replica on the same port (SO_REUSEPORT): new connections
        // are spread over both.
        let log = bed.info().logs_dir.join(format!("ironvirt-api-{ns}.log"));
        let mut replica = ApiReplica::start(bed, port, &log);
        let replica_metrics = replica.metrics_port;
        eventually(
            Duration::from_secs(10),
            "the second replica's metrics",
            || async {
                (scrape(replica_metrics, "ironvirt_api_runtime_alive_tasks").await > 0.0)
                    .then_some(())
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        // A new console takes over from the previous one (one writer, as in
        // KubeVirt), so count the sessions each replica accepted.
        let accepted = "ironvirt_api_requests_total{route=\"console\",code=\"101\"}";
        let before = scrape(api.metrics_port, accepted).await;
        for _ in 0..12 {
            let mut s = console(&admin, &path).await?;
            s.expect_from(0, MARKER, Duration::from_secs(30)).await?;
            s.close().await;
        }
        let (on_bed, on_replica) = (
            scrape(api.metrics_port, accepted).await - before,
            scrape(replica.metrics_port, accepted).await,
        );
        eprintln!(
            "12 consoles: {on_bed} through the test bed's replica, {on_replica} through the second"
        );
        assert_eq!(on_bed + on_replica, 12.0);
        assert!(
            on_bed > 0.0 && on_replica > 0.0,
            "both replicas serve: {on_bed} and {on_replica}"
        );
        // One session left open on the second replica when it dies.
        let mut doomed = None;
        for _ in 0..20 {
            let before = scrape(replica.metrics_port, accepted).await;
            let s = console(&admin, &path).await?;
            if scrape(replica.metrics_port, accepted).await > before {
                doomed = Some(s);
                break;
            }
            s.close().await;
        }
        let mut doomed = doomed.ok_or("no session landed on the second replica in 20 tries")?;

        // Kill the second replica: its session ends, new ones all work.
        replica.kill();
        assert!(
            doomed.next_close(Duration::from_secs(30)).await.is_some(),
            "the session on the killed replica did not end"
        );
        for i in 0..12 {
            let mut s = console(&admin, &path)
                .await
                .map_err(|e| format!("new session {i} after a replica died: {e}"))?;
            s.send(format!("\necho after-{i}-$((1+1))\n").as_bytes())
                .await?;
            // 60 s: a TCG guest on a loaded two-core machine can stall that long.
            s.expect(&format!("after-{i}-2"), Duration::from_secs(60))
                .await?;
            s.close().await;
        }
        settles_to(api, &h, &base).await?;

        vms.delete("soak", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        wait_gone(&admin, &ns, "soak", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}
