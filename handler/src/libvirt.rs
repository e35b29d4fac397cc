//! The handler's libvirt connection: opened lazily, reopened after it breaks,
//! with lifecycle events delivered to the async side.
//!
//! This is the one module allowed `unsafe`: the `virt` crate has no safe
//! wrapper for domain event registration, connection close callbacks or an
//! error-returning `virDomainGetState`.
//!
//! Every call here blocks. The async side goes through [`Libvirt::call`],
//! which runs the work on tokio's blocking pool and turns a panic (the `virt`
//! crate's Drop impls panic when libvirt's free fails) into an error.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use virt::connect::Connect;
use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::{ErrorDomain, ErrorNumber};
use virt::sys;

use crate::domxml::{self, DomainOwner};

/// A libvirt failure, as the handler sees it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LibvirtError {
    /// No working connection to libvirt.
    #[error("libvirt at {uri} is unreachable: {reason}")]
    Unreachable { uri: String, reason: String },
    /// libvirt answered with an error.
    #[error("libvirt: {0}")]
    Call(String),
    /// The domain does not exist.
    #[error("domain {0} does not exist")]
    NoDomain(String),
    /// The blocking task panicked (a virt Drop impl, say); the handler lives on.
    #[error("libvirt call panicked: {0}")]
    Panicked(String),
}

/// What a domain is doing, reduced to what VMI status needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomState {
    /// Running (or blocked, or shutting down).
    Running,
    /// Paused; `by_user` when someone asked for it (pause subresource or
    /// startStrategy Paused), not an I/O error or migration.
    Paused { by_user: bool },
    /// Not running, with why.
    Shutoff(Shutoff),
    /// Crashed and kept (on_crash=preserve); treated like a crash.
    Crashed,
}

/// Why a domain is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutoff {
    /// Defined but never started, or libvirt lost the reason (daemon restart).
    Unknown,
    /// The guest powered off.
    Shutdown,
    /// Destroyed (by us, or by someone with virsh).
    Destroyed,
    /// QEMU died.
    Crashed,
    /// QEMU failed to start.
    Failed,
    /// Anything else: saved, migrated, …
    Other,
}

/// One of ironvirt's domains, as libvirt reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: String,
    pub owner: DomainOwner,
    pub state: DomState,
}

/// A lifecycle event: the domain's name. The receiver looks the domain up.
pub type DomainEvent = String;

/// Whether libvirt is reachable; `Err` holds the last error.
pub type Health = Result<(), String>;

/// What the driver behind a connection URI can do, decided once when the
/// [`Libvirt`] is made. Only this module looks at the URI to decide it; the
/// rest of the handler asks these questions instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Domains have serial consoles to attach to. libvirt's test driver
    /// (`test:///default`) has none.
    pub consoles: bool,
    /// A connection can die and says so through `virConnectIsAlive`, so a
    /// connection that reports not alive is reopened. The test driver runs in
    /// the process and has no keepalive: its connections are always kept.
    pub keepalive: bool,
    /// Domains run a QEMU whose NIC needs the VMI's network namespace. The
    /// test driver runs no guest, so nothing is set up for it.
    pub guest_network: bool,
}

impl Capabilities {
    /// The capabilities of the driver `uri` connects to.
    pub fn of_uri(uri: &str) -> Self {
        let test_driver = uri.starts_with("test:");
        Capabilities {
            consoles: !test_driver,
            keepalive: !test_driver,
            guest_network: !test_driver,
        }
    }
}

struct Live {
    conn: Connect,
    callback: Option<c_int>,
}

/// The connection to one libvirt URI.
pub struct Libvirt {
    uri: String,
    capabilities: Capabilities,
    live: Mutex<Option<Live>>,
    events: mpsc::Sender<DomainEvent>,
    health: watch::Sender<Health>,
}

static EVENT_LOOP: Once = Once::new();

