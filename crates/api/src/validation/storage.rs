//! Checks on disks, volumes, boot order and access credentials.

use std::collections::{HashMap, HashSet};

use base64::Engine;

use super::domain::{check_absolute_path, is_dns1123_label, quantity};
use super::{FieldErrorKind::*, FieldErrors, FieldPath};
use crate::v1::{
    DiskBus, DriverCache, DriverIO, HostDiskType, VirtualMachineInstanceSpec, Volume,
    VolumeSourceRef,
};

/// KubeVirt's limit on inline cloud-init user data and network data (bytes, after base64).
pub const CLOUD_INIT_MAX_LEN: usize = 2048;
/// KubeVirt's limit on a disk serial.
const MAX_SERIAL_LEN: usize = 256;

pub(super) fn validate(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    validate_disks(path, spec, errs);
    validate_volumes(path, spec, errs);
    validate_boot_order(path, spec, errs);
    validate_access_credentials(path, spec, errs);
}

fn validate_disks(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let disks_path = path.child("domain").child("devices").child("disks");
    let volumes: HashMap<&str, &Volume> =
        spec.volumes.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, disk) in spec.domain.devices.disks.iter().enumerate() {
        let p = disks_path.index(i);
        if disk.name.is_empty() {
            errs.push(&p.child("name"), Required, "a disk needs a name");
        } else {
            if !is_dns1123_label(&disk.name) {
                errs.push(
                    &p.child("name"),
                    Invalid,
                    format!("{:?} is not a valid DNS-1123 label (lower-case alphanumerics and '-', at most 63)", disk.name),
                );
            }
            if let Some(first) = seen.get(disk.name.as_str()) {
                errs.push(
                    &p.child("name"),
                    Duplicate,
                    format!(
                        "disk name {:?} is already used by {}",
                        disk.name,
                        disks_path.index(*first)
                    ),
                );
            } else {
                seen.insert(&disk.name, i);
            }
        }

        let targets = [
            disk.disk.is_some(),
            disk.cdrom.is_some(),
            disk.lun.is_some(),
        ];
        if targets.iter().filter(|t| **t).count() > 1 {
            errs.push(&p, Invalid, "only one of disk, cdrom, lun may be set");
        }

        let volume = volumes.get(disk.name.as_str());
        if !disk.name.is_empty() && volume.is_none() {
            errs.push(
                &p.child("name"),
                NotFound,
                format!("volume {:?} not found", disk.name),
            );
        }
        if disk.lun.is_some()
            && let Some(v) = volume
            && v.persistent_volume_claim.is_none()
            && v.data_volume.is_none()
        {
            errs.push(
                &p.child("lun"),
                Invalid,
                "a lun can only be backed by a persistentVolumeClaim or dataVolume volume",
            );
        }

        validate_bus(&p, disk, errs);

        if let Some(pci) = disk.disk.as_ref().and_then(|d| d.pci_address.as_deref()) {
            if disk.disk.as_ref().and_then(|d| d.bus.as_ref()) != Some(&DiskBus::Virtio) {
                errs.push(
                    &p.child("disk").child("pciAddress"),
                    Invalid,
                    "a PCI address can only be set with bus virtio",
                );
            }
            if !is_pci_address(pci) {
                errs.push(
                    &p.child("disk").child("pciAddress"),
                    Invalid,
                    format!("malformed PCI address {pci:?}, want dddd:bb:dd.f"),
                );
            }
        }
        if let Some(serial) = &disk.serial {
            if serial.chars().count() > MAX_SERIAL_LEN {
                errs.push(
                    &p.child("serial"),
                    TooLong,
                    format!("must be at most {MAX_SERIAL_LEN} characters"),
                );
            }
            if serial.is_empty()
                || !serial
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
            {
                errs.push(
                    &p.child("serial"),
                    Invalid,
                    "must be made up of the characters [A-Za-z0-9_.+-]",
                );
            }
        }
        if let Some(DriverCache::Other(c)) = &disk.cache {
            errs.push(
                &p.child("cache"),
                NotSupported,
                format!(
                    "unsupported cache mode {c:?}, must be one of: {}",
                    DriverCache::KNOWN.join(", ")
                ),
            );
        }
        if let Some(DriverIO::Other(io)) = &disk.io {
            errs.push(
                &p.child("io"),
                NotSupported,
                format!(
                    "unsupported io mode {io:?}, must be one of: {}",
                    DriverIO::KNOWN.join(", ")
                ),
            );
        }
        if let Some(policy) = &disk.error_policy
            && !["stop", "ignore", "report", "enospace"].contains(&policy.as_str())
        {
            errs.push(
                &p.child("errorPolicy"),
                NotSupported,
                format!("unsupported error policy {policy:?}, must be one of: stop, ignore, report, enospace"),
            );
        }
    }
}

