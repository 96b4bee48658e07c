//! The Node object: registration with this host's capacity and the heartbeat that keeps it Ready.

use std::collections::BTreeMap;
use std::time::Duration;

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

/// The status a healthy node reports.
/// `since` is when the node last became Ready (kept across heartbeats), else now.
fn status(mem: u64, cpus: usize, since: Option<String>) -> serde_json::Value {
    let resources = json!({"memory": mem.to_string(), "cpu": cpus.to_string(), "pods": "110"});
    let t = kuvirt_apimachinery::meta::now();
    let since = since.unwrap_or_else(|| t.clone());
    json!({
        "capacity": resources,
        "allocatable": resources,
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
pub async fn register(client: &kube::Client, name: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), name.to_string());
    labels.insert("kubevirt.io/schedulable".to_string(), "true".to_string());
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
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    heartbeat(client, name).await
}

/// Reports the node Ready with a fresh heartbeat time.
pub async fn heartbeat(client: &kube::Client, name: &str) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let (mem, cpus) = capacity();
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
            &Patch::Merge(json!({ "status": status(mem, cpus, since) })),
        )
        .await?;
    Ok(())
}
