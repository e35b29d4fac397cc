//! ironvirt installed the way a user installs it (issue #21): the images
//! `make images` built from `deploy/docker/`, imported into two real kubelet
//! nodes, and `kubectl apply -k` of the test bed's overlay of `deploy/`.
//!
//! 1. Every ironvirt pod turns Ready (operator and ironvirt-api 2 replicas
//!    each, the handler DaemonSet on the node with libvirtd), the APIService
//!    is Available, `examples/vm-busybox.yaml` reaches Running on that node,
//!    and `ironctl console` and KubeVirt's `virtctl vnc --proxy-only` reach
//!    the guest through the deployed ironvirt-api.
//! 2. One ironvirt-api pod deleted, then the operator leader's pod: the VM's
//!    domain keeps its id, and new console sessions work once the failover
//!    is over (the times are printed).
//! 3. The images at a new tag (rebuilt: each carries its tag as a label)
//!    applied: all three components roll, and the guest's uptime grew by at
//!    least the time that passed (no reboot), its domain id unchanged.
//! 4. The VM deleted, then `kubectl delete -k` and the CRDs: no object named
//!    ironvirt or labelled part-of=ironvirt is left in any namespace, no
//!    webhook, no APIService, no pod, no domain.
//!
//! Ignored by `make test` (the images take long to build cold): `make
//! test-deploy` builds them at two tags and runs it on a bed of its own
//! (IRONVIRT_DEPLOY_TEST=1, IRONVIRT_KUBELET_BIN, IRONVIRT_IMAGE_ARCHIVES,
//! IRONVIRT_UPGRADE_ARCHIVES, IRONVIRT_UPGRADE_TAG, IRONVIRT_VIRTCTL).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ironvirt_testbed::kubelet::{self, NodeSpec, image, overlay};
use ironvirt_testbed::{Layout, TestBed};
use ironvirt_tests::cli::ironctl_bin;
use ironvirt_tests::e2e::{domain_name, domains_with_prefix};
use ironvirt_tests::handler::{wait_gone, wait_phase};
use ironvirt_tests::kubectl::{ensure_crds, kubectl, repo_root};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// The node whose libvirtd (the host's) the handler drives.
const NODE_A: &str = "deploy-a";
const NODE_B: &str = "deploy-b";
const HANDLER_LABEL: &str = "ironvirt.io/testbed-handler";
const SYSTEM_NS: &str = "ironvirt-system";
const VM: &str = "vm-busybox";
const VM_NS: &str = "default";
const TAG: &str = "dev";
const API_SERVICE: &str = "v1.subresources.kubevirt.io";
const QEMU: &str = "qemu:///system";
const INSTALL: Duration = Duration::from_secs(300);
const BOOT: Duration = Duration::from_secs(180);

fn env_path(name: &str, what: &str) -> PathBuf {
    std::env::var_os(name)
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("{name} is not set: {what} (run by `make test-deploy`)"))
}

fn archives(name: &str) -> Vec<PathBuf> {
    let list: Vec<PathBuf> = std::env::var(name)
        .unwrap_or_default()
        .split_whitespace()
        .map(PathBuf::from)
        .collect();
    assert_eq!(
        list.len(),
        3,
        "{name} names the three archives of `make images` (operator, api, handler): {list:?}"
    );
    list
}

fn node_spec(name: &str) -> NodeSpec {
    let kubelet = env_path("IRONVIRT_KUBELET_BIN", "kubelet (hack/build-kubelet.sh)");
    let testbed = std::env::var_os("IRONVIRT_TESTBED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/ironvirt-testbed"));
    NodeSpec {
        name: name.into(),
        scheduler: kubelet.with_file_name("kube-scheduler"),
        kubelet,
        testbed,
        aggregator_routing: true,
    }
}

/// Stops both nodes when the test ends, whatever happened.
struct StopNodes(Layout);

