//! Property: generated VM and VMI specs (issue #20, "bad input").
//!
//! Each generated spec goes through the admission path in process: the
//! mutating webhook's defaulting ([`mutate_vmi`]), the validating webhook's
//! checks ([`validate::vmi_spec`], [`validate::vm_spec`]) and, when admitted,
//! the handler's domain XML ([`domxml::domain_xml`]). Properties: nothing
//! panics; every rejection names a field under `spec` and says why; every
//! domain XML of an admitted spec passes libvirt's own RELAX NG schema
//! (`xmllint --relaxng /usr/share/libvirt/schemas/domain.rng`, in batches);
//! and the handler refuses no admitted spec except for what depends on the
//! node (KVM).
//!
//! No test bed: no kube-apiserver, no libvirtd. The webhook's volume-policy
//! check (hostDisk roots, sizes) is crate-private and not exercised here.
//!
//! `IRONVIRT_SPEC_CASES` sets the case count (default 2000, about 2 s; `make fuzz-specs`
//! runs 10,000), `IRONVIRT_SPEC_SEED` the seed (default 0), so CI is
//! reproducible.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use ironvirt_apiserver_subresources::admission::{Identity, mutate_vmi};
use ironvirt_crds::validate::{self, FieldError};
use ironvirt_crds::{VirtualMachineInstance, VirtualMachineSpec};
use ironvirt_handler::domxml::{
    self, DomainInputs, DomainType, HostEnv, ImageFormat, Ovmf, ResolvedVolume, XmlError,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{Map, Value, json};

const DEFAULT_CASES: u32 = 2000;
const SCHEMA: &str = "/usr/share/libvirt/schemas/domain.rng";
const UID: &str = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b";
/// Names shared by disks, volumes, interfaces and networks, so references
/// sometimes match and sometimes do not.
const DISK_NAMES: &[&str] = &["root", "data", "cloudinit", "scratch"];
const NET_NAMES: &[&str] = &["default", "net1"];

// ---------------------------------------------------------------- strategies

fn pick(values: &'static [&'static str]) -> impl Strategy<Value = Value> + Clone {
    proptest::sample::select(values).prop_map(|s| Value::String(s.to_owned()))
}

/// Usually one of `usual`, sometimes one of `odd`.
fn mostly(
    usual: &'static [&'static str],
    odd: &'static [&'static str],
) -> impl Strategy<Value = Value> + Clone {
    prop_oneof![30 => pick(usual), 1 => pick(odd)]
}

/// Whether a named device has its counterpart: a disk its volume, an
/// interface its network.
#[derive(Clone, Copy, Debug)]
enum Pairing {
    Both,
    DeviceOnly,
    SourceOnly,
    Mismatched,
    BadName,
}

fn pairing() -> impl Strategy<Value = Pairing> + Clone {
    prop_oneof![
        20 => Just(Pairing::Both),
        1 => Just(Pairing::DeviceOnly),
        1 => Just(Pairing::SourceOnly),
        1 => Just(Pairing::Mismatched),
        1 => Just(Pairing::BadName),
    ]
}

/// `(device, source)` lists, the device and its source named alike unless
/// the pairing says otherwise.
fn paired<D, S>(
    names: &'static [&'static str],
    max: usize,
    device: D,
    source: S,
) -> impl Strategy<Value = (Vec<Value>, Vec<Value>)> + Clone
where
    D: Strategy<Value = Value> + Clone + 'static,
    S: Strategy<Value = Value> + Clone + 'static,
{
    proptest::sample::subsequence(names, 0..=max)
        .prop_flat_map(move |chosen| {
            chosen
                .into_iter()
                .map(|n| (Just(n), device.clone(), source.clone(), pairing()))
                .collect::<Vec<_>>()
        })
        .prop_map(|items| {
            let mut devices = Vec::new();
            let mut sources = Vec::new();
            for (name, mut d, mut s, p) in items {
                let (dn, sn) = match p {
                    Pairing::Mismatched => (name.to_owned(), format!("{name}-other")),
                    Pairing::BadName => ("Bad_Name".to_owned(), "Bad_Name".to_owned()),
                    _ => (name.to_owned(), name.to_owned()),
                };
                named(&mut d, dn);
                named(&mut s, sn);
                if !matches!(p, Pairing::SourceOnly) {
                    devices.push(d);
                }
                if !matches!(p, Pairing::DeviceOnly) {
                    sources.push(s);
                }
            }
            (devices, sources)
        })
}

