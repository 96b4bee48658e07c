//! The VirtualMachineInstance controller: renders the launcher pod for a new VMI, places it
//! (embedded mode schedules itself; a cluster has kube-scheduler), and moves the VMI through
//! Pending → Scheduling → Scheduled, handing it to the node agent once its pod runs. A launcher pod
//! that vanishes or fails fails its VMI. Only the VMI's current pod counts ([`current_pod`]): a
//! migration's target pod is the migration controller's until the VMI moves to its node, and the
//! pods a migration leaves behind (the old source, failed targets) are deleted once they end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::VirtualMachineInstancePhase as Phase;
use kuvirt_api::v1::{MIGRATION_JOB_LABEL, VirtualMachineInstanceMigrationState};
use serde_json::json;

use crate::Error;
use crate::events::{Subject, record};
use crate::placement::{Bound, Placement};
use crate::pod::{CREATED_BY, render};
use crate::podindex::PodIndex;

/// How long a created pod may take to show up in the pod cache before the VMI is decided
/// without it (KubeVirt's expectations time out likewise).
const EXPECT_POD_FOR: Duration = Duration::from_secs(60);

/// Shared by every VMI reconcile.
pub struct Context {
    pub client: kube::Client,
    /// The image launcher pods run (embedded mode ignores it and runs `kuvirt launcher`).
    pub launcher_image: String,
    /// Every pod, as the controller's pod watch (its trigger) last saw it.
    pub pods: Store<Pod>,
    /// The same watch's pods by VMI, and what they request of each node.
    pub index: PodIndex,
    /// Bind pods to nodes ourselves (embedded mode: there is no kube-scheduler); shared with
    /// the migration controller, which binds target pods with it.
    pub placement: Option<Arc<Placement>>,
    /// VMIs whose launcher pod was created but is not in the pod cache yet, by VMI UID, with
    /// when (KubeVirt's controller expectations): a lagging cache must not make a second pod.
    created: Mutex<HashMap<String, Instant>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        launcher_image: String,
        pods: Store<Pod>,
        index: PodIndex,
        placement: Option<Arc<Placement>>,
    ) -> Self {
        Context {
            client,
            launcher_image,
            pods,
            index,
            placement,
            created: Mutex::new(HashMap::new()),
        }
    }

    /// The cached launcher pods of the VMI with `uid` in `ns`.
    fn pods_of(&self, ns: &str, uid: &str) -> Vec<Arc<Pod>> {
        self.index
            .owned_by(uid)
            .iter()
            .filter(|r| r.namespace.as_deref() == Some(ns))
            .filter_map(|r| self.pods.get(r))
            .filter(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(CREATED_BY))
                    .is_some_and(|u| u == uid)
            })
            .collect()
    }

    /// Whether a pod created for `uid` has yet to reach the cache; forgets it once it has
    /// (`seen`) or once it is overdue.
    fn awaiting_pod(&self, uid: &str, seen: bool) -> bool {
        let Ok(mut created) = self.created.lock() else {
            return false;
        };
        match created.get(uid) {
            Some(at) if !seen && at.elapsed() < EXPECT_POD_FOR => true,
            Some(_) => {
                created.remove(uid);
                false
            }
            None => false,
        }
    }

    fn expect_pod(&self, uid: &str) {
        if let Ok(mut created) = self.created.lock() {
            created.insert(uid.to_owned(), Instant::now());
        }
    }
}

/// KubeVirt's VMI finalizer: a deleted VMI stays (terminating) until its VM is down — the node
/// agent shuts the guest down gracefully, then its launcher pod ends — so a new VMI of the same
/// VM never runs beside the old one (same disks, same name).
pub const FINALIZER: &str = "foregroundDeleteVirtualMachine";

fn phase(vmi: &VirtualMachineInstance) -> Option<&Phase> {
    vmi.status.as_ref().and_then(|s| s.phase.as_ref())
}

fn pod_node(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// The pod ended (Succeeded or Failed).
pub fn pod_final(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// A pod created as a migration's target (it carries the migration's UID).
pub fn is_migration_target(p: &Pod) -> bool {
    p.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(MIGRATION_JOB_LABEL))
}

fn migration_state(vmi: &VirtualMachineInstance) -> Option<&VirtualMachineInstanceMigrationState> {
    vmi.status.as_ref().and_then(|s| s.migration_state.as_ref())
}

/// The VMI's current launcher pod among its pods: once the VMI has a node, its pod on that node
/// (a live one before an ended one; a migration moves the node to the target's); before that,
/// its pod that is no migration's target.
pub fn current_pod<'a>(vmi: &VirtualMachineInstance, pods: &'a [Arc<Pod>]) -> Option<&'a Arc<Pod>> {
    match vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(node) => pods
            .iter()
            .filter(|p| pod_node(p) == Some(node))
            .min_by_key(|p| (pod_final(p), p.metadata.deletion_timestamp.is_some())),
        None => pods.iter().find(|p| !is_migration_target(p)),
    }
}