impl Drop for StopNodes {
    fn drop(&mut self) {
        for n in [NODE_A, NODE_B] {
            if let Err(e) = kubelet::down(&self.0, n) {
                eprintln!("stopping kubelet node {n}: {e}");
            }
        }
    }
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn kubectl_ok(bed: &TestBed, args: &[&str]) -> String {
    let out = kubectl(bed, args);
    assert!(
        out.success,
        "kubectl {}: {}{}",
        args.join(" "),
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// What the pods of ironvirt-system look like, for a failure's message.
fn diagnostics(bed: &TestBed) -> String {
    let mut out = String::new();
    for args in [
        &["-n", SYSTEM_NS, "get", "deploy,ds,pods", "-o", "wide"][..],
        &["get", "apiservice", API_SERVICE, "-o", "wide"][..],
        &["-n", SYSTEM_NS, "get", "events", "--sort-by=.lastTimestamp"][..],
        &[
            "-n",
            SYSTEM_NS,
            "logs",
            "-l",
            "app.kubernetes.io/part-of=ironvirt",
            "--tail=15",
            "--prefix",
            "--all-containers",
        ][..],
        &["-n", VM_NS, "get", "vm,vmi", "-o", "wide"][..],
    ] {
        let o = kubectl(bed, args);
        out.push_str(&format!(
            "$ kubectl {}\n{}{}\n",
            args.join(" "),
            o.stdout,
            o.stderr
        ));
    }
    out
}

/// Whether every pod of ironvirt-system runs images at `tag` and is Ready,
/// with 2 operator, 2 ironvirt-api and 1 handler pods, none terminating.
async fn installed(client: &Client, tag: &str) -> Option<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SYSTEM_NS);
    for name in ["ironvirt-operator", "ironvirt-api"] {
        let d = deployments.get(name).await.ok()?;
        let s = d.status.as_ref()?;
        let done = s.observed_generation >= d.metadata.generation
            && s.replicas == Some(2)
            && s.updated_replicas == Some(2)
            && s.ready_replicas == Some(2)
            && s.available_replicas == Some(2);
        if !done {
            return None;
        }
    }
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), SYSTEM_NS);
    let ds = daemonsets.get("ironvirt-handler").await.ok()?;
    let s = ds.status.as_ref()?;
    if !(s.observed_generation >= ds.metadata.generation
        && s.desired_number_scheduled == 1
        && s.number_ready == 1
        && s.updated_number_scheduled == Some(1))
    {
        return None;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    let list = pods.list(&ListParams::default()).await.ok()?;
    let suffix = format!(":{tag}");
    let all = list.items.len() == 5
        && list.items.iter().all(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().is_some_and(|s| {
                    s.containers
                        .iter()
                        .all(|c| c.image.as_deref().is_some_and(|i| i.ends_with(&suffix)))
                })
                && pod_ready(p)
        });
    if !all {
        return None;
    }
    let apis: Api<APIService> = Api::all(client.clone());
    let svc = apis.get(API_SERVICE).await.ok()?;
    let available = svc
        .status?
        .conditions?
        .iter()
        .any(|c| c.type_ == "Available" && c.status == "True");
    available.then_some(())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits for [`installed`]; prints how long it took.
async fn wait_installed(bed: &TestBed, tag: &str, what: &str) {
    let t = Instant::now();
    let admin = bed.admin();
    if let Err(e) = wait_for(what, INSTALL, || installed(&admin, tag)).await {
        panic!("{e}\n{}", diagnostics(bed));
    }
    eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
}

/// Writes the bed's kustomization for `tag` and applies it.
fn apply_overlay(bed: &TestBed, tag: &str) -> PathBuf {
    let dir = overlay::write(
        bed.layout(),
        bed.info(),
        &repo_root().join("deploy/overlays/testbed"),
        tag,
        NODE_A,
    )
    .expect("writing the bed's kustomization");
    let out = kubectl_ok(bed, &["apply", "-k", &dir.to_string_lossy()]);
    eprintln!("kubectl apply -k {} ({tag}):\n{out}", dir.display());
    dir
}

