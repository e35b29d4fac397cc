//! SSH into a real guest through kube-apiserver (the `portforward`
//! subresource to port 22, where the test guest's dropbear listens), with the
//! key from `accessCredentials` (a Secret, propagation noCloud): KubeVirt's
//! `virtctl ssh` (v1.8: the system's ssh through `virtctl port-forward
//! --stdio`), `ironctl ssh`, plain
//! `ssh` with `ironctl port-forward --stdio` as ProxyCommand, and `virtctl scp`
//! and `ironctl scp` copying 1 MiB each way with the same checksum. With
//! propagation configDrive the keys reach the guest through a
//! cloudInitConfigDrive volume's meta_data.json; a key added to the Secret
//! reaches the guest at its next start, not while it runs (KubeVirt's rule
//! for both cloud-init propagation methods).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ironvirt_tests::api::{GUEST_MARKER as MARKER, bind, guest_vmi};
use ironvirt_tests::cli::ironctl_bin;
use ironvirt_tests::handler::{Handler, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::eventually;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(120);
const NO_HOST_KEYS: [&str; 4] = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
];

fn virtctl_bin() -> PathBuf {
    let path = std::env::var_os("IRONVIRT_VIRTCTL").map(PathBuf::from).expect(
        "IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`",
    );
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Runs `program args…` with `stdin`, at most 90 s; (exit code, stdout, stderr).
async fn run(program: &Path, args: &[String], stdin: &[u8], home: &Path) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    // virtctl's ssh and scp build their client from KUBECONFIG (its
    // --kubeconfig flag does not reach them).
    let kubeconfig = args
        .iter()
        .position(|a| a == "--kubeconfig")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_default();
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("HOME", home)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.display()));
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin).await;
    }
    match tokio::time::timeout(Duration::from_secs(90), child.wait_with_output()).await {
        Ok(Ok(out)) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Ok(Err(e)) => (-1, String::new(), e.to_string()),
        Err(_) => (
            -1,
            String::new(),
            format!("{} {args:?}: no end within 90 s", program.display()),
        ),
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The test guest with a masquerade interface, a cloud-init `volume`
/// (cloudInitNoCloud or cloudInitConfigDrive) with an empty #cloud-config,
/// and the keys of Secret `keys` propagated by `method`.
fn ssh_vmi(name: &str, volume: &str, method: &str) -> Result<serde_json::Value, String> {
    let mut vmi = guest_vmi(name);
    let spec = &mut vmi["spec"];
    spec["domain"]["devices"]["disks"]
        .as_array_mut()
        .ok_or("disks")?
        .push(json!({"name": "ci", "disk": {"bus": "virtio"}}));
    spec["volumes"]
        .as_array_mut()
        .ok_or("volumes")?
        .push(json!({"name": "ci", volume: {"userData": "#cloud-config\n"}}));
    spec["domain"]["devices"]["interfaces"] = json!([{"name": "default", "masquerade": {}}]);
    spec["networks"] = json!([{"name": "default", "pod": {}}]);
    spec["accessCredentials"] = json!([{"sshPublicKey": {
        "source": {"secret": {"secretName": "keys"}},
        "propagationMethod": {method: {}},
    }}]);
    Ok(vmi)
}

/// A new ed25519 key pair at `dir/name`; its public key.
fn keygen(dir: &Path, name: &str) -> Result<String, String> {
    let key = dir.join(name);
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .status()
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    assert!(made.success());
    std::fs::read_to_string(key.with_extension("pub")).map_err(|e| e.to_string())
}

/// `ironctl ssh -i KEY -c COMMAND root@vmi/NAME.NS` as the user of `kc`.
async fn ironctl_ssh(
    kc: &Path,
    key: &Path,
    vmi: &str,
    command: &str,
    home: &Path,
) -> (i32, String, String) {
    let mut args = strings(&[
        "--kubeconfig",
        &kc.display().to_string(),
        "ssh",
        "-i",
        &key.display().to_string(),
    ]);
    for o in NO_HOST_KEYS.chunks(2) {
        args.extend(strings(&["-t", &o.join(" ")]));
    }
    args.extend(strings(&["-c", command, &format!("root@vmi/{vmi}")]));
    run(&ironctl_bin(), &args, b"", home).await
}

#[tokio::test(flavor = "multi_thread")]
async fn config_drive_keys_reach_the_guest_and_a_new_key_only_at_its_next_start() {
    let bed = &bed().await;
    bed.with_namespace("cdrive", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "cara", "kubevirt.io:admin").await;
        let kc = bed
            .user_kubeconfig("cara", &["dev"])
            .map_err(|e| e.to_string())?;
        let home = tempfile::tempdir().map_err(|e| e.to_string())?;
        let first = keygen(home.path(), "first")?;
        let second = keygen(home.path(), "second")?;
        let secrets = Api::<Secret>::namespaced(admin.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "keys"}, "stringData": {"first": first},
        }))
        .map_err(|e| e.to_string())?;
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vmi = ssh_vmi("cd", "cloudInitConfigDrive", "configDrive")?;
        let vmis =
            kube::Api::<ironvirt_crds::VirtualMachineInstance>::namespaced(admin.clone(), &ns);
        let target = format!("cd.{ns}");
        let boot = |keys: &'static str| {
            let (admin, ns, node, vmi, h) =
                (admin.clone(), ns.clone(), node.clone(), vmi.clone(), &h);
            async move {
                place(&admin, &ns, vmi, &node).await;
                wait_phase(&admin, &ns, "cd", "Running", BOOT).await?;
                let mut con = h
                    .streams()
                    .websocket(&format!(
                        "/v1/namespaces/{ns}/virtualmachineinstances/cd/console"
                    ))
                    .await?;
                con.expect_from(0, "ironvirt-guest: config drive", BOOT)
                    .await?;
                con.expect_from(0, keys, BOOT).await?;
                con.expect_from(0, MARKER, BOOT).await
            }
        };
        boot("1 ssh authorized key(s)").await?;
        let (code, out, err) = eventually(
            Duration::from_secs(60),
            "ssh with the first key",
            || async {
                let r = ironctl_ssh(
                    &kc,
                    &home.path().join("first"),
                    &target,
                    "echo drive-$((40+6))",
                    home.path(),
                )
                .await;
                (r.0 == 0).then_some(r)
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        assert!(out.contains("drive-46"), "{code} {out} {err}");

        // A second key in the Secret: not in the running guest…
        let patch = json!({"stringData": {"second": second}});
        secrets
            .patch(
                "keys",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .map_err(|e| e.to_string())?;
        let (code, out, err) = ironctl_ssh(
            &kc,
            &home.path().join("second"),
            &target,
            "echo no",
            home.path(),
        )
        .await;
        assert_ne!(
            code, 0,
            "the second key got in before a restart: {out} {err}"
        );
        assert!(err.contains("Permission denied"), "{code} {out} {err}");

        // …until its next start.
        vmis.delete("cd", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        wait_gone(&admin, &ns, "cd", Duration::from_secs(60)).await?;
        boot("2 ssh authorized key(s)").await?;
        let (code, out, err) = eventually(
            Duration::from_secs(60),
            "ssh with the second key",
            || async {
                let r = ironctl_ssh(
                    &kc,
                    &home.path().join("second"),
                    &target,
                    "echo second-$((40+7))",
                    home.path(),
                )
                .await;
                (r.0 == 0).then_some(r)
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        assert!(out.contains("second-47"), "{code} {out} {err}");

        vmis.delete("cd", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        wait_gone(&admin, &ns, "cd", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_and_scp_reach_the_guest_with_the_key_from_access_credentials() {
    let bed = &bed().await;
    bed.with_namespace("ssh", |ns| async move {
        let admin = bed.admin();
        bind(&admin, &ns, "sam", "kubevirt.io:admin").await;
        let kc = bed
            .user_kubeconfig("sam", &["dev"])
            .map_err(|e| e.to_string())?;
        let home = tempfile::tempdir().map_err(|e| e.to_string())?;
        let key = home.path().join("id");
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@ironvirt", "-f"])
            .arg(&key)
            .status()
            .map_err(|e| format!("ssh-keygen: {e}"))?;
        assert!(made.success());
        let public =
            std::fs::read_to_string(key.with_extension("pub")).map_err(|e| e.to_string())?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "keys"}, "stringData": {"key1": public},
        }))
        .map_err(|e| e.to_string())?;
        Api::<Secret>::namespaced(admin.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vmi = ssh_vmi("box", "cloudInitNoCloud", "noCloud")?;
        place(&admin, &ns, vmi, &node).await;
        wait_phase(&admin, &ns, "box", "Running", BOOT).await?;
        let mut con = h
            .streams()
            .websocket(&format!(
                "/v1/namespaces/{ns}/virtualmachineinstances/box/console"
            ))
            .await?;
        con.expect_from(0, "1 ssh authorized key(s)", BOOT).await?;
        con.expect_from(0, MARKER, BOOT).await?;

        let kcs = kc.display().to_string();
        let key_s = key.display().to_string();
        let vctl = virtctl_bin();
        // virtctl ssh (v1.8 runs the system's ssh with `virtctl port-forward
        // --stdio` as its ProxyCommand), the namespace in the target.
        let mut args = strings(&["--kubeconfig", &kcs, "ssh", "-i", &key_s]);
        for o in NO_HOST_KEYS.chunks(2) {
            args.extend(strings(&["-t", &o.join(" ")]));
        }
        args.extend(strings(&[
            "-c",
            "echo virtctl-$((40+2)); uname -s",
            &format!("root@vmi/box/{ns}"),
        ]));
        let (code, out, err) = eventually(Duration::from_secs(60), "virtctl ssh", || async {
            let r = run(&vctl, &args, b"", home.path()).await;
            if r.0 != 0 {
                eprintln!("virtctl ssh: {} {}", r.1, r.2);
            }
            (r.0 == 0).then_some(r)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert!(
            out.contains("virtctl-42") && out.contains("Linux"),
            "{code} {out} {err}"
        );

        // ironctl ssh.
        let ictl = ironctl_bin();
        let (code, out, err) = ironctl_ssh(
            &kc,
            &key,
            &format!("box.{ns}"),
            "echo ironctl-$((40+4))",
            home.path(),
        )
        .await;
        assert!(
            out.contains("ironctl-44"),
            "ironctl ssh: {code} {out} {err}"
        );

        // Plain ssh with ironctl port-forward --stdio as its ProxyCommand.
        let proxy = format!(
            "ProxyCommand={} --kubeconfig {kcs} port-forward --stdio vmi/box.{ns} 22",
            ictl.display()
        );
        let mut args = strings(&["-i", &key_s, "-o", &proxy]);
        args.extend(strings(&NO_HOST_KEYS));
        args.extend(strings(&["root@box", "echo proxied-$((40+5))"]));
        let (code, out, err) = run(Path::new("ssh"), &args, b"", home.path()).await;
        assert!(
            out.contains("proxied-45"),
            "ssh with ProxyCommand: {code} {out} {err}"
        );

        // scp: 1 MiB up and down, with virtctl and with ironctl.
        let up = home.path().join("up.bin");
        let data: Vec<u8> = (0..1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&up, &data).map_err(|e| e.to_string())?;
        let want = sha256(&up);
        let down = home.path().join("down-virtctl.bin");
        for (from, to) in [
            (
                up.display().to_string(),
                "root@vmi/box:/tmp/v.bin".to_owned(),
            ),
            (
                "root@vmi/box:/tmp/v.bin".to_owned(),
                down.display().to_string(),
            ),
        ] {
            let mut args = strings(&["--kubeconfig", &kcs, "-n", &ns, "scp", "-i", &key_s]);
            for o in NO_HOST_KEYS.chunks(2) {
                args.extend(strings(&["-t", &o.join(" ")]));
            }
            args.extend([from, to]);
            let (code, out, err) = run(&vctl, &args, b"", home.path()).await;
            assert_eq!(code, 0, "virtctl scp {args:?}: {out} {err}");
        }
        assert_eq!(sha256(&down), want, "virtctl scp: the copy differs");
        let down = home.path().join("down-ironctl.bin");
        for (from, to) in [
            (
                up.display().to_string(),
                format!("root@vmi/box.{ns}:/tmp/i.bin"),
            ),
            (
                format!("root@vmi/box.{ns}:/tmp/i.bin"),
                down.display().to_string(),
            ),
        ] {
            let mut args = strings(&["--kubeconfig", &kcs, "scp", "-i", &key_s]);
            for o in NO_HOST_KEYS.chunks(2) {
                args.extend(strings(&["-t", &o.join(" ")]));
            }
            args.extend([from, to]);
            let (code, out, err) = run(&ictl, &args, b"", home.path()).await;
            assert_eq!(code, 0, "ironctl scp {args:?}: {out} {err}");
        }
        assert_eq!(sha256(&down), want, "ironctl scp: the copy differs");
        // Leave nothing behind: the VMI, its domain and network, the handler.
        kube::Api::<ironvirt_crds::VirtualMachineInstance>::namespaced(admin.clone(), &ns)
            .delete("box", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        wait_gone(&admin, &ns, "box", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}
