//! What the two replica controllers share (the VMI ReplicaSet owns VMIs, the
//! VirtualMachinePool owns VMs): which objects an owner adopts, releases,
//! replaces and keeps, by controller reference and selector, and the
//! controller reference it sets. Pure functions; the writes are in
//! [`crate::controller::replicas`].

use ironvirt_crds::validate::selector_matches;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::{Resource, ResourceExt};

/// The UID of `obj`'s controller, if it has one.
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The controller reference an owner puts on the objects it creates or adopts.
pub fn owner_ref<O: Resource<DynamicType = ()>>(owner: &O) -> OwnerReference {
    OwnerReference {
        api_version: O::api_version(&()).into_owned(),
        kind: O::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// An owner's objects, sorted out.
#[derive(Debug)]
pub struct Sorted<'a, K> {
    /// Orphans matching the selector: add our controller reference.
    pub adopt: Vec<String>,
    /// Owned objects that no longer match: remove our reference.
    pub release: Vec<String>,
    /// Owned objects that are done (a finished VMI): delete and replace.
    pub finished: Vec<String>,
    /// What the owner counts: owned (or adopted) matching objects that are
    /// neither finished nor being deleted.
    pub active: Vec<&'a K>,
}

/// Sorts out `objs` (every object of the kind in the owner's namespace) for
/// the owner with `owner_uid` and `selector`. Objects being deleted count for
/// nothing; `finished` says which objects are done.
pub fn sort_out<'a, K: Resource>(
    owner_uid: &str,
    selector: &LabelSelector,
    objs: &'a [K],
    finished: impl Fn(&K) -> bool,
) -> Sorted<'a, K> {
    let mut s = Sorted {
        adopt: Vec::new(),
        release: Vec::new(),
        finished: Vec::new(),
        active: Vec::new(),
    };
    for o in objs {
        let matches = selector_matches(selector, o.labels());
        let going = o.meta().deletion_timestamp.is_some();
        match controller_uid(o) {
            Some(owner) if owner == owner_uid => {
                if !matches {
                    s.release.push(o.name_any());
                } else if !going && finished(o) {
                    s.finished.push(o.name_any());
                } else if !going {
                    s.active.push(o);
                }
            }
            None if matches && !going && !finished(o) => {
                s.adopt.push(o.name_any());
                s.active.push(o);
            }
            _ => {}
        }
    }
    s
}

/// The selector as a string, for status.labelSelector (the scale subresource).
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in selector.match_expressions.iter().flatten() {
        let values = r.values.clone().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "In" => format!("{} in ({values})", r.key),
            "NotIn" => format!("{} notin ({values})", r.key),
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            other => format!("{} {other} ({values})", r.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ironvirt_crds::VirtualMachine;

    fn vm(name: &str, app: &str, owner: Option<&str>, going: bool) -> VirtualMachine {
        let owner = owner
            .map(|u| format!(", ownerReferences: [{{apiVersion: pool.kubevirt.io/v1beta1, kind: VirtualMachinePool, name: p, uid: {u}, controller: true}}]"))
            .unwrap_or_default();
        let going = if going {
            ", deletionTimestamp: '2026-01-01T00:00:00Z'"
        } else {
            ""
        };
        serde_yaml::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: {name}, labels: {{app: {app}}}{owner}{going}}}\nspec: {{template: {{spec: {{domain: {{}}}}}}}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn sorts_out_owned_orphans_strangers_and_the_departing() {
        let sel: LabelSelector = serde_yaml::from_str("{matchLabels: {app: x}}").unwrap();
        let vms = [
            vm("mine", "x", Some("uid"), false),
            vm("orphan", "x", None, false),
            vm("strayed", "y", Some("uid"), false),
            vm("someone-elses", "x", Some("other"), false),
            vm("going", "x", Some("uid"), true),
            vm("done", "x", Some("uid"), false),
        ];
        let s = sort_out("uid", &sel, &vms, |v| v.name_any() == "done");
        assert_eq!(s.adopt, ["orphan"]);
        assert_eq!(s.release, ["strayed"]);
        assert_eq!(s.finished, ["done"]);
        let active: Vec<String> = s.active.iter().map(|v| v.name_any()).collect();
        assert_eq!(active, ["mine", "orphan"]);
    }

    #[test]
    fn selector_strings() {
        let sel: LabelSelector = serde_yaml::from_str(
            "{matchLabels: {app: x}, matchExpressions: [{key: tier, operator: In, values: [a, b]}, {key: gone, operator: DoesNotExist}]}",
        )
        .unwrap();
        assert_eq!(selector_string(&sel), "app=x,tier in (a,b),!gone");
    }
}
