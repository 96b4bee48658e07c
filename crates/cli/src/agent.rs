//! `kuvirt agent --server URL --token-file F`: this host joins a control plane as a node (the
//! node agent alone: no API server, no controllers). `kuvirt server` runs the same agent for its
//! own host; both build it from [`NodeFlags`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

/// How this host runs as a node (shared by `server` and `agent`).
#[derive(Args, Debug, Clone)]
pub struct NodeFlags {
    /// The Node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// Images and VM directories of this node.
    #[arg(long, env = "KUVIRT_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// auto uses KVM only if a probe guest runs under it; else TCG.
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Where the node agent's endpoint (console, VNC, pause… proxied by the API server)
    /// listens; port 0 picks a free one, published on the Node.
    #[arg(long, default_value = "0.0.0.0:0")]
    pub agent_listen: std::net::SocketAddr,
    /// The address the API server reaches this node at (default: the source address of the
    /// route to the API server, or of the default route).
    #[arg(long)]
    pub node_ip: Option<std::net::IpAddr>,
    /// Seconds between the Node's heartbeats (tests shorten it with the heartbeat timeout).
    #[arg(long, default_value = "10", hide = true)]
    pub node_heartbeat_interval: u64,
    /// The pod network's name: bridge NAME0, nftables table NAME, namespaces NAME-<uid>
    /// (tests give each server its own).
    #[arg(long, default_value = "kuvirt", hide = true, value_parser = pod_network_name)]
    pub pod_network_name: String,
}

/// A pod network name: lower-case letters and digits, at most 10 (its bridge name gets a digit
/// and must fit the kernel's 15 characters, its namespaces a uid).
fn pod_network_name(s: &str) -> std::result::Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 10
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.as_bytes()[0].is_ascii_lowercase();
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?}: 1-10 lower-case letters and digits, starting with a letter"
        ))
    }
}

/// `kuvirt agent`
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The API server, e.g. https://192.0.2.10:6443.
    #[arg(long)]
    server: String,
    /// The join token (`kuvirt server` writes it to DATA_DIR/node-token).
    #[arg(long)]
    token_file: PathBuf,
    #[command(flatten)]
    node: NodeFlags,
    /// Instead of this host, register this many simulated nodes (`<node-name>-0000`, …, label
    /// kuvirt.io/simulated=true) whose VMs report Running without QEMU: for benchmarks of the
    /// control plane.
    #[arg(long, default_value = "0", hide = true)]
    simulated_nodes: u32,
}

/// The agent's configuration from its flags.
pub fn agent_config(
    node: &NodeFlags,
    kubeconfig: &Path,
    ca_pem: &str,
    server_ip: std::net::IpAddr,
) -> Result<kuvirt_handler::AgentConfig> {
    let name = node.node_name.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into())
    });
    let runner = kuvirt_handler::RunnerConfig {
        node: name,
        exe: std::env::current_exe()?,
        kubeconfig: kubeconfig.to_path_buf(),
        // Not a server's data directory (root-only: QEMU runs as uid 107) and not `kuvirt run`'s.
        state_dir: crate::run::state_dir(Some(
            node.state_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/var/lib/kuvirt/node")),
        ))?,
        accel: node.accel.clone(),
        pod_network: node.pod_network_name.clone(),
        runtime: kuvirt_handler::Runtime::Launcher,
    };
    Ok(kuvirt_handler::AgentConfig {
        runner,
        endpoint_listen: node.agent_listen,
        ca_pem: ca_pem.to_string(),
        node_ip: node
            .node_ip
            .unwrap_or_else(|| kuvirt_handler::node::node_ip(server_ip)),
        heartbeat: std::time::Duration::from_secs(node.node_heartbeat_interval.max(1)),
        simulated_nodes: 0,
    })
}

/// API requests an agent has in flight at most.
const API_CONCURRENCY: usize = 64;

/// The host part of an `https://HOST:PORT` URL as an address (names are resolved).
async fn server_ip(url: &str) -> Result<std::net::IpAddr> {
    let authority = url
        .strip_prefix("https://")
        .and_then(|r| r.split('/').next())
        .with_context(|| format!("server URL {url:?}: expected https://HOST:PORT"))?;
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("server {authority}"))?
        .next()
        .with_context(|| format!("server {authority}: no address"))?;
    Ok(addr.ip())
}

pub async fn agent(args: AgentArgs) -> Result<i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let token = kuvirt_handler::join::JoinToken::read(&args.token_file)?;
    let ca_pem = kuvirt_handler::join::fetch_ca(&args.server, &token).await?;
    let ip = server_ip(&args.server).await?;
    // The kubeconfig lives with the node's state: launchers read it too.
    let probe = agent_config(&args.node, Path::new(""), &ca_pem, ip)?;
    let kubeconfig = probe.runner.state_dir.join("agent.kubeconfig");
    kuvirt_handler::join::write_private(
        &kubeconfig,
        kuvirt_handler::join::kubeconfig_text(&args.server, &ca_pem, &token.token).as_bytes(),
    )?;
    let mut cfg = agent_config(&args.node, &kubeconfig, &ca_pem, ip)?;
    cfg.simulated_nodes = args.simulated_nodes;
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    // hyper opens one connection per request in flight: without a limit, a node with thousands
    // of VMs (or simulated nodes with tens of thousands) would hold as many sockets, here and in
    // the API server. Watches hold a slot only until their response starts.
    let client = kube::client::ClientBuilder::try_from(config.clone())?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(API_CONCURRENCY))
        .build();
    // Its own connection, outside that limit: heartbeats must not wait behind the pods' requests.
    let heartbeat_client = kube::Client::try_from(config)?;
    if cfg.simulated_nodes > 0 {
        eprintln!(
            "kuvirt agent: {} simulated nodes {}-0000… joined {}",
            cfg.simulated_nodes, cfg.runner.node, args.server
        );
    } else {
        eprintln!(
            "kuvirt agent: node {} joined {} (this node at {})",
            cfg.runner.node, args.server, cfg.node_ip
        );
    }
    let run = kuvirt_handler::run(client, heartbeat_client, cfg);
    tokio::select! {
        r = run => {
            r?;
            Ok(0)
        }
        _ = term.recv() => Ok(0),
        _ = int.recv() => Ok(0),
    }
}
