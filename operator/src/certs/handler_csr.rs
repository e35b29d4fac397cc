//! Per-node handler certificates on a real cluster (planned; the decision is
//! here and tested, the controller that acts on it is not wired yet).
//!
//! The design, as the kubelet gets its serving certificate:
//! 1. the handler makes a key on its node (never stored in the API), and
//!    creates a `CertificateSigningRequest` with `signerName`
//!    [`HANDLER_SIGNER`], CN and only DNS name `<node>.ironvirt-handler`
//!    ([`handler_server_name`]), usages server auth (+ digital signature, key
//!    encipherment);
//! 2. kube-apiserver records who asked: the handler ServiceAccount and, from
//!    its bound token, the extra `authentication.kubernetes.io/node-name`;
//! 3. the operator approves and signs (with the CA of its certificate
//!    manager) exactly when [`decide`] says so: the requester is a handler
//!    identity whose node is the node the request names;
//! 4. the handler reads `status.certificate`, serves with it, and asks again
//!    at 2/3 of its lifetime.
//!
//! RBAC then gives the handler `create`/`get`/`watch` on
//! certificatesigningrequests, and the operator `approve` and `sign` on the
//! signer `ironvirt.io/handler-serving` only. Until this lands, `deploy/`
//! mounts one shared certificate ([`super::shared_handler_names`]).

use std::collections::BTreeMap;

use ironvirt_crds::wire::{handler_node, handler_server_name};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

/// The signer name of handler serving certificates.
pub const HANDLER_SIGNER: &str = "ironvirt.io/handler-serving";

/// The key usages a handler may ask for; "server auth" is required.
const ALLOWED_USAGES: &[&str] = &["digital signature", "key encipherment", "server auth"];

/// What to do with a CertificateSigningRequest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrDecision {
    /// Not ours (another signer), or already approved, denied or signed.
    Ignore,
    /// Approve and sign: a serving certificate for this node's handler.
    Approve { node: String },
    /// Deny, with the reason put in the Denied condition.
    Deny(String),
}

/// Whether to sign `csr` for a handler: pure, from the request and the
/// requester that kube-apiserver recorded.
pub fn decide(csr: &CertificateSigningRequest) -> CsrDecision {
    let spec = &csr.spec;
    if spec.signer_name != HANDLER_SIGNER {
        return CsrDecision::Ignore;
    }
    let decided = csr.status.as_ref().is_some_and(|s| {
        s.certificate.is_some() || !s.conditions.as_deref().unwrap_or_default().is_empty()
    });
    if decided {
        return CsrDecision::Ignore;
    }
    let user = spec.username.as_deref().unwrap_or_default();
    let groups = spec.groups.clone().unwrap_or_default();
    let extra: BTreeMap<String, Vec<String>> = spec.extra.clone().unwrap_or_default();
    let Some(node) = handler_node(user, &groups, &extra) else {
        return CsrDecision::Deny(format!(
            "{user:?} is not a handler identity that names its node"
        ));
    };
    let usages = spec.usages.clone().unwrap_or_default();
    if !usages.iter().any(|u| u == "server auth") {
        return CsrDecision::Deny("usages must include \"server auth\"".into());
    }
    if let Some(u) = usages
        .iter()
        .find(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return CsrDecision::Deny(format!("usage {u:?} is not allowed"));
    }
    let want = handler_server_name(node);
    match requested_names(&spec.request.0) {
        Ok((cn, dns, others)) => {
            if cn.as_deref() != Some(want.as_str()) || dns != [want.clone()] || others {
                CsrDecision::Deny(format!(
                    "the handler of node {node} may ask only for CN and DNS name {want} (asked CN {cn:?}, DNS {dns:?}{})",
                    if others { ", and other names" } else { "" }
                ))
            } else {
                CsrDecision::Approve {
                    node: node.to_owned(),
                }
            }
        }
        Err(e) => CsrDecision::Deny(format!("the request cannot be read: {e}")),
    }
}

