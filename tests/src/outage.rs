//! Taking a component of the test bed away and bringing it back, as an
//! outage would: SIGKILL the recorded process, then start the same program
//! again with the same command line (read from /proc before the kill),
//! recorded by the bed's supervisor so that `make stop` still ends it.

use std::path::PathBuf;
use std::time::Duration;

use ironvirt_testbed::TestBed;
use ironvirt_testbed::process::Supervisor;

/// A killed component that can be started again.
pub struct Outage {
    name: String,
    exe: PathBuf,
    args: Vec<String>,
    /// Its environment (ironvirt-api's KUBECONFIG, RUST_LOG, …).
    env: Vec<(String, String)>,
    pids: PathBuf,
    logs: PathBuf,
}

/// The pid the bed recorded for `name` (e.g. `kube-apiserver`, `etcd`).
pub fn recorded_pid(bed: &TestBed, name: &str) -> Result<u32, String> {
    let path = bed.layout().pids().join(format!("{name}.pid"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {}", path.display()))
}

/// SIGKILLs the bed's `name`, keeping what it takes to start it again.
pub fn kill(bed: &TestBed, name: &str) -> Result<Outage, String> {
    let pid = recorded_pid(bed, name)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("{name} (pid {pid}) is not running: {e}"))?;
    let mut argv = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map_err(|e| format!("{name}'s executable: {e}"))?;
    // A binary rebuilt since it started shows as "<path> (deleted)": the
    // restart runs the one at the path now.
    let exe = match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => PathBuf::from(path),
        None => exe,
    };
    let _program = argv.next();
    let args: Vec<String> = argv.collect();
    let env = std::fs::read(format!("/proc/{pid}/environ"))
        .map_err(|e| format!("{name}'s environment: {e}"))?
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    signal(pid, "KILL").map_err(|e| format!("{name}: {e}"))?;
    // Gone before returning, so that its ports are free for the restart:
    // not only its main thread a zombie, but every thread exited (the
    // descriptors, listening sockets included, go with the last one).
    for _ in 0..200 {
        let gone = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        let zombie =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
        if gone || (zombie && threads <= 1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Outage {
        name: name.to_owned(),
        exe,
        args,
        env,
        pids: bed.layout().pids(),
        logs: bed.layout().logs(),
    })
}

impl Outage {
    /// Starts the component again; its new pid. One that exits within a
    /// second (its port not yet free, say) is started again, up to 5 times.
    pub fn end(self) -> Result<u32, String> {
        let mut last = String::new();
        for _ in 0..5 {
            let pid = self.spawn()?;
            std::thread::sleep(Duration::from_secs(1));
            if ironvirt_testbed::process::process_alive(pid) {
                return Ok(pid);
            }
            last = format!("{} (pid {pid}) exited at once", self.name);
        }
        Err(format!("starting {} again: {last}", self.name))
    }

    fn spawn(&self) -> Result<u32, String> {
        Supervisor::new(&self.pids, &self.logs)
            .spawn(
                &self.name,
                &self.exe,
                &self.args,
                &self
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect::<Vec<_>>(),
            )
            .map(|rec| rec.pid)
            .map_err(|e| format!("starting {} again: {e}", self.name))
    }
}

/// Sends signal `sig` (`KILL`, `STOP`, `CONT`, …) to `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid} failed"))
    }
}

/// What a process holds now: resident memory (KiB, VmRSS) and open
/// descriptors; None when it is gone.
pub fn footprint(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// The deletions of `resource` objects in `namespace` that kube-apiserver's
/// audit log recorded, as "time user verb name (status)": who deleted what.
pub fn audited_deletions(bed: &TestBed, namespace: &str, resource: &str) -> Vec<String> {
    let path = bed
        .layout()
        .logs()
        .join(ironvirt_testbed::controlplane::AUDIT_LOG_FILE);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["objectRef"]["namespace"] == namespace && e["objectRef"]["resource"] == resource
        })
        .map(|e| {
            format!(
                "{} {} {} {} ({})",
                e["stageTimestamp"].as_str().unwrap_or("?"),
                e["user"]["username"].as_str().unwrap_or("?"),
                e["verb"].as_str().unwrap_or("?"),
                e["objectRef"]["name"].as_str().unwrap_or("(collection)"),
                e["responseStatus"]["code"]
            )
        })
        .collect()
}
