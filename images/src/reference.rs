//! Image references and KubeVirt's pull-policy defaults.

use std::fmt;

/// When the handler pulls an image it may already have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Ask the registry every time a VMI starts; the cache still saves the
    /// download when the digest is unchanged.
    Always,
    /// Use the cached image when there is one.
    IfNotPresent,
    /// Never ask the registry: the image must be in the cache.
    Never,
}

impl PullPolicy {
    /// The policy a volume asks for (`imagePullPolicy`), or KubeVirt's
    /// default: Always for `:latest` or no tag, else IfNotPresent. Any other
    /// value is an error naming the accepted ones.
    pub fn of(given: Option<&str>, image: &ImageRef) -> Result<Self, String> {
        match given.filter(|g| !g.is_empty()) {
            Some("Always") => Ok(PullPolicy::Always),
            Some("IfNotPresent") => Ok(PullPolicy::IfNotPresent),
            Some("Never") => Ok(PullPolicy::Never),
            Some(other) => Err(format!(
                "{other:?} is not a pull policy: use Always, IfNotPresent or Never"
            )),
            None if image.digest.is_none()
                && image.tag.as_deref().is_none_or(|t| t == "latest") =>
            {
                Ok(PullPolicy::Always)
            }
            None => Ok(PullPolicy::IfNotPresent),
        }
    }
}

/// A parsed image reference, with Docker's defaults made explicit:
/// `docker.io` for a name without registry and `library/` for a one-part
/// name on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]`.
    pub registry: String,
    /// The repository path on the registry.
    pub repository: String,
    /// The tag as written; None when absent (pulled as `latest`).
    pub tag: Option<String>,
    /// `sha256:…` when the reference pins a digest.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses `image` as Docker and containerd do. Errors say what is wrong.
    pub fn parse(image: &str) -> Result<Self, String> {
        let image = image.trim();
        if image.is_empty() {
            return Err("the image reference is empty".into());
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{image:?} contains whitespace"));
        }
        let (name, digest) = match image.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (image, None),
        };
        if let Some(d) = digest {
            let hex = d
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("{image:?}: the digest must be sha256:<64 hex digits>"))?;
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!(
                    "{image:?}: the digest must be sha256:<64 hex digits>"
                ));
            }
        }
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag {
            let valid = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(format!("{image:?}: {t:?} is not a valid tag"));
            }
        }
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), rest.to_owned())
            }
            _ => ("docker.io".to_owned(), path.to_owned()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars().all(|ch| {
                    ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-')
                })
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(format!(
                "{image:?}: the repository {repository:?} must be lowercase letters, digits and \
                 '.', '_', '-' in '/'-separated parts"
            ));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// The tag pulled: the given one or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn references_get_dockers_defaults() {
        let cirros = r("quay.io/kubevirt/cirros-container-disk-demo");
        assert_eq!(cirros.registry, "quay.io");
        assert_eq!(cirros.repository, "kubevirt/cirros-container-disk-demo");
        assert_eq!(cirros.tag, None);
        assert_eq!(cirros.tag_or_latest(), "latest");
        let local = r("registry:5000/kubevirt/fedora-cloud-container-disk-demo:devel");
        assert_eq!(local.registry, "registry:5000");
        assert_eq!(local.tag.as_deref(), Some("devel"));
        assert_eq!(r("busybox").to_string(), "docker.io/library/busybox");
        assert_eq!(r("kubevirt/cirros:v1").registry, "docker.io");
        assert_eq!(r("localhost/x/y:1").registry, "localhost");
        let pinned = r(&format!("127.0.0.1:5000/a/b@sha256:{}", "ab".repeat(32)));
        assert_eq!(pinned.registry, "127.0.0.1:5000");
        assert!(pinned.digest.is_some() && pinned.tag.is_none());
    }

    #[test]
    fn bad_references_say_why() {
        for (bad, says) in [
            ("", "empty"),
            ("quay.io/Kubevirt/x", "lowercase"),
            ("a/b:", "not a valid tag"),
            ("a/b@sha256:12", "64 hex"),
            ("a/b@md5:12", "sha256"),
            ("a b", "whitespace"),
        ] {
            let e = ImageRef::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn pull_policy_defaults_follow_kubevirt() {
        use PullPolicy::*;
        assert_eq!(PullPolicy::of(None, &r("a/b")).unwrap(), Always);
        assert_eq!(PullPolicy::of(None, &r("a/b:latest")).unwrap(), Always);
        assert_eq!(PullPolicy::of(None, &r("a/b:v1")).unwrap(), IfNotPresent);
        let pinned = r(&format!("a/b@sha256:{}", "0".repeat(64)));
        assert_eq!(PullPolicy::of(None, &pinned).unwrap(), IfNotPresent);
        assert_eq!(PullPolicy::of(Some("Never"), &r("a/b")).unwrap(), Never);
        assert_eq!(
            PullPolicy::of(Some("Always"), &r("a/b:v1")).unwrap(),
            Always
        );
        assert!(PullPolicy::of(Some("Sometimes"), &r("a/b")).is_err());
    }
}
