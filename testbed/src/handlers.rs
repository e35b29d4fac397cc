//! One identity per handler in the test bed, as on a real cluster: each
//! handler process gets
//! - its own stream serving certificate from the ironvirt CA, naming only its
//!   node (`<node>.ironvirt-handler`, [`handler_server_name`]), which
//!   ironvirt-api verifies for the VMI's node;
//! - its own kube-apiserver identity: a client certificate with CN
//!   `system:ironvirt-handler:<node>` in group `ironvirt:handlers`
//!   ([`handler_user`], [`HANDLERS_GROUP`]), and a kubeconfig for it.
//!
//! [`install_access`] gives that group what `deploy/` gives the handler
//! ServiceAccount: the same ClusterRole and kube-node-lease Role (no Secret
//! read), the same ValidatingAdmissionPolicy (a handler writes only its own
//! node's Lease), plus what a node without a kubelet needs in the bed (create
//! its Node).

use std::path::{Path, PathBuf};

use ironvirt_crds::wire::{HANDLERS_GROUP, handler_server_name, handler_user};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use crate::controlplane::kubeconfig_yaml;
use crate::error::{Error, Result, io};
use crate::layout::{ClusterInfo, Layout};
use crate::pki::{Ca, CertPair, LeafSpec, Pki, Usage, names};

/// deploy/'s handler RBAC and lease policy, installed as they are.
const DEPLOY_RBAC: &str = include_str!("../../deploy/base/handler/rbac.yaml");
const DEPLOY_LEASE_POLICY: &str = include_str!("../../deploy/base/handler/lease-policy.yaml");

/// The bed's bindings of deploy's roles to the handlers' group, and the Node
/// creation a kubelet-less node needs (`--register-node`).
const BED_BINDINGS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: ironvirt-handler:testbed
rules:
  - apiGroups: [""]
    resources: ["nodes"]
    verbs: ["create"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ironvirt-handler:testbed
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ironvirt-handler:testbed
subjects:
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: ironvirt:handlers
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: ironvirt-handler:handlers-group
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: ironvirt-handler
subjects:
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: ironvirt:handlers
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: ironvirt-handler:handlers-group
  namespace: kube-node-lease
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: ironvirt-handler
subjects:
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: ironvirt:handlers
"#;

/// Field manager of what [`install_access`] applies.
const MANAGER: &str = "ironvirt-testbed";

/// The files a handler of one node runs with.
#[derive(Debug, Clone)]
pub struct HandlerIdentity {
    pub node: String,
    /// Its kube-apiserver identity (CN `system:ironvirt-handler:<node>`).
    pub kubeconfig: PathBuf,
    /// Its stream serving certificate and key (`<node>.ironvirt-handler`).
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// The CA that verifies ironvirt-api's client certificate.
    pub client_ca: PathBuf,
}

/// The directory of a node's handler identity.
pub fn identity_dir(layout: &Layout, node: &str) -> PathBuf {
    layout.root().join("handlers").join(node)
}

/// The serving certificate of the handler of `node`: its node's name only,
/// no shared name and no address.
pub fn serving_spec(node: &str) -> LeafSpec {
    let name = handler_server_name(node);
    LeafSpec {
        common_name: name.clone(),
        organizations: Vec::new(),
        dns_names: vec![name],
        ips: Vec::new(),
        usage: Usage::Server,
    }
}

/// Mints (again) the identity of the handler of `node` into
/// `<state>/handlers/<node>/`.
pub fn ensure_identity(layout: &Layout, info: &ClusterInfo, node: &str) -> Result<HandlerIdentity> {
    let pki = Pki::new(&info.pki_dir);
    let dir = identity_dir(layout, node);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let ca = Ca::from_pair(CertPair::read(pki.dir(), names::IRONVIRT_CA)?)?;
    let (tls_cert, tls_key) = ca.issue(&serving_spec(node))?.write(&dir, "serving")?;
    let user = handler_user(node);
    let (crt, key) = pki
        .mint_user(&user, &[HANDLERS_GROUP])?
        .write(&dir, "client")?;
    let kubeconfig = dir.join("kubeconfig");
    let yaml = kubeconfig_yaml(&info.api_url, &pki.crt(names::CA), &crt, &key, &user);
    std::fs::write(&kubeconfig, yaml).map_err(io(&kubeconfig))?;
    Ok(HandlerIdentity {
        node: node.to_owned(),
        kubeconfig,
        tls_cert,
        tls_key,
        client_ca: pki.crt(names::IRONVIRT_CA),
    })
}

/// The objects [`install_access`] applies: deploy's handler ClusterRole and
/// Role (not its ServiceAccount and bindings), its lease policy and binding,
/// and the bed's bindings to group `ironvirt:handlers`.
pub fn access_objects() -> Result<Vec<DynamicObject>> {
    let mut out = Vec::new();
    for (file, yaml) in [
        ("deploy/base/handler/rbac.yaml", DEPLOY_RBAC),
        ("deploy/base/handler/lease-policy.yaml", DEPLOY_LEASE_POLICY),
        ("testbed handler bindings", BED_BINDINGS),
    ] {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| Error::Manifest {
                    file: file.to_owned(),
                    reason: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject =
                serde_json::from_value(value).map_err(|e| Error::Manifest {
                    file: file.to_owned(),
                    reason: e.to_string(),
                })?;
            let kind = obj
                .types
                .as_ref()
                .map(|t| t.kind.as_str())
                .unwrap_or_default();
            let from_deploy = file.starts_with("deploy/");
            // deploy binds its ServiceAccount; the bed binds the group instead.
            if from_deploy
                && matches!(
                    kind,
                    "ServiceAccount" | "ClusterRoleBinding" | "RoleBinding"
                )
            {
                continue;
            }
            out.push(obj);
        }
    }
    Ok(out)
}

fn api_resource(obj: &DynamicObject) -> Option<ApiResource> {
    let types = obj.types.as_ref()?;
    let (group, version) = types
        .api_version
        .split_once('/')
        .unwrap_or(("", types.api_version.as_str()));
    let plural = match types.kind.as_str() {
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "ValidatingAdmissionPolicy" => "validatingadmissionpolicies",
        "ValidatingAdmissionPolicyBinding" => "validatingadmissionpolicybindings",
        _ => return None,
    };
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, &types.kind),
        plural,
    ))
}

