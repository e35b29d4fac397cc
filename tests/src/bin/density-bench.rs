//! density-bench (issue #20): as many real TCG guests as fit on one node.
//!
//! N VirtualMachines of the test guest (default 50; the first argument or
//! `DENSITY_VMS` changes it) on one node of the bed with its own libvirtd,
//! release builds of the handler and the operator: create → Running and
//! create → guest marker (P50, P95), the handler's RSS, memory per VM beyond
//! QEMU's own (handler, libvirtd and virtlogd growth, a passt per VMI), the
//! host's memory per guest, and the load average. See
//! [`ironvirt_tests::density`] for the method and the other settings
//! (`DENSITY_MEMORY`, `DENSITY_KERNEL`, `DENSITY_INTERVAL_MS`, …).
//!
//! Run it with `make bench-density` (hack/bench.sh, `BENCH=density`).

use std::time::Duration;

use ironvirt_tests::TestBed;
use ironvirt_tests::density::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut base = Config {
        vms: 50,
        memory: "64Mi".into(),
        small_kernel: true,
        interval: Duration::ZERO,
        profile: "release".into(),
        boot_timeout: Duration::from_secs(900),
        settle: Duration::from_secs(10),
        idle_window: Duration::from_secs(10),
    };
    if let Some(n) = std::env::args().nth(1) {
        base.vms = n
            .parse()
            .map_err(|_| anyhow::anyhow!("the number of VMs, not {n:?}"))?;
    }
    let cfg = Config::from_env(base).map_err(anyhow::Error::msg)?;
    let bed = TestBed::shared().await?;
    let figures = run(&bed, &cfg).await.map_err(anyhow::Error::msg)?;
    print!("{}", figures.report());
    anyhow::ensure!(
        figures.booted() == cfg.vms,
        "only {} of {} guests printed their marker",
        figures.booted(),
        cfg.vms
    );
    Ok(())
}