/// Registers libvirt's default event loop and runs it on its own thread. It
/// must happen before the first connection is opened, and only once.
fn start_event_loop() {
    EVENT_LOOP.call_once(|| {
        virt::error::clear_error_callback();
        if let Err(e) = virt::event::event_register_default_impl() {
            tracing::error!(error = %e, "libvirt event loop registration failed; relying on resync");
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| {
                loop {
                    if let Err(e) = virt::event::event_run_default_impl() {
                        tracing::warn!(error = %e, "libvirt event loop iteration failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the libvirt event thread");
        }
    });
}

/// Is this error a sign that the connection itself is gone?
fn is_connection_error(e: &virt::error::Error) -> bool {
    matches!(
        e.code(),
        Enum::Known(ErrorNumber::NoConnect | ErrorNumber::InvalidConn | ErrorNumber::Rpc)
    ) || matches!(e.domain(), Enum::Known(ErrorDomain::Rpc))
        || (matches!(e.code(), Enum::Known(ErrorNumber::SystemError))
            && matches!(e.domain(), Enum::Known(ErrorDomain::Remote)))
        || e.message().contains("client socket is closed")
        || e.message().contains("End of file while reading data")
}

impl Libvirt {
    /// A connection to `uri`, opened at first use. Lifecycle events go to `events`.
    pub fn new(uri: &str, events: mpsc::Sender<DomainEvent>) -> Arc<Self> {
        start_event_loop();
        let (health, _) = watch::channel(Err("not connected yet".to_owned()));
        Arc::new(Libvirt {
            uri: uri.to_owned(),
            capabilities: Capabilities::of_uri(uri),
            live: Mutex::new(None),
            events,
            health,
        })
    }

    /// The URI this connects to.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// What the driver can do.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Follows reachability changes.
    pub fn health(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    /// The connection, opening it if needed. Blocking.
    pub fn connection(&self) -> Result<Connect, LibvirtError> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = live.as_ref() {
            if matches!(l.conn.is_alive(), Ok(true)) || !self.capabilities.keepalive {
                return Ok(l.conn.clone());
            }
            tracing::warn!(uri = %self.uri, "libvirt connection is dead; reopening");
            if let Some(old) = live.take() {
                self.close(old);
            }
        }
        let conn = Connect::open(Some(&self.uri)).map_err(|e| {
            let reason = e.message().to_owned();
            self.set_health(Err(reason.clone()));
            LibvirtError::Unreachable {
                uri: self.uri.clone(),
                reason,
            }
        })?;
        // Keepalive notices a vanished daemon; the test driver has none.
        let _ = conn.set_keep_alive(5, 3);
        let callback = self.register_events(&conn);
        self.register_close(&conn);
        tracing::info!(uri = %self.uri, events = callback.is_some(), "connected to libvirt");
        self.set_health(Ok(()));
        let handle = conn.clone();
        *live = Some(Live { conn, callback });
        Ok(handle)
    }

    /// Drops the connection after a connection-class error, so the next call reopens it.
    pub fn mark_broken(&self, reason: &str) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = live.take() {
            tracing::warn!(uri = %self.uri, reason, "libvirt connection lost");
            self.close(old);
        }
        self.set_health(Err(reason.to_owned()));
    }

    /// Publishes reachability, waking watchers only when it changed.
    fn set_health(&self, new: Health) {
        self.health.send_if_modified(|h| {
            let changed = h.is_ok() != new.is_ok();
            *h = new;
            changed
        });
    }

    fn close(&self, old: Live) {
        if let Some(id) = old.callback {
            // SAFETY: the connection pointer is valid while `old.conn` lives;
            // deregistering a callback of a dead connection just fails.
            unsafe {
                sys::virConnectDomainEventDeregisterAny(old.conn.as_ptr(), id);
            }
        }
        // Dropping a Connect panics when virConnectClose fails; contain it.
        let conn = old.conn;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(conn))).is_err() {
            tracing::warn!(uri = %self.uri, "closing the libvirt connection failed");
        }
    }

    fn register_events(&self, conn: &Connect) -> Option<c_int> {
        let sender = Box::new(self.events.clone());
        let opaque = Box::into_raw(sender).cast::<c_void>();
        // SAFETY: a lifecycle callback has the signature of
        // virConnectDomainEventCallback; libvirt's VIR_DOMAIN_EVENT_CALLBACK
        // macro performs the same cast. `opaque` is a leaked Box that
        // `free_sender` reclaims when libvirt drops the callback.
        let id = unsafe {
            let cb: sys::virConnectDomainEventCallback = Some(on_lifecycle);
            let generic: sys::virConnectDomainEventGenericCallback = std::mem::transmute(cb);
            sys::virConnectDomainEventRegisterAny(
                conn.as_ptr(),
                std::ptr::null_mut(),
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
                generic,
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            // SAFETY: registration failed, so libvirt did not take `opaque`.
            unsafe { free_sender(opaque) };
            tracing::warn!(uri = %self.uri, "lifecycle events unavailable; relying on resync");
            return None;
        }
        Some(id)
    }

    fn register_close(&self, conn: &Connect) {
        let sender = Box::new(self.events.clone());
        let opaque = Box::into_raw(sender).cast::<c_void>();
        // SAFETY: as for register_events; the close callback gets the same
        // kind of opaque pointer and the same free function.
        let rc = unsafe {
            sys::virConnectRegisterCloseCallback(
                conn.as_ptr(),
                Some(on_close),
                opaque,
                Some(free_sender),
            )
        };
        if rc < 0 {
            // SAFETY: not registered, so still ours.
            unsafe { free_sender(opaque) };
        }
    }

    /// Runs `f` with the connection on the blocking pool. A connection-class
    /// error marks the connection broken; a panic becomes an error.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, LibvirtError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, LibvirtError> + Send + 'static,
    {
        let this = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let conn = this.connection()?;
            match f(&conn) {
                Err(LibvirtError::Unreachable { reason, .. }) => {
                    this.mark_broken(&reason);
                    Err(LibvirtError::Unreachable {
                        uri: this.uri.clone(),
                        reason,
                    })
                }
                Err(LibvirtError::Call(msg)) if matches!(conn.is_alive(), Ok(false)) => {
                    this.mark_broken(&msg);
                    Err(LibvirtError::Unreachable {
                        uri: this.uri.clone(),
                        reason: msg,
                    })
                }
                out => out,
            }
        })
        .await;
        match joined {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                let what = e
                    .into_panic()
                    .downcast_ref::<String>()
                    .cloned()
                    .unwrap_or_else(|| "a libvirt call panicked".to_owned());
                tracing::error!(uri = %self.uri, panic = %what, "libvirt call panicked");
                Err(LibvirtError::Panicked(what))
            }
            Err(e) => Err(LibvirtError::Panicked(e.to_string())),
        }
    }

    /// Sends a reconnect nudge through the event channel (used after a close).
    fn nudge(events: &mpsc::Sender<DomainEvent>) {
        let _ = events.try_send(String::new());
    }
}

