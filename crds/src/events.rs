//! An Event recorder whose memory is bounded.
//!
//! kube-runtime's `Recorder` keeps every Event it sent, whole, for 6 minutes
//! (so that a repeat becomes a series: one Event whose `series.count` grows),
//! and scans all of them on every publish. At thousands of VMs that cache was
//! the largest thing left in the operator's heap (about 4.4 KB per Event sent
//! in the last 6 minutes: docs/benchmarks.md). This recorder makes the same
//! Events (events.k8s.io/v1, named `<regarding>.<nanoseconds, hex>`, a repeat
//! within [`SERIES_WINDOW`] patched into a series), but remembers only what a
//! series needs (the Event's name and count) for at most [`CACHE_ENTRIES`]
//! Events, as client-go's event correlator bounds its caches. An Event pushed
//! out of the cache, or older than the window, starts a new Event when it
//! repeats: a bounded cache costs an extra Event, never a lost one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Reporter};

/// The most Events remembered for series (client-go's correlator keeps 4096).
pub const CACHE_ENTRIES: usize = 4096;

/// How long after an Event a repeat joins its series (kube-runtime's 6 min).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What makes two Events the same series: kube-runtime's key (type, reason,
/// action, the object regarded, the related one), the reporter being fixed
/// per recorder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    regarding: Ref,
    related: Option<Ref>,
}

/// The identity of an object an Event regards.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Ref {
    api_version: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
    field_path: Option<String>,
}

impl From<&ObjectReference> for Ref {
    fn from(r: &ObjectReference) -> Self {
        Ref {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
            field_path: r.field_path.clone(),
        }
    }
}

/// What is remembered of an Event sent.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sent {
    name: String,
    /// 1 for the Event itself, then its series' count.
    count: i32,
    /// When it or its series was last sent.
    last: Timestamp,
}

/// The series cache: at most `capacity` entries, the oldest inserted pushed
/// out first, entries older than the window treated as absent.
#[derive(Debug)]
struct Cache {
    capacity: usize,
    window: Duration,
    entries: HashMap<Key, Sent>,
    order: VecDeque<Key>,
}

/// What to send for an Event.
#[derive(Debug, PartialEq, Eq)]
enum Send {
    /// A new Event of this name.
    Create { name: String },
    /// A repeat: patch the series of the Event of this name to `count`.
    Series { name: String, count: i32 },
}

