#![allow(clippy::unwrap_used)]

use super::*;
use crate::instancetype::Matcher;

fn it(yaml: &str) -> VirtualMachineInstancetypeSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn pref(yaml: &str) -> VirtualMachinePreferenceSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn spec(yaml: &str) -> VirtualMachineInstanceSpec {
    serde_yaml::from_str(yaml).unwrap()
}

fn matcher(name: &str, kind: &str) -> Matcher {
    Matcher {
        name: name.into(),
        kind: kind.into(),
        ..Default::default()
    }
}

const TEMPLATE: &str = "domain:\n  devices:\n    disks: [{name: root, disk: {}}, {name: cd, cdrom: {}}]\n    interfaces: [{name: default, masquerade: {}}]\nnetworks: [{name: default, pod: {}}]\nvolumes: [{name: root, containerDisk: {image: x}}, {name: cd, containerDisk: {image: y}}]\n";

#[test]
fn the_instancetype_gives_vcpus_memory_and_the_preferred_topology() {
    let small = it("cpu: {guest: 4}\nmemory: {guest: 2Gi}\n");
    for (topology, want) in [
        ("sockets", (4, 1, 1)),
        ("any", (4, 1, 1)),
        ("preferSockets", (4, 1, 1)),
        ("cores", (1, 4, 1)),
        ("threads", (1, 1, 4)),
        ("spread", (2, 2, 1)),
    ] {
        let p = pref(&format!("cpu: {{preferredCPUTopology: {topology}}}\n"));
        let mut s = spec(TEMPLATE);
        let mut ann = BTreeMap::new();
        let (im, pm) = (
            matcher("u1.small", ""),
            matcher("linux", "VirtualMachinePreference"),
        );
        let r = Resolved {
            instancetype: Some((&im, &small)),
            preference: Some((&pm, &p)),
        };
        apply(&mut s, &mut ann, &r, "spec").unwrap();
        let cpu = s.domain.cpu.as_ref().unwrap();
        assert_eq!(
            (
                cpu.sockets.unwrap(),
                cpu.cores.unwrap(),
                cpu.threads.unwrap()
            ),
            want,
            "{topology}"
        );
        assert_eq!(
            s.domain.memory.as_ref().unwrap().guest.as_ref().unwrap().0,
            "2Gi"
        );
        assert_eq!(ann[CLUSTER_INSTANCETYPE_ANNOTATION], "u1.small");
        assert_eq!(ann[PREFERENCE_ANNOTATION], "linux");
    }
    // Without a preference: sockets.
    assert_eq!(topology(4, None).unwrap(), (4, 1, 1));
    // Spread across cores and threads, and sockets, cores and threads.
    let p = pref("cpu: {preferredCPUTopology: spread, spreadOptions: {across: CoresThreads}}\n");
    assert_eq!(topology(4, Some(&p)).unwrap(), (1, 2, 2));
    let p = pref(
        "cpu: {preferredCPUTopology: spread, spreadOptions: {across: SocketsCoresThreads, ratio: 2}}\n",
    );
    assert_eq!(topology(8, Some(&p)).unwrap(), (2, 2, 2));
    let p = pref("cpu: {preferredCPUTopology: spread, spreadOptions: {ratio: 4}}\n");
    assert!(topology(6, Some(&p)).unwrap_err().contains("not divisible"));
    // A ratio of 0 is unset (2), as in KubeVirt, wherever it is given.
    let p = pref("cpu: {preferredCPUTopology: spread, spreadOptions: {ratio: 0}}\n");
    assert_eq!(topology(4, Some(&p)).unwrap(), (2, 2, 1));
    let p = pref("cpu: {preferredCPUTopology: spread}\npreferSpreadSocketToCoreRatio: 0\n");
    assert_eq!(topology(4, Some(&p)).unwrap(), (2, 2, 1));
}

#[test]
fn overcommit_lowers_the_memory_request_and_annotations_join() {
    let o1 = it(
        "cpu: {guest: 1}\nmemory: {guest: 1Gi, overcommitPercent: 50}\nannotations: {team: a}\n",
    );
    let mut s = spec(TEMPLATE);
    let mut ann = BTreeMap::new();
    let m = matcher("o1", "VirtualMachineInstancetype");
    apply(
        &mut s,
        &mut ann,
        &Resolved {
            instancetype: Some((&m, &o1)),
            preference: None,
        },
        "spec",
    )
    .unwrap();
    let req = s
        .domain
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(req["memory"].0, (512 * 1024 * 1024).to_string());
    assert_eq!(ann["team"], "a");
    assert_eq!(ann[INSTANCETYPE_ANNOTATION], "o1");
}

