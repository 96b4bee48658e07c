//! Periodic compaction of the watch history.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::store::Store;

/// How much history [`Store::compact_every`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Keep the last this many revisions.
    Revisions(u64),
    /// Keep at least the revisions written during this long. The task samples the revision at
    /// every tick and compacts to the newest sample older than this, as kube-apiserver does; after
    /// a restart nothing is compacted until this much time has passed.
    Age(Duration),
}

impl Store {
    /// Starts a task that compacts history every `interval`, keeping what `retain` says.
    /// Abort the returned handle to stop it; it holds the store open until then. Failures are
    /// logged and retried at the next tick.
    pub fn compact_every(&self, interval: Duration, retain: Retention) -> JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
            loop {
                let now = ticks.tick().await;
                let current = store.current_revision();
                let target = match retain {
                    Retention::Revisions(n) => current.saturating_sub(n),
                    Retention::Age(age) => {
                        samples.push_back((now, current));
                        let mut target = 0;
                        while let Some(&(at, rev)) = samples.front() {
                            if now.duration_since(at) < age {
                                break;
                            }
                            target = rev;
                            samples.pop_front();
                        }
                        target
                    }
                };
                if target <= store.compacted_revision() {
                    continue;
                }
                match store.compact(target).await {
                    Ok(done) => tracing::debug!(compacted = done, "store history compacted"),
                    Err(e) => tracing::warn!(error = %e, target, "store compaction failed"),
                }
            }
        })
    }
}
