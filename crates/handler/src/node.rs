//! The Node object: registration with this host's capacity and the heartbeat that keeps it Ready.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Error;

/// How often the node reports in.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// This host's memory (bytes, from /proc/meminfo) and CPUs.
pub fn capacity() -> (u64, usize) {
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (mem, cpus)
}

/// Who this node is and where its endpoint listens.
#[derive(Clone, Debug)]
pub struct Identity {
    pub name: String,
    pub ip: std::net::IpAddr,
    pub endpoint_port: u16,
    /// SHA-256 (hex) of the endpoint's certificate.
    pub cert_sha256: String,
    /// A simulated node ([`crate::simulated`]): its capacity is [`SIMULATED_CAPACITY`], not the
    /// host's, and it carries [`crate::simulated::LABEL`].
    pub simulated: bool,
}

/// A simulated node's capacity: memory, CPUs, pods.
pub const SIMULATED_CAPACITY: (&str, &str, &str) = ("256Gi", "64", "250");

/// Nodes registered or heartbeated at once (an agent of simulated nodes has many).
const CONCURRENCY: usize = 16;

/// Registers every node, each retried every 5 s until it is done: registration waits out
/// another agent that still holds a node's name.
pub async fn register_all(client: &kube::Client, nodes: &[Identity]) {
    futures_util::stream::iter(nodes)
        .for_each_concurrent(CONCURRENCY, |me| async move {
            while let Err(e) = register(client, me).await {
                tracing::warn!(node = %me.name, error = %e, "registering the node; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
        .await;
}

/// Heartbeats every node once per `every` until the task is aborted.
pub fn keep_ready(
    client: kube::Client,
    nodes: Vec<Identity>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            futures_util::stream::iter(&nodes)
                .for_each_concurrent(CONCURRENCY, |me| {
                    let client = &client;
                    async move {
                        if let Err(e) = heartbeat(client, me).await {
                            tracing::warn!(node = %me.name, error = %e, "node heartbeat failed");
                        }
                    }
                })
                .await;
        }
    })
}

/// The address the API server at `server` reaches this host at: the source address of the route
/// towards it (no packet is sent), or for a server on loopback, of the default route; loopback
/// when there is none.
pub fn node_ip(server: std::net::IpAddr) -> std::net::IpAddr {
    let probe = |to: std::net::SocketAddr| {
        let any: std::net::SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = std::net::UdpSocket::bind(any).ok()?;
        s.connect(to).ok()?;
        s.local_addr().ok().map(|a| a.ip())
    };
    let via = if server.is_loopback() || server.is_unspecified() {
        // Any routable address: only the routing decision is used.
        probe(([192, 0, 2, 1], 9).into())
    } else {
        probe((server, 9).into())
    };
    via.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The capacity a node reports: the host's, or a simulated node's.
fn resources(me: &Identity) -> serde_json::Value {
    if me.simulated {
        let (memory, cpu, pods) = SIMULATED_CAPACITY;
        return json!({"memory": memory, "cpu": cpu, "pods": pods});
    }
    let (mem, cpus) = capacity();
    json!({"memory": mem.to_string(), "cpu": cpus.to_string(), "pods": "110"})
}

/// The status a healthy node reports.
/// `since` is when the node last became Ready (kept across heartbeats), else now.
fn status(me: &Identity, resources: serde_json::Value, since: Option<String>) -> serde_json::Value {
    let t = kuvirt_apimachinery::meta::now();
    let since = since.unwrap_or_else(|| t.clone());
    json!({
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": me.ip.to_string()},
            {"type": "Hostname", "address": me.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": me.endpoint_port}},
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KuvirtHandlerReady",
            "message": "kuvirt handler is posting ready status",
            "lastHeartbeatTime": t, "lastTransitionTime": since,
        }],
        "nodeInfo": {
            "kubeletVersion": concat!("kuvirt-", env!("CARGO_PKG_VERSION")),
            "architecture": "amd64", "operatingSystem": "linux",
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "", "containerRuntimeVersion": "kuvirt", "kubeProxyVersion": "",
        },
    })
}

/// Creates the Node if it does not exist and reports its status.
pub async fn register(client: &kube::Client, me: &Identity) -> Result<(), Error> {
    let name = me.name.as_str();
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
    labels.insert("kubevirt.io/schedulable".to_string(), "true".to_string());
    if me.simulated {
        labels.insert(crate::simulated::LABEL.to_string(), "true".to_string());
    }
    let node = Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {
            if let Some(existing) = nodes.get_opt(name).await? {
                refuse_takeover(&existing, me, k8s_openapi::jiff::Timestamp::now())?;
            }
        }
        Err(e) => return Err(e.into()),
    }
    // The endpoint's certificate may be new (a new state directory): publish its hash. A
    // simulated node's label goes on a Node that existed before, too.
    let mut meta = json!({"annotations": {crate::endpoint::CERT_ANNOTATION: me.cert_sha256}});
    if me.simulated {
        meta["labels"] = json!({crate::simulated::LABEL: "true"});
    }
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": meta })),
        )
        .await?;
    heartbeat(client, me).await
}

