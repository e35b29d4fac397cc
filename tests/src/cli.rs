//! Running `ironctl` as users do: the built binary with a kubeconfig, in a
//! pipe or in a tmux terminal.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use ironvirt_testbed::TestBed;

/// The debug `ironctl` of this workspace (hack/test.sh builds every binary
/// first), or `IRONVIRT_IRONCTL` (benchmarks use a release build).
pub fn ironctl_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("IRONVIRT_IRONCTL") {
        return PathBuf::from(bin);
    }
    let bin = crate::operator::target_dir().join("debug").join("ironctl");
    assert!(
        bin.is_file(),
        "{} is missing; run `cargo build --workspace`",
        bin.display()
    );
    bin
}

/// What one run printed, and how it exited.
#[derive(Debug)]
pub struct Run {
    /// The exit code; None when it was killed (or timed out).
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Succeeded, or fails with what it printed.
    pub fn ok(&self) -> Result<&Run, String> {
        if self.code == Some(0) {
            Ok(self)
        } else {
            Err(format!(
                "ironctl exited {:?}; stdout: {} stderr: {}",
                self.code,
                self.stdout_text(),
                self.stderr
            ))
        }
    }

    /// Failed with exit code 1 and exactly one line on stderr, `error: …`,
    /// containing `needle`; no panic message or backtrace.
    pub fn one_error_line(&self, needle: &str) -> Result<String, String> {
        let lines: Vec<&str> = self.stderr.lines().filter(|l| !l.is_empty()).collect();
        let fine = self.code == Some(1)
            && lines.len() == 1
            && lines[0].starts_with("error: ")
            && lines[0].contains(needle)
            && !self.stderr.contains("panicked")
            && !self.stderr.to_ascii_lowercase().contains("backtrace");
        if fine {
            Ok(lines[0].to_owned())
        } else {
            Err(format!(
                "expected exit 1 and one error line containing {needle:?}; got exit {:?}, stderr:\n{}",
                self.code, self.stderr
            ))
        }
    }
}

/// `ironctl --kubeconfig K -n NS ARGS…`, with `stdin` fed in, killed after `timeout`.
pub async fn ironctl_in(
    kubeconfig: &Path,
    ns: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(ironctl_bin());
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("start ironctl");
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), stdin) {
        let _ = pipe.write_all(data).await;
    }
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Run {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Ok(Err(e)) => Run {
            code: None,
            stdout: Vec::new(),
            stderr: format!("waiting for ironctl: {e}"),
        },
        Err(_) => Run {
            code: None,
            stdout: Vec::new(),
            stderr: format!("ironctl {args:?} did not finish within {timeout:?}"),
        },
    }
}

/// `ironctl ARGS…` as admin in `ns`, with a 60 s limit.
pub async fn ironctl(bed: &TestBed, ns: &str, args: &[&str]) -> Run {
    ironctl_in(
        &bed.info().kubeconfig,
        ns,
        args,
        None,
        Duration::from_secs(60),
    )
    .await
}

/// A tmux server of its own (its own socket) with one 200x50 window running
/// bash; the server is killed and its socket removed when dropped.
pub struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Starts the server; `name` makes the socket unique.
    pub fn start(name: &str) -> Result<Tmux, String> {
        let t = Tmux {
            socket: std::env::temp_dir().join(format!("ironvirt-tmux-{name}.sock")),
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-s", "main", "-x", "200", "-y", "50"])
            .arg("env PS1='$ ' bash --norc --noprofile")
            .output()
            .map_err(|e| format!("tmux: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tmux new-session: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(t)
    }

    fn cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new("tmux");
        c.arg("-S").arg(&self.socket).env_remove("TMUX");
        c
    }

    /// Types `text` literally (no key names).
    pub fn type_text(&self, text: &str) -> Result<(), String> {
        self.run(&["send-keys", "-t", "main", "-l", text])
    }

    /// Presses keys by tmux name (Enter, C-]).
    pub fn keys(&self, keys: &[&str]) -> Result<(), String> {
        let mut args = vec!["send-keys", "-t", "main"];
        args.extend_from_slice(keys);
        self.run(&args)
    }

    fn run(&self, args: &[&str]) -> Result<(), String> {
        let out = self
            .cmd()
            .args(args)
            .output()
            .map_err(|e| format!("tmux: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// The window's text with its history, wrapped lines joined.
    pub fn screen(&self) -> String {
        self.cmd()
            .args(["capture-pane", "-p", "-J", "-t", "main", "-S", "-2000"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `needle` is on the screen; returns the screen.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{needle:?} not on the tmux screen within {timeout:?}; screen:\n{screen}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// `ironctl create vm` for the test guest's disk (read-only, so several VMs
/// share it) with `extra` flags; the manifest.
pub async fn guest_vm_manifest(
    bed: &TestBed,
    name: &str,
    strategy: &str,
    extra: &[&str],
) -> Result<String, String> {
    let mut args = vec![
        "create",
        "vm",
        "--name",
        name,
        "--run-strategy",
        strategy,
        "--memory",
        "128Mi",
        "--termination-grace-period",
        "10",
        "--volume-hostdisk",
        "path:/var/lib/ironvirt/images/busybox.qcow2,name:root,readonly:true",
    ];
    args.extend_from_slice(extra);
    let run = ironctl(bed, "default", &args).await;
    run.ok()?;
    Ok(run.stdout_text())
}

/// `kubectl apply -n ns -f -` of `manifest` as admin (extra args such as
/// --dry-run=server); kubectl's stdout.
pub fn kubectl_apply(
    bed: &TestBed,
    ns: &str,
    manifest: &str,
    extra: &[&str],
) -> Result<String, String> {
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    args.extend_from_slice(extra);
    // hostDisk images lie in the namespace's own directory of the bed's root.
    let manifest = crate::hostdisk::confine_text(manifest, ns);
    let out = crate::kubectl::kubectl_with(bed, None, &args, Some(&manifest));
    if out.success {
        Ok(out.stdout)
    } else {
        Err(format!(
            "kubectl apply failed: {}\nmanifest:\n{manifest}",
            out.stderr
        ))
    }
}
