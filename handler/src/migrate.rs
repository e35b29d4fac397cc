//! The handler's part of a live migration (issue #18), on both ends, driven
//! by the VMI's `status.migrationState` (see `ironvirt_operator::migration`
//! for the whole protocol):
//!
//! - **Target.** The handler watches VMIs labelled
//!   `kubevirt.io/migrationTargetNodeName=<its node>` ([`reconcile_target`]).
//!   It prepares what the domain needs here before libvirt moves it: the
//!   VMI's directory, the containerDisk bases pulled into this node's cache,
//!   empty overlays and emptyDisks for block migration to fill, cloud-init
//!   disks made again, the console socket's directory. Then it writes
//!   `targetNodeAddress` and `targetNodeDomainReadyTimestamp`. A migration
//!   that failed has its files here removed.
//! - **Source.** In the VMI's own reconcile ([`on_source`]), once the target
//!   is ready, the handler starts [`crate::migration::migrate`] in a task of
//!   its own: libvirt's peer-to-peer migration over TLS, copying the VMI's
//!   writable disks, persistent on the target and undefined here. A watcher
//!   beside it aborts a migration that makes no progress for
//!   [`PROGRESS_TIMEOUT`] or runs past [`completion_timeout`]; a deleted
//!   migration object (`abortRequested`) aborts it too. The task writes
//!   `startTimestamp`, then `completed` or `failed` with the reason.
//!
//! Every handler write is a JSON patch that first tests
//! `migrationState.migrationUid`: a write about an older migration never
//! lands on a newer one's state.
//!
//! What cannot migrate is said up front by the VMI's `LiveMigratable`
//! condition ([`live_migratable`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::migration::VirtualMachineInstanceMigrationState;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;

use crate::context::Context;
use crate::controller::{self as ctl, Slot};
use crate::error::Error;
use crate::migration::{self as mig, MigrateOptions, MigrationError, MigrationTarget};
use crate::{create_plan, libvirt, volumes};

/// A migration whose remaining data has not shrunk for this long is
/// aborted (KubeVirt's `progressTimeout` default).
pub const PROGRESS_TIMEOUT: Duration = Duration::from_secs(150);
/// KubeVirt's `completionTimeoutPerGiB` default.
pub const COMPLETION_TIMEOUT_PER_GIB: Duration = Duration::from_secs(150);
/// How often a running migration's progress is read.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How many times an abort is tried, [`PROGRESS_EVERY`] apart.
const ABORT_ATTEMPTS: u32 = 10;

/// The longest a migration of `bytes` (memory and copied disks) may run:
/// [`COMPLETION_TIMEOUT_PER_GIB`] per started GiB, at least one.
pub fn completion_timeout(bytes: u64) -> Duration {
    let gib = bytes.div_ceil(1 << 30).max(1);
    COMPLETION_TIMEOUT_PER_GIB.saturating_mul(u32::try_from(gib).unwrap_or(u32::MAX))
}

/// The migrations this node runs as their source, by migration UID: the
/// flag that asks the watcher to abort.
#[derive(Default)]
pub struct Outgoing {
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl Outgoing {
    fn abort_flag(&self, uid: &str) -> Option<Arc<AtomicBool>> {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
    }

    /// Registers `uid`; false when it already runs.
    fn begin(&self, uid: &str) -> Option<Arc<AtomicBool>> {
        let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(uid) {
            return None;
        }
        let flag = Arc::new(AtomicBool::new(false));
        map.insert(uid.to_owned(), Arc::clone(&flag));
        Some(flag)
    }

    fn end(&self, uid: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }
}

fn state(vmi: &VirtualMachineInstance) -> Option<&VirtualMachineInstanceMigrationState> {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_deref())
}

/// Whether `vmi` has left (or is leaving) `node` by a migration that did not
/// fail: its domain may be gone from here without the VMI having failed.
pub fn migrated_away(vmi: &VirtualMachineInstance, node: &str) -> bool {
    state(vmi).is_some_and(|s| {
        s.migration_uid.is_some()
            && s.source_node.as_deref() == Some(node)
            && s.target_node.as_deref() != Some(node)
            && s.failed != Some(true)
            && (s.start_timestamp.is_some() || s.completed == Some(true))
    })
}

