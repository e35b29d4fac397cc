//! Is the VMI running? Read through kube-apiserver before a console or VNC
//! session, so that the user gets a clear line (and `--timeout` can wait).

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
        Observed::NotRunning { phase } => Decision::Fail(format!(
            "VirtualMachineInstance \"{name}\" is not running{after} (phase {phase})"
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

/// Waits up to `timeout` for the VMI to be running (0: looks once).
pub async fn wait_running(ctx: &Ctx, name: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    let mut told = false;
    loop {
        let seen = observe(ctx, name).await?;
        let waited = start.elapsed();
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
