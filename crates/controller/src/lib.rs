//! kuvirt's cluster-wide controllers, on kube-runtime: they talk to the API server only through
//! kube-rs, so they run the same against `kuvirt server` and a real cluster.

pub mod events;
pub mod migration;
pub mod node;
pub mod placement;
pub mod pod;
pub mod podcidr;
pub mod podindex;
pub mod schedule;
pub mod vm;
pub mod vmi;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::Resource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kuvirt_api::v1::VirtualMachineInstanceMigration;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

/// A reconcile failure; retried with a delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("api: {0}")]
    Kube(#[from] kube::Error),
}

/// How the controllers run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The image launcher pods run.
    pub launcher_image: String,
    /// Place launcher pods ourselves (embedded mode has no kube-scheduler).
    pub schedule: bool,
    /// Memory overcommit for placement, in percent.
    pub memory_overcommit: u64,
    /// A node that has not reported for this long is lost.
    pub node_heartbeat_timeout: Duration,
    /// The pod network that nodes get their pod CIDRs from.
    pub cluster_cidr: podcidr::ClusterCidr,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            launcher_image: "kuvirt".into(),
            schedule: true,
            memory_overcommit: 100,
            node_heartbeat_timeout: node::HEARTBEAT_TIMEOUT,
            cluster_cidr: podcidr::ClusterCidr::default(),
        }
    }
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    opts: Options,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let stop = |tx: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = tx.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };
    let vm_stop = stop(&tx);
    let vmi_stop = stop(&tx);
    let migration_stop = stop(&tx);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(());
    });
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let client_for_nodes = client.clone();
    let vm_ctx = Arc::new(vm::Context {
        client: client.clone(),
    });
    let vm_controller = Controller::new(vms, watcher::Config::default())
        .with_config(bounded())
        .owns(vmis.clone(), watcher::Config::default())
        .graceful_shutdown_on(vm_stop)
        .run(vm::reconcile, error_policy, vm_ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "vm controller");
            }
        });
    // The migration controller watches migrations itself; the VMIs and target pods that
    // trigger it come from the VMI controller's watches.
    let migrations: Api<VirtualMachineInstanceMigration> = Api::all(client.clone());
    let migration_controller =
        Controller::new(migrations, watcher::Config::default()).with_config(bounded());
    let (triggers, related) = migration::Triggers::new(migration_controller.store());
    // One pod watch: it fills the VMI controller's pod cache and triggers its reconciles.
    // The index is kept before the store: a placement that reads both between the two updates
    // counts a pod's new binding twice rather than not at all.
    let (pod_cache, pod_writer) = reflector::store();
    let pod_index = podindex::PodIndex::default();
    let indexed = pod_index.clone();
    let pod_triggers = triggers.clone();
    let pod_events = watcher(pods, watcher::Config::default())
        .default_backoff()
        .modify(|p: &mut Pod| p.meta_mut().managed_fields = None)
        .inspect_ok(move |ev| indexed.apply(ev))
        .reflect(pod_writer)
        .inspect_ok(move |ev| pod_triggers.pod_event(ev))
        .touched_objects();
    // One VMI watch likewise: the VMI controller's cache and trigger, and the migrations'.
    let (vmi_cache, vmi_writer) = reflector::store();
    let vmi_events = watcher(vmis, watcher::Config::default())
        .default_backoff()
        .reflect(vmi_writer)
        .inspect_ok(move |ev| triggers.vmi_event(ev))
        .applied_objects();
    let mut caches = Vec::new();
    let placement = opts.schedule.then(|| {
        let nodes: Store<Node> = cache(&client, &mut caches);
        let namespaces: Store<Namespace> = cache(&client, &mut caches);
        Arc::new(placement::Placement::new(
            nodes,
            namespaces,
            opts.memory_overcommit,
        ))
    });
    let migration_ctx = Arc::new(migration::Context {
        client: client.clone(),
        launcher_image: opts.launcher_image.clone(),
        pods: pod_cache.clone(),
        index: pod_index.clone(),
        placement: placement.clone(),
        migrations: migration_controller.store(),
        vmis: vmi_cache.clone(),
    });
    let migration_controller = migration_controller
        .watches_stream(related, |m| Some(ObjectRef::from_obj(&m)))
        .graceful_shutdown_on(migration_stop)
        .run(migration::reconcile, migration_error_policy, migration_ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "migration controller");
            }
        });
    let vmi_ctx = Arc::new(vmi::Context::new(
        client,
        opts.launcher_image,
        pod_cache,
        pod_index,
        placement,
    ));
    let vmi_controller = Controller::for_stream(vmi_events, vmi_cache)
        .with_config(bounded())
        .owns_stream(pod_events)
        .graceful_shutdown_on(vmi_stop)
        .run(vmi::reconcile, vmi_error_policy, vmi_ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "vmi controller");
            }
        });
    let nodes = tokio::spawn(node::run(
        client_for_nodes,
        opts.node_heartbeat_timeout,
        opts.cluster_cidr,
    ));
    tokio::join!(vm_controller, vmi_controller, migration_controller);
    nodes.abort();
    for c in caches {
        c.abort();
    }
}

/// Reconciles in flight per controller: each holds an API connection, and a burst of thousands
/// would open thousands (the queue keeps the rest, one entry per object however often it is
/// triggered).
const RECONCILES_IN_FLIGHT: u16 = 32;

fn bounded() -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(RECONCILES_IN_FLIGHT)
}

/// A cache of every `K`, kept by a task pushed onto `tasks`.
fn cache<K>(client: &kube::Client, tasks: &mut Vec<tokio::task::JoinHandle<()>>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let events = watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .for_each(|_| std::future::ready(()));
    tasks.push(tokio::spawn(events));
    store
}

fn vmi_error_policy(
    _vmi: Arc<VirtualMachineInstance>,
    err: &Error,
    _ctx: Arc<vmi::Context>,
) -> Action {
    tracing::warn!(error = %err, "vmi reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn migration_error_policy(
    _m: Arc<VirtualMachineInstanceMigration>,
    err: &Error,
    _ctx: Arc<migration::Context>,
) -> Action {
    tracing::warn!(error = %err, "migration reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

fn error_policy(_vm: Arc<VirtualMachine>, err: &Error, _ctx: Arc<vm::Context>) -> Action {
    tracing::warn!(error = %err, "vm reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
