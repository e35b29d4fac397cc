//! Is the VMI running? Read through kube-apiserver before a console or VNC
//! session, so that the user gets a clear line (and `--timeout` can wait,
//! showing how the VMI's image pull goes meanwhile).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;

use crate::client::Ctx;
use crate::error::{Error, Result};
use crate::status::{Failure, Kind, Subject, describe};

/// What the API says about a VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Running,
    /// It exists in another phase (Pending, Scheduling, Scheduled, Succeeded, Failed, …).
    NotRunning {
        phase: String,
        /// How its image pull goes, if one is under way or failed ([`pull_note`]).
        pull: Option<String>,
    },
    /// No VMI; `vm` is the printableStatus of the VM of that name, if there is one.
    Missing {
        vm: Option<String>,
    },
    /// The user may not read VMIs: the subresource request will tell.
    Unknown,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Proceed,
    Wait,
    Fail(String),
}

/// Decides on an observation; `waited` is how long we waited so far, and
/// `time_left` whether the timeout allows another look.
pub fn decide(
    name: &str,
    namespace: &str,
    seen: &Observed,
    waited: Duration,
    time_left: bool,
) -> Decision {
    let after = if waited >= Duration::from_secs(1) {
        format!(" after waiting {} s", waited.as_secs())
    } else {
        String::new()
    };
    match seen {
        Observed::Running | Observed::Unknown => Decision::Proceed,
        _ if time_left => Decision::Wait,
        Observed::NotRunning { phase, pull: None } => Decision::Fail(format!(
            "VirtualMachineInstance \"{name}\" is not running{after} (phase {phase})"
        )),
        Observed::NotRunning {
            phase,
            pull: Some(pull),
        } => Decision::Fail(format!(
            "VirtualMachineInstance \"{name}\" is not running{after} (phase {phase}; {pull})"
        )),
        Observed::Missing { vm: None } => Decision::Fail(format!(
            "VirtualMachineInstance \"{name}\" not found in namespace \"{namespace}\"{after}"
        )),
        Observed::Missing { vm: Some(status) } => Decision::Fail(format!(
            "VirtualMachineInstance \"{name}\" does not exist{after}: VirtualMachine \"{name}\" is \
             {status} (start it with: ironctl start {name})"
        )),
    }
}

/// The phase of a VMI object (JSON), "Pending" when it has none yet.
pub fn phase_of(vmi: &Value) -> String {
    vmi.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("Pending")
        .to_owned()
}

/// The reasons of the VMI's Ready condition that are about its image:
/// the handler's download progress and kubelet's pull failures.
pub const PULL_REASONS: [&str; 3] = ["Pulling", "ErrImagePull", "ImagePullBackOff"];

/// How the VMI's image pull goes, from its Ready condition when that is
/// False for one of the [`PULL_REASONS`]: `Pulling: pulling quay.io/x:tag:
/// 12.3 MiB of 40.0 MiB (30%)`.
pub fn pull_note(vmi: &Value) -> Option<String> {
    let ready = vmi
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))?;
    if ready.get("status").and_then(Value::as_str) != Some("False") {
        return None;
    }
    let reason = ready.get("reason").and_then(Value::as_str)?;
    if !PULL_REASONS.contains(&reason) {
        return None;
    }
    match ready.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => Some(format!("{reason}: {m}")),
        _ => Some(reason.to_owned()),
    }
}

/// The line to print while waiting, if any: the pull note when it differs
/// from the one printed last (one line per change, none for the same).
pub fn changed_note<'a>(printed: Option<&str>, seen: &'a Observed) -> Option<&'a str> {
    match seen {
        Observed::NotRunning {
            pull: Some(note), ..
        } if printed != Some(note.as_str()) => Some(note),
        _ => None,
    }
}

