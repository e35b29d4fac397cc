//! Unit tests of [`super`]: the create plan from inline VMI manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::domxml::{DomainType, ImageFormat, ResolvedVolume};
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

/// The test's hostDisk root; namespace `ns` has `/hd/ns`.
const ROOT: &str = "/hd";

/// [`plan`] with hostDisk on under [`ROOT`] and the default capacity limits.
fn plan_on(
    vmi: &VirtualMachineInstance,
    state_dir: &Path,
    secrets: &SecretData,
) -> Result<CreatePlan, NotCreated> {
    plan(
        vmi,
        state_dir,
        &VolumePolicy::with_host_disk_root(ROOT),
        secrets,
    )
}

fn dir() -> PathBuf {
    Path::new(STATE).join("vmis").join(UID)
}

fn host() -> HostEnv {
    HostEnv {
        domain_type: DomainType::Qemu,
        ovmf: None,
        default_machine: "q35".into(),
        swtpm: true,
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
    let p = plan_on(
        &vmi("  domain: {memory: {guest: 64Mi}, devices: {autoattachPodInterface: false}}\n"),
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
    let p = plan_on(&v, Path::new(STATE), &SecretData::new()).unwrap();
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
        plan_on(&v, Path::new(STATE), &SecretData::new()),
        Err(NotCreated::Refused(Refusal {
            reason: Reason::SecretNotFound,
            message: "cloud-init Secret ns/gone does not exist".into()
        }))
    );
    let p = plan_on(
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
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: c\n    dataVolume: {name: x}\n",
    );
    assert!(matches!(
        plan_on(&unsupported, Path::new(STATE), &SecretData::new()),
        Err(NotCreated::Refused(Refusal {
            reason: Reason::Unsupported,
            ..
        }))
    ));
    let invalid = vmi(
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: e\n    emptyDisk: {capacity: '0'}\n",
    );
    assert!(matches!(
        plan_on(&invalid, Path::new(STATE), &SecretData::new()),
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
    let missing = VolumeError::HostDisk {
        field: "spec.volumes[name=root].hostDisk.path".into(),
        source: HostDiskError::Missing {
            path: "/hd/ns/root.img".into(),
            at: "/hd/ns/root.img".into(),
        },
    };
    assert_eq!(
        prepare_failure(missing),
        NotCreated::Refused(Refusal {
            reason: Reason::VolumeNotFound,
            message:
                "spec.volumes[name=root].hostDisk.path: '/hd/ns/root.img' does not exist on the node"
                    .into()
        })
    );
    let full = VolumeError::InsufficientStorage {
        field: "spec.volumes[name=s].emptyDisk.capacity".into(),
        message: "emptyDisk s asks for 2Ti; /var/lib/ironvirt/handler/vmis/u has 40.5Gi free"
            .into(),
    };
    assert_eq!(
        prepare_failure(full),
        NotCreated::Refused(Refusal {
            reason: Reason::InsufficientStorage,
            message: "spec.volumes[name=s].emptyDisk.capacity: emptyDisk s asks for 2Ti; \
                      /var/lib/ironvirt/handler/vmis/u has 40.5Gi free"
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
fn the_volume_policy_refuses_with_its_reason() {
    let host_disk = |path: &str| {
        vmi(&format!(
            "  domain: {{memory: {{guest: 64Mi}}}}\n  volumes:\n  - name: root\n    hostDisk: {{path: {path}, type: Disk}}\n"
        ))
    };
    let refusal = |r: Result<CreatePlan, NotCreated>| match r {
        Err(NotCreated::Refused(r)) => r,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // hostDisk off: any hostDisk, wherever it points.
    let off = refusal(plan(
        &host_disk("/hd/ns/a.img"),
        Path::new(STATE),
        &VolumePolicy::default(),
        &SecretData::new(),
    ));
    assert_eq!(off.reason, Reason::HostDiskDisabled);
    assert!(
        off.message
            .starts_with("spec.volumes[0].hostDisk hostDisk is disabled"),
        "{}",
        off.message
    );
    // On: only inside the namespace's own directory.
    for path in [
        "/etc/shadow",
        "/hd/other/a.img",
        "/hd/ns/../other/a.img",
        "hd/ns/a.img",
    ] {
        let r = refusal(plan_on(
            &host_disk(path),
            Path::new(STATE),
            &SecretData::new(),
        ));
        assert_eq!(
            r.reason,
            Reason::HostDiskOutsideRoot,
            "{path}: {}",
            r.message
        );
        assert!(
            r.message.starts_with("spec.volumes[0].hostDisk.path"),
            "{}",
            r.message
        );
    }
    let p = plan_on(
        &host_disk("/hd/ns/a.img"),
        Path::new(STATE),
        &SecretData::new(),
    )
    .unwrap();
    assert_eq!(
        p.volumes.get("root"),
        Some(&VolumePlan::HostDisk {
            path: "/hd/ns/a.img".into(),
            create: None,
            ns_dir: "/hd/ns".into(),
        })
    );
    // Capacities above the limits.
    let big = vmi(
        "  domain: {memory: {guest: 64Mi}}\n  volumes:\n  - name: s\n    emptyDisk: {capacity: 1Ei}\n",
    );
    let r = refusal(plan_on(&big, Path::new(STATE), &SecretData::new()));
    assert_eq!(r.reason, Reason::VolumeTooLarge);
    assert!(
        r.message.starts_with(
            "spec.volumes[0].emptyDisk.capacity '1Ei' is more than the maximum of 1Ti per volume on this cluster"
        ),
        "{}",
        r.message
    );
}

#[test]
fn host_disk_refusals_keep_the_reasons_of_the_crds_crate() {
    let path = || "/hd/ns/a.img".to_owned();
    let at = || PathBuf::from("/hd/ns/a.img");
    for e in [
        HostDiskError::NotAbsolute { path: path() },
        HostDiskError::BadComponent { path: path() },
        HostDiskError::BadNamespace {
            namespace: "..".into(),
        },
        HostDiskError::Outside {
            path: path(),
            dir: at(),
        },
        HostDiskError::Symlink {
            path: path(),
            at: at(),
        },
        HostDiskError::NotADirectory {
            path: path(),
            at: at(),
        },
        HostDiskError::NotRegular {
            path: path(),
            kind: "a character device",
        },
    ] {
        assert_eq!(host_disk_reason(&e).as_str(), e.reason(), "{e}");
    }
    // A missing image keeps the reason a missing volume always had.
    let missing = HostDiskError::Missing {
        path: path(),
        at: at(),
    };
    assert_eq!(host_disk_reason(&missing), Reason::VolumeNotFound);
}

#[test]
fn masquerade_ports_are_forwarded_in_spec_order() {
    let p = plan_on(&vmi(FORWARDING), Path::new(STATE), &SecretData::new()).unwrap();
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
    // Without a masquerade interface, the first bridge one is on the VMI's
    // network, with the default ports (it cannot declare any).
    let bridge = vmi(
        "  domain:\n    memory: {guest: 64Mi}\n    devices:\n      interfaces: [{name: lan, bridge: {}}]\n  networks: [{name: lan, pod: {}}]\n",
    );
    let defaults: Vec<ForwardRequest> = DEFAULT_FORWARDED_PORTS
        .iter()
        .map(|&guest_port| ForwardRequest {
            interface: "lan".into(),
            protocol: PortProtocol::Tcp,
            guest_port,
        })
        .collect();
    assert_eq!(forward_requests(&bridge), Ok(defaults));
    let bridge_plan = plan_on(&bridge, Path::new(STATE), &SecretData::new()).unwrap();
    assert!(bridge_plan.pod_network);
}

#[test]
fn an_interface_on_the_pod_network_without_ports_forwards_the_default_ones() {
    let ports = |yaml: &str| {
        forward_requests(&vmi(yaml))
            .unwrap()
            .iter()
            .map(|f| (f.interface.clone(), f.guest_port, f.protocol))
            .collect::<Vec<_>>()
    };
    let tcp = |name: &str| {
        DEFAULT_FORWARDED_PORTS
            .iter()
            .map(|&p| (name.to_owned(), p, PortProtocol::Tcp))
            .collect::<Vec<_>>()
    };
    // KubeVirt's default interface (no interfaces, no networks).
    assert_eq!(ports("  domain: {memory: {guest: 64Mi}}\n"), tcp("default"));
    // A masquerade interface without ports.
    assert_eq!(
        ports(
            "  domain:\n    devices:\n      interfaces: [{name: nic, masquerade: {}}]\n  networks: [{name: nic, pod: {}}]\n"
        ),
        tcp("nic")
    );
    // Declared ports replace the default ones.
    assert_eq!(
        ports(
            "  domain:\n    devices:\n      interfaces: [{name: nic, masquerade: {}, ports: [{port: 5432}]}]\n  networks: [{name: nic, pod: {}}]\n"
        ),
        [("nic".to_owned(), 5432, PortProtocol::Tcp)]
    );
    // No pod network: nothing.
    assert_eq!(
        ports("  domain:\n    devices: {autoattachPodInterface: false}\n"),
        []
    );
}

/// Domain inputs with nothing made: no volumes, network, console socket or kernel.
fn bare_inputs() -> DomainInputs {
    DomainInputs {
        node: "n".into(),
        volumes: BTreeMap::new(),
        pod_network: None,
        nvram: dir(),
        console_socket: None,
        kernel_boot: None,
    }
}

#[test]
fn the_domain_xml_uses_the_made_files_and_the_vmi_network() {
    let v = vmi(FORWARDING);
    let p = plan_on(&v, Path::new(STATE), &SecretData::new()).unwrap();
    let socket = PathBuf::from("/run/ironvirt/net/u1/passt.sock");
    let inputs = DomainInputs {
        node: "node-a".into(),
        nvram: p.nvram,
        pod_network: Some(socket),
        console_socket: Some(PathBuf::from("/run/ironvirt/console/u1.sock")),
        ..bare_inputs()
    };
    let xml = domain_xml(&v, &host(), &inputs).unwrap();
    assert!(
        xml.contains(
            "<serial type='unix'>\n      <source mode='bind' path='/run/ironvirt/console/u1.sock'/>"
        ),
        "{xml}"
    );
    assert!(
        xml.contains("stream,id=ua-default,server=off,addr.type=unix,addr.path=/run/ironvirt/net/u1/passt.sock"),
        "{xml}"
    );
    assert!(!xml.contains("hostfwd"), "{xml}");
    assert!(xml.contains("node='node-a'"), "{xml}");
    // Without a guest network, a masquerade interface cannot be connected.
    let refused = domain_xml(&v, &host(), &bare_inputs()).unwrap_err();
    assert_eq!(refused.reason, Reason::Unsupported);
}

#[test]
fn xml_problems_refuse_with_their_reason() {
    // A disk whose volume is missing: invalid.
    let v = vmi(
        "  domain:\n    memory: {guest: 64Mi}\n    devices:\n      disks: [{name: root, disk: {bus: virtio}}]\n",
    );
    let refused = domain_xml(&v, &host(), &bare_inputs()).unwrap_err();
    assert_eq!(refused.reason, Reason::InvalidSpec);
    assert!(
        refused.message.starts_with("spec.domain.devices.disks"),
        "{}",
        refused.message
    );
    // host-passthrough without KVM: unsupported.
    let v = vmi("  domain:\n    memory: {guest: 64Mi}\n    cpu: {model: host-passthrough}\n");
    let refused = domain_xml(&v, &host(), &bare_inputs()).unwrap_err();
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
    let inputs = DomainInputs {
        volumes,
        pod_network: Some(dir().join("passt.sock")),
        ..bare_inputs()
    };
    let xml = domain_xml(&v, &host(), &inputs).unwrap();
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
