//! The demo guest (real QEMU, TCG) gets its lease from our DHCPv4 server through a storm of
//! malformed datagrams (root): a bridge in a fresh namespace carries the guest's tap, the server
//! and a veth from a third namespace that sends garbage to 255.255.255.255:67 before the guest
//! boots and all the while it boots. The guest must print exactly the lease served, the server
//! must have counted the garbage as ignored, and it must still answer afterwards.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use kuvirt_images::demo::{self, DemoOptions, KERNEL_CMDLINE};
use kuvirt_netbind::dhcp::{Counters, Lease, answer};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x6b, 0x76, 0x07];
const GUEST_MAC_TEXT: &str = "52:54:00:6b:76:07";
const BRIDGE_MAC: &str = "02:6b:76:00:07:01";
/// The garbage sender's own MAC, on the veth in the third namespace.
const JUNK_MAC: &str = "02:6b:76:00:07:99";
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 7, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 7, 2);
/// The line the guest's udhcpc script must print for [`lease`].
const LEASE_LINE: &str = "kuvirt-guest: dhcp iface=eth0 ip=10.0.7.2/24 gw=10.0.7.1 \
                          dns=10.0.7.3 hostname=garbage-guest mtu=1500 mac=52:54:00:6b:76:07";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(file, CloneFlags::CLONE_NEWNET).unwrap();
}

/// The bridge namespace (bridge, tap, one veth end) and the garbage namespace (the other end),
/// removed on drop, also when the test fails half way.
struct Net {
    ns: String,
    junk_ns: String,
    bridge: String,
    tap: String,
    veth: String,
    junk_if: String,
}

impl Net {
    fn new() -> Self {
        let pid = std::process::id();
        let net = Net {
            ns: format!("kvdg-{pid}"),
            junk_ns: format!("kvdg-{pid}-junk"),
            bridge: format!("kdg{pid}b"),
            tap: format!("kdg{pid}t"),
            veth: format!("kdg{pid}v"),
            junk_if: format!("kdg{pid}j"),
        };
        let (ns, junk) = (net.ns.as_str(), net.junk_ns.as_str());
        ip(&["netns", "add", ns]);
        ip(&["netns", "add", junk]);
        ip(&["-n", ns, "link", "add", &net.bridge, "type", "bridge"]);
        ip(&["-n", ns, "link", "set", &net.bridge, "address", BRIDGE_MAC]);
        ip(&["-n", ns, "addr", "add", "10.0.7.1/24", "dev", &net.bridge]);
        ip(&["-n", ns, "link", "set", &net.bridge, "up"]);
        ip(&["-n", ns, "tuntap", "add", "dev", &net.tap, "mode", "tap"]);
        ip(&["-n", ns, "link", "set", &net.tap, "master", &net.bridge]);
        ip(&["-n", ns, "link", "set", &net.tap, "up"]);
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            &net.veth,
            "type",
            "veth",
            "peer",
            "name",
            &net.junk_if,
            "netns",
            junk,
        ]);
        ip(&["-n", ns, "link", "set", &net.veth, "master", &net.bridge]);
        ip(&["-n", ns, "link", "set", &net.veth, "up"]);
        ip(&["-n", junk, "link", "set", &net.junk_if, "address", JUNK_MAC]);
        ip(&[
            "-n",
            junk,
            "addr",
            "add",
            "10.0.7.99/24",
            "dev",
            &net.junk_if,
        ]);
        ip(&["-n", junk, "link", "set", &net.junk_if, "up"]);
        net
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.ns, &self.junk_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Stops the garbage thread on drop (also on a failed assertion).
struct Stop(Arc<AtomicBool>);

impl Drop for Stop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn lease() -> Lease {
    let mut lease = Lease::new(GUEST_MAC, GUEST_IP, 24, GW);
    lease.router = Some(GW);
    lease.dns_servers = vec![Ipv4Addr::new(10, 0, 7, 3)];
    lease.hostname = Some("garbage-guest".into());
    lease.mtu = Some(1500);
    lease
}

/// A BOOTREQUEST header from `mac` with the magic cookie, then `opts`.
fn request(mac: [u8; 6], xid: u32, opts: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[..3].copy_from_slice(&[1, 1, 6]);
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(opts);
    p
}

