//! KubeVirt's published example manifests (`tests/data/kubevirt-examples/`,
//! copied unchanged), applied with `kubectl apply --validate=strict` to the
//! real control plane with ironvirt's CRDs and admission webhooks. Each one
//! has the outcome `outcomes.yaml` gives it:
//!
//! - `run: N`: accepted, and N VMIs reach Running with the test guest's
//!   marker on their serial console (a VM that is not running is started,
//!   as `virtctl start` would). Its images are served by a real registry
//!   through the node's mirror configuration, under the names the manifest
//!   uses. (`run: 0`: a preset, accepted; it runs nothing by itself.)
//!   The cirros names serve the guest with the small kernel, which boots
//!   in the 64M the cirros examples give.
//! - `fails: <words>`: accepted, and the VMI's status on the test bed's
//!   node says the words (`why` says why).
//! - `refused: <words>`: kubectl fails, and its message has the words that
//!   name the missing hardware or feature; nothing is created.
//!
//! The files run in lanes (one namespace, handler and operator each) so the
//! guests boot side by side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ironvirt_crds::VirtualMachineInstance;
use ironvirt_tests::handler::{Handler, wait_phase};
use ironvirt_tests::kubectl::{kubectl, repo_root};
use ironvirt_tests::operator::{Operator, eventually};
use ironvirt_tests::registry::Registry;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;

const MARKER: &str = "IRONVIRT-GUEST-READY";
const BOOT: Duration = Duration::from_secs(180);
const LANES: usize = 3;

#[derive(Debug, Clone)]
enum Outcome {
    Run(usize),
    /// Accepted, and its VMI fails on the test bed's node for these words.
    Fails(String),
    Refused(String),
}

/// An entry of `outcomes.yaml`: `{run: N}` or `{refused: words}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    run: Option<usize>,
    fails: Option<String>,
    refused: Option<String>,
    /// Why, for `fails`.
    #[allow(dead_code)]
    why: Option<String>,
}

fn examples_dir() -> PathBuf {
    repo_root().join("tests/data/kubevirt-examples")
}

fn outcomes() -> BTreeMap<String, Outcome> {
    let path = examples_dir().join("outcomes.yaml");
    let text = std::fs::read_to_string(&path).expect("outcomes.yaml");
    let entries: BTreeMap<String, Entry> =
        serde_yaml::from_str(&text).expect("outcomes.yaml is a map of file to outcome");
    entries
        .into_iter()
        .map(|(file, e)| {
            let outcome = match (e.run, e.fails, e.refused) {
                (Some(n), None, None) => Outcome::Run(n),
                (None, Some(words), None) => Outcome::Fails(words),
                (None, None, Some(words)) => Outcome::Refused(words),
                _ => panic!("{file}: give exactly one of run, fails and refused"),
            };
            (file, outcome)
        })
        .collect()
}

#[test]
fn every_example_has_an_outcome() {
    let outcomes = outcomes();
    let files: Vec<String> = std::fs::read_dir(examples_dir())
        .expect("the examples")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "outcomes.yaml")
        .collect();
    for f in &files {
        assert!(
            outcomes.contains_key(f),
            "{f} has no outcome in outcomes.yaml"
        );
    }
    for f in outcomes.keys() {
        assert!(
            files.contains(f),
            "outcomes.yaml names {f}, which is not there"
        );
    }
}

