//! Pod routes between nodes: every other node's pod CIDR through that node's address (flannel's
//! host-gw: the nodes share a link), and a /32 for each guest that moved live to another node
//! with its address (as Calico routes a borrowed address): towards the node that hosts it now,
//! or onto this node's bridge when it is here. Each node publishes the addresses of other
//! nodes' CIDRs it hosts in its Node's annotation [`HOSTED_IPS_ANNOTATION`]; every agent follows
//! the Nodes and its own VMIs and keeps its routes (and the masquerade set for its hosted
//! addresses) in step.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kuvirt_api::VirtualMachineInstance;
use serde_json::json;

use crate::nodevmis::NodeVmis;
use crate::sandbox::SandboxConfig;
use crate::sandbox::ipam::{self, Cidr};
use crate::sandbox::net::{self, PodRoute};

/// The Node annotation listing the addresses of other nodes' pod CIDRs whose guests run on this
/// node (comma-separated), for the other nodes' routes.
pub const HOSTED_IPS_ANNOTATION: &str = "kuvirt.io/hosted-pod-ips";

/// What a route needs to know of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub cidr: Option<Cidr>,
    /// Its InternalIP, when it is an address pods can be routed through.
    pub ip: Option<Ipv4Addr>,
    /// [`HOSTED_IPS_ANNOTATION`].
    pub hosted: BTreeSet<Ipv4Addr>,
}

/// A Node as a route sees it. Simulated nodes and loopback addresses route nothing.
pub fn peer(node: &Node) -> Peer {
    let meta = &node.metadata;
    let simulated = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("kuvirt.io/simulated"))
        .is_some_and(|v| v == "true");
    let ip = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .and_then(|a| a.address.parse::<IpAddr>().ok())
        .and_then(|a| match a {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(v4),
            _ => None,
        })
        .filter(|_| !simulated);
    Peer {
        name: meta.name.clone().unwrap_or_default(),
        cidr: node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse().ok()),
        ip,
        hosted: parse_hosted(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get(HOSTED_IPS_ANNOTATION))
                .map_or("", String::as_str),
        ),
    }
}

