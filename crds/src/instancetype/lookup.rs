//! Finding the instancetype or preference a VM's matcher names, read-only:
//! the copy in the ControllerRevision `spec.<matcher>.revisionName` records
//! (while it is a copy of the object named), else the current object,
//! namespaced or cluster-wide by the matcher's kind.
//!
//! The one place both the VM controller (ironvirt-operator, which then stores
//! a revision of a current object and records it on the VM) and ironvirt-api's
//! expand subresources (which never write) look these objects up. Nothing
//! here creates or changes anything.

use k8s_openapi::api::apps::v1::ControllerRevision;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

use super::{GROUP, Matcher, VERSION, is_namespaced_kind};

/// Label on a revision naming the object it copies (KubeVirt's key).
pub const REVISION_OBJECT_NAME_LABEL: &str = "instancetype.kubevirt.io/object-name";

/// Which of the four kinds a matcher names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// The kind, e.g. `VirtualMachineClusterInstancetype`.
    pub kind: &'static str,
    /// Its resource, e.g. `virtualmachineclusterinstancetypes`.
    pub plural: &'static str,
    /// Namespaced (the VM's namespace), or cluster-wide.
    pub namespaced: bool,
    /// A preference, or an instancetype.
    pub preference: bool,
}

impl Target {
    /// The kind for (preference, namespaced).
    pub fn of(preference: bool, namespaced: bool) -> Target {
        let (kind, plural) = match (preference, namespaced) {
            (false, true) => ("VirtualMachineInstancetype", "virtualmachineinstancetypes"),
            (false, false) => (
                "VirtualMachineClusterInstancetype",
                "virtualmachineclusterinstancetypes",
            ),
            (true, true) => ("VirtualMachinePreference", "virtualmachinepreferences"),
            (true, false) => (
                "VirtualMachineClusterPreference",
                "virtualmachineclusterpreferences",
            ),
        };
        Target {
            kind,
            plural,
            namespaced,
            preference,
        }
    }

    /// The kind `m` names (an empty or unknown kind is the cluster kind).
    pub fn for_matcher(m: &Matcher, preference: bool) -> Target {
        Target::of(preference, is_namespaced_kind(&m.kind, preference))
    }

    /// `instancetype` or `preference`: the VM's field and the word in messages.
    pub fn field(&self) -> &'static str {
        if self.preference {
            "preference"
        } else {
            "instancetype"
        }
    }
}

/// What a matcher led to.
#[derive(Clone, Debug)]
pub enum Found {
    /// The copy the VM's revision holds: the revision's name and data (the
    /// whole object as stored).
    Revision { name: String, data: Value },
    /// The current object (no revision recorded, or the one recorded copies
    /// another object: the user named a new one).
    Current(Box<DynamicObject>),
    /// `revisionName` names no ControllerRevision.
    RevisionMissing,
    /// No such object.
    Missing,
}

/// Looks up what `m` (the VM's instancetype matcher, or its preference
/// matcher when `t.preference`) names for a VM in namespace `ns`. With
/// `revisions_of` (the VM's uid), the revision `revisionName` names is used
/// while it copies the object named and is owned by that VM; without it,
/// `revisionName` is ignored and the current object is read. Only reads: a
/// ControllerRevision in `ns` and the object.
pub async fn find(
    client: &Client,
    ns: &str,
    m: &Matcher,
    t: Target,
    revisions_of: Option<&str>,
) -> Result<Found, kube::Error> {
    if let Some(vm_uid) = revisions_of
        && !m.revision_name.is_empty()
    {
        let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), ns);
        match revisions.get_opt(&m.revision_name).await? {
            Some(rev) if copies(&rev, &m.name) && owned_by(&rev, vm_uid) => {
                return Ok(Found::Revision {
                    name: m.revision_name.clone(),
                    data: rev.data.map(|d| d.0).unwrap_or(Value::Null),
                });
            }
            // A revision of another object (the user named a new one), or
            // another VM's: never read in place of this VM's own copy.
            Some(_) => {}
            None => return Ok(Found::RevisionMissing),
        }
    }
    let gvk = GroupVersionKind::gvk(GROUP, VERSION, t.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, t.plural);
    let objects: Api<DynamicObject> = if t.namespaced {
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    Ok(match objects.get_opt(&m.name).await? {
        Some(o) => Found::Current(Box::new(o)),
        None => Found::Missing,
    })
}