/// The libvirt id of the VM's domain (a new one after any restart of QEMU).
fn domain_id() -> Result<u32, String> {
    let name = domain_name(VM_NS, VM);
    let conn = virt::connect::Connect::open(Some(QEMU)).map_err(|e| format!("libvirt: {e}"))?;
    let dom = conn
        .lookup_domain_by_name(&name)
        .map_err(|e| format!("domain {name}: {e}"))?;
    dom.id()
        .ok_or_else(|| format!("domain {name} is not running"))
}

/// Runs `ironctl console` with the admin's kubeconfig, types a command that
/// prints the guest's uptime until it answers, then ends the session with
/// end of input (exit 0). Returns the uptime in seconds.
async fn guest_uptime(kubeconfig: &Path, timeout: Duration) -> Result<f64, String> {
    let mut child = tokio::process::Command::new(ironctl_bin())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", VM_NS, "console", VM])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start ironctl: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let uptime = loop {
        if Instant::now() > deadline {
            let _ = child.start_kill();
            let err = match child.wait_with_output().await {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            return Err(format!(
                "no uptime on the console within {timeout:?}; it printed {:?}; ironctl said {err}",
                String::from_utf8_lossy(&seen)
            ));
        }
        // The guest's shell echoes the command, `$(` and all; the answer has digits.
        let _ = stdin
            .write_all(b"\necho UPTIME=$(cut -d' ' -f1 /proc/uptime)=END\n")
            .await;
        let until = Instant::now() + Duration::from_secs(3);
        while let Ok(Ok(n)) = tokio::time::timeout_at(until.into(), stdout.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&seen);
        if let Some(v) = text.split("UPTIME=").skip(1).find_map(|s| {
            let (num, _) = s.split_once("=END")?;
            num.trim().parse::<f64>().ok()
        }) {
            break v;
        }
    };
    drop(stdin);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .map_err(|_| "ironctl console did not end at end of input".to_owned())?
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("ironctl console ended with {status}"));
    }
    Ok(uptime)
}

/// `guest_uptime` until it works; returns the uptime and how long it took
/// (a failover's interruption of new console sessions).
async fn console_after_failover(kubeconfig: &Path, what: &str) -> f64 {
    let t = Instant::now();
    let mut failures = Vec::new();
    loop {
        match guest_uptime(kubeconfig, Duration::from_secs(20)).await {
            Ok(u) => {
                eprintln!(
                    "{what}: a new console session answered after {:.1} s ({} failed before: {failures:?})",
                    t.elapsed().as_secs_f64(),
                    failures.len()
                );
                return u;
            }
            Err(e) => failures.push(e),
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "{what}: no console session for 90 s: {failures:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// KubeVirt's `virtctl vnc --proxy-only`: the port it prints serves the
/// guest's RFB version and security types.
async fn virtctl_vnc(kubeconfig: &Path) -> Result<(), String> {
    let virtctl = env_path(
        "IRONVIRT_VIRTCTL",
        "KubeVirt's virtctl (hack/build-virtctl.sh)",
    );
    let mut proxy = tokio::process::Command::new(virtctl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["-n", VM_NS, "vnc", "--proxy-only", VM])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdout = proxy.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .map_err(|_| "virtctl printed no port within 30 s".to_owned())?
    .map_err(|e| e.to_string())?;
    let printed: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("{line:?}: {e}"))?;
    let port = printed["port"]
        .as_u64()
        .ok_or(format!("no port in {line:?}"))?;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
        .await
        .map_err(|e| e.to_string())?;
    let mut version = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut version))
        .await
        .map_err(|_| "no RFB version within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    let version = String::from_utf8_lossy(&version).into_owned();
    if !version.starts_with("RFB 003.00") {
        return Err(format!("not an RFB server: {version:?}"));
    }
    tcp.write_all(b"RFB 003.008\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut n = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(30), tcp.read_exact(&mut n))
        .await
        .map_err(|_| "no security types within 30 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if n[0] == 0 {
        return Err("the VNC server offered no security type".into());
    }
    eprintln!("virtctl vnc --proxy-only: {version:?} from the guest on port {port}");
    Ok(())
}

/// The RSS (KiB) of each ironvirt process that runs in a container (its
/// cgroup is under containerd's `/k8s.io/`), by binary name.
fn pod_rss() -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let dir = e.path();
        let Ok(cmdline) = std::fs::read(dir.join("cmdline")) else {
            continue;
        };
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let argv0 = String::from_utf8_lossy(argv0);
        let name = argv0.rsplit('/').next().unwrap_or_default().to_owned();
        if !["ironvirt-operator", "ironvirt-api", "ironvirt-handler"].contains(&name.as_str()) {
            continue;
        }
        let in_pod =
            std::fs::read_to_string(dir.join("cgroup")).is_ok_and(|c| c.contains("/k8s.io/"));
        let rss = std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            });
        if let (true, Some(rss)) = (in_pod, rss) {
            out.push((name, rss));
        }
    }
    out.sort();
    out
}

