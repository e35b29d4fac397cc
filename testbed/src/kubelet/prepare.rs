//! The node's directory, written before it starts: certificates, kubeconfig,
//! kubelet, containerd and CNI configurations, and the image archive.

use std::fs;
use std::path::Path;

use super::config::{self, KubeletPorts, NodePaths};
use super::node_ip::choose_node_ip_now;
use super::{KubeletError, Result, image, io, paths};
use crate::controlplane;
use crate::layout::{ClusterInfo, Layout};
use crate::pki::{LeafSpec, Pki};

/// Writes the node's directory: certificates, kubeconfig, kubelet and
/// containerd configurations, the CNI configuration and the image archive.
pub fn prepare(layout: &Layout, info: &ClusterInfo, name: &str) -> Result<NodePaths> {
    let paths = paths(layout, name);
    for d in [
        paths.root().to_owned(),
        paths.containerd_dir(),
        paths.containerd_run(),
        paths.cni_conf_dir(),
        paths.kubelet_dir(),
        paths.pod_logs_dir(),
        paths.pki_dir(),
    ] {
        fs::create_dir_all(&d).map_err(io(&d))?;
    }
    let pki = Pki::new(layout.pki());
    let node_pki = paths.pki_dir();
    // Its user: system:node:<name> in system:nodes (the Node authorizer's).
    let user = format!("system:node:{name}");
    pki.mint_user(&user, &["system:nodes"])?
        .write(&node_pki, "kubelet-client")?;
    // Its serving certificate: the node's address, which kube-apiserver
    // dials, and loopback.
    let node_ip = choose_node_ip_now(&paths)?;
    let mut serving = LeafSpec::loopback_server(name, &[name]);
    serving.ips.push(std::net::IpAddr::V4(node_ip));
    pki.cluster_ca()?
        .issue(&serving)?
        .write(&node_pki, "kubelet-serving")?;
    let ca = pki.crt(crate::pki::names::CA);
    let kubeconfig = controlplane::kubeconfig_yaml(
        &info.api_url,
        &ca,
        &node_pki.join("kubelet-client.crt"),
        &node_pki.join("kubelet-client.key"),
        &user,
    );
    fs::write(paths.kubeconfig(), kubeconfig).map_err(io(paths.kubeconfig()))?;
    let node_ip = choose_node_ip_now(&paths)?;
    let ports = controlplane::free_ports(2)?;
    let kc = config::kubelet_config(
        &paths,
        &ca,
        &node_pki.join("kubelet-serving.crt"),
        &node_pki.join("kubelet-serving.key"),
        KubeletPorts {
            node_ip,
            port: ports[0],
            healthz: ports[1],
        },
    );
    fs::write(paths.kubelet_config(), kc).map_err(io(paths.kubelet_config()))?;
    fs::write(paths.containerd_config(), config::containerd_config(&paths))
        .map_err(io(paths.containerd_config()))?;
    let cni = paths.cni_conf_dir().join("10-ironvirt-loopback.conflist");
    fs::write(&cni, config::cni_config()).map_err(io(&cni))?;
    let busybox = Path::new("/bin/busybox");
    if !busybox.is_file() {
        return Err(KubeletError::Missing {
            what: "busybox (static)",
            path: busybox.to_owned(),
            hint: "install Debian's busybox-static (make deps)",
        });
    }
    image::build_archive(
        &paths.images_dir(),
        busybox,
        &[
            image::ImageSpec {
                name: config::PAUSE_IMAGE.into(),
                entrypoint: vec!["/bin/sleep".into(), "2147483647".into()],
            },
            image::ImageSpec {
                name: config::BUSYBOX_IMAGE.into(),
                entrypoint: vec!["/bin/sh".into()],
            },
        ],
    )?;
    Ok(paths)
}
