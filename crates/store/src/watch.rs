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
