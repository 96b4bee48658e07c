//! The VirtualMachine controller: decides from a VM and its VMI (if any) whether to start or stop,
//! and what the VM's status says — KubeVirt's run strategies and state change requests. The
//! decision ([`plan`]) is pure; [`reconcile`] carries it out through the API.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kuvirt_api::v1::{
    RunStrategy, StateChangeRequestAction, VirtualMachineCondition, VirtualMachineConditionType,
    VirtualMachineInstanceConditionType, VirtualMachineInstancePhase,
    VirtualMachinePrintableStatus, VirtualMachineStartFailure, VirtualMachineStatus,
};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;

use crate::Error;
use crate::events::{Subject, record};

/// What the controller does to the VMI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmiAction {
    None,
    /// Create a VMI from the template.
    Start,
    /// Delete the VMI with this uid.
    Stop {
        uid: String,
    },
}

/// The outcome of looking at one VM.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub action: VmiAction,
    /// Set `spec.runStrategy` (a paused start of a `Halted` VM makes it `Always`).
    pub run_strategy: Option<RunStrategy>,
    /// Start the new VMI with its vCPUs paused (`virtctl start --paused`).
    pub start_paused: bool,
    pub status: VirtualMachineStatus,
}

fn finished(vmi: &VirtualMachineInstance) -> bool {
    matches!(
        vmi.status.as_ref().and_then(|s| s.phase.as_ref()),
        Some(VirtualMachineInstancePhase::Succeeded | VirtualMachineInstancePhase::Failed)
    )
}

fn phase(vmi: &VirtualMachineInstance) -> Option<&VirtualMachineInstancePhase> {
    vmi.status.as_ref().and_then(|s| s.phase.as_ref())
}

/// A migration of the VMI is copying it: the source node reported its start and not yet its
/// end (KubeVirt's `IsMigrating`; it ranks below Terminating and Stopping, above Paused).
fn migrating(vmi: &VirtualMachineInstance) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .is_some_and(|m| m.start_timestamp.is_some() && m.end_timestamp.is_none())
}

fn vmi_condition(vmi: &VirtualMachineInstance, t: &VirtualMachineInstanceConditionType) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| &c.type_ == t))
        .is_some_and(|c| c.status == "True")
}

/// The VMI's pod cannot be placed (PodScheduled False, Unschedulable).
fn unschedulable(vmi: &VirtualMachineInstance) -> bool {
    vmi.status
        .as_ref()
        .and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_.as_str() == "PodScheduled")
        })
        .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
}

