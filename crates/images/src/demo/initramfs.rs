//! The demo guest's initramfs: busybox, kernel modules, the `/init` script and its helpers.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

use super::DemoError;
use super::cpio::CpioWriter;
use super::modules::ModuleDeps;

/// The `/init` script (busybox sh).
pub const INIT_SCRIPT: &str = include_str!("guest/init.sh");
/// The udhcpc event script, installed as `/etc/udhcpc.script`.
pub const UDHCPC_SCRIPT: &str = include_str!("guest/udhcpc.sh");
/// The ACPI power-button action, installed as `/etc/acpi/PWRF/00000080`.
pub const POWEROFF_SCRIPT: &str = include_str!("guest/poweroff.sh");
/// dhcpcd's hook, installed as `/etc/dhcpcd.hook` (IPv6 with `kuvirt.dhcp6=1`).
pub const DHCPCD_HOOK: &str = include_str!("guest/dhcpcd-hook.sh");
/// dhcpcd's configuration, installed as `/etc/dhcpcd.conf`: IPv6 only, an IA_NA, rapid commit
/// offered, and the configuration kept when the one-shot run exits.
pub const DHCPCD_CONF: &str = "ipv6only\npersistent\nia_na\noption rapid_commit\n";
/// The guest's DHCPv6 client: the host's dhcpcd (Debian package dhcpcd-base), copied with the
/// shared libraries `ldd` lists. Busybox has no DHCPv6 client in Debian's builds.
pub const DHCPCD: &str = "/usr/sbin/dhcpcd";

/// Busybox applets the scripts use (and a few handy ones on a console), linked in `/bin`.
pub const APPLETS: &[&str] = &[
    "acpid",
    "cat",
    "cp",
    "cut",
    "df",
    "dmesg",
    "echo",
    "findfs",
    "free",
    "grep",
    "head",
    "hostname",
    "httpd",
    "ifconfig",
    "insmod",
    "ip",
    "kill",
    "ln",
    "ls",
    "lsmod",
    "mkdir",
    "mount",
    "mv",
    "nc",
    "ping",
    "poweroff",
    "printf",
    "ps",
    "reboot",
    "rm",
    "route",
    "sed",
    "sh",
    "sha256sum",
    "sleep",
    "sync",
    "timeout",
    "tr",
    "udhcpc",
    "umount",
    "uname",
    "wget",
];

/// Directories every image has.
const IMAGE_DIRS: &[&str] = &[
    "bin",
    "dev",
    "etc",
    "etc/acpi",
    "etc/acpi/PWRF",
    "lib",
    "lib/modules",
    "mnt",
    "mnt/ci",
    "proc",
    "run",
    "sys",
    "tmp",
    "var",
    "var/lib",
    "var/lib/dhcpcd",
    "var/log",
    "var/run",
    "www",
];

/// A module the guest wants: its name and whether the build fails without it.
#[derive(Debug, Clone, Copy)]
pub struct WantedModule {
    /// Module name as modprobe knows it.
    pub name: &'static str,
    /// The guest cannot do its job without it (unless the kernel has it built in).
    pub required: bool,
}

const fn want(name: &'static str, required: bool) -> WantedModule {
    WantedModule { name, required }
}

/// Modules to load, in this order (their dependencies are added before them).
/// Storage host drivers come before `sr_mod`/`sd_mod` so disks are bound when the
/// class drivers register. `ahci` is listed but Debian's cloud kernel does not build it,
/// so SATA disks on q35's AHCI controller are invisible to this guest (IDE on i440fx works).
pub const WANTED_MODULES: &[WantedModule] = &[
    want("virtio_pci", true),
    want("virtio_net", true),
    want("virtio_blk", true),
    want("virtio_scsi", false),
    want("ata_piix", false),
    want("ahci", false),
    want("sr_mod", false),
    want("sd_mod", false),
    want("isofs", true),
    want("vfat", false),
    want("nls_cp437", false),
    want("nls_ascii", false),
    want("nls_utf8", false),
    want("nls_iso8859_1", false),
    want("button", false),
    want("evdev", false),
    want("virtio_rng", false),
    want("virtio_console", false),
];

/// Extra `insmod` arguments for some modules.
fn module_args(path: &str) -> &'static str {
    match super::modules::module_name(path).as_str() {
        // Scan SCSI hosts synchronously so cdroms exist when insmod returns.
        "scsi_mod" => "scan=sync",
        _ => "",
    }
}

/// Computes the module files to ship (relative to `/lib/modules/VERSION`), in load order.
pub fn select_modules(modules_dir: &Path) -> Result<Vec<String>, DemoError> {
    let dep_path = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_path).map_err(|e| DemoError::io(&dep_path, e))?;
    let deps = ModuleDeps::parse(&text)?;
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin.lines().map(super::modules::module_name).collect();
    let names: Vec<&str> = WANTED_MODULES.iter().map(|m| m.name).collect();
    let (order, missing) = deps.load_order(&names);
    for name in missing {
        let required = WANTED_MODULES.iter().any(|m| m.name == name && m.required);
        if required && !builtin.contains(&name) {
            return Err(DemoError::MissingModule(name));
        }
    }
    if let Some(p) = order.iter().find(|p| !p.ends_with(".ko")) {
        // Debian's 6.1 kernels ship plain .ko files; busybox insmod cannot read compressed ones.
        return Err(DemoError::CompressedModule(p.clone()));
    }
    Ok(order)
}

