//! Tenant isolation, played as the attacker: from inside a running guest,
//! typed on its serial console, nothing of the node answers — not etcd,
//! kube-apiserver, the handler's stream port, ironvirt-api, another VMI's
//! forwarded port, or any address of the node — while the guest's own
//! declared port answers from the node and outbound NAT reaches a server in a
//! network namespace this test makes. Every domain on the node has no TCP
//! VNC listener.
//!
//! All traffic stays on this machine: the node's own addresses, the VMIs'
//! namespaces and the test's namespace.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_tests::api::api_port;
use ironvirt_tests::handler::{Handler, WsSession, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::eventually;
use kube::api::{Api, DeleteParams};
use serde_json::json;

const QEMU: &str = "qemu:///system";
const IMAGE: &str = "/var/lib/ironvirt/images/busybox.qcow2";
const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(120);

/// The test guest with a masquerade interface declaring `ports`.
fn guest(name: &str, ports: &[u16]) -> serde_json::Value {
    let ports: Vec<_> = ports.iter().map(|p| json!({"port": p})).collect();
    json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "labels": {}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "domain": {
                "memory": {"guest": "128Mi"},
                "devices": {
                    "disks": [{"name": "root", "disk": {"bus": "virtio", "readonly": true}}],
                    "interfaces": [{"name": "default", "masquerade": {}, "ports": ports}],
                },
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "root", "hostDisk": {"path": IMAGE, "type": "Disk"}}],
        },
    })
}

fn ip_of(v: &VirtualMachineInstance) -> Result<Ipv4Addr, String> {
    v.status
        .as_ref()
        .and_then(|s| s.interfaces.as_ref())
        .and_then(|i| i.first())
        .and_then(|i| i.ip_address.as_deref())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("no address in status: {:?}", v.status))
}

/// Every IPv4 address of the node (this machine's root network namespace).
fn node_addresses() -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip addr");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url}"))
}

/// A TCP server in a network namespace of its own, reached from the node
/// through a veth pair: the "outside" a guest's outbound NAT goes to.
struct Outside {
    netns: String,
    host_if: String,
    address: Ipv4Addr,
    port: u16,
    server: std::process::Child,
}

