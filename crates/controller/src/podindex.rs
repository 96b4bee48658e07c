//! Indexes kept from the pod watch beside its reflector store: each VMI's launcher pods (by the
//! VMI's UID) and what the live pods bound to each node request. Both are looked up on every
//! reconcile and placement, where a scan of every cached pod would grow with the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use crate::pod::CREATED_BY;
use crate::schedule::{Usage, requests};

/// What one pod adds to the indexes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// The UID of the VMI it was created for.
    owner: Option<String>,
    /// Its node, with its memory bytes and CPU millis, while it is live and bound.
    usage: Option<(String, u64, u64)>,
}

impl Entry {
    fn of(pod: &Pod) -> Entry {
        let owner = pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(CREATED_BY))
            .cloned();
        let terminal = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        let usage = node.filter(|_| !terminal).map(|n| {
            let (mem, cpu) = requests(pod);
            (n, mem, cpu)
        });
        Entry { owner, usage }
    }
}

#[derive(Default)]
struct Index {
    entries: HashMap<ObjectRef<Pod>, Entry>,
    by_owner: HashMap<String, HashSet<ObjectRef<Pod>>>,
    usage: Usage,
}

impl Index {
    fn remove(&mut self, key: &ObjectRef<Pod>) {
        let Some(old) = self.entries.remove(key) else {
            return;
        };
        if let Some(owner) = old.owner
            && let Some(set) = self.by_owner.get_mut(&owner)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
        if let Some((node, mem, cpu)) = old.usage {
            self.usage.sub(&node, mem, cpu);
        }
    }

    fn apply(&mut self, pod: &Pod) {
        let key = ObjectRef::from_obj(pod);
        let entry = Entry::of(pod);
        if self.entries.get(&key) == Some(&entry) {
            return;
        }
        self.remove(&key);
        if let Some(owner) = &entry.owner {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
        }
        if let Some((node, mem, cpu)) = &entry.usage {
            self.usage.add(node, *mem, *cpu);
        }
        self.entries.insert(key, entry);
    }
}

/// The indexes, shared by the watch that keeps them and the reconciles that read them.
#[derive(Clone, Default)]
pub struct PodIndex {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    current: Index,
    /// A relist being received (it replaces `current` once complete, as the store does).
    relist: Option<Index>,
}

impl PodIndex {
    /// Applies one event of the pod watch.
    pub fn apply(&self, event: &Event<Pod>) {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Apply(p) => s.current.apply(p),
            Event::Delete(p) => s.current.remove(&ObjectRef::from_obj(p)),
            Event::Init => s.relist = Some(Index::default()),
            Event::InitApply(p) => s.relist.get_or_insert_default().apply(p),
            Event::InitDone => {
                if let Some(fresh) = s.relist.take() {
                    s.current = fresh;
                }
            }
        }
    }

    /// The pods created for the VMI with `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<ObjectRef<Pod>> {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.current
            .by_owner
            .get(uid)
            .map(|set| set.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// What the live pods bound to each node request.
    pub fn usage(&self) -> Usage {
        let s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        s.current.usage.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn pod(name: &str, owner: &str, node: Option<&str>, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {CREATED_BY: owner}},
            "spec": {"nodeName": node, "containers": [{"name": "compute",
                     "resources": {"requests": {"memory": "1Mi", "cpu": "100m"}}}]},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn used(ix: &PodIndex, node: &str) -> (u64, u64) {
        ix.usage().get(node)
    }

    #[test]
    fn follows_owners_and_node_usage_through_changes() {
        let ix = PodIndex::default();
        ix.apply(&Event::Apply(pod("a", "u1", None, "Pending")));
        ix.apply(&Event::Apply(pod("b", "u1", Some("n1"), "Running")));
        ix.apply(&Event::Apply(pod("c", "u2", Some("n1"), "Running")));
        assert_eq!(ix.owned_by("u1").len(), 2);
        assert_eq!(used(&ix, "n1"), (2 << 20, 200));
        // Bound, then ended: counted, then not.
        ix.apply(&Event::Apply(pod("a", "u1", Some("n2"), "Running")));
        assert_eq!(used(&ix, "n2"), (1 << 20, 100));
        ix.apply(&Event::Apply(pod("a", "u1", Some("n2"), "Succeeded")));
        assert_eq!(used(&ix, "n2"), (0, 0));
        // The same event twice changes nothing.
        ix.apply(&Event::Apply(pod("c", "u2", Some("n1"), "Running")));
        assert_eq!(used(&ix, "n1"), (2 << 20, 200));
        ix.apply(&Event::Delete(pod("b", "u1", Some("n1"), "Running")));
        assert_eq!(ix.owned_by("u1"), vec![ObjectRef::new("a").within("ns")]);
        assert_eq!(used(&ix, "n1"), (1 << 20, 100));
        assert!(ix.owned_by("nobody").is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_once_complete() {
        let ix = PodIndex::default();
        ix.apply(&Event::Apply(pod("a", "u1", Some("n1"), "Running")));
        ix.apply(&Event::Init);
        ix.apply(&Event::InitApply(pod("b", "u2", Some("n1"), "Running")));
        // Until the relist is done, the old state holds.
        assert_eq!(ix.owned_by("u1").len(), 1);
        assert!(ix.owned_by("u2").is_empty());
        ix.apply(&Event::InitDone);
        assert!(ix.owned_by("u1").is_empty());
        assert_eq!(ix.owned_by("u2").len(), 1);
        assert_eq!(used(&ix, "n1"), (1 << 20, 100));
    }
}
