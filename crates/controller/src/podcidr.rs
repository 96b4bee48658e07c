//! Node IPAM, as kube-controller-manager's range allocator does it: every Node without a pod CIDR
//! gets the lowest free subnet (a /24 by default) of the cluster CIDR (10.244.0.0/16 by default)
//! in `spec.podCIDR` and `spec.podCIDRs`. A node's CIDR never changes once set; the node agent
//! waits for it before it starts pods.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::Error;

/// The cluster's pod network and the size of each node's share of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterCidr {
    network: Ipv4Addr,
    prefix: u8,
    node_prefix: u8,
}

/// A bad cluster CIDR or node mask size.
#[derive(Debug, thiserror::Error)]
#[error("cluster cidr {0:?}: want an IPv4 network a.b.c.d/n and a node mask size from n to 30")]
pub struct CidrError(String);

impl Default for ClusterCidr {
    fn default() -> Self {
        ClusterCidr {
            network: Ipv4Addr::new(10, 244, 0, 0),
            prefix: 16,
            node_prefix: 24,
        }
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// `a.b.c.d/n` → (network address, n).
fn parse(cidr: &str) -> Option<(Ipv4Addr, u8)> {
    let (addr, prefix) = cidr.trim().split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((Ipv4Addr::from(u32::from(addr) & mask(prefix)), prefix))
}

impl ClusterCidr {
    /// `cidr` (e.g. `10.244.0.0/16`) cut into subnets of `/node_prefix` (e.g. 24).
    pub fn new(cidr: &str, node_prefix: u8) -> Result<ClusterCidr, CidrError> {
        let bad = || CidrError(format!("{cidr} /{node_prefix}"));
        let (network, prefix) = parse(cidr).ok_or_else(bad)?;
        if node_prefix < prefix || node_prefix > 30 || node_prefix - prefix > 24 {
            return Err(bad());
        }
        Ok(ClusterCidr {
            network,
            prefix,
            node_prefix,
        })
    }

    /// How many node subnets there are.
    pub fn subnets(&self) -> u32 {
        1 << (self.node_prefix - self.prefix)
    }

    /// The `i`-th node subnet.
    pub fn subnet(&self, i: u32) -> Option<String> {
        (i < self.subnets()).then(|| {
            let start = u32::from(self.network) + (i << (32 - u32::from(self.node_prefix)));
            format!("{}/{}", Ipv4Addr::from(start), self.node_prefix)
        })
    }

    /// Which node subnet `cidr` is, if it is one of ours.
    fn index_of(&self, cidr: &str) -> Option<u32> {
        let (net, prefix) = parse(cidr)?;
        if prefix != self.node_prefix
            || u32::from(net) & mask(self.prefix) != u32::from(self.network)
        {
            return None;
        }
        Some((u32::from(net) - u32::from(self.network)) >> (32 - u32::from(self.node_prefix)))
    }

    /// The lowest subnet none of `used` is.
    pub fn lowest_free<'a>(&self, used: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let taken: std::collections::BTreeSet<u32> =
            used.into_iter().filter_map(|c| self.index_of(c)).collect();
        (0..self.subnets())
            .find(|i| !taken.contains(i))
            .and_then(|i| self.subnet(i))
    }
}

impl std::fmt::Display for ClusterCidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} (/{} per node)",
            self.network, self.prefix, self.node_prefix
        )
    }
}

/// Whether one of `node`'s pod CIDRs holds `ip`.
pub(crate) fn node_holds(node: &Node, ip: Ipv4Addr) -> bool {
    node_cidrs(node)
        .iter()
        .filter_map(|c| parse(c))
        .any(|(net, prefix)| u32::from(ip) & mask(prefix) == u32::from(net))
}

/// The pod CIDRs a node holds.
fn node_cidrs(node: &Node) -> Vec<String> {
    let Some(spec) = node.spec.as_ref() else {
        return vec![];
    };
    let mut out: Vec<String> = spec.pod_cidrs.clone().unwrap_or_default();
    out.extend(spec.pod_cidr.clone());
    out
}

