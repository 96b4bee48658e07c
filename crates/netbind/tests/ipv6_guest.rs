//! The demo guest (real QEMU, TCG) on a tap in a fresh network namespace, served by our DHCPv4
//! server, router advertiser and DHCPv6 server on that tap (root): booted with
//! `kuvirt.dhcp6=1`, it must report fd10:0:2::2/120 with the tap's link-local address as its
//! default router, besides its IPv4 lease.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kuvirt_images::demo::{self, DemoOptions, KERNEL_CMDLINE};
use kuvirt_netbind::dhcp::{self, Lease};
use kuvirt_netbind::dhcpv6::{self, Lease6};
use kuvirt_netbind::ndp::{self, RaConfig};
use nix::sched::{CloneFlags, setns};

const TAP_MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0x00, 0x06, 0x02];
const TAP_MAC_TEXT: &str = "02:6b:76:00:06:02";
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x6b, 0x76, 0x06];
const GUEST_MAC_TEXT: &str = "52:54:00:6b:76:06";

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_guest_gets_ipv6_from_our_servers() {
    let dir = tempfile::tempdir().unwrap();
    let art = demo::build(&DemoOptions::new(dir.path())).unwrap();

    let pid = std::process::id();
    let ns = Netns(format!("kv6g-{pid}"));
    let tap = format!("k6g{pid}");
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "tuntap", "add", "dev", &tap, "mode", "tap"]);
    let sysctl = |setting: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "sysctl", "-qw", setting])
            .output()
            .unwrap();
        assert!(out.status.success(), "sysctl {setting}: {out:?}");
    };
    sysctl("net.ipv6.conf.all.forwarding=1");
    sysctl(&format!("net.ipv6.conf.{tap}.accept_dad=0"));
    ip(&["-n", &ns.0, "link", "set", &tap, "address", TAP_MAC_TEXT]);
    ip(&["-n", &ns.0, "addr", "add", "10.0.2.1/24", "dev", &tap]);
    ip(&["-n", &ns.0, "addr", "add", "fd10:0:2::1/120", "dev", &tap]);
    ip(&["-n", &ns.0, "link", "set", &tap, "up"]);

    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ns_name, ifname) = (ns.0.clone(), tap.clone());
    let servers = thread::spawn(move || {
        setns(
            File::open(format!("/run/netns/{ns_name}")).unwrap(),
            CloneFlags::CLONE_NEWNET,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let gw = Ipv4Addr::new(10, 0, 2, 1);
            let mut lease = Lease::new(GUEST_MAC, Ipv4Addr::new(10, 0, 2, 2), 24, gw);
            lease.router = Some(gw);
            let v4 = dhcp::Server::bind(&ifname, lease).unwrap();
            let cfg = RaConfig::masquerade(TAP_MAC, ndp::GATEWAY, ndp::PREFIX_LEN, None);
            let ra = ndp::Server::bind(&ifname, &cfg).unwrap();
            let v6 = dhcpv6::Server::bind(&ifname, Lease6::new(ndp::GUEST, TAP_MAC)).unwrap();
            ready_tx.send(()).unwrap();
            tokio::select! {
                r = v4.run() => r.unwrap(),
                r = ra.run() => r.unwrap(),
                r = v6.run() => r.unwrap(),
                _ = stop_rx => {}
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no");
    let device = format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC_TEXT}");
    let cmdline = format!("{KERNEL_CMDLINE} kuvirt.dhcp6=1");
    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "qemu-system-x86_64",
            "-accel",
            "tcg",
        ])
        .args(["-machine", "q35", "-m", "256", "-smp", "1", "-nodefaults"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(&art.kernel)
        .arg("-initrd")
        .arg(&art.initrd)
        .args(["-append", &cmdline, "-netdev", &netdev, "-device", &device])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _qemu = Qemu(child);
    let (tx, lines) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
            if tx
                .send(String::from_utf8_lossy(&line).trim().to_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let mut expect = |pat: &str| -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if line.contains(pat) {
                        return line;
                    }
                }
                Err(_) => panic!("no {pat:?} on the console:\n{}", seen.join("\n")),
            }
        }
    };
    let v4 = expect("kuvirt-guest: dhcp iface=eth0");
    assert!(v4.contains("ip=10.0.2.2/24 gw=10.0.2.1"), "{v4}");
    let v6 = expect("kuvirt-guest: dhcp6 iface=eth0");
    let gw = ip(&[
        "-n", &ns.0, "-6", "-o", "addr", "show", "dev", &tap, "scope", "link",
    ]);
    let gw = gw
        .split_whitespace()
        .skip_while(|w| *w != "inet6")
        .nth(1)
        .and_then(|w| w.split('/').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        v6,
        format!("kuvirt-guest: dhcp6 iface=eth0 ip=fd10:0:2::2/120 gw={gw}")
    );
    expect("kuvirt-guest: ready");
    // the guest's address answers from the namespace
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "/bin/busybox",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "5",
        ])
        .arg("fd10:0:2::2")
        .output()
        .unwrap();
    assert!(out.status.success(), "ping the guest: {out:?}");
    let _ = stop_tx.send(());
    servers.join().unwrap();
}
