//! Test helpers for raw libvirt domains of the test guest: domain XML for a
//! direct kernel boot or a disk boot under TCG, a guard that destroys and
//! undefines the domain however the test ends, and a serial console reader
//! with timeouts.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::stream::Stream;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A domain name unique to this test process.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// How the test guest boots.
pub enum Boot<'a> {
    /// Direct kernel boot of the kernel and initramfs.
    Kernel {
        kernel: &'a Path,
        initramfs: &'a Path,
        cmdline: &'a str,
    },
    /// SeaBIOS boots a qcow2 on a virtio disk.
    Disk { qcow2: &'a Path },
}

/// Domain XML for the test guest: TCG, 256 MiB, one vCPU, serial console on a
/// pty, VNC on 127.0.0.1.
pub fn guest_xml(name: &str, boot: &Boot<'_>) -> String {
    let (os_extra, disk) = match boot {
        Boot::Kernel {
            kernel,
            initramfs,
            cmdline,
        } => (
            format!(
                "<kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline>",
                kernel.display(),
                initramfs.display(),
                cmdline
            ),
            String::new(),
        ),
        Boot::Disk { qcow2 } => (
            "<boot dev='hd'/>".to_owned(),
            format!(
                "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda' bus='virtio'/></disk>",
                qcow2.display()
            ),
        ),
    };
    format!(
        "<domain type='qemu'>\
           <name>{name}</name>\
           <memory unit='MiB'>256</memory>\
           <vcpu>1</vcpu>\
           <os><type arch='x86_64' machine='pc'>hvm</type>{os_extra}</os>\
           <features><acpi/></features>\
           <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>\
           <devices>\
             {disk}\
             <serial type='pty'><target port='0'/></serial>\
             <console type='pty'><target type='serial' port='0'/></console>\
             <graphics type='vnc'><listen type='socket'/></graphics>\
             <video><model type='vga'/></video>\
           </devices>\
         </domain>"
    )
}

/// Destroys and undefines its domain when dropped, so no domain outlives a test.
pub struct DomainGuard {
    pub domain: Domain,
    pub name: String,
}

impl DomainGuard {
    /// Defines and starts a domain from `xml`.
    pub fn start(conn: &Connect, name: &str, xml: &str) -> Result<Self, virt::error::Error> {
        let domain = conn.define_domain_xml(xml)?;
        let guard = DomainGuard {
            domain,
            name: name.to_owned(),
        };
        guard.domain.create()?;
        Ok(guard)
    }

    /// Waits until the domain is no longer active.
    pub fn wait_inactive(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.domain.is_active(), Ok(false)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if matches!(self.domain.is_active(), Ok(true)) {
            let _ = self.domain.destroy();
        }
        let _ = self.domain.undefine();
    }
}

/// A serial console: a reader thread feeds a bounded channel; `expect` waits
/// for text with a timeout.
///
/// It has a libvirt connection of its own: a blocking `virStreamRecv` holds its
/// connection's I/O, and another call on the same connection (destroy, say)
/// would then wait for it forever.
pub struct Console {
    _conn: Connect,
    stream: Stream,
    rx: Receiver<Vec<u8>>,
    seen: String,
}

impl Console {
    /// Opens the serial console of the domain `name` on its own connection to `uri`.
    pub fn open(uri: &str, name: &str) -> Result<Self, virt::error::Error> {
        let conn = Connect::open(Some(uri))?;
        let domain = conn.lookup_domain_by_name(name)?;
        let stream = Stream::new(&conn, 0)?;
        domain.open_console(None, &stream, 0)?;
        let reader = stream.clone();
        let (tx, rx) = sync_channel::<Vec<u8>>(64);
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            loop {
                match reader.recv(&mut buf) {
                    Ok(n) if n > 0 => {
                        let len = usize::try_from(n).unwrap_or(0);
                        if tx.send(buf[..len].to_vec()).is_err() {
                            break;
                        }
                    }
                    _ => break,
                }
            }
        });
        Ok(Console {
            _conn: conn,
            stream,
            rx,
            seen: String::new(),
        })
    }

    /// Everything read so far.
    pub fn transcript(&self) -> &str {
        &self.seen
    }

    /// The last few KiB read, for failure messages.
    pub fn recent(&self) -> &str {
        let mut start = self.seen.len().saturating_sub(4096);
        while !self.seen.is_char_boundary(start) {
            start += 1;
        }
        &self.seen[start..]
    }

    /// Reads until `needle` appears after the current position. Returns the
    /// text read up to and including it, or an error with the transcript.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        let start = self.seen.len();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = self.seen[start..].find(needle) {
                return Ok(self.seen[start..start + pos + needle.len()].to_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{needle:?} not seen within {timeout:?}; console so far (tail):\n{}",
                        self.recent()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "console closed before {needle:?}; console so far (tail):\n{}",
                        self.recent()
                    ));
                }
            }
        }
    }

    /// Types `text` on the console.
    pub fn send(&self, text: &str) -> Result<(), virt::error::Error> {
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            let n = self.stream.send(rest)?;
            let n = usize::try_from(n).unwrap_or(0);
            rest = &rest[n.min(rest.len())..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_boot_xml_has_tcg_serial_and_vnc() {
        let xml = guest_xml(
            "t",
            &Boot::Kernel {
                kernel: Path::new("/k"),
                initramfs: Path::new("/i"),
                cmdline: "console=ttyS0",
            },
        );
        assert!(xml.contains("<domain type='qemu'>"));
        assert!(xml.contains("<kernel>/k</kernel>"));
        assert!(xml.contains("<serial type='pty'>"));
        assert!(xml.contains("<listen type='socket'/>"));
        assert!(!xml.contains("<disk"));
    }

    #[test]
    fn disk_boot_xml_uses_virtio_qcow2() {
        let xml = guest_xml(
            "t",
            &Boot::Disk {
                qcow2: Path::new("/d.qcow2"),
            },
        );
        assert!(xml.contains("type='qcow2'"));
        assert!(xml.contains("bus='virtio'"));
        assert!(xml.contains("<boot dev='hd'/>"));
    }
}
