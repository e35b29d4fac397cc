//! What the live-migration bed tests (issue #18: `tests/migration.rs`,
//! `tests/migration_faults.rs`) share: the guest (a VirtualMachine booting
//! a containerDisk from a real registry, with an emptyDisk and no network
//! interface, so LiveMigratable), two real nodes with the namespace's
//! operator ([`Pair`]), KubeVirt's virtctl, the guest's console through
//! kube-apiserver and what the guest prints there (its boot marker, a
//! `tick-<n>` a second once [`start_counting`] ran, its uptime).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironvirt_crds::migration::{MigrationPhase, VirtualMachineInstanceMigration};
use ironvirt_crds::{VirtualMachine, VirtualMachineInstance};
use ironvirt_testbed::TestBed;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};

use crate::api::{ApiWs, open_ws};
use crate::e2e::NsOperator;
use crate::handler::wait_gone;
use crate::nodes::{TestNode, delete_node_objects, wait_ready_and_renewing};
use crate::registry::Registry;

/// What the guest prints once booted.
pub const MARKER: &str = "IRONVIRT-GUEST-READY";
pub const BOOT: Duration = Duration::from_secs(150);
/// The longest a migration of the guest may take (unlimited bandwidth).
pub const MOVE: Duration = Duration::from_secs(240);
pub const SUB: &str = "/apis/subresources.kubevirt.io/v1";
/// The test guest's disk (make deps / hack/build-guest.sh).
pub const IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";
pub const REPO: &str = "migration/guest:v1";
/// The VirtualMachine's (and its VMI's) name.
pub const VM: &str = "mover";

/// Prints how long the test has run at `step`.
pub fn timing(t0: Instant, step: &str) {
    eprintln!(
        "migration timing: {step}: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// A registry serving the test guest as containerDisk [`REPO`].
pub async fn guest_registry() -> Result<Registry, String> {
    let reg = Registry::start().map_err(|e| format!("the registry: {e}"))?;
    let disk = std::fs::read(IMAGE)
        .map_err(|e| format!("the test guest's disk {IMAGE} (make deps): {e}"))?;
    reg.push(REPO, &[("disk/disk.qcow2", disk)])
        .await
        .map_err(|e| format!("push the guest as a containerDisk: {e}"))?;
    Ok(reg)
}

/// The guest as a VirtualMachine (runStrategy Always): `virtctl migrate`
/// acts on VMs.
pub fn guest(registry: &str) -> Result<VirtualMachine, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": VM},
        "spec": {
            "runStrategy": "Always",
            "template": {"spec": {
                "terminationGracePeriodSeconds": 5,
                "domain": {
                    "memory": {"guest": "128Mi"},
                    "devices": {
                        "autoattachPodInterface": false,
                        "disks": [
                            {"name": "containerdisk", "disk": {"bus": "virtio"}},
                            {"name": "scratch", "disk": {"bus": "virtio"}},
                        ],
                    },
                },
                "volumes": [
                    {"name": "containerdisk", "containerDisk": {"image": format!("{registry}/{REPO}")}},
                    {"name": "scratch", "emptyDisk": {"capacity": "64Mi"}},
                ],
            }},
        },
    }))
    .map_err(|e| format!("VM manifest: {e}"))
}

