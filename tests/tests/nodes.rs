//! Several real nodes on one machine (issue #18, the test bed part): two
//! nodes, each in network and mount namespaces of its own with its own
//! libvirtd and ironvirt-handler (`ironvirt_tests::nodes::TestNode`).
//!
//! - Both Nodes turn Ready and their handlers renew their Leases, whose
//!   stream URL is the node's address on the bed's bridge.
//! - Two VMIs of the test guest, one per node by nodeSelector
//!   `kubernetes.io/hostname`, placed by the namespace's operator: each VMI's
//!   domain exists only in its own node's libvirtd (not in the other's, not
//!   in the host's), and each guest prints its marker on the serial console
//!   opened through kube-apiserver (ironvirt-api dials the handler across the
//!   bridge and verifies its certificate for the VMI's node).
//! - Nothing new listens in the host's namespace on an address other than
//!   loopback and the bridge's; inside each node, only on loopback and the
//!   node's own address. Nodes reach each other across the bridge, but open
//!   no connection to the host (only replies come in from the bridge).
//! - After the nodes stop, nothing of them is left: no process (QEMU
//!   included), network namespace, veth, mount or bridge.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::wire::{STREAM_URL_ANNOTATION, handler_lease_name};
use ironvirt_tests::TestBed;
use ironvirt_tests::api::{api_port, open_ws};
use ironvirt_tests::e2e::NsOperator;
use ironvirt_tests::handler::{domains_of, wait_gone, wait_phase};
use ironvirt_tests::kubectl::bed_with_crds;
use ironvirt_tests::nodes::{
    HOSTNAME_LABEL, Listener, TestNode, bridge, delete_node_objects, link_exists, listeners,
    new_listeners, wait_ready_and_renewing,
};
use ironvirt_tests::operator::LEASE_NAMESPACE;
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(150);
const SUB: &str = "/apis/subresources.kubevirt.io/v1";

/// The test guest (hostDisk), pinned to `node` by nodeSelector.
fn guest(ns: &str, name: &str, node: &str) -> Result<VirtualMachineInstance, String> {
    let image = ironvirt_tests::hostdisk::guest_image(ns);
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "nodeSelector": {HOSTNAME_LABEL: node},
            "domain": {
                "memory": {"guest": "128Mi"},
                "devices": {"disks": [{"name": "rootdisk", "disk": {"bus": "virtio", "readonly": true}}]},
            },
            "volumes": [{"name": "rootdisk", "hostDisk": {"path": image, "type": "Disk"}}],
        },
    }))
    .map_err(|e| format!("VMI manifest: {e}"))
}

