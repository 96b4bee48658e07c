//! The demo/test guest: Debian's cloud kernel + a busybox initramfs we write ourselves, and a
//! syslinux disk, so tests and demos boot a real guest that reports what it sees on ttyS0.
//!
//! Markers the guest prints (one a line, on ttyS0):
//! `kuvirt-guest: booted`, `hostname=NAME`, `userdata-sha256=HEX`, `ssh-key=KEY`,
//! `cloudinit=nocloud|configdrive|none`, `dhcp iface=IF ip=A/N gw=G dns=D[,D] [boot=..] [tftp=..]
//! [siaddr=..] [ntp=..] [hostname=..] [mtu=..] mac=XX:XX:XX:XX:XX:XX` (the interface's MAC, lower-case) or
//! `dhcp iface=IF failed`, with `kuvirt.dhcp6=1` on the kernel command line also
//! `dhcp6 iface=IF ip=ADDR/PREFIX gw=GW` (dhcpcd's DHCPv6 address, the on-link prefix and the
//! default router, a link-local address, from router advertisements) or `dhcp6 iface=IF failed`
//! (after up to 15 s; needs dhcpcd-base on the build host), `metadata-hostname=NAME` or
//! `metadata failed` (with `kuvirt.metadata=1` on the kernel command line, which reads
//! `http://169.254.169.254/openstack/latest/meta_data.json`; `kuvirt.metadata_url=BASE` reads
//! another base URL), then `metadata-ssh-key=KEY` for each of its `public_keys` (read again
//! every 3 heartbeats: keys added later are printed when they appear), `fetch URL -> LINE` or
//! `fetch URL failed` (for each `kuvirt.fetch=URL`: the first line of one HTTP GET), `ready`,
//! `heartbeat N` every second, and `poweroff` when the ACPI power
//! button is pressed (then it powers off). It serves `kuvirt-guest HOSTNAME` on HTTP port 80.

mod bootdisk;
pub mod cpio;
pub mod initramfs;
pub mod modules;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

pub use bootdisk::{KERNEL_CMDLINE, syslinux_cfg};

/// Where the host's kernels, modules and busybox come from.
const BOOT_DIR: &str = "/boot";
const MODULES_DIR: &str = "/lib/modules";
const BUSYBOX: &str = "/bin/busybox";
const KERNEL_FLAVOUR: &str = "-cloud-amd64";