fn validate_bus(p: &FieldPath, disk: &crate::v1::Disk, errs: &mut FieldErrors) {
    let (kind, bus) = if let Some(d) = &disk.disk {
        ("disk", d.bus.as_ref())
    } else if let Some(c) = &disk.cdrom {
        ("cdrom", c.bus.as_ref())
    } else if let Some(l) = &disk.lun {
        ("lun", l.bus.as_ref())
    } else {
        return;
    };
    let bus_path = p.child(kind).child("bus");
    match bus {
        None => {}
        Some(DiskBus::Other(b)) => errs.push(
            &bus_path,
            NotSupported,
            format!(
                "unsupported disk bus {b:?}, must be one of: {}",
                DiskBus::KNOWN.join(", ")
            ),
        ),
        Some(DiskBus::Virtio) if kind == "cdrom" => {
            errs.push(&bus_path, Invalid, "bus virtio is invalid for a cdrom");
        }
        Some(DiskBus::Sata) if disk.disk.as_ref().is_some_and(|d| d.readonly == Some(true)) => {
            errs.push(
                &bus_path,
                Invalid,
                "sata hard disks do not support read-only",
            );
        }
        Some(_) => {}
    }
    if disk.dedicated_io_thread == Some(true) && bus.is_some_and(|b| *b != DiskBus::Virtio) {
        errs.push(
            &p.child("dedicatedIOThread"),
            NotSupported,
            "a dedicated IO thread needs bus virtio",
        );
    }
}

fn validate_volumes(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let vols_path = path.child("volumes");
    let devices = &spec.domain.devices;
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut service_accounts = 0;
    for (i, volume) in spec.volumes.iter().enumerate() {
        let p = vols_path.index(i);
        if volume.name.is_empty() {
            errs.push(&p.child("name"), Required, "a volume needs a name");
        } else if let Some(first) = seen.get(volume.name.as_str()) {
            errs.push(
                &p.child("name"),
                Duplicate,
                format!(
                    "volume name {:?} is already used by {}",
                    volume.name,
                    vols_path.index(*first)
                ),
            );
        } else {
            seen.insert(&volume.name, i);
        }
        let referenced = devices.disks.iter().any(|d| d.name == volume.name)
            || devices.filesystems.iter().any(|f| f.name == volume.name);
        if !volume.name.is_empty() && !referenced && volume.memory_dump.is_none() {
            errs.push(
                &p.child("name"),
                NotFound,
                format!("no disk or filesystem refers to volume {:?}", volume.name),
            );
        }

        let unmodelled = crate::v1::UNMODELLED_VOLUME_SOURCES
            .iter()
            .filter(|k| volume.extra.contains_key(**k))
            .count();
        let count = volume.sources().len() + unmodelled;
        if count != 1 {
            errs.push(
                &p,
                Invalid,
                format!("must have exactly one source type set, found {count}"),
            );
        }
        for source in volume.sources() {
            validate_source(&p, source, errs);
        }
        if volume.service_account.is_some() {
            service_accounts += 1;
        }
    }
    if service_accounts > 1 {
        errs.push(
            &vols_path,
            Invalid,
            "at most one serviceAccount volume is allowed",
        );
    }
}

