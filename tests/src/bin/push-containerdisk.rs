//! push-containerdisk: pushes a disk image to a plain-HTTP registry as a
//! containerDisk in KubeVirt's layout (`/disk/disk.qcow2`, uid 107), under
//! each name given. The test bed uses it to serve the test guest under the
//! names KubeVirt's examples and documentation use.
//!
//! With `--kernel-boot <kernel> <initrd> <repo:tag>...` after them, it also
//! pushes a kernel and initrd as a `kernelBoot.container` image in the
//! layout of KubeVirt's kernel-boot demo (`/boot/vmlinuz-virt`,
//! `/boot/initramfs-virt`).
//!
//! Usage: push-containerdisk <registry host:port> <disk file> <repo:tag>...
//!        [--kernel-boot <kernel> <initrd> <repo:tag>...]

use anyhow::Context;

const USAGE: &str = "usage: push-containerdisk <registry host:port> <disk file> <repo:tag>... \
                     [--kernel-boot <kernel> <initrd> <repo:tag>...]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (disk_args, boot_args) = match args.iter().position(|a| a == "--kernel-boot") {
        Some(i) => (&args[..i], Some(&args[i + 1..])),
        None => (&args[..], None),
    };
    let [host, disk, names @ ..] = disk_args else {
        anyhow::bail!(USAGE);
    };
    anyhow::ensure!(!names.is_empty(), "no image name given; {USAGE}");
    let data = std::fs::read(disk).with_context(|| format!("reading {disk}"))?;
    for name in names {
        push(host, name, &[("disk/disk.qcow2", data.clone())]).await?;
    }
    if let Some(boot) = boot_args {
        let [kernel, initrd, names @ ..] = boot else {
            anyhow::bail!(USAGE);
        };
        anyhow::ensure!(
            !names.is_empty(),
            "no kernel-boot image name given; {USAGE}"
        );
        let kernel = std::fs::read(kernel).with_context(|| format!("reading {kernel}"))?;
        let initrd = std::fs::read(initrd).with_context(|| format!("reading {initrd}"))?;
        for name in names {
            let files = [
                ("boot/vmlinuz-virt", kernel.clone()),
                ("boot/initramfs-virt", initrd.clone()),
            ];
            push(host, name, &files).await?;
        }
    }
    Ok(())
}

async fn push(host: &str, name: &str, files: &[(&str, Vec<u8>)]) -> anyhow::Result<()> {
    ironvirt_tests::registry::push(host, name, files)
        .await
        .map_err(|e| anyhow::anyhow!("pushing {name} to {host}: {e}"))?;
    println!("pushed {host}/{name}");
    Ok(())
}
