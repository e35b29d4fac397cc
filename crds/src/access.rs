//! `spec.accessCredentials`: SSH public keys from a Secret, put into the
//! guest by cloud-init (`propagationMethod.noCloud` or `configDrive`).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schema;

/// One access credential: SSH public keys (KubeVirt also has userPassword,
/// which needs a guest agent).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredential {
    /// SSH public keys from a Secret (every value of it: one or more keys,
    /// a line each).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<SshPublicKeyAccessCredential>,
    /// Not supported: it is propagated by the QEMU guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::user_password")]
    pub user_password: Option<Value>,
}

/// SSH public keys and how they reach the guest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SshPublicKeyAccessCredential {
    /// Where the keys are.
    pub source: SshPublicKeySource,
    /// How the keys reach the guest.
    pub propagation_method: SshPublicKeyPropagation,
}

/// The Secret holding the keys.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SshPublicKeySource {
    /// A Secret in the VMI's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
}

/// A Secret by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    /// The Secret's name, in the VMI's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// How SSH keys reach the guest: noCloud and configDrive are built;
/// qemuGuestAgent is refused with the reason.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SshPublicKeyPropagation {
    /// The keys go into the user-data of the VMI's cloudInitNoCloud volume
    /// (`ssh_authorized_keys` of its `#cloud-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_cloud: Option<NoCloudPropagation>,
    /// The keys go into the `public_keys` of the VMI's cloudInitConfigDrive
    /// volume's meta_data.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<ConfigDrivePropagation>,
    /// Not supported: it needs the QEMU guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::guest_agent_propagation")]
    pub qemu_guest_agent: Option<Value>,
}

/// `propagationMethod.noCloud: {}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NoCloudPropagation {}

/// `propagationMethod.configDrive: {}`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigDrivePropagation {}

/// The Secrets the access credentials of `creds` name.
pub fn secret_names(creds: Option<&[AccessCredential]>) -> Vec<&str> {
    creds
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.ssh_public_key.as_ref())
        .filter_map(|k| k.source.secret.as_ref())
        .map(|s| s.secret_name.as_str())
        .filter(|n| !n.is_empty())
        .collect()
}
