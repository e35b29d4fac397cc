//! push-containerdisk: pushes a disk image to a plain-HTTP registry as a
//! containerDisk in KubeVirt's layout (`/disk/disk.qcow2`, uid 107), under
//! each name given. The test bed uses it to serve the test guest under the
//! names KubeVirt's examples and documentation use.
//!
//! Usage: push-containerdisk <registry host:port> <disk file> <repo:tag>...

use anyhow::Context;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, disk, names @ ..] = args.as_slice() else {
        anyhow::bail!("usage: push-containerdisk <registry host:port> <disk file> <repo:tag>...");
    };
    anyhow::ensure!(!names.is_empty(), "no image name given");
    let data = std::fs::read(disk).with_context(|| format!("reading {disk}"))?;
    for name in names {
        ironvirt_tests::registry::push(host, name, &[("disk/disk.qcow2", data.clone())])
            .await
            .map_err(|e| anyhow::anyhow!("pushing {name} to {host}: {e}"))?;
        println!("pushed {host}/{name}");
    }
    Ok(())
}
