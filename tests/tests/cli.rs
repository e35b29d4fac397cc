//! `ironctl` against the test bed, as users run it: through kube-apiserver with
//! a kubeconfig, on real QEMU guests. Each test has its own namespace
//! ("cli-…"), operator and handler; the test bed runs ironvirt-api.

use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::printable;
use ironvirt_tests::api::{api_port, open_ws};
use ironvirt_tests::cli::{
    Tmux, guest_vm_manifest, ironctl, ironctl_bin, ironctl_in, kubectl_apply,
};
use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use kube::ResourceExt;
use kube::api::Api;

const QEMU: &str = "qemu:///system";
const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(90);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";

/// Starts this test's handler and operator; the handler is removed by the caller.
async fn node(bed: &TestBed, ns: &str) -> Result<(Handler, Operator), String> {
    api_port(&bed.admin()).await?;
    let h = Handler::start(bed, ns, &format!("{ns}-n"), QEMU);
    let op = Operator::start(bed, ns, "op", &[]);
    wait_serving(&h, Duration::from_secs(60)).await;
    Ok((h, op))
}

/// Creates a VM of the test guest with `ironctl create vm | kubectl apply`.
async fn create_vm(bed: &TestBed, ns: &str, name: &str, strategy: &str) -> Result<(), String> {
    let manifest = guest_vm_manifest(bed, name, strategy, &[]).await?;
    kubectl_apply(bed, ns, &manifest, &[]).map(|_| ())
}

async fn wait_printable(
    vms: &Api<VirtualMachine>,
    name: &str,
    want: &str,
    timeout: Duration,
) -> Result<(), String> {
    eventually(timeout, &format!("VM {name} {want}"), || async {
        (printable(vms, name).await.as_deref() == Some(want)).then_some(())
    })
    .await
    .map_err(|e| e.to_string())
}

async fn strategy(
    vms: &Api<VirtualMachine>,
    name: &str,
) -> Result<ironvirt_crds::RunStrategy, String> {
    Ok(vms
        .get(name)
        .await
        .map_err(|e| e.to_string())?
        .spec
        .effective_run_strategy())
}

async fn delete_vms(bed: &TestBed, ns: &str, names: &[&str]) -> Result<(), String> {
    let vms: Api<VirtualMachine> = Api::namespaced(bed.admin(), ns);
    for n in names {
        let _ = vms.delete(n, &Default::default()).await;
    }
    for n in names {
        wait_gone(&bed.admin(), ns, n, Duration::from_secs(60)).await?;
    }
    Ok(())
}

