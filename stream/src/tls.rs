//! TLS material: certificates and keys from PEM files, server configs that
//! demand a client certificate, and the identity a certificate names.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;

/// Why TLS material could not be loaded or assembled.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn parse_err(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Parse {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file (a chain, or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut read(path)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(path, e))?;
    if certs.is_empty() {
        return Err(parse_err(path, "no certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut read(path)?.as_slice())
        .map_err(|e| parse_err(path, e))?
        .ok_or_else(|| parse_err(path, "no private key"))
}

/// A root store holding every certificate of a PEM bundle.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(path)? {
        roots.add(ca).map_err(|e| parse_err(path, e))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config serving `cert`/`key` whose client certificates are judged
/// by `verifier`. ALPN offers HTTP/1.1 only: websockets upgrade over it.
pub fn server_config(
    cert: &Path,
    key: &Path,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No TLS 1.3 session tickets: our clients (kube-apiserver's proxy,
    // ironvirt-api) open a new connection per stream and never resume, and a
    // ticket written after the handshake left the upgrade answer waiting for
    // the client's delayed ACK (Nagle): about 40 ms per hop on every console,
    // VNC and port-forward open. (TCP_NODELAY would avoid that too, but costs
    // a console's throughput through the three hops more than half: every
    // small UART chunk becomes its own segment.)
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A verifier that demands a client certificate signed by a CA of `client_ca`.
pub fn require_client_ca(client_ca: &Path) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = load_roots(client_ca)?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// A client config trusting the CAs of `ca` and presenting `cert`/`key`.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(load_roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_of_a_generated_certificate() -> Result<(), Box<dyn std::error::Error>> {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ironvirt-api");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        assert_eq!(common_name(cert.der()).as_deref(), Some("ironvirt-api"));
        assert_eq!(common_name(b"not a certificate"), None);
        Ok(())
    }

    #[test]
    fn missing_and_empty_files_name_the_path() -> Result<(), Box<dyn std::error::Error>> {
        let err = load_certs(Path::new("/nonexistent/ironvirt.pem")).err();
        assert!(
            matches!(err, Some(TlsError::Read { ref path, .. }) if path.contains("ironvirt.pem"))
        );
        let dir = std::env::temp_dir().join(format!("ironvirt-stream-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "")?;
        assert!(matches!(load_certs(&empty), Err(TlsError::Parse { .. })));
        assert!(matches!(load_key(&empty), Err(TlsError::Parse { .. })));
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