/// Builds the gzip'd newc initramfs.
pub fn build(busybox: &Path, modules_dir: &Path, modules: &[String]) -> Result<Vec<u8>, DemoError> {
    let io = |e| DemoError::io(Path::new("initramfs"), e);
    let busybox_bin = std::fs::read(busybox).map_err(|e| DemoError::io(busybox, e))?;
    let gz = GzEncoder::new(Vec::new(), Compression::fast());
    let mut w = CpioWriter::new(gz);
    for dir in IMAGE_DIRS {
        w.dir(dir, 0o755).map_err(io)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1).map_err(io)?;
    w.char_dev("dev/null", 0o666, 1, 3).map_err(io)?;
    w.file("bin/busybox", 0o755, &busybox_bin).map_err(io)?;
    for applet in APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox").map_err(io)?;
    }
    w.file("init", 0o755, INIT_SCRIPT.as_bytes()).map_err(io)?;
    w.file("etc/udhcpc.script", 0o755, UDHCPC_SCRIPT.as_bytes())
        .map_err(io)?;
    w.file("etc/acpi/PWRF/00000080", 0o755, POWEROFF_SCRIPT.as_bytes())
        .map_err(io)?;
    w.file("etc/hostname", 0o644, b"kuvirt-guest\n")
        .map_err(io)?;
    add_dhcpcd(&mut w, Path::new(DHCPCD))?;

    let mut made = std::collections::BTreeSet::new();
    let mut order = String::new();
    for rel in modules {
        let mut prefix = String::from("lib/modules");
        for part in rel
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, d)| d)
        {
            prefix = format!("{prefix}/{part}");
            if made.insert(prefix.clone()) {
                w.dir(&prefix, 0o755).map_err(io)?;
            }
        }
        let src = modules_dir.join(rel);
        let data = std::fs::read(&src).map_err(|e| DemoError::io(&src, e))?;
        w.file(&format!("lib/modules/{rel}"), 0o644, &data)
            .map_err(io)?;
        order.push_str(rel);
        let args = module_args(rel);
        if !args.is_empty() {
            order.push(' ');
            order.push_str(args);
        }
        order.push('\n');
    }
    w.file("etc/modules.order", 0o644, order.as_bytes())
        .map_err(io)?;
    let mut gz = w.finish().map_err(io)?;
    gz.flush().map_err(io)?;
    gz.finish().map_err(io)
}

/// Puts dhcpcd, its libraries (at their host paths), config and hook into the image; without
/// dhcpcd on the host the guest reports `dhcp6 ... failed` when asked for DHCPv6.
fn add_dhcpcd<W: Write>(w: &mut CpioWriter<W>, dhcpcd: &Path) -> Result<(), DemoError> {
    let io = |e| DemoError::io(Path::new("initramfs"), e);
    if !dhcpcd.is_file() {
        tracing::warn!(path = %dhcpcd.display(), "no dhcpcd: the demo guest has no DHCPv6 client");
        return Ok(());
    }
    let out = std::process::Command::new("ldd")
        .arg(dhcpcd)
        .output()
        .map_err(|source| DemoError::Spawn {
            command: "ldd".into(),
            source,
        })?;
    if !out.status.success() {
        return Err(DemoError::Command {
            command: format!("ldd {}", dhcpcd.display()),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let mut files = vec![dhcpcd.to_path_buf()];
    files.extend(ldd_paths(&String::from_utf8_lossy(&out.stdout)));
    let mut made: std::collections::BTreeSet<String> =
        IMAGE_DIRS.iter().map(|d| (*d).to_owned()).collect();
    for path in &files {
        let Some(rel) = path.to_str().and_then(|p| p.strip_prefix('/')) else {
            continue;
        };
        // each parent directory the image lacks, outermost first
        let mut prefix = String::new();
        if let Some((dirs, _)) = rel.rsplit_once('/') {
            for part in dirs.split('/') {
                prefix = if prefix.is_empty() {
                    part.to_owned()
                } else {
                    format!("{prefix}/{part}")
                };
                if made.insert(prefix.clone()) {
                    w.dir(&prefix, 0o755).map_err(io)?;
                }
            }
        }
        // symlinks (ld-linux) are followed: the image gets the file itself
        let data = std::fs::read(path).map_err(|e| DemoError::io(path, e))?;
        w.file(rel, 0o755, &data).map_err(io)?;
    }
    w.file("etc/dhcpcd.conf", 0o644, DHCPCD_CONF.as_bytes())
        .map_err(io)?;
    w.file("etc/dhcpcd.hook", 0o755, DHCPCD_HOOK.as_bytes())
        .map_err(io)?;
    w.symlink("bin/dhcpcd", &format!("..{DHCPCD}"))
        .map_err(io)?;
    Ok(())
}

/// The absolute library paths in `ldd` output (`name => /path (addr)` and `/path (addr)`
/// lines; the vDSO and unresolved names are skipped).
pub fn ldd_paths(output: &str) -> Vec<std::path::PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/')
                .then(|| std::path::PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f00)\n\
                   \tlibfl.so.2 => not found\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f01)\n";
        assert_eq!(
            ldd_paths(out),
            vec![
                std::path::PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                std::path::PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }
}