fn named(v: &mut Value, name: String) {
    if let Some(m) = v.as_object_mut() {
        m.insert("name".into(), Value::String(name));
    }
}

fn count() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        12 => (1u64..=4).prop_map(Value::from),
        2 => proptest::sample::select(&[0u64, 8, 64, 1000, 4_294_967_295][..]).prop_map(Value::from),
        1 => Just(json!(-1)),
    ]
}

fn memory_quantity() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        30 => pick(&["64Mi", "128Mi", "1Gi", "512M", "2G"]),
        1 => pick(&["1025", "0", "-1Mi", "lots", "1.5Gi", "100Ti", "64mi", "", "1e3", "8Ei"]),
        1 => Just(json!(67_108_864)),
    ]
}

fn cpu_quantity() -> impl Strategy<Value = Value> + Clone {
    mostly(&["1", "500m", "2", "100"], &["0", "x", "-1"])
}

/// `Some(v)` or absent, as an optional JSON field.
fn opt<S: Strategy<Value = Value> + Clone>(s: S) -> impl Strategy<Value = Option<Value>> + Clone {
    proptest::option::weighted(0.5, s)
}

/// An object of the present fields.
fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect::<Map<_, _>>(),
    )
}

fn cpu() -> impl Strategy<Value = Value> + Clone {
    (
        opt(count()),
        opt(count()),
        opt(count()),
        opt(pick(&[
            "host-model",
            "host-passthrough",
            "qemu64",
            "Haswell",
            "",
        ])),
    )
        .prop_map(|(cores, sockets, threads, model)| {
            object(vec![
                ("cores", cores),
                ("sockets", sockets),
                ("threads", threads),
                ("model", model),
            ])
        })
}

fn resources() -> impl Strategy<Value = Value> + Clone {
    (
        opt(memory_quantity()),
        opt(cpu_quantity()),
        opt(memory_quantity()),
        opt(cpu_quantity()),
    )
        .prop_map(|(rm, rc, lm, lc)| {
            let requests = object(vec![("memory", rm), ("cpu", rc)]);
            let limits = object(vec![("memory", lm), ("cpu", lc)]);
            json!({"requests": requests, "limits": limits})
        })
}

fn firmware() -> impl Strategy<Value = Value> + Clone {
    let bootloader = prop_oneof![
        Just(json!({"bios": {}})),
        any::<bool>().prop_map(|s| json!({"bios": {"useSerial": s}})),
        Just(json!({"efi": {}})),
        any::<bool>().prop_map(|s| json!({"efi": {"secureBoot": s}})),
        Just(json!({"bios": {}, "efi": {}})),
    ];
    (
        opt(bootloader),
        opt(mostly(&["serial-123"], &["", "a b<c>&'\""])),
        opt(mostly(
            &["5d307ca9-b3ef-428c-8861-06e72d69f223"],
            &["not-a-uuid", ""],
        )),
    )
        .prop_map(|(bootloader, serial, uuid)| {
            object(vec![
                ("bootloader", bootloader),
                ("serial", serial),
                ("uuid", uuid),
            ])
        })
}

