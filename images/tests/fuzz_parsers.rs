//! Parser fuzzing (issue #20): image references and image config blobs, both
//! from outside (a VM spec, a registry). Arbitrary and near-valid input never
//! panics and either parses or returns an error; a parsed reference prints
//! as a reference that parses back to itself. Deterministic seed;
//! `IRONVIRT_FUZZ_CASES` sets the number of cases.

use ironvirt_images::{ImageRef, PullPolicy, labels_of_config};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(seed: u64) -> Config {
    let cases = std::env::var("IRONVIRT_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2000);
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A valid example with mutations: truncated, characters replaced or
/// inserted (separators, non-ASCII, control characters), repeated.
fn mutated(valid: Vec<String>, pieces: Vec<&'static str>) -> impl Strategy<Value = String> {
    (
        prop::sample::select(valid),
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                prop::sample::select(pieces),
                0u8..4,
            ),
            1..4,
        ),
    )
        .prop_map(|(mut v, mutations)| {
            for (at, piece, how) in mutations {
                let chars: Vec<char> = v.chars().collect();
                let i = at.index(chars.len() + 1);
                let head: String = chars[..i].iter().collect();
                let tail: String = chars[i..].iter().collect();
                v = match how {
                    0 => head,
                    1 => format!("{head}{piece}{}", tail.chars().skip(1).collect::<String>()),
                    2 => format!("{head}{piece}{tail}"),
                    _ => format!("{head}{head}{tail}"),
                };
            }
            v
        })
}

fn references() -> Vec<String> {
    let digest = format!("sha256:{}", "ab".repeat(32));
    vec![
        "fedora".into(),
        "quay.io/containerdisks/fedora:41".into(),
        "localhost:5000/disk".into(),
        format!("registry.example.com:443/a/b/c@{digest}"),
        format!("ubuntu:24.04@{digest}"),
        "docker.io/library/alpine:latest".into(),
    ]
}

const REFERENCE_PIECES: &[&str] = &[
    "/",
    ":",
    "@",
    ".",
    "-",
    "_",
    "sha256:",
    "A",
    "\u{e9}",
    "\u{0}",
    " ",
    "//",
    "::",
    "@@",
    "localhost",
    "g",
    "0",
];

const CONFIGS: &[&str] = &[
    r#"{"architecture":"amd64","config":{"Labels":{"instancetype.kubevirt.io/default-instancetype":"u1.medium","a":"b"}},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    r#"{"config":{"Labels":null}}"#,
    r#"{"config":{}}"#,
    r#"{}"#,
];

const JSON_PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    ":",
    "null",
    "1e999999",
    "-0",
    "\\u0000",
    "\\ud800",
    "\u{e9}",
    "\u{0}",
    "true",
    "{\"Labels\":[]}",
];

proptest! {
    #![proptest_config(config(0x5eed_0005))]

    #[test]
    fn references_parse_or_refuse(
        s in prop_oneof![
            any::<String>(),
            mutated(references(), REFERENCE_PIECES.to_vec()),
        ],
        policy in prop::option::of(any::<String>()),
    ) {
        match ImageRef::parse(&s) {
            Ok(r) => {
                let printed = r.to_string();
                prop_assert_eq!(ImageRef::parse(&printed), Ok(r.clone()), "{:?}", s);
                let _ = PullPolicy::of(policy.as_deref(), &r);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn image_configs_parse_or_refuse(
        s in prop_oneof![
            any::<String>(),
            mutated(CONFIGS.iter().map(|c| (*c).to_owned()).collect(), JSON_PIECES.to_vec()),
        ],
    ) {
        match labels_of_config(&s) {
            Ok(labels) => prop_assert!(labels.len() <= s.len()),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}

#[test]
fn deeply_nested_configs_are_refused_not_a_stack_overflow() {
    for open in ["[", "{\"config\":"] {
        let deep = open.repeat(100_000);
        assert!(labels_of_config(&deep).is_err());
    }
    let huge_label = format!(
        r#"{{"config":{{"Labels":{{"a":"{}"}}}}}}"#,
        "x".repeat(1 << 20)
    );
    assert_eq!(
        labels_of_config(&huge_label).map(|l| l.get("a").map(String::len)),
        Ok(Some(1 << 20))
    );
}
