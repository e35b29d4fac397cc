//! The VM controller's instancetypes and preferences: a point-in-time copy
//! of each object a VM names is kept in a ControllerRevision the VM owns,
//! named in `spec.<matcher>.revisionName` (as KubeVirt's VM controller
//! records it) and `status.<matcher>Ref`. Later edits or deletion of the
//! object change nothing until the user clears `revisionName` or names
//! another object; deleting the VM deletes its revisions (garbage collection
//! by owner).

use ironvirt_crds::VirtualMachine;
use ironvirt_crds::instancetype::lookup::{self, Found, LookupError, Target};
use ironvirt_crds::instancetype::{
    self as it, ControllerRevisionRef, Matcher, StatusRef, VirtualMachineInstancetypeSpec,
    VirtualMachinePreferenceSpec,
};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};

use crate::vm::{Instancetypes, Snapshot};

/// Label keys on the revisions (KubeVirt's).
const LABEL_PREFIX: &str = "instancetype.kubevirt.io/object-";

/// The revision's name for a copy of object `obj` (uid, generation) taken
/// for `vm`: `<vm>-<object>-<version>-<uid>-<generation>`.
pub fn revision_name(vm: &str, obj: &str, uid: &str, generation: i64) -> String {
    format!("{vm}-{obj}-{}-{uid}-{generation}", it::VERSION)
}

/// The spec inside a revision's data (the whole object as stored).
pub use ironvirt_crds::instancetype::lookup::decode;

/// The revision for `object` (a fetched instancetype or preference), owned by `vm`.
pub fn revision_for(vm: &VirtualMachine, object: &DynamicObject, kind: &str) -> ControllerRevision {
    let vm_name = vm.metadata.name.clone().unwrap_or_default();
    let obj_name = object.metadata.name.clone().unwrap_or_default();
    let uid = object.metadata.uid.clone().unwrap_or_default();
    let generation = object.metadata.generation.unwrap_or(1);
    let owner = OwnerReference {
        api_version: VirtualMachine::api_version(&()).into_owned(),
        kind: VirtualMachine::kind(&()).into_owned(),
        name: vm_name.clone(),
        uid: vm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let labels = [
        ("name", obj_name.clone()),
        ("kind", kind.to_owned()),
        ("uid", uid.clone()),
        ("generation", generation.to_string()),
        ("version", it::VERSION.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{LABEL_PREFIX}{k}"), v))
    .collect();
    let data = json!({
        "apiVersion": format!("{}/{}", it::GROUP, it::VERSION),
        "kind": kind,
        "metadata": {"name": obj_name, "uid": uid, "generation": generation},
        "spec": object.data.get("spec").cloned().unwrap_or(Value::Null),
    });
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(revision_name(&vm_name, &obj_name, &uid, generation)),
            namespace: vm.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data)),
        revision: generation,
    }
}

/// What went wrong resolving one matcher: (reason, message).
type Failure = (String, String);

/// Resolves the VM's instancetype and preference: the copy its revision
/// holds, or a new revision of the current object (recorded in the VM's
/// `revisionName`). Failures become the VM's Failure condition.
pub async fn resolve(
    client: &Client,
    vm: &VirtualMachine,
    ns: &str,
) -> Result<Instancetypes, kube::Error> {
    let mut out = Instancetypes::default();
    if let Some(m) = &vm.spec.instancetype {
        match snapshot::<VirtualMachineInstancetypeSpec>(client, vm, ns, m, false).await? {
            Ok(s) => out.instancetype = Some(s),
            Err(f) => out.failure = Some(f),
        }
    }
    if out.failure.is_none()
        && let Some(m) = &vm.spec.preference
    {
        match snapshot::<VirtualMachinePreferenceSpec>(client, vm, ns, m, true).await? {
            Ok(s) => out.preference = Some(s),
            Err(f) => out.failure = Some(f),
        }
    }
    Ok(out)
}

