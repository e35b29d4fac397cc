//! Port-forward through kube-apiserver, ironvirt-api and the handler to a
//! real guest's HTTP server (busybox httpd on port 80, one of the ports a
//! masquerade interface without `ports` forwards): KubeVirt's own `virtctl
//! port-forward` and `ironctl port-forward` as a user with `kubevirt.io:admin`;
//! 50 connections at once through one `ironctl port-forward` (to the guest's
//! pagesrv on 8080, which takes a burst; hack/guest/pagesrv.c), after which
//! ironvirt-api and the handler are back to their tasks and descriptors; a
//! user with `kubevirt.io:view` and one with no binding get 403; a port
//! nothing listens on and a port that is not forwarded each end with a
//! one-line reason.
//!
//! This file is its own test binary (one test): the footprint it measures
//! is ironvirt-api's and the handler's alone while it runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ironvirt_apiserver_subresources::app::API_CLIENT_CONCURRENCY;
use ironvirt_tests::api::{BedApi, GUEST_MARKER as MARKER, bind, guest_vmi};
use ironvirt_tests::cli::{ironctl_bin, ironctl_in};
use ironvirt_tests::footprint::{Footprint, settles_to, steady};
use ironvirt_tests::handler::{Handler, place, wait_gone, wait_phase, wait_serving};
use ironvirt_tests::kubectl::bed_with_crds as bed;
use ironvirt_tests::operator::{eventually, scrape};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const QEMU: &str = "qemu:///system";
const BOOT: Duration = Duration::from_secs(120);
const PAGE: &str = "IRONVIRT-PORT-FORWARD-PAGE";
const CONNECTIONS: usize = 50;

