//! The VMI controller of one node: reconciles the VMIs labelled with its node
//! name ([`NODE_NAME_LABEL`]) against libvirt, on watch events, libvirt
//! lifecycle events and a periodic resync; and a sweeper that removes domains
//! and files whose VMI is gone.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::vmi::VirtualMachineInstancePhase as Phase;
#[cfg(doc)]
use ironvirt_crds::wire::NODE_NAME_LABEL;
use ironvirt_crds::wire::{VMI_FINALIZER, domain_name, parse_domain_name};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;

use crate::context::Context;
use crate::create_plan::{self, ForwardRequest, NotCreated, Refusal};
use crate::domxml::{self, DomainInputs, KernelFiles};
use crate::error::Error;
use crate::events::{self, Reason};
use crate::images::progress::{REPORT_EVERY, Reported, progress_line, report_due};
use crate::images::{PullProgress, Stage};
use crate::libvirt::{self, LibvirtError};
use crate::model::{self, DesiredStatus, Step};
use crate::volumes;

/// The field manager of the handler's status writes.
pub const MANAGER: &str = "ironvirt-handler";

/// How often a pull's reporter looks at its progress (it writes at most
/// every [`REPORT_EVERY`]).
const PROGRESS_TICK: Duration = Duration::from_millis(500);

/// Reconciles one VMI.
#[tracing::instrument(skip_all, fields(vmi.namespace = vmi.namespace().unwrap_or_default(), vmi.name = %vmi.name_any()))]
pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let action = reconcile_inner(&vmi, &ctx).await?;
    ctx.failures.succeeded(&ObjectRef::from_obj(&*vmi));
    Ok(action)
}

