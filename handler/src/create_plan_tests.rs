//! Unit tests of [`super`]: the create plan from inline VMI manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::domxml::{DomainType, ImageFormat};
use crate::volumes::VolumePlan;

const STATE: &str = "/var/lib/ironvirt/handler";
const UID: &str = "4b1c5a7e-0000-4000-8000-000000000001";

fn vmi(spec: &str) -> VirtualMachineInstance {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: v, namespace: ns, uid: {UID}}}\nspec:\n{spec}"
    );
    serde_yaml::from_str(&yaml).unwrap()
}

fn dir() -> PathBuf {
    Path::new(STATE).join("vmis").join(UID)
}

fn host() -> HostEnv {
    HostEnv {
        domain_type: DomainType::Qemu,
        ovmf: None,
        default_machine: "q35".into(),
    }
}

fn secret(name: &str, key: &str, value: &[u8]) -> SecretData {
    let mut data = BTreeMap::new();
    data.insert(key.to_owned(), value.to_vec());
    let mut s = SecretData::new();
    s.insert(name.to_owned(), data);
    s
}

const FORWARDING: &str = "  domain:
    memory: {guest: 64Mi}
    devices:
      interfaces:
      - name: default
        masquerade: {}
        ports: [{port: 22}, {port: 53, protocol: UDP}]
  networks: [{name: default, pod: {}}]
";

#[test]
fn a_plain_vmi_plans_its_dir_nvram_and_nothing_else() {
    let p = plan(
        &vmi("  domain: {memory: {guest: 64Mi}}\n"),
        Path::new(STATE),
        &SecretData::new(),
    )
    .unwrap();
    assert_eq!(p.dir, dir());
    assert_eq!(p.nvram, dir().join("nvram.fd"));
    assert!(p.volumes.is_empty());
    assert!(p.forwards.is_empty());
}

#[test]
fn volumes_are_planned_in_the_vmi_dir() {
    let v = vmi(
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: scratch\n    emptyDisk: {capacity: 1Gi}\n",
    );
    let p = plan(&v, Path::new(STATE), &SecretData::new()).unwrap();
    assert_eq!(
        p.volumes.get("scratch"),
        Some(&VolumePlan::EmptyDisk {
            path: dir().join("scratch.qcow2"),
            bytes: 1 << 30
        })
    );
}

#[test]
fn a_missing_secret_refuses_the_vmi() {
    let v = vmi(
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: ci\n    cloudInitNoCloud: {secretRef: {name: gone}}\n",
    );
    assert_eq!(
        plan(&v, Path::new(STATE), &SecretData::new()),
        Err(NotCreated::Refused(Refusal {
            reason: Reason::SecretNotFound,
            message: "cloud-init Secret ns/gone does not exist".into()
        }))
    );
    let p = plan(
        &v,
        Path::new(STATE),
        &secret("gone", "userdata", b"#cloud-config\n"),
    )
    .unwrap();
    assert!(matches!(
        p.volumes.get("ci"),
        Some(VolumePlan::CloudInit { files, .. }) if files.user_data == b"#cloud-config\n"
    ));
}

#[test]
fn volume_problems_refuse_with_their_reason() {
    let unsupported = vmi(
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: c\n    containerDisk: {image: x}\n",
    );
    assert!(matches!(
        plan(&unsupported, Path::new(STATE), &SecretData::new()),
        Err(NotCreated::Refused(Refusal {
            reason: Reason::Unsupported,
            ..
        }))
    ));
    let invalid = vmi(
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: e\n    emptyDisk: {capacity: '0'}\n",
    );
    assert!(matches!(
        plan(&invalid, Path::new(STATE), &SecretData::new()),
        Err(NotCreated::Refused(Refusal {
            reason: Reason::InvalidSpec,
            ..
        }))
    ));
}

#[test]
fn preparing_failures_refuse_except_io_which_retries() {
    let io = VolumeError::Io {
        what: "qemu-img create".into(),
        reason: "No space left on device".into(),
    };
    assert_eq!(
        prepare_failure(io),
        NotCreated::Retry("qemu-img create: No space left on device".into())
    );
    let missing = VolumeError::Missing {
        field: "spec.volumes[name=root].hostDisk.path".into(),
        path: "/images/root.img".into(),
    };
    assert_eq!(
        prepare_failure(missing),
        NotCreated::Refused(Refusal {
            reason: Reason::VolumeNotFound,
            message:
                "spec.volumes[name=root].hostDisk.path: /images/root.img does not exist on the node"
                    .into()
        })
    );
    let reasons = [
        (
            VolumeError::Unsupported {
                field: "f".into(),
                reason: "r".into(),
            },
            "Unsupported",
        ),
        (
            VolumeError::Invalid {
                field: "f".into(),
                reason: "r".into(),
            },
            "InvalidSpec",
        ),
        (
            VolumeError::Io {
                what: "w".into(),
                reason: "r".into(),
            },
            "VolumeError",
        ),
    ];
    for (e, want) in reasons {
        assert_eq!(volume_reason(&e).as_str(), want);
    }
}

