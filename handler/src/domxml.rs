//! VMI → libvirt domain XML: a pure function of the VMI and facts about the
//! host, unit-tested against golden files in `handler/tests/golden/`.
//!
//! Also the reverse direction for the few facts the handler reads back from a
//! live domain's XML: its ironvirt metadata, the VNC port and the MACs.
//!
//! # Choices
//!
//! - **CPU model.** Under KVM, no model or `host-model` gives
//!   `<cpu mode='host-model'>` (KubeVirt's default), `host-passthrough` gives
//!   `<cpu mode='host-passthrough'>`, and a named model gives
//!   `<cpu mode='custom' match='exact'>` with `<model fallback='allow'>`.
//!   Under TCG (domain type `qemu`) there is no host CPU to copy: no model and
//!   `host-model` use QEMU's default model, `host-passthrough` is refused as
//!   [`XmlError::Unsupported`] (it cannot mean anything without KVM), and a
//!   named model is honoured with `check='none'`, so that libvirt leaves the
//!   features TCG lacks to QEMU (which warns and runs) instead of refusing.
//! - **Memory balloon.** `<memballoon model='none'/>`: nothing in ironvirt reads
//!   balloon statistics or resizes guests, and without the element libvirt
//!   adds a virtio balloon, a PCI device the guest would need a driver for.
//! - **MACs.** An interface without `macAddress` gets a locally administered
//!   unicast MAC (`02:…`) derived from the VMI's uid and the interface name,
//!   so a VMI keeps its MACs across restarts of its domain.
//! - **Port forwards.** libvirt 9.0 forwards ports only with the passt backend,
//!   which the nodes do not have. A masquerade interface with forwarded ports
//!   is therefore not a libvirt `<interface>` but a QEMU `-netdev user` with
//!   `hostfwd=` options and a `-device` NIC, passed with `<qemu:commandline>`;
//!   [`parse_live`] reads its MAC back from there. Masquerade interfaces
//!   without forwards are libvirt `<interface type='user'>`.
//! - **Disk targets.** virtio disks are `vda`, `vdb`, …; sata, scsi and usb
//!   disks share `sda`, `sdb`, … in spec order. SATA and SCSI disks get an
//!   explicit drive address (six ports per SATA controller, all SCSI disks on
//!   the one virtio-scsi controller), since libvirt would otherwise derive it
//!   from the shared target letters and add controllers.
//! - **EFI.** `efi.persistent` does not change the XML: the caller chooses
//!   where [`DomainInputs::nvram`] lives and whether it outlives the domain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::quantity::guest_memory_bytes;
use ironvirt_crds::vmi::{
    Bootloader, Cpu, Devices, Disk, DiskBus, DiskCache, Efi, Interface, Network, PodNetwork,
    PortProtocol,
};
use ironvirt_crds::wire::{bus_name, domain_name};

/// The XML namespace of ironvirt's domain metadata element.
pub const METADATA_NS: &str = "https://ironvirt.io/domain/v1";
/// The prefix used for the metadata element (`<ironvirt:vmi …/>`).
pub const METADATA_PREFIX: &str = "ironvirt";

/// libvirt's namespace for QEMU command-line passthrough.
const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// What the handler knows about its host that shapes the XML.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEnv {
    /// `qemu` (TCG) or `kvm`.
    pub domain_type: DomainType,
    /// OVMF firmware, when installed; EFI guests need it.
    pub ovmf: Option<Ovmf>,
    /// Machine type used when the VMI sets none (KubeVirt's default is q35).
    pub default_machine: String,
}

/// The hypervisor type of the domain element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DomainType {
    Qemu,
    Kvm,
}

/// OVMF firmware files on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ovmf {
    /// The firmware code (loader), for example /usr/share/OVMF/OVMF_CODE_4M.fd.
    pub code: PathBuf,
    /// The code built with Secure Boot, if installed.
    pub secure_code: Option<PathBuf>,
    /// The variable store template, for example /usr/share/OVMF/OVMF_VARS_4M.fd.
    pub vars_template: PathBuf,
    /// The Secure Boot variable template with enrolled keys, if installed.
    pub secure_vars_template: Option<PathBuf>,
}

/// The on-node file behind each volume, resolved by [`crate::volumes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedVolume {
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: ImageFormat,
}

/// Disk image formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

/// A host port forwarded to a guest port (masquerade interfaces with ports).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    /// The interface it belongs to.
    pub interface: String,
    /// TCP or UDP (lower case in the QEMU option).
    pub protocol: ironvirt_crds::vmi::PortProtocol,
    /// Host port on 127.0.0.1.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

/// Everything [`domain_xml`] needs besides the VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInputs {
    /// The node the domain runs on; recorded in the metadata.
    pub node: String,
    /// The file behind each volume, by volume name.
    pub volumes: BTreeMap<String, ResolvedVolume>,
    /// Host ports forwarded to the guest.
    pub port_forwards: Vec<PortForward>,
    /// Where the EFI variable store of this VMI lives (used only for EFI guests).
    pub nvram: PathBuf,
}

/// Why a VMI cannot become a domain. Each message names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum XmlError {
    /// A field ironvirt knows but cannot honour on this host or at all.
    #[error("{field}: {reason}")]
    Unsupported { field: String, reason: String },
    /// The spec is inconsistent (a disk without volume, a bad quantity, …).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// ironvirt's metadata on a domain: which VMI it belongs to and on which node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
}

/// Builds the domain XML of `vmi` (which must have metadata.namespace, name and uid).
///
/// The output depends only on the arguments, so the same VMI on the same host
/// always gives the same bytes. Every field of the VMI is either honoured or
/// refused with an error naming it; `startStrategy`, scheduling fields and the
/// like do not concern the domain and are left to the caller. The ports of
/// masquerade interfaces are forwarded as `inputs.port_forwards` says: the
/// caller picks the host ports.
pub fn domain_xml(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    inputs: &DomainInputs,
) -> Result<String, XmlError> {
    let id = identity(vmi)?;
    reject_unsupported(vmi)?;
    let no_devices = Devices::default();
    let devices = vmi.spec.domain.devices.as_ref().unwrap_or(&no_devices);
    let serial_console = devices.autoattach_serial_console != Some(false);
    let memory_kib = memory_kib(vmi)?;
    let topology = topology(vmi)?;
    let machine = machine(vmi, host)?;
    let firmware = firmware(vmi, host, &machine, serial_console)?;
    let device_boot = check_boot_orders(vmi)?;
    let (disks, scsi) = disks(vmi, inputs)?;
    let nics = nics(vmi, &id)?;
    let forwards = forwards_by_nic(&nics, &inputs.port_forwards)?;
    let serial_number = serial_number(vmi)?;
    let smbios = serial_number.is_some();

    let mut passthrough = Vec::new();
    let mut interfaces = Vec::new();
    let mut forwarded = 0u8;
    for nic in &nics {
        match forwards.get(nic.name.as_str()) {
            Some(fw) => {
                passthrough.extend(netdev_args(
                    nic,
                    fw,
                    &passthrough_address(&machine, forwarded),
                ));
                forwarded += 1;
            }
            None => interfaces.push(interface_element(nic)),
        }
    }

    let mut domain = Element::new("domain").attr(
        "type",
        match host.domain_type {
            DomainType::Qemu => "qemu",
            DomainType::Kvm => "kvm",
        },
    );
    if !passthrough.is_empty() {
        domain = domain.attr("xmlns:qemu", QEMU_NS);
    }
    let domain = domain
        .child(Element::new("name").text(domain_name(id.namespace, id.name)))
        .child(Element::new("uuid").text(&id.uuid))
        .child(metadata_element(&id, &inputs.node))
        .child(Element::new("memory").attr("unit", "KiB").text(memory_kib))
        .child(
            Element::new("currentMemory")
                .attr("unit", "KiB")
                .text(memory_kib),
        )
        .child(
            Element::new("vcpu")
                .attr("placement", "static")
                .text(topology.vcpus),
        )
        .child_opt(serial_number.map(|s| sysinfo_element(&s, &id.uuid)))
        .child(os_element(
            &machine,
            &firmware,
            &inputs.nvram,
            smbios,
            device_boot,
        )?)
        .child(features_element(&firmware))
        .child(cpu_element(vmi, host, &topology)?)
        .child(Element::new("clock").attr("offset", "utc"))
        .child(Element::new("on_poweroff").text("destroy"))
        .child(Element::new("on_reboot").text("restart"))
        .child(Element::new("on_crash").text("destroy"))
        .child(devices_element(
            devices,
            disks,
            scsi,
            interfaces,
            serial_console,
        ))
        .child_opt((!passthrough.is_empty()).then(|| commandline_element(&passthrough)));

    let mut out = String::new();
    domain.render(&mut out, 0);
    Ok(out)
}

