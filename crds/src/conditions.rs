//! Conditions that keep their transition time unless their status flips, and
//! comparisons that ignore timestamps, so status is written only when
//! something a user cares about changed.

use crate::VirtualMachineInstance;
use crate::vmi::{Condition, PhaseTransitionTimestamp, VirtualMachineInstancePhase};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";

/// The VMI's phase transitions with `phase` entered at `now`, unless it was
/// entered before: then its recorded time stays. The operator writes the
/// whole list; the handler, which under server-side apply owns only the
/// entries it writes, writes the entry for `phase` alone ([`transition`]).
pub fn transitions(
    vmi: &VirtualMachineInstance,
    phase: VirtualMachineInstancePhase,
    now: Timestamp,
) -> Vec<PhaseTransitionTimestamp> {
    let mut list = vmi
        .status
        .as_ref()
        .and_then(|s| s.phase_transition_timestamps.clone())
        .unwrap_or_default();
    if !list.iter().any(|t| t.phase == phase) {
        list.push(PhaseTransitionTimestamp {
            phase,
            phase_transition_timestamp: Time(now),
        });
    }
    list
}

/// The entry of [`transitions`] for `phase`.
pub fn transition(
    vmi: &VirtualMachineInstance,
    phase: VirtualMachineInstancePhase,
    now: Timestamp,
) -> PhaseTransitionTimestamp {
    transitions(vmi, phase, now)
        .into_iter()
        .find(|t| t.phase == phase)
        .unwrap_or(PhaseTransitionTimestamp {
            phase,
            phase_transition_timestamp: Time(now),
        })
}

/// A condition without timestamps; [`merge`] fills them in.
pub fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { TRUE } else { FALSE }.to_owned(),
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
        message: (!message.is_empty()).then(|| message.to_owned()),
        last_probe_time: None,
        last_transition_time: None,
    }
}

/// The new conditions, with each one's lastTransitionTime carried over from the
/// old condition of the same type when its status did not change, else `now`.
pub fn merge(old: Option<&[Condition]>, new: Vec<Condition>, now: Timestamp) -> Vec<Condition> {
    new.into_iter()
        .map(|mut c| {
            let previous = old
                .into_iter()
                .flatten()
                .find(|o| o.type_ == c.type_ && o.status == c.status);
            c.last_transition_time = previous
                .and_then(|p| p.last_transition_time.clone())
                .or(Some(Time(now)));
            c
        })
        .collect()
}

/// Whether two condition lists are equal apart from their timestamps.
pub fn eq_ignoring_time(a: Option<&[Condition]>, b: Option<&[Condition]>) -> bool {
    let strip =
        |cs: Option<&[Condition]>| -> Vec<(String, String, Option<String>, Option<String>)> {
            let mut v: Vec<_> = cs
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                    )
                })
                .collect();
            v.sort();
            v
        };
    strip(a) == strip(b)
}

/// The condition of `type_`, if any.
pub fn find<'a>(conditions: Option<&'a [Condition]>, type_: &str) -> Option<&'a Condition> {
    conditions.into_iter().flatten().find(|c| c.type_ == type_)
}

/// Whether the condition of `type_` is True.
pub fn is_true(conditions: Option<&[Condition]>, type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == TRUE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn transition_time_survives_unless_status_flips() {
        let first = merge(None, vec![condition("Ready", false, "A", "")], at(10));
        assert_eq!(first[0].last_transition_time, Some(Time(at(10))));
        let same = merge(
            Some(&first),
            vec![condition("Ready", false, "B", "m")],
            at(20),
        );
        assert_eq!(same[0].last_transition_time, Some(Time(at(10))));
        let flipped = merge(Some(&same), vec![condition("Ready", true, "", "")], at(30));
        assert_eq!(flipped[0].last_transition_time, Some(Time(at(30))));
    }

    #[test]
    fn equality_ignores_time_and_order() {
        let a = merge(
            None,
            vec![
                condition("Ready", true, "", ""),
                condition("Paused", false, "", ""),
            ],
            at(1),
        );
        let b = merge(
            None,
            vec![
                condition("Paused", false, "", ""),
                condition("Ready", true, "", ""),
            ],
            at(2),
        );
        assert!(eq_ignoring_time(Some(&a), Some(&b)));
        let c = vec![condition("Ready", false, "", "")];
        assert!(!eq_ignoring_time(Some(&a), Some(&c)));
        assert!(eq_ignoring_time(None, Some(&[])));
    }
}
