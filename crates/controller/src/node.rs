//! The node controller: a node whose agent stopped heartbeating is marked not ready, and the VMIs
//! it ran are failed so that their VMs (Always, RerunOnFailure) start again on a live node. It
//! also runs node IPAM ([`crate::podcidr`]).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kuvirt_api::VirtualMachineInstance;
use serde_json::json;

use crate::Error;
use crate::podcidr::ClusterCidr;

/// By default a node that has not reported for this long is considered lost (its agent
/// heartbeats every 10 s).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(40);

fn now() -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::now()
}

/// The node's last heartbeat, if it reported one.
fn last_heartbeat(node: &Node) -> Option<k8s_openapi::jiff::Timestamp> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?
        .last_heartbeat_time
        .as_ref()
        .map(|t| t.0)
}

/// Whether the node was Ready at its last report.
fn was_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Checks every node every few seconds until the task is dropped, and gives every node a pod
/// CIDR from `cluster_cidr` (at once, not after the grace period). Nothing is judged during the
/// first `timeout` after start: a control plane that was down must first give agents the chance
/// to report again.
pub async fn run(client: kube::Client, timeout: Duration, cluster_cidr: ClusterCidr) {
    tokio::join!(
        crate::podcidr::run(client.clone(), cluster_cidr),
        heartbeats(client, timeout)
    );
}

async fn heartbeats(client: kube::Client, timeout: Duration) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1).max(timeout / 8));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if started.elapsed() < timeout {
            continue;
        }
        if let Err(e) = check(&client, timeout).await {
            tracing::warn!(error = %e, "node controller");
        }
    }
}

async fn check(client: &kube::Client, timeout: Duration) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes.list(&ListParams::default()).await?.items {
        let name = node.metadata.name.clone().unwrap_or_default();
        let stale = last_heartbeat(&node)
            .is_none_or(|t| now().duration_since(t).as_secs_f64() > timeout.as_secs_f64());
        if !stale {
            continue;
        }
        if was_ready(&node) {
            tracing::warn!(node = %name, "node stopped reporting; marking it not ready");
            let ready = json!({"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
                "message": "the node agent stopped posting status",
                "lastTransitionTime": now().round(k8s_openapi::jiff::Unit::Second).unwrap_or(now()).to_string()});
            // A merge patch replaces the whole list: keep the heartbeat time it had.
            let mut ready = ready;
            if let Some(t) = last_heartbeat(&node) {
                ready["lastHeartbeatTime"] = json!(t.to_string());
            }
            nodes
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": [ready]}})),
                )
                .await?;
        }
        fail_vmis_on(client, &name).await?;
    }
    Ok(())
}

/// Fails the VMIs a lost node ran and removes their pods, so their VMs can start elsewhere.
async fn fail_vmis_on(client: &kube::Client, node: &str) -> Result<(), Error> {
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let on_node = vmis
        .list(&ListParams::default().fields(&format!("status.nodeName={node}")))
        .await?
        .items;
    for vmi in on_node {
        let final_phase = matches!(
            vmi.status
                .as_ref()
                .and_then(|s| s.phase.as_ref())
                .map(|p| p.as_str()),
            Some("Succeeded" | "Failed")
        );
        if final_phase {
            continue;
        }
        let ns = vmi.metadata.namespace.clone().unwrap_or_default();
        let name = vmi.metadata.name.clone().unwrap_or_default();
        tracing::warn!(vmi = %name, namespace = %ns, %node, "failing a VMI on a lost node");
        let api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed", "reason": "NodeUnresponsive"}})),
        )
        .await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let uid = vmi.metadata.uid.clone().unwrap_or_default();
        for p in pods
            .list(&ListParams::default().labels(&format!("kubevirt.io/created-by={uid}")))
            .await?
            .items
        {
            if let Some(pn) = p.metadata.name {
                let _ = pods.delete(&pn, &DeleteParams::default()).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_read_from_the_ready_condition() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                "lastHeartbeatTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap();
        assert!(was_ready(&node));
        assert_eq!(
            last_heartbeat(&node).unwrap().to_string(),
            "2026-01-01T00:00:00Z"
        );
        let silent: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert!(last_heartbeat(&silent).is_none());
    }
}