/// Maps a libvirt error, keeping "no such domain" apart.
pub fn map_err(name: &str) -> impl Fn(virt::error::Error) -> LibvirtError + '_ {
    move |e| {
        if matches!(e.code(), Enum::Known(ErrorNumber::NoDomain)) {
            LibvirtError::NoDomain(name.to_owned())
        } else if is_connection_error(&e) {
            LibvirtError::Unreachable {
                uri: String::new(),
                reason: e.message().to_owned(),
            }
        } else {
            LibvirtError::Call(e.message().to_owned())
        }
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    _event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    let _ = std::panic::catch_unwind(|| {
        if opaque.is_null() || dom.is_null() {
            return;
        }
        // SAFETY: libvirt passes the opaque pointer given at registration, a
        // live Box<Sender>; the domain pointer is valid during the callback and
        // its name is owned by the domain object.
        let (sender, name) = unsafe {
            let sender = &*(opaque as *const mpsc::Sender<DomainEvent>);
            let raw = sys::virDomainGetName(dom);
            if raw.is_null() {
                return;
            }
            (sender, CStr::from_ptr(raw).to_string_lossy().into_owned())
        };
        // A full channel is fine: the periodic resync catches up.
        let _ = sender.try_send(name);
    });
    0
}

unsafe extern "C" fn on_close(_conn: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    let _ = std::panic::catch_unwind(|| {
        if opaque.is_null() {
            return;
        }
        // SAFETY: as in on_lifecycle.
        let sender = unsafe { &*(opaque as *const mpsc::Sender<DomainEvent>) };
        tracing::warn!(reason, "libvirt closed the connection");
        Libvirt::nudge(sender);
    });
}

unsafe extern "C" fn free_sender(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from Box::into_raw in register_*.
        drop(unsafe { Box::from_raw(opaque as *mut mpsc::Sender<DomainEvent>) });
    }
}

