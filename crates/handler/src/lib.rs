//! The node agent (KubeVirt's virt-handler): registers this host as a Node, keeps it Ready, and
//! runs the launcher pods placed on it, reporting their VMIs' state; or, for benchmarks, many
//! simulated nodes at once ([`simulated`]).

pub mod addresses;
pub mod endpoint;
pub mod images;
pub mod join;
pub mod migration;
pub mod node;
pub mod nodevmis;
pub mod pods;
pub mod routes;
pub mod sandbox;
pub mod services;
pub mod simulated;

use std::time::Duration;

pub use pods::{RunnerConfig, Runtime};

/// A node agent failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("api: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Pod(String),
    #[error("endpoint: {0}")]
    Endpoint(#[from] endpoint::EndpointError),
}

/// Everything a node agent needs besides its API client.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub runner: RunnerConfig,
    /// Where the agent's endpoint listens (port 0: any free port; the Node says which).
    pub endpoint_listen: std::net::SocketAddr,
    /// The cluster CA (PEM): the endpoint accepts only clients it signed.
    pub ca_pem: String,
    /// The address the API server reaches this node at (its InternalIP).
    pub node_ip: std::net::IpAddr,
    /// How often the Node's Ready heartbeat is written ([`node::HEARTBEAT`] by default; must be
    /// well under the node controller's timeout).
    pub heartbeat: Duration,
    /// Instead of this host, run this many simulated nodes named `<runner.node>-0000`, … (0:
    /// this host is the node).
    pub simulated_nodes: u32,
}

/// Starts the endpoint, registers the node, then heartbeats and runs its pods until the task is
/// dropped. Heartbeats go through `heartbeat_client`, so that they never queue behind the pods'
/// requests (a node whose heartbeats are late is taken for lost, and its VMs with it).
pub async fn run(
    client: kube::Client,
    heartbeat_client: kube::Client,
    cfg: AgentConfig,
) -> Result<(), Error> {
    if cfg.simulated_nodes > 0 {
        let count = cfg.simulated_nodes;
        return simulated::run(client, heartbeat_client, cfg, count).await;
    }
    let ep = endpoint::start(endpoint::EndpointConfig {
        listen: cfg.endpoint_listen,
        state_dir: cfg.runner.state_dir.clone(),
        ca_pem: cfg.ca_pem.clone(),
    })
    .await?;
    let me = node::Identity {
        name: cfg.runner.node.clone(),
        ip: cfg.node_ip,
        endpoint_port: ep.addr.port(),
        cert_sha256: ep.cert_sha256.clone(),
        simulated: false,
    };
    node::register_all(&client, std::slice::from_ref(&me)).await;
    let heartbeat = node::keep_ready(heartbeat_client, vec![me], cfg.heartbeat);
    let svc_cfg = services::ServicesConfig {
        node: cfg.runner.node.clone(),
        pod_network: cfg.runner.pod_network.clone(),
        node_ip: cfg.node_ip,
    };
    let svc_client = client.clone();
    let services = tokio::spawn(async move {
        if let Err(e) = services::run(svc_client, svc_cfg).await {
            tracing::warn!(error = %e, "service forwarding stopped");
        }
    });
    let r = pods::run(client, cfg.runner).await;
    services.abort();
    heartbeat.abort();
    drop(ep);
    r
}
