//! Pod sandboxes made for real (root): namespaces, veths, a bridge, nftables, cgroups. Every test
//! has its own bridge, table, namespace prefix, CIDR and cgroup parent, so tests never meet each
//! other or a running `kuvirt server`, and each removes all it made.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use kuvirt_handler::sandbox::cgroup::{Layout, Limits};
use kuvirt_handler::sandbox::ipam::Cidr;
use kuvirt_handler::sandbox::{self, SandboxConfig, SandboxError, apiproxy, net};

/// A test's own names; dropping it removes every sandbox, the bridge, the table and the cgroups.
struct Node {
    cfg: SandboxConfig,
    cidr: Cidr,
    _state: tempfile::TempDir,
}

impl Node {
    fn new(id: u8) -> Node {
        let state = tempfile::tempdir().unwrap();
        let mut cfg = SandboxConfig::new(state.path());
        cfg.bridge = format!("kvtest{id}");
        cfg.nft_table = format!("kuvirt_test{id}");
        cfg.netns_prefix = format!("kvtest{id}");
        cfg.veth_prefix = format!("kt{id}");
        cfg.cgroup_parent = format!("kuvirt-test{id}");
        Node {
            cfg,
            cidr: format!("10.251.{id}.0/24").parse().unwrap(),
            _state: state,
        }
    }

