//! Embedded MVCC object store for kuvirt's API server, on redb.
//!
//! Objects are opaque byte strings (JSON, but the store never parses them) addressed by a [`Key`]
//! `(resource, namespace, name)`. Every write gets the next global revision, which is the object's
//! `resourceVersion`. Every write also appends an [`Event`] to a history table, from which
//! [`Store::watch`] replays before it switches to live events; [`Store::compact`] trims that history.
//!
//! Writers never see the revision after the fact: `create` and `update` take a closure that is
//! given the revision and returns the bytes to store, so the API server can put
//! `metadata.resourceVersion` into the object before it is written and reads need no patching.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kuvirt_store::Error> {
//! use kuvirt_store::{Key, Store};
//! let store = Store::open("/var/lib/kuvirt/store.redb")?;
//! let key = Key::new("kubevirt.io/virtualmachines", "default", "vm1");
//! let rev = store.create(&key, |rev| format!(r#"{{"rv":"{rev}"}}"#).into_bytes()).await?;
//! let rev = store.update(&key, Some(rev), |rev| format!(r#"{{"rv":"{rev}"}}"#).into_bytes()).await?;
//! let mut watch = store.watch("kubevirt.io/virtualmachines", Some("default"), rev).await?;
//! store.delete(&key, None).await?;
//! let deleted = watch.next().await;
//! # Ok(()) }
//! ```

mod compact;
mod error;
mod model;
mod store;
mod tables;
mod txn;
mod watch;
mod writer;

pub use compact::Retention;
pub use error::{Error, Result};
pub use model::{Deleted, Event, EventKind, Key, List, Object, Stats};
pub use store::Store;
pub use txn::Txn;
pub use watch::Watch;