/// Gives a pod CIDR to every node that has none, until the task is dropped: on every node event
/// and every 30 s (a write that lost a race is retried then).
pub async fn run(client: kube::Client, cluster: ClusterCidr) {
    let nodes: Api<Node> = Api::all(client);
    let mut events = watcher(nodes.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => {
                match ev {
                    Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)))
                        if node_cidrs(&n).is_empty() => {}
                    Some(Ok(watcher::Event::InitDone)) => {}
                    Some(_) => continue,
                    None => return,
                }
            }
            _ = tick.tick() => {}
        }
        match allocate(&nodes, cluster).await {
            Ok(()) => {}
            // A node written meanwhile (its heartbeat, say): the next event or tick retries.
            Err(crate::Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
                tracing::debug!(error = %e.message, "pod cidr allocation raced a node update");
            }
            Err(e) => tracing::warn!(error = %e, "pod cidr allocation"),
        }
    }
}

/// One pass: every node without a pod CIDR gets the lowest free one. Writes are conditional on
/// the resourceVersion the node was read at.
pub async fn allocate(nodes: &Api<Node>, cluster: ClusterCidr) -> Result<(), Error> {
    let list = nodes.list(&ListParams::default()).await?.items;
    let mut used: Vec<String> = list.iter().flat_map(node_cidrs).collect();
    for node in &list {
        if !node_cidrs(node).is_empty() {
            continue;
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let Some(cidr) = cluster.lowest_free(used.iter().map(String::as_str)) else {
            tracing::warn!(node = %name, %cluster, "no pod cidr left for the node");
            continue;
        };
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        tracing::info!(node = %name, %cidr, "pod cidr allocated");
        used.push(cidr);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_subnet_is_handed_out() {
        let c = ClusterCidr::default();
        assert_eq!(c.subnets(), 256);
        assert_eq!(c.lowest_free([]).as_deref(), Some("10.244.0.0/24"));
        assert_eq!(
            c.lowest_free(["10.244.0.0/24", "10.244.2.0/24"]).as_deref(),
            Some("10.244.1.0/24")
        );
        // Foreign CIDRs do not count.
        assert_eq!(
            c.lowest_free(["10.99.0.0/24", "10.244.0.0/25"]).as_deref(),
            Some("10.244.0.0/24")
        );
        let all: Vec<String> = (0..256).filter_map(|i| c.subnet(i)).collect();
        assert_eq!(all[255], "10.244.255.0/24");
        assert_eq!(c.lowest_free(all.iter().map(String::as_str)), None);
    }

    #[test]
    fn cluster_cidrs_are_checked() {
        let small = ClusterCidr::new("192.168.7.9/28", 30).unwrap();
        assert_eq!(small.subnets(), 4);
        assert_eq!(small.subnet(3).as_deref(), Some("192.168.7.12/30"));
        assert!(ClusterCidr::new("10.0.0.0/16", 8).is_err());
        assert!(ClusterCidr::new("10.0.0.0/16", 31).is_err());
        assert!(ClusterCidr::new("10.0.0.0", 24).is_err());
        assert!(ClusterCidr::new("10.0.0.0/0", 30).is_err());
    }

    #[test]
    fn a_node_holds_what_its_spec_says() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "spec": {"podCIDR": "10.244.3.0/24", "podCIDRs": ["10.244.3.0/24"]}
        }))
        .unwrap_or_default();
        assert_eq!(node_cidrs(&n), vec!["10.244.3.0/24", "10.244.3.0/24"]);
        assert!(node_cidrs(&Node::default()).is_empty());
        assert!(node_holds(&n, Ipv4Addr::new(10, 244, 3, 200)));
        assert!(!node_holds(&n, Ipv4Addr::new(10, 244, 4, 1)));
        assert!(!node_holds(&Node::default(), Ipv4Addr::new(10, 244, 3, 1)));
    }
}
