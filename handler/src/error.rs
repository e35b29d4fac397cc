//! Why a reconcile failed, with a short stable reason for logs and metrics,
//! and how long to wait before trying the same VMI again.

use std::time::Duration;

use crate::libvirt::LibvirtError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("VMI has no {0}")]
    MissingField(&'static str),
    #[error("guest network: {0}")]
    Network(#[from] crate::guestnet::NetError),
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
            Error::Network(_) => "GuestNetworkError",
            Error::Internal(_) => "Internal",
        }
    }

    /// The shortest wait before a retry. An unreachable libvirt is not
    /// retried sooner than [`LIBVIRT_RETRY_FLOOR`]: every VMI of the node
    /// fails the same way, and the handler looks at all of them again as soon
    /// as libvirt is back.
    pub fn retry_floor(&self) -> Duration {
        match self {
            Error::Libvirt(LibvirtError::Unreachable { .. }) => LIBVIRT_RETRY_FLOOR,
            _ => Duration::ZERO,
        }
    }
}

/// The wait after a VMI's first failed reconcile.
pub const BACKOFF_BASE: Duration = Duration::from_secs(2);
/// The longest wait between retries of one VMI.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// The shortest wait while libvirt is unreachable.
pub const LIBVIRT_RETRY_FLOOR: Duration = Duration::from_secs(5);

/// The wait before retrying after `failures` consecutive failed reconciles
/// (1 for the first): [`BACKOFF_BASE`], doubling per failure, at most
/// [`BACKOFF_CAP`], and never less than `floor`.
pub fn backoff(failures: u32, floor: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_BASE
        .saturating_mul(1u32 << doublings)
        .min(BACKOFF_CAP)
        .max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes() {
        let waits: Vec<Duration> = (1..=10).map(|n| backoff(n, Duration::ZERO)).collect();
        assert_eq!(
            waits,
            [
                S(2),
                S(4),
                S(8),
                S(16),
                S(32),
                S(64),
                S(128),
                S(256),
                S(300),
                S(300)
            ]
        );
        // No overflow however long a VMI keeps failing.
        assert_eq!(backoff(u32::MAX, Duration::ZERO), BACKOFF_CAP);
        // Zero failures is treated as the first.
        assert_eq!(backoff(0, Duration::ZERO), BACKOFF_BASE);
    }

    #[test]
    fn an_unreachable_libvirt_keeps_its_floor() {
        let unreachable = Error::Libvirt(LibvirtError::Unreachable {
            uri: "qemu:///system".into(),
            reason: "connection refused".into(),
        });
        assert_eq!(unreachable.retry_floor(), LIBVIRT_RETRY_FLOOR);
        assert_eq!(backoff(1, unreachable.retry_floor()), S(5));
        assert_eq!(backoff(2, unreachable.retry_floor()), S(5));
        assert_eq!(backoff(3, unreachable.retry_floor()), S(8));
        assert_eq!(backoff(20, unreachable.retry_floor()), BACKOFF_CAP);
        let other = Error::Internal("disk full".into());
        assert_eq!(other.retry_floor(), Duration::ZERO);
        assert_eq!(backoff(1, other.retry_floor()), S(2));
    }

    #[test]
    fn reasons_are_stable() {
        let cases = [
            (
                Error::Libvirt(LibvirtError::Unreachable {
                    uri: String::new(),
                    reason: String::new(),
                }),
                "LibvirtUnreachable",
            ),
            (
                Error::Libvirt(LibvirtError::Call("x".into())),
                "LibvirtError",
            ),
            (Error::MissingField("metadata.uid"), "InvalidObject"),
            (Error::Internal("x".into()), "Internal"),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want, "{e}");
        }
    }
}
