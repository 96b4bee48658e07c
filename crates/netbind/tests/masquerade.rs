//! The masquerade binding end to end (root), network namespaces standing in for the parts: "node"
//! (the host, a veth to the pod), "pod" (eth0 with the pod IP, default route to the node; the
//! binding is set up here from a thread that `setns`'d into it) and "guest" (the VM: a veth
//! whose other end, in the pod, plays QEMU's tap). busybox plays the guest's DHCP client, its
//! HTTP server and the clients.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use kuvirt_netbind::dhcp::Lease;
use kuvirt_netbind::masquerade::{self, MasqueradeConfig, Port};
use nix::sched::{CloneFlags, setns};

const MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0x00, 0x00, 0x02];
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 1);
const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 199, 0, 2);
const TAP: &str = "tap0";

fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The three namespaces, deleted on drop (also when the test fails); the veths go with them.
struct Env {
    node: String,
    pod: String,
    guest: String,
}

impl Env {
    fn new(tag: &str) -> Self {
        let base = format!("kvmasq-{}-{tag}", std::process::id());
        let env = Env {
            node: format!("{base}-node"),
            pod: format!("{base}-pod"),
            guest: format!("{base}-guest"),
        };
        for ns in [&env.node, &env.pod, &env.guest] {
            ok(&["ip", "netns", "add", ns]);
        }
        let (node, pod, guest) = (env.node.as_str(), env.pod.as_str(), env.guest.as_str());
        // node ↔ pod: the pod's eth0 with the pod IP, default route to the node
        ok(&[
            "ip", "-n", pod, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
            "pod0", "mtu", "1400", "netns", node,
        ]);
        ok(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            "10.199.0.1/24",
            "dev",
            "pod0",
        ]);
        ok(&["ip", "-n", node, "link", "set", "pod0", "up"]);
        ok(&[
            "ip",
            "-n",
            pod,
            "addr",
            "add",
            "10.199.0.2/24",
            "dev",
            "eth0",
        ]);
        ok(&["ip", "-n", pod, "link", "set", "eth0", "up"]);
        ok(&["ip", "-n", pod, "link", "set", "lo", "up"]);
        ok(&[
            "ip",
            "-n",
            pod,
            "route",
            "add",
            "default",
            "via",
            "10.199.0.1",
        ]);
        // pod ↔ guest: the "tap" in the pod, the guest's NIC with the VM's MAC
        ok(&[
            "ip", "-n", pod, "link", "add", TAP, "type", "veth", "peer", "name", "eth0", "netns",
            guest,
        ]);
        ok(&[
            "ip",
            "-n",
            guest,
            "link",
            "set",
            "eth0",
            "address",
            "02:6b:76:00:00:02",
            "up",
        ]);
        ok(&["ip", "-n", guest, "link", "set", "lo", "up"]);
        env
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for ns in [&self.node, &self.pod, &self.guest] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// A background process, killed on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn enter(ns: &str) {
    let file = File::open(format!("/run/netns/{ns}")).unwrap();
    setns(file, CloneFlags::CLONE_NEWNET).unwrap();
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["ip", "netns", "exec", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// The binding in the pod namespace on a thread of its own: set up twice (a launcher restart),
/// the DHCP server run until `stop`, then torn down (twice).
struct Binding {
    lease: Lease,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl Binding {
    fn start(pod: &str, cfg: MasqueradeConfig) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Lease, String>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let pod = pod.to_owned();
        let thread = thread::spawn(move || {
            enter(&pod);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let made = masquerade::setup(&cfg)
                    .and_then(|first| {
                        drop(first);
                        masquerade::setup(&cfg)
                    })
                    .map_err(|e| e.to_string());
                let mut binding = match made {
                    Ok(b) => b,
                    Err(e) => {
                        ready_tx.send(Err(e)).unwrap();
                        return;
                    }
                };
                let server = binding.take_dhcp().unwrap();
                ready_tx.send(Ok(binding.lease().clone())).unwrap();
                tokio::select! {
                    result = server.run() => result.unwrap(),
                    _ = stop_rx => {}
                }
                let cfg = binding.config().clone();
                binding.teardown().unwrap();
                masquerade::teardown(&cfg).unwrap();
            });
        });
        let lease = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap()
            .unwrap_or_else(|e| panic!("setup: {e}"));
        Binding {
            lease,
            stop,
            thread,
        }
    }