/// Malformed or unanswerable datagrams, many with the guest's own MAC: the server must skip
/// every one (checked against the pure responder before sending).
fn garbage() -> Vec<Vec<u8>> {
    let discover = request(GUEST_MAC, 0xdead_beef, &[53, 1, 1, 255]);
    let with = |opts: &[u8]| request(GUEST_MAC, 0x0bad_f00d, opts);
    let mut out = vec![
        Vec::new(),               // zero-length
        b"hello".to_vec(),        // not BOOTP at all
        vec![0; 10],              // truncated header
        discover[..120].to_vec(), // cut inside the header
        discover[..239].to_vec(), // cut inside the magic cookie
        discover[..240].to_vec(), // no options, no message type
        (0..=255).collect(),      // a ramp
        vec![0xff; 600],          // all ones
        vec![0x42; 5000],         // over the server's limit (fragmented on the wire)
        vec![0x17; 65_000],       // about the largest datagram there is
        with(&[53, 5, 1]),        // option runs past the end
        with(&[53, 1]),           // a length without its value
        with(&[53]),              // a code without its length
        with(&[53, 0, 255]),      // message type of length 0
        with(&[80, 1, 0, 255]),   // no message type; an option dhcproto asserts on
        with(&[53, 1, 7, 255]),   // RELEASE
        with(&[53, 1, 4, 255]),   // DECLINE
        with(&[53, 1, 2, 255]),   // an OFFER sent to the server
        with(&[53, 1, 200, 255]), // unknown message type
        with(&[53, 1, 3, 255]),   // REQUEST naming no address
        // a REQUEST selecting another server's offer
        with(&[53, 1, 3, 54, 4, 1, 2, 3, 4, 50, 4, 10, 0, 7, 2, 255]),
        with(&[255, 53, 1, 1]), // END before the message type
        with(&[0; 300]),        // nothing but PAD
        with(&[53; 300]),       // message type of length 53, and so on past the end
    ];
    // too many options, an overlong option list, options overflowing 255 bytes
    let mut many = vec![53, 1, 1];
    for _ in 0..200 {
        many.extend_from_slice(&[60, 0]);
    }
    many.push(255);
    out.push(with(&many));
    let mut overlong = vec![53, 1, 1];
    for code in 60..76 {
        overlong.extend_from_slice(&[code, 255]);
        overlong.extend(std::iter::repeat_n(b'x', 255));
    }
    overlong.push(255);
    out.push(with(&overlong)); // over 4096 bytes in all
    out.push(with(&[53, 1, 1, 61, 255, 1, 2, 3])); // client id lying about its length
    // wrong op, htype, hlen and magic cookie on an otherwise valid DISCOVER
    for (index, value) in [(0, 2), (0, 0), (1, 6), (2, 16), (2, 0), (236, 0), (239, 98)] {
        let mut bad = discover.clone();
        bad[index] = value;
        out.push(bad);
    }
    // a valid DISCOVER from another MAC
    out.push(request([0x02, 0x6b, 0x76, 0, 7, 0x99], 1, &[53, 1, 1, 255]));
    out
}

