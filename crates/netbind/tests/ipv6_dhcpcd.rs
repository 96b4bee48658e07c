//! Router advertisements and DHCPv6 against a real client (root): two fresh network namespaces
//! joined by a veth, our advertiser and DHCPv6 server on one end (a thread that `setns`'d into
//! it), Debian's `dhcpcd` (package dhcpcd-base) on the other, after a volley of malformed
//! solicitations and DHCPv6 messages both servers must skip. The client must end up with
//! fd10:0:2::2, the on-link /120 and a default route via the server's link-local address.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use kuvirt_netbind::dhcpv6::{self, Lease6};
use kuvirt_netbind::ndp::{self, RaConfig};
use nix::sched::{CloneFlags, setns};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

const DHCPCD: &str = "/usr/sbin/dhcpcd";
const SERVER_MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0x00, 0x06, 0x01];
const SERVER_MAC_TEXT: &str = "02:6b:76:00:06:01";

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

/// Two namespaces and a veth between them, removed on drop (also when the test fails).
struct Link {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
}

impl Link {
    fn new(tag: &str) -> Self {
        let pid = std::process::id();
        let link = Link {
            server_ns: format!("kv6{tag}-{pid}-srv"),
            client_ns: format!("kv6{tag}-{pid}-cli"),
            server_if: format!("k6{tag}{pid}s"),
            client_if: format!("k6{tag}{pid}c"),
        };
        let (s, c) = (link.server_ns.as_str(), link.client_ns.as_str());
        ip(&["netns", "add", s]);
        ip(&["netns", "add", c]);
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
        ip(&["link", "set", &link.server_if, "netns", s]);
        ip(&["link", "set", &link.client_if, "netns", c]);
        // what the masquerade binding does on its bridge: forwarding, no DAD, the gateway
        sysctl(s, "net.ipv6.conf.all.forwarding=1");
        sysctl(s, &format!("net.ipv6.conf.{}.accept_dad=0", link.server_if));
        ip(&[
            "-n",
            s,
            "link",
            "set",
            &link.server_if,
            "address",
            SERVER_MAC_TEXT,
        ]);
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            "fd10:0:2::1/120",
            "dev",
            &link.server_if,
        ]);
        ip(&["-n", s, "link", "set", &link.server_if, "up"]);
        ip(&["-n", c, "link", "set", &link.client_if, "up"]);
        link
    }

    fn server_link_local(&self) -> Ipv6Addr {
        let out = ip(&[
            "-n",
            &self.server_ns,
            "-6",
            "-o",
            "addr",
            "show",
            "dev",
            &self.server_if,
            "scope",
            "link",
        ]);
        let word = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap();
        word.split('/').next().unwrap().parse().unwrap()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for args in [
            vec!["link", "del", self.server_if.as_str()],
            vec!["netns", "del", self.server_ns.as_str()],
            vec!["netns", "del", self.client_ns.as_str()],
        ] {
            let _ = Command::new("ip").args(&args).output();
        }
        // dhcpcd keeps a lease file per interface on the host
        let _ = std::fs::remove_file(format!("/var/lib/dhcpcd/{}.lease6", self.client_if));
    }
}

fn sysctl(ns: &str, setting: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-qw", setting])
        .output()
        .unwrap();
    assert!(out.status.success(), "sysctl {setting}: {out:?}");
}

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(file, CloneFlags::CLONE_NEWNET).unwrap();
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

struct Running {
    ra: Arc<ndp::Counters>,
    dhcp: Arc<dhcpv6::Counters>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Running {
    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}

fn start_servers(link: &Link) -> Running {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ns, ifname) = (link.server_ns.clone(), link.server_if.clone());
    let thread = thread::spawn(move || {
        enter(&ns);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let cfg = RaConfig::masquerade(SERVER_MAC, ndp::GATEWAY, ndp::PREFIX_LEN, Some(1400));
            let ra = ndp::Server::bind(&ifname, &cfg).unwrap();
            let mut lease = Lease6::new(ndp::GUEST, SERVER_MAC);
            lease.dns_servers = vec!["fd00:10:96::a".parse().unwrap()];
            let dhcp = dhcpv6::Server::bind(&ifname, lease.clone()).unwrap();
            // a second server on another interface of the namespace coexists on port 547
            drop(dhcpv6::Server::bind("lo", lease).unwrap());
            ready_tx.send((ra.counters(), dhcp.counters())).unwrap();
            tokio::select! {
                r = ra.run() => r.unwrap(),
                r = dhcp.run() => r.unwrap(),
                _ = stop_rx => {}
            }
        });
    });
    let (ra, dhcp) = ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Running {
        ra,
        dhcp,
        stop,
        thread,
    }
}