/// Decides what to do. `vmi` is the VM's VMI (same name, owned by it), if one exists.
pub fn plan(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> Plan {
    plan_at(vm, vmi, Timestamp::now())
}

/// The start-failure backoff KubeVirt uses: 10 s, doubling, at most 5 minutes.
pub fn backoff(failures: i64) -> Duration {
    let exp = u32::try_from(failures.saturating_sub(1).clamp(0, 10)).unwrap_or(10);
    Duration::from_secs((10u64 << exp).min(300))
}

/// Whether a VMI got as far as running a guest.
fn ever_ran(vmi: &VirtualMachineInstance) -> bool {
    vmi.status.as_ref().is_some_and(|s| {
        s.phase_transition_timestamps
            .iter()
            .any(|t| t.phase == Some(VirtualMachineInstancePhase::Running))
    })
}

/// [`plan`] at a given time (start-failure backoff depends on it).
pub fn plan_at(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>, now: Timestamp) -> Plan {
    let strategy = vm.spec.effective_run_strategy();
    let old = vm.status.clone().unwrap_or_default();
    let vmi_uid = vmi.and_then(|v| v.metadata.uid.clone()).unwrap_or_default();
    let deleting_vm = vm.metadata.deletion_timestamp.is_some();
    let vmi_deleting = vmi.is_some_and(|v| v.metadata.deletion_timestamp.is_some());

    // State change requests first (the start/stop/restart subresources write them).
    let mut action = VmiAction::None;
    let mut run_strategy = None;
    let mut start_paused = false;
    let mut requested_start = false;
    let mut requests = old.state_change_requests.clone();
    if let Some(first) = requests.first().cloned() {
        match (&first.action, vmi) {
            (StateChangeRequestAction::Stop, Some(v)) if !vmi_deleting => {
                let matches = first
                    .uid
                    .as_deref()
                    .is_none_or(|u| Some(u) == v.metadata.uid.as_deref());
                if matches {
                    action = VmiAction::Stop {
                        uid: vmi_uid.clone(),
                    };
                }
                requests.remove(0);
            }
            (StateChangeRequestAction::Stop, None) => {
                requests.remove(0);
            }
            // The start subresource leaves a paused start of a Halted VM to us: the strategy
            // changes first, and the request is honoured on the next pass.
            (StateChangeRequestAction::Start, None)
                if !deleting_vm && strategy == RunStrategy::Halted =>
            {
                run_strategy = Some(RunStrategy::Always);
            }
            (StateChangeRequestAction::Start, None) if !deleting_vm => {
                action = VmiAction::Start;
                requested_start = true;
                start_paused = first.data.get("paused").is_some_and(|p| p == "true");
                requests.remove(0);
            }
            // Started already: the request is done (KubeVirt trims it the same way).
            (StateChangeRequestAction::Start, Some(v)) if !finished(v) && !vmi_deleting => {
                requests.remove(0);
            }
            (StateChangeRequestAction::Start, Some(v)) if finished(v) && !vmi_deleting => {
                // Restart = stop then start: remove the finished VMI first, start next time.
                action = VmiAction::Stop {
                    uid: vmi_uid.clone(),
                };
            }
            _ => {}
        }
    }

    if action == VmiAction::None && !deleting_vm {
        action = match (&strategy, vmi) {
            (RunStrategy::Always, None) => VmiAction::Start,
            (RunStrategy::Always, Some(v)) if finished(v) && !vmi_deleting => VmiAction::Stop {
                uid: vmi_uid.clone(),
            },
            // A VMI that succeeded is left in place: the VM stays down until started again.
            (RunStrategy::RerunOnFailure, None) => VmiAction::Start,
            (RunStrategy::RerunOnFailure, Some(v))
                if phase(v) == Some(&VirtualMachineInstancePhase::Failed) && !vmi_deleting =>
            {
                VmiAction::Stop {
                    uid: vmi_uid.clone(),
                }
            }
            (RunStrategy::Halted, Some(v)) if !vmi_deleting => VmiAction::Stop {
                uid: v.metadata.uid.clone().unwrap_or_default(),
            },
            (RunStrategy::Once, None) => VmiAction::Start,
            // Once: the finished VMI stays, and nothing starts again (the spec is the user's and is
            // left alone, as in KubeVirt).
            _ => VmiAction::None,
        };
    }

    // Start failures: a VMI that failed before its guest ran counts once; a guest that ran clears
    // the count. While backing off, automatic restarts wait (explicit start requests do not).
    let mut failure = old.start_failure.clone();
    if let Some(v) = vmi {
        if ever_ran(v) {
            failure = None;
        } else if phase(v) == Some(&VirtualMachineInstancePhase::Failed)
            && failure
                .as_ref()
                .and_then(|f| f.last_failed_vmi_uid.as_deref())
                != v.metadata.uid.as_deref()
        {
            let count = failure
                .as_ref()
                .and_then(|f| f.consecutive_fail_count)
                .unwrap_or(0)
                + 1;
            let retry = now
                .checked_add(
                    SignedDuration::try_from(backoff(count)).unwrap_or(SignedDuration::ZERO),
                )
                .unwrap_or(now);
            failure = Some(VirtualMachineStartFailure {
                consecutive_fail_count: Some(count),
                last_failed_vmi_uid: v.metadata.uid.clone(),
                retry_after_timestamp: Some(Time(retry)),
                ..Default::default()
            });
        }
    }
    // Only the strategies that restart by themselves keep counting (KubeVirt's
    // shouldClearStartFailure): a Halted or Manual VM starts its next run with a clean slate.
    if !matches!(
        strategy,
        RunStrategy::Always | RunStrategy::RerunOnFailure | RunStrategy::Once
    ) {
        failure = None;
    }
    // Why the last start failed (the VMI goes away when the VM starts over): a Failure
    // condition, as KubeVirt keeps, kept while start failures count.
    let failed_start = vmi.and_then(|v| {
        let s = v.status.as_ref()?;
        (phase(v) == Some(&VirtualMachineInstancePhase::Failed) && !ever_ran(v)).then(|| {
            let message = s
                .conditions
                .iter()
                .find(|c| c.type_.as_str() == "Ready")
                .and_then(|c| c.message.clone());
            (
                s.reason.clone().unwrap_or_else(|| "VMIFailed".into()),
                message,
            )
        })
    });
    let failure_condition = match (&failed_start, &failure) {
        (Some((reason, message)), _) => Some(VirtualMachineCondition {
            type_: VirtualMachineConditionType::Failure,
            status: "True".into(),
            reason: Some(reason.clone()),
            message: message.clone(),
            last_transition_time: Some(Time(now)),
            ..Default::default()
        }),
        (None, Some(_)) => old
            .conditions
            .iter()
            .find(|c| c.type_ == VirtualMachineConditionType::Failure)
            .cloned(),
        (None, None) => None,
    };
    let image_pull_failed = failure_condition
        .as_ref()
        .is_some_and(|c| c.reason.as_deref() == Some("ErrImagePull"));
    let waiting = failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .is_some_and(|t| t.0 > now);
    let backing_off = waiting && action == VmiAction::Start && !requested_start;
    if backing_off {
        action = VmiAction::None;
    }

    let mut status = old.clone();
    status.start_failure = failure;
    status.state_change_requests = requests;
    status.created = Some(vmi.is_some() && !matches!(action, VmiAction::Stop { .. }));
    let ready = vmi.is_some_and(|v| {
        phase(v) == Some(&VirtualMachineInstancePhase::Running)
            && vmi_condition(v, &VirtualMachineInstanceConditionType::Ready)
    });
    status.ready = Some(ready);
    status.run_strategy = Some(strategy.clone());
    status.observed_generation = vm.metadata.generation;
    status.desired_generation = vm.metadata.generation;
    let paused =
        vmi.is_some_and(|v| vmi_condition(v, &VirtualMachineInstanceConditionType::Paused));
    status.printable_status = Some(if deleting_vm {
        VirtualMachinePrintableStatus::Terminating
    } else if backing_off && image_pull_failed {
        VirtualMachinePrintableStatus::ImagePullBackOff
    } else if backing_off {
        VirtualMachinePrintableStatus::CrashLoopBackOff
    } else if matches!(action, VmiAction::Stop { .. }) && strategy == RunStrategy::Halted
        || vmi_deleting
    {
        VirtualMachinePrintableStatus::Stopping
    } else if failed_start
        .as_ref()
        .is_some_and(|(reason, _)| reason == "ErrImagePull")
    {
        VirtualMachinePrintableStatus::ErrImagePull
    } else if matches!(action, VmiAction::Stop { .. }) {
        VirtualMachinePrintableStatus::Stopping
    } else {
        match vmi.map(|v| (v, phase(v))) {
            None if action == VmiAction::Start => VirtualMachinePrintableStatus::Starting,
            None => VirtualMachinePrintableStatus::Stopped,
            Some((v, _)) if migrating(v) => VirtualMachinePrintableStatus::Migrating,
            Some((v, _)) if unschedulable(v) => VirtualMachinePrintableStatus::ErrorUnschedulable,
            Some((_, Some(VirtualMachineInstancePhase::Running))) if paused => {
                VirtualMachinePrintableStatus::Paused
            }
            Some((_, Some(VirtualMachineInstancePhase::Running))) => {
                VirtualMachinePrintableStatus::Running
            }
            Some((
                _,
                Some(VirtualMachineInstancePhase::Succeeded | VirtualMachineInstancePhase::Failed),
            )) => VirtualMachinePrintableStatus::Stopped,
            Some(_) => VirtualMachinePrintableStatus::Starting,
        }
    });
    status.conditions = conditions(&old.conditions, ready, paused);
    status
        .conditions
        .retain(|c| c.type_ != VirtualMachineConditionType::Failure);
    if let Some(c) = failure_condition {
        // The transition time stays that of the first failure in a row.
        let since = old
            .conditions
            .iter()
            .find(|o| o.type_ == VirtualMachineConditionType::Failure && o.reason == c.reason)
            .and_then(|o| o.last_transition_time.clone());
        status.conditions.push(VirtualMachineCondition {
            last_transition_time: since.or(c.last_transition_time.clone()),
            ..c
        });
    }
    Plan {
        action,
        run_strategy,
        start_paused,
        status,
    }
}

/// Ready and Paused mirror the VMI; transition times move only when the status changes.
fn conditions(
    old: &[VirtualMachineCondition],
    ready: bool,
    paused: bool,
) -> Vec<VirtualMachineCondition> {
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff_now());
    let mut out: Vec<VirtualMachineCondition> = old
        .iter()
        .filter(|c| {
            !matches!(
                c.type_,
                VirtualMachineConditionType::Ready | VirtualMachineConditionType::Paused
            )
        })
        .cloned()
        .collect();
    for (t, on, reason) in [
        (
            VirtualMachineConditionType::Ready,
            ready,
            if ready { "" } else { "VMINotRunning" },
        ),
        (VirtualMachineConditionType::Paused, paused, "PausedByUser"),
    ] {
        if t == VirtualMachineConditionType::Paused && !on {
            continue;
        }
        let status = if on { "True" } else { "False" };
        let previous = old.iter().find(|c| c.type_ == t);
        let mut c = previous.cloned().unwrap_or_default();
        c.type_ = t;
        if previous.map(|p| p.status.as_str()) != Some(status) {
            c.last_transition_time = Some(now.clone());
        }
        c.status = status.into();
        c.reason = (!reason.is_empty()).then(|| reason.to_string());
        out.push(c);
    }
    out
}

fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    let now = k8s_openapi::jiff::Timestamp::now();
    now.round(k8s_openapi::jiff::Unit::Second).unwrap_or(now)
}

/// The status as a merge patch: lists the API types omit when empty are written explicitly, or
/// the stored ones (a drained stateChangeRequests, say) would survive the patch.
fn status_patch(status: &VirtualMachineStatus) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.entry("stateChangeRequests").or_insert_with(|| json!([]));
        o.entry("conditions").or_insert_with(|| json!([]));
        // A cleared start failure must be removed, which a merge patch does with null.
        o.entry("startFailure").or_insert(serde_json::Value::Null);
    }
    v
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
}

/// Carries out [`plan`] for one VM.
pub async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = vm
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = vm.metadata.name.clone().unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    // Plan from the API's current VM, not the watch cache, which can lag behind a start or stop
    // that was just written.
    let Some(vm) = vms.get_opt(&name).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let vmi = vmis.get_opt(&name).await?;
    // Only a VMI this VM controls counts.
    let vmi = vmi.filter(|v| {
        v.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| Some(&r.uid) == vm.metadata.uid.as_ref() && r.controller == Some(true))
    });
    let plan = plan(&vm, vmi.as_ref());
    let subject = Subject {
        kind: "VirtualMachine",
        namespace: &ns,
        name: &name,
        uid: vm.metadata.uid.as_deref(),
    };
    if plan.status.printable_status == Some(VirtualMachinePrintableStatus::CrashLoopBackOff)
        && vm.status.as_ref().and_then(|s| s.printable_status.as_ref())
            != Some(&VirtualMachinePrintableStatus::CrashLoopBackOff)
    {
        record(
            &ctx.client,
            &subject,
            true,
            "FailedCreate",
            "Failed to start: the virtual machine instance failed before it ran; backing off",
        )
        .await;
    }
    match &plan.action {
        VmiAction::None => {}
        VmiAction::Start => {
            let mut new = VirtualMachineInstance::from_vm(&vm);
            if plan.start_paused {
                new.spec.start_strategy = Some(kuvirt_api::v1::StartStrategy::Paused);
            }
            match vmis.create(&PostParams::default(), &new).await {
                Ok(_) => {
                    tracing::info!(vm = %name, namespace = %ns, "started: VMI created");
                    record(&ctx.client, &subject, false, "SuccessfulCreate", &format!(
                        "Started the virtual machine by creating the new virtual machine instance {name}"
                    ))
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        VmiAction::Stop { uid } => {
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: Some(uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match vmis.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::info!(vm = %name, namespace = %ns, "stopped: VMI deleted");
                    record(&ctx.client, &subject, false, "SuccessfulDelete", &format!(
                        "Stopped the virtual machine by deleting the virtual machine instance {uid}"
                    ))
                    .await;
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut vm = vm;
    if let Some(rs) = &plan.run_strategy {
        let updated = vms
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({
                    "metadata": {"resourceVersion": vm.metadata.resource_version},
                    "spec": {"runStrategy": rs.as_str()},
                })),
            )
            .await?;
        vm = Arc::new(updated);
    }
    if vm.status.as_ref() != Some(&plan.status) {
        // Conditional on the VM we planned from: a state change request written meanwhile (by the
        // start/stop/restart subresources) must not be overwritten; a conflict replans.
        vms.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"resourceVersion": vm.metadata.resource_version},
                "status": status_patch(&plan.status),
            })),
        )
        .await?;
    }
    // After acting, look again soon: the outcome is checked rather than assumed.
    let retry_in = plan
        .status
        .start_failure
        .as_ref()
        .and_then(|f| f.retry_after_timestamp.as_ref())
        .and_then(|t| Duration::try_from(t.0.duration_since(Timestamp::now())).ok())
        .filter(|d| !d.is_zero());
    Ok(match (plan.action, retry_in) {
        (VmiAction::None, Some(wait)) => Action::requeue(wait + Duration::from_millis(200)),
        (VmiAction::None, None) => Action::requeue(Duration::from_secs(300)),
        _ => Action::requeue(Duration::from_secs(2)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuvirt_api::v1::{
        VirtualMachineInstanceCondition, VirtualMachineInstanceStatus,
        VirtualMachineStateChangeRequest,
    };

    fn vm(strategy: &str) -> VirtualMachine {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm", "namespace": "default", "uid": "vm-uid", "generation": 3},
            "spec": {"runStrategy": strategy, "template": {"spec": {"domain": {"devices": {}}}}},
        }))
        .unwrap()
    }

    fn vmi(phase: VirtualMachineInstancePhase, ready: bool) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::from_vm(&vm("Always"));
        v.metadata.uid = Some("vmi-uid".into());
        v.status = Some(VirtualMachineInstanceStatus {
            phase: Some(phase),
            conditions: vec![VirtualMachineInstanceCondition {
                type_: VirtualMachineInstanceConditionType::Ready,
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        v
    }

    #[test]
    fn always_starts_and_restarts_finished_vmis() {
        let p = plan(&vm("Always"), None);
        assert_eq!(p.action, VmiAction::Start);
        assert_eq!(
            p.status.printable_status,
            Some(VirtualMachinePrintableStatus::Starting)
        );
        let running = vmi(VirtualMachineInstancePhase::Running, true);
        let p = plan(&vm("Always"), Some(&running));
        assert_eq!(p.action, VmiAction::None);
        assert_eq!(
            p.status.printable_status,
            Some(VirtualMachinePrintableStatus::Running)
        );
        assert_eq!(p.status.ready, Some(true));
        let done = vmi(VirtualMachineInstancePhase::Succeeded, false);
        assert_eq!(
            plan(&vm("Always"), Some(&done)).action,
            VmiAction::Stop {
                uid: "vmi-uid".into()
            }
        );
    }

    #[test]
    fn migrating_while_the_copy_runs() {
        let mut v = vmi(VirtualMachineInstancePhase::Running, true);
        let state = |s: serde_json::Value| {
            Some(
                serde_json::from_value::<kuvirt_api::v1::VirtualMachineInstanceMigrationState>(s)
                    .unwrap(),
            )
        };
        let printable =
            |v: &VirtualMachineInstance| plan(&vm("Always"), Some(v)).status.printable_status;
        v.status.as_mut().unwrap().migration_state = state(json!({"migrationUid": "m"}));
        assert_eq!(printable(&v), Some(VirtualMachinePrintableStatus::Running));
        v.status.as_mut().unwrap().migration_state =
            state(json!({"migrationUid": "m", "startTimestamp": "2026-01-01T00:00:00Z"}));
        assert_eq!(
            printable(&v),
            Some(VirtualMachinePrintableStatus::Migrating)
        );
        v.status.as_mut().unwrap().migration_state = state(json!({"migrationUid": "m",
            "startTimestamp": "2026-01-01T00:00:00Z", "endTimestamp": "2026-01-01T00:01:00Z"}));
        assert_eq!(printable(&v), Some(VirtualMachinePrintableStatus::Running));
    }

    #[test]
    fn halted_stops_and_stays_down() {
        let running = vmi(VirtualMachineInstancePhase::Running, true);
        let p = plan(&vm("Halted"), Some(&running));
        assert_eq!(
            p.action,
            VmiAction::Stop {
                uid: "vmi-uid".into()
            }
        );
        assert_eq!(
            p.status.printable_status,
            Some(VirtualMachinePrintableStatus::Stopping)
        );
        let p = plan(&vm("Halted"), None);
        assert_eq!(p.action, VmiAction::None);
        assert_eq!(
            p.status.printable_status,
            Some(VirtualMachinePrintableStatus::Stopped)
        );
    }

    #[test]
    fn rerun_on_failure_restarts_failures_only() {
        let failed = vmi(VirtualMachineInstancePhase::Failed, false);
        assert!(matches!(
            plan(&vm("RerunOnFailure"), Some(&failed)).action,
            VmiAction::Stop { .. }
        ));
        let ok = vmi(VirtualMachineInstancePhase::Succeeded, false);
        let p = plan(&vm("RerunOnFailure"), Some(&ok));
        assert_eq!(p.action, VmiAction::None, "a clean shutdown stays down");
        assert_eq!(
            p.status.printable_status,
            Some(VirtualMachinePrintableStatus::Stopped)
        );
    }

    #[test]
    fn manual_obeys_state_change_requests() {
        assert_eq!(plan(&vm("Manual"), None).action, VmiAction::None);
        let mut v = vm("Manual");
        v.status = Some(VirtualMachineStatus {
            state_change_requests: vec![VirtualMachineStateChangeRequest {
                action: StateChangeRequestAction::Start,
                ..Default::default()
            }],
            ..Default::default()
        });
        let p = plan(&v, None);
        assert_eq!(p.action, VmiAction::Start);
        assert!(p.status.state_change_requests.is_empty());
        let running = vmi(VirtualMachineInstancePhase::Running, true);
        v.status.as_mut().unwrap().state_change_requests = vec![VirtualMachineStateChangeRequest {
            action: StateChangeRequestAction::Stop,
            uid: Some("other-uid".into()),
            ..Default::default()
        }];
        assert_eq!(
            plan(&v, Some(&running)).action,
            VmiAction::None,
            "a stop for another VMI is dropped"
        );
        // A paused start of a Halted VM: started paused, and the VM becomes Always.
        let mut h = vm("Halted");
        h.status = Some(VirtualMachineStatus {
            state_change_requests: vec![VirtualMachineStateChangeRequest {
                action: StateChangeRequestAction::Start,
                data: [("paused".to_string(), "true".to_string())].into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let p = plan(&h, None);
        assert_eq!(
            (p.action.clone(), p.run_strategy.clone()),
            (VmiAction::None, Some(RunStrategy::Always))
        );
        let mut next = h.clone();
        next.spec.run_strategy = Some(RunStrategy::Always);
        let p = plan(&next, None);
        assert_eq!((p.action, p.start_paused), (VmiAction::Start, true));
    }

    #[test]
    fn image_pull_failures_show_and_back_off() {
        let now = Timestamp::now();
        let mut failed = vmi(VirtualMachineInstancePhase::Failed, false);
        failed.status.as_mut().unwrap().reason = Some("ErrImagePull".into());
        let p = plan_at(&vm("Always"), Some(&failed), now);
        assert_eq!(
            p.status.printable_status,
            Some(VirtualMachinePrintableStatus::ErrImagePull)
        );
        let cond = |s: &VirtualMachineStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == VirtualMachineConditionType::Failure)
                .and_then(|c| c.reason.clone())
        };
        assert_eq!(cond(&p.status).as_deref(), Some("ErrImagePull"));
        // The VMI is gone while the VM waits: the condition remembers why.
        let mut after = vm("Always");
        after.status = Some(p.status.clone());
        let waiting = plan_at(&after, None, now);
        assert_eq!(
            waiting.status.printable_status,
            Some(VirtualMachinePrintableStatus::ImagePullBackOff)
        );
        assert_eq!(cond(&waiting.status).as_deref(), Some("ErrImagePull"));
        // A guest that ran clears it.
        let mut ran = vmi(VirtualMachineInstancePhase::Running, true);
        ran.status.as_mut().unwrap().phase_transition_timestamps =
            vec![serde_json::from_value(json!({"phase": "Running"})).unwrap()];
        assert_eq!(cond(&plan_at(&after, Some(&ran), now).status), None);
    }

    #[test]
    fn failures_before_running_back_off() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(3), Duration::from_secs(40));
        assert_eq!(backoff(20), Duration::from_secs(300));
        let now = Timestamp::now();
        let failed = vmi(VirtualMachineInstancePhase::Failed, false);
        // The failed VMI is counted and removed.
        let p = plan_at(&vm("Always"), Some(&failed), now);
        assert!(matches!(p.action, VmiAction::Stop { .. }));
        let f = p.status.start_failure.clone().unwrap();
        assert_eq!(f.consecutive_fail_count, Some(1));
        // Without a VMI, the restart waits for the backoff.
        let mut after = vm("Always");
        after.status = Some(p.status.clone());
        let waiting = plan_at(&after, None, now);
        assert_eq!(waiting.action, VmiAction::None);
        assert_eq!(
            waiting.status.printable_status,
            Some(VirtualMachinePrintableStatus::CrashLoopBackOff)
        );
        let later = now.checked_add(SignedDuration::from_secs(11)).unwrap();
        assert_eq!(plan_at(&after, None, later).action, VmiAction::Start);
        // The same failed VMI is not counted twice; one that ran clears the count.
        assert_eq!(
            plan_at(&after, Some(&failed), now)
                .status
                .start_failure
                .unwrap()
                .consecutive_fail_count,
            Some(1)
        );
        let mut ran = vmi(VirtualMachineInstancePhase::Running, true);
        ran.status.as_mut().unwrap().phase_transition_timestamps =
            vec![serde_json::from_value(json!({"phase": "Running"})).unwrap()];
        assert!(
            plan_at(&after, Some(&ran), now)
                .status
                .start_failure
                .is_none()
        );
    }

    #[test]
    fn once_runs_once_and_stays_down() {
        assert_eq!(plan(&vm("Once"), None).action, VmiAction::Start);
        for phase in [
            VirtualMachineInstancePhase::Succeeded,
            VirtualMachineInstancePhase::Failed,
        ] {
            let done = vmi(phase, false);
            let p = plan(&vm("Once"), Some(&done));
            assert_eq!((p.action, p.run_strategy), (VmiAction::None, None));
            assert_eq!(
                p.status.printable_status,
                Some(VirtualMachinePrintableStatus::Stopped)
            );
        }
    }

    #[test]
    fn ready_condition_moves_only_on_change() {
        let running = vmi(VirtualMachineInstancePhase::Running, true);
        let p1 = plan(&vm("Always"), Some(&running));
        let ready = p1
            .status
            .conditions
            .iter()
            .find(|c| c.type_ == VirtualMachineConditionType::Ready)
            .unwrap();
        assert_eq!(ready.status, "True");
        let mut again = vm("Always");
        again.status = Some(p1.status.clone());
        let p2 = plan(&again, Some(&running));
        assert_eq!(p2.status, p1.status, "a steady VM has a steady status");
    }
}
