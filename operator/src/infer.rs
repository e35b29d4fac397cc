//! `inferFromVolume`: a VM's instancetype or preference named by labels of
//! one of its volumes, as KubeVirt infers them (its `infer` package), before
//! the VM controller resolves the matchers ([`crate::instancetypes`]).
//!
//! ironvirt has no PVCs or DataVolumes; the volumes that carry labels are
//! containerDisks, whose image config labels (`LABEL` in a Containerfile)
//! are read from the registry with the node's registry configuration
//! (`--registries-config`). The label keys are KubeVirt's:
//! `instancetype.kubevirt.io/default-instancetype` and `…-kind`,
//! `instancetype.kubevirt.io/default-preference` and `…-kind`.
//!
//! The outcome is written to the VM's spec, as KubeVirt's mutating webhook
//! leaves it: the matcher becomes `{name, kind}` (inferFromVolume, its
//! failure policy and any revisionName gone). A failure KubeVirt calls
//! ignorable — the volume is of a kind without labels, or the label is
//! missing — with `inferFromVolumeFailurePolicy: Ignore` removes the matcher
//! instead, and the VM runs on its template alone; with Ignore and a found
//! instancetype the template's `domain.memory` is removed (it was there for
//! the case without one). Other failures (no such volume, the registry did
//! not answer, a bad image reference) and every failure under `Reject` (the
//! default) become the VM's Failure condition, retried like a missing
//! instancetype.
//!
//! [`images`] lists the images to read; the controller reads their labels
//! and hands them to [`plan`], which is pure.

use std::collections::BTreeMap;

use ironvirt_crds::VirtualMachine;
use ironvirt_crds::instancetype::Matcher;
use ironvirt_images::ImageRef;
use serde_json::{Map, Value, json};

/// The label naming a volume's default instancetype.
pub const DEFAULT_INSTANCETYPE: &str = "instancetype.kubevirt.io/default-instancetype";
/// The label naming its kind (empty or absent: the cluster kind).
pub const DEFAULT_INSTANCETYPE_KIND: &str = "instancetype.kubevirt.io/default-instancetype-kind";
/// The label naming a volume's default preference.
pub const DEFAULT_PREFERENCE: &str = "instancetype.kubevirt.io/default-preference";
/// The label naming its kind.
pub const DEFAULT_PREFERENCE_KIND: &str = "instancetype.kubevirt.io/default-preference-kind";

/// `inferFromVolumeFailurePolicy` Ignore (Reject is the default).
pub const IGNORE: &str = "Ignore";
/// `inferFromVolumeFailurePolicy` Reject.
pub const REJECT: &str = "Reject";

/// The two matchers of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Instancetype,
    Preference,
}

impl Which {
    /// The VM spec field.
    pub fn field(self) -> &'static str {
        match self {
            Which::Instancetype => "instancetype",
            Which::Preference => "preference",
        }
    }

    fn labels(self) -> (&'static str, &'static str) {
        match self {
            Which::Instancetype => (DEFAULT_INSTANCETYPE, DEFAULT_INSTANCETYPE_KIND),
            Which::Preference => (DEFAULT_PREFERENCE, DEFAULT_PREFERENCE_KIND),
        }
    }

    /// The Failure condition's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Which::Instancetype => "FailedInferInstancetype",
            Which::Preference => "FailedInferPreference",
        }
    }

    fn matcher(self, vm: &VirtualMachine) -> Option<&Matcher> {
        match self {
            Which::Instancetype => vm.spec.instancetype.as_deref(),
            Which::Preference => vm.spec.preference.as_deref(),
        }
        .filter(|m| !m.infer_from_volume.is_empty())
    }
}

/// The labels read per image (keyed by the image as written in the
/// volume), or why they could not be read.
pub type Fetched = BTreeMap<String, Result<BTreeMap<String, String>, String>>;

/// What inference does to the VM.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// A JSON merge patch of the VM (name/kind set, matchers removed,
    /// memory removed); None when nothing is to be written.
    pub patch: Option<Value>,
    /// The VM's Failure condition: (reason, message). When set there is no
    /// patch: the VM waits, as a whole, until inference succeeds.
    pub failure: Option<(String, String)>,
    /// Failures ignored by policy Ignore (for the log).
    pub ignored: Vec<String>,
}

