//! A real kubelet node in the test bed (issue #21, phase 1): kubelet v1.36
//! with Debian's containerd and runc, started through the testbed crate
//! (`ironvirt_testbed::kubelet`).
//!
//! - The node registers and turns Ready.
//! - A hostNetwork pod with the locally imported busybox image (no registry)
//!   runs on it, and its log, read through kube-apiserver (which dials the
//!   kubelet at its InternalIP and verifies its certificate), holds what it
//!   printed, and its ServiceAccount token is mounted.
//! - A Deployment's pod, with no nodeName, is bound to the node by the bed's
//!   kube-scheduler (started with the first kubelet node) and runs.
//! - The pod is deleted and goes; the node stops, and nothing of it is left:
//!   no process mentioning its directory, no mount under it.
//!
//! - With IRONVIRT_IMAGE_ARCHIVES (the archives `make images` writes,
//!   separated by spaces or newlines), each archive is imported into the
//!   node's containerd, and each of its images runs as a pod that prints its
//!   binary's `--version` (the handler's pod also runs `qemu-img --version`
//!   from its image): ironvirt's images, built by buildah from
//!   `deploy/docker/`, run under containerd.
//!
//! Ignored by `make test`: `make test-node` runs it (`--ignored`, with
//! IRONVIRT_KUBELET_NODE=1 and IRONVIRT_KUBELET_BIN) on a bed of its own.
//! `IRONVIRT_IMAGE_ARCHIVES="$(hack/build-images.sh)" make test-node` adds the
//! images.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ironvirt_testbed::kubelet::{self, NodeSpec, config::BUSYBOX_IMAGE, image};
use ironvirt_tests::TestBed;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};

const NODE: &str = "kubelet-test";
const MARKER: &str = "IRONVIRT-KUBELET-POD-OK";

fn spec() -> Result<NodeSpec, String> {
    let kubelet = std::env::var_os("IRONVIRT_KUBELET_BIN")
        .map(PathBuf::from)
        .ok_or(
            "IRONVIRT_KUBELET_BIN is not set: the kubelet binary (hack/build-kubelet.sh prints it)",
        )?;
    let testbed = std::env::var_os("IRONVIRT_TESTBED_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ironvirt-testbed")
        });
    // hack/build-kubelet.sh builds kube-scheduler beside kubelet.
    let scheduler = std::env::var_os("IRONVIRT_KUBE_SCHEDULER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| kubelet.with_file_name("kube-scheduler"));
    Ok(NodeSpec {
        name: NODE.into(),
        kubelet,
        scheduler,
        testbed,
        aggregator_routing: false,
    })
}

/// Stops the node when the test ends, whatever happened.
struct StopNode(ironvirt_testbed::Layout);

impl Drop for StopNode {
    fn drop(&mut self) {
        if let Err(e) = kubelet::down(&self.0, NODE) {
            eprintln!("stopping kubelet node {NODE}: {e}");
        }
    }
}

fn pod(ns: &str) -> Result<Pod, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hello", "namespace": ns},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": true,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "hello",
                "image": BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", format!("echo {MARKER} on $(cat /proc/sys/kernel/hostname); ls /var/run/secrets/kubernetes.io/serviceaccount")],
            }],
        },
    }))
    .map_err(|e| format!("pod manifest: {e}"))
}

/// A Deployment of one hostNetwork busybox pod, without a nodeName.
fn deployment(ns: &str) -> Result<Deployment, String> {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "scheduled", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "scheduled"}},
            "template": {
                "metadata": {"labels": {"app": "scheduled"}},
                "spec": {
                    "hostNetwork": true,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{
                        "name": "sleep",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", "sleep 3600"],
                    }],
                },
            },
        },
    }))
    .map_err(|e| format!("Deployment manifest: {e}"))
}

/// The image archives to run (IRONVIRT_IMAGE_ARCHIVES), if any.
fn image_archives() -> Vec<PathBuf> {
    std::env::var("IRONVIRT_IMAGE_ARCHIVES")
        .unwrap_or_default()
        .split_whitespace()
        .map(PathBuf::from)
        .collect()
}

/// The binary an ironvirt image runs: the last path component of its name
/// without the tag (`ironvirt.local/ironvirt-api:dev` → `ironvirt-api`).
fn binary_of(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map_or(last, |(n, _)| n)
}

