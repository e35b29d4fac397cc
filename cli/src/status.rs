//! Turning what the API answered (an HTTP code and, usually, a Kubernetes
//! Status body) into the one line a user reads. Pure: no client here.

use serde::Deserialize;

/// The API group of the subresources.
pub const SUBRESOURCES: &str = "subresources.kubevirt.io/v1";

/// A failed API answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

#[derive(Deserialize)]
struct StatusBody {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    reason: String,
}

/// At most this many characters of a body that is not a Status are shown.
const MAX_TEXT: usize = 300;

impl Failure {
    /// Reads a Status body; any other body is taken as text (first line, shortened).
    pub fn parse(code: u16, body: &[u8]) -> Failure {
        if let Ok(s) = serde_json::from_slice::<StatusBody>(body)
            && (s.kind == "Status" || !s.message.is_empty())
        {
            return Failure {
                code,
                reason: s.reason,
                message: one_line(&s.message),
            };
        }
        let text = String::from_utf8_lossy(body);
        let first = text.lines().map(str::trim).find(|l| !l.is_empty());
        let mut message: String = first.unwrap_or_default().chars().take(MAX_TEXT).collect();
        if first.is_some_and(|f| f.chars().count() > MAX_TEXT) {
            message.push('…');
        }
        Failure {
            code,
            reason: String::new(),
            message,
        }
    }
}

/// Collapses whitespace runs (newlines included) to single spaces.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The kind of object a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vm,
    Vmi,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vm => "VirtualMachine",
            Kind::Vmi => "VirtualMachineInstance",
        }
    }
}

/// The object a request is about.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub kind: Kind,
    pub name: &'a str,
    pub namespace: &'a str,
}

/// The line to print for `f`, a failed request about `subject`.
pub fn describe(subject: &Subject<'_>, f: &Failure) -> String {
    let Subject {
        kind,
        name,
        namespace,
    } = *subject;
    let msg = f.message.as_str();
    match f.code {
        401 => {
            let mut s =
                "unauthorized: kube-apiserver did not accept the credentials of your kubeconfig"
                    .to_owned();
            if !msg.is_empty() && !msg.eq_ignore_ascii_case("unauthorized") {
                s.push_str(&format!(" ({msg})"));
            }
            s
        }
        403 if msg.is_empty() => format!(
            "forbidden: you may not do this to {} \"{name}\" in namespace \"{namespace}\"",
            kind.name()
        ),
        // kube-apiserver's or ironvirt-api's RBAC message names user, verb and resource.
        403 => msg.to_owned(),
        404 if msg.is_empty()
            || msg.contains("could not find the requested resource")
            || msg.eq_ignore_ascii_case("404 page not found") =>
        {
            format!(
                "the cluster does not serve {SUBRESOURCES}: is ironvirt (or KubeVirt) installed, and is \
                 its APIService Available?"
            )
        }
        404 if msg.contains("not found") && msg.contains(&format!("\"{name}\"")) => {
            format!(
                "{} \"{name}\" not found in namespace \"{namespace}\"",
                kind.name()
            )
        }
        503 if msg.is_empty() || msg.eq_ignore_ascii_case("service unavailable") => format!(
            "the {SUBRESOURCES} API is unavailable: kube-apiserver cannot reach its server \
             (ironvirt-api)"
        ),
        // Conflicts, bad requests, invalid values, unavailable handlers: the
        // server's message says what is wrong.
        400 | 404 | 409 | 422 | 503 if !msg.is_empty() => msg.to_owned(),
        429 => format!("kube-apiserver is busy (429 Too Many Requests): {msg}"),
        code => {
            let reason = if f.reason.is_empty() {
                http::StatusCode::from_u16(code)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or("error")
                    .to_owned()
            } else {
                f.reason.clone()
            };
            if msg.is_empty() {
                format!("the API server answered {code} {reason}")
            } else {
                format!("the API server answered {code} {reason}: {msg}")
            }
        }
    }
}

