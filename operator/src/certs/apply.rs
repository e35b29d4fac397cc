//! The cluster side of the certificate manager: read the Secrets, write the
//! ones that changed, patch the caBundles and roll the workloads, in a loop.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::issue::{Desired, issue};
use super::patches::{
    apiservice_patch, fingerprint, mutating_clients, restart_patch, validating_clients,
    webhook_patch,
};
use super::plan::{CaPlan, Existing, plan};
use super::{CertConfig, CertError, MANAGER};

fn secret_object(name: &str, data: &BTreeMap<String, Vec<u8>>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/part-of".to_owned(),
                    "ironvirt".to_owned(),
                ),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "ironvirt-operator".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(
            data.iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

/// Creates the Secret, or replaces its data (guarded by the resourceVersion read).
async fn write_secret(
    api: &Api<Secret>,
    name: &str,
    current: Option<&Secret>,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<(), CertError> {
    let mut desired = secret_object(name, data);
    match current {
        None => {
            api.create(&PostParams::default(), &desired).await?;
        }
        Some(cur) => {
            desired.metadata = cur.metadata.clone();
            // The type is immutable: keep whatever the Secret was created with.
            desired.type_ = cur.type_.clone();
            let labels = desired.metadata.labels.get_or_insert_default();
            labels.insert("app.kubernetes.io/part-of".into(), "ironvirt".into());
            labels.insert(
                "app.kubernetes.io/managed-by".into(),
                "ironvirt-operator".into(),
            );
            desired.metadata.managed_fields = None;
            api.replace(name, &PostParams::default(), &desired).await?;
        }
    }
    Ok(())
}

/// One pass: read, plan, issue, write what changed, patch the caBundles and
/// the restart annotations. Returns when to look again.
pub async fn reconcile_once(client: &Client, cfg: &CertConfig) -> Result<Duration, CertError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let ca = secrets.get_opt(&cfg.ca_secret).await?;
    let api = secrets.get_opt(&cfg.api_secret).await?;
    let handler = secrets.get_opt(&cfg.handler_secret).await?;
    let existing = Existing {
        ca: ca.as_ref().map(secret_data),
        api: api.as_ref().map(secret_data),
        handler: handler.as_ref().map(secret_data),
    };
    let now = Timestamp::now();
    let plan = plan(&existing, cfg, now);
    if let CaPlan::Generate(reason) = &plan.ca {
        tracing::info!(secret = %cfg.ca_secret, ?reason, "issuing a new CA");
    }
    for (what, reason) in [
        ("api serving", &plan.api_serving),
        ("api client", &plan.api_client),
        ("handler serving", &plan.handler_serving),
    ] {
        if let Some(reason) = reason {
            tracing::info!(certificate = what, ?reason, "issuing a certificate");
        }
    }
    let desired = issue(&existing, &plan, cfg, now)?;
    // The CA first: a crash after it leaves nothing that it did not sign.
    for (name, current, old, new) in [
        (&cfg.ca_secret, ca.as_ref(), &existing.ca, &desired.ca),
        (&cfg.api_secret, api.as_ref(), &existing.api, &desired.api),
        (
            &cfg.handler_secret,
            handler.as_ref(),
            &existing.handler,
            &desired.handler,
        ),
    ] {
        if old.as_ref() != Some(new) {
            write_secret(&secrets, name, current, new).await?;
            tracing::info!(secret.namespace = %cfg.namespace, secret.name = %name, "secret written");
        }
    }
    patch_bundles(client, cfg, &desired.bundle).await?;
    restart_workloads(client, cfg, &desired).await?;
    let wait = plan.next_check.saturating_sub(now.as_second());
    Ok(Duration::from_secs(u64::try_from(wait).unwrap_or(1)).min(cfg.resync))
}

async fn patch_bundles(client: &Client, cfg: &CertConfig, bundle: &[u8]) -> Result<(), CertError> {
    let pp = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    if let Some(name) = &cfg.apiservice {
        let api: Api<APIService> = Api::all(client.clone());
        match api.get_opt(name).await? {
            None => tracing::debug!(apiservice = %name, "no such APIService yet"),
            Some(cur) => {
                if let Some(p) = apiservice_patch(&cur, bundle) {
                    api.patch(name, &pp, &Patch::Merge(&p)).await?;
                    tracing::info!(apiservice = %name, "caBundle patched");
                }
            }
        }
    }
    if let Some(name) = &cfg.validating_webhook {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        if let Some(cur) = api.get_opt(name).await?
            && let Some(p) = webhook_patch(validating_clients(&cur), bundle)
        {
            api.patch(name, &pp, &Patch::<()>::Json(p)).await?;
            tracing::info!(webhook = %name, "caBundle patched");
        }
    }
    if let Some(name) = &cfg.mutating_webhook {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        if let Some(cur) = api.get_opt(name).await?
            && let Some(p) = webhook_patch(mutating_clients(&cur), bundle)
        {
            api.patch(name, &pp, &Patch::<()>::Json(p)).await?;
            tracing::info!(webhook = %name, "caBundle patched");
        }
    }
    Ok(())
}

async fn restart_workloads(
    client: &Client,
    cfg: &CertConfig,
    desired: &Desired,
) -> Result<(), CertError> {
    let pp = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    if let Some(name) = &cfg.api_deployment {
        let api: Api<Deployment> = Api::namespaced(client.clone(), &cfg.namespace);
        if let Some(d) = api.get_opt(name).await?
            && let Some(p) = restart_patch(
                d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()),
                &fingerprint(&desired.api),
            )
        {
            api.patch(name, &pp, &Patch::Merge(&p)).await?;
            tracing::info!(deployment = %d.name_any(), "certificates changed; rolling the pods");
        }
    }
    if let Some(name) = &cfg.handler_daemonset {
        let api: Api<DaemonSet> = Api::namespaced(client.clone(), &cfg.namespace);
        if let Some(d) = api.get_opt(name).await?
            && let Some(p) = restart_patch(
                d.spec.as_ref().and_then(|s| s.template.metadata.as_ref()),
                &fingerprint(&desired.handler),
            )
        {
            api.patch(name, &pp, &Patch::Merge(&p)).await?;
            tracing::info!(daemonset = %d.name_any(), "certificates changed; rolling the pods");
        }
    }
    Ok(())
}

/// Keeps the certificates current until the task is dropped. Errors are
/// logged and retried with backoff (1 s doubling to the resync interval).
pub async fn run(client: Client, cfg: CertConfig) {
    tracing::info!(namespace = %cfg.namespace, "certificate manager running");
    let mut failures: u32 = 0;
    loop {
        let wait = match reconcile_once(&client, &cfg).await {
            Ok(wait) => {
                failures = 0;
                wait
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let wait = Duration::from_secs(1u64 << (failures - 1).min(9)).min(cfg.resync);
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "certificate reconcile failed");
                wait
            }
        };
        tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
    }
}
