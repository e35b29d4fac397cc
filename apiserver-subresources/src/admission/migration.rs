//! The VirtualMachineInstanceMigration webhooks, as KubeVirt's:
//!
//! - mutating, on create: the label `kubevirt.io/vmi-name=<spec.vmiName>`
//!   (`virtctl migrate-cancel` and the in-flight check below find a VMI's
//!   migrations by it);
//! - validating, on create: the spec on its own
//!   ([`ironvirt_crds::validate::migration_spec`]), then, read from the
//!   cluster, the VMI (it exists, runs on a node, is not marked not
//!   live-migratable) and the namespace's migrations of it (none in flight),
//!   judged by [`ironvirt_crds::validate::migration_target`]. When the
//!   cluster cannot be read the migration is refused (503): the webhook fails
//!   closed. On update the spec and the label are immutable.

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::migration::{VMI_NAME_LABEL, VirtualMachineInstanceMigration};
use ironvirt_crds::validate;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::review::{Review, Verdict};
use super::state::AdmissionState;
use super::validating::{self, Kind};

/// The mutating webhook: on create, the label [`VMI_NAME_LABEL`] with
/// `spec.vmiName` (added, or corrected when it says otherwise). A migration
/// without a VMI name is left to the validating webhook to refuse.
pub(crate) fn mutate(review: &Review) -> Verdict {
    if review.operation() != "CREATE" {
        return Verdict::Allow;
    }
    let Some(object) = &review.object else {
        return Verdict::Allow;
    };
    let Some(vmi) = object
        .pointer("/spec/vmiName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    else {
        return Verdict::Allow;
    };
    let mut mutated = object.clone();
    let Some(meta) = mutated.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Verdict::Allow;
    };
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if labels.is_null() {
        *labels = json!({});
    }
    let Some(labels) = labels.as_object_mut() else {
        // Not an object: the apiserver refuses it anyway.
        return Verdict::Allow;
    };
    labels.insert(VMI_NAME_LABEL.to_owned(), Value::String(vmi.to_owned()));
    let patch = json_patch::diff(object, &mutated);
    if patch.0.is_empty() {
        Verdict::Allow
    } else {
        Verdict::Patch(patch)
    }
}

/// The validating webhook (see the module's documentation).
pub(crate) async fn validate(review: &Review, state: &AdmissionState) -> Verdict {
    let verdict = validating::review(Kind::Migration, review, state);
    if !matches!(verdict, Verdict::Allow) || review.operation() != "CREATE" {
        return verdict;
    }
    let Some(object) = &review.object else {
        return verdict;
    };
    let migration: VirtualMachineInstanceMigration = match serde_json::from_value(object.clone()) {
        Ok(m) => m,
        // The spec checks read it already; this cannot fail after them.
        Err(e) => {
            return refuse(
                400,
                "BadRequest",
                format!("the migration cannot be read: {e}"),
            );
        }
    };
    let namespace = review.namespace();
    let vmi_name = migration.spec.vmi_name.as_str();
    let Some(client) = state.client.clone() else {
        return refuse(
            503,
            "ServiceUnavailable",
            "ironvirt-api has no cluster client to check the migration's VMI with".into(),
        );
    };
    let (vmi, others) = match read(client, &namespace, vmi_name).await {
        Ok(found) => found,
        Err(message) => {
            tracing::warn!(vmim.namespace = %namespace, vmi.name = %vmi_name, %message, "migration refused: the cluster cannot be read");
            return refuse(503, "ServiceUnavailable", message);
        }
    };
    match validate::migration_target(&namespace, vmi_name, vmi.as_ref(), &others) {
        None => Verdict::Allow,
        Some(error) => Verdict::Invalid(vec![error]),
    }
}

fn refuse(code: u16, reason: &'static str, message: String) -> Verdict {
    Verdict::Refuse {
        code,
        reason,
        message,
    }
}

/// The VMI `name` in `namespace` (`None` when it does not exist) and the
/// namespace's migrations labelled as its.
async fn read(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<
    (
        Option<VirtualMachineInstance>,
        Vec<VirtualMachineInstanceMigration>,
    ),
    String,
> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), namespace);
    let vmi = vmis
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read the VMI \"{namespace}/{name}\": {e}"))?;
    let migrations: Api<VirtualMachineInstanceMigration> = Api::namespaced(client, namespace);
    let selector = format!("{VMI_NAME_LABEL}={name}");
    let others = migrations
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| format!("cannot list the migrations of the VMI \"{namespace}/{name}\": {e}"))?
        .items;
    Ok((vmi, others))
}

