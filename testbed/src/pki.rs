//! The test bed's PKI: a cluster CA, a separate front-proxy CA, serving and client
//! certificates, and the service-account key pair.
//!
//! Users authenticate to kube-apiserver with client certificates: CN is the user
//! name and each O is a group, exactly as in a kubeadm cluster.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Errors raised while making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid name {0:?} for a certificate subject alternative name")]
    InvalidName(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A PEM certificate with its PEM private key.
#[derive(Clone)]
pub struct CertPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertPair").finish_non_exhaustive()
    }
}

impl CertPair {
    /// Writes `<dir>/<name>.crt` and `<dir>/<name>.key` (the key with mode 0600).
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), PkiError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        fs::write(&crt, &self.cert_pem).map_err(io_err(&crt))?;
        write_private(&key, &self.key_pem)?;
        Ok((crt, key))
    }

    /// Reads `<dir>/<name>.crt` and `<dir>/<name>.key`.
    pub fn read(dir: &Path, name: &str) -> Result<Self, PkiError> {
        let crt = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        Ok(CertPair {
            cert_pem: fs::read_to_string(&crt).map_err(io_err(&crt))?,
            key_pem: fs::read_to_string(&key).map_err(io_err(&key))?,
        })
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    ServerAndClient,
}

/// The subject and names of a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub usage: Usage,
}

