//! The handler's live-migration primitive (issue #18): move a running
//! domain to another node's libvirtd, follow its progress, abort it.
//!
//! Migration is libvirt's managed peer-to-peer migration: the source
//! libvirtd opens the target's libvirtd itself (`qemu+tls://…`, mutual TLS
//! with node certificates), prepares the domain there and drives QEMU's
//! migration stream, which runs over TLS too ([`MigrateOptions::tls`],
//! VIR_MIGRATE_TLS, verified against the migration URI's host). Disks not
//! on shared storage (per-VMI overlays, emptyDisks, cloud-init disks) are
//! copied by block migration ([`MigrateOptions::copy_disks`]), incremental:
//! a disk's backing file (a containerDisk's base) must already be on the
//! target, and the target file must exist there (the target handler makes
//! it before the migration starts).
//!
//! Every call blocks in libvirt and runs on tokio's blocking pool
//! ([`Libvirt::call`]); [`migrate`] returns when the migration ended, so
//! [`progress`] and [`abort`] are called from another task meanwhile.

use std::sync::Arc;
use std::time::Duration;

use virt::domain::MigrateParameters;
use virt::sys;

use crate::libvirt::{self, JobStats, Libvirt, LibvirtError};

/// Where a domain migrates to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationTarget {
    /// The target libvirtd as the source libvirtd opens it, such as
    /// `qemu+tls://10.213.0.12/system` (its certificate must name that host).
    pub libvirt_uri: String,
    /// QEMU's migration URI (`tcp://<target address>`): the address QEMU
    /// connects to and verifies the target's certificate for. None: the
    /// target libvirtd's `migration_host` (or its host name).
    pub migration_uri: Option<String>,
}

/// How to migrate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Bandwidth limit in MiB/s (None: unlimited).
    pub bandwidth_mib: Option<u64>,
    /// Longest pause at the switch-over (QEMU's default: 300 ms).
    pub max_downtime: Option<Duration>,
    /// Disks (target names, `vda`, …) copied to the target (block
    /// migration, incremental: only what is above a shared backing file).
    pub copy_disks: Vec<String>,
    /// QEMU's migration and NBD streams over TLS (VIR_MIGRATE_TLS). The
    /// libvirt connection between the daemons is TLS by its URI.
    pub tls: bool,
    /// Define the domain on the target and undefine it on the source
    /// (a persistent domain stays persistent where it runs).
    pub persistent: bool,
    /// The domain's XML on the target, when it differs (paths, say).
    pub dest_xml: Option<String>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions {
            bandwidth_mib: None,
            max_downtime: None,
            copy_disks: Vec::new(),
            tls: true,
            persistent: false,
            dest_xml: None,
        }
    }
}

/// Why a migration failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MigrationError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("migration of {domain} to {target} failed: {reason}")]
    Failed {
        domain: String,
        target: String,
        reason: String,
    },
    #[error("migration of {domain} was aborted")]
    Aborted { domain: String },
}

/// The flags of a migration with `opts`: live, peer to peer, and what the
/// options ask for.
pub fn flags(opts: &MigrateOptions) -> u32 {
    let mut f =
        sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PEER2PEER | sys::VIR_MIGRATE_ABORT_ON_ERROR;
    if opts.tls {
        f |= sys::VIR_MIGRATE_TLS;
    }
    if !opts.copy_disks.is_empty() {
        f |= sys::VIR_MIGRATE_NON_SHARED_INC;
    }
    if opts.persistent {
        f |= sys::VIR_MIGRATE_PERSIST_DEST | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
    }
    f
}

/// The typed parameters of a migration to `target` with `opts`.
pub fn parameters(target: &MigrationTarget, opts: &MigrateOptions) -> MigrateParameters {
    MigrateParameters {
        uri: target.migration_uri.clone(),
        bandwidth: opts.bandwidth_mib,
        migrate_disks: opts.copy_disks.clone(),
        dest_xml: opts.dest_xml.clone(),
        ..MigrateParameters::default()
    }
}

