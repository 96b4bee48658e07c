//! Effects before QEMU starts: pull containerDisk and kernelBoot images, make per-VM qcow2
//! overlays, write cloud-init disks, create emptyDisks, check hostDisks, copy the EFI variable
//! store. Produces the [`Resolved`] that `convert` turns into a machine.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use kuvirt_api::quantity::parse_quantity;
use kuvirt_api::v1::{
    CloudInitConfigDriveSource, CloudInitNoCloudSource, HostDiskType as ApiHostDiskType,
    VirtualMachineInstance, VolumeSourceRef,
};
use kuvirt_images::cloudinit::{self, CloudInitData};
use kuvirt_images::disk::{self, DiskFormat, HostDiskType};
use kuvirt_images::oci::{ImageStore, PullOptions};

use crate::convert::{Resolved, ResolvedDisk};
use crate::machine::ImageFormat;

/// Where things go and how images are fetched.
#[derive(Clone, Debug)]
pub struct PrepareOptions {
    /// The per-VM directory: overlays, cloud-init disks, EFI variables.
    pub vm_dir: PathBuf,
    pub pull: PullOptions,
    /// Debian's OVMF directory, for the variable store template.
    pub ovmf_dir: PathBuf,
}

/// An image a VMI needs: its field path, reference, pull policy and pull secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageNeed {
    pub field: String,
    pub image: String,
    /// `imagePullPolicy` as written (Always, IfNotPresent, Never), if any.
    pub pull_policy: Option<String>,
    pub pull_secret: Option<String>,
}

/// Every image a VMI's disks and kernel boot come from (what a kubelet pulls before it starts
/// the launcher pod).
pub fn images(vmi: &VirtualMachineInstance) -> Vec<ImageNeed> {
    let mut out = Vec::new();
    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        if let Some(VolumeSourceRef::ContainerDisk(cd)) = vol.source() {
            out.push(ImageNeed {
                field: format!("spec.volumes[{i}].containerDisk.image"),
                image: cd.image.clone(),
                pull_policy: cd.image_pull_policy.clone(),
                pull_secret: cd.image_pull_secret.clone(),
            });
        }
    }
    if let Some(c) = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .and_then(|kb| kb.container.as_ref())
    {
        out.push(ImageNeed {
            field: "spec.domain.firmware.kernelBoot.container.image".into(),
            image: c.image.clone(),
            pull_policy: c.image_pull_policy.clone(),
            pull_secret: c.image_pull_secret.clone(),
        });
    }
    out
}

/// A volume that could not be prepared; `field` is its path in the VMI.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PrepareError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl ToString) -> PrepareError {
    PrepareError {
        field: field.into(),
        message: message.to_string(),
    }
}

