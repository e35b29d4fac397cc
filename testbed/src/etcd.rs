//! etcd as a real control plane runs it: TLS on 127.0.0.1 with client
//! certificates required on both its client and its peer port, verified
//! against etcd's own CA (not the cluster CA). Only kube-apiserver, with its
//! `apiserver-etcd-client` certificate, and the test bed's readiness probe
//! (the same certificate) talk to it.
//!
//! Without this any local process, or a guest through QEMU user networking
//! (10.0.2.2 is the host's 127.0.0.1), could read and write every object of the
//! cluster, Secrets included.

use std::path::Path;
use std::time::Duration;

use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::pki::{Pki, names};
use crate::process::Supervisor;

/// The process name of etcd in the supervisor.
pub const NAME: &str = "etcd";

/// How long one request to etcd may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd's client URL for `port`.
pub fn client_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

fn path_arg(flag: &str, p: &Path) -> String {
    format!("--{flag}={}", p.display())
}

/// The command line of etcd: client and peer URLs on 127.0.0.1 over TLS, each
/// requiring a client certificate of etcd's CA. Otherwise as envtest runs it.
pub fn args(layout: &Layout, client_port: u16, peer_port: u16) -> Vec<String> {
    let pki = Pki::new(layout.pki());
    let client = client_url(client_port);
    let peer = format!("https://127.0.0.1:{peer_port}");
    vec![
        "--name=ironvirt-testbed".into(),
        path_arg("data-dir", &layout.etcd_data()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        path_arg("cert-file", &pki.crt(names::ETCD_SERVER)),
        path_arg("key-file", &pki.key(names::ETCD_SERVER)),
        "--client-cert-auth=true".into(),
        path_arg("trusted-ca-file", &pki.crt(names::ETCD_CA)),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=ironvirt-testbed={peer}"),
        path_arg("peer-cert-file", &pki.crt(names::ETCD_PEER)),
        path_arg("peer-key-file", &pki.key(names::ETCD_PEER)),
        "--peer-client-cert-auth=true".into(),
        path_arg("peer-trusted-ca-file", &pki.crt(names::ETCD_CA)),
        "--unsafe-no-fsync=true".into(),
        "--quota-backend-bytes=4294967296".into(),
        "--log-level=warn".into(),
    ]
}

/// kube-apiserver's flags for reaching etcd at `port`: TLS verified against
/// etcd's CA, with its own client certificate.
pub fn apiserver_args(layout: &Layout, port: u16) -> Vec<String> {
    let pki = Pki::new(layout.pki());
    vec![
        format!("--etcd-servers={}", client_url(port)),
        path_arg("etcd-cafile", &pki.crt(names::ETCD_CA)),
        path_arg("etcd-certfile", &pki.crt(names::ETCD_APISERVER_CLIENT)),
        path_arg("etcd-keyfile", &pki.key(names::ETCD_APISERVER_CLIENT)),
    ]
}

/// Who a client presents itself as to an HTTPS server.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// No client certificate.
    Anonymous,
    /// The client certificate and key at these paths (PEM).
    Certificate { cert: &'a Path, key: &'a Path },
}

/// An HTTP client for `server` (https) that verifies the server's certificate
/// against the CA in `ca` (never skipped) and presents `identity`. It speaks
/// any HTTP API, not only Kubernetes': here, etcd's `/health` and JSON gateway.
pub fn https_client(server: &str, ca: &Path, identity: Identity<'_>) -> Result<kube::Client> {
    const NAME: &str = "ironvirt-testbed";
    let auth_info = match identity {
        Identity::Anonymous => AuthInfo::default(),
        Identity::Certificate { cert, key } => AuthInfo {
            client_certificate: Some(cert.to_string_lossy().into_owned()),
            client_key: Some(key.to_string_lossy().into_owned()),
            ..AuthInfo::default()
        },
    };
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: NAME.into(),
            cluster: Some(Cluster {
                server: Some(server.to_owned()),
                certificate_authority: Some(ca.to_string_lossy().into_owned()),
                ..Cluster::default()
            }),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: NAME.into(),
            auth_info: Some(auth_info),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: NAME.into(),
            context: Some(Context {
                cluster: NAME.into(),
                user: Some(NAME.into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some(NAME.into()),
        ..Kubeconfig::default()
    };
    let mut config = kube::Config::try_from(kubeconfig).map_err(|source| Error::HttpsClient {
        server: server.to_owned(),
        source,
    })?;
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    config.write_timeout = Some(REQUEST_TIMEOUT);
    // A probe reports what the server said; it does not wait out a 503.
    config.default_retry = false;
    Ok(kube::Client::try_from(config)?)
}

/// A client for etcd at `url` as kube-apiserver reaches it: etcd's CA and
/// kube-apiserver's etcd client certificate.
pub fn apiserver_client(pki: &Pki, url: &str) -> Result<kube::Client> {
    https_client(
        url,
        &pki.crt(names::ETCD_CA),
        Identity::Certificate {
            cert: &pki.crt(names::ETCD_APISERVER_CLIENT),
            key: &pki.key(names::ETCD_APISERVER_CLIENT),
        },
    )
}

/// GET /health: Ok(true) when etcd answers that it is healthy; an error when
/// the request fails (refused handshake, HTTP error status, timeout).
pub async fn health(client: &kube::Client) -> Result<bool> {
    let req = http::Request::get("/health").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let body: serde_json::Value = serde_json::from_str(&text).map_err(Error::Json)?;
    Ok(body.get("health").and_then(|h| h.as_str()) == Some("true"))
}

/// Sends `request` as is over a plain TCP connection to 127.0.0.1:`port` and
/// returns whatever comes back within five seconds. For tests that play an
/// attacker without TLS.
pub async fn plain_exchange(port: u16, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(request).await?;
    let mut buf = Vec::new();
    match tokio::time::timeout(REQUEST_TIMEOUT, s.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => Ok(buf),
        // A reset after some bytes still tells what the server said.
        Ok(Err(_)) if !buf.is_empty() => Ok(buf),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no end of the answer within 5 s",
        )),
    }
}

