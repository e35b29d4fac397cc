//! Unit tests of the domain XML; the golden files are in `handler/tests/`.

use super::*;

const UID: &str = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";

/// A VMI from the YAML of its spec, with namespace, name and uid set.
fn vmi(spec: &str) -> VirtualMachineInstance {
    let yaml = format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n\
         metadata: {{name: vm1, namespace: ns1, uid: {UID}}}\nspec:\n{spec}"
    );
    serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("fixture: {e}\n{yaml}"))
}

fn host() -> HostEnv {
    HostEnv {
        domain_type: DomainType::Qemu,
        ovmf: None,
        default_machine: "q35".into(),
        swtpm: true,
    }
}

fn ovmf_host(secure: bool) -> HostEnv {
    HostEnv {
        ovmf: Some(Ovmf {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            secure_code: secure.then(|| "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into()),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            secure_vars_template: secure.then(|| "/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into()),
        }),
        ..host()
    }
}

fn inputs(volumes: &[&str]) -> DomainInputs {
    DomainInputs {
        node: "node-a".into(),
        volumes: volumes
            .iter()
            .map(|v| {
                let path = PathBuf::from(format!("/var/lib/ironvirt/vmis/{UID}/{v}.qcow2"));
                let vol = ResolvedVolume {
                    path,
                    format: ImageFormat::Qcow2,
                };
                ((*v).to_owned(), vol)
            })
            .collect(),
        pod_network: Some(format!("/run/ironvirt/net/{UID}/passt.sock").into()),
        nvram: format!("/var/lib/ironvirt/vmis/{UID}/nvram.fd").into(),
        console_socket: Some(format!("/run/ironvirt/console/{UID}.sock").into()),
        kernel_boot: None,
    }
}

const MEM: &str = "  domain:\n    memory: {guest: 64Mi}\n";

fn build(spec: &str) -> Result<String, XmlError> {
    domain_xml(&vmi(spec), &host(), &inputs(&[]))
}

/// The field of an error, asserting its kind.
fn field(result: Result<String, XmlError>, want_invalid: bool) -> String {
    match result {
        Err(XmlError::Invalid { field, .. }) if want_invalid => field,
        Err(XmlError::Unsupported { field, .. }) if !want_invalid => field,
        other => panic!("unexpected result: {other:?}"),
    }
}

#[test]
fn a_minimal_vmi_becomes_a_domain() {
    let xml = build(MEM).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.attribute("type"), Some("qemu"));
    let text = |tag: &str| {
        root.descendants()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .map(str::to_owned)
    };
    assert_eq!(text("name").as_deref(), Some("ironvirt-ns1_vm1"));
    assert_eq!(text("uuid").as_deref(), Some(UID));
    assert_eq!(text("memory").as_deref(), Some("65536"));
    assert_eq!(text("vcpu").as_deref(), Some("1"));
    assert!(xml.contains("<boot dev='hd'/>"));
    // KubeVirt's default pod interface: the VMI's network, through passt.
    assert!(xml.contains("addr.path=/run/ironvirt/net/"), "{xml}");
    assert!(!xml.contains("<interface"));
    // VNC on a UNIX socket only.
    assert!(xml.contains("<listen type='socket'/>"), "{xml}");
    assert!(!xml.contains("127.0.0.1"), "{xml}");
}

#[test]
fn memory_rounds_up_to_kib() {
    let xml = build("  domain:\n    memory: {guest: \"1025\"}\n").unwrap();
    assert!(xml.contains("<memory unit='KiB'>2</memory>"), "{xml}");
    assert!(xml.contains("<currentMemory unit='KiB'>2</currentMemory>"));
}

#[test]
fn missing_memory_is_invalid() {
    assert_eq!(
        field(build("  domain:\n    cpu: {cores: 2}\n"), true),
        "spec.domain.memory.guest"
    );
    let bad = "  domain:\n    resources: {requests: {memory: lots}}\n";
    assert_eq!(
        field(build(bad), true),
        "spec.domain.resources.requests.memory"
    );
}

#[test]
fn missing_metadata_is_invalid() {
    let mut v = vmi(MEM);
    v.metadata.uid = None;
    let err = domain_xml(&v, &host(), &inputs(&[]));
    assert_eq!(field(err, true), "metadata.uid");
    let mut v = vmi(MEM);
    v.metadata.namespace = None;
    assert_eq!(
        field(domain_xml(&v, &host(), &inputs(&[])), true),
        "metadata.namespace"
    );
}