fn disk() -> impl Strategy<Value = Value> + Clone {
    let bus = opt(mostly(
        &["virtio", "sata", "scsi", "usb"],
        &["ide", "floppy"],
    ));
    let target = (
        prop_oneof![
            20 => proptest::sample::select(&["disk", "cdrom", "lun", "none"][..]),
            1 => Just("two"),
        ],
        bus,
        opt(any::<bool>().prop_map(Value::from)),
    )
        .prop_map(|(kind, bus, readonly)| {
            let t = object(vec![("bus", bus), ("readonly", readonly)]);
            match kind {
                "none" => None,
                "two" => Some(json!({"disk": t, "cdrom": {}})),
                k => Some(json!({ k: t })),
            }
        });
    (
        target,
        opt(prop_oneof![
            20 => (1u64..=4).prop_map(Value::from),
            1 => Just(json!(0)),
            1 => Just(json!(-3))
        ]),
        opt(mostly(&["none", "writethrough", "writeback"], &["unsafe"])),
        opt(mostly(&["ser-1"], &["", "x y"])),
        opt(pick(&["native", "threads"])),
    )
        .prop_map(|(target, boot, cache, serial, io)| {
            let mut d = object(vec![
                ("bootOrder", boot),
                ("cache", cache),
                ("serial", serial),
                ("io", io),
            ]);
            if let (Some(t), Some(m)) = (target, d.as_object_mut()) {
                m.extend(t.as_object().cloned().unwrap_or_default());
            }
            d
        })
}

fn interface() -> impl Strategy<Value = Value> + Clone {
    let port = (
        prop_oneof![
            10 => Just(json!(22)),
            10 => Just(json!(80)),
            1 => Just(json!(0)),
            1 => Just(json!(65536)),
            1 => Just(json!(-1))
        ],
        opt(mostly(&["TCP", "UDP"], &["SCTP"])),
        opt(pick(&["ssh", "http"])),
    )
        .prop_map(|(port, protocol, name)| {
            object(vec![
                ("port", Some(port)),
                ("protocol", protocol),
                ("name", name),
            ])
        });
    (
        prop_oneof![
            20 => proptest::sample::select(&["masquerade", "bridge"][..]),
            1 => proptest::sample::select(&["sriov", "none", "both"][..]),
        ],
        opt(mostly(
            &["virtio", "e1000", "e1000e", "rtl8139"],
            &["ne2k_pci", "bogus"],
        )),
        opt(proptest::collection::vec(port, 0..3).prop_map(Value::from)),
        opt(mostly(
            &["02:00:00:00:00:01", "de:ad:be:ef:00:01"],
            &["01:00:5e:00:00:01", "zz:zz", ""],
        )),
    )
        .prop_map(|(binding, model, ports, mac)| {
            let mut i = object(vec![
                ("model", model),
                ("ports", ports),
                ("macAddress", mac),
            ]);
            if let Some(m) = i.as_object_mut() {
                match binding {
                    "none" => {}
                    "both" => {
                        m.insert("masquerade".into(), json!({}));
                        m.insert("bridge".into(), json!({}));
                    }
                    b => {
                        m.insert(b.into(), json!({}));
                    }
                }
            }
            i
        })
}

fn volume() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        5 => mostly(&["quay.io/containerdisks/fedora:40", "registry:5000/x"], &[""])
            .prop_map(|i| json!({"containerDisk": {"image": i}})),
        5 => mostly(&["#cloud-config\n"], &[""])
            .prop_map(|u| json!({"cloudInitNoCloud": {"userData": u}})),
        5 => mostly(&["1Gi", "10Mi"], &["0", "lots"])
            .prop_map(|c| json!({"emptyDisk": {"capacity": c}})),
        5 => (
            mostly(&["/var/lib/images/a.img"], &["relative.img", "/../etc/shadow", ""]),
            mostly(&["Disk", "DiskOrCreate"], &["Other"]),
            opt(mostly(&["1Gi"], &["x"])),
        )
            .prop_map(|(p, t, c)| json!({
                "hostDisk": object(vec![("path", Some(p)), ("type", Some(t)), ("capacity", c)])
            })),
        1 => Just(json!({})),
        1 => Just(json!({"containerDisk": {"image": "a"}, "emptyDisk": {"capacity": "1Gi"}})),
    ]
}

fn network() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        10 => Just(json!({"pod": {}})),
        1 => Just(json!({"multus": {"networkName": "ns/net"}})),
        1 => Just(json!({})),
    ]
}

