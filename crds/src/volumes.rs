//! The VMI's volumes: the sources behind its disks.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schema;

/// A volume backing a disk. Set exactly one source: containerDisk,
/// cloudInitNoCloud, cloudInitConfigDrive, emptyDisk or hostDisk.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.containerDisk) ? 1 : 0) + (has(self.cloudInitNoCloud) ? 1 : 0) + (has(self.emptyDisk) ? 1 : 0) + (has(self.hostDisk) ? 1 : 0) + (has(self.persistentVolumeClaim) ? 1 : 0) + (has(self.dataVolume) ? 1 : 0) + (has(self.ephemeral) ? 1 : 0) + (has(self.configMap) ? 1 : 0) + (has(self.secret) ? 1 : 0) + (has(self.serviceAccount) ? 1 : 0) + (has(self.cloudInitConfigDrive) ? 1 : 0) + (has(self.downwardAPI) ? 1 : 0) + (has(self.sysprep) ? 1 : 0) + (has(self.downwardMetrics) ? 1 : 0) + (has(self.memoryDump) ? 1 : 0) == 1").message("a volume sets exactly one source: containerDisk, cloudInitNoCloud, cloudInitConfigDrive, emptyDisk or hostDisk"))]
pub struct Volume {
    /// The volume's name; the disk with the same name uses it.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// A disk image shipped in a container image; each VMI gets a copy-on-write overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    /// A NoCloud cloud-init data source (a CIDATA disk with user-data, meta-data
    /// and network-config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloudSource>,
    /// A blank qcow2 disk created with the VMI and removed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    /// A disk image at a path on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::pvc_volume")]
    pub persistent_volume_claim: Option<Value>,
    /// Not supported by ironvirt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::data_volume")]
    pub data_volume: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::ephemeral_volume")]
    pub ephemeral: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::config_map_volume")]
    pub config_map: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::secret_volume")]
    pub secret: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::service_account_volume")]
    pub service_account: Option<Value>,
    /// An OpenStack config drive for cloud-init (an ISO 9660 disk labelled
    /// config-2 with openstack/latest/user_data, meta_data.json and
    /// network_data.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_config_drive: Option<CloudInitConfigDriveSource>,
    /// Not supported by ironvirt yet.
    #[serde(
        rename = "downwardAPI",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "schema::downward_api_volume")]
    pub downward_api: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::sysprep_volume")]
    pub sysprep: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::downward_metrics")]
    pub downward_metrics: Option<Value>,
    /// Not supported by ironvirt yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "schema::memory_dump_volume")]
    pub memory_dump: Option<Value>,
}

impl Volume {
    /// The volume's cloud-init source, NoCloud or config drive (they have
    /// the same fields).
    pub fn cloud_init(&self) -> Option<&CloudInitNoCloudSource> {
        self.cloud_init_no_cloud
            .as_ref()
            .or(self.cloud_init_config_drive.as_ref())
    }
}

/// A disk image shipped in a container image.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDiskSource {
    /// The container image, for example quay.io/kubevirt/cirros-container-disk-demo.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// The name of a Secret with registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// The disk's path inside the image; defaults to the first file in /disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// When to pull an image: Always, IfNotPresent or Never.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// NoCloud cloud-init data. Give user-data inline (userData or userDataBase64)
/// or from a Secret (secretRef); network-config likewise.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.userData) ? 1 : 0) + (has(self.userDataBase64) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) <= 1").message("set at most one of userData, userDataBase64 and secretRef"))]
#[x_kube(validation = Rule::new("!(has(self.networkData) && has(self.networkDataBase64))").message("set at most one of networkData and networkDataBase64"))]
pub struct CloudInitNoCloudSource {
    /// Cloud-init user-data, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Cloud-init user-data, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// A Secret in the VMI's namespace whose key `userdata` (or `userData`) holds the user-data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Cloud-init network-config, inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    /// Cloud-init network-config, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    /// A Secret whose key `networkdata` (or `networkData`) holds the network-config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
}

/// Config drive cloud-init data: the same fields as NoCloud's. user-data
/// becomes openstack/latest/user_data, network data network_data.json.
pub type CloudInitConfigDriveSource = CloudInitNoCloudSource;

/// A reference to an object in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalObjectReference {
    /// The object's name.
    pub name: String,
}

/// A blank disk.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// The disk's size, for example 2Gi.
    pub capacity: Quantity,
}

/// A disk image on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'DiskOrCreate' || has(self.capacity)").message("hostDisk of type DiskOrCreate needs a capacity"))]
pub struct HostDisk {
    /// The image's absolute path on the node.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// Disk: the image must exist. DiskOrCreate: create a raw image of `capacity` when missing.
    #[serde(rename = "type")]
    pub disk_type: HostDiskType,
    /// The size of an image DiskOrCreate creates, for example 1Gi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// Whether several VMIs may use the image at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// Disk (the image must exist) or DiskOrCreate (create it when missing).
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum HostDiskType {
    #[default]
    Disk,
    DiskOrCreate,
}