/// A pod that runs `image` (an ironvirt image) once: its entrypoint with
/// `--version`; for the handler, a shell that also runs `qemu-img`.
fn version_pod(ns: &str, name: &str, image: &str) -> Result<Pod, String> {
    let bin = binary_of(image);
    let mut container = serde_json::json!({
        "name": "version",
        "image": image,
        "imagePullPolicy": "Never",
    });
    if bin == "ironvirt-handler" {
        container["command"] = serde_json::json!([
            "/bin/sh",
            "-c",
            "/usr/local/bin/ironvirt-handler --version && qemu-img --version && id -u"
        ]);
    } else {
        container["args"] = serde_json::json!(["--version"]);
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": NODE,
            "hostNetwork": true,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [container],
        },
    }))
    .map_err(|e| format!("pod manifest: {e}"))
}

/// Runs `pod` to its end; returns its phase and log.
async fn run_pod(pods: &Api<Pod>, pod: &Pod) -> Result<(String, String), String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    wait_for("the pod to be created", Duration::from_secs(30), || {
        let pods = pods.clone();
        let pod = pod.clone();
        async move { pods.create(&PostParams::default(), &pod).await.ok() }
    })
    .await?;
    let t = Instant::now();
    let phase = wait_for(
        &format!("pod {name} to finish"),
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            let name = name.clone();
            async move {
                let p = pods.get(&name).await.ok()?;
                let phase = p.status?.phase?;
                matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
            }
        },
    )
    .await?;
    eprintln!(
        "pod {name} {phase} after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let logs = pods
        .logs(&name, &LogParams::default())
        .await
        .map_err(|e| format!("pod {name}'s logs through kube-apiserver: {e}"))?;
    Ok((phase, logs))
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

#[tokio::test]
#[ignore = "needs a kubelet node and a control plane of its own: run by `make test-node`"]
async fn a_kubelet_node_turns_ready_and_runs_a_host_network_pod() {
    if std::env::var("IRONVIRT_KUBELET_NODE").as_deref() != Ok("1") {
        panic!(
            "run by `make test-node`, which sets IRONVIRT_KUBELET_NODE=1 and starts the bed it needs"
        );
    }
    let bed = TestBed::shared()
        .await
        .expect("the test bed (IRONVIRT_STATE)");
    let spec = spec().expect("kubelet node binaries");
    let layout = bed.layout().clone();
    let t0 = Instant::now();
    let guard = StopNode(layout.clone());
    let paths = kubelet::up(&layout, &spec, Duration::from_secs(240))
        .await
        .expect("kubelet node Ready");
    eprintln!(
        "kubelet node {NODE} Ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    let nodes: Api<Node> = Api::all(bed.admin());
    let node = nodes.get(NODE).await.expect("the Node");
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.clone())
        .unwrap_or_default();
    // kubelet refuses a loopback node IP: the node has 10.214.0.x on lo.
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address.starts_with("10.214.0.")),
        "node addresses: {addrs:?}"
    );

    let archives = image_archives();
    let mut images = Vec::new();
    for archive in &archives {
        let t = Instant::now();
        image::import(&paths, archive).expect("importing an image archive");
        let names = image::archive_image_names(archive).expect("the archive's image names");
        eprintln!(
            "imported {} ({} MB: {}) in {:.1} s",
            archive.display(),
            std::fs::metadata(archive).map_or(0, |m| m.len() >> 20),
            names.join(", "),
            t.elapsed().as_secs_f64()
        );
        images.extend(names);
    }
    if archives.is_empty() {
        eprintln!("IRONVIRT_IMAGE_ARCHIVES is not set: ironvirt's images are not run");
    }

    bed.with_namespace("kubelet-node", |ns| {
        let admin = bed.admin();
        let images = images.clone();
        async move {
            let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
            let manifest = pod(&ns)?;
            // The namespace's ServiceAccount comes from kube-controller-manager.
            wait_for("the pod to be created", Duration::from_secs(30), || {
                let pods = pods.clone();
                let manifest = manifest.clone();
                async move { pods.create(&PostParams::default(), &manifest).await.ok() }
            })
            .await?;
            let t1 = Instant::now();
            let phase = wait_for("the pod to finish", Duration::from_secs(120), || {
                let pods = pods.clone();
                async move {
                    let p = pods.get("hello").await.ok()?;
                    let phase = p.status?.phase?;
                    matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
                }
            })
            .await?;
            eprintln!(
                "pod hello {phase} after {:.1} s",
                t1.elapsed().as_secs_f64()
            );
            let logs = pods
                .logs("hello", &LogParams::default())
                .await
                .map_err(|e| format!("pod logs through kube-apiserver: {e}"))?;
            eprintln!("pod log:\n{logs}");
            if phase != "Succeeded" {
                return Err(format!("pod hello ended {phase}; log: {logs}"));
            }
            if !logs.contains(MARKER) || !logs.contains("token") {
                return Err(format!("the pod's log lacks {MARKER} or its token: {logs}"));
            }
            pods.delete("hello", &DeleteParams::default())
                .await
                .map_err(|e| format!("deleting the pod: {e}"))?;
            wait_for("the pod to be gone", Duration::from_secs(60), || {
                let pods = pods.clone();
                async move { matches!(pods.get_opt("hello").await, Ok(None)).then_some(()) }
            })
            .await?;
            // A Deployment's pod has no nodeName: kube-scheduler, which the
            // bed runs once it has a kubelet node, binds it to this node.
            let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
            let deployment = deployment(&ns)?;
            deployments
                .create(&PostParams::default(), &deployment)
                .await
                .map_err(|e| format!("creating the Deployment: {e}"))?;
            let t3 = Instant::now();
            let (pod_name, node) = wait_for(
                "the Deployment's pod to be scheduled and run",
                Duration::from_secs(120),
                || {
                    let pods = pods.clone();
                    async move {
                        let list = pods
                            .list(&ListParams::default().labels("app=scheduled"))
                            .await
                            .ok()?;
                        list.items.into_iter().find_map(|p| {
                            let running = p.status.as_ref()?.phase.as_deref() == Some("Running");
                            let node = p.spec.as_ref()?.node_name.clone()?;
                            running.then(|| (p.metadata.name.clone().unwrap_or_default(), node))
                        })
                    }
                },
            )
            .await?;
            eprintln!(
                "Deployment pod {pod_name} scheduled to {node} and Running after {:.1} s",
                t3.elapsed().as_secs_f64()
            );
            if node != NODE {
                return Err(format!("the Deployment's pod went to {node}, not {NODE}"));
            }
            deployments
                .delete("scheduled", &DeleteParams::foreground())
                .await
                .map_err(|e| format!("deleting the Deployment: {e}"))?;
            wait_for(
                "the Deployment's pods to be gone",
                Duration::from_secs(60),
                || {
                    let pods = pods.clone();
                    async move {
                        let list = pods
                            .list(&ListParams::default().labels("app=scheduled"))
                            .await
                            .ok()?;
                        list.items.is_empty().then_some(())
                    }
                },
            )
            .await?;
            for (i, img) in images.iter().enumerate() {
                let pod = version_pod(&ns, &format!("image-{i}"), img)?;
                let (phase, logs) = run_pod(&pods, &pod).await?;
                eprintln!("{img} printed:\n{logs}");
                if phase != "Succeeded" || !logs.contains(binary_of(img)) {
                    return Err(format!(
                        "{img} ended {phase}, and its log should name {}: {logs}",
                        binary_of(img)
                    ));
                }
                if binary_of(img) == "ironvirt-handler" && !logs.contains("qemu-img version") {
                    return Err(format!("{img} lacks qemu-img: {logs}"));
                }
            }
            Ok::<(), String>(())
        }
    })
    .await;

    let t2 = Instant::now();
    drop(guard);
    eprintln!(
        "kubelet node {NODE} stopped in {:.1} s",
        t2.elapsed().as_secs_f64()
    );
    let root = paths.root().to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
    assert!(left.is_empty(), "mounts left under {root}: {left:#?}");
    let mut procs = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|s| s.parse::<u32>().is_ok())
        {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&root) {
                procs.push(cmd);
            }
        }
    }
    assert!(procs.is_empty(), "processes left: {procs:#?}");
    let _ = nodes.delete(NODE, &DeleteParams::default()).await;
}
