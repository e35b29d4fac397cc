//! `<devices>`: disks, interfaces, controllers, serial console, graphics.

use super::*;

// <devices>

pub(super) fn devices_element(
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