/// KubeVirt's own virtctl (IRONVIRT_VIRTCTL, built by hack/build-virtctl.sh)
/// with `kubeconfig`: (exit code, stdout and stderr).
pub async fn virtctl(kubeconfig: &Path, ns: &str, args: &[&str]) -> Result<(i32, String), String> {
    let bin = std::env::var_os("IRONVIRT_VIRTCTL")
        .ok_or("IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`")?;
    let out = tokio::process::Command::new(bin)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", ns])
        .args(args)
        .output()
        .await
        .map_err(|e| format!("virtctl: {e}"))?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `virtctl <args>`, which must succeed.
pub async fn virtctl_ok(kubeconfig: &Path, ns: &str, args: &[&str]) -> Result<String, String> {
    let (code, out) = virtctl(kubeconfig, ns, args).await?;
    if code != 0 {
        return Err(format!("virtctl {}: exit {code}: {out}", args.join(" ")));
    }
    Ok(out)
}

/// The guest's serial console through kube-apiserver and ironvirt-api.
pub async fn console(admin: &kube::Client, ns: &str) -> Result<ApiWs, String> {
    open_ws(
        admin,
        &format!("{SUB}/namespaces/{ns}/virtualmachineinstances/{VM}/console"),
    )
    .await
    .map_err(|e| format!("console of {VM}: {e:?}"))
}

/// Runs `command` on the guest's shell and waits for `done`, which the
/// command prints computed, so the echoed command line never matches it.
pub async fn shell(con: &mut ApiWs, command: &str, done: &str) -> Result<usize, String> {
    let from = con.received();
    con.send(format!("{command}\n").as_bytes()).await?;
    con.expect_from(from, done, Duration::from_secs(30)).await?;
    Ok(from)
}

/// Starts the guest's count: `tick-<n>` once a second, in the background.
pub async fn start_counting(con: &mut ApiWs) -> Result<(), String> {
    shell(
        con,
        "(i=0; while true; do i=$((i+1)); echo tick-$i; sleep 1; done) & echo counting-$((3*3))",
        "counting-9",
    )
    .await?;
    let from = con.received();
    con.expect_from(from, "tick-3", Duration::from_secs(20))
        .await
}

/// The numbers of the `tick-<n>` lines in `text`.
pub fn ticks(text: &str) -> Vec<u64> {
    text.split("tick-")
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The highest `tick-<n>` in `text` (0 when none).
pub fn last_tick(text: &str) -> u64 {
    ticks(text).into_iter().max().unwrap_or(0)
}

/// The guest's uptime in seconds, printed as `up=<s>:42`.
pub fn uptime(text: &str) -> Option<f64> {
    let rest = text.rsplit("up=").next()?;
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// Asks the guest for its uptime.
pub async fn read_uptime(con: &mut ApiWs) -> Result<f64, String> {
    let from = shell(
        con,
        "echo up=$(cut -d' ' -f1 /proc/uptime):$((40+2))",
        ":42",
    )
    .await?;
    let text = con.transcript();
    let tail = text.get(from..).unwrap_or(&text).to_owned();
    // The echoed command line has no digits after up=; the answer has.
    tail.split("up=")
        .filter_map(|p| uptime(&format!("up={p}")))
        .last()
        .ok_or_else(|| format!("no uptime in {tail:?}"))
}

/// Opens a console on the guest and checks it is the same guest, still
/// counting: a tick above `last_before` and above what the console replays
/// arrives live, no boot marker after the old ticks the console replays
/// (anywhere, when it replays none), and its uptime is above `up_before`.
/// Returns (that live tick, uptime).
pub async fn still_counting(
    admin: &kube::Client,
    ns: &str,
    last_before: u64,
    up_before: f64,
) -> Result<(u64, f64), String> {
    let mut con = console(admin, ns).await?;
    // The replay comes first, as one frame (or none).
    let _ = con.next_binary(Duration::from_millis(700)).await;
    let above = last_before.max(last_tick(&con.transcript()));
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        let text = con.transcript();
        if let Some(t) = ticks(&text).into_iter().filter(|t| *t > above).min() {
            break t;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no tick above tick-{above} within 20 s on a new console: {:?}",
                tail(&text)
            ));
        }
        if let Some(why) = con.next_close(Duration::from_secs(1)).await {
            return Err(format!("the new console closed ({why:?})"));
        }
    };
    let up = read_uptime(&mut con).await?;
    let text = con.transcript();
    con.close().await;
    // What the console replays of the time before, then what came since.
    let old = format!("tick-{last_before}");
    let since = text
        .match_indices(old.as_str())
        .map(|(i, m)| i + m.len())
        .filter(|end| !text[*end..].starts_with(|c: char| c.is_ascii_digit()))
        .last()
        .unwrap_or(0);
    if text[since..].contains(MARKER) {
        return Err(format!(
            "the guest printed its boot marker again: it rebooted: {:?}",
            tail(&text)
        ));
    }
    if up <= up_before {
        return Err(format!(
            "uptime {up_before} s before, {up} s now: the guest rebooted"
        ));
    }
    Ok((first, up))
}