/// The ended pods of the VMI that are neither its current pod nor the target of the migration
/// under way (the source a migration moved away from, targets of failed migrations): they go.
pub fn leftover_pods(
    vmi: &VirtualMachineInstance,
    pods: &[Arc<Pod>],
    current: Option<&Arc<Pod>>,
) -> Vec<Arc<Pod>> {
    let target = migration_state(vmi)
        .filter(|m| !m.is_over())
        .and_then(|m| m.target_pod.as_deref());
    pods.iter()
        .filter(|p| current.is_none_or(|c| !Arc::ptr_eq(c, p)))
        .filter(|p| pod_final(p) && p.metadata.deletion_timestamp.is_none())
        .filter(|p| target.is_none_or(|t| p.metadata.name.as_deref() != Some(t)))
        .cloned()
        .collect()
}

/// The current pod is the source of a migration that has succeeded but whose target has not
/// taken the VMI over yet (its node agent moves `status.nodeName`): the source's launcher
/// ending then says nothing about the VM. Waited for at most [`HANDOVER_WAIT`] after the end.
fn handing_over(vmi: &VirtualMachineInstance, current: &Pod) -> bool {
    let Some(m) = migration_state(vmi) else {
        return false;
    };
    let node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
    let recent = m.end_timestamp.as_ref().is_none_or(|end| {
        let since = k8s_openapi::jiff::Timestamp::now().duration_since(end.0);
        Duration::try_from(since).unwrap_or_default() < HANDOVER_WAIT
    });
    m.completed == Some(true)
        && m.failed != Some(true)
        && m.source_pod.is_some()
        && m.source_pod == current.metadata.name
        && m.target_node.is_some()
        && m.target_node.as_deref() != node
        && recent
}

/// How long a succeeded migration's target may take to take its VMI over.
const HANDOVER_WAIT: Duration = Duration::from_secs(60);