fn print_rss(when: &str) {
    let rss = pod_rss();
    let text: Vec<String> = rss
        .iter()
        .map(|(n, kib)| format!("{n} {:.1} MiB", *kib as f64 / 1024.0))
        .collect();
    eprintln!("RSS in pods {when}: {}", text.join(", "));
}

/// The operator's leader: the holder of its Lease.
async fn operator_leader(client: &Client) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), SYSTEM_NS);
    leases
        .get("ironvirt-operator")
        .await
        .ok()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

async fn pod_names(client: &Client, app: &str) -> Vec<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SYSTEM_NS);
    pods.list(&ListParams::default().labels(&format!("app.kubernetes.io/name={app}")))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// Every object the cluster lists, in every namespace, whose name mentions
/// ironvirt or that carries the label part-of=ironvirt (an error while an
/// API group goes away: try again).
fn ironvirt_objects(bed: &TestBed) -> Result<Vec<String>, String> {
    let run = |args: &[&str]| {
        let out = kubectl(bed, args);
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!("kubectl {}: {}", args.join(" "), out.stderr))
        }
    };
    let kinds = run(&["api-resources", "--verbs=list", "-o", "name"])?;
    let joined = kinds
        .lines()
        .filter(|k| !k.is_empty() && !k.starts_with("events"))
        .collect::<Vec<_>>()
        .join(",");
    let mut left: Vec<String> = run(&["get", &joined, "-A", "-o", "name"])?
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("ironvirt"))
        .map(str::to_owned)
        .collect();
    let label = "app.kubernetes.io/part-of=ironvirt";
    left.extend(
        run(&["get", &joined, "-A", "-o", "name", "-l", label])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned),
    );
    left.sort();
    left.dedup();
    Ok(left)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs the images and two kubelet nodes on a bed of its own: run by `make test-deploy`"]
