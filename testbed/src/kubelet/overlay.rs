//! The kustomization that installs ironvirt on this bed's kubelet nodes: the
//! static overlay `deploy/overlays/testbed` plus what differs per bed, the
//! port kube-apiserver listens on (the pods reach it on 127.0.0.1 through
//! `KUBERNETES_SERVICE_HOST`/`_PORT`, there being no kube-proxy), and the
//! images' tag (an upgrade applies the same overlay with a new tag), and
//! the process whose namespaces the handler starts passt in (`--host-pid`:
//! these machines refuse even root access to their PID 1's namespaces, so
//! the handler's node process, `kubelet-run`, in the host's mount namespace
//! and cgroup, stands in for a node's init).

use std::fs;
use std::path::{Path, PathBuf};

use super::{Result, io};
use crate::layout::{ClusterInfo, Layout};

/// The images the overlay names, whose tag the bed's kustomization sets.
pub const IMAGES: &[&str] = &[
    "ironvirt.local/ironvirt-operator",
    "ironvirt.local/ironvirt-api",
    "ironvirt.local/ironvirt-handler",
];

/// The kustomization's text: `overlay` (a directory, relative to the
/// kustomization's: kustomize refuses absolute ones) as its one resource,
/// the images at `tag`, `KUBERNETES_SERVICE_PORT=api_port` for the three
/// components, and the handler's `--host-pid=host_pid`.
pub fn kustomization(overlay: &Path, api_port: u16, tag: &str, host_pid: u32) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let mut out = String::from(
        "# Written by the test bed (ironvirt_testbed::kubelet::overlay); do not edit.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n",
    );
    out.push_str(&format!("  - {}\nimages:\n", q(&overlay.to_string_lossy())));
    for image in IMAGES {
        out.push_str(&format!("  - name: {image}\n    newTag: {}\n", q(tag)));
    }
    out.push_str(&format!(
        "patches:\n  - target:\n      group: apps\n      kind: (Deployment|DaemonSet)\n      \
         name: ironvirt-(operator|api|handler)\n    patch: |-\n      - op: add\n        \
         path: /spec/template/spec/containers/0/env/-\n        \
         value: {{name: KUBERNETES_SERVICE_PORT, value: \"{api_port}\"}}\n"
    ));
    out.push_str(&format!(
        "  - target:\n      group: apps\n      kind: DaemonSet\n      name: ironvirt-handler\n    \
         patch: |-\n      - op: add\n        path: /spec/template/spec/containers/0/args/-\n        \
         value: --host-pid={host_pid}\n"
    ));
    out
}

/// The port of a URL like `https://127.0.0.1:6443`.
fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// The pid of kubelet node `node`'s process (`kubelet-run`), while it runs.
pub fn node_process_pid(layout: &Layout, node: &str) -> Result<u32> {
    let name = super::process_name(node);
    crate::controlplane::supervisor(layout)
        .recorded()
        .into_iter()
        .find(|r| r.name == name && crate::process::Supervisor::is_running(r))
        .map(|r| r.pid)
        .ok_or_else(|| super::KubeletError::Command {
            command: format!("finding the process of kubelet node {node}"),
            output: "it does not run: start it with `ironvirt-testbed kubelet-up`".into(),
        })
}

/// Writes the bed's kustomization into `<state>/deploy-<tag>/` and returns
/// that directory (`kubectl apply -k` it). `overlay` is the repository's
/// `deploy/overlays/testbed`; `handler_node` the kubelet node labelled for
/// the handler, whose process stands in for the node's init.
pub fn write(
    layout: &Layout,
    info: &ClusterInfo,
    overlay: &Path,
    tag: &str,
    handler_node: &str,
) -> Result<PathBuf> {
    let host_pid = node_process_pid(layout, handler_node)?;
    let port = port_of(&info.api_url).ok_or_else(|| super::KubeletError::Command {
        command: "reading the bed's kube-apiserver port".into(),
        output: format!("no port in {}", info.api_url),
    })?;
    let overlay = fs::canonicalize(overlay).map_err(io(overlay))?;
    let dir = layout.root().join(format!("deploy-{tag}"));
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let dir = fs::canonicalize(&dir).map_err(io(&dir))?;
    let file = dir.join("kustomization.yaml");
    let text = kustomization(&relative(&dir, &overlay), port, tag, host_pid);
    fs::write(&file, text).map_err(io(&file))?;
    Ok(dir)
}

/// `to` as seen from `from` (both absolute and canonical): `..` for each
/// component of `from` below their common prefix, then the rest of `to`.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bed_kustomization_sets_the_port_and_the_tag_over_the_overlay() {
        let text = kustomization(
            Path::new("../../deploy/overlays/testbed"),
            43211,
            "v2",
            4321,
        );
        let doc: serde_json::Value = serde_yaml::from_str(&text).expect("YAML");
        assert_eq!(doc["resources"][0], "../../deploy/overlays/testbed");
        let images = doc["images"].as_array().expect("images");
        assert_eq!(images.len(), 3);
        assert!(images.iter().all(|i| i["newTag"] == "v2"));
        let patch = doc["patches"][0]["patch"].as_str().expect("patch");
        let ops: serde_json::Value = serde_yaml::from_str(patch).expect("patch YAML");
        assert_eq!(ops[0]["value"]["name"], "KUBERNETES_SERVICE_PORT");
        assert_eq!(ops[0]["value"]["value"], "43211");
        assert_eq!(port_of("https://127.0.0.1:6443"), Some(6443));
        assert_eq!(doc["patches"][1]["target"]["name"], "ironvirt-handler");
        let patch = doc["patches"][1]["patch"].as_str().expect("patch");
        let ops: serde_json::Value = serde_yaml::from_str(patch).expect("patch YAML");
        assert_eq!(ops[0]["value"], "--host-pid=4321");
    }

    #[test]
    fn relative_paths_climb_to_the_common_prefix() {
        let r = |a: &str, b: &str| relative(Path::new(a), Path::new(b));
        assert_eq!(
            r("/repo/.state/t/deploy-dev", "/repo/deploy/overlays/testbed"),
            Path::new("../../../deploy/overlays/testbed")
        );
        assert_eq!(
            r("/tmp/bed/deploy-v2", "/work/main/deploy/overlays/testbed"),
            Path::new("../../../work/main/deploy/overlays/testbed")
        );
        assert_eq!(r("/a/b", "/a/b/c"), Path::new("c"));
    }
}