async fn reconcile_inner(
    vmi: &Arc<VirtualMachineInstance>,
    ctx: &Arc<Context>,
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
    if vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(ctx.node.as_str()) {
        crate::migrate::on_source(vmi, ctx).await?;
    }
    let step = model::plan(
        vmi,
        &ctx.node,
        domain.as_ref(),
        ctx.sent(&uid),
        Timestamp::now(),
    );
    tracing::debug!(?step, "planned");
    let api: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    match step {
        Step::Ignore => Ok(Action::requeue(ctx.resync)),
        Step::Create { paused } => create(vmi, ctx, &api, &dname, paused).await,
        Step::Start { paused } => {
            let d = dname.clone();
            let started = ctx
                .libvirt
                .call(move |c| libvirt::with_domain(c, &d, |dom| libvirt::start(dom, paused)))
                .await;
            after_start(vmi, ctx, &api, &dname, started).await
        }
        Step::RemoveStale {
            name: stale,
            uid: stale_uid,
        } => {
            if stale_uid == uid {
                tracing::info!(domain = %stale, "removing the domain of a VMI failed while this node was away");
            } else {
                tracing::info!(domain = %stale, stale.uid = %stale_uid, "removing the domain of an older VMI of the same name");
            }
            close_console(ctx, &stale).await;
            ctx.libvirt
                .call(move |c| libvirt::destroy_and_undefine(c, &stale))
                .await?;
            cleanup_files(ctx, &stale_uid).await?;
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Step::Report(observed) => {
            let d = dname.clone();
            let xml = ctx
                .libvirt
                .call(move |c| libvirt::with_domain(c, &d, libvirt::live_xml))
                .await?;
            let mut macs = domxml::parse_live(&xml).macs;
            for (alias, mac) in domxml::spec_macs(vmi) {
                if !macs.iter().any(|(a, _)| *a == alias) {
                    macs.push((alias, mac));
                }
            }
            let address = ctx.guestnet.address(&uid).await;
            let desired =
                model::running_status(vmi, &ctx.node, &observed, &macs, address, Timestamp::now());
            let was_running = vmi.status.as_ref().and_then(|s| s.phase) == Some(Phase::Running);
            write_status(&api, vmi, &desired).await?;
            if !was_running {
                let note = "VirtualMachineInstance started".into();
                events::publish(&ctx.recorder, vmi, Reason::Started, note).await;
            }
            if ensure_console(ctx, &dname).await {
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
            let desired = model::final_status(
                vmi,
                &ctx.node,
                phase,
                reason.as_str(),
                &message,
                Timestamp::now(),
            );
            write_status(&api, vmi, &desired).await?;
            events::publish(&ctx.recorder, vmi, reason, message).await;
            Ok(Action::requeue(ctx.resync))
        }
        Step::Shutdown { press } => {
            if press {
                let d = dname.clone();
                ctx.libvirt
                    .call(move |c| libvirt::with_domain(c, &d, libvirt::shutdown))
                    .await?;
                ctx.mark_sent(&uid, true);
                let grace = model::grace_seconds(vmi);
                tracing::info!(grace, "asked the guest to power off");
                let note =
                    format!("signalled the guest to power off; destroying it after {grace}s");
                events::publish(&ctx.recorder, vmi, Reason::ShuttingDown, note).await;
            }
            Ok(Action::requeue(Duration::from_secs(1)))
        }
        Step::Destroy => {
            close_console(ctx, &dname).await;
            let d = dname.clone();
            ctx.libvirt
                .call(move |c| libvirt::with_domain(c, &d, |dom| dom.destroy()))
                .await?;
            tracing::info!("destroyed the domain");
            Ok(Action::requeue(Duration::from_millis(100)))
        }
        Step::Finalize => finalize(vmi, ctx, &api, &dname, &uid, domain.as_ref()).await,
    }
}

/// Carries out [`create_plan`]: fetches the Secrets, makes the files, picks
/// the host ports, defines and starts the domain.
async fn create(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    dname: &str,
    paused: bool,
) -> Result<Action, Error> {
    let secrets = fetch_secrets(ctx, vmi).await?;
    let plan = match create_plan::plan(vmi, &ctx.state_dir, &ctx.volume_policy, &secrets) {
        Ok(p) => p,
        Err(not) => return not_created(vmi, ctx, api, not).await,
    };
    let (pulled, kernel_boot) = match pull_images(vmi, ctx, api, &plan).await? {
        Pulled::Ready(disks, kernel) => (disks, kernel),
        Pulled::Stop(action) => return Ok(action),
    };
    let volume_plans = plan.volumes;
    let prepared = tokio::task::spawn_blocking(move || volumes::prepare(&volume_plans, &pulled))
        .await
        .map_err(|e| Error::Internal(format!("preparing volumes panicked: {e}")))?;
    let resolved = match prepared {
        Ok(r) => r,
        Err(e) => return not_created(vmi, ctx, api, create_plan::prepare_failure(e)).await,
    };
    let pod_network = if plan.pod_network {
        let uid = vmi.uid().unwrap_or_default();
        let ports = plan
            .forwards
            .iter()
            .map(ForwardRequest::guest_port)
            .collect();
        let (address, socket) = ctx.guestnet.attach(&plan.dir, &uid, ports).await?;
        if let Some(note) =
            address.and_then(|a| create_plan::forwards_note(&ctx.node, a, &plan.forwards))
        {
            events::publish(&ctx.recorder, vmi, Reason::PortsForwarded, note).await;
        }
        Some(socket)
    } else {
        None
    };
    let uid = vmi.uid().unwrap_or_default();
    let consoles = Arc::clone(&ctx.consoles);
    let console_socket = tokio::task::spawn_blocking(move || consoles.prepare_socket(&uid))
        .await
        .map_err(|e| Error::Internal(format!("preparing the console socket panicked: {e}")))?
        .map_err(|e| Error::Internal(format!("preparing the console socket: {e}")))?;
    let inputs = DomainInputs {
        node: ctx.node.clone(),
        volumes: resolved,
        pod_network,
        nvram: plan.nvram,
        console_socket,
        kernel_boot,
    };
    let xml = match create_plan::domain_xml(vmi, &ctx.host, &inputs) {
        Ok(x) => x,
        Err(refusal) => return fail_start(vmi, ctx, api, refusal).await,
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

/// What [`pull_images`] leads to.
enum Pulled {
    /// Every image file the VMI needs is on the node.
    Ready(volumes::PulledDisks, Option<KernelFiles>),
    /// The create stops here: the VMI failed, or a pull is retried later.
    Stop(Action),
}

/// An image file a create needs: a containerDisk's disk, or the kernel or
/// initrd of a kernel boot.
pub(crate) struct ImageFile<'a> {
    /// The spec field it comes from, for messages.
    pub(crate) field: String,
    pub(crate) image: &'a crate::images::ImageRef,
    pub(crate) policy: crate::images::PullPolicy,
    pub(crate) wanted: &'a crate::images::Wanted,
    pub(crate) pull_secret: Option<&'a str>,
    pub(crate) slot: Slot,
}

/// Where a pulled file goes.
pub(crate) enum Slot {
    Volume(String),
    Kernel,
    Initrd,
}

/// The image files `plan` needs, in a fixed order: volumes by name, then
/// the kernel and initrd.
pub(crate) fn image_files(plan: &create_plan::CreatePlan) -> Vec<ImageFile<'_>> {
    let mut files = Vec::new();
    for (name, p) in &plan.volumes {
        if let volumes::VolumePlan::ContainerDisk(cd) = p {
            files.push(ImageFile {
                field: format!("spec.volumes[name={name}].containerDisk"),
                image: &cd.image,
                policy: cd.policy,
                wanted: &cd.wanted,
                pull_secret: cd.pull_secret.as_deref(),
                slot: Slot::Volume(name.clone()),
            });
        }
    }
    if let Some(kb) = &plan.kernel_boot {
        let field = "spec.domain.firmware.kernelBoot.container";
        let boot = |wanted, slot| ImageFile {
            field: field.to_owned(),
            image: &kb.image,
            policy: kb.policy,
            wanted,
            pull_secret: kb.pull_secret.as_deref(),
            slot,
        };
        files.push(boot(&kb.kernel, Slot::Kernel));
        if let Some(initrd) = &kb.initrd {
            files.push(boot(initrd, Slot::Initrd));
        }
    }
    files
}

/// Pulls the images of the VMI's containerDisk volumes and kernel boot (or
/// finds them in the node's cache). While an image downloads, the VMI
/// shows how far it is ([`report_pull`]). A registry failure leaves the VMI
/// waiting with reason ErrImagePull, then ImagePullBackOff, retried with
/// backoff; an image without the file fails the VMI.
async fn pull_images(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    plan: &create_plan::CreatePlan,
) -> Result<Pulled, Error> {
    use crate::images::ImageError;
    let mut disks = volumes::PulledDisks::new();
    let mut kernel = None;
    let mut initrd = None;
    let key = ObjectRef::from_obj(vmi);
    let files = image_files(plan);
    // The VMI as the last progress report left it.
    let mut latest: Option<VirtualMachineInstance> = None;
    if !files.is_empty() {
        let not_before = ctx
            .pull_not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied();
        if let Some(left) = not_before
            .and_then(|t| t.checked_duration_since(std::time::Instant::now()))
            .filter(|d| !d.is_zero())
        {
            return Ok(Pulled::Stop(Action::requeue(left)));
        }
    }
    for file in &files {
        let field = &file.field;
        // The VMI as the last status write left it, for the writes below
        // to compare with.
        let current = latest.as_ref().unwrap_or(vmi);
        let Some(images) = &ctx.images else {
            let refusal = Refusal::new(
                Reason::Unsupported,
                format!("{field}: this node's handler has no image cache (--image-cache-dir)"),
            );
            return Ok(Pulled::Stop(fail_start(current, ctx, api, refusal).await?));
        };
        let auth = match file.pull_secret {
            None => oci_client::secrets::RegistryAuth::Anonymous,
            Some(secret) => match pull_auth(ctx, vmi, secret, &file.image.registry).await? {
                Ok(auth) => auth,
                Err(message) => {
                    let e = ImageError::Pull {
                        image: file.image.to_string(),
                        reason: format!("{field}.imagePullSecret: {message}"),
                    };
                    return pull_failed(current, ctx, api, &key, e)
                        .await
                        .map(Pulled::Stop);
                }
            },
        };
        let uid = vmi.uid().unwrap_or_default();
        let image = file.image.to_string();
        let progress = PullProgress::new();
        let pull = async {
            let got = images
                .ensure_reporting(file.image, file.wanted, file.policy, &auth, &uid, &progress)
                .await;
            progress.finish();
            got
        };
        // The reporter runs beside the pull in this reconcile (other VMIs
        // reconcile concurrently), and its last write is done before any
        // status written after the pull.
        let (got, reported) = tokio::join!(
            pull,
            report_pull(ctx, api.clone(), current, &image, &progress)
        );
        if reported.is_some() {
            latest = reported;
        }
        let vmi = latest.as_ref().unwrap_or(vmi);
        match got {
            Ok(cached) => {
                tracing::info!(field = %field, image = %file.image, digest = %cached.digest, "image file ready");
                let note = format!("image {} ({}) is on the node", file.image, cached.digest);
                events::publish(&ctx.recorder, vmi, Reason::Pulled, note).await;
                match &file.slot {
                    Slot::Volume(name) => {
                        disks.insert(name.clone(), cached);
                    }
                    Slot::Kernel => kernel = Some(cached.path),
                    Slot::Initrd => initrd = Some(cached.path),
                }
            }
            Err(ImageError::BadImage(message)) => {
                let refusal = Refusal::new(
                    Reason::InvalidImage,
                    format!("{field}: image {}: {message}", file.image),
                );
                return Ok(Pulled::Stop(fail_start(vmi, ctx, api, refusal).await?));
            }
            Err(ImageError::Io(message)) => return Err(Error::Internal(message)),
            Err(e) => return pull_failed(vmi, ctx, api, &key, e).await.map(Pulled::Stop),
        }
    }
    if !files.is_empty() {
        ctx.pull_failures.succeeded(&key);
        ctx.pull_not_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
    }
    let kernel_files = match (kernel, &plan.kernel_boot) {
        (Some(kernel), Some(kb)) => Some(KernelFiles {
            kernel,
            initrd,
            cmdline: kb.cmdline.clone(),
        }),
        _ => None,
    };
    Ok(Pulled::Ready(disks, kernel_files))
}

/// Reports the pull `progress` of `image` on the VMI until it finishes:
/// once a download starts (never for a cache hit), an Event Pulling, and
/// the VMI's Ready condition False with reason Pulling and the progress
/// line, rewritten when the line changed, at most every
/// [`REPORT_EVERY`]. Writes through `api` (its own handle) as the
/// handler's field manager, like every status write. Returns the VMI as
/// the last write left it, if it wrote.
async fn report_pull(
    ctx: &Context,
    api: Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    image: &str,
    progress: &PullProgress,
) -> Option<VirtualMachineInstance> {
    let mut stages = progress.subscribe();
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latest: Option<VirtualMachineInstance> = None;
    let mut last: Option<Reported> = None;
    loop {
        tokio::select! {
            changed = stages.changed() => if changed.is_err() { break },
            _ = tick.tick() => {}
        }
        let stage = *stages.borrow_and_update();
        if stage == Stage::Finished {
            break;
        }
        let Some(line) = progress_line(image, stage, progress.done()) else {
            continue;
        };
        let now = std::time::Instant::now();
        if !report_due(last.as_ref(), &line, now, REPORT_EVERY) {
            continue;
        }
        if last.is_none() {
            let note = format!("pulling image {image}");
            events::publish(&ctx.recorder, vmi, Reason::Pulling, note).await;
        }
        tracing::debug!(image, progress = %line, "pull progress");
        last = Some(Reported {
            line: line.clone(),
            at: now,
        });
        let base = latest.as_ref().unwrap_or(vmi);
        let desired = model::pulling(base, &ctx.node, &line, Timestamp::now());
        match apply_status(&api, base, &desired).await {
            Ok(Some(written)) => latest = Some(written),
            Ok(None) => {}
            // Best effort: the pull goes on; the next line tries again.
            Err(e) => tracing::warn!(image, error = %e, "could not report the pull's progress"),
        }
    }
    latest
}

/// A failed pull: ErrImagePull the first time, ImagePullBackOff after, in
/// the VMI's Ready condition and an Event; retried with backoff.
async fn pull_failed(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    key: &ObjectRef<VirtualMachineInstance>,
    e: crate::images::ImageError,
) -> Result<Action, Error> {
    let wait = ctx.pull_failures.failed(key, Duration::ZERO);
    ctx.pull_not_before
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key.clone(), std::time::Instant::now() + wait);
    let first = wait <= Duration::from_secs(2);
    let reason = if first {
        Reason::ErrImagePull
    } else {
        Reason::ImagePullBackOff
    };
    let message = if first {
        e.to_string()
    } else {
        format!("{e} (retrying in {} s)", wait.as_secs())
    };
    tracing::warn!(reason = reason.as_str(), %message, retry_in_s = wait.as_secs(), "image pull failed");
    let desired = model::waiting(vmi, &ctx.node, reason.as_str(), &message, Timestamp::now());
    write_status(api, vmi, &desired).await?;
    events::publish(&ctx.recorder, vmi, reason, message).await;
    Ok(Action::requeue(wait))
}

/// Registry credentials from the VMI's `imagePullSecret` (a
/// `kubernetes.io/dockerconfigjson` Secret of its namespace, fetched as the
/// node may: through ironvirt-api, for a VMI that names it). The inner
/// error says why the Secret gives none.
pub(crate) async fn pull_auth(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
    secret: &str,
    registry: &str,
) -> Result<Result<oci_client::secrets::RegistryAuth, String>, Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let Some(s) = node_secret(&ctx.client, &ns, &vmi.name_any(), secret).await? else {
        return Ok(Err(format!("Secret {ns}/{secret} does not exist")));
    };
    let data = s.data.unwrap_or_default();
    let Some(config) = data.get(".dockerconfigjson") else {
        return Ok(Err(format!(
            "Secret {ns}/{secret} has no .dockerconfigjson (type kubernetes.io/dockerconfigjson)"
        )));
    };
    Ok(crate::images::docker_config_auth(&config.0, registry)
        .map_err(|e| format!("Secret {ns}/{secret}: {e}")))
}

