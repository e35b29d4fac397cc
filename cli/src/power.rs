//! Power operations: start/stop/restart on VMs and pause/unpause/soft-reboot/
//! reset on VMIs, as PUTs to the subresource API. The request bodies are
//! virtctl's, built by pure functions.

use http::Method;
use serde_json::{Value, json};

use crate::args::{StartArgs, StopArgs, VmiTarget};
use crate::client::Ctx;
use crate::error::{Error, Result};
use crate::status::{Kind, Subject};

/// A VM operation: the subresource API's, so ironctl asks for exactly what
/// ironvirt-api serves.
pub use ironvirt_crds::wire::VmOp;

/// A VMI operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmiOp {
    Pause,
    Unpause,
    SoftReboot,
    Reset,
}

impl VmiOp {
    /// The subresource's name.
    pub fn subresource(self) -> &'static str {
        match self {
            VmiOp::Pause => "pause",
            VmiOp::Unpause => "unpause",
            VmiOp::SoftReboot => "softreboot",
            VmiOp::Reset => "reset",
        }
    }

    /// The verb in messages.
    pub fn verb(self) -> &'static str {
        match self {
            VmiOp::Pause => "pause",
            VmiOp::Unpause => "unpause",
            VmiOp::SoftReboot => "soft-reboot",
            VmiOp::Reset => "reset",
        }
    }
}

fn with_dry_run(mut body: Value, dry_run: bool) -> Value {
    if dry_run {
        body["dryRun"] = json!(["All"]);
    }
    body
}

/// The start body: `{"paused": bool, "dryRun": ["All"]?}`.
pub fn start_body(paused: bool, dry_run: bool) -> Value {
    with_dry_run(json!({ "paused": paused }), dry_run)
}

/// The grace period a stop or restart asks for. Grace period 0 powers the
/// VMI off at once, so (as in virtctl) it takes --force; --force alone means 0.
pub fn grace_period(grace: Option<i64>, force: bool) -> Result<Option<i64>> {
    match (grace, force) {
        (Some(g), _) if g < 0 => Err(Error::Usage(format!(
            "--grace-period must not be negative, got {g}"
        ))),
        (None | Some(0), true) => Ok(Some(0)),
        (Some(g), true) => Err(Error::Usage(format!(
            "--force powers the VMI off at once (grace period 0); it does not go with --grace-period={g}"
        ))),
        (Some(0), false) => Err(Error::Usage(
            "--grace-period=0 powers the VMI off at once: add --force to confirm".into(),
        )),
        (g, false) => Ok(g),
    }
}

/// The stop body `{"gracePeriod": N?, "dryRun": …}` or the restart body
/// `{"gracePeriodSeconds": N?, "dryRun": …}`.
pub fn stop_body(op: VmOp, args: &StopArgs) -> Result<Value> {
    let key = match op {
        VmOp::Stop => "gracePeriod",
        VmOp::Restart => "gracePeriodSeconds",
        VmOp::Start => {
            return Err(Error::Usage("start takes no grace period".into()));
        }
    };
    let mut body = json!({});
    if let Some(g) = grace_period(args.grace_period, args.force)? {
        body[key] = json!(g);
    }
    Ok(with_dry_run(body, args.dry_run))
}

/// The message after an accepted VM operation.
pub fn vm_done(op: VmOp, name: &str, dry_run: bool) -> String {
    let suffix = if dry_run {
        " (dry run: nothing changed)"
    } else {
        ""
    };
    format!("VM {name} was scheduled to {}{suffix}", op.name())
}

/// `NAME`, `vm NAME` or `vmi NAME` → (the kind named, the name).
pub fn target(words: &[String]) -> Result<(Kind, &str)> {
    match words {
        [name] => Ok((Kind::Vmi, name)),
        [kind, name] => match kind.to_ascii_lowercase().as_str() {
            "vm" | "vms" | "virtualmachine" | "virtualmachines" => Ok((Kind::Vm, name)),
            "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => {
                Ok((Kind::Vmi, name))
            }
            other => Err(Error::Usage(format!(
                "unknown kind {other:?}: give NAME, `vm NAME` or `vmi NAME`"
            ))),
        },
        _ => Err(Error::Usage("give NAME, `vm NAME` or `vmi NAME`".into())),
    }
}