fn validate_source(p: &FieldPath, source: VolumeSourceRef<'_>, errs: &mut FieldErrors) {
    use VolumeSourceRef as S;
    match source {
        S::ContainerDisk(cd) => {
            let cp = p.child("containerDisk");
            if cd.image.is_empty() {
                errs.push(
                    &cp.child("image"),
                    Required,
                    "a containerDisk needs an image",
                );
            }
            if let Some(path) = cd.path.as_deref().filter(|s| !s.is_empty()) {
                check_absolute_path(&cp.child("path"), path, errs);
            }
        }
        S::CloudInitNoCloud(ci) => validate_cloud_init(
            &p.child("cloudInitNoCloud"),
            [
                ci.user_data.as_deref(),
                ci.user_data_base64.as_deref(),
                ci.user_data_secret_ref.as_ref().map(|r| r.name.as_str()),
            ],
            [
                ci.network_data.as_deref(),
                ci.network_data_base64.as_deref(),
                ci.network_data_secret_ref.as_ref().map(|r| r.name.as_str()),
            ],
            errs,
        ),
        S::CloudInitConfigDrive(ci) => validate_cloud_init(
            &p.child("cloudInitConfigDrive"),
            [
                ci.user_data.as_deref(),
                ci.user_data_base64.as_deref(),
                ci.user_data_secret_ref.as_ref().map(|r| r.name.as_str()),
            ],
            [
                ci.network_data.as_deref(),
                ci.network_data_base64.as_deref(),
                ci.network_data_secret_ref.as_ref().map(|r| r.name.as_str()),
            ],
            errs,
        ),
        S::HostDisk(hd) => {
            let hp = p.child("hostDisk");
            if hd.path.is_empty() {
                errs.push(&hp.child("path"), Required, "a hostDisk needs a path");
            } else {
                check_absolute_path(&hp.child("path"), &hd.path, errs);
            }
            match &hd.type_ {
                None => errs.push(
                    &hp.child("type"),
                    Required,
                    "must be one of: Disk, DiskOrCreate",
                ),
                Some(HostDiskType::Other(t)) => errs.push(
                    &hp.child("type"),
                    NotSupported,
                    format!("unsupported hostDisk type {t:?}, must be one of: Disk, DiskOrCreate"),
                ),
                Some(HostDiskType::Disk) => {
                    if hd.capacity.is_some() {
                        errs.push(
                            &hp.child("capacity"),
                            Invalid,
                            format!("is allowed only with {} DiskOrCreate", hp.child("type")),
                        );
                    }
                }
                Some(HostDiskType::DiskOrCreate) => match &hd.capacity {
                    None => errs.push(
                        &hp.child("capacity"),
                        Required,
                        "is required with type DiskOrCreate",
                    ),
                    Some(q) => check_positive_size(&hp.child("capacity"), q, errs),
                },
            }
        }
        S::EmptyDisk(ed) => {
            let cp = p.child("emptyDisk").child("capacity");
            match &ed.capacity {
                None => errs.push(&cp, Required, "an emptyDisk needs a capacity"),
                Some(q) => check_positive_size(&cp, q, errs),
            }
        }
        S::PersistentVolumeClaim(pvc) if pvc.claim_name.is_empty() => errs.push(
            &p.child("persistentVolumeClaim").child("claimName"),
            Required,
            "a persistentVolumeClaim volume needs a claimName",
        ),
        S::Ephemeral(e) => match &e.persistent_volume_claim {
            Some(pvc) if !pvc.claim_name.is_empty() => {}
            _ => errs.push(
                &p.child("ephemeral")
                    .child("persistentVolumeClaim")
                    .child("claimName"),
                Required,
                "an ephemeral volume needs a persistentVolumeClaim claimName",
            ),
        },
        S::DataVolume(dv) if dv.name.is_empty() => errs.push(
            &p.child("dataVolume").child("name"),
            Required,
            "a dataVolume volume needs a name",
        ),
        S::ConfigMap(cm) if cm.name.as_deref().is_none_or(str::is_empty) => errs.push(
            &p.child("configMap").child("name"),
            Required,
            "a configMap volume needs a name",
        ),
        S::Secret(s) if s.secret_name.as_deref().is_none_or(str::is_empty) => errs.push(
            &p.child("secret").child("secretName"),
            Required,
            "a secret volume needs a secretName",
        ),
        S::ServiceAccount(sa) if sa.service_account_name.as_deref().is_none_or(str::is_empty) => {
            errs.push(
                &p.child("serviceAccount").child("serviceAccountName"),
                Required,
                "a serviceAccount volume needs a serviceAccountName",
            )
        }
        _ => {}
    }
}

fn check_positive_size(
    p: &FieldPath,
    q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
    errs: &mut FieldErrors,
) {
    if let Some(parsed) = quantity(p, q, errs) {
        match parsed.to_bytes() {
            Ok(0) => errs.push(p, Invalid, "must be greater than 0"),
            Ok(_) => {}
            Err(e) => errs.push(p, Invalid, e.to_string()),
        }
    }
}