/// Reads ironvirt's metadata element (as returned by libvirt's
/// `virDomainGetMetadata(ELEMENT)`, or a whole domain XML) back into its owner.
///
/// The element is found by its namespace, whatever its prefix. `None` when
/// the XML does not parse, has no such element, or an attribute is missing.
pub fn parse_owner(xml: &str) -> Option<DomainOwner> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let vmi = doc.descendants().find(|n| {
        n.is_element()
            && n.tag_name().namespace() == Some(METADATA_NS)
            && n.tag_name().name() == "vmi"
    })?;
    owner_from(vmi)
}

/// Reads the owner from the element `virDomainGetMetadata(ELEMENT, METADATA_NS)`
/// returns. libvirt strips the namespace from it (`<vmi namespace=… …/>`):
/// the call itself already selected ironvirt's namespace.
pub fn parse_owner_element(xml: &str) -> Option<DomainOwner> {
    let doc = roxmltree::Document::parse(xml).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "vmi" {
        return None;
    }
    owner_from(root)
}

fn owner_from(vmi: roxmltree::Node<'_, '_>) -> Option<DomainOwner> {
    let attr = |name: &str| vmi.attribute(name).map(str::to_owned);
    Some(DomainOwner {
        namespace: attr("namespace")?,
        name: attr("name")?,
        uid: attr("uid")?,
        node: attr("node")?,
    })
}

/// Facts read from a live domain's XML (`virDomainGetXMLDesc`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveFacts {
    /// The VNC port, once the domain runs (libvirt says -1 before).
    pub vnc_port: Option<u16>,
    /// The MAC of each interface, by its alias `ua-<interface name>`, in XML order.
    pub macs: Vec<(String, String)>,
}

/// Parses [`LiveFacts`] from a domain XML.
///
/// Never fails: what cannot be read is left out (an XML that does not parse
/// gives the defaults). MACs come from the `<interface>` elements that have
/// both a MAC and an alias, then from the `-device …,netdev=ua-<name>,mac=…`
/// arguments of `<qemu:commandline>`.
pub fn parse_live(xml: &str) -> LiveFacts {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return LiveFacts::default();
    };
    let root = doc.root_element();
    let devices = root.children().find(|n| n.has_tag_name("devices"));
    let device_children = || devices.into_iter().flat_map(|d| d.children());

    let vnc_port = device_children()
        .find(|n| n.has_tag_name("graphics") && n.attribute("type") == Some("vnc"))
        .and_then(|g| g.attribute("port"))
        .and_then(|p| p.trim().parse::<u16>().ok())
        .filter(|p| *p > 0);

    let mut macs: Vec<(String, String)> = device_children()
        .filter(|n| n.has_tag_name("interface"))
        .filter_map(|iface| {
            let child_attr = |tag: &str, attr: &str| {
                iface
                    .children()
                    .find(|c| c.has_tag_name(tag))
                    .and_then(|c| c.attribute(attr))
            };
            let alias = child_attr("alias", "name")?;
            let mac = child_attr("mac", "address")?;
            Some((alias.to_owned(), mac.to_ascii_lowercase()))
        })
        .collect();

    let args: Vec<&str> = root
        .children()
        .filter(|n| n.has_tag_name((QEMU_NS, "commandline")))
        .flat_map(|c| c.children())
        .filter(|n| n.has_tag_name((QEMU_NS, "arg")))
        .filter_map(|a| a.attribute("value"))
        .collect();
    for pair in args.windows(2) {
        if pair[0] != "-device" {
            continue;
        }
        let options: BTreeMap<&str, &str> = pair[1]
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        if let (Some(netdev), Some(mac)) = (options.get("netdev"), options.get("mac")) {
            macs.push(((*netdev).to_owned(), mac.to_ascii_lowercase()));
        }
    }
    LiveFacts { vnc_port, macs }
}

// ---------------------------------------------------------------------------
// Errors and field paths

const DISKS: &str = "spec.domain.devices.disks";
const INTERFACES: &str = "spec.domain.devices.interfaces";
const EFI: &str = "spec.domain.firmware.bootloader.efi";
const SECURE_BOOT: &str = "spec.domain.firmware.bootloader.efi.secureBoot";

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> XmlError {
    XmlError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unsupported(field: impl Into<String>, reason: impl Into<String>) -> XmlError {
    XmlError::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// True when `s` is a non-empty run of ASCII letters, digits and `extra`.
fn is_token(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

fn path_str<'a>(path: &'a Path, field: &str) -> Result<&'a str, XmlError> {
    path.to_str()
        .ok_or_else(|| invalid(field, format!("{} is not UTF-8", path.display())))
}

// ---------------------------------------------------------------------------
// Identity, metadata and unsupported fields

/// Who the domain belongs to, and its UUID.
struct Identity<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
    uuid: String,
}

fn identity(vmi: &VirtualMachineInstance) -> Result<Identity<'_>, XmlError> {
    fn required<'a>(value: Option<&'a str>, field: &str) -> Result<&'a str, XmlError> {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| invalid(field, "missing"))
    }
    let meta = &vmi.metadata;
    let namespace = required(meta.namespace.as_deref(), "metadata.namespace")?;
    let name = required(meta.name.as_deref(), "metadata.name")?;
    let uid = required(meta.uid.as_deref(), "metadata.uid")?;
    let firmware_uuid = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.uuid.as_deref());
    let uuid = match firmware_uuid {
        Some(u) => uuid(u, "spec.domain.firmware.uuid")?,
        None => uuid(uid, "metadata.uid")?,
    };
    Ok(Identity {
        namespace,
        name,
        uid,
        uuid,
    })
}

