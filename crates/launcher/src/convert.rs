//! VMI spec → [`Machine`]: KubeVirt's domain semantics, pure. Paths of prepared disks, kernels and
//! network backends come in through [`Resolved`]; the effects that produce them live in `prepare`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kuvirt_api::quantity::parse_quantity;
use kuvirt_api::v1::{
    CPU_MODEL_HOST_MODEL, CPU_MODEL_HOST_PASSTHROUGH, DiskBus as ApiBus, DiskDeviceRef,
    DriverCache, InputBus, InputType, InterfaceState, VirtualMachineInstance,
    WatchdogAction as ApiWatchdog,
};

use crate::machine::{
    Accel, CacheMode, Chipset, Device, Disk, DiskBus, DiskMedia, Firmware, ImageFormat,
    InputDevice, KernelBoot, Machine, Memory, NetBackend, Nic, Smbios, Sockets, Topology,
    WatchdogAction,
};

/// A prepared disk image for one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedDisk {
    pub path: PathBuf,
    pub format: ImageFormat,
    /// Whether the file's filesystem supports O_DIRECT (decides the default cache mode, as in
    /// KubeVirt: `none` where it works, else `writethrough`).
    pub direct_io: bool,
    /// kuvirt made this file for this VM, so QEMU's user may own it. Files it did not make
    /// (existing hostDisks) are never re-owned.
    pub owned: bool,
}

/// Everything the effects produced for this VMI.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// By volume name.
    pub disks: BTreeMap<String, ResolvedDisk>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// By interface name.
    pub nics: BTreeMap<String, NetBackend>,
    /// The per-VM copy of the EFI variable store.
    pub efi_vars: Option<PathBuf>,
}

/// Host facts the translation depends on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostConfig {
    pub accel: Accel,
    /// Directory holding Debian's OVMF builds (`/usr/share/OVMF`).
    pub ovmf_dir: PathBuf,
    /// Where QEMU puts its sockets for this VM.
    pub run_dir: PathBuf,
    pub sandbox: bool,
    /// SMBIOS product; `OpenStack Nova` when the metadata service should be found by cloud-init.
    pub smbios_product: String,
}

impl HostConfig {
    /// The OVMF code image for the chosen secure boot setting (Debian's 4 MiB builds).
    pub fn ovmf_code(&self, secure_boot: bool) -> PathBuf {
        self.ovmf_dir.join(if secure_boot {
            "OVMF_CODE_4M.ms.fd"
        } else {
            "OVMF_CODE_4M.fd"
        })
    }

    /// The variable store template to copy per VM.
    pub fn ovmf_vars_template(&self, secure_boot: bool) -> PathBuf {
        self.ovmf_dir.join(if secure_boot {
            "OVMF_VARS_4M.ms.fd"
        } else {
            "OVMF_VARS_4M.fd"
        })
    }
}

/// The most vCPUs a q35 machine takes in QEMU 7.2.
pub const MAX_VCPUS: u32 = 288;

/// A spec the launcher cannot turn into a machine; `field` is the path in the VMI.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConvertError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        message: message.into(),
    }
}

