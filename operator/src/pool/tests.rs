use super::*;
use kube::Resource;
use std::collections::BTreeMap;

fn pool(extra: &str) -> VirtualMachinePool {
    serde_yaml::from_str(&format!(
        "apiVersion: pool.kubevirt.io/v1beta1
kind: VirtualMachinePool
metadata: {{name: p, namespace: ns, uid: pool-uid, generation: 2}}
spec:
  selector: {{matchLabels: {{app: x}}}}
  virtualMachineTemplate:
    metadata: {{labels: {{app: x}}}}
    spec:
      runStrategy: Always
      template: {{spec: {{domain: {{memory: {{guest: 64Mi}}}}}}}}
{extra}"
    ))
    .unwrap()
}

fn with_replicas(n: i32, extra: &str) -> VirtualMachinePool {
    pool(&format!("  replicas: {n}\n{extra}"))
}

/// A VM of the pool at `revision`, created at second `created`, ready or not.
fn vm(name: &str, revision: &str, created: i64, ready: bool) -> VirtualMachine {
    serde_yaml::from_str(&format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: ns
  resourceVersion: '5'
  creationTimestamp: '{}'
  labels: {{app: x, {REVISION_LABEL}: {revision}}}
  ownerReferences: [{{apiVersion: pool.kubevirt.io/v1beta1, kind: VirtualMachinePool, name: p, uid: pool-uid, controller: true}}]
spec:
  runStrategy: Always
  template: {{spec: {{domain: {{memory: {{guest: 64Mi}}}}}}}}
status: {{ready: {ready}}}
",
        Timestamp::from_second(created).unwrap()
    ))
    .unwrap()
}

/// A Running, Ready VMI of VM `name` made from `revision`.
fn vmi(name: &str, revision: &str) -> VirtualMachineInstance {
    serde_yaml::from_str(&format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}, namespace: ns, uid: {name}-uid, labels: {{{VM_LABEL}: {name}, {REVISION_LABEL}: {revision}}}}}
spec: {{domain: {{}}}}
status: {{phase: Running, conditions: [{{type: Ready, status: 'True'}}]}}
"
    ))
    .unwrap()
}

/// The revisions map: name → the VMI template hash it holds (None: unread).
fn revs(entries: &[(&str, Option<String>)]) -> BTreeMap<String, Option<String>> {
    entries
        .iter()
        .map(|(n, h)| ((*n).to_owned(), h.clone()))
        .collect()
}

fn none() -> BTreeMap<String, Option<String>> {
    BTreeMap::new()
}

fn restarted(plan: &PoolPlan) -> Vec<&str> {
    plan.restart.iter().map(|(n, _)| n.as_str()).collect()
}

fn now() -> Timestamp {
    Timestamp::from_second(1000).unwrap()
}

fn names(vms: &[VirtualMachine]) -> Vec<String> {
    vms.iter().map(|v| v.name_any()).collect()
}

fn current(p: &VirtualMachinePool) -> String {
    revision_name("p", &p.spec.virtual_machine_template)
}

#[test]
fn scales_up_with_indexed_names_labels_and_owner() {
    let p = with_replicas(3, "");
    let plan = plan(&p, &[], &[], &none(), now());
    assert_eq!(names(&plan.create), ["p-0", "p-1", "p-2"]);
    let v = &plan.create[0];
    let rev = current(&p);
    assert_eq!(v.labels()["app"], "x");
    assert_eq!(v.labels()[REVISION_LABEL], rev);
    let vmi_labels = v
        .spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert_eq!(
        vmi_labels[REVISION_LABEL], rev,
        "VMIs carry the revision too"
    );
    let owner = &v.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("VirtualMachinePool", "pool-uid")
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(plan.status.replicas, Some(0));
    assert_eq!(plan.status.label_selector.as_deref(), Some("app=x"));
    assert_eq!(plan.status.current_revision.as_deref(), Some(rev.as_str()));
    assert_eq!(plan.revision.metadata.name.as_deref(), Some(rev.as_str()));
    assert_eq!(
        plan.revision.metadata.owner_references.as_ref().unwrap()[0].uid,
        "pool-uid"
    );
}

