use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use ironvirt_crds::wire::{API_CLIENT_CN, HANDLER_SERVER_NAME};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use serde_json::json;

use super::parse::cert_with_key;
use super::*;

fn at(t: i64) -> Timestamp {
    Timestamp::from_second(t).unwrap()
}

const T0: i64 = 1_800_000_000;

fn cfg() -> CertConfig {
    CertConfig {
        ca_validity: Duration::from_secs(3000),
        leaf_validity: Duration::from_secs(600),
        ca_propagation: Duration::from_secs(100),
        resync: Duration::from_secs(10_000),
        ..CertConfig::default()
    }
}

fn existing(d: &Desired) -> Existing {
    Existing {
        ca: Some(d.ca.clone()),
        api: Some(d.api.clone()),
        handler: Some(d.handler.clone()),
    }
}

fn first(pem: &[u8]) -> CertInfo {
    parse_certs(pem).into_iter().next().unwrap()
}

/// Plans and issues at `t`.
fn step(e: &Existing, cfg: &CertConfig, t: i64) -> (Plan, Desired) {
    let p = plan(e, cfg, at(t));
    let d = issue(e, &p, cfg, at(t)).unwrap();
    (p, d)
}

#[test]
fn nothing_yet_issues_everything() {
    let cfg = cfg();
    let (p, d) = step(&Existing::default(), &cfg, T0);
    assert!(matches!(p.ca, CaPlan::Generate(Reason::Missing(_))));
    assert!(matches!(p.api_serving, Some(Reason::Missing(_))));
    assert!(matches!(p.api_client, Some(Reason::Missing(_))));
    assert!(matches!(p.handler_serving, Some(Reason::Missing(_))));

    let ca = first(&d.ca[TLS_CRT]);
    assert!(ca.is_ca);
    assert_eq!(ca.common_name.as_deref(), Some("ironvirt-ca@1800000000"));
    assert_eq!((ca.not_before, ca.not_after), (T0, T0 + 3000));
    assert_eq!(d.bundle, d.ca[TLS_CRT]);
    for data in [&d.api, &d.handler, &d.ca] {
        assert_eq!(data[CA_CRT], d.bundle);
    }

    let serving = first(&d.api[TLS_CRT]);
    assert_eq!(serving.issuer, ca.subject);
    assert_eq!(
        serving.dns_names,
        [
            "ironvirt-api",
            "ironvirt-api.ironvirt-system",
            "ironvirt-api.ironvirt-system.svc",
            "ironvirt-api.ironvirt-system.svc.cluster.local"
        ]
    );
    assert_eq!((serving.not_before, serving.not_after), (T0 - 60, T0 + 600));
    let client = first(&d.api[CLIENT_CRT]);
    assert_eq!(client.common_name.as_deref(), Some(API_CLIENT_CN));
    assert!(client.dns_names.is_empty());
    let handler = first(&d.handler[TLS_CRT]);
    assert_eq!(
        handler.dns_names,
        [HANDLER_SERVER_NAME, "*.ironvirt-handler"]
    );
    assert_eq!(handler.issuer, ca.subject);
    // Every certificate matches its key.
    for (c, k) in [
        (&d.ca[TLS_CRT], &d.ca[TLS_KEY]),
        (&d.api[TLS_CRT], &d.api[TLS_KEY]),
        (&d.api[CLIENT_CRT], &d.api[CLIENT_KEY]),
        (&d.handler[TLS_CRT], &d.handler[TLS_KEY]),
    ] {
        cert_with_key(Some(c), Some(k)).unwrap();
    }
}

#[test]
fn a_current_set_is_left_alone_until_two_thirds_of_a_lifetime() {
    let cfg = cfg();
    let (_, d) = step(&Existing::default(), &cfg, T0);
    let e = existing(&d);
    let (p, again) = step(&e, &cfg, T0 + 10);
    assert!(!p.issues_anything(), "{p:?}");
    assert_eq!(again, d, "nothing changes");
    // Leaves: 660 s of life from T0-60, renewed at T0-60+440.
    assert_eq!(p.next_check, T0 + 380);

    let (p, rotated) = step(&e, &cfg, T0 + 380);
    assert!(matches!(p.ca, CaPlan::Keep(_)));
    assert_eq!(p.api_serving, Some(Reason::Expiring));
    assert_eq!(p.api_client, Some(Reason::Expiring));
    assert_eq!(p.handler_serving, Some(Reason::Expiring));
    assert_eq!(rotated.ca, d.ca);
    assert_ne!(rotated.api[TLS_CRT], d.api[TLS_CRT]);
    assert_ne!(rotated.api[TLS_KEY], d.api[TLS_KEY]);
    assert_ne!(rotated.handler[TLS_CRT], d.handler[TLS_CRT]);
}

