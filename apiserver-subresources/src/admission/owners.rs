//! The owner guard: kube-controller-manager's garbage collector may not
//! delete a VirtualMachineInstance or a VirtualMachine whose owner (a VM, a
//! VMI ReplicaSet, a pool) exists and is not being deleted.
//!
//! The garbage collector deletes a dependent once it has verified that the
//! owner named in its ownerReference is absent: a lookup that answered "not
//! found", or an owner with another uid. For a custom resource that lookup
//! can answer "not found" wrongly while kube-apiserver recovers from an
//! outage (reported upstream: kubernetes/kubernetes#98471 and #100751, the
//! garbage collector deleting dependents of custom resources that existed;
//! pusher/faros#143, after an etcd leader restart). For a VMI that deletion
//! destroys a running guest. ironvirt's chaos run saw running VMIs deleted 2 s
//! after an etcd outage, by no ironvirt component (docs/reliability.md).
//!
//! So the guard looks the owner up again itself, a second time after
//! [`RECHECK_AFTER`] when the first answer is "not found", and refuses the
//! deletion (409 Conflict) when the owner is there with the same uid and no
//! deletionTimestamp. The garbage collector retries a refused deletion later,
//! and then finds the owner. A deletion the garbage collector makes because
//! the owner is really gone (same name, another uid, or none), or is being
//! deleted (foreground deletion), is allowed. When the owner cannot be read,
//! the deletion is refused with 503 (the garbage collector retries).
//!
//! The webhook is registered for DELETE of `virtualmachineinstances` and
//! `virtualmachines` only, with a matchCondition on the garbage collector's
//! user, so no other deletion is ever sent to it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Api;
use kube::core::PartialObjectMeta;
use serde_json::Value;

use ironvirt_crds::pool::VirtualMachinePool;
use ironvirt_crds::{VirtualMachine, VirtualMachineInstanceReplicaSet};

use super::review::{Review, Verdict};
use super::state::AdmissionState;

/// The garbage collector's user when kube-controller-manager runs with
/// `--use-service-account-credentials` (as kubeadm and the test bed do).
pub const GARBAGE_COLLECTOR: &str = "system:serviceaccount:kube-system:generic-garbage-collector";

/// The matchCondition's CEL expression: only the garbage collector's requests.
pub(crate) fn match_expression() -> String {
    format!("request.userInfo.username == '{GARBAGE_COLLECTOR}'")
}

/// How long the guard waits before looking a "not found" owner up again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// An owner kind the guard knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerKind {
    VirtualMachine,
    ReplicaSet,
    Pool,
}

impl OwnerKind {
    /// The kind an ownerReference names, by its group and kind (any served
    /// version: the lookup uses the stored one).
    fn of(reference: &OwnerReference) -> Option<Self> {
        let group = reference
            .api_version
            .split_once('/')
            .map_or("", |(group, _)| group);
        match (group, reference.kind.as_str()) {
            (ironvirt_crds::GROUP, "VirtualMachine") => Some(Self::VirtualMachine),
            (ironvirt_crds::GROUP, "VirtualMachineInstanceReplicaSet") => Some(Self::ReplicaSet),
            (ironvirt_crds::pool::GROUP, "VirtualMachinePool") => Some(Self::Pool),
            _ => None,
        }
    }
}

/// What a lookup of an owner found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// Not found.
    Absent,
    /// An object of that name.
    Object {
        /// Its uid.
        uid: Option<String>,
        /// Whether it has a deletionTimestamp.
        deleting: bool,
    },
}

/// Whether a deletion of a dependent must be refused because of `reference`,
/// given what a lookup of the owner found: the refusal's message, or `None`.
pub(crate) fn refusal(
    dependent: &str,
    namespace: &str,
    name: &str,
    reference: &OwnerReference,
    found: &Found,
) -> Option<String> {
    let Found::Object { uid, deleting } = found else {
        return None;
    };
    if uid.as_deref() != Some(reference.uid.as_str()) || *deleting {
        return None;
    }
    Some(format!(
        "the {} \"{namespace}/{}\" (uid {}) that owns the {dependent} \"{namespace}/{name}\" exists and is not being deleted; \
         ironvirt refuses the garbage collector's deletion of its dependent (its lookup of the owner can answer \
         \"not found\" wrongly while kube-apiserver recovers from an outage)",
        reference.kind, reference.name, reference.uid
    ))
}

