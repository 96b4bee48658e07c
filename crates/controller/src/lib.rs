//! kuvirt's cluster-wide controllers, on kube-runtime: they talk to the API server only through
//! kube-rs, so they run the same against `kuvirt server` and a real cluster.

pub mod vm;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

/// A reconcile failure; retried with a delay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("api: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs every controller until `shutdown` resolves.
pub async fn run(
    client: kube::Client,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let vmis: Api<VirtualMachineInstance> = Api::all(client.clone());
    let ctx = Arc::new(vm::Context { client });
    Controller::new(vms, watcher::Config::default())
        .owns(vmis, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(vm::reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "vm controller");
            }
        })
        .await;
}

fn error_policy(_vm: Arc<VirtualMachine>, err: &Error, _ctx: Arc<vm::Context>) -> Action {
    tracing::warn!(error = %err, "vm reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
