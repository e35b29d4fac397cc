//! The VirtualMachinePool controller's decisions as pure functions: which VMs
//! to adopt, release, create (named `<pool>-<n>`, lowest free n), delete on
//! scale-in, bring to the current template revision and restart, and the
//! pool's status. Ownership is sorted out by [`crate::replicas`], shared with
//! the VMI ReplicaSet.

use std::collections::{BTreeMap, BTreeSet};

use ironvirt_crds::pool::{
    POOL_LABEL, REVISION_LABEL, ScaleIn, SelectionPolicy, SortPolicy, Update, VirtualMachinePool,
    VirtualMachinePoolStatus, VirtualMachineTemplateSpec,
};
use ironvirt_crds::validate::selector_matches;
use ironvirt_crds::vmi::Condition;
use ironvirt_crds::{RunStrategy, VirtualMachine, VirtualMachineInstance};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::conditions::{self, condition};
use crate::replicas;
use crate::vm::VM_LABEL;

/// What one reconcile of a pool does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolPlan {
    /// Orphan VMs matching the selector: add our controller reference.
    pub adopt: Vec<String>,
    /// Owned VMs that no longer match: remove our reference.
    pub release: Vec<String>,
    /// New VMs.
    pub create: Vec<VirtualMachine>,
    /// VMs to delete (scale-in victims).
    pub delete: Vec<String>,
    /// VMs brought to the current revision: replaced with these (each keeps
    /// the resourceVersion read, so a concurrent change is a conflict).
    pub update: Vec<VirtualMachine>,
    /// VMIs to restart (deleted; their VM, runStrategy Always, starts a new
    /// one from the updated template).
    pub restart: Vec<String>,
    /// The ControllerRevision holding the current template.
    pub revision: ControllerRevision,
    /// Older revisions no VM uses any more.
    pub prune: Vec<String>,
    pub status: VirtualMachinePoolStatus,
}

/// The name of the revision holding `template`: `<pool>-<hash>`, the hash of
/// the template as JSON (labels and annotations are sorted maps, so equal
/// templates give equal names).
pub fn revision_name(pool: &str, template: &VirtualMachineTemplateSpec) -> String {
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hash: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("{pool}-{hash}")
}

/// The ControllerRevision holding the pool's current template, owned by it.
pub fn revision_for(pool: &VirtualMachinePool) -> ControllerRevision {
    let name = revision_name(&pool.name_any(), &pool.spec.virtual_machine_template);
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([(POOL_LABEL.to_owned(), pool.name_any())])),
            owner_references: Some(vec![replicas::owner_ref(pool)]),
            ..Default::default()
        },
        data: Some(RawExtension(
            json!({"spec": {"virtualMachineTemplate": pool.spec.virtual_machine_template}}),
        )),
        revision: pool.metadata.generation.unwrap_or(1),
    }
}

/// The index `n` of a VM named `<pool>-<n>`.
pub fn index_of(pool: &str, vm: &str) -> Option<u32> {
    vm.strip_prefix(pool)?.strip_prefix('-')?.parse().ok()
}

/// The spec of VM `n`: the template's, with `-<n>` appended to the configMap
/// and secret volume names that `nameGeneration` asks for.
fn indexed_spec(pool: &VirtualMachinePool, n: u32) -> ironvirt_crds::VirtualMachineSpec {
    let mut spec = pool.spec.virtual_machine_template.spec.clone();
    let gen_ = pool.spec.name_generation.clone().unwrap_or_default();
    let (cm, secret) = (
        gen_.append_index_to_config_map_refs.unwrap_or(false),
        gen_.append_index_to_secret_refs.unwrap_or(false),
    );
    if let Some(vmi) = spec.template.spec.as_mut() {
        for v in vmi.volumes.iter_mut().flatten() {
            for (on, source, key) in [
                (cm, v.config_map.as_mut(), "name"),
                (secret, v.secret.as_mut(), "secretName"),
            ] {
                if let (true, Some(Value::Object(o))) = (on, source)
                    && let Some(Value::String(name)) = o.get_mut(key)
                {
                    name.push_str(&format!("-{n}"));
                }
            }
        }
    }
    spec
}