impl Cache {
    fn new(capacity: usize, window: Duration) -> Self {
        Cache {
            capacity,
            window,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// What to send for `key` at `now`; `fresh_name` names a new Event.
    fn plan(&self, key: &Key, now: Timestamp, fresh_name: impl FnOnce() -> String) -> Send {
        match self.entries.get(key) {
            Some(s) if !self.expired(s, now) => Send::Series {
                name: s.name.clone(),
                count: s.count.saturating_add(1),
            },
            _ => Send::Create { name: fresh_name() },
        }
    }

    fn expired(&self, s: &Sent, now: Timestamp) -> bool {
        now.duration_since(s.last).unsigned_abs() >= self.window
    }

    /// Records that `send` for `key` was accepted at `now`.
    fn record(&mut self, key: Key, send: Send, now: Timestamp) {
        let (name, count) = match send {
            Send::Create { name } => (name, 1),
            Send::Series { name, count } => (name, count),
        };
        let sent = Sent {
            name,
            count,
            last: now,
        };
        if let Some(s) = self.entries.get_mut(&key) {
            *s = sent;
            return;
        }
        // Drop expired entries at the front, then the oldest while full.
        while let Some(front) = self.order.front() {
            let stale = self.entries.get(front).is_none_or(|s| self.expired(s, now));
            if !(stale || self.entries.len() >= self.capacity) {
                break;
            }
            if let Some(k) = self.order.pop_front() {
                self.entries.remove(&k);
            }
        }
        self.order.push_back(key.clone());
        self.entries.insert(key, sent);
    }
}

/// Records Events, as kube-runtime's `Recorder` does, with a bounded cache.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

impl Recorder {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Recorder {
            client,
            reporter,
            cache: Arc::new(Mutex::new(Cache::new(CACHE_ENTRIES, SERIES_WINDOW))),
        }
    }

    /// Sends `ev` about the object `regarding`, in its namespace ("default"
    /// for a cluster-scoped one): a new Event, or a repeat's series.
    pub async fn publish(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
            regarding: regarding.into(),
            related: ev.secondary.as_ref().map(Ref::from),
        };
        let send = self.lock().plan(&key, now, || {
            event_name(regarding, &self.reporter.controller, now)
        });
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), namespace);
        match &send {
            Send::Create { name } => {
                let event = new_event(ev, regarding, &self.reporter, name, now);
                api.create(&PostParams::default(), &event).await?;
            }
            Send::Series { name, count } => {
                let patch = serde_json::json!({
                    "series": EventSeries {
                        count: *count,
                        last_observed_time: MicroTime(now),
                    }
                });
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
        }
        self.lock().record(key, send, now);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new Event's name: the regarded object's (or the reporter's) and the
/// time in nanoseconds, in hex, as kube-runtime and client-go name them.
fn event_name(regarding: &ObjectReference, controller: &str, now: Timestamp) -> String {
    format!(
        "{}.{:x}",
        regarding.name.as_deref().unwrap_or(controller),
        now.as_nanosecond()
    )
}

fn new_event(
    ev: &Event,
    regarding: &ObjectReference,
    reporter: &Reporter,
    name: &str,
    now: Timestamp,
) -> K8sEvent {
    K8sEvent {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: regarding.namespace.clone(),
            ..ObjectMeta::default()
        },
        action: Some(ev.action.clone()),
        reason: Some(ev.reason.clone()),
        note: ev.note.clone(),
        type_: Some(
            match ev.type_ {
                EventType::Normal => "Normal",
                EventType::Warning => "Warning",
            }
            .to_owned(),
        ),
        event_time: Some(MicroTime(now)),
        regarding: Some(regarding.clone()),
        related: ev.secondary.clone(),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        ..K8sEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key {
            warning: false,
            reason: "SuccessfulCreate".into(),
            action: "Reconcile".into(),
            regarding: Ref::from(&ObjectReference {
                kind: Some("VirtualMachine".into()),
                namespace: Some("ns".into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectReference::default()
            }),
            related: None,
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    /// Plans and records, as `publish` does when the API accepts it.
    fn send(c: &mut Cache, k: &Key, now: Timestamp) -> Send {
        let s = c.plan(k, now, || {
            format!("{}.{}", k.regarding.name.clone().unwrap(), now)
        });
        let copy = match &s {
            Send::Create { name } => Send::Create { name: name.clone() },
            Send::Series { name, count } => Send::Series {
                name: name.clone(),
                count: *count,
            },
        };
        c.record(k.clone(), copy, now);
        s
    }

    #[test]
    fn a_repeat_within_the_window_joins_the_series_and_one_after_it_starts_anew() {
        let mut c = Cache::new(8, Duration::from_secs(360));
        let a = key("a");
        assert_eq!(
            send(&mut c, &a, at(100)),
            Send::Create {
                name: "a.1970-01-01T00:01:40Z".into()
            }
        );
        assert_eq!(
            send(&mut c, &a, at(200)),
            Send::Series {
                name: "a.1970-01-01T00:01:40Z".into(),
                count: 2
            }
        );
        // The window runs from the last repeat.
        assert_eq!(
            send(&mut c, &a, at(500)),
            Send::Series {
                name: "a.1970-01-01T00:01:40Z".into(),
                count: 3
            }
        );
        assert_eq!(
            send(&mut c, &a, at(860)),
            Send::Create {
                name: "a.1970-01-01T00:14:20Z".into()
            }
        );
        // Another object, or another reason, is another Event.
        assert!(matches!(
            send(&mut c, &key("b"), at(861)),
            Send::Create { .. }
        ));
        let mut warning = a.clone();
        warning.warning = true;
        assert!(matches!(
            send(&mut c, &warning, at(862)),
            Send::Create { .. }
        ));
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let mut c = Cache::new(100, Duration::from_secs(360));
        for i in 0..10_000 {
            send(&mut c, &key(&format!("vm-{i}")), at(1_000 + i / 100));
            assert!(
                c.entries.len() <= 100,
                "{} entries after {i}",
                c.entries.len()
            );
            assert_eq!(c.order.len(), c.entries.len());
        }
        // The newest are remembered; the oldest were pushed out and start anew.
        assert!(matches!(
            send(&mut c, &key("vm-9999"), at(1_100)),
            Send::Series { count: 2, .. }
        ));
        assert!(matches!(
            send(&mut c, &key("vm-0"), at(1_100)),
            Send::Create { .. }
        ));
    }

    #[test]
    fn expired_entries_leave_the_cache_as_new_ones_come() {
        let mut c = Cache::new(100, Duration::from_secs(10));
        for i in 0..50 {
            send(&mut c, &key(&format!("old-{i}")), at(0));
        }
        send(&mut c, &key("new"), at(20));
        assert_eq!(
            c.entries.len(),
            1,
            "the 50 expired entries went: {:?}",
            c.entries.keys()
        );
    }
}