/// The last 600 characters of `text`.
pub fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(600);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Two real nodes for one test namespace, able to pull from a registry on
/// the host, and the namespace's operator.
pub struct Pair {
    pub nodes: Vec<TestNode>,
    /// The namespace's operator (a test may kill and start it again).
    pub op: Option<NsOperator>,
    _config: tempfile::TempDir,
}

impl Pair {
    /// Starts nodes `<prefix>-<pid>-1` and `-2` for `ns`, their handlers
    /// trusting the plain-HTTP registry at `registry` (host:port) and run
    /// with `handler_args` more; then the operator.
    pub fn start(
        bed: &TestBed,
        ns: &str,
        prefix: &str,
        registry: &str,
        handler_args: &[String],
    ) -> Result<Pair, String> {
        let port: u16 = registry
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or("a registry address without port")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("registries.yaml");
        std::fs::write(
            &config,
            format!("registries:\n  \"{registry}\":\n    insecure: true\n"),
        )
        .map_err(|e| e.to_string())?;
        let args: Vec<String> = [
            "--registries-config".to_owned(),
            config.display().to_string(),
        ]
        .into_iter()
        .chain(handler_args.iter().cloned())
        .collect();
        let pid = std::process::id();
        let mut nodes = Vec::new();
        for k in 1..=2 {
            // A node that fails to start stops those started (Drop).
            nodes.push(TestNode::start_with(
                bed,
                ns,
                &format!("{prefix}-{pid}-{k}"),
                &[port],
                &args,
            )?);
        }
        let op = NsOperator::start(bed, ns, &format!("{prefix}-operator-{pid}"));
        Ok(Pair {
            nodes,
            op: Some(op),
            _config: dir,
        })
    }

    /// Waits until both nodes are Ready with renewing handlers.
    pub async fn wait_ready(&self, admin: &kube::Client) -> Result<(), String> {
        for n in &self.nodes {
            wait_ready_and_renewing(admin, n.name(), Duration::from_secs(60))
                .await
                .map_err(|e| format!("{e}; handler log:\n{}", n.handler_log()))?;
        }
        Ok(())
    }

    /// (source, target): the node named `source` and the other one.
    pub fn ends(&self, source: &str) -> Result<(&TestNode, &TestNode), String> {
        match self.nodes.as_slice() {
            [a, b] if a.name() == source => Ok((a, b)),
            [a, b] if b.name() == source => Ok((b, a)),
            _ => Err(format!("{source} is none of the test's nodes")),
        }
    }

    /// Removes everything the test made, whatever `outcome` was: the
    /// migrations, the VM (waiting for its VMI to go), the operator, the
    /// nodes and their Node objects; then checks nothing of the nodes is
    /// left on the machine. Returns `outcome`'s error first.
    pub async fn finish(
        mut self,
        bed: &TestBed,
        ns: &str,
        outcome: Result<(), String>,
        t0: Instant,
    ) -> Result<(), String> {
        let admin = bed.admin();
        let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), ns);
        let _ = migs
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
        let _ = vms.delete(VM, &DeleteParams::default()).await;
        let gone = wait_gone(&admin, ns, VM, Duration::from_secs(90)).await;
        if let Some(op) = self.op.take() {
            op.remove(&admin).await;
        }
        let mut stop_errors = Vec::new();
        for n in &mut self.nodes {
            if let Err(e) = n.stop() {
                stop_errors.push(format!("{}: {e}", n.name()));
            }
            delete_node_objects(&admin, n.name()).await;
        }
        timing(t0, "cleaned up");
        if outcome.is_err() {
            for n in &self.nodes {
                eprintln!("--- handler log of {} ---\n{}", n.name(), n.handler_log());
            }
        }
        outcome?;
        gone?;
        if !stop_errors.is_empty() {
            return Err(format!("stopping the nodes failed: {stop_errors:?}"));
        }
        let left: Vec<String> = self.nodes.iter().flat_map(TestNode::leftovers).collect();
        if !left.is_empty() {
            return Err(format!("left after the nodes stopped: {left:?}"));
        }
        Ok(())
    }
}

