//! How much one user, and everyone together, may hold open at once: console
//! and VNC streams, port-forward connections, and screenshots in progress. A request over a limit is
//! answered 429 with a Status naming the limit; one within gets a
//! [`Permit`] that counts until it is dropped, on whatever path the request
//! or stream ends. Users are counted by the name kube-apiserver asserted
//! ([`crate::auth::User::name`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The two things counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Console and VNC websockets.
    Streams,
    /// `vnc/screenshot` requests.
    Screenshots,
    /// `portforward` websockets (one per forwarded connection).
    PortForwards,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Streams => "streams",
            Kind::Screenshots => "screenshots",
            Kind::PortForwards => "port-forward connections",
        }
    }
}

/// At most `per_user` for one user and `total` for everyone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub per_user: usize,
    pub total: usize,
}

/// ironvirt-api's limits, from flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    pub streams: Limit,
    pub screenshots: Limit,
    pub port_forwards: Limit,
    /// The most pixels a screenshot's framebuffer may have (the client's
    /// copy costs four bytes a pixel).
    pub screenshot_pixels: u64,
}

/// The default number of concurrent streams per user and in total.
pub const DEFAULT_STREAMS: Limit = Limit {
    per_user: 16,
    total: 512,
};

/// The default number of concurrent port-forward connections per user and
/// in total: each is one websocket and one TCP connection on the node, with
/// two 64 KiB buffers.
pub const DEFAULT_PORT_FORWARDS: Limit = Limit {
    per_user: 128,
    total: 1024,
};

/// The default number of concurrent screenshots per user and in total.
pub const DEFAULT_SCREENSHOTS: Limit = Limit {
    per_user: 4,
    total: 8,
};

/// The default pixel budget of a screenshot: 4 Mi pixels (2560×1600 fits),
/// 16 MiB of framebuffer. With [`DEFAULT_SCREENSHOTS`] in total that is at
/// most 128 MiB, half of the pod's 256 MiB memory limit in deploy/.
pub const DEFAULT_SCREENSHOT_PIXELS: u64 = 4 * 1024 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            streams: DEFAULT_STREAMS,
            screenshots: DEFAULT_SCREENSHOTS,
            port_forwards: DEFAULT_PORT_FORWARDS,
            screenshot_pixels: DEFAULT_SCREENSHOT_PIXELS,
        }
    }
}

/// A request over a limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("user {user} has {count} {} in progress; the limit is {limit}", kind.as_str())]
    User {
        user: String,
        kind: Kind,
        count: usize,
        limit: usize,
    },
    #[error("ironvirt-api has {count} {} in progress; the limit is {limit}", kind.as_str())]
    Total {
        kind: Kind,
        count: usize,
        limit: usize,
    },
}

impl LimitError {
    /// Which limit: `user` or `total` (a metric label).
    pub fn scope(&self) -> &'static str {
        match self {
            LimitError::User { .. } => "user",
            LimitError::Total { .. } => "total",
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            LimitError::User { kind, .. } | LimitError::Total { kind, .. } => *kind,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_user: HashMap<String, usize>,
}

#[derive(Debug)]
struct Inner {
    kind: Kind,
    limit: Limit,
    counts: Mutex<Counts>,
}

/// Counts one kind of thing per user and in total. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl Limiter {
    pub fn new(kind: Kind, limit: Limit) -> Self {
        Limiter {
            inner: Arc::new(Inner {
                kind,
                limit,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// One more for `user`, or why not.
    pub fn acquire(&self, user: &str) -> Result<Permit, LimitError> {
        let inner = &self.inner;
        let mut counts = inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mine = counts.by_user.get(user).copied().unwrap_or(0);
        if mine >= inner.limit.per_user {
            return Err(LimitError::User {
                user: user.to_owned(),
                kind: inner.kind,
                count: mine,
                limit: inner.limit.per_user,
            });
        }
        if counts.total >= inner.limit.total {
            return Err(LimitError::Total {
                kind: inner.kind,
                count: counts.total,
                limit: inner.limit.total,
            });
        }
        counts.total += 1;
        *counts.by_user.entry(user.to_owned()).or_insert(0) += 1;
        Ok(Permit {
            inner: Arc::clone(inner),
            user: user.to_owned(),
        })
    }

    /// How many are held now, in total.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    /// How many `user` holds now.
    pub fn of(&self, user: &str) -> usize {
        self.lock().by_user.get(user).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One stream or screenshot counted against its user and the total until
/// dropped.
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    user: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.inner.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_user.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_user.remove(&self.user);
            }
        }
    }
}

/// The limiters and budgets ironvirt-api's routes share.
#[derive(Clone, Debug)]
pub struct Limits {
    pub streams: Limiter,
    pub screenshots: Limiter,
    pub port_forwards: Limiter,
    pub screenshot_pixels: u64,
}

impl Limits {
    pub fn new(cfg: LimitsConfig) -> Self {
        Limits {
            streams: Limiter::new(Kind::Streams, cfg.streams),
            screenshots: Limiter::new(Kind::Screenshots, cfg.screenshots),
            port_forwards: Limiter::new(Kind::PortForwards, cfg.port_forwards),
            screenshot_pixels: cfg.screenshot_pixels,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::new(LimitsConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_user: usize, total: usize) -> Limiter {
        Limiter::new(Kind::Screenshots, Limit { per_user, total })
    }

    #[test]
    fn a_user_over_their_limit_is_refused_by_name() {
        let l = limiter(2, 10);
        let a = l.acquire("alice").unwrap();
        let _b = l.acquire("alice").unwrap();
        let err = l.acquire("alice").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user alice has 2 screenshots in progress; the limit is 2"
        );
        assert_eq!(err.scope(), "user");
        // Others are not affected.
        let _c = l.acquire("bob").unwrap();
        drop(a);
        assert!(l.acquire("alice").is_ok());
    }

    #[test]
    fn the_total_limit_counts_everyone() {
        let l = limiter(5, 2);
        let _a = l.acquire("alice").unwrap();
        let b = l.acquire("bob").unwrap();
        let err = l.acquire("carol").unwrap_err();
        assert_eq!(
            err.to_string(),
            "ironvirt-api has 2 screenshots in progress; the limit is 2"
        );
        assert_eq!(err.scope(), "total");
        drop(b);
        assert!(l.acquire("carol").is_ok());
    }

    #[test]
    fn permits_are_returned_when_dropped_and_users_forgotten() {
        let l = limiter(3, 3);
        let permits: Vec<_> = (0..3).map(|_| l.acquire("alice").unwrap()).collect();
        assert_eq!((l.total(), l.of("alice")), (3, 3));
        drop(permits);
        assert_eq!((l.total(), l.of("alice")), (0, 0));
        assert!(l.lock().by_user.is_empty());
    }
}