/// Prepares every volume, the kernel and the EFI variable store of a defaulted, validated VMI.
/// Network backends are the caller's: they depend on where the VM runs.
pub async fn prepare(
    vmi: &VirtualMachineInstance,
    store: &ImageStore,
    opts: &PrepareOptions,
) -> Result<Resolved, PrepareError> {
    let disks_dir = opts.vm_dir.join("disks");
    std::fs::create_dir_all(&disks_dir)
        .map_err(|e| err("spec.volumes", format!("{}: {e}", disks_dir.display())))?;
    let direct_io = supports_direct_io(&disks_dir);
    let mut resolved = Resolved::default();
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let namespace = vmi
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());

    for (i, vol) in vmi.spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        // Volume names become file names: only DNS labels.
        if !is_dns_label(&vol.name) {
            return Err(err(
                format!("{field}.name"),
                format!(
                    "{:?} is not a DNS label (lower-case letters, digits and '-')",
                    vol.name
                ),
            ));
        }
        let Some(source) = vol.source() else {
            return Err(err(field, "a volume needs exactly one source"));
        };
        let mut owned = true;
        let local = |ext: &str| disks_dir.join(format!("{}.{ext}", vol.name));
        let (path, format) = match source {
            VolumeSourceRef::ContainerDisk(cd) => {
                let image = store
                    .fetch(&cd.image, &opts.pull)
                    .await
                    .map_err(|e| err(format!("{field}.containerDisk.image"), e))?;
                let base = image
                    .container_disk_path(cd.path.as_deref())
                    .map_err(|e| err(format!("{field}.containerDisk"), e))?;
                let overlay = local("qcow2");
                let _ = std::fs::remove_file(&overlay);
                disk::create_overlay(&base, &overlay)
                    .map_err(|e| err(format!("{field}.containerDisk"), e))?;
                (overlay, ImageFormat::Qcow2)
            }
            VolumeSourceRef::CloudInitNoCloud(src) => {
                let data = cloud_init_data(
                    vmi,
                    src.into(),
                    &name,
                    &namespace,
                    &format!("{field}.cloudInitNoCloud"),
                )?;
                let iso = local("iso");
                cloudinit::nocloud_iso(&data, &iso)
                    .map_err(|e| err(format!("{field}.cloudInitNoCloud"), e))?;
                (iso, ImageFormat::Raw)
            }
            VolumeSourceRef::CloudInitConfigDrive(src) => {
                let data = cloud_init_data(
                    vmi,
                    src.into(),
                    &name,
                    &namespace,
                    &format!("{field}.cloudInitConfigDrive"),
                )?;
                let iso = local("iso");
                cloudinit::configdrive_iso(&data, &iso)
                    .map_err(|e| err(format!("{field}.cloudInitConfigDrive"), e))?;
                (iso, ImageFormat::Raw)
            }
            VolumeSourceRef::EmptyDisk(e) => {
                let f = format!("{field}.emptyDisk.capacity");
                let q = e
                    .capacity
                    .as_ref()
                    .ok_or_else(|| err(&f, "capacity is required"))?;
                let bytes = parse_quantity(&q.0)
                    .and_then(|q| q.to_bytes())
                    .map_err(|e| err(&f, e))?;
                let path = local("qcow2");
                let _ = std::fs::remove_file(&path);
                disk::create_empty(&path, bytes)
                    .map_err(|e| err(format!("{field}.emptyDisk"), e))?;
                (path, ImageFormat::Qcow2)
            }
            VolumeSourceRef::HostDisk(h) => {
                let f = format!("{field}.hostDisk");
                let kind = match h.type_.as_ref() {
                    Some(ApiHostDiskType::Disk) => HostDiskType::Disk,
                    Some(ApiHostDiskType::DiskOrCreate) => HostDiskType::DiskOrCreate,
                    other => {
                        return Err(err(
                            format!("{f}.type"),
                            format!(
                                "expected Disk or DiskOrCreate, got {:?}",
                                other.map(|t| t.as_str())
                            ),
                        ));
                    }
                };
                let capacity = match &h.capacity {
                    Some(q) => Some(
                        parse_quantity(&q.0)
                            .and_then(|q| q.to_bytes())
                            .map_err(|e| err(format!("{f}.capacity"), e))?,
                    ),
                    None => None,
                };
                let path = PathBuf::from(&h.path);
                owned = !path.exists();
                let format =
                    disk::prepare_host_disk(&path, kind, capacity).map_err(|e| err(&f, e))?;
                let format = match format {
                    DiskFormat::Raw => ImageFormat::Raw,
                    DiskFormat::Qcow2 => ImageFormat::Qcow2,
                    DiskFormat::Other(o) => {
                        return Err(err(&f, format!("unsupported image format {o}")));
                    }
                };
                (path, format)
            }
            other => {
                return Err(err(
                    field,
                    format!("volume source {} is not supported yet", source_name(&other)),
                ));
            }
        };
        resolved.disks.insert(
            vol.name.clone(),
            ResolvedDisk {
                path,
                format,
                direct_io,
                owned,
            },
        );
    }

    let firmware = vmi.spec.domain.firmware.as_ref();
    if let Some(container) = firmware
        .and_then(|f| f.kernel_boot.as_ref())
        .and_then(|kb| kb.container.as_ref())
    {
        let f = "spec.domain.firmware.kernelBoot.container";
        let image = store
            .fetch(&container.image, &opts.pull)
            .await
            .map_err(|e| err(format!("{f}.image"), e))?;
        if let Some(p) = &container.kernel_path {
            resolved.kernel = Some(
                image
                    .file_path(p)
                    .map_err(|e| err(format!("{f}.kernelPath"), e))?,
            );
        }
        if let Some(p) = &container.initrd_path {
            resolved.initrd = Some(
                image
                    .file_path(p)
                    .map_err(|e| err(format!("{f}.initrdPath"), e))?,
            );
        }
    }

    if let Some(efi) = firmware
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref())
    {
        let f = "spec.domain.firmware.bootloader.efi";
        let secure = efi.secure_boot_enabled();
        let template = opts.ovmf_dir.join(if secure {
            "OVMF_VARS_4M.ms.fd"
        } else {
            "OVMF_VARS_4M.fd"
        });
        let vars = opts.vm_dir.join("efi-vars.fd");
        if efi.persistent != Some(true) || !vars.exists() {
            std::fs::copy(&template, &vars).map_err(|e| {
                err(
                    f,
                    format!("{}: {e} (is Debian's ovmf installed?)", template.display()),
                )
            })?;
        }
        resolved.efi_vars = Some(vars);
    }
    Ok(resolved)
}

