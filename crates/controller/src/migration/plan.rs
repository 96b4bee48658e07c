//! The migration controller's decision, pure: from a migration, its VMI, its target pod and
//! what else migrates in the cluster, the steps that move it one phase on (KubeVirt's
//! migration controller: the failure checks first, then the phase's own step).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::{
    MIGRATION_FINALIZER, MIGRATION_VMI_LABEL, MigrationConfiguration, MigrationPhase,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
    VirtualMachineInstancePhase,
};

use super::target::MIGRATION_TARGET_NODE_LABEL;

/// The condition a migration deleted while under way gets.
pub const ABORT_REQUESTED: &str = "migrationAbortRequested";
/// How long a target pod may stay unschedulable before it is deleted.
pub const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a target pod may stay pending for any other reason.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(900);
/// The final migrations kept per VMI.
pub const KEEP_FINAL: usize = 5;

/// KubeVirt's messages (FailedMigration events).
pub const VMI_SHUTDOWN: &str = "Migration failed vmi shutdown during migration.";
pub const CANCELED: &str = "Migration failed due to being canceled";
pub const TARGET_SHUTDOWN: &str = "Migration failed because target pod shutdown during migration";
pub const TARGET_REMOVED: &str = "Migration target pod was removed during active migration.";
pub const STATE_CLEARED: &str = "VMI's migration state was cleared during the active migration.";
pub const STATE_TAKEN: &str =
    "VMI's migration state was taken over by another migration job during active migration.";
pub const SOURCE_FAILED: &str = "source node reported migration failed";
pub const NOT_ELIGIBLE: &str =
    "VMI is not eligible for migration because another migration job is in progress.";

/// What else migrates, as the controller's caches see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Migrations under way in the cluster (past Pending, or with a target pod), this one not
    /// counted.
    pub running: u32,
    /// Those of them moving a VMI off this migration's source node.
    pub outbound: u32,
    /// The VMI's migration state belongs to another migration that is still under way.
    pub owner_active: bool,
}

/// A change of the migration's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusChange {
    /// The phase entered (its transition timestamp is appended).
    pub phase: Option<MigrationPhase>,
    /// Add the `migrationAbortRequested` condition.
    pub abort_requested: bool,
    /// The VMI's migration state, copied once the migration is over.
    pub migration_state: Option<Box<VirtualMachineInstanceMigrationState>>,
}

/// One thing to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Create the target pod (event SuccessfulCreate).
    CreateTargetPod,
    /// Bind the unbound target pod (embedded mode; a cluster has kube-scheduler). One that fits
    /// nowhere is handled as [`unschedulable`] says.
    Place,
    /// Delete the target pod, with a SuccessfulDelete event saying why.
    DeleteTargetPod { event: Option<String> },
    /// Hand the VMI to the node agents: its fresh migration state, method and target label.
    HandOff,
    /// Set the VMI's `migrationState.abortRequested`.
    RequestAbort,
    /// End the VMI's migration state as failed: the target is down (event on the VMI).
    MarkTargetDown,
    /// Write the migration's status.
    Status(StatusChange),
    /// An event on the migration.
    Event {
        warning: bool,
        reason: &'static str,
        message: String,
    },
    /// Remove the VMI's target node label.
    RemoveTargetLabel,
    /// Delete the VMI's final migrations but the newest [`KEEP_FINAL`].
    CollectGarbage,
    /// Remove the migration's finalizer.
    RemoveFinalizer,
    /// Delete the migration (its VMI is gone).
    DeleteMigration,
}

/// What to do about one migration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub steps: Vec<Step>,
    /// Look again after this long (besides the watches' triggers).
    pub requeue: Option<Duration>,
}

impl Decision {
    /// The phase this decision enters, if any.
    pub fn phase(&self) -> Option<&MigrationPhase> {
        self.steps.iter().find_map(|s| match s {
            Step::Status(c) => c.phase.as_ref(),
            _ => None,
        })
    }

    /// The reasons and messages of its events.
    pub fn events(&self) -> Vec<(&'static str, &str)> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Event {
                    reason, message, ..
                } => Some((*reason, message.as_str())),
                _ => None,
            })
            .collect()
    }

    pub fn has(&self, step: &Step) -> bool {
        self.steps.contains(step)
    }
}

/// The requeue while the migration waits for its turn or its VMI.
const WAIT_FOR_TURN: Duration = Duration::from_secs(3);
const WAIT_FOR_VMI: Duration = Duration::from_secs(2);
/// The requeue of a migration under way (the VMI and pod watches trigger it sooner).
const UNDER_WAY: Duration = Duration::from_secs(5);
const PLACING: Duration = Duration::from_secs(10);

fn vmi_state(vmi: &VirtualMachineInstance) -> Option<&VirtualMachineInstanceMigrationState> {
    vmi.status.as_ref().and_then(|s| s.migration_state.as_ref())
}

