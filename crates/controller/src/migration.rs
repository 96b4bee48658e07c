//! The VirtualMachineInstanceMigration controller: creates a migration's target pod, places it
//! (embedded mode), hands the VMI to the node agents through its `status.migrationState`, and
//! follows what they report there to the migration's final phase; cancels on deletion, cleans
//! up after it. The decision is pure ([`plan::plan`]); [`reconcile`] carries it out.

pub mod plan;
pub mod target;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::migrations::{MigrationPolicy, Resolved};
use kuvirt_api::v1::{
    MIGRATION_FINALIZER, MIGRATION_JOB_LABEL, MIGRATION_VMI_LABEL, MigrationConfiguration,
    VirtualMachineInstanceMigration,
};
use serde_json::{Value, json};

use crate::Error;
use crate::events::{Subject, record};
use crate::placement::{Bound, Placement};
use crate::pod::CREATED_BY;
use crate::podindex::PodIndex;
use plan::{Counts, StatusChange, Step};
use target::{Handoff, MIGRATION_JOB_NAME_ANNOTATION, MIGRATION_TARGET_NODE_LABEL};

/// Shared by every migration reconcile.
pub struct Context {
    pub client: kube::Client,
    /// The image launcher pods run.
    pub launcher_image: String,
    /// Every pod (the VMI controller's pod cache) and its index: for placement, and to tell
    /// which pending migrations have a target pod.
    pub pods: Store<Pod>,
    pub index: PodIndex,
    /// Bind target pods ourselves (embedded mode), as the VMI controller binds launcher pods.
    pub placement: Option<Arc<Placement>>,
    /// Every migration (this controller's own cache).
    pub migrations: Store<VirtualMachineInstanceMigration>,
    /// Every VMI (the VMI controller's cache): where each migration moves from.
    pub vmis: Store<VirtualMachineInstance>,
}

impl Context {
    fn vmi_of(&self, m: &VirtualMachineInstanceMigration) -> Option<Arc<VirtualMachineInstance>> {
        let name = m.spec.vmi_name.as_deref()?;
        let ns = m.metadata.namespace.as_deref().unwrap_or("default");
        self.vmis.get(&ObjectRef::new(name).within(ns))
    }

    /// Whether the cached pods hold `m`'s target pod.
    fn has_target(&self, m: &VirtualMachineInstanceMigration) -> bool {
        let (Some(vmi), Some(uid)) = (self.vmi_of(m), m.metadata.uid.as_deref()) else {
            return false;
        };
        let Some(vmi_uid) = vmi.metadata.uid.as_deref() else {
            return false;
        };
        self.index.owned_by(vmi_uid).iter().any(|r| {
            self.pods.get(r).is_some_and(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MIGRATION_JOB_LABEL))
                    .is_some_and(|u| u == uid)
            })
        })
    }

    /// The node `m` moves its VMI off.
    fn source_of(&self, m: &VirtualMachineInstanceMigration) -> Option<String> {
        let vmi = self.vmi_of(m)?;
        let status = vmi.status.as_ref()?;
        let uid = m.metadata.uid.as_deref().unwrap_or_default();
        status
            .migration_state
            .as_ref()
            .filter(|s| s.is_for(uid))
            .and_then(|s| s.source_node.clone())
            .or_else(|| status.node_name.clone())
    }
}

/// Feeds the migration controller the VMI and target pod changes of the VMI controller's
/// watches (so there is one watch of each): each becomes a trigger of the migrations it
/// concerns, found in the migration cache.
#[derive(Clone)]
pub struct Triggers {
    migrations: Store<VirtualMachineInstanceMigration>,
    tx: tokio::sync::mpsc::Sender<VirtualMachineInstanceMigration>,
}

/// Triggers queued for the controller; beyond this they are dropped (every migration under
/// way is looked at again within seconds anyway).
const TRIGGER_QUEUE: usize = 1024;