/// A UDP socket in `ns` bound to `ifname` on `port`, able to broadcast.
fn socket_in(ns: &str, ifname: &str, port: u16) -> UdpSocket {
    let (ns, ifname) = (ns.to_owned(), ifname.to_owned());
    // setns is per thread: make the socket on a thread of its own; it stays in that namespace
    thread::spawn(move || {
        enter(&ns);
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
        socket::setsockopt(&fd, sockopt::Broadcast, &true).unwrap();
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(&ifname)).unwrap();
        let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).unwrap();
        UdpSocket::from(fd)
    })
    .join()
    .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn demo_guest_gets_its_lease_through_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let art = demo::build(&DemoOptions::new(dir.path())).unwrap();
    let net = Net::new();
    let lease = lease();

    let packets = garbage();
    for (i, p) in packets.iter().enumerate() {
        assert!(answer(&lease, p).is_none(), "garbage {i} is answerable");
    }
    let volley = packets.len() as u64;

    // the server on the bridge, inside the bridge namespace on a thread of its own
    let (ready_tx, ready_rx) = mpsc::channel::<Arc<Counters>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ns, bridge, served) = (net.ns.clone(), net.bridge.clone(), lease.clone());
    let server = thread::spawn(move || {
        enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let server = kuvirt_netbind::dhcp::Server::bind(&bridge, served).unwrap();
            ready_tx.send(server.counters()).unwrap();
            tokio::select! {
                result = server.run() => result.unwrap(),
                _ = stop_rx => {}
            }
        });
    });
    let counters = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let junk = socket_in(&net.junk_ns, &net.junk_if, 0);
    let to_server = (Ipv4Addr::BROADCAST, 67);

    // garbage before the guest boots: every datagram reaches the server and is skipped
    for p in &packets {
        junk.send_to(p, to_server).unwrap();
    }
    wait_for(
        "the server to skip the first volley",
        Duration::from_secs(10),
        || counters.ignored.load(Ordering::Relaxed) >= volley,
    );
    assert_eq!(counters.answered.load(Ordering::Relaxed), 0);

    // and all the while the guest boots, until its lease shows on the console
    let stop = Stop(Arc::new(AtomicBool::new(false)));
    let sent = Arc::new(AtomicU64::new(volley));
    let sender = {
        let (stop, sent, junk) = (
            Arc::clone(&stop.0),
            Arc::clone(&sent),
            junk.try_clone().unwrap(),
        );
        let counters = Arc::clone(&counters);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for p in &packets {
                    junk.send_to(p, to_server).unwrap();
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                // never more than one volley ahead of the server, so a busy machine does not
                // overflow its socket buffer (and drop the guest's DISCOVER with the garbage)
                let behind = Instant::now();
                while counters.ignored.load(Ordering::Relaxed) < sent.load(Ordering::Relaxed)
                    && behind.elapsed() < Duration::from_secs(10)
                    && !stop.load(Ordering::Relaxed)
                {
                    thread::sleep(Duration::from_millis(1));
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let console = dir.path().join("console.log");
    let netdev = format!("tap,id=n0,ifname={},script=no,downscript=no", net.tap);
    let device = format!("virtio-net-pci,netdev=n0,mac={GUEST_MAC_TEXT}");
    let child = Command::new("ip")
        .args(["netns", "exec", &net.ns, "qemu-system-x86_64"])
        .args(["-accel", "tcg", "-machine", "q35", "-m", "256", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(&art.kernel)
        .arg("-initrd")
        .arg(&art.initrd)
        .args([
            "-append",
            KERNEL_CMDLINE,
            "-netdev",
            &netdev,
            "-device",
            &device,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut qemu = Qemu(child);
    let started = Instant::now();

    let deadline = Instant::now() + Duration::from_secs(120);
    let line = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let found = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("kuvirt-guest: dhcp iface=eth0"))
            .map(str::to_owned);
        if let Some(line) = found {
            break line;
        }
        if let Some(status) = qemu.0.try_wait().unwrap() {
            panic!("qemu exited ({status}) before the lease:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "no lease on the console:\n{text}"
        );
        thread::sleep(Duration::from_millis(100));
    };
    drop(stop);
    sender.join().unwrap();
    assert_eq!(line, LEASE_LINE);

    // every datagram sent was received and ignored; the guest's were answered
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent > 2 * volley, "garbage went on while booting: {sent}");
    wait_for(
        "the server to skip all the garbage",
        Duration::from_secs(10),
        || counters.ignored.load(Ordering::Relaxed) >= sent,
    );
    let answered = counters.answered.load(Ordering::Relaxed);
    eprintln!(
        "sent {sent} garbage datagrams; server: {counters:?}; lease after {:?}",
        started.elapsed()
    );
    assert!(answered >= 2, "offer and ack to the guest: {answered}");
    assert_eq!(
        counters.received.load(Ordering::Relaxed),
        counters.ignored.load(Ordering::Relaxed) + answered,
        "nothing else was sent to the server"
    );

    // the server still runs and answers a fresh DISCOVER with the guest's MAC
    assert!(!server.is_finished(), "the server task stopped");
    let client = socket_in(&net.junk_ns, &net.junk_if, 68);
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let discover = request(GUEST_MAC, 0x6b76_0007, &[53, 1, 1, 255]);
    let mut buf = vec![0u8; 1500];
    let offer = 'offer: {
        for _ in 0..5 {
            junk.send_to(&discover, to_server).unwrap();
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                let Ok(len) = client.recv(&mut buf) else {
                    break;
                };
                // only our OFFER (xid echoed) counts; a late reply to the guest may pass by
                if len >= 240 && buf[4..8] == 0x6b76_0007u32.to_be_bytes() {
                    break 'offer buf[..len].to_vec();
                }
            }
        }
        panic!("no offer to a fresh discover");
    };
    assert_eq!(offer[0], 2, "a BOOTREPLY");
    assert_eq!(&offer[28..34], &GUEST_MAC);
    assert_eq!(offer[16..20], GUEST_IP.octets(), "yiaddr");
    assert!(offer[240..].windows(3).any(|w| w == [53, 1, 2]), "an OFFER");
    // the server counts a reply once its send returns, which may be after we have it
    wait_for(
        "the server to count its offer",
        Duration::from_secs(5),
        || counters.answered.load(Ordering::Relaxed) > answered,
    );

    let _ = stop_tx.send(());
    server.join().unwrap();
}
