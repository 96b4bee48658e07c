//! `spec.volumes[]`: where a disk's data comes from.

use k8s_openapi::api::core::v1::{DownwardAPIVolumeFile, LocalObjectReference};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Extra;

/// `spec.volumes[]`: a name plus exactly one source (Go's inlined `VolumeSource`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitNoCloudSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_config_drive: Option<CloudInitConfigDriveSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysprep: Option<SysprepSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<EphemeralVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    #[serde(
        default,
        rename = "downwardAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub downward_api: Option<DownwardAPIVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downward_metrics: Option<DownwardMetricsVolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_dump: Option<PersistentVolumeClaimVolumeSource>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The source of a [`Volume`], for code that matches on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VolumeSourceRef<'a> {
    HostDisk(&'a HostDisk),
    PersistentVolumeClaim(&'a PersistentVolumeClaimVolumeSource),
    CloudInitNoCloud(&'a CloudInitNoCloudSource),
    CloudInitConfigDrive(&'a CloudInitConfigDriveSource),
    Sysprep(&'a SysprepSource),
    ContainerDisk(&'a ContainerDiskSource),
    Ephemeral(&'a EphemeralVolumeSource),
    EmptyDisk(&'a EmptyDiskSource),
    DataVolume(&'a DataVolumeSource),
    ConfigMap(&'a ConfigMapVolumeSource),
    Secret(&'a SecretVolumeSource),
    DownwardAPI(&'a DownwardAPIVolumeSource),
    ServiceAccount(&'a ServiceAccountVolumeSource),
    DownwardMetrics(&'a DownwardMetricsVolumeSource),
    MemoryDump(&'a PersistentVolumeClaimVolumeSource),
}

/// Sources KubeVirt has that this crate keeps only as unknown JSON in `extra`.
pub const UNMODELLED_VOLUME_SOURCES: &[&str] = &["containerPath"];

impl Volume {
    /// Every source set on this volume, in declaration order (valid volumes have one).
    pub fn sources(&self) -> Vec<VolumeSourceRef<'_>> {
        use VolumeSourceRef as S;
        let mut out = Vec::new();
        macro_rules! push {
            ($field:ident, $variant:ident) => {
                if let Some(v) = &self.$field {
                    out.push(S::$variant(v));
                }
            };
        }
        push!(host_disk, HostDisk);
        push!(persistent_volume_claim, PersistentVolumeClaim);
        push!(cloud_init_no_cloud, CloudInitNoCloud);
        push!(cloud_init_config_drive, CloudInitConfigDrive);
        push!(sysprep, Sysprep);
        push!(container_disk, ContainerDisk);
        push!(ephemeral, Ephemeral);
        push!(empty_disk, EmptyDisk);
        push!(data_volume, DataVolume);
        push!(config_map, ConfigMap);
        push!(secret, Secret);
        push!(downward_api, DownwardAPI);
        push!(service_account, ServiceAccount);
        push!(downward_metrics, DownwardMetrics);
        push!(memory_dump, MemoryDump);
        out
    }

    /// The source, if exactly one is set.
    pub fn source(&self) -> Option<VolumeSourceRef<'_>> {
        match self.sources().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// `volumes[].containerDisk`: a disk image shipped in an OCI image (under `/disk/`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDiskSource {
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// Path of the disk inside the image; unset means the single file under `/disk/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].cloudInitNoCloud`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitNoCloudSource {
    /// JSON `secretRef` (KubeVirt's name for the user-data secret).
    #[serde(default, rename = "secretRef", skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].cloudInitConfigDrive`: same fields as NoCloud, OpenStack config-drive layout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitConfigDriveSource {
    /// JSON `secretRef`.
    #[serde(default, rename = "secretRef", skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].sysprep`: one of `secret`, `configMap`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SysprepSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<LocalObjectReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<LocalObjectReference>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].emptyDisk`: a blank sparse disk that lives as long as the VMI.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// `hostDisk.type`.
    HostDiskType {
        /// The image must exist.
        Disk = "Disk",
        /// Created with `capacity` when missing.
        DiskOrCreate = "DiskOrCreate",
    }
}

/// `volumes[].hostDisk`: a disk image file on the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    /// Absolute path of the image file on the host.
    #[serde(default)]
    pub path: String,
    /// Required.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<HostDiskType>,
    /// Size to create with; only with `DiskOrCreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].persistentVolumeClaim` (also `memoryDump`): a PVC by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimVolumeSource {
    #[serde(default)]
    pub claim_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].ephemeral`: a PVC used read-only behind a throw-away overlay.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PersistentVolumeClaimVolumeSource>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].dataVolume`: a CDI DataVolume by name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].configMap`: the ConfigMap's files on an ISO disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    /// ConfigMap name (Go's inlined `LocalObjectReference`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].secret`: the Secret's files on an ISO disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].downwardAPI`: pod fields as files on an ISO disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownwardAPIVolumeSource {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<DownwardAPIVolumeFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].serviceAccount`: the service account token on an ISO disk.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountVolumeSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `volumes[].downwardMetrics`: empty object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct DownwardMetricsVolumeSource {
    #[serde(flatten)]
    pub extra: Extra,
}
