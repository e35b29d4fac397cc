//! ironvirt's bounded Event recorder (`ironvirt_crds::events`) against the
//! bed's real kube-apiserver: Events are created as events.k8s.io/v1 objects,
//! and a repeat becomes a series on the first Event, as kube-runtime's
//! recorder (and client-go's) make them.

use ironvirt_crds::events::Recorder;
use ironvirt_tests::TestBed;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Reporter};

#[tokio::test]
async fn a_repeated_event_joins_its_series_and_another_reason_is_another_event() {
    let bed = TestBed::shared().await.expect("test bed");
    bed.with_namespace("events", |ns| {
        let client = bed.admin();
        async move {
            let recorder = Recorder::new(
                client.clone(),
                Reporter {
                    controller: "ironvirt-events-test".into(),
                    instance: Some("test".into()),
                },
            );
            let regarding = ObjectReference {
                api_version: Some("kubevirt.io/v1".into()),
                kind: Some("VirtualMachine".into()),
                namespace: Some(ns.clone()),
                name: Some("vm-1".into()),
                uid: Some("0b5e1d1e-0000-4000-8000-000000000001".into()),
                ..ObjectReference::default()
            };
            let event = |reason: &str| Event {
                type_: EventType::Normal,
                reason: reason.into(),
                note: Some(format!("{reason} happened")),
                action: "Reconcile".into(),
                secondary: None,
            };
            for _ in 0..3 {
                recorder
                    .publish(&event("SuccessfulCreate"), &regarding)
                    .await?;
            }
            recorder.publish(&event("Stopping"), &regarding).await?;
            let api: Api<K8sEvent> = Api::namespaced(client.clone(), &ns);
            let mut events = api.list(&ListParams::default()).await?.items;
            events.sort_by_key(|e| e.reason.clone());
            let seen: Vec<_> = events
                .iter()
                .map(|e| {
                    (
                        e.reason.clone().unwrap_or_default(),
                        e.series.as_ref().map(|s| s.count),
                        e.reporting_controller.clone().unwrap_or_default(),
                        e.regarding.as_ref().and_then(|r| r.name.clone()),
                    )
                })
                .collect();
            let who = "ironvirt-events-test".to_owned();
            anyhow::ensure!(
                seen == vec![
                    ("Stopping".into(), None, who.clone(), Some("vm-1".into())),
                    ("SuccessfulCreate".into(), Some(3), who, Some("vm-1".into())),
                ],
                "the Events in {ns}: {seen:?}"
            );
            let note = events[1].note.clone().unwrap_or_default();
            anyhow::ensure!(note == "SuccessfulCreate happened", "note: {note}");
            Ok::<_, anyhow::Error>(())
        }
    })
    .await;
}