#[test]
fn a_new_ca_is_bundled_first_and_used_after_propagation() {
    let cfg = cfg();
    let (_, d) = step(&Existing::default(), &cfg, T0);
    let old_ca = first(&d.ca[TLS_CRT]);
    // Fresh leaves shortly before the CA's renewal time (T0 + 2000).
    let (_, d) = step(&existing(&d), &cfg, T0 + 1900);
    let leaves_before = (d.api.clone(), d.handler.clone());

    let (p, d) = step(&existing(&d), &cfg, T0 + 2000);
    assert_eq!(p.ca, CaPlan::Generate(Reason::Expiring));
    assert_eq!(
        (&p.api_serving, &p.api_client, &p.handler_serving),
        (&None, &None, &None),
        "leaves wait until the new CA is trusted everywhere"
    );
    assert_eq!(p.next_check, T0 + 2100);
    let bundle = parse_certs(&d.bundle);
    let new_ca = first(&d.ca[TLS_CRT]);
    assert_eq!(bundle.len(), 2);
    assert_eq!(bundle[0].subject, new_ca.subject);
    assert_eq!(bundle[1].subject, old_ca.subject);
    assert_eq!(d.api[TLS_CRT], leaves_before.0[TLS_CRT]);
    assert_eq!(d.handler[TLS_CRT], leaves_before.1[TLS_CRT]);
    assert_eq!(d.api[CA_CRT], d.bundle, "the bundle reaches every Secret");

    let (p, d) = step(&existing(&d), &cfg, T0 + 2100);
    assert!(matches!(p.ca, CaPlan::Keep(_)));
    assert_eq!(p.api_serving, Some(Reason::NewCa));
    assert_eq!(p.handler_serving, Some(Reason::NewCa));
    for pem in [&d.api[TLS_CRT], &d.api[CLIENT_CRT], &d.handler[TLS_CRT]] {
        assert_eq!(first(pem).issuer, new_ca.subject);
    }
    assert_eq!(parse_certs(&d.bundle).len(), 2);

    // Once the old CA expires it leaves the bundle.
    let (_, d) = step(&existing(&d), &cfg, T0 + 3000);
    let bundle = parse_certs(&d.bundle);
    assert_eq!(bundle.len(), 1);
    assert_eq!(bundle[0].subject, new_ca.subject);
}

#[test]
fn leaves_never_outlive_their_ca() {
    let cfg = CertConfig {
        leaf_validity: Duration::from_secs(10_000),
        ..cfg()
    };
    let (_, d) = step(&Existing::default(), &cfg, T0);
    assert_eq!(first(&d.api[TLS_CRT]).not_after, T0 + 3000);
}

#[test]
fn a_lost_ca_reissues_every_leaf() {
    let cfg = cfg();
    let (_, d) = step(&Existing::default(), &cfg, T0);
    let e = Existing {
        ca: None,
        ..existing(&d)
    };
    let (p, d2) = step(&e, &cfg, T0 + 10);
    assert!(matches!(p.ca, CaPlan::Generate(Reason::Missing(_))));
    assert_eq!(p.api_serving, Some(Reason::Untrusted));
    assert_eq!(p.handler_serving, Some(Reason::Untrusted));
    assert_eq!(
        first(&d2.handler[TLS_CRT]).issuer,
        first(&d2.ca[TLS_CRT]).subject
    );
}

#[test]
fn wrong_keys_and_changed_names_reissue() {
    let cfg = cfg();
    let (_, d) = step(&Existing::default(), &cfg, T0);
    let mut e = existing(&d);
    if let Some(h) = e.handler.as_mut() {
        h.insert(TLS_KEY.into(), d.api[TLS_KEY].clone());
    }
    let p = plan(&e, &cfg, at(T0 + 1));
    assert!(
        matches!(p.handler_serving, Some(Reason::Missing(ref m)) if m.contains("does not match"))
    );
    assert_eq!(p.api_serving, None);

    let moved = CertConfig {
        namespace: "virt".into(),
        ..cfg.clone()
    };
    let p = plan(&existing(&d), &moved, at(T0 + 1));
    assert_eq!(p.api_serving, Some(Reason::NamesChanged));
    assert_eq!(p.api_client, None);
    assert_eq!(p.handler_serving, None);

    // A CA Secret whose certificate is not a CA is replaced.
    let mut e = existing(&d);
    if let Some(ca) = e.ca.as_mut() {
        ca.insert(TLS_CRT.into(), d.handler[TLS_CRT].clone());
        ca.insert(TLS_KEY.into(), d.handler[TLS_KEY].clone());
    }
    let p = plan(&e, &cfg, at(T0 + 1));
    assert!(matches!(p.ca, CaPlan::Generate(Reason::Missing(_))));
}

