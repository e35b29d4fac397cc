//! ironvirt-api through kube-apiserver, as users reach it: discovery,
//! authentication and RBAC on consoles, VM start/stop/restart by run strategy,
//! VMI power operations and screenshots. The test bed runs ironvirt-api and
//! registers it (hack/lib.sh `start_api`); each test runs its own operator and
//! handler in its namespace.

use std::time::Duration;

use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_tests::api::{
    GUEST_MARKER as MARKER, api_port, bind, guest_vm, open_ws, printable, raw, wait_replaced,
};
use ironvirt_tests::handler::{Handler, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{Operator, eventually};
use kube::ResourceExt;
use kube::api::{Api, PostParams};

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(90);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";

fn vmi_path(ns: &str, name: &str, sub: &str) -> String {
    format!("{SUB}/namespaces/{ns}/virtualmachineinstances/{name}/{sub}")
}

fn vm_path(ns: &str, name: &str, op: &str) -> String {
    format!("{SUB}/namespaces/{ns}/virtualmachines/{name}/{op}")
}

#[tokio::test(flavor = "multi_thread")]
async fn discovery_lists_the_subresources() {
    let bed = &bed().await;
    let client = bed.admin();
    api_port(&client).await.expect("APIService Available");
    let (code, body) = raw(&client, "GET", SUB, "").await;
    assert_eq!(code, 200, "{body}");
    for r in [
        "virtualmachineinstances/console",
        "virtualmachineinstances/vnc",
        "virtualmachineinstances/vnc/screenshot",
        "virtualmachineinstances/pause",
        "virtualmachineinstances/unpause",
        "virtualmachineinstances/softreboot",
        "virtualmachineinstances/reset",
        "virtualmachines/start",
        "virtualmachines/stop",
        "virtualmachines/restart",
        "virtualmachines/migrate",
    ] {
        assert!(
            body.contains(&format!("\"{r}\"")),
            "{r} missing from {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_headers_without_the_front_proxy_certificate_get_401() {
    let bed = &bed().await;
    let port = api_port(&bed.admin()).await.expect("APIService Available");
    // A client that verifies ironvirt-api's certificate but presents none of
    // its own: the forged identity headers must not be believed.
    let ca = bed.layout().pki().join("ironvirt-ca.crt");
    let out = std::process::Command::new("curl")
        .arg("--cacert")
        .arg(&ca)
        .args([
            "-s",
            "-X",
            "PUT",
            "-H",
            "X-Remote-User: admin",
            "-H",
            "X-Remote-Group: system:masters",
            &format!("https://127.0.0.1:{port}{SUB}/namespaces/default/virtualmachines/x/start"),
        ])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(body.contains("\"code\":401"), "{body}");
    assert!(body.contains("Unauthorized"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn console_through_kube_apiserver_follows_rbac() {
    let bed = &bed().await;
    bed.with_namespace("api", |ns| async move {
        let admin = bed.admin();
        api_port(&admin).await?;
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        vms.create(&PostParams::default(), &guest_vm(&ns, "con", "Always"))
            .await
            .map_err(|e| e.to_string())?;
        wait_phase(&admin, &ns, "con", "Running", BOOT).await?;

        bind(&admin, &ns, "alice", "kubevirt.io:edit").await;
        let alice = bed
            .client_as("alice", &["dev"])
            .await
            .map_err(|e| e.to_string())?;
        let bob = bed
            .client_as("bob", &["dev"])
            .await
            .map_err(|e| e.to_string())?;

        // RBAC takes a moment to reach the authorizer's cache.
        let mut con = eventually(Duration::from_secs(30), "alice's console", || async {
            open_ws(&alice, &vmi_path(&ns, "con", "console")).await.ok()
        })
        .await
        .map_err(|e| e.to_string())?;
        con.expect_from(0, MARKER, BOOT).await?;
        con.send(b"\necho via-api-$((20+3))\n").await?;
        con.expect("via-api-23", Duration::from_secs(30)).await?;
        con.close().await;

        match open_ws(&bob, &vmi_path(&ns, "con", "console")).await {
            Err((403, body)) => assert!(body.contains("forbidden"), "{body}"),
            Err((code, body)) => return Err(format!("bob got {code}: {body}")),
            Ok(_) => return Err("bob opened a console without any binding".into()),
        }

        // A VMI that is not running gets a clear error.
        vms.create(&PostParams::default(), &guest_vm(&ns, "halted", "Halted"))
            .await
            .map_err(|e| e.to_string())?;
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "halted", "start"), "{}").await;
        assert_eq!(code, 202, "{body}");
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        eventually(Duration::from_secs(30), "VMI halted to exist", || async {
            vmis.get_opt("halted").await.ok().flatten()
        })
        .await
        .map_err(|e| e.to_string())?;
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "halted", "stop"), "{}").await;
        assert_eq!(code, 202, "{body}");
        wait_gone(&admin, &ns, "halted", Duration::from_secs(60)).await?;
        match open_ws(&admin, &vmi_path(&ns, "halted", "console")).await {
            Err((404, body)) => assert!(body.contains("not found"), "{body}"),
            other => return Err(format!("console of a stopped VM: {:?}", other.err())),
        }
        let _ = vms.delete("con", &Default::default()).await;
        wait_gone(&admin, &ns, "con", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_stop_restart_follow_the_run_strategy() {
    let bed = &bed().await;
    bed.with_namespace("api", |ns| async move {
        let admin = bed.admin();
        api_port(&admin).await?;
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);

        // Always: start conflicts; restart gives a new VMI; stop halts.
        vms.create(&PostParams::default(), &guest_vm(&ns, "always", "Always"))
            .await
            .map_err(|e| e.to_string())?;
        let first = wait_phase(&admin, &ns, "always", "Running", BOOT).await?;
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "always", "start"), "{}").await;
        assert_eq!(code, 409, "{body}");
        assert!(body.contains("already running"), "{body}");
        let (code, body) = raw(
            &admin,
            "PUT",
            &vm_path(&ns, "always", "restart"),
            r#"{"gracePeriodSeconds": 5}"#,
        )
        .await;
        assert_eq!(code, 202, "{body}");
        wait_replaced(&vmis, "always", first.uid(), BOOT).await?;
        let (code, body) = raw(
            &admin,
            "PUT",
            &vm_path(&ns, "always", "stop"),
            r#"{"gracePeriod": 0}"#,
        )
        .await;
        assert_eq!(code, 202, "{body}");
        eventually(Duration::from_secs(60), "always Stopped", || async {
            (printable(&vms, "always").await.as_deref() == Some("Stopped")).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let v = vms.get("always").await.map_err(|e| e.to_string())?;
        assert_eq!(
            v.spec.effective_run_strategy(),
            ironvirt_crds::RunStrategy::Halted
        );
        // Halted: stop conflicts, start runs it (runStrategy Always again).
        let (code, _) = raw(&admin, "PUT", &vm_path(&ns, "always", "stop"), "{}").await;
        assert_eq!(code, 409);
        let (code, _) = raw(&admin, "PUT", &vm_path(&ns, "always", "start"), "{}").await;
        assert_eq!(code, 202);
        wait_phase(&admin, &ns, "always", "Running", BOOT).await?;
        // dryRun changes nothing.
        let (code, _) = raw(
            &admin,
            "PUT",
            &vm_path(&ns, "always", "stop"),
            r#"{"dryRun": ["All"]}"#,
        )
        .await;
        assert_eq!(code, 202);
        let v = vms.get("always").await.map_err(|e| e.to_string())?;
        assert_eq!(
            v.spec.effective_run_strategy(),
            ironvirt_crds::RunStrategy::Always
        );

        // Manual: start and stop are requests the VM controller carries out.
        vms.create(&PostParams::default(), &guest_vm(&ns, "manual", "Manual"))
            .await
            .map_err(|e| e.to_string())?;
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "manual", "stop"), "{}").await;
        assert_eq!(code, 409, "{body}");
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "manual", "start"), "{}").await;
        assert_eq!(code, 202, "{body}");
        wait_phase(&admin, &ns, "manual", "Running", BOOT).await?;
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "manual", "stop"), "{}").await;
        assert_eq!(code, 202, "{body}");
        wait_gone(&admin, &ns, "manual", Duration::from_secs(60)).await?;
        let v = vms.get("manual").await.map_err(|e| e.to_string())?;
        assert!(
            v.status.and_then(|s| s.state_change_requests).is_none(),
            "requests not cleared"
        );

        // Errors are Status objects.
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "nope", "start"), "{}").await;
        assert_eq!(code, 404, "{body}");
        assert!(body.contains("\"kind\":\"Status\""), "{body}");
        let (code, body) = raw(&admin, "PUT", &vm_path(&ns, "manual", "start"), "{not json").await;
        assert_eq!(code, 400, "{body}");

        for n in ["always", "manual"] {
            let _ = vms.delete(n, &Default::default()).await;
        }
        wait_gone(&admin, &ns, "always", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_and_screenshot_through_the_api() {
    let bed = &bed().await;
    bed.with_namespace("api", |ns| async move {
        let admin = bed.admin();
        api_port(&admin).await?;
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        let _op = Operator::start(bed, &ns, "op", &[]);
        wait_serving(&h, Duration::from_secs(60)).await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), &ns);
        vms.create(&PostParams::default(), &guest_vm(&ns, "shot", "Always"))
            .await
            .map_err(|e| e.to_string())?;
        wait_phase(&admin, &ns, "shot", "Running", BOOT).await?;
        let mut con = open_ws(&admin, &vmi_path(&ns, "shot", "console"))
            .await
            .map_err(|e| format!("{e:?}"))?;
        con.expect_from(0, MARKER, BOOT).await?;
        con.close().await;

        // The guest prints its boot log and marker on tty0: the screen is not blank.
        let (code, png) = raw_bytes(&admin, &vmi_path(&ns, "shot", "vnc/screenshot")).await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&png));
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
            "screenshot nearly blank: {differing} pixels differ"
        );

        let (code, body) = raw(&admin, "PUT", &vmi_path(&ns, "shot", "pause"), "").await;
        assert_eq!(code, 200, "{body}");
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        eventually(Duration::from_secs(30), "VM Paused", || async {
            (printable(&vms, "shot").await.as_deref() == Some("Paused")).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let (code, body) = raw(&admin, "PUT", &vmi_path(&ns, "shot", "pause"), "").await;
        assert_eq!(code, 409, "{body}");
        let (code, body) = raw(&admin, "PUT", &vmi_path(&ns, "shot", "unpause"), "").await;
        assert_eq!(code, 200, "{body}");
        eventually(Duration::from_secs(30), "Paused condition gone", || async {
            let v = vmis.get("shot").await.ok()?;
            let paused = v.status?.conditions?.iter().any(|c| c.type_ == "Paused");
            (!paused).then_some(())
        })
        .await
        .map_err(|e| e.to_string())?;
        let _ = vms.delete("shot", &Default::default()).await;
        wait_gone(&admin, &ns, "shot", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}

async fn raw_bytes(client: &kube::Client, path: &str) -> (u16, Vec<u8>) {
    use http_body_util::BodyExt;
    let req = http::Request::get(path)
        .body(kube::client::Body::empty())
        .expect("request");
    match client.send(req).await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            (code, body)
        }
        Err(e) => (0, e.to_string().into_bytes()),
    }
}
