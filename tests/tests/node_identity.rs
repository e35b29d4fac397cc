//! One identity per node (issue 14, acceptance 6), on the real bed with two
//! handlers, A and B, each with its own serving certificate and its own
//! kube-apiserver user (`tests/src/handler.rs`, `testbed/src/handlers.rs`):
//! - handler A's certificate is refused when ironvirt-api dials node B;
//! - handler A's identity gets 403 updating node B's Lease;
//! - handler A's identity gets 403 reading a Secret that no VMI on node A
//!   references;
//!
//! with the positive controls: A renews its own Lease, A gets the Secret its
//! own VMI references (and that VMI runs, so the handler itself fetched it
//! that way), and ironvirt-api reaches B while B's Lease is B's.

use std::time::{Duration, Instant};

use ironvirt_crds::wire::{HANDLER_LEASE_NAMESPACE, STREAM_URL_ANNOTATION, handler_lease_name};
use ironvirt_testbed::TestBed;
use ironvirt_tests::api::raw;
use ironvirt_tests::handler::{Handler, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const TEST_DRIVER: &str = "test:///default";
const IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";

/// A test-driver guest, with a cloud-init volume from Secret `secret` if any.
fn vmi(name: &str, secret: Option<&str>) -> serde_json::Value {
    let mut disks = vec![json!({"name": "root", "disk": {"bus": "virtio", "readonly": true}})];
    let mut volumes = vec![json!({"name": "root", "hostDisk": {"path": IMAGE, "type": "Disk"}})];
    if let Some(s) = secret {
        disks.push(json!({"name": "ci", "disk": {"bus": "virtio"}}));
        volumes.push(json!({"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": s}}}));
    }
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": disks}},
            "volumes": volumes,
        },
    })
}

/// The kube client of a handler's own identity.
async fn client_of(h: &Handler) -> Client {
    ironvirt_testbed::controlplane::client_from_kubeconfig(&h.identity.kubeconfig)
        .await
        .expect("the handler's kubeconfig")
}