/// `s` as a lower-case UUID, if it is one (8-4-4-4-12 hex digits).
fn uuid(s: &str, field: &str) -> Result<String, XmlError> {
    let groups: Vec<&str> = s.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    if lengths == [8, 4, 4, 4, 12] && hex {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(invalid(field, format!("{s:?} is not a UUID")))
    }
}

fn metadata_element(id: &Identity<'_>, node: &str) -> Element {
    Element::new("metadata").child(
        Element::new(format!("{METADATA_PREFIX}:vmi"))
            .attr(format!("xmlns:{METADATA_PREFIX}"), METADATA_NS)
            .attr("namespace", id.namespace)
            .attr("name", id.name)
            .attr("uid", id.uid)
            .attr("node", node),
    )
}

/// Refuses the KubeVirt fields ironvirt does not implement. The CRD rejects
/// them already; this keeps a VMI that slipped through from losing them
/// silently.
fn reject_unsupported(vmi: &VirtualMachineInstance) -> Result<(), XmlError> {
    let spec = &vmi.spec;
    let domain = &spec.domain;
    let cpu = domain.cpu.as_ref();
    let devices = domain.devices.as_ref();
    let present = [
        (
            "spec.domain.cpu.dedicatedCpuPlacement",
            cpu.is_some_and(|c| c.dedicated_cpu_placement.is_some()),
        ),
        (
            "spec.domain.memory.hugepages",
            domain
                .memory
                .as_ref()
                .is_some_and(|m| m.hugepages.is_some()),
        ),
        (
            "spec.domain.firmware.kernelBoot",
            domain
                .firmware
                .as_ref()
                .is_some_and(|f| f.kernel_boot.is_some()),
        ),
        (
            "spec.domain.devices.gpus",
            devices.is_some_and(|d| d.gpus.is_some()),
        ),
        (
            "spec.domain.devices.hostDevices",
            devices.is_some_and(|d| d.host_devices.is_some()),
        ),
        (
            "spec.domain.devices.watchdog",
            devices.is_some_and(|d| d.watchdog.is_some()),
        ),
        (
            "spec.domain.devices.filesystems",
            devices.is_some_and(|d| d.filesystems.is_some()),
        ),
        (
            "spec.domain.devices.tpm",
            devices.is_some_and(|d| d.tpm.is_some()),
        ),
        ("spec.livenessProbe", spec.liveness_probe.is_some()),
        ("spec.readinessProbe", spec.readiness_probe.is_some()),
        (
            "spec.topologySpreadConstraints",
            spec.topology_spread_constraints.is_some(),
        ),
        ("spec.schedulerName", spec.scheduler_name.is_some()),
        ("spec.accessCredentials", spec.access_credentials.is_some()),
    ];
    match present.into_iter().find(|(_, is_set)| *is_set) {
        Some((field, _)) => Err(unsupported(field, "not supported by ironvirt yet")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Memory and CPU

/// The guest memory in KiB, rounded up.
fn memory_kib(vmi: &VirtualMachineInstance) -> Result<u64, XmlError> {
    match guest_memory_bytes(vmi).map(u64::try_from) {
        Some(Ok(bytes)) if bytes > 0 => Ok(bytes.div_ceil(1024)),
        Some(_) => Err(invalid(
            memory_field(vmi).unwrap_or("spec.domain.memory.guest"),
            "must be positive",
        )),
        None => Err(match memory_field(vmi) {
            Some(field) => invalid(field, "not a quantity such as 128Mi"),
            None => invalid(
                "spec.domain.memory.guest",
                "the guest has no memory: set memory.guest or resources.requests.memory",
            ),
        }),
    }
}

/// The field [`guest_memory_bytes`] reads, if any is set.
fn memory_field(vmi: &VirtualMachineInstance) -> Option<&'static str> {
    let domain = &vmi.spec.domain;
    let resources = domain.resources.as_ref();
    let has = |map: Option<&BTreeMap<String, _>>| map.is_some_and(|m| m.contains_key("memory"));
    if domain.memory.as_ref().is_some_and(|m| m.guest.is_some()) {
        Some("spec.domain.memory.guest")
    } else if has(resources.and_then(|r| r.requests.as_ref())) {
        Some("spec.domain.resources.requests.memory")
    } else if has(resources.and_then(|r| r.limits.as_ref())) {
        Some("spec.domain.resources.limits.memory")
    } else {
        None
    }
}

/// The vCPU topology; every count defaults to 1.
struct Topology {
    sockets: u32,
    cores: u32,
    threads: u32,
    vcpus: u32,
}

fn topology(vmi: &VirtualMachineInstance) -> Result<Topology, XmlError> {
    let no_cpu = Cpu::default();
    let cpu = vmi.spec.domain.cpu.as_ref().unwrap_or(&no_cpu);
    let count = |value: Option<u32>, field: &str| match value {
        Some(0) => Err(invalid(field, "must be at least 1")),
        v => Ok(v.unwrap_or(1)),
    };
    let sockets = count(cpu.sockets, "spec.domain.cpu.sockets")?;
    let cores = count(cpu.cores, "spec.domain.cpu.cores")?;
    let threads = count(cpu.threads, "spec.domain.cpu.threads")?;
    let vcpus = sockets
        .checked_mul(cores)
        .and_then(|n| n.checked_mul(threads))
        .ok_or_else(|| invalid("spec.domain.cpu", "too many vCPUs"))?;
    Ok(Topology {
        sockets,
        cores,
        threads,
        vcpus,
    })
}

/// `<cpu>`: the model (see the module documentation) and the topology.
fn cpu_element(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    topology: &Topology,
) -> Result<Element, XmlError> {
    const FIELD: &str = "spec.domain.cpu.model";
    let model = vmi
        .spec
        .domain
        .cpu
        .as_ref()
        .and_then(|c| c.model.as_deref())
        .filter(|m| !m.is_empty());
    let cpu = match (host.domain_type, model) {
        (DomainType::Kvm, None | Some("host-model")) => {
            Element::new("cpu").attr("mode", "host-model")
        }
        (DomainType::Kvm, Some("host-passthrough")) => {
            Element::new("cpu").attr("mode", "host-passthrough")
        }
        (DomainType::Qemu, None | Some("host-model")) => Element::new("cpu"),
        (DomainType::Qemu, Some("host-passthrough")) => {
            return Err(unsupported(
                FIELD,
                "host-passthrough needs KVM, and this node runs guests under TCG (QEMU emulation); \
                 use host-model, a named model or none",
            ));
        }
        (domain_type, Some(named)) => {
            if !is_token(named, "._-") {
                return Err(invalid(FIELD, format!("{named:?} is not a CPU model name")));
            }
            let cpu = Element::new("cpu")
                .attr("mode", "custom")
                .attr("match", "exact");
            let cpu = match domain_type {
                DomainType::Qemu => cpu.attr("check", "none"),
                DomainType::Kvm => cpu,
            };
            cpu.child(Element::new("model").attr("fallback", "allow").text(named))
        }
    };
    Ok(cpu.child(
        Element::new("topology")
            .attr("sockets", topology.sockets)
            .attr("dies", 1)
            .attr("cores", topology.cores)
            .attr("threads", topology.threads),
    ))
}

// ---------------------------------------------------------------------------
// Machine, firmware, <os>, <features>, <sysinfo>

fn machine(vmi: &VirtualMachineInstance, host: &HostEnv) -> Result<String, XmlError> {
    let machine = vmi
        .spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.as_deref())
        .filter(|m| !m.is_empty())
        .unwrap_or(&host.default_machine);
    if is_token(machine, "._-") {
        Ok(machine.to_owned())
    } else {
        Err(invalid(
            "spec.domain.machine.type",
            format!("{machine:?} is not a machine type"),
        ))
    }
}

/// q35 or one of its versions (`pc-q35-7.2`).
fn is_q35(machine: &str) -> bool {
    machine == "q35" || machine.starts_with("pc-q35-")
}

/// How the guest boots.
enum Firmware {
    /// SeaBIOS; `use_serial` shows its output on the serial console.
    Bios { use_serial: bool },
    /// OVMF from `code` with a variable store made from `vars_template`.
    Efi {
        code: String,
        vars_template: String,
        secure: bool,
    },
}

fn firmware(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    machine: &str,
    serial_console: bool,
) -> Result<Firmware, XmlError> {
    let bootloader = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref());
    match bootloader {
        Some(Bootloader {
            bios: Some(_),
            efi: Some(_),
        }) => Err(invalid(
            "spec.domain.firmware.bootloader",
            "set only one of bios and efi",
        )),
        Some(Bootloader { efi: Some(efi), .. }) => efi_firmware(efi, host, machine),
        Some(Bootloader {
            bios: Some(bios), ..
        }) => {
            let use_serial = bios.use_serial == Some(true);
            if use_serial && !serial_console {
                return Err(invalid(
                    "spec.domain.firmware.bootloader.bios.useSerial",
                    "BIOS output on the serial console needs the serial console; \
                     do not set devices.autoattachSerialConsole to false",
                ));
            }
            Ok(Firmware::Bios { use_serial })
        }
        _ => Ok(Firmware::Bios { use_serial: false }),
    }
}

