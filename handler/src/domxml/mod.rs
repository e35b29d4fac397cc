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
//! - **Memory balloon.** `<memballoon model='none'/>` unless
//!   `autoattachMemBalloon: true` (then virtio): nothing in ironvirt reads
//!   balloon statistics or resizes guests, and without the element libvirt
//!   adds a virtio balloon, a PCI device the guest would need a driver for.
//! - **Features and clock.** `<acpi/>` unless `features.acpi.enabled` is
//!   false; every other feature (APIC, Hyper-V enlightenments, KVM hidden,
//!   pvspinlock, SMM) and timer appears only when listed, with
//!   `state`/`present` from `enabled`/`present` (default on); SMM is also on
//!   for Secure Boot, which refuses `smm.enabled: false`.
//! - **TPM.** `devices.tpm` is a TPM 2.0 CRB device emulated by swtpm, which
//!   libvirt starts; [`HostEnv::swtpm`] says whether it is installed. Its state
//!   lives with the domain, so it lasts as long as the VMI.
//! - **Inputs.** Listed inputs keep their names as `ua-` aliases; with none
//!   listed, `autoattachInputDevice: true` adds a USB tablet.
//! - **MACs.** An interface without `macAddress` gets a locally administered
//!   unicast MAC (`02:…`) derived from the VMI's uid and the interface name,
//!   so a VMI keeps its MACs across restarts of its domain.
//! - **Masquerade.** The masquerade interface (the pod network; one per VMI)
//!   is connected to the VMI's own network namespace: a QEMU `-netdev stream`
//!   to the passt socket [`DomainInputs::pod_network`] names, and a `-device`
//!   NIC, passed with `<qemu:commandline>` since libvirt 9.0 would start passt
//!   itself, outside the namespace ([`crate::guestnet`] has the design).
//!   [`parse_live`] reads its MAC back from there. Declared ports are
//!   forwarded by passt, not in the XML. `vmNetworkCIDR` has no effect: the
//!   guest gets the VMI's address.
//! - **VNC.** `<listen type='socket'/>`: libvirt puts QEMU's VNC server on a
//!   UNIX socket in the domain's private directory (root only), which the
//!   handler relays; there is no TCP listener for a guest or a local user.
//! - **Disk targets.** virtio disks are `vda`, `vdb`, …; sata, scsi and usb
//!   disks share `sda`, `sdb`, … in spec order. SATA and SCSI disks get an
//!   explicit drive address (six ports per SATA controller, all SCSI disks on
//!   the one virtio-scsi controller), since libvirt would otherwise derive it
//!   from the shared target letters and add controllers.
//! - **EFI.** `efi.persistent` does not change the XML: the caller chooses
//!   where [`DomainInputs::nvram`] lives and whether it outlives the domain.
//!
//! # Layout
//!
//! [`domain_xml`] here walks the steps, one file each: `identity` (name,
//! UUID, metadata, refused fields), `cpu` (memory, topology, CPU model),
//! `machine` (machine type, firmware, `<os>`, `<sysinfo>`, boot order),
//! `platform` (`<features>` and `<clock>`), `disks`, `network` (interfaces and port forwards), `devices`
//! (`<devices>` from the two), and `element` (the XML writer). `read` goes
//! the other way, from a live domain's XML back to facts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::quantity::guest_memory_bytes;
use ironvirt_crds::vmi::{
    Bootloader, Cpu, Devices, Disk, DiskBus, DiskCache, Efi, Interface, Network, PodNetwork,
};
use ironvirt_crds::wire::{bus_name, domain_name};

mod cpu;
mod devices;
mod disks;
mod element;
mod identity;
mod machine;
mod network;
mod platform;
mod read;

use cpu::*;
use devices::*;
use disks::*;
use element::*;
use identity::*;
use machine::*;
use network::*;
use platform::*;
pub use read::{LiveFacts, parse_live, parse_owner, parse_owner_element};

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
    /// Whether swtpm is installed, which emulated TPMs need.
    pub swtpm: bool,
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

/// Everything [`domain_xml`] needs besides the VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainInputs {
    /// The node the domain runs on; recorded in the metadata.
    pub node: String,
    /// The file behind each volume, by volume name.
    pub volumes: BTreeMap<String, ResolvedVolume>,
    /// The passt socket of the VMI's network namespace, for its masquerade
    /// interface ([`crate::guestnet`]); None when the VMI has none.
    pub pod_network: Option<PathBuf>,
    /// Where the EFI variable store of this VMI lives (used only for EFI guests).
    pub nvram: PathBuf,
    /// The UNIX socket QEMU serves the serial console on, which the handler
    /// reads directly; None: a pty, reached through libvirt's console API.
    pub console_socket: Option<PathBuf>,
    /// The kernel (and initrd) to boot directly, from the node's image cache
    /// (`firmware.kernelBoot.container`); None: boot from the devices.
    pub kernel_boot: Option<KernelFiles>,
}