async fn snapshot<T: serde::de::DeserializeOwned>(
    client: &Client,
    vm: &VirtualMachine,
    ns: &str,
    m: &Matcher,
    preference: bool,
) -> Result<Result<Snapshot<T>, Failure>, kube::Error> {
    let target = Target::for_matcher(m, preference);
    let (kind, what) = (target.kind, target.field());
    let failed = || format!("FailedFind{}", capitalized(what));
    let status = |rev: &str| StatusRef {
        name: m.name.clone(),
        kind: kind.to_owned(),
        controller_revision_ref: Some(ControllerRevisionRef {
            name: rev.to_owned(),
        }),
    };
    // The revision the VM records while it is a copy of the object named;
    // else the current object, of which a revision is stored below.
    let vm_uid = vm.metadata.uid.as_deref().unwrap_or_default();
    let found = lookup::find(client, ns, m, target, Some(vm_uid)).await?;
    let object = match found {
        Found::Current(object) => *object,
        Found::Revision { name, data } => {
            return Ok(match decode::<T>(&data) {
                Ok(spec) => Ok(Snapshot {
                    spec,
                    status: status(&name),
                }),
                Err(reason) => Err((
                    failed(),
                    LookupError::BadRevision { name, reason }.to_string(),
                )),
            });
        }
        Found::RevisionMissing => {
            let e = LookupError::revision_missing(m, target);
            return Ok(Err((failed(), e.to_string())));
        }
        Found::Missing => {
            let e = LookupError::missing(m, target);
            return Ok(Err((
                failed(),
                format!("{e}: the VM starts once it exists"),
            )));
        }
    };
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
    let rev = revision_for(vm, &object, kind);
    let name = rev.metadata.name.clone().unwrap_or_default();
    match revisions.create(&PostParams::default(), &rev).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let existing = revisions.get(&name).await?;
            if existing.data.as_ref().map(|d| &d.0) != rev.data.as_ref().map(|d| &d.0) {
                return Ok(Err((
                    "FailedCreate".to_owned(),
                    format!("found existing ControllerRevision with unexpected data: {name}"),
                )));
            }
        }
        Err(e) => return Err(e),
    }
    // Record it on the VM, as KubeVirt's VM controller does.
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let patch = json!({"spec": {what: {"revisionName": name}}});
    vms.patch(
        &vm.metadata.name.clone().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    tracing::info!(vm = ?vm.metadata.name, revision = %name, kind, "stored a copy of the VM's {what}");
    let data = rev.data.map(|d| d.0).unwrap_or(Value::Null);
    Ok(decode::<T>(&data)
        .map(|spec| Snapshot {
            spec,
            status: status(&name),
        })
        .map_err(|e| (failed(), e)))
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn revisions_are_named_and_labelled_as_kubevirts_and_owned_by_the_vm() {
        let vm: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "ns", "uid": "vm-uid"},
            "spec": {"template": {"spec": {"domain": {}}}, "instancetype": {"name": "u1.small"}},
        }))
        .unwrap();
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachineClusterInstancetype",
            "metadata": {"name": "u1.small", "uid": "it-uid", "generation": 3, "labels": {"x": "y"}},
            "spec": {"cpu": {"guest": 1}, "memory": {"guest": "2Gi"}},
        }))
        .unwrap();
        let rev = revision_for(&vm, &object, "VirtualMachineClusterInstancetype");
        assert_eq!(
            rev.metadata.name.as_deref(),
            Some("vm1-u1.small-v1beta1-it-uid-3")
        );
        assert_eq!(rev.metadata.namespace.as_deref(), Some("ns"));
        let owner = &rev.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("VirtualMachine", "vm-uid")
        );
        assert_eq!(owner.controller, Some(true));
        let labels = rev.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["instancetype.kubevirt.io/object-name"], "u1.small");
        assert_eq!(labels["instancetype.kubevirt.io/object-generation"], "3");
        // The object's own labels are not copied; its spec is.
        let data = &rev.data.as_ref().unwrap().0;
        assert!(data["metadata"].get("labels").is_none());
        let spec: VirtualMachineInstancetypeSpec = decode(data).unwrap();
        assert_eq!(spec.cpu.guest, 1);
        assert_eq!(spec.memory.guest.0, "2Gi");
        assert!(decode::<VirtualMachineInstancetypeSpec>(&json!({})).is_err());
    }
}
