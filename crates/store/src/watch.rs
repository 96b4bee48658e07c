//! Watches: replay from history, then live events, with no gap and no repeat.
//!
//! The hand-off works like this. [`Watch::start`] first subscribes to the live broadcast and only
//! then reads the committed revision `R`. A writer stores the committed revision after its redb
//! commit and broadcasts after that, all under the write lock. So every event with a revision
//! above `R` was broadcast after the subscription and will arrive live, and every event at or
//! below `R` is committed and readable from history. The watch replays `(from, R]` from history
//! and then takes live events, dropping those at or below the highest revision it has already
//! passed. If the watcher falls so far behind that the broadcast drops events for it (`Lagged`),
//! it reads the committed revision again and replays the missing range from history the same
//! way; if that range was compacted meanwhile, it ends with [`Error::Gone`].

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::error::{Error, Result};
use crate::model::{Event, Key};
use crate::store::{Store, read_history};

/// History rows read per blocking call during replay.
const REPLAY_SCAN: usize = 512;

/// A running watch; see [`Store::watch`]. Dropping it stops it.
pub struct Watch {
    store: Store,
    live: broadcast::Receiver<Arc<[Event]>>,
    resource: String,
    namespace: Option<String>,
    /// Every event at or below this revision is delivered, queued in `ready`, or filtered out.
    seen: u64,
    /// History must be replayed up to here before live events are taken.
    replay_to: u64,
    ready: VecDeque<Event>,
    ended: bool,
}

impl Watch {
    pub(crate) fn start(
        store: Store,
        resource: &str,
        namespace: Option<&str>,
        from: u64,
    ) -> Result<Watch> {
        // subscribe before reading the revision: see the module docs
        let live = store.inner.live.subscribe();
        Self::with_receiver(store, live, resource, namespace, from)
    }

    /// The second half of [`Watch::start`], once subscribed.
    fn with_receiver(
        store: Store,
        live: broadcast::Receiver<Arc<[Event]>>,
        resource: &str,
        namespace: Option<&str>,
        from: u64,
    ) -> Result<Watch> {
        let replay_to = store.inner.revision();
        let compacted = store.compacted_revision();
        if compacted > from {
            return Err(Error::Gone {
                requested: from,
                compacted,
            });
        }
        Ok(Watch {
            store,
            live,
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
            seen: from,
            replay_to,
            ready: VecDeque::new(),
            ended: false,
        })
    }

    /// The revision this watch has caught up to: every matching event at or below it has been
    /// returned by [`Watch::next`]. A bookmark may carry it.
    pub fn revision(&self) -> u64 {
        match self.ready.front() {
            Some(e) => e.revision - 1,
            None => self.seen,
        }
    }

    /// The next event, `None` after an error. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            if self.seen < self.replay_to {
                if let Err(e) = self.replay().await {
                    self.ended = true;
                    return Some(Err(e));
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    for event in batch.iter() {
                        if event.revision <= self.seen {
                            continue;
                        }
                        if matches(&self.resource, self.namespace.as_deref(), &event.key) {
                            self.ready.push_back(event.clone());
                        }
                        self.seen = event.revision;
                    }
                }
                // events were dropped for us: read them from history
                Err(RecvError::Lagged(_)) => self.replay_to = self.store.inner.revision(),
                // cannot happen while we hold the store, which holds the sender
                Err(RecvError::Closed) => self.ended = true,
            }
        }
    }

    /// The events as a `Stream`, ending after the first error.
    pub fn into_stream(self) -> impl Stream<Item = Result<Event>> + Send + 'static {
        futures_util::stream::unfold(self, |mut watch| async move {
            watch.next().await.map(|item| (item, watch))
        })
    }

    /// Reads the next slice of history; state changes only after the read completes.
    async fn replay(&mut self) -> Result<()> {
        let (after, until) = (self.seen, self.replay_to);
        let resource = self.resource.clone();
        let namespace = self.namespace.clone();
        let (events, scanned) = self
            .store
            .blocking(move |inner| {
                read_history(inner, after, until, REPLAY_SCAN, |r, ns| {
                    r == resource && namespace.as_deref().is_none_or(|want| want == ns)
                })
            })
            .await?;
        self.ready.extend(events);
        self.seen = scanned;
        Ok(())
    }
}

fn matches(resource: &str, namespace: Option<&str>, key: &Key) -> bool {
    key.resource == resource && namespace.is_none_or(|ns| ns == key.namespace)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::Error;

    fn open(live_buffer: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path().join("s.redb"), live_buffer).unwrap();
        (dir, store)
    }

    async fn next(w: &mut Watch) -> Event {
        tokio::time::timeout(Duration::from_secs(20), w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    /// The write lands after the subscription and before the revision is read: it is both in
    /// history and in the live buffer, and must come out once.
    #[tokio::test]
    async fn write_between_subscribe_and_revision_read_comes_once() {
        let (_dir, store) = open(16);
        let key = Key::new("/pods", "ns", "p");
        store.create(&key, |_| Vec::new()).await.unwrap();
        let live = store.inner.live.subscribe();
        store.update(&key, None, |_| Vec::new()).await.unwrap();
        let mut watch = Watch::with_receiver(store.clone(), live, "/pods", None, 0).unwrap();
        store.update(&key, None, |_| Vec::new()).await.unwrap();
        assert_eq!(next(&mut watch).await.revision, 1);
        assert_eq!(next(&mut watch).await.revision, 2);
        assert_eq!(next(&mut watch).await.revision, 3);
        store.delete(&key, None).await.unwrap();
        assert_eq!(next(&mut watch).await.revision, 4);
        assert_eq!(watch.revision(), 4);
    }

    /// A watcher that does not read while many commits happen loses live events and gets them
    /// back from history.
    #[tokio::test]
    async fn lagging_watcher_catches_up_from_history() {
        let (_dir, store) = open(4);
        let mut watch = store.watch("/pods", Some("ns"), 0).await.unwrap();
        for i in 0..100 {
            let ns = if i % 2 == 0 { "ns" } else { "other" };
            store
                .create(&Key::new("/pods", ns, format!("p{i}")), |_| Vec::new())
                .await
                .unwrap();
        }
        for i in (0..100).step_by(2) {
            let e = next(&mut watch).await;
            assert_eq!(e.revision, i + 1);
            assert_eq!(e.key.name, format!("p{i}"));
        }
        // and live afterwards
        store
            .create(&Key::new("/pods", "ns", "last"), |_| Vec::new())
            .await
            .unwrap();
        assert_eq!(next(&mut watch).await.revision, 101);
    }

    /// A lagging watcher whose missing range was compacted ends with `Gone`.
    #[tokio::test]
    async fn lag_past_compaction_is_gone() {
        let (_dir, store) = open(2);
        let mut watch = store.watch("/pods", None, 0).await.unwrap();
        for i in 0..10 {
            store
                .create(&Key::new("/pods", "ns", format!("p{i}")), |_| Vec::new())
                .await
                .unwrap();
        }
        store.compact(5).await.unwrap();
        match watch.next().await {
            Some(Err(Error::Gone { compacted: 5, .. })) => {}
            other => panic!("expected gone, got {other:?}"),
        }
        assert!(watch.next().await.is_none());
    }
}