/// Two handlers on libvirt's test driver, serving, with their Leases written.
async fn two_nodes(bed: &TestBed, ns: &str) -> (Handler, Handler) {
    let a = Handler::start(bed, ns, &format!("{ns}-a"), TEST_DRIVER);
    let b = Handler::start(bed, ns, &format!("{ns}-b"), TEST_DRIVER);
    wait_serving(&a, Duration::from_secs(60)).await;
    wait_serving(&b, Duration::from_secs(60)).await;
    let leases: Api<Lease> = Api::namespaced(bed.admin(), HANDLER_LEASE_NAMESPACE);
    for h in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while leases
            .get_opt(&handler_lease_name(&h.node))
            .await
            .ok()
            .flatten()
            .is_none()
        {
            assert!(
                Instant::now() < deadline,
                "handler {} wrote no Lease; log:\n{}",
                h.node,
                h.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    (a, b)
}

fn sub(ns: &str, vmi: &str, rest: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/{rest}"
    )
}

fn stream_url(h: &Handler) -> String {
    format!("https://127.0.0.1:{}", h.port)
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_a_certificate_is_refused_when_ironvirt_api_dials_node_b() {
    let bed = &bed().await;
    bed.with_namespace("nid-tls", |ns| async move {
        let admin = bed.admin();
        let (a, mut b) = two_nodes(bed, &ns).await;
        place(&admin, &ns, vmi("vb", None), &b.node).await;
        wait_phase(&admin, &ns, "vb", "Running", Duration::from_secs(60)).await?;

        // Control: while B's Lease is B's, ironvirt-api reaches B.
        let (code, body) = raw(&admin, "PUT", &sub(&ns, "vb", "pause"), "").await;
        assert_eq!(code, 200, "pause through B: {body}");
        let (code, body) = raw(&admin, "PUT", &sub(&ns, "vb", "unpause"), "").await;
        assert_eq!(code, 200, "unpause through B: {body}");

        // B stops (it would renew its Lease), and B's Lease is pointed at A.
        b.kill();
        let leases: Api<Lease> = Api::namespaced(admin.clone(), HANDLER_LEASE_NAMESPACE);
        let patch = json!({"metadata": {"annotations": {STREAM_URL_ANNOTATION: stream_url(&a)}}});
        leases
            .patch(
                &handler_lease_name(&b.node),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| e.to_string())?;

        // Pause and console of the VMI on B now fail, with a message that
        // says why, instead of reaching A. (A client that does not retry:
        // kube's default one would try a 503 again and again.)
        let admin =
            ironvirt_tests::api::client_without_retries(bed, "nid-admin", &["system:masters"])
                .await?;
        let (code, body) = raw(&admin, "PUT", &sub(&ns, "vb", "pause"), "").await;
        assert_eq!(code, 503, "pause with B's Lease pointing at A: {body}");
        let want = format!("is not the handler of node {}", b.node);
        assert!(body.contains(&want), "{body}");
        assert!(
            body.contains(&format!("{}.ironvirt-handler", b.node)),
            "{body}"
        );
        match ironvirt_tests::api::open_ws(&admin, &sub(&ns, "vb", "console")).await {
            Ok(_) => panic!("a console to node B's VMI reached A"),
            Err((code, body)) => {
                assert_eq!(code, 503, "console: {body}");
                assert!(body.contains(&want), "{body}");
            }
        }
        // A was never asked to pause anything.
        assert!(
            !a.log_text().contains("vb"),
            "handler A saw node B's VMI:\n{}",
            a.log_text()
        );
        // Back to B, so the VMI can go.
        b.restart();
        wait_serving(&b, Duration::from_secs(60)).await;
        let vmis: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        let _ = vmis.delete("vb", &Default::default()).await;
        wait_gone(&admin, &ns, "vb", Duration::from_secs(60)).await?;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_a_gets_403_updating_node_b_lease() {
    let bed = &bed().await;
    bed.with_namespace("nid-lease", |ns| async move {
        let (a, b) = two_nodes(bed, &ns).await;
        let as_a = client_of(&a).await;
        let leases: Api<Lease> = Api::namespaced(as_a.clone(), HANDLER_LEASE_NAMESPACE);

        // Control: A updates its own Lease.
        let mut own = leases
            .get(&handler_lease_name(&a.node))
            .await
            .map_err(|e| format!("A reads its own Lease: {e}"))?;
        own.spec
            .get_or_insert_with(Default::default)
            .lease_duration_seconds = Some(40);
        leases
            .replace(&handler_lease_name(&a.node), &PostParams::default(), &own)
            .await
            .map_err(|e| format!("A updates its own Lease: {e}"))?;

        // A moves B's stream URL to itself: 403 from the lease policy. The
        // policy is installed with the first handler; kube-apiserver may
        // take a moment to load it.
        let b_lease = handler_lease_name(&b.node);
        let deadline = Instant::now() + Duration::from_secs(30);
        let refusal = loop {
            let mut theirs = leases.get(&b_lease).await.map_err(|e| e.to_string())?;
            theirs
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(STREAM_URL_ANNOTATION.to_owned(), stream_url(&a));
            match leases
                .replace(&b_lease, &PostParams::default(), &theirs)
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 403 => break e,
                other => {
                    assert!(
                        Instant::now() < deadline,
                        "A updating B's Lease was not refused: {other:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        assert!(
            refusal
                .message
                .contains(&format!("may write only Lease ironvirt-handler-{}", a.node)),
            "{refusal:?}"
        );
        // Server-side apply (what the handler itself sends) is refused too,
        // and so is creating a Lease for a node that is not A's.
        let apply = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": b_lease, "annotations": {STREAM_URL_ANNOTATION: stream_url(&a)}},
        });
        let err = leases
            .patch(
                &b_lease,
                &PatchParams::apply("attacker").force(),
                &Patch::Apply(&apply),
            )
            .await
            .expect_err("A applies B's Lease");
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 403),
            "{err:?}"
        );
        let other = handler_lease_name(&format!("{ns}-c"));
        let mut fresh = Lease::default();
        fresh.metadata.name = Some(other.clone());
        let err = leases
            .create(&PostParams::default(), &fresh)
            .await
            .expect_err("A creates another node's Lease");
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 403),
            "{err:?}"
        );
        // Nor may it delete B's (RBAC: no delete).
        let err = leases
            .delete(&b_lease, &Default::default())
            .await
            .expect_err("A deletes B's Lease");
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 403),
            "{err:?}"
        );

        // B's Lease still points at B.
        let admin_leases: Api<Lease> = Api::namespaced(bed.admin(), HANDLER_LEASE_NAMESPACE);
        let l = admin_leases
            .get(&b_lease)
            .await
            .map_err(|e| e.to_string())?;
        let url = l
            .metadata
            .annotations
            .and_then(|a| a.get(STREAM_URL_ANNOTATION).cloned());
        assert_eq!(url, Some(stream_url(&b)));
        let _ = admin_leases.delete(&other, &Default::default()).await;
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn handler_a_gets_403_reading_a_secret_no_vmi_on_node_a_references() {
    let bed = &bed().await;
    bed.with_namespace("nid-secret", |ns| async move {
        let admin = bed.admin();
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
        for name in ["a-userdata", "b-userdata", "unreferenced"] {
            let s: Secret = serde_json::from_value(json!({
                "metadata": {"name": name},
                "stringData": {"userdata": format!("#cloud-config\n# {name}\n")},
            }))
            .map_err(|e| e.to_string())?;
            secrets
                .create(&PostParams::default(), &s)
                .await
                .map_err(|e| e.to_string())?;
        }
        let (a, b) = two_nodes(bed, &ns).await;
        place(&admin, &ns, vmi("va", Some("a-userdata")), &a.node).await;
        place(&admin, &ns, vmi("vb", Some("b-userdata")), &b.node).await;
        // Control: A's VMI runs, so handler A fetched its cloud-init Secret
        // through ironvirt-api (it has no Secret read of its own).
        wait_phase(&admin, &ns, "va", "Running", Duration::from_secs(60)).await?;
        wait_phase(&admin, &ns, "vb", "Running", Duration::from_secs(60)).await?;

        let as_a = client_of(&a).await;
        let as_b = client_of(&b).await;
        // Control: A gets the Secret its own VMI references, B its own.
        let (code, body) = raw(&as_a, "GET", &sub(&ns, "va", "secrets/a-userdata"), "").await;
        assert_eq!(code, 200, "{body}");
        let got: Secret = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let data = got.data.unwrap_or_default();
        assert!(
            data.get("userdata")
                .is_some_and(|v| String::from_utf8_lossy(&v.0).contains("a-userdata")),
            "{body}"
        );
        let (code, body) = raw(&as_b, "GET", &sub(&ns, "vb", "secrets/b-userdata"), "").await;
        assert_eq!(code, 200, "{body}");

        // No Secret read at all, not even of a referenced one.
        let direct: Api<Secret> = Api::namespaced(as_a.clone(), &ns);
        for name in ["a-userdata", "b-userdata", "unreferenced"] {
            let err = direct.get(name).await.expect_err("a direct Secret read");
            assert!(
                matches!(err, kube::Error::Api(ref e) if e.code == 403),
                "{name}: {err:?}"
            );
        }
        let system: Api<Secret> = Api::namespaced(as_a.clone(), "ironvirt-system");
        let err = system
            .list(&Default::default())
            .await
            .expect_err("ironvirt-system");
        assert!(
            matches!(err, kube::Error::Api(ref e) if e.code == 403),
            "{err:?}"
        );

        // Through ironvirt-api: node B's VMI's Secret, a Secret no VMI
        // references, another VMI's Secret by A's VMI: all 403.
        for (vmi, secret, why) in [
            ("vb", "b-userdata", "on"),
            ("va", "unreferenced", "does not reference"),
            ("va", "b-userdata", "does not reference"),
        ] {
            let (code, body) = raw(
                &as_a,
                "GET",
                &sub(&ns, vmi, &format!("secrets/{secret}")),
                "",
            )
            .await;
            assert_eq!(code, 403, "{vmi}/{secret}: {body}");
            assert!(body.contains(why), "{vmi}/{secret}: {body}");
        }
        // Any other user, even one allowed the subresource, is no handler.
        let (code, body) = raw(&admin, "GET", &sub(&ns, "va", "secrets/a-userdata"), "").await;
        assert_eq!(code, 403, "admin is not a node's handler: {body}");

        // Handler A is not privileged for the webhooks: it may not change
        // its VMI's spec.
        let vmis: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(as_a, &ns);
        let err = vmis
            .patch(
                "va",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"terminationGracePeriodSeconds": 1}})),
            )
            .await
            .expect_err("handler A changes a VMI spec");
        assert!(
            err.to_string().contains("immutable"),
            "handler A changed a spec: {err:?}"
        );
        let vmis: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(admin.clone(), &ns);
        for v in ["va", "vb"] {
            let _ = vmis.delete(v, &Default::default()).await;
        }
        for v in ["va", "vb"] {
            wait_gone(&admin, &ns, v, Duration::from_secs(60)).await?;
        }
        drop((a, b));
        Ok::<(), String>(())
    })
    .await;
}
