//! The store handle: opening, reads, writes, transactions and compaction.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableDatabase, ReadableTableMetadata};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use crate::model::{Deleted, Event, Key, List, Object, Stats};
use crate::tables::{self, HISTORY, META, META_COMPACTED, META_REVISION, OBJECTS};
use crate::txn::Txn;
use crate::watch::Watch;
use crate::writer::{Job, Write, Writer};

/// Commits (not events) a live watcher may fall behind before it catches up from history.
const LIVE_BUFFER: usize = 1024;

/// redb's own page cache (its default is 1 GiB, which a busy store fills with every page it
/// ever wrote). Beyond it reads go to the kernel's page cache, which is shared and reclaimable.
const CACHE_BYTES: usize = 32 << 20;

/// A handle to an open store; cheap to clone, safe to use from many tasks.
///
/// All methods are async, so they must be called inside a tokio runtime. Reads run redb on
/// tokio's blocking pool; writes go to the store's one writer thread, which commits the single
/// writes queued meanwhile together. Each commit is fsynced before the method returns, so an
/// acknowledged write survives a crash.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    writer: Arc<Writer>,
}

pub(crate) struct Inner {
    db: Database,
    /// Held from the start of a write transaction until its events are broadcast, so that live
    /// events go out in commit order and `revision` moves only under it.
    write_lock: Mutex<()>,
    /// The newest committed revision. Stored after the commit and before the broadcast.
    revision: AtomicU64,
    /// The newest compacted revision.
    compacted: AtomicU64,
    /// Every commit's events, in commit order.
    pub(crate) live: broadcast::Sender<Arc<[Event]>>,
}

