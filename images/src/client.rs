//! One OCI client per endpoint, and the reference an endpoint is asked for.

use std::path::PathBuf;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};

use crate::{Endpoint, ImageRef};

/// An endpoint's CA file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct CaError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The client configuration for one endpoint: HTTP or HTTPS, with its CA;
/// image indexes resolve to linux/amd64.
pub fn config_for(endpoint: &Endpoint) -> Result<ClientConfig, CaError> {
    // The workspace's TLS is rustls on ring; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = ClientConfig {
        protocol: if endpoint.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
        ..ClientConfig::default()
    };
    if let Some(ca) = &endpoint.ca {
        let data = std::fs::read(ca).map_err(|source| CaError {
            path: ca.clone(),
            source,
        })?;
        config.extra_root_certificates.push(Certificate {
            encoding: CertificateEncoding::Pem,
            data,
        });
    }
    Ok(config)
}

/// A client for one endpoint ([`config_for`]).
pub fn client_for(endpoint: &Endpoint) -> Result<Client, CaError> {
    config_for(endpoint).map(Client::new)
}

/// The reference to ask `endpoint` for `image`: by digest when pinned, else
/// by tag (`latest` when none); a mirror is asked under its own host.
pub fn reference_for(image: &ImageRef, endpoint: &Endpoint) -> Reference {
    let mut reference = match &image.digest {
        Some(d) => {
            Reference::with_digest(image.registry.clone(), image.repository.clone(), d.clone())
        }
        None => Reference::with_tag(
            image.registry.clone(),
            image.repository.clone(),
            image.tag_or_latest().to_owned(),
        ),
    };
    if endpoint.host != image.registry {
        reference.set_mirror_registry(endpoint.host.clone());
    }
    reference
}

/// `e` and its causes ("error sending request …: connection refused"),
/// each cause once.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn endpoint(host: &str) -> Endpoint {
        Endpoint {
            host: host.into(),
            insecure: true,
            ca: None,
        }
    }

    #[test]
    fn mirrors_are_asked_under_their_own_host() {
        let image = ImageRef::parse("quay.io/kubevirt/cirros:v1").unwrap();
        let own = reference_for(&image, &endpoint("quay.io"));
        assert_eq!(own.resolve_registry(), "quay.io");
        assert_eq!(own.tag(), Some("v1"));
        let mirrored = reference_for(&image, &endpoint("127.0.0.1:5000"));
        assert_eq!(mirrored.resolve_registry(), "127.0.0.1:5000");
        assert_eq!(mirrored.repository(), "kubevirt/cirros");
        let pinned = ImageRef::parse(&format!("quay.io/a/b@sha256:{}", "ab".repeat(32))).unwrap();
        let r = reference_for(&pinned, &endpoint("quay.io"));
        assert_eq!(r.digest(), pinned.digest.as_deref());
    }

    #[test]
    fn a_missing_ca_names_the_file() {
        let e = client_for(&Endpoint {
            host: "r.example".into(),
            insecure: false,
            ca: Some("/nonexistent/ca.pem".into()),
        })
        .err()
        .unwrap();
        assert!(e.to_string().starts_with("/nonexistent/ca.pem: "), "{e}");
    }
}