/// Whether the VM has a matcher to infer.
pub fn wanted(vm: &VirtualMachine) -> bool {
    [Which::Instancetype, Which::Preference]
        .into_iter()
        .any(|w| w.matcher(vm).is_some())
}

/// The containerDisk images whose labels [`plan`] needs (as written in the
/// volumes, each once; references that do not parse are left to [`plan`]).
pub fn images(vm: &VirtualMachine) -> Vec<(String, ImageRef)> {
    let mut out: Vec<(String, ImageRef)> = Vec::new();
    for which in [Which::Instancetype, Which::Preference] {
        let Some(m) = which.matcher(vm) else { continue };
        let Some(image) = volume(vm, &m.infer_from_volume)
            .and_then(|v| v.container_disk.as_ref())
            .map(|c| c.image.clone())
        else {
            continue;
        };
        if out.iter().any(|(i, _)| *i == image) {
            continue;
        }
        if let Ok(parsed) = ImageRef::parse(&image) {
            out.push((image, parsed));
        }
    }
    out
}

fn volume<'a>(vm: &'a VirtualMachine, name: &str) -> Option<&'a ironvirt_crds::volumes::Volume> {
    vm.spec
        .template
        .spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == name)
}

/// Why one matcher could not be inferred.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    /// KubeVirt's ignorable kinds: policy Ignore drops the matcher.
    ignorable: bool,
    message: String,
}

/// The `(name, kind)` one matcher infers to.
fn infer_one(
    vm: &VirtualMachine,
    which: Which,
    m: &Matcher,
    fetched: &Fetched,
) -> Result<(String, String), Failed> {
    let name = &m.infer_from_volume;
    let what = which.field();
    let hard = |message: String| Failed {
        ignorable: false,
        message,
    };
    let Some(volume) = volume(vm, name) else {
        return Err(hard(format!(
            "unable to find volume {name} to infer the {what} from: spec.template.spec.volumes has no volume of that name"
        )));
    };
    let Some(cd) = &volume.container_disk else {
        return Err(Failed {
            ignorable: true,
            message: format!(
                "unable to infer the {what} from volume {name}: only containerDisk volumes carry labels in ironvirt"
            ),
        });
    };
    if let Err(e) = ImageRef::parse(&cd.image) {
        return Err(hard(format!(
            "unable to infer the {what} from volume {name}: image {}: {e}",
            cd.image
        )));
    }
    let labels = match fetched.get(&cd.image) {
        Some(Ok(labels)) => labels,
        Some(Err(reason)) => {
            return Err(hard(format!(
                "unable to infer the {what} from volume {name}: {reason}"
            )));
        }
        None => {
            return Err(hard(format!(
                "unable to infer the {what} from volume {name}: the labels of {} were not read",
                cd.image
            )));
        }
    };
    let (name_label, kind_label) = which.labels();
    match labels.get(name_label).filter(|v| !v.is_empty()) {
        Some(found) => Ok((
            found.clone(),
            labels.get(kind_label).cloned().unwrap_or_default(),
        )),
        None => Err(Failed {
            ignorable: true,
            message: format!(
                "unable to infer the {what} from volume {name}: image {} has no {name_label} label",
                cd.image
            ),
        }),
    }
}