/// Why `vmi` cannot live-migrate, as the LiveMigratable condition's
/// (reason, message); None when it can
/// ([`ironvirt_crds::migration::live_migratable`]).
pub fn live_migratable(vmi: &VirtualMachineInstance) -> Option<(&'static str, String)> {
    ironvirt_crds::migration::live_migratable(&vmi.spec)
}

/// What the source side does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceStep {
    Nothing,
    /// Migrate to the libvirtd at this address.
    Start {
        uid: String,
        address: String,
    },
    /// Abort the running migration.
    Abort {
        uid: String,
    },
    /// Aborted before it started: record that it failed.
    AbortedBeforeStart {
        uid: String,
    },
    /// This handler restarted during the migration: the domain is still
    /// here (failed) or gone (it reached the target).
    Interrupted {
        uid: String,
    },
}

/// Decides the source side for `vmi` on `node`; `running` says whether
/// this handler runs the migration of the VMI's state.
pub fn source_step(vmi: &VirtualMachineInstance, node: &str, running: bool) -> SourceStep {
    let Some(s) = state(vmi) else {
        return SourceStep::Nothing;
    };
    let Some(uid) = s.migration_uid.clone() else {
        return SourceStep::Nothing;
    };
    if s.source_node.as_deref() != Some(node) || s.ended() {
        return SourceStep::Nothing;
    }
    if s.abort_requested == Some(true) {
        return match (running, s.start_timestamp.is_some()) {
            (true, _) => SourceStep::Abort { uid },
            (false, false) => SourceStep::AbortedBeforeStart { uid },
            (false, true) => SourceStep::Interrupted { uid },
        };
    }
    if running {
        return SourceStep::Nothing;
    }
    if s.start_timestamp.is_some() {
        return SourceStep::Interrupted { uid };
    }
    match (
        &s.target_node_domain_ready_timestamp,
        &s.target_node_address,
    ) {
        (Some(_), Some(address)) => SourceStep::Start {
            uid,
            address: address.clone(),
        },
        _ => SourceStep::Nothing,
    }
}

/// What the target side does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetStep {
    Nothing,
    Prepare {
        uid: String,
    },
    /// The migration failed: remove what was prepared here.
    Cleanup,
}

/// Decides the target side for `vmi` on `node`.
pub fn target_step(vmi: &VirtualMachineInstance, node: &str) -> TargetStep {
    let Some(s) = state(vmi) else {
        return TargetStep::Nothing;
    };
    let Some(uid) = s.migration_uid.clone() else {
        return TargetStep::Nothing;
    };
    if s.target_node.as_deref() != Some(node) {
        return TargetStep::Nothing;
    }
    let on_node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node);
    if s.failed == Some(true) {
        return if on_node {
            TargetStep::Nothing
        } else {
            TargetStep::Cleanup
        };
    }
    if s.completed == Some(true) || s.abort_requested == Some(true) {
        return TargetStep::Nothing;
    }
    if s.target_node_domain_ready_timestamp.is_none() {
        return TargetStep::Prepare { uid };
    }
    TargetStep::Nothing
}

/// The JSON patch that sets `fields` of the migration state, if it is still
/// migration `uid`'s.
pub fn state_patch(uid: &str, fields: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut ops = vec![serde_json::json!({
        "op": "test", "path": "/status/migrationState/migrationUid", "value": uid
    })];
    for (k, v) in fields {
        ops.push(serde_json::json!({
            "op": "add", "path": format!("/status/migrationState/{k}"), "value": v
        }));
    }
    serde_json::Value::Array(ops)
}