fn vmi_phase(vmi: &VirtualMachineInstance) -> Option<&VirtualMachineInstancePhase> {
    vmi.status.as_ref().and_then(|s| s.phase.as_ref())
}

fn pod_phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn pod_node(p: &Pod) -> Option<&str> {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

fn pod_name(p: &Pod) -> String {
    format!(
        "{}/{}",
        p.metadata.namespace.as_deref().unwrap_or_default(),
        p.metadata.name.as_deref().unwrap_or_default()
    )
}

/// How long ago the pod was created (zero when unknown).
fn age(p: &Pod, now: Timestamp) -> Duration {
    p.metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or_default()
}

/// Which phase the migration is in ("" is `None`).
pub fn phase_of(m: &VirtualMachineInstanceMigration) -> Option<&MigrationPhase> {
    m.status.as_ref().and_then(|s| s.phase.as_ref())
}

/// The migration is past Pending (KubeVirt's `IsRunning`) and not over.
pub fn under_way(m: &VirtualMachineInstanceMigration) -> bool {
    phase_of(m).is_some_and(|p| !matches!(p, MigrationPhase::Pending) && !p.is_final())
}

fn has_condition(m: &VirtualMachineInstanceMigration, type_: &str) -> bool {
    m.status
        .as_ref()
        .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == type_))
}

/// What to do about migration `m` of `vmi` (None: gone from the API) whose target pod is
/// `target` (None: not created, or gone), at `now`.
pub fn plan(
    m: &VirtualMachineInstanceMigration,
    vmi: Option<&VirtualMachineInstance>,
    target: Option<&Pod>,
    counts: &Counts,
    now: Timestamp,
) -> Decision {
    let uid = m.metadata.uid.as_deref().unwrap_or_default();
    let phase = phase_of(m).cloned();
    if phase.as_ref().is_some_and(MigrationPhase::is_final) {
        return finalize(m, vmi, target, uid);
    }
    let ours = vmi.and_then(vmi_state).filter(|s| s.is_for(uid));
    if let Some(d) = failure(m, vmi, target, phase.as_ref(), ours) {
        return d;
    }
    let Some(vmi) = vmi else {
        return Decision::default();
    };
    let mut pre = Vec::new();
    let mut change = StatusChange::default();
    let mut events = Vec::new();
    let mut requeue = UNDER_WAY;
    // Deleted after the handoff: the source's agent cancels; its report fails the migration.
    if m.metadata.deletion_timestamp.is_some()
        && let Some(s) = ours
        && !s.is_over()
    {
        if s.abort_requested != Some(true) {
            pre.push(Step::RequestAbort);
            events.push(event(
                false,
                "SuccessfulAbortMigration",
                "Migration is ready to be canceled by virt-handler.",
            ));
        }
        change.abort_requested = !has_condition(m, ABORT_REQUESTED);
    }
    match phase {
        None if counts.owner_active => return fail(NOT_ELIGIBLE, None, false),
        None => change.phase = Some(MigrationPhase::Pending),
        Some(MigrationPhase::Pending) => {
            if vmi_phase(vmi) != Some(&VirtualMachineInstancePhase::Running) {
                requeue = WAIT_FOR_VMI;
            } else if !turn(counts) {
                requeue = WAIT_FOR_TURN;
            } else {
                if target.is_none() {
                    pre.push(Step::CreateTargetPod);
                }
                change.phase = Some(MigrationPhase::Scheduling);
            }
        }
        Some(MigrationPhase::Scheduling) => {
            if let Some(pod) = target {
                match (pod_node(pod), pod_phase(pod)) {
                    (Some(_), "Running") => change.phase = Some(MigrationPhase::Scheduled),
                    (None, _) => {
                        requeue = PLACING;
                        pre.push(Step::Place);
                        if kube_unschedulable(pod) {
                            pre.extend(unschedulable(vmi, pod, now));
                        }
                    }
                    (Some(_), _) => {
                        requeue = PLACING;
                        if age(pod, now) >= PENDING_TIMEOUT {
                            pre.push(Step::DeleteTargetPod {
                                event: Some(format!(
                                    "pending pod {} timeout period exceeded",
                                    pod_name(pod)
                                )),
                            });
                        }
                    }
                }
            }
        }
        Some(MigrationPhase::Scheduled) => {
            if ours.is_none() {
                pre.push(Step::HandOff);
                events.push(event(
                    false,
                    "SuccessfulHandOver",
                    "Migration target pod is ready for preparation by virt-handler.",
                ));
            }
            change.phase = Some(MigrationPhase::PreparingTarget);
        }
        Some(MigrationPhase::PreparingTarget) => {
            if ours.is_some_and(|s| {
                s.target_node_address
                    .as_deref()
                    .is_some_and(|a| !a.is_empty())
            }) {
                change.phase = Some(MigrationPhase::TargetReady);
            }
        }
        Some(MigrationPhase::TargetReady) => {
            if ours.is_some_and(|s| s.start_timestamp.is_some()) {
                change.phase = Some(MigrationPhase::Running);
            }
        }
        Some(MigrationPhase::Running) => {
            let node = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
            if let Some(s) = ours
                && s.completed == Some(true)
                && s.failed != Some(true)
                && s.target_node.is_some()
                && s.target_node.as_deref() == node
            {
                change.phase = Some(MigrationPhase::Succeeded);
                change.migration_state = Some(Box::new(s.clone()));
                events.push(event(
                    false,
                    "SuccessfulMigration",
                    "Source node reported migration succeeded",
                ));
            }
        }
        // Final phases were handled above; phases of KubeVirt's decentralized migrations are
        // not ours.
        Some(MigrationPhase::Succeeded | MigrationPhase::Failed | MigrationPhase::Other(_)) => {}
    }
    let mut steps = pre;
    if change != StatusChange::default() {
        steps.push(Step::Status(change));
    }
    steps.extend(events);
    Decision {
        steps,
        requeue: Some(requeue),
    }
}

