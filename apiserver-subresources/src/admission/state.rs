//! What the webhooks need besides the request: the presets, who may change a
//! VMI's spec, where Events go, and a client for the objects a request refers
//! to (a migration's VMI and its other migrations).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstancePreset;
use ironvirt_crds::events::Recorder;
use ironvirt_crds::validate::VolumePolicy;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;

use k8s_openapi::api::core::v1::ObjectReference;

/// How long a request waits for the preset cache's first sync by default.
const DEFAULT_PRESET_SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// The shared state of the webhook handlers. Cheap to clone.
#[derive(Clone)]
pub struct AdmissionState {
    /// The VirtualMachineInstancePresets of every namespace, kept current by a
    /// reflector (`kube::runtime::reflector(writer, watcher(api, …))`). Until
    /// its first sync (`InitDone`) the mutating webhook waits (up to
    /// `preset_sync_timeout`) and then refuses the VMI with 503 rather than
    /// silently skip presets. Note that `InitDone` swaps in what `InitApply`
    /// buffered: objects given to a writer with `Apply` before `InitDone` are
    /// dropped; after it, `Apply` adds them.
    pub presets: Store<VirtualMachineInstancePreset>,
    /// Usernames (`userInfo.username`) allowed to change a VMI's spec after
    /// creation: ironvirt's own service accounts, for example
    /// `system:serviceaccount:ironvirt:ironvirt-operator`.
    pub privileged_users: Vec<String>,
    /// Publishes `PresetFailed` Events; `None` publishes nothing (tests).
    pub recorder: Option<Recorder>,
    /// How long a request waits for the preset cache's first sync.
    pub preset_sync_timeout: Duration,
    /// hostDisk on or off and where, and the capacity limits (the default:
    /// hostDisk off, 1Ti per volume, 4Ti per VMI).
    pub volume_policy: VolumePolicy,
    /// Reads what a request refers to (the migration webhook: the VMI and
    /// its other migrations). `None` (tests): the webhooks that need it
    /// refuse with 503, failing closed.
    pub client: Option<kube::Client>,
    /// How long the owner guard waits before looking a "not found" owner up
    /// again (`owners.rs`).
    pub owner_recheck_after: Duration,
}

impl std::fmt::Debug for AdmissionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionState")
            .field("presets", &self.presets.len())
            .field("privileged_users", &self.privileged_users)
            .field("recorder", &self.recorder.is_some())
            .field("preset_sync_timeout", &self.preset_sync_timeout)
            .field("volume_policy", &self.volume_policy)
            .field("client", &self.client.is_some())
            .field("owner_recheck_after", &self.owner_recheck_after)
            .finish()
    }
}

impl AdmissionState {
    /// State over a preset store, with no privileged users, no recorder and
    /// the default volume policy (hostDisk off).
    pub fn new(presets: Store<VirtualMachineInstancePreset>) -> Self {
        AdmissionState {
            presets,
            privileged_users: Vec::new(),
            recorder: None,
            preset_sync_timeout: DEFAULT_PRESET_SYNC_TIMEOUT,
            volume_policy: VolumePolicy::default(),
            client: None,
            owner_recheck_after: super::owners::RECHECK_AFTER,
        }
    }

    /// State with an empty, already synced preset store.
    pub fn without_presets() -> Self {
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Self::new(store)
    }

    /// Sets the usernames allowed to change a VMI's spec.
    #[must_use]
    pub fn with_privileged_users<I, S>(mut self, users: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.privileged_users = users.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the recorder for `PresetFailed` Events.
    #[must_use]
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Sets how long a request waits for the preset cache's first sync.
    #[must_use]
    pub fn with_preset_sync_timeout(mut self, timeout: Duration) -> Self {
        self.preset_sync_timeout = timeout;
        self
    }

    /// Sets the cluster's volume policy (hostDisk root, capacity limits).
    #[must_use]
    pub fn with_volume_policy(mut self, policy: VolumePolicy) -> Self {
        self.volume_policy = policy;
        self
    }

    /// Sets the client for the objects requests refer to.
    #[must_use]
    pub fn with_client(mut self, client: kube::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Sets how long the owner guard waits before a second lookup.
    #[must_use]
    pub fn with_owner_recheck_after(mut self, after: Duration) -> Self {
        self.owner_recheck_after = after;
        self
    }

    /// Whether `username` may change a VMI's spec.
    pub(crate) fn is_privileged(&self, username: Option<&str>) -> bool {
        username.is_some_and(|u| self.privileged_users.iter().any(|p| p == u))
    }

    /// The presets of `namespace` once the cache has synced; `Err` with a
    /// message when it has not within the timeout.
    pub(crate) async fn presets_in(
        &self,
        namespace: &str,
    ) -> Result<Vec<Arc<VirtualMachineInstancePreset>>, String> {
        match tokio::time::timeout(self.preset_sync_timeout, self.presets.wait_until_ready()).await
        {
            Ok(Ok(())) => Ok(self
                .presets
                .state_filter(|p| p.metadata.namespace.as_deref() == Some(namespace))),
            Ok(Err(e)) => Err(format!(
                "the VirtualMachineInstancePreset cache is gone: {e}"
            )),
            Err(_) => Err(format!(
                "the VirtualMachineInstancePreset cache has not synced within {:?}; retry",
                self.preset_sync_timeout
            )),
        }
    }

    /// Publishes a Warning Event `PresetFailed` about a VMI being created, in
    /// the background (the request does not wait for it).
    pub(crate) fn preset_failed(&self, namespace: &str, name: &str, message: &str) {
        let Some(recorder) = self.recorder.clone() else {
            return;
        };
        let reference = ObjectReference {
            api_version: Some("kubevirt.io/v1".into()),
            kind: Some("VirtualMachineInstance".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "PresetFailed".into(),
            note: Some(truncate(message, 1024)),
            action: "ApplyPresets".into(),
            secondary: None,
        };
        let (ns, n) = (namespace.to_owned(), name.to_owned());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(vmi.namespace = %ns, vmi.name = %n, error = %e, "could not publish the PresetFailed event");
            }
        });
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

/// The labels of a raw object (`metadata.labels`), ignoring non-string values.
pub(crate) fn labels_of(object: &serde_json::Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(serde_json::Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_presets_is_ready_and_empty() {
        let s = AdmissionState::without_presets();
        assert_eq!(s.presets_in("default").await, Ok(vec![]));
    }

    #[tokio::test]
    async fn an_unsynced_store_is_an_error_after_the_timeout() {
        let (store, _writer) = reflector::store::<VirtualMachineInstancePreset>();
        let s = AdmissionState::new(store).with_preset_sync_timeout(Duration::from_millis(10));
        let err = s.presets_in("default").await.unwrap_err();
        assert!(err.contains("has not synced"), "{err}");
    }

    #[test]
    fn privileged_users_are_exact_matches() {
        let s = AdmissionState::without_presets()
            .with_privileged_users(["system:serviceaccount:ironvirt:ironvirt-operator"]);
        assert!(s.is_privileged(Some("system:serviceaccount:ironvirt:ironvirt-operator")));
        assert!(!s.is_privileged(Some("system:serviceaccount:ironvirt:other")));
        assert!(!s.is_privileged(None));
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
