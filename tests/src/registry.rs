//! A real OCI registry for tests: Debian's `docker-registry` (CNCF
//! distribution 2.8) on 127.0.0.1, over plain HTTP or, private, over TLS
//! (a CA of the test's own) with a user and password; with its own storage
//! and access log, and images in KubeVirt's containerDisk layout pushed to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

type Res<T> = Result<T, Box<dyn std::error::Error>>;
/// An image's files: path in the image, content.
pub type Files<'a> = Vec<(&'a str, Vec<u8>)>;

/// A registry process with its storage and access log; killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// The CA of a private registry's certificate (PEM file).
    pub ca: Option<PathBuf>,
    /// A private registry's user and password.
    pub credentials: Option<(String, String)>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port of 127.0.0.1, plain HTTP, open to all.
    pub fn start() -> Res<Registry> {
        Self::start_inner(None)
    }

    /// Starts a private registry: TLS with a certificate for 127.0.0.1 from a
    /// CA of its own ([`Registry::ca`]), and basic authentication for `user`.
    pub fn start_private(user: &str, password: &str) -> Res<Registry> {
        Self::start_inner(Some((user.to_owned(), password.to_owned())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Res<Registry> {
        let bin = which("docker-registry").ok_or(
            "docker-registry is not installed: run `make deps` (Debian package docker-registry)",
        )?;
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.path().join("data").display()
        );
        let mut ca = None;
        if let Some((user, password)) = &credentials {
            let (ca_pem, cert_pem, key_pem) = tls_for_localhost()?;
            let (ca_path, cert, key, htpasswd) = (
                dir.path().join("ca.pem"),
                dir.path().join("tls.crt"),
                dir.path().join("tls.key"),
                dir.path().join("htpasswd"),
            );
            std::fs::write(&ca_path, ca_pem)?;
            std::fs::write(&cert, cert_pem)?;
            std::fs::write(&key, key_pem)?;
            std::fs::write(
                &htpasswd,
                format!("{user}:{}\n", bcrypt::hash(password, 6)?),
            )?;
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\nauth:\n  htpasswd:\n    realm: ironvirt-test\n    path: {}\n",
                cert.display(),
                key.display(),
                htpasswd.display()
            ));
            ca = Some(ca_path);
        }
        std::fs::write(&config, yaml)?;
        let log = dir.path().join("registry.log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join("registry.err"),
            )?))
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&host).is_err() {
            if Instant::now() > deadline {
                return Err("the registry did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Registry {
            child,
            host,
            ca,
            credentials,
            log,
            _dir: dir,
        })
    }

    /// Access-log lines so far (the registry logs each request).
    pub fn requests(&self, needle: &str) -> usize {
        let err = self.log.with_file_name("registry.err");
        [&self.log, &err]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| t.lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| l.contains("\"GET /v2/") && l.contains(needle))
            .count()
    }

    /// Pushes `files` as a one-layer image `repo:tag` (with the
    /// credentials and CA of a private registry).
    pub async fn push(&self, repo_tag: &str, files: &[(&str, Vec<u8>)]) -> Res<()> {
        self.push_labelled(repo_tag, files, &[]).await
    }

    /// [`Registry::push`], with `labels` in the image config
    /// (`config.Labels`, what `LABEL` in a Containerfile sets).
    pub async fn push_labelled(
        &self,
        repo_tag: &str,
        files: &[(&str, Vec<u8>)],
        labels: &[(&str, &str)],
    ) -> Res<()> {
        let Some((user, password)) = &self.credentials else {
            let config = ClientConfig {
                protocol: ClientProtocol::Http,
                ..ClientConfig::default()
            };
            return push_with(
                config,
                &self.host,
                repo_tag,
                files,
                labels,
                &RegistryAuth::Anonymous,
            )
            .await;
        };
        let ca = std::fs::read(self.ca.as_ref().ok_or("a private registry has a CA")?)?;
        let config = ClientConfig {
            protocol: ClientProtocol::Https,
            extra_root_certificates: vec![oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: ca,
            }],
            ..ClientConfig::default()
        };
        let auth = RegistryAuth::Basic(user.clone(), password.clone());
        push_with(config, &self.host, repo_tag, files, labels, &auth).await
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `files` as a one-layer image (gzip, KubeVirt's uid 107) `repo:tag`
/// to the plain-HTTP registry at `host`.
pub async fn push(host: &str, repo_tag: &str, files: &[(&str, Vec<u8>)]) -> Res<()> {
    let config = ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    };
    push_with(config, host, repo_tag, files, &[], &RegistryAuth::Anonymous).await
}

async fn push_with(
    config: ClientConfig,
    host: &str,
    repo_tag: &str,
    files: &[(&str, Vec<u8>)],
    labels: &[(&str, &str)],
    auth: &RegistryAuth,
) -> Res<()> {
    let (repo, tag) = repo_tag.split_once(':').ok_or("expected repo:tag")?;
    // The workspace's TLS is rustls on ring; a second install is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reference = Reference::with_tag(host.to_owned(), repo.into(), tag.into());
    let client = Client::new(config);
    let layer = ImageLayer::oci_v1_gzip(tar_gz(files)?, None);
    let mut image_config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    if !labels.is_empty() {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        image_config["config"] = serde_json::json!({ "Labels": labels });
    }
    let config = Config::oci_v1(serde_json::to_vec(&image_config)?, None);
    client
        .push(&reference, &[layer], config, auth, None)
        .await?;
    Ok(())
}

/// A CA, and a certificate it signed for 127.0.0.1 with its key (PEM).
fn tls_for_localhost() -> Res<(String, String, String)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ironvirt-test-registry-ca");
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(
            std::net::Ipv4Addr::LOCALHOST,
        )));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let key = rcgen::KeyPair::generate()?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((ca.pem(), cert.pem(), key.serialize_pem()))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn tar_gz(files: &[(&str, Vec<u8>)]) -> Res<Vec<u8>> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o440);
        h.set_uid(107);
        h.set_gid(107);
        h.set_cksum();
        b.append_data(&mut h, path, data.as_slice())?;
    }
    Ok(b.into_inner()?.finish()?)
}

/// A small qcow2 image, optionally with a backing file.
pub fn qcow2(backing: Option<&Path>) -> Res<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("d.qcow2");
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        cmd.arg("-b").arg(b).args(["-F", "raw"]);
    }
    let ok = cmd.arg(&path).arg("16M").status()?.success();
    if !ok {
        return Err("qemu-img create failed".into());
    }
    Ok(std::fs::read(path)?)
}