/// Below both parallel limits (KubeVirt's defaults: 5 in the cluster, 2 out of a node).
fn turn(counts: &Counts) -> bool {
    let config = MigrationConfiguration::kubevirt_defaults();
    counts.running < config.parallel_migrations_per_cluster.unwrap_or(5)
        && counts.outbound < config.parallel_outbound_migrations_per_node.unwrap_or(2)
}

/// kube-scheduler found no node for the pod.
fn kube_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// What follows when no node fits the target pod of `vmi`: a warning each time, and the pod's
/// deletion once it has waited [`UNSCHEDULABLE_TIMEOUT`] since its creation.
pub fn unschedulable(vmi: &VirtualMachineInstance, pod: &Pod, now: Timestamp) -> Vec<Step> {
    let mut steps = vec![event(
        true,
        "migrationTargetPodUnschedulable",
        &format!(
            "Migration target pod for VMI [{}/{}] is currently unschedulable.",
            vmi.metadata.namespace.as_deref().unwrap_or_default(),
            vmi.metadata.name.as_deref().unwrap_or_default()
        ),
    )];
    if age(pod, now) >= UNSCHEDULABLE_TIMEOUT {
        steps.push(Step::DeleteTargetPod {
            event: Some(format!(
                "unschedulable pod {} timeout period exceeded",
                pod_name(pod)
            )),
        });
    }
    steps
}

fn event(warning: bool, reason: &'static str, message: &str) -> Step {
    Step::Event {
        warning,
        reason,
        message: message.to_string(),
    }
}

/// The migration fails with `message`; `mark_down` ends the VMI's migration
/// state (the target is down and the source's agent has to resume the VM).
fn fail(
    message: &str,
    ours: Option<&VirtualMachineInstanceMigrationState>,
    mark_down: bool,
) -> Decision {
    let mut steps = Vec::new();
    if mark_down {
        steps.push(Step::MarkTargetDown);
    }
    steps.push(Step::Status(StatusChange {
        phase: Some(MigrationPhase::Failed),
        abort_requested: false,
        migration_state: ours.map(|s| Box::new(s.clone())),
    }));
    steps.push(event(true, "FailedMigration", message));
    Decision {
        steps,
        requeue: None,
    }
}

/// KubeVirt's failure checks, first match wins.
fn failure(
    m: &VirtualMachineInstanceMigration,
    vmi: Option<&VirtualMachineInstance>,
    target: Option<&Pod>,
    phase: Option<&MigrationPhase>,
    ours: Option<&VirtualMachineInstanceMigrationState>,
) -> Option<Decision> {
    let deleting = m.metadata.deletion_timestamp.is_some();
    let Some(vmi) = vmi else {
        let mut d = fail(VMI_SHUTDOWN, None, false);
        if !deleting {
            d.steps.push(Step::DeleteMigration);
        }
        return Some(d);
    };
    if matches!(
        vmi_phase(vmi),
        Some(VirtualMachineInstancePhase::Succeeded | VirtualMachineInstancePhase::Failed)
    ) {
        return Some(fail(VMI_SHUTDOWN, ours, false));
    }
    if deleting && ours.is_none() {
        let mut d = fail(CANCELED, None, false);
        if let Some(pod) = target.filter(|p| p.metadata.deletion_timestamp.is_none()) {
            d.steps.insert(
                0,
                Step::DeleteTargetPod {
                    event: Some(format!(
                        "migration canceled and pod {} is deleted",
                        pod_name(pod)
                    )),
                },
            );
        }
        if let Some(Step::Status(c)) = d.steps.iter_mut().find(|s| matches!(s, Step::Status(_))) {
            c.abort_requested = !has_condition(m, ABORT_REQUESTED);
        }
        return Some(d);
    }
    let completed = ours.is_some_and(|s| s.completed == Some(true));
    let mark_down = ours.is_some_and(|s| !s.is_over());
    let created = matches!(
        phase,
        Some(
            MigrationPhase::Scheduling
                | MigrationPhase::Scheduled
                | MigrationPhase::PreparingTarget
                | MigrationPhase::TargetReady
                | MigrationPhase::Running
        )
    );
    if !completed {
        match target {
            Some(p) if matches!(pod_phase(p), "Succeeded" | "Failed") => {
                return Some(fail(TARGET_SHUTDOWN, ours, mark_down));
            }
            // Deleted on a node: its launcher is going down.
            Some(p) if p.metadata.deletion_timestamp.is_some() && pod_node(p).is_some() => {
                return Some(fail(TARGET_SHUTDOWN, ours, mark_down));
            }
            // Deleted before it had a node: gone.
            Some(p) if p.metadata.deletion_timestamp.is_some() && created => {
                return Some(fail(TARGET_REMOVED, ours, mark_down));
            }
            None if created => return Some(fail(TARGET_REMOVED, ours, mark_down)),
            _ => {}
        }
    }
    let handed_off = matches!(
        phase,
        Some(
            MigrationPhase::PreparingTarget | MigrationPhase::TargetReady | MigrationPhase::Running
        )
    );
    if handed_off {
        match vmi_state(vmi) {
            None => return Some(fail(STATE_CLEARED, None, false)),
            Some(s) if !s.is_for(m.metadata.uid.as_deref().unwrap_or_default()) => {
                return Some(fail(STATE_TAKEN, None, false));
            }
            _ => {}
        }
    }
    if ours.is_some_and(|s| s.failed == Some(true)) {
        return Some(fail(SOURCE_FAILED, ours, false));
    }
    None
}