impl Outside {
    fn start(tag: &str) -> Outside {
        let netns = format!("ivt-out-{tag}");
        let host_if = format!("ivto{}", &tag[tag.len().saturating_sub(6)..]);
        let (node, address) = (Ipv4Addr::new(10, 251, 7, 1), Ipv4Addr::new(10, 251, 7, 2));
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("ip");
            assert!(st.success(), "ip {args:?}");
        };
        let _ = Command::new("ip")
            .args(["netns", "delete", &netns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["netns", "add", &netns]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ]);
        ip(&["addr", "add", &format!("{node}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{address}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &netns, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            &netns,
            "route",
            "add",
            "default",
            "via",
            &node.to_string(),
        ]);
        let port = 9977;
        let server = Command::new("ip")
            .args(["netns", "exec", &netns, "sh", "-c"])
            .arg(format!(
                "while true; do echo outside-says-hello | busybox nc -l -p {port}; done"
            ))
            .spawn()
            .expect("outside server");
        Outside {
            netns,
            host_if,
            address,
            port,
            server,
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = Command::new("pkill")
            .args(["-f", &format!("nc -l -p {}", self.port)])
            .status();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
        let _ = Command::new("ip")
            .args(["link", "delete", &self.host_if])
            .status();
    }
}

/// Types a probe into the guest: `nc` to each target, one line each,
/// `R <addr>:<port> <exit code>`; returns the exit code per target.
async fn probe(
    con: &mut WsSession<ironvirt_tests::handler::TlsTcp>,
    targets: &[(Ipv4Addr, u16)],
    round: usize,
) -> Result<Vec<((Ipv4Addr, u16), i32)>, String> {
    let list: Vec<String> = targets.iter().map(|(a, p)| format!("{a}:{p}")).collect();
    // The end marker is computed by the guest's shell, so the echo of the
    // typed command does not match it.
    let cmd = format!(
        "\nfor t in {}; do echo x | nc -w 2 ${{t%:*}} ${{t#*:}} >/dev/null 2>&1; echo R $t $?; done; echo probe-$((7*{round}+3))-end\n",
        list.join(" ")
    );
    let before = con.received();
    con.send(cmd.as_bytes()).await?;
    let wait = Duration::from_secs(10 + 3 * targets.len() as u64);
    let end = format!("probe-{}-end", 7 * round + 3);
    if let Err(e) = con.expect_from(before, &end, wait).await {
        return Err(format!(
            "the probe did not finish ({e}): {}",
            con.transcript()
        ));
    }
    let text = con.transcript();
    let mut out = Vec::new();
    for t in targets {
        let needle = format!("R {}:{} ", t.0, t.1);
        let code = text
            .rmatch_indices(&needle)
            .next()
            .and_then(|(i, _)| text[i + needle.len()..].split_whitespace().next())
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no result for {needle:?} in {text}"))?;
        out.push((*t, code));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_reaches_nothing_of_the_node_or_of_other_tenants() {
    let bed = &bed().await;
    bed.with_namespace("iso", |ns| async move {
        let client = bed.admin();
        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        wait_serving(&h, Duration::from_secs(60)).await;

        // The victim listens on its declared port 8080; the attacker types.
        place(&client, &ns, guest("victim", &[8080]), &node).await;
        place(&client, &ns, guest("attacker", &[]), &node).await;
        let victim = wait_phase(&client, &ns, "victim", "Running", BOOT).await?;
        let attacker = wait_phase(&client, &ns, "attacker", "Running", BOOT).await?;
        let victim_ip = ip_of(&victim)?;
        let attacker_ip = ip_of(&attacker)?;
        assert_ne!(victim_ip, attacker_ip, "two VMIs share an address");

        let path = |name: &str| format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");
        let mut vcon = h.streams().websocket(&path("victim")).await?;
        vcon.expect_from(0, MARKER, BOOT).await?;
        // The guest's init asks for its address by DHCP once, in the
        // background; ask again so the address is there before listening.
        vcon.send(b"\nudhcpc -i eth0 -q -n -t 5 -s /bin/udhcpc-script >/dev/null 2>&1; ip -4 addr show eth0; (while true; do echo victim-secret | nc -l -p 8080; done) & echo serving-$((2+3))\n")
            .await?;
        vcon.expect("serving-5", Duration::from_secs(30)).await?;

        // The victim's declared port answers from the node, at its address.
        let answer = eventually(Duration::from_secs(60), "the victim's port from the node", || async {
            ironvirt_tests::handler::read_until((victim_ip, 8080), "victim-secret", Duration::from_secs(3)).await
        })
        .await
        .map_err(|e| format!("{e}; the victim's console: {}", vcon.transcript()))?;
        assert!(answer.contains("victim-secret"));

        // A listener on every address of the node, to show the node's other
        // addresses are closed to guests too (the node itself reaches it).
        let open_everywhere = std::net::TcpListener::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
        let any_port = open_everywhere.local_addr().map_err(|e| e.to_string())?.port();
        let accept_loop = std::thread::spawn(move || {
            for s in open_everywhere.incoming().take(64) {
                drop(s);
            }
        });
        let info = bed.info();
        let etcd = port_of(&info.etcd_url);
        let apiserver = port_of(&info.api_url);
        let ironvirt_api = api_port(&client).await?;
        let mut targets = vec![
            (Ipv4Addr::LOCALHOST, etcd),
            (Ipv4Addr::LOCALHOST, apiserver),
            (Ipv4Addr::LOCALHOST, h.port),
            (Ipv4Addr::LOCALHOST, ironvirt_api),
            (Ipv4Addr::LOCALHOST, 5900),
            (victim_ip, 8080),
        ];
        for a in node_addresses() {
            for p in [etcd, apiserver, h.port, ironvirt_api, any_port, 5900] {
                targets.push((a, p));
            }
        }
        // QEMU user networking's alias of the node's loopback, gone now.
        // (10.0.2.2 is not an address of this machine: no probe of it, so
        // nothing leaves the machine.)
        let mut acon = h.streams().websocket(&path("attacker")).await?;
        acon.expect_from(0, MARKER, BOOT).await?;
        acon.send(b"\nudhcpc -i eth0 -q -n -t 5 -s /bin/udhcpc-script >/dev/null 2>&1; echo dhcp-$((3+4))\n")
            .await?;
        acon.expect("dhcp-7", Duration::from_secs(60)).await?;
        // A control first: the node reaches its own listener on every address.
        for a in node_addresses() {
            assert!(
                std::net::TcpStream::connect_timeout(&(a, any_port).into(), Duration::from_secs(2)).is_ok(),
                "the node cannot reach its own {a}:{any_port}"
            );
        }
        let results = probe(&mut acon, &targets, 1).await?;
        let open: Vec<String> = results
            .iter()
            .filter(|(_, code)| *code == 0)
            .map(|((a, p), _)| format!("{a}:{p}"))
            .collect();
        println!("probed {} node and tenant targets from the guest: {open:?} open", results.len());
        assert!(open.is_empty(), "the guest reached {open:?}");

        // Outbound NAT still works: a server in a namespace of this test.
        let outside = Outside::start(&ns);
        // busybox nc keeps the connection until the server closes it, so
        // what counts is the server's greeting arriving; ^C ends nc after it.
        let before = acon.received();
        acon.send(
            format!(
                "\nnc -w 3 {} {} </dev/null\n",
                outside.address, outside.port
            )
            .as_bytes(),
        )
        .await?;
        if let Err(e) = acon
            .expect_from(before, "outside-says-hello", Duration::from_secs(30))
            .await
        {
            return Err(format!(
                "outbound NAT did not reach {}:{} ({e}): {}",
                outside.address,
                outside.port,
                acon.transcript()
            ));
        }
        acon.send(b"\x03\n").await?;
        drop(outside);
        drop(accept_loop);

        // No TCP VNC listener on any domain of the node.
        let list = Command::new("virsh")
            .args(["-c", QEMU, "list", "--name"])
            .output()
            .map_err(|e| e.to_string())?;
        let names = String::from_utf8_lossy(&list.stdout).into_owned();
        let mut checked = 0;
        for d in names.lines().filter(|l| !l.trim().is_empty()) {
            let xml = Command::new("virsh")
                .args(["-c", QEMU, "dumpxml", d.trim()])
                .output()
                .map_err(|e| e.to_string())?;
            let xml = String::from_utf8_lossy(&xml.stdout);
            if let Some(i) = xml.find("<graphics type='vnc'") {
                let element = &xml[i..i + xml[i..].find('>').unwrap_or(0)];
                assert!(
                    !element.contains(" port=") && !element.contains("listen='"),
                    "domain {d} has a TCP VNC listener: {element}"
                );
                assert!(element.contains("socket='/"), "domain {d}: {element}");
                checked += 1;
            }
        }
        assert!(checked >= 2, "checked only {checked} domains");

        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        for name in ["victim", "attacker"] {
            let _ = vmis.delete(name, &DeleteParams::default()).await;
        }
        for name in ["victim", "attacker"] {
            wait_gone(&client, &ns, name, Duration::from_secs(60)).await?;
        }
        h.remove(&client).await;
        Ok::<(), String>(())
    })
    .await;
}