    fn stop(self) {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
    }
}

fn config(ports: Vec<Port>, local_ports: Vec<u16>) -> MasqueradeConfig {
    let mut cfg = MasqueradeConfig::new(TAP, MAC);
    cfg.ports = ports;
    cfg.local_ports = local_ports;
    let (dns, search) =
        masquerade::parse_resolv_conf("nameserver 10.96.0.10\nsearch ns1.svc.cluster.local\n");
    cfg.dns_servers = dns;
    cfg.search_domains = search;
    cfg.hostname = Some("testvm".into());
    cfg
}

/// `udhcpc` in the guest: configures the lease it gets and returns what it was told.
fn guest_dhcp(env: &Env) -> BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("bound.env");
    let script = dir.path().join("udhcpc.script");
    std::fs::write(
        &script,
        format!(
            "#!/bin/busybox sh\n[ \"$1\" = bound ] || exit 0\n\
             /bin/busybox ip addr add $ip/$mask dev $interface\n\
             /bin/busybox ip route add default via $router\n\
             for v in ip mask router dns domain hostname mtu serverid; do eval \"echo $v=\\$$v\"; done > {0}.tmp\n\
             mv {0}.tmp {0}\n",
            env_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = script.to_str().unwrap();
    let out = in_ns(
        &env.guest,
        &[
            "/bin/busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
            "-s",
            script,
        ],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "udhcpc failed: {log}");
    std::fs::read_to_string(&env_file)
        .unwrap_or_else(|e| panic!("no bound event ({e}): {log}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// `busybox httpd` in the guest on `port`, answering `/index.html` with `body`.
fn guest_httpd(env: &Env, dir: &std::path::Path, port: u16, body: &str) -> Bg {
    let root = dir.join(port.to_string());
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), body).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &env.guest, "/bin/busybox", "httpd", "-f"])
        .args(["-p", &port.to_string(), "-h", root.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Bg(child)
}

/// An HTTP GET of `/index.html` from a thread in `ns` (busybox wget crashes here): the body.
fn get(ns: &str, addr: &str) -> std::io::Result<String> {
    let (ns, addr): (String, SocketAddr) = (ns.to_owned(), addr.parse().unwrap());
    thread::spawn(move || {
        enter(&ns);
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        conn.read_to_string(&mut reply)?;
        Ok(reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or(reply))
    })
    .join()
    .unwrap()
}

/// Polls [`get`] until it returns `body` (the guest's httpd may still be starting).
fn get_until(ns: &str, addr: &str, body: &str) {
    let start = Instant::now();
    loop {
        match get(ns, addr) {
            Ok(got) if got == body => return,
            other => assert!(
                start.elapsed() < Duration::from_secs(15),
                "GET {addr} from {ns}: {other:?}"
            ),
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn refused(ns: &str, addr: &str) {
    let err = get(ns, addr).unwrap_err();
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{addr} from {ns}: {err}"
    );
}

/// A TCP listener in the node namespace answering one HTTP request with `ok`; returns the
/// peer address it saw.
fn node_server(env: &Env) -> (SocketAddr, thread::JoinHandle<SocketAddr>) {
    let node = env.node.clone();
    let listener = thread::spawn(move || {
        enter(&node);
        TcpListener::bind((NODE_IP, 0)).unwrap()
    })
    .join()
    .unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).unwrap();
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        peer
    });
    (addr, handle)
}

fn dhcp_and_outbound(env: &Env, lease: &Lease) {
    assert_eq!(lease.mtu, Some(1400), "the pod interface's MTU");
    let got = guest_dhcp(env);
    let want = [
        ("ip", "10.0.2.2"),
        ("mask", "24"),
        ("router", "10.0.2.1"),
        ("serverid", "10.0.2.1"),
        ("dns", "10.96.0.10"),
        ("domain", "ns1.svc.cluster.local"),
        ("hostname", "testvm"),
        ("mtu", "1400"),
    ];
    for (key, value) in want {
        assert_eq!(got.get(key).map(String::as_str), Some(value), "{got:#?}");
    }

    // the guest reaches the node only through the NAT, which shows the pod IP as source
    let (addr, server) = node_server(env);
    assert_eq!(get(&env.guest, &addr.to_string()).unwrap(), "ok");
    assert_eq!(server.join().unwrap().ip(), std::net::IpAddr::V4(POD_IP));
}

#[test]
fn declared_ports_are_forwarded_and_others_refused() {
    let env = Env::new("ports");
    let binding = Binding::start(&env.pod, config(vec![Port::tcp(80)], vec![]));
    dhcp_and_outbound(&env, &binding.lease);

    let dir = tempfile::tempdir().unwrap();
    let _h80 = guest_httpd(&env, dir.path(), 80, "guest 80");
    let _h81 = guest_httpd(&env, dir.path(), 81, "guest 81");
    // the guest's servers run (seen from the guest itself)
    get_until(&env.guest, "10.0.2.2:81", "guest 81");

    // from the node: the declared port reaches the guest, the other one is refused by the pod
    get_until(&env.node, "10.199.0.2:80", "guest 80");
    refused(&env.node, "10.199.0.2:81");

    // from the pod itself: its IP and 127.0.0.1 on the declared port reach the guest
    get_until(&env.pod, "10.199.0.2:80", "guest 80");
    get_until(&env.pod, "127.0.0.1:80", "guest 80");
    refused(&env.pod, "127.0.0.1:81");

    binding.stop();
    let links = ok(&["ip", "-n", &env.pod, "-o", "link", "show"]);
    assert!(!links.contains("k6t-eth0"), "bridge left: {links}");
    let tables = ok(&["ip", "netns", "exec", &env.pod, "nft", "list", "tables"]);
    assert!(
        !tables.contains("kuvirt_masquerade"),
        "table left: {tables}"
    );
}

#[test]
fn without_ports_every_port_is_forwarded() {
    let env = Env::new("all");
    // 81 is the pod's own (say the API proxy): the pod's connections to it stay in the pod
    let binding = Binding::start(&env.pod, config(vec![], vec![81]));
    dhcp_and_outbound(&env, &binding.lease);

    let dir = tempfile::tempdir().unwrap();
    let _h80 = guest_httpd(&env, dir.path(), 80, "guest 80");
    let _h81 = guest_httpd(&env, dir.path(), 81, "guest 81");
    get_until(&env.node, "10.199.0.2:80", "guest 80");
    get_until(&env.node, "10.199.0.2:81", "guest 81");
    get_until(&env.pod, "127.0.0.1:80", "guest 80");
    refused(&env.pod, "127.0.0.1:81");

    binding.stop();
}

#[test]
fn a_tap_for_qemu_goes_on_the_bridge() {
    let env = Env::new("tap");
    let pod = env.pod.clone();
    let (links, details) = thread::spawn(move || {
        enter(&pod);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            // the veth called tap0 is in the way: a real tap under another name
            masquerade::create_tap("tap1", 107, false).unwrap();
            masquerade::create_tap("tap1", 107, false).unwrap();
            let mut cfg = config(vec![], vec![]);
            cfg.guest_interface = "tap1".into();
            cfg.pod_ip = Some(POD_IP);
            cfg.mtu = Some(1300);
            let binding = masquerade::setup(&cfg).unwrap();
            assert_eq!(binding.lease().mtu, Some(1300));
            let links = ok(&["ip", "-o", "link", "show"]);
            let details = ok(&["ip", "-d", "-o", "link", "show", "tap1"]);
            binding.teardown().unwrap();
            (links, details)
        })
    })
    .join()
    .unwrap();
    assert!(details.contains("master k6t-eth0"), "{details}");
    assert!(details.contains("mtu 1300"), "{details}");
    assert!(details.contains("tun type tap"), "{details}");
    assert!(details.contains("user 107"), "{details}");
    assert!(links.contains("k6t-eth0:"), "{links}");
}
