//! Pull progress: the bytes of a pull's layers downloaded so far, against
//! their sum in the manifest.
//!
//! The pull counts the bytes it writes ([`Counting`], an [`AsyncWrite`]
//! around each blob's file: nothing is buffered) in an atomic counter, and
//! announces its stages on a [`watch`] channel (one value, never a queue).
//! Whoever reports reads both at its own pace; [`report_due`] decides when
//! a new line is worth writing, [`progress_line`] words it.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::sync::watch;

/// How often, at most, a pull's progress is reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Where a pull is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Nothing downloads (yet). A cache hit, or an image whose manifest
    /// names a disk the cache holds, never leaves this stage.
    Idle,
    /// The layers download: `total` bytes in all (the manifest's sizes).
    Downloading { total: u64 },
    /// Every layer is on the node; the disk is being taken out of them.
    Unpacking { total: u64 },
    /// The pull ended, well or not.
    Finished,
}

/// The progress of one pull, shared by the pull and its reporter.
#[derive(Debug)]
pub struct PullProgress {
    stage: watch::Sender<Stage>,
    done: AtomicU64,
}

impl Default for PullProgress {
    fn default() -> Self {
        PullProgress {
            stage: watch::Sender::new(Stage::Idle),
            done: AtomicU64::new(0),
        }
    }
}

impl PullProgress {
    pub fn new() -> Self {
        Self::default()
    }

    /// Follows the stages (the latest one only).
    pub fn subscribe(&self) -> watch::Receiver<Stage> {
        self.stage.subscribe()
    }

    pub fn stage(&self) -> Stage {
        *self.stage.borrow()
    }

    /// The bytes downloaded so far (of the current attempt).
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// A download of `total` bytes starts (again, from another endpoint:
    /// the count restarts).
    pub fn start(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.stage.send_replace(Stage::Downloading { total });
    }

    /// The layers are down; the disk is being unpacked.
    pub fn unpacking(&self) {
        if let Stage::Downloading { total } = self.stage() {
            self.stage.send_replace(Stage::Unpacking { total });
        }
    }

    /// The pull ended: reporters stop.
    pub fn finish(&self) {
        self.stage.send_replace(Stage::Finished);
    }

    fn add(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `inner`, counting the bytes written to it.
    pub fn counting<W>(&self, inner: W) -> Counting<'_, W> {
        Counting {
            inner,
            progress: self,
        }
    }
}

/// A writer that adds what it writes to a [`PullProgress`].
pub struct Counting<'a, W> {
    inner: W,
    progress: &'a PullProgress,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.progress.add(n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `bytes` for people: `512 B`, `12.3 MiB`, `1.5 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision lost above 2^53 bytes is far below the one decimal shown.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 KiB would print as "1024.0 KiB": it is 1.0 MiB.
    while value >= 1023.95 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// The line that says how far the pull of `image` is, for the VMI's Ready
/// condition: `pulling quay.io/x:tag: 12.3 MiB of 40.0 MiB (30%)`. None
/// while nothing downloads.
pub fn progress_line(image: &str, stage: Stage, done: u64) -> Option<String> {
    match stage {
        Stage::Idle | Stage::Finished => None,
        Stage::Downloading { total: 0 } => Some(format!("pulling {image}: {}", human_bytes(done))),
        Stage::Downloading { total } => {
            let shown = done.min(total);
            let percent = u128::from(shown) * 100 / u128::from(total);
            Some(format!(
                "pulling {image}: {} of {} ({percent}%)",
                human_bytes(shown),
                human_bytes(total)
            ))
        }
        Stage::Unpacking { total } => Some(format!(
            "pulling {image}: {} downloaded, unpacking the disk",
            human_bytes(total)
        )),
    }
}

/// What was last reported, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reported {
    pub line: String,
    pub at: Instant,
}