/// The webhook (see the module's documentation).
pub(crate) async fn review(review: &Review, state: &AdmissionState) -> Verdict {
    if review.operation() != "DELETE" || review.username() != Some(GARBAGE_COLLECTOR) {
        return Verdict::Allow;
    }
    let Some(old) = &review.old_object else {
        return Verdict::Allow;
    };
    let owners = owner_references(old);
    if owners.is_empty() {
        return Verdict::Allow;
    }
    let Some(client) = state.client.clone() else {
        return refuse(
            503,
            "ServiceUnavailable",
            "ironvirt-api has no cluster client to look the owner up with".into(),
        );
    };
    let namespace = review.namespace();
    let name = review.object_name();
    let dependent = review.request.kind.kind.clone();
    for (kind, reference) in owners {
        let mut found = lookup(&client, kind, &namespace, &reference.name).await;
        if found == Ok(Found::Absent) {
            tokio::time::sleep(state.owner_recheck_after).await;
            found = lookup(&client, kind, &namespace, &reference.name).await;
        }
        match found {
            Err(e) => {
                let message = format!(
                    "cannot look up the {} \"{namespace}/{}\" that owns the {dependent} \"{namespace}/{name}\": {e}",
                    reference.kind, reference.name
                );
                tracing::warn!(%namespace, %name, %message, "garbage collector's deletion refused: the owner cannot be read");
                return refuse(503, "ServiceUnavailable", message);
            }
            Ok(found) => {
                if let Some(message) = refusal(&dependent, &namespace, &name, &reference, &found) {
                    tracing::warn!(%namespace, %name, owner.kind = %reference.kind, owner.name = %reference.name, "garbage collector's deletion refused: the owner exists");
                    return refuse(409, "Conflict", message);
                }
            }
        }
    }
    Verdict::Allow
}

/// The ownerReferences of `object` that name a kind the guard knows.
fn owner_references(object: &Value) -> Vec<(OwnerKind, OwnerReference)> {
    object
        .pointer("/metadata/ownerReferences")
        .cloned()
        .and_then(|v| serde_json::from_value::<Vec<OwnerReference>>(v).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| OwnerKind::of(&r).map(|k| (k, r)))
        .collect()
}

async fn lookup(
    client: &kube::Client,
    kind: OwnerKind,
    namespace: &str,
    name: &str,
) -> Result<Found, String> {
    let found = match kind {
        OwnerKind::VirtualMachine => metadata::<VirtualMachine>(client, namespace, name).await,
        OwnerKind::ReplicaSet => {
            metadata::<VirtualMachineInstanceReplicaSet>(client, namespace, name).await
        }
        OwnerKind::Pool => metadata::<VirtualMachinePool>(client, namespace, name).await,
    };
    found
        .map(|m| {
            m.map_or(Found::Absent, |m| Found::Object {
                uid: m.uid,
                deleting: m.deletion_timestamp.is_some(),
            })
        })
        .map_err(|e| e.to_string())
}

async fn metadata<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<ObjectMeta>, kube::Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .get_metadata_opt(name)
        .await?
        .map(|m: PartialObjectMeta<K>| m.metadata))
}

