//! The VMI controller of one node: reconciles the VMIs labelled with its node
//! name ([`NODE_NAME_LABEL`]) against libvirt, on watch events, libvirt
//! lifecycle events and a periodic resync; and a sweeper that removes domains
//! and files whose VMI is gone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::{PortProtocol, VirtualMachineInstancePhase as Phase};
#[cfg(doc)]
use ironvirt_crds::wire::NODE_NAME_LABEL;
use ironvirt_crds::wire::{VMI_FINALIZER, domain_name, parse_domain_name};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::console::Consoles;
use crate::domxml::{self, DomainInputs, HostEnv, PortForward};
use crate::libvirt::{self, Libvirt, LibvirtError};
use crate::model::{self, DesiredStatus, Step};
use crate::volumes::{self, VolumeError};

/// The field manager of the handler's status writes.
pub const MANAGER: &str = "ironvirt-handler";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("VMI has no {0}")]
    MissingField(&'static str),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A short stable reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Libvirt(LibvirtError::Unreachable { .. }) => "LibvirtUnreachable",
            Error::Libvirt(_) => "LibvirtError",
            Error::Kube(_) => "ApiError",
            Error::MissingField(_) => "InvalidObject",
            Error::Internal(_) => "Internal",
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub node: String,
    pub libvirt: Arc<Libvirt>,
    pub consoles: Arc<Consoles>,
    pub host: HostEnv,
    pub state_dir: PathBuf,
    pub recorder: Recorder,
    pub resync: Duration,
    /// VMIs (by uid) whose power button this handler already pressed.
    shutdown_sent: Mutex<HashSet<String>>,
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        node: String,
        libvirt: Arc<Libvirt>,
        consoles: Arc<Consoles>,
        host: HostEnv,
        state_dir: PathBuf,
        recorder: Recorder,
        resync: Duration,
    ) -> Self {
        Context {
            client,
            node,
            libvirt,
            consoles,
            host,
            state_dir,
            recorder,
            resync,
            shutdown_sent: Mutex::default(),
        }
    }

    fn sent(&self, uid: &str) -> bool {
        let set = self.shutdown_sent.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(uid)
    }

    fn mark_sent(&self, uid: &str, sent: bool) {
        let mut set = self.shutdown_sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent {
            set.insert(uid.to_owned());
        } else {
            set.remove(uid);
        }
    }
}

