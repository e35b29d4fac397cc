//! Running the test bed's kubectl (same version as the server) as admin or as
//! a user, and installing ironvirt's CRDs.

use std::path::{Path, PathBuf};
use std::process::Command;

use ironvirt_testbed::TestBed;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs kubectl with `kubeconfig` (admin's when `None`), feeding `stdin`.
pub fn kubectl_with(
    bed: &TestBed,
    kubeconfig: Option<&Path>,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(&bed.info().kubectl);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig.unwrap_or(&bed.info().kubeconfig))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run kubectl");
    if let Some(mut pipe) = child.stdin.take()
        && let Some(input) = stdin
    {
        pipe.write_all(input.as_bytes())
            .expect("write kubectl stdin");
    }
    let out = child.wait_with_output().expect("wait for kubectl");
    Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs kubectl as admin.
pub fn kubectl(bed: &TestBed, args: &[&str]) -> Output {
    kubectl_with(bed, None, args, None)
}

/// `kubectl apply --server-side` of `path` as the tests' field manager.
fn apply_server_side(bed: &TestBed, path: &std::path::Path) -> Output {
    kubectl(
        bed,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=ironvirt-tests",
            "-f",
            &path.to_string_lossy(),
        ],
    )
}

/// Installs deploy/crds (server-side apply, idempotent), waits until every
/// CRD is Established, and installs deploy/instancetypes.
pub fn ensure_crds(bed: &TestBed) {
    let dir = repo_root().join("deploy/crds");
    let out = apply_server_side(bed, &dir);
    assert!(out.success, "installing CRDs failed: {}", out.stderr);
    let dir = dir.to_string_lossy();
    let out = kubectl(
        bed,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            &dir,
        ],
    );
    assert!(out.success, "CRDs not Established: {}", out.stderr);
    // Refresh kubectl's discovery cache (api-resources always asks the server)
    // until the new kinds are served, so `kubectl explain vm` knows them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = kubectl(
            bed,
            &["api-resources", "--api-group=kubevirt.io", "-o", "name"],
        );
        if out.stdout.contains("virtualmachines.kubevirt.io")
            && out
                .stdout
                .contains("virtualmachineinstancereplicasets.kubevirt.io")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kubevirt.io kinds not in discovery: {} {}",
            out.stdout,
            out.stderr
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    // The common cluster instancetypes and preferences, as `make run` installs them.
    let out = apply_server_side(bed, &repo_root().join("deploy/instancetypes"));
    assert!(
        out.success,
        "installing the common instancetypes failed: {}",
        out.stderr
    );
}

/// The run's test bed, with ironvirt's CRDs installed.
pub async fn bed_with_crds() -> TestBed {
    let bed = TestBed::shared()
        .await
        .expect("test bed (run through `make test`)");
    ensure_crds(&bed);
    bed
}
