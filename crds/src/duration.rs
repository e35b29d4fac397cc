//! Durations as the components' flags and ironctl take them: a number with
//! `ms`, `s`, `m`, `h` or `d`, or a bare number of seconds (`90`, `500ms`,
//! `5m`, `8760h`, `365d`).

use std::time::Duration;

/// Parses a flag's duration. The error is a sentence for the user.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("{s:?} is not a duration: use seconds, or a number with ms, s, m, h or d");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_and_a_bare_number() {
        for (s, want) in [
            ("90", Duration::from_secs(90)),
            (" 90s ", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("365d", Duration::from_secs(365 * 86_400)),
            ("0", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn refusals_say_what_is_accepted() {
        for s in ["", "-1", "5w", "m", "1.5h", "s5"] {
            let err = parse_duration(s).err();
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("ms, s, m, h or d")),
                "{s}: {err:?}"
            );
        }
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(
            parse_duration(&format!("{}d", u64::MAX / 2)).is_err_and(|e| e.contains("too long"))
        );
    }
}