fn timing(t0: Instant, step: &str) {
    eprintln!("nodes timing: {step}: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Listeners that are neither loopback nor one of `allowed`.
fn exposed(ls: &[Listener], allowed: &[IpAddr]) -> Vec<Listener> {
    ls.iter()
        .filter(|l| !l.loopback() && !l.addr.is_some_and(|a| allowed.contains(&a)))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_in_namespaces_run_one_guest_each() {
    let bed = &bed_with_crds().await;
    bed.with_namespace("nodes", |ns| async move {
        let t0 = Instant::now();
        api_port(&bed.admin()).await?;
        let host_before = listeners(None)?;
        let pid = std::process::id();
        let mut nodes = TestNode::start_many(bed, &ns, &format!("nodes-{pid}"), 2)?;
        timing(t0, "2 nodes started (namespaces, libvirtd, handler)");
        let op = NsOperator::start(bed, &ns, &format!("nodes-operator-{pid}"));

        let outcome = story(bed, &ns, &mut nodes, &host_before, t0).await;

        // Whatever happened: the VMIs go while their handlers still run
        // (they release the finalizers), then the nodes stop.
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(bed.admin(), &ns);
        for i in 1..=2 {
            let name = format!("guest-{i}");
            let _ = vmis.delete(&name, &DeleteParams::default()).await;
        }
        for i in 1..=2 {
            let _ = wait_gone(
                &bed.admin(),
                &ns,
                &format!("guest-{i}"),
                Duration::from_secs(60),
            )
            .await;
        }
        op.remove(&bed.admin()).await;
        let mut stop_errors = Vec::new();
        for n in &mut nodes {
            if let Err(e) = n.stop() {
                stop_errors.push(format!("{}: {e}", n.name()));
            }
            delete_node_objects(&bed.admin(), n.name()).await;
        }
        timing(t0, "nodes stopped");
        outcome?;
        if !stop_errors.is_empty() {
            return Err(format!("stopping the nodes failed: {stop_errors:?}"));
        }
        let mut left = Vec::new();
        for n in &nodes {
            left.extend(
                n.leftovers()
                    .into_iter()
                    .map(|l| format!("{}: {l}", n.name())),
            );
        }
        // The bridge goes with the bed's last node.
        let others = ironvirt_testbed::nodes::records(bed.layout()).map_err(|e| e.to_string())?;
        if others.is_empty() {
            let tag = ironvirt_testbed::nodes::tag(bed.layout());
            if link_exists(&format!("ivb{tag}")) {
                left.push(format!("bridge ivb{tag}"));
            }
            for m in ironvirt_testbed::nodes::mounts_under(&ironvirt_testbed::nodes::nodes_dir(
                bed.layout(),
            )) {
                left.push(format!("mount {}", m.display()));
            }
        }
        if !left.is_empty() {
            return Err(format!("left after the nodes stopped: {left:?}"));
        }
        Ok::<(), String>(())
    })
    .await;
}

async fn story(
    bed: &TestBed,
    ns: &str,
    nodes: &mut [TestNode],
    host_before: &[Listener],
    t0: Instant,
) -> Result<(), String> {
    let admin = bed.admin();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), LEASE_NAMESPACE);
    let mut stream_urls = Vec::new();
    for n in nodes.iter() {
        wait_ready_and_renewing(&admin, n.name(), Duration::from_secs(60))
            .await
            .map_err(|e| format!("{e}; handler log:\n{}", n.handler_log()))?;
        let lease = leases
            .get(&handler_lease_name(n.name()))
            .await
            .map_err(|e| e.to_string())?;
        let url = lease
            .annotations()
            .get(STREAM_URL_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        if !url.starts_with(&format!("https://{}:", n.addr())) {
            return Err(format!(
                "node {}: stream URL {url:?}, want one on its address {}",
                n.name(),
                n.addr()
            ));
        }
        stream_urls.push(url);
    }
    timing(
        t0,
        "both Nodes Ready, Leases renewing, streams on the node addresses",
    );

    let vmis: Api<VirtualMachineInstance> = Api::namespaced(admin.clone(), ns);
    for (i, n) in nodes.iter().enumerate() {
        let vmi = guest(ns, &format!("guest-{}", i + 1), n.name())?;
        vmis.create(&PostParams::default(), &vmi)
            .await
            .map_err(|e| format!("create guest-{}: {e}", i + 1))?;
    }
    let mut uids = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("guest-{}", i + 1);
        let vmi = wait_phase(&admin, ns, &name, "Running", BOOT).await?;
        let on = vmi
            .status
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if on != n.name() {
            return Err(format!("{name} runs on {on:?}, want {}", n.name()));
        }
        uids.push(vmi.uid().ok_or("a VMI without uid")?);
    }
    timing(t0, "both VMIs Running, one per node");

    // Each domain only in its own node's libvirtd.
    let mut qemus = Vec::new(); // QEMU and passt of each guest
    for (i, n) in nodes.iter().enumerate() {
        let dom = ironvirt_crds::wire::domain_name(ns, &format!("guest-{}", i + 1));
        let here = domains_of(&n.libvirt_uri(), &uids[i]);
        if here != [dom.clone()] {
            return Err(format!(
                "node {} ({}): want exactly domain {dom}, it has {here:?}",
                n.name(),
                n.libvirt_uri()
            ));
        }
        for (j, other) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let there = domains_of(&other.libvirt_uri(), &uids[i]);
            if !there.is_empty() {
                return Err(format!(
                    "guest-{}'s domain is also on node {} (guest-{}'s): {there:?}",
                    i + 1,
                    other.name(),
                    j + 1
                ));
            }
        }
        let host = domains_of("qemu:///system", &uids[i]);
        if !host.is_empty() {
            return Err(format!(
                "guest-{}'s domain is in the host's libvirtd: {host:?}",
                i + 1
            ));
        }
        // Its QEMU and passt, so that the teardown check covers them.
        let pidfile = n
            .record
            .dir
            .join("run")
            .join("qemu")
            .join(format!("{dom}.pid"));
        let qemu =
            std::fs::read_to_string(&pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
        let qemu: u32 = qemu
            .trim()
            .parse()
            .map_err(|e| format!("{}: {e}", pidfile.display()))?;
        qemus.push(qemu);
        // Its passt (the default pod network), in a namespace of its own.
        let passt = n
            .record
            .dir
            .join("ironvirt-run/net")
            .join(&uids[i])
            .join("passt.pid");
        let passt =
            std::fs::read_to_string(&passt).map_err(|e| format!("{}: {e}", passt.display()))?;
        let passt: u32 = passt
            .trim()
            .parse()
            .map_err(|e| format!("passt pid of guest-{}: {e}", i + 1))?;
        qemus.push(passt);
    }
    for (n, pids) in nodes.iter_mut().zip(qemus.chunks(2)) {
        n.pids.extend_from_slice(pids);
    }

    // The consoles, through kube-apiserver and ironvirt-api to each node's
    // handler across the bridge.
    for (i, n) in nodes.iter().enumerate() {
        let name = format!("guest-{}", i + 1);
        let mut con = open_ws(
            &admin,
            &format!("{SUB}/namespaces/{ns}/virtualmachineinstances/{name}/console"),
        )
        .await
        .map_err(|e| format!("console of {name} (node {}): {e:?}", n.name()))?;
        let seen = con.expect_from(0, MARKER, BOOT).await;
        con.close().await;
        seen.map_err(|e| format!("console of {name} (node {}): {e}", n.name()))?;
    }
    timing(t0, "both guests printed the marker on their consoles");

    // Nothing listens beyond loopback and the bridge.
    let (_, host_addr) = bridge(bed.layout()).ok_or("the bed has no bridge")?;
    let host_now = listeners(None)?;
    let bad = exposed(
        &new_listeners(host_before, &host_now),
        &[IpAddr::V4(host_addr)],
    );
    if !bad.is_empty() {
        return Err(format!(
            "new listeners in the host's namespace outside loopback and the bridge: {bad:?}"
        ));
    }
    for n in nodes.iter() {
        let ls = n.listeners()?;
        if !ls.iter().any(|l| l.addr == Some(IpAddr::V4(n.addr()))) {
            return Err(format!(
                "node {}: nothing listens on its address: {ls:?}",
                n.name()
            ));
        }
        let bad = exposed(&ls, &[IpAddr::V4(n.addr())]);
        if !bad.is_empty() {
            return Err(format!(
                "node {}: listeners outside loopback and its address: {bad:?}",
                n.name()
            ));
        }
    }

    // Nodes reach each other across the bridge (node-1 opens node-2's
    // stream port), but open no connection to the host: a listener on the
    // bridge's host address is out of their reach.
    let peer = stream_urls[1].trim_start_matches("https://").to_owned();
    let (peer_host, peer_port) = peer.rsplit_once(':').ok_or("a stream URL without port")?;
    let connect = |n: &TestNode, host: &str, port: &str| {
        n.record.exec(
            "timeout",
            &[
                "3",
                "bash",
                "-c",
                &format!("exec 3<>/dev/tcp/{host}/{port}"),
            ],
        )
    };
    connect(&nodes[0], peer_host, peer_port).map_err(|e| {
        format!(
            "node {} cannot reach node {}'s stream port {peer}: {e}",
            nodes[0].name(),
            nodes[1].name()
        )
    })?;
    let probe = std::net::TcpListener::bind((host_addr, 0)).map_err(|e| e.to_string())?;
    let port = probe
        .local_addr()
        .map_err(|e| e.to_string())?
        .port()
        .to_string();
    for n in nodes.iter() {
        if connect(n, &host_addr.to_string(), &port).is_ok() {
            return Err(format!(
                "node {} opened a connection to the host at {host_addr}:{port}",
                n.name()
            ));
        }
    }
    drop(probe);
    timing(t0, "listeners and reachability checked");
    Ok(())
}
