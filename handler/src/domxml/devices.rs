//! `<devices>`: disks, interfaces, controllers, serial console, graphics.

use super::*;

// <devices>

/// The guest's serial console: where QEMU serves it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SerialConsole<'a> {
    /// A UNIX socket QEMU listens on (the handler connects to it); None: a pty.
    pub socket: Option<&'a Path>,
}

pub(super) fn devices_element(
    devices: &Devices,
    disks: Vec<Element>,
    scsi: bool,
    interfaces: Vec<Element>,
    serial_console: Option<SerialConsole<'_>>,
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
    if graphics {
        out = out.child(
            Element::new("graphics")
                .attr("type", "vnc")
                .child(Element::new("listen").attr("type", "socket")),
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
