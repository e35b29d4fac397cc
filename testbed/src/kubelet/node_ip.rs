//! The node's address: chosen and recorded in its directory, put on `lo`
//! with the nftables table that keeps it to this host, and removed again.

use std::fs;
use std::process::{Command, Stdio};

use super::config::{self, NodePaths};
use super::{KubeletError, Result, io};

/// The host's IPv4 addresses (`ip -4 -o addr`).
fn host_ipv4s() -> Result<Vec<std::net::Ipv4Addr>> {
    let out = image_run(Command::new("ip").args(["-4", "-o", "addr", "show"]))?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            it.position(|w| w == "inet")?;
            it.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

fn image_run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| KubeletError::Command {
        command: format!("{cmd:?}"),
        output: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: format!("{cmd:?}"),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's address: the one recorded in its directory when there is one
/// (and not taken by something else since), else the first free one of
/// [`config::NODE_IP_PREFIX`], recorded.
pub(super) fn choose_node_ip_now(paths: &NodePaths) -> Result<std::net::Ipv4Addr> {
    let file = paths.node_ip_file();
    if let Some(ip) = read_node_ip(paths) {
        return Ok(ip);
    }
    let taken = host_ipv4s()?;
    let ip = config::choose_node_ip(&taken).ok_or_else(|| KubeletError::Command {
        command: "choosing the node's address".into(),
        output: "every address of 10.214.0.0/24 is taken on this host".into(),
    })?;
    fs::write(&file, ip.to_string()).map_err(io(&file))?;
    Ok(ip)
}

pub(super) fn read_node_ip(paths: &NodePaths) -> Option<std::net::Ipv4Addr> {
    fs::read_to_string(paths.node_ip_file())
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Puts the node's address on `lo` and the nftables table that keeps it to
/// this host (a marker file says the address is ours to remove).
pub(super) fn add_node_ip(paths: &NodePaths, ip: std::net::Ipv4Addr) -> Result<()> {
    let mut nft = Command::new("nft");
    nft.arg("-f")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = nft.spawn().map_err(|e| KubeletError::Command {
        command: "nft -f -".into(),
        output: e.to_string(),
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(config::nft_table(ip).as_bytes())
            .map_err(io("nft stdin"))?;
    }
    let out = child.wait_with_output().map_err(io("nft"))?;
    if !out.status.success() {
        return Err(KubeletError::Command {
            command: "nft -f - (the node address's table)".into(),
            output: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    if !host_ipv4s()?.contains(&ip) {
        image_run(Command::new("ip").args(["addr", "add", &format!("{ip}/32"), "dev", "lo"]))?;
        let marker = paths.root().join("node-ip.added");
        fs::write(&marker, "").map_err(io(&marker))?;
    }
    Ok(())
}

/// Removes what [`add_node_ip`] added.
pub(super) fn remove_node_ip(paths: &NodePaths) {
    let Some(ip) = read_node_ip(paths) else {
        return;
    };
    let marker = paths.root().join("node-ip.added");
    if marker.exists() {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{ip}/32"), "dev", "lo"])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_file(marker);
    }
    let _ = Command::new("nft")
        .args(["delete", "table", "inet", &config::nft_table_name(ip)])
        .stderr(Stdio::null())
        .status();
}
