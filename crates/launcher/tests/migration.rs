//! Live migration between two real QEMUs on this host, through the launcher's own calls: the
//! demo guest on a qcow2 overlay moves with its memory and the overlay's writes (NBD mirror),
//! keeps counting its heartbeat on the target, and the source ends only when confirmed; a
//! cancelled migration leaves the guest running on the source and the target gone.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kuvirt_api::{VirtualMachineInstance, default_vmi};
use kuvirt_images::demo::{self, DemoOptions};
use kuvirt_launcher::convert::{HostConfig, Resolved, ResolvedDisk, convert};
use kuvirt_launcher::machine::{Accel, ImageFormat, NetBackend};
use kuvirt_launcher::migration::{MigrateOptions, MigrationPhase};
use kuvirt_launcher::vm::{ExitReason, StartOptions, Vm, VmState};

const VMI: &str = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: mover, namespace: default}
spec:
  domain:
    devices:
      disks: [{name: root, disk: {bus: virtio}}]
    resources: {requests: {memory: 256Mi}}
  volumes: [{name: root, containerDisk: {image: demo}}]
"#;

fn side(
    root: &Path,
    name: &str,
    base: &Path,
    incoming: bool,
) -> (PathBuf, kuvirt_launcher::machine::Machine) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("qemu")).unwrap();
    let overlay = dir.join("root.qcow2");
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(&overlay)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut vmi: VirtualMachineInstance = serde_saphyr::from_str(VMI).unwrap();
    default_vmi(&mut vmi);
    let mut r = Resolved::default();
    r.disks.insert(
        "root".into(),
        ResolvedDisk {
            path: overlay,
            format: ImageFormat::Qcow2,
            direct_io: false,
            owned: true,
        },
    );
    for i in &vmi.spec.domain.devices.interfaces {
        r.nics
            .insert(i.name.clone(), NetBackend::User { hostfwd: vec![] });
    }
    let host = HostConfig {
        accel: Accel::Tcg,
        ovmf_dir: PathBuf::from("/usr/share/OVMF"),
        run_dir: dir.join("qemu"),
        sandbox: true,
        smbios_product: "None".into(),
    };
    let mut m = convert(&vmi, &r, &host).unwrap();
    m.incoming = incoming;
    (dir, m)
}

async fn start(dir: &Path, m: &kuvirt_launcher::machine::Machine) -> Arc<Vm> {
    let vm = Vm::start(
        m,
        &StartOptions {
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            log_dir: dir.to_path_buf(),
            console_socket: None,
            paused: false,
            run_as: None,
            start_timeout: Duration::from_secs(30),
        },
    )
    .await
    .unwrap();
    Arc::new(vm)
}

fn serial(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default()
}