/// OVMF, with Secure Boot unless `secureBoot: false` (KubeVirt's default is on).
fn efi_firmware(efi: &Efi, host: &HostEnv, machine: &str) -> Result<Firmware, XmlError> {
    let secure = efi.secure_boot.unwrap_or(true);
    if secure && !is_q35(machine) {
        return Err(invalid(
            SECURE_BOOT,
            format!(
                "Secure Boot needs the q35 machine type, not {machine}; \
                 set machine.type to q35 or secureBoot to false"
            ),
        ));
    }
    let ovmf = host
        .ovmf
        .as_ref()
        .ok_or_else(|| unsupported(EFI, "EFI needs OVMF, which is not installed on this node"))?;
    let (code, vars) = if secure {
        match (&ovmf.secure_code, &ovmf.secure_vars_template) {
            (Some(code), Some(vars)) => (code, vars),
            _ => {
                return Err(unsupported(
                    SECURE_BOOT,
                    "Secure Boot needs an OVMF build with Secure Boot and enrolled keys, \
                     which is not installed on this node; set secureBoot to false",
                ));
            }
        }
    } else {
        (&ovmf.code, &ovmf.vars_template)
    };
    Ok(Firmware::Efi {
        code: path_str(code, EFI)?.to_owned(),
        vars_template: path_str(vars, EFI)?.to_owned(),
        secure,
    })
}

/// `<os>`: machine, firmware, the boot device when no device has a boot
/// order (libvirt refuses both), and SMBIOS from `<sysinfo>`.
fn os_element(
    machine: &str,
    firmware: &Firmware,
    nvram: &Path,
    smbios: bool,
    device_boot: bool,
) -> Result<Element, XmlError> {
    let mut os = Element::new("os").child(
        Element::new("type")
            .attr("arch", "x86_64")
            .attr("machine", machine)
            .text("hvm"),
    );
    if let Firmware::Efi {
        code,
        vars_template,
        secure,
    } = firmware
    {
        os = os
            .child(
                Element::new("loader")
                    .attr("readonly", "yes")
                    .attr("secure", if *secure { "yes" } else { "no" })
                    .attr("type", "pflash")
                    .text(code),
            )
            .child(
                Element::new("nvram")
                    .attr("template", vars_template)
                    .text(path_str(nvram, EFI)?),
            );
    }
    if !device_boot {
        os = os.child(Element::new("boot").attr("dev", "hd"));
    }
    if smbios {
        os = os.child(Element::new("smbios").attr("mode", "sysinfo"));
    }
    if let Firmware::Bios { use_serial: true } = firmware {
        os = os.child(Element::new("bios").attr("useserial", "yes"));
    }
    Ok(os)
}

/// `<features>`: ACPI (for ACPI shutdown), and SMM for Secure Boot.
fn features_element(firmware: &Firmware) -> Element {
    let features = Element::new("features").child(Element::new("acpi"));
    match firmware {
        Firmware::Efi { secure: true, .. } => {
            features.child(Element::new("smm").attr("state", "on"))
        }
        _ => features,
    }
}

/// The SMBIOS serial number from `firmware.serial`, if set.
fn serial_number(vmi: &VirtualMachineInstance) -> Result<Option<String>, XmlError> {
    let serial = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.serial.as_deref())
        .filter(|s| !s.is_empty());
    match serial {
        Some(s) if s.chars().any(char::is_control) => Err(invalid(
            "spec.domain.firmware.serial",
            "must not contain control characters",
        )),
        Some(s) => Ok(Some(s.to_owned())),
        None => Ok(None),
    }
}

/// `<sysinfo type='smbios'>` with the serial number and the domain's UUID
/// (libvirt requires the two UUIDs to agree).
fn sysinfo_element(serial: &str, uuid: &str) -> Element {
    let entry = |name: &str, value: &str| Element::new("entry").attr("name", name).text(value);
    let system = Element::new("system")
        .child(entry("serial", serial))
        .child(entry("uuid", uuid));
    Element::new("sysinfo").attr("type", "smbios").child(system)
}

// ---------------------------------------------------------------------------
// Boot order

/// Checks that boot orders are positive and unique across disks and
/// interfaces; true when any device has one.
fn check_boot_orders(vmi: &VirtualMachineInstance) -> Result<bool, XmlError> {
    let devices = vmi.spec.domain.devices.as_ref();
    let disks = devices.and_then(|d| d.disks.as_deref()).unwrap_or_default();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let orders = disks
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("{DISKS}[{i}].bootOrder"), d.boot_order))
        .chain(
            ifaces
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{INTERFACES}[{i}].bootOrder"), n.boot_order)),
        );
    let mut seen: BTreeMap<u32, String> = BTreeMap::new();
    for (field, order) in orders {
        let Some(order) = order else { continue };
        if order == 0 {
            return Err(invalid(field, "must be at least 1"));
        }
        if let Some(first) = seen.get(&order) {
            return Err(invalid(
                field,
                format!("boot order {order} is already used by {first}"),
            ));
        }
        seen.insert(order, field);
    }
    Ok(!seen.is_empty())
}

