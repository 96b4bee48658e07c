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
const PLACING: Duration = Duration::from_secs(5);

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
