//! KubeVirt's own `virtctl` against ironvirt, through kube-apiserver, as a
//! user with the `kubevirt.io:admin` role in one namespace: start a Halted VM,
//! open its serial console (in a terminal: tmux) and type into it, take a VNC
//! screenshot, stop it. `make test` builds virtctl (hack/build-virtctl.sh,
//! cached) and names it in IRONVIRT_VIRTCTL.

use std::path::PathBuf;
use std::time::Duration;

use ironvirt_crds::VirtualMachine;
use ironvirt_tests::api::{GUEST_MARKER as MARKER, bind, printable};
use ironvirt_tests::cli::{Tmux, guest_vm_manifest, kubectl_apply};
use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use kube::api::Api;

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(120);

fn virtctl_bin() -> PathBuf {
    let path = std::env::var_os("IRONVIRT_VIRTCTL").map(PathBuf::from).expect(
        "IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`",
    );
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Runs virtctl with `args`; (exit code, stdout, stderr).
async fn virtctl(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(virtctl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .expect("run virtctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn kubevirts_virtctl_starts_consoles_screenshots_and_stops() {
    let bed = &bed().await;
    bed.with_namespace("vctl", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "vera", "kubevirt.io:admin").await;
        let kubeconfig = bed
            .user_kubeconfig("vera", &["dev"])
            .map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let manifest = guest_vm_manifest(bed, "vk", "Halted", &[]).await?;
        kubectl_apply(bed, &ns, &manifest, &[])?;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);

        // start: Halted → Always, a VMI runs. RBAC reaches the authorizer's
        // cache after a moment.
        eventually(Duration::from_secs(30), "virtctl start", || async {
            let (code, _, err) = virtctl(&kubeconfig, &ns, &["start", "vk"]).await;
            if code != 0 {
                eprintln!("virtctl start: {err}");
            }
            (code == 0).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        wait_phase(&admin, &ns, "vk", "Running", BOOT).await?;

        // console in a terminal: the guest's marker, a typed command, ^] to leave.
        let tmux = Tmux::start(&ns)?;
        tmux.type_text(&format!(
            "{} --kubeconfig {} -n {ns} console vk; echo VIRTCTL-EXIT=$?",
            virtctl_bin().display(),
            kubeconfig.display()
        ))?;
        tmux.keys(&["Enter"])?;
        tmux.wait_for(MARKER, BOOT).await?;
        tmux.keys(&["Enter"])?;
        tmux.type_text("echo virtctl-$((6*7))")?;
        tmux.keys(&["Enter"])?;
        tmux.wait_for("virtctl-42", Duration::from_secs(30)).await?;
        tmux.keys(&["C-]"])?;
        tmux.wait_for("VIRTCTL-EXIT=0", Duration::from_secs(15))
            .await?;

        // vnc screenshot: a PNG of the guest's screen.
        let png = std::env::temp_dir().join(format!("{ns}-screen.png"));
        let png_arg = format!("--file={}", png.display());
        let (code, out, err) =
            virtctl(&kubeconfig, &ns, &["vnc", "screenshot", "vk", &png_arg]).await;
        assert_eq!(code, 0, "virtctl vnc screenshot: {out}{err}");
        let bytes = std::fs::read(&png).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&png);
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 1000,
            "not a PNG of a screen: {} bytes",
            bytes.len()
        );

        // stop: Always → Halted, the VMI goes, the VM shows Stopped.
        let (code, out, err) = virtctl(&kubeconfig, &ns, &["stop", "vk"]).await;
        assert_eq!(code, 0, "virtctl stop: {out}{err}");
        wait_gone(&admin, &ns, "vk", Duration::from_secs(60)).await?;
        eventually(Duration::from_secs(30), "VM Stopped", || async {
            (printable(&vms, "vk").await.as_deref() == Some("Stopped")).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;

        // A user without a role gets virtctl's error, not a session.
        let nobody = bed
            .user_kubeconfig("nobody", &["dev"])
            .map_err(|e| e.to_string())?;
        let (code, _, err) = virtctl(&nobody, &ns, &["start", "vk"]).await;
        assert_ne!(code, 0);
        assert!(err.contains("forbidden"), "{err}");

        let _ = vms.delete("vk", &Default::default()).await;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}
