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
/// gives an empty map.
pub async fn config_labels(
    registries: &Registries,
    image: &ImageRef,
    auth: &RegistryAuth,
) -> Result<BTreeMap<String, String>, LabelsError> {
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
        match client.pull_manifest_and_config(&reference, auth).await {
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
            "registries:\n  r.invalid:\n    mirrors: [\"127.0.0.1:1\"]\n  \"127.0.0.1:1\":\n    insecure: true\n",
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
}
