//! A typed model of one QEMU virtual machine: what the VMI asks for, with every path resolved.
//!
//! `convert` builds it from a VMI; `render` turns it into an argv. Nothing here does I/O.

use std::path::PathBuf;

/// Which accelerator QEMU runs the guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

/// The chipset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chipset {
    /// `q35` (ICH9, AHCI, PCIe): KubeVirt's default.
    Q35,
    /// `pc` (i440FX, PIIX IDE, PCI).
    I440fx,
}

/// Firmware the guest starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF from pflash: read-only code plus a per-VM copy of the variable store.
    Efi {
        code: PathBuf,
        vars: PathBuf,
        secure_boot: bool,
    },
}

/// `-kernel`/`-initrd`/`-append`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

/// SMBIOS type 1 (system information), which cloud-init and guests read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Smbios {
    pub manufacturer: String,
    pub product: String,
    pub family: String,
    pub serial: Option<String>,
    pub uuid: String,
}

/// The vCPU topology; vCPUs = sockets × cores × threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

impl Topology {
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }
}

/// Guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Memory {
    pub bytes: u64,
    /// Back guest RAM with hugepages mounted at this path.
    pub hugepages: Option<PathBuf>,
}

/// Image file format as QEMU's block layer names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Raw,
    Qcow2,
}

impl ImageFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
        }
    }
}

/// Host page cache policy (KubeVirt's `cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// O_DIRECT, guest write cache on.
    None,
    /// Host page cache, every write flushed (guest write cache off).
    Writethrough,
    /// Host page cache, flushes on guest request.
    Writeback,
}

/// How a disk reaches the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
    Usb,
}

/// What kind of device the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskMedia {
    Disk,
    Cdrom,
    /// A SCSI LUN; backed by a file it is presented as a SCSI disk.
    Lun,
}

/// One block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The KubeVirt disk name; QEMU ids derive from it.
    pub name: String,
    pub path: PathBuf,
    pub format: ImageFormat,
    pub bus: DiskBus,
    pub media: DiskMedia,
    pub readonly: bool,
    pub cache: CacheMode,
    pub boot_index: Option<u32>,
    pub serial: Option<String>,
}

impl Disk {
    /// Whether the guest writes this disk (a local writable disk is copied during a migration).
    pub fn writable(&self) -> bool {
        !self.readonly && self.media != DiskMedia::Cdrom
    }
}

/// The QEMU node name of the format layer of the disk at `index` (`-blockdev` node names are
/// limited to 31 characters, so they derive from the position, not the name).
pub fn disk_node(index: usize) -> String {
    format!("drive-d{index}")
}

/// Where a NIC's packets go on the host side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetBackend {
    /// A tap device that already exists (the binding created it).
    Tap { ifname: String },
    /// QEMU's user-mode network stack (slirp): guest 10.0.2.15, gateway 10.0.2.2. Used when no
    /// pod network namespace exists, e.g. `kuvirt run` without a control plane.
    User { hostfwd: Vec<HostForward> },
    /// passt, reached through a unix socket (`-netdev stream`).
    Passt { socket: PathBuf },
}

/// A TCP port forwarded from the host into a user-mode network guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostForward {
    pub host_addr: String,
    pub host_port: u16,
    pub guest_port: u16,
}

/// One network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    /// QEMU device model: virtio-net-pci, e1000, e1000e, rtl8139, …
    pub model: String,
    pub mac: String,
    pub backend: NetBackend,
    pub boot_index: Option<u32>,
    pub queues: Option<u32>,
    pub link_up: bool,
    pub rom_file: Option<String>,
}

/// What the watchdog does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchdogAction {
    Reset,
    Poweroff,
    Shutdown,
    Pause,
    None,
}

/// Pointer devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputDevice {
    UsbTablet,
    VirtioTablet,
    UsbKeyboard,
    VirtioKeyboard,
}

/// Everything besides disks and NICs that QEMU gets a `-device` for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    Rng,
    Watchdog(WatchdogAction),
    Input(InputDevice),
    Balloon,
    /// The display adapter VNC shows (`VGA` for BIOS, `bochs-display` for EFI).
    Video,
}

/// Unix sockets and files QEMU creates for the launcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sockets {
    pub qmp: PathBuf,
    pub serial: PathBuf,
    pub vnc: Option<PathBuf>,
}

/// The whole machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// `namespace_name`, shown in `ps` and QEMU's thread names.
    pub name: String,
    pub uuid: String,
    pub accel: Accel,
    pub chipset: Chipset,
    /// QEMU `-cpu` model: `host` (KVM passthrough), `max`, or a named model.
    pub cpu_model: String,
    pub topology: Topology,
    pub memory: Memory,
    pub firmware: Firmware,
    pub kernel_boot: Option<KernelBoot>,
    pub smbios: Smbios,
    pub acpi: bool,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub devices: Vec<Device>,
    pub sockets: Sockets,
    /// Start with vCPUs stopped (`-S`); the launcher sends `cont` once everything is attached.
    pub start_paused: bool,
    /// Wait for an incoming migration (`-incoming defer`): the target of a live migration,
    /// whose state arrives from the source once the launcher is told where to listen.
    pub incoming: bool,
    /// Clock offset: `utc` or `localtime` and an optional fixed start.
    pub rtc_base: String,
    /// `-sandbox on` with QEMU's seccomp filter.
    pub sandbox: bool,
}