async fn until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn last_heartbeat(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("kuvirt-guest: heartbeat "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// `qemu-io` on an image no QEMU has open.
fn qemu_io(image: &Path, cmd: &str) -> String {
    let out = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(image)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_moves_with_its_memory_and_disk_writes() {
    let root = tempfile::tempdir().unwrap();
    let art = demo::build(&DemoOptions::new(root.path().join("demo"))).unwrap();
    let (src_dir, src_m) = side(root.path(), "src", &art.disk_qcow2, false);
    let (dst_dir, dst_m) = side(root.path(), "dst", &art.disk_qcow2, true);
    // Data in the source's overlay only (in the FAT disk's free tail): the target can have it through the disk mirror alone.
    let wrote = qemu_io(&src_dir.join("root.qcow2"), "write -P 0x5a 26496k 64k");
    assert!(wrote.contains("wrote 65536/65536"), "{wrote}");
    let src = start(&src_dir, &src_m).await;
    until(
        "the guest counts on the source",
        Duration::from_secs(90),
        || (last_heartbeat(&serial(&src_dir)) >= 2).then_some(()),
    )
    .await;

    let dst = start(&dst_dir, &dst_m).await;
    assert_eq!(dst.state(), VmState::Incoming);
    let incoming = dst.prepare_incoming(false).await.unwrap();
    assert!(incoming.block_socket.is_some(), "the overlay is served");
    src.migrate(incoming, MigrateOptions::default())
        .await
        .unwrap();
    let info = until("the migration completes", Duration::from_secs(120), || {
        src.migration_info().filter(|i| {
            assert_ne!(i.phase, MigrationPhase::Failed, "{i:?}");
            i.phase == MigrationPhase::Completed
        })
    })
    .await;
    assert!(
        info.memory_total > 0 && info.downtime_ms.is_some(),
        "{info:?}"
    );
    assert_eq!(src.state(), VmState::Handover);
    until("the target runs the guest", Duration::from_secs(30), || {
        (dst.state() == VmState::Running).then_some(())
    })
    .await;
    let before = last_heartbeat(&serial(&src_dir));
    until(
        "the guest counts on in the target",
        Duration::from_secs(60),
        || (last_heartbeat(&serial(&dst_dir)) > before + 1).then_some(()),
    )
    .await;
    assert!(
        !serial(&dst_dir).contains("kuvirt-guest: booted"),
        "the guest booted again: {}",
        serial(&dst_dir)
    );
    src.confirm_migration().await.unwrap();
    assert_eq!(src.wait().await, ExitReason::Migrated);
    assert_eq!(dst.state(), VmState::Running);
    dst.kill().await;
    let read = qemu_io(&dst_dir.join("root.qcow2"), "read -P 0x5a 26496k 64k");
    assert!(read.contains("read 65536/65536"), "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_leaves_the_guest_on_the_source() {
    let root = tempfile::tempdir().unwrap();
    let art = demo::build(&DemoOptions::new(root.path().join("demo"))).unwrap();
    let (src_dir, src_m) = side(root.path(), "src", &art.disk_qcow2, false);
    let (dst_dir, dst_m) = side(root.path(), "dst", &art.disk_qcow2, true);
    let src = start(&src_dir, &src_m).await;
    until(
        "the guest counts on the source",
        Duration::from_secs(90),
        || (last_heartbeat(&serial(&src_dir)) >= 1).then_some(()),
    )
    .await;
    let dst = start(&dst_dir, &dst_m).await;
    let incoming = dst.prepare_incoming(false).await.unwrap();
    // 1 MiB/s: 256 MiB of memory cannot be through before the cancel.
    let slow = MigrateOptions {
        bandwidth: 1 << 20,
        ..Default::default()
    };
    src.migrate(incoming, slow).await.unwrap();
    until("memory is being sent", Duration::from_secs(60), || {
        src.migration_info()
            .filter(|i| i.phase == MigrationPhase::Copying && i.transferred > 0)
    })
    .await;
    src.cancel_migration().await.unwrap();
    let info = until(
        "the migration is cancelled",
        Duration::from_secs(30),
        || {
            src.migration_info()
                .filter(|i| i.phase == MigrationPhase::Failed)
        },
    )
    .await;
    assert!(info.aborted, "{info:?}");
    assert_eq!(
        info.failure.as_deref(),
        Some("Live migration has been aborted")
    );
    assert_eq!(src.state(), VmState::Running);
    let before = last_heartbeat(&serial(&src_dir));
    until(
        "the guest counts on on the source",
        Duration::from_secs(60),
        || (last_heartbeat(&serial(&src_dir)) > before + 1).then_some(()),
    )
    .await;
    // The target gave up on its own: its incoming stream broke.
    let ended = tokio::time::timeout(Duration::from_secs(30), dst.wait())
        .await
        .expect("the target's QEMU ended");
    assert!(matches!(ended, ExitReason::Crashed { .. }), "{ended:?}");
    assert!(
        !serial(&dst_dir).contains("heartbeat"),
        "the target never ran the guest"
    );
    src.kill().await;
}
