//! The Events the handler records on VMIs. Their reasons are an enum; the
//! strings are what `kubectl describe` and the tests have always seen. The
//! reasons of a VMI that ended or could not start are also its status reason.

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::events::Recorder;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

/// Why the handler records an Event (and, for a VMI that ended or failed to
/// start, the reason in its status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The domain runs and the VMI says so.
    Started,
    /// The guest was asked to power off (the VMI is being deleted).
    ShuttingDown,
    /// Host ports forward to the guest's ports.
    PortsForwarded,
    /// The guest powered off: the VMI Succeeded.
    GuestShutdown,
    /// Someone destroyed the domain outside ironvirt.
    DomainDestroyed,
    /// QEMU died.
    QemuCrashed,
    /// libvirt or QEMU refused to start the domain.
    StartFailed,
    /// The domain stopped for a reason libvirt does not know.
    DomainStopped,
    /// The domain of a running VMI is gone.
    DomainLost,
    /// A cloud-init Secret does not exist.
    SecretNotFound,
    /// The VMI asks for something ironvirt does not do.
    Unsupported,
    /// The VMI's spec cannot be turned into a domain.
    InvalidSpec,
    /// A volume's file does not exist.
    VolumeNotFound,
    /// Making a volume's file failed.
    VolumeError,
    /// A hostDisk while hostDisk is off on this node (no --host-disk-root).
    HostDiskDisabled,
    /// A hostDisk path outside the VMI namespace's directory of the root.
    HostDiskOutsideRoot,
    /// A hostDisk path that goes through a symbolic link.
    HostDiskSymlink,
    /// A hostDisk image that is not a regular file (a device node, a
    /// directory, …), or a path through something that is not a directory.
    HostDiskNotRegularFile,
    /// An emptyDisk or DiskOrCreate capacity, or their sum, above the limit.
    VolumeTooLarge,
    /// An image larger than the free space of the file system it goes on.
    InsufficientStorage,
    /// A containerDisk or kernelBoot image started to download (not for a
    /// cache hit); its progress is in the Ready condition, reason Pulling.
    Pulling,
    /// A containerDisk image was pulled (or found in the node's cache).
    Pulled,
    /// Pulling a containerDisk image failed (the first time).
    ErrImagePull,
    /// Pulling a containerDisk image keeps failing; retried with backoff.
    ImagePullBackOff,
    /// A containerDisk image holds no usable disk.
    InvalidImage,
}

impl Reason {
    /// The reason as Events and VMI status spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Started => "Started",
            Reason::ShuttingDown => "ShuttingDown",
            Reason::PortsForwarded => "PortsForwarded",
            Reason::GuestShutdown => "GuestShutdown",
            Reason::DomainDestroyed => "DomainDestroyed",
            Reason::QemuCrashed => "QemuCrashed",
            Reason::StartFailed => "StartFailed",
            Reason::DomainStopped => "DomainStopped",
            Reason::DomainLost => "DomainLost",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::Unsupported => "Unsupported",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::VolumeNotFound => "VolumeNotFound",
            Reason::VolumeError => "VolumeError",
            Reason::HostDiskDisabled => "HostDiskDisabled",
            Reason::HostDiskOutsideRoot => "HostDiskOutsideRoot",
            Reason::HostDiskSymlink => "HostDiskSymlink",
            Reason::HostDiskNotRegularFile => "HostDiskNotRegularFile",
            Reason::VolumeTooLarge => "VolumeTooLarge",
            Reason::InsufficientStorage => "InsufficientStorage",
            Reason::Pulling => "Pulling",
            Reason::Pulled => "Pulled",
            Reason::ErrImagePull => "ErrImagePull",
            Reason::ImagePullBackOff => "ImagePullBackOff",
            Reason::InvalidImage => "InvalidImage",
        }
    }

    /// Normal for the steps of a healthy life (and a guest that powered
    /// itself off); Warning for every way a VMI fails.
    pub fn event_type(self) -> EventType {
        match self {
            Reason::Started
            | Reason::ShuttingDown
            | Reason::PortsForwarded
            | Reason::Pulling
            | Reason::Pulled
            | Reason::GuestShutdown => EventType::Normal,
            _ => EventType::Warning,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Records an Event on `vmi`. Best effort: a failure is logged.
pub async fn publish(
    recorder: &Recorder,
    vmi: &VirtualMachineInstance,
    reason: Reason,
    note: String,
) {
    let ev = Event {
        type_: reason.event_type(),
        reason: reason.as_str().to_owned(),
        note: Some(note),
        action: "Run".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &vmi.object_ref(&())).await {
        tracing::warn!(reason = reason.as_str(), error = %e, "could not record an event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Reason; 25] = [
        Reason::Started,
        Reason::ShuttingDown,
        Reason::PortsForwarded,
        Reason::GuestShutdown,
        Reason::DomainDestroyed,
        Reason::QemuCrashed,
        Reason::StartFailed,
        Reason::DomainStopped,
        Reason::DomainLost,
        Reason::SecretNotFound,
        Reason::Unsupported,
        Reason::InvalidSpec,
        Reason::VolumeNotFound,
        Reason::VolumeError,
        Reason::HostDiskDisabled,
        Reason::HostDiskOutsideRoot,
        Reason::HostDiskSymlink,
        Reason::HostDiskNotRegularFile,
        Reason::VolumeTooLarge,
        Reason::InsufficientStorage,
        Reason::Pulling,
        Reason::Pulled,
        Reason::ErrImagePull,
        Reason::ImagePullBackOff,
        Reason::InvalidImage,
    ];

    #[test]
    fn reasons_keep_their_strings() {
        for r in ALL {
            // The variant's name is the string Events have always carried.
            assert_eq!(format!("{r:?}"), r.as_str());
            assert_eq!(r.to_string(), r.as_str());
        }
    }

    #[test]
    fn only_failures_are_warnings() {
        let normal: Vec<&str> = ALL
            .into_iter()
            .filter(|r| r.event_type() == EventType::Normal)
            .map(Reason::as_str)
            .collect();
        assert_eq!(
            normal,
            [
                "Started",
                "ShuttingDown",
                "PortsForwarded",
                "GuestShutdown",
                "Pulling",
                "Pulled"
            ]
        );
    }
}
