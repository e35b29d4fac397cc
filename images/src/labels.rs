//! The labels of an image's config (`config.Labels` in the config blob, what
//! `LABEL` in a Containerfile sets), read from the registry without pulling
//! any layer.

use std::collections::BTreeMap;
use std::time::Duration;

use oci_client::Client;
use oci_client::secrets::RegistryAuth;

use crate::client::{CaError, config_for, reference_for, with_causes};
use crate::{ImageRef, Registries};

/// How long one endpoint may take to connect, and to send each read.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading one endpoint may take in all (a registry that trickles
/// bytes stays within `TIMEOUT` per read forever otherwise).
const ENDPOINT_DEADLINE: Duration = Duration::from_secs(30);

/// Why an image's config labels could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    /// No endpoint served the image's manifest and config: each endpoint's
    /// answer, in the order they were tried.
    #[error("reading {image}: {reason}")]
    Unreachable { image: String, reason: String },
    /// The registry served a config that is not an image config.
    #[error("the config of {image} is not an image config: {reason}")]
    BadConfig { image: String, reason: String },
    /// The registry is not in the registry configuration: labels are read
    /// only from registries an administrator named there, never from any
    /// host a VM's image names (which would let a tenant make the reader
    /// connect anywhere its network reaches).
    #[error(
        "registry {registry} is not in the registries configuration: image labels are read only from the registries it names"
    )]
    NotConfigured { registry: String },
    /// An endpoint's CA file could not be read.
    #[error("the CA of {host}: {source}")]
    Ca {
        host: String,
        #[source]
        source: CaError,
    },
}

/// The labels of `image`'s config, asked of its endpoints in order (the
/// mirrors `registries` names, then the registry itself); `auth` goes only
/// to the image's own registry, never to a mirror. An image without labels
/// gives an empty map. Only registries `registries` names are asked
/// ([`LabelsError::NotConfigured`]), each endpoint for at most
/// `ENDPOINT_DEADLINE`.
pub async fn config_labels(
    registries: &Registries,
    image: &ImageRef,
    auth: &RegistryAuth,
) -> Result<BTreeMap<String, String>, LabelsError> {
    if !registries.names(&image.registry) {
        return Err(LabelsError::NotConfigured {
            registry: image.registry.clone(),
        });
    }
    let mut answers = Vec::new();
    for endpoint in registries.endpoints(&image.registry) {
        let anonymous = RegistryAuth::Anonymous;
        let auth = if endpoint.host == image.registry {
            auth
        } else {
            &anonymous
        };
        let mut config = config_for(&endpoint).map_err(|source| LabelsError::Ca {
            host: endpoint.host.clone(),
            source,
        })?;
        config.connect_timeout = Some(TIMEOUT);
        config.read_timeout = Some(TIMEOUT);
        let client = Client::new(config);
        let reference = reference_for(image, &endpoint);
        let pulled = tokio::time::timeout(
            ENDPOINT_DEADLINE,
            client.pull_manifest_and_config(&reference, auth),
        )
        .await;
        let pulled = match pulled {
            Ok(r) => r,
            Err(_) => {
                tracing::info!(image = %image, endpoint = %endpoint.host, "reading the image config timed out");
                answers.push(format!(
                    "{}: no answer within {} s",
                    endpoint.host,
                    ENDPOINT_DEADLINE.as_secs()
                ));
                continue;
            }
        };
        match pulled {
            Ok((_, digest, config)) => {
                tracing::debug!(image = %image, endpoint = %endpoint.host, %digest, "read the image config");
                return labels_of_config(&config).map_err(|reason| LabelsError::BadConfig {
                    image: image.to_string(),
                    reason,
                });
            }
            Err(e) => {
                let reason = with_causes(&e);
                tracing::info!(image = %image, endpoint = %endpoint.host, error = %reason, "reading the image config failed");
                answers.push(format!("{}: {reason}", endpoint.host));
            }
        }
    }
    Err(LabelsError::Unreachable {
        image: image.to_string(),
        reason: answers.join("; "),
    })
}

/// The `config.Labels` of an image config blob (OCI image config or Docker's
/// v2 image JSON); none when the config has no `config` or no labels.
pub fn labels_of_config(json: &str) -> Result<BTreeMap<String, String>, String> {
    #[derive(serde::Deserialize)]
    struct ImageConfig {
        #[serde(default)]
        config: Option<Runtime>,
    }
    #[derive(serde::Deserialize)]
    struct Runtime {
        #[serde(rename = "Labels", default)]
        labels: Option<BTreeMap<String, String>>,
    }
    let parsed: ImageConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(parsed.config.and_then(|c| c.labels).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn labels_come_from_the_runtime_config() {
        let json = r#"{"architecture":"amd64","os":"linux",
            "config":{"Env":["PATH=/bin"],"Labels":{"instancetype.kubevirt.io/default-instancetype":"u1.small","a":"b"}},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let labels = labels_of_config(json).unwrap();
        assert_eq!(
            labels["instancetype.kubevirt.io/default-instancetype"],
            "u1.small"
        );
        assert_eq!(labels.len(), 2);
        // No config, null labels, no labels: none.
        for bare in [
            r#"{"architecture":"amd64"}"#,
            r#"{"config":{"Labels":null}}"#,
            r#"{"config":{}}"#,
            r#"{"config":null}"#,
        ] {
            assert!(labels_of_config(bare).unwrap().is_empty(), "{bare}");
        }
        assert!(labels_of_config("[1]").is_err());
        assert!(labels_of_config(r#"{"config":{"Labels":{"a":1}}}"#).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_registry_gives_each_endpoints_answer() {
        let registries = Registries::parse(
            "registries:\n  r.invalid:\n    mirrors: [\"127.0.0.1:1\"]\n  \"127.0.0.1:1\":\n    insecure: true\n  \"r.invalid:1\": {}\n",
        )
        .unwrap();
        let image = ImageRef::parse("r.invalid:1/x/disk:v1").unwrap();
        // Not r.invalid: the mirror is for r.invalid without a port.
        let e = config_labels(&registries, &image, &RegistryAuth::Anonymous)
            .await
            .unwrap_err();
        assert!(matches!(e, LabelsError::Unreachable { .. }), "{e}");
        let image = ImageRef::parse("r.invalid/x/disk:v1").unwrap();
        let e = config_labels(&registries, &image, &RegistryAuth::Anonymous)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("reading r.invalid/x/disk:v1: 127.0.0.1:1: "),
            "{e}"
        );
        assert!(e.contains("; r.invalid: "), "{e}");
    }

    #[tokio::test]
    async fn a_registry_the_configuration_does_not_name_is_never_asked() {
        // A tenant's image naming an internal address: refused before any
        // connection (nothing listens on 127.0.0.1:1 to tell either way).
        let registries = Registries::parse("registries:\n  quay.io: {}\n").unwrap();
        for image in [
            "127.0.0.1:1/x/disk:v1",
            "169.254.169.254/latest/meta:v1",
            "docker.io/x/y:v1",
        ] {
            let image = ImageRef::parse(image).unwrap();
            let e = config_labels(&registries, &image, &RegistryAuth::Anonymous)
                .await
                .unwrap_err();
            assert!(matches!(e, LabelsError::NotConfigured { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains("is not in the registries configuration"),
                "{e}"
            );
        }
    }
}
