//! The test bed's PKI: a cluster CA, a separate front-proxy CA, serving and client
//! certificates, the service-account key pair, and etcd's own CA with its
//! serving, peer and kube-apiserver client certificates.
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
    #[error("openssl could not sign the certificate: {0}")]
    Openssl(String),
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

/// Writes a private key: to a fresh temporary file with mode 0600 (never
/// following a planted symlink), then renamed over `path`.
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(contents.as_bytes()).map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
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
    /// The CA of ironvirt's own component-to-component TLS (handler streams).
    pub const IRONVIRT_CA: &str = "ironvirt-ca";
    /// The handler's stream server certificate (DNS name `ironvirt-handler`).
    pub const HANDLER_SERVING: &str = "ironvirt-handler";
    /// The client certificate ironvirt-api presents to handlers (CN `ironvirt-api`).
    pub const HANDLER_CLIENT: &str = "ironvirt-api-client";
    /// ironvirt-api's serving certificate (aggregated API and webhooks).
    pub const API_SERVING: &str = "ironvirt-api";
    /// etcd's own CA, separate from the cluster CA: a certificate of the
    /// cluster CA (any Kubernetes user) must not open etcd.
    pub const ETCD_CA: &str = "etcd-ca";
    /// etcd's serving certificate on its client port (127.0.0.1, localhost),
    /// also for client use: etcd's JSON gateway dials etcd with it.
    pub const ETCD_SERVER: &str = "etcd-server";
    /// etcd's peer certificate (server and client use, loopback names).
    pub const ETCD_PEER: &str = "etcd-peer";
    /// The client certificate kube-apiserver presents to etcd.
    pub const ETCD_APISERVER_CLIENT: &str = "apiserver-etcd-client";
    /// The CA of the nodes' libvirtds (issue #18): it issues only node
    /// certificates, which libvirtd's TLS port and QEMU's migration stream
    /// accept; no Kubernetes identity is signed by it.
    pub const LIBVIRT_CA: &str = "libvirt-ca";
}

/// Namespace of ironvirt's components on a cluster (and of the test bed's
/// ExternalName Service for the aggregated API).
pub const IRONVIRT_NAMESPACE: &str = "ironvirt-system";
/// The Service (and certificate name) of ironvirt-api.
pub const API_SERVICE: &str = "ironvirt-api";

/// The CN handlers accept from the subresource API server.
pub use ironvirt_crds::wire::API_CLIENT_CN as HANDLER_CLIENT_CN;
/// The name every handler's stream certificate carries; clients verify it
/// whatever address they dialled.
pub use ironvirt_crds::wire::HANDLER_SERVER_NAME;

