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
    /// VMIs to restart, (name, uid): deleted (only that VMI, by its uid);
    /// their VM, runStrategy Always, starts a new one from the new template.
    pub restart: Vec<(String, String)>,
    /// VMIs whose template did not change: given the current revision label.
    pub relabel: Vec<String>,
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
    format!(
        "{pool}-{}",
        hash(&serde_json::to_vec(template).unwrap_or_default())
    )
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

/// The spec of VM `n`: the template's, with `-<n>` appended to the names
/// `nameGeneration` asks for: configMap volumes, and secret volumes and the
/// cloud-init secret references (user data and network data), as KubeVirt.
fn indexed_spec(pool: &VirtualMachinePool, n: u32) -> ironvirt_crds::VirtualMachineSpec {
    let mut spec = pool.spec.virtual_machine_template.spec.clone();
    let gen_ = pool.spec.name_generation.clone().unwrap_or_default();
    let (cm, secret) = (
        gen_.append_index_to_config_map_refs.unwrap_or(false),
        gen_.append_index_to_secret_refs.unwrap_or(false),
    );
    let suffix = |name: &mut String| name.push_str(&format!("-{n}"));
    if let Some(vmi) = spec.template.spec.as_mut() {
        for v in vmi.volumes.iter_mut().flatten() {
            for (on, source, key) in [
                (cm, v.config_map.as_mut(), "name"),
                (secret, v.secret.as_mut(), "secretName"),
            ] {
                if let (true, Some(Value::Object(o))) = (on, source)
                    && let Some(Value::String(name)) = o.get_mut(key)
                {
                    suffix(name);
                }
            }
            if secret {
                for ci in [
                    v.cloud_init_no_cloud.as_mut(),
                    v.cloud_init_config_drive.as_mut(),
                ]
                .into_iter()
                .flatten()
                {
                    for r in [ci.secret_ref.as_mut(), ci.network_data_secret_ref.as_mut()]
                        .into_iter()
                        .flatten()
                    {
                        suffix(&mut r.name);
                    }
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

/// How many VMs a proactive update may have down at once: maxUnavailable, a
/// count or a percentage of spec.replicas rounded down; KubeVirt's default
/// is 100%. Never less than 1, so a rollout always moves.
fn max_unavailable(pool: &VirtualMachinePool, replicas: usize) -> usize {
    let pct = |pct: usize| replicas * pct / 100;
    match &pool.spec.max_unavailable {
        None => pct(100),
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => pct(s.trim_end_matches('%').trim().parse().unwrap_or(0)),
    }
    .max(1)
}

/// Decides one reconcile of `pool`, given every VM and VMI in its namespace
/// and its ControllerRevisions (name → [`vmi_template_hash`] of the template
/// each holds, when it can be read).
pub fn plan(
    pool: &VirtualMachinePool,
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
    revisions: &BTreeMap<String, Option<String>>,
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
        plan_update(pool, &current, &active, vmis, revisions, &mut p);
    }
    let used: BTreeSet<&str> = active.iter().filter_map(|v| revision_of(*v)).collect();
    p.prune = revisions
        .keys()
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

/// Brings `active` VMs to the current revision by the update strategy (the
/// VMs its labelSelector matches, when it has one): VMs of an older revision
/// are replaced with the current template (keeping their name, owner
/// references and resourceVersion). A proactive update then restarts the
/// VMIs whose VMI template changed, up to maxUnavailable VMs down at once,
/// and only relabels those whose VMI template is the same (as KubeVirt).
fn plan_update(
    pool: &VirtualMachinePool,
    current: &str,
    active: &[&VirtualMachine],
    vmis: &[VirtualMachineInstance],
    revisions: &BTreeMap<String, Option<String>>,
    p: &mut PoolPlan,
) {
    let name = pool.name_any();
    let policy = match pool.spec.update() {
        Update::Unmanaged => return,
        Update::Opportunistic(policy) | Update::Proactive(policy) => policy,
    };
    let proactive = matches!(pool.spec.update(), Update::Proactive(_));
    let selector = policy
        .selectors
        .as_ref()
        .and_then(|s| s.label_selector.as_ref());
    let in_scope: Vec<&VirtualMachine> = active
        .iter()
        .copied()
        .filter(|vm| selector.is_none_or(|s| selector_matches(s, vm.labels())))
        .collect();
    // VMs at the current revision once this reconcile's updates are written.
    let mut current_vms: Vec<&VirtualMachine> = Vec::new();
    for vm in &in_scope {
        if revision_of(*vm) == Some(current) {
            current_vms.push(vm);
            continue;
        }
        // A stranger (no index) keeps its spec: the pool cannot name it.
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
        current_vms.push(vm);
    }
    if !proactive {
        return;
    }
    let vmi_of = |vm: &VirtualMachine| {
        vmis.iter().find(|i| {
            i.name_any() == vm.name_any() && i.labels().get(VM_LABEL) == Some(&vm.name_any())
        })
    };
    let current_hash = vmi_template_hash(&pool.spec.virtual_machine_template);
    // Only VMs that start again by themselves are restarted; the others take
    // the new template at their next start.
    let mut outdated: Vec<&VirtualMachine> = Vec::new();
    for vm in current_vms {
        if vm.spec.effective_run_strategy() != RunStrategy::Always {
            continue;
        }
        let Some(vmi) = vmi_of(vm).filter(|i| i.metadata.deletion_timestamp.is_none()) else {
            continue;
        };
        match revision_of(vmi) {
            Some(r) if r == current => {}
            // The VMI template did not change: a new label, not a restart.
            Some(r)
                if revisions
                    .get(r)
                    .is_some_and(|h| h.as_deref() == Some(&current_hash)) =>
            {
                p.relabel.push(vmi.name_any());
            }
            _ => outdated.push(vm),
        }
    }
    // Down: an Always VM whose VMI is missing, going away, or not Running and
    // Ready (read from the VMIs, not the VM's status, which lags).
    let down = active
        .iter()
        .filter(|vm| vm.spec.effective_run_strategy() == RunStrategy::Always)
        .filter(|vm| {
            !vmi_of(vm).is_some_and(|i| i.metadata.deletion_timestamp.is_none() && vmi_ready(i))
        })
        .count();
    let replicas = usize::try_from(pool.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let budget = max_unavailable(pool, replicas).saturating_sub(down);
    p.restart = select(&name, &policy, &outdated)
        .into_iter()
        .take(budget)
        .filter_map(|vm| {
            let vmi = vmi_of(vm)?;
            Some((vmi.name_any(), vmi.metadata.uid.clone().unwrap_or_default()))
        })
        .collect();
}

/// Whether a VMI is Running with a true Ready condition.
fn vmi_ready(vmi: &VirtualMachineInstance) -> bool {
    let status = vmi.status.as_ref();
    status.and_then(|s| s.phase) == Some(ironvirt_crds::VirtualMachineInstancePhase::Running)
        && conditions::is_true(status.and_then(|s| s.conditions.as_deref()), "Ready")
}

/// A hash of the VMI template inside a pool template: two revisions with
/// the same one differ only in VM-level fields, and their VMIs need no restart.
pub fn vmi_template_hash(template: &VirtualMachineTemplateSpec) -> String {
    hash(&serde_json::to_vec(&template.spec.template).unwrap_or_default())
}

fn hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
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