/// The messages of an error and its sources, joined with ": ", skipping a
/// source whose text the previous message already contains.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let m = s.to_string();
        if !m.is_empty() && !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = s.source();
    }
    one_line(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMI: Subject<'static> = Subject {
        kind: Kind::Vmi,
        name: "web",
        namespace: "dev",
    };
    const VM: Subject<'static> = Subject {
        kind: Kind::Vm,
        name: "web",
        namespace: "dev",
    };

    fn status(code: u16, reason: &str, message: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        }))
        .unwrap()
    }

    fn line(s: &Subject<'_>, code: u16, body: &[u8]) -> String {
        describe(s, &Failure::parse(code, body))
    }

    #[test]
    fn forbidden_prints_the_servers_message() {
        let m = "virtualmachineinstances.subresources.kubevirt.io \"web\" is forbidden: User \"bob\" cannot get resource \"virtualmachineinstances/console\" in API group \"subresources.kubevirt.io\" in the namespace \"dev\"";
        assert_eq!(line(&VMI, 403, &status(403, "Forbidden", m)), m);
        assert_eq!(
            line(&VM, 403, b""),
            "forbidden: you may not do this to VirtualMachine \"web\" in namespace \"dev\""
        );
    }

    #[test]
    fn not_found_names_kind_name_and_namespace() {
        let body = status(404, "NotFound", "virtualmachineinstance \"web\" not found");
        assert_eq!(
            line(&VMI, 404, &body),
            "VirtualMachineInstance \"web\" not found in namespace \"dev\""
        );
        let body = status(404, "NotFound", "virtualmachine \"web\" not found");
        assert_eq!(
            line(&VM, 404, &body),
            "VirtualMachine \"web\" not found in namespace \"dev\""
        );
    }

    #[test]
    fn a_missing_api_is_told_apart_from_a_missing_object() {
        let body = status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        assert!(
            line(&VMI, 404, &body)
                .starts_with("the cluster does not serve subresources.kubevirt.io/v1")
        );
        assert!(line(&VMI, 404, b"404 page not found\n").starts_with("the cluster does not serve"));
        let other = status(
            404,
            "NotFound",
            "subresource \"x\" of virtualmachineinstances not found",
        );
        assert_eq!(
            line(&VMI, 404, &other),
            "subresource \"x\" of virtualmachineinstances not found"
        );
    }

    #[test]
    fn conflicts_and_bad_requests_print_the_message() {
        let body = status(
            409,
            "Conflict",
            "VM web is already running (runStrategy Always)",
        );
        assert_eq!(
            line(&VM, 409, &body),
            "VM web is already running (runStrategy Always)"
        );
        let body = status(409, "Conflict", "VMI web is not running (phase Pending)");
        assert_eq!(
            line(&VMI, 409, &body),
            "VMI web is not running (phase Pending)"
        );
        let body = status(400, "BadRequest", "starting a VM paused is not supported");
        assert_eq!(
            line(&VM, 400, &body),
            "starting a VM paused is not supported"
        );
    }

    #[test]
    fn unavailable_and_unauthorized() {
        assert!(line(&VMI, 503, b"service unavailable\n").contains("ironvirt-api"));
        let body = status(
            503,
            "ServiceUnavailable",
            "the handler of node n1 has not published its address",
        );
        assert_eq!(
            line(&VMI, 503, &body),
            "the handler of node n1 has not published its address"
        );
        assert_eq!(
            line(&VMI, 401, &status(401, "Unauthorized", "Unauthorized")),
            "unauthorized: kube-apiserver did not accept the credentials of your kubeconfig"
        );
    }

    #[test]
    fn anything_else_is_one_line_with_the_code() {
        assert_eq!(
            line(&VMI, 500, &status(500, "InternalError", "boom\nbang")),
            "the API server answered 500 InternalError: boom bang"
        );
        assert_eq!(
            line(&VMI, 502, b"<html>\n<body>bad gateway</body>\n</html>"),
            "the API server answered 502 Bad Gateway: <html>"
        );
        assert_eq!(
            line(&VMI, 500, b""),
            "the API server answered 500 Internal Server Error"
        );
        let long = "x".repeat(1000);
        let l = line(&VMI, 500, long.as_bytes());
        assert!(l.chars().count() < 400, "{l}");
        assert!(!l.contains('\n'));
    }

    #[test]
    fn chains_skip_repeated_text() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        let e = E(
            "client error (Connect)",
            Some(Box::new(E(
                "tcp connect error",
                Some(Box::new(E("Connection refused", None))),
            ))),
        );
        assert_eq!(
            chain(&e),
            "client error (Connect): tcp connect error: Connection refused"
        );
        let e = E(
            "failed: Connection refused",
            Some(Box::new(E("Connection refused", None))),
        );
        assert_eq!(chain(&e), "failed: Connection refused");
    }
}