fn devices() -> impl Strategy<Value = Value> + Clone {
    let input = (
        mostly(&["tablet"], &["keyboard", "mouse"]),
        opt(mostly(&["usb", "virtio"], &["ps2"])),
    )
        .prop_map(|(t, bus)| {
            object(vec![
                ("name", Some(json!("in0"))),
                ("type", Some(t)),
                ("bus", bus),
            ])
        });
    let watchdog = mostly(&["poweroff", "reset", "shutdown"], &["bogus"])
        .prop_map(|a| json!({"name": "wd", "i6300esb": {"action": a}}));
    let autoattach = (
        opt(any::<bool>().prop_map(Value::from)),
        opt(any::<bool>().prop_map(Value::from)),
        opt(any::<bool>().prop_map(Value::from)),
        opt(any::<bool>().prop_map(Value::from)),
        opt(any::<bool>().prop_map(Value::from)),
    );
    (
        autoattach,
        opt(Just(json!({}))),
        opt(proptest::collection::vec(input, 0..2).prop_map(Value::from)),
        rare(watchdog),
        rare(prop_oneof![
            Just(json!({"frobnicate": true})),
            Just(json!({"gpus": [{"name": "g", "deviceName": "nvidia.com/GP"}]})),
            Just(json!({"hostDevices": [{"name": "h", "deviceName": "x/y"}]})),
            Just(json!({"tpm": {}})),
            Just(json!({"sound": {"name": "s"}})),
        ]),
    )
        .prop_map(|(auto, rng, inputs, watchdog, extra)| {
            let (pod, serial, graphics, balloon, input) = auto;
            let mut d = object(vec![
                ("autoattachPodInterface", pod),
                ("autoattachSerialConsole", serial),
                ("autoattachGraphicsDevice", graphics),
                ("autoattachMemBalloon", balloon),
                ("autoattachInputDevice", input),
                ("rng", rng),
                ("inputs", inputs),
                ("watchdog", watchdog),
            ]);
            merge(&mut d, extra);
            d
        })
}

/// Sometimes `Some(v)`, mostly absent: for what makes a spec invalid.
fn rare<S: Strategy<Value = Value> + Clone>(s: S) -> impl Strategy<Value = Option<Value>> + Clone {
    proptest::option::weighted(0.08, s)
}

/// `Some(list)` unless empty.
fn list(items: Vec<Value>) -> Option<Value> {
    (!items.is_empty()).then_some(Value::Array(items))
}

fn merge(into: &mut Value, extra: Option<Value>) {
    if let (Some(m), Some(Value::Object(e))) = (into.as_object_mut(), extra) {
        m.extend(e);
    }
}

/// A VMI spec as users write them, odd values included.
fn vmi_spec() -> impl Strategy<Value = Value> + Clone {
    let domain = (
        opt(cpu()),
        proptest::option::weighted(0.9, memory_quantity().prop_map(|g| json!({ "guest": g }))),
        proptest::option::weighted(0.3, resources()),
        opt(firmware()),
        opt(mostly(&["q35", "pc-q35-8.2"], &["pc", "", "virt"]).prop_map(|t| json!({ "type": t }))),
        devices(),
        paired(DISK_NAMES, 4, disk(), volume()),
        paired(NET_NAMES, 2, interface(), network()),
        rare(prop_oneof![
            Just(json!({"features": {"acpi": {}, "smm": {"enabled": true}}})),
            Just(json!({"clock": {"utc": {}, "timer": {"rtc": {"tickPolicy": "catchup"}}}})),
            Just(json!({"frobnicate": 1})),
            Just(json!({"ioThreadsPolicy": "auto"})),
        ]),
    )
        .prop_map(
            |(cpu, memory, resources, firmware, machine, mut devices, disks, nets, extra)| {
                let (disks, volumes) = disks;
                let (ifaces, networks) = nets;
                merge(
                    &mut devices,
                    Some(object(vec![
                        ("disks", list(disks)),
                        ("interfaces", list(ifaces)),
                    ])),
                );
                let mut d = object(vec![
                    ("cpu", cpu),
                    ("memory", memory),
                    ("resources", resources),
                    ("firmware", firmware),
                    ("machine", machine),
                    ("devices", Some(devices)),
                ]);
                merge(&mut d, extra);
                (d, list(volumes), list(networks))
            },
        );
    (
        domain,
        rare(prop_oneof![
            Just(json!({"hostname": "vm-1"})),
            Just(json!({"terminationGracePeriodSeconds": 0})),
            Just(json!({"evictionStrategy": "LiveMigrate"})),
            Just(json!({"unknownTopLevel": {"x": 1}})),
        ]),
    )
        .prop_map(|((domain, volumes, networks), extra)| {
            let mut s = object(vec![
                ("domain", Some(domain)),
                ("volumes", volumes),
                ("networks", networks),
            ]);
            merge(&mut s, extra);
            s
        })
}