    fn up(id: u8) -> Node {
        let n = Node::new(id);
        sandbox::setup_node(&n.cfg, n.cidr).unwrap();
        n
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for uid in sandbox::list(&self.cfg).unwrap_or_default() {
            let _ = sandbox::teardown(&self.cfg, &uid);
        }
        let _ = net::teardown_node(&self.cfg);
        if let Ok(layout) = Layout::detect(&self.cfg.cgroup_root) {
            for d in layout.dirs(&self.cfg.cgroup_parent, "") {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

fn sh(prog: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(prog).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn in_ns(netns: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    sh("ip", &all)
}

fn ping(from: Option<&str>, to: Ipv4Addr) -> bool {
    let to = to.to_string();
    let args = ["busybox", "ping", "-c1", "-W2", &to];
    match from {
        Some(ns) => in_ns(ns, &args).0,
        None => sh(args[0], &args[1..]).0,
    }
}

fn eth0_addresses(netns: &str) -> Vec<String> {
    let (ok, out) = in_ns(netns, &["ip", "-j", "-4", "addr", "show", "dev", "eth0"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// The host's default gateway, if it has one.
fn default_gateway() -> Option<Ipv4Addr> {
    let (_, out) = sh("ip", &["-j", "-4", "route", "show", "default"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.get(0)?.get("gateway")?.as_str()?.parse().ok()
}

const UID_A: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const UID_B: &str = "f0e1d2c3-b4a5-4968-8776-655443322110";

#[test]
fn a_pod_gets_a_namespace_an_address_nat_dns_and_a_cgroup_and_loses_them_at_teardown() {
    let node = Node::up(1);
    let cfg = &node.cfg;
    let limits = Limits {
        memory_bytes: Some(256 << 20),
        cpu_request_millis: Some(500),
        cpu_limit_millis: Some(1000),
    };
    let a = sandbox::create(cfg, node.cidr, UID_A, &limits, &Default::default()).unwrap();
    assert_eq!(a.netns, "kvtest1-0a1b2c3d4e5f");
    assert_eq!(a.gateway, Ipv4Addr::new(10, 251, 1, 1));
    assert!(node.cidr.contains(a.ip) && a.ip != a.gateway);

    // Inside: eth0 with the pod IP, lo up, the default route via the bridge.
    assert_eq!(eth0_addresses(&a.netns), vec![format!("{}/24", a.ip)]);
    let (_, route) = in_ns(&a.netns, &["ip", "route", "show", "default"]);
    assert!(route.contains("default via 10.251.1.1 dev eth0"), "{route}");
    let (_, lo) = in_ns(&a.netns, &["ip", "-br", "link", "show", "lo"]);
    assert!(lo.contains("UNKNOWN") || lo.contains("UP"), "{lo}");
    assert_eq!(
        net::link_mtu(&a.veth).unwrap(),
        net::link_mtu(&cfg.bridge).unwrap()
    );
    // Both ways across the bridge.
    assert!(ping(Some(&a.netns), a.gateway), "pod → bridge");
    assert!(ping(None, a.ip), "host → pod");

    // NAT: the host's own gateway answers the pod (it has no route back to the pod CIDR, so
    // only a masqueraded packet gets a reply) — where the host can reach a gateway at all.
    if let Some(gw) = default_gateway()
        && ping(None, gw)
    {
        assert!(ping(Some(&a.netns), gw), "pod → {gw} through the NAT");
    }

    // DNS: the file `ip netns exec` mounts over /etc/resolv.conf.
    let (_, seen) = in_ns(&a.netns, &["cat", "/etc/resolv.conf"]);
    assert_eq!(seen, std::fs::read_to_string(&a.resolv_conf).unwrap());
    assert_eq!(
        a.resolv_conf,
        Path::new("/etc/netns").join(&a.netns).join("resolv.conf")
    );

    // NAT: our table masquerades the pod CIDR leaving through anything but the bridge.
    let (_, table) = sh("nft", &["list", "table", "ip", &cfg.nft_table]);
    assert!(
        table.contains("ip saddr 10.251.1.0/24 oifname != \"kvtest1\" masquerade"),
        "{table}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "1"
    );

    // The cgroup carries the limits.
    let read = |suffix: &str| {
        a.cgroups
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(suffix)).ok())
            .unwrap()
            .trim()
            .to_string()
    };
    match Layout::detect(&cfg.cgroup_root).unwrap() {
        Layout::V1 { .. } => {
            assert_eq!(read("memory.limit_in_bytes"), (256u64 << 20).to_string());
            assert_eq!(read("cpu.shares"), "512");
            assert_eq!(read("cpu.cfs_quota_us"), "100000");
        }
        Layout::V2(_) => {
            assert_eq!(read("memory.max"), (256u64 << 20).to_string());
            assert_eq!(read("cpu.max"), "100000 100000");
        }
    }

    // Idempotent: making it again keeps everything, the address included.
    let again = sandbox::create(cfg, node.cidr, UID_A, &limits, &Default::default()).unwrap();
    assert_eq!(again, a);
    assert_eq!(eth0_addresses(&a.netns).len(), 1);
    assert_eq!(sandbox::find(cfg, UID_A).unwrap().unwrap().ip, a.ip);

    // A second pod: another address, and the two reach each other over the bridge.
    let b = sandbox::create(
        cfg,
        node.cidr,
        UID_B,
        &Limits::default(),
        &Default::default(),
    )
    .unwrap();
    assert_ne!(a.ip, b.ip);
    assert!(ping(Some(&b.netns), a.ip), "pod → pod");
    let mut listed = sandbox::list(cfg).unwrap();
    listed.sort();
    assert_eq!(listed, vec![UID_A.to_string(), UID_B.to_string()]);

    // Teardown leaves nothing of A and does not touch B.
    let ip_file = cfg
        .state_dir
        .join("ipam")
        .join(node.cidr.safe_name())
        .join(a.ip.to_string());
    assert!(ip_file.exists());
    sandbox::teardown(cfg, UID_A).unwrap();
    assert!(!net::netns_exists(&a.netns));
    assert!(!net::link_exists(&a.veth));
    assert!(!ip_file.exists());
    assert!(!a.resolv_conf.parent().unwrap().exists());
    for d in &a.cgroups {
        assert!(!d.exists(), "{}", d.display());
    }
    assert!(sandbox::find(cfg, UID_A).unwrap().is_none());
    assert!(ping(Some(&b.netns), b.gateway));
    // Twice is fine.
    sandbox::teardown(cfg, UID_A).unwrap();
    sandbox::teardown(cfg, UID_B).unwrap();
    assert!(sandbox::list(cfg).unwrap().is_empty());
}

#[test]
fn a_half_made_sandbox_is_cleaned_up() {
    // No node set-up: the bridge is missing, so attaching the veth fails part way.
    let node = Node::new(2);
    let cfg = &node.cfg;
    let err = sandbox::create(
        cfg,
        node.cidr,
        UID_A,
        &Limits::default(),
        &Default::default(),
    )
    .unwrap_err();
    match &err {
        SandboxError::Command { cmd, stderr } => {
            assert!(cmd.starts_with("ip "), "{cmd}");
            assert!(!stderr.is_empty());
        }
        other => panic!("not a command error: {other}"),
    }
    let netns = cfg.netns_name(UID_A).unwrap();
    assert!(!net::netns_exists(&netns));
    assert!(!net::link_exists(&cfg.veth_name(UID_A).unwrap()));
    assert!(
        sandbox::list(cfg).unwrap().is_empty(),
        "the address was kept"
    );
    assert!(!net::etc_dir(&netns).exists());

    // Only a namespace and an address, made by hand: teardown removes both.
    let (ok, out) = sh("ip", &["netns", "add", &netns]);
    assert!(ok, "{out}");
    sandbox::ipam::Ipam::new(&cfg.state_dir, node.cidr)
        .allocate(UID_A)
        .unwrap();
    sandbox::teardown(cfg, UID_A).unwrap();
    assert!(!net::netns_exists(&netns));
    assert!(sandbox::list(cfg).unwrap().is_empty());
}

#[test]
fn a_launcher_in_the_namespace_joins_its_cgroup_and_reaches_the_loopback_api_server() {
    let node = Node::up(3);
    let cfg = &node.cfg;
    let s = sandbox::create(
        cfg,
        node.cidr,
        UID_A,
        &Limits::default(),
        &Default::default(),
    )
    .unwrap();

    // What `kuvirt launcher --cgroup DIR` does, from where `ip netns exec` puts it.
    let mut script = String::new();
    for d in s.launcher_cgroups() {
        script.push_str(&format!("echo $$ > {}/cgroup.procs && ", d.display()));
    }
    script.push_str("cat /proc/self/cgroup");
    let (ok, out) = in_ns(&s.netns, &["sh", "-c", &script]);
    assert!(ok, "{out}");
    let name = cfg.cgroup_name(UID_A).unwrap();
    assert!(
        out.contains(&format!("/{}/{name}", cfg.cgroup_parent)),
        "{out}"
    );

    // The API server on the host's loopback, as the pod's own loopback sees it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut c, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.unwrap();
            c.write_all(&buf).await.unwrap();
        });
        let listener = apiproxy::listen_in_netns(&s.netns, addr).unwrap();
        let fwd = apiproxy::forward(listener, addr).unwrap();
        let echoed = tokio::task::spawn_blocking({
            let netns = s.netns.clone();
            move || {
                apiproxy::in_netns(&netns, move || {
                    use std::io::{Read, Write};
                    let mut c = std::net::TcpStream::connect(addr)?;
                    c.write_all(b"ping")?;
                    let mut buf = [0u8; 4];
                    c.read_exact(&mut buf)?;
                    Ok(buf)
                })
            }
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&echoed, b"ping");
        fwd.abort();
    });
    // Nothing listens there once the forwarder is gone (the socket closed with the runtime).
    drop(rt);
    sandbox::teardown(cfg, UID_A).unwrap();
    for d in &s.cgroups {
        assert!(!d.exists(), "{}", d.display());
    }
}

/// A host firewall table whose forward chain drops (only this test's bridge's traffic, so tests
/// running alongside are not disturbed); deleted on drop.
struct HostFirewall(&'static str);

impl HostFirewall {
    fn new(table: &'static str, bridge: &str) -> HostFirewall {
        let script = format!(
            "table ip {table} {{\n chain hostfwd {{\n type filter hook forward priority 0; policy drop;\n \
             iifname != \"{bridge}\" oifname != \"{bridge}\" accept\n }}\n}}\n"
        );
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        HostFirewall(table)
    }

    fn chain(&self) -> String {
        sh("nft", &["list", "chain", "ip", self.0, "hostfwd"]).1
    }
}

impl Drop for HostFirewall {
    fn drop(&mut self) {
        let _ = sh("nft", &["delete", "table", "ip", self.0]);
    }
}

#[test]
fn node_set_up_is_idempotent_opens_a_dropping_forward_chain_and_its_teardown_is_complete() {
    let node = Node::up(4);
    let cfg = &node.cfg;
    let host_fw = HostFirewall::new("kuvirt_test4_host", &cfg.bridge);
    sandbox::setup_node(cfg, node.cidr).unwrap();
    sandbox::setup_node(cfg, node.cidr).unwrap();
    let (_, addrs) = sh("ip", &["-br", "addr", "show", "dev", &cfg.bridge]);
    assert_eq!(addrs.matches("10.251.4.1/24").count(), 1, "{addrs}");
    let (_, table) = sh("nft", &["list", "table", "ip", &cfg.nft_table]);
    // The node's CIDR, and the addresses of guests that moved here.
    assert_eq!(table.matches("masquerade").count(), 2, "{table}");
    net::set_hosted(
        cfg,
        &[Ipv4Addr::new(10, 244, 9, 5), Ipv4Addr::new(10, 244, 9, 6)],
    )
    .unwrap();
    net::set_hosted(cfg, &[Ipv4Addr::new(10, 244, 9, 6)]).unwrap();
    let (_, set) = sh(
        "nft",
        &["list", "set", "ip", &cfg.nft_table, net::HOSTED_SET],
    );
    assert!(set.contains("elements = { 10.244.9.6 }"), "{set}");
    // Every node's bridge has the same MAC and answers ARP for what it routes elsewhere.
    let (_, link) = sh("ip", &["-br", "link", "show", "dev", &cfg.bridge]);
    assert!(link.contains(net::BRIDGE_MAC), "{link}");
    let proxy =
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", cfg.bridge));
    assert_eq!(proxy.unwrap().trim(), "1");
    // The host's dropping forward chain lets the bridge through, once.
    let chain = host_fw.chain();
    assert_eq!(
        chain.matches("comment \"kuvirt kvtest4\"").count(),
        2,
        "{chain}"
    );
    assert!(chain.contains("iifname \"kvtest4\" accept"), "{chain}");
    if let Some(gw) = default_gateway()
        && ping(None, gw)
    {
        let s = sandbox::create(
            cfg,
            node.cidr,
            UID_A,
            &Limits::default(),
            &Default::default(),
        )
        .unwrap();
        assert!(
            ping(Some(&s.netns), gw),
            "forwarded past the host's drop policy"
        );
        sandbox::teardown(cfg, UID_A).unwrap();
    }
    net::teardown_node(cfg).unwrap();
    let chain = host_fw.chain();
    assert!(!chain.contains("kuvirt kvtest4"), "{chain}");
    assert!(!net::link_exists(&cfg.bridge));
    let (exists, _) = sh("nft", &["list", "table", "ip", &cfg.nft_table]);
    assert!(!exists);
}
