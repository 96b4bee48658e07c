//! Two nodes for the migration scenario: a `kuvirt server --no-node-agent` and two
//! `kuvirt agent`s, each agent in its own network namespace on a shared bridge (like two
//! machines on one switch). Everything is torn down when the [`Cluster`] is dropped: agents,
//! server, whatever still runs under the nodes' state, the pod sandboxes, the namespaces and
//! the bridge.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::plane::{
    POD_NETWORK, Paths, Proc, client_for, free_port, kill_under, until, wait_nodes_ready,
};

/// The link between the nodes: a bridge on this host holding [`LAN_HOST_IP`].
const LAN_BRIDGE: &str = "kvbml0";
/// This host on the link (the server listens here for the agents).
const LAN_HOST_IP: &str = "10.247.0.1";
/// The first three octets of the link's /24.
const LAN_NET: &str = "10.247.0";
/// The nodes' pod CIDRs come from here (/24 each).
const CLUSTER_CIDR: &str = "10.248.0.0/16";

/// Runs `ip` with `args`; its stderr becomes the error.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `ip` with `args`, ignoring failure (removing what may not exist).
fn ip_quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The bridge the nodes share; removed when dropped.
struct Lan;

impl Lan {
    fn create() -> Result<Lan> {
        ip_quiet(&["link", "del", LAN_BRIDGE]);
        let lan = Lan;
        ip(&["link", "add", LAN_BRIDGE, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{LAN_HOST_IP}/24"),
            "dev",
            LAN_BRIDGE,
        ])?;
        ip(&["link", "set", LAN_BRIDGE, "up"])?;
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        ip_quiet(&["link", "del", LAN_BRIDGE]);
    }
}

/// A network namespace on the link, at `.{k+1}`, with a default route through this host;
/// removed (with its veth) when dropped.
struct NetNode {
    ns: String,
    host_if: String,
}

impl NetNode {
    fn on_lan(k: u32) -> Result<NetNode> {
        let n = NetNode {
            ns: format!("kvbm-n{k}"),
            host_if: format!("kvbmh{k}"),
        };
        ip_quiet(&["netns", "del", &n.ns]);
        ip_quiet(&["link", "del", &n.host_if]);
        ip(&["netns", "add", &n.ns])?;
        let inner = format!("kvbmi{k}");
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &n.ns])?;
        ip(&["link", "set", &n.host_if, "master", LAN_BRIDGE, "up"])?;
        let node_ip = format!("{LAN_NET}.{}/24", k + 1);
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", &inner, "name", "eth0"],
            vec!["addr", "add", &node_ip, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", "default", "via", LAN_HOST_IP],
        ] {
            let mut all = vec!["-n", n.ns.as_str()];
            all.extend(args);
            ip(&all)?;
        }
        Ok(n)
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        ip_quiet(&["netns", "del", &self.ns]);
        ip_quiet(&["link", "del", &self.host_if]);
    }
}

/// Kills whatever runs under the nodes' state directories (VMs outlive their agents by
/// design) and removes the pods' sandboxes, when dropped.
struct Reaper(Vec<PathBuf>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for d in &self.0 {
            kill_under(d);
        }
        crate::plane::remove_pod_network();
    }
}

/// The nodes' names.
pub const NODES: [&str; 2] = ["n1", "n2"];

/// A server without a node and two agent nodes. Fields drop in order: agents and server first,
/// then what runs under the nodes, then the namespaces, then the link.
pub struct Cluster {
    _agents: Vec<Proc>,
    _server: Proc,
    _reaper: Reaper,
    _nodes: Vec<NetNode>,
    _lan: Lan,
    /// Each node's state directory (as [`NODES`]).
    pub states: Vec<PathBuf>,
    pub client: kube::Client,
}

impl Cluster {
    /// Starts everything under `base` and waits until both nodes are Ready with a pod CIDR.
    pub async fn up(paths: &Paths, base: &Path) -> Result<Cluster> {
        let _ = std::fs::remove_dir_all(base);
        let data = base.join("server");
        std::fs::create_dir_all(&data)?;
        let states: Vec<PathBuf> = NODES.iter().map(|n| base.join(n)).collect();
        for s in &states {
            std::fs::create_dir_all(s)?;
            crate::plane::open_up(s);
        }
        // Leftovers of an interrupted run go first; from here on the guards clean up.
        let lan = Lan::create()?;
        let reaper = Reaper(states.clone());
        let mut nodes = Vec::new();
        for k in 1..=NODES.len() as u32 {
            nodes.push(NetNode::on_lan(k)?);
        }
        let port = free_port()?;
        let log = std::fs::File::create(base.join("server.log"))?;
        let server = Proc {
            child: Command::new(&paths.kuvirt)
                .args(["server", "--no-node-agent", "--data-dir"])
                .arg(&data)
                .args(["--listen", &format!("0.0.0.0:{port}")])
                .args(["--tls-san", LAN_HOST_IP])
                .args(["--cluster-cidr", CLUSTER_CIDR])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", paths.kuvirt.display()))?,
        };
        let kubeconfig = data.join("kubeconfig");
        until(
            "kuvirt server listening",
            Duration::from_secs(60),
            Duration::from_millis(10),
            async || {
                (kubeconfig.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok())
                    .then_some(())
            },
        )
        .await?;
        let client = client_for(&kubeconfig).await?;
        let mut agents = Vec::new();
        for ((name, node), state) in NODES.iter().zip(&nodes).zip(&states) {
            let log = std::fs::File::create(base.join(format!("{name}.log")))?;
            let child = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", node.ns))
                .arg(&paths.kuvirt)
                .args([
                    "agent",
                    "--server",
                    &format!("https://{LAN_HOST_IP}:{port}"),
                ])
                .arg("--token-file")
                .arg(data.join("node-token"))
                .arg("--state-dir")
                .arg(state)
                .args(["--accel", &paths.accel, "--node-name", name])
                .args(["--pod-network-name", POD_NETWORK])
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting kuvirt agent in its namespace")?;
            agents.push(Proc { child });
        }
        let cluster = Cluster {
            _agents: agents,
            _server: server,
            _reaper: reaper,
            _nodes: nodes,
            _lan: lan,
            states,
            client,
        };
        wait_nodes_ready(&cluster.client, NODES.len()).await?;
        Ok(cluster)
    }

    /// The state directory of node `name`.
    pub fn state(&self, name: &str) -> Result<&Path> {
        NODES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.states[i].as_path())
            .with_context(|| format!("no node {name}"))
    }
}
