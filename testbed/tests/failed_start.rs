//! A start that fails half-way leaves nothing running: real etcd starts, then
//! kube-apiserver dies at once; `up` must report it with its log and stop etcd.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use ironvirt_testbed::controlplane::{self, Binaries, UpOptions};
use ironvirt_testbed::process::{Supervisor, process_alive};
use ironvirt_testbed::{Error, Layout};

/// The cached etcd binary directory, as `make test` exports it.
fn etcd_dir() -> PathBuf {
    std::env::var_os("IRONVIRT_ETCD_BIN")
        .map(PathBuf::from)
        .expect("IRONVIRT_ETCD_BIN is not set; run through `make test`")
}

#[tokio::test]
async fn a_failed_start_stops_what_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("k8s");
    std::fs::create_dir_all(&fake).unwrap();
    for bin in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
        let p = fake.join(bin);
        std::fs::write(
            &p,
            "#!/bin/sh\necho \"fake $0: cannot start\" >&2\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let layout = Layout::new(dir.path().join("state"));
    let opts = UpOptions {
        binaries: Binaries::from_dirs(&etcd_dir(), &fake).unwrap(),
        libvirt: false,
        guest_dir: None,
    };
    let err = controlplane::up(&layout, &opts).await.unwrap_err();
    match &err {
        Error::Exited { name, tail, .. } => {
            assert_eq!(name, "kube-apiserver");
            assert!(tail.contains("cannot start"), "log tail: {tail}");
        }
        other => panic!("unexpected error: {other}"),
    }
    // etcd was started and must be gone again, and nothing is recorded.
    let sup = Supervisor::new(layout.pids(), layout.logs());
    assert!(sup.recorded().is_empty(), "{:?}", sup.recorded());
    let etcd_log = std::fs::read_to_string(layout.logs().join("etcd.log")).unwrap_or_default();
    assert!(
        !etcd_log.is_empty(),
        "etcd never ran, so the test proves nothing"
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", &layout.root().display().to_string()])
        .output()
        .unwrap();
    let left: Vec<u32> = String::from_utf8_lossy(&left.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|pid| process_alive(*pid))
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    // The message is one clear sentence naming the component and its log.
    let msg = err.to_string();
    assert!(
        msg.starts_with("kube-apiserver exited while starting; last lines of"),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_binaries_are_named_with_the_fix() {
    let err = Binaries::from_dirs(&etcd_dir(), std::path::Path::new("/nonexistent")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "kube-apiserver not found at /nonexistent/kube-apiserver; build it with `make build-k8s` (hack/build-k8s.sh)"
    );
}