fn source_name(s: &VolumeSourceRef<'_>) -> &'static str {
    match s {
        VolumeSourceRef::HostDisk(_) => "hostDisk",
        VolumeSourceRef::PersistentVolumeClaim(_) => "persistentVolumeClaim",
        VolumeSourceRef::CloudInitNoCloud(_) => "cloudInitNoCloud",
        VolumeSourceRef::CloudInitConfigDrive(_) => "cloudInitConfigDrive",
        VolumeSourceRef::Sysprep(_) => "sysprep",
        VolumeSourceRef::ContainerDisk(_) => "containerDisk",
        VolumeSourceRef::Ephemeral(_) => "ephemeral",
        VolumeSourceRef::EmptyDisk(_) => "emptyDisk",
        VolumeSourceRef::DataVolume(_) => "dataVolume",
        VolumeSourceRef::ConfigMap(_) => "configMap",
        VolumeSourceRef::Secret(_) => "secret",
        VolumeSourceRef::DownwardAPI(_) => "downwardAPI",
        VolumeSourceRef::ServiceAccount(_) => "serviceAccount",
        VolumeSourceRef::DownwardMetrics(_) => "downwardMetrics",
        VolumeSourceRef::MemoryDump(_) => "memoryDump",
    }
}

/// One of userData / userDataBase64 (secret references need the control plane's Secrets).
fn payload(
    field: &str,
    what: &str,
    plain: Option<&String>,
    b64: Option<&String>,
    secret: bool,
) -> Result<Option<Vec<u8>>, PrepareError> {
    if secret {
        return Err(err(
            format!("{field}.{what}SecretRef"),
            "secret references need the control plane (kuvirt server)",
        ));
    }
    if let Some(p) = plain {
        return Ok(Some(p.as_bytes().to_vec()));
    }
    match b64 {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .map(Some)
            .map_err(|e| err(format!("{field}.{what}Base64"), format!("not base64: {e}"))),
        None => Ok(None),
    }
}

fn base_data(vmi: &VirtualMachineInstance, name: &str, namespace: &str) -> CloudInitData {
    CloudInitData {
        // KubeVirt's instance-id is `<name>.<namespace>`.
        instance_id: format!("{name}.{namespace}"),
        hostname: vmi
            .spec
            .hostname
            .clone()
            .unwrap_or_else(|| name.to_string()),
        user_data: None,
        network_data: None,
        ssh_public_keys: Vec::new(),
    }
}

/// The user and network data fields, which NoCloud and ConfigDrive sources share.
struct Payloads<'a> {
    user: (Option<&'a String>, Option<&'a String>, bool),
    network: (Option<&'a String>, Option<&'a String>, bool),
}

impl<'a> From<&'a CloudInitNoCloudSource> for Payloads<'a> {
    fn from(s: &'a CloudInitNoCloudSource) -> Self {
        Payloads {
            user: (
                s.user_data.as_ref(),
                s.user_data_base64.as_ref(),
                s.user_data_secret_ref.is_some(),
            ),
            network: (
                s.network_data.as_ref(),
                s.network_data_base64.as_ref(),
                s.network_data_secret_ref.is_some(),
            ),
        }
    }
}

impl<'a> From<&'a CloudInitConfigDriveSource> for Payloads<'a> {
    fn from(s: &'a CloudInitConfigDriveSource) -> Self {
        Payloads {
            user: (
                s.user_data.as_ref(),
                s.user_data_base64.as_ref(),
                s.user_data_secret_ref.is_some(),
            ),
            network: (
                s.network_data.as_ref(),
                s.network_data_base64.as_ref(),
                s.network_data_secret_ref.is_some(),
            ),
        }
    }
}

fn cloud_init_data(
    vmi: &VirtualMachineInstance,
    p: Payloads<'_>,
    name: &str,
    namespace: &str,
    field: &str,
) -> Result<CloudInitData, PrepareError> {
    let mut data = base_data(vmi, name, namespace);
    data.user_data = payload(field, "userData", p.user.0, p.user.1, p.user.2)?;
    data.network_data = payload(field, "networkData", p.network.0, p.network.1, p.network.2)?;
    Ok(data)
}

/// RFC 1123 label: what KubeVirt requires of names, and what is safe as a file name.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether files in `dir` can be opened with O_DIRECT (tmpfs cannot, for one).
fn supports_direct_io(dir: &Path) -> bool {
    let probe = dir.join(".direct-io-probe");
    let ok = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}
