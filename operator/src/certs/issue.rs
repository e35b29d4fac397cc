//! Building the desired Secret data from a [`Plan`]: certificates generated
//! where it says so, everything else kept, the bundle everywhere.

use std::collections::BTreeMap;

use ironvirt_crds::wire::{API_CLIENT_CN, HANDLER_SERVER_NAME};
use k8s_openapi::jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::parse::parse_certs;
use super::plan::{CaPlan, Existing, Plan};
use super::{
    CA_CN_PREFIX, CA_CRT, CLIENT_CRT, CLIENT_KEY, CertConfig, CertError, TLS_CRT, TLS_KEY, secs,
};

/// The desired data of the three Secrets, and the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub ca: BTreeMap<String, Vec<u8>>,
    pub api: BTreeMap<String, Vec<u8>>,
    pub handler: BTreeMap<String, Vec<u8>>,
    /// PEM CA bundle: what every caBundle and `ca.crt` carries.
    pub bundle: Vec<u8>,
}

fn offset(t: i64) -> Result<time::OffsetDateTime, CertError> {
    time::OffsetDateTime::from_unix_timestamp(t).map_err(|_| CertError::Time(t))
}

fn generate_ca(now: i64, cfg: &CertConfig) -> Result<(String, String), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{CA_CN_PREFIX}{now}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ironvirt");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = offset(now)?;
    params.not_after = offset(now.saturating_add(secs(cfg.ca_validity)))?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[derive(Clone, Copy)]
enum Usage {
    Server,
    Client,
}

fn issue_leaf(
    issuer: &Issuer<'_, KeyPair>,
    issuer_not_after: i64,
    common_name: &str,
    dns_names: &[String],
    usage: Usage,
    now: i64,
    cfg: &CertConfig,
) -> Result<(Vec<u8>, Vec<u8>), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    for d in dns_names {
        let name = d
            .as_str()
            .try_into()
            .map_err(|_| CertError::Invalid(format!("{d:?} is not a valid DNS name")))?;
        params.subject_alt_names.push(SanType::DnsName(name));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![match usage {
        Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    // A minute of slack for clocks slightly behind ours.
    params.not_before = offset(now.saturating_sub(60))?;
    params.not_after = offset(
        now.saturating_add(secs(cfg.leaf_validity))
            .min(issuer_not_after),
    )?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
}

/// Builds the desired Secret data from `plan`: new certificates where it
/// says so, everything else as it was, and `ca.crt` = the bundle everywhere.
pub fn issue(
    existing: &Existing,
    plan: &Plan,
    cfg: &CertConfig,
    now: Timestamp,
) -> Result<Desired, CertError> {
    let now = now.as_second();
    let empty = BTreeMap::new();
    let old_ca = existing.ca.as_ref().unwrap_or(&empty);
    let (ca_cert, ca_key) = match &plan.ca {
        CaPlan::Keep(c) => (
            c.pem.clone(),
            old_ca
                .get(TLS_KEY)
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default(),
        ),
        CaPlan::Generate(_) => generate_ca(now, cfg)?,
    };
    let signing = parse_certs(ca_cert.as_bytes())
        .into_iter()
        .next()
        .ok_or_else(|| CertError::Invalid("the CA certificate does not parse".into()))?;
    let mut bundle_certs = vec![signing.clone()];
    bundle_certs.extend(
        plan.kept_bundle
            .iter()
            .filter(|c| c.pem != signing.pem)
            .cloned(),
    );
    let bundle: Vec<u8> = bundle_certs.iter().flat_map(|c| c.pem.bytes()).collect();
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;

    let mut ca = BTreeMap::new();
    ca.insert(TLS_CRT.to_owned(), ca_cert.into_bytes());
    ca.insert(TLS_KEY.to_owned(), ca_key.into_bytes());
    ca.insert(CA_CRT.to_owned(), bundle.clone());

    let mut api = existing.api.clone().unwrap_or_default();
    if plan.api_serving.is_some() {
        let (c, k) = issue_leaf(
            &issuer,
            signing.not_after,
            &format!("{}.{}.svc", cfg.service, cfg.namespace),
            &cfg.api_dns_names(),
            Usage::Server,
            now,
            cfg,
        )?;
        api.insert(TLS_CRT.to_owned(), c);
        api.insert(TLS_KEY.to_owned(), k);
    }
    if plan.api_client.is_some() {
        let (c, k) = issue_leaf(
            &issuer,
            signing.not_after,
            API_CLIENT_CN,
            &[],
            Usage::Client,
            now,
            cfg,
        )?;
        api.insert(CLIENT_CRT.to_owned(), c);
        api.insert(CLIENT_KEY.to_owned(), k);
    }
    api.insert(CA_CRT.to_owned(), bundle.clone());

    let mut handler = existing.handler.clone().unwrap_or_default();
    if plan.handler_serving.is_some() {
        let (c, k) = issue_leaf(
            &issuer,
            signing.not_after,
            HANDLER_SERVER_NAME,
            &super::shared_handler_names(),
            Usage::Server,
            now,
            cfg,
        )?;
        handler.insert(TLS_CRT.to_owned(), c);
        handler.insert(TLS_KEY.to_owned(), k);
    }
    handler.insert(CA_CRT.to_owned(), bundle.clone());
    Ok(Desired {
        ca,
        api,
        handler,
        bundle,
    })
}
