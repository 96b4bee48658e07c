//! The store's error type.

use crate::model::Key;

/// Result with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No object at that key.
    #[error("{0} not found")]
    NotFound(Key),
    /// `create` of a key that already holds an object.
    #[error("{0} already exists")]
    AlreadyExists(Key),
    /// The object's revision is not the one the caller expected (optimistic concurrency).
    #[error("{key} is at revision {current}, not {expected}")]
    Conflict {
        /// The object written to.
        key: Key,
        /// The revision the caller expected.
        expected: u64,
        /// The object's current revision.
        current: u64,
    },
    /// History before the requested revision has been compacted away.
    #[error("revision {requested} is compacted, history starts after {compacted}")]
    Gone {
        /// The revision asked for.
        requested: u64,
        /// The newest compacted revision: events after it are still kept.
        compacted: u64,
    },
    /// A key with an empty resource or name.
    #[error("invalid key {0}: resource and name must not be empty")]
    InvalidKey(Key),
    /// Stored data that this code cannot decode.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// An earlier storage error inside this transaction left it unusable.
    #[error("transaction aborted by an earlier storage error")]
    Poisoned,
    /// The commit this write was part of failed (the write is not stored).
    #[error("commit failed: {0}")]
    Commit(String),
    /// The runtime is shutting down and the operation did not run.
    #[error("store is shutting down")]
    Closed,
    /// The storage engine failed (I/O, corruption, database locked by another process).
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
