//! What creating a VMI's domain takes, decided without the cluster or
//! libvirt: the plan beside [`crate::model::plan`] for its
//! [`Step::Create`](crate::model::Step::Create). `controller::create` only
//! carries it out:
//!
//! 1. fetch the Secrets [`volumes::referenced_secrets`] names (cluster);
//! 2. [`plan`]: the VMI's directory, the file behind each volume and the ports
//!    to forward, or a [`Refusal`] when the VMI cannot start here (among
//!    them the node's [`VolumePolicy`]: hostDisk off or outside the
//!    namespace's directory, a capacity above the limits);
//! 3. make the files with [`volumes::prepare`] (file system); a failure is a
//!    refusal (a hostDisk path that is a link, not a regular file or missing;
//!    an image larger than the free space) or, for I/O, a retry
//!    ([`prepare_failure`]);
//! 4. attach the VMI's network namespace with its declared ports forwarded
//!    ([`crate::guestnet`]), and announce where they are ([`forwards_note`]);
//! 5. [`domain_xml`]: the domain, or a refusal;
//! 6. define and start it (libvirt); libvirt refusing it is a refusal too
//!    ([`start_refusal`]).
//!
//! A refusal fails the VMI with its reason; anything else is retried with
//! backoff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::validate::{HostDiskError, VolumePolicy};
use ironvirt_crds::vmi::PortProtocol;
use ironvirt_crds::wire::{DEFAULT_FORWARDED_PORTS, pod_interface};
use kube::ResourceExt;

use crate::domxml::{self, DomainInputs, HostEnv, XmlError};
use crate::events::Reason;
use crate::guestnet::GuestPort;
use crate::libvirt::LibvirtError;
use crate::volumes::{self, PolicyViolation, SecretData, VolumeError, VolumePlan};

/// The VMI cannot start on this node: it fails with this reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            reason,
            message: message.into(),
        }
    }
}

/// Why creating stopped: the VMI cannot start here, or something that may
/// pass (a full disk, a missing tool) failed and the create is retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotCreated {
    Refused(Refusal),
    Retry(String),
}

/// A declared port of the masquerade interface: the VMI's address forwards
/// it to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardRequest {
    pub interface: String,
    pub protocol: PortProtocol,
    pub guest_port: u16,
}

impl ForwardRequest {
    /// The port as the guest network forwards it.
    pub fn guest_port(&self) -> GuestPort {
        GuestPort {
            udp: self.protocol == PortProtocol::Udp,
            port: self.guest_port,
        }
    }
}

/// Everything creating the domain needs that is decided before touching the
/// node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatePlan {
    /// The VMI's private directory ([`volumes::vmi_dir`]).
    pub dir: PathBuf,
    /// The file behind each volume, by volume name.
    pub volumes: BTreeMap<String, VolumePlan>,
    /// The declared ports of the masquerade interface, in spec order.
    pub forwards: Vec<ForwardRequest>,
    /// The EFI variable store, in the VMI's directory.
    pub nvram: PathBuf,
    /// Whether the VMI has a masquerade interface, which needs its network
    /// namespace ([`crate::guestnet`]).
    pub pod_network: bool,
    /// The kernel to boot from an image (`firmware.kernelBoot.container`).
    pub kernel_boot: Option<volumes::KernelBootPlan>,
}

/// Plans the create of `vmi`'s domain. `policy` is the node's volume policy
/// (`--host-disk-root`, `--max-volume-size`, `--max-vmi-volume-size`).
/// `secrets` holds the Secrets [`volumes::referenced_secrets`] names that
/// exist; the first one missing refuses the VMI.
pub fn plan(
    vmi: &VirtualMachineInstance,
    state_dir: &Path,
    policy: &VolumePolicy,
    secrets: &SecretData,
) -> Result<CreatePlan, NotCreated> {
    let uid = vmi.uid().unwrap_or_default();
    let ns = vmi.namespace().unwrap_or_default();
    let dir = volumes::vmi_dir(state_dir, &uid);
    if let Some(missing) = volumes::referenced_secrets(vmi)
        .into_iter()
        .find(|name| !secrets.contains_key(name))
    {
        return Err(NotCreated::Refused(Refusal::new(
            Reason::SecretNotFound,
            format!("cloud-init Secret {ns}/{missing} does not exist"),
        )));
    }
    let volumes = volumes::plan(vmi, &dir, policy, secrets).map_err(prepare_failure)?;
    let kernel_boot = volumes::plan_kernel_boot(vmi).map_err(prepare_failure)?;
    let forwards = forward_requests(vmi).map_err(NotCreated::Retry)?;
    Ok(CreatePlan {
        kernel_boot,
        nvram: dir.join("nvram.fd"),
        pod_network: domxml::wants_pod_network(vmi),
        dir,
        volumes,
        forwards,
    })
}

