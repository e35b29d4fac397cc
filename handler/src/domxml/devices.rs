//! `<devices>`: disks, interfaces, controllers, serial console, graphics.

use super::*;
use ironvirt_crds::domain::{InputBus, InputType};

// <devices>

/// The guest's serial console: where QEMU serves it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SerialConsole<'a> {
    /// A UNIX socket QEMU listens on (the handler connects to it); None: a pty.
    pub socket: Option<&'a Path>,
}

/// Whether the domain gets an emulated TPM: `devices.tpm` unless
/// `enabled: false`; swtpm must be installed.
pub(super) fn tpm(devices: &Devices, host: &HostEnv) -> Result<bool, XmlError> {
    let wanted = devices
        .tpm
        .as_ref()
        .is_some_and(|t| t.enabled != Some(false));
    if wanted && !host.swtpm {
        return Err(unsupported(
            "spec.domain.devices.tpm",
            "an emulated TPM needs swtpm, which is not installed on this node",
        ));
    }
    Ok(wanted)
}

/// `<input>` elements: the listed ones, or a USB tablet when none are listed
/// and `autoattachInputDevice` is true.
fn input_elements(devices: &Devices) -> Result<Vec<Element>, XmlError> {
    let listed = devices.inputs.as_deref().unwrap_or_default();
    if listed.is_empty() {
        let auto = devices.autoattach_input_device == Some(true);
        return Ok(auto
            .then(|| {
                Element::new("input")
                    .attr("type", "tablet")
                    .attr("bus", "usb")
            })
            .into_iter()
            .collect());
    }
    listed
        .iter()
        .enumerate()
        .map(|(i, input)| {
            if !is_token(&input.name, "_-") {
                return Err(invalid(
                    format!("spec.domain.devices.inputs[{i}].name"),
                    format!("{:?} is not a device name", input.name),
                ));
            }
            let kind = match input.input_type {
                InputType::Tablet => "tablet",
                InputType::Keyboard => "keyboard",
            };
            let bus = match input.bus {
                Some(InputBus::Virtio) => "virtio",
                Some(InputBus::Usb) | None => "usb",
            };
            Ok(Element::new("input")
                .attr("type", kind)
                .attr("bus", bus)
                .child(alias(&input.name)))
        })
        .collect()
}

pub(super) fn devices_element(
    devices: &Devices,
    disks: Vec<Element>,
    scsi: bool,
    interfaces: Vec<Element>,
    serial_console: Option<SerialConsole<'_>>,
    tpm: bool,
) -> Result<Element, XmlError> {
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
    if let Some(serial) = serial_console {
        // One chardev: the console element refers to the serial port.
        let (kind, source) = match serial.socket {
            Some(path) => (
                "unix",
                Some(
                    Element::new("source")
                        .attr("mode", "bind")
                        .attr("path", path.display()),
                ),
            ),
            None => ("pty", None),
        };
        out = out
            .child(
                Element::new("serial")
                    .attr("type", kind)
                    .child_opt(source.clone())
                    .child(Element::new("target").attr("port", 0)),
            )
            .child(
                Element::new("console")
                    .attr("type", kind)
                    .child_opt(source)
                    .child(
                        Element::new("target")
                            .attr("type", "serial")
                            .attr("port", 0),
                    ),
            );
    }
    out = out.children(input_elements(devices)?);
    if tpm {
        out = out.child(
            Element::new("tpm").attr("model", "tpm-crb").child(
                Element::new("backend")
                    .attr("type", "emulator")
                    .attr("version", "2.0"),
            ),
        );
    }
    if graphics {
        out = out.child(
            Element::new("graphics")
                .attr("type", "vnc")
                .child(Element::new("listen").attr("type", "socket")),
        );
    }
    let video = match devices.video.as_ref().and_then(|v| v.video_type) {
        Some(t) => t.as_str(),
        None if graphics => "vga",
        None => "none",
    };
    out = out.child(Element::new("video").child(Element::new("model").attr("type", video)));
    let balloon = if devices.autoattach_mem_balloon == Some(true) {
        "virtio"
    } else {
        "none"
    };
    out = out.child(Element::new("memballoon").attr("model", balloon));
    if devices.rng.is_some() {
        out = out.child(
            Element::new("rng").attr("model", "virtio").child(
                Element::new("backend")
                    .attr("model", "random")
                    .text("/dev/urandom"),
            ),
        );
    }
    Ok(out)
}