/// The Secrets the VMI's cloud-init volumes reference, up to the first that
/// does not exist (the plan refuses the VMI for it).
pub(crate) async fn fetch_secrets(
    ctx: &Context,
    vmi: &VirtualMachineInstance,
) -> Result<volumes::SecretData, Error> {
    let ns = vmi.namespace().unwrap_or_default();
    let vmi_name = vmi.name_any();
    let mut secrets = volumes::SecretData::new();
    for name in volumes::referenced_secrets(vmi) {
        let Some(s) = node_secret(&ctx.client, &ns, &vmi_name, &name).await? else {
            break;
        };
        let data = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        secrets.insert(name, data);
    }
    Ok(secrets)
}

/// Secret `secret` of VMI `ns/vmi`, or `None` when it does not exist.
///
/// The handler has no Secret read: it asks ironvirt-api, through
/// kube-apiserver, which hands a VMI's Secret only to the handler of the
/// VMI's node, and only one the VMI references
/// (`GET /apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/secrets/{secret}`).
async fn node_secret(
    client: &kube::Client,
    ns: &str,
    vmi: &str,
    secret: &str,
) -> Result<Option<Secret>, Error> {
    let path = format!(
        "/apis/{}/v1/namespaces/{ns}/virtualmachineinstances/{vmi}/secrets/{secret}",
        ironvirt_crds::SUBRESOURCES_GROUP
    );
    let request = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| Error::Internal(e.to_string()))?;
    match client.request::<Secret>(request).await {
        Ok(s) => Ok(Some(s)),
        Err(kube::Error::Api(s)) if s.code == 404 && s.reason == "NotFound" => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A create that stopped: the VMI fails, or the reconcile is retried.
async fn not_created(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    not: NotCreated,
) -> Result<Action, Error> {
    match not {
        NotCreated::Refused(refusal) => fail_start(vmi, ctx, api, refusal).await,
        NotCreated::Retry(message) => Err(Error::Internal(message)),
    }
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
        // libvirt or QEMU refused the domain: the VMI cannot run here.
        Err(e) => match create_plan::start_refusal(e) {
            Ok(refusal) => fail_start(vmi, ctx, api, refusal).await,
            Err(e) => Err(e.into()),
        },
    }
}

