//! Disk preparation with the real qemu-img: overlays keep the base untouched, empty disks are
//! sparse qcow2, image_info works while the image is locked, hostDisks are raw.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use kuvirt_images::disk::{
    DiskError, DiskFormat, HostDiskType, create_empty, create_overlay, image_info,
    prepare_host_disk,
};

const MIB: u64 = 1 << 20;

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sha(p: &Path) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(fs::read(p).unwrap()).to_vec()
}

#[test]
fn overlay_over_qcow2_and_raw_leaves_base_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (fmt, name) in [("qcow2", "base.qcow2"), ("raw", "base.img")] {
        let base = dir.path().join(name);
        qemu_img(&["create", "-q", "-f", fmt, base.to_str().unwrap(), "32M"]);
        let before = sha(&base);
        let overlay = dir.path().join(format!("{name}.overlay.qcow2"));
        create_overlay(&base, &overlay).unwrap();

        let info = image_info(&overlay).unwrap();
        assert_eq!(info.format, DiskFormat::Qcow2);
        assert_eq!(info.virtual_size, 32 * MIB);
        assert_eq!(info.backing.as_deref(), Some(base.as_path()));
        assert_eq!(
            info.backing_format.as_ref().map(DiskFormat::as_str),
            Some(fmt)
        );

        // a guest write goes to the overlay only
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0xab 0 64k"])
            .arg(&overlay)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha(&base), before, "{fmt} base changed");
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "read -P 0xab 0 64k"])
            .arg(&overlay)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("read 65536/65536"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn overlay_with_relative_base_records_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), "1M"]);
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(&base, &cwd);
    let overlay = dir.path().join("sub").join("o.qcow2");
    fs::create_dir_all(overlay.parent().unwrap()).unwrap();
    create_overlay(&rel, &overlay).unwrap();
    assert_eq!(image_info(&overlay).unwrap().backing.unwrap(), base);
}

/// `target` relative to `from` (both absolute) as ../../x.
fn pathdiff(target: &Path, from: &Path) -> std::path::PathBuf {
    let mut up = std::path::PathBuf::new();
    for _ in from.components().skip(1) {
        up.push("..");
    }
    up.join(target.strip_prefix("/").unwrap())
}

#[test]
fn overlay_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.qcow2");
    let err = create_overlay(&missing, &dir.path().join("o.qcow2")).unwrap_err();
    assert!(matches!(err, DiskError::QemuImg { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("qemu-img info {}: ", missing.display())),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

#[test]
fn bases_with_backing_files_or_odd_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("b.qcow2");
    create_empty(&base, MIB).unwrap();
    let chained = dir.path().join("chained.qcow2");
    create_overlay(&base, &chained).unwrap();
    let err = create_overlay(&chained, &dir.path().join("o.qcow2")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "disk image {}: has a backing file {}",
            chained.display(),
            base.display()
        )
    );
    let vmdk = dir.path().join("x.vmdk");
    qemu_img(&["create", "-q", "-f", "vmdk", vmdk.to_str().unwrap(), "1M"]);
    let err = create_overlay(&vmdk, &dir.path().join("o2.qcow2")).unwrap_err();
    assert!(matches!(err, DiskError::UnsafeBase { .. }), "{err}");
    assert!(!dir.path().join("o.qcow2").exists());
}

#[test]
fn empty_disk_is_sparse_qcow2() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.qcow2");
    create_empty(&p, 10 * 1024 * MIB).unwrap();
    let info = image_info(&p).unwrap();
    assert_eq!(info.format, DiskFormat::Qcow2);
    assert_eq!(info.virtual_size, 10 * 1024 * MIB);
    assert!(fs::metadata(&p).unwrap().len() < MIB);
    assert!(info.backing.is_none());
}

#[test]
fn info_works_while_qemu_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("locked.qcow2");
    create_empty(&p, 8 * MIB).unwrap();
    // a paused QEMU holds the image's write lock
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-S",
            "-display",
            "none",
            "-nodefaults",
            "-m",
            "32",
        ])
        .arg("-drive")
        .arg(format!("file={},format=qcow2,if=virtio", p.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("qemu.err")).unwrap())
        .spawn()
        .unwrap();
    // wait until the lock is taken: plain `qemu-img info` (without -U) starts failing
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = Command::new("qemu-img")
            .args(["info"])
            .arg(&p)
            .output()
            .unwrap();
        if !out.status.success() {
            break;
        }
        if let Some(st) = qemu.try_wait().unwrap() {
            panic!(
                "qemu exited ({st}) before locking the image: {}",
                std::fs::read_to_string(dir.path().join("qemu.err")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "qemu never locked the image"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let info = image_info(&p);
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert_eq!(info.unwrap().virtual_size, 8 * MIB);
}

#[test]
fn host_disks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vm1/disk.img");
    let err = prepare_host_disk(&p, HostDiskType::Disk, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("host disk {}: does not exist", p.display())
    );
    let err = prepare_host_disk(&p, HostDiskType::DiskOrCreate, None).unwrap_err();
    assert!(matches!(err, DiskError::NoCapacity(_)));

    let fmt = prepare_host_disk(&p, HostDiskType::DiskOrCreate, Some(64 * MIB)).unwrap();
    assert_eq!(fmt, DiskFormat::Raw);
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), 64 * MIB);
    assert!(meta.blocks() * 512 < MIB, "created sparse");
    assert_eq!(image_info(&p).unwrap().format, DiskFormat::Raw);

    // existing: kept as it is, for both types
    let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    std::io::Write::write_all(&mut f, b"guest data").unwrap();
    drop(f);
    for kind in [HostDiskType::Disk, HostDiskType::DiskOrCreate] {
        assert_eq!(
            prepare_host_disk(&p, kind, Some(MIB)).unwrap(),
            DiskFormat::Raw
        );
    }
    let mut buf = [0u8; 10];
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(4096)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"guest data");
    assert_eq!(fs::metadata(&p).unwrap().len(), 64 * MIB);

    let err = prepare_host_disk(dir.path(), HostDiskType::Disk, None).unwrap_err();
    assert!(matches!(err, DiskError::NotAFile(_)));
}

#[test]
fn bases_with_external_data_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("host-file");
    let evil = dir.path().join("evil.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={},data_file_raw=on", data.display()),
        evil.to_str().unwrap(),
        "1M",
    ]);
    let overlay = dir.path().join("o.qcow2");
    let err = create_overlay(&evil, &overlay).unwrap_err();
    assert!(matches!(err, DiskError::UnsafeBase { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "disk image {}: qcow2 has an external data file",
            evil.display()
        )
    );
    assert!(!overlay.exists());

    // the header is read before qemu-img runs: with the data file gone, qemu-img info would
    // fail to open it, but the refusal is ours
    fs::remove_file(&data).unwrap();
    let err = create_overlay(&evil, &overlay).unwrap_err();
    assert!(matches!(err, DiskError::UnsafeBase { .. }), "{err}");

    // an ordinary qcow2 v3 and a v2 still pass the header check
    for compat in ["1.1", "0.10"] {
        let ok = dir.path().join(format!("ok-{compat}.qcow2"));
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("compat={compat}"),
            ok.to_str().unwrap(),
            "1M",
        ]);
        create_overlay(&ok, &dir.path().join(format!("o-{compat}.qcow2"))).unwrap();
    }
}
