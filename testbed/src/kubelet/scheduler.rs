//! kube-scheduler for a bed with kubelet nodes: Deployments' pods (ironvirt's
//! operator and ironvirt-api) have no `nodeName` until a scheduler binds
//! them. DaemonSet pods do not need it (kube-controller-manager's DaemonSet
//! controller sets their node affinity, and the scheduler binds them too
//! once it runs). Started once per bed, by the first kubelet node, as the
//! supervised process `kube-scheduler`; `make stop` stops it with the rest.
//!
//! It is user `system:kube-scheduler` (the built-in ClusterRoles
//! `system:kube-scheduler` and `system:volume-scheduler` are bound to that
//! user, as is the `extension-apiserver-authentication-reader` Role it
//! needs to authenticate its own clients), with a client certificate from
//! the bed's CA. It serves /healthz on 127.0.0.1 with a serving certificate
//! from that CA, which the readiness check verifies.

use std::fs;
use std::path::Path;

use super::{KubeletError, Result, io};
use crate::controlplane::{self, kubeconfig_yaml};
use crate::layout::{ClusterInfo, Layout};
use crate::pki::{LeafSpec, Pki, names};
use crate::process::Supervisor;

/// The supervisor's name for the process.
pub const SCHEDULER: &str = "kube-scheduler";
/// Its user, which the bootstrap RBAC policy knows.
const USER: &str = "system:kube-scheduler";
/// PKI file names: its client and serving certificates.
const CLIENT: &str = "kube-scheduler";
const SERVING: &str = "kube-scheduler-serving";

/// The command line: its own kubeconfig for the API, for delegated
/// authentication and for authorization; no leader election (one
/// scheduler); secure port on loopback only.
pub fn scheduler_args(kubeconfig: &Path, cert: &Path, key: &Path, port: u16) -> Vec<String> {
    let path = |flag: &str, p: &Path| format!("--{flag}={}", p.display());
    vec![
        path("kubeconfig", kubeconfig),
        path("authentication-kubeconfig", kubeconfig),
        path("authorization-kubeconfig", kubeconfig),
        "--bind-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        path("tls-cert-file", cert),
        path("tls-private-key-file", key),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
    ]
}

/// Starts kube-scheduler for the bed unless it runs, and waits until its
/// /healthz answers `ok`.
pub async fn ensure_scheduler(layout: &Layout, info: &ClusterInfo, bin: &Path) -> Result<()> {
    if !bin.is_file() {
        return Err(KubeletError::Missing {
            what: "kube-scheduler",
            path: bin.to_path_buf(),
            hint: "build it first (hack/build-kubelet.sh builds it beside kubelet)",
        });
    }
    let _lock = controlplane::lock_state(layout)?;
    let sup = controlplane::supervisor(layout);
    if sup
        .recorded()
        .iter()
        .any(|r| r.name == SCHEDULER && Supervisor::is_running(r))
    {
        return Ok(());
    }
    let pki = Pki::new(layout.pki());
    let ca = pki.cluster_ca()?;
    if !(pki.crt(CLIENT).exists() && pki.key(CLIENT).exists()) {
        ca.issue(&LeafSpec::client(USER, &[]))?
            .write(pki.dir(), CLIENT)?;
    }
    if !(pki.crt(SERVING).exists() && pki.key(SERVING).exists()) {
        ca.issue(&LeafSpec::loopback_server(SCHEDULER, &[]))?
            .write(pki.dir(), SERVING)?;
    }
    let kubeconfig = layout.root().join("kube-scheduler.kubeconfig");
    let yaml = kubeconfig_yaml(
        &info.api_url,
        &pki.crt(names::CA),
        &pki.crt(CLIENT),
        &pki.key(CLIENT),
        USER,
    );
    fs::write(&kubeconfig, yaml).map_err(io(&kubeconfig))?;
    let port = controlplane::free_ports(1)?
        .first()
        .copied()
        .ok_or_else(|| KubeletError::Command {
            command: "choosing kube-scheduler's port".into(),
            output: "no free port".into(),
        })?;
    let args = scheduler_args(&kubeconfig, &pki.crt(SERVING), &pki.key(SERVING), port);
    sup.spawn(SCHEDULER, bin, &args, &[])?;

    // Healthy on its port, its serving certificate verified against the CA.
    let health_kc = layout.root().join("kube-scheduler-health.kubeconfig");
    let health = kubeconfig_yaml(
        &format!("https://127.0.0.1:{port}"),
        &pki.crt(names::CA),
        &pki.crt(names::ADMIN),
        &pki.key(names::ADMIN),
        "admin",
    );
    fs::write(&health_kc, health).map_err(io(&health_kc))?;
    let client = controlplane::client_from_kubeconfig(&health_kc).await?;
    controlplane::wait_ready(&sup, SCHEDULER, 60, || {
        let c = client.clone();
        async move {
            let Ok(req) = http::Request::get("/healthz").body(Vec::new()) else {
                return false;
            };
            matches!(c.request_text(req).await.as_deref(), Ok("ok"))
        }
    })
    .await?;
    tracing::info!(port, "kube-scheduler ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_serves_on_loopback_with_our_certificate_and_no_election() {
        let args = scheduler_args(
            Path::new("/s/kc"),
            Path::new("/s/c.crt"),
            Path::new("/s/c.key"),
            4321,
        );
        for want in [
            "--kubeconfig=/s/kc",
            "--authentication-kubeconfig=/s/kc",
            "--authorization-kubeconfig=/s/kc",
            "--bind-address=127.0.0.1",
            "--secure-port=4321",
            "--tls-cert-file=/s/c.crt",
            "--tls-private-key-file=/s/c.key",
            "--leader-elect=false",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{want} missing from {args:?}"
            );
        }
    }
}