/// Opens the serial console hub right away, so boot messages are kept for
/// clients that connect later. Best effort: says whether a hub is live (or
/// none is wanted), so the caller can come back soon when not.
pub(crate) async fn ensure_console(ctx: &Context, dname: &str) -> bool {
    if !ctx.libvirt.capabilities().consoles || ctx.consoles.get(dname).is_some() {
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

/// The VMI cannot start on this node: Failed, with the reason.
async fn fail_start(
    vmi: &VirtualMachineInstance,
    ctx: &Context,
    api: &Api<VirtualMachineInstance>,
    refusal: Refusal,
) -> Result<Action, Error> {
    let Refusal { reason, message } = refusal;
    tracing::warn!(reason = reason.as_str(), message = %message, "VMI cannot start");
    let desired = model::start_failure(vmi, &ctx.node, reason.as_str(), &message, Timestamp::now());
    write_status(api, vmi, &desired).await?;
    events::publish(&ctx.recorder, vmi, reason, message).await;
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
    let key = ObjectRef::from_obj(vmi);
    ctx.pull_failures.succeeded(&key);
    ctx.pull_not_before
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    close_console(ctx, dname).await;
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

/// Closes the console of a domain before it is destroyed (see
/// [`crate::console::Consoles::close`]).
pub(crate) async fn close_console(ctx: &Context, domain: &str) {
    let consoles = Arc::clone(&ctx.consoles);
    let d = domain.to_owned();
    if let Err(e) = tokio::task::spawn_blocking(move || consoles.close(&d)).await {
        tracing::warn!(domain, error = %e, "closing the console panicked");
    }
}

/// Removes what the node holds for VMI `uid` besides its domain: its network
/// namespace, its console socket and its files. Idempotent.
pub(crate) async fn cleanup_files(ctx: &Context, uid: &str) -> Result<(), Error> {
    ctx.guestnet.detach(uid).await?;
    ctx.consoles
        .remove_socket(uid)
        .map_err(|e| Error::Internal(format!("removing the console socket: {e}")))?;
    if let Some(images) = &ctx.images {
        images
            .release(uid)
            .map_err(|e| Error::Internal(e.to_string()))?;
        // Best effort: a full cache is collected again when the next VMI goes.
        if let Err(e) = images.collect(ctx.image_cache_bytes, crate::images::GC_GRACE) {
            tracing::warn!(error = %e, "collecting the image cache failed");
        }
    }
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
    apply_status(api, vmi, desired).await.map(|_| ())
}

/// Applies `desired` (server-side apply, field manager [`MANAGER`]) unless
/// only timestamps would change; returns the VMI as written, if written.
async fn apply_status(
    api: &Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    desired: &DesiredStatus,
) -> Result<Option<VirtualMachineInstance>, Error> {
    if !desired.differs_from(vmi) {
        return Ok(None);
    }
    let written = api
        .patch_status(
            &vmi.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired.apply_body()),
        )
        .await?;
    Ok(Some(written))
}

/// Failed reconciles retry with exponential backoff per VMI
/// ([`crate::error::backoff`]: 2 s doubling to 5 min, never sooner than 5 s
/// while libvirt is unreachable), so one broken VMI never becomes a hot loop.
/// A good reconcile resets the count.
pub fn error_policy(vmi: Arc<VirtualMachineInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    let wait = ctx
        .failures
        .failed(&ObjectRef::from_obj(&*vmi), err.retry_floor());
    tracing::warn!(
        vmi.namespace = vmi.namespace().unwrap_or_default(),
        vmi.name = %vmi.name_any(),
        reason = err.reason(),
        error = %err,
        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        "reconcile failed"
    );
    Action::requeue(wait)
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
    stores: Vec<Store<VirtualMachineInstance>>,
    every: Duration,
) {
    let Some(store) = stores.first().cloned() else {
        return;
    };
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
        match sweep_once(&ctx, &stores).await {
            Ok(()) => {
                ctx.metrics.orphan_sweeps.inc();
            }
            Err(e) => tracing::warn!(error = %e, "orphan sweep failed"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The UIDs of the VMIs in `stores` (this node's, and those migrating here).
fn live_uids(stores: &[Store<VirtualMachineInstance>]) -> HashSet<String> {
    stores
        .iter()
        .flat_map(|s| s.state())
        .filter_map(|v| v.uid())
        .collect()
}

async fn sweep_once(ctx: &Context, stores: &[Store<VirtualMachineInstance>]) -> Result<(), Error> {
    let node = ctx.node.clone();
    let domains = ctx
        .libvirt
        .call(move |c| libvirt::list_owned(c, &node))
        .await?;
    let live = live_uids(stores);
    tracing::debug!(domains = domains.len(), vmis = live.len(), "orphan sweep");
    let mut with_domain = HashSet::new();
    for d in domains {
        with_domain.insert(d.owner.uid.clone());
        if live.contains(&d.owner.uid) {
            continue;
        }
        tracing::info!(domain = %d.name, vmi.uid = %d.owner.uid, "removing a domain whose VMI is gone");
        close_console(ctx, &d.name).await;
        let name = d.name.clone();
        ctx.libvirt
            .call(move |c| libvirt::destroy_and_undefine(c, &name))
            .await?;
        cleanup_files(ctx, &d.owner.uid).await?;
    }
    // A domain that came here by live migration keeps the source node in
    // its metadata. When its VMI is gone (or the name is another VMI now) it
    // is an orphan as well: e.g. a VMI deleted while it migrated here with
    // this handler down (found by the chaos run). The VMI is read from
    // kube-apiserver: on a libvirtd shared by several handlers (the test
    // bed) the other handlers' domains are not in this handler's cache.
    let node = ctx.node.clone();
    let foreign = ctx
        .libvirt
        .call(move |c| libvirt::list_foreign(c, &node))
        .await?;
    for d in foreign {
        let uid = d.owner.uid.clone();
        if live.contains(&uid) {
            with_domain.insert(uid);
            continue;
        }
        let api: Api<VirtualMachineInstance> =
            Api::namespaced(ctx.client.clone(), &d.owner.namespace);
        let found = match api.get_opt(&d.owner.name).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(domain = %d.name, error = %e, "looking up the VMI of a migrated-in domain");
                continue;
            }
        };
        if !vmi_gone(found.as_ref(), &uid) {
            continue;
        }
        tracing::info!(domain = %d.name, vmi.uid = %uid, from = %d.owner.node, "removing a domain that migrated here and whose VMI is gone");
        close_console(ctx, &d.name).await;
        let name = d.name.clone();
        ctx.libvirt
            .call(move |c| libvirt::destroy_and_undefine(c, &name))
            .await?;
        cleanup_files(ctx, &uid).await?;
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
    let networks = ctx.guestnet.attached_uids().await;
    let live = live_uids(stores);
    let mut gone: Vec<String> = dirs.into_iter().chain(networks).collect();
    gone.sort();
    gone.dedup();
    for uid in gone {
        if !live.contains(&uid) && !with_domain.contains(&uid) {
            tracing::info!(vmi.uid = %uid, "removing the network and files of a VMI that is gone");
            cleanup_files(ctx, &uid).await?;
        }
    }
    Ok(())
}

/// Whether the VMI a domain belongs to (`uid`) is gone, given what
/// kube-apiserver has under the domain's namespace and name.
fn vmi_gone(found: Option<&VirtualMachineInstance>, uid: &str) -> bool {
    found.and_then(|v| v.uid()).as_deref() != Some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migrated_in_domain_is_an_orphan_once_its_vmi_is_gone_or_replaced() {
        let mut v = VirtualMachineInstance::new("d0", Default::default());
        v.metadata.uid = Some("u-1".into());
        assert!(!vmi_gone(Some(&v), "u-1"), "its VMI is still there");
        assert!(vmi_gone(Some(&v), "u-0"), "the name is a new VMI now");
        assert!(vmi_gone(None, "u-1"), "its VMI is deleted");
    }

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
