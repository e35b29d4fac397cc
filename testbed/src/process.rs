//! Background processes owned by the test bed.
//!
//! Each process runs in its own process group, writes to its own log file and
//! is recorded in `<state>/pids/<name>.pid` together with its executable, so that
//! `stop` can end exactly the processes the test bed started, by their own pid,
//! and never a stranger that reused the pid.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Errors raised while starting or stopping processes.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{name} (pid {pid}) did not exit after SIGKILL")]
    Unkillable { name: String, pid: u32 },
}

/// A process recorded in the pid directory: its pid, executable and start time
/// (clock ticks since boot), which together identify it even after pid reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub name: String,
    pub pid: u32,
    pub exe: PathBuf,
    pub start_time: Option<u64>,
}

/// The pid directory of one state directory.
#[derive(Debug, Clone)]
pub struct Supervisor {
    pid_dir: PathBuf,
    log_dir: PathBuf,
}

impl Supervisor {
    pub fn new(pid_dir: impl Into<PathBuf>, log_dir: impl Into<PathBuf>) -> Self {
        Supervisor {
            pid_dir: pid_dir.into(),
            log_dir: log_dir.into(),
        }
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    fn pid_path(&self, name: &str) -> PathBuf {
        self.pid_dir.join(format!("{name}.pid"))
    }

    /// Starts `program args` in the background, detached from our process group,
    /// with stdout and stderr appended to `<logs>/<name>.log`.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Recorded, ProcessError> {
        self.spawn_in(name, &[], program, args, env)
    }

    /// Like [`Supervisor::spawn`], but runs `program` through `wrapper`, a
    /// command that ends by executing its arguments in place (such as
    /// `nsenter --net=… --mount=… --`): the pid stays the same, and `program`
    /// is recorded as the executable, so that `stop` recognises it.
    pub fn spawn_in(
        &self,
        name: &str,
        wrapper: &[String],
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Recorded, ProcessError> {
        for dir in [&self.pid_dir, &self.log_dir] {
            fs::create_dir_all(dir).map_err(|source| ProcessError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let log_path = self.log_path(name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|source| ProcessError::Io {
                path: log_path.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ProcessError::Io {
            path: log_path.clone(),
            source,
        })?;
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            name: name.to_owned(),
            program: wrapper
                .first()
                .map_or_else(|| program.to_owned(), PathBuf::from),
            source,
        })?;
        let exe = fs::canonicalize(program).unwrap_or_else(|_| program.to_owned());
        let rec = Recorded {
            name: name.to_owned(),
            pid: child.id(),
            exe,
            start_time: start_time(child.id()),
        };
        // Recorded atomically (write, then rename), so `stop` never reads half a file.
        let pid_path = self.pid_path(name);
        let tmp = self.pid_dir.join(format!(".{name}.pid.tmp"));
        let body = format!(
            "{}\n{}\n{}\n",
            rec.pid,
            rec.exe.display(),
            rec.start_time.map_or(String::new(), |t| t.to_string())
        );
        if let Err(source) = fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, &pid_path)) {
            // Unrecorded, it could never be stopped: stop it now.
            let _ = kill(Pid::from_raw(rec.pid as i32), Signal::SIGKILL);
            let _ = child.wait();
            return Err(ProcessError::Io {
                path: pid_path,
                source,
            });
        }
        // The child must outlive this process (`make run`); `stop` ends it by
        // pid. A thread reaps it should it end while this process lives (a
        // test that kills and restarts components), so that no zombie is
        // left that /proc still shows as alive; it does not keep this
        // process from exiting.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        tracing::debug!(name, pid = rec.pid, log = %log_path.display(), "started");
        Ok(rec)
    }

