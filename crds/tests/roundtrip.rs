//! KubeVirt-shaped manifests survive deserialize → serialize unchanged: no
//! field is lost, renamed or added.
#![allow(clippy::unwrap_used)]

use ironvirt_crds::vm::RunStrategy;
use ironvirt_crds::{
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstancePreset,
    VirtualMachineInstanceReplicaSet,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Parses YAML into `T`, serializes it back and checks nothing changed; then
/// parses the output again and checks the typed values are equal.
fn roundtrip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(yaml: &str) -> T {
    let input: Value = serde_yaml::from_str(yaml).unwrap();
    let typed: T = serde_json::from_value(input.clone()).unwrap();
    let output = serde_json::to_value(&typed).unwrap();
    assert_eq!(input, output, "serialization changed the manifest");
    let again: T = serde_json::from_value(output).unwrap();
    assert_eq!(typed, again);
    typed
}

#[test]
fn kubevirt_vm_with_running_resources_and_quantities() {
    let vm: VirtualMachine = roundtrip(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  labels: {kubevirt.io/vm: testvm}
spec:
  running: true
  template:
    metadata:
      labels: {kubevirt.io/domain: testvm}
    spec:
      domain:
        cpu: {cores: 2, sockets: 1, threads: 1, model: host-model}
        memory: {guest: 128Mi}
        resources: {}
        machine: {type: q35}
        firmware:
          uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223
          serial: e4686d2c-6e8d-4335-b8fd-81bee22f4814
          bootloader: {efi: {secureBoot: false}}
        devices:
          disks:
          - name: containerdisk
            disk: {bus: virtio}
            bootOrder: 1
          - name: cloudinitdisk
            cdrom: {bus: sata, readonly: true}
          - name: scratch
            lun: {bus: scsi}
            serial: D23YZ9W6WA5DJ487
            cache: writethrough
          interfaces:
          - name: default
            masquerade: {}
            model: virtio
            macAddress: "de:ad:00:00:be:af"
            ports: [{name: http, port: 80, protocol: TCP}]
          rng: {}
          autoattachSerialConsole: true
          autoattachGraphicsDevice: false
          autoattachPodInterface: true
      networks:
      - name: default
        pod: {vmNetworkCIDR: 10.0.2.0/24}
      nodeSelector: {kubernetes.io/hostname: node-1}
      tolerations:
      - {key: dedicated, operator: Equal, value: vms, effect: NoSchedule}
      terminationGracePeriodSeconds: 0
      evictionStrategy: LiveMigrate
      startStrategy: Paused
      hostname: myvm
      subdomain: mysub
      volumes:
      - name: containerdisk
        containerDisk: {image: quay.io/kubevirt/cirros-container-disk-demo, imagePullPolicy: IfNotPresent, path: /disk/cirros.img}
      - name: cloudinitdisk
        cloudInitNoCloud: {userDataBase64: SGkuXG4=, networkData: "version: 2"}
      - name: scratch
        emptyDisk: {capacity: 2Gi}
      - name: host
        hostDisk: {path: /data/disk.img, type: DiskOrCreate, capacity: 1Gi, shared: false}
"#,
    );
    assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Always);
    let domain = &vm.spec.template.spec.as_ref().unwrap().domain;
    assert_eq!(
        domain.memory.as_ref().unwrap().guest.as_ref().unwrap().0,
        "128Mi"
    );
    assert_eq!(domain.resources, Some(Default::default()));
}

#[test]
fn decimal_memory_and_numeric_quantities() {
    let vmi: VirtualMachineInstance = roundtrip(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: v}
spec:
  domain:
    memory: {guest: 1024M}
    resources:
      requests: {memory: 1024M, cpu: "500m"}
      limits: {memory: 2Gi}
    devices: {}
"#,
    );
    assert_eq!(vmi.spec.domain.memory.unwrap().guest.unwrap().0, "1024M");
}

