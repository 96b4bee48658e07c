//! A write transaction: several writes that commit together, each with its own revision.

use bytes::Bytes;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::error::{Error, Result};
use crate::model::{Deleted, Event, EventKind, Key, Object};
use crate::tables::{self, EventVal, HISTORY, OBJECTS, ObjKey, ObjVal};

/// Reads and writes inside one redb write transaction; see [`crate::Store::txn`].
///
/// Each write takes the next revision (the first write of the transaction gets the store's
/// current revision + 1). Reads see this transaction's own earlier writes. A failed write (not
/// found, conflict, ...) changes nothing, so the caller may handle it and go on; a storage error
/// poisons the transaction, which then cannot commit.
pub struct Txn<'t> {
    objects: Table<'t, ObjKey, ObjVal>,
    history: Table<'t, u64, EventVal>,
    revision: u64,
    events: Vec<Event>,
    poisoned: bool,
}

impl<'t> Txn<'t> {
    pub(crate) fn new(wtx: &'t WriteTransaction, revision: u64) -> Result<Self> {
        Ok(Txn {
            objects: wtx.open_table(OBJECTS)?,
            history: wtx.open_table(HISTORY)?,
            revision,
            events: Vec::new(),
            poisoned: false,
        })
    }

    /// The writes made, and the last revision handed out; `Err` if a storage error poisoned it.
    pub(crate) fn finish(self) -> Result<(Vec<Event>, u64)> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok((self.events, self.revision))
    }

    /// How many writes were made so far.
    pub(crate) fn writes(&self) -> usize {
        self.events.len()
    }

    /// The revision of the last write in this transaction, or the store's revision before it.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The object at `key`, including writes made earlier in this transaction.
    pub fn get(&self, key: &Key) -> Result<Option<Object>> {
        tables::get_object(&self.objects, key)
    }

    /// Like [`crate::Store::list`], inside this transaction.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        continue_after: Option<&Key>,
        limit: usize,
    ) -> Result<(Vec<Object>, bool)> {
        tables::list_objects(&self.objects, resource, namespace, continue_after, limit)
    }

    /// Stores a new object; `value` gets the write's revision. Returns that revision.
    pub fn create(&mut self, key: &Key, value: impl FnOnce(u64) -> Vec<u8>) -> Result<u64> {
        self.usable()?;
        if key.resource.is_empty() || key.name.is_empty() {
            return Err(Error::InvalidKey(key.clone()));
        }
        if self.current(key)?.is_some() {
            return Err(Error::AlreadyExists(key.clone()));
        }
        let revision = self.revision + 1;
        let bytes = value(revision);
        self.put(key, revision, EventKind::Added, bytes, true)?;
        Ok(revision)
    }

    /// Replaces an object; with `expected` set, only if its revision is that one. `value` gets the
    /// write's revision. Returns that revision.
    pub fn update(
        &mut self,
        key: &Key,
        expected: Option<u64>,
        value: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<u64> {
        self.usable()?;
        self.check(key, expected)?;
        let revision = self.revision + 1;
        let bytes = value(revision);
        self.put(key, revision, EventKind::Modified, bytes, true)?;
        Ok(revision)
    }

    /// Removes an object; with `expected` set, only if its revision is that one. The DELETED
    /// event carries the last stored bytes unchanged.
    pub fn delete(&mut self, key: &Key, expected: Option<u64>) -> Result<Deleted> {
        self.delete_with(key, expected, |_, last| last.to_vec())
    }

    /// Like [`Txn::delete`], but the DELETED event carries `tombstone(revision, last_bytes)`, so
    /// the caller can stamp the delete's revision into the final state watchers see.
    pub fn delete_with(
        &mut self,
        key: &Key,
        expected: Option<u64>,
        tombstone: impl FnOnce(u64, &[u8]) -> Vec<u8>,
    ) -> Result<Deleted> {
        self.usable()?;
        let (previous_revision, last) = self.check(key, expected)?;
        let revision = self.revision + 1;
        let bytes = tombstone(revision, &last);
        let value = self.put(key, revision, EventKind::Deleted, bytes, false)?;
        Ok(Deleted {
            revision,
            previous_revision,
            value,
        })
    }

    fn usable(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn current(&mut self, key: &Key) -> Result<Option<(u64, Vec<u8>)>> {
        let found = self.objects.get(key.parts());
        let found = poison(&mut self.poisoned, found)?;
        Ok(found.map(|g| {
            let (rev, bytes) = g.value();
            (rev, bytes.to_vec())
        }))
    }

    /// The current revision and bytes, if the object exists at the expected revision.
    fn check(&mut self, key: &Key, expected: Option<u64>) -> Result<(u64, Vec<u8>)> {
        let (current, bytes) = self
            .current(key)?
            .ok_or_else(|| Error::NotFound(key.clone()))?;
        match expected {
            Some(expected) if expected != current => Err(Error::Conflict {
                key: key.clone(),
                expected,
                current,
            }),
            _ => Ok((current, bytes)),
        }
    }

    /// Writes (or removes, when `keep` is false) the object and appends its event.
    fn put(
        &mut self,
        key: &Key,
        revision: u64,
        kind: EventKind,
        bytes: Vec<u8>,
        keep: bool,
    ) -> Result<Bytes> {
        let (r, ns, name) = key.parts();
        let written = if keep {
            self.objects
                .insert((r, ns, name), (revision, bytes.as_slice()))
                .map(drop)
        } else {
            self.objects.remove((r, ns, name)).map(drop)
        };
        poison(&mut self.poisoned, written)?;
        let appended = self
            .history
            .insert(revision, (kind.code(), r, ns, name, bytes.as_slice()))
            .map(drop);
        poison(&mut self.poisoned, appended)?;
        let value = Bytes::from(bytes);
        self.revision = revision;
        self.events.push(Event {
            revision,
            kind,
            key: key.clone(),
            value: value.clone(),
        });
        Ok(value)
    }
}

/// Marks the transaction unusable when a storage operation failed.
fn poison<T>(poisoned: &mut bool, r: std::result::Result<T, redb::StorageError>) -> Result<T> {
    r.map_err(|e| {
        *poisoned = true;
        e.into()
    })
}