/// A direct kernel boot: `<os>`'s `<kernel>`, `<initrd>` and `<cmdline>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// `kernelArgs`.
    pub cmdline: Option<String>,
}

/// The MAC of each interface the domain of `vmi` has, by its alias
/// (`ua-<interface name>`), as [`domain_xml`] gives them: from the spec, or
/// derived from the uid. For drivers whose live XML does not show every NIC
/// (libvirt's test driver keeps no `<qemu:commandline>`). Empty when the
/// interfaces are invalid (the domain would not exist then).
pub fn spec_macs(vmi: &VirtualMachineInstance) -> Vec<(String, String)> {
    identity(vmi)
        .and_then(|id| nics(vmi, &id))
        .map(|nics| {
            nics.into_iter()
                .map(|n| (format!("ua-{}", n.name), n.mac))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the VMI is connected to its network namespace: it has a
/// masquerade or bridge interface (the first bridge one is connected when
/// there is no masquerade one), or KubeVirt's default pod interface when it
/// lists neither interfaces nor networks.
pub fn wants_pod_network(vmi: &VirtualMachineInstance) -> bool {
    let devices = vmi.spec.domain.devices.as_ref();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    if ifaces.is_empty() && vmi.spec.networks.as_deref().unwrap_or_default().is_empty() {
        return devices.and_then(|d| d.autoattach_pod_interface) != Some(false);
    }
    ifaces
        .iter()
        .any(|i| i.masquerade.is_some() || i.bridge.is_some())
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
/// like do not concern the domain and are left to the caller. The masquerade
/// interface is connected to `inputs.pod_network`, which the caller sets up.
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
    let kernel_boot = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref());
    if let Some(k) = kernel_boot
        && k.container.is_none()
        && k.kernel_args.as_deref().is_some_and(|a| !a.is_empty())
    {
        return Err(invalid(
            format!("{KERNEL_BOOT}.kernelArgs"),
            "kernelArgs needs kernelBoot.container: the arguments are for the kernel it gives",
        ));
    }
    let wants_kernel = kernel_boot.is_some_and(|k| k.container.is_some());
    if wants_kernel != inputs.kernel_boot.is_some() {
        return Err(invalid(
            KERNEL_BOOT,
            "the kernel of kernelBoot.container is not on the node",
        ));
    }
    let device_boot = check_boot_orders(vmi)?;
    let (disks, scsi) = disks(vmi, inputs)?;
    let nics = nics(vmi, &id)?;
    let serial_number = serial_number(vmi)?;
    let chassis = chassis_entries(vmi)?;
    let smbios = serial_number.is_some() || !chassis.is_empty();
    let features = features_element(
        vmi.spec.domain.features.as_deref(),
        &firmware,
        host.domain_type,
    )?;
    let clock = clock_element(vmi)?;
    let tpm = tpm(devices, host)?;

    let mut passthrough = Vec::new();
    let mut interfaces = Vec::new();
    for nic in &nics {
        match nic.binding {
            Binding::User => passthrough.extend(netdev_args(
                nic,
                pod_socket(nic, inputs)?,
                &passthrough_address(&machine, 0),
            )),
            Binding::Bridge => interfaces.push(interface_element(nic)),
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
        .child_opt(smbios.then(|| sysinfo_element(serial_number.as_deref(), &id.uuid, &chassis)))
        .child(os_element(
            &machine,
            &firmware,
            &inputs.nvram,
            inputs.kernel_boot.as_ref(),
            smbios,
            device_boot,
        )?)
        .child(features)
        .child(cpu_element(vmi, host, &topology)?)
        .child(clock)
        .child(Element::new("on_poweroff").text("destroy"))
        .child(Element::new("on_reboot").text("restart"))
        .child(Element::new("on_crash").text("destroy"))
        .child(devices_element(
            devices,
            disks,
            scsi,
            interfaces,
            serial_console.then_some(SerialConsole {
                socket: inputs.console_socket.as_deref(),
            }),
            tpm,
        )?)
        .child_opt((!passthrough.is_empty()).then(|| commandline_element(&passthrough)));

    let mut out = String::new();
    domain.render(&mut out, 0);
    Ok(out)
}

// ---------------------------------------------------------------------------
// Errors and field paths

const DISKS: &str = "spec.domain.devices.disks";
const INTERFACES: &str = "spec.domain.devices.interfaces";
const EFI: &str = "spec.domain.firmware.bootloader.efi";
const SECURE_BOOT: &str = "spec.domain.firmware.bootloader.efi.secureBoot";
const KERNEL_BOOT: &str = "spec.domain.firmware.kernelBoot";

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

#[cfg(test)]
mod tests;