#[test]
fn template_fields_the_instancetype_owns_are_conflicts_with_their_paths() {
    let small = it("cpu: {guest: 1, model: Westmere}\nmemory: {guest: 2Gi}\n");
    let mut s = spec(
        "domain:\n  cpu: {sockets: 2, model: host-model}\n  memory: {guest: 1Gi}\n  resources: {requests: {memory: 1Gi}}\n",
    );
    let m = matcher("u1.small", "");
    let errs = apply(
        &mut s,
        &mut BTreeMap::from([("team".to_owned(), "b".to_owned())]),
        &Resolved {
            instancetype: Some((&m, &small)),
            preference: None,
        },
        "spec.template.spec",
    )
    .unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.template.spec.domain.cpu.sockets",
            "spec.template.spec.domain.resources.requests.memory",
            "spec.template.spec.domain.memory.guest",
            "spec.template.spec.domain.cpu.model",
        ]
    );
    assert_eq!(
        errs[0].message,
        "VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type"
    );
}

#[test]
fn the_preference_fills_only_what_the_template_leaves_unset() {
    let p = pref(
        "devices: {preferredDiskBus: sata, preferredCdromBus: scsi, preferredInterfaceModel: e1000e, preferredRng: {}, preferredAutoattachGraphicsDevice: false}\n\
         firmware: {preferredUseEfi: true, preferredUseSecureBoot: false}\n\
         machine: {preferredMachineType: pc}\n\
         features: {preferredAcpi: {}}\n\
         clock: {preferredClockOffset: {utc: {}}}\n\
         preferredTerminationGracePeriodSeconds: 30\n\
         annotations: {a: from-pref, b: from-pref}\n",
    );
    let mut s = spec(
        "domain:\n  machine: {type: q35}\n  devices:\n    disks: [{name: root, disk: {bus: virtio}}, {name: data, disk: {}}, {name: cd, cdrom: {}}]\n    interfaces: [{name: default, masquerade: {}}]\n",
    );
    let mut ann = BTreeMap::from([("a".to_owned(), "from-vm".to_owned())]);
    let m = matcher("p", "");
    apply(
        &mut s,
        &mut ann,
        &Resolved {
            instancetype: None,
            preference: Some((&m, &p)),
        },
        "spec",
    )
    .unwrap();
    let v = serde_json::to_value(&s).unwrap();
    let disks = &v["domain"]["devices"]["disks"];
    assert_eq!(disks[0]["disk"]["bus"], "virtio", "the VM's own bus stays");
    assert_eq!(disks[1]["disk"]["bus"], "sata");
    assert_eq!(disks[2]["cdrom"]["bus"], "scsi");
    assert_eq!(v["domain"]["devices"]["interfaces"][0]["model"], "e1000e");
    assert_eq!(v["domain"]["devices"]["rng"], serde_json::json!({}));
    assert_eq!(v["domain"]["devices"]["autoattachGraphicsDevice"], false);
    assert_eq!(
        v["domain"]["machine"]["type"], "q35",
        "the VM's machine type stays"
    );
    assert_eq!(
        v["domain"]["firmware"]["bootloader"]["efi"]["secureBoot"],
        false
    );
    assert!(v["domain"]["features"]["acpi"].is_object());
    assert!(v["domain"]["clock"]["utc"].is_object());
    assert_eq!(v["terminationGracePeriodSeconds"], 30);
    assert_eq!(ann["a"], "from-vm");
    assert_eq!(ann["b"], "from-pref");
    assert_eq!(ann[CLUSTER_PREFERENCE_ANNOTATION], "p");
}

#[test]
fn preference_requirements_are_checked_against_the_instancetype() {
    let p = pref("requirements: {cpu: {guest: 2}, memory: {guest: 4Gi}}\n");
    let small = it("cpu: {guest: 1}\nmemory: {guest: 2Gi}\n");
    let (im, pm) = (matcher("u1.small", ""), matcher("big", ""));
    let errs = apply(
        &mut spec(TEMPLATE),
        &mut BTreeMap::new(),
        &Resolved {
            instancetype: Some((&im, &small)),
            preference: Some((&pm, &p)),
        },
        "spec",
    )
    .unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0]
            .message
            .contains("insufficient CPU resources of 1 vCPU provided by instance type, preference requires 2 vCPU"),
        "{}",
        errs[0].message
    );
    assert!(
        errs[1]
            .message
            .contains("insufficient Memory resources of 2Gi provided by instance type, preference requires 4Gi"),
        "{}",
        errs[1].message
    );
}

