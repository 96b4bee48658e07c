//! The DHCP server against busybox's real client (root): two fresh network namespaces joined by
//! a veth, the server on one end (a thread that `setns`'d into it), `udhcpc` on the other, after
//! a volley of malformed datagrams the server must skip.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use kuvirt_netbind::dhcp::{Counters, Lease, PrivateOption, Route, ServeError, Server};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};

/// What the client script reports of the variables udhcpc passes it.
const VARS: &str = "ip subnet mask router dns domain search hostname mtu staticroutes boot_file \
                    bootfile siaddr tftp ntpsrv serverid lease opt224";

const MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0x00, 0x00, 0x32];

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces and a veth between them, removed on drop (also when the test fails).
struct Link {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
}

impl Link {
    fn new() -> Self {
        let pid = std::process::id();
        let link = Link {
            server_ns: format!("kvdhcp-{pid}-srv"),
            client_ns: format!("kvdhcp-{pid}-cli"),
            server_if: format!("kvd{pid}s"),
            client_if: format!("kvd{pid}c"),
        };
        ip(&["netns", "add", &link.server_ns]);
        ip(&["netns", "add", &link.client_ns]);
        ip(&[
            "link",
            "add",
            &link.server_if,
            "type",
            "veth",
            "peer",
            "name",
            &link.client_if,
        ]);
        ip(&["link", "set", &link.server_if, "netns", &link.server_ns]);
        ip(&["link", "set", &link.client_if, "netns", &link.client_ns]);
        let (s, c) = (link.server_ns.as_str(), link.client_ns.as_str());
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            "10.123.0.1/24",
            "dev",
            &link.server_if,
        ]);
        ip(&["-n", s, "link", "set", &link.server_if, "up"]);
        ip(&[
            "-n",
            c,
            "link",
            "set",
            &link.client_if,
            "address",
            "02:6b:76:00:00:32",
        ]);
        ip(&["-n", c, "link", "set", &link.client_if, "up"]);
        link
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // the veth goes with its namespace; delete it too in case setup stopped half way
        for args in [
            vec!["link", "del", self.server_if.as_str()],
            vec!["netns", "del", self.server_ns.as_str()],
            vec!["netns", "del", self.client_ns.as_str()],
        ] {
            let _ = Command::new("ip").args(&args).output();
        }
    }
}

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(file, CloneFlags::CLONE_NEWNET).unwrap();
}

