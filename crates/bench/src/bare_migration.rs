//! The baseline of the migration scenario: the demo guest on a qcow2 overlay in a bare QEMU,
//! moved to a second bare QEMU on this host the way kuvirt's launchers move a containerDisk VM
//! (the target waits with `-incoming defer` and exports its own fresh overlay over NBD, the
//! source mirrors its overlay into it, then sends memory over a unix socket with the launcher's
//! default parameters), driven over QMP with events instead of polling.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kuvirt_launcher::qmp::{Qmp, QmpEvent};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The guest memory of both sides of the migration scenario.
pub const MEMORY_MIB: u32 = 256;

/// The overlay's format node, named as kuvirt's launcher names its first disk.
const NODE: &str = "drive-d0";
/// "Unlimited" bandwidth, as kuvirt's launcher asks for it (QEMU's default is 128 MiB/s).
const UNLIMITED: u64 = 1 << 40;
/// How long one step may take.
const STEP: Duration = Duration::from_secs(120);

/// One bare QEMU of the pair, killed when dropped.
pub struct Side {
    child: Child,
    pub dir: PathBuf,
    pub qmp: Qmp,
}

impl Drop for Side {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Side {
    /// Its serial console so far.
    pub fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }
}

/// The argv of a bare QEMU running `overlay` (the machine of the other scenarios' bare QEMU,
/// with the migration scenario's memory and the disk as `-blockdev` nodes, as kuvirt has it).
pub fn argv(overlay: &Path, dir: &Path, accel: &str) -> Vec<String> {
    let file = json!({"driver": "file", "filename": overlay.display().to_string(),
                      "node-name": "file-d0", "discard": "unmap"})
    .to_string();
    let fmt = json!({"driver": "qcow2", "file": "file-d0", "node-name": NODE, "discard": "unmap"})
        .to_string();
    let device = format!("virtio-blk-pci,drive={NODE},id=disk0");
    let disk_args = ["-blockdev", &file, "-blockdev", &fmt, "-device", &device];
    crate::qemu::machine_argv(dir, accel, MEMORY_MIB, &disk_args)
}

/// A fresh dir with an empty overlay on `base`, then QEMU on it: running, or (`incoming`)
/// stopped and waiting for a migration.
async fn spawn(base: &Path, dir: &Path, accel: &str, incoming: bool) -> Result<Side> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let overlay = dir.join("disk.qcow2");
    crate::plane::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(&overlay),
    )?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(argv(&overlay, dir, accel));
    if incoming {
        cmd.args(["-S", "-incoming", "defer"]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("qemu.log"))?)
        .spawn()
        .context("starting qemu-system-x86_64")?;
    // The child is owned from here: a failed connect kills it.
    let mut guard = Some(child);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let qmp = match Qmp::connect(&dir.join("qmp.sock"), deadline).await {
        Ok(q) => q,
        Err(e) => {
            if let Some(mut c) = guard.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(e).context("bare QEMU's QMP");
        }
    };
    let child = guard.take().context("the QEMU child")?;
    Ok(Side {
        child,
        dir: dir.to_path_buf(),
        qmp,
    })
}

/// Boots the guest on an overlay of `base` in `dir`; returns once it is running (not booted).
pub async fn boot(base: &Path, dir: &Path, accel: &str) -> Result<Side> {
    spawn(base, dir, accel, false).await
}

/// What one bare migration took.
#[derive(Clone, Copy, Debug)]
pub struct Moved {
    /// From the start (the target's overlay is made) until the guest runs on the target.
    pub total_ms: f64,
    /// From the `migrate` command until the guest runs on the target.
    pub migrate_ms: f64,
    /// Until the overlay's mirror was in step.
    pub mirrored_ms: f64,
    /// QEMU's downtime (the source's `query-migrate`).
    pub downtime_ms: f64,
}

/// Waits for an event that `f` decides on (Some(Ok) done, Some(Err) failed).
async fn wait_event(
    rx: &mut broadcast::Receiver<QmpEvent>,
    what: &str,
    mut f: impl FnMut(&QmpEvent) -> Option<Result<()>>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => bail!("{what}: not within {STEP:?}"),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(broadcast::error::RecvError::Closed)) => bail!("{what}: QEMU went away"),
            Ok(Ok(ev)) => ev,
        };
        if let Some(r) = f(&ev) {
            return r;
        }
    }
}