#[test]
fn new_vms_take_the_lowest_free_indexes() {
    let p = with_replicas(4, "");
    let rev = current(&p);
    let mut stranger = vm("p-1", &rev, 1, true);
    stranger.metadata.owner_references = None;
    stranger.metadata.labels = None; // not ours, not matching: its name is still taken
    let vms = [vm("p-0", &rev, 1, true), stranger, vm("p-3", &rev, 1, true)];
    let plan = plan(&p, &vms, &[], &none(), now());
    assert_eq!(names(&plan.create), ["p-2", "p-4"]);
}

#[test]
fn scale_in_removes_the_highest_indexes_by_default() {
    let p = with_replicas(1, "");
    let rev = current(&p);
    let vms = [
        vm("p-0", &rev, 3, true),
        vm("p-1", &rev, 1, true),
        vm("p-2", &rev, 2, true),
    ];
    let plan = plan(&p, &vms, &[], &none(), now());
    assert_eq!(plan.delete, ["p-2", "p-1"]);
    assert_eq!(plan.status.replicas, Some(1));
}

#[test]
fn scale_in_sort_policies_and_label_selector() {
    let policy = |sort: &str, sel: &str| {
        with_replicas(
            1,
            &format!(
                "  scaleInStrategy: {{proactive: {{selectionPolicy: {{sortPolicy: {sort}{sel}}}}}}}\n"
            ),
        )
    };
    let rev = current(&policy("Newest", ""));
    let mut vms = vec![
        vm("p-0", &rev, 3, true),
        vm("p-1", &rev, 1, true),
        vm("p-2", &rev, 2, true),
    ];
    assert_eq!(
        plan(&policy("Newest", ""), &vms, &[], &none(), now()).delete,
        ["p-0", "p-2"]
    );
    assert_eq!(
        plan(&policy("Oldest", ""), &vms, &[], &none(), now()).delete,
        ["p-1", "p-2"]
    );
    assert_eq!(
        plan(&policy("AscendingOrder", ""), &vms, &[], &none(), now()).delete,
        ["p-0", "p-1"]
    );
    assert_eq!(
        plan(&policy("DescendingOrder", ""), &vms, &[], &none(), now()).delete,
        ["p-2", "p-1"]
    );
    let random = plan(&policy("Random", ""), &vms, &[], &none(), now()).delete;
    assert_eq!(random.len(), 2);
    assert_eq!(
        random,
        plan(&policy("Random", ""), &vms, &[], &none(), now()).delete,
        "stable"
    );
    // VMs the labelSelector matches go first, whatever the order.
    vms[0]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("drain".into(), "yes".into());
    let sel = ", selectors: {labelSelector: {matchLabels: {drain: 'yes'}}}";
    assert_eq!(
        plan(&policy("DescendingOrder", sel), &vms, &[], &none(), now()).delete,
        ["p-0", "p-2"]
    );
}

#[test]
fn opportunistic_and_unmanaged_scale_in_delete_nothing() {
    for s in ["opportunistic: {}", "unmanaged: {}"] {
        let p = with_replicas(1, &format!("  scaleInStrategy: {{{s}}}\n"));
        let rev = current(&p);
        let vms = [vm("p-0", &rev, 1, true), vm("p-1", &rev, 1, true)];
        let plan = plan(&p, &vms, &[], &none(), now());
        assert!(plan.delete.is_empty() && plan.create.is_empty(), "{s}");
        assert_eq!(plan.status.replicas, Some(2));
    }
}