/// Migration progress, as libvirt's job statistics give it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Whether a job is running (for [`progress`]) or the last one
    /// succeeded (for [`completed`]).
    pub active: bool,
    pub time_elapsed_ms: Option<u64>,
    pub data_total: Option<u64>,
    pub data_processed: Option<u64>,
    pub data_remaining: Option<u64>,
    pub mem_processed: Option<u64>,
    pub mem_remaining: Option<u64>,
    /// Memory passes so far (1 = the first copy; more: dirty pages again).
    pub mem_iteration: Option<u64>,
    pub mem_bps: Option<u64>,
    pub disk_processed: Option<u64>,
    pub disk_remaining: Option<u64>,
    /// The pause at the switch-over (ms), once completed.
    pub downtime_ms: Option<u64>,
}

impl Progress {
    fn from_stats(s: &JobStats) -> Self {
        let active =
            s.kind == sys::VIR_DOMAIN_JOB_BOUNDED || s.kind == sys::VIR_DOMAIN_JOB_UNBOUNDED;
        Progress {
            active,
            time_elapsed_ms: s.time_elapsed,
            data_total: s.data_total,
            data_processed: s.data_processed,
            data_remaining: s.data_remaining,
            mem_processed: s.mem_processed,
            mem_remaining: s.mem_remaining,
            mem_iteration: s.mem_iteration,
            mem_bps: s.mem_bps,
            disk_processed: s.disk_processed,
            disk_remaining: s.disk_remaining,
            downtime_ms: s.downtime,
        }
    }
}

fn call_err(domain: &str) -> impl Fn(virt::error::Error) -> LibvirtError + '_ {
    libvirt::map_err(domain)
}

/// Live-migrates domain `domain` of `lv` to `target`; returns when the
/// domain runs on the target (and is gone here), or with the reason it
/// still runs here.
pub async fn migrate(
    lv: &Arc<Libvirt>,
    domain: &str,
    target: &MigrationTarget,
    opts: &MigrateOptions,
) -> Result<(), MigrationError> {
    let name = domain.to_owned();
    let tgt = target.clone();
    let o = opts.clone();
    tracing::info!(
        domain,
        target = %target.libvirt_uri,
        migration_uri = ?target.migration_uri,
        bandwidth_mib = ?opts.bandwidth_mib,
        max_downtime_ms = ?opts.max_downtime.map(|d| d.as_millis()),
        copy_disks = ?opts.copy_disks,
        tls = opts.tls,
        "live migration starts"
    );
    let started = std::time::Instant::now();
    let outcome = lv
        .call(move |conn| {
            let dom = conn.lookup_domain_by_name(&name).map_err(call_err(&name))?;
            if let Some(d) = o.max_downtime {
                libvirt::set_max_downtime(&dom, d).map_err(call_err(&name))?;
            }
            // A migration error is about the migration (the target, the
            // stream), not this connection: never Unreachable.
            Ok(
                libvirt::migrate_to_uri(&dom, &tgt.libvirt_uri, parameters(&tgt, &o), flags(&o))
                    .map_err(|e| (e.code(), e.message().to_owned())),
            )
        })
        .await?;
    match outcome {
        Ok(()) => {
            tracing::info!(domain, target = %target.libvirt_uri, elapsed_ms = started.elapsed().as_millis() as u64, "live migration completed");
            Ok(())
        }
        Err((code, reason)) => {
            tracing::warn!(domain, target = %target.libvirt_uri, reason = %reason, "live migration failed");
            if matches!(
                code,
                virt::enumutil::Enum::Known(virt::error::ErrorNumber::OperationAborted)
            ) {
                Err(MigrationError::Aborted {
                    domain: domain.to_owned(),
                })
            } else {
                Err(MigrationError::Failed {
                    domain: domain.to_owned(),
                    target: target.libvirt_uri.clone(),
                    reason,
                })
            }
        }
    }
}

/// The progress of the domain's running job (inactive when none runs).
pub async fn progress(lv: &Arc<Libvirt>, domain: &str) -> Result<Progress, LibvirtError> {
    let name = domain.to_owned();
    lv.call(move |conn| {
        libvirt::with_domain(conn, &name, |dom| libvirt::job_stats(dom, false))
            .map(|s| Progress::from_stats(&s))
    })
    .await
}

/// The statistics of the domain's last completed job: on a migration's
/// target, the migration that brought it (its downtime included).
pub async fn completed(lv: &Arc<Libvirt>, domain: &str) -> Result<Progress, LibvirtError> {
    let name = domain.to_owned();
    lv.call(move |conn| {
        libvirt::with_domain(conn, &name, |dom| libvirt::job_stats(dom, true)).map(|s| {
            let mut p = Progress::from_stats(&s);
            p.active = s.kind == sys::VIR_DOMAIN_JOB_COMPLETED;
            p
        })
    })
    .await
}

