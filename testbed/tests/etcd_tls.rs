//! etcd, started as the test bed starts it, against an attacker on the same
//! machine: plain HTTP gets nothing, TLS without a client certificate or with
//! a certificate of the cluster CA (any Kubernetes user) is refused, on the
//! client port and on the peer port. Only etcd's own client certificate works.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use ironvirt_testbed::Layout;
use ironvirt_testbed::etcd::{self, Identity};
use ironvirt_testbed::pki::{LeafSpec, Pki, names};
use ironvirt_testbed::process::Supervisor;

/// The cached etcd binary directory, as `make test` exports it.
fn etcd_bin() -> PathBuf {
    std::env::var_os("IRONVIRT_ETCD_BIN")
        .map(PathBuf::from)
        .expect("IRONVIRT_ETCD_BIN is not set; run through `make test`")
        .join("etcd")
}

/// Stops etcd when the test ends, whether it passed or panicked.
struct Stop(Supervisor);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Err(e) = self.0.stop_all(&[etcd::NAME], Duration::from_secs(10)) {
            eprintln!("stopping etcd: {e}");
        }
    }
}

/// Whether `res` failed with the TLS alert `alert` (etcd refused the handshake).
fn refused<T, E: std::fmt::Debug>(res: &Result<T, E>, alert: &str) -> bool {
    match res {
        Ok(_) => false,
        Err(e) => format!("{e:?}").contains(alert),
    }
}

/// A `/v3/kv/range` request over the JSON gateway for every key under
/// `/registry` (base64 of `/registry` and `/registrz`).
const RANGE_BODY: &str = r#"{"key":"L3JlZ2lzdHJ5","range_end":"L3JlZ2lzdHJ6"}"#;

#[tokio::test]
async fn etcd_refuses_everyone_without_its_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(dir.path().join("state"));
    for d in [layout.logs(), layout.pids()] {
        std::fs::create_dir_all(d).unwrap();
    }
    let pki = Pki::new(layout.pki());
    pki.ensure().unwrap();
    let sup = Supervisor::new(layout.pids(), layout.logs());
    let _stop = Stop(sup.clone());
    // Ready means: /health answered over verified TLS with the client certificate.
    let (port, peer_port) = etcd::start(&layout, &sup, &etcd_bin()).await.unwrap();
    let url = etcd::client_url(port);

    // The legitimate client (kube-apiserver's certificate) reads and writes.
    let good = etcd::apiserver_client(&pki, &url).unwrap();
    assert!(etcd::health(&good).await.unwrap());
    let put = http::Request::post("/v3/kv/put")
        .body(br#"{"key":"L3JlZ2lzdHJ5L3NlY3JldA==","value":"czNjcjN0"}"#.to_vec())
        .unwrap();
    good.request_text(put).await.unwrap();
    let range = || {
        http::Request::post("/v3/kv/range")
            .body(RANGE_BODY.as_bytes().to_vec())
            .unwrap()
    };
    let listed = good.request_text(range()).await.unwrap();
    assert!(listed.contains("czNjcjN0"), "{listed}");

    // 1. Plain HTTP, on the client and the peer port: no data, no health.
    for p in [port, peer_port] {
        for req in [
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".to_owned(),
            format!(
                "POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{RANGE_BODY}",
                RANGE_BODY.len()
            ),
        ] {
            let answer = etcd::plain_exchange(p, req.as_bytes()).await;
            let text = answer
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            eprintln!(
                "plain HTTP to port {p}: {:?}",
                answer.as_ref().map(|_| &text)
            );
            assert!(
                !text.contains("\"health\"") && !text.contains("czNjcjN0") && !text.contains("kvs"),
                "plain HTTP got data from port {p}: {text}"
            );
            assert!(
                !(text.starts_with("HTTP/1.1 2") || text.starts_with("HTTP/1.0 2")),
                "plain HTTP got a success from port {p}: {text}"
            );
        }
    }

    // 2. TLS (etcd's certificate verified) without a client certificate, and
    // 3. with a certificate of the cluster CA (admin, system:masters).
    let cluster_admin = pki
        .cluster_ca()
        .unwrap()
        .issue(&LeafSpec::client("admin", &["system:masters"]))
        .unwrap();
    let (admin_crt, admin_key) = cluster_admin.write(dir.path(), "cluster-admin").unwrap();
    // Each is refused in the TLS handshake with this alert from etcd.
    let attackers = [
        (
            "no client certificate",
            Identity::Anonymous,
            "CertificateRequired",
        ),
        (
            "a cluster-CA certificate",
            Identity::Certificate {
                cert: &admin_crt,
                key: &admin_key,
            },
            "UnknownCA",
        ),
    ];
    let get = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
    // The peer port answers GET /version to a peer's certificate, so a refusal
    // there is the missing certificate's doing, not an unknown path.
    let peer_url = format!("https://127.0.0.1:{peer_port}");
    let peer = etcd::https_client(
        &peer_url,
        &pki.crt(names::ETCD_CA),
        Identity::Certificate {
            cert: &pki.crt(names::ETCD_PEER),
            key: &pki.key(names::ETCD_PEER),
        },
    )
    .unwrap();
    let version = peer.request_text(get("/version")).await.unwrap();
    assert!(version.contains("etcdserver"), "{version}");
    for (who, identity, alert) in attackers {
        let c = etcd::https_client(&url, &pki.crt(names::ETCD_CA), identity).unwrap();
        let health = etcd::health(&c).await;
        eprintln!("TLS with {who} to the client port: /health -> {health:?}");
        assert!(refused(&health, alert), "{who} got /health: {health:?}");
        let listed = c.request_text(range()).await;
        eprintln!("TLS with {who} to the client port: /v3/kv/range -> {listed:?}");
        assert!(refused(&listed, alert), "{who} listed keys: {listed:?}");

        let c = etcd::https_client(&peer_url, &pki.crt(names::ETCD_CA), identity).unwrap();
        let version = c.request_text(get("/version")).await;
        eprintln!("TLS with {who} to the peer port: /version -> {version:?}");
        assert!(
            refused(&version, alert),
            "{who} got the peer port's /version: {version:?}"
        );
    }

    // The refusals were not a broken etcd: the certificate holder still gets in.
    assert!(etcd::health(&good).await.unwrap());
}
