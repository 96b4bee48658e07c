//! The demo guest's BIOS-bootable disk: a FAT image with syslinux, built with mtools (no loop devices).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DemoError;

/// Kernel command line for booting the demo guest (kernelBoot and the syslinux disk):
/// console on ttyS0, kernel messages limited to emergencies so markers stand out,
/// reboot at once if `/init` dies.
pub const KERNEL_CMDLINE: &str = "console=ttyS0 loglevel=1 panic=-1";

/// Where Debian's syslinux-common keeps the BIOS `ldlinux.c32`.
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// The `syslinux.cfg` written to the disk.
pub fn syslinux_cfg() -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT kuvirt\nPROMPT 0\nTIMEOUT 0\n\
         LABEL kuvirt\n  LINUX /vmlinuz\n  INITRD /initrd.img\n  APPEND {KERNEL_CMDLINE}\n"
    )
}

/// Writes `out_qcow2` from a kernel and an initrd.
pub fn build(kernel: &Path, initrd: &Path, out_qcow2: &Path) -> Result<(), DemoError> {
    let dir = out_qcow2.parent().unwrap_or(Path::new("."));
    let raw = dir.join(".disk.raw.tmp");
    let cfg = dir.join(".syslinux.cfg.tmp");
    let result = build_raw(kernel, initrd, &raw, &cfg).and_then(|()| {
        run(Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(out_qcow2))
    });
    let _ = std::fs::remove_file(&raw);
    let _ = std::fs::remove_file(&cfg);
    result
}

fn build_raw(kernel: &Path, initrd: &Path, raw: &Path, cfg: &Path) -> Result<(), DemoError> {
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| DemoError::io(p, e))
    };
    let payload = size(kernel)? + size(initrd)?;
    // FAT overhead + syslinux + some slack, rounded to whole MiB.
    let kib = (payload / 1024 * 5 / 4 + 4096).div_ceil(1024) * 1024;
    let _ = std::fs::remove_file(raw);
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "KUVIRT"])
        .arg(raw)
        .arg(kib.to_string()))?;
    std::fs::write(cfg, syslinux_cfg()).map_err(|e| DemoError::io(cfg, e))?;
    run(Command::new("syslinux").arg("--install").arg(raw))?;
    let mut copies: Vec<(PathBuf, &str)> = vec![
        (kernel.to_path_buf(), "::/vmlinuz"),
        (initrd.to_path_buf(), "::/initrd.img"),
        (cfg.to_path_buf(), "::/syslinux.cfg"),
    ];
    if Path::new(LDLINUX_C32).exists() {
        copies.push((PathBuf::from(LDLINUX_C32), "::/ldlinux.c32"));
    }
    for (src, dst) in copies {
        run(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(raw)
            .arg(&src)
            .arg(dst))?;
    }
    Ok(())
}

/// Runs a command to completion, turning failure into an error with its stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<(), DemoError> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| DemoError::Spawn {
        command: name.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(DemoError::Command {
        command: name,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}
