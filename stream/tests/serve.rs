//! The accept loop against real TLS clients on 127.0.0.1: who is admitted,
//! what the router learns of them, and the limits.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use ironvirt_stream::serve::{Client, ServeOptions, serve};
use ironvirt_stream::tls;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Res<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-ca");
        let ca_key = rcgen::KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
        Ok(Pki { ca, ca_key, dir })
    }

    /// A leaf signed by the CA; returns its DER and key.
    fn leaf(
        &self,
        cn: &str,
        san: &str,
    ) -> Res<(
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
        String,
        String,
    )> {
        let mut params = rcgen::CertificateParams::new(vec![san.to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate()?;
        let ca_params = ca_params()?;
        let issuer = rcgen::Issuer::from_params(&ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), der, cert.pem(), key.serialize_pem()))
    }
}

fn ca_params() -> Res<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test-ca");
    Ok(params)
}

/// A server on 127.0.0.1 that admits only `allowed` and answers `/who` with
/// the admitted name.
async fn server(
    pki: &Pki,
    allowed: &'static str,
    options: ServeOptions,
) -> Res<std::net::SocketAddr> {
    let (_, _, cert_pem, key_pem) = pki.leaf("server", "ironvirt-handler")?;
    let cert = pki.dir.path().join("server.pem");
    let key = pki.dir.path().join("server-key.pem");
    std::fs::write(&cert, cert_pem)?;
    std::fs::write(&key, key_pem)?;
    let verifier = tls::require_client_ca(&pki.dir.path().join("ca.pem"))?;
    let config = tls::server_config(&cert, &key, verifier)?;
    let app = Router::new().route(
        "/who",
        get(|Extension(who): Extension<String>| async move { who }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, config, app, options, move |c: &Client| {
        (c.common_name.as_deref() == Some(allowed)).then(|| format!("hello {allowed}"))
    }));
    Ok(addr)
}