    /// Every process recorded in the pid directory.
    pub fn recorded(&self) -> Vec<Recorded> {
        let Ok(entries) = fs::read_dir(&self.pid_dir) else {
            return Vec::new();
        };
        let mut out: Vec<Recorded> = entries
            .flatten()
            .filter_map(|e| {
                let path = e.path();
                let name = path.file_stem()?.to_str()?.to_owned();
                if path.extension()? != "pid" {
                    return None;
                }
                let text = fs::read_to_string(&path).ok()?;
                let mut lines = text.lines();
                let Some(pid) = lines.next().and_then(|l| l.trim().parse().ok()) else {
                    tracing::warn!(file = %path.display(), "ignoring an unreadable pid file");
                    return None;
                };
                let exe = PathBuf::from(lines.next().unwrap_or_default());
                let start_time = lines.next().and_then(|l| l.trim().parse().ok());
                Some(Recorded {
                    name,
                    pid,
                    exe,
                    start_time,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Whether the recorded process is still the one we started and still alive:
    /// same pid, same executable and, when recorded, same start time.
    pub fn is_running(rec: &Recorded) -> bool {
        process_alive(rec.pid)
            && same_exe(rec)
            && rec
                .start_time
                .is_none_or(|t| start_time(rec.pid) == Some(t))
    }

    /// Stops the named process: SIGTERM, then SIGKILL after `grace`. Idempotent.
    pub fn stop(&self, name: &str, grace: Duration) -> Result<(), ProcessError> {
        let Some(rec) = self.recorded().into_iter().find(|r| r.name == name) else {
            return Ok(());
        };
        self.stop_recorded(&rec, grace)
    }

    fn stop_recorded(&self, rec: &Recorded, grace: Duration) -> Result<(), ProcessError> {
        if Self::is_running(rec) {
            tracing::debug!(name = %rec.name, pid = rec.pid, "stopping");
            let pid = Pid::from_raw(rec.pid as i32);
            let _ = kill(pid, Signal::SIGTERM);
            if !wait_gone(rec.pid, grace) {
                tracing::warn!(name = %rec.name, pid = rec.pid, "did not stop on SIGTERM; sending SIGKILL");
                let _ = kill(pid, Signal::SIGKILL);
                if !wait_gone(rec.pid, Duration::from_secs(10)) {
                    return Err(ProcessError::Unkillable {
                        name: rec.name.clone(),
                        pid: rec.pid,
                    });
                }
            }
        }
        let _ = fs::remove_file(self.pid_path(&rec.name));
        Ok(())
    }

    /// Stops every recorded process, in the reverse of `order` (names not in
    /// `order` first). Stops as many as it can and reports the first failure.
    pub fn stop_all(&self, order: &[&str], grace: Duration) -> Result<(), ProcessError> {
        let mut recs = self.recorded();
        let rank = |r: &Recorded| {
            order
                .iter()
                .position(|n| *n == r.name)
                .map_or(usize::MAX, |p| p)
        };
        recs.sort_by_key(|r| std::cmp::Reverse(rank(r)));
        let mut first_err = None;
        for rec in &recs {
            if let Err(e) = self.stop_recorded(rec, grace) {
                tracing::error!(error = %e, "stop failed");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The last `n` lines of a component's log, for error messages.
    pub fn log_tail(&self, name: &str, n: usize) -> String {
        tail(&self.log_path(name), n)
    }
}

/// The last `n` lines of a file, or an empty string.
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `pid` is a live process (zombies count as gone).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// The start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state); the start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn same_exe(rec: &Recorded) -> bool {
    // A pid file without an executable was not written by us.
    if rec.exe.as_os_str().is_empty() {
        return false;
    }
    match fs::read_link(format!("/proc/{}/exe", rec.pid)) {
        Ok(exe) => {
            // A replaced binary shows up as "<path> (deleted)".
            let exe = exe.to_string_lossy();
            let exe = exe.trim_end_matches(" (deleted)");
            Path::new(exe) == rec.exe
        }
        // Not readable (another user's process): do not touch it.
        Err(_) => false,
    }
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !process_alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_record_and_stop() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().join("pids"), dir.path().join("logs"));
        let rec = sup
            .spawn("sleeper", Path::new("/bin/sleep"), &["300".to_owned()], &[])
            .unwrap();
        assert!(Supervisor::is_running(&rec));
        assert!(rec.start_time.is_some());
        assert_eq!(sup.recorded(), vec![rec.clone()]);
        sup.stop_all(&[], Duration::from_secs(5)).unwrap();
        assert!(!process_alive(rec.pid));
        assert!(sup.recorded().is_empty());
        // Idempotent.
        sup.stop("sleeper", Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn a_child_that_ends_leaves_no_zombie() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().join("pids"), dir.path().join("logs"));
        let rec = sup
            .spawn("quick", Path::new("/bin/true"), &[], &[])
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Reaped: its /proc entry goes away, rather than staying a zombie.
        while Path::new(&format!("/proc/{}", rec.pid)).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "pid {} still in /proc",
                rec.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn ignores_a_pid_reused_by_another_program() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().join("pids"), dir.path().join("logs"));
        fs::create_dir_all(dir.path().join("pids")).unwrap();
        // Our own pid, but recorded with a different executable.
        let me = std::process::id();
        fs::write(
            dir.path().join("pids/impostor.pid"),
            format!("{me}\n/nonexistent/etcd\n"),
        )
        .unwrap();
        let rec = sup.recorded().pop().unwrap();
        assert!(!Supervisor::is_running(&rec));
        // Right executable, wrong start time: a reused pid, not ours either.
        let exe = fs::read_link(format!("/proc/{me}/exe")).unwrap();
        fs::write(
            dir.path().join("pids/impostor.pid"),
            format!("{me}\n{}\n1\n", exe.display()),
        )
        .unwrap();
        let rec = sup.recorded().pop().unwrap();
        assert!(!Supervisor::is_running(&rec));
        // No executable recorded: never ours.
        fs::write(dir.path().join("pids/impostor.pid"), format!("{me}\n")).unwrap();
        let rec = sup.recorded().pop().unwrap();
        assert!(!Supervisor::is_running(&rec));
        sup.stop_all(&[], Duration::from_millis(100)).unwrap();
        assert!(process_alive(me));
    }

    #[test]
    fn spawn_failure_names_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let sup = Supervisor::new(dir.path().join("pids"), dir.path().join("logs"));
        let err = sup
            .spawn("ghost", Path::new("/nonexistent/ghost"), &[], &[])
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ghost"), "{err}");
    }
}