/// VM `n` of `pool` at revision `revision`: the template with its labels
/// (and the revision label, also on the VMI template so VMIs carry it),
/// owned by the pool.
pub fn vm_for(pool: &VirtualMachinePool, n: u32, revision: &str) -> VirtualMachine {
    let meta = pool
        .spec
        .virtual_machine_template
        .metadata
        .clone()
        .unwrap_or_default();
    let mut labels = meta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.to_owned(), revision.to_owned());
    let mut spec = indexed_spec(pool, n);
    let vmi_meta = spec.template.metadata.get_or_insert_with(Default::default);
    vmi_meta
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.to_owned(), revision.to_owned());
    VirtualMachine {
        metadata: ObjectMeta {
            name: Some(format!("{}-{n}", pool.name_any())),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: meta.annotations,
            owner_references: Some(vec![replicas::owner_ref(pool)]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

fn revision_of<K: kube::Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}

fn ready(vm: &VirtualMachine) -> bool {
    vm.status.as_ref().and_then(|s| s.ready).unwrap_or(false)
}

/// A stable pseudo-random rank of a name (FNV-1a), for sortPolicy Random.
fn shuffled(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Orders `vms` by `policy`: VMs its labelSelector matches first, then by
/// sortPolicy (default DescendingOrder). VMs whose names carry no index (an
/// adopted stranger) go before the indexed ones.
pub fn select<'a>(
    pool: &str,
    policy: &SelectionPolicy,
    vms: &[&'a VirtualMachine],
) -> Vec<&'a VirtualMachine> {
    let mut out = vms.to_vec();
    let selector = policy
        .selectors
        .as_ref()
        .and_then(|s| s.label_selector.as_ref());
    let sort = policy.sort_policy.unwrap_or(SortPolicy::DescendingOrder);
    out.sort_by(|a, b| {
        let picked =
            |v: &VirtualMachine| !selector.is_some_and(|s| selector_matches(s, v.labels()));
        let created = |v: &VirtualMachine| v.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let index = |v: &VirtualMachine| index_of(pool, &v.name_any());
        picked(a)
            .cmp(&picked(b))
            .then_with(|| match sort {
                SortPolicy::DescendingOrder => (index(a).is_some(), std::cmp::Reverse(index(a)))
                    .cmp(&(index(b).is_some(), std::cmp::Reverse(index(b)))),
                SortPolicy::AscendingOrder => {
                    (index(a).is_some(), index(a)).cmp(&(index(b).is_some(), index(b)))
                }
                SortPolicy::Newest => created(b).cmp(&created(a)),
                SortPolicy::Oldest => created(a).cmp(&created(b)),
                SortPolicy::Random => shuffled(&a.name_any()).cmp(&shuffled(&b.name_any())),
            })
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    out
}

/// How many VMs a proactive update may have down at once.
fn max_unavailable(pool: &VirtualMachinePool, replicas: usize) -> usize {
    match &pool.spec.max_unavailable {
        None => 1,
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => {
            let pct: usize = s.trim_end_matches('%').trim().parse().unwrap_or(0);
            (replicas * pct).div_ceil(100)
        }
    }
    .max(1)
}

/// Decides one reconcile of `pool`, given every VM and VMI in its namespace
/// and the names of its ControllerRevisions.
pub fn plan(
    pool: &VirtualMachinePool,
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
    revisions: &[String],
    now: Timestamp,
) -> PoolPlan {
    let name = pool.name_any();
    let uid = pool.metadata.uid.as_deref().unwrap_or_default();
    let sorted = replicas::sort_out(uid, &pool.spec.selector, vms, |_| false);
    let revision = revision_for(pool);
    let current = revision.metadata.name.clone().unwrap_or_default();
    let mut p = PoolPlan {
        adopt: sorted.adopt,
        release: sorted.release,
        ..PoolPlan::default()
    };
    let mut active = sorted.active;
    let paused = pool.spec.paused.unwrap_or(false);
    let want = usize::try_from(pool.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    if !paused {
        if active.len() < want {
            // Lowest free indexes; a name any VM holds (even one going away,
            // or someone else's) is not free.
            let taken: BTreeSet<String> = vms.iter().map(|v| v.name_any()).collect();
            p.create = (0u32..)
                .filter(|n| !taken.contains(&format!("{name}-{n}")))
                .take(want - active.len())
                .map(|n| vm_for(pool, n, &current))
                .collect();
        } else if active.len() > want
            && let ScaleIn::Proactive(policy) = pool.spec.scale_in()
        {
            let victims: Vec<String> = select(&name, &policy, &active)
                .into_iter()
                .take(active.len() - want)
                .map(|v| v.name_any())
                .collect();
            active.retain(|v| !victims.contains(&v.name_any()));
            p.delete = victims;
        }
        plan_update(pool, &current, &active, vmis, &mut p);
    }
    let used: BTreeSet<&str> = active.iter().filter_map(|v| revision_of(*v)).collect();
    p.prune = revisions
        .iter()
        .filter(|r| **r != current && !used.contains(r.as_str()))
        .cloned()
        .collect();
    let mut conds: Vec<Condition> = Vec::new();
    if paused {
        conds.push(condition(
            "ReplicaPaused",
            true,
            "Paused",
            "spec.paused is true: not creating, deleting or updating VMs",
        ));
    }
    let count = |n: usize| Some(i32::try_from(n).unwrap_or(i32::MAX));
    let updated = active
        .iter()
        .filter(|v| revision_of(**v) == Some(current.as_str()))
        .count()
        + p.update.len();
    let old = pool.status.as_ref().and_then(|s| s.conditions.as_deref());
    p.status = VirtualMachinePoolStatus {
        replicas: count(active.len()),
        ready_replicas: count(active.iter().filter(|v| ready(v)).count()),
        label_selector: Some(replicas::selector_string(&pool.spec.selector)),
        conditions: Some(conditions::merge(old, conds, now)),
        current_revision: Some(current),
        updated_replicas: count(updated),
    };
    p.revision = revision;
    p
}

/// Brings `active` VMs to the current revision by the update strategy: VMs
/// of an older revision are replaced with the current template (keeping
/// their name, owner references and resourceVersion); proactive updates then
/// restart the VMIs of older revisions, up to maxUnavailable VMs down at once.
fn plan_update(
    pool: &VirtualMachinePool,
    current: &str,
    active: &[&VirtualMachine],
    vmis: &[VirtualMachineInstance],
    p: &mut PoolPlan,
) {
    let name = pool.name_any();
    let policy = match pool.spec.update() {
        Update::Unmanaged => return,
        Update::Opportunistic => None,
        Update::Proactive(policy) => Some(policy),
    };
    for vm in active {
        if revision_of(*vm) == Some(current) {
            continue;
        }
        let Some(n) = index_of(&name, &vm.name_any()) else {
            continue;
        };
        let fresh = vm_for(pool, n, current);
        let mut updated = (*vm).clone();
        updated.metadata.labels = fresh.metadata.labels;
        updated.metadata.annotations =
            match (updated.metadata.annotations, fresh.metadata.annotations) {
                (Some(mut mine), Some(theirs)) => {
                    mine.extend(theirs);
                    Some(mine)
                }
                (mine, theirs) => theirs.or(mine),
            };
        updated.spec = fresh.spec;
        updated.status = None;
        updated.metadata.managed_fields = None;
        p.update.push(updated);
    }
    let Some(policy) = policy else { return };
    let vmi_of = |vm: &VirtualMachine| {
        vmis.iter().find(|i| {
            i.name_any() == vm.name_any()
                && i.labels().get(VM_LABEL) == Some(&vm.name_any())
                && i.metadata.deletion_timestamp.is_none()
        })
    };
    // Only VMs that start again by themselves are restarted; the others take
    // the new template at their next start.
    let outdated: Vec<&VirtualMachine> = active
        .iter()
        .copied()
        .filter(|vm| vm.spec.effective_run_strategy() == RunStrategy::Always)
        .filter(|vm| vmi_of(vm).is_some_and(|i| revision_of(i) != Some(current)))
        .collect();
    let down = active.iter().filter(|v| !ready(v)).count();
    let budget = max_unavailable(pool, active.len()).saturating_sub(down);
    p.restart = select(&name, &policy, &outdated)
        .into_iter()
        .take(budget)
        .map(|v| v.name_any())
        .collect();
}

/// Whether the status differs in anything but condition timestamps.
pub fn status_changed(
    old: Option<&VirtualMachinePoolStatus>,
    new: &VirtualMachinePoolStatus,
) -> bool {
    let Some(old) = old else { return true };
    old.replicas != new.replicas
        || old.ready_replicas != new.ready_replicas
        || old.label_selector != new.label_selector
        || old.current_revision != new.current_revision
        || old.updated_replicas != new.updated_replicas
        || !conditions::eq_ignoring_time(old.conditions.as_deref(), new.conditions.as_deref())
}

#[cfg(test)]
mod tests;