async fn installed_with_kubectl_apply_k_it_runs_fails_over_upgrades_and_uninstalls() {
    if std::env::var("IRONVIRT_DEPLOY_TEST").as_deref() != Ok("1") {
        panic!("run by `make test-deploy`, which builds the images and starts the bed it needs");
    }
    let dev_archives = archives("IRONVIRT_IMAGE_ARCHIVES");
    let upgrade_archives = archives("IRONVIRT_UPGRADE_ARCHIVES");
    let upgrade_tag = std::env::var("IRONVIRT_UPGRADE_TAG").expect("IRONVIRT_UPGRADE_TAG");
    let bed = TestBed::shared()
        .await
        .expect("the test bed (IRONVIRT_STATE)");
    let layout = bed.layout().clone();
    let admin = bed.admin();
    let kubeconfig = bed.info().kubeconfig.clone();
    let t0 = Instant::now();

    // Two kubelet nodes (kube-apiserver with aggregator routing); the handler
    // goes to the first, whose libvirtd is the host's.
    let _stop = StopNodes(layout.clone());
    let mut node_paths = Vec::new();
    for n in [NODE_A, NODE_B] {
        let t = Instant::now();
        let p = kubelet::up(&layout, &node_spec(n), Duration::from_secs(240))
            .await
            .unwrap_or_else(|e| panic!("kubelet node {n}: {e}"));
        eprintln!(
            "kubelet node {n} Ready in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        node_paths.push(p);
    }
    let nodes: Api<Node> = Api::all(admin.clone());
    nodes
        .patch(
            NODE_A,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"labels": {HANDLER_LABEL: "true"}}})),
        )
        .await
        .expect("labelling the handler's node");
    for p in &node_paths {
        for a in &dev_archives {
            let t = Instant::now();
            image::import(p, a).unwrap_or_else(|e| panic!("importing {}: {e}", a.display()));
            eprintln!(
                "imported {} in {:.1} s",
                a.display(),
                t.elapsed().as_secs_f64()
            );
        }
    }

    // 1. Install: CRDs, then the overlay.
    ensure_crds(&bed);
    let t = Instant::now();
    let dir = apply_overlay(&bed, TAG);
    wait_installed(&bed, TAG, "every ironvirt pod Ready, APIService Available").await;
    let install_secs = t.elapsed().as_secs_f64();
    let out = kubectl_ok(&bed, &["-n", SYSTEM_NS, "get", "pods", "-o", "wide"]);
    eprintln!("{out}");

    let t = Instant::now();
    kubectl_ok(
        &bed,
        &[
            "apply",
            "-n",
            VM_NS,
            "-f",
            &repo_root()
                .join("examples/vm-busybox.yaml")
                .to_string_lossy(),
        ],
    );
    if let Err(e) = wait_phase(&admin, VM_NS, VM, "Running", BOOT).await {
        panic!("{e}\n{}", diagnostics(&bed));
    }
    let vmis: Api<ironvirt_crds::VirtualMachineInstance> = Api::namespaced(admin.clone(), VM_NS);
    let vmi = vmis.get(VM).await.expect("the VMI");
    let on = vmi.status.as_ref().and_then(|s| s.node_name.clone());
    assert_eq!(on.as_deref(), Some(NODE_A), "the VMI's node");
    eprintln!(
        "{VM} Running on {NODE_A} after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let id = domain_id().expect("the VM's domain");
    let up0 = guest_uptime(&kubeconfig, BOOT)
        .await
        .unwrap_or_else(|e| panic!("ironctl console: {e}\n{}", diagnostics(&bed)));
    let up0_at = Instant::now();
    eprintln!("ironctl console: guest uptime {up0:.1} s");
    virtctl_vnc(&kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("virtctl vnc: {e}\n{}", diagnostics(&bed)));
    print_rss("with one VM, after a console and a VNC session");

    // 2. Failover: an ironvirt-api pod, then the operator's leader.
    let api_pods = pod_names(&admin, "ironvirt-api").await;
    let victim = api_pods.first().expect("an ironvirt-api pod").clone();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), SYSTEM_NS);
    pods.delete(&victim, &DeleteParams::default())
        .await
        .expect("deleting an ironvirt-api pod");
    eprintln!("deleted ironvirt-api pod {victim}");
    console_after_failover(&kubeconfig, "ironvirt-api pod deleted").await;
    wait_installed(&bed, TAG, "ironvirt-api back to 2 Ready replicas").await;

    let leader = operator_leader(&admin)
        .await
        .expect("the operator's leader");
    pods.delete(&leader, &DeleteParams::default())
        .await
        .expect("deleting the operator leader's pod");
    let t = Instant::now();
    let new_leader = wait_for(
        "another operator to lead",
        Duration::from_secs(60),
        || async { operator_leader(&admin).await.filter(|l| *l != leader) },
    )
    .await
    .expect("a new operator leader");
    eprintln!(
        "operator leader {leader} deleted; {new_leader} leads after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    console_after_failover(&kubeconfig, "operator leader deleted").await;
    wait_installed(&bed, TAG, "operator back to 2 Ready replicas").await;
    assert_eq!(
        domain_id().expect("the domain"),
        id,
        "the VM's domain restarted during failover"
    );
    wait_phase(&admin, VM_NS, VM, "Running", Duration::from_secs(5))
        .await
        .expect("the VMI still Running");

    // 3. Upgrade: the new images imported, the same overlay at their tag.
    for p in &node_paths {
        for a in &upgrade_archives {
            let t = Instant::now();
            image::import(p, a).unwrap_or_else(|e| panic!("importing {}: {e}", a.display()));
            eprintln!(
                "imported {} in {:.1} s",
                a.display(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let t = Instant::now();
    apply_overlay(&bed, &upgrade_tag);
    wait_installed(
        &bed,
        &upgrade_tag,
        "all three components rolled to the new tag",
    )
    .await;
    let upgrade_secs = t.elapsed().as_secs_f64();
    let out = kubectl_ok(
        &bed,
        &[
            "-n",
            SYSTEM_NS,
            "get",
            "pods",
            "-o",
            "custom-columns=NAME:.metadata.name,IMAGE:.spec.containers[0].image,STARTED:.status.startTime,NODE:.spec.nodeName",
        ],
    );
    eprintln!("after the upgrade:\n{out}");
    let up1 = console_after_failover(&kubeconfig, "after the upgrade").await;
    let elapsed = up0_at.elapsed().as_secs_f64();
    eprintln!("guest uptime {up0:.1} s before, {up1:.1} s after the upgrade, {elapsed:.1} s later");
    assert!(
        up1 >= up0 + elapsed - 5.0,
        "the guest rebooted: uptime {up0:.1} s, then {up1:.1} s {elapsed:.1} s later"
    );
    assert_eq!(
        domain_id().expect("the domain"),
        id,
        "the VM's domain restarted in the upgrade"
    );
    virtctl_vnc(&kubeconfig)
        .await
        .expect("virtctl vnc after the upgrade");
    print_rss("after the upgrade");

    // 4. Removal: the VM, then kubectl delete -k, then the CRDs.
    kubectl_ok(&bed, &["delete", "-n", VM_NS, "vm", VM, "--wait=true"]);
    wait_gone(&admin, VM_NS, VM, Duration::from_secs(120))
        .await
        .expect("the VMI gone");
    let prefix = domain_name(VM_NS, "");
    wait_for("the VM's domain to go", Duration::from_secs(60), || async {
        domains_with_prefix(QEMU, &prefix)
            .ok()
            .filter(Vec::is_empty)
            .map(|_| ())
    })
    .await
    .expect("no domain left");
    let upgrade_dir = overlay::write(
        bed.layout(),
        bed.info(),
        &repo_root().join("deploy/overlays/testbed"),
        &upgrade_tag,
        NODE_A,
    )
    .expect("the kustomization");
    let t = Instant::now();
    kubectl_ok(
        &bed,
        &[
            "delete",
            "-k",
            &upgrade_dir.to_string_lossy(),
            "--wait=true",
            "--timeout=180s",
        ],
    );
    kubectl_ok(
        &bed,
        &[
            "delete",
            "-f",
            &repo_root().join("deploy/crds").to_string_lossy(),
            "--wait=true",
            "--timeout=120s",
        ],
    );
    let left = wait_for(
        "nothing of ironvirt to be left",
        Duration::from_secs(120),
        || async {
            ironvirt_objects(&bed)
                .ok()
                .filter(Vec::is_empty)
                .map(|_| ())
        },
    )
    .await;
    if left.is_err() {
        panic!("left after kubectl delete -k: {:?}", ironvirt_objects(&bed));
    }
    let hooks = kubectl_ok(
        &bed,
        &[
            "get",
            "validatingwebhookconfigurations,mutatingwebhookconfigurations",
            "-o",
            "name",
        ],
    );
    assert!(
        !hooks.contains("kubevirt") && !hooks.contains("ironvirt"),
        "webhooks left: {hooks}"
    );
    let crds = kubectl_ok(&bed, &["get", "crd", "-o", "name"]);
    assert!(!crds.contains("kubevirt.io"), "CRDs left: {crds}");
    let pods_left = kubectl_ok(&bed, &["get", "pods", "-A", "-o", "name"]);
    assert!(pods_left.trim().is_empty(), "pods left: {pods_left}");
    eprintln!(
        "removed in {:.1} s; nothing left (domains, pods, webhooks, APIService, CRDs, objects)",
        t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "install {install_secs:.1} s, upgrade {upgrade_secs:.1} s, whole test {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
