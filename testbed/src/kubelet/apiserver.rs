//! kube-apiserver's side of kubelet nodes: its own kubelet client
//! certificate and the flags to reach kubelets by InternalIP, applied once.

use std::fs;
use std::time::Duration;

use super::{KubeletError, Result, config};
use crate::controlplane::{self, APISERVER};
use crate::layout::{ClusterInfo, Layout};
use crate::pki::Pki;
use crate::process::Supervisor;

/// The PKI file names of the node and of kube-apiserver's kubelet client.
const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";

/// kube-apiserver's kubelet flags, with its client certificate minted once;
/// with `aggregator_routing`, also `--enable-aggregator-routing=true`.
fn apiserver_kubelet_args(layout: &Layout, aggregator_routing: bool) -> Result<Vec<String>> {
    let pki = Pki::new(layout.pki());
    if !(pki.crt(APISERVER_KUBELET_CLIENT).exists() && pki.key(APISERVER_KUBELET_CLIENT).exists()) {
        pki.mint_user("kube-apiserver-kubelet-client", &["system:masters"])?
            .write(pki.dir(), APISERVER_KUBELET_CLIENT)?;
    }
    let mut args = config::apiserver_kubelet_args(
        &pki.crt(crate::pki::names::CA),
        &pki.crt(APISERVER_KUBELET_CLIENT),
        &pki.key(APISERVER_KUBELET_CLIENT),
    );
    if aggregator_routing {
        args.push(AGGREGATOR_ROUTING.into());
    }
    Ok(args)
}

/// kube-apiserver calls APIServices and webhooks at their Service's endpoint
/// addresses instead of its ClusterIP: what lets ironvirt-api run in a pod
/// on a bed without kube-proxy. It also makes kube-apiserver refuse
/// ExternalName Services ("unsupported service type"), which the bed of
/// `make run` uses for its local ironvirt-api, so only beds that ask get it.
pub const AGGREGATOR_ROUTING: &str = "--enable-aggregator-routing=true";

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Makes kube-apiserver reach kubelets by InternalIP, verifying them and
/// authenticating as `kube-apiserver-kubelet-client` (and with
/// `aggregator_routing`, route to Services' endpoints, see
/// [`AGGREGATOR_ROUTING`]): when the running one lacks those flags, it is
/// restarted once with its own flags plus these.
pub async fn ensure_apiserver_reaches_kubelets(
    layout: &Layout,
    info: &ClusterInfo,
    aggregator_routing: bool,
) -> Result<()> {
    let extra = apiserver_kubelet_args(layout, aggregator_routing)?;
    let _lock = controlplane::lock_state(layout)?;
    let sup = controlplane::supervisor(layout);
    let rec = sup
        .recorded()
        .into_iter()
        .find(|r| r.name == APISERVER && Supervisor::is_running(r))
        .ok_or_else(|| crate::Error::NotRunning(layout.cluster_info()))?;
    let cmdline = fs::read(format!("/proc/{}/cmdline", rec.pid)).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if extra.iter().all(|e| args.contains(e)) {
        return Ok(());
    }
    let (Some(api_port), Some(etcd_port)) = (port_of(&info.api_url), port_of(&info.etcd_url))
    else {
        return Err(KubeletError::Command {
            command: "reading the bed's ports".into(),
            output: format!("no port in {} or {}", info.api_url, info.etcd_url),
        });
    };
    tracing::info!("restarting kube-apiserver with the kubelet flags {extra:?}");
    let mut new_args = controlplane::apiserver_args(layout, api_port, etcd_port);
    new_args.extend(extra);
    // Its watches keep it from exiting on SIGTERM for long; etcd holds the
    // state, so a short grace is enough.
    sup.stop(APISERVER, Duration::from_secs(3))?;
    sup.spawn(APISERVER, &rec.exe, &new_args, &[])?;
    let client = controlplane::client_from_kubeconfig(&info.kubeconfig).await?;
    controlplane::wait_ready(&sup, APISERVER, 90, || {
        let client = client.clone();
        async move { matches!(controlplane::readyz(&client).await.as_deref(), Ok("ok")) }
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_from_urls() {
        assert_eq!(port_of("https://127.0.0.1:6443"), Some(6443));
        assert_eq!(port_of("https://127.0.0.1:2379/"), Some(2379));
        assert_eq!(port_of("https://127.0.0.1"), None);
    }
}