/// A VMI or a VM wrapping one.
#[derive(Clone, Debug)]
enum Generated {
    Vmi(Value),
    Vm(Value),
}

fn generated() -> impl Strategy<Value = Generated> {
    let vm = (
        vmi_spec(),
        rare(any::<bool>().prop_map(Value::from)),
        opt(mostly(
            &["Always", "Halted", "Manual", "RerunOnFailure", "Once"],
            &["Sometimes"],
        )),
    )
        .prop_map(|(spec, running, strategy)| {
            Generated::Vm(object(vec![
                (
                    "template",
                    Some(json!({"metadata": {"labels": {"app": "x"}}, "spec": spec})),
                ),
                ("running", running),
                ("runStrategy", strategy),
            ]))
        });
    prop_oneof![
        3 => vmi_spec().prop_map(Generated::Vmi),
        1 => vm,
    ]
}

// ---------------------------------------------------------------- the checks

/// What one case produced, for the summary and the schema check.
#[derive(Default)]
struct Tally {
    rejected: u32,
    /// Rejections by the field of their first error (indices dropped).
    rejected_at: BTreeMap<String, u32>,
    refused_by_handler: BTreeMap<String, u32>,
    /// (domain XML, the spec it came from)
    xmls: Vec<(String, String)>,
}

/// `field` without its list indices: `disks[]` for `disks[2]`.
fn unindexed(field: &str) -> String {
    field
        .split('[')
        .map(|part| part.split_once(']').map_or(part, |(_, rest)| rest))
        .collect::<Vec<_>>()
        .join("[]")
}

impl Tally {
    fn reject(&mut self, field: &str) {
        self.rejected += 1;
        *self.rejected_at.entry(unindexed(field)).or_default() += 1;
    }

    fn add(&mut self, other: Tally) {
        self.rejected += other.rejected;
        for (k, v) in other.rejected_at {
            *self.rejected_at.entry(k).or_default() += v;
        }
        for (k, v) in other.refused_by_handler {
            *self.refused_by_handler.entry(k).or_default() += v;
        }
        self.xmls.extend(other.xmls);
    }
}

fn check_errors(errors: &[FieldError], what: &str, spec: &Value) -> Result<(), TestCaseError> {
    for e in errors {
        prop_assert!(
            e.field == "spec" || e.field.starts_with("spec.") || e.field.starts_with("spec["),
            "{what}: error without a field path under spec: {e:?}\nspec: {spec}"
        );
        prop_assert!(
            !e.message.trim().is_empty(),
            "{what}: error without a message: {e:?}\nspec: {spec}"
        );
    }
    Ok(())
}

/// The key of a spec that does not read (the webhook's error at `spec`).
fn unreadable(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    format!(
        "spec unreadable: {}",
        msg.split(", expected").next().unwrap_or(&msg)
    )
}

/// The VMI object the mutating webhook receives.
fn vmi_object(spec: &Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "ns1", "uid": UID},
        "spec": spec,
    })
}

fn host() -> HostEnv {
    HostEnv {
        domain_type: DomainType::Qemu,
        ovmf: Some(Ovmf {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            secure_code: Some("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into()),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            secure_vars_template: Some("/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into()),
        }),
        default_machine: "q35".into(),
        swtpm: true,
    }
}