#[test]
fn a_template_change_updates_every_vm_and_restarts_max_unavailable_at_a_time() {
    let p = with_replicas(3, "");
    let rev = current(&p);
    let vms = [
        vm("p-0", "p-old", 1, true),
        vm("p-1", "p-old", 1, true),
        vm("p-2", &rev, 1, true),
    ];
    let vmis = [vmi("p-0", "p-old"), vmi("p-1", "p-old"), vmi("p-2", &rev)];
    let plan = plan(
        &p,
        &vms,
        &vmis,
        &revs(&[("p-old", None), (&rev, None)]),
        now(),
    );
    assert_eq!(names(&plan.update), ["p-0", "p-1"]);
    let u = &plan.update[0];
    assert_eq!(u.labels()[REVISION_LABEL], rev);
    assert_eq!(
        u.resource_version().as_deref(),
        Some("5"),
        "guarded by the version read"
    );
    assert_eq!(u.owner_references()[0].uid, "pool-uid");
    assert!(u.status.is_none());
    // Default maxUnavailable 100%: both, highest index first, by uid.
    assert_eq!(restarted(&plan), ["p-1", "p-0"]);
    assert_eq!(plan.restart[0].1, "p-1-uid");
    assert_eq!(plan.status.updated_replicas, Some(3));
    assert!(plan.prune.is_empty(), "p-old is still in use");

    // A VM already down (its VMI not Ready, whatever the VM's status says)
    // uses the budget of 1 up.
    let p = with_replicas(3, "  maxUnavailable: 1\n");
    let rev = current(&p);
    let vms = [
        vm("p-0", "p-old", 1, true),
        vm("p-1", "p-old", 1, true),
        vm("p-2", &rev, 1, true),
    ];
    let mut down = [vmi("p-0", "p-old"), vmi("p-1", "p-old"), vmi("p-2", &rev)];
    down[2].status.as_mut().unwrap().conditions = None;
    assert!(
        super::plan(&p, &vms, &down, &none(), now())
            .restart
            .is_empty()
    );
    // So does one whose VMI is being deleted.
    let mut going = [vmi("p-0", "p-old"), vmi("p-1", "p-old"), vmi("p-2", &rev)];
    going[1].metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let plan = super::plan(&p, &vms, &going, &none(), now());
    assert!(restarted(&plan).is_empty(), "{:?}", plan.restart);
    let plan = super::plan(
        &p,
        &vms,
        &[vmi("p-0", "p-old"), vmi("p-1", "p-old"), vmi("p-2", &rev)],
        &none(),
        now(),
    );
    assert_eq!(restarted(&plan), ["p-1"]);

    // maxUnavailable as a percentage of replicas, rounded down (at least 1).
    let p = with_replicas(3, "  maxUnavailable: 50%\n");
    let rev = current(&p);
    let vms = [
        vm("p-0", "p-old", 1, true),
        vm("p-1", "p-old", 1, true),
        vm("p-2", "p-old", 1, true),
    ];
    let vmis = [vmi("p-0", "p-old"), vmi("p-1", "p-old"), vmi("p-2", &rev)];
    let plan = super::plan(&p, &vms, &vmis, &none(), now());
    assert_eq!(restarted(&plan), ["p-1"], "p-2's VMI is already current");
}

#[test]
fn a_change_outside_the_vmi_template_relabels_and_restarts_nothing() {
    let old = with_replicas(2, "");
    let mut p = old.clone();
    p.spec
        .virtual_machine_template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert("team".into(), "a".into());
    let (old_rev, rev) = (current(&old), current(&p));
    assert_ne!(old_rev, rev);
    let same = vmi_template_hash(&p.spec.virtual_machine_template);
    assert_eq!(same, vmi_template_hash(&old.spec.virtual_machine_template));
    let vms = [vm("p-0", &old_rev, 1, true), vm("p-1", &old_rev, 1, true)];
    let vmis = [vmi("p-0", &old_rev), vmi("p-1", &old_rev)];
    let plan = plan(&p, &vms, &vmis, &revs(&[(&old_rev, Some(same))]), now());
    assert_eq!(names(&plan.update), ["p-0", "p-1"]);
    assert!(plan.restart.is_empty(), "{:?}", plan.restart);
    assert_eq!(plan.relabel, ["p-0", "p-1"]);
    // An old revision that cannot be read: restart, to be safe.
    let plan = super::plan(&p, &vms, &vmis, &revs(&[(&old_rev, None)]), now());
    assert_eq!(restarted(&plan), ["p-1", "p-0"]);
}

#[test]
fn an_adopted_vm_without_an_index_is_neither_updated_nor_restarted() {
    let p = with_replicas(1, "");
    let vms = [vm("stranger", "p-old", 1, true)];
    let vmis = [vmi("stranger", "p-old")];
    let plan = plan(&p, &vms, &vmis, &none(), now());
    assert!(
        plan.update.is_empty() && plan.restart.is_empty(),
        "{plan:?}"
    );
}

#[test]
fn the_update_selector_limits_which_vms_are_updated() {
    let p = with_replicas(
        2,
        "  updateStrategy: {proactive: {selectionPolicy: {selectors: {labelSelector: {matchLabels: {canary: 'yes'}}}}}}\n",
    );
    let mut vms = [vm("p-0", "p-old", 1, true), vm("p-1", "p-old", 1, true)];
    vms[1]
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("canary".into(), "yes".into());
    let vmis = [vmi("p-0", "p-old"), vmi("p-1", "p-old")];
    let plan = plan(&p, &vms, &vmis, &none(), now());
    assert_eq!(names(&plan.update), ["p-1"]);
    assert_eq!(restarted(&plan), ["p-1"]);
}