/// What inference does to `vm`, given the labels of its images.
pub fn plan(vm: &VirtualMachine, fetched: &Fetched) -> Plan {
    let mut spec = Map::new();
    let mut out = Plan::default();
    for which in [Which::Instancetype, Which::Preference] {
        let Some(m) = which.matcher(vm) else { continue };
        let policy = m.infer_from_volume_failure_policy.as_deref().unwrap_or("");
        let ignore = match policy {
            IGNORE => true,
            "" | REJECT => false,
            other => {
                out.failure = Some((
                    which.reason().to_owned(),
                    format!(
                        "spec.{}.inferFromVolumeFailurePolicy: '{other}' is not a policy: use Reject or Ignore",
                        which.field()
                    ),
                ));
                break;
            }
        };
        match infer_one(vm, which, m, fetched) {
            Ok((name, kind)) => {
                let kind = if kind.is_empty() {
                    Value::Null
                } else {
                    Value::String(kind)
                };
                // A merge patch: null removes the key.
                spec.insert(
                    which.field().to_owned(),
                    json!({
                        "name": name,
                        "kind": kind,
                        "revisionName": null,
                        "inferFromVolume": null,
                        "inferFromVolumeFailurePolicy": null,
                    }),
                );
                if ignore && which == Which::Instancetype {
                    spec.insert(
                        "template".to_owned(),
                        json!({"spec": {"domain": {"memory": null}}}),
                    );
                }
            }
            Err(f) if f.ignorable && ignore => {
                spec.insert(which.field().to_owned(), Value::Null);
                out.ignored.push(f.message);
            }
            Err(f) => {
                out.failure = Some((which.reason().to_owned(), f.message));
                break;
            }
        }
    }
    if out.failure.is_none() && !spec.is_empty() {
        let mut patch = json!({"spec": spec});
        // Written against the version read: a concurrent edit conflicts.
        if let Some(rv) = &vm.metadata.resource_version {
            patch["metadata"] = json!({"resourceVersion": rv});
        }
        out.patch = Some(patch);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vm(yaml: &str) -> VirtualMachine {
        let base = r##"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm1, namespace: ns, resourceVersion: "7"}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        memory: {guest: 128Mi}
        devices: {disks: [{name: disk, disk: {bus: virtio}}, {name: cloud, disk: {bus: virtio}}]}
      volumes:
      - name: disk
        containerDisk: {image: "registry.example/os/fedora:42"}
      - name: cloud
        cloudInitNoCloud: {userData: "#cloud-config"}
"##;
        let mut v: serde_yaml::Value = serde_yaml::from_str(base).unwrap();
        let extra: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        if let serde_yaml::Value::Mapping(m) = extra {
            for (k, val) in m {
                v["spec"][&k] = val;
            }
        }
        serde_yaml::from_value(v).unwrap()
    }

    const IMAGE: &str = "registry.example/os/fedora:42";

    fn labelled(pairs: &[(&str, &str)]) -> Fetched {
        let labels = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        [(IMAGE.to_owned(), Ok(labels))].into_iter().collect()
    }

    #[test]
    fn both_matchers_are_filled_from_one_image_and_inference_is_cleared() {
        let vm = vm("instancetype: {inferFromVolume: disk}\npreference: {inferFromVolume: disk}");
        assert!(wanted(&vm));
        let images = images(&vm);
        assert_eq!(images.len(), 1, "one image, read once");
        assert_eq!(images[0].0, IMAGE);
        let p = plan(
            &vm,
            &labelled(&[
                (DEFAULT_INSTANCETYPE, "u1.small"),
                (DEFAULT_PREFERENCE, "fedora"),
                (DEFAULT_PREFERENCE_KIND, "VirtualMachinePreference"),
            ]),
        );
        assert_eq!(p.failure, None);
        let patch = p.patch.unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
        let it = &patch["spec"]["instancetype"];
        assert_eq!(it["name"], "u1.small");
        assert_eq!(it["kind"], Value::Null, "no kind label: the cluster kind");
        assert_eq!(it["inferFromVolume"], Value::Null);
        assert!(it.as_object().unwrap().contains_key("inferFromVolume"));
        assert_eq!(patch["spec"]["preference"]["name"], "fedora");
        assert_eq!(
            patch["spec"]["preference"]["kind"],
            "VirtualMachinePreference"
        );
        // Reject keeps the template as written.
        assert!(patch["spec"].get("template").is_none());

        // Applied as a merge patch, the VM is what KubeVirt stores.
        let mut doc = serde_json::to_value(&vm).unwrap();
        json_patch::merge(&mut doc, &patch);
        let after: VirtualMachine = serde_json::from_value(doc).unwrap();
        let m = after.spec.instancetype.clone().unwrap();
        assert_eq!((m.name.as_str(), m.kind.as_str()), ("u1.small", ""));
        assert!(m.infer_from_volume.is_empty() && m.infer_from_volume_failure_policy.is_none());
        assert!(!wanted(&after));
    }

    #[test]
    fn failures_under_reject_are_the_vms_failure_and_nothing_is_written() {
        let cases = [
            (
                "instancetype: {inferFromVolume: nope}",
                labelled(&[(DEFAULT_INSTANCETYPE, "u1.small")]),
                "FailedInferInstancetype",
                "unable to find volume nope",
            ),
            (
                "instancetype: {inferFromVolume: cloud}",
                Fetched::new(),
                "FailedInferInstancetype",
                "only containerDisk volumes carry labels",
            ),
            (
                "preference: {inferFromVolume: disk, inferFromVolumeFailurePolicy: Reject}",
                labelled(&[(DEFAULT_INSTANCETYPE, "u1.small")]),
                "FailedInferPreference",
                "has no instancetype.kubevirt.io/default-preference label",
            ),
            (
                "instancetype: {inferFromVolume: disk}",
                [(
                    IMAGE.to_owned(),
                    Err("reading x: connection refused".into()),
                )]
                .into_iter()
                .collect(),
                "FailedInferInstancetype",
                "from volume disk: reading x: connection refused",
            ),
            (
                // The instancetype's failure holds the preference back too.
                "instancetype: {inferFromVolume: disk}\npreference: {inferFromVolume: disk}",
                labelled(&[(DEFAULT_PREFERENCE, "fedora")]),
                "FailedInferInstancetype",
                "default-instancetype label",
            ),
            (
                "instancetype: {inferFromVolume: disk, inferFromVolumeFailurePolicy: Sometimes}",
                labelled(&[(DEFAULT_INSTANCETYPE, "u1.small")]),
                "FailedInferInstancetype",
                "'Sometimes' is not a policy",
            ),
        ];
        for (spec, fetched, reason, says) in cases {
            let p = plan(&vm(spec), &fetched);
            let (r, message) = p.failure.clone().unwrap_or_default();
            assert_eq!(r, reason, "{spec}: {message}");
            assert!(message.contains(says), "{spec}: {message}");
            assert_eq!(p.patch, None, "{spec}");
        }
    }

    #[test]
    fn ignore_drops_the_matcher_on_ignorable_failures_only() {
        let ignoring = "instancetype: {inferFromVolume: disk, inferFromVolumeFailurePolicy: Ignore}\n\
                        preference: {inferFromVolume: cloud, inferFromVolumeFailurePolicy: Ignore}";
        let p = plan(&vm(ignoring), &labelled(&[]));
        assert_eq!(p.failure, None);
        let patch = p.patch.unwrap();
        assert_eq!(patch["spec"]["instancetype"], Value::Null);
        assert_eq!(patch["spec"]["preference"], Value::Null);
        assert_eq!(p.ignored.len(), 2);
        let mut doc = serde_json::to_value(vm(ignoring)).unwrap();
        json_patch::merge(&mut doc, &patch);
        let after: VirtualMachine = serde_json::from_value(doc).unwrap();
        assert!(after.spec.instancetype.is_none() && after.spec.preference.is_none());
        assert!(after.spec.template.spec.unwrap().domain.memory.is_some());

        // An unreachable registry or a missing volume is not ignorable.
        let p = plan(
            &vm("instancetype: {inferFromVolume: disk, inferFromVolumeFailurePolicy: Ignore}"),
            &[(IMAGE.to_owned(), Err("unauthorized".into()))]
                .into_iter()
                .collect(),
        );
        assert_eq!(p.failure.unwrap().0, "FailedInferInstancetype");
        let p = plan(
            &vm("instancetype: {inferFromVolume: gone, inferFromVolumeFailurePolicy: Ignore}"),
            &Fetched::new(),
        );
        assert!(p.failure.unwrap().1.contains("unable to find volume gone"));
    }

    #[test]
    fn ignore_with_a_found_instancetype_removes_the_templates_memory() {
        let v = vm("instancetype: {inferFromVolume: disk, inferFromVolumeFailurePolicy: Ignore}");
        let patch = plan(&v, &labelled(&[(DEFAULT_INSTANCETYPE, "u1.small")]))
            .patch
            .unwrap();
        let mut doc = serde_json::to_value(&v).unwrap();
        json_patch::merge(&mut doc, &patch);
        let after: VirtualMachine = serde_json::from_value(doc).unwrap();
        assert_eq!(after.spec.instancetype.unwrap().name, "u1.small");
        let t = after.spec.template.spec.unwrap();
        assert!(t.domain.memory.is_none());
        assert_eq!(t.volumes.unwrap().len(), 2, "the rest stays");
    }

    #[test]
    fn named_matchers_are_left_alone() {
        let v = vm("instancetype: {name: u1.small}\npreference: {name: fedora}");
        assert!(!wanted(&v));
        assert!(images(&v).is_empty());
        assert_eq!(plan(&v, &Fetched::new()), Plan::default());
    }
}