impl Store {
    /// Opens the store at `path`, creating it if missing. After a crash redb repairs the file
    /// here, which can take a while on a large store.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Self::open_with(path, LIVE_BUFFER)
    }

    /// [`Store::open`] with a live buffer of `live_buffer` commits per watcher.
    pub(crate) fn open_with(path: impl AsRef<Path>, live_buffer: usize) -> Result<Store> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path.as_ref())?;
        let wtx = db.begin_write()?;
        let (revision, compacted) = {
            wtx.open_table(OBJECTS)?;
            wtx.open_table(HISTORY)?;
            let meta = wtx.open_table(META)?;
            (
                tables::meta_get(&meta, META_REVISION)?,
                tables::meta_get(&meta, META_COMPACTED)?,
            )
        };
        wtx.commit()?;
        let (live, _) = broadcast::channel(live_buffer);
        let inner = Arc::new(Inner {
            db,
            write_lock: Mutex::new(()),
            revision: AtomicU64::new(revision),
            compacted: AtomicU64::new(compacted),
            live,
        });
        let writer =
            Writer::start(inner.clone()).map_err(|e| Error::Storage(redb::Error::Io(e)))?;
        let writer = Arc::new(writer);
        Ok(Store { inner, writer })
    }

    /// The newest committed revision (0 for an empty store).
    pub fn current_revision(&self) -> u64 {
        self.inner.revision()
    }

    /// The newest compacted revision: watches must start at or after it.
    pub fn compacted_revision(&self) -> u64 {
        self.inner.compacted.load(Ordering::SeqCst)
    }

    /// The object at `key` and the revision of its last write.
    pub async fn get(&self, key: &Key) -> Result<Option<Object>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let rtx = inner.db.begin_read()?;
            tables::get_object(&rtx.open_table(OBJECTS)?, &key)
        })
        .await
    }

    /// Objects of `resource`, in one namespace (`Some("")`: cluster-scoped) or all (`None`),
    /// in key order, starting after `continue_after`, at most `limit` of them (0: all).
    ///
    /// The page is read from one snapshot and [`List::revision`] is the store's revision there.
    /// Later pages are read from their own, newer snapshots.
    pub async fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        continue_after: Option<&Key>,
        limit: usize,
    ) -> Result<List> {
        let resource = resource.to_owned();
        let namespace = namespace.map(str::to_owned);
        let after = continue_after.cloned();
        self.blocking(move |inner| {
            let rtx = inner.db.begin_read()?;
            let revision = tables::meta_get(&rtx.open_table(META)?, META_REVISION)?;
            let (items, more) = tables::list_objects(
                &rtx.open_table(OBJECTS)?,
                &resource,
                namespace.as_deref(),
                after.as_ref(),
                limit,
            )?;
            Ok(List {
                items,
                revision,
                more,
            })
        })
        .await
    }

    /// Stores a new object; `value` gets the write's revision and returns the bytes to store.
    /// Fails with [`Error::AlreadyExists`] if the key holds an object.
    pub async fn create(
        &self,
        key: &Key,
        value: impl FnOnce(u64) -> Vec<u8> + Send + 'static,
    ) -> Result<u64> {
        let key = key.clone();
        self.write(move |tx| tx.create(&key, value), true).await
    }

    /// Replaces an object. With `expected` set, only if its revision is that one, else
    /// [`Error::Conflict`] with the current revision. `value` gets the write's revision.
    pub async fn update(
        &self,
        key: &Key,
        expected: Option<u64>,
        value: impl FnOnce(u64) -> Vec<u8> + Send + 'static,
    ) -> Result<u64> {
        let key = key.clone();
        self.write(move |tx| tx.update(&key, expected, value), true)
            .await
    }

    /// Removes an object (with `expected`, only at that revision); watchers get the last bytes.
    pub async fn delete(&self, key: &Key, expected: Option<u64>) -> Result<Deleted> {
        let key = key.clone();
        self.write(move |tx| tx.delete(&key, expected), true).await
    }

    /// Like [`Store::delete`], with the DELETED event's bytes made by
    /// `tombstone(revision, last_bytes)`.
    pub async fn delete_with(
        &self,
        key: &Key,
        expected: Option<u64>,
        tombstone: impl FnOnce(u64, &[u8]) -> Vec<u8> + Send + 'static,
    ) -> Result<Deleted> {
        let key = key.clone();
        self.write(move |tx| tx.delete_with(&key, expected, tombstone), true)
            .await
    }

    /// Runs `f` in one write transaction and commits its writes together (one fsync), or none
    /// of them if `f` returns `Err`. `f` runs on the writer thread, which waits for it: keep it
    /// short and do no async work in it.
    pub async fn txn<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.write(f, false).await
    }

    /// Queues `f` for the writer thread (`grouped`: it makes one write or fails without writing,
    /// so it may share a commit) and waits for its outcome; a panic in it resumes here.
    async fn write<T, E, F>(&self, f: F, grouped: bool) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (job, reply) = Write::new(f, grouped);
        if !self.writer.submit(Box::new(job)) {
            return Err(Error::Closed.into());
        }
        match reply.await {
            Ok(Ok(out)) => out,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(Error::Closed.into()),
        }
    }

    /// Events of `resource` (in `namespace` if given) with revisions after `from`: first those in
    /// history, then live ones, with no gap and no repeat between the two.
    ///
    /// Fails with [`Error::Gone`] if history at `from` + 1 has been compacted away.
    pub async fn watch(&self, resource: &str, namespace: Option<&str>, from: u64) -> Result<Watch> {
        Watch::start(self.clone(), resource, namespace, from)
    }

    /// Every commit's events from now on, as they happen (not from history): a receiver that
    /// falls more than the live buffer behind is told how many commits it missed (`Lagged`).
    pub fn changes(&self) -> broadcast::Receiver<Arc<[Event]>> {
        self.inner.live.subscribe()
    }

    /// Deletes history at and below `keep_after` (capped at the current revision) and returns
    /// the compacted revision. Current objects are never touched.
    pub async fn compact(&self, keep_after: u64) -> Result<u64> {
        self.blocking(move |inner| inner.compact(keep_after)).await
    }

    /// Counters and space use, for metrics and capacity checks.
    pub async fn stats(&self) -> Result<Stats> {
        self.blocking(|inner| inner.stats()).await
    }

    /// Runs `f` on tokio's blocking pool; a panic in it resumes in the caller.
    pub(crate) async fn blocking<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&Inner) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::Closed.into()),
        }
    }
}

impl Inner {
    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub(crate) fn db(&self) -> &Database {
        &self.db
    }

    /// Runs `group` in one write transaction and commits it (one fsync), then tells each job.
    /// A job alone that fails commits nothing; in a group, a job that fails made no writes, so
    /// the others still commit.
    pub(crate) fn commit(&self, mut group: Vec<Box<dyn Job>>) {
        let outcome = self.commit_group(&mut group);
        for job in group {
            job.finish(outcome.clone());
        }
    }