/// `[inline, base64, secret name]` for user data and for network data.
fn validate_cloud_init(
    p: &FieldPath,
    user: [Option<&str>; 3],
    network: [Option<&str>; 3],
    errs: &mut FieldErrors,
) {
    let mut total_sources = 0;
    for (kind, [inline, b64, secret], b64_field) in [
        ("userdata", user, "userDataBase64"),
        ("networkdata", network, "networkDataBase64"),
    ] {
        let inline = inline.filter(|s| !s.is_empty());
        let b64 = b64.filter(|s| !s.is_empty());
        let secret = secret.filter(|s| !s.is_empty());
        let sources = [inline.is_some(), b64.is_some(), secret.is_some()]
            .into_iter()
            .filter(|s| *s)
            .count();
        total_sources += sources;
        if sources > 1 {
            errs.push(p, Invalid, format!("must have only one {kind} source set"));
        }
        let mut len = inline.map_or(0, str::len);
        if let Some(b64) = b64 {
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(data) => len = len.max(data.len()),
                Err(_) => errs.push(&p.child(b64_field), Invalid, "is not valid base64"),
            }
        }
        if len > CLOUD_INIT_MAX_LEN {
            errs.push(
                p,
                TooLong,
                format!("{kind} is {len} bytes, over the {CLOUD_INIT_MAX_LEN} byte limit; use a secret for larger data"),
            );
        }
    }
    if total_sources == 0 {
        errs.push(
            p,
            Required,
            "must have at least one user data or network data source set",
        );
    }
}

/// Boot orders are ≥ 1 and unique across disks and interfaces.
fn validate_boot_order(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    let devices_path = path.child("domain").child("devices");
    let disks = spec
        .domain
        .devices
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| (devices_path.child("disks").index(i), d.boot_order));
    let ifaces = spec
        .domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, d)| (devices_path.child("interfaces").index(i), d.boot_order));
    let mut seen = HashSet::new();
    for (p, order) in disks.chain(ifaces) {
        let Some(order) = order else {
            continue;
        };
        let p = p.child("bootOrder");
        if order < 1 {
            errs.push(&p, Invalid, "must be greater than or equal to 1");
        } else if !seen.insert(order) {
            errs.push(
                &p,
                Duplicate,
                format!("boot order {order} is already set for a different device"),
            );
        }
    }
}

fn validate_access_credentials(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    let has_no_cloud = spec.volumes.iter().any(|v| v.cloud_init_no_cloud.is_some());
    let has_config_drive = spec
        .volumes
        .iter()
        .any(|v| v.cloud_init_config_drive.is_some());
    for (i, cred) in spec.access_credentials.iter().enumerate() {
        let p = path.child("accessCredentials").index(i);
        let (kind, source, method) = match (&cred.ssh_public_key, &cred.user_password) {
            (Some(k), None) => ("sshPublicKey", &k.source, &k.propagation_method),
            (None, Some(u)) => ("userPassword", &u.source, &u.propagation_method),
            _ => {
                errs.push(
                    &p,
                    Invalid,
                    "must have exactly one of sshPublicKey, userPassword",
                );
                continue;
            }
        };
        let kp = p.child(kind);
        if source
            .secret
            .as_ref()
            .is_none_or(|s| s.secret_name.is_empty())
        {
            errs.push(
                &kp.child("source").child("secret").child("secretName"),
                Required,
                "an access credential needs a source secret",
            );
        }
        let mp = kp.child("propagationMethod");
        let methods = [
            method.no_cloud.is_some(),
            method.config_drive.is_some(),
            method.qemu_guest_agent.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() != 1 {
            errs.push(
                &mp,
                Invalid,
                "must have exactly one of noCloud, configDrive, qemuGuestAgent",
            );
        }
        if kind == "userPassword" && (method.no_cloud.is_some() || method.config_drive.is_some()) {
            errs.push(
                &mp,
                NotSupported,
                "user passwords can only be propagated by qemuGuestAgent",
            );
        }
        if method.no_cloud.is_some() && !has_no_cloud {
            errs.push(
                &mp.child("noCloud"),
                Invalid,
                "needs a cloudInitNoCloud volume",
            );
        }
        if method.config_drive.is_some() && !has_config_drive {
            errs.push(
                &mp.child("configDrive"),
                Invalid,
                "needs a cloudInitConfigDrive volume",
            );
        }
        if kind == "sshPublicKey"
            && let Some(qga) = &method.qemu_guest_agent
            && qga.users.is_empty()
        {
            errs.push(
                &mp.child("qemuGuestAgent").child("users"),
                Required,
                "at least one user is required",
            );
        }
    }
}

/// `dddd:bb:dd.f` in hex.
pub(super) fn is_pci_address(s: &str) -> bool {
    let hex =
        |part: &str, len: usize| part.len() == len && part.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((domain, rest)) = s.split_once(':') else {
        return false;
    };
    let Some((bus, rest)) = rest.split_once(':') else {
        return false;
    };
    let Some((slot, func)) = rest.split_once('.') else {
        return false;
    };
    hex(domain, 4)
        && hex(bus, 2)
        && hex(slot, 2)
        && func.len() == 1
        && matches!(func.as_bytes()[0], b'0'..=b'7')
}