fn refuse(code: u16, reason: &'static str, message: String) -> Verdict {
    Verdict::Refuse {
        code,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::{Arc, Mutex};

    use http::{Request, Response};
    use serde_json::json;

    use super::*;

    fn reference(kind: &str, api_version: &str) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: "vm1".into(),
            uid: "owner-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn meta(uid: &str, deleting: bool) -> Found {
        Found::Object {
            uid: Some(uid.into()),
            deleting,
        }
    }

    #[test]
    fn only_an_owner_that_is_there_with_its_uid_and_not_deleting_refuses() {
        let r = reference("VirtualMachine", "kubevirt.io/v1");
        let message = refusal(
            "VirtualMachineInstance",
            "ns",
            "vm1",
            &r,
            &meta("owner-uid", false),
        )
        .unwrap();
        assert!(
            message.contains("VirtualMachine \"ns/vm1\" (uid owner-uid)"),
            "{message}"
        );
        assert!(message.contains("exists and is not being deleted"));
        for found in [
            Found::Absent,
            meta("another-uid", false),
            meta("owner-uid", true),
        ] {
            assert_eq!(
                refusal("VirtualMachineInstance", "ns", "vm1", &r, &found),
                None,
                "{found:?}"
            );
        }
    }

    #[test]
    fn owner_kinds_are_known_by_group_and_kind_in_any_version() {
        let kind = |k: &str, v: &str| OwnerKind::of(&reference(k, v));
        assert_eq!(
            kind("VirtualMachine", "kubevirt.io/v1alpha3"),
            Some(OwnerKind::VirtualMachine)
        );
        assert_eq!(
            kind("VirtualMachineInstanceReplicaSet", "kubevirt.io/v1"),
            Some(OwnerKind::ReplicaSet)
        );
        assert_eq!(
            kind("VirtualMachinePool", "pool.kubevirt.io/v1alpha1"),
            Some(OwnerKind::Pool)
        );
        assert_eq!(kind("VirtualMachine", "example.com/v1"), None);
        assert_eq!(kind("ReplicaSet", "apps/v1"), None);
        assert_eq!(kind("VirtualMachine", "v1"), None);
    }

    type Seen = Arc<Mutex<Vec<String>>>;

    /// A client whose kube-apiserver answers the n-th request with
    /// `answers[n]` (the last one again after that).
    fn cluster(answers: Vec<(u16, Value)>) -> (kube::Client, Seen) {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<kube::client::Body>>();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Some((req, reply)) = handle.next_request().await {
                log.lock()
                    .unwrap()
                    .push(format!("{} {}", req.method(), req.uri()));
                let (code, body) = answers[n.min(answers.len() - 1)].clone();
                n += 1;
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

    fn not_found() -> (u16, Value) {
        (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                "code": 404, "message": "virtualmachines.kubevirt.io \"vm1\" not found"}),
        )
    }

    fn vm(uid: &str) -> (u16, Value) {
        (
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "vm1", "namespace": "ns", "uid": uid}}),
        )
    }

    /// A DELETE review of VMI vm1 (owned by VM vm1, uid owner-uid) by `user`.
    fn delete_by(user: &str) -> Review {
        let old = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "vm1", "namespace": "ns", "uid": "vmi-uid",
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                    "name": "vm1", "uid": "owner-uid", "controller": true, "blockOwnerDeletion": true}]},
            "spec": {"domain": {}}});
        let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "r1", "operation": "DELETE", "name": "vm1", "namespace": "ns",
                "kind": {"group": "kubevirt.io", "version": "v1", "kind": "VirtualMachineInstance"},
                "resource": {"group": "kubevirt.io", "version": "v1", "resource": "virtualmachineinstances"},
                "userInfo": {"username": user}, "object": null, "oldObject": old,
                "options": {"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions"}}});
        Review::parse(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    async fn verdict(answers: Vec<(u16, Value)>, user: &str) -> (Verdict, Vec<String>) {
        let (client, seen) = cluster(answers);
        let state = AdmissionState::without_presets()
            .with_client(client)
            .with_owner_recheck_after(Duration::from_millis(10));
        let v = review(&delete_by(user), &state).await;
        let seen = seen.lock().unwrap().clone();
        (v, seen)
    }

    const GET_VM: &str = "GET /apis/kubevirt.io/v1/namespaces/ns/virtualmachines/vm1";

    #[tokio::test]
    async fn the_garbage_collector_may_not_delete_a_vmi_whose_vm_is_there() {
        let (v, seen) = verdict(vec![vm("owner-uid")], GARBAGE_COLLECTOR).await;
        match v {
            Verdict::Refuse { code, message, .. } => {
                assert_eq!(code, 409);
                assert!(
                    message.contains("exists and is not being deleted"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(seen, [GET_VM]);
    }

    #[tokio::test]
    async fn a_not_found_that_does_not_last_is_looked_up_again_and_refused() {
        let (v, seen) = verdict(vec![not_found(), vm("owner-uid")], GARBAGE_COLLECTOR).await;
        assert!(matches!(v, Verdict::Refuse { code: 409, .. }), "{v:?}");
        assert_eq!(seen, [GET_VM, GET_VM]);
    }

    #[tokio::test]
    async fn an_owner_really_gone_or_replaced_lets_the_garbage_collector_delete() {
        let (v, seen) = verdict(vec![not_found()], GARBAGE_COLLECTOR).await;
        assert!(matches!(v, Verdict::Allow), "{v:?}");
        assert_eq!(seen, [GET_VM, GET_VM]);
        let (v, _) = verdict(vec![vm("a-new-vm-of-that-name")], GARBAGE_COLLECTOR).await;
        assert!(matches!(v, Verdict::Allow), "{v:?}");
    }

    #[tokio::test]
    async fn an_owner_that_cannot_be_read_refuses_for_now() {
        let (v, _) = verdict(
            vec![(500, json!({"kind": "Status", "message": "etcd is away"}))],
            GARBAGE_COLLECTOR,
        )
        .await;
        match v {
            Verdict::Refuse { code, message, .. } => {
                assert_eq!(code, 503);
                assert!(
                    message.contains("cannot look up the VirtualMachine \"ns/vm1\""),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn other_users_deletions_are_not_looked_at() {
        for user in [
            "alice",
            "system:serviceaccount:kube-system:namespace-controller",
        ] {
            let (v, seen) = verdict(vec![vm("owner-uid")], user).await;
            assert!(matches!(v, Verdict::Allow), "{v:?}");
            assert!(seen.is_empty(), "{seen:?}");
        }
    }
}