/// The domain's state, with errors reported (the `virt` wrapper hides them).
pub fn domain_state(dom: &Domain) -> Result<DomState, virt::error::Error> {
    let mut state: c_int = -1;
    let mut reason: c_int = -1;
    // SAFETY: `dom` is a live domain handle; the out-pointers are valid.
    let rc = unsafe { sys::virDomainGetState(dom.as_ptr(), &mut state, &mut reason, 0) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(classify(state as u32, reason as u32))
}

/// Reduces libvirt's (state, reason) pair to [`DomState`].
pub fn classify(state: u32, reason: u32) -> DomState {
    match state {
        sys::VIR_DOMAIN_PAUSED => DomState::Paused {
            by_user: reason == sys::VIR_DOMAIN_PAUSED_USER
                || reason == sys::VIR_DOMAIN_PAUSED_STARTING_UP,
        },
        sys::VIR_DOMAIN_PMSUSPENDED => DomState::Paused { by_user: false },
        sys::VIR_DOMAIN_SHUTOFF => DomState::Shutoff(match reason {
            sys::VIR_DOMAIN_SHUTOFF_UNKNOWN => Shutoff::Unknown,
            sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN => Shutoff::Shutdown,
            sys::VIR_DOMAIN_SHUTOFF_DESTROYED => Shutoff::Destroyed,
            sys::VIR_DOMAIN_SHUTOFF_CRASHED => Shutoff::Crashed,
            sys::VIR_DOMAIN_SHUTOFF_FAILED => Shutoff::Failed,
            _ => Shutoff::Other,
        }),
        sys::VIR_DOMAIN_CRASHED => DomState::Crashed,
        _ => DomState::Running,
    }
}

/// ironvirt's metadata on `dom`, or None when the domain is not ironvirt's.
pub fn owner(dom: &Domain) -> Result<Option<DomainOwner>, virt::error::Error> {
    match dom.metadata(
        sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
        Some(domxml::METADATA_NS),
        0,
    ) {
        Ok(xml) => Ok(domxml::parse_owner_element(&xml).or_else(|| domxml::parse_owner(&xml))),
        Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoDomainMetadata)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every ironvirt domain on this connection that belongs to `node`.
pub fn list_owned(conn: &Connect, node: &str) -> Result<Vec<DomainInfo>, LibvirtError> {
    list_where(conn, |owner| owner.node == node)
}

/// Every ironvirt domain on this connection whose metadata names another
/// node than `node`: on a node's own libvirtd, the domains that came in by
/// live migration (their metadata still names the source).
pub fn list_foreign(conn: &Connect, node: &str) -> Result<Vec<DomainInfo>, LibvirtError> {
    list_where(conn, |owner| owner.node != node)
}

fn list_where(
    conn: &Connect,
    keep: impl Fn(&DomainOwner) -> bool,
) -> Result<Vec<DomainInfo>, LibvirtError> {
    let domains = conn.list_all_domains(0).map_err(map_err(""))?;
    let mut out = Vec::new();
    for dom in domains {
        let Ok(name) = dom.name() else { continue };
        if ironvirt_crds::wire::parse_domain_name(&name).is_none() {
            continue;
        }
        // A domain may vanish between list and lookup: skip it.
        let Ok(Some(owner)) = owner(&dom) else {
            continue;
        };
        if !keep(&owner) {
            continue;
        }
        let Ok(state) = domain_state(&dom) else {
            continue;
        };
        out.push(DomainInfo { name, owner, state });
    }
    Ok(out)
}

/// One domain by name, when it exists and is ironvirt's.
pub fn lookup(conn: &Connect, name: &str) -> Result<Option<DomainInfo>, LibvirtError> {
    let dom = match conn.lookup_domain_by_name(name) {
        Ok(d) => d,
        Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoDomain)) => return Ok(None),
        Err(e) => return Err(map_err(name)(e)),
    };
    let Some(owner) = owner(&dom).map_err(map_err(name))? else {
        return Ok(None);
    };
    let state = domain_state(&dom).map_err(map_err(name))?;
    Ok(Some(DomainInfo {
        name: name.to_owned(),
        owner,
        state,
    }))
}

/// Runs `op` on the domain `name`.
pub fn with_domain<T>(
    conn: &Connect,
    name: &str,
    op: impl FnOnce(&Domain) -> Result<T, virt::error::Error>,
) -> Result<T, LibvirtError> {
    let dom = conn.lookup_domain_by_name(name).map_err(map_err(name))?;
    op(&dom).map_err(map_err(name))
}

/// Starts a defined domain, paused if asked.
pub fn start(dom: &Domain, paused: bool) -> Result<(), virt::error::Error> {
    let flags = if paused {
        sys::VIR_DOMAIN_START_PAUSED
    } else {
        0
    };
    dom.create_with_flags(flags)
}

