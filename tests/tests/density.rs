//! The density run (issue #20) bounded for `make test`: the code of
//! `make bench-density` (tests/src/density.rs) with 2 guests on debug
//! builds (each costs about 6 CPU seconds to boot under TCG, and on this
//! machine all guests share one cgroup weight against every other busy
//! process: docs/benchmarks.md, Density). Every guest must print its marker, and the memory accounting
//! must find each guest's QEMU and passt with plausible figures.

use std::time::Duration;

use ironvirt_tests::TestBed;
use ironvirt_tests::density::{Config, percentile, run};

const VMS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_guests_boot_on_one_node_and_their_memory_adds_up() {
    let cfg = Config {
        vms: VMS,
        memory: "64Mi".into(),
        small_kernel: true,
        interval: Duration::ZERO,
        profile: "debug".into(),
        boot_timeout: Duration::from_secs(110),
        settle: Duration::from_secs(2),
        idle_window: Duration::from_secs(2),
    };
    let bed = TestBed::shared().await.expect("test bed");
    let f = run(&bed, &cfg).await.expect("the density run");
    let report = f.report();
    eprint!("{report}");
    assert_eq!(f.booted(), VMS, "every guest prints its marker:\n{report}");
    assert_eq!(f.to_running().len(), VMS, "every VMI ran:\n{report}");
    // Running comes before the marker, for each guest.
    for g in &f.guests {
        assert!(g.to_running <= g.to_marker, "{}: {g:?}", g.name);
    }
    assert!(percentile(&f.to_marker(), 95.0) < cfg.boot_timeout);
    // Each guest's QEMU and passt were found and hold memory: QEMU at least
    // some MiB and no more than its guest's memory plus QEMU's own
    // (TCG's code buffer, device models); passt a little.
    for g in &f.guests {
        let q = g
            .qemu
            .unwrap_or_else(|| panic!("{}: no QEMU found:\n{report}", g.name));
        assert!(
            q.pss > 8 * 1024 && q.rss < (64 + 512) * 1024 && q.pss <= q.rss,
            "{}: QEMU {q:?}:\n{report}",
            g.name
        );
        let p = g
            .passt
            .unwrap_or_else(|| panic!("{}: no passt found:\n{report}", g.name));
        assert!(
            p.rss > 0 && p.rss < 64 * 1024,
            "{}: passt {p:?}:\n{report}",
            g.name
        );
    }
    // The handler ran throughout and holds a few MiB per VM at most.
    assert!(
        f.before.handler.rss > 0 && f.after.handler.rss > 0,
        "{report}"
    );
    assert!(
        f.handler_growth_per_vm_kib() < 10.0 * 1024.0,
        "handler growth per VM:\n{report}"
    );
    assert!(
        f.before.libvirtd.rss > 0 && f.after.libvirtd.rss > 0,
        "{report}"
    );
    // Each domain's memory cgroup holds at least most of its QEMU's
    // anonymous memory.
    assert_eq!(f.domain_cgroups_kib.len(), VMS, "{report}");
    let anon = f.qemu_mean().anon as f64;
    assert!(
        f.domain_cgroup_mean_kib() >= anon * 0.9,
        "domain cgroups vs QEMU:\n{report}"
    );
    // The overhead beyond QEMU is positive (a passt each, at least).
    assert!(f.overhead_per_vm_kib() > 0.0, "{report}");
}
