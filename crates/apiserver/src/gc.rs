//! When the garbage collector ([`objects::collect_garbage`]) runs: after a commit that deletes
//! something or asks for a deletion (a `deletionTimestamp`), at most once a second, and once a
//! minute regardless (a dependent created after its owner went). Commits that do neither —
//! most of them — cost it nothing, however many objects are stored.

use std::time::Duration;

use kuvirt_store::{Event, EventKind, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::objects;

/// The pass that runs whatever the commits were.
const RESYNC: Duration = Duration::from_secs(60);
/// At most one pass this often.
const MIN_GAP: Duration = Duration::from_secs(1);

/// Whether a commit's event may give the collector work.
fn matters(e: &Event) -> bool {
    const DELETING: &[u8] = b"\"deletionTimestamp\"";
    e.kind == EventKind::Deleted || e.value.windows(DELETING.len()).any(|w| w == DELETING)
}

/// Runs passes until the store closes.
pub async fn run(store: Store) {
    let mut changes = store.changes();
    let mut dirty = true;
    let mut next_resync = Instant::now() + RESYNC;
    loop {
        if dirty {
            let started = Instant::now();
            // Passes until nothing changes: one deletion can enable the next.
            for _ in 0..10 {
                match objects::collect_garbage(&store).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e.message, "garbage collection failed");
                        break;
                    }
                }
            }
            // Commits made meanwhile stay queued and are looked at after the gap.
            tokio::time::sleep_until(started + MIN_GAP).await;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next_resync) => {
                dirty = true;
                next_resync = Instant::now() + RESYNC;
            }
            got = changes.recv() => match got {
                Ok(events) => dirty = events.iter().any(matters),
                Err(RecvError::Lagged(_)) => dirty = true,
                Err(RecvError::Closed) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kuvirt_store::Key;

    fn event(kind: EventKind, value: &str) -> Event {
        Event {
            revision: 1,
            kind,
            key: Key::new("/configmaps", "ns", "a"),
            value: value.as_bytes().to_vec().into(),
        }
    }

    #[test]
    fn only_deletions_and_deletion_requests_matter() {
        assert!(matters(&event(EventKind::Deleted, "{}")));
        assert!(matters(&event(
            EventKind::Modified,
            r#"{"metadata":{"deletionTimestamp":"2026-01-01T00:00:00Z"}}"#
        )));
        assert!(!matters(&event(
            EventKind::Added,
            r#"{"metadata":{"ownerReferences":[]}}"#
        )));
        assert!(!matters(&event(EventKind::Modified, "{}")));
    }
}
