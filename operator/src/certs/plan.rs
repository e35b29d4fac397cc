//! What to issue and why, as a pure function of the Secrets' data, the
//! settings and the time.

use std::collections::BTreeMap;

use ironvirt_crds::wire::{API_CLIENT_CN, HANDLER_SERVER_NAME};
use k8s_openapi::jiff::Timestamp;

use super::parse::{CertInfo, cert_with_key, parse_certs};
use super::{CA_CRT, CLIENT_CRT, CLIENT_KEY, CertConfig, TLS_CRT, TLS_KEY, secs};

/// The data of the three Secrets as read (`None`: no such Secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Existing {
    pub ca: Option<BTreeMap<String, Vec<u8>>>,
    pub api: Option<BTreeMap<String, Vec<u8>>>,
    pub handler: Option<BTreeMap<String, Vec<u8>>>,
}

/// Why a certificate is (re)issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Absent, unparseable or not matching its key.
    Missing(String),
    /// 2/3 of its lifetime has passed (or it expired).
    Expiring,
    /// Its names differ from what is configured.
    NamesChanged,
    /// Its issuer is no longer in the bundle.
    Untrusted,
    /// A newer CA has been in the bundle for the propagation time.
    NewCa,
}

/// The CA decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaPlan {
    /// Keep the signing CA.
    Keep(CertInfo),
    /// Generate a new CA (the old one, if any, stays in the bundle until it expires).
    Generate(Reason),
}

/// What [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub ca: CaPlan,
    /// The trust bundle without the CA still to be generated: unexpired CA
    /// certificates from the old bundle, signing CA first.
    pub kept_bundle: Vec<CertInfo>,
    pub api_serving: Option<Reason>,
    pub api_client: Option<Reason>,
    pub handler_serving: Option<Reason>,
    /// When to look again (unix seconds), however quiet things are.
    pub next_check: i64,
}

impl Plan {
    /// Whether a certificate is issued.
    pub fn issues_anything(&self) -> bool {
        matches!(self.ca, CaPlan::Generate(_))
            || self.api_serving.is_some()
            || self.api_client.is_some()
            || self.handler_serving.is_some()
    }
}

/// The subject of the CA that signs new leaves: known, or yet to be generated.
struct Signer<'a> {
    subject: Option<&'a str>,
    not_before: i64,
}

/// What a leaf should be.
struct LeafWant<'a> {
    common_name: &'a str,
    dns_names: &'a [String],
}

fn plan_leaf(
    cert: Result<CertInfo, String>,
    want: &LeafWant<'_>,
    signer: &Signer<'_>,
    bundle: &[CertInfo],
    cfg: &CertConfig,
    now: i64,
    next: &mut i64,
) -> Option<Reason> {
    let cert = match cert {
        Ok(c) => c,
        Err(e) => return Some(Reason::Missing(e)),
    };
    if cert.common_name.as_deref() != Some(want.common_name) || cert.dns_names != want.dns_names {
        return Some(Reason::NamesChanged);
    }
    if now >= cert.renew_at() {
        return Some(Reason::Expiring);
    }
    if !bundle.iter().any(|c| c.subject == cert.issuer) {
        return Some(Reason::Untrusted);
    }
    if signer.subject != Some(cert.issuer.as_str()) {
        let move_at = signer.not_before.saturating_add(secs(cfg.ca_propagation));
        if now >= move_at {
            return Some(Reason::NewCa);
        }
        *next = (*next).min(move_at);
    }
    *next = (*next).min(cert.renew_at());
    None
}

/// Decides what to issue, given the Secrets' data and `now`.
pub fn plan(existing: &Existing, cfg: &CertConfig, now: Timestamp) -> Plan {
    let now = now.as_second();
    let mut next = now.saturating_add(secs(cfg.resync));
    let ca_data = existing.ca.as_ref();
    let old_bundle: Vec<CertInfo> = ca_data
        .and_then(|d| d.get(CA_CRT))
        .map(|b| parse_certs(b))
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.is_ca && !c.expired(now))
        .collect();
    let signing = cert_with_key(
        ca_data.and_then(|d| d.get(TLS_CRT)),
        ca_data.and_then(|d| d.get(TLS_KEY)),
    )
    .and_then(|c| {
        if c.is_ca {
            Ok(c)
        } else {
            Err("not a CA certificate".into())
        }
    });
    let ca = match signing {
        Err(e) => CaPlan::Generate(Reason::Missing(e)),
        Ok(c) if now >= c.renew_at() => CaPlan::Generate(Reason::Expiring),
        Ok(c) => {
            next = next.min(c.renew_at());
            CaPlan::Keep(c)
        }
    };
    let mut kept_bundle = Vec::new();
    if let CaPlan::Keep(c) = &ca {
        kept_bundle.push(c.clone());
    }
    for c in old_bundle {
        if !kept_bundle.iter().any(|k| k.pem == c.pem) {
            kept_bundle.push(c);
        }
    }
    // The bundle shrinks when one of its CAs expires.
    for c in &kept_bundle {
        next = next.min(c.not_after);
    }
    let signer = match &ca {
        CaPlan::Keep(c) => Signer {
            subject: Some(c.subject.as_str()),
            not_before: c.not_before,
        },
        CaPlan::Generate(_) => Signer {
            subject: None,
            not_before: now,
        },
    };
    let api_dns = cfg.api_dns_names();
    let api = existing.api.as_ref();
    let api_serving = plan_leaf(
        cert_with_key(
            api.and_then(|d| d.get(TLS_CRT)),
            api.and_then(|d| d.get(TLS_KEY)),
        ),
        &LeafWant {
            common_name: &format!("{}.{}.svc", cfg.service, cfg.namespace),
            dns_names: &api_dns,
        },
        &signer,
        &kept_bundle,
        cfg,
        now,
        &mut next,
    );
    let api_client = plan_leaf(
        cert_with_key(
            api.and_then(|d| d.get(CLIENT_CRT)),
            api.and_then(|d| d.get(CLIENT_KEY)),
        ),
        &LeafWant {
            common_name: API_CLIENT_CN,
            dns_names: &[],
        },
        &signer,
        &kept_bundle,
        cfg,
        now,
        &mut next,
    );
    let handler = existing.handler.as_ref();
    let handler_serving = plan_leaf(
        cert_with_key(
            handler.and_then(|d| d.get(TLS_CRT)),
            handler.and_then(|d| d.get(TLS_KEY)),
        ),
        &LeafWant {
            common_name: HANDLER_SERVER_NAME,
            dns_names: &super::shared_handler_names(),
        },
        &signer,
        &kept_bundle,
        cfg,
        now,
        &mut next,
    );
    Plan {
        ca,
        kept_bundle,
        api_serving,
        api_client,
        handler_serving,
        next_check: next.max(now.saturating_add(1)),
    }
}
