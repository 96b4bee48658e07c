//! Boots the demo guest under real QEMU (TCG) and checks what it reports on ttyS0.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use kuvirt_images::cloudinit::{self, CloudInitData};
use kuvirt_images::demo::{self, DemoArtifacts, DemoOptions, KERNEL_CMDLINE};
use sha2::{Digest, Sha256};

const BOOT: Duration = Duration::from_secs(60);

/// Builds the guest into a fresh directory for one test.
fn build() -> (tempfile::TempDir, DemoArtifacts) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let art = demo::build(&DemoOptions::new(dir.path())).unwrap();
    eprintln!("demo build took {:?}", started.elapsed());
    (dir, art)
}

/// A running QEMU with its serial console collected line by line.
struct Guest {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    qmp: PathBuf,
}

impl Guest {
    fn start(dir: &Path, machine: &str, args: &[&str]) -> Guest {
        let qmp = dir.join("qmp.sock");
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-accel", "tcg", "-machine", machine, "-m", "256", "-smp", "1",
            ])
            .args([
                "-nodefaults",
                "-display",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).trim().to_string();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Guest {
            child,
            lines: rx,
            seen: Vec::new(),
            qmp,
        }
    }

    /// Waits for a console line containing `pat`; returns it.
    fn expect(&mut self, pat: &str) -> String {
        let deadline = Instant::now() + BOOT;
        if let Some(l) = self.seen.iter().find(|l| l.contains(pat)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("guest| {line}");
                    self.seen.push(line.clone());
                    if line.contains(pat) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("timed out waiting for {pat:?}"),
                Err(RecvTimeoutError::Disconnected) => panic!("qemu exited before {pat:?}"),
            }
        }
    }

    /// Waits until QEMU exits by itself (its stdout closes).
    fn expect_exit(&mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    eprintln!("guest| {line}");
                    self.seen.push(line);
                }
                Err(RecvTimeoutError::Timeout) => panic!("qemu did not exit"),
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.child.wait().unwrap();
        assert!(status.success(), "qemu exit status {status}");
    }

    /// Runs QMP commands (after the greeting and `qmp_capabilities`).
    fn qmp(&self, commands: &[&str]) {
        let stream = UnixStream::connect(&self.qmp).expect("connect qmp");
        stream.set_read_timeout(Some(BOOT)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("\"QMP\""), "greeting: {line}");
        for cmd in std::iter::once(&"qmp_capabilities").chain(commands) {
            writeln!(writer, "{{\"execute\":\"{cmd}\"}}").unwrap();
            loop {
                line.clear();
                reader.read_line(&mut line).unwrap();
                assert!(!line.contains("\"error\""), "{cmd}: {line}");
                if line.contains("\"return\"") {
                    break;
                }
            }
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port free on 127.0.0.1 right now (QEMU binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The body of `GET /` from the guest's httpd through slirp's host forward.
fn http_get(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(BOOT)).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: guest\r\n\r\n").unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "{resp}"
    );
    resp.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// Answers one `GET /openstack/latest/meta_data.json` on 127.0.0.1 (slirp's 10.0.2.2).
fn serve_metadata(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request = String::new();
        reader.read_line(&mut request).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let mut out = stream;
        if request.starts_with("GET /openstack/latest/meta_data.json ") {
            let n = body.len();
            write!(out, "HTTP/1.0 200 OK\r\nContent-Length: {n}\r\n\r\n{body}").unwrap();
        } else {
            write!(out, "HTTP/1.0 404 Not Found\r\n\r\n").unwrap();
        }
    });
    port
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[test]
fn kernel_boot_gets_dhcp_lease_and_powers_off_on_acpi_button() {
    let (dir, art) = build();
    let started = Instant::now();
    let kernel = art.kernel.to_string_lossy().into_owned();
    let initrd = art.initrd.to_string_lossy().into_owned();
    let port = free_port();
    let metadata = serve_metadata(r#"{"uuid":"u-1","hostname":"from-metadata"}"#);
    let cmdline = format!("{KERNEL_CMDLINE} kuvirt.metadata_url=http://10.0.2.2:{metadata}");
    let netdev = format!("user,id=n0,bootfile=pxelinux.0,hostfwd=tcp:127.0.0.1:{port}-:80");
    let mut g = Guest::start(
        dir.path(),
        "q35",
        &[
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            &cmdline,
            "-netdev",
            &netdev,
            "-device",
            "virtio-net-pci,netdev=n0",
        ],
    );
    g.expect("kuvirt-guest: booted");
    eprintln!("booted after {:?}", started.elapsed());
    g.expect("kuvirt-guest: cloudinit=none");
    let lease = g.expect("kuvirt-guest: dhcp iface=eth0");
    assert!(
        lease.contains("ip=10.0.2.15/24 gw=10.0.2.2 dns=10.0.2.3"),
        "{lease}"
    );
    assert!(lease.contains("boot=pxelinux.0"), "{lease}");
    g.expect("kuvirt-guest: metadata-hostname=from-metadata");
    g.expect("kuvirt-guest: ready");
    g.expect("kuvirt-guest: heartbeat 1");
    assert_eq!(http_get(port), "kuvirt-guest kuvirt-guest\n");
    g.expect("kuvirt-guest: heartbeat 2");
    eprintln!("heartbeat 2 after {:?}", started.elapsed());
    g.qmp(&["system_powerdown"]);
    g.expect("kuvirt-guest: poweroff");
    g.expect_exit(Duration::from_secs(30));
    eprintln!("powered off after {:?}", started.elapsed());
}

#[test]
fn disk_boots_via_seabios_from_virtio_blk() {
    let (dir, art) = build();
    let drive = format!(
        "file={},if=none,id=d0,format=qcow2",
        art.disk_qcow2.display()
    );
    let mut g = Guest::start(
        dir.path(),
        "q35",
        &[
            "-snapshot",
            "-drive",
            &drive,
            "-device",
            "virtio-blk-pci,drive=d0",
        ],
    );
    g.expect("kuvirt-guest: booted");
    g.expect("kuvirt-guest: cloudinit=none");
    g.expect("kuvirt-guest: heartbeat 1");
}

fn sample(hostname: &str) -> CloudInitData {
    CloudInitData {
        instance_id: format!("{hostname}.default"),
        hostname: hostname.to_string(),
        user_data: Some(format!("#cloud-config\nhostname: {hostname}\n").into_bytes()),
        network_data: Some(b"version: 2\n".to_vec()),
        ssh_public_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKuvirtTestKeyOne one@test".to_string(),
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQKuvirtTwo two@test".to_string(),
        ],
    }
}

/// Boots kernel+initrd with a seed ISO attached as `device` and checks what the guest read.
fn boot_with_seed(machine: &str, kind: &str, device: &str, hostname: &str) {
    let (dir, art) = build();
    let data = sample(hostname);
    let iso = dir.path().join("seed.iso");
    match kind {
        "nocloud" => cloudinit::nocloud_iso(&data, &iso).unwrap(),
        _ => cloudinit::configdrive_iso(&data, &iso).unwrap(),
    }
    let kernel = art.kernel.to_string_lossy().into_owned();
    let initrd = art.initrd.to_string_lossy().into_owned();
    let drive = format!(
        "file={},if=none,id=ci,format=raw,readonly=on,media={}",
        iso.display(),
        if device.contains("-cd") {
            "cdrom"
        } else {
            "disk"
        }
    );
    let mut args = vec![
        "-kernel",
        &kernel,
        "-initrd",
        &initrd,
        "-append",
        KERNEL_CMDLINE,
        "-drive",
        &drive,
    ];
    let scsi = device.starts_with("scsi");
    if scsi {
        args.extend(["-device", "virtio-scsi-pci,id=scsi0"]);
    }
    let dev = format!("{device},drive=ci");
    args.extend(["-device", &dev]);
    let mut g = Guest::start(dir.path(), machine, &args);
    g.expect("kuvirt-guest: booted");
    let host = g.expect("kuvirt-guest: hostname=");
    assert_eq!(host, format!("kuvirt-guest: hostname={hostname}"));
    let sum = g.expect("kuvirt-guest: userdata-sha256=");
    assert_eq!(
        sum,
        format!(
            "kuvirt-guest: userdata-sha256={}",
            sha256_hex(data.user_data.as_deref().unwrap())
        )
    );
    for key in &data.ssh_public_keys {
        g.expect(&format!("kuvirt-guest: ssh-key={key}"));
    }
    g.expect(&format!("kuvirt-guest: cloudinit={kind}"));
    g.expect("kuvirt-guest: ready");
}

#[test]
fn nocloud_iso_on_virtio_blk() {
    boot_with_seed("q35", "nocloud", "virtio-blk-pci", "nocloud-blk");
}

#[test]
fn configdrive_iso_on_virtio_blk() {
    boot_with_seed("q35", "configdrive", "virtio-blk-pci", "configdrive-blk");
}

#[test]
fn nocloud_iso_on_scsi_cdrom() {
    boot_with_seed("q35", "nocloud", "scsi-cd", "nocloud-scsi");
}

/// Debian's cloud kernel has no AHCI driver, so q35's SATA cdrom is invisible to this guest;
/// an IDE cdrom on i440fx (ata_piix) is the SATA-class path it can read.
#[test]
fn configdrive_iso_on_ide_cdrom() {
    boot_with_seed("pc", "configdrive", "ide-cd", "configdrive-ide");
}