fn virtctl_bin() -> PathBuf {
    let path = std::env::var_os("IRONVIRT_VIRTCTL").map(PathBuf::from).expect(
        "IRONVIRT_VIRTCTL names KubeVirt's virtctl (hack/build-virtctl.sh); run through `make test`",
    );
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// `GET /` on 127.0.0.1:`port`; the whole answer.
async fn http_get(port: u16) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .map_err(|_| format!("no complete answer on {port} in 30 s"))?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A long-running port-forward process whose stderr is collected; killed on drop.
struct Forwarder {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Forwarder {
    fn spawn(program: &Path, args: &[String]) -> Forwarder {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the port-forward");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = std::sync::Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&l);
                    s.push('\n');
                }
            }
        });
        Forwarder { child, stderr }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `port` accepts connections.
    async fn listening(&mut self, port: u16) -> Result<(), String> {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "the port-forward exited ({status}): {}",
                    self.stderr()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("nothing listens on {port}: {}", self.stderr()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_reaches_the_guest_through_kube_apiserver_as_rbac_allows() {
    let bed = &bed().await;
    bed.with_namespace("pf", |ns| async move {
        let admin = bed.admin();
        let api = BedApi::of(bed)?;
        bind(&admin, &ns, "pam", "kubevirt.io:admin").await;
        bind(&admin, &ns, "vic", "kubevirt.io:view").await;
        let pam = bed.user_kubeconfig("pam", &["dev"]).map_err(|e| e.to_string())?;
        let vic = bed.user_kubeconfig("vic", &["dev"]).map_err(|e| e.to_string())?;
        let nobody = bed.user_kubeconfig("nobody", &["dev"]).map_err(|e| e.to_string())?;

        let node = format!("{ns}-n");
        let h = Handler::start(bed, &ns, &node, QEMU);
        wait_serving(&h, Duration::from_secs(60)).await;
        // A masquerade interface without ports: the default ones (80 among them).
        let mut vmi = guest_vmi("web");
        vmi["spec"]["domain"]["devices"]["interfaces"] = json!([{"name": "default", "masquerade": {}}]);
        vmi["spec"]["networks"] = json!([{"name": "default", "pod": {}}]);
        place(&admin, &ns, vmi, &node).await;
        wait_phase(&admin, &ns, "web", "Running", BOOT).await?;
        let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/web/console");
        let mut con = h.streams().websocket(&path).await?;
        con.expect_from(0, MARKER, BOOT).await?;
        con.send(
            format!(
                "\nmkdir -p /www && echo {PAGE} > /www/index.html && httpd -p 80 -h /www && (pagesrv 8080 /www/index.html &) && echo serving-$((2+3))\n"
            )
            .as_bytes(),
        )
        .await?;
        con.expect("serving-5", Duration::from_secs(60)).await?;
        let base = steady(api, &h).await;

        // KubeVirt's virtctl, as pam (RBAC reaches the authorizer after a moment).
        let port = free_port();
        let mut virtctl = Forwarder::spawn(
            &virtctl_bin(),
            &[
                "--kubeconfig".into(), pam.display().to_string(), "-n".into(), ns.clone(),
                "port-forward".into(), "vmi/web".into(), format!("{port}:80"),
            ],
        );
        virtctl.listening(port).await?;
        let page = eventually(Duration::from_secs(60), "the guest's page through virtctl port-forward", || async {
            http_get(port).await.ok().filter(|p| p.contains(PAGE))
        })
        .await
        .map_err(|e| format!("{e}; virtctl said: {}", virtctl.stderr()))?;
        assert!(page.starts_with("HTTP/1."), "{page}");
        drop(virtctl);

        // ironctl, the VM-less VMI by type/name.namespace.
        let port = free_port();
        let mut ironctl = Forwarder::spawn(
            &ironctl_bin(),
            &[
                "--kubeconfig".into(), pam.display().to_string(),
                "port-forward".into(), format!("vmi/web.{ns}"), format!("{port}:80"),
                format!("{}:443", free_port()), format!("{}:5432", free_port()),
                format!("{}:8080", free_port()),
            ],
        );
        ironctl.listening(port).await?;
        let page = http_get(port)
            .await
            .map_err(|e| format!("through ironctl port-forward: {e}; it said: {}", ironctl.stderr()))?;
        assert!(page.contains(PAGE), "ironctl port-forward: {page}");
        let stderr = ironctl.stderr();
        let listens: Vec<u16> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("Forwarding from 127.0.0.1:"))
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(listens.len(), 4, "{stderr}");
        // 50 at once, each its own websocket, to the guest's pagesrv on 8080
        // (busybox httpd's listen backlog of 9 drops the rest of a burst).
        let burst = listens[3];
        let all = futures::future::join_all((0..CONNECTIONS).map(|_| http_get(burst))).await;
        let served = all.iter().filter(|r| r.as_ref().is_ok_and(|p| p.contains(PAGE))).count();
        assert_eq!(
            served,
            CONNECTIONS,
            "{:?}; ironctl said: {}",
            all.iter().find(|r| !r.as_ref().is_ok_and(|p| p.contains(PAGE))),
            ironctl.stderr()
        );

        // A forwarded port nothing listens on in the guest, and a port that is
        // not forwarded: the local connection closes, ironctl says why in one line.
        for (local, want) in [(listens[1], "port 443"), (listens[2], "5432/tcp of VMI web is not forwarded")] {
            // The local connection ends (closed or reset) without the page.
            let got = http_get(local).await.unwrap_or_default();
            assert!(!got.contains(PAGE), "{got}");
            let said = eventually(Duration::from_secs(20), "ironctl's reason", || async {
                let s = ironctl.stderr();
                s.lines().find(|l| l.contains(want)).map(str::to_owned)
            })
            .await
            .map_err(|e| format!("{e}: {}", ironctl.stderr()))?;
            assert!(said.contains(&format!("-> port {}", if local == listens[1] { 443 } else { 5432 })), "{said}");
        }
        drop(ironctl);

        // Nothing left behind: no open port-forward, tasks and descriptors back.
        let streams = eventually(Duration::from_secs(20), "no open port-forward", || async {
            let open = scrape(api.metrics_port, "ironvirt_api_open_streams{kind=\"portforward\"}").await;
            (open == 0.0).then_some(open)
        })
        .await
        .map_err(|e| e.to_string())?;
        assert_eq!(streams, 0.0);
        // ironvirt-api keeps up to API_CLIENT_CONCURRENCY idle HTTP/1.1
        // connections to kube-apiserver from the burst (its client's pool).
        let pool = API_CLIENT_CONCURRENCY;
        let allowed = Footprint {
            api_tasks: base.api_tasks + pool as u64,
            api_fds: base.api_fds + pool,
            ..base
        };
        let after: Footprint = settles_to(api, &h, &allowed).await?;
        eprintln!(
            "footprint before {base:?}, after {CONNECTIONS} connections {after:?}; ironvirt-api's TCP connections: {:?}",
            ironvirt_tests::footprint::tcp_connections(api.pid)
        );

        // RBAC: view and no binding are refused, in one line.
        for (who, kc) in [("vic", &vic), ("nobody", &nobody)] {
            let run = ironctl_in(kc, &ns, &["port-forward", "vmi/web", "0:80"], None, Duration::from_secs(30)).await;
            let line = run.one_error_line("forbidden")?;
            assert!(line.contains("portforward"), "{who}: {line}");
        }
        // Leave nothing behind: the VMI, its domain and network, the handler.
        kube::Api::<ironvirt_crds::VirtualMachineInstance>::namespaced(admin.clone(), &ns)
            .delete("web", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        wait_gone(&admin, &ns, "web", Duration::from_secs(60)).await?;
        h.remove(&admin).await;
        Ok::<(), String>(())
    })
    .await;
}
