//! Renders a [`Machine`] into QEMU's command line. Pure: the same machine gives the same argv.

use std::path::Path;

use serde_json::json;

use crate::machine::{
    Accel, CacheMode, Chipset, Device, Disk, DiskBus, DiskMedia, Firmware, InputDevice, Machine,
    NetBackend, Nic, WatchdogAction,
};

/// The argv after the binary name.
pub fn render(m: &Machine) -> Vec<String> {
    let mut a = Argv::default();
    a.push2("-name", format!("guest={},debug-threads=on", esc(&m.name)));
    a.push2("-uuid", m.uuid.clone());
    a.push("-nodefaults");
    a.push("-no-user-config");
    a.push2("-machine", machine_opts(m));
    a.push2(
        "-accel",
        match m.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        },
    );
    a.push2("-cpu", m.cpu_model.clone());
    let t = m.topology;
    a.push2(
        "-smp",
        format!(
            "{},sockets={},cores={},threads={}",
            t.vcpus(),
            t.sockets,
            t.cores,
            t.threads
        ),
    );
    a.push2("-m", memory_size(m.memory.bytes));
    if let Some(path) = &m.memory.hugepages {
        a.push2(
            "-object",
            format!(
                "memory-backend-file,id=pc.ram,size={},mem-path={},share=on,prealloc=on",
                m.memory.bytes,
                esc_path(path)
            ),
        );
    }
    firmware(&mut a, m);
    let s = &m.smbios;
    let mut smbios = format!(
        "type=1,manufacturer={},product={},family={},uuid={}",
        esc(&s.manufacturer),
        esc(&s.product),
        esc(&s.family),
        esc(&s.uuid)
    );
    if let Some(serial) = &s.serial {
        smbios.push_str(&format!(",serial={}", esc(serial)));
    }
    a.push2("-smbios", smbios);
    if let Some(kb) = &m.kernel_boot {
        if let Some(k) = &kb.kernel {
            a.push2("-kernel", k.display().to_string());
        }
        if let Some(i) = &kb.initrd {
            a.push2("-initrd", i.display().to_string());
        }
        if let Some(c) = &kb.cmdline {
            a.push2("-append", c.clone());
        }
    }
    a.push2("-rtc", format!("base={}", m.rtc_base));
    match &m.sockets.vnc {
        Some(vnc) => a.push2("-vnc", format!("unix:{}", esc_path(vnc))),
        None => a.push2("-display", "none"),
    }
    a.push2(
        "-chardev",
        format!(
            "socket,id=charmonitor,path={},server=on,wait=off",
            esc_path(&m.sockets.qmp)
        ),
    );
    a.push2("-mon", "chardev=charmonitor,id=monitor,mode=control");
    a.push2(
        "-chardev",
        format!(
            "socket,id=charserial0,path={},server=on,wait=off",
            esc_path(&m.sockets.serial)
        ),
    );
    a.push2("-device", "isa-serial,chardev=charserial0,id=serial0");
    controllers(&mut a, m);
    let mut sata_slot = 0u32;
    for (i, d) in m.disks.iter().enumerate() {
        disk(&mut a, m.chipset, i, d, &mut sata_slot);
    }
    for n in &m.nics {
        nic(&mut a, n);
    }
    for (i, d) in m.devices.iter().enumerate() {
        device(&mut a, m, i, d);
    }
    if m.start_paused {
        a.push("-S");
    }
    if m.incoming {
        a.push2("-incoming", "defer");
    }
    if m.sandbox {
        a.push2(
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        );
    }
    a.push2("-msg", "timestamp=on");
    a.0
}

#[derive(Default)]
struct Argv(Vec<String>);

impl Argv {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }
    fn push2(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_string());
        self.0.push(value.into());
    }
}

/// QEMU option values separate keys with commas; a literal comma is written twice.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

fn esc_path(p: &Path) -> String {
    esc(&p.display().to_string())
}