/// A registry serving the test guest under every image name the examples
/// use (`images.txt`): containerDisks as `/disk/disk.qcow2`, kernel-boot
/// images as KubeVirt's demo lays them out.
async fn registry_with_example_images() -> Registry {
    let reg = Registry::start().expect("the registry");
    let guest = ironvirt_tests::kubectl::bed_with_crds()
        .await
        .guest()
        .expect("the test guest");
    let disk = std::fs::read(&guest.disk).expect("the guest's disk");
    let small = std::fs::read(&guest.disk_small).expect("the guest's disk with the small kernel");
    let kernel = std::fs::read(&guest.kernel).expect("the guest's kernel");
    let initrd = std::fs::read(&guest.initramfs).expect("the guest's initramfs");
    let list = std::fs::read_to_string(examples_dir().join("images.txt")).expect("images.txt");
    for line in list.lines() {
        let Some(image) = line
            .split_whitespace()
            .next()
            .filter(|l| !l.starts_with('#'))
        else {
            continue;
        };
        let name = repo_tag(image);
        let files = if image.contains("kernel-boot") {
            vec![
                ("boot/vmlinuz-virt", kernel.clone()),
                ("boot/initramfs-virt", initrd.clone()),
            ]
        } else if image.contains("fedora25") {
            // The user guide's containerDisk `path` example names this file,
            // and gives the guest 64M.
            vec![
                ("disk/disk.qcow2", small.clone()),
                ("custom-disk-path/fedora25.qcow2", small.clone()),
            ]
        } else if image.contains("cirros") {
            // The cirros examples give their guests 64M: the small kernel.
            vec![("disk/disk.qcow2", small.clone())]
        } else {
            vec![("disk/disk.qcow2", disk.clone())]
        };
        reg.push(&name, &files)
            .await
            .expect("push an example image");
    }
    reg
}

/// `repo:tag` of an image reference, without its registry host.
fn repo_tag(image: &str) -> String {
    let rest = match image.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') => rest,
        _ => image,
    };
    let last = rest.rsplit('/').next().unwrap_or(rest);
    if last.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:latest")
    }
}

#[test]
fn image_names_lose_their_registry_only() {
    assert_eq!(
        repo_tag("registry:5000/kubevirt/x:devel"),
        "kubevirt/x:devel"
    );
    assert_eq!(repo_tag("quay.io/kubevirt/x"), "kubevirt/x:latest");
    assert_eq!(repo_tag("kubevirt/x"), "kubevirt/x:latest");
    assert_eq!(
        repo_tag("docker.io/vmidisks/fedora25:latest"),
        "vmidisks/fedora25:latest"
    );
}

/// The VMs of `file` that do not run yet (`running: false` or runStrategy
/// Halted/Manual): started as `virtctl start` would.
fn stopped_vms(file: &Path) -> Vec<(String, serde_json::Value)> {
    let text = std::fs::read_to_string(file).expect("the example");
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let Ok(v) = serde_json::Value::deserialize(doc) else {
            continue;
        };
        if v["kind"] != "VirtualMachine" {
            continue;
        }
        let name = v["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let spec = &v["spec"];
        let patch = if spec["running"] == serde_json::json!(false) {
            serde_json::json!({"spec": {"running": true}})
        } else if matches!(spec["runStrategy"].as_str(), Some("Halted" | "Manual")) {
            serde_json::json!({"spec": {"runStrategy": "Always"}})
        } else {
            continue;
        };
        out.push((name, patch));
    }
    out
}

