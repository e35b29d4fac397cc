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
    let _program = argv.next();
    let args: Vec<String> = argv.collect();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("kill -KILL {pid} ({name}) failed"));
    }
    // Gone before returning, so that its ports are free for the restart.
    for _ in 0..100 {
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Outage {
        name: name.to_owned(),
        exe,
        args,
        pids: bed.layout().pids(),
        logs: bed.layout().logs(),
    })
}

impl Outage {
    /// Starts the component again; its new pid.
    pub fn end(self) -> Result<u32, String> {
        Supervisor::new(self.pids, self.logs)
            .spawn(&self.name, &self.exe, &self.args, &[])
            .map(|rec| rec.pid)
            .map_err(|e| format!("starting {} again: {e}", self.name))
    }
}