/// The annotation's addresses; whatever is not an IPv4 address is skipped.
pub fn parse_hosted(value: &str) -> BTreeSet<Ipv4Addr> {
    value
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

/// The annotation's value for `ips`.
pub fn format_hosted(ips: &BTreeSet<Ipv4Addr>) -> String {
    ips.iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The addresses outside `cidr` that guests running on `node` hold: those that moved here live
/// with their pod IP. A VMI counts once this node took it over (`status.nodeName`), until it
/// ends.
pub fn hosted_here(
    vmis: &[Arc<VirtualMachineInstance>],
    node: &str,
    cidr: Cidr,
) -> BTreeSet<Ipv4Addr> {
    vmis.iter()
        .filter_map(|v| v.status.as_ref())
        .filter(|s| s.node_name.as_deref() == Some(node))
        .filter(|s| !s.phase.as_ref().is_some_and(|p| p.is_final()))
        .flat_map(|s| s.interfaces.iter())
        .flat_map(|i| i.ip_address.iter().chain(i.ip_addresses.iter()))
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
        .filter(|ip| !cidr.contains(*ip))
        .collect()
}

/// The routes node `me` wants: each other node's CIDR through it, each address another node
/// hosts through that node (unless it is here too: here wins), each address hosted here onto
/// the bridge. One route per destination.
pub fn wanted(me: &str, hosted: &BTreeSet<Ipv4Addr>, peers: &[Peer]) -> BTreeSet<PodRoute> {
    let mut by_dst: BTreeMap<Cidr, Option<Ipv4Addr>> = BTreeMap::new();
    let mut peers: Vec<&Peer> = peers.iter().filter(|p| p.name != me).collect();
    // Two nodes claiming one address (for a moment, during a hand-over): the first by name.
    peers.sort_by(|a, b| b.name.cmp(&a.name));
    for p in peers {
        let Some(via) = p.ip else { continue };
        if let Some(c) = p.cidr {
            by_dst.insert(c, Some(via));
        }
        for ip in &p.hosted {
            if let Ok(dst) = Cidr::new(*ip, 32) {
                by_dst.insert(dst, Some(via));
            }
        }
    }
    for ip in hosted {
        if let Ok(dst) = Cidr::new(*ip, 32) {
            by_dst.insert(dst, None);
        }
    }
    by_dst
        .into_iter()
        .map(|(dst, via)| PodRoute { dst, via })
        .collect()
}

/// What the route keeper needs.
#[derive(Clone, Debug)]
pub struct RoutesConfig {
    pub node: String,
    pub cidr: Cidr,
    pub sandbox: SandboxConfig,
}

impl RoutesConfig {
    /// Where the routes installed last are remembered (removed after a restart if no longer
    /// wanted).
    fn state_file(&self) -> PathBuf {
        self.sandbox.state_dir.join("pod-routes")
    }
}

/// How often routes are put back even when nothing changed (someone may have removed them).
const REASSERT: Duration = Duration::from_secs(60);

/// Keeps this node's pod routes, hosted-address masquerade set and Node annotation in step with
/// the Nodes and the node's VMIs, until the task is dropped.
pub async fn run(client: kube::Client, cfg: RoutesConfig, vmis: NodeVmis) {
    let (store, writer) = reflector::store::<Node>();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut events = reflector(writer, watcher(nodes.clone(), watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut installed = read_installed(&cfg);
    let mut last_hosted: Option<BTreeSet<Ipv4Addr>> = None;
    let mut last_full: Option<Instant> = None;
    let mut refused: BTreeSet<PodRoute> = BTreeSet::new();
    let mut ready = false;
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                None => return,
                Some(Ok(watcher::Event::InitDone)) => ready = true,
                Some(_) => {}
            },
            () = vmis.any_changed() => {}
            () = tokio::time::sleep(REASSERT) => {}
        }
        if !ready {
            continue;
        }
        let peers: Vec<Peer> = store.state().iter().map(|n| peer(n)).collect();
        let hosted = hosted_here(&vmis.here(), &cfg.node, cfg.cidr);
        let want = wanted(&cfg.node, &hosted, &peers);
        let full = last_full.is_none_or(|t| t.elapsed() >= REASSERT);
        if full {
            last_full = Some(Instant::now());
            refused.clear();
        }
        if want != installed || full {
            let (c, w, old) = (cfg.clone(), want.clone(), installed.clone());
            let failed = tokio::task::spawn_blocking(move || apply(&c, &old, &w))
                .await
                .unwrap_or_default();
            for (r, e) in failed {
                // A node not on this node's link cannot be a next hop: said once.
                if refused.insert(r) {
                    tracing::warn!(route = %r, error = %e, "pod route not installed");
                }
            }
            installed = want;
            write_installed(&cfg, &installed);
        }
        // Masqueraded: the guests that moved here, and the sandboxes of targets still waiting
        // for theirs (`pods.rs` adds each when it makes it; a set rewritten here keeps them).
        // Looked at when what is hosted changes, and on each re-assert.
        if full || last_hosted.as_ref() != Some(&hosted) {
            let (c, mut masq) = (cfg.clone(), hosted.clone());
            let done = tokio::task::spawn_blocking(move || {
                masq.extend(ipam::addresses_outside(&c.sandbox.state_dir, c.cidr)?);
                net::set_hosted(&c.sandbox, &masq.into_iter().collect::<Vec<_>>())
            })
            .await;
            match done {
                Ok(Ok(())) => last_hosted = Some(hosted.clone()),
                Ok(Err(e)) => tracing::warn!(error = %e, "masquerading hosted pod addresses"),
                Err(_) => {}
            }
        }
        let published = peers
            .iter()
            .find(|p| p.name == cfg.node)
            .map(|p| p.hosted.clone());
        if published.is_some() && published.as_ref() != Some(&hosted) {
            let value = if hosted.is_empty() {
                serde_json::Value::Null
            } else {
                format_hosted(&hosted).into()
            };
            let patch = json!({"metadata": {"annotations": {HOSTED_IPS_ANNOTATION: value}}});
            if let Err(e) = nodes
                .patch(&cfg.node, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                tracing::warn!(error = %e, "publishing the node's hosted pod addresses");
            }
        }
    }
}

/// Removes the routes of `old` no longer wanted, then installs every wanted one; the ones that
/// could not be installed, with why.
fn apply(
    cfg: &RoutesConfig,
    old: &BTreeSet<PodRoute>,
    want: &BTreeSet<PodRoute>,
) -> Vec<(PodRoute, crate::sandbox::SandboxError)> {
    let mut failed = Vec::new();
    let wanted_dst: BTreeSet<Cidr> = want.iter().map(|r| r.dst).collect();
    for r in old.iter().filter(|r| !wanted_dst.contains(&r.dst)) {
        if let Err(e) = net::delete_route(r) {
            failed.push((*r, e));
        }
    }
    for r in want {
        if let Err(e) = net::replace_route(&cfg.sandbox, r) {
            failed.push((*r, e));
        }
    }
    failed
}

fn read_installed(cfg: &RoutesConfig) -> BTreeSet<PodRoute> {
    std::fs::read_to_string(cfg.state_file())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let dst = parts.next()?.parse().ok()?;
            let via = match parts.next() {
                Some(v) => Some(v.parse().ok()?),
                None => None,
            };
            Some(PodRoute { dst, via })
        })
        .collect()
}