/// A migration that is over: keep the VMI's last word on it, clear up after it, let it go.
fn finalize(
    m: &VirtualMachineInstanceMigration,
    vmi: Option<&VirtualMachineInstance>,
    target: Option<&Pod>,
    uid: &str,
) -> Decision {
    let failed = phase_of(m) == Some(&MigrationPhase::Failed);
    let ours = vmi.and_then(vmi_state).filter(|s| s.is_for(uid));
    let mut steps = Vec::new();
    if let Some(s) = ours
        && m.status.as_ref().and_then(|st| st.migration_state.as_ref()) != Some(s)
    {
        steps.push(Step::Status(StatusChange {
            migration_state: Some(Box::new(s.clone())),
            ..StatusChange::default()
        }));
    }
    if failed && target.is_some_and(|p| p.metadata.deletion_timestamp.is_none()) {
        steps.push(Step::DeleteTargetPod { event: None });
    }
    if failed && ours.is_some_and(|s| !s.is_over()) {
        steps.push(Step::MarkTargetDown);
    }
    if let (Some(vmi), Some(s)) = (vmi, ours)
        && s.target_node.is_some()
        && vmi
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(MIGRATION_TARGET_NODE_LABEL))
            == s.target_node.as_ref()
    {
        steps.push(Step::RemoveTargetLabel);
    }
    if vmi.is_some() {
        steps.push(Step::CollectGarbage);
    }
    if m.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == MIGRATION_FINALIZER))
    {
        steps.push(Step::RemoveFinalizer);
    }
    if vmi.is_none() && m.metadata.deletion_timestamp.is_none() {
        steps.push(Step::DeleteMigration);
    }
    Decision {
        steps,
        requeue: None,
    }
}

/// What else migrates, from the cached migrations: `has_target` says whether a migration has
/// its target pod, `source_of` which node its VMI moves off.
pub fn counts(
    me: &VirtualMachineInstanceMigration,
    vmi: &VirtualMachineInstance,
    migrations: &[Arc<VirtualMachineInstanceMigration>],
    has_target: impl Fn(&VirtualMachineInstanceMigration) -> bool,
    source_of: impl Fn(&VirtualMachineInstanceMigration) -> Option<String>,
) -> Counts {
    let uid = me.metadata.uid.as_deref().unwrap_or_default();
    let node = vmi.status.as_ref().and_then(|s| s.node_name.clone());
    let mut c = Counts::default();
    for m in migrations {
        if m.metadata.uid.as_deref() == Some(uid) || phase_of(m).is_some_and(|p| p.is_final()) {
            continue;
        }
        if under_way(m) || has_target(m) {
            c.running += 1;
            if node.is_some() && source_of(m) == node {
                c.outbound += 1;
            }
        }
    }
    c.owner_active = vmi_state(vmi).is_some_and(|s| {
        let owner = s.migration_uid.as_deref().unwrap_or_default();
        !owner.is_empty()
            && owner != uid
            && !s.is_over()
            && migrations.iter().any(|m| {
                m.metadata.uid.as_deref() == Some(owner)
                    && !phase_of(m).is_some_and(|p| p.is_final())
            })
    });
    c
}

