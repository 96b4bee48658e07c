//! A small kube-proxy for embedded mode: watches Services and launcher pods and keeps an
//! nftables table of DNAT rules (`rules::render`) from cluster IPs and NodePorts to the pod IPs
//! of this node's VMs.

pub mod rules;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::Api;
use kube::runtime::reflector::reflector;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::io::AsyncWriteExt;

use crate::sandbox::ipam::Cidr;
pub use rules::{NodeNet, Rendered, render};

/// Changes closer together than this are applied at once.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// How soon a failed `nft` run is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// What the forwarder needs from the agent's configuration.
#[derive(Clone, Debug)]
pub struct ServicesConfig {
    pub node: String,
    /// The node's pod network's name: the table is `table ip NAME_services`.
    pub pod_network: String,
    /// The node's InternalIP (NodePorts answer there unless it is loopback).
    pub node_ip: IpAddr,
}

impl ServicesConfig {
    /// Our nftables table: one per pod network, so servers on different pod networks never
    /// share one.
    pub fn table(&self) -> String {
        format!("{}_services", self.pod_network)
    }
}

/// A forwarding failure.
#[derive(Debug, thiserror::Error)]
pub enum ServicesError {
    #[error("nft -f -: {0}")]
    Nft(String),
    #[error("pod network name {0:?}: only letters, digits and _ make an nftables table name")]
    BadName(String),
}

/// Keeps the table in step with Services and pods until the task is dropped. The first ruleset
/// written replaces whatever an earlier agent (perhaps killed) left; rules stay when the agent
/// stops.
pub async fn run(client: kube::Client, cfg: ServicesConfig) -> Result<(), ServicesError> {
    let table = cfg.table();
    if !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ServicesError::BadName(cfg.pod_network));
    }
    let net = node_net(&client, &cfg).await;
    let (services, svc_writer) = reflector::store::<Service>();
    let (pods, pod_writer) = reflector::store::<Pod>();
    let svc_events = reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .map(|e| (true, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let pod_events = reflector(
        pod_writer,
        watcher(
            Api::<Pod>::all(client),
            watcher::Config::default().labels("kubevirt.io=virt-launcher"),
        )
        .default_backoff(),
    )
    .map(|e| (false, e.map(|e| matches!(e, watcher::Event::InitDone))));
    let mut events = stream::select(svc_events.boxed(), pod_events.boxed());
    let (mut svcs_listed, mut pods_listed) = (false, false);
    let mut applied: Option<String> = None;
    let mut failed = false;
    loop {
        // One change (or, after a failed apply, a retry), then whatever follows within the
        // debounce window.
        let mut next = if failed {
            tokio::time::timeout(RETRY, events.next()).await.ok()
        } else {
            Some(events.next().await)
        };
        while let Some(n) = next {
            let Some((is_svc, ev)) = n else {
                return Ok(());
            };
            match ev {
                Ok(true) if is_svc => svcs_listed = true,
                Ok(true) => pods_listed = true,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "service forwarding watch"),
            }
            next = tokio::time::timeout(DEBOUNCE, events.next()).await.ok();
        }
        // A half-listed cluster would drop forwarding that is still wanted.
        if !(svcs_listed && pods_listed) {
            continue;
        }
        let r = render(&table, &net, &state(&services), &state(&pods));
        if applied.as_ref() == Some(&r.script) {
            continue;
        }
        for w in &r.warnings {
            tracing::warn!("service forwarding: {w}");
        }
        match apply(&r.script).await {
            Ok(()) => {
                tracing::info!(%table, "service forwarding updated");
                applied = Some(r.script);
                failed = false;
            }
            Err(e) => {
                tracing::warn!(error = %e, "service forwarding; retrying");
                applied = None;
                failed = true;
            }
        }
    }
}

fn state<K: kube::Resource + Clone>(store: &Store<K>) -> Vec<K>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|k| (**k).clone()).collect()
}

/// Waits for the node's pod CIDR (the node controller assigns it), then says where NodePorts
/// answer: the InternalIP (unless loopback, or IPv6) and the pod bridge's address.
async fn node_net(client: &kube::Client, cfg: &ServicesConfig) -> NodeNet {
    let nodes: Api<Node> = Api::all(client.clone());
    let cidr = loop {
        let cidr = nodes
            .get_opt(&cfg.node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.spec?.pod_cidr)
            .and_then(|c| c.parse::<Cidr>().ok());
        if let Some(c) = cidr {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut node_addresses: Vec<Ipv4Addr> = match cfg.node_ip {
        IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => vec![ip],
        _ => Vec::new(),
    };
    node_addresses.extend(cidr.gateway());
    NodeNet {
        cidr,
        node_addresses,
    }
}

/// `nft -f -` with the script: one transaction, so the table is replaced atomically.
async fn apply(script: &str) -> Result<(), ServicesError> {
    let fail = |e: std::io::Error| ServicesError::Nft(e.to_string());
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(fail)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).await.map_err(fail)?;
    }
    let out = child.wait_with_output().await.map_err(fail)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServicesError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ))
    }
}