async fn write_state(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    uid: &str,
    fields: &[(&str, serde_json::Value)],
) -> Result<(), Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let patch: json_patch::Patch = serde_json::from_value(state_patch(uid, fields))
        .map_err(|e| Error::Internal(format!("building the migration patch: {e}")))?;
    match api
        .patch_status(
            &vmi.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // The test failed (another migration's state now) or the VMI is gone.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 404 => {
            tracing::info!(migration.uid = uid, reason = %s.message, "migration state moved on; not written");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn now() -> serde_json::Value {
    serde_json::json!(Time(Timestamp::now()))
}

fn failed_fields(reason: &str) -> Vec<(&'static str, serde_json::Value)> {
    vec![
        ("failed", serde_json::json!(true)),
        ("failureReason", serde_json::json!(reason)),
        ("endTimestamp", now()),
    ]
}

/// The source side, called from the VMI's reconcile on its node.
pub async fn on_source(vmi: &Arc<VirtualMachineInstance>, ctx: &Arc<Context>) -> Result<(), Error> {
    let running_uid = state(vmi).and_then(|s| s.migration_uid.clone());
    let running = running_uid
        .as_deref()
        .is_some_and(|u| ctx.migrations.abort_flag(u).is_some());
    match source_step(vmi, &ctx.node, running) {
        SourceStep::Nothing => Ok(()),
        SourceStep::Abort { uid } => {
            if let Some(flag) = ctx.migrations.abort_flag(&uid)
                && !flag.swap(true, Ordering::SeqCst)
            {
                tracing::info!(migration.uid = %uid, "abort requested");
            }
            Ok(())
        }
        SourceStep::AbortedBeforeStart { uid } => {
            let mut fields = failed_fields("the migration was cancelled before it started");
            fields.push(("abortStatus", serde_json::json!("Succeeded")));
            write_state(ctx, vmi, &uid, &fields).await
        }
        SourceStep::Interrupted { uid } => {
            let dname = ironvirt_crds::wire::domain_name(
                &vmi.namespace().unwrap_or_default(),
                &vmi.name_any(),
            );
            let here = ctx
                .libvirt
                .call(move |c| libvirt::lookup(c, &dname))
                .await?
                .is_some_and(|d| Some(d.owner.uid) == vmi.uid());
            if here {
                let fields =
                    failed_fields("the source node's handler restarted during the migration");
                write_state(ctx, vmi, &uid, &fields).await
            } else {
                // libvirt undefines the source only once the target runs it.
                write_state(
                    ctx,
                    vmi,
                    &uid,
                    &[
                        ("completed", serde_json::json!(true)),
                        ("endTimestamp", now()),
                    ],
                )
                .await
            }
        }
        SourceStep::Start { uid, address } => {
            let Some(abort) = ctx.migrations.begin(&uid) else {
                return Ok(());
            };
            write_state(ctx, vmi, &uid, &[("startTimestamp", now())]).await?;
            let (vmi, ctx) = (Arc::clone(vmi), Arc::clone(ctx));
            tokio::spawn(async move {
                let outcome = run_source(&vmi, &ctx, &address, &abort).await;
                let fields = match &outcome {
                    Ok(()) => vec![
                        ("completed", serde_json::json!(true)),
                        ("endTimestamp", now()),
                    ],
                    Err(why) => {
                        let mut f = failed_fields(why);
                        if abort.load(Ordering::SeqCst) {
                            f.push(("abortStatus", serde_json::json!("Succeeded")));
                        }
                        f
                    }
                };
                if let Err(e) = write_state(&ctx, &vmi, &uid, &fields).await {
                    tracing::warn!(migration.uid = %uid, error = %e, "could not record the migration's end");
                }
                ctx.migrations.end(&uid);
            });
            Ok(())
        }
    }
}

/// The writable disks of the domain's live XML that live in `dir` (the
/// VMI's directory): its overlays and emptyDisks, copied by block
/// migration. Read-only disks (cloud-init) are made again on the target.
pub fn disks_to_copy(xml: &str, dir: &std::path::Path) -> Vec<String> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    doc.descendants()
        .filter(|n| n.has_tag_name("disk") && n.attribute("device") == Some("disk"))
        .filter(|n| !n.children().any(|c| c.has_tag_name("readonly")))
        .filter(|n| {
            n.children()
                .find(|c| c.has_tag_name("source"))
                .and_then(|s| s.attribute("file"))
                .is_some_and(|f| std::path::Path::new(f).starts_with(dir))
        })
        .filter_map(|n| {
            n.children()
                .find(|c| c.has_tag_name("target"))
                .and_then(|t| t.attribute("dev"))
                .map(str::to_owned)
        })
        .collect()
}

/// The target libvirtd's URI: TLS to the node's address, with the client
/// certificate from `pki_dir` when set.
pub fn target_uri(address: &str, pki_dir: Option<&std::path::Path>) -> String {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    match pki_dir {
        Some(dir) => format!("qemu+tls://{host}/system?pkipath={}", dir.display()),
        None => format!("qemu+tls://{host}/system"),
    }
}