#[test]
fn apiservice_patch_only_when_the_bundle_differs() {
    let svc: APIService = serde_json::from_value(json!({
        "metadata": {"name": "v1.subresources.kubevirt.io"},
        "spec": {"group": "subresources.kubevirt.io", "version": "v1",
            "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": "ironvirt-system", "name": "ironvirt-api", "port": 443}},
    }))
    .unwrap();
    let p = apiservice_patch(&svc, b"PEM").unwrap();
    assert_eq!(p["spec"]["caBundle"], "UEVN");
    assert!(p["spec"]["insecureSkipTLSVerify"].is_null());
    let mut patched = svc.clone();
    if let Some(s) = patched.spec.as_mut() {
        s.ca_bundle = Some(ByteString(b"PEM".to_vec()));
    }
    assert_eq!(apiservice_patch(&patched, b"PEM"), None);
    let mut local = svc;
    if let Some(s) = local.spec.as_mut() {
        s.service = None;
    }
    assert_eq!(apiservice_patch(&local, b"OTHER"), None);
}

#[test]
fn webhook_patch_sets_each_differing_entry_by_index_and_name() {
    let cfg: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "ironvirt-validator"},
        "webhooks": [
            {"name": "a.ironvirt.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
             "clientConfig": {"service": {"namespace": "ironvirt-system", "name": "ironvirt-api"}, "caBundle": "UEVN"}},
            {"name": "b.ironvirt.io", "sideEffects": "None", "admissionReviewVersions": ["v1"],
             "clientConfig": {"service": {"namespace": "ironvirt-system", "name": "ironvirt-api"}}},
        ],
    }))
    .unwrap();
    let p = webhook_patch(validating_clients(&cfg), b"PEM").unwrap();
    let ops = serde_json::to_value(&p).unwrap();
    assert_eq!(
        ops,
        json!([
            {"op": "test", "path": "/webhooks/1/name", "value": "b.ironvirt.io"},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": "UEVN"},
        ])
    );
    let mut doc = serde_json::to_value(&cfg).unwrap();
    json_patch::patch(&mut doc, &p).unwrap();
    let patched: ValidatingWebhookConfiguration = serde_json::from_value(doc).unwrap();
    assert_eq!(webhook_patch(validating_clients(&patched), b"PEM"), None);
    // A new bundle touches both.
    let p = webhook_patch(validating_clients(&patched), b"NEW").unwrap();
    assert_eq!(
        serde_json::to_value(&p).unwrap().as_array().unwrap().len(),
        4
    );
}

#[test]
fn restart_patch_follows_the_fingerprint() {
    let data = BTreeMap::from([("tls.crt".to_owned(), b"x".to_vec())]);
    let f = fingerprint(&data);
    assert_eq!(f.len(), 16);
    assert_eq!(f, fingerprint(&data.clone()), "stable");
    let mut other = data.clone();
    other.insert("ca.crt".into(), b"y".to_vec());
    assert_ne!(f, fingerprint(&other));

    let p = restart_patch(None, &f).unwrap();
    assert_eq!(
        p["spec"]["template"]["metadata"]["annotations"][FINGERPRINT_ANNOTATION],
        f.as_str()
    );
    let meta = ObjectMeta {
        annotations: Some(BTreeMap::from([(
            FINGERPRINT_ANNOTATION.to_owned(),
            f.clone(),
        )])),
        ..Default::default()
    };
    assert_eq!(restart_patch(Some(&meta), &f), None);
    assert!(restart_patch(Some(&meta), "0000000000000000").is_some());
}

/// The certificate flags, parsed as the operator's command line parses them.
#[derive(Debug, Parser)]
struct Flags {
    #[command(flatten)]
    certs: CertArgs,
}

fn flags(args: &[&str]) -> Result<CertConfig, clap::Error> {
    Flags::try_parse_from(std::iter::once("ironvirt-operator").chain(args.iter().copied()))
        .map(|f| f.certs.config())
}

#[test]
fn duration_flags_parse_with_the_shared_parser() {
    let c = flags(&[]).unwrap();
    assert_eq!(c.ca_validity, Duration::from_secs(1825 * 86_400));
    assert_eq!(c.leaf_validity, Duration::from_secs(365 * 86_400));
    assert_eq!(c.ca_propagation, Duration::from_secs(3600));
    assert_eq!(c.resync, Duration::from_secs(600));
    let c = flags(&[
        "--ca-validity",
        "8760h",
        "--cert-validity",
        "2d",
        "--ca-propagation",
        "90s",
    ])
    .unwrap();
    assert_eq!(c.ca_validity, Duration::from_secs(8760 * 3600));
    assert_eq!(c.leaf_validity, Duration::from_secs(172_800));
    assert_eq!(c.ca_propagation, Duration::from_secs(90));
    assert!(flags(&["--cert-validity", "1w"]).is_err());
    assert!(flags(&["--cert-resync", "h"]).is_err());
}

#[test]
fn empty_names_switch_a_target_off() {
    let c = flags(&["--cert-apiservice", "", "--cert-handler-daemonset", ""]).unwrap();
    assert_eq!(c.apiservice, None);
    assert_eq!(c.handler_daemonset, None);
    assert_eq!(c.validating_webhook.as_deref(), Some("ironvirt-validator"));
}

#[test]
fn garbage_is_not_a_certificate() {
    assert!(parse_certs(b"not pem").is_empty());
    assert!(
        parse_certs(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_empty()
    );
}