#[test]
fn masquerade_ports_are_forwarded_in_spec_order() {
    let p = plan(&vmi(FORWARDING), Path::new(STATE), &SecretData::new()).unwrap();
    assert_eq!(
        p.forwards,
        [
            ForwardRequest {
                interface: "default".into(),
                protocol: PortProtocol::Tcp,
                guest_port: 22
            },
            ForwardRequest {
                interface: "default".into(),
                protocol: PortProtocol::Udp,
                guest_port: 53
            },
        ]
    );
    let address = std::net::Ipv4Addr::new(10, 250, 0, 6);
    assert_eq!(
        forwards_note("node-a", address, &p.forwards).as_deref(),
        Some(
            "on node node-a: 10.250.0.6:22 -> 22/Tcp (default), 10.250.0.6:53 -> 53/Udp (default)"
        )
    );
    assert_eq!(
        p.forwards
            .iter()
            .map(ForwardRequest::guest_port)
            .collect::<Vec<_>>(),
        [
            GuestPort {
                udp: false,
                port: 22
            },
            GuestPort {
                udp: true,
                port: 53
            }
        ]
    );
    assert!(p.pod_network);
    assert_eq!(forwards_note("node-a", address, &[]), None);
    // A bridge interface forwards nothing.
    let bridge = vmi(
        "  domain:\n    memory: {guest: 64Mi}\n    devices:\n      interfaces: [{name: default, bridge: {}}]\n  networks: [{name: default, pod: {}}]\n",
    );
    assert_eq!(forward_requests(&bridge), Ok(Vec::new()));
    let bridge_plan = plan(&bridge, Path::new(STATE), &SecretData::new()).unwrap();
    assert!(!bridge_plan.pod_network);
}

#[test]
fn the_domain_xml_uses_the_made_files_and_the_vmi_network() {
    let v = vmi(FORWARDING);
    let p = plan(&v, Path::new(STATE), &SecretData::new()).unwrap();
    let socket = PathBuf::from("/run/ironvirt/net/u1/passt.sock");
    let xml = domain_xml(
        &v,
        &host(),
        "node-a",
        p.nvram,
        BTreeMap::new(),
        Some(socket),
    )
    .unwrap();
    assert!(
        xml.contains("stream,id=ua-default,server=off,addr.type=unix,addr.path=/run/ironvirt/net/u1/passt.sock"),
        "{xml}"
    );
    assert!(!xml.contains("hostfwd"), "{xml}");
    assert!(xml.contains("node='node-a'"), "{xml}");
    // Without a guest network, a masquerade interface cannot be connected.
    let refused = domain_xml(&v, &host(), "n", dir(), BTreeMap::new(), None).unwrap_err();
    assert_eq!(refused.reason, Reason::Unsupported);
}

#[test]
fn xml_problems_refuse_with_their_reason() {
    // A disk whose volume is missing: invalid.
    let v = vmi(
        "  domain:\n    memory: {guest: 64Mi}\n    devices:\n      disks: [{name: root, disk: {bus: virtio}}]\n",
    );
    let refused = domain_xml(&v, &host(), "n", dir(), BTreeMap::new(), None).unwrap_err();
    assert_eq!(refused.reason, Reason::InvalidSpec);
    assert!(
        refused.message.starts_with("spec.domain.devices.disks"),
        "{}",
        refused.message
    );
    // host-passthrough without KVM: unsupported.
    let v = vmi("  domain:\n    memory: {guest: 64Mi}\n    cpu: {model: host-passthrough}\n");
    let refused = domain_xml(&v, &host(), "n", dir(), BTreeMap::new(), None).unwrap_err();
    assert_eq!(refused.reason, Reason::Unsupported);
    // The resolved volumes reach the XML.
    let v = vmi(
        "  domain:\n    memory: {guest: 64Mi}\n    devices:\n      disks: [{name: root, disk: {bus: virtio}}]\n  volumes: [{name: root, hostDisk: {path: /images/root.qcow2, type: Disk}}]\n",
    );
    let mut volumes = BTreeMap::new();
    volumes.insert(
        "root".to_owned(),
        ResolvedVolume {
            path: "/images/root.qcow2".into(),
            format: ImageFormat::Qcow2,
        },
    );
    let xml = domain_xml(
        &v,
        &host(),
        "n",
        dir(),
        volumes,
        Some(dir().join("passt.sock")),
    )
    .unwrap();
    assert!(xml.contains("/images/root.qcow2"), "{xml}");
}

#[test]
fn libvirt_refusing_the_domain_fails_the_vmi_but_an_outage_does_not() {
    let refused = start_refusal(LibvirtError::Call("unsupported machine type".into())).unwrap();
    assert_eq!(refused.reason, Reason::StartFailed);
    assert_eq!(refused.message, "libvirt: unsupported machine type");
    let outage = LibvirtError::Unreachable {
        uri: "qemu:///system".into(),
        reason: "connection refused".into(),
    };
    assert!(matches!(
        start_refusal(outage),
        Err(LibvirtError::Unreachable { .. })
    ));
}