async fn run_lane(lane: usize, files: Vec<(String, Outcome)>, registry: String) {
    let bed = &ironvirt_tests::kubectl::bed_with_crds().await;
    bed.with_namespace(&format!("kvex{lane}"), |ns| async move {
        let client = bed.admin();
        let node = format!("{ns}-n");
        let mirrors = format!(
            "registries:\n  quay.io:\n    mirrors: [\"{registry}\"]\n  docker.io:\n    mirrors: [\"{registry}\"]\n  \"registry:5000\":\n    mirrors: [\"{registry}\"]\n  \"{registry}\":\n    insecure: true\n"
        );
        let (h, _config) = Handler::start_with_registries(bed, &ns, &node, &mirrors).await?;
        let _op = Operator::start(bed, &ns, &format!("kvex{lane}"), &[]);
        // The instancetypes and preferences the instancetype examples name.
        let types = examples_dir().join("../kubevirt-example-instancetypes.yaml");
        let applied = kubectl(bed, &["apply", "-n", &ns, "-f", &types.display().to_string()]);
        assert!(applied.success, "{}", applied.stderr);
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        let vms: Api<ironvirt_crds::VirtualMachine> = Api::namespaced(client.clone(), &ns);
        let mut failures = Vec::new();
        for (file, outcome) in files {
            let path = examples_dir().join(&file);
            let path_s = path.display().to_string();
            let applied = kubectl(bed, &["apply", "--validate=strict", "-n", &ns, "-f", &path_s]);
            let said = format!("{}{}", applied.stdout, applied.stderr);
            match &outcome {
                Outcome::Refused(words) => {
                    if applied.success {
                        failures.push(format!("{file}: accepted, but should be refused ({words}): {said}"));
                    } else if !said.contains(words.as_str()) {
                        failures.push(format!("{file}: refused without {words:?}: {said}"));
                    }
                }
                Outcome::Run(n) => {
                    if !applied.success {
                        failures.push(format!("{file}: refused, but should run: {said}"));
                    } else if *n > 0
                        && let Err(e) = runs(&h, &vms, &vmis, &ns, &path, *n).await
                    {
                        failures.push(format!("{file}: {e}"));
                    }
                }
                Outcome::Fails(words) => {
                    if !applied.success {
                        failures.push(format!("{file}: refused, but should be accepted: {said}"));
                    } else if let Err(e) = fails(&vms, &vmis, &path, words).await {
                        failures.push(format!("{file}: {e}"));
                    }
                }
            }
            kubectl(bed, &["delete", "--ignore-not-found", "--wait=true", "--timeout=120s", "-n", &ns, "-f", &path_s]);
            let gone = eventually(Duration::from_secs(120), "the example's VMIs are gone", || {
                let vmis = vmis.clone();
                async move { vmis.list(&ListParams::default()).await.ok()?.items.is_empty().then_some(()) }
            })
            .await;
            if let Err(e) = gone {
                failures.push(format!("{file}: {e}"));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    })
    .await;
}

/// The example's VMs started, then a VMI whose status says `words`.
async fn fails(
    vms: &Api<ironvirt_crds::VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    path: &Path,
    words: &str,
) -> Result<(), String> {
    start_vms(vms, path).await?;
    eventually(BOOT, &format!("a VMI whose status says {words:?}"), || {
        let vmis = vmis.clone();
        async move {
            let list = vmis.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|v| serde_json::to_string(&v.status).is_ok_and(|s| s.contains(words)))
                .then_some(())
        }
    })
    .await
    .map_err(|e| e.to_string())
}

async fn start_vms(vms: &Api<ironvirt_crds::VirtualMachine>, path: &Path) -> Result<(), String> {
    for (name, patch) in stopped_vms(path) {
        vms.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("starting VM {name}: {e}"))?;
    }
    Ok(())
}

/// The example's VMs started, then `n` VMIs Running, with the marker on
/// their consoles.
async fn runs(
    console: &Handler,
    vms: &Api<ironvirt_crds::VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    ns: &str,
    path: &Path,
    n: usize,
) -> Result<(), String> {
    start_vms(vms, path).await?;
    let names = eventually(BOOT, "the example's VMIs", || {
        let vmis = vmis.clone();
        async move {
            let list = vmis.list(&ListParams::default()).await.ok()?;
            let names: Vec<String> = list.items.iter().map(ResourceExt::name_any).collect();
            (names.len() == n).then_some(names)
        }
    })
    .await
    .map_err(|e| e.to_string())?;
    let client = vmis.clone().into_client();
    for name in &names {
        wait_phase(&client, ns, name, "Running", BOOT).await?;
        let path = format!("/v1/namespaces/{ns}/virtualmachineinstances/{name}/console");
        let mut con = console.streams().websocket(&path).await?;
        con.expect_from(0, MARKER, BOOT).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kubevirt_examples_run_or_are_refused_with_a_reason() {
    let reg = registry_with_example_images().await;
    let mut lanes: Vec<Vec<(String, Outcome)>> = vec![Vec::new(); LANES];
    // Running examples first, spread over the lanes.
    let mut all: Vec<(String, Outcome)> = outcomes().into_iter().collect();
    all.sort_by_key(|(_, o)| matches!(o, Outcome::Refused(_)));
    for (i, entry) in all.into_iter().enumerate() {
        lanes[i % LANES].push(entry);
    }
    let runs = lanes
        .into_iter()
        .enumerate()
        .map(|(i, files)| tokio::spawn(run_lane(i, files, reg.host.clone())));
    let mut panics = Vec::new();
    for r in futures::future::join_all(runs).await {
        if let Err(e) = r {
            panics.push(e.to_string());
        }
    }
    assert!(panics.is_empty(), "lanes failed:\n{}", panics.join("\n"));
}