/// Acceptance 1: the console in a real terminal (tmux): marker, a command,
/// Ctrl+] exits 0, and the terminal is back in cooked mode. Also the clear
/// lines for a missing and a stopped VMI.
#[tokio::test(flavor = "multi_thread")]
async fn console_in_a_terminal() {
    let bed = &bed().await;
    bed.with_namespace("cli", |ns| async move {
        use tokio::io::AsyncBufReadExt;
        let (h, _op) = node(bed, &ns).await?;
        let kubeconfig = bed.info().kubeconfig.clone();

        // Missing and stopped VMIs: one clear line, exit 1, at once.
        let run = ironctl(bed, &ns, &["console", "missing"]).await;
        run.one_error_line(&format!(
            "VirtualMachineInstance \"missing\" not found in namespace \"{ns}\""
        ))?;
        create_vm(bed, &ns, "halted", "Halted").await?;
        let vms: Api<VirtualMachine> = Api::namespaced(bed.admin(), &ns);
        wait_printable(&vms, "halted", "Stopped", Duration::from_secs(30)).await?;
        let run = ironctl(bed, &ns, &["console", "halted"]).await;
        run.one_error_line("VirtualMachine \"halted\" is Stopped (start it with: ironctl start halted)")?;
        let t0 = std::time::Instant::now();
        let run = ironctl(bed, &ns, &["console", "missing", "--timeout", "2s"]).await;
        run.one_error_line("not found in namespace")?;
        assert!(run.stderr.contains("after waiting 2 s"), "{}", run.stderr);
        assert!(t0.elapsed() >= Duration::from_secs(2));

        // The VM starts while ironctl waits for it (--timeout).
        create_vm(bed, &ns, "con", "Always").await?;
        let tmux = Tmux::start(&ns)?;
        tmux.wait_for("$ ", Duration::from_secs(10)).await?;
        tmux.type_text(&format!(
            "{} --kubeconfig {} -n {ns} console con --timeout 120; echo EXIT=$?; \
             echo \"MODES\"\"=$(stty -a | tr ' ;' '\\n\\n' | grep -Ex -- '-?(icanon|echo)' | paste -sd,)\"",
            ironctl_bin().display(),
            kubeconfig.display(),
        ))?;
        tmux.keys(&["Enter"])?;
        tmux.wait_for("Successfully connected to con console", BOOT).await?;
        tmux.wait_for(MARKER, BOOT).await?;
        // A fresh prompt, then the command: the guest's shell computes 42.
        tmux.keys(&["Enter"])?;
        tmux.type_text("echo ok-$((6*7))")?;
        tmux.keys(&["Enter"])?;
        tmux.wait_for("ok-42", Duration::from_secs(30)).await?;
        // Ctrl+] leaves with exit code 0 and the terminal restored.
        tmux.keys(&["C-]"])?;
        let screen = tmux.wait_for("MODES=", Duration::from_secs(15)).await?;
        assert!(screen.contains("EXIT=0"), "{screen}");
        assert!(
            screen.contains("MODES=icanon,echo"),
            "terminal not restored (want icanon and echo):\n{screen}"
        );
        drop(tmux);

        // Piped input: output flows, and end of input ends the session (exit 0).
        let run = ironctl_in(
            &kubeconfig,
            &ns,
            &["console", "con"],
            Some(b"\necho piped-$((40+2))\n"),
            Duration::from_secs(30),
        )
        .await;
        run.ok()?;

        // The VM stops under an open console: exit 1 with the reason.
        let mut session = tokio::process::Command::new(ironctl_bin())
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", &ns, "console", "con"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let _stdin = session.stdin.take();
        let mut stderr =
            tokio::io::BufReader::new(session.stderr.take().ok_or("no stderr")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), stderr.next_line())
            .await
            .map_err(|_| "the console did not connect within 30 s".to_owned())?
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        assert!(first.starts_with("Successfully connected to con console"), "{first}");
        ironctl(bed, &ns, &["stop", "con"]).await.ok()?;
        let status = tokio::time::timeout(Duration::from_secs(90), session.wait())
            .await
            .map_err(|_| "the console did not end when its VM stopped".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut rest = Vec::new();
        while let Ok(Some(l)) = stderr.next_line().await {
            rest.push(l);
        }
        eprintln!("console ended with: {rest:?}");
        assert_eq!(status.code(), Some(1), "{rest:?}");
        assert!(
            rest.len() == 1 && rest[0].starts_with("error: ") && rest[0].contains("console of con"),
            "{rest:?}"
        );

        delete_vms(bed, &ns, &["con", "halted"]).await?;
        h.remove(&bed.admin()).await;
        Ok::<(), String>(())
    })
    .await;
}

