//! Watches: replay from history, the hand-off to live events under concurrent writes, filters,
//! compaction and `Gone`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use futures_util::StreamExt;
use kuvirt_store::{Error, Event, EventKind, Key, Retention, Store, Watch};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    (dir, store)
}

async fn next(watch: &mut Watch) -> Event {
    tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("no event within 20s")
        .expect("watch ended")
        .expect("watch failed")
}

#[tokio::test]
async fn replays_history_then_goes_live() {
    let (_dir, store) = open();
    let key = Key::new("/pods", "ns", "p");
    store.create(&key, |_| b"1".to_vec()).await.unwrap();
    store.update(&key, None, |_| b"2".to_vec()).await.unwrap();
    store
        .create(&Key::new("/pods", "other", "q"), |_| b"3".to_vec())
        .await
        .unwrap();

    let mut watch = store.watch("/pods", Some("ns"), 0).await.unwrap();
    let e = next(&mut watch).await;
    assert_eq!(
        (e.revision, e.kind, &e.value[..]),
        (1, EventKind::Added, &b"1"[..])
    );
    let e = next(&mut watch).await;
    assert_eq!((e.revision, e.kind), (2, EventKind::Modified));
    assert_eq!(watch.revision(), 3, "passed the filtered-out event too");

    store.delete(&key, None).await.unwrap();
    let e = next(&mut watch).await;
    assert_eq!(
        (e.revision, e.kind, &e.value[..]),
        (4, EventKind::Deleted, &b"2"[..])
    );
    assert_eq!(e.key, key);

    // from the current revision: only what comes next
    let mut watch = store.watch("/pods", None, 4).await.unwrap();
    store
        .create(&Key::new("/pods", "x", "y"), |_| Vec::new())
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await.revision, 5);

    // a revision in the future: events up to it are skipped
    let mut watch = store.watch("/pods", None, 6).await.unwrap();
    store
        .update(&Key::new("/pods", "x", "y"), None, |_| Vec::new())
        .await
        .unwrap();
    store
        .update(&Key::new("/pods", "x", "y"), None, |_| Vec::new())
        .await
        .unwrap();
    assert_eq!(next(&mut watch).await.revision, 7);
}

#[tokio::test]
async fn stream_interface() {
    let (_dir, store) = open();
    for i in 0..3 {
        store
            .create(&Key::new("/configmaps", "ns", format!("c{i}")), |_| {
                Vec::new()
            })
            .await
            .unwrap();
    }
    let events: Vec<_> = store
        .watch("/configmaps", None, 1)
        .await
        .unwrap()
        .into_stream()
        .take(2)
        .map(|e| e.unwrap().revision)
        .collect()
        .await;
    assert_eq!(events, [2, 3]);
}

/// Two writers hammer two resources while watchers start at various points (from the revision
/// of a list, as clients do); each watcher must see exactly the events of its resource after its
/// start revision, in order, with none missing and none repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_gap_no_repeat_between_replay_and_live() {
    let (_dir, store) = open();
    const PER_WRITER: usize = 300;
    let mut writers = Vec::new();
    for w in 0..2 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..PER_WRITER {
                let res = if i % 3 == 0 { "/services" } else { "/pods" };
                let key = Key::new(res, "ns", format!("w{w}-{}", i % 7));
                let r = store
                    .create(&key, move |rev| rev.to_string().into_bytes())
                    .await;
                if matches!(r, Err(Error::AlreadyExists(_))) {
                    if i % 2 == 0 {
                        store.delete(&key, None).await.unwrap();
                    } else {
                        store
                            .update(&key, None, |rev| rev.to_string().into_bytes())
                            .await
                            .unwrap();
                    }
                }
            }
        }));
    }

    // start watchers while the writers run
    let mut watchers = Vec::new();
    while watchers.len() < 12 {
        let list = store.list("/pods", None, None, 0).await.unwrap();
        let from = list.revision;
        let watch = store.watch("/pods", None, from).await.unwrap();
        let store2 = store.clone();
        watchers.push((
            from,
            tokio::spawn(async move {
                let mut watch = watch;
                let mut got = Vec::new();
                // read until a marker written after the writers finished
                loop {
                    let e = next(&mut watch).await;
                    if e.key.name == "done" {
                        return got;
                    }
                    got.push(e);
                }
            }),
        ));
        drop(store2);
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    store
        .create(&Key::new("/pods", "ns", "done"), |_| Vec::new())
        .await
        .unwrap();

    // the reference: everything, from history
    let mut all = store.watch("/pods", None, 0).await.unwrap();
    let mut reference = Vec::new();
    loop {
        let e = next(&mut all).await;
        if e.key.name == "done" {
            break;
        }
        reference.push(e);
    }
    assert!(reference.len() > PER_WRITER);
    for (from, handle) in watchers {
        let got = handle.await.unwrap();
        let want: Vec<_> = reference
            .iter()
            .filter(|e| e.revision > from)
            .cloned()
            .collect();
        assert_eq!(got.len(), want.len(), "watch from {from}");
        assert_eq!(got, want, "watch from {from}");
    }
}

