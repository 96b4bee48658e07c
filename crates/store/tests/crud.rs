//! Create, get, update and delete, optimistic concurrency and transactions.
#![allow(clippy::unwrap_used)]

use kuvirt_store::{Error, EventKind, Key, Store};

const VMS: &str = "kubevirt.io/virtualmachines";

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    (dir, store)
}

fn json(name: &str, rev: u64) -> Vec<u8> {
    format!(r#"{{"metadata":{{"name":"{name}","resourceVersion":"{rev}"}}}}"#).into_bytes()
}

#[tokio::test]
async fn create_get_update_delete() {
    let (_dir, store) = open();
    assert_eq!(store.current_revision(), 0);
    let key = Key::new(VMS, "default", "vm1");

    let rev = store.create(&key, |rev| json("vm1", rev)).await.unwrap();
    assert_eq!(rev, 1);
    let got = store.get(&key).await.unwrap().unwrap();
    assert_eq!(got.revision, 1);
    assert_eq!(got.key, key);
    // the closure saw the revision before the bytes were stored
    assert_eq!(&got.value[..], &json("vm1", 1)[..]);

    let rev = store
        .update(&key, Some(1), |rev| json("vm1", rev))
        .await
        .unwrap();
    assert_eq!(rev, 2);
    assert_eq!(store.get(&key).await.unwrap().unwrap().revision, 2);

    // unconditional update
    let rev = store
        .update(&key, None, |rev| json("vm1", rev))
        .await
        .unwrap();
    assert_eq!(rev, 3);

    let deleted = store.delete(&key, Some(3)).await.unwrap();
    assert_eq!(deleted.revision, 4);
    assert_eq!(deleted.previous_revision, 3);
    assert_eq!(&deleted.value[..], &json("vm1", 3)[..]);
    assert!(store.get(&key).await.unwrap().is_none());
    assert_eq!(store.current_revision(), 4);

    // a new object at the same key starts over
    assert_eq!(store.create(&key, |rev| json("vm1", rev)).await.unwrap(), 5);
}

#[tokio::test]
async fn failures_name_the_key_and_change_nothing() {
    let (_dir, store) = open();
    let key = Key::new(VMS, "default", "vm1");
    let missing = Key::new(VMS, "default", "nope");
    store.create(&key, |rev| json("vm1", rev)).await.unwrap();

    let e = store
        .create(&key, |rev| json("vm1", rev))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(ref k) if *k == key), "{e}");
    assert_eq!(
        e.to_string(),
        "kubevirt.io/virtualmachines default/vm1 already exists"
    );

    let e = store
        .update(&key, Some(7), |_| Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Conflict {
                expected: 7,
                current: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = store.delete(&key, Some(7)).await.unwrap_err();
    assert!(matches!(e, Error::Conflict { current: 1, .. }), "{e}");

    let e = store
        .update(&missing, None, |_| Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound(ref k) if *k == missing), "{e}");
    let e = store.delete(&missing, None).await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");

    let e = store
        .create(&Key::new(VMS, "default", ""), |_| Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "{e}");
    let e = store
        .create(&Key::new("", "", "x"), |_| Vec::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "{e}");

    // none of the failures used a revision
    assert_eq!(store.current_revision(), 1);
    assert_eq!(
        store.get(&key).await.unwrap().unwrap().value,
        json("vm1", 1)
    );
}