/// Destroys the domain if it runs, then undefines it (with its NVRAM).
/// A domain that is already gone is fine.
pub fn destroy_and_undefine(conn: &Connect, name: &str) -> Result<(), LibvirtError> {
    let dom = match conn.lookup_domain_by_name(name) {
        Ok(d) => d,
        Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoDomain)) => return Ok(()),
        Err(e) => return Err(map_err(name)(e)),
    };
    if matches!(dom.is_active(), Ok(true))
        && let Err(e) = dom.destroy()
        && !matches!(e.code(), Enum::Known(ErrorNumber::OperationInvalid))
    {
        return Err(map_err(name)(e));
    }
    match dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoDomain)) => Ok(()),
        // Drivers without NVRAM support reject the flag.
        Err(_) => match dom.undefine() {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.code(), Enum::Known(ErrorNumber::NoDomain)) => Ok(()),
            Err(e) => Err(map_err(name)(e)),
        },
    }
}

/// Asks the guest to power off (ACPI power button).
pub fn shutdown(dom: &Domain) -> Result<(), virt::error::Error> {
    dom.shutdown_flags(sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        .or_else(|_| dom.shutdown())
}

/// Asks the guest to reboot (ACPI).
pub fn soft_reboot(dom: &Domain) -> Result<(), virt::error::Error> {
    dom.reboot(sys::VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        .or_else(|_| dom.reboot(0))
}

/// The domain's live XML.
pub fn live_xml(dom: &Domain) -> Result<String, virt::error::Error> {
    dom.xml_desc(0)
}

/// Opens the domain's serial console on `stream`, taking it from any other holder.
pub fn open_console(dom: &Domain, stream: &virt::stream::Stream) -> Result<(), virt::error::Error> {
    dom.open_console(None, stream, sys::VIR_DOMAIN_CONSOLE_FORCE)
}

/// Live-migrates `dom` to the libvirtd at `dconn_uri` (peer to peer when
/// `flags` say so: this libvirtd opens `dconn_uri` itself). Blocks until
/// the migration ends.
pub fn migrate_to_uri(
    dom: &Domain,
    dconn_uri: &str,
    params: virt::domain::MigrateParameters,
    flags: u32,
) -> Result<(), virt::error::Error> {
    dom.migrate_to_uri3(Some(dconn_uri), params, flags)
}

/// Sets the longest pause QEMU may take to switch over at the end of a
/// live migration (QEMU's downtime-limit; kept for the next migration).
pub fn set_max_downtime(dom: &Domain, downtime: Duration) -> Result<(), virt::error::Error> {
    let ms = u64::try_from(downtime.as_millis()).unwrap_or(u64::MAX);
    dom.migrate_set_max_downtime(ms, 0)
}

/// Changes the bandwidth limit of a running migration (MiB/s).
pub fn set_max_speed(dom: &Domain, mib_per_s: u64) -> Result<(), virt::error::Error> {
    dom.migrate_set_max_speed(mib_per_s, 0)
}

/// A domain job's statistics (virDomainGetJobStats): what migration
/// progress needs. Absent fields are None.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStats {
    /// virDomainJobType: none, bounded, unbounded, completed, failed, cancelled.
    pub kind: u32,
    pub time_elapsed: Option<u64>,
    pub data_total: Option<u64>,
    pub data_processed: Option<u64>,
    pub data_remaining: Option<u64>,
    pub mem_processed: Option<u64>,
    pub mem_remaining: Option<u64>,
    pub mem_iteration: Option<u64>,
    pub mem_bps: Option<u64>,
    pub disk_processed: Option<u64>,
    pub disk_remaining: Option<u64>,
    pub downtime: Option<u64>,
}

/// The statistics of the domain's current job, or of its last completed
/// one (`completed`: kept by libvirt on the migration's destination, and
/// on the source when the domain stays there).
///
/// Not the `virt` crate's `Domain::job_stats`: it builds a Vec from
/// libvirt's allocation (a null pointer when no job runs, which aborts the
/// process) and frees it with Rust's allocator.
pub fn job_stats(dom: &Domain, completed: bool) -> Result<JobStats, virt::error::Error> {
    let flags = if completed {
        sys::VIR_DOMAIN_JOB_STATS_COMPLETED
    } else {
        0
    };
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: `dom` is live; libvirt allocates `params` (n entries, or
    // null and 0) and we free it with virTypedParamsFree below.
    let rc =
        unsafe { sys::virDomainGetJobStats(dom.as_ptr(), &mut kind, &mut params, &mut n, flags) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    let get = |key: &CStr| -> Option<u64> {
        if params.is_null() {
            return None;
        }
        let mut v: std::os::raw::c_ulonglong = 0;
        // SAFETY: `params` holds `n` typed parameters from libvirt; the key
        // is a NUL-terminated constant; `v` is a valid out-pointer.
        let found = unsafe { sys::virTypedParamsGetULLong(params, n, key.as_ptr(), &mut v) };
        (found == 1).then_some(v)
    };
    let stats = JobStats {
        kind: kind as u32,
        time_elapsed: get(sys::VIR_DOMAIN_JOB_TIME_ELAPSED),
        data_total: get(sys::VIR_DOMAIN_JOB_DATA_TOTAL),
        data_processed: get(sys::VIR_DOMAIN_JOB_DATA_PROCESSED),
        data_remaining: get(sys::VIR_DOMAIN_JOB_DATA_REMAINING),
        mem_processed: get(sys::VIR_DOMAIN_JOB_MEMORY_PROCESSED),
        mem_remaining: get(sys::VIR_DOMAIN_JOB_MEMORY_REMAINING),
        mem_iteration: get(sys::VIR_DOMAIN_JOB_MEMORY_ITERATION),
        mem_bps: get(sys::VIR_DOMAIN_JOB_MEMORY_BPS),
        disk_processed: get(sys::VIR_DOMAIN_JOB_DISK_PROCESSED),
        disk_remaining: get(sys::VIR_DOMAIN_JOB_DISK_REMAINING),
        downtime: get(sys::VIR_DOMAIN_JOB_DOWNTIME),
    };
    if !params.is_null() {
        // SAFETY: allocated by libvirt above, freed once.
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok(stats)
}

/// Aborts the domain's current job (a migration: the domain keeps running
/// here). The `virt` crate does not wrap virDomainAbortJob.
pub fn abort_job(dom: &Domain) -> Result<(), virt::error::Error> {
    // SAFETY: `dom` is a live domain handle for the duration of the call.
    let rc = unsafe { sys::virDomainAbortJob(dom.as_ptr()) };
    if rc < 0 {
        return Err(virt::error::Error::last_error());
    }
    Ok(())
}

/// Host CPUs and memory (bytes), for the Node's capacity.
pub fn host_capacity(conn: &Connect) -> Result<(u32, u64), LibvirtError> {
    let info = conn.node_info().map_err(map_err(""))?;
    Ok((info.cpus, info.memory.saturating_mul(1024)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_driver() {
        let test = Capabilities::of_uri("test:///default");
        assert!(!test.consoles && !test.keepalive);
        for uri in ["qemu:///system", "qemu+unix:///system?socket=/run/l.sock"] {
            let real = Capabilities::of_uri(uri);
            assert!(real.consoles && real.keepalive, "{uri}");
        }
    }

    #[test]
    fn classifies_states() {
        assert_eq!(classify(sys::VIR_DOMAIN_RUNNING, 1), DomState::Running);
        assert_eq!(classify(sys::VIR_DOMAIN_BLOCKED, 0), DomState::Running);
        assert_eq!(
            classify(sys::VIR_DOMAIN_PAUSED, sys::VIR_DOMAIN_PAUSED_USER),
            DomState::Paused { by_user: true }
        );
        assert_eq!(
            classify(sys::VIR_DOMAIN_PAUSED, sys::VIR_DOMAIN_PAUSED_IOERROR),
            DomState::Paused { by_user: false }
        );
        assert_eq!(
            classify(sys::VIR_DOMAIN_SHUTOFF, sys::VIR_DOMAIN_SHUTOFF_SHUTDOWN),
            DomState::Shutoff(Shutoff::Shutdown)
        );
        assert_eq!(
            classify(sys::VIR_DOMAIN_SHUTOFF, sys::VIR_DOMAIN_SHUTOFF_CRASHED),
            DomState::Shutoff(Shutoff::Crashed)
        );
        assert_eq!(
            classify(sys::VIR_DOMAIN_SHUTOFF, sys::VIR_DOMAIN_SHUTOFF_UNKNOWN),
            DomState::Shutoff(Shutoff::Unknown)
        );
        assert_eq!(classify(sys::VIR_DOMAIN_CRASHED, 0), DomState::Crashed);
    }
}