/// The guest booted on one of the nodes and counting on its console.
pub struct Counting {
    pub uid: String,
    /// The node it runs on.
    pub source: String,
    /// The console it was started on, still open.
    pub con: ApiWs,
}

/// Creates the VM, waits for its VMI to run (LiveMigratable) and boot, and
/// starts the guest's count.
pub async fn boot_counting(
    admin: &kube::Client,
    ns: &str,
    registry: &str,
) -> Result<Counting, String> {
    let vms: Api<VirtualMachine> = Api::namespaced(admin.clone(), ns);
    vms.create(&Default::default(), &guest(registry)?)
        .await
        .map_err(|e| format!("create {VM}: {e}"))?;
    let vmi = crate::handler::wait_phase(admin, ns, VM, "Running", BOOT).await?;
    let uid = vmi.uid().ok_or("a VMI without uid")?;
    let source = vmi
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or("a running VMI without nodeName")?;
    let migratable = vmi
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "LiveMigratable"))
        .map(|c| c.status.clone());
    if migratable.as_deref() != Some("True") {
        return Err(format!("LiveMigratable is {migratable:?}, want True"));
    }
    let mut con = console(admin, ns).await?;
    con.expect_from(0, MARKER, BOOT).await?;
    start_counting(&mut con).await?;
    Ok(Counting { uid, source, con })
}

/// The one migration `virtctl migrate` made for the VM.
pub async fn the_migration(
    admin: &kube::Client,
    ns: &str,
) -> Result<VirtualMachineInstanceMigration, String> {
    let migs: Api<VirtualMachineInstanceMigration> = Api::namespaced(admin.clone(), ns);
    let list = migs
        .list(&ListParams::default().labels(&format!("kubevirt.io/vmi-name={VM}")))
        .await
        .map_err(|e| e.to_string())?;
    let mut unfinished: Vec<VirtualMachineInstanceMigration> = list
        .items
        .into_iter()
        .filter(|m| {
            m.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_none_or(|p| !p.is_final())
        })
        .collect();
    match unfinished.len() {
        1 => unfinished.pop().ok_or_else(|| "no migration".to_owned()),
        n => Err(format!("{n} unfinished migrations of {VM}, want 1")),
    }
}

/// The phase of migration `name` (None: no phase yet; Err when it is gone).
pub async fn phase_of(
    migs: &Api<VirtualMachineInstanceMigration>,
    name: &str,
) -> Result<(Option<MigrationPhase>, VirtualMachineInstanceMigration), String> {
    let m = migs
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("migration {name} is gone"))?;
    Ok((m.status.as_ref().and_then(|s| s.phase), m))
}

/// Waits until migration `name` reaches `want` or a later phase; the
/// phases seen on the way. A final phase other than `want` is an error.
pub async fn wait_migration_phase(
    migs: &Api<VirtualMachineInstanceMigration>,
    name: &str,
    want: MigrationPhase,
    timeout: Duration,
) -> Result<(VirtualMachineInstanceMigration, Vec<MigrationPhase>), String> {
    let deadline = Instant::now() + timeout;
    let mut seen: Vec<MigrationPhase> = Vec::new();
    loop {
        let (phase, m) = phase_of(migs, name).await?;
        if let Some(p) = phase
            && seen.last() != Some(&p)
        {
            seen.push(p);
        }
        if phase == Some(want) {
            return Ok((m, seen));
        }
        if phase.is_some_and(MigrationPhase::is_final) {
            return Err(format!(
                "migration {name} ended {phase:?} waiting for {want:?}: {:?}",
                m.status.as_ref().and_then(|s| s.conditions.clone())
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "migration {name} not {want:?} within {timeout:?}; phases seen {seen:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The VMI's directory of the handler of `node` on the host
/// (`/var/lib/ironvirt/handler/vmis/<uid>` inside the node).
pub fn vmi_dir_on(node: &TestNode, uid: &str) -> PathBuf {
    node.record.handler_state_dir().join("vmis").join(uid)
}

/// The VMI now.
pub async fn vmi_now(admin: &kube::Client, ns: &str) -> Result<VirtualMachineInstance, String> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
    vmis.get(VM).await.map_err(|e| format!("get VMI {VM}: {e}"))
}