fn machine_opts(m: &Machine) -> String {
    let mut s = match m.chipset {
        Chipset::Q35 => "q35".to_string(),
        Chipset::I440fx => "pc".to_string(),
    };
    let smm = matches!(
        m.firmware,
        Firmware::Efi {
            secure_boot: true,
            ..
        }
    );
    s.push_str(if smm { ",smm=on" } else { ",smm=off" });
    if !m.acpi {
        s.push_str(",acpi=off");
    }
    if m.memory.hugepages.is_some() {
        s.push_str(",memory-backend=pc.ram");
    }
    s
}

/// `-m` in MiB when exact, else in KiB rounded up (QEMU needs no finer grain).
fn memory_size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{}M", bytes / MIB)
    } else {
        format!("{}k", bytes.div_ceil(1024))
    }
}

fn firmware(a: &mut Argv, m: &Machine) {
    if let Firmware::Efi {
        code,
        vars,
        secure_boot,
    } = &m.firmware
    {
        a.push2(
            "-drive",
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                esc_path(code)
            ),
        );
        a.push2(
            "-drive",
            format!("if=pflash,format=raw,unit=1,file={}", esc_path(vars)),
        );
        if *secure_boot {
            a.push2("-global", "driver=cfi.pflash01,property=secure,value=on");
        }
    }
}

fn controllers(a: &mut Argv, m: &Machine) {
    if m.disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        a.push2("-device", "virtio-scsi-pci,id=scsi0");
    }
    let usb_input = m.devices.iter().any(|d| {
        matches!(
            d,
            Device::Input(InputDevice::UsbTablet | InputDevice::UsbKeyboard)
        )
    });
    if usb_input || m.disks.iter().any(|d| d.bus == DiskBus::Usb) {
        a.push2("-device", "qemu-xhci,id=usb");
    }
}

fn disk(a: &mut Argv, chipset: Chipset, index: usize, d: &Disk, sata_slot: &mut u32) {
    // QEMU node names are limited to 31 characters: derive them from the position, not the name.
    let file_node = format!("file-d{index}");
    let fmt_node = crate::machine::disk_node(index);
    let readonly = d.readonly || d.media == DiskMedia::Cdrom;
    let (direct, write_cache) = match d.cache {
        CacheMode::None => (true, true),
        CacheMode::Writeback => (false, true),
        CacheMode::Writethrough => (false, false),
    };
    let cache = json!({ "direct": direct, "no-flush": false });
    a.push2(
        "-blockdev",
        json!({
            "driver": "file",
            "filename": d.path.display().to_string(),
            "node-name": file_node,
            "cache": cache,
            "read-only": readonly,
            "discard": "unmap",
        })
        .to_string(),
    );
    a.push2(
        "-blockdev",
        json!({
            "driver": d.format.as_str(),
            "file": file_node,
            "node-name": fmt_node,
            "cache": cache,
            "read-only": readonly,
            "discard": "unmap",
        })
        .to_string(),
    );
    let id = format!("ua-{}", esc(&d.name));
    let cdrom = d.media == DiskMedia::Cdrom;
    let mut dev = match d.bus {
        DiskBus::Virtio => format!("virtio-blk-pci,drive={fmt_node},id={id}"),
        DiskBus::Sata => {
            let bus = sata_bus(chipset, *sata_slot);
            *sata_slot += 1;
            let model = if cdrom { "ide-cd" } else { "ide-hd" };
            format!("{model},{bus},drive={fmt_node},id={id}")
        }
        DiskBus::Scsi => {
            let model = if cdrom { "scsi-cd" } else { "scsi-hd" };
            format!("{model},bus=scsi0.0,scsi-id=0,lun={index},drive={fmt_node},id={id}")
        }
        DiskBus::Usb => format!("usb-storage,bus=usb.0,drive={fmt_node},id={id}"),
    };
    if !cdrom {
        dev.push_str(if write_cache {
            ",write-cache=on"
        } else {
            ",write-cache=off"
        });
    }
    if let Some(serial) = &d.serial {
        dev.push_str(&format!(",serial={}", esc(serial)));
    }
    if let Some(b) = d.boot_index {
        dev.push_str(&format!(",bootindex={b}"));
    }
    a.push2("-device", dev);
}

