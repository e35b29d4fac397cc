//! `GET …/virtualmachineinstances/{name}/secrets/{secret}`: the Secrets a VMI
//! references (cloud-init `secretRef` / `networkDataSecretRef`), for the
//! handler of the VMI's node only.
//!
//! Handlers have no Secret read of their own (one handler could otherwise read
//! every Secret of the cluster, the CA key included). They ask here, through
//! kube-apiserver, and ironvirt-api answers only when
//! 1. the caller is a handler identity that names a node
//!    ([`ironvirt_crds::wire::handler_node`]: the handler ServiceAccount's
//!    node-name claim, or the test bed's per-node user) and RBAC lets it `get`
//!    this subresource (a SubjectAccessReview, as for every subresource);
//! 2. the VMI is not in ironvirt's own namespace, and is placed on that node
//!    (`status.nodeName`);
//! 3. the VMI references that Secret, which is not a ServiceAccount token;
//!
//! then reads the Secret with its own client and returns it (name, namespace,
//! type and data only).

use std::collections::BTreeSet;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use ironvirt_crds::VirtualMachineInstance;
use ironvirt_crds::wire::handler_node;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta};

use super::authz::{attrs, authorize};
use super::{ApiState, kube_error, not_found, status};
use crate::auth::Peer;

/// ironvirt's own namespace: its CA key and client keys live there, and no
/// handler gets a Secret from it, whatever a VMI says.
pub const IRONVIRT_NAMESPACE: &str = "ironvirt-system";

/// The Secret type no handler gets, even when a VMI names it.
const SERVICE_ACCOUNT_TOKEN: &str = "kubernetes.io/service-account-token";

/// The Secrets `vmi` references (cloud-init's `secretRef` and
/// `networkDataSecretRef`, containerDisk's `imagePullSecret`, the SSH keys
/// of `accessCredentials`), sorted and without duplicates.
pub fn referenced_secrets(vmi: &VirtualMachineInstance) -> BTreeSet<&str> {
    let volumes = vmi.spec.volumes.iter().flatten();
    let cloud_init = volumes
        .clone()
        .filter_map(ironvirt_crds::vmi::Volume::cloud_init)
        .flat_map(|c| [c.secret_ref.as_ref(), c.network_data_secret_ref.as_ref()])
        .flatten()
        .map(|r| r.name.as_str());
    let pull = volumes
        .filter_map(|v| v.container_disk.as_ref())
        .filter_map(|c| c.image_pull_secret.as_deref());
    let access = ironvirt_crds::access::secret_names(vmi.spec.access_credentials.as_deref());
    cloud_init
        .chain(pull)
        .chain(access)
        .filter(|n| !n.is_empty())
        .collect()
}

fn forbidden(message: String) -> Response {
    tracing::info!(%message, "secret refused");
    status(StatusCode::FORBIDDEN, "Forbidden", message)
}

/// Whether `node`'s handler may have Secret `secret` of `vmi` (pure: the
/// checks that need no Secret).
pub fn may_read(
    node: &str,
    vmi: &VirtualMachineInstance,
    ns: &str,
    secret: &str,
) -> Result<(), String> {
    if ns == IRONVIRT_NAMESPACE {
        return Err(format!(
            "no handler reads Secrets of namespace {IRONVIRT_NAMESPACE}"
        ));
    }
    let on = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
    if on != Some(node) {
        return Err(format!(
            "the handler of node {node} may read Secrets only of VMIs on its node; this VMI is on {}",
            on.unwrap_or("no node")
        ));
    }
    if !referenced_secrets(vmi).contains(secret) {
        return Err(format!("the VMI does not reference Secret {secret:?}"));
    }
    Ok(())
}

/// `GET …/virtualmachineinstances/{name}/secrets/{secret}`.
pub(super) async fn vmi_secret(
    State(state): State<ApiState>,
    Path((ns, name, secret)): Path<(String, String, String)>,
    headers: HeaderMap,
    peer: Option<Extension<Peer>>,
) -> Result<Response, Response> {
    let peer = peer.map(|Extension(p)| p);
    let user = authorize(
        &state,
        peer.as_ref(),
        &headers,
        attrs("get", "virtualmachineinstances", "secrets", &ns, &name),
    )
    .await?;
    let Some(node) = handler_node(&user.name, &user.groups, &user.extra) else {
        return Err(forbidden(format!(
            "User {:?} is not a node's handler: only the handler of a VMI's node reads its Secrets here",
            user.name
        )));
    };
    if ns == IRONVIRT_NAMESPACE {
        return Err(forbidden(format!(
            "no handler reads Secrets of namespace {IRONVIRT_NAMESPACE}"
        )));
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), &ns);
    let vmi = vmis
        .get_opt(&name)
        .await
        .map_err(|e| kube_error(&e))?
        .ok_or_else(|| not_found(&format!("virtualmachineinstance \"{name}\"")))?;
    may_read(node, &vmi, &ns, &secret).map_err(forbidden)?;
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &ns);
    let found = secrets
        .get_opt(&secret)
        .await
        .map_err(|e| kube_error(&e))?
        .ok_or_else(|| not_found(&format!("secrets \"{secret}\"")))?;
    if found.type_.as_deref() == Some(SERVICE_ACCOUNT_TOKEN) {
        return Err(forbidden(format!(
            "Secret {secret:?} is a ServiceAccount token; no handler gets one"
        )));
    }
    tracing::info!(vmi.namespace = %ns, vmi.name = %name, secret = %secret, node = %node, "secret handed to the node's handler");
    let answer = Secret {
        metadata: ObjectMeta {
            name: found.metadata.name,
            namespace: found.metadata.namespace,
            ..Default::default()
        },
        type_: found.type_,
        data: found.data,
        ..Default::default()
    };
    Ok(axum::Json(answer).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(node: Option<&str>) -> VirtualMachineInstance {
        let mut v: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"domain": {"devices": {}}, "volumes": [
                {"name": "ci", "cloudInitNoCloud": {"secretRef": {"name": "userdata"},
                    "networkDataSecretRef": {"name": "netdata"}}},
                {"name": "root", "containerDisk": {"image": "quay.io/a/b", "imagePullSecret": "pull"}},
            ]},
        }))
        .unwrap();
        if let Some(n) = node {
            v.status = Some(serde_json::from_value(serde_json::json!({"nodeName": n})).unwrap());
        }
        v
    }

    #[test]
    fn only_the_vmis_node_gets_only_referenced_secrets() {
        let v = vmi(Some("node-a"));
        assert_eq!(
            referenced_secrets(&v).into_iter().collect::<Vec<_>>(),
            ["netdata", "pull", "userdata"]
        );
        assert!(may_read("node-a", &v, "ns", "pull").is_ok());
        assert!(may_read("node-a", &v, "ns", "userdata").is_ok());
        assert!(may_read("node-a", &v, "ns", "netdata").is_ok());
        let e = may_read("node-b", &v, "ns", "userdata").unwrap_err();
        assert!(e.contains("node-b") && e.contains("on node-a"), "{e}");
        let e = may_read("node-a", &v, "ns", "other").unwrap_err();
        assert!(e.contains("does not reference"), "{e}");
        let e = may_read("node-a", &v, IRONVIRT_NAMESPACE, "userdata").unwrap_err();
        assert!(e.contains(IRONVIRT_NAMESPACE), "{e}");
        assert!(may_read("node-a", &vmi(None), "ns", "userdata").is_err());
    }
}
