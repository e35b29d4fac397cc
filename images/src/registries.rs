//! The node's registry configuration: mirrors, plain HTTP, custom CAs.
//!
//! A YAML file (`--registries-config` of the handler, and of the operator,
//! which reads image labels with it), in the spirit of containerd's
//! `hosts.toml`, keyed by the registry host an image reference names:
//!
//! ```yaml
//! registries:
//!   quay.io:
//!     mirrors: ["127.0.0.1:5000"]   # tried in order, then quay.io itself
//!   "127.0.0.1:5000":
//!     insecure: true                # plain HTTP
//!   registry.example:5000:
//!     ca: /etc/ironvirt/registries/example.pem
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How to reach one registry host.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Hosts serving the same repositories, tried before this one.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    /// A PEM bundle of CAs that sign this host's certificate (besides the
    /// system's).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    registries: BTreeMap<String, HostConfig>,
}

/// One place to pull an image from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub insecure: bool,
    pub ca: Option<PathBuf>,
}

/// The node's registry configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registries {
    hosts: BTreeMap<String, HostConfig>,
}

impl Registries {
    /// Parses the YAML configuration; errors name the problem.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let file: File = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        for (host, cfg) in &file.registries {
            for h in std::iter::once(host).chain(&cfg.mirrors) {
                if h.is_empty() || h.contains(['/', ' ']) {
                    return Err(format!(
                        "registries.{host}: {h:?} is not a registry host (host[:port])"
                    ));
                }
            }
        }
        Ok(Registries {
            hosts: file.registries,
        })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether the configuration names `registry` (as a registry of its own,
    /// with or without mirrors).
    pub fn names(&self, registry: &str) -> bool {
        self.hosts.contains_key(registry)
    }

    /// Where to pull an image of `registry` from, in order: its mirrors,
    /// then the registry itself. Each endpoint's protocol and CA come from
    /// its own entry.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let own = |host: &str| {
            let cfg = self.hosts.get(host);
            Endpoint {
                host: host.to_owned(),
                insecure: cfg.is_some_and(|c| c.insecure),
                ca: cfg.and_then(|c| c.ca.clone()),
            }
        };
        let mirrors = self
            .hosts
            .get(registry)
            .map(|c| c.mirrors.as_slice())
            .unwrap_or_default();
        mirrors
            .iter()
            .filter(|m| m.as_str() != registry)
            .map(|m| own(m))
            .chain(std::iter::once(own(registry)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_with_their_own_settings() {
        let r = Registries::parse(
            "registries:\n  quay.io:\n    mirrors: [\"127.0.0.1:5000\"]\n  \"127.0.0.1:5000\":\n    insecure: true\n",
        )
        .unwrap();
        let e = r.endpoints("quay.io");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].host, "127.0.0.1:5000");
        assert!(e[0].insecure);
        assert_eq!(e[1].host, "quay.io");
        assert!(!e[1].insecure);
        // A registry the file does not name: itself, over HTTPS.
        assert_eq!(
            Registries::default().endpoints("docker.io"),
            vec![Endpoint {
                host: "docker.io".into(),
                insecure: false,
                ca: None
            }]
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(Registries::parse("registries:\n  quay.io:\n    mirror: [x]\n").is_err());
        let e = Registries::parse("registries:\n  quay.io:\n    mirrors: [\"a/b\"]\n").unwrap_err();
        assert!(e.contains("not a registry host"), "{e}");
        assert_eq!(Registries::parse("").unwrap(), Registries::default());
    }
}