/// Reconciles one VMI.
#[tracing::instrument(skip_all, fields(vmi.namespace = vmi.namespace().unwrap_or_default(), vmi.name = %vmi.name_any()))]
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = vmi
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = vmi.name_any();
    let uid = vmi.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let dname = domain_name(&ns, &name);
    let lookup = dname.clone();
    let domain = ctx
        .libvirt
        .call(move |c| libvirt::lookup(c, &lookup))
        .await?;
    let step = model::plan(
        &vmi,
        &ctx.node,
        domain.as_ref(),
        ctx.sent(&uid),
        Timestamp::now(),
    );
    tracing::debug!(?step, "planned");
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    match step {
        Step::Ignore => Ok(Action::requeue(ctx.resync)),
        Step::Create { paused } => create(&vmi, &ctx, &api, &dname, paused).await,
        Step::Start { paused } => {
            let d = dname.clone();
            let started = ctx
                .libvirt
                .call(move |c| libvirt::with_domain(c, &d, |dom| libvirt::start(dom, paused)))
                .await;
            after_start(&vmi, &ctx, &api, &dname, started).await
        }
        Step::RemoveStale {
            name: stale,
            uid: stale_uid,
        } => {
            tracing::info!(domain = %stale, stale.uid = %stale_uid, "removing the domain of an older VMI of the same name");
            ctx.consoles.forget(&stale);
            ctx.libvirt
                .call(move |c| libvirt::destroy_and_undefine(c, &stale))
                .await?;
            cleanup_files(&ctx, &stale_uid).await?;
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Step::Report(observed) => {
            let d = dname.clone();
            let xml = ctx
                .libvirt
                .call(move |c| libvirt::with_domain(c, &d, libvirt::live_xml))
                .await?;
            let facts = domxml::parse_live(&xml);
            let desired =
                model::running_status(&vmi, &ctx.node, &observed, &facts.macs, Timestamp::now());
            let was_running = vmi.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running);
            write_status(&api, &vmi, &desired).await?;
            if !was_running {
                publish(
                    &ctx,
                    &vmi,
                    false,
                    "Started",
                    "VirtualMachineInstance started".into(),
                )
                .await;
            }
            if ensure_console(&ctx, &dname).await {
                Ok(Action::requeue(ctx.resync))
            } else {
                Ok(Action::requeue(Duration::from_secs(2)))
            }
        }
        Step::End {
            phase,
            reason,
            message,
        } => {
            ctx.consoles.forget(&dname);
            let desired =
                model::final_status(&vmi, &ctx.node, phase, &reason, &message, Timestamp::now());
            write_status(&api, &vmi, &desired).await?;
            let warning = phase == Phase::Failed;
            publish(&ctx, &vmi, warning, &reason, message).await;
            Ok(Action::requeue(ctx.resync))
        }
        Step::Shutdown { press } => {
            if press {
                let d = dname.clone();
                ctx.libvirt
                    .call(move |c| libvirt::with_domain(c, &d, libvirt::shutdown))
                    .await?;
                ctx.mark_sent(&uid, true);
                let grace = model::grace_seconds(&vmi);
                tracing::info!(grace, "asked the guest to power off");
                publish(
                    &ctx,
                    &vmi,
                    false,
                    "ShuttingDown",
                    format!("signalled the guest to power off; destroying it after {grace}s"),
                )
                .await;
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Step::Destroy => {
            let d = dname.clone();
            ctx.libvirt
                .call(move |c| libvirt::with_domain(c, &d, |dom| dom.destroy()))
                .await?;
            tracing::info!("destroyed the domain");
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Step::Finalize => finalize(&vmi, &ctx, &api, &dname, &uid, domain.as_ref()).await,
    }
}

async fn create(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    dname: &str,
    paused: bool,
) -> Result<Action, Error> {
    let uid = vmi.uid().unwrap_or_default();
    let ns = vmi.namespace().unwrap_or_default();
    let dir = volumes::vmi_dir(&ctx.state_dir, &uid);

    let mut secrets = volumes::SecretData::new();
    let secret_api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    for name in volumes::referenced_secrets(vmi) {
        match secret_api.get_opt(&name).await? {
            Some(s) => {
                let data = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                secrets.insert(name, data);
            }
            None => {
                return fail_start(
                    vmi,
                    ctx,
                    api,
                    "SecretNotFound",
                    format!("cloud-init Secret {ns}/{name} does not exist"),
                )
                .await;
            }
        }
    }
    let plans = match volumes::plan(vmi, &dir, &secrets) {
        Ok(p) => p,
        Err(e) => return fail_start(vmi, ctx, api, volume_reason(&e), e.to_string()).await,
    };
    let prepared = tokio::task::spawn_blocking(move || volumes::prepare(&plans))
        .await
        .map_err(|e| Error::Internal(format!("preparing volumes panicked: {e}")))?;
    let resolved = match prepared {
        Ok(r) => r,
        Err(VolumeError::Io { what, reason }) => {
            // Perhaps transient (disk full, a tool missing): retry with backoff.
            return Err(Error::Internal(format!("{what}: {reason}")));
        }
        Err(e) => return fail_start(vmi, ctx, api, volume_reason(&e), e.to_string()).await,
    };
    let forwards = port_forwards(vmi)?;
    if !forwards.is_empty() {
        let list: Vec<String> = forwards
            .iter()
            .map(|f| {
                format!(
                    "127.0.0.1:{} -> {}/{:?} ({})",
                    f.host_port, f.guest_port, f.protocol, f.interface
                )
            })
            .collect();
        publish(
            ctx,
            vmi,
            false,
            "PortsForwarded",
            format!("on node {}: {}", ctx.node, list.join(", ")),
        )
        .await;
    }
    let inputs = DomainInputs {
        node: ctx.node.clone(),
        volumes: resolved,
        port_forwards: forwards,
        nvram: dir.join("nvram.fd"),
    };
    let xml = match domxml::domain_xml(vmi, &ctx.host, &inputs) {
        Ok(x) => x,
        Err(e) => {
            let reason = match e {
                domxml::XmlError::Unsupported { .. } => "Unsupported",
                domxml::XmlError::Invalid { .. } => "InvalidSpec",
            };
            return fail_start(vmi, ctx, api, reason, e.to_string()).await;
        }
    };
    let started = ctx
        .libvirt
        .call(move |c| {
            let dom = c.define_domain_xml(&xml).map_err(libvirt::map_err(""))?;
            libvirt::start(&dom, paused).map_err(libvirt::map_err(""))
        })
        .await;
    if started.is_ok() {
        tracing::info!(domain = dname, paused, "domain defined and started");
    }
    after_start(vmi, ctx, api, dname, started).await
}

async fn after_start(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    dname: &str,
    started: Result<(), LibvirtError>,
) -> Result<Action, Error> {
    match started {
        Ok(()) => {
            let _ = ensure_console(ctx, dname).await;
            Ok(Action::requeue(Duration::from_millis(50)))
        }
        Err(e @ LibvirtError::Call(_)) => {
            // libvirt or QEMU refused the domain: the VMI cannot run here.
            fail_start(vmi, ctx, api, "StartFailed", e.to_string()).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Opens the serial console hub right away, so boot messages are kept for
/// clients that connect later. Best effort: says whether a hub is live (or
/// none is wanted), so the caller can come back soon when not.
async fn ensure_console(ctx: &Context, dname: &str) -> bool {
    if ctx.libvirt.uri().starts_with("test:") || ctx.consoles.get(dname).is_some() {
        return true;
    }
    let consoles = Arc::clone(&ctx.consoles);
    let d = dname.to_owned();
    match tokio::task::spawn_blocking(move || consoles.ensure(&d)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::info!(domain = dname, error = %e, "serial console not attached");
            false
        }
        Err(e) => {
            tracing::warn!(domain = dname, error = %e, "attaching the console panicked");
            false
        }
    }
}

fn volume_reason(e: &VolumeError) -> &'static str {
    match e {
        VolumeError::Unsupported { .. } => "Unsupported",
        VolumeError::Invalid { .. } => "InvalidSpec",
        VolumeError::Missing { .. } => "VolumeNotFound",
        VolumeError::Io { .. } => "VolumeError",
    }
}

/// Host ports for the masquerade interfaces' forwarded ports: free loopback
/// ports chosen now. The mapping is in the domain XML and an Event.
fn port_forwards(vmi: &VirtualMachineInstance) -> Result<Vec<PortForward>, Error> {
    let mut out = Vec::new();
    let ifaces = vmi
        .spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.interfaces.as_ref());
    for iface in ifaces.into_iter().flatten() {
        if iface.masquerade.is_none() {
            continue;
        }
        for p in iface.ports.iter().flatten() {
            let protocol = p.protocol.unwrap_or(PortProtocol::Tcp);
            let host_port = match protocol {
                PortProtocol::Tcp => std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port()),
                PortProtocol::Udp => std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .map(|a| a.port()),
            }
            .map_err(|e| Error::Internal(format!("no free host port: {e}")))?;
            let guest_port = u16::try_from(p.port)
                .map_err(|_| Error::Internal(format!("port {} out of range", p.port)))?;
            out.push(PortForward {
                interface: iface.name.clone(),
                protocol,
                host_port,
                guest_port,
            });
        }
    }
    Ok(out)
}

/// The VMI cannot start on this node: Failed, with the reason.
async fn fail_start(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    reason: &str,
    message: String,
) -> Result<Action, Error> {
    tracing::warn!(reason, message = %message, "VMI cannot start");
    let desired = model::start_failure(vmi, &ctx.node, reason, &message, Timestamp::now());
    write_status(api, vmi, &desired).await?;
    publish(ctx, vmi, true, reason, message).await;
    Ok(Action::requeue(ctx.resync))
}

async fn finalize(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    dname: &str,
    uid: &str,
    domain: Option<&libvirt::DomainInfo>,
) -> Result<Action, Error> {
    ctx.consoles.forget(dname);
    if domain.is_some_and(|d| d.owner.uid == uid) {
        let d = dname.to_owned();
        ctx.libvirt
            .call(move |c| libvirt::destroy_and_undefine(c, &d))
            .await?;
        tracing::info!(domain = dname, "domain undefined");
    }
    cleanup_files(ctx, uid).await?;
    remove_finalizer(api, vmi).await?;
    ctx.mark_sent(uid, false);
    Ok(Action::await_change())
}

async fn cleanup_files(ctx: &Context, uid: &str) -> Result<(), Error> {
    let dir = volumes::vmi_dir(&ctx.state_dir, uid);
    tokio::task::spawn_blocking(move || volumes::cleanup(&dir))
        .await
        .map_err(|e| Error::Internal(format!("cleanup panicked: {e}")))?
        .map_err(|e| Error::Internal(e.to_string()))
}

async fn remove_finalizer(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
) -> Result<(), Error> {
    let Some(i) = vmi.finalizers().iter().position(|f| f == VMI_FINALIZER) else {
        return Ok(());
    };
    let ops = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": VMI_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
    ]);
    let patch: json_patch::Patch =
        serde_json::from_value(ops).map_err(|e| Error::Internal(e.to_string()))?;
    match api
        .patch(
            &vmi.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn write_status(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    desired: &DesiredStatus,
) -> Result<(), Error> {
    if !desired.differs_from(vmi) {
        return Ok(());
    }
    api.patch_status(
        &vmi.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(desired.apply_body()),
    )
    .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    warning: bool,
    reason: &str,
    note: String,
) {
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(note),
        action: "Run".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &vmi.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record an event");
    }
}

