//! VM start / stop / restart: what each request means for each runStrategy,
//! as pure functions returning the change to make (or the error to answer);
//! and VM migrate: the VirtualMachineInstanceMigration to create.

use ironvirt_crds::migration::{
    MIGRATE_GENERATE_NAME, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
};
use ironvirt_crds::vm::{StateChangeAction, StateChangeRequest};
use ironvirt_crds::wire::VmOp;
use ironvirt_crds::{
    RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePhase,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The request bodies virtctl sends: `{paused, dryRun}` for start,
/// `{gracePeriod, dryRun}` for stop, `{gracePeriodSeconds, dryRun}` for restart.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpOptions {
    #[serde(default)]
    pub paused: bool,
    /// virtctl sends `["All"]`; a bool is accepted too.
    #[serde(default)]
    pub dry_run: Option<Value>,
    #[serde(default)]
    pub grace_period: Option<i64>,
    #[serde(default)]
    pub grace_period_seconds: Option<i64>,
}

/// Whether a request's `dryRun` asks for a dry run: `["All"]` as virtctl
/// sends it, a non-empty string, or true.
fn dry_run(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        _ => false,
    }
}

impl OpOptions {
    pub fn is_dry_run(&self) -> bool {
        dry_run(self.dry_run.as_ref())
    }

    pub fn grace(&self) -> Option<i64> {
        self.grace_period.or(self.grace_period_seconds)
    }
}

/// The change a request makes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A merge patch of the VM's spec (runStrategy / running).
    Spec(Value),
    /// Replace status.stateChangeRequests (with the VM's resourceVersion as precondition).
    Requests(Vec<StateChangeRequest>),
    /// Delete the VMI (the VM controller starts a new one).
    DeleteVmi,
}

/// What to do: the change, and the grace period to set on the VMI first.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub change: Change,
    pub vmi_grace: Option<i64>,
}

/// An answer other than 202.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// 409 Conflict.
    #[error("{0}")]
    Conflict(String),
    /// 400 Bad Request.
    #[error("{0}")]
    BadRequest(String),
}

fn strategy_name(s: RunStrategy) -> &'static str {
    match s {
        RunStrategy::Always => "Always",
        RunStrategy::RerunOnFailure => "RerunOnFailure",
        RunStrategy::Once => "Once",
        RunStrategy::Manual => "Manual",
        RunStrategy::Halted => "Halted",
    }
}

fn vmi_live(vmi: Option<&VirtualMachineInstance>) -> bool {
    vmi.is_some_and(|v| {
        v.metadata.deletion_timestamp.is_none()
            && !v
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| p.is_final())
    })
}

/// A spec patch that sets the run strategy the way the VM expresses it:
/// `running` when the VM uses it, else `runStrategy`.
fn set_strategy(vm: &VirtualMachine, to: RunStrategy) -> Value {
    if vm.spec.running.is_some() {
        json!({"spec": {"running": to == RunStrategy::Always}})
    } else {
        json!({"spec": {"runStrategy": strategy_name(to)}})
    }
}

/// Plans `op` on `vm`, whose VMI (same name) is `vmi`.
pub fn plan(
    vm: &VirtualMachine,
    vmi: Option<&VirtualMachineInstance>,
    op: VmOp,
    opts: &OpOptions,
) -> Result<Plan, OpError> {
    let name = vm.metadata.name.as_deref().unwrap_or_default();
    let strategy = vm.spec.effective_run_strategy();
    let pending = vm
        .status
        .as_ref()
        .and_then(|s| s.state_change_requests.clone())
        .unwrap_or_default();
    if !pending.is_empty() {
        let what = match pending[0].action {
            StateChangeAction::Start => "start",
            StateChangeAction::Stop => "stop",
        };
        return Err(OpError::Conflict(format!(
            "VM {name}: a {what} request is already underway"
        )));
    }
    if let Some(g) = opts.grace()
        && g < 0
    {
        return Err(OpError::BadRequest(format!(
            "grace period must not be negative, got {g}"
        )));
    }
    let live = vmi_live(vmi);
    let vmi_uid = vmi.and_then(|v| v.metadata.uid.clone());
    let change = match op {
        VmOp::Start => {
            if opts.paused {
                return Err(OpError::BadRequest(
                    "starting a VM paused is not supported by ironvirt yet; set \
                     spec.template.spec.startStrategy: Paused instead"
                        .into(),
                ));
            }
            match strategy {
                RunStrategy::Always => {
                    return Err(OpError::Conflict(format!(
                        "VM {name} is already running (runStrategy Always)"
                    )));
                }
                RunStrategy::Halted => Change::Spec(set_strategy(vm, RunStrategy::Always)),
                RunStrategy::Once => {
                    return Err(OpError::Conflict(format!(
                        "VM {name} has runStrategy Once: it runs once and is not started again"
                    )));
                }
                _ if live => {
                    return Err(OpError::Conflict(format!("VM {name} is already running")));
                }
                _ => Change::Requests(vec![request(StateChangeAction::Start, None)]),
            }
        }
        VmOp::Stop => match strategy {
            RunStrategy::Halted if !live => {
                return Err(OpError::Conflict(format!("VM {name} is not running")));
            }
            RunStrategy::Manual => {
                if !live {
                    return Err(OpError::Conflict(format!("VM {name} is not running")));
                }
                Change::Requests(vec![request(StateChangeAction::Stop, vmi_uid)])
            }
            _ => Change::Spec(set_strategy(vm, RunStrategy::Halted)),
        },
        VmOp::Restart => {
            if strategy == RunStrategy::Once {
                return Err(OpError::Conflict(format!(
                    "VM {name} has runStrategy Once: it cannot be restarted"
                )));
            }
            if strategy == RunStrategy::Halted || !live {
                return Err(OpError::Conflict(format!(
                    "VM {name} is not running; start it instead"
                )));
            }
            Change::Requests(vec![
                request(StateChangeAction::Stop, vmi_uid),
                request(StateChangeAction::Start, None),
            ])
        }
    };
    Ok(Plan {
        change,
        vmi_grace: if live { opts.grace() } else { None },
    })
}