/// Moves the guest of `src` to a new QEMU in `to` (started here), as kuvirt's launchers do it;
/// returns the new side (running the guest) and the times. `src` stays, paused.
pub async fn migrate(src: &Side, base: &Path, to: &Path, accel: &str) -> Result<(Side, Moved)> {
    let t0 = Instant::now();
    let dst = spawn(base, to, accel, true).await?;
    // The target: its overlay served over NBD for the mirror, the memory stream on a socket.
    let nbd = to.join("nbd.sock");
    let mig = to.join("migration.sock");
    dst.qmp
        .execute(
            "nbd-server-start",
            Some(json!({"addr": {"type": "unix", "data": {"path": nbd}}})),
        )
        .await?;
    dst.qmp
        .execute(
            "block-export-add",
            Some(
                json!({"type": "nbd", "id": format!("exp-{NODE}"), "node-name": NODE,
                        "name": NODE, "writable": true}),
            ),
        )
        .await?;
    dst.qmp
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "events", "state": true}]})),
        )
        .await?;
    let mut dst_events = dst.qmp.events();
    dst.qmp
        .execute(
            "migrate-incoming",
            Some(json!({"uri": format!("unix:{}", mig.display())})),
        )
        .await?;
    // The source: the overlay first, until the mirror is in step.
    let mut src_events = src.qmp.events();
    let job = format!("mirror-{NODE}");
    src.qmp
        .execute(
            "blockdev-add",
            Some(json!({"driver": "nbd", "node-name": format!("mig-{NODE}"),
                        "server": {"type": "unix", "path": nbd}, "export": NODE})),
        )
        .await?;
    src.qmp
        .execute(
            "blockdev-mirror",
            Some(
                json!({"job-id": job, "device": NODE, "target": format!("mig-{NODE}"),
                        "sync": "top", "copy-mode": "write-blocking", "speed": UNLIMITED,
                        "auto-finalize": true, "auto-dismiss": true}),
            ),
        )
        .await?;
    wait_event(&mut src_events, "the overlay's mirror in step", |ev| {
        let device = ev.data.get("device").and_then(Value::as_str);
        if device != Some(job.as_str()) {
            return None;
        }
        match ev.event.as_str() {
            "BLOCK_JOB_READY" => Some(Ok(())),
            "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_ERROR" => Some(Err(
                anyhow::anyhow!("the mirror ended before it was in step: {}", ev.data),
            )),
            _ => None,
        }
    })
    .await?;
    let mirrored = t0.elapsed();
    // Then memory, with the launcher's default parameters.
    src.qmp
        .execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [
                {"capability": "events", "state": true},
                {"capability": "auto-converge", "state": false},
            ]})),
        )
        .await?;
    src.qmp
        .execute(
            "migrate-set-parameters",
            Some(json!({"max-bandwidth": UNLIMITED})),
        )
        .await?;
    let t_migrate = Instant::now();
    src.qmp
        .execute(
            "migrate",
            Some(json!({"uri": format!("unix:{}", mig.display())})),
        )
        .await?;
    wait_event(&mut dst_events, "the state on the target", |ev| {
        if ev.event != "MIGRATION" {
            return None;
        }
        match ev.data.get("status").and_then(Value::as_str) {
            Some("completed") => Some(Ok(())),
            Some("failed") => Some(Err(anyhow::anyhow!("the incoming migration failed"))),
            _ => None,
        }
    })
    .await?;
    dst.qmp.execute("nbd-server-stop", None).await?;
    dst.qmp.cont().await?;
    let end = Instant::now();
    if !dst.qmp.query_status().await?.running {
        bail!("the target's guest does not run after the migration");
    }
    let deadline = Instant::now() + STEP;
    let downtime = loop {
        let q = src.qmp.execute("query-migrate", None).await?;
        match q.get("status").and_then(Value::as_str) {
            Some("completed") => break q.get("downtime").and_then(Value::as_f64),
            Some("failed" | "cancelled") => bail!("the source says the migration failed: {q}"),
            _ if Instant::now() >= deadline => bail!("the source never completed: {q}"),
            _ => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let ms = crate::scenarios::ms;
    Ok((
        dst,
        Moved {
            total_ms: ms(end - t0),
            migrate_ms: ms(end - t_migrate),
            mirrored_ms: ms(mirrored),
            downtime_ms: downtime.unwrap_or(f64::NAN),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_names_the_disk_as_kuvirt_does() {
        let a = argv(Path::new("/d/disk.qcow2"), Path::new("/r"), "tcg").join(" ");
        assert!(a.contains(r#""filename":"/d/disk.qcow2""#), "{a}");
        assert!(a.contains(r#""node-name":"drive-d0""#), "{a}");
        assert!(a.contains("virtio-blk-pci,drive=drive-d0"), "{a}");
        assert!(a.contains("-m 256M"));
        assert!(a.contains("-accel tcg"));
        assert!(!a.contains("-incoming"));
    }
}