/// Retry soon for libvirt outages, with backoff otherwise.
pub fn error_policy(vmi: Arc<VirtualMachineInstance>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        vmi.namespace = vmi.namespace().unwrap_or_default(),
        vmi.name = %vmi.name_any(),
        reason = err.reason(),
        error = %err,
        "reconcile failed"
    );
    match err {
        Error::Libvirt(LibvirtError::Unreachable { .. }) => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(2)),
    }
}

/// The VMI a domain name stands for: `ironvirt-<namespace>_<name>`.
pub fn object_ref(domain: &str) -> Option<ObjectRef<VirtualMachineInstance>> {
    let (ns, name) = parse_domain_name(domain)?;
    Some(ObjectRef::new(name).within(ns))
}

/// Splits libvirt events into per-VMI triggers and "reconcile everything"
/// nudges (an empty name: the connection closed).
pub fn route_events(
    mut events: mpsc::Receiver<libvirt::DomainEvent>,
) -> (
    impl futures::Stream<Item = ObjectRef<VirtualMachineInstance>>,
    mpsc::Sender<()>,
    impl futures::Stream<Item = ()>,
) {
    let (one_tx, one_rx) = mpsc::channel(256);
    let (all_tx, all_rx) = mpsc::channel(4);
    let nudge = all_tx.clone();
    tokio::spawn(async move {
        while let Some(name) = events.recv().await {
            if name.is_empty() {
                let _ = all_tx.try_send(());
            } else if let Some(r) = object_ref(&name)
                && one_tx.send(r).await.is_err()
            {
                break;
            }
        }
    });
    (tokio_stream_from(one_rx), nudge, tokio_stream_from(all_rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Removes domains of this node whose VMI no longer exists, and per-VMI
/// directories that belong to no VMI and no domain. Runs once the VMI cache
/// is complete, then every `every`.
pub async fn sweep_orphans(
    ctx: Arc<Context>,
    store: Store<VirtualMachineInstance>,
    every: Duration,
) {
    // Re-poll now and then: kube-runtime's readiness signal wakes only the
    // last of several waiters, and the controller waits on it too.
    loop {
        match tokio::time::timeout(Duration::from_secs(1), store.wait_until_ready()).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) => {
                tracing::warn!("VMI cache never became ready; no orphan sweeps");
                return;
            }
            Err(_) => {}
        }
    }
    tracing::info!("VMI cache ready; sweeping orphans every {every:?}");
    loop {
        if let Err(e) = sweep_once(&ctx, &store).await {
            tracing::warn!(error = %e, "orphan sweep failed");
        }
        tokio::time::sleep(every).await;
    }
}

async fn sweep_once(ctx: &Context, store: &Store<VirtualMachineInstance>) -> Result<(), Error> {
    let node = ctx.node.clone();
    let domains = ctx
        .libvirt
        .call(move |c| libvirt::list_owned(c, &node))
        .await?;
    let live: HashSet<String> = store.state().iter().filter_map(|v| v.uid()).collect();
    tracing::debug!(domains = domains.len(), vmis = live.len(), "orphan sweep");
    let mut with_domain = HashSet::new();
    for d in domains {
        with_domain.insert(d.owner.uid.clone());
        if live.contains(&d.owner.uid) {
            continue;
        }
        tracing::info!(domain = %d.name, vmi.uid = %d.owner.uid, "removing a domain whose VMI is gone");
        ctx.consoles.forget(&d.name);
        let name = d.name.clone();
        ctx.libvirt
            .call(move |c| libvirt::destroy_and_undefine(c, &name))
            .await?;
        cleanup_files(ctx, &d.owner.uid).await?;
    }
    // Directories first, then a fresh look at the cache: a VMI whose files
    // are being made right now is in the cache by then.
    let root = ctx.state_dir.join("vmis");
    let dirs: Vec<String> = match std::fs::read_dir(&root) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => return Ok(()),
    };
    let live: HashSet<String> = store.state().iter().filter_map(|v| v.uid()).collect();
    for uid in dirs {
        if !live.contains(&uid) && !with_domain.contains(&uid) {
            tracing::info!(vmi.uid = %uid, "removing files of a VMI that is gone");
            cleanup_files(ctx, &uid).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names_map_back_to_vmis() {
        let r = object_ref("ironvirt-ns-1_my-vmi").unwrap();
        assert_eq!(r.name, "my-vmi");
        assert_eq!(r.namespace.as_deref(), Some("ns-1"));
        assert!(object_ref("other").is_none());
        assert!(object_ref("ironvirt-nounderscore").is_none());
        assert_eq!(
            object_ref(&domain_name("a", "b")).map(|r| r.name),
            Some("b".into())
        );
    }
}