/// q35's AHCI controller has six ports, one device each; i440fx's PIIX has two IDE buses with
/// two units each.
fn sata_bus(chipset: Chipset, slot: u32) -> String {
    match chipset {
        Chipset::Q35 => format!("bus=ide.{slot}"),
        Chipset::I440fx => format!("bus=ide.{},unit={}", slot / 2, slot % 2),
    }
}

fn nic(a: &mut Argv, n: &Nic) {
    let netdev_id = format!("hostua-{}", esc(&n.name));
    let mut netdev = match &n.backend {
        NetBackend::Tap { ifname } => {
            format!(
                "tap,id={netdev_id},ifname={},script=no,downscript=no",
                esc(ifname)
            )
        }
        NetBackend::User { hostfwd } => {
            let mut s = format!("user,id={netdev_id}");
            for f in hostfwd {
                s.push_str(&format!(
                    ",hostfwd=tcp:{}:{}-:{}",
                    esc(&f.host_addr),
                    f.host_port,
                    f.guest_port
                ));
            }
            s
        }
        NetBackend::Passt { socket } => format!(
            "stream,id={netdev_id},server=off,addr.type=unix,addr.path={}",
            esc_path(socket)
        ),
    };
    let multiqueue = n.queues.filter(|q| *q > 1);
    if let (Some(q), NetBackend::Tap { .. }) = (multiqueue, &n.backend) {
        netdev.push_str(&format!(",queues={q}"));
    }
    a.push2("-netdev", netdev);
    let mut dev = format!(
        "{},netdev={netdev_id},id=ua-{},mac={}",
        n.model,
        esc(&n.name),
        esc(&n.mac)
    );
    if let (Some(q), NetBackend::Tap { .. }) = (multiqueue, &n.backend) {
        dev.push_str(&format!(",mq=on,vectors={}", 2 * q + 2));
    }
    if let Some(b) = n.boot_index {
        dev.push_str(&format!(",bootindex={b}"));
    }
    if let Some(rom) = &n.rom_file {
        dev.push_str(&format!(",romfile={}", esc(rom)));
    }
    a.push2("-device", dev);
}

fn device(a: &mut Argv, m: &Machine, index: usize, d: &Device) {
    match d {
        Device::Rng => {
            a.push2(
                "-object",
                "rng-random,id=objrng0,filename=/dev/urandom".to_string(),
            );
            a.push2("-device", "virtio-rng-pci,rng=objrng0,id=rng0");
        }
        Device::Watchdog(action) => {
            a.push2("-device", "i6300esb,id=watchdog0");
            let action = match action {
                WatchdogAction::Reset => "reset",
                WatchdogAction::Poweroff => "poweroff",
                WatchdogAction::Shutdown => "shutdown",
                WatchdogAction::Pause => "pause",
                WatchdogAction::None => "none",
            };
            a.push2("-action", format!("watchdog={action}"));
        }
        Device::Input(input) => {
            let dev = match input {
                InputDevice::UsbTablet => "usb-tablet,bus=usb.0",
                InputDevice::VirtioTablet => "virtio-tablet-pci",
                InputDevice::UsbKeyboard => "usb-kbd,bus=usb.0",
                InputDevice::VirtioKeyboard => "virtio-keyboard-pci",
            };
            a.push2("-device", format!("{dev},id=input{index}"));
        }
        Device::Balloon => a.push2("-device", "virtio-balloon-pci,id=balloon0"),
        Device::Video => {
            let model = match m.firmware {
                Firmware::Bios => "VGA",
                Firmware::Efi { .. } => "bochs-display",
            };
            a.push2("-device", format!("{model},id=video0"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_doubled() {
        assert_eq!(esc("a,b"), "a,,b");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(memory_size(256 * 1024 * 1024), "256M");
        assert_eq!(memory_size(1536 * 1024), "1536k");
        assert_eq!(memory_size(1000), "1k");
    }
}
