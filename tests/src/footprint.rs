//! The footprint of ironvirt-api and a handler: their live tokio tasks and
//! open file descriptors, to show that sessions leave nothing behind. Run it
//! from a test binary of its own (cargo runs binaries one after another), so
//! that the bed's ironvirt-api serves no other test meanwhile.

use std::time::Duration;

use crate::api::BedApi;
use crate::handler::Handler;
use crate::operator::{open_fds, scrape};

/// What the counts may be above the baseline without a leak: kube-apiserver
/// keeps a few idle HTTP connections to ironvirt-api (a descriptor and a task
/// each) for discovery and its availability checks, opened and closed on its
/// own schedule.
pub const SLACK: usize = 3;

/// Tasks and open descriptors of ironvirt-api and the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub api_tasks: u64,
    pub api_fds: usize,
    pub handler_tasks: u64,
    pub handler_fds: usize,
}

impl Footprint {
    pub async fn now(api: BedApi, h: &Handler) -> Footprint {
        // Whole numbers of tasks, read as f64 from the exposition.
        let tasks = |v: f64| v.max(0.0).round() as u64;
        Footprint {
            api_tasks: tasks(scrape(api.metrics_port, "ironvirt_api_runtime_alive_tasks").await),
            api_fds: open_fds(api.pid),
            handler_tasks: tasks(
                scrape(h.health_port, "ironvirt_handler_runtime_alive_tasks").await,
            ),
            handler_fds: open_fds(h.pid()),
        }
    }

    /// At most `SLACK` above `base` in every count.
    pub fn within(&self, base: &Footprint) -> bool {
        self.api_tasks <= base.api_tasks + SLACK as u64
            && self.api_fds <= base.api_fds + SLACK
            && self.handler_tasks <= base.handler_tasks + SLACK as u64
            && self.handler_fds <= base.handler_fds + SLACK
    }
}

/// Waits until the footprint is back within `base`.
pub async fn settles_to(api: BedApi, h: &Handler, base: &Footprint) -> Result<Footprint, String> {
    let mut last = Footprint::now(api, h).await;
    for _ in 0..40 {
        if last.within(base) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = Footprint::now(api, h).await;
    }
    Err(format!(
        "left behind after closing: now {last:?}, allowed {base:?}; ironvirt-api's TCP connections: {:?}",
        tcp_connections(api.pid)
    ))
}

/// The TCP connections a process holds, as "local -> remote STATE", read
/// from /proc (to tell which side a left-over connection belongs to).
pub fn tcp_connections(pid: u32) -> Vec<String> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                out.push(format!(
                    "{} -> {} {}",
                    endpoint(f[1]),
                    endpoint(f[2]),
                    tcp_state(f[3])
                ));
            }
        }
    }
    out.sort();
    out
}

/// "0100007F:1F90" (or its IPv6 form) as "127.0.0.1:8080"; the port is what
/// tells the peers apart on the bed, so IPv6 addresses stay in hex.
fn endpoint(hex: &str) -> String {
    let Some((addr, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(addr, 16) {
        Ok(a) if addr.len() == 8 => format!("{}:{port}", std::net::Ipv4Addr::from(a.swap_bytes())),
        _ => format!("[{addr}]:{port}"),
    }
}

fn tcp_state(hex: &str) -> &'static str {
    match hex {
        "01" => "ESTABLISHED",
        "06" => "TIME_WAIT",
        "08" => "CLOSE_WAIT",
        "0A" => "LISTEN",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        _ => "OTHER",
    }
}

/// The footprint once it has stopped changing (idle connections and
/// finished sessions wind down over a few seconds).
pub async fn steady(api: BedApi, h: &Handler) -> Footprint {
    let mut last = Footprint::now(api, h).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = Footprint::now(api, h).await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_endpoints_read_as_addresses() {
        assert_eq!(endpoint("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(tcp_state("01"), "ESTABLISHED");
        assert_eq!(endpoint("garbage"), "garbage");
    }
}
