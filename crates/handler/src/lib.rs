//! The node agent (KubeVirt's virt-handler): registers this host as a Node, keeps it Ready, and
//! runs the launcher pods placed on it, reporting their VMIs' state.

pub mod endpoint;
pub mod node;
pub mod pods;

use std::time::Duration;

pub use pods::RunnerConfig;

/// A node agent failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("api: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Pod(String),
}

/// Registers the node, then heartbeats and runs its pods until the task is dropped.
pub async fn run(client: kube::Client, cfg: RunnerConfig) -> Result<(), Error> {
    node::register(&client, &cfg.node).await?;
    let hb_client = client.clone();
    let name = cfg.node.clone();
    let heartbeat = tokio::spawn(async move {
        let mut tick = tokio::time::interval(node::HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = node::heartbeat(&hb_client, &name).await {
                tracing::warn!(error = %e, "node heartbeat failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    let r = pods::run(client, cfg).await;
    heartbeat.abort();
    r
}