/// The CN, the DNS names and whether any other kind of name is asked for.
fn requested_names(pem: &[u8]) -> Result<(Option<String>, Vec<String>, bool), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| e.to_string())?;
    let (_, req) = X509CertificationRequest::from_der(&pem.contents).map_err(|e| e.to_string())?;
    let info = &req.certification_request_info;
    let cn = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_owned);
    let mut dns = Vec::new();
    let mut others = info.subject.iter().count() > 1;
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => dns.push((*d).to_owned()),
                    _ => others = true,
                }
            }
        }
    }
    Ok((cn, dns, others))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvirt_crds::wire::{HANDLER_SERVICE_ACCOUNT, NODE_NAME_EXTRA};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestSpec,
        CertificateSigningRequestStatus,
    };

    fn request(cn: &str, dns: &[&str]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        params
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap()
            .into_bytes()
    }

    fn csr(user: &str, node: Option<&str>, req: Vec<u8>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            spec: CertificateSigningRequestSpec {
                signer_name: HANDLER_SIGNER.into(),
                username: Some(user.into()),
                extra: node
                    .map(|n| BTreeMap::from([(NODE_NAME_EXTRA.to_owned(), vec![n.to_owned()])])),
                usages: Some(vec!["digital signature".into(), "server auth".into()]),
                request: ByteString(req),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_handler_gets_a_certificate_for_its_own_node_only() {
        let own = csr(
            HANDLER_SERVICE_ACCOUNT,
            Some("node-a"),
            request("node-a.ironvirt-handler", &["node-a.ironvirt-handler"]),
        );
        assert_eq!(
            decide(&own),
            CsrDecision::Approve {
                node: "node-a".into()
            }
        );
        // Node A asking for node B's name.
        let other = csr(
            HANDLER_SERVICE_ACCOUNT,
            Some("node-a"),
            request("node-b.ironvirt-handler", &["node-b.ironvirt-handler"]),
        );
        assert!(matches!(decide(&other), CsrDecision::Deny(m) if m.contains("node-a")));
        // An extra name, or a wildcard, besides its own.
        for dns in [
            &["node-a.ironvirt-handler", "node-b.ironvirt-handler"][..],
            &["node-a.ironvirt-handler", "*.ironvirt-handler"][..],
            &["ironvirt-handler"][..],
        ] {
            let c = csr(
                HANDLER_SERVICE_ACCOUNT,
                Some("node-a"),
                request("node-a.ironvirt-handler", dns),
            );
            assert!(matches!(decide(&c), CsrDecision::Deny(_)), "{dns:?}");
        }
    }

    #[test]
    fn requesters_without_a_node_are_denied() {
        let req = || request("node-a.ironvirt-handler", &["node-a.ironvirt-handler"]);
        // A token without the node-name claim (not a pod's bound token).
        assert!(matches!(
            decide(&csr(HANDLER_SERVICE_ACCOUNT, None, req())),
            CsrDecision::Deny(_)
        ));
        // Any other ServiceAccount, even with a node claim.
        assert!(matches!(
            decide(&csr(
                "system:serviceaccount:default:x",
                Some("node-a"),
                req()
            )),
            CsrDecision::Deny(_)
        ));
        let mut c = csr(HANDLER_SERVICE_ACCOUNT, Some("node-a"), req());
        c.spec.usages = Some(vec!["client auth".into(), "server auth".into()]);
        assert!(matches!(decide(&c), CsrDecision::Deny(m) if m.contains("client auth")));
        let mut c = csr(
            HANDLER_SERVICE_ACCOUNT,
            Some("node-a"),
            b"not a csr".to_vec(),
        );
        c.spec.usages = Some(vec!["server auth".into()]);
        assert!(matches!(decide(&c), CsrDecision::Deny(m) if m.contains("cannot be read")));
    }

    #[test]
    fn other_signers_and_decided_requests_are_left_alone() {
        let req = request("node-a.ironvirt-handler", &["node-a.ironvirt-handler"]);
        let mut c = csr(HANDLER_SERVICE_ACCOUNT, Some("node-a"), req);
        c.spec.signer_name = "kubernetes.io/kubelet-serving".into();
        assert_eq!(decide(&c), CsrDecision::Ignore);
        c.spec.signer_name = HANDLER_SIGNER.into();
        c.status = Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(decide(&c), CsrDecision::Ignore);
    }
}
