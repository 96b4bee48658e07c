//! The values the store hands out: keys, objects, lists and watch events.

use std::fmt;

use bytes::Bytes;

/// Where an object lives: `(resource, namespace, name)`.
///
/// `resource` is `group/plural` (`"kubevirt.io/virtualmachines"`, `"/pods"` for the core group);
/// `namespace` is empty for cluster-scoped kinds. Keys sort by resource, then namespace, then
/// name, which is the order of [`crate::Store::list`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `group/plural`.
    pub resource: String,
    /// Empty for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl Key {
    /// A key from its three parts.
    pub fn new(
        resource: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        Key {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub(crate) fn parts(&self) -> (&str, &str, &str) {
        (&self.resource, &self.namespace, &self.name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.resource, self.name)
        } else {
            write!(f, "{} {}/{}", self.resource, self.namespace, self.name)
        }
    }
}

/// A stored object and the revision of its last write (its `resourceVersion`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Where it is stored.
    pub key: Key,
    /// The revision of the write that stored `value`.
    pub revision: u64,
    /// The bytes as written.
    pub value: Bytes,
}

/// One page of [`crate::Store::list`], read from a single snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List {
    /// Objects in key order.
    pub items: Vec<Object>,
    /// The store's revision at the snapshot the page was read from.
    pub revision: u64,
    /// Whether more objects follow the last item (pass its key as `continue_after`).
    pub more: bool,
}

/// What [`crate::Store::delete`] removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deleted {
    /// The revision of the delete itself (the DELETED event's revision).
    pub revision: u64,
    /// The revision of the object's last write before the delete.
    pub previous_revision: u64,
    /// The bytes recorded in the DELETED event: the last stored bytes, or what the tombstone
    /// closure of `delete_with` made of them.
    pub value: Bytes,
}

/// The kind of a watch event, as Kubernetes names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A create.
    Added,
    /// An update.
    Modified,
    /// A delete.
    Deleted,
}

impl EventKind {
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Added => "ADDED",
            EventKind::Modified => "MODIFIED",
            EventKind::Deleted => "DELETED",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            EventKind::Added => 1,
            EventKind::Modified => 2,
            EventKind::Deleted => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(EventKind::Added),
            2 => Some(EventKind::Modified),
            3 => Some(EventKind::Deleted),
            _ => None,
        }
    }
}

/// One write, as history keeps it and watches deliver it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The write's revision; unique, and increasing along a watch.
    pub revision: u64,
    /// Create, update or delete.
    pub kind: EventKind,
    /// The object written.
    pub key: Key,
    /// The new bytes; for a delete, the bytes recorded by it (see [`Deleted::value`]).
    pub value: Bytes,
}

/// What [`crate::Store::stats`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stats {
    /// The newest committed revision.
    pub revision: u64,
    /// The newest compacted revision.
    pub compacted: u64,
    /// Current objects.
    pub objects: u64,
    /// History rows (events not yet compacted).
    pub events: u64,
    /// Bytes of keys and values in the trees.
    pub stored_bytes: u64,
    /// Bytes of pages in use, including tree overhead and fragmentation.
    pub allocated_bytes: u64,
    /// Bytes of allocated pages not holding data.
    pub fragmented_bytes: u64,
}