/// Sends malformed solicitations (and an RS with a wrong hop limit) to ff02::2 and malformed
/// or foreign DHCPv6 messages to ff02::1:2 from the client's namespace; returns how many of
/// each were sent.
fn send_garbage(link: &Link) -> (u64, u64) {
    let (ns, ifname) = (link.client_ns.clone(), link.client_if.clone());
    thread::spawn(move || {
        enter(&ns);
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).unwrap();
        // the client's link-local address must have finished DAD before it can send
        wait_for(
            "the client's link-local address",
            Duration::from_secs(10),
            || {
                let out = ip(&["-6", "-o", "addr", "show", "dev", &ifname, "scope", "link"]);
                out.contains("inet6") && !out.contains("tentative")
            },
        );

        let fd = socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::IcmpV6,
        )
        .unwrap();
        let raw = socket2::Socket::from(fd);
        let all_routers = SocketAddrV6::new(ndp::ALL_ROUTERS, 0, 0, ifindex);
        let send = |raw: &socket2::Socket, bytes: &[u8]| {
            socket::sendto(
                std::os::fd::AsRawFd::as_raw_fd(raw),
                bytes,
                &socket::SockaddrIn6::from(all_routers),
                MsgFlags::empty(),
            )
            .unwrap();
        };
        raw.set_multicast_hops_v6(255).unwrap();
        let icmp: Vec<Vec<u8>> = vec![
            vec![133, 0, 0, 0, 0, 0, 0],                             // short
            vec![133, 1, 0, 0, 0, 0, 0, 0],                          // code 1
            vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0],  // zero-length option
            vec![133, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0],              // option past the end
            vec![134, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // an advertisement
            vec![0xff; 300],
        ];
        for p in &icmp {
            send(&raw, p);
        }
        // a well-formed solicitation that crossed a router (hop limit 64) is dropped too
        raw.set_multicast_hops_v6(64).unwrap();
        send(&raw, &[133, 0, 0, 0, 0, 0, 0, 0]);
        let icmp_count = icmp.len() as u64 + 1;

        let udp = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0)).unwrap();
        let servers = SocketAddrV6::new(dhcpv6::ALL_SERVERS, dhcpv6::SERVER_PORT, 0, ifindex);
        let duid = [0u8, 3, 0, 1, 2, 0, 0, 0, 0, 1];
        let mut other_server = vec![3, 1, 2, 3, 0, 1, 0, 10];
        other_server.extend_from_slice(&duid);
        other_server.extend_from_slice(&[0, 2, 0, 10]);
        other_server.extend_from_slice(&[0, 3, 0, 1, 2, 0, 0, 0, 0, 0x99]);
        let dhcp: Vec<Vec<u8>> = vec![
            b"hi".to_vec(),
            vec![1, 0, 0, 0],                    // SOLICIT without client id
            vec![1, 0, 0, 0, 0, 1, 0, 40, 0, 3], // option past the end
            vec![12, 0, 0, 0, 0, 9, 0, 0],       // RELAY-FORW
            vec![2, 0, 0, 0],                    // ADVERTISE
            other_server,                        // REQUEST for another server
            vec![0x42; 3000],
        ];
        for p in &dhcp {
            udp.send_to(p, servers).unwrap();
        }
        (icmp_count, dhcp.len() as u64)
    })
    .join()
    .unwrap()
}