#[test]
fn opportunistic_updates_do_not_restart_and_unmanaged_ones_do_nothing() {
    let vms = [vm("p-0", "p-old", 1, true)];
    let vmis = [vmi("p-0", "p-old")];
    let p = with_replicas(1, "  updateStrategy: {opportunistic: {}}\n");
    let plan = plan(&p, &vms, &vmis, &none(), now());
    assert_eq!(names(&plan.update), ["p-0"]);
    assert!(plan.restart.is_empty());
    let p = with_replicas(1, "  updateStrategy: {unmanaged: {}}\n");
    let plan = super::plan(&p, &vms, &vmis, &revs(&[("p-old", None)]), now());
    assert!(plan.update.is_empty() && plan.restart.is_empty());
    assert!(plan.prune.is_empty());
}

#[test]
fn paused_does_nothing_and_says_so() {
    let p = with_replicas(3, "  paused: true\n");
    let vms = [vm("p-0", "p-old", 1, true)];
    let plan = plan(&p, &vms, &[vmi("p-0", "p-old")], &none(), now());
    assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.update.is_empty());
    assert!(conditions::is_true(
        plan.status.conditions.as_deref(),
        "ReplicaPaused"
    ));
}

#[test]
fn name_generation_suffixes_config_map_and_secret_volumes() {
    let p: VirtualMachinePool = serde_yaml::from_str(
        "apiVersion: pool.kubevirt.io/v1beta1
kind: VirtualMachinePool
metadata: {name: p, namespace: ns, uid: u}
spec:
  selector: {matchLabels: {app: x}}
  nameGeneration: {appendIndexToSecretRefs: true}
  virtualMachineTemplate:
    metadata: {labels: {app: x}}
    spec:
      template:
        spec:
          domain: {}
          volumes:
          - {name: s, secret: {secretName: creds}}
          - {name: c, configMap: {name: settings}}
          - {name: ci, cloudInitNoCloud: {secretRef: {name: userdata}, networkDataSecretRef: {name: net}}}
",
    )
    .unwrap();
    let v = vm_for(&p, 7, "r");
    let vols = v
        .spec
        .template
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .as_ref()
        .unwrap();
    assert_eq!(vols[0].secret.as_ref().unwrap()["secretName"], "creds-7");
    assert_eq!(
        vols[1].config_map.as_ref().unwrap()["name"],
        "settings",
        "not asked for"
    );
    let ci = vols[2].cloud_init_no_cloud.as_ref().unwrap();
    assert_eq!(ci.secret_ref.as_ref().unwrap().name, "userdata-7");
    assert_eq!(ci.network_data_secret_ref.as_ref().unwrap().name, "net-7");
}

#[test]
fn revisions_follow_the_template_and_unused_ones_are_pruned() {
    let a = with_replicas(1, "");
    let mut b = a.clone();
    b.spec.virtual_machine_template.spec.run_strategy = Some(RunStrategy::Halted);
    assert_ne!(current(&a), current(&b));
    assert_eq!(current(&a), current(&a.clone()));
    assert!(current(&a).starts_with("p-"));
    let rev = current(&a);
    let plan = plan(
        &a,
        &[vm("p-0", &rev, 1, true)],
        &[],
        &revs(&[("p-gone", None), (&rev, None)]),
        now(),
    );
    assert_eq!(plan.prune, ["p-gone"]);
    assert_eq!(index_of("p", "p-12"), Some(12));
    assert_eq!(index_of("p", "px-1"), None);
    assert_eq!(index_of("p", "p-x"), None);
    assert_eq!(VirtualMachinePool::kind(&()), "VirtualMachinePool");
}

#[test]
fn status_changes_ignore_condition_timestamps() {
    let p = with_replicas(0, "  paused: true\n");
    let first = plan(&p, &[], &[], &none(), now()).status;
    let mut p2 = p.clone();
    p2.status = Some(first.clone());
    let later = plan(
        &p2,
        &[],
        &[],
        &none(),
        Timestamp::from_second(2000).unwrap(),
    )
    .status;
    assert!(!status_changed(Some(&first), &later));
    assert!(status_changed(None, &later));
}
