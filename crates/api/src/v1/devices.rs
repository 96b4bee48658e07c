//! `spec.domain.devices`: disks, inputs, rng, watchdog, filesystems and the autoattach switches.
//! Interfaces live in [`super::networks`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Extra, Interface};

/// `spec.domain.devices`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_virtio_transitional: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_hotplug: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Watchdog>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// Unset means true: add the default pod network + interface when none are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    /// Unset means true: VGA + VNC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
    /// Unset means true: serial console on ttyS0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_serial_console: Option<bool>,
    /// Unset means true: virtio-balloon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_mem_balloon: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_input_device: Option<bool>,
    #[serde(
        default,
        rename = "autoattachVSOCK",
        skip_serializing_if = "Option::is_none"
    )]
    pub autoattach_vsock: Option<bool>,
    /// Present means a virtio-rng device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Rng>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_multi_queue: Option<bool>,
    /// JSON `networkInterfaceMultiqueue` (lower-case q, as in KubeVirt).
    #[serde(
        default,
        rename = "networkInterfaceMultiqueue",
        skip_serializing_if = "Option::is_none"
    )]
    pub network_interface_multiqueue: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<Filesystem>,
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// Bus of a disk, cdrom or lun.
    DiskBus {
        Virtio = "virtio",
        Sata = "sata",
        Scsi = "scsi",
        Usb = "usb",
    }
}

string_enum! {
    /// Host page-cache mode of a disk.
    DriverCache {
        None = "none",
        Writethrough = "writethrough",
        Writeback = "writeback",
    }
}

string_enum! {
    /// QEMU AIO mode of a disk.
    DriverIO {
        Threads = "threads",
        Native = "native",
    }
}

string_enum! {
    /// CD-ROM tray state.
    TrayState {
        Closed = "closed",
        Open = "open",
    }
}

/// `spec.domain.devices.disks[]`. At most one of `disk`, `cdrom`, `lun` (Go's inlined
/// `DiskDevice`); none means `disk: {}` after defaulting. `name` refers to a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<LunTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CDRomTarget>,
    /// 1 is first; unique across disks and interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(
        default,
        rename = "dedicatedIOThread",
        skip_serializing_if = "Option::is_none"
    )]
    pub dedicated_io_thread: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<DriverCache>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<DriverIO>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shareable: Option<bool>,
    /// stop, ignore, report or enospace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_policy: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// Which of `disk`/`cdrom`/`lun` a [`Disk`] is, for code that matches on it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DiskDeviceRef<'a> {
    Disk(&'a DiskTarget),
    CDRom(&'a CDRomTarget),
    Lun(&'a LunTarget),
}

impl Disk {
    /// The device target; `disk` wins if several are (invalidly) set; `None` before defaulting.
    pub fn device(&self) -> Option<DiskDeviceRef<'_>> {
        if let Some(d) = &self.disk {
            Some(DiskDeviceRef::Disk(d))
        } else if let Some(c) = &self.cdrom {
            Some(DiskDeviceRef::CDRom(c))
        } else {
            self.lun.as_ref().map(DiskDeviceRef::Lun)
        }
    }

    /// The bus of whichever target is set.
    pub fn bus(&self) -> Option<&DiskBus> {
        match self.device()? {
            DiskDeviceRef::Disk(d) => d.bus.as_ref(),
            DiskDeviceRef::CDRom(c) => c.bus.as_ref(),
            DiskDeviceRef::Lun(l) => l.bus.as_ref(),
        }
    }

    /// Read-only as KubeVirt reads it: cdroms are read-only unless `readonly: false`.
    pub fn is_read_only(&self) -> bool {
        match self.device() {
            Some(DiskDeviceRef::Disk(d)) => d.readonly.unwrap_or(false),
            Some(DiskDeviceRef::CDRom(c)) => c.readonly.unwrap_or(true),
            Some(DiskDeviceRef::Lun(l)) => l.readonly.unwrap_or(false),
            None => false,
        }
    }
}

/// `disks[].disk`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// JSON `readonly` (all lower case).
    #[serde(default, rename = "readonly", skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    /// `dddd:bb:dd.f`; virtio bus only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `disks[].lun`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LunTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    #[serde(default, rename = "readonly", skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `disks[].cdrom`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CDRomTarget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Unset means true.
    #[serde(default, rename = "readonly", skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tray: Option<TrayState>,
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// Bus of an input device.
    InputBus {
        Usb = "usb",
        Virtio = "virtio",
    }
}

string_enum! {
    /// Kind of input device.
    InputType {
        Tablet = "tablet",
        Keyboard = "keyboard",
    }
}

/// `spec.domain.devices.inputs[]`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<InputBus>,
    /// Required by KubeVirt's schema; defaulted to tablet.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<InputType>,
    #[serde(default)]
    pub name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.devices.rng`: empty object, presence adds virtio-rng.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rng {
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// What the watchdog does when it fires.
    WatchdogAction {
        Reset = "reset",
        Poweroff = "poweroff",
        Shutdown = "shutdown",
    }
}

/// `spec.domain.devices.watchdog`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Watchdog {
    #[serde(default)]
    pub name: String,
    /// The Intel 6300ESB watchdog (the only one on amd64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i6300esb: Option<I6300ESBWatchdog>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `watchdog.i6300esb`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct I6300ESBWatchdog {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<WatchdogAction>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.domain.devices.filesystems[]` (virtiofs); `name` refers to a volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtiofs: Option<serde_json::Value>,
    #[serde(flatten)]
    pub extra: Extra,
}