impl LeafSpec {
    /// A client certificate for `user` in `groups` (CN = user, O = groups).
    pub fn client(user: &str, groups: &[&str]) -> Self {
        LeafSpec {
            common_name: user.to_owned(),
            organizations: groups.iter().map(|g| (*g).to_owned()).collect(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            usage: Usage::Client,
        }
    }

    /// A serving certificate for loopback (127.0.0.1, ::1, localhost) plus `dns_names`.
    pub fn loopback_server(common_name: &str, dns_names: &[&str]) -> Self {
        let mut names = vec!["localhost".to_owned()];
        names.extend(dns_names.iter().map(|d| (*d).to_owned()));
        LeafSpec {
            common_name: common_name.to_owned(),
            organizations: Vec::new(),
            dns_names: names,
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
            usage: Usage::Server,
        }
    }
}

/// A certificate authority that can issue leaf certificates.
pub struct Ca {
    pair: CertPair,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pair = CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pair,
        })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pair(pair: CertPair) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(&pair.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&pair.cert_pem, key)?;
        Ok(Ca { pair, issuer })
    }

    /// The CA's own certificate and key.
    pub fn pair(&self) -> &CertPair {
        &self.pair
    }

    /// The CA certificate in PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pair.cert_pem
    }

    /// Issues a leaf certificate with a fresh key.
    pub fn issue(&self, spec: &LeafSpec) -> Result<CertPair, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = DistinguishedName::new();
        for org in &spec.organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, org.as_str());
        }
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        for dns in &spec.dns_names {
            let name = dns
                .as_str()
                .try_into()
                .map_err(|_| PkiError::InvalidName(dns.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::ServerAndClient => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// File names inside the PKI directory.
pub mod names {
    pub const CA: &str = "ca";
    pub const FRONT_PROXY_CA: &str = "front-proxy-ca";
    pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
    pub const APISERVER: &str = "apiserver";
    pub const ADMIN: &str = "admin";
    pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
    pub const CONTROLLER_MANAGER_SERVING: &str = "kube-controller-manager-serving";
    pub const SA_PRIVATE: &str = "sa.key";
    pub const SA_PUBLIC: &str = "sa.pub";
}

/// The CN kube-apiserver presents to aggregated API servers, and the only
/// name they should accept (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// DNS names the kube-apiserver serving certificate carries besides loopback.
const APISERVER_DNS: &[&str] = &[
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

/// The whole PKI of one test bed, generated once into a directory.
#[derive(Debug, Clone)]
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Pki { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn crt(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether the PKI has been generated already.
    pub fn exists(&self) -> bool {
        [
            self.crt(names::CA),
            self.crt(names::FRONT_PROXY_CA),
            self.crt(names::APISERVER),
            self.crt(names::ADMIN),
            self.crt(names::CONTROLLER_MANAGER),
            self.crt(names::CONTROLLER_MANAGER_SERVING),
            self.crt(names::FRONT_PROXY_CLIENT),
            self.file(names::SA_PRIVATE),
            self.file(names::SA_PUBLIC),
        ]
        .iter()
        .all(|p| p.exists())
    }

    /// Generates every certificate and key the control plane needs, unless present.
    pub fn ensure(&self) -> Result<(), PkiError> {
        if self.exists() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let ca = Ca::generate("ironvirt-testbed-ca")?;
        ca.pair().write(&self.dir, names::CA)?;
        let front = Ca::generate("ironvirt-testbed-front-proxy-ca")?;
        front.pair().write(&self.dir, names::FRONT_PROXY_CA)?;

        let mut serving = LeafSpec::loopback_server("kube-apiserver", APISERVER_DNS);
        serving.ips.push(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)));
        ca.issue(&serving)?.write(&self.dir, names::APISERVER)?;
        ca.issue(&LeafSpec::client("admin", &["system:masters"]))?
            .write(&self.dir, names::ADMIN)?;
        ca.issue(&LeafSpec::client("system:kube-controller-manager", &[]))?
            .write(&self.dir, names::CONTROLLER_MANAGER)?;
        ca.issue(&LeafSpec::loopback_server("kube-controller-manager", &[]))?
            .write(&self.dir, names::CONTROLLER_MANAGER_SERVING)?;
        front
            .issue(&LeafSpec::client(FRONT_PROXY_CLIENT_CN, &[]))?
            .write(&self.dir, names::FRONT_PROXY_CLIENT)?;

        let sa = KeyPair::generate()?;
        write_private(&self.file(names::SA_PRIVATE), &sa.serialize_pem())?;
        let public = self.file(names::SA_PUBLIC);
        fs::write(&public, sa.public_key_pem()).map_err(io_err(&public))?;
        Ok(())
    }

    /// The cluster CA, loaded from disk, for minting more certificates.
    pub fn cluster_ca(&self) -> Result<Ca, PkiError> {
        Ca::from_pair(CertPair::read(&self.dir, names::CA)?)
    }

    /// The front-proxy CA, loaded from disk.
    pub fn front_proxy_ca(&self) -> Result<Ca, PkiError> {
        Ca::from_pair(CertPair::read(&self.dir, names::FRONT_PROXY_CA)?)
    }

    /// Mints a client certificate for `user` in `groups`, signed by the cluster CA.
    pub fn mint_user(&self, user: &str, groups: &[&str]) -> Result<CertPair, PkiError> {
        self.cluster_ca()?.issue(&LeafSpec::client(user, groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_complete_pki_once() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        assert!(!pki.exists());
        pki.ensure().unwrap();
        assert!(pki.exists());
        let before = fs::read_to_string(pki.crt(names::CA)).unwrap();
        pki.ensure().unwrap();
        let after = fs::read_to_string(pki.crt(names::CA)).unwrap();
        assert_eq!(before, after, "a second ensure must keep the existing CA");
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            fs::metadata(pki.key(names::ADMIN))
                .unwrap()
                .permissions()
                .mode()
        };
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn minted_user_certificate_carries_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure().unwrap();
        let pair = pki.mint_user("alice", &["dev", "qa"]).unwrap();
        let der = pem_to_der(&pair.cert_pem);
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("alice"));
        assert!(text.contains("dev"));
        assert!(text.contains("qa"));
        // The same CA, loaded back from disk, verifies as issuer: the issuer DN is the CA's CN.
        assert!(text.contains("ironvirt-testbed-ca"));
    }

    #[test]
    fn rejects_invalid_dns_names() {
        let ca = Ca::generate("t").unwrap();
        let mut spec = LeafSpec::loopback_server("x", &[]);
        spec.dns_names.push("\u{0}bad".into());
        assert!(matches!(ca.issue(&spec), Err(PkiError::InvalidName(_))));
    }

    fn pem_to_der(pem: &str) -> Vec<u8> {
        // Enough of a PEM decoder for a test: the base64 body between the armour lines.
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&body)
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let mut buf = 0u32;
        let mut bits = 0;
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        out
    }
}