/// Whether `line` should be reported `now`: the first line at once, then a
/// changed line at most every `every`; an unchanged line never.
pub fn report_due(last: Option<&Reported>, line: &str, now: Instant, every: Duration) -> bool {
    match last {
        None => true,
        Some(last) if last.line == line => false,
        Some(last) => now.saturating_duration_since(last.at) >= every,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(MIB - 1), "1.0 MiB");
        assert_eq!(human_bytes(12 * MIB + 300 * 1024), "12.3 MiB");
        assert_eq!(human_bytes(40 * MIB), "40.0 MiB");
        assert_eq!(human_bytes(3 * 1024 * MIB / 2), "1.5 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn progress_lines() {
        let image = "quay.io/x:tag";
        assert_eq!(progress_line(image, Stage::Idle, 0), None);
        assert_eq!(progress_line(image, Stage::Finished, 5), None);
        let total = 40 * MIB;
        assert_eq!(
            progress_line(image, Stage::Downloading { total }, 12 * MIB + 300 * 1024).as_deref(),
            Some("pulling quay.io/x:tag: 12.3 MiB of 40.0 MiB (30%)")
        );
        assert_eq!(
            progress_line(image, Stage::Downloading { total }, 0).as_deref(),
            Some("pulling quay.io/x:tag: 0 B of 40.0 MiB (0%)")
        );
        // A registry that sends more than the manifest said shows no 120%.
        assert_eq!(
            progress_line(image, Stage::Downloading { total }, total * 2).as_deref(),
            Some("pulling quay.io/x:tag: 40.0 MiB of 40.0 MiB (100%)")
        );
        assert_eq!(
            progress_line(image, Stage::Downloading { total: 0 }, 2048).as_deref(),
            Some("pulling quay.io/x:tag: 2.0 KiB")
        );
        assert_eq!(
            progress_line(image, Stage::Unpacking { total }, total).as_deref(),
            Some("pulling quay.io/x:tag: 40.0 MiB downloaded, unpacking the disk")
        );
    }

    #[test]
    fn reports_are_rate_limited_and_only_on_change() {
        let t0 = Instant::now();
        let every = Duration::from_secs(2);
        assert!(report_due(None, "a", t0, every));
        let last = Reported {
            line: "a".into(),
            at: t0,
        };
        // Unchanged: never, however long it has been.
        assert!(!report_due(Some(&last), "a", t0 + every * 10, every));
        // Changed: not before `every`, then yes.
        assert!(!report_due(
            Some(&last),
            "b",
            t0 + Duration::from_millis(1999),
            every
        ));
        assert!(report_due(Some(&last), "b", t0 + every, every));
        // A clock that went backwards waits rather than floods.
        assert!(!report_due(
            Some(&Reported {
                line: "a".into(),
                at: t0 + every
            }),
            "b",
            t0,
            every
        ));
    }

    #[tokio::test]
    async fn the_writer_counts_what_it_writes_and_stages_are_announced() {
        let progress = PullProgress::new();
        let mut stages = progress.subscribe();
        assert_eq!(progress.stage(), Stage::Idle);
        progress.start(10);
        assert!(stages.has_changed().unwrap());
        assert_eq!(
            *stages.borrow_and_update(),
            Stage::Downloading { total: 10 }
        );
        let mut out = Vec::new();
        {
            let mut w = progress.counting(&mut out);
            w.write_all(b"hello").await.unwrap();
            w.write_all(b"abc").await.unwrap();
            w.flush().await.unwrap();
        }
        assert_eq!(out, b"helloabc");
        assert_eq!(progress.done(), 8);
        progress.unpacking();
        assert_eq!(progress.stage(), Stage::Unpacking { total: 10 });
        // Another endpoint starts over.
        progress.start(10);
        assert_eq!(progress.done(), 0);
        progress.finish();
        assert_eq!(*stages.borrow_and_update(), Stage::Finished);
        // Unpacking only follows a download.
        progress.unpacking();
        assert_eq!(progress.stage(), Stage::Finished);
    }
}
