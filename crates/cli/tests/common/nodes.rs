//! Nodes on one host for multi-node tests: a network namespace wired to the host by a veth
//! (like a second machine), processes killed with the test, and leftovers of killed nodes.

use std::path::Path;
use std::process::{Child, Command};

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace wired to this host by a veth pair: HOST_IP on our side, NODE_IP inside.
pub struct NetNode {
    pub ns: String,
    pub host_if: String,
    pub host_ip: String,
    pub node_ip: String,
}

impl NetNode {
    /// Node `k` (1-9) of this test process.
    pub fn create(k: u32) -> NetNode {
        let id = std::process::id() % 10_000 * 10 + k;
        let n = NetNode {
            ns: format!("kvt-node-{id}"),
            host_if: format!("kvth{id}"),
            // A /30 of 10.250.0.0/16 per node.
            host_ip: format!("10.250.{}.{}", id % 16_000 / 64, id % 64 * 4 + 1),
            node_ip: format!("10.250.{}.{}", id % 16_000 / 64, id % 64 * 4 + 2),
        };
        let _ = Command::new("ip").args(["netns", "del", &n.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &n.host_if])
            .output();
        ip(&["netns", "add", &n.ns]);
        let inner = format!("kvtn{id}");
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &n.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", n.host_ip),
            "dev",
            &n.host_if,
        ]);
        ip(&["link", "set", &n.host_if, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["-n", n.ns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&["link", "set", &inner, "name", "eth0"]);
        in_ns(&["addr", "add", &format!("{}/30", n.node_ip), "dev", "eth0"]);
        in_ns(&["link", "set", "eth0", "up"]);
        in_ns(&["route", "add", "default", "via", &n.host_ip]);
        n
    }
}

/// A link the nodes share (a bridge on this host, like a switch between machines), so their
/// agents can route each other's pod CIDRs through each other: HOST_IP (`.1`) is ours.
pub struct Lan {
    pub bridge: String,
    pub host_ip: String,
    net: String,
}

impl Lan {
    pub fn create() -> Lan {
        let id = std::process::id() % 10_000;
        let lan = Lan {
            bridge: format!("kvtl{id}"),
            host_ip: format!("10.249.{}.1", id % 256),
            net: format!("10.249.{}", id % 256),
        };
        let _ = Command::new("ip")
            .args(["link", "del", &lan.bridge])
            .output();
        ip(&["link", "add", &lan.bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lan.host_ip),
            "dev",
            &lan.bridge,
        ]);
        ip(&["link", "set", &lan.bridge, "up"]);
        lan
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

impl NetNode {
    /// Node `k` (1-9) of this test process on `lan`, at `.{k+1}`.
    pub fn on_lan(k: u32, lan: &Lan) -> NetNode {
        let id = std::process::id() % 10_000 * 10 + k;
        let n = NetNode {
            ns: format!("kvt-node-{id}"),
            host_if: format!("kvth{id}"),
            host_ip: lan.host_ip.clone(),
            node_ip: format!("{}.{}", lan.net, k + 1),
        };
        let _ = Command::new("ip").args(["netns", "del", &n.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &n.host_if])
            .output();
        ip(&["netns", "add", &n.ns]);
        let inner = format!("kvtn{id}");
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &n.ns]);
        ip(&["link", "set", &n.host_if, "master", &lan.bridge, "up"]);
        let in_ns = |args: &[&str]| {
            let mut all = vec!["-n", n.ns.as_str()];
            all.extend_from_slice(args);
            ip(&all);
        };
        in_ns(&["link", "set", "lo", "up"]);
        in_ns(&["link", "set", &inner, "name", "eth0"]);
        in_ns(&["addr", "add", &format!("{}/24", n.node_ip), "dev", "eth0"]);
        in_ns(&["link", "set", "eth0", "up"]);
        in_ns(&["route", "add", "default", "via", &n.host_ip]);
        n
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGKILL to every process whose command line names `dir` (launchers and QEMUs of a node).
pub fn kill_under(dir: &Path) {
    let dir = dir.display().to_string();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read(p.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dir))
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Kills whatever still runs under the nodes' state directories when the test ends, passed or
/// not (VMs outlive their node agents by design).
pub struct KillUnder(pub Vec<std::path::PathBuf>);

impl Drop for KillUnder {
    fn drop(&mut self) {
        for d in &self.0 {
            kill_under(d);
        }
    }
}

/// `kuvirt agent` joining the server at `server` from inside `net`'s namespace as node `name`,
/// its state in `state`, its stderr in `log`.
pub fn agent(
    net: &NetNode,
    server: &str,
    token_file: &Path,
    state: &Path,
    name: &str,
    pod_network: &str,
    log: &Path,
) -> Proc {
    Proc(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", net.ns))
            .arg(super::KUVIRT)
            .args(["agent", "--server", server])
            .arg("--token-file")
            .arg(token_file)
            .arg("--state-dir")
            .arg(state)
            .args(["--accel", "tcg", "--node-name", name])
            .args(["--node-heartbeat-interval", "2"])
            .args(["--pod-network-name", pod_network])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}
