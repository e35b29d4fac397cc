//! The test guest built by `hack/build-guest.sh`: a Debian cloud kernel with a
//! busybox initramfs, and a bootable qcow2 disk of the same guest; and the
//! same disk with the small kernel, which boots in 64M.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The line the guest's init prints on the serial console once it is up.
pub const MARKER: &str = "IRONVIRT-GUEST-READY";

/// Kernel command line for direct kernel boot: the last console is
/// /dev/console (serial), tty0 keeps the log on the VGA screen;
/// `no_timer_check` because under TCG on a loaded machine the kernel's
/// IO-APIC timer check can miss its window and panic.
pub const CMDLINE: &str = "console=tty0 console=ttyS0 no_timer_check";

/// Paths of the guest artifacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guest {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// A bootable qcow2 (syslinux, SeaBIOS). Open it read-only, or give each
    /// domain its own copy: QEMU locks images it writes.
    pub disk: PathBuf,
    /// The same disk with the small kernel (`hack/build-small-kernel.sh`):
    /// it boots in the 64M KubeVirt's cirros examples give, where the cloud
    /// kernel needs 80M. Not for Secure Boot (the kernel is unsigned).
    pub disk_small: PathBuf,
}

impl Guest {
    /// The guest in `dir`, checking that every artifact is there.
    pub fn at(dir: &Path) -> Result<Self> {
        let g = Guest {
            dir: dir.to_owned(),
            kernel: dir.join("vmlinuz"),
            initramfs: dir.join("initramfs.cpio.gz"),
            disk: dir.join("disk.qcow2"),
            disk_small: dir.join("disk-small.qcow2"),
        };
        for (what, p) in [
            ("the guest kernel", &g.kernel),
            ("the guest initramfs", &g.initramfs),
            ("the guest disk", &g.disk),
            ("the guest disk with the small kernel", &g.disk_small),
        ] {
            if !p.is_file() {
                return Err(Error::Missing {
                    what,
                    path: p.clone(),
                    hint: "build the guest with `make guest` (hack/build-guest.sh)",
                });
            }
        }
        Ok(g)
    }
}
