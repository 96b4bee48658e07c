//! The node's VMIs as watches have them — those running here (`status.nodeName`) and those
//! migrating here (label `kubevirt.io/migrationTargetNodeName`) — and a wake-up per VMI for the
//! monitors that follow them: a monitor sleeps until its VMI or its launcher changes, not on a
//! timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use kube::Api;
use kube::runtime::reflector::{self, ObjectRef, Store, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kuvirt_api::VirtualMachineInstance;
use tokio::sync::Notify;

type Key = ObjectRef<VirtualMachineInstance>;

/// The monitors' wake-ups, by the VMI they follow.
#[derive(Clone, Default)]
struct Wakers {
    by_vmi: Arc<Mutex<HashMap<Key, Vec<Arc<Notify>>>>>,
    /// Woken by any change (the node's pod routes follow the VMIs here).
    any: Arc<Notify>,
}

impl Wakers {
    fn wake(&self, key: &Key) {
        let map = self.by_vmi.lock().unwrap_or_else(PoisonError::into_inner);
        for n in map.get(key).into_iter().flatten() {
            n.notify_one();
        }
        self.any.notify_one();
    }

    fn wake_all(&self) {
        let map = self.by_vmi.lock().unwrap_or_else(PoisonError::into_inner);
        for n in map.values().flatten() {
            n.notify_one();
        }
        self.any.notify_one();
    }
}

/// The node's VMIs (caches kept by watches) and their wake-ups.
#[derive(Clone)]
pub struct NodeVmis {
    store: Store<VirtualMachineInstance>,
    /// VMIs migrating to this node.
    incoming: Option<Store<VirtualMachineInstance>>,
    wakers: Wakers,
}

/// The label the migration controller puts on a VMI for the node it is migrating to.
pub const MIGRATION_TARGET_LABEL: &str = "kubevirt.io/migrationTargetNodeName";

/// A monitor's hold on one VMI's changes; let go when dropped.
pub struct Following {
    key: Key,
    notify: Arc<Notify>,
    wakers: Wakers,
}

impl Following {
    /// Resolves once the VMI changed (or went) since the last call; a change while nobody
    /// waited is kept for the next call.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut map = self
            .wakers
            .by_vmi
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

impl NodeVmis {
    /// Starts watching the VMIs on `node` and those migrating to it; the returned task keeps
    /// the caches until aborted.
    pub fn watch(client: &kube::Client, node: &str) -> (NodeVmis, tokio::task::JoinHandle<()>) {
        let wakers = Wakers::default();
        let (store, here) = cache(
            client,
            watcher::Config::default().fields(&format!("status.nodeName={node}")),
            wakers.clone(),
        );
        let (incoming, arriving) = cache(
            client,
            watcher::Config::default().labels(&format!("{MIGRATION_TARGET_LABEL}={node}")),
            wakers.clone(),
        );
        let task = tokio::spawn(async move {
            tokio::join!(here, arriving);
        });
        (
            NodeVmis {
                store,
                incoming: Some(incoming),
                wakers,
            },
            task,
        )
    }

    /// The cached VMI `ns/name` (the newer copy when both watches have it).
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<VirtualMachineInstance>> {
        let key = ObjectRef::new(name).within(ns);
        let here = self.store.get(&key);
        let arriving = self.incoming.as_ref().and_then(|s| s.get(&key));
        let rv = |v: &VirtualMachineInstance| {
            v.metadata
                .resource_version
                .as_deref()
                .and_then(|r| r.parse::<u64>().ok())
        };
        match (here, arriving) {
            (Some(h), Some(a)) if rv(&a) > rv(&h) => Some(a),
            (Some(h), _) => Some(h),
            (None, a) => a,
        }
    }

    /// The VMIs whose `status.nodeName` is this node, as the watch has them.
    pub fn here(&self) -> Vec<Arc<VirtualMachineInstance>> {
        self.store.state()
    }

    /// Resolves once any of the node's VMIs changed since the last call (one waiter).
    pub async fn any_changed(&self) {
        self.wakers.any.notified().await;
    }

    /// Follows the changes of VMI `ns/name`.
    pub fn follow(&self, ns: &str, name: &str) -> Following {
        let key = ObjectRef::new(name).within(ns);
        let notify = Arc::new(Notify::new());
        self.wakers
            .by_vmi
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .push(notify.clone());
        Following {
            key,
            notify,
            wakers: self.wakers.clone(),
        }
    }
}

/// A VMI cache kept by one watch; each change wakes that VMI's followers once the cache has it.
fn cache(
    client: &kube::Client,
    config: watcher::Config,
    wake: Wakers,
) -> (
    Store<VirtualMachineInstance>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (store, writer) = reflector::store::<VirtualMachineInstance>();
    let task = reflector(
        writer,
        watcher(Api::<VirtualMachineInstance>::all(client.clone()), config),
    )
    .default_backoff()
    .for_each(move |ev| {
        match ev {
            Ok(watcher::Event::Apply(v) | watcher::Event::Delete(v)) => {
                wake.wake(&ObjectRef::from_obj(&v));
            }
            Ok(watcher::Event::InitDone) => wake.wake_all(),
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => {}
        }
        std::future::ready(())
    });
    (store, task)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_change_wakes_the_followers_of_that_vmi_only() {
        let (store, _writer) = reflector::store::<VirtualMachineInstance>();
        let vmis = NodeVmis {
            store,
            incoming: None,
            wakers: Wakers::default(),
        };
        let a = vmis.follow("ns", "a");
        let a2 = vmis.follow("ns", "a");
        let b = vmis.follow("ns", "b");
        vmis.wakers.wake(&ObjectRef::new("a").within("ns"));
        // A wake-up given while nobody waited is kept.
        a.changed().await;
        a2.changed().await;
        assert!(
            b.changed().now_or_never().is_none(),
            "b was woken by a's change"
        );
        drop(a);
        drop(a2);
        assert_eq!(vmis.wakers.by_vmi.lock().unwrap().len(), 1);
        vmis.wakers.wake_all();
        b.changed().await;
    }
}
