//! Many tasks and threads at once: optimistic concurrency and unique revisions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;

use kuvirt_store::{Error, Key, Store};
use tokio::sync::Barrier;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    (dir, store)
}

/// Rounds of several tasks updating one object with the same expected revision: in each round
/// exactly one wins and every loser is told the winner's revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn same_expected_revision_exactly_one_wins() {
    let (_dir, store) = open();
    let key = Key::new("kubevirt.io/virtualmachines", "ns", "vm");
    let mut rev = store.create(&key, |_| b"0".to_vec()).await.unwrap();
    const WRITERS: usize = 6;
    for round in 0..30 {
        let barrier = Arc::new(Barrier::new(WRITERS));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .update(&key, Some(rev), move |_| {
                        format!("{round}-{w}").into_bytes()
                    })
                    .await
            }));
        }
        let mut won = Vec::new();
        let mut conflicts = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => won.push(r),
                Err(Error::Conflict {
                    expected, current, ..
                }) => {
                    assert_eq!(expected, rev);
                    conflicts.push(current);
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}");
        assert_eq!(conflicts, vec![won[0]; WRITERS - 1], "round {round}");
        rev = won[0];
    }
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, rev);
    assert_eq!(rev, 31);
}

/// The same from plain OS threads, each with its own runtime.
#[test]
fn same_expected_revision_from_threads() {
    let (_dir, store) = open();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let key = Key::new("/pods", "ns", "p");
    let rev = rt.block_on(store.create(&key, |_| Vec::new())).unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                barrier.wait();
                rt.block_on(store.update(&key, Some(rev), |_| Vec::new()))
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Err(Error::Conflict { current: 2, .. })))
            .count(),
        3
    );
}

/// Concurrent creates get distinct, gap-free revisions; exactly one create per key succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_get_distinct_revisions() {
    let (_dir, store) = open();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut revs = Vec::new();
            let mut exists = 0;
            for i in 0..50 {
                // tasks 0..4 and 4..8 race on the same names
                let key = Key::new("/pods", "ns", format!("{}-{i}", t % 4));
                match store.create(&key, |rev| rev.to_string().into_bytes()).await {
                    Ok(rev) => revs.push(rev),
                    Err(Error::AlreadyExists(_)) => exists += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            (revs, exists)
        }));
    }
    let mut all = BTreeSet::new();
    let mut exists = 0;
    for t in tasks {
        let (revs, e) = t.await.unwrap();
        exists += e;
        for r in revs {
            assert!(all.insert(r), "revision {r} handed out twice");
        }
    }
    assert_eq!(all.len(), 200);
    assert_eq!(exists, 200);
    assert_eq!(
        all.into_iter().collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    // each stored object carries the revision its closure was given
    for o in store.list("/pods", None, None, 0).await.unwrap().items {
        assert_eq!(o.value, o.revision.to_string().into_bytes());
    }
}