/// An update: the spec and the VMI label stay as they were.
pub(crate) fn update(review: &Review, object: &Value) -> Verdict {
    let Some(old) = &review.old_object else {
        return Verdict::Allow;
    };
    let read = |v: &Value| serde_json::from_value::<VirtualMachineInstanceMigration>(v.clone());
    match (read(old), read(object)) {
        (Ok(old), Ok(new)) => {
            let errors = validate::migration_update(&old, &new);
            if errors.is_empty() {
                Verdict::Allow
            } else {
                Verdict::Invalid(errors)
            }
        }
        // Compare the raw specs when either does not read.
        _ if old.get("spec") == object.get("spec") => Verdict::Allow,
        _ => Verdict::Invalid(vec![validate::FieldError::with_reason(
            validate::Reason::Forbidden,
            "spec",
            "spec is immutable after creation",
        )]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::{Request, Response};

    fn review(operation: &str, object: Value, old: Option<Value>) -> Review {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-1",
                "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstanceMigration"},
                "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachineinstancemigrations"},
                "namespace": "ns",
                "operation": operation,
                "userInfo": {"username": "alice"},
                "object": object,
                "oldObject": old,
            }
        });
        Review::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    fn migration(spec: Value) -> Value {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"generateName": "kubevirt-migrate-vm-", "namespace": "ns"},
            "spec": spec})
    }

    fn patched(verdict: Verdict, object: &Value) -> Value {
        let Verdict::Patch(p) = verdict else {
            panic!("not a patch: {verdict:?}")
        };
        let mut out = object.clone();
        json_patch::patch(&mut out, &p).unwrap();
        out
    }

    #[test]
    fn the_vmi_name_becomes_a_label() {
        let m = migration(json!({"vmiName": "vm1"}));
        let out = patched(mutate(&review("CREATE", m.clone(), None)), &m);
        assert_eq!(
            out["metadata"]["labels"],
            json!({"kubevirt.io/vmi-name": "vm1"})
        );
        // Other labels stay; a wrong value is corrected.
        let mut m = migration(json!({"vmiName": "vm1"}));
        m["metadata"]["labels"] = json!({"team": "a", "kubevirt.io/vmi-name": "other"});
        let out = patched(mutate(&review("CREATE", m.clone(), None)), &m);
        assert_eq!(
            out["metadata"]["labels"],
            json!({"team": "a", "kubevirt.io/vmi-name": "vm1"})
        );
        // Already right, or no name to copy, or not a create: nothing to do.
        assert!(matches!(
            mutate(&review("CREATE", out.clone(), None)),
            Verdict::Allow
        ));
        let nameless = migration(json!({}));
        assert!(matches!(
            mutate(&review("CREATE", nameless, None)),
            Verdict::Allow
        ));
        assert!(matches!(
            mutate(&review("UPDATE", m.clone(), Some(m))),
            Verdict::Allow
        ));
    }

    /// A client whose kube-apiserver answers `answer(method, path and
    /// query)`; the requests are recorded.
    type Seen = Arc<Mutex<Vec<String>>>;
    fn cluster(answer: impl Fn(&str) -> (u16, Value) + Send + 'static) -> (kube::Client, Seen) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Some((req, reply)) = handle.next_request().await {
                let target = format!("{} {}", req.method(), req.uri());
                let (code, body) = answer(&target);
                log.lock().unwrap().push(target);
                reply.send_response(
                    Response::builder()
                        .status(code)
                        .header("Content-Type", "application/json")
                        .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap(),
                );
            }
        });
        (kube::Client::new(service, "default"), seen)
    }

    const VMI_PATH: &str = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstances/vm1";
    const MIGRATIONS_PATH: &str =
        "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstancemigrations";

    fn vmi(status: Value) -> Value {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns", "uid": "vmi-uid"},
            "spec": {"domain": {}}, "status": status})
    }

    fn list(items: Vec<Value>) -> Value {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigrationList",
            "metadata": {"resourceVersion": "1"}, "items": items})
    }

    fn not_found() -> (u16, Value) {
        (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                "code": 404, "message": "virtualmachineinstances.kubevirt.io \"vm1\" not found"}),
        )
    }

    /// The verdict on creating a migration of vm1 in a cluster with `vmi`
    /// (if any) and the migrations `others`; and what was asked.
    async fn create(vmi: Option<Value>, others: Vec<Value>) -> (Verdict, Vec<String>) {
        let (client, seen) = cluster(move |target| {
            if target == format!("GET {VMI_PATH}") {
                vmi.clone().map_or_else(not_found, |v| (200, v))
            } else if target.starts_with(&format!("GET {MIGRATIONS_PATH}?")) {
                (200, list(others.clone()))
            } else {
                (
                    500,
                    json!({"kind": "Status", "message": format!("unexpected {target}")}),
                )
            }
        });
        let state = AdmissionState::without_presets().with_client(client);
        let m = migration(json!({"vmiName": "vm1"}));
        let verdict = validate(&review("CREATE", m, None), &state).await;
        let seen = seen.lock().unwrap().clone();
        (verdict, seen)
    }

    fn invalid_message(v: &Verdict) -> String {
        match v {
            Verdict::Invalid(errors) => {
                assert_eq!(errors.len(), 1, "{errors:?}");
                assert_eq!(errors[0].field, "spec.vmiName");
                errors[0].message.clone()
            }
            other => panic!("not invalid: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_running_vmi_without_migrations_is_admitted_after_reading_both() {
        let (v, seen) = create(
            Some(vmi(json!({"phase": "Running", "nodeName": "node-1"}))),
            vec![],
        )
        .await;
        assert!(matches!(v, Verdict::Allow), "{v:?}");
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], format!("GET {VMI_PATH}"));
        // Found by the label the mutating webhook sets.
        assert!(
            seen[1].contains("labelSelector=kubevirt.io%2Fvmi-name%3Dvm1"),
            "{}",
            seen[1]
        );
    }

    #[tokio::test]
    async fn refusals_name_the_field_and_say_why() {
        let (v, _) = create(None, vec![]).await;
        assert_eq!(invalid_message(&v), "the VMI \"ns/vm1\" does not exist");
        let (v, _) = create(Some(vmi(json!({"phase": "Scheduling"}))), vec![]).await;
        assert!(invalid_message(&v).contains("is not running (phase Scheduling)"));
        let active = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "kubevirt-migrate-vm-abcde", "namespace": "ns", "uid": "mig-1",
                "labels": {"kubevirt.io/vmi-name": "vm1"}},
            "spec": {"vmiName": "vm1"}, "status": {"phase": "Scheduling"}});
        let (v, _) = create(
            Some(vmi(json!({"phase": "Running", "nodeName": "node-1"}))),
            vec![active],
        )
        .await;
        assert_eq!(
            invalid_message(&v),
            "in-flight migration detected. Active migration job (mig-1) is currently already in progress for VMI vm1."
        );
        let (v, _) = create(
            Some(vmi(
                json!({"phase": "Running", "nodeName": "node-1", "conditions": [
                {"type": "LiveMigratable", "status": "False", "reason": "DisksNotLiveMigratable",
                 "message": "cannot migrate a VMI with a non-shared hostDisk"}]}),
            )),
            vec![],
        )
        .await;
        assert_eq!(
            invalid_message(&v),
            "Cannot migrate VMI, Reason: DisksNotLiveMigratable, Message: cannot migrate a VMI with a non-shared hostDisk"
        );
    }

    #[tokio::test]
    async fn the_webhook_fails_closed() {
        // No client at all.
        let state = AdmissionState::without_presets();
        let m = migration(json!({"vmiName": "vm1"}));
        let v = validate(&review("CREATE", m.clone(), None), &state).await;
        assert!(matches!(v, Verdict::Refuse { code: 503, .. }), "{v:?}");
        // A cluster that cannot answer.
        let (client, _) = cluster(|_| {
            (
                503,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "ServiceUnavailable", "code": 503, "message": "etcd is down"}),
            )
        });
        let state = AdmissionState::without_presets().with_client(client);
        let v = validate(&review("CREATE", m, None), &state).await;
        let Verdict::Refuse { code, message, .. } = v else {
            panic!("not refused: {v:?}")
        };
        assert_eq!(code, 503);
        assert!(
            message.starts_with("cannot read the VMI \"ns/vm1\": "),
            "{message}"
        );
        assert!(message.contains("etcd is down"), "{message}");
    }

    #[tokio::test]
    async fn a_bad_spec_is_refused_before_the_cluster_is_asked() {
        let (client, seen) = cluster(|_| (500, json!({})));
        let state = AdmissionState::without_presets().with_client(client);
        for (spec, field, reason) in [
            (json!({}), "spec.vmiName", "FieldValueRequired"),
            (
                json!({"vmiName": "Not_A_Name"}),
                "spec.vmiName",
                "FieldValueInvalid",
            ),
            (
                json!({"vmiName": "v", "addedNodeSelector": {"k": "-x"}}),
                "spec.addedNodeSelector[k]",
                "FieldValueInvalid",
            ),
        ] {
            let v = validate(&review("CREATE", migration(spec.clone()), None), &state).await;
            let Verdict::Invalid(errors) = v else {
                panic!("{spec}: not invalid: {v:?}")
            };
            assert_eq!(
                (errors[0].field.as_str(), errors[0].reason.as_str()),
                (field, reason),
                "{spec}"
            );
        }
        let v = validate(
            &review(
                "CREATE",
                json!({"apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstanceMigration", "metadata": {"name": "m"}}),
                None,
            ),
            &state,
        )
        .await;
        assert!(
            matches!(v, Verdict::Invalid(ref e) if e[0].field == "spec"),
            "{v:?}"
        );
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn updates_may_change_status_and_metadata_but_not_the_spec() {
        let state = AdmissionState::without_presets();
        let mut old = migration(json!({"vmiName": "vm1"}));
        old["metadata"]["labels"] = json!({"kubevirt.io/vmi-name": "vm1"});
        let mut new = old.clone();
        new["status"] = json!({"phase": "Running"});
        new["metadata"]["finalizers"] = json!(["kubevirt.io/migrationJobFinalize"]);
        let v = validate(&review("UPDATE", new, Some(old.clone())), &state).await;
        assert!(matches!(v, Verdict::Allow), "{v:?}");
        let mut new = old.clone();
        new["spec"]["addedNodeSelector"] = json!({"k": "v"});
        let v = validate(&review("UPDATE", new, Some(old.clone())), &state).await;
        let Verdict::Invalid(errors) = v else {
            panic!("not invalid: {v:?}")
        };
        assert_eq!(
            (errors[0].field.as_str(), errors[0].message.as_str()),
            ("spec", "spec is immutable after creation")
        );
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({});
        let v = validate(&review("UPDATE", new, Some(old)), &state).await;
        assert!(
            matches!(v, Verdict::Invalid(ref e) if e[0].field == "metadata.labels[kubevirt.io/vmi-name]"),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn through_the_router_a_refusal_is_a_422_with_the_cause() {
        use tower::ServiceExt;
        let (client, _) = cluster(|target| {
            if target.contains("virtualmachineinstancemigrations") {
                (200, list(vec![]))
            } else {
                not_found()
            }
        });
        let state = AdmissionState::without_presets().with_client(client);
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-9",
                "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstanceMigration"},
                "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachineinstancemigrations"},
                "namespace": "ns", "operation": "CREATE", "userInfo": {"username": "alice"},
                "object": migration(json!({"vmiName": "vm1"}))}
        });
        let req = Request::post(super::super::VALIDATE_MIGRATION_PATH)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        let resp = super::super::router(state).oneshot(req).await.unwrap();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        let resp: Value = serde_json::from_slice(&bytes).unwrap();
        let resp = &resp["response"];
        assert_eq!(resp["allowed"], false, "{resp}");
        assert_eq!(resp["status"]["code"], 422);
        assert_eq!(
            resp["status"]["message"],
            "VirtualMachineInstanceMigration \"kubevirt-migrate-vm-\" is invalid: spec.vmiName: the VMI \"ns/vm1\" does not exist"
        );
        assert_eq!(
            resp["status"]["details"]["causes"][0]["reason"],
            "FieldValueNotFound"
        );
    }
}