/// What the handler's create hands to the XML: a file for every volume.
fn inputs(vmi: &VirtualMachineInstance) -> DomainInputs {
    let volumes = vmi
        .spec
        .volumes
        .iter()
        .flatten()
        .map(|v| {
            let vol = ResolvedVolume {
                path: PathBuf::from(format!("/var/lib/ironvirt/vmis/{UID}/{}.qcow2", v.name)),
                format: ImageFormat::Qcow2,
            };
            (v.name.clone(), vol)
        })
        .collect();
    DomainInputs {
        node: "node-a".into(),
        volumes,
        pod_network: Some(format!("/run/ironvirt/net/{UID}/passt.sock").into()),
        nvram: format!("/var/lib/ironvirt/vmis/{UID}/nvram.fd").into(),
        console_socket: Some(format!("/run/ironvirt/console/{UID}.sock").into()),
        kernel_boot: None,
    }
}

/// Defaulting, validation and domain XML of one VMI spec (at `path` in the
/// object the user sent).
fn vmi_case(spec: &Value, tally: &mut Tally) -> Result<(), TestCaseError> {
    let id = Identity {
        namespace: "ns1".into(),
        name: "vm1".into(),
        request_uid: "req-1".into(),
    };
    let mutated = mutate_vmi(&vmi_object(spec), &id, &[]);
    prop_assert!(mutated.conflict.is_none());
    // As the validating webhook: an object that does not read is an error at `spec`.
    let vmi: VirtualMachineInstance = match serde_json::from_value(mutated.object.clone()) {
        Ok(v) => v,
        Err(e) => {
            tally.reject(&unreadable(&e));
            return Ok(());
        }
    };
    let errors = validate::vmi_spec(&vmi.spec, "spec");
    check_errors(&errors, "validate::vmi_spec", spec)?;
    if let Some(e) = errors.first() {
        tally.reject(&e.field);
        return Ok(());
    }
    match domxml::domain_xml(&vmi, &host(), &inputs(&vmi)) {
        Ok(xml) => {
            prop_assert!(xml.contains("<domain"), "no domain element: {xml}");
            tally.xmls.push((xml, mutated.object["spec"].to_string()));
        }
        Err(XmlError::Invalid { field, reason } | XmlError::Unsupported { field, reason }) => {
            prop_assert!(
                field.starts_with("spec") && !reason.is_empty(),
                "handler refusal without a field path: {field}: {reason}\nspec: {spec}"
            );
            *tally
                .refused_by_handler
                .entry(format!("{}: {reason}", unindexed(&field)))
                .or_default() += 1;
        }
    }
    Ok(())
}

fn case(g: &Generated, tally: &mut Tally) -> Result<(), TestCaseError> {
    match g {
        Generated::Vmi(spec) => {
            // The raw spec, before defaulting, must not panic the checks either.
            if let Ok(s) = serde_json::from_value(spec.clone()) {
                check_errors(&validate::vmi_spec(&s, "spec"), "raw vmi_spec", spec)?;
            }
            vmi_case(spec, tally)
        }
        Generated::Vm(spec) => {
            let vm = match serde_json::from_value::<VirtualMachineSpec>(spec.clone()) {
                Ok(vm) => vm,
                Err(e) => {
                    tally.reject(&unreadable(&e));
                    return Ok(());
                }
            };
            let errors = validate::vm_spec(&vm);
            check_errors(&errors, "validate::vm_spec", spec)?;
            if let Some(e) = errors.first() {
                tally.reject(&e.field);
                return Ok(());
            }
            // The VM controller creates the VMI from the template's spec.
            vmi_case(&spec["template"]["spec"], tally)
        }
    }
}

// ---------------------------------------------------------------- the schema

/// The files `xmllint --relaxng` rejects, with its messages.
fn schema_failures(dir: &Path, files: &[PathBuf]) -> Vec<(usize, String)> {
    let mut failures = Vec::new();
    for (chunk_no, chunk) in files.chunks(500).enumerate() {
        let out = Command::new("xmllint")
            .arg("--noout")
            .arg("--relaxng")
            .arg(SCHEMA)
            .args(chunk)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("xmllint (Debian package libxml2-utils): {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        for (i, f) in chunk.iter().enumerate() {
            let shown = f.display().to_string();
            if stderr.contains(&format!("{shown} fails to validate")) {
                let msgs: Vec<&str> = stderr.lines().filter(|l| l.contains(&shown)).collect();
                failures.push((chunk_no * 500 + i, msgs.join("\n")));
            } else {
                assert!(
                    stderr.contains(&format!("{shown} validates")),
                    "xmllint said nothing of {shown}: {stderr}"
                );
            }
        }
    }
    failures
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v}: not a number: {e}")),
        Err(_) => default,
    }
}