/// Migrates the VMI's domain to the libvirtd at `address`; the reason when
/// it still runs here.
async fn run_source(
    vmi: &VirtualMachineInstance,
    ctx: &Arc<Context>,
    address: &str,
    abort: &AtomicBool,
) -> Result<(), String> {
    let dname =
        ironvirt_crds::wire::domain_name(&vmi.namespace().unwrap_or_default(), &vmi.name_any());
    let d = dname.clone();
    let xml = ctx
        .libvirt
        .call(move |c| libvirt::with_domain(c, &d, libvirt::live_xml))
        .await
        .map_err(|e| e.to_string())?;
    let dir = volumes::vmi_dir(&ctx.state_dir, &vmi.uid().unwrap_or_default());
    let copy_disks = disks_to_copy(&xml, &dir);
    let target = MigrationTarget {
        libvirt_uri: target_uri(address, ctx.migration_pki_dir.as_deref()),
        migration_uri: Some(format!("tcp://{address}")),
    };
    let opts = MigrateOptions {
        copy_disks,
        persistent: true,
        bandwidth_mib: ctx.migration_bandwidth_mib,
        ..MigrateOptions::default()
    };
    let started = Instant::now();
    let migrating = mig::migrate(&ctx.libvirt, &dname, &target, &opts);
    let watching = watch(ctx, &dname, abort, started);
    tokio::pin!(migrating);
    tokio::pin!(watching);
    let mut stop_reason: Option<String> = None;
    loop {
        tokio::select! {
            outcome = &mut migrating => {
                return match outcome {
                    Ok(()) => Ok(()),
                    Err(MigrationError::Aborted { .. }) => Err(stop_reason
                        .unwrap_or_else(|| "the migration was aborted".into())),
                    Err(e) => Err(e.to_string()),
                };
            }
            why = &mut watching, if stop_reason.is_none() => {
                tracing::warn!(domain = %dname, reason = %why, "aborting the migration");
                // libvirt refuses an abort before its job has started: try
                // again for a while (the migration itself goes on in
                // libvirt meanwhile; a migration that completes first is a
                // completed one, and the operator hands the VMI over).
                for attempt in 1..=ABORT_ATTEMPTS {
                    match mig::abort(&ctx.libvirt, &dname).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(domain = %dname, attempt, error = %e, "aborting the migration failed");
                            tokio::time::sleep(PROGRESS_EVERY).await;
                        }
                    }
                }
                stop_reason = Some(why);
            }
        }
    }
}

/// Returns why the migration must stop: no progress, too long, or an abort
/// asked for. Runs until then.
async fn watch(ctx: &Arc<Context>, dname: &str, abort: &AtomicBool, started: Instant) -> String {
    let mut best: Option<u64> = None;
    let mut best_at = Instant::now();
    let mut limit: Option<Duration> = None;
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        if abort.load(Ordering::SeqCst) {
            return "the migration was cancelled (its migration object was deleted)".into();
        }
        let Ok(p) = mig::progress(&ctx.libvirt, dname).await else {
            continue;
        };
        if !p.active {
            continue;
        }
        if limit.is_none()
            && let Some(total) = p.data_total
        {
            limit = Some(completion_timeout(total));
        }
        if let Some(remaining) = p.data_remaining
            && best.is_none_or(|b| remaining < b)
        {
            best = Some(remaining);
            best_at = Instant::now();
        }
        if best_at.elapsed() > PROGRESS_TIMEOUT {
            return format!(
                "no progress for {}s (progressTimeout)",
                PROGRESS_TIMEOUT.as_secs()
            );
        }
        if let Some(l) = limit.filter(|l| started.elapsed() > *l) {
            return format!(
                "not completed within {}s (completionTimeoutPerGiB {}s)",
                l.as_secs(),
                COMPLETION_TIMEOUT_PER_GIB.as_secs()
            );
        }
    }
}