impl Triggers {
    /// The triggers, and the stream the controller watches them on
    /// (`Controller::watches_stream`).
    pub fn new(
        migrations: Store<VirtualMachineInstanceMigration>,
    ) -> (
        Triggers,
        impl Stream<Item = Result<VirtualMachineInstanceMigration, watcher::Error>> + Send + 'static,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(TRIGGER_QUEUE);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|m| (Ok(m), rx))
        });
        (Triggers { migrations, tx }, stream)
    }

    fn send(&self, m: &VirtualMachineInstanceMigration) {
        if self.tx.try_send(m.clone()).is_err() {
            tracing::debug!("migration trigger dropped");
        }
    }

    /// A VMI changed: its migrations under way (all of them when it is gone).
    pub fn vmi_event(&self, ev: &watcher::Event<VirtualMachineInstance>) {
        let (vmi, gone) = match ev {
            watcher::Event::Apply(v) | watcher::Event::InitApply(v) => (v, false),
            watcher::Event::Delete(v) => (v, true),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let (Some(name), ns) = (
            vmi.metadata.name.as_deref(),
            vmi.metadata.namespace.as_deref(),
        ) else {
            return;
        };
        if self.migrations.is_empty() {
            return;
        }
        for m in self.migrations.state() {
            let of_vmi = m.metadata.namespace.as_deref() == ns
                && m.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(MIGRATION_VMI_LABEL))
                    .is_some_and(|n| n == name);
            if of_vmi && (gone || !plan::phase_of(&m).is_some_and(|p| p.is_final())) {
                self.send(&m);
            }
        }
    }

    /// A pod changed: the migration it is the target of.
    pub fn pod_event(&self, ev: &watcher::Event<Pod>) {
        let pod = match ev {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) | watcher::Event::Delete(p) => {
                p
            }
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let meta = &pod.metadata;
        let is_target = meta
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(MIGRATION_JOB_LABEL));
        let name = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIGRATION_JOB_NAME_ANNOTATION));
        if let (true, Some(name)) = (is_target, name) {
            let ns = meta.namespace.as_deref().unwrap_or("default");
            if let Some(m) = self.migrations.get(&ObjectRef::new(name).within(ns)) {
                self.send(&m);
            }
        }
    }
}

/// What one step leaves to do.
enum Flow {
    /// Go on, these steps first.
    Next(Vec<Step>),
    /// Stop here and look again later (a write raced with another writer).
    Stop(Action),
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// A pass over one migration: what it acts on, as read at its start (resource versions follow
/// its own writes).
struct Pass<'a> {
    ctx: &'a Context,
    m: VirtualMachineInstanceMigration,
    vmi: Option<VirtualMachineInstance>,
    target: Option<Pod>,
    ns: String,
    migrations: Api<VirtualMachineInstanceMigration>,
    vmis: Api<VirtualMachineInstance>,
    pods: Api<Pod>,
}

