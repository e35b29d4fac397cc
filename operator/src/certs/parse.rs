//! Reading certificates: what a PEM certificate says, and whether a key is
//! its key.

use rcgen::{KeyPair, PublicKeyData};

/// What a parsed certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub pem: String,
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub dns_names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    /// DER SubjectPublicKeyInfo, to match the certificate with its key.
    spki: Vec<u8>,
}

impl CertInfo {
    /// When 2/3 of the lifetime has passed.
    pub fn renew_at(&self) -> i64 {
        let life = self.not_after.saturating_sub(self.not_before);
        self.not_before.saturating_add(life / 3 * 2)
    }

    pub(super) fn expired(&self, now: i64) -> bool {
        now >= self.not_after
    }
}

/// Every certificate in a PEM buffer (unparseable blocks are skipped).
pub fn parse_certs(pem: &[u8]) -> Vec<CertInfo> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            continue;
        }
        let Ok(cert) = block.parse_x509() else {
            continue;
        };
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let text = pem_encode(&block.contents);
        out.push(CertInfo {
            pem: text,
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            dns_names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            spki: cert.public_key().raw.to_vec(),
        });
    }
    out
}

fn pem_encode(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// The first certificate of `cert_pem` if `key_pem` is its key.
pub(super) fn cert_with_key(
    cert_pem: Option<&Vec<u8>>,
    key_pem: Option<&Vec<u8>>,
) -> Result<CertInfo, String> {
    let cert = cert_pem
        .map(|c| parse_certs(c))
        .and_then(|c| c.into_iter().next())
        .ok_or("no certificate")?;
    let key = key_pem
        .and_then(|k| std::str::from_utf8(k).ok())
        .ok_or("no key")?;
    let key = KeyPair::from_pem(key).map_err(|e| format!("bad key: {e}"))?;
    if key.subject_public_key_info() != cert.spki {
        return Err("the key does not match the certificate".into());
    }
    Ok(cert)
}