/// Translates a defaulted, validated VMI.
pub fn convert(
    vmi: &VirtualMachineInstance,
    resolved: &Resolved,
    host: &HostConfig,
) -> Result<Machine, ConvertError> {
    let spec = &vmi.spec;
    let domain = &spec.domain;
    let devices = &domain.devices;
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let namespace = vmi
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());

    let chipset = match domain.machine.as_ref().map(|m| m.type_.as_str()) {
        None | Some("") | Some("q35") => Chipset::Q35,
        Some(t) if t.starts_with("pc-q35") => Chipset::Q35,
        Some(t) if t == "pc" || t.starts_with("pc-i440fx") => Chipset::I440fx,
        Some(t) => {
            return Err(err(
                "spec.domain.machine.type",
                format!(
                    "unsupported machine type {t:?}: expected q35, pc-q35-*, pc or pc-i440fx-*"
                ),
            ));
        }
    };

    let uuid = domain
        .firmware
        .as_ref()
        .and_then(|f| f.uuid.clone())
        .unwrap_or_else(|| kuvirt_api::defaults::legacy_firmware_uuid(&name));

    let cpu = domain.cpu.as_ref();
    let count = |v: Option<u32>| v.unwrap_or(1).max(1);
    let topology = Topology {
        sockets: count(cpu.and_then(|c| c.sockets)),
        cores: count(cpu.and_then(|c| c.cores)),
        threads: count(cpu.and_then(|c| c.threads)),
    };
    // Checked here so that `Topology::vcpus` (and the multiqueue vector count) cannot overflow.
    let vcpus = topology
        .sockets
        .checked_mul(topology.cores)
        .and_then(|n| n.checked_mul(topology.threads));
    if vcpus.is_none_or(|n| n > MAX_VCPUS) {
        return Err(err(
            "spec.domain.cpu",
            format!("sockets × cores × threads must be at most {MAX_VCPUS}"),
        ));
    }
    if !devices.filesystems.is_empty() {
        return Err(err(
            "spec.domain.devices.filesystems",
            "virtiofs filesystems are not supported yet",
        ));
    }
    let cpu_model = match cpu.and_then(|c| c.model.as_deref()) {
        None | Some("") | Some(CPU_MODEL_HOST_MODEL) | Some(CPU_MODEL_HOST_PASSTHROUGH) => {
            match host.accel {
                Accel::Kvm => "host".to_string(),
                Accel::Tcg => "max".to_string(),
            }
        }
        Some(model)
            if model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
        {
            model.to_string()
        }
        Some(model) => {
            return Err(err(
                "spec.domain.cpu.model",
                format!("{model:?} is not a CPU model name"),
            ));
        }
    };

    let memory = memory(vmi)?;

    let efi = domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref());
    let firmware = match efi {
        None => Firmware::Bios,
        Some(efi) => {
            let secure_boot = efi.secure_boot_enabled();
            let vars = resolved.efi_vars.clone().ok_or_else(|| {
                err(
                    "spec.domain.firmware.bootloader.efi",
                    "no EFI variable store was prepared",
                )
            })?;
            Firmware::Efi {
                code: host.ovmf_code(secure_boot),
                vars,
                secure_boot,
            }
        }
    };

    let kernel_boot = domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
        .map(|kb| KernelBoot {
            kernel: resolved.kernel.clone(),
            initrd: resolved.initrd.clone(),
            cmdline: kb.kernel_args.clone(),
        });

    let smbios = Smbios {
        manufacturer: "KubeVirt".into(),
        product: host.smbios_product.clone(),
        family: "KubeVirt".into(),
        serial: domain.firmware.as_ref().and_then(|f| f.serial.clone()),
        uuid: uuid.clone(),
    };

    let acpi = domain.features.as_ref().is_none_or(|f| f.acpi_enabled());

    let mut disks = Vec::new();
    for (i, d) in devices.disks.iter().enumerate() {
        disks.push(disk(i, d, resolved)?);
    }

    let mut nics = Vec::new();
    for (i, iface) in devices.interfaces.iter().enumerate() {
        let field = format!("spec.domain.devices.interfaces[{i}]");
        if iface.state == Some(InterfaceState::Absent) {
            continue;
        }
        let model = match iface.model.as_deref().unwrap_or("virtio") {
            "virtio" => "virtio-net-pci",
            m @ ("e1000" | "e1000e" | "rtl8139" | "pcnet" | "ne2k_pci") => m,
            other => {
                return Err(err(
                    format!("{field}.model"),
                    format!("unsupported interface model {other:?}"),
                ));
            }
        };
        let backend = resolved
            .nics
            .get(&iface.name)
            .cloned()
            .ok_or_else(|| err(format!("{field}.name"), "no network backend was prepared"))?;
        let mac = iface
            .mac_address
            .clone()
            .unwrap_or_else(|| generated_mac(&namespace, &name, &iface.name));
        let queues = (devices.network_interface_multiqueue == Some(true)
            && model == "virtio-net-pci")
            .then(|| topology.vcpus());
        nics.push(Nic {
            name: iface.name.clone(),
            model: model.to_string(),
            mac,
            backend,
            boot_index: iface.boot_order,
            queues,
            link_up: iface.state != Some(InterfaceState::Down),
            rom_file: None,
        });
    }

    let mut extra_devices = Vec::new();
    if devices.rng.is_some() {
        extra_devices.push(Device::Rng);
    }
    if let Some(w) = &devices.watchdog {
        let action = match w.i6300esb.as_ref().and_then(|e| e.action.as_ref()) {
            None | Some(ApiWatchdog::Reset) => WatchdogAction::Reset,
            Some(ApiWatchdog::Poweroff) => WatchdogAction::Poweroff,
            Some(ApiWatchdog::Shutdown) => WatchdogAction::Shutdown,
            Some(ApiWatchdog::Other(a)) => {
                return Err(err(
                    "spec.domain.devices.watchdog.i6300esb.action",
                    format!("unsupported action {a:?}"),
                ));
            }
        };
        extra_devices.push(Device::Watchdog(action));
    }
    for (i, input) in devices.inputs.iter().enumerate() {
        let virtio = match input.bus.as_ref() {
            None | Some(InputBus::Usb) => false,
            Some(InputBus::Virtio) => true,
            Some(InputBus::Other(b)) => {
                return Err(err(
                    format!("spec.domain.devices.inputs[{i}].bus"),
                    format!("unsupported bus {b:?}"),
                ));
            }
        };
        let dev = match (input.type_.as_ref(), virtio) {
            (None | Some(InputType::Tablet), false) => InputDevice::UsbTablet,
            (None | Some(InputType::Tablet), true) => InputDevice::VirtioTablet,
            (Some(InputType::Keyboard), false) => InputDevice::UsbKeyboard,
            (Some(InputType::Keyboard), true) => InputDevice::VirtioKeyboard,
            (Some(InputType::Other(t)), _) => {
                return Err(err(
                    format!("spec.domain.devices.inputs[{i}].type"),
                    format!("unsupported type {t:?}"),
                ));
            }
        };
        extra_devices.push(Device::Input(dev));
    }
    if devices.autoattach_mem_balloon != Some(false) {
        extra_devices.push(Device::Balloon);
    }
    let graphics = devices.autoattach_graphics_device != Some(false);
    if graphics {
        extra_devices.push(Device::Video);
    }

    let rtc_base = match domain.clock.as_ref() {
        Some(c)
            if c.timezone
                .as_deref()
                .is_some_and(|tz| tz != "UTC" && tz != "Etc/UTC") =>
        {
            return Err(err(
                "spec.domain.clock.timezone",
                "only UTC is supported; use clock.utc",
            ));
        }
        Some(c) if c.utc.as_ref().and_then(|u| u.offset_seconds).unwrap_or(0) != 0 => {
            return Err(err(
                "spec.domain.clock.utc.offsetSeconds",
                "a non-zero UTC offset is not supported yet",
            ));
        }
        _ => "utc".to_string(),
    };

    Ok(Machine {
        name: format!("{namespace}_{name}"),
        uuid,
        accel: host.accel,
        chipset,
        cpu_model,
        topology,
        memory,
        firmware,
        kernel_boot,
        smbios,
        acpi,
        disks,
        nics,
        devices: extra_devices,
        sockets: Sockets {
            qmp: host.run_dir.join("qmp.sock"),
            serial: host.run_dir.join("serial.sock"),
            vnc: graphics.then(|| host.run_dir.join("vnc.sock")),
        },
        start_paused: true,
        incoming: false,
        rtc_base,
        sandbox: host.sandbox,
    })
}