/// The ports the VMI's address forwards to its guest, in spec order: the
/// declared ports of its masquerade interface; when the interface on the pod
/// network (masquerade, the first bridge one, or KubeVirt's default
/// interface) declares none, [`DEFAULT_FORWARDED_PORTS`] over TCP, where
/// KubeVirt forwards every port (the admission webhook warns about it).
pub fn forward_requests(vmi: &VirtualMachineInstance) -> Result<Vec<ForwardRequest>, String> {
    let devices = vmi.spec.domain.devices.as_ref();
    let ifaces = devices
        .and_then(|d| d.interfaces.as_deref())
        .unwrap_or_default();
    let mut out = Vec::new();
    for iface in ifaces.iter().filter(|i| i.masquerade.is_some()) {
        for p in iface.ports.iter().flatten() {
            let guest_port =
                u16::try_from(p.port).map_err(|_| format!("port {} out of range", p.port))?;
            out.push(ForwardRequest {
                interface: iface.name.clone(),
                protocol: p.protocol.unwrap_or(PortProtocol::Tcp),
                guest_port,
            });
        }
    }
    if !out.is_empty() || !domxml::wants_pod_network(vmi) {
        return Ok(out);
    }
    let interface =
        pod_interface(ifaces).map_or_else(|| "default".to_owned(), |i| ifaces[i].name.clone());
    Ok(DEFAULT_FORWARDED_PORTS
        .iter()
        .map(|&guest_port| ForwardRequest {
            interface: interface.clone(),
            protocol: PortProtocol::Tcp,
            guest_port,
        })
        .collect())
}

/// The reason of a volume that cannot be made.
pub fn volume_reason(e: &VolumeError) -> Reason {
    match e {
        VolumeError::Unsupported { .. } => Reason::Unsupported,
        VolumeError::Invalid { .. } => Reason::InvalidSpec,
        VolumeError::Policy { reason, .. } => match reason {
            PolicyViolation::HostDiskDisabled => Reason::HostDiskDisabled,
            PolicyViolation::HostDiskOutsideRoot => Reason::HostDiskOutsideRoot,
            PolicyViolation::VolumeTooLarge => Reason::VolumeTooLarge,
        },
        VolumeError::HostDisk { source, .. } => host_disk_reason(source),
        VolumeError::InsufficientStorage { .. } => Reason::InsufficientStorage,
        VolumeError::Io { .. } => Reason::VolumeError,
    }
}

/// The reason of a hostDisk path the node refuses: [`HostDiskError::reason`]
/// as a [`Reason`], except that a missing image keeps the reason a missing
/// volume always had.
pub fn host_disk_reason(e: &HostDiskError) -> Reason {
    match e {
        HostDiskError::Missing { .. } => Reason::VolumeNotFound,
        HostDiskError::Symlink { .. } => Reason::HostDiskSymlink,
        HostDiskError::NotADirectory { .. } | HostDiskError::NotRegular { .. } => {
            Reason::HostDiskNotRegularFile
        }
        HostDiskError::NotAbsolute { .. }
        | HostDiskError::BadComponent { .. }
        | HostDiskError::BadNamespace { .. }
        | HostDiskError::Outside { .. } => Reason::HostDiskOutsideRoot,
        // The volumes module retries what cannot be examined; never refused.
        HostDiskError::Io { .. } => Reason::VolumeError,
    }
}

/// What a failure to plan or make the volumes means: I/O may be transient
/// (disk full, a tool missing) and is retried; the rest refuses the VMI.
pub fn prepare_failure(e: VolumeError) -> NotCreated {
    match e {
        VolumeError::Io { what, reason } => NotCreated::Retry(format!("{what}: {reason}")),
        e => NotCreated::Refused(Refusal::new(volume_reason(&e), e.to_string())),
    }
}

/// The note of the PortsForwarded Event, when any port is forwarded: where
/// on the node the guest's ports answer.
pub fn forwards_note(
    node: &str,
    address: std::net::Ipv4Addr,
    forwards: &[ForwardRequest],
) -> Option<String> {
    if forwards.is_empty() {
        return None;
    }
    let list: Vec<String> = forwards
        .iter()
        .map(|f| {
            format!(
                "{address}:{} -> {}/{:?} ({})",
                f.guest_port, f.guest_port, f.protocol, f.interface
            )
        })
        .collect();
    Some(format!("on node {node}: {}", list.join(", ")))
}

/// The domain XML of `vmi` on this node, from what the create made: the
/// volumes' files, the VMI's network (the passt socket of its masquerade
/// interface), its serial console's socket and a kernel to boot.
pub fn domain_xml(
    vmi: &VirtualMachineInstance,
    host: &HostEnv,
    inputs: &DomainInputs,
) -> Result<String, Refusal> {
    domxml::domain_xml(vmi, host, inputs).map_err(|e| {
        let reason = match e {
            XmlError::Unsupported { .. } => Reason::Unsupported,
            XmlError::Invalid { .. } => Reason::InvalidSpec,
        };
        Refusal::new(reason, e.to_string())
    })
}

/// What a failure to define or start the domain means: libvirt or QEMU
/// refusing it fails the VMI; anything else (libvirt unreachable) is an error.
pub fn start_refusal(e: LibvirtError) -> Result<Refusal, LibvirtError> {
    match e {
        e @ LibvirtError::Call(_) => Ok(Refusal::new(Reason::StartFailed, e.to_string())),
        e => Err(e),
    }
}

#[cfg(test)]
#[path = "create_plan_tests.rs"]
mod tests;
