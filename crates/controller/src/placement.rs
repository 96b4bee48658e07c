//! Embedded-mode placement's state (a real cluster has kube-scheduler): the node and namespace
//! caches it reads, one placement at a time, and the bindings made that the pod cache does not
//! show yet (kube-scheduler's assume cache), so that no pod is counted twice or not at all.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::json;

use crate::podindex::PodIndex;
use crate::schedule::{Unschedulable, Usage, pick_with, requests};

/// A binding made but not yet seen in the pod cache.
struct Assumed {
    pod: ObjectRef<Pod>,
    node: String,
    /// The pod's requests: memory bytes, CPU millis.
    requests: (u64, u64),
}

pub struct Placement {
    nodes: Store<Node>,
    namespaces: Store<Namespace>,
    /// Memory overcommit, in percent.
    memory_overcommit: u64,
    /// One placement at a time: each must count the pods the previous one bound.
    placing: tokio::sync::Mutex<()>,
    /// By pod UID.
    assumed: Mutex<HashMap<String, Assumed>>,
}

/// What [`Placement::bind`] did.
#[derive(Debug)]
pub enum Bound {
    /// The pod is now bound to this node.
    To(String),
    /// The pod was bound already (the caller read it before the cache caught up).
    Already,
    /// No node fits.
    Unschedulable(Unschedulable),
}

impl Placement {
    pub fn new(nodes: Store<Node>, namespaces: Store<Namespace>, memory_overcommit: u64) -> Self {
        Placement {
            nodes,
            namespaces,
            memory_overcommit,
            placing: tokio::sync::Mutex::new(()),
            assumed: Mutex::new(HashMap::new()),
        }
    }

    /// Picks a node for `pod` among the cached nodes, counting the cached pods (what they
    /// request from `index`) and the bindings not yet cached, and binds it there.
    pub async fn bind(
        &self,
        client: &kube::Client,
        pod: &Pod,
        pods: &Store<Pod>,
        index: &PodIndex,
    ) -> Result<Bound, kube::Error> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let _placing = self.placing.lock().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let (placed, assumed, used) = self.placed(pods, index, &uid);
        // Bound while this waited for its turn (by an earlier reconcile whose binding the cache
        // has caught up with since `pod` was read)?
        let bound_now = pods
            .get(&ObjectRef::from_obj(pod))
            .is_some_and(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some());
        if bound_now || assumed {
            return Ok(Bound::Already);
        }
        let nodes = self.nodes.state();
        let namespaces = self.namespaces.state();
        let picked = pick_with(
            pod,
            &nodes,
            &placed,
            &used,
            &namespaces,
            self.memory_overcommit,
        );
        let node = match picked {
            Ok(n) => n,
            Err(e) => return Ok(Bound::Unschedulable(e)),
        };
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"nodeName": node}})),
        )
        .await?;
        if let Ok(mut a) = self.assumed.lock() {
            a.insert(
                uid,
                Assumed {
                    pod: ObjectRef::new(&name).within(ns),
                    node: node.clone(),
                    requests: requests(pod),
                },
            );
        }
        Ok(Bound::To(node))
    }

    /// The cached pods and what they request of each node, with the bindings the cache does
    /// not show yet applied, and whether the pod with `uid` is one of those; forgets the
    /// bindings the cache has caught up with (the pod bound, or gone).
    fn placed(
        &self,
        pods: &Store<Pod>,
        index: &PodIndex,
        uid: &str,
    ) -> (Vec<std::sync::Arc<Pod>>, bool, Usage) {
        let mut placed = pods.state();
        let mut used = index.usage();
        let Ok(mut assumed) = self.assumed.lock() else {
            return (placed, false, used);
        };
        assumed.retain(|uid, a| match pods.get(&a.pod) {
            Some(p) if p.metadata.uid.as_deref() == Some(uid.as_str()) => {
                p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
            }
            _ => false,
        });
        let pending = assumed.contains_key(uid);
        if assumed.is_empty() {
            return (placed, pending, used);
        }
        for a in assumed.values() {
            used.add(&a.node, a.requests.0, a.requests.1);
        }
        for p in &mut placed {
            if let Some(a) = p.metadata.uid.as_deref().and_then(|u| assumed.get(u)) {
                let mut bound = Pod::clone(p);
                bound.spec.get_or_insert_default().node_name = Some(a.node.clone());
                *p = std::sync::Arc::new(bound);
            }
        }
        (placed, pending, used)
    }
}