#[tokio::test]
async fn cluster_scoped_keys() {
    let (_dir, store) = open();
    let ns = Key::new("/namespaces", "", "default");
    store.create(&ns, |_| b"{}".to_vec()).await.unwrap();
    assert!(store.get(&ns).await.unwrap().is_some());
    // a namespaced key with the same name is another object
    assert!(
        store
            .get(&Key::new("/namespaces", "x", "default"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(ns.to_string(), "/namespaces default");
}

#[tokio::test]
async fn delete_with_tombstone_reaches_watchers() {
    let (_dir, store) = open();
    let key = Key::new("/pods", "ns", "p");
    store.create(&key, |rev| json("p", rev)).await.unwrap();
    let mut watch = store.watch("/pods", None, 1).await.unwrap();
    let deleted = store
        .delete_with(&key, Some(1), |rev, last| {
            assert_eq!(last, &json("p", 1)[..]);
            json("p", rev)
        })
        .await
        .unwrap();
    assert_eq!(deleted.revision, 2);
    let event = watch.next().await.unwrap().unwrap();
    assert_eq!(event.kind, EventKind::Deleted);
    assert_eq!(event.revision, 2);
    assert_eq!(&event.value[..], &json("p", 2)[..]);
}

#[tokio::test]
async fn txn_commits_all_or_nothing() {
    let (_dir, store) = open();
    let a = Key::new("/configmaps", "ns", "a");
    let b = Key::new("/configmaps", "ns", "b");
    store.create(&a, |rev| json("a", rev)).await.unwrap();

    // one write succeeds, then the closure fails: nothing is kept
    let a1 = a.clone();
    let e = store
        .txn(move |tx| {
            tx.create(&Key::new("/configmaps", "ns", "c"), |rev| json("c", rev))?;
            tx.create(&a1, |rev| json("a", rev))?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)));
    assert_eq!(store.current_revision(), 1);
    assert!(
        store
            .get(&Key::new("/configmaps", "ns", "c"))
            .await
            .unwrap()
            .is_none()
    );

    // several writes, each with its own revision, reading its own writes, handling a failure
    let a2 = a.clone();
    let b2 = b.clone();
    let revs = store
        .txn(move |tx| {
            let r1 = tx.create(&b2, |rev| json("b", rev))?;
            assert_eq!(tx.get(&b2)?.unwrap().revision, r1);
            assert!(matches!(
                tx.update(&a2, Some(99), |_| Vec::new()),
                Err(Error::Conflict { current: 1, .. })
            ));
            let r2 = tx.update(&a2, Some(1), |rev| json("a", rev))?;
            let (items, more) = tx.list("/configmaps", Some("ns"), None, 0)?;
            assert_eq!(items.len(), 2);
            assert!(!more);
            let d = tx.delete(&b2, Some(r1))?;
            Ok::<_, Error>((r1, r2, d.revision, tx.revision()))
        })
        .await
        .unwrap();
    assert_eq!(revs, (2, 3, 4, 4));
    assert_eq!(store.current_revision(), 4);
    assert_eq!(store.get(&a).await.unwrap().unwrap().revision, 3);
    assert!(store.get(&b).await.unwrap().is_none());

    // a transaction with only reads uses no revision
    let n = store
        .txn(|tx| Ok::<_, Error>(tx.list("/configmaps", None, None, 0)?.0.len()))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(store.current_revision(), 4);

    // events of one transaction replay in revision order
    let mut watch = store.watch("/configmaps", None, 1).await.unwrap();
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let e = watch.next().await.unwrap().unwrap();
        kinds.push((e.revision, e.kind, e.key.name.clone()));
    }
    assert_eq!(
        kinds,
        vec![
            (2, EventKind::Added, "b".to_owned()),
            (3, EventKind::Modified, "a".to_owned()),
            (4, EventKind::Deleted, "b".to_owned()),
        ]
    );
}

/// A caller's own error type passes through `txn`.
#[derive(Debug)]
enum AppError {
    Store(Error),
    Invalid,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Store(e)
    }
}

#[tokio::test]
async fn txn_with_caller_error_type() {
    let (_dir, store) = open();
    let r = store
        .txn(|tx| {
            tx.create(&Key::new("/secrets", "ns", "s"), |_| Vec::new())?;
            Err::<(), _>(AppError::Invalid)
        })
        .await;
    assert!(matches!(r, Err(AppError::Invalid)));
    let r = store
        .txn(|tx| {
            tx.delete(&Key::new("/secrets", "ns", "s"), None)?;
            Ok::<_, AppError>(())
        })
        .await;
    assert!(matches!(r, Err(AppError::Store(Error::NotFound(_)))));
    assert_eq!(store.current_revision(), 0);
}

/// A closure that panics on the writer thread panics in its caller; the store goes on writing.
#[tokio::test]
async fn a_panicking_txn_panics_its_caller_and_writes_go_on() {
    let (_dir, store) = open();
    let s = store.clone();
    let caller = tokio::spawn(async move {
        s.txn(|tx| {
            tx.create(&Key::new("/configmaps", "ns", "half"), |rev| {
                json("half", rev)
            })?;
            if tx.revision() > 0 {
                panic!("boom");
            }
            Ok::<_, Error>(())
        })
        .await
    });
    let err = caller.await.unwrap_err();
    assert!(err.is_panic());
    let k = Key::new("/configmaps", "ns", "after");
    assert_eq!(store.create(&k, |rev| json("after", rev)).await.unwrap(), 1);
    let half = Key::new("/configmaps", "ns", "half");
    assert!(store.get(&half).await.unwrap().is_none());
}