async fn vm_op(ctx: &Ctx, op: VmOp, name: &str, body: &Value, dry_run: bool) -> Result<()> {
    let subject = Subject {
        kind: Kind::Vm,
        name,
        namespace: &ctx.namespace,
    };
    let path = ctx.subresource_path("virtualmachines", name, op.name());
    ctx.expect_success(Method::PUT, &path, Some(body), &subject)
        .await?;
    crate::outln(&vm_done(op, name, dry_run))
}

/// `ironctl start`.
pub async fn start(ctx: &Ctx, args: &StartArgs) -> Result<()> {
    let body = start_body(args.paused, args.dry_run);
    vm_op(ctx, VmOp::Start, &args.vm, &body, args.dry_run).await
}

/// `ironctl stop` and `ironctl restart`.
pub async fn stop(ctx: &Ctx, op: VmOp, args: &StopArgs) -> Result<()> {
    let body = stop_body(op, args)?;
    vm_op(ctx, op, &args.vm, &body, args.dry_run).await
}

/// `ironctl pause|unpause|soft-reboot|reset`. A VM's VMI has the VM's name,
/// so `pause vm NAME` acts on that VMI.
pub async fn vmi_op(ctx: &Ctx, op: VmiOp, t: &VmiTarget) -> Result<()> {
    let (kind, name) = target(&t.words)?;
    let subject = Subject {
        kind: Kind::Vmi,
        name,
        namespace: &ctx.namespace,
    };
    let path = ctx.subresource_path("virtualmachineinstances", name, op.subresource());
    ctx.expect_success(Method::PUT, &path, None, &subject)
        .await?;
    let what = if kind == Kind::Vm { "VM" } else { "VMI" };
    crate::outln(&format!("{what} {name} was scheduled to {}", op.verb()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop_args(grace: Option<i64>, force: bool, dry_run: bool) -> StopArgs {
        StopArgs {
            vm: "v".into(),
            grace_period: grace,
            force,
            dry_run,
        }
    }

    #[test]
    fn start_bodies() {
        assert_eq!(start_body(false, false), json!({"paused": false}));
        assert_eq!(
            start_body(true, true),
            json!({"paused": true, "dryRun": ["All"]})
        );
    }

    #[test]
    fn stop_and_restart_bodies() {
        assert_eq!(
            stop_body(VmOp::Stop, &stop_args(None, false, false)).unwrap(),
            json!({})
        );
        assert_eq!(
            stop_body(VmOp::Stop, &stop_args(Some(30), false, true)).unwrap(),
            json!({"gracePeriod": 30, "dryRun": ["All"]})
        );
        assert_eq!(
            stop_body(VmOp::Stop, &stop_args(None, true, false)).unwrap(),
            json!({"gracePeriod": 0})
        );
        assert_eq!(
            stop_body(VmOp::Restart, &stop_args(Some(5), false, false)).unwrap(),
            json!({"gracePeriodSeconds": 5})
        );
        assert_eq!(
            stop_body(VmOp::Restart, &stop_args(Some(0), true, false)).unwrap(),
            json!({"gracePeriodSeconds": 0})
        );
    }

    #[test]
    fn grace_period_zero_needs_force() {
        let e = stop_body(VmOp::Stop, &stop_args(Some(0), false, false)).unwrap_err();
        assert_eq!(
            e.line(),
            "--grace-period=0 powers the VMI off at once: add --force to confirm"
        );
        assert!(stop_body(VmOp::Stop, &stop_args(Some(10), true, false)).is_err());
        assert!(grace_period(Some(-1), false).is_err());
        assert_eq!(grace_period(None, false).unwrap(), None);
    }

    #[test]
    fn messages() {
        assert_eq!(
            vm_done(VmOp::Start, "v", false),
            "VM v was scheduled to start"
        );
        assert_eq!(
            vm_done(VmOp::Stop, "v", true),
            "VM v was scheduled to stop (dry run: nothing changed)"
        );
    }

    #[test]
    fn targets() {
        let w = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        assert_eq!(target(&w(&["x"])).unwrap(), (Kind::Vmi, "x"));
        assert_eq!(target(&w(&["vm", "x"])).unwrap(), (Kind::Vm, "x"));
        assert_eq!(target(&w(&["VMI", "x"])).unwrap(), (Kind::Vmi, "x"));
        assert!(target(&w(&["pod", "x"])).is_err());
        assert!(target(&w(&[])).is_err());
    }
}