async fn get(ctx: &Ctx, resource: &str, name: &str) -> Result<(u16, Value, Failure)> {
    let path = format!(
        "/apis/kubevirt.io/v1/namespaces/{}/{resource}/{name}",
        ctx.namespace
    );
    let reply = ctx.request(Method::GET, &path, None).await?;
    let value = if reply.is_success() {
        serde_json::from_slice(&reply.body).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    Ok((reply.code, value, reply.failure()))
}

/// Looks at the VMI (and, when it is missing, at the VM of the same name).
pub async fn observe(ctx: &Ctx, name: &str) -> Result<Observed> {
    let subject = Subject {
        kind: Kind::Vmi,
        name,
        namespace: &ctx.namespace,
    };
    let (code, vmi, failure) = get(ctx, "virtualmachineinstances", name).await?;
    match code {
        200 if phase_of(&vmi) == "Running" => Ok(Observed::Running),
        200 => Ok(Observed::NotRunning {
            phase: phase_of(&vmi),
            pull: pull_note(&vmi),
        }),
        401 | 403 => Ok(Observed::Unknown),
        404 if failure.reason == "NotFound" && failure.message.contains(name) => {
            let (code, vm, _) = get(ctx, "virtualmachines", name).await?;
            let vm = (code == 200).then(|| {
                vm.pointer("/status/printableStatus")
                    .and_then(Value::as_str)
                    .unwrap_or("not running")
                    .to_owned()
            });
            Ok(Observed::Missing { vm })
        }
        404 => Err(Error::Api(
            "the cluster does not serve kubevirt.io/v1 VirtualMachineInstances: is ironvirt (or \
             KubeVirt) installed?"
                .into(),
        )),
        _ => Err(Error::Api(describe(&subject, &failure))),
    }
}

/// Asks kube-apiserver whether the user may `verb` the `sub` subresource of
/// `resource` `name` in subresources.kubevirt.io (a SelfSubjectAccessReview,
/// which every authenticated user may create). Fails with a forbidden line
/// when not; when the review itself cannot be made, the real request decides.
pub async fn check_access(
    ctx: &Ctx,
    verb: &str,
    resource: &str,
    sub: &str,
    name: &str,
) -> Result<()> {
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "group": "subresources.kubevirt.io", "version": "v1", "resource": resource,
            "subresource": sub, "verb": verb, "namespace": ctx.namespace, "name": name,
        }},
    });
    let reply = ctx
        .request(
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(&review),
        )
        .await?;
    let allowed = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.pointer("/status/allowed").and_then(Value::as_bool));
    if reply.is_success() && allowed == Some(false) {
        return Err(Error::Api(forbidden_line(
            verb,
            resource,
            sub,
            name,
            &ctx.namespace,
        )));
    }
    Ok(())
}

/// The line for a denied access review, worded like kube-apiserver's.
pub fn forbidden_line(
    verb: &str,
    resource: &str,
    sub: &str,
    name: &str,
    namespace: &str,
) -> String {
    format!(
        "{resource}.subresources.kubevirt.io \"{name}\" is forbidden: you cannot {verb} resource \
         \"{resource}/{sub}\" in API group \"subresources.kubevirt.io\" in the namespace \"{namespace}\""
    )
}