async fn connect(
    pki: &Pki,
    addr: std::net::SocketAddr,
    client_cn: Option<&str>,
) -> Res<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match client_cn {
        Some(cn) => {
            let (der, key, _, _) = pki.leaf(cn, "client")?;
            builder.with_client_auth_cert(vec![der], key)?
        }
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("ironvirt-handler")?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// GET /who over a fresh connection; the body, or the error.
async fn who(pki: &Pki, addr: std::net::SocketAddr, cn: Option<&str>) -> Res<String> {
    let mut s = connect(pki, addr, cn).await?;
    s.write_all(b"GET /who HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await??;
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.is_empty() {
        return Err("connection closed without an answer".into());
    }
    Ok(text)
}

#[tokio::test]
async fn the_admitted_client_is_served_and_named() -> Res<()> {
    let pki = Pki::new()?;
    let addr = server(&pki, "ironvirt-api", ServeOptions::default()).await?;
    let answer = who(&pki, addr, Some("ironvirt-api")).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello ironvirt-api"), "{answer}");
    Ok(())
}

#[tokio::test]
async fn another_name_or_no_certificate_is_refused() -> Res<()> {
    let pki = Pki::new()?;
    let addr = server(&pki, "ironvirt-api", ServeOptions::default()).await?;
    assert!(who(&pki, addr, Some("intruder")).await.is_err());
    assert!(who(&pki, addr, None).await.is_err());
    // The server still serves the right client afterwards.
    assert!(
        who(&pki, addr, Some("ironvirt-api"))
            .await?
            .starts_with("HTTP/1.1 200")
    );
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_are_closed() -> Res<()> {
    let pki = Pki::new()?;
    let options = ServeOptions {
        max_connections: Some(1),
        ..ServeOptions::default()
    };
    let addr = server(&pki, "ironvirt-api", options).await?;
    let held = connect(&pki, addr, Some("ironvirt-api")).await?;
    assert!(who(&pki, addr, Some("ironvirt-api")).await.is_err());
    drop(held);
    // The slot comes back once the held connection is gone.
    let mut last = Err("never tried".into());
    for _ in 0..50 {
        last = who(&pki, addr, Some("ironvirt-api")).await;
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(last?.starts_with("HTTP/1.1 200"));
    Ok(())
}

#[tokio::test]
async fn a_client_that_sends_no_headers_is_dropped() -> Res<()> {
    let pki = Pki::new()?;
    let options = ServeOptions {
        header_read_timeout: Some(Duration::from_millis(300)),
        ..ServeOptions::default()
    };
    let addr = server(&pki, "ironvirt-api", options).await?;
    let mut s = connect(&pki, addr, Some("ironvirt-api")).await?;
    s.write_all(b"GET /who HTTP/1.1\r\n").await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a silent client past the header timeout"
    );
    assert!(!String::from_utf8_lossy(&buf).contains("hello"));
    Ok(())
}

#[tokio::test]
async fn a_client_that_sends_nothing_at_all_is_dropped() -> Res<()> {
    // Nothing after the TLS handshake: hyper's HTTP/1.1 header timer has not
    // started yet (the version is still being sniffed), so the accept loop
    // must bound this wait itself.
    let pki = Pki::new()?;
    let options = ServeOptions {
        header_read_timeout: Some(Duration::from_millis(300)),
        ..ServeOptions::default()
    };
    let addr = server(&pki, "ironvirt-api", options).await?;
    let mut s = connect(&pki, addr, Some("ironvirt-api")).await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a silent client past the header timeout"
    );
    // A client that is quick enough is still served on the same settings.
    assert!(
        who(&pki, addr, Some("ironvirt-api"))
            .await?
            .starts_with("HTTP/1.1 200")
    );
    Ok(())
}

/// A server whose one route is a websocket echo.
async fn echo_server(pki: &Pki, options: ServeOptions) -> Res<std::net::SocketAddr> {
    use axum::extract::ws::WebSocketUpgrade;
    let (_, _, cert_pem, key_pem) = pki.leaf("server", "ironvirt-handler")?;
    let cert = pki.dir.path().join("server.pem");
    let key = pki.dir.path().join("server-key.pem");
    std::fs::write(&cert, cert_pem)?;
    std::fs::write(&key, key_pem)?;
    let verifier = tls::require_client_ca(&pki.dir.path().join("ca.pem"))?;
    let config = tls::server_config(&cert, &key, verifier)?;
    let app = Router::new().route(
        "/echo",
        get(|ws: WebSocketUpgrade| async move {
            ws.on_upgrade(|mut socket| async move {
                while let Some(Ok(m)) = socket.recv().await {
                    if socket.send(m).await.is_err() {
                        break;
                    }
                }
            })
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, config, app, options, |_: &Client| Some(())));
    Ok(addr)
}

#[tokio::test]
async fn an_upgraded_websocket_outlives_the_header_timeout() -> Res<()> {
    // The header-read timeout bounds a request's head, never a websocket
    // that has been upgraded: busy and idle stretches longer than the
    // timeout keep echoing.
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pki = Pki::new()?;
    let timeout = Duration::from_millis(300);
    let options = ServeOptions {
        header_read_timeout: Some(timeout),
        ..ServeOptions::default()
    };
    let addr = echo_server(&pki, options).await?;
    let tls = connect(&pki, addr, Some("ironvirt-api")).await?;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://ironvirt-handler/echo", tls).await?;
    let start = tokio::time::Instant::now();
    let mut round = 0u32;
    // Busy: round trips for five timeouts, then idle for three.
    while start.elapsed() < timeout * 5 {
        round += 1;
        let text = format!("round {round}");
        ws.send(Message::text(text.clone())).await?;
        let back = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .map_err(|_| format!("no echo of {text:?} after {:?}", start.elapsed()))?;
        assert_eq!(back.ok_or("closed")??, Message::text(text));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(timeout * 3).await;
    ws.send(Message::text("after idle")).await?;
    let back = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .map_err(|_| "no echo after an idle stretch")?;
    assert_eq!(back.ok_or("closed")??, Message::text("after idle"));
    Ok(())
}
