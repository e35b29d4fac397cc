//! Starting a node: its record, then directories, configuration,
//! namespaces and libvirt in order, then its forwarder and handler.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::bridge::{ensure_net, link_exists};
use super::layout::{check_name, lock_nodes, ns_dir, write_json};
use super::libvirt::{host_uuid, start_libvirt, virsh, write_config, write_migration_tls};
use super::namespaces::{make_dirs, make_namespaces, ns_identity};
use super::teardown::stop_node_locked;
use super::{
    NODE_HANDLER_STATE, NetRecord, NodeError, NodeRecord, NodeSpec, Result, io_err, net_record,
    nodes_dir, record, records, supervisor,
};
use crate::layout::Layout;
use crate::process::{Supervisor, process_alive};

/// The lowest index ≥ 1 no other node of the bed has.
fn free_index(layout: &Layout) -> Result<u8> {
    let used: BTreeSet<u8> = records(layout)?.iter().map(|r| r.index).collect();
    (1..=200u8)
        .find(|i| !used.contains(i))
        .ok_or_else(|| NodeError::Config("a bed has at most 200 nodes".into()))
}

/// Starts node `spec.name` (replacing a node of that name the bed already
/// has): namespaces, bridge port, libvirt, forwarder and handler. On
/// failure, what was started is stopped again.
pub fn start_node(layout: &Layout, spec: &NodeSpec) -> Result<NodeRecord> {
    check_name(&spec.name)?;
    let _lock = lock_nodes(layout)?;
    if let Some(old) = record(layout, &spec.name)? {
        // A node that still runs keeps its namespaces, libvirtd and guests
        // (as the host's libvirtd does when `make run` runs again): only its
        // forwarder and handler start again, with `spec`'s settings.
        if let Some(net) = net_record(layout)?
            && node_alive(layout, &old, &net)
        {
            tracing::info!(node = %old.name, "node runs; restarting its forwarder and handler");
            start_services(layout, spec, &old, Instant::now())?;
            return Ok(old);
        }
        stop_node_locked(layout, &spec.name)?;
    }
    let net = ensure_net(layout)?;
    let index = free_index(layout)?;
    let dir = nodes_dir(layout).join(&spec.name);
    let rec = NodeRecord {
        name: spec.name.clone(),
        index,
        netns: format!("ivn-{}-{}", net.tag, spec.name),
        veth: format!("ivv{}{}", net.tag, index),
        addr: Ipv4Addr::from(u32::from(net.subnet) + 10 + u32::from(index)),
        dir: dir.clone(),
        mntns: ns_dir(layout).join(format!("{}.mnt", spec.name)),
        host_uuid: host_uuid(),
    };
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // Recorded before anything exists: a stop finds every part.
    write_json(&dir.join("node.json"), &rec)?;
    match start_locked(layout, spec, &net, &rec) {
        Ok(()) => Ok(rec),
        Err(e) => {
            tracing::error!(node = %rec.name, error = %e, "node start failed; stopping what was started");
            if let Err(stop) = stop_node_locked(layout, &rec.name) {
                tracing::error!(node = %rec.name, error = %stop, "cleanup after the failed start failed too");
            }
            Err(e)
        }
    }
}

fn start_locked(layout: &Layout, spec: &NodeSpec, net: &NetRecord, rec: &NodeRecord) -> Result<()> {
    let started = Instant::now();
    make_dirs(rec)?;
    write_config(&rec.dir, &rec.host_uuid)?;
    write_migration_tls(layout, rec)?;
    make_namespaces(layout, net, rec, started)?;
    start_libvirt(layout, rec, started)?;
    start_services(layout, spec, rec, started)
}

/// Whether node `rec` still runs: its namespaces, veth and bridge exist,
/// and its virtlogd and libvirtd run and answer.
fn node_alive(layout: &Layout, rec: &NodeRecord, net: &NetRecord) -> bool {
    let sup = supervisor(layout);
    let recorded = sup.recorded();
    let running = |what: &str| {
        let name = rec.process(what);
        recorded
            .iter()
            .any(|r| r.name == name && Supervisor::is_running(r))
    };
    ns_identity(&rec.mntns).is_some()
        && ns_identity(&rec.netns_path()).is_some()
        && link_exists(&rec.veth)
        && link_exists(&net.bridge)
        && running("virtlogd")
        && running("libvirtd")
        && virsh(&rec.libvirt_uri(), 10, &["version"]).is_ok()
}

/// (Re)starts the node's forwarder and handler.
pub(super) fn start_services(
    layout: &Layout,
    spec: &NodeSpec,
    rec: &NodeRecord,
    started: Instant,
) -> Result<()> {
    let sup = supervisor(layout);
    let wrapper = rec.wrapper();
    for what in ["handler", "forward"] {
        sup.stop(&rec.process(what), Duration::from_secs(15))?;
    }
    // The control plane on the node's 127.0.0.1.
    let ready = rec.dir.join("forward.ready");
    let _ = fs::remove_file(&ready);
    let mut fwd_args = vec![
        "forward".to_owned(),
        "--netns".to_owned(),
        rec.netns_path().display().to_string(),
        "--ready-file".to_owned(),
        ready.display().to_string(),
    ];
    for p in &spec.forward_ports {
        fwd_args.push("--port".into());
        fwd_args.push(p.to_string());
    }
    let fwd = sup.spawn(&rec.process("forward"), &spec.testbed_bin, &fwd_args, &[])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        if !process_alive(fwd.pid) || Instant::now() > deadline {
            return Err(start_error(
                &sup,
                rec,
                "forward",
                "the forwarder did not listen",
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let h = &spec.handler;
    let health = h
        .health_addr
        .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
    let mut args: Vec<String> = vec![
        "--node-name".into(),
        rec.name.clone(),
        "--libvirt-uri".into(),
        crate::libvirt::SYSTEM_URI.into(),
        "--state-dir".into(),
        NODE_HANDLER_STATE.into(),
        "--listen".into(),
        format!("{}:0", rec.addr),
        "--health-addr".into(),
        health,
        "--tls-cert".into(),
        h.identity.tls_cert.display().to_string(),
        "--tls-key".into(),
        h.identity.tls_key.display().to_string(),
        "--client-ca".into(),
        h.identity.client_ca.display().to_string(),
    ];
    args.extend(h.args.iter().cloned());
    let kubeconfig = h.identity.kubeconfig.display().to_string();
    let mut env: Vec<(&str, &str)> = vec![("KUBECONFIG", kubeconfig.as_str())];
    env.extend(h.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let handler = sup.spawn_in(&rec.process("handler"), &wrapper, &h.bin, &args, &env)?;
    std::thread::sleep(Duration::from_millis(300));
    if !process_alive(handler.pid) {
        return Err(start_error(&sup, rec, "handler", "ironvirt-handler exited"));
    }
    tracing::info!(node = %rec.name, elapsed_ms = started.elapsed().as_millis() as u64, "node started");
    Ok(())
}

pub(super) fn start_error(
    sup: &Supervisor,
    rec: &NodeRecord,
    what: &'static str,
    reason: &str,
) -> NodeError {
    let name = rec.process(what);
    NodeError::Start {
        what,
        node: rec.name.clone(),
        reason: reason.to_owned(),
        log: sup.log_path(&name),
        tail: sup.log_tail(&name, 20),
    }
}