// ---------------------------------------------------------------------------
// Disks

/// The `<disk>` elements, and whether any needs the virtio-scsi controller.
fn disks(
    vmi: &VirtualMachineInstance,
    inputs: &DomainInputs,
) -> Result<(Vec<Element>, bool), XmlError> {
    let disks = vmi
        .spec
        .domain
        .devices
        .as_ref()
        .and_then(|d| d.disks.as_deref())
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    let mut targets = Targets::default();
    let mut out = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let field = format!("{DISKS}[{i}]");
        if !is_token(&disk.name, "_-") {
            return Err(invalid(
                format!("{field}.name"),
                "use only letters, digits, '-' and '_'",
            ));
        }
        if !names.insert(disk.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!("another disk is named {}", disk.name),
            ));
        }
        let volume = disk_volume(vmi, inputs, disk, &field)?;
        let target = disk_target(disk, &field)?;
        out.push(disk_element(disk, &field, volume, &target, &mut targets)?);
    }
    Ok((out, targets.scsi > 0))
}

/// One `<disk>`.
fn disk_element(
    disk: &Disk,
    field: &str,
    volume: &ResolvedVolume,
    target: &DiskTarget,
    targets: &mut Targets,
) -> Result<Element, XmlError> {
    let (dev, address) = targets.next(target.bus);
    let mut driver = Element::new("driver").attr("name", "qemu").attr(
        "type",
        match volume.format {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        },
    );
    if let Some(cache) = disk.cache {
        driver = driver.attr("cache", cache_name(cache));
    }
    let mut target_element = Element::new("target")
        .attr("dev", dev)
        .attr("bus", bus_name(target.bus));
    if let Some(tray) = target.tray {
        target_element = target_element.attr("tray", tray);
    }
    let serial = match disk.serial.as_deref() {
        Some(s) if !is_token(s, "_.+- ") => {
            return Err(invalid(
                format!("{field}.serial"),
                "use only letters, digits, spaces and '_', '.', '+', '-'",
            ));
        }
        s => s,
    };
    let path = path_str(&volume.path, &format!("{field}.name"))?;
    Ok(Element::new("disk")
        .attr("type", "file")
        .attr("device", if target.cdrom { "cdrom" } else { "disk" })
        .child(driver)
        .child(Element::new("source").attr("file", path))
        .child(target_element)
        .child_opt(
            disk.boot_order
                .map(|o| Element::new("boot").attr("order", o)),
        )
        .child_opt(target.readonly.then(|| Element::new("readonly")))
        .child_opt(serial.map(|s| Element::new("serial").text(s)))
        .child(alias(&disk.name))
        .child_opt(address))
}

/// Target names and drive addresses, handed out in spec order.
#[derive(Default)]
struct Targets {
    virtio: usize,
    sd: usize,
    sata: usize,
    scsi: usize,
}

impl Targets {
    /// The target name of the next disk on `bus` and, for SATA and SCSI, its
    /// drive address: six ports per SATA controller, every SCSI disk on the
    /// one virtio-scsi controller.
    fn next(&mut self, bus: DiskBus) -> (String, Option<Element>) {
        if bus == DiskBus::Virtio {
            self.virtio += 1;
            return (format!("vd{}", disk_letters(self.virtio - 1)), None);
        }
        self.sd += 1;
        let dev = format!("sd{}", disk_letters(self.sd - 1));
        let address = match bus {
            DiskBus::Sata => {
                self.sata += 1;
                let n = self.sata - 1;
                Some(drive_address(n / 6, n % 6))
            }
            DiskBus::Scsi => {
                self.scsi += 1;
                Some(drive_address(0, self.scsi - 1))
            }
            DiskBus::Virtio | DiskBus::Usb => None,
        };
        (dev, address)
    }
}

/// The resolved file of the volume named like `disk`.
fn disk_volume<'a>(
    vmi: &VirtualMachineInstance,
    inputs: &'a DomainInputs,
    disk: &Disk,
    field: &str,
) -> Result<&'a ResolvedVolume, XmlError> {
    let name = &disk.name;
    let declared = vmi.spec.volumes.iter().flatten().any(|v| &v.name == name);
    if !declared {
        return Err(invalid(
            format!("{field}.name"),
            format!("no volume named {name}"),
        ));
    }
    inputs.volumes.get(name).ok_or_else(|| {
        invalid(
            format!("{field}.name"),
            format!("volume {name} has no file on this node"),
        )
    })
}

/// How a disk attaches, with KubeVirt's defaults.
struct DiskTarget {
    /// A CD-ROM rather than a disk (a LUN is a plain SCSI disk).
    cdrom: bool,
    bus: DiskBus,
    readonly: bool,
    /// `open` when the CD-ROM tray is open.
    tray: Option<&'static str>,
}

fn disk_target(disk: &Disk, field: &str) -> Result<DiskTarget, XmlError> {
    let set = [
        disk.disk.is_some(),
        disk.cdrom.is_some(),
        disk.lun.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        return Err(invalid(field, "set at most one of disk, cdrom and lun"));
    }
    if let Some(cdrom) = &disk.cdrom {
        let bus = cdrom.bus.unwrap_or(DiskBus::Sata);
        if !matches!(bus, DiskBus::Sata | DiskBus::Scsi) {
            return Err(invalid(
                format!("{field}.cdrom.bus"),
                format!("a CD-ROM attaches to sata or scsi, not {}", bus_name(bus)),
            ));
        }
        if cdrom.readonly == Some(false) {
            return Err(invalid(
                format!("{field}.cdrom.readonly"),
                "a CD-ROM is always read-only",
            ));
        }
        let tray = match cdrom.tray.as_deref() {
            None | Some("closed") => None,
            Some("open") => Some("open"),
            Some(other) => {
                return Err(invalid(
                    format!("{field}.cdrom.tray"),
                    format!("{other:?} is neither open nor closed"),
                ));
            }
        };
        return Ok(DiskTarget {
            cdrom: true,
            bus,
            readonly: true,
            tray,
        });
    }
    if let Some(lun) = &disk.lun {
        let bus = lun.bus.unwrap_or(DiskBus::Scsi);
        if bus != DiskBus::Scsi {
            return Err(invalid(
                format!("{field}.lun.bus"),
                format!("a LUN attaches to scsi, not {}", bus_name(bus)),
            ));
        }
        return Ok(DiskTarget {
            cdrom: false,
            bus,
            readonly: lun.readonly == Some(true),
            tray: None,
        });
    }
    let plain = disk.disk.as_ref();
    Ok(DiskTarget {
        cdrom: false,
        bus: plain.and_then(|d| d.bus).unwrap_or(DiskBus::Virtio),
        readonly: plain.and_then(|d| d.readonly) == Some(true),
        tray: None,
    })
}

/// The letters of the `n`th disk name (0 → a, 25 → z, 26 → aa, …), as in
/// libvirt's and Linux's disk naming.
fn disk_letters(n: usize) -> String {
    let mut letters = Vec::new();
    let mut n = n + 1;
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.iter().rev().map(|b| char::from(*b)).collect()
}

