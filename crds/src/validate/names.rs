//! Names: DNS labels and subdomains, label keys and values.

/// An RFC 1123 label: at most 63 lowercase alphanumerics or '-', starting and
/// ending with an alphanumeric.
pub fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("must be an RFC 1123 label: at most 63 lowercase letters, digits or '-', starting and ending with a letter or digit".into())
    }
}

/// An RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(|l| dns_label(l).is_ok())
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn name_part(s: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    !s.is_empty()
        && s.len() <= 63
        && edge(s.chars().next())
        && edge(s.chars().last())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A label key: an optional DNS subdomain prefix and '/', then a name.
pub(super) fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if prefix.is_some_and(|p| !dns_subdomain(p)) {
        return Err("the prefix must be a DNS subdomain (for example example.com)".into());
    }
    if !name_part(name) {
        return Err("must be at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric, with an optional DNS subdomain prefix and '/'".into());
    }
    Ok(())
}

/// A label value: empty, or a name part.
pub(super) fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || name_part(s) {
        Ok(())
    } else {
        Err("must be empty or at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric".into())
    }
}