fn vm(yaml: &str) -> VirtualMachine {
    serde_yaml::from_str(yaml).unwrap()
}

const VM: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: v, namespace: ns}\nspec:\n  runStrategy: Halted\n  instancetype: {name: u1.small, revisionName: v-u1.small-1}\n  preference: {name: p, kind: VirtualMachinePreference}\n  template:\n    metadata:\n      labels: {app: v}\n      annotations: {mine: kept}\n    spec:\n      domain:\n        devices:\n          disks: [{name: root}]\n      volumes: [{name: root, containerDisk: {image: x}}]\n";

#[test]
fn an_expanded_vm_has_the_instancetype_in_its_template_and_no_matchers() {
    let small = it("cpu: {guest: 2}\nmemory: {guest: 2Gi}\nannotations: {from-it: 'yes'}\n");
    let p = pref("cpu: {preferredCPUTopology: cores}\ndevices: {preferredDiskBus: virtio}\n");
    let out = expand_vm(vm(VM), Some(&small), Some(&p)).unwrap();
    assert_eq!(out.spec.instancetype, None);
    assert_eq!(out.spec.preference, None);
    let s = out.spec.template.spec.as_ref().unwrap();
    let cpu = s.domain.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.sockets, cpu.cores, cpu.threads),
        (Some(1), Some(2), Some(1))
    );
    let guest = s.domain.memory.as_ref().unwrap().guest.as_ref().unwrap();
    assert_eq!(guest.0, "2Gi");
    let disk = &s.domain.devices.as_ref().unwrap().disks.as_ref().unwrap()[0];
    assert_eq!(
        serde_json::to_value(disk).unwrap()["disk"]["bus"],
        serde_json::json!("virtio")
    );
    // The template keeps its own metadata, gains the instancetype's
    // annotations, and not the names the VM controller puts on VMIs.
    let meta = out.spec.template.metadata.as_ref().unwrap();
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations.len(), 2, "{annotations:?}");
    assert_eq!(annotations["mine"], "kept");
    assert_eq!(annotations["from-it"], "yes");
    assert_eq!(meta.labels.as_ref().unwrap()["app"], "v");
    // The rest of the VM is as it was.
    assert_eq!(out.metadata.name.as_deref(), Some("v"));
    assert_eq!(out.spec.run_strategy, Some(crate::RunStrategy::Halted));
}

#[test]
fn a_vm_without_matchers_comes_back_unchanged() {
    let plain = vm(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: v}\nspec:\n  template:\n    spec:\n      domain: {cpu: {cores: 3}}\n",
    );
    assert_eq!(expand_vm(plain.clone(), None, None).unwrap(), plain);
    // Neither does a template without metadata gain an empty one.
    let mut with_it = plain.clone();
    with_it.spec.template.spec.as_mut().unwrap().domain.cpu = None;
    with_it.spec.instancetype = Some(Box::new(matcher("u1.small", "")));
    let out = expand_vm(
        with_it,
        Some(&it("cpu: {guest: 1}\nmemory: {guest: 1Gi}\n")),
        None,
    )
    .unwrap();
    assert_eq!(out.spec.template.metadata, None);
}

#[test]
fn conflicts_name_the_vms_fields() {
    let mut v = vm(VM);
    v.spec.preference = None;
    let s = v.spec.template.spec.as_mut().unwrap();
    s.domain.cpu = Some(Cpu {
        sockets: Some(2),
        ..Default::default()
    });
    v.spec
        .template
        .metadata
        .as_mut()
        .unwrap()
        .annotations
        .as_mut()
        .unwrap()
        .insert("from-it".into(), "no".into());
    let small = it("cpu: {guest: 2}\nmemory: {guest: 2Gi}\nannotations: {from-it: 'yes'}\n");
    let errs = expand_vm(v, Some(&small), None).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.template.spec.domain.cpu.sockets",
            "spec.template.metadata.annotations.from-it"
        ]
    );
    assert_eq!(
        errs[0].message,
        "VM field(s) spec.template.spec.domain.cpu.sockets conflicts with selected instance type"
    );
}