fn write_installed(cfg: &RoutesConfig, routes: &BTreeSet<PodRoute>) {
    let text: String = routes
        .iter()
        .map(|r| match r.via {
            Some(v) => format!("{} {v}\n", r.dst),
            None => format!("{}\n", r.dst),
        })
        .collect();
    let path = cfg.state_file();
    if let Err(e) = std::fs::write(&path, text) {
        tracing::warn!(path = %path.display(), error = %e, "remembering the pod routes");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(name: &str, cidr: &str, ip: &str, hosted: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {HOSTED_IPS_ANNOTATION: hosted}},
            "spec": {"podCIDR": cidr},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .unwrap()
    }

    fn route(dst: &str, via: Option<&str>) -> PodRoute {
        PodRoute {
            dst: dst.parse().unwrap(),
            via: via.map(|v| v.parse().unwrap()),
        }
    }

    #[test]
    fn other_nodes_cidrs_and_moved_addresses_are_routed() {
        let peers: Vec<Peer> = [
            node("a", "10.244.0.0/24", "192.168.1.10", ""),
            node("b", "10.244.1.0/24", "192.168.1.11", "10.244.0.5, junk"),
            node("c", "10.244.2.0/24", "127.0.0.1", ""),
        ]
        .iter()
        .map(peer)
        .collect();
        assert_eq!(
            peers[1].hosted,
            BTreeSet::from([Ipv4Addr::new(10, 244, 0, 5)])
        );
        assert_eq!(peers[2].ip, None, "a loopback address routes nothing");
        // Node a: b's CIDR, and its own address that moved to b.
        assert_eq!(
            wanted("a", &BTreeSet::new(), &peers),
            BTreeSet::from([
                route("10.244.0.5/32", Some("192.168.1.11")),
                route("10.244.1.0/24", Some("192.168.1.11")),
            ])
        );
        // Node b hosts it: onto its bridge.
        let here = BTreeSet::from([Ipv4Addr::new(10, 244, 0, 5)]);
        assert_eq!(
            wanted("b", &here, &peers),
            BTreeSet::from([
                route("10.244.0.0/24", Some("192.168.1.10")),
                route("10.244.0.5/32", None),
            ])
        );
    }

    #[test]
    fn here_wins_over_a_claim_not_yet_withdrawn() {
        let peers: Vec<Peer> = [
            node("a", "10.244.0.0/24", "192.168.1.10", "10.244.1.7"),
            node("b", "10.244.1.0/24", "192.168.1.11", ""),
        ]
        .iter()
        .map(peer)
        .collect();
        // The guest moved back home to b while a still lists it.
        let here = BTreeSet::from([Ipv4Addr::new(10, 244, 1, 7)]);
        assert!(wanted("b", &here, &peers).contains(&route("10.244.1.7/32", None)));
    }

    #[test]
    fn only_taken_over_guests_outside_the_cidr_are_hosted() {
        let vmi = |name: &str, node: &str, phase: &str, ip: &str| {
            Arc::new(
                serde_json::from_value::<VirtualMachineInstance>(json!({
                    "metadata": {"name": name},
                    "spec": {"domain": {"devices": {}}},
                    "status": {"nodeName": node, "phase": phase,
                               "interfaces": [{"name": "default", "ipAddress": ip, "ipAddresses": [ip]}]},
                }))
                .unwrap(),
            )
        };
        let vmis = [
            vmi("moved", "b", "Running", "10.244.0.5"),
            vmi("local", "b", "Running", "10.244.1.9"),
            vmi("ended", "b", "Succeeded", "10.244.0.6"),
            vmi("elsewhere", "a", "Running", "10.244.0.7"),
        ];
        assert_eq!(
            hosted_here(&vmis, "b", "10.244.1.0/24".parse().unwrap()),
            BTreeSet::from([Ipv4Addr::new(10, 244, 0, 5)])
        );
        assert_eq!(
            format_hosted(&BTreeSet::from([Ipv4Addr::new(10, 244, 0, 5)])),
            "10.244.0.5"
        );
        assert_eq!(parse_hosted(""), BTreeSet::new());
    }
}