#[test]
fn generated_specs_are_admitted_or_refused_by_field_and_give_valid_domain_xml() {
    // The nested strategies' frames are deep in unoptimised builds.
    std::thread::Builder::new()
        .stack_size(256 << 20)
        .spawn(run)
        .expect("spawn")
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

fn run() {
    assert!(
        Path::new(SCHEMA).exists(),
        "{SCHEMA} missing: install libvirt (make deps)"
    );
    // The schema check itself: a domain libvirt refuses must be reported.
    let probe = tempfile::tempdir().expect("temp dir");
    let bad = PathBuf::from("bad.xml");
    std::fs::write(
        probe.path().join(&bad),
        "<domain type='qemu'><name>x</name><frobnicate/></domain>",
    )
    .expect("write probe");
    assert_eq!(
        schema_failures(probe.path(), std::slice::from_ref(&bad)).len(),
        1,
        "xmllint --relaxng did not refuse an invalid domain"
    );
    let cases = u32::try_from(env_u64("IRONVIRT_SPEC_CASES", u64::from(DEFAULT_CASES)))
        .expect("IRONVIRT_SPEC_CASES fits u32");
    let seed = env_u64("IRONVIRT_SPEC_SEED", 0);
    eprintln!(
        "generated specs: {cases} cases, seed {seed} (IRONVIRT_SPEC_CASES, IRONVIRT_SPEC_SEED)"
    );
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let tally = Mutex::new(Tally::default());
    let started = Instant::now();
    let result = runner.run(&generated(), |g| {
        let mut t = Tally::default();
        case(&g, &mut t)?;
        tally.lock().expect("tally").add(t);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let generated_in = started.elapsed();
    let tally = tally.into_inner().expect("tally");
    // Shrinking reruns cases; the schema check covers what was kept.
    let dir = tempfile::tempdir().expect("temp dir");
    let files: Vec<PathBuf> = tally
        .xmls
        .iter()
        .enumerate()
        .map(|(i, (xml, _))| {
            let f = PathBuf::from(format!("d{i}.xml"));
            std::fs::write(dir.path().join(&f), xml).expect("write xml");
            f
        })
        .collect();
    let failures = schema_failures(dir.path(), &files);
    let refused: u32 = tally.refused_by_handler.values().sum();
    eprintln!(
        "generated specs: {} rejected by validation {:?}, {refused} refused by the handler {:?}, \
         {} domain XMLs checked against {SCHEMA}; {:.1?} generating, {:.1?} in all",
        tally.rejected,
        tally.rejected_at,
        tally.refused_by_handler,
        files.len(),
        generated_in,
        started.elapsed()
    );
    // What admission lets through, the handler builds: the only refusals
    // left are the node's (this host runs TCG, and only a KVM node could run
    // host-passthrough), which admission cannot know.
    let spec_only: Vec<&String> = tally
        .refused_by_handler
        .keys()
        .filter(|reason| !reason.contains("needs KVM"))
        .collect();
    assert!(
        spec_only.is_empty(),
        "admitted specs the handler refuses for the spec alone (admission must refuse them, with the same field): {spec_only:?}"
    );
    if let Some((first, _)) = failures.first() {
        let mut report = format!(
            "{} of {} domain XMLs fail libvirt's schema; the first:\n",
            failures.len(),
            files.len()
        );
        let (xml, spec) = &tally.xmls[*first];
        report.push_str(&format!("spec: {spec}\nxml:\n{xml}\n"));
        for (i, msg) in failures.iter().take(10) {
            report.push_str(&format!("--- case d{i}.xml: {msg}\n"));
        }
        panic!("{report}");
    }
    assert!(
        !files.is_empty(),
        "no generated spec was admitted: the generator is too hostile"
    );
}