    fn commit_group(&self, group: &mut [Box<dyn Job>]) -> Result<(), String> {
        // a panic while holding the lock leaves nothing half-done (redb aborts the transaction)
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let wtx = self.db.begin_write().map_err(|e| e.to_string())?;
        let mut tx = Txn::new(&wtx, self.revision()).map_err(|e| e.to_string())?;
        let alone = group.len() == 1 && !group[0].grouped();
        for job in group.iter_mut() {
            let before = tx.writes();
            if !job.run(&mut tx) && (alone || tx.writes() != before) {
                // its writes must not commit, and they cannot be taken out of a shared
                // transaction: nothing commits (alone, the job reports its own error)
                drop(tx);
                wtx.abort().map_err(|e| e.to_string())?;
                return if alone {
                    Ok(())
                } else {
                    Err("a write in the same commit failed halfway".into())
                };
            }
        }
        let (events, revision) = match tx.finish() {
            Ok(done) => done,
            Err(e) => {
                let _ = wtx.abort();
                return Err(e.to_string());
            }
        };
        if events.is_empty() {
            wtx.abort().map_err(|e| e.to_string())?;
            return Ok(());
        }
        {
            let mut meta = wtx.open_table(META).map_err(|e| e.to_string())?;
            meta.insert(META_REVISION, revision)
                .map_err(|e| e.to_string())?;
        }
        wtx.commit().map_err(|e| e.to_string())?;
        self.revision.store(revision, Ordering::SeqCst);
        // no receivers is fine: nobody is watching
        let _ = self.live.send(events.into());
        Ok(())
    }

    fn stats(&self) -> Result<Stats> {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let wtx = self.db.begin_write()?;
        let db = wtx.stats()?;
        let stats = Stats {
            revision: self.revision(),
            compacted: self.compacted.load(Ordering::SeqCst),
            objects: wtx.open_table(OBJECTS)?.len()?,
            events: wtx.open_table(HISTORY)?.len()?,
            stored_bytes: db.stored_bytes(),
            allocated_bytes: db.allocated_pages() * db.page_size() as u64,
            fragmented_bytes: db.fragmented_bytes(),
        };
        wtx.abort()?;
        Ok(stats)
    }

    fn compact(&self, keep_after: u64) -> Result<u64> {
        let _guard = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let target = keep_after.min(self.revision());
        let wtx = self.db.begin_write()?;
        let compacted = {
            let mut meta = wtx.open_table(META)?;
            let old = tables::meta_get(&meta, META_COMPACTED)?;
            if target <= old {
                drop(meta);
                wtx.abort()?;
                return Ok(old);
            }
            let mut history = wtx.open_table(HISTORY)?;
            history.retain_in(..=target, |_, _| false)?;
            meta.insert(META_COMPACTED, target)?;
            target
        };
        wtx.commit()?;
        self.compacted.store(compacted, Ordering::SeqCst);
        Ok(compacted)
    }
}

/// Reads the compacted revision and up to `max_scan` history rows after `after`, up to `until`,
/// keeping those `keep` accepts. Returns the kept events and the last revision scanned.
pub(crate) fn read_history(
    inner: &Inner,
    after: u64,
    until: u64,
    max_scan: usize,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<(Vec<Event>, u64)> {
    let rtx = inner.db().begin_read()?;
    let compacted = tables::meta_get(&rtx.open_table(META)?, META_COMPACTED)?;
    if compacted > after {
        return Err(Error::Gone {
            requested: after,
            compacted,
        });
    }
    let history = rtx.open_table(HISTORY)?;
    let mut events = Vec::new();
    let mut rows = history.range((after + 1)..=until)?;
    let mut scanned_to = after;
    for _ in 0..max_scan {
        let Some(row) = rows.next() else {
            return Ok((events, until));
        };
        let (rev, v) = row?;
        let rev = rev.value();
        let v = v.value();
        if keep(v.1, v.2) {
            events.push(tables::decode_event(rev, v)?);
        }
        scanned_to = rev;
    }
    Ok((events, scanned_to))
}
