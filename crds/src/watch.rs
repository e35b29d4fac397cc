//! How the controllers of the operator and the handler wait after a failed
//! watch: once, in the watch stream, with a short cap.
//!
//! kube's `Controller` backs off on its trigger stream too, by default from
//! 0.8 s doubling to 30 s and reset only after 120 s without an error, and it
//! stops polling the watch while it sleeps. Stacked on the watch's own
//! backoff, that made a handler see VMIs created after a 60 s kube-apiserver
//! outage about a minute late (docs/reliability.md, "Outages"): the errors of
//! the outage, and the 403s of a kube-apiserver whose authorizer is still
//! warming up, had pushed the controller's wait to its 30 s cap. Every
//! controller whose watches back off with [`WatchBackoff`] takes
//! [`NoExtraBackoff`] as its trigger backoff.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// A watch's waits between failed attempts: 0.5 s doubling to 8 s, from the
/// start again after any event. One watch per object kind and process at
/// most every 8 s is little load for kube-apiserver, and a component sees
/// changes at most 8 s after kube-apiserver is back.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    pub const FIRST: Duration = Duration::from_millis(500);
    pub const MAX: Duration = Duration::from_secs(8);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// A controller's trigger backoff for watches that already back off: no
/// wait of its own (an error passes through, and the next poll reaches the
/// watch, which is sleeping in its own [`WatchBackoff`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExtraBackoff;

impl Iterator for NoExtraBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoExtraBackoff {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VirtualMachineInstance;
    use futures::StreamExt;
    use kube::runtime::controller::{Action, Controller};
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    use std::sync::Arc;

    #[test]
    fn watch_waits_double_to_eight_seconds_and_start_again_after_an_event() {
        let mut b = WatchBackoff::default();
        let ms: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        b.reset();
        assert_eq!(b.next(), Some(WatchBackoff::FIRST));
    }

    fn vmi(name: &str) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new(name, Default::default());
        v.metadata.namespace = Some("ns".into());
        v
    }

    /// How long (in paused tokio time) a controller takes to reconcile a VMI
    /// that its watch delivers after `errors` failed attempts, with the
    /// controller's trigger backoff `extra` (None: kube's default).
    async fn delay_after_errors(errors: usize, extra: Option<NoExtraBackoff>) -> Duration {
        let (reader, writer) = reflector::store::<VirtualMachineInstance>();
        let mut items: Vec<Result<watcher::Event<VirtualMachineInstance>, watcher::Error>> = (0
            ..errors)
            .map(|_| Err(watcher::Error::NoResourceVersion))
            .collect();
        // The list after the outage (a controller acts once its cache is filled).
        items.push(Ok(watcher::Event::Init));
        items.push(Ok(watcher::Event::InitApply(vmi("late"))));
        items.push(Ok(watcher::Event::InitDone));
        let watch = futures::stream::iter(items).chain(futures::stream::pending());
        let stream =
            reflector::reflector(writer, watch.backoff(WatchBackoff::default())).applied_objects();
        let started = tokio::time::Instant::now();
        let controller = Controller::for_stream(stream, reader);
        let controller = match extra {
            Some(b) => controller.trigger_backoff(b),
            None => controller,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let run =
            controller
                .run(
                    move |_: Arc<VirtualMachineInstance>,
                          tx: Arc<tokio::sync::mpsc::Sender<()>>| async move {
                        let _ = tx.try_send(());
                        Ok::<_, kube::Error>(Action::await_change())
                    },
                    |_, _, _| Action::await_change(),
                    Arc::new(tx),
                )
                .for_each(|_| async {});
        tokio::select! {
            _ = run => {}
            _ = rx.recv() => {}
        }
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_adds_no_wait_to_its_watch_backoff_after_an_outage() {
        // Six failed attempts: the watch alone waits 0.5 + 1 + 2 + 4 + 8 + 8 s.
        let own = Duration::from_millis(23_500);
        let ours = delay_after_errors(6, Some(NoExtraBackoff)).await;
        assert!(
            ours >= own && ours < own + Duration::from_secs(1),
            "reconciled after {ours:?}; the watch's own waits are {own:?}"
        );
        // What it replaces: kube's default trigger backoff sleeps on top.
        let stacked = delay_after_errors(6, None).await;
        assert!(
            stacked > own + Duration::from_secs(10),
            "kube's default trigger backoff added only {:?}",
            stacked.saturating_sub(own)
        );
    }
}