/// What to build and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOptions {
    /// Directory receiving `vmlinuz`, `initrd.img` and `disk.qcow2` (created if missing).
    pub out_dir: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`; default: the newest `*-cloud-amd64`
    /// under /lib/modules that also has /boot/vmlinuz-RELEASE.
    pub kernel_version: Option<String>,
}

impl DemoOptions {
    /// Defaults for `out_dir`.
    pub fn new(out_dir: impl Into<PathBuf>) -> Self {
        Self {
            out_dir: out_dir.into(),
            kernel_version: None,
        }
    }
}

/// The files `build` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoArtifacts {
    /// `OUT/vmlinuz`, for kernelBoot.
    pub kernel: PathBuf,
    /// `OUT/initrd.img` (gzip'd newc cpio), for kernelBoot.
    pub initrd: PathBuf,
    /// `OUT/disk.qcow2`, BIOS-bootable (SeaBIOS) from virtio-blk, SATA or SCSI.
    pub disk_qcow2: PathBuf,
    /// The kernel release used.
    pub kernel_version: String,
}

/// Why the demo guest could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No usable kernel was found.
    #[error("no kernel {0}: need /lib/modules/VER and /boot/vmlinuz-VER (linux-image-cloud-amd64)")]
    NoKernel(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// modules.dep could not be parsed.
    #[error(transparent)]
    ModulesDep(#[from] modules::ParseError),
    /// A module the guest needs is neither a module nor built in.
    #[error("kernel module {0} not found")]
    MissingModule(String),
    /// A module is compressed; busybox insmod reads plain `.ko` only.
    #[error("compressed kernel module {0} not supported")]
    CompressedModule(String),
    /// A tool could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The program.
        command: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The program.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

impl DemoError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Builds the kernel, initramfs and bootable qcow2 disk into `opts.out_dir`.
pub fn build(opts: &DemoOptions) -> Result<DemoArtifacts, DemoError> {
    let version = match &opts.kernel_version {
        Some(v) => {
            if !Path::new(MODULES_DIR).join(v).is_dir() || !vmlinuz(v).is_file() {
                return Err(DemoError::NoKernel(v.clone()));
            }
            v.clone()
        }
        None => newest_kernel(Path::new(MODULES_DIR), Path::new(BOOT_DIR))?,
    };
    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(|e| DemoError::io(out, e))?;

    let kernel = out.join("vmlinuz");
    let src = vmlinuz(&version);
    std::fs::copy(&src, &kernel).map_err(|e| DemoError::io(&src, e))?;

    let modules_dir = Path::new(MODULES_DIR).join(&version);
    let mods = initramfs::select_modules(&modules_dir)?;
    let image = initramfs::build(Path::new(BUSYBOX), &modules_dir, &mods)?;
    let initrd = out.join("initrd.img");
    std::fs::write(&initrd, image).map_err(|e| DemoError::io(&initrd, e))?;

    let disk_qcow2 = out.join("disk.qcow2");
    bootdisk::build(&kernel, &initrd, &disk_qcow2)?;
    Ok(DemoArtifacts {
        kernel,
        initrd,
        disk_qcow2,
        kernel_version: version,
    })
}

fn vmlinuz(version: &str) -> PathBuf {
    Path::new(BOOT_DIR).join(format!("vmlinuz-{version}"))
}

/// The newest `*-cloud-amd64` release with both modules and a kernel image.
pub fn newest_kernel(modules_root: &Path, boot_dir: &Path) -> Result<String, DemoError> {
    let entries = std::fs::read_dir(modules_root).map_err(|e| DemoError::io(modules_root, e))?;
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|v| v.ends_with(KERNEL_FLAVOUR))
        .filter(|v| boot_dir.join(format!("vmlinuz-{v}")).is_file())
        .max_by(|a, b| compare_versions(a, b))
        .ok_or_else(|| DemoError::NoKernel(format!("*{KERNEL_FLAVOUR}")))
}

/// Compares kernel releases by their numeric parts (`6.1.0-56` > `6.1.0-9`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let nums = |s: &str| -> Vec<u64> {
        s.split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    nums(a).cmp(&nums(b)).then_with(|| a.cmp(b))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(
            compare_versions("6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.10.0-1-cloud-amd64", "6.9.0-30-cloud-amd64"),
            Ordering::Greater
        );
    }

    #[test]
    fn newest_kernel_needs_both_modules_and_vmlinuz() {
        let root = tempfile::tempdir().unwrap();
        let (m, b) = (root.path().join("modules"), root.path().join("boot"));
        for v in [
            "6.1.0-9-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "6.1.0-60-cloud-amd64",
        ] {
            std::fs::create_dir_all(m.join(v)).unwrap();
        }
        std::fs::create_dir_all(m.join("6.18.0-other")).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for v in [
            "6.1.0-9-cloud-amd64",
            "6.1.0-56-cloud-amd64",
            "6.18.0-other",
        ] {
            std::fs::write(b.join(format!("vmlinuz-{v}")), b"").unwrap();
        }
        assert_eq!(newest_kernel(&m, &b).unwrap(), "6.1.0-56-cloud-amd64");
        std::fs::remove_file(b.join("vmlinuz-6.1.0-56-cloud-amd64")).unwrap();
        std::fs::remove_file(b.join("vmlinuz-6.1.0-9-cloud-amd64")).unwrap();
        assert!(matches!(newest_kernel(&m, &b), Err(DemoError::NoKernel(_))));
    }

    #[test]
    fn syslinux_cfg_uses_the_serial_console() {
        let cfg = syslinux_cfg();
        assert!(cfg.starts_with("SERIAL 0 115200\n"));
        assert!(cfg.contains("APPEND console=ttyS0"));
    }
}