fn drive_address(controller: usize, unit: usize) -> Element {
    Element::new("address")
        .attr("type", "drive")
        .attr("controller", controller)
        .attr("bus", 0)
        .attr("target", 0)
        .attr("unit", unit)
}

fn cache_name(cache: DiskCache) -> &'static str {
    match cache {
        DiskCache::None => "none",
        DiskCache::Writethrough => "writethrough",
        DiskCache::Writeback => "writeback",
    }
}

/// A user alias; libvirt wants `ua-` and then letters, digits, `-` and `_`.
fn alias(name: &str) -> Element {
    Element::new("alias").attr("name", format!("ua-{name}"))
}

// ---------------------------------------------------------------------------
// Interfaces

/// NIC models and their QEMU device names.
const NIC_MODELS: [(&str, &str); 6] = [
    ("virtio", "virtio-net-pci"),
    ("e1000", "e1000"),
    ("e1000e", "e1000e"),
    ("rtl8139", "rtl8139"),
    ("ne2k_pci", "ne2k_pci"),
    ("pcnet", "pcnet"),
];

/// How an interface reaches the network.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Binding {
    /// masquerade: QEMU user networking (NAT behind the node).
    User,
    /// bridge: the libvirt network named "default".
    Bridge,
}

/// An interface, resolved.
struct Nic {
    name: String,
    /// Its field path, None for the auto-attached pod interface.
    field: Option<String>,
    binding: Binding,
    model: &'static str,
    device: &'static str,
    mac: String,
    boot_order: Option<u32>,
    /// The guest networks (vmNetworkCIDR, vmIPv6NetworkCIDR) of a user interface.
    nets: Vec<(IpAddr, u8)>,
}

/// The interfaces of the VMI, or KubeVirt's default pod interface when it
/// lists neither interfaces nor networks.
fn nics(vmi: &VirtualMachineInstance, id: &Identity<'_>) -> Result<Vec<Nic>, XmlError> {
    let devices = vmi.spec.domain.devices.as_ref();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let networks = vmi.spec.networks.as_deref().unwrap_or_default();
    if ifaces.is_empty() && networks.is_empty() {
        if devices.and_then(|d| d.autoattach_pod_interface) == Some(false) {
            return Ok(Vec::new());
        }
        return Ok(vec![Nic {
            name: "default".to_owned(),
            field: None,
            binding: Binding::User,
            model: "virtio",
            device: "virtio-net-pci",
            mac: derived_mac(id.uid, "default"),
            boot_order: None,
            nets: Vec::new(),
        }]);
    }
    let mut out: Vec<Nic> = Vec::new();
    let disk_names: BTreeSet<&str> = devices
        .and_then(|d| d.disks.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    for (i, iface) in ifaces.iter().enumerate() {
        let field = format!("{INTERFACES}[{i}]");
        let nic = nic(iface, &field, networks, id)?;
        if out.iter().any(|n| n.name == nic.name) {
            return Err(invalid(
                format!("{field}.name"),
                format!("another interface is named {}", nic.name),
            ));
        }
        if disk_names.contains(nic.name.as_str()) {
            return Err(invalid(
                format!("{field}.name"),
                format!(
                    "a disk is also named {}; ironvirt needs distinct disk and interface names",
                    nic.name
                ),
            ));
        }
        if let Some(other) = out.iter().find(|n| n.mac == nic.mac) {
            return Err(invalid(
                format!("{field}.macAddress"),
                format!("interface {} has the same MAC {}", other.name, nic.mac),
            ));
        }
        out.push(nic);
    }
    Ok(out)
}

fn nic(
    iface: &Interface,
    field: &str,
    networks: &[Network],
    id: &Identity<'_>,
) -> Result<Nic, XmlError> {
    if !is_token(&iface.name, "_-") {
        return Err(invalid(
            format!("{field}.name"),
            "use only letters, digits, '-' and '_'",
        ));
    }
    let binding = binding(iface, field)?;
    let (j, pod) = pod_network(iface, field, networks)?;
    let model = iface.model.as_deref().unwrap_or("virtio");
    let (model, device) = NIC_MODELS
        .iter()
        .find(|(m, _)| *m == model)
        .copied()
        .ok_or_else(|| {
            invalid(
                format!("{field}.model"),
                format!(
                    "unknown model {model:?}; use one of virtio, e1000, e1000e, rtl8139, ne2k_pci, pcnet"
                ),
            )
        })?;
    let mac = match iface.mac_address.as_deref() {
        Some(mac) => normalize_mac(mac).ok_or_else(|| {
            invalid(
                format!("{field}.macAddress"),
                format!("{mac:?} is not a unicast MAC address such as 02:00:00:00:00:01"),
            )
        })?,
        None => derived_mac(id.uid, &iface.name),
    };
    let nets = match binding {
        Binding::User => guest_nets(pod, j)?,
        Binding::Bridge => Vec::new(),
    };
    Ok(Nic {
        name: iface.name.clone(),
        field: Some(field.to_owned()),
        binding,
        model,
        device,
        mac,
        boot_order: iface.boot_order,
        nets,
    })
}

/// The binding of an interface: masquerade or bridge; the others are refused.
fn binding(iface: &Interface, field: &str) -> Result<Binding, XmlError> {
    let refused = [
        ("sriov", iface.sriov.is_some()),
        ("passt", iface.passt.is_some()),
        ("slirp", iface.slirp.is_some()),
        ("binding", iface.binding.is_some()),
    ];
    if let Some((name, _)) = refused.into_iter().find(|(_, set)| *set) {
        return Err(unsupported(
            format!("{field}.{name}"),
            "not supported by ironvirt; use the masquerade or bridge binding",
        ));
    }
    match (&iface.masquerade, &iface.bridge) {
        (Some(_), None) => Ok(Binding::User),
        (None, Some(_)) if iface.ports.as_ref().is_some_and(|p| !p.is_empty()) => Err(invalid(
            format!("{field}.ports"),
            "forwarding ports needs the masquerade binding",
        )),
        (None, Some(_)) => Ok(Binding::Bridge),
        _ => Err(invalid(
            field,
            "set exactly one binding: masquerade or bridge",
        )),
    }
}

/// The pod network an interface names, with its index in spec.networks.
fn pod_network<'a>(
    iface: &Interface,
    field: &str,
    networks: &'a [Network],
) -> Result<(usize, &'a PodNetwork), XmlError> {
    let (j, network) = networks
        .iter()
        .enumerate()
        .find(|(_, n)| n.name == iface.name)
        .ok_or_else(|| {
            invalid(
                format!("{field}.name"),
                format!("no network named {}", iface.name),
            )
        })?;
    if network.multus.is_some() {
        return Err(unsupported(
            format!("spec.networks[{j}].multus"),
            "Multus networks are not supported by ironvirt yet; use pod",
        ));
    }
    let pod = network
        .pod
        .as_ref()
        .ok_or_else(|| invalid(format!("spec.networks[{j}]"), "set one source: pod"))?;
    Ok((j, pod))
}