pub async fn reconcile(
    m: Arc<VirtualMachineInstanceMigration>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let ns = m
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = m.metadata.name.clone().unwrap_or_default();
    let uid = m.metadata.uid.clone().unwrap_or_default();
    let migrations: Api<VirtualMachineInstanceMigration> = Api::namespaced(ctx.client.clone(), &ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(ctx.client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // Decide from the API's objects: the caches lag behind the node agents' writes.
    let Some(m) = migrations.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if m.metadata.uid.as_deref() != Some(uid.as_str()) {
        return Ok(Action::await_change());
    }
    let vmi = match m.spec.vmi_name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => vmis.get_opt(n).await?,
        None => None,
    };
    let listed = pods
        .list(&ListParams::default().labels(&format!("{MIGRATION_JOB_LABEL}={uid}")))
        .await?
        .items;
    let target = listed
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .or(listed.first())
        .cloned();
    let counts = match &vmi {
        Some(v) => {
            let _ = ctx.migrations.wait_until_ready().await;
            let _ = ctx.vmis.wait_until_ready().await;
            plan::counts(
                &m,
                v,
                &ctx.migrations.state(),
                |o| ctx.has_target(o),
                |o| ctx.source_of(o),
            )
        }
        None => Counts::default(),
    };
    let decision = plan::plan(&m, vmi.as_ref(), target.as_ref(), &counts, Timestamp::now());
    let mut pass = Pass {
        ctx: &ctx,
        m,
        vmi,
        target,
        ns,
        migrations,
        vmis,
        pods,
    };
    let mut steps: VecDeque<Step> = decision.steps.into();
    while let Some(step) = steps.pop_front() {
        match pass.run(step).await? {
            Flow::Next(more) => {
                for s in more.into_iter().rev() {
                    steps.push_front(s);
                }
            }
            Flow::Stop(action) => return Ok(action),
        }
    }
    Ok(decision
        .requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

impl Pass<'_> {
    fn name(&self) -> &str {
        self.m.metadata.name.as_deref().unwrap_or_default()
    }

    fn uid(&self) -> &str {
        self.m.metadata.uid.as_deref().unwrap_or_default()
    }

    fn vmi_name(&self) -> &str {
        self.m.spec.vmi_name.as_deref().unwrap_or_default()
    }

    async fn event(&self, warning: bool, reason: &str, message: &str) {
        let subject = Subject {
            kind: "VirtualMachineInstanceMigration",
            namespace: &self.ns,
            name: self.name(),
            uid: self.m.metadata.uid.as_deref(),
        };
        record(&self.ctx.client, &subject, warning, reason, message).await;
    }

    async fn vmi_event(&self, warning: bool, reason: &str, message: &str) {
        let Some(vmi) = &self.vmi else {
            return;
        };
        let subject = Subject {
            kind: "VirtualMachineInstance",
            namespace: &self.ns,
            name: self.vmi_name(),
            uid: vmi.metadata.uid.as_deref(),
        };
        record(&self.ctx.client, &subject, warning, reason, message).await;
    }

    /// Merge-patches the VMI (conditional on its resourceVersion when the patch names one);
    /// a lost race stops the pass.
    async fn patch_vmi(&mut self, patch: Value) -> Result<Option<Flow>, kube::Error> {
        let name = self.vmi_name().to_string();
        match self
            .vmis
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(v) => {
                self.vmi = Some(v);
                Ok(None)
            }
            Err(e) if conflict(&e) => Ok(Some(Flow::Stop(Action::requeue(Duration::from_secs(1))))),
            Err(e) => Err(e),
        }
    }

    async fn run(&mut self, step: Step) -> Result<Flow, Error> {
        let done = Ok(Flow::Next(Vec::new()));
        match step {
            Step::CreateTargetPod => return self.create_target().await,
            Step::Place => {
                let (Some(placement), Some(pod), Some(vmi)) =
                    (&self.ctx.placement, &self.target, &self.vmi)
                else {
                    return done;
                };
                let bound = placement
                    .bind(&self.ctx.client, pod, &self.ctx.pods, &self.ctx.index)
                    .await?;
                if let Bound::Unschedulable(why) = bound {
                    tracing::debug!(migration = %self.name(), %why, "target pod unschedulable");
                    return Ok(Flow::Next(plan::unschedulable(vmi, pod, Timestamp::now())));
                }
            }
            Step::DeleteTargetPod { event } => {
                let Some(pod) = self.target.as_ref().and_then(|p| p.metadata.name.clone()) else {
                    return done;
                };
                match self.pods.delete(&pod, &DeleteParams::default()).await {
                    Ok(_) => {
                        if let Some(message) = event {
                            self.event(false, "SuccessfulDelete", &message).await;
                        }
                    }
                    Err(e) if not_found(&e) => {}
                    Err(e) => {
                        let message = format!("Error deleting pod {}/{pod}: {e}", self.ns);
                        self.event(true, "FailedDelete", &message).await;
                        return Err(e.into());
                    }
                }
            }
            Step::HandOff => return self.hand_off().await,
            Step::RequestAbort => {
                let Some(vmi) = &self.vmi else {
                    return done;
                };
                let patch = target::abort_patch(vmi);
                match self.patch_vmi(patch).await {
                    Ok(Some(stop)) => return Ok(stop),
                    Ok(None) => {}
                    Err(e) => {
                        let message = format!("Failed to set MigrationStat in VMI status. :{e}");
                        self.event(true, "FailedAbortMigration", &message).await;
                        return Err(e.into());
                    }
                }
            }
            Step::MarkTargetDown => {
                let Some(vmi) = &self.vmi else {
                    return done;
                };
                let patch = target::target_down_patch(vmi, &kuvirt_apimachinery::meta::now());
                if let Some(stop) = self.patch_vmi(patch).await? {
                    return Ok(stop);
                }
                let message = format!(
                    "VirtualMachineInstance migration uid {} failed. reason: {}",
                    self.uid(),
                    target::TARGET_DOWN_REASON
                );
                self.vmi_event(true, "FailedMigration", &message).await;
            }
            Step::Status(change) => self.write_status(change).await?,
            Step::Event {
                warning,
                reason,
                message,
            } => self.event(warning, reason, &message).await,
            Step::RemoveTargetLabel => {
                let patch = json!({"metadata": {"labels": {MIGRATION_TARGET_NODE_LABEL: null}}});
                match self.patch_vmi(patch).await {
                    Ok(_) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Step::CollectGarbage => {
                let of_vmi = self
                    .migrations
                    .list(&ListParams::default().labels(&plan::selector(self.vmi_name())))
                    .await?
                    .items;
                for name in plan::garbage(&of_vmi, plan::KEEP_FINAL) {
                    match self
                        .migrations
                        .delete(&name, &DeleteParams::default())
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if not_found(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Step::RemoveFinalizer => {
                let rest: Vec<String> = self
                    .m
                    .metadata
                    .finalizers
                    .iter()
                    .flatten()
                    .filter(|f| *f != MIGRATION_FINALIZER)
                    .cloned()
                    .collect();
                let patch = json!({"metadata": {
                    "finalizers": rest,
                    "resourceVersion": self.m.metadata.resource_version,
                }});
                let name = self.name().to_string();
                match self
                    .migrations
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(m) => self.m = m,
                    Err(e) if not_found(&e) => {}
                    Err(e) if conflict(&e) => {
                        return Ok(Flow::Stop(Action::requeue(Duration::from_secs(1))));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Step::DeleteMigration => {
                tracing::info!(migration = %self.name(), namespace = %self.ns, "Deleting migration for deleted vmi");
                let name = self.name().to_string();
                match self
                    .migrations
                    .delete(&name, &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        done
    }

    async fn create_target(&mut self) -> Result<Flow, Error> {
        let Some(vmi) = &self.vmi else {
            return Ok(Flow::Next(Vec::new()));
        };
        let rendered = match target::render(vmi, &self.m, &self.ctx.launcher_image) {
            Ok(p) => p,
            Err(e) => {
                // The VMI's own pod was rendered from the same spec: this does not heal.
                let message = format!("Error creating pod: {e}");
                self.vmi_event(true, "FailedCreate", &message).await;
                return Ok(Flow::Stop(self.fail_now(&message).await?));
            }
        };
        match self.pods.create(&PostParams::default(), &rendered).await {
            Ok(pod) => {
                let message = format!(
                    "Created migration target pod {}",
                    pod.metadata.name.as_deref().unwrap_or_default()
                );
                self.target = Some(pod);
                self.event(false, "SuccessfulCreate", &message).await;
                Ok(Flow::Next(Vec::new()))
            }
            Err(e) => {
                self.vmi_event(true, "FailedCreate", &format!("Error creating pod: {e}"))
                    .await;
                Err(e.into())
            }
        }
    }

    /// Fails the migration at once (outside the plan).
    async fn fail_now(&mut self, message: &str) -> Result<Action, Error> {
        self.write_status(StatusChange {
            phase: Some(kuvirt_api::v1::MigrationPhase::Failed),
            ..StatusChange::default()
        })
        .await?;
        self.event(true, "FailedMigration", message).await;
        Ok(Action::await_change())
    }

    async fn hand_off(&mut self) -> Result<Flow, Error> {
        let (Some(vmi), Some(pod)) = (&self.vmi, &self.target) else {
            return Ok(Flow::Next(Vec::new()));
        };
        let (Some(target_pod), Some(target_node)) = (
            pod.metadata.name.as_deref(),
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        ) else {
            return Ok(Flow::Stop(Action::requeue(Duration::from_secs(2))));
        };
        // The source is the VMI's current pod, as the VMI controller tells it.
        let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
        let own: Vec<Arc<Pod>> = self
            .pods
            .list(&ListParams::default().labels(&format!("{CREATED_BY}={vmi_uid}")))
            .await?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        let source = crate::vmi::current_pod(vmi, &own).and_then(|p| p.metadata.name.clone());
        let resolved = self.configuration(vmi).await;
        let patch = target::handoff_patch(
            vmi,
            &Handoff {
                migration_uid: self.uid(),
                target_pod,
                target_node,
                source_pod: source.as_deref(),
                configuration: &resolved.configuration,
                policy_name: resolved.policy_name.as_deref(),
            },
        );
        match self.patch_vmi(patch).await {
            Ok(Some(stop)) => Ok(stop),
            Ok(None) => Ok(Flow::Next(Vec::new())),
            Err(e) => {
                let message = format!("Failed to set MigrationStat in VMI status. :{e}");
                self.event(true, "FailedHandOver", &message).await;
                Err(e.into())
            }
        }
    }

    /// The configuration the migration runs with: KubeVirt's defaults with the matching
    /// MigrationPolicy applied (KubeVirt's virt-controller, at the handoff). Policies or a
    /// namespace that cannot be read leave the defaults, logged: they never hold a migration
    /// up.
    async fn configuration(&self, vmi: &VirtualMachineInstance) -> Resolved {
        let base = MigrationConfiguration::kubevirt_defaults();
        let defaults = |why: &str, e: &kube::Error| {
            tracing::warn!(
                migration = %self.name(), namespace = %self.ns, error = %e,
                "{why}; the migration runs with KubeVirt's defaults"
            );
            Resolved {
                configuration: MigrationConfiguration::kubevirt_defaults(),
                policy_name: None,
            }
        };
        let client = &self.ctx.client;
        let policies = match Api::<MigrationPolicy>::all(client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(e) => return defaults("cannot list migration policies", &e),
        };
        if policies.is_empty() {
            return Resolved {
                configuration: base,
                policy_name: None,
            };
        }
        let labels = match Api::<Namespace>::all(client.clone())
            .get_opt(&self.ns)
            .await
        {
            Ok(ns) => ns.and_then(|n| n.metadata.labels).unwrap_or_default(),
            Err(e) => return defaults("cannot read the VMI's namespace", &e),
        };
        let resolved = kuvirt_api::migrations::resolve(&policies, vmi, &labels, &base);
        match &resolved.policy_name {
            Some(p) => tracing::info!(
                migration = %self.name(), namespace = %self.ns,
                "migration is updated by migration policy named {p}"
            ),
            None => tracing::debug!(migration = %self.name(), "no migration policy matched"),
        }
        resolved
    }

    /// Writes the migration's status subresource.
    async fn write_status(&mut self, change: StatusChange) -> Result<(), Error> {
        let old = self.m.status.clone().unwrap_or_default();
        let now = kuvirt_apimachinery::meta::now();
        let mut status = serde_json::Map::new();
        if let Some(phase) = &change.phase {
            status.insert("phase".into(), json!(phase));
            let mut list = serde_json::to_value(&old.phase_transition_timestamps)
                .unwrap_or_else(|_| json!([]));
            if !old
                .phase_transition_timestamps
                .iter()
                .any(|t| t.phase.as_ref() == Some(phase))
                && let Some(a) = list.as_array_mut()
            {
                a.push(json!({"phase": phase, "phaseTransitionTimestamp": now}));
            }
            status.insert("phaseTransitionTimestamps".into(), list);
        }
        if change.abort_requested {
            let mut list = serde_json::to_value(&old.conditions).unwrap_or_else(|_| json!([]));
            if let Some(a) = list.as_array_mut() {
                a.push(json!({
                    "type": plan::ABORT_REQUESTED, "status": "True",
                    "lastProbeTime": now, "lastTransitionTime": now,
                }));
            }
            status.insert("conditions".into(), list);
        }
        if let Some(state) = &change.migration_state {
            let before = old
                .migration_state
                .as_ref()
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            let after = serde_json::to_value(state).unwrap_or(Value::Null);
            status.insert(
                "migrationState".into(),
                target::replace_with(&before, after),
            );
        }
        if status.is_empty() {
            return Ok(());
        }
        let name = self.name().to_string();
        self.m = self
            .migrations
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await?;
        Ok(())
    }
}