async fn set_status(
    api: &Api<VirtualMachineInstance>,
    name: &str,
    status: serde_json::Value,
) -> Result<(), Error> {
    // VMIs have no status subresource in KubeVirt: the status is written with the object.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

pub async fn reconcile(
    vmi: Arc<VirtualMachineInstance>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = vmi
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // The pods come from the cache (its watch is what triggers this reconcile); a pod created
    // but not cached yet is waited for.
    let _ = ctx.pods.wait_until_ready().await;
    let mine = ctx.pods_of(&ns, &uid);
    if ctx.awaiting_pod(&uid, !mine.is_empty()) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    // Decide from the API's current VMI: the watch cache can lag behind the node agent's writes
    // (a phase read from it could move backwards).
    let Some(vmi) = vmis.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if vmi.metadata.uid.as_deref() != Some(uid.as_str()) {
        return Ok(Action::await_change());
    }
    let done = matches!(phase(&vmi), Some(Phase::Succeeded | Phase::Failed));
    let finalizers = vmi.metadata.finalizers.clone().unwrap_or_default();
    let finalized = finalizers.iter().any(|f| f == FINALIZER);
    if let Some(deleted_at) = vmi.metadata.deletion_timestamp.clone() {
        // The finalizer goes only once the VM is down, so a new VMI of the same VM never runs
        // beside the old QEMU: the node agent says so (a final VMI or pod phase, written after
        // its launcher exited), or the VMI never got a node. A node agent that stays silent
        // past the grace period and a minute is taken as gone (the node controller fails the
        // VMIs of lost nodes sooner).
        let bound = |p: &Pod| pod_node(p).is_some();
        let live = mine.iter().any(|p| bound(p) && !pod_final(p));
        let handed_over = matches!(phase(&vmi), Some(Phase::Scheduled | Phase::Running));
        let ended = !mine.is_empty() && mine.iter().all(|p| bound(p) && pod_final(p));
        let down = done || ended || (!live && !handed_over);
        if !down {
            let grace = vmi
                .spec
                .termination_grace_period_seconds
                .and_then(|g| u64::try_from(g).ok())
                .unwrap_or(30);
            let give_up = Duration::from_secs(grace.saturating_add(60));
            let waited = k8s_openapi::jiff::Timestamp::now().duration_since(deleted_at.0);
            let waited = Duration::try_from(waited).unwrap_or_default();
            if waited < give_up {
                return Ok(Action::requeue(
                    (give_up - waited).min(Duration::from_secs(10)),
                ));
            }
            tracing::warn!(vmi = %name, namespace = %ns, "no word from the node agent: releasing the VMI");
        }
        delete_pods(&pods, &mine).await;
        if finalized {
            let rest: Vec<&String> = finalizers.iter().filter(|f| *f != FINALIZER).collect();
            vmis.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {
                    "finalizers": rest,
                    "resourceVersion": vmi.metadata.resource_version,
                }})),
            )
            .await?;
        }
        return Ok(Action::await_change());
    }
    if done {
        // The VM is over: its pod goes (the node agent has stopped QEMU by then).
        delete_pods(&pods, &mine).await;
        return Ok(Action::await_change());
    }
    if !finalized {
        let mut with = finalizers.clone();
        with.push(FINALIZER.to_string());
        vmis.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {
                "finalizers": with,
                "resourceVersion": vmi.metadata.resource_version,
            }})),
        )
        .await?;
        // The write is an event of its own: decide again from it.
        return Ok(Action::await_change());
    }
    let current = current_pod(&vmi, &mine);
    delete_pods(&pods, &leftover_pods(&vmi, &mine, current)).await;
    let Some(pod) = current else {
        return match phase(&vmi) {
            None | Some(Phase::Pending) => {
                let rendered = match render(&vmi, &ctx.launcher_image) {
                    Ok(p) => p,
                    Err(e) => {
                        set_status(
                            &vmis,
                            &name,
                            json!({"phase": "Failed", "reason": e.to_string()}),
                        )
                        .await?;
                        return Ok(Action::await_change());
                    }
                };
                let created = pods.create(&PostParams::default(), &rendered).await?;
                ctx.expect_pod(&uid);
                record(
                    &ctx.client,
                    &Subject {
                        kind: "VirtualMachineInstance",
                        namespace: &ns,
                        name: &name,
                        uid: Some(&uid),
                    },
                    false,
                    "SuccessfulCreate",
                    &format!(
                        "Created virtual machine pod {}",
                        created.metadata.name.unwrap_or_default()
                    ),
                )
                .await;
                set_status(
                    &vmis,
                    &name,
                    json!({
                        "phase": "Scheduling",
                        "phaseTransitionTimestamps": transition(&vmi, "Scheduling"),
                    }),
                )
                .await?;
                Ok(Action::requeue(Duration::from_secs(5)))
            }
            _ => {
                // The launcher pod vanished under a VMI that was placed: the VM is gone. The
                // API has the last word over the cache.
                let listed = pods
                    .list(&ListParams::default().labels(&format!("{CREATED_BY}={uid}")))
                    .await?;
                let listed: Vec<Arc<Pod>> = listed.items.into_iter().map(Arc::new).collect();
                if current_pod(&vmi, &listed).is_some() {
                    return Ok(Action::requeue(Duration::from_secs(2)));
                }
                set_status(
                    &vmis,
                    &name,
                    json!({"phase": "Failed", "reason": "PodGone"}),
                )
                .await?;
                Ok(Action::await_change())
            }
        };
    };
    let pod_phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    match (node, pod_phase.as_str()) {
        (None, _) if let Some(placement) = &ctx.placement => {
            match placement
                .bind(&ctx.client, pod, &ctx.pods, &ctx.index)
                .await?
            {
                Bound::To(_) => {
                    set_status(
                        &vmis,
                        &name,
                        json!({"conditions": conditions(&vmi, "PodScheduled", "True", "", "")}),
                    )
                    .await?;
                }
                Bound::Already => {}
                Bound::Unschedulable(e) => {
                    let c = conditions(
                        &vmi,
                        "PodScheduled",
                        "False",
                        "Unschedulable",
                        &e.to_string(),
                    );
                    set_status(&vmis, &name, json!({ "conditions": c })).await?;
                    return Ok(Action::requeue(Duration::from_secs(5)));
                }
            }
            Ok(Action::requeue(Duration::from_secs(5)))
        }
        (Some(n), "Running")
            if matches!(phase(&vmi), None | Some(Phase::Pending | Phase::Scheduling)) =>
        {
            let pod_uid = pod.metadata.uid.clone().unwrap_or_default();
            set_status(
                &vmis,
                &name,
                json!({
                    "phase": "Scheduled",
                    "nodeName": n,
                    "phaseTransitionTimestamps": transition(&vmi, "Scheduled"),
                    "activePods": { pod_uid: n },
                    "qosClass": qos_class(pod),
                    "launcherContainerImageVersion": ctx.launcher_image,
                }),
            )
            .await?;
            Ok(Action::await_change())
        }
        // A migration's source ended after handing the VM over; the target's agent has yet to
        // move the VMI to its node.
        (_, "Failed" | "Succeeded") if handing_over(&vmi, pod) => {
            Ok(Action::requeue(Duration::from_secs(2)))
        }
        // The launcher ended without the node agent saying how (it writes the VMI's final phase
        // first): a pod that succeeded means the guest shut down.
        (_, "Failed" | "Succeeded") => {
            let phase = if pod_phase == "Succeeded" {
                "Succeeded"
            } else {
                "Failed"
            };
            set_status(
                &vmis,
                &name,
                json!({"phase": phase, "reason": format!("launcher pod {pod_phase}")}),
            )
            .await?;
            Ok(Action::await_change())
        }
        _ => Ok(Action::requeue(Duration::from_secs(30))),
    }
}

