//! The control-plane half of the test bed: a real kube-apiserver v1.36 with
//! RBAC, client-certificate users, API aggregation and a kube-controller-manager
//! that completes namespace deletion, on an etcd that only its client
//! certificate opens.

use std::process::Command;
use std::time::{Duration, Instant};

use ironvirt_testbed::etcd::{self, Identity};
use ironvirt_testbed::pki::{Pki, names};
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

/// A local attacker (or a guest, through QEMU user networking) gets nothing
/// from etcd: plain HTTP gets no answer, TLS without a client certificate or
/// with a Kubernetes user's certificate (cluster CA, system:masters) is refused
/// in the handshake. kube-apiserver, which holds etcd's client certificate,
/// keeps working.
#[tokio::test]
async fn etcd_refuses_clients_without_its_certificate() {
    let bed = &bed().await;
    let info = bed.info();
    let url = &info.etcd_url;
    let port: u16 = url
        .strip_prefix("https://127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("etcd is not on https://127.0.0.1:PORT: {url}"));
    let pki = Pki::new(&info.pki_dir);

    let plain = etcd::plain_exchange(
        port,
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = plain
        .as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    eprintln!(
        "plain HTTP GET /health: {:?}",
        plain.as_ref().map(|_| &text)
    );
    assert!(
        !text.contains("health") && !text.starts_with("HTTP/1.1 2"),
        "plain HTTP was answered: {text}"
    );

    let attackers = [
        (
            "no client certificate",
            Identity::Anonymous,
            "CertificateRequired",
        ),
        (
            "the admin certificate of the cluster CA",
            Identity::Certificate {
                cert: &pki.crt(names::ADMIN),
                key: &pki.key(names::ADMIN),
            },
            "UnknownCA",
        ),
    ];
    for (who, identity, alert) in attackers {
        let client = etcd::https_client(url, &pki.crt(names::ETCD_CA), identity).unwrap();
        let health = etcd::health(&client).await;
        eprintln!("TLS with {who}: GET /health -> {health:?}");
        assert!(
            matches!(&health, Err(e) if format!("{e:?}").contains(alert)),
            "TLS with {who} was not refused with {alert}: {health:?}"
        );
    }

    // The refusals are etcd's doing: its certificate holder is served.
    let good = etcd::apiserver_client(&pki, url).unwrap();
    assert!(etcd::health(&good).await.unwrap());

    // kube-apiserver reaches etcd with its certificate: writes and reads work.
    bed.with_namespace("etcdtls", |ns| async move {
        let cms: Api<ConfigMap> = Api::namespaced(bed.admin(), &ns);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("stored".into()),
                ..Default::default()
            },
            data: Some([("k".to_owned(), "v".to_owned())].into()),
            ..Default::default()
        };
        cms.create(&PostParams::default(), &cm).await?;
        let back = cms.get("stored").await?;
        anyhow::ensure!(
            back.data.and_then(|d| d.get("k").cloned()).as_deref() == Some("v"),
            "the ConfigMap did not come back from etcd"
        );
        Ok::<(), anyhow::Error>(())
    })
    .await;
}
