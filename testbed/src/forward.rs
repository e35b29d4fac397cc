//! A TCP forwarder from a node's network namespace to the host's loopback.
//!
//! The control plane (kube-apiserver, the registry) listens on 127.0.0.1 of
//! the host's network namespace, which a node's namespace cannot reach. The
//! forwarder, a process of the host namespace, opens its listening sockets
//! inside the node's namespace (a socket keeps the namespace it was made in)
//! on that namespace's own 127.0.0.1, and connects each accepted connection
//! to the same port on the host's 127.0.0.1. Nothing listens anywhere else:
//! the node reaches `https://127.0.0.1:<port>` as if it were on the host, and
//! kube-apiserver's serving certificate (127.0.0.1) verifies unchanged.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// Why the forwarder could not start.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listening on {addr} in {netns}: {source}")]
    Listen {
        addr: SocketAddr,
        netns: PathBuf,
        source: std::io::Error,
    },
    #[error("the thread entering the namespace failed")]
    Thread,
}

/// Listens on 127.0.0.1:`port` for each of `ports` inside the network
/// namespace `netns` (a file such as /run/netns/NAME). Only a thread of its
/// own enters the namespace; the caller's threads stay where they are.
pub fn listen_in(netns: &Path, ports: &[u16]) -> Result<Vec<TcpListener>, ForwardError> {
    let netns = netns.to_owned();
    let ports = ports.to_vec();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).map_err(|source| ForwardError::Netns {
            path: netns.clone(),
            source,
        })?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| ForwardError::Netns {
            path: netns.clone(),
            source: std::io::Error::from(e),
        })?;
        ports
            .iter()
            .map(|port| {
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
                let listen_err = |source| ForwardError::Listen {
                    addr,
                    netns: netns.clone(),
                    source,
                };
                let l = TcpListener::bind(addr).map_err(listen_err)?;
                l.set_nonblocking(true).map_err(listen_err)?;
                Ok(l)
            })
            .collect()
    })
    .join()
    .map_err(|_| ForwardError::Thread)?
}

/// Accepts on every listener forever and relays each connection to the same
/// port on the calling namespace's 127.0.0.1.
pub async fn serve(listeners: Vec<TcpListener>) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let port = l.local_addr()?.port();
        let l = tokio::net::TcpListener::from_std(l)?;
        tasks.spawn(async move {
            loop {
                let (mut inbound, peer) = match l.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(port, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                tokio::spawn(async move {
                    let target = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                    match tokio::net::TcpStream::connect(target).await {
                        Ok(mut outbound) => {
                            let _ = inbound.set_nodelay(true);
                            let _ = outbound.set_nodelay(true);
                            let r =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            tracing::debug!(port, %peer, result = ?r, "connection closed");
                        }
                        Err(e) => {
                            tracing::warn!(port, %peer, error = %e, "cannot reach the host port")
                        }
                    }
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