/// The guest networks a masquerade interface's pod network asks for.
fn guest_nets(pod: &PodNetwork, j: usize) -> Result<Vec<(IpAddr, u8)>, XmlError> {
    let base = format!("spec.networks[{j}].pod");
    let mut nets = Vec::new();
    if let Some(cidr) = &pod.vm_network_cidr {
        nets.push(guest_net(cidr, false, &format!("{base}.vmNetworkCIDR"))?);
    }
    if let Some(cidr) = &pod.vm_ipv6_network_cidr {
        nets.push(guest_net(cidr, true, &format!("{base}.vmIPv6NetworkCIDR"))?);
    }
    Ok(nets)
}

/// A guest network in CIDR form, as QEMU user networking accepts it: IPv4
/// with a prefix of 4 to 27 (room for its DHCP range), IPv6 with /64.
fn guest_net(cidr: &str, v6: bool, field: &str) -> Result<(IpAddr, u8), XmlError> {
    let parsed = cidr.split_once('/').and_then(|(addr, prefix)| {
        let prefix: u8 = prefix.parse().ok()?;
        let addr: IpAddr = if v6 {
            IpAddr::V6(addr.parse::<Ipv6Addr>().ok()?)
        } else {
            IpAddr::V4(addr.parse::<Ipv4Addr>().ok()?)
        };
        Some((addr, prefix))
    });
    let example = if v6 { "fd10:0:2::/64" } else { "10.0.2.0/24" };
    let (addr, prefix) = parsed
        .ok_or_else(|| invalid(field, format!("{cidr:?} is not a CIDR such as {example}")))?;
    match addr {
        IpAddr::V4(_) if !(4..=27).contains(&prefix) => {
            Err(invalid(field, "the prefix length must be between 4 and 27"))
        }
        IpAddr::V6(_) if prefix != 64 => Err(unsupported(
            field,
            "QEMU user networking supports only a /64 IPv6 network",
        )),
        _ => Ok((addr, prefix)),
    }
}