fn memory(vmi: &VirtualMachineInstance) -> Result<Memory, ConvertError> {
    let domain = &vmi.spec.domain;
    let (field, q) = if let Some(g) = domain.memory.as_ref().and_then(|m| m.guest.as_ref()) {
        ("spec.domain.memory.guest", g)
    } else if let Some(r) = domain.resources.as_ref().and_then(|r| r.request("memory")) {
        ("spec.domain.resources.requests.memory", r)
    } else {
        return Err(err(
            "spec.domain.memory.guest",
            "guest memory is required (memory.guest or resources.requests.memory)",
        ));
    };
    let bytes = parse_quantity(&q.0)
        .and_then(|q| q.to_bytes())
        .map_err(|e| err(field, e.to_string()))?;
    let hugepages = domain
        .memory
        .as_ref()
        .and_then(|m| m.hugepages.as_ref())
        .map(|h| match h.page_size.as_deref() {
            Some("1Gi") => PathBuf::from("/dev/hugepages1G"),
            _ => PathBuf::from("/dev/hugepages"),
        });
    Ok(Memory { bytes, hugepages })
}

fn disk(i: usize, d: &kuvirt_api::v1::Disk, resolved: &Resolved) -> Result<Disk, ConvertError> {
    let field = format!("spec.domain.devices.disks[{i}]");
    let (media, default_bus) = match d.device() {
        None | Some(DiskDeviceRef::Disk(_)) => (DiskMedia::Disk, DiskBus::Virtio),
        Some(DiskDeviceRef::CDRom(_)) => (DiskMedia::Cdrom, DiskBus::Sata),
        Some(DiskDeviceRef::Lun(_)) => (DiskMedia::Lun, DiskBus::Scsi),
    };
    let bus = match d.bus() {
        None => default_bus,
        Some(ApiBus::Virtio) => DiskBus::Virtio,
        Some(ApiBus::Sata) => DiskBus::Sata,
        Some(ApiBus::Scsi) => DiskBus::Scsi,
        Some(ApiBus::Usb) => DiskBus::Usb,
        Some(ApiBus::Other(b)) => {
            return Err(err(
                format!("{field}.bus"),
                format!("unsupported bus {b:?}"),
            ));
        }
    };
    if media == DiskMedia::Cdrom && bus == DiskBus::Virtio {
        return Err(err(
            format!("{field}.cdrom.bus"),
            "a cdrom cannot use the virtio bus",
        ));
    }
    let image = resolved.disks.get(&d.name).ok_or_else(|| {
        err(
            format!("{field}.name"),
            format!("no prepared volume named {:?}", d.name),
        )
    })?;
    let cache = match d.cache.as_ref() {
        None if image.direct_io => CacheMode::None,
        None => CacheMode::Writethrough,
        Some(DriverCache::None) => CacheMode::None,
        Some(DriverCache::Writethrough) => CacheMode::Writethrough,
        Some(DriverCache::Writeback) => CacheMode::Writeback,
        Some(DriverCache::Other(c)) => {
            return Err(err(
                format!("{field}.cache"),
                format!("unsupported cache mode {c:?}"),
            ));
        }
    };
    if cache == CacheMode::None && !image.direct_io {
        return Err(err(
            format!("{field}.cache"),
            "cache mode none needs O_DIRECT, which this disk's filesystem does not support",
        ));
    }
    Ok(Disk {
        name: d.name.clone(),
        path: image.path.clone(),
        format: image.format,
        bus,
        media,
        readonly: d.is_read_only(),
        cache,
        boot_index: d.boot_order,
        serial: d.serial.clone(),
    })
}

/// A stable locally generated MAC (QEMU's 52:54:00 prefix) from the VMI and interface names, so a
/// VM keeps its MAC across restarts.
pub fn generated_mac(namespace: &str, name: &str, iface: &str) -> String {
    // FNV-1a: tiny and stable across releases, which a std hasher does not promise.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in namespace
        .bytes()
        .chain([0])
        .chain(name.bytes())
        .chain([0])
        .chain(iface.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let b = h.to_be_bytes();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", b[5], b[6], b[7])
}