/// Runs dhcpcd once (IPv6 only) with a hook script that records what it was told; returns the
/// recorded variables and dhcpcd's log.
fn run_dhcpcd(link: &Link, extra_conf: &str) -> (BTreeMap<String, String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("bound.env");
    let script = dir.path().join("hook");
    // runs for every event; keeps the one that configured DHCPv6
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$reason\" in BOUND6|REBOOT6|RENEW6|REBIND6) set > {0}.tmp; mv {0}.tmp {0};; esac\n",
            env_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let conf = dir.path().join("dhcpcd.conf");
    std::fs::write(&conf, format!("ipv6only\npersistent\nia_na\n{extra_conf}")).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &link.client_ns, "timeout", "30", DHCPCD])
        .arg("-f")
        .arg(&conf)
        .arg("-c")
        .arg(&script)
        .args(["-d", "-1", "-6", "-t", "15", &link.client_if])
        .output()
        .unwrap();
    let log =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "dhcpcd failed: {log}");
    let env = std::fs::read_to_string(&env_file)
        .unwrap_or_else(|e| panic!("no BOUND6 event ({e}): {log}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect();
    (env, log)
}

fn check_client(link: &Link, env: &BTreeMap<String, String>, log: &str) {
    let got = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(
        got("new_dhcp6_ia_na1_ia_addr1"),
        Some("fd10:0:2::2"),
        "{env:#?}\n{log}"
    );
    assert_eq!(
        got("new_dhcp6_name_servers"),
        Some("fd00:10:96::a"),
        "{env:#?}"
    );
    assert_eq!(
        got("new_dhcp6_server_id"),
        Some("00030001026b76000601"), // DUID-LL of the server's MAC
        "{env:#?}"
    );

    let c = link.client_ns.as_str();
    let addrs = ip(&["-n", c, "-6", "-o", "addr", "show", "dev", &link.client_if]);
    assert!(addrs.contains("inet6 fd10:0:2::2/128"), "{addrs}\n{log}");
    let routes = ip(&["-n", c, "-6", "route", "show", "dev", &link.client_if]);
    assert!(
        routes.contains("fd10:0:2::/120"),
        "on-link prefix: {routes}\n{log}"
    );
    let default = ip(&["-n", c, "-6", "route", "show", "default"]);
    let gw = link.server_link_local();
    assert!(
        default.contains(&format!("default via {gw} dev {}", link.client_if)),
        "default route via {gw}: {default}\n{log}"
    );
    // the address is usable: the gateway answers a ping from it
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            c,
            "/bin/busybox",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "5",
        ])
        .arg("fd10:0:2::1")
        .output()
        .unwrap();
    assert!(out.status.success(), "ping the gateway: {out:?}");
}

#[test]
fn dhcpcd_gets_address_and_default_route_after_garbage() {
    assert!(
        std::path::Path::new(DHCPCD).exists(),
        "{DHCPCD} missing: install dhcpcd-base (scripts/install-deps)"
    );
    let link = Link::new("a");
    let servers = start_servers(&link);

    let (icmp, dhcp) = send_garbage(&link);
    wait_for(
        "the servers to skip the garbage",
        Duration::from_secs(10),
        || {
            servers.ra.ignored.load(Ordering::Relaxed) >= icmp
                && servers.dhcp.ignored.load(Ordering::Relaxed) >= dhcp
        },
    );
    // (the client's kernel solicits by itself once its link is up: no count of those)
    assert_eq!(servers.dhcp.answered.load(Ordering::Relaxed), 0);

    let (env, log) = run_dhcpcd(&link, "");
    check_client(&link, &env, &log);
    assert!(
        servers.ra.solicitations.load(Ordering::Relaxed) >= 1,
        "{log}"
    );
    assert!(
        servers.dhcp.answered.load(Ordering::Relaxed) >= 2,
        "advertise, reply"
    );
    servers.stop();
}

#[test]
fn dhcpcd_with_rapid_commit() {
    let link = Link::new("r");
    let servers = start_servers(&link);
    let (env, log) = run_dhcpcd(&link, "option rapid_commit\n");
    check_client(&link, &env, &log);
    // one REPLY, no ADVERTISE/REQUEST round
    assert_eq!(servers.dhcp.answered.load(Ordering::Relaxed), 1, "{log}");
    servers.stop();
}