/// `mac` in lower case with colons, if it is a unicast MAC.
fn normalize_mac(mac: &str) -> Option<String> {
    let octets: Vec<u8> = mac
        .split([':', '-'])
        .map(|o| {
            if o.len() == 2 {
                u8::from_str_radix(o, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    (octets.len() == 6 && octets[0] & 1 == 0).then(|| format_mac(&octets))
}

/// A locally administered unicast MAC (`02:…`) from the VMI's uid and the
/// interface name: stable across restarts, distinct between VMIs.
fn derived_mac(uid: &str, interface: &str) -> String {
    // FNV-1a, then the splitmix64 finalizer to spread the bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes().chain([0]).chain(interface.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    let bytes = hash.to_be_bytes();
    format_mac(&[0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])
}

fn format_mac(octets: &[u8]) -> String {
    octets
        .iter()
        .map(|o| format!("{o:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The port forwards of each masquerade interface that has some.
fn forwards_by_nic<'a>(
    nics: &[Nic],
    forwards: &'a [PortForward],
) -> Result<BTreeMap<&'a str, Vec<&'a PortForward>>, XmlError> {
    let mut out: BTreeMap<&str, Vec<&PortForward>> = BTreeMap::new();
    for fw in forwards {
        let nic = nics
            .iter()
            .find(|n| n.name == fw.interface)
            .ok_or_else(|| {
                invalid(
                    INTERFACES,
                    format!(
                        "a port is forwarded to interface {}, which the VMI does not have",
                        fw.interface
                    ),
                )
            })?;
        let field = match &nic.field {
            Some(f) => format!("{f}.ports"),
            None => INTERFACES.to_owned(),
        };
        if nic.binding != Binding::User {
            return Err(invalid(
                field,
                "forwarding ports needs the masquerade binding",
            ));
        }
        if fw.host_port == 0 || fw.guest_port == 0 {
            return Err(invalid(field, "ports are 1 to 65535"));
        }
        out.entry(fw.interface.as_str()).or_default().push(fw);
    }
    Ok(out)
}

/// A libvirt `<interface>`: user networking or the libvirt network "default".
fn interface_element(nic: &Nic) -> Element {
    let iface = match nic.binding {
        Binding::User => Element::new("interface").attr("type", "user"),
        Binding::Bridge => Element::new("interface")
            .attr("type", "network")
            .child(Element::new("source").attr("network", "default")),
    };
    iface
        .child(Element::new("mac").attr("address", &nic.mac))
        .children(nic.nets.iter().map(|(addr, prefix)| {
            Element::new("ip")
                .attr("family", if addr.is_ipv4() { "ipv4" } else { "ipv6" })
                .attr("address", addr)
                .attr("prefix", prefix)
        }))
        .child(Element::new("model").attr("type", nic.model))
        .child_opt(
            nic.boot_order
                .map(|o| Element::new("boot").attr("order", o)),
        )
        .child(alias(&nic.name))
}

/// The QEMU arguments of a masquerade interface with port forwards: a user
/// netdev with `hostfwd` on 127.0.0.1 and its NIC.
fn netdev_args(nic: &Nic, forwards: &[&PortForward], address: &str) -> [String; 4] {
    let id = format!("ua-{}", nic.name);
    let mut netdev = format!("user,id={id}");
    for (addr, prefix) in &nic.nets {
        let key = if addr.is_ipv4() { "net" } else { "ipv6-net" };
        let _ = write!(netdev, ",{key}={addr}/{prefix}");
    }
    for fw in forwards {
        let proto = match fw.protocol {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        };
        let _ = write!(
            netdev,
            ",hostfwd={proto}:127.0.0.1:{}-:{}",
            fw.host_port, fw.guest_port
        );
    }
    let mut device = format!("{},netdev={id},mac={},{address}", nic.device, nic.mac);
    if let Some(order) = nic.boot_order {
        let _ = write!(device, ",bootindex={order}");
    }
    ["-netdev".to_owned(), netdev, "-device".to_owned(), device]
}

/// A PCI address libvirt does not hand out for the `n`-th NIC that QEMU gets
/// on its command line: libvirt places its own devices from slot 1 upwards
/// (on q35 behind root ports in slots 2 and 3 for up to 16 devices), so these
/// take slots from 0x1d downwards on the root bus. Without an address QEMU
/// would take slot 1, which libvirt gives the video device.
fn passthrough_address(machine: &str, n: u8) -> String {
    let bus = if machine.contains("q35") {
        "pcie.0"
    } else {
        "pci.0"
    };
    format!("bus={bus},addr={:#04x}", 0x1d_u8.saturating_sub(n))
}

fn commandline_element(args: &[String]) -> Element {
    Element::new("qemu:commandline").children(
        args.iter()
            .map(|a| Element::new("qemu:arg").attr("value", a)),
    )
}

// ---------------------------------------------------------------------------
// <devices>

fn devices_element(
    devices: &Devices,
    disks: Vec<Element>,
    scsi: bool,
    interfaces: Vec<Element>,
    serial_console: bool,
) -> Element {
    let graphics = devices.autoattach_graphics_device != Some(false);
    let mut out = Element::new("devices").children(disks);
    if scsi {
        out = out.child(
            Element::new("controller")
                .attr("type", "scsi")
                .attr("index", 0)
                .attr("model", "virtio-scsi"),
        );
    }
    out = out.children(interfaces);
    if serial_console {
        out = out
            .child(
                Element::new("serial")
                    .attr("type", "pty")
                    .child(Element::new("target").attr("port", 0)),
            )
            .child(
                Element::new("console").attr("type", "pty").child(
                    Element::new("target")
                        .attr("type", "serial")
                        .attr("port", 0),
                ),
            );
    }
    if graphics {
        out = out.child(
            Element::new("graphics")
                .attr("type", "vnc")
                .attr("autoport", "yes")
                .attr("listen", "127.0.0.1")
                .child(
                    Element::new("listen")
                        .attr("type", "address")
                        .attr("address", "127.0.0.1"),
                ),
        );
    }
    out = out.child(
        Element::new("video")
            .child(Element::new("model").attr("type", if graphics { "vga" } else { "none" })),
    );
    out = out.child(Element::new("memballoon").attr("model", "none"));
    if devices.rng.is_some() {
        out = out.child(
            Element::new("rng").attr("model", "virtio").child(
                Element::new("backend")
                    .attr("model", "random")
                    .text("/dev/urandom"),
            ),
        );
    }
    out
}

// ---------------------------------------------------------------------------
// A small XML writer

/// An element being built. It renders with two-space indentation and
/// single-quoted attributes, like `virsh dumpxml`. An element has text or
/// children, not both.
struct Element {
    name: String,
    attrs: Vec<(String, String)>,
    text: Option<String>,
    children: Vec<Element>,
}

impl Element {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            attrs: Vec::new(),
            text: None,
            children: Vec::new(),
        }
    }

    fn attr(mut self, key: impl Into<String>, value: impl Display) -> Self {
        self.attrs.push((key.into(), value.to_string()));
        self
    }

    fn text(mut self, text: impl Display) -> Self {
        self.text = Some(text.to_string());
        self
    }

    fn child(mut self, child: Element) -> Self {
        self.children.push(child);
        self
    }

    fn child_opt(self, child: Option<Element>) -> Self {
        match child {
            Some(c) => self.child(c),
            None => self,
        }
    }

    fn children(mut self, children: impl IntoIterator<Item = Element>) -> Self {
        self.children.extend(children);
        self
    }

    fn render(&self, out: &mut String, depth: usize) {
        let indent = "  ".repeat(depth);
        out.push_str(&indent);
        out.push('<');
        out.push_str(&self.name);
        for (key, value) in &self.attrs {
            out.push(' ');
            out.push_str(key);
            out.push_str("='");
            escape(value, true, out);
            out.push('\'');
        }
        match (&self.text, self.children.is_empty()) {
            (Some(text), _) => {
                out.push('>');
                escape(text, false, out);
            }
            (None, true) => {
                out.push_str("/>\n");
                return;
            }
            (None, false) => {
                out.push_str(">\n");
                for child in &self.children {
                    child.render(out, depth + 1);
                }
                out.push_str(&indent);
            }
        }
        out.push_str("</");
        out.push_str(&self.name);
        out.push_str(">\n");
    }
}

/// Escapes text or a single-quoted attribute value. Characters XML cannot
/// carry at all (most control characters) become U+FFFD; the fields users
/// write free text into are checked before they get here.
fn escape(s: &str, attribute: bool, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' if attribute => out.push_str("&apos;"),
            '"' if attribute => out.push_str("&quot;"),
            '\t' | '\n' | '\r' if attribute => {
                let _ = write!(out, "&#{};", u32::from(c));
            }
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
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
            port_forwards: Vec::new(),
            nvram: format!("/var/lib/ironvirt/vmis/{UID}/nvram.fd").into(),
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
        assert!(xml.contains("<interface type='user'>"));
        assert!(!xml.contains("qemu:commandline"));
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
        assert!(xml.starts_with("<domain type='kvm'>"));
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
            ("    devices: {tpm: {}}\n", "spec.domain.devices.tpm"),
            (
                "    cpu: {dedicatedCpuPlacement: true}\n",
                "spec.domain.cpu.dedicatedCpuPlacement",
            ),
            (
                "    firmware: {kernelBoot: {kernelArgs: x}}\n",
                "spec.domain.firmware.kernelBoot",
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
        assert!(xml.contains("<mac address='de:ad:00:00:be:af'/>"), "{xml}");
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
    fn port_forwards_go_to_qemu_user_networking() {
        let spec = format!(
            "{MEM}    devices:\n      interfaces:\n        \
             - {{name: default, masquerade: {{}}, bootOrder: 1, ports: [{{port: 22}}]}}\n        \
             - {{name: lan, bridge: {{}}}}\n  \
             networks: [{{name: default, pod: {{}}}}, {{name: lan, pod: {{}}}}]\n"
        );
        let mut inp = inputs(&[]);
        inp.port_forwards = vec![
            PortForward {
                interface: "default".into(),
                protocol: PortProtocol::Tcp,
                host_port: 40022,
                guest_port: 22,
            },
            PortForward {
                interface: "default".into(),
                protocol: PortProtocol::Udp,
                host_port: 40053,
                guest_port: 53,
            },
        ];
        let xml = domain_xml(&vmi(&spec), &host(), &inp).unwrap();
        let mac = derived_mac(UID, "default");
        let netdev = "<qemu:arg value='user,id=ua-default,\
                      hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=udp:127.0.0.1:40053-:53'/>";
        assert!(xml.contains(netdev), "{xml}");
        assert!(xml.contains(&format!(
            "<qemu:arg value='virtio-net-pci,netdev=ua-default,mac={mac},bus=pcie.0,addr=0x1d,bootindex=1'/>"
        )));
        assert!(!xml.contains("<interface type='user'>"));
        assert!(!xml.contains("<boot dev="));
        let live = parse_live(&xml);
        let names: Vec<&str> = live.macs.iter().map(|(a, _)| a.as_str()).collect();
        assert_eq!(names, ["ua-lan", "ua-default"]);
        assert_eq!(live.macs[1].1, mac);

        // A forward to the bridge interface is refused.
        inp.port_forwards[0].interface = "lan".into();
        let err = domain_xml(&vmi(&spec), &host(), &inp);
        assert_eq!(field(err, true), "spec.domain.devices.interfaces[1].ports");
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
        let xml = build(&net("{vmIPv6NetworkCIDR: \"fd10:0:2::/64\"}")).unwrap();
        assert!(
            xml.contains("<ip family='ipv6' address='fd10:0:2::' prefix='64'/>"),
            "{xml}"
        );
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
        let default_ns = r#"<vmi xmlns="https://ironvirt.io/domain/v1" namespace="a" name="b" uid="c" node="d"/>"#;
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
    <graphics type='vnc' port='5901' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
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
        assert_eq!(facts.vnc_port, Some(5901));
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
        let defined = LIVE.replace("port='5901'", "port='-1'");
        assert_eq!(parse_live(&defined).vnc_port, None);
        let no_port = LIVE.replace("port='5901' ", "");
        assert_eq!(parse_live(&no_port).vnc_port, None);
        let junk = LIVE.replace("port='5901'", "port='vnc'");
        assert_eq!(parse_live(&junk).vnc_port, None);
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
}