/// Reconciles a VMI this node is the migration target of.
#[tracing::instrument(skip_all, fields(vmi.namespace = vmi.namespace().unwrap_or_default(), vmi.name = %vmi.name_any()))]
pub async fn reconcile_target(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match target_step(&vmi, &ctx.node) {
        TargetStep::Nothing => Ok(Action::requeue(ctx.resync)),
        TargetStep::Cleanup => {
            let uid = vmi.uid().unwrap_or_default();
            let dir = volumes::vmi_dir(&ctx.state_dir, &uid);
            if dir.exists() {
                tracing::info!(vmi.uid = %uid, "the migration failed: removing what was prepared here");
                ctl::cleanup_files(&ctx, &uid).await?;
            }
            Ok(Action::requeue(ctx.resync))
        }
        TargetStep::Prepare { uid } => {
            let Some(address) = ctx.migration_address.clone() else {
                write_state(
                    &ctx,
                    &vmi,
                    &uid,
                    &failed_fields(&format!(
                        "node {} takes no migrations (its handler has no address)",
                        ctx.node
                    )),
                )
                .await?;
                return Ok(Action::requeue(ctx.resync));
            };
            match prepare_target(&vmi, &ctx).await {
                Ok(()) => {
                    tracing::info!(migration.uid = %uid, %address, "target prepared");
                    write_state(
                        &ctx,
                        &vmi,
                        &uid,
                        &[
                            ("targetNodeAddress", serde_json::json!(address)),
                            ("targetNodeDomainReadyTimestamp", now()),
                        ],
                    )
                    .await?;
                }
                Err(why) => {
                    tracing::warn!(migration.uid = %uid, reason = %why, "preparing the target failed");
                    let reason = format!("preparing target node {}: {why}", ctx.node);
                    write_state(&ctx, &vmi, &uid, &failed_fields(&reason)).await?;
                }
            }
            Ok(Action::requeue(ctx.resync))
        }
    }
}

/// Makes on this node the files the VMI's domain needs, as a create would,
/// without defining the domain.
async fn prepare_target(vmi: &VirtualMachineInstance, ctx: &Arc<Context>) -> Result<(), String> {
    if let Some((reason, message)) = live_migratable(vmi) {
        return Err(format!("{reason}: {message}"));
    }
    let secrets = ctl::fetch_secrets(ctx, vmi)
        .await
        .map_err(|e| e.to_string())?;
    let plan = create_plan::plan(vmi, &ctx.state_dir, &ctx.volume_policy, &secrets)
        .map_err(|n| format!("{n:?}"))?;
    let uid = vmi.uid().unwrap_or_default();
    let mut pulled = volumes::PulledDisks::new();
    for file in ctl::image_files(&plan) {
        let images = ctx
            .images
            .as_ref()
            .ok_or_else(|| format!("{}: this node has no image cache", file.field))?;
        let auth = match file.pull_secret {
            None => oci_client::secrets::RegistryAuth::Anonymous,
            Some(secret) => ctl::pull_auth(ctx, vmi, secret, &file.image.registry)
                .await
                .map_err(|e| e.to_string())?
                .map_err(|m| format!("{}: {m}", file.field))?,
        };
        let progress = crate::images::PullProgress::new();
        let cached = images
            .ensure_reporting(file.image, file.wanted, file.policy, &auth, &uid, &progress)
            .await
            .map_err(|e| format!("{}: {e}", file.field))?;
        if let Slot::Volume(name) = &file.slot {
            pulled.insert(name.clone(), cached);
        }
    }
    let plans = plan.volumes;
    tokio::task::spawn_blocking(move || volumes::prepare(&plans, &pulled))
        .await
        .map_err(|e| format!("preparing volumes panicked: {e}"))?
        .map_err(|e| e.to_string())?;
    let consoles = Arc::clone(&ctx.consoles);
    tokio::task::spawn_blocking(move || consoles.prepare_socket(&uid))
        .await
        .map_err(|e| format!("preparing the console socket panicked: {e}"))?
        .map_err(|e| format!("preparing the console socket: {e}"))?;
    Ok(())
}

pub fn error_policy(vmi: Arc<VirtualMachineInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(vmi.name = %vmi.name_any(), error = %err, "migration target reconcile failed");
    Action::requeue(ctx.resync.min(Duration::from_secs(5)))
}

#[cfg(test)]
#[path = "migrate_tests.rs"]
mod tests;