/// Changes the bandwidth limit of the domain's running migration.
pub async fn set_bandwidth(
    lv: &Arc<Libvirt>,
    domain: &str,
    mib_per_s: u64,
) -> Result<(), LibvirtError> {
    let name = domain.to_owned();
    lv.call(move |conn| {
        libvirt::with_domain(conn, &name, |dom| libvirt::set_max_speed(dom, mib_per_s))
    })
    .await
}

/// Aborts the domain's running migration: it keeps running here.
pub async fn abort(lv: &Arc<Libvirt>, domain: &str) -> Result<(), LibvirtError> {
    let name = domain.to_owned();
    tracing::info!(domain, "aborting the migration");
    lv.call(move |conn| libvirt::with_domain(conn, &name, libvirt::abort_job))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_follow_the_options() {
        let base =
            sys::VIR_MIGRATE_LIVE | sys::VIR_MIGRATE_PEER2PEER | sys::VIR_MIGRATE_ABORT_ON_ERROR;
        let plain = MigrateOptions {
            tls: false,
            ..MigrateOptions::default()
        };
        assert_eq!(flags(&plain), base);
        let all = MigrateOptions {
            copy_disks: vec!["vda".into()],
            persistent: true,
            ..MigrateOptions::default()
        };
        let f = flags(&all);
        for want in [
            sys::VIR_MIGRATE_TLS,
            sys::VIR_MIGRATE_NON_SHARED_INC,
            sys::VIR_MIGRATE_PERSIST_DEST,
            sys::VIR_MIGRATE_UNDEFINE_SOURCE,
        ] {
            assert_eq!(f & want, want, "{want:#x} in {f:#x}");
        }
        assert_eq!(f & sys::VIR_MIGRATE_NON_SHARED_DISK, 0, "incremental only");
        assert_eq!(f & sys::VIR_MIGRATE_TUNNELLED, 0, "QEMU's own TLS stream");
    }

    #[test]
    fn parameters_carry_uri_bandwidth_and_disks() {
        let t = MigrationTarget {
            libvirt_uri: "qemu+tls://10.0.0.2/system".into(),
            migration_uri: Some("tcp://10.0.0.2".into()),
        };
        let o = MigrateOptions {
            bandwidth_mib: Some(8),
            copy_disks: vec!["vda".into(), "vdb".into()],
            ..MigrateOptions::default()
        };
        let p = parameters(&t, &o);
        assert_eq!(p.uri.as_deref(), Some("tcp://10.0.0.2"));
        assert_eq!(p.bandwidth, Some(8));
        assert_eq!(p.migrate_disks, vec!["vda", "vdb"]);
        assert_eq!(p.dest_xml, None);
    }

    fn test_driver() -> Arc<Libvirt> {
        let (tx, _rx) = tokio::sync::mpsc::channel(16);
        Libvirt::new("test:///default", tx)
    }

    #[tokio::test]
    async fn no_job_is_inactive_and_abort_without_a_job_fails() {
        let lv = test_driver();
        // test:///default has the running domain "test".
        match progress(&lv, "test").await {
            Ok(p) => assert!(!p.active, "{p:?}"),
            // Drivers without job statistics say so; never a panic.
            Err(LibvirtError::Call(_)) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(abort(&lv, "test").await.is_err(), "no job to abort");
        assert!(matches!(
            progress(&lv, "no-such-domain").await,
            Err(LibvirtError::NoDomain(_))
        ));
    }

    #[tokio::test]
    async fn migrating_to_an_unreachable_target_fails_and_the_domain_stays() {
        let lv = test_driver();
        let target = MigrationTarget {
            libvirt_uri: "qemu+tls://192.0.2.1/system".into(),
            migration_uri: None,
        };
        let err = migrate(&lv, "test", &target, &MigrateOptions::default())
            .await
            .expect_err("the test driver cannot migrate");
        assert!(matches!(err, MigrationError::Failed { .. }), "{err:?}");
        let still = lv
            .call(|conn| Ok(conn.lookup_domain_by_name("test").is_ok()))
            .await
            .unwrap();
        assert!(still, "the domain is still here");
    }
}
