//! The bed's bridge in the host namespace: its /24, chosen clear of the
//! host's networks, its address, and the host's nftables table for it.

use std::ffi::OsStr;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::layout::{lock, net_record_path, write_json};
use super::{NetRecord, NodeError, Result, SUBNET_ENV, io_err, net_record, nodes_dir, run, tag};
use crate::layout::Layout;

/// Where the automatic choice starts.
const AUTO_BASE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);

pub(super) fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Deletes a network interface of the host's namespace; one that is gone
/// (or going: a veth whose peer's namespace was just deleted) is no error.
pub(super) fn delete_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    match run("ip", ["link", "delete", name]) {
        Err(_) if !link_exists(name) => Ok(()),
        other => other.map(drop),
    }
}

/// Whether two IPv4 prefixes overlap.
fn overlaps(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let len = alen.min(blen).min(32);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    (u32::from(a) & mask) == (u32::from(b) & mask)
}

/// The prefixes the host uses (interface addresses and routes), except on
/// `except` (the bed's own bridge).
fn host_prefixes(except: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    for line in run("ip", ["-4", "-o", "addr", "show"])?.lines() {
        let mut words = line.split_whitespace();
        let dev = words.nth(1).unwrap_or_default();
        if dev == except {
            continue;
        }
        if let Some(p) = words
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(parse_prefix)
        {
            out.push(p);
        }
    }
    for line in run("ip", ["-4", "-o", "route", "show", "table", "all"])?.lines() {
        if line.contains(&format!("dev {except} ")) || line.ends_with(&format!("dev {except}")) {
            continue;
        }
        let first = line
            .split_whitespace()
            .find(|w| !matches!(*w, "local" | "broadcast" | "unicast" | "blackhole"));
        if let Some(p) = first.and_then(parse_prefix) {
            // A host route (/32) on this machine's own addresses is no network.
            if p.1 < 32 {
                out.push(p);
            }
        }
    }
    Ok(out)
}

fn parse_prefix(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    Some((a.parse().ok()?, l.parse().ok()?))
}

/// Parses `a.b.c.0/24`.
fn parse_subnet(s: &str) -> Result<Ipv4Addr> {
    let bad = || {
        NodeError::Config(format!(
            "{SUBNET_ENV}={s:?}: want a /24 such as 10.213.0.0/24"
        ))
    };
    let (addr, len) = parse_prefix(s).ok_or_else(bad)?;
    if len != 24 || u32::from(addr) & 0xff != 0 {
        return Err(bad());
    }
    Ok(addr)
}

/// Creates the bed's bridge when missing (under the nodes lock).
pub(super) fn ensure_net(layout: &Layout) -> Result<NetRecord> {
    let tag = tag(layout);
    let bridge = format!("ivb{tag}");
    if let Some(rec) = net_record(layout)?
        && link_exists(&rec.bridge)
    {
        return Ok(rec);
    }
    // Machine-wide: two beds must not pick the same /24.
    let _machine = lock(Path::new("/run/lock/ironvirt-node-net.lock"))?;
    let used = host_prefixes(&bridge)?;
    let free = |net: Ipv4Addr| !used.iter().any(|(a, l)| overlaps(net, 24, *a, *l));
    let subnet = match std::env::var(SUBNET_ENV) {
        Ok(s) if !s.is_empty() => {
            let net = parse_subnet(&s)?;
            if !free(net) {
                return Err(NodeError::Config(format!(
                    "{SUBNET_ENV}={s}: the host already uses addresses in it"
                )));
            }
            net
        }
        _ => (0..=255u32)
            .map(|i| Ipv4Addr::from(u32::from(AUTO_BASE) + (i << 8)))
            .find(|n| free(*n))
            .ok_or(NodeError::NoSubnet)?,
    };
    let host_addr = Ipv4Addr::from(u32::from(subnet) + 1);
    let rec = NetRecord {
        tag,
        bridge: bridge.clone(),
        subnet,
        host_addr,
    };
    // Recorded first: `down` removes whatever part of it exists.
    write_json(&net_record_path(layout), &rec)?;
    if !link_exists(&bridge) {
        run("ip", ["link", "add", &bridge, "type", "bridge"])?;
    }
    run("ip", ["addr", "flush", "dev", &bridge])?;
    run(
        "ip",
        ["addr", "add", &format!("{host_addr}/24"), "dev", &bridge],
    )?;
    run("ip", ["link", "set", &bridge, "up"])?;
    // Nodes (and the guests behind them) open no connection to the host:
    // only replies to the host's own (ironvirt-api to a handler) come in.
    let rules = nodes_dir(layout).join("host.nft");
    fs::write(&rules, host_ruleset(&rec.tag, &bridge)).map_err(io_err(&rules))?;
    let _ = run("nft", ["delete", "table", "inet", &host_table(&rec.tag)]);
    run("nft", [OsStr::new("-f"), rules.as_os_str()])?;
    tracing::info!(bridge = %bridge, host = %host_addr, "node bridge up");
    Ok(rec)
}

/// The host's nftables table of a bed's bridge.
pub(super) fn host_table(tag: &str) -> String {
    format!("ivnodes_{tag}")
}

/// What the host accepts from the bridge: replies, nothing new.
fn host_ruleset(tag: &str, bridge: &str) -> String {
    format!(
        "table inet {table} {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    iifname \"{bridge}\" ct state established,related accept\n    iifname \"{bridge}\" drop\n  }}\n}}\n",
        table = host_table(tag)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_overlap() {
        let n = Ipv4Addr::new(10, 213, 0, 0);
        assert!(overlaps(n, 24, Ipv4Addr::new(10, 213, 0, 7), 32));
        assert!(overlaps(n, 24, Ipv4Addr::new(10, 0, 0, 0), 8));
        assert!(!overlaps(n, 24, Ipv4Addr::new(10, 213, 1, 0), 24));
        assert!(overlaps(n, 24, Ipv4Addr::new(0, 0, 0, 0), 0));
        assert_eq!(
            parse_subnet("10.213.4.0/24").unwrap(),
            Ipv4Addr::new(10, 213, 4, 0)
        );
        assert!(parse_subnet("10.213.4.1/24").is_err());
        assert!(parse_subnet("10.213.0.0/16").is_err());
    }

    #[test]
    fn the_host_takes_only_replies_from_the_bridge() {
        let rules = host_ruleset("abc123", "ivbabc123");
        assert!(rules.starts_with("table inet ivnodes_abc123 {"));
        assert!(rules.contains("iifname \"ivbabc123\" ct state established,related accept"));
        assert!(rules.contains("iifname \"ivbabc123\" drop"));
    }
}