/// The CN kube-apiserver presents to aggregated API servers, and the only
/// name they should accept (`--requestheader-allowed-names`).
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// The CN of kube-apiserver's client certificate for etcd (as in kubeadm).
pub const ETCD_APISERVER_CLIENT_CN: &str = "kube-apiserver-etcd-client";

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
        if !self.exists() {
            self.ensure_control_plane()?;
        }
        self.ensure_etcd()?;
        self.ensure_ironvirt()
    }

    /// etcd's PKI: its own CA, the serving and peer certificates, and
    /// kube-apiserver's client certificate. Made when any part is missing, so
    /// state directories from before etcd served TLS gain them.
    fn ensure_etcd(&self) -> Result<(), PkiError> {
        let all = [
            names::ETCD_CA,
            names::ETCD_SERVER,
            names::ETCD_PEER,
            names::ETCD_APISERVER_CLIENT,
        ];
        if all
            .iter()
            .all(|n| self.crt(n).exists() && self.key(n).exists())
        {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let ca = Ca::generate("ironvirt-testbed-etcd-ca")?;
        ca.pair().write(&self.dir, names::ETCD_CA)?;
        // Server and client use, as kubeadm issues it: etcd's JSON gateway
        // dials etcd's own gRPC port with this certificate.
        let mut server = LeafSpec::loopback_server("etcd-server", &[]);
        server.usage = Usage::ServerAndClient;
        ca.issue(&server)?.write(&self.dir, names::ETCD_SERVER)?;
        let mut peer = LeafSpec::loopback_server("etcd-peer", &[]);
        peer.usage = Usage::ServerAndClient;
        ca.issue(&peer)?.write(&self.dir, names::ETCD_PEER)?;
        ca.issue(&LeafSpec::client(ETCD_APISERVER_CLIENT_CN, &[]))?
            .write(&self.dir, names::ETCD_APISERVER_CLIENT)?;
        Ok(())
    }

    /// The certificates between ironvirt's own components: a CA, the handler
    /// serving certificate and ironvirt-api's client certificate for handlers.
    /// Made when missing, so older state directories gain them.
    fn ensure_ironvirt(&self) -> Result<(), PkiError> {
        let all = [
            names::IRONVIRT_CA,
            names::HANDLER_SERVING,
            names::HANDLER_CLIENT,
            names::API_SERVING,
        ];
        if all
            .iter()
            .all(|n| self.crt(n).exists() && self.key(n).exists())
        {
            return Ok(());
        }
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let ca = Ca::generate("ironvirt-components-ca")?;
        ca.pair().write(&self.dir, names::IRONVIRT_CA)?;
        ca.issue(&LeafSpec::loopback_server(
            HANDLER_SERVER_NAME,
            &[HANDLER_SERVER_NAME],
        ))?
        .write(&self.dir, names::HANDLER_SERVING)?;
        ca.issue(&LeafSpec::client(HANDLER_CLIENT_CN, &[]))?
            .write(&self.dir, names::HANDLER_CLIENT)?;
        let svc = format!("{API_SERVICE}.{IRONVIRT_NAMESPACE}.svc");
        let svc_local = format!("{svc}.cluster.local");
        ca.issue(&LeafSpec::loopback_server(API_SERVICE, &[&svc, &svc_local]))?
            .write(&self.dir, names::API_SERVING)?;
        Ok(())
    }

    fn ensure_control_plane(&self) -> Result<(), PkiError> {
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

    /// The nodes' libvirt CA ([`names::LIBVIRT_CA`]), made at first use.
    pub fn libvirt_ca(&self) -> Result<Ca, PkiError> {
        if !(self.crt(names::LIBVIRT_CA).exists() && self.key(names::LIBVIRT_CA).exists()) {
            fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
            Ca::generate("ironvirt-testbed-libvirt-ca")?
                .pair()
                .write(&self.dir, names::LIBVIRT_CA)?;
        }
        Ca::from_pair(CertPair::read(&self.dir, names::LIBVIRT_CA)?)
    }

    /// The front-proxy CA, loaded from disk.
    pub fn front_proxy_ca(&self) -> Result<Ca, PkiError> {
        Ca::from_pair(CertPair::read(&self.dir, names::FRONT_PROXY_CA)?)
    }

    /// Mints a client certificate for `user` in `groups` (CN = user, one O per
    /// group), signed by the cluster CA.
    ///
    /// rcgen keeps one value per subject attribute, so a certificate with several
    /// O attributes is signed by `openssl req -x509 -CA` instead, with a key
    /// generated here.
    pub fn mint_user(&self, user: &str, groups: &[&str]) -> Result<CertPair, PkiError> {
        if groups.len() <= 1 {
            return self.cluster_ca()?.issue(&LeafSpec::client(user, groups));
        }
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let work = tempdir_in(&self.dir)?;
        let key_path = work.join("user.key");
        write_private(&key_path, &key_pem)?;
        let out_path = work.join("user.crt");
        let result = std::process::Command::new("openssl")
            .args(["req", "-x509", "-new", "-utf8", "-days", "365"])
            .arg("-key")
            .arg(&key_path)
            .arg("-CA")
            .arg(self.crt(names::CA))
            .arg("-CAkey")
            .arg(self.key(names::CA))
            .arg("-subj")
            .arg(openssl_subject(user, groups))
            .args([
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-addext",
                "keyUsage=critical,digitalSignature,keyEncipherment",
                "-addext",
                "extendedKeyUsage=clientAuth",
            ])
            .arg("-out")
            .arg(&out_path)
            .output();
        let cert = match result {
            Ok(out) if out.status.success() => {
                fs::read_to_string(&out_path).map_err(io_err(&out_path))
            }
            Ok(out) => Err(PkiError::Openssl(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            )),
            Err(e) => Err(PkiError::Openssl(format!("cannot run openssl: {e}"))),
        };
        let _ = fs::remove_dir_all(&work);
        Ok(CertPair {
            cert_pem: cert?,
            key_pem,
        })
    }
}

/// A subject for `openssl -subj`: one O per group, then CN, with `/`, `=`, `+`
/// and `\\` escaped.
pub fn openssl_subject(user: &str, groups: &[&str]) -> String {
    fn esc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, '/' | '=' | '+' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }
    let mut subj = String::new();
    for g in groups {
        subj.push_str("/O=");
        subj.push_str(&esc(g));
    }
    subj.push_str("/CN=");
    subj.push_str(&esc(user));
    subj
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, PkiError> {
    let path = dir.join(format!(
        ".mint-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    fs::create_dir_all(&path).map_err(io_err(&path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::pem::parse_x509_pem;

    struct Parsed {
        subject_cn: Vec<String>,
        subject_o: Vec<String>,
        issuer_cn: Vec<String>,
        client_auth: bool,
    }

    fn parse(pem: &str) -> Parsed {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let strs = |it: x509_parser::x509::X509Name<'_>, o: bool| -> Vec<String> {
            let attrs: Vec<String> = if o {
                it.iter_organization()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect()
            } else {
                it.iter_common_name()
                    .map(|a| a.as_str().unwrap().to_owned())
                    .collect()
            };
            attrs
        };
        let eku = cert
            .extended_key_usage()
            .unwrap()
            .map(|e| e.value.client_auth);
        Parsed {
            subject_cn: strs(cert.subject().clone(), false),
            subject_o: strs(cert.subject().clone(), true),
            issuer_cn: strs(cert.issuer().clone(), false),
            client_auth: eku.unwrap_or(false),
        }
    }

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
        let admin = parse(&fs::read_to_string(pki.crt(names::ADMIN)).unwrap());
        assert_eq!(admin.subject_o, vec!["system:masters"]);
        // The front-proxy client is signed by the front-proxy CA, not the cluster CA.
        let fp = parse(&fs::read_to_string(pki.crt(names::FRONT_PROXY_CLIENT)).unwrap());
        assert_eq!(fp.subject_cn, vec![FRONT_PROXY_CLIENT_CN]);
        assert_eq!(fp.issuer_cn, vec!["ironvirt-testbed-front-proxy-ca"]);
    }

    #[test]
    fn etcd_has_its_own_ca_and_certificates() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure().unwrap();
        let read = |n: &str| parse(&fs::read_to_string(pki.crt(n)).unwrap());
        for n in [
            names::ETCD_SERVER,
            names::ETCD_PEER,
            names::ETCD_APISERVER_CLIENT,
        ] {
            assert_eq!(read(n).issuer_cn, vec!["ironvirt-testbed-etcd-ca"], "{n}");
            let mode = fs::metadata(pki.key(n)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{n}");
        }
        let mode = fs::metadata(pki.key(names::ETCD_CA))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(
            fs::read_to_string(pki.crt(names::ETCD_CA)).unwrap(),
            fs::read_to_string(pki.crt(names::CA)).unwrap(),
            "etcd's CA must not be the cluster CA"
        );
        let client = read(names::ETCD_APISERVER_CLIENT);
        assert_eq!(client.subject_cn, vec![ETCD_APISERVER_CLIENT_CN]);
        assert!(client.client_auth);
        assert!(client.subject_o.is_empty());
        // The serving certificate names 127.0.0.1 and localhost.
        let pem = fs::read_to_string(pki.crt(names::ETCD_SERVER)).unwrap();
        let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let sans = format!(
            "{:?}",
            cert.subject_alternative_name().unwrap().unwrap().value
        );
        assert!(sans.contains("localhost"), "{sans}");
        assert!(sans.contains("[127, 0, 0, 1]"), "{sans}");
        // etcd's gateway dials etcd itself with the serving certificate.
        assert!(read(names::ETCD_SERVER).client_auth);
        assert!(read(names::ETCD_PEER).client_auth);

        // A state directory from before etcd served TLS gains the etcd PKI,
        // and keeps its cluster CA.
        let ca_before = fs::read_to_string(pki.crt(names::CA)).unwrap();
        fs::remove_file(pki.key(names::ETCD_PEER)).unwrap();
        let etcd_ca_before = fs::read_to_string(pki.crt(names::ETCD_CA)).unwrap();
        pki.ensure().unwrap();
        assert!(pki.key(names::ETCD_PEER).exists());
        assert_eq!(fs::read_to_string(pki.crt(names::CA)).unwrap(), ca_before);
        let etcd_ca_after = fs::read_to_string(pki.crt(names::ETCD_CA)).unwrap();
        assert_ne!(etcd_ca_after, etcd_ca_before, "made afresh, as one set");
        assert_eq!(
            read(names::ETCD_SERVER).issuer_cn,
            vec!["ironvirt-testbed-etcd-ca"]
        );
    }

    #[test]
    fn minted_user_certificates_carry_user_and_every_group() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        pki.ensure().unwrap();
        for groups in [vec![], vec!["dev"], vec!["dev", "qa", "a/b=c"]] {
            let pair = pki.mint_user("alice", &groups).unwrap();
            let cert = parse(&pair.cert_pem);
            assert_eq!(cert.subject_cn, vec!["alice"]);
            assert_eq!(cert.subject_o, groups, "groups {groups:?}");
            assert_eq!(cert.issuer_cn, vec!["ironvirt-testbed-ca"]);
            assert!(cert.client_auth);
            assert!(pair.key_pem.contains("PRIVATE KEY"));
        }
        // No temporary files are left in the PKI directory.
        let stray: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".mint-"))
            .collect();
        assert!(stray.is_empty());
    }

    #[test]
    fn openssl_subject_escapes_separators() {
        assert_eq!(openssl_subject("u", &["a", "b/c"]), "/O=a/O=b\\/c/CN=u");
    }

    #[test]
    fn rejects_invalid_dns_names() {
        let ca = Ca::generate("t").unwrap();
        let mut spec = LeafSpec::loopback_server("x", &[]);
        spec.dns_names.push("b\u{e4}d".into());
        assert!(matches!(ca.issue(&spec), Err(PkiError::InvalidName(_))));
    }
}