#[test]
fn vm_status_and_run_strategies() {
    for (strategy, expected) in [
        ("Always", RunStrategy::Always),
        ("RerunOnFailure", RunStrategy::RerunOnFailure),
        ("Once", RunStrategy::Once),
        ("Manual", RunStrategy::Manual),
        ("Halted", RunStrategy::Halted),
    ] {
        let vm: VirtualMachine = roundtrip(&format!(
            r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {{name: v}}
spec:
  runStrategy: {strategy}
  template: {{spec: {{domain: {{devices: {{}}}}}}}}
status:
  created: true
  ready: false
  printableStatus: Starting
  runStrategy: {strategy}
  observedGeneration: 2
  desiredGeneration: 2
  stateChangeRequests: [{{action: Stop, uid: "1234"}}, {{action: Start}}]
  startFailure: {{consecutiveFailCount: 3, lastFailedVMIUID: abc, retryAfterTimestamp: "2026-01-01T00:00:00Z"}}
  conditions:
  - {{type: Ready, status: "False", reason: VMINotExists, message: "VMI does not exist", lastTransitionTime: "2026-01-01T00:00:00Z"}}
"#
        ));
        assert_eq!(vm.spec.effective_run_strategy(), expected);
    }
}

#[test]
fn running_false_means_halted() {
    let vm: VirtualMachine = roundtrip(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: v}\nspec:\n  running: false\n  template: {spec: {domain: {}}}\n",
    );
    assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Halted);
}

#[test]
fn vmi_status() {
    let _: VirtualMachineInstance = roundtrip(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: v}
spec: {domain: {}}
status:
  phase: Running
  nodeName: node-1
  reason: ""
  interfaces: [{name: default, ipAddress: 10.0.2.2, ipAddresses: [10.0.2.2], mac: "52:54:00:00:00:01", interfaceName: eth0, infoSource: domain}]
  phaseTransitionTimestamps: [{phase: Pending, phaseTransitionTimestamp: "2026-01-01T00:00:00Z"}]
  guestOSInfo: {name: Debian, id: debian, version: "12", kernelRelease: 6.1.0}
  conditions: [{type: Ready, status: "True"}, {type: Paused, status: "False"}]
"#,
    );
}

#[test]
fn replicaset_and_preset() {
    let rs: VirtualMachineInstanceReplicaSet = roundtrip(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstanceReplicaSet
metadata: {name: rs}
spec:
  replicas: 3
  paused: false
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec: {domain: {devices: {}}}
status: {replicas: 3, readyReplicas: 2, labelSelector: app=x}
"#,
    );
    assert_eq!(rs.spec.replicas, Some(3));
    let _: VirtualMachineInstancePreset = roundtrip(
        r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstancePreset
metadata: {name: p}
spec:
  selector: {matchLabels: {kubevirt.io/size: small}}
  domain: {cpu: {cores: 1}, memory: {guest: 64Mi}}
"#,
    );
}

#[test]
fn replicas_default_to_one() {
    let rs: VirtualMachineInstanceReplicaSet = serde_yaml::from_str(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceReplicaSet\nmetadata: {name: rs}\nspec:\n  selector: {}\n  template: {}\n",
    )
    .unwrap();
    assert_eq!(rs.spec.replicas, Some(1));
}

#[test]
fn every_example_roundtrips() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let kind = serde_yaml::from_str::<Value>(&text).unwrap()["kind"]
            .as_str()
            .unwrap()
            .to_owned();
        match kind.as_str() {
            "VirtualMachine" => drop(roundtrip::<VirtualMachine>(&text)),
            "VirtualMachineInstance" => drop(roundtrip::<VirtualMachineInstance>(&text)),
            "VirtualMachineInstanceReplicaSet" => {
                drop(roundtrip::<VirtualMachineInstanceReplicaSet>(&text))
            }
            "VirtualMachineInstancePreset" => {
                drop(roundtrip::<VirtualMachineInstancePreset>(&text))
            }
            "VirtualMachinePool" => {
                drop(roundtrip::<ironvirt_crds::pool::VirtualMachinePool>(&text))
            }
            other => panic!("{}: unexpected kind {other}", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 6, "expected the six examples, found {seen}");
}
