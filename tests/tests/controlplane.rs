//! The control-plane half of the test bed: a real kube-apiserver v1.36 with
//! RBAC, client-certificate users, API aggregation and a kube-controller-manager
//! that completes namespace deletion.

use std::process::Command;
use std::time::{Duration, Instant};

use ironvirt_tests::TestBed;
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};

async fn bed() -> TestBed {
    TestBed::shared()
        .await
        .expect("test bed (run through `make test`)")
}

fn kubectl(bed: &TestBed, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(&bed.info().kubectl)
        .arg("--kubeconfig")
        .arg(&bed.info().kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_sees_server_v1_36_and_readyz_ok() {
    let bed = &bed().await;
    let (ok, out, err) = kubectl(bed, &["version", "-o", "json"]);
    assert!(ok, "kubectl version failed: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let server = v["serverVersion"]["gitVersion"].as_str().unwrap();
    assert!(server.starts_with("v1.36."), "server version {server}");

    let (ok, out, err) = kubectl(bed, &["get", "--raw", "/readyz"]);
    assert!(ok, "readyz failed: {err}");
    assert_eq!(out.trim(), "ok");

    // The same through kube-rs.
    let info = bed.admin().apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
    assert_eq!(info.minor, "36");
}

#[tokio::test]
async fn rbac_is_real_for_certificate_users() {
    let bed = &bed().await;
    bed.with_namespace("rbac", |ns| async move {
        let alice = bed.client_as("alice", &["ironvirt-testers"]).await?;
        let pods: Api<Pod> = Api::namespaced(alice, &ns);
        match pods.list(&ListParams::default()).await {
            Err(kube::Error::Api(s)) if s.code == 403 => {
                assert_eq!(s.reason, "Forbidden");
                assert!(s.message.contains("alice"), "{}", s.message);
            }
            other => anyhow::bail!("alice listed pods without a role: {other:?}"),
        }
        let rb = RoleBinding {
            metadata: ObjectMeta {
                name: Some("alice-view".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: "view".into(),
            },
            subjects: Some(vec![Subject {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "User".into(),
                name: "alice".into(),
                namespace: None,
            }]),
        };
        Api::<RoleBinding>::namespaced(bed.admin(), &ns)
            .create(&PostParams::default(), &rb)
            .await?;
        // RBAC is served from an informer cache: allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match pods.list(&ListParams::default()).await {
                Ok(list) => {
                    assert!(list.items.is_empty());
                    break;
                }
                Err(kube::Error::Api(s)) if s.code == 403 && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => anyhow::bail!("alice still cannot list pods after the RoleBinding: {e}"),
            }
        }
        // `view` does not grant writes.
        let cms: Api<ConfigMap> =
            Api::namespaced(bed.client_as("alice", &["ironvirt-testers"]).await?, &ns);
        let err = cms
            .create(
                &PostParams::default(),
                &ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("nope".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await
            .expect_err("view must not create");
        assert!(
            matches!(err, kube::Error::Api(ref s) if s.code == 403),
            "{err}"
        );
        Ok::<(), anyhow::Error>(())
    })
    .await;
}

#[tokio::test]
async fn minted_certificates_carry_user_and_groups() {
    let bed = &bed().await;
    let bob = bed.client_as("bob", &["team-a", "team-b"]).await.unwrap();
    let review: Api<SelfSubjectReview> = Api::all(bob);
    let res = review
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap();
    let user = res.status.unwrap().user_info.unwrap();
    assert_eq!(user.username.as_deref(), Some("bob"));
    let groups = user.groups.unwrap_or_default();
    for g in ["team-a", "team-b", "system:authenticated"] {
        assert!(groups.iter().any(|x| x == g), "{g} missing from {groups:?}");
    }
}

#[tokio::test]
async fn api_aggregation_is_configured() {
    let bed = &bed().await;
    let cms: Api<ConfigMap> = Api::namespaced(bed.admin(), "kube-system");
    let cm = cms.get("extension-apiserver-authentication").await.unwrap();
    let data = cm.data.unwrap();
    let ca = &data["requestheader-client-ca-file"];
    assert!(ca.contains("BEGIN CERTIFICATE"));
    assert_ne!(
        ca.trim(),
        data["client-ca-file"].trim(),
        "the front-proxy CA must differ from the client CA"
    );
    assert_eq!(
        data["requestheader-allowed-names"],
        r#"["front-proxy-client"]"#
    );
    assert_eq!(
        data["requestheader-username-headers"],
        r#"["X-Remote-User"]"#
    );
    assert_eq!(data["requestheader-group-headers"], r#"["X-Remote-Group"]"#);
}

#[tokio::test]
async fn namespace_deletion_completes() {
    let bed = &bed().await;
    let ns = bed.namespace("nsdel").await.unwrap();
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        ..Default::default()
    };
    let pp = PostParams::default();
    Api::<ConfigMap>::namespaced(bed.admin(), &ns)
        .create(
            &pp,
            &ConfigMap {
                metadata: meta("c"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(bed.admin(), &ns)
        .create(
            &pp,
            &Secret {
                metadata: meta("s"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(bed.admin(), &ns)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta("sa"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let started = Instant::now();
    bed.delete_namespace(&ns, Duration::from_secs(90))
        .await
        .unwrap();
    let nss: Api<Namespace> = Api::all(bed.admin());
    assert!(nss.get_opt(&ns).await.unwrap().is_none());
    eprintln!("namespace {ns} deleted in {:?}", started.elapsed());
}

#[tokio::test]
async fn controller_manager_creates_default_service_accounts() {
    let bed = &bed().await;
    bed.with_namespace("sa", |ns| async move {
        let sas: Api<ServiceAccount> = Api::namespaced(bed.admin(), &ns);
        let deadline = Instant::now() + Duration::from_secs(30);
        while sas.get_opt("default").await?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no default ServiceAccount in {ns}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    })
    .await;
}