/// Applies [`access_objects`] (server-side apply; idempotent).
pub async fn install_access(client: &Client) -> Result<()> {
    for obj in access_objects()? {
        let Some(ar) = api_resource(&obj) else {
            continue;
        };
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> = match obj.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await?;
    }
    Ok(())
}

/// Writes the identity's paths as shell assignments (for hack/run.sh).
pub fn shell_vars(id: &HandlerIdentity) -> String {
    let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
    format!(
        "HANDLER_KUBECONFIG={}\nHANDLER_TLS_CERT={}\nHANDLER_TLS_KEY={}\nHANDLER_CLIENT_CA={}\n",
        q(&id.kubeconfig),
        q(&id.tls_cert),
        q(&id.tls_key),
        q(&id.client_ca)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_is_deploys_roles_and_policy_bound_to_the_group() {
        let objs = access_objects().unwrap();
        let kinds: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o.types.as_ref().unwrap().kind,
                    o.metadata.name.as_deref().unwrap()
                )
            })
            .collect();
        for want in [
            "ClusterRole/ironvirt-handler",
            "Role/ironvirt-handler",
            "ValidatingAdmissionPolicy/ironvirt-handler-own-lease",
            "ValidatingAdmissionPolicyBinding/ironvirt-handler-own-lease",
            "ClusterRoleBinding/ironvirt-handler:handlers-group",
            "RoleBinding/ironvirt-handler:handlers-group",
        ] {
            assert!(kinds.iter().any(|k| k == want), "{want} in {kinds:?}");
        }
        assert!(!kinds.iter().any(|k| k.starts_with("ServiceAccount/")));
        assert!(objs.iter().all(|o| api_resource(o).is_some()));
        // No Secret read for handlers, anywhere.
        let json = serde_json::to_string(&objs).unwrap();
        assert!(!json.contains("\"secrets\""), "{json}");
    }

    #[test]
    fn the_serving_certificate_names_only_its_node() {
        let spec = serving_spec("node-a");
        assert_eq!(spec.dns_names, ["node-a.ironvirt-handler"]);
        assert!(spec.ips.is_empty());
        let ca = Ca::generate("t").unwrap();
        assert!(ca.issue(&spec).is_ok());
    }
}