/// The pod's QoS class as the kubelet computes it: Guaranteed when every container's requests
/// equal its cpu and memory limits, BestEffort without any, Burstable otherwise.
fn qos_class(pod: &Pod) -> &'static str {
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or(&[]);
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in containers {
        let r = c.resources.as_ref();
        let requests = r.and_then(|r| r.requests.clone()).unwrap_or_default();
        let limits = r.and_then(|r| r.limits.clone()).unwrap_or_default();
        any |= !requests.is_empty() || !limits.is_empty();
        for res in ["cpu", "memory"] {
            let limit = limits.get(res);
            let request = requests.get(res).or(limit);
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Deletes the pods not already going.
async fn delete_pods(pods: &Api<Pod>, mine: &[Arc<Pod>]) {
    for p in mine {
        if p.metadata.deletion_timestamp.is_none()
            && let Some(pn) = &p.metadata.name
        {
            let _ = pods.delete(pn, &DeleteParams::default()).await;
        }
    }
}

/// The VMI's phase transition timestamps with `phase` entered now.
fn transition(vmi: &VirtualMachineInstance, phase: &str) -> serde_json::Value {
    let mut list = serde_json::to_value(
        vmi.status
            .as_ref()
            .map(|s| s.phase_transition_timestamps.clone())
            .unwrap_or_default(),
    )
    .unwrap_or_else(|_| json!([]));
    if let Some(a) = list.as_array_mut() {
        a.push(
            json!({"phase": phase, "phaseTransitionTimestamp": kuvirt_apimachinery::meta::now()}),
        );
    }
    list
}

/// The VMI's conditions with `type_` set (transition time kept when the status is unchanged).
fn conditions(
    vmi: &VirtualMachineInstance,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) -> serde_json::Value {
    let old = vmi
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut found = false;
    for c in &old {
        let mut v = serde_json::to_value(c).unwrap_or_else(|_| json!({}));
        if c.type_.as_str() == type_ {
            found = true;
            if c.status != status {
                v["lastTransitionTime"] = json!(kuvirt_apimachinery::meta::now());
            }
            v["status"] = json!(status);
            v["reason"] = json!(reason);
            v["message"] = json!(message);
        }
        out.push(v);
    }
    if !found {
        out.push(
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                        "lastTransitionTime": kuvirt_apimachinery::meta::now(), "lastProbeTime": null}),
        );
    }
    json!(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "spec": {"containers": [{"name": "compute", "resources": resources}]}
        }))
        .unwrap()
    }

    fn launcher(name: &str, node: Option<&str>, phase: &str, target: bool) -> Arc<Pod> {
        let mut labels = json!({CREATED_BY: "vmi-uid"});
        if target {
            labels[MIGRATION_JOB_LABEL] = json!("mig-uid");
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": labels},
                "spec": {"nodeName": node, "containers": [{"name": "compute"}]},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    fn vmi_on(node: Option<&str>, state: serde_json::Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "metadata": {"name": "vm", "namespace": "ns", "uid": "vmi-uid"},
            "spec": {"domain": {"devices": {}}},
            "status": {"phase": "Running", "nodeName": node, "migrationState": state},
        }))
        .unwrap()
    }

    fn name(p: Option<&Arc<Pod>>) -> Option<&str> {
        p.and_then(|p| p.metadata.name.as_deref())
    }

    #[test]
    fn current_pod_is_the_one_on_the_vmis_node() {
        let source = launcher("src", Some("n1"), "Running", false);
        let target = launcher("tgt", Some("n2"), "Running", true);
        let pods = vec![target.clone(), source.clone()];
        // During a migration the source stays current; the target is never judged.
        let during = vmi_on(
            Some("n1"),
            json!({"migrationUid": "mig-uid", "targetPod": "tgt"}),
        );
        assert_eq!(name(current_pod(&during, &pods)), Some("src"));
        // After the handover the VMI's node is the target's.
        let after = vmi_on(
            Some("n2"),
            json!({"migrationUid": "mig-uid", "targetPod": "tgt",
                                               "completed": true}),
        );
        assert_eq!(name(current_pod(&after, &pods)), Some("tgt"));
        // A live pod wins over an ended one on the same node (a migration back).
        let old = launcher("old", Some("n2"), "Succeeded", false);
        let back = vec![old, target.clone()];
        assert_eq!(name(current_pod(&after, &back)), Some("tgt"));
        // Before the VMI has a node: its own pod, never a target.
        let unplaced = vmi_on(None, json!(null));
        let early = vec![
            launcher("tgt", None, "Pending", true),
            launcher("own", None, "Pending", false),
        ];
        assert_eq!(name(current_pod(&unplaced, &early)), Some("own"));
        assert_eq!(name(current_pod(&unplaced, &early[..1])), None);
        // A node with no pod of the VMI: none is current (the pod vanished).
        let elsewhere = vmi_on(Some("n3"), json!(null));
        assert_eq!(name(current_pod(&elsewhere, &pods)), None);
    }

    #[test]
    fn ended_pods_other_than_the_current_and_the_live_target_go() {
        let source_done = launcher("src", Some("n1"), "Succeeded", false);
        let target = launcher("tgt", Some("n2"), "Running", true);
        let failed_target = launcher("tgt0", Some("n3"), "Failed", true);
        let pods = vec![source_done, target, failed_target];
        let after = vmi_on(
            Some("n2"),
            json!({"migrationUid": "m", "targetPod": "tgt",
                                               "sourcePod": "src", "completed": true}),
        );
        let current = current_pod(&after, &pods);
        let gone: Vec<_> = leftover_pods(&after, &pods, current)
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(gone, vec!["src", "tgt0"]);
        // The ended target of the migration under way stays (its controller reports it).
        let during = vmi_on(
            Some("n1"),
            json!({"migrationUid": "m", "targetPod": "tgt0"}),
        );
        let pods = vec![
            launcher("src", Some("n1"), "Running", false),
            launcher("tgt0", Some("n3"), "Failed", true),
        ];
        let current = current_pod(&during, &pods);
        assert!(leftover_pods(&during, &pods, current).is_empty());
        // An ended current pod is judged, not deleted here.
        let ended = vec![launcher("src", Some("n1"), "Failed", false)];
        let current = current_pod(&during, &ended);
        assert_eq!(name(current), Some("src"));
        assert!(leftover_pods(&during, &ended, current).is_empty());
    }

    #[test]
    fn a_succeeded_sources_end_waits_for_the_target_to_take_over() {
        let source = launcher("src", Some("n1"), "Succeeded", false);
        let completed = vmi_on(
            Some("n1"),
            json!({"migrationUid": "m", "sourcePod": "src",
            "targetNode": "n2", "targetPod": "tgt", "completed": true}),
        );
        assert!(handing_over(&completed, &source));
        let failed = vmi_on(
            Some("n1"),
            json!({"migrationUid": "m", "sourcePod": "src",
            "targetNode": "n2", "completed": true, "failed": true}),
        );
        assert!(!handing_over(&failed, &source));
        let long_ago = vmi_on(
            Some("n1"),
            json!({"migrationUid": "m", "sourcePod": "src",
            "targetNode": "n2", "completed": true, "endTimestamp": "2020-01-01T00:00:00Z"}),
        );
        assert!(
            !handing_over(&long_ago, &source),
            "a target that never takes over is not waited for"
        );
        assert!(!handing_over(&vmi_on(Some("n1"), json!(null)), &source));
    }

    #[test]
    fn qos_classes() {
        assert_eq!(qos_class(&pod(json!({}))), "BestEffort");
        assert_eq!(
            qos_class(&pod(json!({"requests": {"memory": "1Gi"}}))),
            "Burstable"
        );
        assert_eq!(
            qos_class(&pod(json!({"limits": {"memory": "1Gi", "cpu": "1"}}))),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&pod(json!({"requests": {"memory": "1Gi", "cpu": "1"},
                                  "limits": {"memory": "1Gi", "cpu": "2"}}))),
            "Burstable"
        );
    }
}