#[tokio::test]
async fn compaction_makes_old_revisions_gone() {
    let (_dir, store) = open();
    let key = Key::new("/pods", "ns", "p");
    store.create(&key, |_| Vec::new()).await.unwrap();
    for _ in 0..9 {
        store.update(&key, None, |_| Vec::new()).await.unwrap();
    }
    assert_eq!(store.compact(6).await.unwrap(), 6);
    assert_eq!(store.compacted_revision(), 6);
    // compacting backwards does nothing; beyond the current revision is capped
    assert_eq!(store.compact(3).await.unwrap(), 6);

    match store.watch("/pods", None, 5).await {
        Err(Error::Gone {
            requested: 5,
            compacted: 6,
        }) => {}
        other => panic!("expected gone, got {:?}", other.map(|_| ())),
    }
    let mut watch = store.watch("/pods", None, 6).await.unwrap();
    assert_eq!(next(&mut watch).await.revision, 7);

    // current objects survive compaction
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, 10);
    assert_eq!(store.compact(u64::MAX).await.unwrap(), 10);
    assert!(store.get(&key).await.unwrap().is_some());
    let mut watch = store.watch("/pods", None, 10).await.unwrap();
    store.delete(&key, None).await.unwrap();
    assert_eq!(next(&mut watch).await.kind, EventKind::Deleted);
}

/// A watch still replaying when history is compacted under it ends with `Gone`.
#[tokio::test]
async fn compaction_during_replay_ends_the_watch() {
    let (_dir, store) = open();
    store
        .txn(|tx| {
            for i in 0..2000 {
                tx.create(&Key::new("/events", "ns", format!("e{i}")), |_| Vec::new())?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    let mut watch = store.watch("/events", None, 0).await.unwrap();
    assert_eq!(next(&mut watch).await.revision, 1);
    store.compact(1500).await.unwrap();
    let mut last = 1;
    loop {
        match watch.next().await {
            Some(Ok(e)) => {
                assert_eq!(e.revision, last + 1);
                last = e.revision;
            }
            Some(Err(Error::Gone { compacted, .. })) => {
                assert_eq!(compacted, 1500);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(last < 1500);
    assert!(watch.next().await.is_none());
}

#[tokio::test]
async fn compact_every_keeps_the_retained_revisions() {
    let (_dir, store) = open();
    let key = Key::new("/leases", "ns", "l");
    store.create(&key, |_| Vec::new()).await.unwrap();
    for _ in 0..19 {
        store.update(&key, None, |_| Vec::new()).await.unwrap();
    }
    let task = store.compact_every(Duration::from_millis(20), Retention::Revisions(5));
    wait_for(|| store.compacted_revision() == 15).await;
    task.abort();

    // by age: compacts to a revision sampled at least that long ago
    let task = store.compact_every(
        Duration::from_millis(20),
        Retention::Age(Duration::from_millis(100)),
    );
    store.update(&key, None, |_| Vec::new()).await.unwrap();
    wait_for(|| store.compacted_revision() == 21).await;
    task.abort();
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, 21);
}

async fn wait_for(cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 20s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