fn lease() -> Lease {
    let gw = Ipv4Addr::new(10, 123, 0, 1);
    let mut lease = Lease::new(MAC, Ipv4Addr::new(10, 123, 0, 50), 24, gw);
    lease.router = Some(gw);
    lease.dns_servers = vec![Ipv4Addr::new(10, 123, 0, 53), Ipv4Addr::new(10, 123, 0, 54)];
    lease.search_domains = vec![
        "ns1.svc.cluster.local".into(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    lease.domain_name = Some("ns1.svc.cluster.local".into());
    lease.hostname = Some("testvm".into());
    lease.mtu = Some(1400);
    lease.routes = vec![Route {
        destination: Ipv4Addr::new(10, 96, 0, 0),
        prefix_len: 12,
        gateway: gw,
    }];
    lease.boot_file_name = Some("pxelinux.0".into());
    lease.tftp_server_name = Some("10.123.0.2".into());
    lease.ntp_servers = vec![Ipv4Addr::new(10, 123, 0, 123)];
    lease.private_options = vec![PrivateOption {
        code: 224,
        value: "hello".into(),
    }];
    lease
}

/// Malformed or foreign datagrams the server must skip, each one counted as ignored.
fn garbage() -> Vec<Vec<u8>> {
    let mut header = vec![0u8; 240];
    header[..3].copy_from_slice(&[1, 1, 6]);
    header[28..34].copy_from_slice(&MAC);
    header[236..240].copy_from_slice(&[99, 130, 83, 99]);
    let with = |opts: &[u8]| {
        let mut p = header.clone();
        p.extend_from_slice(opts);
        p
    };
    let mut other_mac = with(&[53, 1, 1, 255]);
    other_mac[33] ^= 1;
    vec![
        b"hello".to_vec(),
        vec![0; 10],
        (0..=255).collect(),
        vec![0xff; 600],
        header[..239].to_vec(), // truncated before the options
        with(&[53, 5, 1]),      // option runs past the end
        with(&[80, 1, 0, 255]), // no message type; an option dhcproto asserts on
        with(&[53, 1, 7, 255]), // RELEASE
        other_mac,              // DISCOVER from another MAC
        vec![0x42; 4000],       // oversized (fragmented on the wire)
        with(&[53, 1, 3, 54, 4, 1, 2, 3, 4, 255]), // REQUEST for another server
    ]
}

fn send_garbage(client_ns: &str, client_if: &str, packets: Vec<Vec<u8>>) {
    let (ns, ifname) = (client_ns.to_owned(), client_if.to_owned());
    thread::spawn(move || {
        enter(&ns);
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::setsockopt(&fd, sockopt::Broadcast, &true).unwrap();
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(&ifname)).unwrap();
        let any = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &any).unwrap();
        let sock = UdpSocket::from(fd);
        for packet in packets {
            sock.send_to(&packet, (Ipv4Addr::BROADCAST, 67)).unwrap();
        }
    })
    .join()
    .unwrap();
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn busybox_udhcpc_gets_the_lease_after_garbage() {
    let link = Link::new();
    let lease = lease();

    // the server, inside the server namespace on a thread of its own
    let (ready_tx, ready_rx) = mpsc::channel::<Arc<Counters>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ns, ifname, served) = (
        link.server_ns.clone(),
        link.server_if.clone(),
        lease.clone(),
    );
    let server = thread::spawn(move || {
        enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = Server::bind(&ifname, served.clone()).unwrap();
            // a second server on another interface of the namespace coexists on port 67
            let other = Server::bind("lo", served.clone()).unwrap();
            assert!(matches!(
                Server::bind("kvd-missing", served).unwrap_err(),
                ServeError::Socket {
                    step: "SO_BINDTODEVICE",
                    ..
                }
            ));
            drop(other);
            ready_tx.send(server.counters()).unwrap();
            tokio::select! {
                result = server.run() => result.unwrap(),
                _ = stop_rx => {}
            }
        });
    });
    let counters = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // garbage first: every datagram reaches the server and is skipped
    let packets = garbage();
    let count = packets.len() as u64;
    send_garbage(&link.client_ns, &link.client_if, packets);
    wait_for(
        "the server to skip the garbage",
        Duration::from_secs(10),
        || counters.ignored.load(Ordering::Relaxed) >= count,
    );
    assert_eq!(counters.answered.load(Ordering::Relaxed), 0);

    // then the real client
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("bound.env");
    let script = dir.path().join("udhcpc.script");
    std::fs::write(
        &script,
        format!(
            "#!/bin/busybox sh\n[ \"$1\" = bound ] || exit 0\nfor v in {VARS}; do eval \"echo $v=\\$$v\"; done > {0}.tmp\nmv {0}.tmp {0}\n",
            env_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &link.client_ns, "/bin/busybox", "udhcpc"])
        .args([
            "-i",
            &link.client_if,
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
        ])
        .args([
            "-O", "121", "-O", "119", "-O", "42", "-O", "66", "-O", "67", "-O", "224",
        ])
        .arg("-s")
        .arg(&script)
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "udhcpc failed: {log}");
    let env: BTreeMap<String, String> = std::fs::read_to_string(&env_file)
        .unwrap_or_else(|e| panic!("no bound event ({e}): {log}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let got = |key: &str| env.get(key).map(|v| v.trim().to_owned());
    let want = [
        ("ip", "10.123.0.50"),
        ("subnet", "255.255.255.0"),
        ("mask", "24"),
        ("router", "10.123.0.1"),
        ("dns", "10.123.0.53 10.123.0.54"),
        ("domain", "ns1.svc.cluster.local"),
        (
            "search",
            "ns1.svc.cluster.local svc.cluster.local cluster.local",
        ),
        ("hostname", "testvm"),
        ("mtu", "1400"),
        (
            "staticroutes",
            "10.96.0.0/12 10.123.0.1 0.0.0.0/0 10.123.0.1",
        ),
        ("boot_file", "pxelinux.0"),
        ("bootfile", "pxelinux.0"),
        ("siaddr", "10.123.0.2"),
        ("tftp", "10.123.0.2"),
        ("ntpsrv", "10.123.0.123"),
        ("serverid", "10.123.0.1"),
        ("lease", "86313600"),
        ("opt224", "68656c6c6f"),
    ];
    for (key, value) in want {
        assert_eq!(
            got(key).as_deref(),
            Some(value),
            "{key}; client saw {env:#?}"
        );
    }
    assert!(
        counters.answered.load(Ordering::Relaxed) >= 2,
        "offer and ack"
    );

    let _ = stop_tx.send(());
    server.join().unwrap();
}
