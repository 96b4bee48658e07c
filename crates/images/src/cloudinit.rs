//! Cloud-init seed disks as KubeVirt makes them: NoCloud (`cidata`) and ConfigDrive (`config-2`)
//! ISO images, from data the launcher has already resolved (no API types here).
//!
//! File contents follow KubeVirt's `pkg/cloud-init`: NoCloud `meta-data` is JSON with
//! `instance-id`, `local-hostname` and `public-keys` (`{"0": KEY, ...}`); ConfigDrive
//! `openstack/latest/meta_data.json` has `instance_id`, `uuid`, `hostname`, `name` and
//! `public_keys`. User data is always written (empty if none); network data only when given.

pub mod iso9660;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Volume label of a NoCloud seed disk.
pub const NOCLOUD_LABEL: &str = "cidata";
/// Volume label of a ConfigDrive seed disk.
pub const CONFIGDRIVE_LABEL: &str = "config-2";

/// What a guest learns from its cloud-init disk, already decoded (no base64).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloudInitData {
    /// NoCloud `instance-id`; ConfigDrive `instance_id` and `uuid`. Cloud-init re-runs its
    /// per-instance modules when it changes.
    pub instance_id: String,
    /// The guest's hostname (`local-hostname` / `hostname`); left out when empty.
    pub hostname: String,
    /// User data (`#cloud-config`, a script, ...); an empty file when `None`.
    pub user_data: Option<Vec<u8>>,
    /// Network configuration (NoCloud `network-config`, ConfigDrive `network_data.json`).
    pub network_data: Option<Vec<u8>>,
    /// SSH public keys, published as `{"0": KEY0, "1": KEY1, ...}`.
    pub ssh_public_keys: Vec<String>,
}

/// Why a seed disk could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// The ISO image could not be laid out.
    #[error("cloud-init iso: {0}")]
    Iso(#[from] iso9660::IsoError),
    /// Writing the image failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn public_keys(keys: &[String]) -> Option<Value> {
    if keys.is_empty() {
        return None;
    }
    let map: Map<String, Value> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i.to_string(), Value::String(k.trim().to_string())))
        .collect();
    Some(Value::Object(map))
}

/// NoCloud `meta-data` (JSON, which is also YAML).
pub fn nocloud_meta_data(data: &CloudInitData) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("instance-id".into(), data.instance_id.clone().into());
    if !data.hostname.is_empty() {
        m.insert("local-hostname".into(), data.hostname.clone().into());
    }
    if let Some(keys) = public_keys(&data.ssh_public_keys) {
        m.insert("public-keys".into(), keys);
    }
    Value::Object(m).to_string().into_bytes()
}

/// ConfigDrive `openstack/latest/meta_data.json`.
pub fn configdrive_meta_data(data: &CloudInitData) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("instance_id".into(), data.instance_id.clone().into());
    m.insert("uuid".into(), data.instance_id.clone().into());
    if !data.hostname.is_empty() {
        m.insert("hostname".into(), data.hostname.clone().into());
        m.insert("name".into(), data.hostname.clone().into());
    }
    if let Some(keys) = public_keys(&data.ssh_public_keys) {
        m.insert("public_keys".into(), keys);
    }
    Value::Object(m).to_string().into_bytes()
}

/// The files of a NoCloud disk: `meta-data`, `user-data`, and `network-config` if any.
pub fn nocloud_files(data: &CloudInitData) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("meta-data".to_string(), nocloud_meta_data(data)),
        (
            "user-data".to_string(),
            data.user_data.clone().unwrap_or_default(),
        ),
    ];
    if let Some(net) = data.network_data.as_ref().filter(|n| !n.is_empty()) {
        files.push(("network-config".to_string(), net.clone()));
    }
    files
}

/// The files of a ConfigDrive disk under `openstack/latest/`.
pub fn configdrive_files(data: &CloudInitData) -> Vec<(String, Vec<u8>)> {
    let dir = "openstack/latest";
    let mut files = vec![
        (format!("{dir}/meta_data.json"), configdrive_meta_data(data)),
        (
            format!("{dir}/user_data"),
            data.user_data.clone().unwrap_or_default(),
        ),
    ];
    if let Some(net) = data.network_data.as_ref().filter(|n| !n.is_empty()) {
        files.push((format!("{dir}/network_data.json"), net.clone()));
    }
    files
}

/// Writes a NoCloud ISO (label `cidata`) to `out`.
pub fn nocloud_iso(data: &CloudInitData, out: &Path) -> Result<(), CloudInitError> {
    write_iso(NOCLOUD_LABEL, &nocloud_files(data), out)
}

/// Writes a ConfigDrive ISO (label `config-2`) to `out`.
pub fn configdrive_iso(data: &CloudInitData, out: &Path) -> Result<(), CloudInitError> {
    write_iso(CONFIGDRIVE_LABEL, &configdrive_files(data), out)
}

/// Writes the image next to `out` and renames it into place, so readers never see half a disk.
fn write_iso(label: &str, files: &[(String, Vec<u8>)], out: &Path) -> Result<(), CloudInitError> {
    let image = iso9660::build(label, files)?;
    let mut staging = out.as_os_str().to_owned();
    staging.push(".staging");
    let staging = PathBuf::from(staging);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CloudInitError::Io { path, source }
    };
    std::fs::write(&staging, image).map_err(io(&staging))?;
    std::fs::rename(&staging, out).map_err(io(out))
}