/// Whether `rev` is a copy of the object named `name` (a revision without
/// the label counts as one, as the VM controller has always read it).
fn copies(rev: &ControllerRevision, name: &str) -> bool {
    rev.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_OBJECT_NAME_LABEL))
        .is_none_or(|n| n == name)
}

/// Whether `rev` belongs to the VM with uid `vm_uid` (the VM controller
/// creates each VM's revisions with the VM as their controller).
fn owned_by(rev: &ControllerRevision, vm_uid: &str) -> bool {
    rev.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == vm_uid && o.controller == Some(true))
}

/// The spec inside a revision's data (the whole object as stored).
pub fn decode<T: serde::de::DeserializeOwned>(data: &Value) -> Result<T, String> {
    let spec = data
        .get("spec")
        .ok_or_else(|| "the revision's data has no spec".to_owned())?;
    serde_json::from_value(spec.clone()).map_err(|e| format!("the revision's data: {e}"))
}

/// Why a matcher's spec could not be had (read-only lookups: [`spec`]).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// `revisionName` names no ControllerRevision.
    #[error(
        "spec.{field}.revisionName: ControllerRevision {name:?} not found; clear revisionName to use the {field}'s current version"
    )]
    RevisionMissing { field: &'static str, name: String },
    /// No such object (Kubernetes' NotFound wording).
    #[error("{plural}.{GROUP} {name:?} not found")]
    Missing { plural: &'static str, name: String },
    /// The revision's copy does not parse.
    #[error("ControllerRevision {name}: {reason}")]
    BadRevision { name: String, reason: String },
    /// The object's spec does not parse.
    #[error("{kind} {name:?}: its spec cannot be read: {reason}")]
    BadObject {
        kind: &'static str,
        name: String,
        reason: String,
    },
    /// kube-apiserver's answer.
    #[error(transparent)]
    Kube(#[from] kube::Error),
}

impl LookupError {
    /// `m`'s revisionName names no ControllerRevision.
    pub fn revision_missing(m: &Matcher, t: Target) -> LookupError {
        LookupError::RevisionMissing {
            field: t.field(),
            name: m.revision_name.clone(),
        }
    }

    /// The object `m` names does not exist.
    pub fn missing(m: &Matcher, t: Target) -> LookupError {
        LookupError::Missing {
            plural: t.plural,
            name: m.name.clone(),
        }
    }

    /// The short stable reason (for logs and metrics).
    pub fn reason(&self) -> &'static str {
        match self {
            LookupError::RevisionMissing { .. } => "RevisionMissing",
            LookupError::Missing { .. } => "NotFound",
            LookupError::BadRevision { .. } => "BadRevision",
            LookupError::BadObject { .. } => "BadObject",
            LookupError::Kube(_) => "ApiError",
        }
    }
}

/// The typed spec of what [`find`] found, or why there is none.
pub fn spec_of<T: serde::de::DeserializeOwned>(
    found: Found,
    m: &Matcher,
    t: Target,
) -> Result<T, LookupError> {
    match found {
        Found::Revision { name, data } => {
            decode(&data).map_err(|reason| LookupError::BadRevision { name, reason })
        }
        Found::Current(o) => {
            let spec = o.data.get("spec").cloned().unwrap_or(Value::Null);
            serde_json::from_value(spec).map_err(|e| LookupError::BadObject {
                kind: t.kind,
                name: m.name.clone(),
                reason: e.to_string(),
            })
        }
        Found::RevisionMissing => Err(LookupError::revision_missing(m, t)),
        Found::Missing => Err(LookupError::missing(m, t)),
    }
}

/// [`find`] then [`spec_of`]: the spec `m` names, read-only.
pub async fn spec<T: serde::de::DeserializeOwned>(
    client: &Client,
    ns: &str,
    m: &Matcher,
    preference: bool,
    revisions_of: Option<&str>,
) -> Result<T, LookupError> {
    let t = Target::for_matcher(m, preference);
    let found = find(client, ns, m, t, revisions_of).await?;
    spec_of(found, m, t)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::instancetype::{VirtualMachineInstancetypeSpec, VirtualMachinePreferenceSpec};
    use serde_json::json;

    fn matcher(name: &str, kind: &str, rev: &str) -> Matcher {
        Matcher {
            name: name.into(),
            kind: kind.into(),
            revision_name: rev.into(),
            ..Default::default()
        }
    }

    #[test]
    fn targets_follow_the_matchers_kind() {
        let t = Target::for_matcher(&matcher("a", "", ""), false);
        assert_eq!(
            (t.kind, t.plural, t.namespaced),
            (
                "VirtualMachineClusterInstancetype",
                "virtualmachineclusterinstancetypes",
                false
            )
        );
        let t = Target::for_matcher(&matcher("a", "virtualmachineinstancetype", ""), false);
        assert_eq!((t.kind, t.namespaced), ("VirtualMachineInstancetype", true));
        let t = Target::for_matcher(&matcher("a", "VirtualMachinePreference", ""), true);
        assert_eq!(
            (t.plural, t.field()),
            ("virtualmachinepreferences", "preference")
        );
        let t = Target::for_matcher(&matcher("a", "", ""), true);
        assert_eq!(t.kind, "VirtualMachineClusterPreference");
    }

    #[test]
    fn specs_come_from_the_revision_or_the_object_and_failures_say_which() {
        let m = matcher("u1.small", "", "vm-u1.small-v1beta1-uid-1");
        let t = Target::for_matcher(&m, false);
        let data = json!({"spec": {"cpu": {"guest": 2}, "memory": {"guest": "4Gi"}}});
        let s: VirtualMachineInstancetypeSpec = spec_of(
            Found::Revision {
                name: m.revision_name.clone(),
                data: data.clone(),
            },
            &m,
            t,
        )
        .unwrap();
        assert_eq!((s.cpu.guest, s.memory.guest.0.as_str()), (2, "4Gi"));
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1",
            "kind": "VirtualMachineClusterInstancetype",
            "metadata": {"name": "u1.small"},
            "spec": data["spec"],
        }))
        .unwrap();
        let s: VirtualMachineInstancetypeSpec =
            spec_of(Found::Current(Box::new(object)), &m, t).unwrap();
        assert_eq!(s.cpu.guest, 2);

        let e = spec_of::<VirtualMachineInstancetypeSpec>(Found::Missing, &m, t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "virtualmachineclusterinstancetypes.instancetype.kubevirt.io \"u1.small\" not found"
        );
        assert_eq!(e.reason(), "NotFound");
        let e =
            spec_of::<VirtualMachineInstancetypeSpec>(Found::RevisionMissing, &m, t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.instancetype.revisionName: ControllerRevision \"vm-u1.small-v1beta1-uid-1\" not found; clear revisionName to use the instancetype's current version"
        );
        let e = spec_of::<VirtualMachineInstancetypeSpec>(
            Found::Revision {
                name: "r".into(),
                data: json!({}),
            },
            &m,
            t,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ControllerRevision r: the revision's data has no spec"
        );
        // A preference object whose spec is not a preference.
        let p = matcher("p", "VirtualMachinePreference", "");
        let bad: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": "VirtualMachinePreference",
            "metadata": {"name": "p"}, "spec": {"cpu": "not an object"},
        }))
        .unwrap();
        let e = spec_of::<VirtualMachinePreferenceSpec>(
            Found::Current(Box::new(bad)),
            &p,
            Target::for_matcher(&p, true),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("VirtualMachinePreference \"p\": its spec cannot be read"),
            "{e}"
        );
    }

    #[test]
    fn a_revision_copies_the_object_its_label_names() {
        let rev = |labels: Option<Value>| -> ControllerRevision {
            serde_json::from_value(json!({
                "metadata": {"name": "r", "labels": labels}, "revision": 1,
            }))
            .unwrap()
        };
        assert!(copies(&rev(None), "a"));
        assert!(copies(
            &rev(Some(json!({REVISION_OBJECT_NAME_LABEL: "a"}))),
            "a"
        ));
        assert!(!copies(
            &rev(Some(json!({REVISION_OBJECT_NAME_LABEL: "b"}))),
            "a"
        ));
    }

    #[test]
    fn only_the_vms_own_revisions_are_read() {
        let rev = |owner: Value| -> ControllerRevision {
            serde_json::from_value(json!({
                "metadata": {"name": "r", "ownerReferences": owner}, "revision": 1,
            }))
            .unwrap()
        };
        let vm = |uid: &str, controller: bool| {
            json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vm",
                    "uid": uid, "controller": controller}])
        };
        assert!(owned_by(&rev(vm("mine", true)), "mine"));
        assert!(
            !owned_by(&rev(vm("theirs", true)), "mine"),
            "another VM's copy"
        );
        assert!(
            !owned_by(&rev(vm("mine", false)), "mine"),
            "not its controller"
        );
        assert!(!owned_by(&rev(Value::Null), "mine"), "nobody's");
    }
}