/// Waits up to `timeout` for the VMI to be running (0: looks once). While
/// it waits, each new state of the VMI's image pull is a line on stderr.
pub async fn wait_running(ctx: &Ctx, name: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    let mut printed: Option<String> = None;
    loop {
        let seen = observe(ctx, name).await?;
        let waited = start.elapsed();
        if waited < timeout
            && let Some(note) = changed_note(printed.as_deref(), &seen)
        {
            eprintln!("{name}: {note}");
            printed = Some(note.to_owned());
        }
        match decide(name, &ctx.namespace, &seen, waited, waited < timeout) {
            Decision::Proceed => return Ok(()),
            Decision::Fail(m) => return Err(Error::Api(m)),
            Decision::Wait => {
                // Progress for a person at a terminal; scripts get only the result.
                if !told && std::io::stderr().is_terminal() {
                    eprintln!(
                        "waiting up to {} s for VirtualMachineInstance \"{name}\" to be running…",
                        timeout.as_secs()
                    );
                    told = true;
                }
                let left = timeout.saturating_sub(waited);
                tokio::time::sleep(left.min(Duration::from_secs(1))).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const S0: Duration = Duration::ZERO;

    #[test]
    fn running_or_unreadable_proceeds() {
        assert_eq!(
            decide("v", "ns", &Observed::Running, S0, false),
            Decision::Proceed
        );
        assert_eq!(
            decide("v", "ns", &Observed::Unknown, S0, false),
            Decision::Proceed
        );
    }

    #[test]
    fn waits_while_time_is_left() {
        let seen = Observed::NotRunning {
            phase: "Scheduling".into(),
            pull: None,
        };
        assert_eq!(decide("v", "ns", &seen, S0, true), Decision::Wait);
        assert_eq!(
            decide("v", "ns", &Observed::Missing { vm: None }, S0, true),
            Decision::Wait
        );
    }

    #[test]
    fn clear_lines_when_it_is_not_running() {
        let seen = Observed::NotRunning {
            phase: "Scheduling".into(),
            pull: None,
        };
        assert_eq!(
            decide("v", "ns", &seen, S0, false),
            Decision::Fail("VirtualMachineInstance \"v\" is not running (phase Scheduling)".into())
        );
        assert_eq!(
            decide("v", "ns", &seen, Duration::from_secs(30), false),
            Decision::Fail(
                "VirtualMachineInstance \"v\" is not running after waiting 30 s (phase Scheduling)"
                    .into()
            )
        );
        assert_eq!(
            decide("v", "ns", &Observed::Missing { vm: None }, S0, false),
            Decision::Fail("VirtualMachineInstance \"v\" not found in namespace \"ns\"".into())
        );
        assert_eq!(
            decide(
                "v",
                "ns",
                &Observed::Missing {
                    vm: Some("Stopped".into())
                },
                S0,
                false
            ),
            Decision::Fail(
                "VirtualMachineInstance \"v\" does not exist: VirtualMachine \"v\" is Stopped \
                 (start it with: ironctl start v)"
                    .into()
            )
        );
    }

    #[test]
    fn a_timeout_during_a_pull_says_how_the_pull_goes() {
        let seen = Observed::NotRunning {
            phase: "Scheduled".into(),
            pull: Some("ImagePullBackOff: pulling r/x:1: refused (retrying in 8 s)".into()),
        };
        assert_eq!(
            decide("v", "ns", &seen, Duration::from_secs(60), false),
            Decision::Fail(
                "VirtualMachineInstance \"v\" is not running after waiting 60 s (phase \
                 Scheduled; ImagePullBackOff: pulling r/x:1: refused (retrying in 8 s))"
                    .into()
            )
        );
    }

    #[test]
    fn pull_notes_come_from_the_ready_condition() {
        let with_ready = |ready: Value| {
            json!({"status": {"phase": "Scheduled", "conditions": [
                {"type": "Paused", "status": "False", "reason": "Pulling", "message": "not this"},
                ready,
            ]}})
        };
        let line = "pulling quay.io/x:tag: 12.3 MiB of 40.0 MiB (30%)";
        assert_eq!(
            pull_note(&with_ready(
                json!({"type": "Ready", "status": "False", "reason": "Pulling", "message": line})
            ))
            .as_deref(),
            Some("Pulling: pulling quay.io/x:tag: 12.3 MiB of 40.0 MiB (30%)")
        );
        assert_eq!(
            pull_note(&with_ready(
                json!({"type": "Ready", "status": "False", "reason": "ErrImagePull", "message": "pulling r/x: refused"})
            ))
            .as_deref(),
            Some("ErrImagePull: pulling r/x: refused")
        );
        assert_eq!(
            pull_note(&with_ready(
                json!({"type": "Ready", "status": "False", "reason": "ImagePullBackOff"})
            ))
            .as_deref(),
            Some("ImagePullBackOff")
        );
        // Other reasons, a true Ready, no Ready, no status: nothing.
        for ready in [
            json!({"type": "Ready", "status": "False", "reason": "QemuCrashed", "message": "x"}),
            json!({"type": "Ready", "status": "True", "reason": "Pulling", "message": "x"}),
            json!({"type": "Other", "status": "False", "reason": "Pulling", "message": "x"}),
        ] {
            assert_eq!(pull_note(&with_ready(ready)), None);
        }
        assert_eq!(pull_note(&json!({"status": {"phase": "Pending"}})), None);
        assert_eq!(pull_note(&Value::Null), None);
    }

    #[test]
    fn one_line_per_change_of_the_pull() {
        let pulling = |note: &str| Observed::NotRunning {
            phase: "Scheduled".into(),
            pull: Some(note.into()),
        };
        let a = pulling("Pulling: pulling r/x: 1.0 MiB of 4.0 MiB (25%)");
        let b = pulling("Pulling: pulling r/x: 2.0 MiB of 4.0 MiB (50%)");
        assert_eq!(
            changed_note(None, &a),
            Some("Pulling: pulling r/x: 1.0 MiB of 4.0 MiB (25%)")
        );
        assert_eq!(
            changed_note(Some("Pulling: pulling r/x: 1.0 MiB of 4.0 MiB (25%)"), &a),
            None
        );
        assert_eq!(
            changed_note(Some("Pulling: pulling r/x: 1.0 MiB of 4.0 MiB (25%)"), &b),
            Some("Pulling: pulling r/x: 2.0 MiB of 4.0 MiB (50%)")
        );
        let quiet = Observed::NotRunning {
            phase: "Scheduled".into(),
            pull: None,
        };
        assert_eq!(changed_note(Some("x"), &quiet), None);
        assert_eq!(changed_note(None, &Observed::Running), None);
        assert_eq!(changed_note(None, &Observed::Missing { vm: None }), None);
    }

    #[test]
    fn forbidden_is_worded_like_kube_apiserver() {
        assert_eq!(
            forbidden_line("get", "virtualmachineinstances", "vnc", "v", "ns"),
            "virtualmachineinstances.subresources.kubevirt.io \"v\" is forbidden: you cannot get \
             resource \"virtualmachineinstances/vnc\" in API group \"subresources.kubevirt.io\" in \
             the namespace \"ns\""
        );
    }

    #[test]
    fn phases() {
        assert_eq!(
            phase_of(&json!({"status": {"phase": "Running"}})),
            "Running"
        );
        assert_eq!(phase_of(&json!({"status": {}})), "Pending");
        assert_eq!(phase_of(&Value::Null), "Pending");
    }
}