/// Acceptance 2 and 3: `vnc --proxy-only` relays the guest's RFB handshake;
/// `vnc screenshot` writes a PNG that is not blank. Also pause/unpause/reset.
#[tokio::test(flavor = "multi_thread")]
async fn vnc_proxy_screenshot_and_vmi_power() {
    let bed = &bed().await;
    bed.with_namespace("cli", |ns| async move {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let (h, _op) = node(bed, &ns).await?;
        let admin = bed.admin();
        create_vm(bed, &ns, "gfx", "Always").await?;
        wait_phase(&admin, &ns, "gfx", "Running", BOOT).await?;
        // The guest prints its boot log and marker on tty0 too.
        let mut con = open_ws(
            &admin,
            &format!("{SUB}/namespaces/{ns}/virtualmachineinstances/gfx/console"),
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
        con.expect_from(0, MARKER, BOOT).await?;
        con.close().await;

        // The proxy prints {"port":N}; a raw TCP client gets the RFB version
        // from the guest's VNC server and completes the version handshake.
        let mut proxy = tokio::process::Command::new(ironctl_bin())
            .arg("--kubeconfig")
            .arg(&bed.info().kubeconfig)
            .args(["-n", &ns, "vnc", "--proxy-only", "gfx"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = proxy.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .map_err(|_| "no port printed within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
        let printed: serde_json::Value =
            serde_json::from_str(line.trim()).map_err(|e| format!("{line:?}: {e}"))?;
        let port = printed["port"]
            .as_u64()
            .ok_or(format!("no port in {line:?}"))?;
        assert_eq!(line.trim(), format!("{{\"port\":{port}}}"));
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
            .await
            .map_err(|e| e.to_string())?;
        let mut version = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut version))
            .await
            .map_err(|_| "no RFB version within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        let version = String::from_utf8_lossy(&version).into_owned();
        assert!(
            version.starts_with("RFB 003.00") && version.ends_with('\n'),
            "{version:?}"
        );
        tcp.write_all(b"RFB 003.008\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut n = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut n))
            .await
            .map_err(|_| "no security types within 30 s".to_owned())?
            .map_err(|e| e.to_string())?;
        assert!(n[0] > 0, "the server offered no security type");
        // One viewer: when it leaves, the proxy ends, with exit code 0.
        drop(tcp);
        let status = tokio::time::timeout(Duration::from_secs(20), proxy.wait())
            .await
            .map_err(|_| "the proxy did not end with its viewer".to_owned())?
            .map_err(|e| e.to_string())?;
        assert_eq!(status.code(), Some(0));

        // Without --proxy-only it starts the viewer it finds on PATH (here a
        // stand-in remote-viewer that reads the RFB version and leaves).
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let viewer = dir.path().join("remote-viewer");
        let seen = dir.path().join("viewer-saw");
        std::fs::write(
            &viewer,
            format!(
                "#!/bin/bash\nexec 3<>/dev/tcp/127.0.0.1/${{1##*:}}\nhead -c 12 <&3 >{}\n",
                seen.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&viewer, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(ironctl_bin())
                .arg("--kubeconfig")
                .arg(&bed.info().kubeconfig)
                .args(["-n", &ns, "vnc", "gfx"])
                .env("PATH", format!("{}:/usr/bin:/bin", dir.path().display()))
                .kill_on_drop(true)
                .output(),
        )
        .await
        .map_err(|_| "ironctl vnc with a viewer did not end within 60 s".to_owned())?
        .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("starting remote-viewer"), "{stderr}");
        let saw = std::fs::read_to_string(&seen).map_err(|e| e.to_string())?;
        assert!(saw.starts_with("RFB 003.00"), "the viewer read {saw:?}");

        // Screenshot to a file: a real PNG, not blank.
        let file = dir.path().join("shot.png");
        let file_s = file.to_string_lossy().into_owned();
        ironctl(bed, &ns, &["vnc", "screenshot", "gfx", "-f", &file_s])
            .await
            .ok()?;
        let png = std::fs::read(&file).map_err(|e| e.to_string())?;
        let screen = ironvirt_tests::api::Screen::decode(&png)?;
        assert!(
            screen.width >= 320 && screen.height >= 200,
            "{}x{}",
            screen.width,
            screen.height
        );
        let (differing, total) = screen.differing();
        assert!(
            differing * 100 > total,
            "screenshot nearly blank: {differing} of {total} pixels differ"
        );
        // …and to standard output.
        let run = ironctl(bed, &ns, &["vnc", "screenshot", "gfx", "-f", "-"]).await;
        run.ok()?;
        assert!(
            run.stdout.starts_with(b"\x89PNG\r\n\x1a\n"),
            "not a PNG on stdout"
        );

        // Pause and unpause, in virtctl's forms.
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let run = ironctl(bed, &ns, &["pause", "vm", "gfx"]).await;
        assert_eq!(
            run.ok()?.stdout_text().trim(),
            "VM gfx was scheduled to pause"
        );
        wait_printable(&vms, "gfx", "Paused", Duration::from_secs(30)).await?;
        ironctl(bed, &ns, &["pause", "gfx"])
            .await
            .one_error_line("paused")?;
        let run = ironctl(bed, &ns, &["unpause", "vmi", "gfx"]).await;
        assert_eq!(
            run.ok()?.stdout_text().trim(),
            "VMI gfx was scheduled to unpause"
        );
        wait_printable(&vms, "gfx", "Running", Duration::from_secs(30)).await?;
        ironctl(bed, &ns, &["reset", "gfx"]).await.ok()?;
        ironctl(bed, &ns, &["soft-reboot", "gfx"]).await.ok()?;
        ironctl(bed, &ns, &["pause", "pod", "gfx"])
            .await
            .one_error_line("unknown kind")?;

        delete_vms(bed, &ns, &["gfx"]).await?;
        // Not running any more: a clear line, before anything listens.
        ironctl(bed, &ns, &["vnc", "--proxy-only", "gfx"])
            .await
            .one_error_line("\"gfx\"")?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

/// Acceptance 4: start/stop/restart by run strategy, with the results the
/// compatibility table documents; stop of a running VM reaches Stopped.
#[tokio::test(flavor = "multi_thread")]
async fn start_stop_restart_by_run_strategy() {
    let bed = &bed().await;
    bed.with_namespace("cli", |ns| async move {
        use ironvirt_crds::RunStrategy;
        let (h, _op) = node(bed, &ns).await?;
        let admin = bed.admin();
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        for (name, s) in [
            ("always", "Always"),
            ("manual", "Manual"),
            ("rerun", "RerunOnFailure"),
            ("once", "Once"),
        ] {
            create_vm(bed, &ns, name, s).await?;
        }
        let first = wait_phase(&admin, &ns, "always", "Running", BOOT).await?;

        // Always: start conflicts; restart makes a new VMI; stop halts it.
        ironctl(bed, &ns, &["start", "always"])
            .await
            .one_error_line("already running")?;
        let run = ironctl(bed, &ns, &["restart", "always", "--grace-period", "5"]).await;
        assert_eq!(
            run.ok()?.stdout_text().trim(),
            "VM always was scheduled to restart"
        );
        ironvirt_tests::api::wait_replaced(&vmis, "always", first.uid(), BOOT).await?;
        ironctl(bed, &ns, &["stop", "always", "--grace-period", "0"])
            .await
            .one_error_line("add --force")?;
        let run = ironctl(bed, &ns, &["stop", "always", "--force"]).await;
        assert_eq!(
            run.ok()?.stdout_text().trim(),
            "VM always was scheduled to stop"
        );
        wait_printable(&vms, "always", "Stopped", Duration::from_secs(60)).await?;
        assert_eq!(strategy(&vms, "always").await?, RunStrategy::Halted);

        // Halted: stop and restart conflict; a dry run changes nothing; start runs it.
        ironctl(bed, &ns, &["stop", "always"])
            .await
            .one_error_line("not running")?;
        ironctl(bed, &ns, &["restart", "always"])
            .await
            .one_error_line("not running")?;
        let run = ironctl(bed, &ns, &["start", "always", "--dry-run"]).await;
        assert!(run.ok()?.stdout_text().contains("dry run"));
        assert_eq!(strategy(&vms, "always").await?, RunStrategy::Halted);
        ironctl(bed, &ns, &["start", "always", "--paused"])
            .await
            .one_error_line("not supported by ironvirt yet")?;
        ironctl(bed, &ns, &["start", "always"]).await.ok()?;
        assert_eq!(strategy(&vms, "always").await?, RunStrategy::Always);
        wait_phase(&admin, &ns, "always", "Running", BOOT).await?;

        // Manual: nothing runs until start; stop ends it.
        wait_printable(&vms, "manual", "Stopped", Duration::from_secs(30)).await?;
        ironctl(bed, &ns, &["stop", "manual"])
            .await
            .one_error_line("not running")?;
        ironctl(bed, &ns, &["start", "manual"]).await.ok()?;
        wait_phase(&admin, &ns, "manual", "Running", BOOT).await?;
        ironctl(bed, &ns, &["start", "manual"])
            .await
            .one_error_line("manual")?;
        ironctl(bed, &ns, &["stop", "manual"]).await.ok()?;
        wait_printable(&vms, "manual", "Stopped", Duration::from_secs(60)).await?;
        assert_eq!(strategy(&vms, "manual").await?, RunStrategy::Manual);

        // RerunOnFailure and Once: start conflicts while running (Once never
        // starts again, nor restarts); stop halts.
        for (name, conflict) in [("rerun", "already running"), ("once", "runs once")] {
            wait_phase(&admin, &ns, name, "Running", BOOT).await?;
            ironctl(bed, &ns, &["start", name])
                .await
                .one_error_line(conflict)?;
            ironctl(bed, &ns, &["stop", name]).await.ok()?;
            wait_printable(&vms, name, "Stopped", Duration::from_secs(60)).await?;
            assert_eq!(strategy(&vms, name).await?, RunStrategy::Halted);
        }

        ironctl(bed, &ns, &["start", "nope"])
            .await
            .one_error_line(&format!(
                "VirtualMachine \"nope\" not found in namespace \"{ns}\""
            ))?;

        delete_vms(bed, &ns, &["always", "manual", "rerun", "once"]).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

/// Acceptance 5: a user without the RBAC role gets one clear line and exit 1.
#[tokio::test(flavor = "multi_thread")]
async fn a_user_without_the_role_gets_one_clear_line() {
    let bed = &bed().await;
    bed.with_namespace("cli", |ns| async move {
        api_port(&bed.admin()).await?;
        create_vm(bed, &ns, "locked", "Halted").await?;
        // carol has no binding at all; dave may only look (kubevirt.io:view).
        let carol = bed
            .user_kubeconfig("carol", &["dev"])
            .map_err(|e| e.to_string())?;
        let dave = bed
            .user_kubeconfig("dave", &["dev"])
            .map_err(|e| e.to_string())?;
        ironvirt_tests::api::bind(&bed.admin(), &ns, "dave", "kubevirt.io:view").await;
        let limit = Duration::from_secs(60);
        let cases: [(&std::path::Path, &[&str], &str); 8] = [
            (
                &carol,
                &["console", "locked"],
                "User \"carol\" cannot get resource \"virtualmachineinstances/console\"",
            ),
            (
                &carol,
                &["vnc", "--proxy-only", "locked"],
                "cannot get resource \"virtualmachineinstances/vnc\"",
            ),
            (
                &carol,
                &["vnc", "screenshot", "locked", "-f", "-"],
                "User \"carol\" cannot get resource \"virtualmachineinstances/vnc\"",
            ),
            (
                &carol,
                &["start", "locked"],
                "User \"carol\" cannot update resource \"virtualmachines/start\"",
            ),
            (
                &carol,
                &["pause", "vm", "locked"],
                "User \"carol\" cannot update resource \"virtualmachineinstances/pause\"",
            ),
            (
                &dave,
                &["start", "locked"],
                "User \"dave\" cannot update resource \"virtualmachines/start\"",
            ),
            (
                &dave,
                &["stop", "locked"],
                "User \"dave\" cannot update resource \"virtualmachines/stop\"",
            ),
            (
                &dave,
                &["restart", "locked"],
                "User \"dave\" cannot update resource \"virtualmachines/restart\"",
            ),
        ];
        for (kubeconfig, args, needle) in cases {
            let run = ironctl_in(kubeconfig, &ns, args, None, limit).await;
            let line = run
                .one_error_line(needle)
                .map_err(|e| format!("{args:?}: {e}"))?;
            assert!(line.contains("forbidden"), "{line}");
            assert!(
                run.stdout.is_empty(),
                "{args:?} printed {:?}",
                run.stdout_text()
            );
        }
        // A kubeconfig that does not exist is one line too.
        let run = ironctl_in(
            std::path::Path::new("/nonexistent/kubeconfig"),
            &ns,
            &["start", "x"],
            None,
            limit,
        )
        .await;
        run.one_error_line("kubeconfig: cannot read /nonexistent/kubeconfig")?;
        // So is a kube-apiserver that does not answer (a port nothing listens on).
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let admin = std::fs::read_to_string(&bed.info().kubeconfig).map_err(|e| e.to_string())?;
        let server = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .ok_or("no server in the admin kubeconfig")?
            .trim_matches('"')
            .to_owned();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let down = dir.path().join("kubeconfig");
        std::fs::write(
            &down,
            admin.replace(&server, &format!("https://127.0.0.1:{closed}")),
        )
        .map_err(|e| e.to_string())?;
        ironctl_in(&down, &ns, &["start", "x"], None, limit)
            .await
            .one_error_line(&format!(
                "cannot reach the Kubernetes API server at https://127.0.0.1:{closed}"
            ))?;
        Ok::<(), String>(())
    })
    .await;
}

/// Acceptance 6: `ironctl create vm … | kubectl apply --dry-run=server -f -`
/// is accepted (CRD schema and ironvirt's admission webhooks).
#[tokio::test(flavor = "multi_thread")]
async fn created_manifests_pass_a_server_dry_run() {
    let bed = &bed().await;
    bed.with_namespace("cli", |ns| async move {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let user_data = dir.path().join("user-data");
        std::fs::write(&user_data, "#!/bin/sh\necho hello from cloud-init\n")
            .map_err(|e| e.to_string())?;
        let user_data = user_data.to_string_lossy().into_owned();
        let variants: [&[&str]; 4] = [
            &["create", "vm"],
            &[
                "create",
                "vm",
                "--name",
                "cd",
                "--memory",
                "1Gi",
                "--cpu",
                "2",
                "--volume-containerdisk",
                "src:quay.io/containerdisks/fedora:41,bootorder:1",
                "--cloud-init-user-data",
                "I2Nsb3VkLWNvbmZpZwpwYXNzd29yZDogeAo=",
            ],
            &[
                "create",
                "vm",
                "--name",
                "hd",
                "--run-strategy",
                "Manual",
                "--cpu",
                "cores:1,sockets:2,threads:1",
                "--termination-grace-period",
                "30",
                "--volume-hostdisk",
                "path:/var/lib/ironvirt/images/busybox.qcow2,name:root,readonly:true",
                "--volume-hostdisk",
                "path:/var/lib/ironvirt/images/cli-scratch.img,type:DiskOrCreate,capacity:64Mi",
                "--cloud-init-user-data-file",
                &user_data,
            ],
            &[
                "create",
                "vm",
                "--name",
                "halted",
                "--run-strategy",
                "Halted",
                "--volume-hostdisk",
                "path:/var/lib/ironvirt/images/busybox.qcow2",
            ],
        ];
        for args in variants {
            let run = ironctl(bed, &ns, args).await;
            run.ok()?;
            let manifest = run.stdout_text();
            let out = kubectl_apply(bed, &ns, &manifest, &["--dry-run=server"])?;
            assert!(out.contains("created (server dry run)"), "{args:?}: {out}");
        }
        // Nothing was created.
        let vms: Api<VirtualMachine> = Api::namespaced(bed.admin(), &ns);
        let list = vms
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        assert!(list.items.is_empty());
        ironctl(
            bed,
            &ns,
            &[
                "create",
                "vm",
                "--instancetype",
                "u1.small",
                "--memory",
                "1Gi",
            ],
        )
        .await
        .one_error_line("--memory conflicts with --instancetype")?;
        Ok::<(), String>(())
    })
    .await;
}

/// `version` reports client and server; completion scripts; the kubectl plugin.
#[tokio::test(flavor = "multi_thread")]
async fn version_completion_and_the_kubectl_plugin() {
    let bed = &bed().await;
    api_port(&bed.admin()).await.expect("APIService Available");
    let run = ironctl(bed, "default", &["version"]).await;
    let text = run.ok().expect("version").stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("Client Version: ironctl v"), "{text}");
    assert!(
        lines[1].starts_with("Server Version: v1.") && lines[1].contains("ironvirt"),
        "{text}"
    );
    assert!(lines[2].starts_with("Kubernetes Version: v1.36"), "{text}");
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef ironctl"),
        ("fish", "complete -c ironctl"),
    ] {
        let run = ironctl(bed, "default", &["completion", shell]).await;
        assert!(
            run.ok().expect("completion").stdout_text().contains(needle),
            "{shell}"
        );
    }
    // As a kubectl plugin: kubectl finds kubectl-ironctl on PATH.
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(ironctl_bin(), dir.path().join("kubectl-ironctl")).expect("symlink");
    let path = std::env::join_paths(std::iter::once(dir.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .expect("PATH");
    let kubectl = |args: &[&str]| {
        std::process::Command::new(&bed.info().kubectl)
            .args(args)
            .env("PATH", &path)
            .env("KUBECONFIG", &bed.info().kubeconfig)
            .output()
            .expect("kubectl")
    };
    let out = kubectl(&["ironctl", "version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Client Version: ironctl") && stdout.contains("Server Version:"),
        "{stdout}"
    );
    let out = kubectl(&["ironctl", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: kubectl ironctl"));
}

/// `ironctl migrate` and `migrate-cancel` (issue #18): the migration the
/// subresource creates carries the added node selector; cancel deletes the
/// unfinished one, and says so when there is none. The API surface alone:
/// the VMI is an object whose status says Running (no handler, no operator),
/// as in virtctl.rs.
#[tokio::test(flavor = "multi_thread")]
async fn ironctl_migrates_and_cancels() {
    use ironvirt_crds::migration::VirtualMachineInstanceMigration;
    let bed = &bed().await;
    bed.with_namespace("cli-mig", |ns| async move {
        let admin = bed.admin();
        create_vm(bed, &ns, "mv", "Halted").await?;
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "mv"},
            "spec": {"domain": {"memory": {"guest": "64Mi"},
                "devices": {"autoattachPodInterface": false}}},
        }))
        .map_err(|e| e.to_string())?;
        vmis.create(&Default::default(), &vmi)
            .await
            .map_err(|e| e.to_string())?;
        let running =
            serde_json::json!({"status": {"phase": "Running", "nodeName": format!("{ns}-n")}});
        vmis.patch_status(
            "mv",
            &Default::default(),
            &kube::api::Patch::Merge(&running),
        )
        .await
        .map_err(|e| e.to_string())?;
        let migrations: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), &ns);

        // A dry run creates nothing.
        let run = ironctl(bed, &ns, &["migrate", "mv", "--dry-run"]).await;
        run.ok()?;
        assert_eq!(
            run.stdout_text().trim(),
            "VM mv was scheduled to migrate (dry run: nothing changed)"
        );
        let list = migrations
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        assert!(list.items.is_empty(), "{:?}", list.items);

        let run = ironctl(
            bed,
            &ns,
            &[
                "migrate",
                "mv",
                "--added-node-selector",
                "kubernetes.io/hostname=node-2,zone=a",
            ],
        )
        .await;
        run.ok()?;
        assert_eq!(run.stdout_text().trim(), "VM mv was scheduled to migrate");
        let list = migrations
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(list.items.len(), 1, "{:?}", list.items);
        let m = &list.items[0];
        assert_eq!(m.spec.vmi_name, "mv");
        assert_eq!(
            serde_json::to_value(&m.spec.added_node_selector).map_err(|e| e.to_string())?,
            serde_json::json!({"kubernetes.io/hostname": "node-2", "zone": "a"})
        );

        // In flight: a second is refused with the webhook's message.
        let run = ironctl(bed, &ns, &["migrate", "mv"]).await;
        assert_ne!(run.code, Some(0));
        assert!(
            run.stderr.contains("in-flight migration detected"),
            "{}",
            run.stderr
        );

        let run = ironctl(bed, &ns, &["migrate-cancel", "mv"]).await;
        run.ok()?;
        assert!(
            run.stdout_text()
                .contains("VM mv was scheduled to migrate-cancel")
        );
        eventually(Duration::from_secs(30), "the migration deleted", || async {
            migrations
                .list(&Default::default())
                .await
                .ok()
                .filter(|l| l.items.is_empty())
                .map(|_| ())
        })
        .await
        .map_err(|e| e.to_string())?;
        let run = ironctl(bed, &ns, &["migrate-cancel", "mv"]).await;
        assert_ne!(run.code, Some(0));
        assert!(
            run.stderr.contains("no unfinished migration for VMI mv"),
            "{}",
            run.stderr
        );

        // Clean up: no handler ran, so the VMI's finalizer goes by hand.
        let unfinalize = serde_json::json!({"metadata": {"finalizers": null}});
        let _ = vmis
            .patch(
                "mv",
                &Default::default(),
                &kube::api::Patch::Merge(&unfinalize),
            )
            .await;
        let _ = vmis.delete("mv", &Default::default()).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let _ = vms.delete("mv", &Default::default()).await;
        wait_gone(&admin, &ns, "mv", Duration::from_secs(30)).await?;
        Ok::<(), String>(())
    })
    .await;
}
