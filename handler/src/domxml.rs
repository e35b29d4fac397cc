//! VMI → libvirt domain XML: a pure function of the VMI and facts about the
//! host, unit-tested against golden files in `handler/tests/golden/`.
//!
//! Also the reverse direction for the few facts the handler reads back from a
//! live domain's XML: its ironvirt metadata, the VNC port and the MACs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ironvirt_crds::VirtualMachineInstance;

/// The XML namespace of ironvirt's domain metadata element.
pub const METADATA_NS: &str = "https://ironvirt.io/domain/v1";
/// The prefix used for the metadata element (`<ironvirt:vmi …/>`).
pub const METADATA_PREFIX: &str = "ironvirt";

/// The libvirt domain name of a VMI: `ironvirt-<namespace>_<name>`.
pub fn domain_name(namespace: &str, name: &str) -> String {
    format!("ironvirt-{namespace}_{name}")
}

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
pub fn domain_xml(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    inputs: &DomainInputs,
) -> Result<String, XmlError> {
    let _ = (vmi, host, inputs);
    todo!("domxml helper")
}

/// Reads ironvirt's metadata element (as returned by libvirt's
/// `virDomainGetMetadata(ELEMENT)`, or a whole domain XML) back into its owner.
pub fn parse_owner(xml: &str) -> Option<DomainOwner> {
    let _ = xml;
    todo!("domxml helper")
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
pub fn parse_live(xml: &str) -> LiveFacts {
    let _ = xml;
    todo!("domxml helper")
}
