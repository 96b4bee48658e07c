//! The baseline: a bare `qemu-system-x86_64` boot of the same guest disk with the same machine
//! (q35, 1 vCPU, the memory the VM asks for, virtio disk and NIC), timed from spawn until QMP
//! answers and says the vCPUs run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kuvirt_launcher::qmp::Qmp;

/// The guest memory both sides give the VM.
pub const MEMORY_MIB: u32 = 128;

/// A running bare QEMU, killed when dropped.
pub struct Bare {
    child: Child,
}

impl Drop for Bare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The argv of a bare QEMU booting `disk` (copy-on-write: the disk is never written).
pub fn argv(disk: &Path, dir: &Path, accel: &str) -> Vec<String> {
    let drive = format!(
        "file={},if=none,id=disk0,format=qcow2,snapshot=on",
        disk.display()
    );
    let disk_args = ["-drive", &drive, "-device", "virtio-blk-pci,drive=disk0"];
    machine_argv(dir, accel, MEMORY_MIB, &disk_args)
}

/// The machine of every bare QEMU in the harness, around the disk's arguments `disk_args`:
/// q35, 1 vCPU, `memory_mib`, a virtio NIC on user networking, QMP and the serial console in
/// `dir`.
pub fn machine_argv(dir: &Path, accel: &str, memory_mib: u32, disk_args: &[&str]) -> Vec<String> {
    let qmp = format!(
        "socket,id=mon,path={},server=on,wait=off",
        dir.join("qmp.sock").display()
    );
    let serial = format!("file:{}", dir.join("serial.log").display());
    let memory = format!("{memory_mib}M");
    let head = [
        "-name",
        "guest=bare,debug-threads=on",
        "-nodefaults",
        "-no-user-config",
        "-machine",
        "q35,smm=off",
        "-accel",
        accel,
        "-cpu",
        "max",
        "-smp",
        "1",
        "-m",
        &memory,
    ];
    let tail = [
        "-netdev",
        "user,id=net0",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-chardev",
        &qmp,
        "-mon",
        "chardev=mon,mode=control",
        "-serial",
        &serial,
        "-display",
        "none",
    ];
    head.iter()
        .chain(disk_args)
        .chain(tail.iter())
        .map(|s| s.to_string())
        .collect()
}

/// Starts QEMU and returns once its vCPUs run, with the time that took.
pub async fn start(disk: &Path, dir: &Path, accel: &str) -> Result<(Bare, Duration)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let t0 = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(argv(disk, dir, accel))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let bare = Bare { child };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let qmp = Qmp::connect(&dir.join("qmp.sock"), deadline)
        .await
        .context("bare QEMU's QMP")?;
    loop {
        if qmp.query_status().await?.running {
            return Ok((bare, t0.elapsed()));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("bare QEMU's vCPUs did not start");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_boots_the_disk_copy_on_write() {
        let a = argv(Path::new("/g/disk.qcow2"), Path::new("/r"), "tcg").join(" ");
        assert!(a.contains("file=/g/disk.qcow2,if=none,id=disk0,format=qcow2,snapshot=on"));
        assert!(a.contains("-accel tcg"));
        assert!(a.contains("path=/r/qmp.sock,server=on,wait=off"));
        assert!(a.contains(&format!("-m {MEMORY_MIB}M")));
    }
}