fn request(action: StateChangeAction, uid: Option<String>) -> StateChangeRequest {
    StateChangeRequest {
        action,
        data: None,
        uid,
    }
}

/// The body of `virtualmachines/{name}/migrate`: KubeVirt's MigrateOptions.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOptions {
    /// virtctl sends `["All"]`; a bool is accepted too.
    #[serde(default)]
    pub dry_run: Option<Value>,
    /// Node labels the target node must carry, copied into the migration.
    #[serde(default)]
    pub added_node_selector: Option<std::collections::BTreeMap<String, String>>,
}

impl MigrateOptions {
    pub fn is_dry_run(&self) -> bool {
        dry_run(self.dry_run.as_ref())
    }
}

/// The migration to create for `migrate` on the VM `name`, whose VMI (same
/// name) is `vmi`: 409 unless the VMI is Running (KubeVirt's message; a VM
/// with no VMI is not running either).
pub fn plan_migration(
    name: &str,
    vmi: Option<&VirtualMachineInstance>,
    opts: &MigrateOptions,
) -> Result<VirtualMachineInstanceMigration, OpError> {
    let running = vmi.and_then(|v| v.status.as_ref()).and_then(|s| s.phase)
        == Some(VirtualMachineInstancePhase::Running);
    if !running {
        return Err(OpError::Conflict(format!(
            "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"{name}\": VM is not running"
        )));
    }
    let mut migration = VirtualMachineInstanceMigration::new(
        "",
        VirtualMachineInstanceMigrationSpec {
            vmi_name: name.to_owned(),
            added_node_selector: opts.added_node_selector.clone().filter(|s| !s.is_empty()),
        },
    );
    migration.metadata.name = None;
    migration.metadata.generate_name = Some(MIGRATE_GENERATE_NAME.to_owned());
    Ok(migration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(spec: &str, status: &str) -> VirtualMachine {
        let yaml = format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: v, namespace: ns}}\nspec:\n  {spec}\n  template: {{spec: {{domain: {{}}}}}}\n{status}"
        );
        serde_yaml::from_str(&yaml).unwrap()
    }

    fn vmi(phase: &str) -> VirtualMachineInstance {
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: v, uid: u1}}\nspec: {{domain: {{}}}}\nstatus: {{phase: {phase}}}\n"
        ))
        .unwrap()
    }

    fn go(
        v: &VirtualMachine,
        i: Option<&VirtualMachineInstance>,
        op: VmOp,
    ) -> Result<Plan, OpError> {
        plan(v, i, op, &OpOptions::default())
    }

    #[test]
    fn start_by_strategy() {
        let running = vmi("Running");
        assert!(matches!(
            go(&vm("runStrategy: Always", ""), Some(&running), VmOp::Start),
            Err(OpError::Conflict(_))
        ));
        assert_eq!(
            go(&vm("runStrategy: Halted", ""), None, VmOp::Start)
                .unwrap()
                .change,
            Change::Spec(json!({"spec": {"runStrategy": "Always"}}))
        );
        assert_eq!(
            go(&vm("running: false", ""), None, VmOp::Start)
                .unwrap()
                .change,
            Change::Spec(json!({"spec": {"running": true}}))
        );
        let manual = go(&vm("runStrategy: Manual", ""), None, VmOp::Start).unwrap();
        assert!(
            matches!(manual.change, Change::Requests(ref r) if r.len() == 1 && r[0].action == StateChangeAction::Start)
        );
        assert!(matches!(
            go(&vm("runStrategy: Manual", ""), Some(&running), VmOp::Start),
            Err(OpError::Conflict(_))
        ));
        let done = vmi("Succeeded");
        assert!(
            go(
                &vm("runStrategy: RerunOnFailure", ""),
                Some(&done),
                VmOp::Start
            )
            .is_ok()
        );
        for op in [VmOp::Start, VmOp::Restart] {
            assert!(matches!(
                go(&vm("runStrategy: Once", ""), Some(&done), op),
                Err(OpError::Conflict(_))
            ));
            assert!(matches!(
                go(&vm("runStrategy: Once", ""), Some(&running), op),
                Err(OpError::Conflict(_))
            ));
        }
    }

    #[test]
    fn stop_by_strategy() {
        let running = vmi("Running");
        assert_eq!(
            go(&vm("runStrategy: Always", ""), Some(&running), VmOp::Stop)
                .unwrap()
                .change,
            Change::Spec(json!({"spec": {"runStrategy": "Halted"}}))
        );
        assert_eq!(
            go(&vm("running: true", ""), Some(&running), VmOp::Stop)
                .unwrap()
                .change,
            Change::Spec(json!({"spec": {"running": false}}))
        );
        let manual = go(&vm("runStrategy: Manual", ""), Some(&running), VmOp::Stop).unwrap();
        assert!(
            matches!(manual.change, Change::Requests(ref r) if r[0].uid.as_deref() == Some("u1"))
        );
        assert!(matches!(
            go(&vm("runStrategy: Manual", ""), None, VmOp::Stop),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(
            go(&vm("runStrategy: Halted", ""), None, VmOp::Stop),
            Err(OpError::Conflict(_))
        ));
        // Halted but the VMI is still shutting down: stopping again is fine.
        assert!(go(&vm("runStrategy: Halted", ""), Some(&running), VmOp::Stop).is_ok());
    }

    #[test]
    fn restart_needs_a_running_vmi_and_stops_then_starts() {
        let running = vmi("Running");
        let p = go(
            &vm("runStrategy: Always", ""),
            Some(&running),
            VmOp::Restart,
        )
        .unwrap();
        assert!(
            matches!(p.change, Change::Requests(ref r) if r.len() == 2 && r[0].action == StateChangeAction::Stop && r[1].action == StateChangeAction::Start)
        );
        assert!(matches!(
            go(&vm("runStrategy: Always", ""), None, VmOp::Restart),
            Err(OpError::Conflict(_))
        ));
        assert!(matches!(
            go(&vm("runStrategy: Halted", ""), None, VmOp::Restart),
            Err(OpError::Conflict(_))
        ));
    }

    #[test]
    fn a_pending_request_conflicts() {
        let v = vm(
            "runStrategy: Manual",
            "status: {stateChangeRequests: [{action: Start}]}",
        );
        let e = go(&v, None, VmOp::Start).unwrap_err();
        assert_eq!(
            e,
            OpError::Conflict("VM v: a start request is already underway".into())
        );
    }

    #[test]
    fn migrate_needs_a_running_vmi_and_names_it() {
        let want =
            "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"v\": VM is not running";
        let opts = MigrateOptions::default();
        assert_eq!(
            plan_migration("v", None, &opts),
            Err(OpError::Conflict(want.into()))
        );
        assert_eq!(
            plan_migration("v", Some(&vmi("Scheduled")), &opts),
            Err(OpError::Conflict(want.into()))
        );
        let m = plan_migration("v", Some(&vmi("Running")), &opts).unwrap();
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                "metadata": {"generateName": "kubevirt-migrate-vm-"},
                "spec": {"vmiName": "v"}})
        );
        let opts: MigrateOptions = serde_json::from_str(
            r#"{"dryRun": ["All"], "addedNodeSelector": {"kubernetes.io/hostname": "node-2"}}"#,
        )
        .unwrap();
        assert!(opts.is_dry_run());
        let m = plan_migration("v", Some(&vmi("Running")), &opts).unwrap();
        assert_eq!(
            serde_json::to_value(&m.spec).unwrap(),
            json!({"vmiName": "v", "addedNodeSelector": {"kubernetes.io/hostname": "node-2"}})
        );
        assert!(!MigrateOptions::default().is_dry_run());
    }

    #[test]
    fn options_parse_virtctl_bodies() {
        let o: OpOptions =
            serde_json::from_str(r#"{"gracePeriod": 0, "dryRun": ["All"]}"#).unwrap();
        assert!(o.is_dry_run());
        assert_eq!(o.grace(), Some(0));
        let o: OpOptions = serde_json::from_str(r#"{"gracePeriodSeconds": 5}"#).unwrap();
        assert_eq!(o.grace(), Some(5));
        assert!(!o.is_dry_run());
        let o: OpOptions = serde_json::from_str(r#"{"paused": true}"#).unwrap();
        let e = plan(&vm("runStrategy: Halted", ""), None, VmOp::Start, &o).unwrap_err();
        assert!(matches!(e, OpError::BadRequest(_)));
        let running = vmi("Running");
        let neg = OpOptions {
            grace_period: Some(-1),
            ..Default::default()
        };
        assert!(matches!(
            plan(
                &vm("runStrategy: Always", ""),
                Some(&running),
                VmOp::Stop,
                &neg
            ),
            Err(OpError::BadRequest(_))
        ));
        let g = OpOptions {
            grace_period: Some(3),
            ..Default::default()
        };
        assert_eq!(
            plan(
                &vm("runStrategy: Always", ""),
                Some(&running),
                VmOp::Stop,
                &g
            )
            .unwrap()
            .vmi_grace,
            Some(3)
        );
    }
}