#[test]
fn disk_without_volume_is_invalid() {
    let spec = format!(
        "{MEM}    devices:\n      disks: [{{name: a}}, {{name: b}}]\nvolumes:\n  - {{name: a, emptyDisk: {{capacity: 1Gi}}}}\n"
    );
    let v = vmi(&spec.replace("\nvolumes", "\n  volumes"));
    let err = domain_xml(&v, &host(), &inputs(&["a", "b"]));
    match err {
        Err(XmlError::Invalid { field, reason }) => {
            assert_eq!(field, "spec.domain.devices.disks[1].name");
            assert_eq!(reason, "no volume named b");
        }
        other => panic!("{other:?}"),
    }
    // Declared but not resolved on the node.
    let err = domain_xml(&v, &host(), &inputs(&[]));
    assert_eq!(field(err, true), "spec.domain.devices.disks[0].name");
}

#[test]
fn duplicate_boot_order_names_the_second_device() {
    let spec = format!(
        "{MEM}    devices:\n      disks: [{{name: a, bootOrder: 1}}, {{name: b, bootOrder: 1}}]\n  \
         volumes: [{{name: a, emptyDisk: {{capacity: 1Gi}}}}, {{name: b, emptyDisk: {{capacity: 1Gi}}}}]\n"
    );
    let err = domain_xml(&vmi(&spec), &host(), &inputs(&["a", "b"]));
    match err {
        Err(XmlError::Invalid { field, reason }) => {
            assert_eq!(field, "spec.domain.devices.disks[1].bootOrder");
            assert!(reason.contains("disks[0].bootOrder"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let spec = format!(
        "{MEM}    devices:\n      disks: [{{name: a, bootOrder: 2}}]\n      \
         interfaces: [{{name: default, masquerade: {{}}, bootOrder: 2}}]\n  \
         networks: [{{name: default, pod: {{}}}}]\n  \
         volumes: [{{name: a, emptyDisk: {{capacity: 1Gi}}}}]\n"
    );
    let err = domain_xml(&vmi(&spec), &host(), &inputs(&["a"]));
    assert_eq!(
        field(err, true),
        "spec.domain.devices.interfaces[0].bootOrder"
    );
}

#[test]
fn boot_orders_replace_the_boot_device() {
    let spec = format!(
        "{MEM}    devices:\n      disks: [{{name: a, bootOrder: 2}}]\n  \
         volumes: [{{name: a, emptyDisk: {{capacity: 1Gi}}}}]\n"
    );
    let xml = domain_xml(&vmi(&spec), &host(), &inputs(&["a"])).unwrap();
    assert!(xml.contains("<boot order='2'/>"));
    assert!(!xml.contains("<boot dev="));
}

#[test]
fn efi_without_ovmf_is_unsupported() {
    let spec = format!("{MEM}    firmware: {{bootloader: {{efi: {{secureBoot: false}}}}}}\n");
    match build(&spec) {
        Err(XmlError::Unsupported { field, reason }) => {
            assert_eq!(field, "spec.domain.firmware.bootloader.efi");
            assert!(reason.contains("OVMF"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn secure_boot_needs_secure_ovmf() {
    let spec = format!("{MEM}    firmware: {{bootloader: {{efi: {{}}}}}}\n");
    let err = domain_xml(&vmi(&spec), &ovmf_host(false), &inputs(&[]));
    assert_eq!(
        field(err, false),
        "spec.domain.firmware.bootloader.efi.secureBoot"
    );
    let xml = domain_xml(&vmi(&spec), &ovmf_host(true), &inputs(&[])).unwrap();
    assert!(xml.contains("secure='yes'"));
    assert!(xml.contains("<smm state='on'/>"));
}

#[test]
fn secure_boot_on_pc_is_invalid() {
    let spec = format!(
        "{MEM}    machine: {{type: pc}}\n    firmware: {{bootloader: {{efi: {{secureBoot: true}}}}}}\n"
    );
    let err = domain_xml(&vmi(&spec), &ovmf_host(true), &inputs(&[]));
    assert_eq!(
        field(err, true),
        "spec.domain.firmware.bootloader.efi.secureBoot"
    );
    // Without Secure Boot, EFI on pc is fine.
    let spec = spec.replace("secureBoot: true", "secureBoot: false");
    let xml = domain_xml(&vmi(&spec), &ovmf_host(true), &inputs(&[])).unwrap();
    assert!(xml.contains("machine='pc'"));
    assert!(xml.contains("secure='no'"));
    assert!(!xml.contains("smm"));
}

#[test]
fn unsupported_interface_bindings_are_named() {
    for binding in ["sriov", "passt", "slirp", "binding"] {
        let spec = format!(
            "{MEM}    devices:\n      interfaces: [{{name: net, {binding}: {{}}}}]\n  \
             networks: [{{name: net, pod: {{}}}}]\n"
        );
        assert_eq!(
            field(build(&spec), false),
            format!("spec.domain.devices.interfaces[0].{binding}")
        );
    }
}

#[test]
fn interfaces_need_a_pod_network_of_their_name() {
    let spec = format!(
        "{MEM}    devices:\n      interfaces: [{{name: net, masquerade: {{}}}}]\n  \
         networks: [{{name: other, pod: {{}}}}]\n"
    );
    assert_eq!(
        field(build(&spec), true),
        "spec.domain.devices.interfaces[0].name"
    );
    let spec = format!(
        "{MEM}    devices:\n      interfaces: [{{name: net, masquerade: {{}}}}]\n  \
         networks: [{{name: net, multus: {{networkName: x}}}}]\n"
    );
    assert_eq!(field(build(&spec), false), "spec.networks[0].multus");
}

#[test]
fn host_passthrough_needs_kvm() {
    let spec = format!("{MEM}    cpu: {{model: host-passthrough}}\n");
    match build(&spec) {
        Err(XmlError::Unsupported { field, reason }) => {
            assert_eq!(field, "spec.domain.cpu.model");
            assert!(reason.contains("TCG"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let kvm = HostEnv {
        domain_type: DomainType::Kvm,
        ..host()
    };
    let xml = domain_xml(&vmi(&spec), &kvm, &inputs(&[])).unwrap();
    assert!(xml.contains("<cpu mode='host-passthrough'>"), "{xml}");
    assert!(xml.starts_with("<domain type='kvm'"));
}

#[test]
fn tcg_ignores_host_model_and_honours_named_models() {
    let xml = build(&format!("{MEM}    cpu: {{model: host-model}}\n")).unwrap();
    assert!(xml.contains("<cpu>\n"), "{xml}");
    let xml = build(&format!("{MEM}    cpu: {{model: Westmere}}\n")).unwrap();
    assert!(
        xml.contains("<cpu mode='custom' match='exact' check='none'>"),
        "{xml}"
    );
    assert!(xml.contains("<model fallback='allow'>Westmere</model>"));
    let err = build(&format!("{MEM}    cpu: {{model: \"a b\"}}\n"));
    assert_eq!(field(err, true), "spec.domain.cpu.model");
}

#[test]
fn unsupported_fields_are_refused() {
    let cases = [
        (
            "    devices: {gpus: [{name: g}]}\n",
            "spec.domain.devices.gpus",
        ),
        (
            "    devices: {hostDevices: [{name: h}]}\n",
            "spec.domain.devices.hostDevices",
        ),
        (
            "    devices: {watchdog: {name: w}}\n",
            "spec.domain.devices.watchdog",
        ),
        (
            "    devices: {sound: {name: s}}\n",
            "spec.domain.devices.sound",
        ),
        (
            "    launchSecurity: {sev: {}}\n",
            "spec.domain.launchSecurity",
        ),
        ("    rebootPolicy: Terminate\n", "spec.domain.rebootPolicy"),
        (
            "    cpu: {dedicatedCpuPlacement: true}\n",
            "spec.domain.cpu.dedicatedCpuPlacement",
        ),
    ];
    for (extra, want) in cases {
        assert_eq!(field(build(&format!("{MEM}{extra}")), false), want);
    }
    let probe = format!("{MEM}  livenessProbe: {{tcpSocket: {{port: 22}}}}\n");
    assert_eq!(field(build(&probe), false), "spec.livenessProbe");
}

#[test]
fn disk_kinds_are_checked() {
    let vol = "  volumes: [{name: a, emptyDisk: {capacity: 1Gi}}]\n";
    let case = |disk: &str| {
        let spec = format!("{MEM}    devices:\n      disks: [{disk}]\n{vol}");
        domain_xml(&vmi(&spec), &host(), &inputs(&["a"]))
    };
    assert_eq!(
        field(case("{name: a, cdrom: {bus: virtio}}"), true),
        "spec.domain.devices.disks[0].cdrom.bus"
    );
    assert_eq!(
        field(case("{name: a, lun: {bus: sata}}"), true),
        "spec.domain.devices.disks[0].lun.bus"
    );
    assert_eq!(
        field(case("{name: a, disk: {}, cdrom: {}}"), true),
        "spec.domain.devices.disks[0]"
    );
    assert_eq!(
        field(case("{name: a, serial: \"x<y\"}"), true),
        "spec.domain.devices.disks[0].serial"
    );
    let xml = case("{name: a, lun: {}}").unwrap();
    assert!(xml.contains("<target dev='sda' bus='scsi'/>"), "{xml}");
    assert!(xml.contains("model='virtio-scsi'"));
}

#[test]
fn bios_serial_needs_the_serial_console() {
    let spec = format!(
        "{MEM}    firmware: {{bootloader: {{bios: {{useSerial: true}}}}}}\n    \
         devices: {{autoattachSerialConsole: false}}\n"
    );
    assert_eq!(
        field(build(&spec), true),
        "spec.domain.firmware.bootloader.bios.useSerial"
    );
}

#[test]
fn macs_are_checked_and_normalised() {
    let spec = |mac: &str| {
        format!(
            "{MEM}    devices:\n      interfaces: [{{name: default, masquerade: {{}}, macAddress: \"{mac}\"}}]\n  \
             networks: [{{name: default, pod: {{}}}}]\n"
        )
    };
    let xml = build(&spec("DE-AD-00-00-BE-AF")).unwrap();
    assert!(xml.contains(",mac=de:ad:00:00:be:af,"), "{xml}");
    assert_eq!(
        field(build(&spec("01:00:00:00:00:01")), true),
        "spec.domain.devices.interfaces[0].macAddress"
    );
    assert_eq!(
        field(build(&spec("nope")), true),
        "spec.domain.devices.interfaces[0].macAddress"
    );
}

#[test]
fn the_masquerade_interface_goes_to_the_vmi_network() {
    let spec = format!(
        "{MEM}    devices:\n      interfaces:\n        \
         - {{name: default, masquerade: {{}}, bootOrder: 1, ports: [{{port: 22}}]}}\n        \
         - {{name: lan, bridge: {{}}}}\n  \
         networks: [{{name: default, pod: {{}}}}, {{name: lan, pod: {{}}}}]\n"
    );
    let mut inp = inputs(&[]);
    let xml = domain_xml(&vmi(&spec), &host(), &inp).unwrap();
    let mac = derived_mac(UID, "default");
    let netdev = format!(
        "<qemu:arg value='stream,id=ua-default,server=off,addr.type=unix,\
         addr.path=/run/ironvirt/net/{UID}/passt.sock'/>"
    );
    assert!(xml.contains(&netdev), "{xml}");
    assert!(xml.contains(&format!(
        "<qemu:arg value='virtio-net-pci,netdev=ua-default,mac={mac},bus=pcie.0,addr=0x1d,bootindex=1'/>"
    )));
    // Ports are passt's business, not the XML's; nothing listens on the node.
    assert!(!xml.contains("hostfwd"), "{xml}");
    assert!(!xml.contains("<interface type='user'>"));
    assert!(!xml.contains("<boot dev="));
    let live = parse_live(&xml);
    let names: Vec<&str> = live.macs.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(names, ["ua-lan", "ua-default"]);
    assert_eq!(live.macs[1].1, mac);

    // Without a VMI network the masquerade interface cannot be connected.
    inp.pod_network = None;
    let err = domain_xml(&vmi(&spec), &host(), &inp);
    assert_eq!(field(err, false), "spec.domain.devices.interfaces[0]");
    // A bridge-only VMI is on its network too (KubeVirt's bridge on the pod
    // network gives the guest the pod's address): it needs one as well.
    let bridge = format!(
        "{MEM}    devices:\n      interfaces: [{{name: lan, bridge: {{}}}}]\n  \
         networks: [{{name: lan, pod: {{}}}}]\n"
    );
    assert_eq!(
        field(domain_xml(&vmi(&bridge), &host(), &inp), false),
        "spec.domain.devices.interfaces[0]"
    );
    assert!(wants_pod_network(&vmi(&bridge)));
    inp.pod_network = Some("/run/ironvirt/net/x/passt.sock".into());
    let xml = domain_xml(&vmi(&bridge), &host(), &inp).unwrap();
    assert!(xml.contains("netdev=ua-lan"), "{xml}");
    assert!(!xml.contains("<interface type='network'>"), "{xml}");
}

#[test]
fn spec_macs_match_the_xml() {
    let spec = format!(
        "{MEM}    devices:\n      interfaces:\n        \
         - {{name: default, masquerade: {{}}}}\n        \
         - {{name: lan, bridge: {{}}, macAddress: \"02:00:00:00:00:07\"}}\n  \
         networks: [{{name: default, pod: {{}}}}, {{name: lan, pod: {{}}}}]\n"
    );
    let v = vmi(&spec);
    let xml = domain_xml(&v, &host(), &inputs(&[])).unwrap();
    let mut live = parse_live(&xml).macs;
    live.sort();
    let mut spec_side = spec_macs(&v);
    spec_side.sort();
    assert_eq!(live, spec_side);
    assert_eq!(spec_side.len(), 2);
    // KubeVirt's default pod interface when none is listed.
    assert_eq!(
        spec_macs(&vmi(MEM)),
        [("ua-default".to_owned(), derived_mac(UID, "default"))]
    );
}

#[test]
fn one_masquerade_interface_per_vmi() {
    let spec = format!(
        "{MEM}    devices:\n      interfaces:\n        \
         - {{name: a, masquerade: {{}}}}\n        \
         - {{name: b, masquerade: {{}}}}\n  \
         networks: [{{name: a, pod: {{}}}}, {{name: b, pod: {{}}}}]\n"
    );
    assert_eq!(
        field(build(&spec), false),
        "spec.domain.devices.interfaces[1].masquerade"
    );
}

#[test]
fn ports_need_masquerade_and_guest_networks_are_checked() {
    let spec = format!(
        "{MEM}    devices:\n      interfaces: [{{name: lan, bridge: {{}}, ports: [{{port: 22}}]}}]\n  \
         networks: [{{name: lan, pod: {{}}}}]\n"
    );
    assert_eq!(
        field(build(&spec), true),
        "spec.domain.devices.interfaces[0].ports"
    );
    let net = |pod: &str| {
        format!(
            "{MEM}    devices:\n      interfaces: [{{name: default, masquerade: {{}}}}]\n  \
             networks: [{{name: default, pod: {pod}}}]\n"
        )
    };
    assert_eq!(
        field(build(&net("{vmNetworkCIDR: 10.0.2.0/28}")), true),
        "spec.networks[0].pod.vmNetworkCIDR"
    );
    assert_eq!(
        field(build(&net("{vmNetworkCIDR: fd10::/64}")), true),
        "spec.networks[0].pod.vmNetworkCIDR"
    );
    assert_eq!(
        field(
            build(&net("{vmIPv6NetworkCIDR: \"fd10:0:2::/120\"}")),
            false
        ),
        "spec.networks[0].pod.vmIPv6NetworkCIDR"
    );
    // A well-formed one is accepted and has no effect: the guest gets the
    // VMI's address.
    let xml = build(&net("{vmIPv6NetworkCIDR: \"fd10:0:2::/64\"}")).unwrap();
    assert!(!xml.contains("fd10"), "{xml}");
}

#[test]
fn disk_letters_go_past_z() {
    let names: Vec<String> = [0, 1, 25, 26, 27, 51, 52, 701, 702]
        .into_iter()
        .map(disk_letters)
        .collect();
    assert_eq!(names, ["a", "b", "z", "aa", "ab", "az", "ba", "zz", "aaa"]);
}

#[test]
fn many_disks_get_distinct_targets() {
    let names: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    let disks = names
        .iter()
        .map(|n| format!("{{name: {n}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let vols = names
        .iter()
        .map(|n| format!("{{name: {n}, emptyDisk: {{capacity: 1Gi}}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    let spec = format!("{MEM}    devices:\n      disks: [{disks}]\n  volumes: [{vols}]\n");
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let xml = domain_xml(&vmi(&spec), &host(), &inputs(&refs)).unwrap();
    assert!(xml.contains("<target dev='vdz' bus='virtio'/>"));
    assert!(xml.contains("<target dev='vdaa' bus='virtio'/>"));
    assert!(xml.contains("<target dev='vdad' bus='virtio'/>"));
}

#[test]
fn derived_macs_are_stable_local_and_distinct() {
    let a = derived_mac(UID, "default");
    assert_eq!(a, derived_mac(UID, "default"));
    assert!(a.starts_with("02:"));
    assert_eq!(normalize_mac(&a).as_deref(), Some(a.as_str()));
    assert_ne!(a, derived_mac(UID, "other"));
    assert_ne!(a, derived_mac("another-uid", "default"));
}

#[test]
fn text_and_attributes_are_escaped() {
    let mut out = String::new();
    Element::new("e")
        .attr("a", "x'y\"z<&>\n")
        .text("a<b & 'c' \u{1}")
        .render(&mut out, 0);
    assert_eq!(
        out,
        "<e a='x&apos;y&quot;z&lt;&amp;&gt;&#10;'>a&lt;b &amp; 'c' \u{FFFD}</e>\n"
    );
    let doc = roxmltree::Document::parse(&out).unwrap();
    assert_eq!(doc.root_element().attribute("a"), Some("x'y\"z<&>\n"));
}

#[test]
fn firmware_serial_is_escaped_and_checked() {
    let spec = format!("{MEM}    firmware: {{serial: \"a&b<c>'d\"}}\n");
    let xml = build(&spec).unwrap();
    assert!(
        xml.contains("<entry name='serial'>a&amp;b&lt;c&gt;'d</entry>"),
        "{xml}"
    );
    assert!(xml.contains("<smbios mode='sysinfo'/>"));
    let spec = format!("{MEM}    firmware: {{serial: \"a\\u0001\"}}\n");
    assert_eq!(field(build(&spec), true), "spec.domain.firmware.serial");
}

#[test]
fn owner_round_trips_through_the_domain_xml() {
    let xml = build(MEM).unwrap();
    assert_eq!(
        parse_owner(&xml),
        Some(DomainOwner {
            namespace: "ns1".into(),
            name: "vm1".into(),
            uid: UID.into(),
            node: "node-a".into(),
        })
    );
}

#[test]
fn owner_from_libvirts_metadata_element() {
    // virDomainGetMetadata re-serialises with double quotes; the prefix may differ.
    let element = r#"<iv:vmi xmlns:iv="https://ironvirt.io/domain/v1" namespace="default" name="vmi-busybox" uid="u-1" node="node-a"/>"#;
    assert_eq!(
        parse_owner(element),
        Some(DomainOwner {
            namespace: "default".into(),
            name: "vmi-busybox".into(),
            uid: "u-1".into(),
            node: "node-a".into(),
        })
    );
    let default_ns =
        r#"<vmi xmlns="https://ironvirt.io/domain/v1" namespace="a" name="b" uid="c" node="d"/>"#;
    assert_eq!(parse_owner(default_ns).map(|o| o.node), Some("d".into()));
    let missing = r#"<ironvirt:vmi xmlns:ironvirt="https://ironvirt.io/domain/v1" namespace="a" name="b" uid="c"/>"#;
    assert_eq!(parse_owner(missing), None);
    let other_ns = r#"<ironvirt:vmi xmlns:ironvirt="https://example.com/" namespace="a" name="b" uid="c" node="d"/>"#;
    assert_eq!(parse_owner(other_ns), None);
    assert_eq!(parse_owner("<domain><name>x</name></domain>"), None);
    assert_eq!(parse_owner("not xml <"), None);
    assert_eq!(parse_owner(""), None);
}

const LIVE: &str = r#"<domain type='qemu' id='3' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>ironvirt-default_vmi-busybox</name>
  <uuid>6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b</uuid>
  <metadata>
<ironvirt:vmi xmlns:ironvirt="https://ironvirt.io/domain/v1" namespace="default" name="vmi-busybox" uid="6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b" node="node-a"/>
  </metadata>
  <devices>
<emulator>/usr/bin/qemu-system-x86_64</emulator>
<interface type='user'>
  <mac address='02:AB:cd:00:00:01'/>
  <model type='virtio'/>
  <alias name='ua-default'/>
  <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
</interface>
<interface type='network'>
  <mac address='52:54:00:12:34:56'/>
  <source network='default' portid='0c0e1b6e' bridge='virbr0'/>
  <target dev='vnet0'/>
  <model type='virtio'/>
  <alias name='ua-lan'/>
</interface>
<serial type='pty'>
  <source path='/dev/pts/3'/>
  <target type='isa-serial' port='0'>
    <model name='isa-serial'/>
  </target>
  <alias name='serial0'/>
</serial>
<graphics type='vnc' socket='/var/lib/libvirt/qemu/domain-7-x/vnc.sock'>
  <listen type='socket' socket='/var/lib/libvirt/qemu/domain-7-x/vnc.sock'/>
</graphics>
  </devices>
  <seclabel type='none' model='none'/>
  <qemu:commandline>
<qemu:arg value='-netdev'/>
<qemu:arg value='user,id=ua-ssh,hostfwd=tcp:127.0.0.1:40022-:22'/>
<qemu:arg value='-device'/>
<qemu:arg value='virtio-net-pci,netdev=ua-ssh,mac=02:00:00:00:00:02,bootindex=1'/>
  </qemu:commandline>
</domain>
"#;

#[test]
fn live_facts_of_a_running_domain() {
    let facts = parse_live(LIVE);
    assert_eq!(
        facts.vnc_socket.as_deref(),
        Some(Path::new("/var/lib/libvirt/qemu/domain-7-x/vnc.sock"))
    );
    assert_eq!(
        facts.macs,
        [
            ("ua-default".to_owned(), "02:ab:cd:00:00:01".to_owned()),
            ("ua-lan".to_owned(), "52:54:00:12:34:56".to_owned()),
            ("ua-ssh".to_owned(), "02:00:00:00:00:02".to_owned()),
        ]
    );
    assert_eq!(
        parse_owner(LIVE).map(|o| o.name),
        Some("vmi-busybox".into())
    );
}

#[test]
fn live_facts_before_the_domain_runs() {
    // Defined, not running: libvirt has not chosen the socket yet.
    let defined = LIVE.replace(" socket='/var/lib/libvirt/qemu/domain-7-x/vnc.sock'>", ">");
    assert_eq!(parse_live(&defined).vnc_socket, None);
    let relative = LIVE.replace("socket='/var/lib", "socket='var/lib");
    assert_eq!(parse_live(&relative).vnc_socket, None);
    assert_eq!(parse_live("<domain"), LiveFacts::default());
    assert_eq!(parse_live(""), LiveFacts::default());
    assert_eq!(parse_live("<domain/>"), LiveFacts::default());
}

#[test]
fn owner_from_libvirt_metadata_call_without_namespace() {
    let xml = r#"<vmi namespace="default" name="v" uid="u" node="n"/>"#;
    let o = parse_owner_element(xml).unwrap();
    assert_eq!(
        (o.namespace.as_str(), o.uid.as_str(), o.node.as_str()),
        ("default", "u", "n")
    );
    assert!(parse_owner_element("<other name='x'/>").is_none());
    assert!(parse_owner_element(r#"<vmi name="v"/>"#).is_none());
}

#[test]
fn the_serial_console_is_a_socket_the_handler_reads_or_a_pty() {
    let xml = build(MEM).unwrap();
    let socket = format!("<source mode='bind' path='/run/ironvirt/console/{UID}.sock'/>");
    assert!(xml.contains("<serial type='unix'>"), "{xml}");
    assert!(xml.contains("<console type='unix'>"), "{xml}");
    assert_eq!(xml.matches(&socket).count(), 2, "{xml}");
    // What the handler reads back from the live XML.
    assert_eq!(
        parse_live(&xml).serial_socket,
        Some(PathBuf::from(format!("/run/ironvirt/console/{UID}.sock")))
    );
    // Without a socket (libvirt's test driver): a pty, which has no path.
    let pty = domain_xml(
        &vmi(MEM),
        &host(),
        &DomainInputs {
            console_socket: None,
            ..inputs(&[])
        },
    )
    .unwrap();
    assert!(pty.contains("<serial type='pty'>"), "{pty}");
    assert_eq!(parse_live(&pty).serial_socket, None);
    // No serial console at all: neither.
    let none = build(&format!(
        "{MEM}    devices: {{autoattachSerialConsole: false}}\n"
    ))
    .unwrap();
    assert!(!none.contains("<serial"), "{none}");
}

#[test]
fn a_kernel_boot_boots_the_cached_kernel_and_needs_it() {
    let spec = format!(
        "{MEM}    firmware:\n      kernelBoot:\n        kernelArgs: console=ttyS0 quiet\n        container: {{image: quay.io/x/k, kernelPath: /boot/vmlinuz, initrdPath: /boot/initrd}}\n"
    );
    // The handler did not get the kernel: refused, never booted from disk.
    let err = build(&spec).unwrap_err();
    assert!(err.to_string().contains("kernelBoot"), "{err}");
    let files = KernelFiles {
        kernel: "/cache/k/disk".into(),
        initrd: Some("/cache/i/disk".into()),
        cmdline: Some("console=ttyS0 quiet".into()),
    };
    let inputs = DomainInputs {
        kernel_boot: Some(files),
        ..inputs(&[])
    };
    let xml = domain_xml(&vmi(&spec), &host(), &inputs).unwrap();
    assert!(
        xml.contains("<kernel>/cache/k/disk</kernel>\n    <initrd>/cache/i/disk</initrd>\n    <cmdline>console=ttyS0 quiet</cmdline>"),
        "{xml}"
    );
    assert!(!xml.contains("<boot dev="), "{xml}");
    // kernelArgs without a kernel: refused, not dropped.
    let args = format!("{MEM}    firmware: {{kernelBoot: {{kernelArgs: x}}}}\n");
    assert_eq!(
        field(build(&args), true),
        "spec.domain.firmware.kernelBoot.kernelArgs"
    );
    // Files without a kernelBoot in the spec are a handler bug: refused.
    assert!(domain_xml(&vmi(MEM), &host(), &inputs).is_err());
}

// ---------------------------------------------------------------------------
// Features, clock, inputs, TPM, video, balloon, chassis, CPU features

#[test]
fn features_follow_the_spec() {
    let spec = format!(
        "{MEM}    features:\n      acpi: {{enabled: false}}\n      apic: {{endOfInterrupt: true}}\n      smm: {{}}\n      kvm: {{hidden: true}}\n      pvspinlock: {{enabled: false}}\n      hyperv: {{relaxed: {{}}, spinlocks: {{spinlocks: 8191}}, vendorid: {{vendorid: ironvirt}}, synictimer: {{direct: {{}}}}}}\n"
    );
    let kvm = HostEnv {
        domain_type: DomainType::Kvm,
        ..host()
    };
    // Under TCG the synthetic timers (which need the VP index) are refused.
    assert_eq!(
        field(domain_xml(&vmi(&spec), &host(), &inputs(&[])), false),
        "spec.domain.features.hyperv.synictimer"
    );
    let xml = domain_xml(&vmi(&spec), &kvm, &inputs(&[])).unwrap();
    assert!(!xml.contains("<acpi/>"), "{xml}");
    for want in [
        "<apic eoi='on'/>",
        "<relaxed state='on'/>",
        "<spinlocks state='on' retries='8191'/>",
        "<vendor_id state='on' value='ironvirt'/>",
        "<stimer state='on'>",
        "<direct state='on'/>",
        "<hidden state='on'/>",
        "<pvspinlock state='off'/>",
        "<smm state='on'/>",
    ] {
        assert!(xml.contains(want), "{want} missing from {xml}");
    }
}

#[test]
fn secure_boot_without_smm_and_vendorid_without_value_are_invalid() {
    let spec = format!(
        "{MEM}    firmware: {{bootloader: {{efi: {{}}}}}}\n    features: {{smm: {{enabled: false}}}}\n"
    );
    let err = domain_xml(&vmi(&spec), &ovmf_host(true), &inputs(&[]));
    assert_eq!(field(err, true), "spec.domain.features.smm.enabled");
    let spec = format!("{MEM}    features: {{hyperv: {{vendorid: {{}}}}}}\n");
    assert_eq!(
        field(build(&spec), true),
        "spec.domain.features.hyperv.vendorid.vendorid"
    );
}

#[test]
fn clock_offsets_and_timers() {
    let xml = build(&format!(
        "{MEM}    clock: {{utc: {{offsetSeconds: -3600}}, timer: {{hpet: {{present: false}}, pit: {{tickPolicy: delay}}, rtc: {{tickPolicy: catchup, track: wall}}, kvm: {{}}, hyperv: {{}}}}}}\n"
    ))
    .unwrap();
    assert!(
        xml.contains("<clock offset='variable' adjustment='-3600' basis='utc'>"),
        "{xml}"
    );
    for want in [
        "<timer name='hpet' present='no'/>",
        "<timer name='kvmclock' present='yes'/>",
        "<timer name='pit' present='yes' tickpolicy='delay'/>",
        "<timer name='rtc' present='yes' tickpolicy='catchup' track='wall'/>",
        "<timer name='hypervclock' present='yes'/>",
    ] {
        assert!(xml.contains(want), "{want} missing from {xml}");
    }
    let tz = build(&format!("{MEM}    clock: {{timezone: Europe/Paris}}\n")).unwrap();
    assert!(
        tz.contains("<clock offset='timezone' timezone='Europe/Paris'/>"),
        "{tz}"
    );
    let bad = format!("{MEM}    clock: {{timer: {{rtc: {{tickPolicy: merge}}}}}}\n");
    assert_eq!(
        field(build(&bad), true),
        "spec.domain.clock.timer.rtc.tickPolicy"
    );
    let both = format!("{MEM}    clock: {{utc: {{}}, timezone: UTC}}\n");
    assert_eq!(field(build(&both), true), "spec.domain.clock");
}

#[test]
fn inputs_tpm_video_and_balloon() {
    let xml = build(&format!(
        "{MEM}    devices:\n      inputs: [{{name: tab, type: tablet}}, {{name: kbd, type: keyboard, bus: virtio}}]\n      tpm: {{}}\n      video: {{type: virtio}}\n      autoattachMemBalloon: true\n"
    ))
    .unwrap();
    for want in [
        "<input type='tablet' bus='usb'>\n      <alias name='ua-tab'/>",
        "<input type='keyboard' bus='virtio'>",
        "<tpm model='tpm-crb'>\n      <backend type='emulator' version='2.0'/>",
        "<model type='virtio'/>",
        "<memballoon model='virtio'/>",
    ] {
        assert!(xml.contains(want), "{want} missing from {xml}");
    }
    let auto = build(&format!(
        "{MEM}    devices: {{autoattachInputDevice: true}}\n"
    ))
    .unwrap();
    assert!(auto.contains("<input type='tablet' bus='usb'/>"), "{auto}");
    let off = build(&format!("{MEM}    devices: {{tpm: {{enabled: false}}}}\n")).unwrap();
    assert!(!off.contains("<tpm"), "{off}");
    let no_swtpm = HostEnv {
        swtpm: false,
        ..host()
    };
    let err = domain_xml(
        &vmi(&format!("{MEM}    devices: {{tpm: {{}}}}\n")),
        &no_swtpm,
        &inputs(&[]),
    );
    assert_eq!(field(err, false), "spec.domain.devices.tpm");
}

#[test]
fn chassis_goes_to_sysinfo() {
    let xml = build(&format!(
        "{MEM}    chassis: {{manufacturer: Acme, asset: A-1}}\n"
    ))
    .unwrap();
    assert!(xml.contains("<smbios mode='sysinfo'/>"), "{xml}");
    assert!(
        xml.contains("<chassis>\n      <entry name='manufacturer'>Acme</entry>\n      <entry name='asset'>A-1</entry>\n    </chassis>"),
        "{xml}"
    );
    assert!(!xml.contains("name='serial'"), "{xml}");
}

#[test]
fn cpu_features_need_a_model_under_tcg() {
    let spec =
        format!("{MEM}    cpu: {{features: [{{name: vmx, policy: disable}}, {{name: pcid}}]}}\n");
    assert_eq!(field(build(&spec), false), "spec.domain.cpu.features");
    let named = spec.replace("cpu: {", "cpu: {model: Westmere, ");
    let xml = build(&named).unwrap();
    assert!(
        xml.contains("<feature policy='disable' name='vmx'/>"),
        "{xml}"
    );
    assert!(
        xml.contains("<feature policy='require' name='pcid'/>"),
        "{xml}"
    );
}

#[test]
fn disk_error_policy_goes_to_the_driver() {
    let spec = format!(
        "{MEM}    devices:\n      disks: [{{name: a, errorPolicy: report}}]\n  volumes:\n  - {{name: a, emptyDisk: {{capacity: 1Gi}}}}\n"
    );
    let xml = domain_xml(&vmi(&spec), &host(), &inputs(&["a"])).unwrap();
    assert!(xml.contains("error_policy='report'"), "{xml}");
}