/// How recent another agent's heartbeat must be for its Node to count as taken.
const TAKEN_FOR: std::time::Duration = std::time::Duration::from_secs(40);

/// A Node another live agent holds (a different endpoint certificate, a recent heartbeat) is not
/// taken over: two hosts under one name would both run its pods.
fn refuse_takeover(
    existing: &Node,
    me: &Identity,
    now: k8s_openapi::jiff::Timestamp,
) -> Result<(), Error> {
    let theirs = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::endpoint::CERT_ANNOTATION));
    if theirs.is_none_or(|t| *t == me.cert_sha256) {
        return Ok(());
    }
    let last = existing
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_heartbeat_time.as_ref())
        .map(|t| t.0);
    let Some(last) = last else { return Ok(()) };
    let age = now.duration_since(last);
    let fresh =
        std::time::Duration::try_from(age).is_ok_and(|a| a < TAKEN_FOR) || age.is_negative();
    if fresh {
        return Err(Error::Pod(format!(
            "node {:?} is held by another agent (another endpoint certificate, Ready {}s ago); give this host another --node-name, or stop the other agent and wait {}s",
            me.name,
            age.as_secs().max(0),
            TAKEN_FOR.as_secs()
        )));
    }
    Ok(())
}

/// Reports the node Ready with a fresh heartbeat time.
pub async fn heartbeat(client: &kube::Client, me: &Identity) -> Result<(), Error> {
    let name = me.name.as_str();
    let nodes: Api<Node> = Api::all(client.clone());
    // A merge patch replaces the conditions list: carry the Ready transition time over while
    // the node stays Ready.
    let since = nodes
        .get_opt(name)
        .await?
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .and_then(|cs| {
            cs.into_iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")
        })
        .and_then(|c| c.last_transition_time)
        .map(|t| t.0.to_string());
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status(me, resources(me), since) })),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn node(cert: &str, heartbeat: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "annotations": {crate::endpoint::CERT_ANNOTATION: cert}},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                        "lastHeartbeatTime": heartbeat}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_simulated_node_reports_its_own_capacity() {
        let mut me = Identity {
            name: "sim-0000".into(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            endpoint_port: 1,
            cert_sha256: "c".into(),
            simulated: true,
        };
        let st = status(&me, resources(&me), None);
        assert_eq!(
            st["allocatable"],
            json!({"memory": "256Gi", "cpu": "64", "pods": "250"})
        );
        assert_eq!(st["capacity"], st["allocatable"]);
        me.simulated = false;
        assert_eq!(resources(&me)["pods"], "110");
    }

    #[test]
    fn a_live_node_of_another_host_is_not_taken_over() {
        let me = Identity {
            name: "n".into(),
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            endpoint_port: 1,
            cert_sha256: "mine".into(),
            simulated: false,
        };
        let now: k8s_openapi::jiff::Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let e = refuse_takeover(&node("theirs", "2026-11-22T09:59:50Z"), &me, now).unwrap_err();
        assert!(e.to_string().contains("held by another agent"), "{e}");
        // Its agent is gone (stale heartbeat), or it is this host (same certificate).
        assert!(refuse_takeover(&node("theirs", "2026-11-22T09:58:00Z"), &me, now).is_ok());
        assert!(refuse_takeover(&node("mine", "2026-11-22T09:59:50Z"), &me, now).is_ok());
    }
}