/// The names of the final migrations among `of_vmi` (one VMI's) to delete: all but the newest
/// `keep`, by creation.
pub fn garbage(of_vmi: &[VirtualMachineInstanceMigration], keep: usize) -> Vec<String> {
    let mut done: Vec<&VirtualMachineInstanceMigration> = of_vmi
        .iter()
        .filter(|m| phase_of(m).is_some_and(|p| p.is_final()))
        .collect();
    done.sort_by(|a, b| {
        let created = |m: &VirtualMachineInstanceMigration| {
            m.metadata.creation_timestamp.as_ref().map(|t| t.0)
        };
        created(b)
            .cmp(&created(a))
            .then_with(|| b.metadata.name.cmp(&a.metadata.name))
    });
    done.iter()
        .skip(keep)
        .filter(|m| m.metadata.deletion_timestamp.is_none())
        .filter_map(|m| m.metadata.name.clone())
        .collect()
}

/// The label selector of one VMI's migrations.
pub fn selector(vmi_name: &str) -> String {
    format!("{MIGRATION_VMI_LABEL}={vmi_name}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use k8s_openapi::jiff::SignedDuration;
    use serde_json::{Value, json};

    const NOW: &str = "2026-03-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn ago(secs: i64) -> String {
        now()
            .checked_sub(SignedDuration::from_secs(secs))
            .unwrap()
            .to_string()
    }

    fn mig(phase: Option<&str>) -> VirtualMachineInstanceMigration {
        serde_json::from_value(json!({
            "metadata": {"name": "mig", "namespace": "ns", "uid": "mig-uid",
                         "finalizers": [MIGRATION_FINALIZER, "other"],
                         "labels": {MIGRATION_VMI_LABEL: "vm"}},
            "spec": {"vmiName": "vm"},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn deleted(mut m: VirtualMachineInstanceMigration) -> VirtualMachineInstanceMigration {
        m.metadata.deletion_timestamp = Some(serde_json::from_value(json!(NOW)).unwrap());
        m
    }

    fn vmi(phase: &str, node: &str, state: Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "metadata": {"name": "vm", "namespace": "ns", "uid": "vmi-uid",
                         "labels": {MIGRATION_TARGET_NODE_LABEL: "n2"}},
            "spec": {"domain": {"devices": {}}},
            "status": {"phase": phase, "nodeName": node, "migrationState": state},
        }))
        .unwrap()
    }

    fn running() -> VirtualMachineInstance {
        vmi("Running", "n1", Value::Null)
    }

    /// The VMI handed to this migration, with the agents' reports in `more`.
    fn handed(node: &str, more: Value) -> VirtualMachineInstance {
        let mut state = json!({"migrationUid": "mig-uid", "sourceNode": "n1",
                               "targetNode": "n2", "targetPod": "tgt"});
        for (k, v) in more.as_object().unwrap() {
            state[k] = v.clone();
        }
        vmi("Running", node, state)
    }

    fn pod(node: Option<&str>, phase: &str, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "tgt", "namespace": "ns", "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": [{"name": "compute"}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn free() -> Counts {
        Counts::default()
    }

    fn go(
        m: &VirtualMachineInstanceMigration,
        v: Option<&VirtualMachineInstance>,
        p: Option<&Pod>,
    ) -> Decision {
        plan(m, v, p, &free(), now())
    }

    fn failed_with(d: &Decision, message: &str) {
        assert_eq!(d.phase(), Some(&MigrationPhase::Failed), "{d:?}");
        assert_eq!(d.events(), vec![("FailedMigration", message)], "{d:?}");
    }

    #[test]
    fn new_migration_goes_pending_unless_another_owns_the_vmi() {
        let d = go(&mig(None), Some(&running()), None);
        assert_eq!(d.phase(), Some(&MigrationPhase::Pending));
        let busy = Counts {
            owner_active: true,
            ..free()
        };
        let d = plan(&mig(None), Some(&running()), None, &busy, now());
        failed_with(&d, NOT_ELIGIBLE);
    }

    #[test]
    fn pending_creates_the_target_once_the_vmi_runs_and_there_is_room() {
        let m = mig(Some("Pending"));
        let d = go(&m, Some(&vmi("Scheduled", "n1", Value::Null)), None);
        assert!(d.steps.is_empty());
        assert_eq!(d.requeue, Some(WAIT_FOR_VMI));
        let d = go(&m, Some(&running()), None);
        assert_eq!(d.steps[0], Step::CreateTargetPod);
        assert_eq!(d.phase(), Some(&MigrationPhase::Scheduling));
        // A pod from an earlier pass is not created again.
        let p = pod(None, "Pending", NOW);
        let d = go(&m, Some(&running()), Some(&p));
        assert!(!d.has(&Step::CreateTargetPod));
        assert_eq!(d.phase(), Some(&MigrationPhase::Scheduling));
    }

    #[test]
    fn pending_waits_at_the_parallel_limits() {
        let m = mig(Some("Pending"));
        for counts in [
            Counts {
                running: 5,
                ..free()
            },
            Counts {
                running: 2,
                outbound: 2,
                ..free()
            },
        ] {
            let d = plan(&m, Some(&running()), None, &counts, now());
            assert!(d.steps.is_empty(), "no pod, no condition: {d:?}");
            assert_eq!(d.requeue, Some(WAIT_FOR_TURN));
        }
        let room = Counts {
            running: 4,
            outbound: 1,
            ..free()
        };
        let d = plan(&m, Some(&running()), None, &room, now());
        assert!(d.has(&Step::CreateTargetPod));
    }

    #[test]
    fn scheduling_places_and_times_out_unschedulable_targets() {
        let m = mig(Some("Scheduling"));
        let v = running();
        let fresh = pod(None, "Pending", NOW);
        let d = go(&m, Some(&v), Some(&fresh));
        assert_eq!(d.steps, vec![Step::Place]);
        // kube-scheduler's verdict (a cluster): a warning each pass, the pod goes after 300 s.
        let mut stuck = pod(None, "Pending", &ago(299));
        stuck.status = Some(
            serde_json::from_value(json!({"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}))
            .unwrap(),
        );
        let d = go(&m, Some(&v), Some(&stuck));
        assert_eq!(
            d.events(),
            vec![(
                "migrationTargetPodUnschedulable",
                "Migration target pod for VMI [ns/vm] is currently unschedulable."
            )]
        );
        assert!(
            !d.steps
                .iter()
                .any(|s| matches!(s, Step::DeleteTargetPod { .. }))
        );
        stuck.metadata.creation_timestamp = Some(serde_json::from_value(json!(ago(300))).unwrap());
        let d = go(&m, Some(&v), Some(&stuck));
        assert!(d.has(&Step::DeleteTargetPod {
            event: Some("unschedulable pod ns/tgt timeout period exceeded".into())
        }));
        // Embedded placement's verdict goes the same way.
        let steps = unschedulable(&v, &pod(None, "Pending", &ago(301)), now());
        assert_eq!(steps.len(), 2);
        assert_eq!(unschedulable(&v, &fresh, now()).len(), 1);
        // Bound but pending for 15 minutes.
        let slow = pod(Some("n2"), "Pending", &ago(900));
        let d = go(&m, Some(&v), Some(&slow));
        assert!(d.has(&Step::DeleteTargetPod {
            event: Some("pending pod ns/tgt timeout period exceeded".into())
        }));
        // Running: scheduled.
        let d = go(&m, Some(&v), Some(&pod(Some("n2"), "Running", NOW)));
        assert_eq!(d.phase(), Some(&MigrationPhase::Scheduled));
        assert!(!d.has(&Step::Place));
    }

    #[test]
    fn scheduled_hands_off_then_follows_the_agents() {
        let target = pod(Some("n2"), "Running", NOW);
        let d = go(&mig(Some("Scheduled")), Some(&running()), Some(&target));
        assert_eq!(d.steps[0], Step::HandOff);
        assert_eq!(d.phase(), Some(&MigrationPhase::PreparingTarget));
        assert_eq!(
            d.events(),
            vec![(
                "SuccessfulHandOver",
                "Migration target pod is ready for preparation by virt-handler."
            )]
        );
        // Handed off already (an earlier pass wrote the VMI, not the phase).
        let d = go(
            &mig(Some("Scheduled")),
            Some(&handed("n1", json!({}))),
            Some(&target),
        );
        assert!(!d.has(&Step::HandOff));
        assert_eq!(d.phase(), Some(&MigrationPhase::PreparingTarget));

        let preparing = mig(Some("PreparingTarget"));
        let d = go(&preparing, Some(&handed("n1", json!({}))), Some(&target));
        assert_eq!(d.phase(), None);
        let listening = handed("n1", json!({"targetNodeAddress": "10.0.0.2"}));
        let d = go(&preparing, Some(&listening), Some(&target));
        assert_eq!(d.phase(), Some(&MigrationPhase::TargetReady));

        let ready = mig(Some("TargetReady"));
        assert_eq!(go(&ready, Some(&listening), Some(&target)).phase(), None);
        let started = handed(
            "n1",
            json!({"targetNodeAddress": "10.0.0.2", "startTimestamp": NOW}),
        );
        let d = go(&ready, Some(&started), Some(&target));
        assert_eq!(d.phase(), Some(&MigrationPhase::Running));
    }

    #[test]
    fn running_succeeds_once_the_target_holds_the_vmi() {
        let m = mig(Some("Running"));
        let target = pod(Some("n2"), "Running", NOW);
        // Completed, but the target's agent has not moved the VMI yet.
        let completed = handed("n1", json!({"startTimestamp": NOW, "completed": true}));
        assert_eq!(go(&m, Some(&completed), Some(&target)).phase(), None);
        let moved = handed("n2", json!({"startTimestamp": NOW, "completed": true}));
        let d = go(&m, Some(&moved), Some(&target));
        assert_eq!(d.phase(), Some(&MigrationPhase::Succeeded));
        assert_eq!(
            d.events(),
            vec![(
                "SuccessfulMigration",
                "Source node reported migration succeeded"
            )]
        );
        let Some(Step::Status(c)) = d.steps.iter().find(|s| matches!(s, Step::Status(_))) else {
            panic!("no status");
        };
        assert_eq!(
            c.migration_state.as_deref(),
            moved.status.as_ref().unwrap().migration_state.as_ref()
        );
    }

    #[test]
    fn vmi_gone_or_final_fails_the_migration() {
        let m = mig(Some("Running"));
        let d = go(&m, None, None);
        failed_with(&d, VMI_SHUTDOWN);
        assert_eq!(d.steps.last(), Some(&Step::DeleteMigration));
        let d = go(&deleted(m.clone()), None, None);
        assert!(!d.has(&Step::DeleteMigration), "deleted already");
        let d = go(&m, Some(&vmi("Failed", "n1", Value::Null)), None);
        failed_with(&d, VMI_SHUTDOWN);
    }

    #[test]
    fn agents_reports_and_lost_state_fail_the_migration() {
        let m = mig(Some("Running"));
        let target = pod(Some("n2"), "Running", NOW);
        let failed = handed(
            "n1",
            json!({"startTimestamp": NOW, "failed": true, "completed": true}),
        );
        let d = go(&m, Some(&failed), Some(&target));
        failed_with(&d, SOURCE_FAILED);
        assert!(!d.has(&Step::MarkTargetDown), "the source reported it");
        let other = vmi("Running", "n1", json!({"migrationUid": "other"}));
        failed_with(&go(&m, Some(&other), Some(&target)), STATE_TAKEN);
        failed_with(&go(&m, Some(&running()), Some(&target)), STATE_CLEARED);
    }

    #[test]
    fn a_target_pod_down_fails_the_migration_and_tells_the_source() {
        let m = mig(Some("TargetReady"));
        let v = handed("n1", json!({"targetNodeAddress": "10.0.0.2"}));
        let down = pod(Some("n2"), "Failed", NOW);
        let d = go(&m, Some(&v), Some(&down));
        failed_with(&d, TARGET_SHUTDOWN);
        assert_eq!(d.steps[0], Step::MarkTargetDown);
        let d = go(&m, Some(&v), None);
        failed_with(&d, TARGET_REMOVED);
        assert!(d.has(&Step::MarkTargetDown));
        // Before the handoff there is nothing to tell the source.
        let d = go(&mig(Some("Scheduling")), Some(&running()), None);
        failed_with(&d, TARGET_REMOVED);
        assert!(!d.has(&Step::MarkTargetDown));
        // A pod deleted before it had a node (the unschedulable timeout) is removed.
        let mut unbound = pod(None, "Pending", NOW);
        unbound.metadata.deletion_timestamp = Some(serde_json::from_value(json!(NOW)).unwrap());
        failed_with(
            &go(&mig(Some("Scheduling")), Some(&running()), Some(&unbound)),
            TARGET_REMOVED,
        );
        // Once the migration completed, the target's fate is the VMI's business.
        let done = handed("n1", json!({"startTimestamp": NOW, "completed": true}));
        let d = go(&mig(Some("Running")), Some(&done), Some(&down));
        assert_ne!(d.phase(), Some(&MigrationPhase::Failed));
    }

    #[test]
    fn deleting_before_the_handoff_cancels() {
        let m = deleted(mig(Some("Scheduling")));
        let p = pod(Some("n2"), "Pending", NOW);
        let d = go(&m, Some(&running()), Some(&p));
        assert_eq!(
            d.steps[0],
            Step::DeleteTargetPod {
                event: Some("migration canceled and pod ns/tgt is deleted".into())
            }
        );
        failed_with(&d, CANCELED);
        let Some(Step::Status(c)) = d.steps.iter().find(|s| matches!(s, Step::Status(_))) else {
            panic!("no status");
        };
        assert!(c.abort_requested);
        // Before any pod, too.
        let d = go(&deleted(mig(Some("Pending"))), Some(&running()), None);
        failed_with(&d, CANCELED);
    }

    #[test]
    fn deleting_after_the_handoff_asks_the_source_to_abort_once() {
        let m = deleted(mig(Some("Running")));
        let target = pod(Some("n2"), "Running", NOW);
        let v = handed("n1", json!({"startTimestamp": NOW}));
        let d = go(&m, Some(&v), Some(&target));
        assert_eq!(d.steps[0], Step::RequestAbort);
        assert_eq!(
            d.events(),
            vec![(
                "SuccessfulAbortMigration",
                "Migration is ready to be canceled by virt-handler."
            )]
        );
        assert_eq!(d.phase(), None, "it waits for the source's report");
        let asked = handed("n1", json!({"startTimestamp": NOW, "abortRequested": true}));
        let mut noted = m.clone();
        noted.status.as_mut().unwrap().conditions = vec![
            serde_json::from_value(json!({"type": ABORT_REQUESTED, "status": "True"})).unwrap(),
        ];
        let d = go(&noted, Some(&asked), Some(&target));
        assert!(d.steps.is_empty(), "{d:?}");
        // The source's report ends it.
        let aborted = handed(
            "n1",
            json!({"startTimestamp": NOW, "abortRequested": true, "abortStatus": "Succeeded",
                   "failed": true, "completed": true}),
        );
        failed_with(&go(&noted, Some(&aborted), Some(&target)), SOURCE_FAILED);
    }

    #[test]
    fn final_migrations_clean_up_and_let_go() {
        let v = handed("n1", json!({"failed": true, "completed": true}));
        let target = pod(Some("n2"), "Running", NOW);
        let d = go(&mig(Some("Failed")), Some(&v), Some(&target));
        assert!(
            matches!(&d.steps[0], Step::Status(c) if c.phase.is_none() && c.migration_state.is_some())
        );
        assert_eq!(
            d.steps[1..],
            [
                Step::DeleteTargetPod { event: None },
                Step::RemoveTargetLabel,
                Step::CollectGarbage,
                Step::RemoveFinalizer,
            ]
        );
        assert_eq!(d.requeue, None);
        // Succeeded: the target is the VMI's pod now; copied already, finalizer gone.
        let moved = handed("n2", json!({"completed": true}));
        let mut done = mig(Some("Succeeded"));
        done.metadata.finalizers = Some(vec!["other".into()]);
        done.status.as_mut().unwrap().migration_state =
            moved.status.as_ref().unwrap().migration_state.clone();
        let d = go(&done, Some(&moved), Some(&target));
        assert_eq!(d.steps, vec![Step::RemoveTargetLabel, Step::CollectGarbage]);
        // A failed migration whose VMI state is not over tells the source.
        let open = handed("n1", json!({}));
        let d = go(&mig(Some("Failed")), Some(&open), None);
        assert!(d.has(&Step::MarkTargetDown));
        // The VMI is gone: the finalizer goes, then the migration.
        let d = go(&mig(Some("Failed")), None, None);
        assert_eq!(d.steps, vec![Step::RemoveFinalizer, Step::DeleteMigration]);
        // Another migration's label is left alone.
        let other = vmi(
            "Running",
            "n1",
            json!({"migrationUid": "other", "targetNode": "n2"}),
        );
        assert!(!go(&mig(Some("Failed")), Some(&other), None).has(&Step::RemoveTargetLabel));
    }

    fn other(uid: &str, phase: Option<&str>, vmi: &str) -> Arc<VirtualMachineInstanceMigration> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "namespace": "ns", "uid": uid},
                "spec": {"vmiName": vmi},
                "status": {"phase": phase},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn counts_migrations_under_way_and_out_of_the_source_node() {
        let all = vec![
            other("mig-uid", Some("Running"), "vm"),
            other("a", Some("Running"), "on-n1"),
            other("b", Some("TargetReady"), "on-n2"),
            other("c", Some("Pending"), "on-n1"),
            other("d", Some("Pending"), "on-n1"),
            other("e", Some("Succeeded"), "on-n1"),
            other("f", None, "on-n1"),
        ];
        let has_target =
            |m: &VirtualMachineInstanceMigration| m.metadata.uid.as_deref() == Some("d");
        let source = |m: &VirtualMachineInstanceMigration| {
            m.spec
                .vmi_name
                .as_deref()
                .map(|n| n.trim_start_matches("on-").to_string())
        };
        let c = counts(&mig(Some("Pending")), &running(), &all, has_target, source);
        assert_eq!((c.running, c.outbound, c.owner_active), (3, 2, false));
        // The VMI's state names a migration still under way.
        let owned = vmi("Running", "n1", json!({"migrationUid": "b"}));
        assert!(counts(&mig(None), &owned, &all, has_target, source).owner_active);
        let over = vmi(
            "Running",
            "n1",
            json!({"migrationUid": "b", "completed": true}),
        );
        assert!(!counts(&mig(None), &over, &all, has_target, source).owner_active);
        let final_owner = vmi("Running", "n1", json!({"migrationUid": "e"}));
        assert!(!counts(&mig(None), &final_owner, &all, has_target, source).owner_active);
        let gone_owner = vmi("Running", "n1", json!({"migrationUid": "zzz"}));
        assert!(!counts(&mig(None), &gone_owner, &all, has_target, source).owner_active);
    }

    #[test]
    fn garbage_keeps_the_newest_five_final_migrations() {
        let made = |name: &str, phase: &str, secs: i64| -> VirtualMachineInstanceMigration {
            serde_json::from_value(json!({
                "metadata": {"name": name, "creationTimestamp": ago(secs)},
                "status": {"phase": phase},
            }))
            .unwrap()
        };
        let mut list: Vec<_> = (0..8)
            .map(|i| made(&format!("m{i}"), "Succeeded", 100 - i))
            .collect();
        list.push(made("live", "Running", 1000));
        list.push(made("f", "Failed", 1));
        let mut gone = garbage(&list, KEEP_FINAL);
        gone.sort();
        assert_eq!(gone, vec!["m0", "m1", "m2", "m3"]);
        assert!(garbage(&list[..5], KEEP_FINAL).is_empty());
    }
}
