//! Parser fuzzing (issue #20): quantities, durations and label selectors
//! fed arbitrary and near-valid input never panic, and either parse or
//! return an error. Deterministic seed; `IRONVIRT_FUZZ_CASES` sets the
//! number of cases per property (`make fuzz` runs many more).

use std::time::Duration;

use ironvirt_crds::duration::parse_duration;
use ironvirt_crds::quantity::parse_quantity;
use ironvirt_crds::validate::{label_selector, selector_matches, selects_everything};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::core::Selector;
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

/// A valid example with one mutation: truncated, a character replaced, a
/// huge number or exponent spliced in, or repeated.
fn mutated(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "",
        "9",
        ".",
        "-",
        "+",
        "e",
        "E",
        "e308",
        "e-400",
        "e99999999999",
        "Ei",
        "m",
        "ms",
        "d",
        "\u{e9}",
        "\u{0}",
        " ",
        "99999999999999999999999999",
        "18446744073709551615",
        "9223372036854775808",
        "NaN",
        "inf",
    ]);
    (
        prop::sample::select(valid.to_vec()),
        any::<prop::sample::Index>(),
        pieces,
        0u8..4,
    )
        .prop_map(|(v, at, piece, how)| {
            let chars: Vec<char> = v.chars().collect();
            let i = at.index(chars.len() + 1);
            let (head, tail): (String, String) =
                (chars[..i].iter().collect(), chars[i..].iter().collect());
            match how {
                0 => head,
                1 => format!("{head}{piece}{}", tail.chars().skip(1).collect::<String>()),
                2 => format!("{head}{piece}{tail}"),
                _ => v.repeat(1 + i),
            }
        })
}

const QUANTITIES: &[&str] = &[
    "128Mi", "1024M", "500m", "2", "1e3", "1.5Gi", "+3Ki", "0.1", "4Ei",
];
const DURATIONS: &[&str] = &["90", " 90s ", "500ms", "5m", "1h", "365d", "0"];

proptest! {
    #![proptest_config(config(0x5eed_0001))]

    #[test]
    fn quantities_parse_or_refuse(s in prop_oneof![any::<String>(), mutated(QUANTITIES)]) {
        for millis in [false, true] {
            // Whatever the input, an answer (no panic); a value is never
            // negative for an input without '-'.
            if let Some(v) = parse_quantity(&Quantity(s.clone()), millis) {
                prop_assert!(v >= 0 || s.contains('-'), "{s:?} gave {v}");
            }
        }
    }

    #[test]
    fn durations_parse_or_refuse(s in prop_oneof![any::<String>(), mutated(DURATIONS)]) {
        match parse_duration(&s) {
            // An accepted duration is at most u64::MAX seconds, and its digits
            // are ASCII digits.
            Ok(d) => prop_assert!(d <= Duration::from_secs(u64::MAX)),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}

fn label_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9]([-a-z0-9._]{0,10}[a-z0-9])?",
        "([a-z0-9.]{1,20}/)?[a-zA-Z0-9]([-a-zA-Z0-9._]{0,70}[a-zA-Z0-9])?",
        Just(String::new()),
        Just("a".repeat(300)),
        Just("kubevirt.io/".to_owned()),
        Just("/a".to_owned()),
    ]
}

fn selectors() -> impl Strategy<Value = LabelSelector> {
    let operator = prop_oneof![
        Just("In".to_owned()),
        Just("NotIn".to_owned()),
        Just("Exists".to_owned()),
        Just("DoesNotExist".to_owned()),
        any::<String>(),
    ];
    let requirement = (
        label_text(),
        operator,
        prop::option::of(prop::collection::vec(label_text(), 0..4)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator,
            values,
        });
    (
        prop::option::of(prop::collection::btree_map(
            label_text(),
            label_text(),
            0..4,
        )),
        prop::option::of(prop::collection::vec(requirement, 0..4)),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

proptest! {
    #![proptest_config(config(0x5eed_0002))]

    #[test]
    fn selectors_validate_and_match_without_panicking(
        selector in selectors(),
        labels in prop::collection::btree_map(label_text(), label_text(), 0..4),
    ) {
        let errors = label_selector(&selector, "spec.selector");
        let _ = selects_everything(&selector);
        let _ = selector_matches(&selector, &labels);
        if errors.is_empty() {
            // What validation accepts, the matcher can use (selector_matches
            // would otherwise match nothing, silently) ...
            prop_assert!(Selector::try_from(selector.clone()).is_ok(), "{selector:?}");
            // ... and labels that include matchLabels match it.
            if selector.match_expressions.as_ref().is_none_or(|e| e.is_empty()) {
                let mut with_own = labels.clone();
                with_own.extend(selector.match_labels.clone().unwrap_or_default());
                prop_assert!(selector_matches(&selector, &with_own), "{selector:?}");
            }
        }
    }
}
