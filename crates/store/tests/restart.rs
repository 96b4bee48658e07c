//! Reopening a store keeps objects, the revision counter, history and the compaction mark.
#![allow(clippy::unwrap_used)]

use kuvirt_store::{Error, Key, Store};

#[tokio::test]
async fn restart_keeps_revision_objects_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    let key = Key::new("/pods", "ns", "p");
    {
        let store = Store::open(&path).unwrap();
        store.create(&key, |_| b"a".to_vec()).await.unwrap();
        store
            .update(&key, Some(1), |_| b"b".to_vec())
            .await
            .unwrap();
        store
            .create(&Key::new("/pods", "ns", "gone"), |_| Vec::new())
            .await
            .unwrap();
        store
            .delete(&Key::new("/pods", "ns", "gone"), None)
            .await
            .unwrap();
        assert_eq!(store.compact(1).await.unwrap(), 1);
        // a second open of the same file in this process is refused while the first is open
        assert!(matches!(Store::open(&path), Err(Error::Storage(_))));
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.current_revision(), 4);
    assert_eq!(store.compacted_revision(), 1);
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!((got.revision, &got.value[..]), (2, &b"b"[..]));
    assert!(
        store
            .get(&Key::new("/pods", "ns", "gone"))
            .await
            .unwrap()
            .is_none()
    );
    // the next write continues the sequence
    assert_eq!(
        store.update(&key, Some(2), |_| Vec::new()).await.unwrap(),
        5
    );

    // history written before the restart replays after it (a watch resumes across restarts)
    let mut watch = store.watch("/pods", None, 1).await.unwrap();
    let mut revs = Vec::new();
    for _ in 0..4 {
        revs.push(watch.next().await.unwrap().unwrap().revision);
    }
    assert_eq!(revs, [2, 3, 4, 5]);
    assert!(matches!(
        store.watch("/pods", None, 0).await,
        Err(Error::Gone { compacted: 1, .. })
    ));
}
