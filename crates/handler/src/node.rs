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

fn now() -> String {
    let t = k8s_openapi::jiff::Timestamp::now();
    t.round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or(t)
        .to_string()
}

/// The status a healthy node reports.
fn status(mem: u64, cpus: usize) -> serde_json::Value {
    let resources = json!({"memory": mem.to_string(), "cpu": cpus.to_string(), "pods": "110"});
    let t = now();
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KuvirtHandlerReady",
            "message": "kuvirt handler is posting ready status",
            "lastHeartbeatTime": t, "lastTransitionTime": t,
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
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status(mem, cpus) })),
        )
        .await?;
    Ok(())
}