/// Starts etcd with `bin` on two free ports and waits until it is healthy over
/// TLS with kube-apiserver's client certificate. Returns its client port and
/// peer port.
pub async fn start(layout: &Layout, sup: &Supervisor, bin: &Path) -> Result<(u16, u16)> {
    let ports = crate::controlplane::free_ports(2)?;
    let (client_port, peer_port) = (ports[0], ports[1]);
    sup.spawn(NAME, bin, &args(layout, client_port, peer_port), &[])?;
    let client = apiserver_client(&Pki::new(layout.pki()), &client_url(client_port))?;
    crate::controlplane::wait_ready(sup, NAME, 60, || {
        let client = client.clone();
        async move {
            match health(&client).await {
                Ok(healthy) => healthy,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd not ready yet");
                    false
                }
            }
        }
    })
    .await?;
    Ok((client_port, peer_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_serves_tls_with_client_certificates_on_loopback_only() {
        let args = args(&Layout::new("/s"), 1, 2);
        let has = |s: &str| args.iter().any(|a| a == s);
        for a in args
            .iter()
            .filter(|a| a.contains("urls") || a.contains("cluster="))
        {
            assert!(a.contains("https://127.0.0.1:"), "{a}");
            assert!(!a.contains("http://"), "{a}");
        }
        assert!(has("--listen-client-urls=https://127.0.0.1:1"));
        assert!(has("--advertise-client-urls=https://127.0.0.1:1"));
        assert!(has("--listen-peer-urls=https://127.0.0.1:2"));
        assert!(has("--client-cert-auth=true"));
        assert!(has("--peer-client-cert-auth=true"));
        assert!(has("--cert-file=/s/pki/etcd-server.crt"));
        assert!(has("--key-file=/s/pki/etcd-server.key"));
        assert!(has("--trusted-ca-file=/s/pki/etcd-ca.crt"));
        assert!(has("--peer-cert-file=/s/pki/etcd-peer.crt"));
        assert!(has("--peer-key-file=/s/pki/etcd-peer.key"));
        assert!(has("--peer-trusted-ca-file=/s/pki/etcd-ca.crt"));
        // Never the cluster CA: its users are not etcd's.
        assert!(!args.iter().any(|a| a.ends_with("/pki/ca.crt")));
        assert!(!args.iter().any(|a| a.contains("auto-tls")));
    }

    #[test]
    fn apiserver_reaches_etcd_over_tls_with_its_certificate() {
        let args = apiserver_args(&Layout::new("/s"), 2379);
        assert_eq!(
            args,
            [
                "--etcd-servers=https://127.0.0.1:2379",
                "--etcd-cafile=/s/pki/etcd-ca.crt",
                "--etcd-certfile=/s/pki/apiserver-etcd-client.crt",
                "--etcd-keyfile=/s/pki/apiserver-etcd-client.key",
            ]
        );
    }

    #[test]
    fn https_client_builds_with_and_without_identity() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            apiserver_client(&pki, "https://127.0.0.1:1").unwrap();
            https_client(
                "https://127.0.0.1:1",
                &pki.crt(names::ETCD_CA),
                Identity::Anonymous,
            )
            .unwrap();
            // Nothing listens on port 1: the health check fails, it does not hang.
            let c = apiserver_client(&pki, "https://127.0.0.1:1").unwrap();
            assert!(health(&c).await.is_err());
        });
    }
}
