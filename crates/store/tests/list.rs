//! Lists: filtering, pagination, and snapshot consistency under concurrent writes.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use kuvirt_store::{Error, Key, Store};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store.redb")).unwrap();
    (dir, store)
}

fn names(items: &[kuvirt_store::Object]) -> Vec<String> {
    items
        .iter()
        .map(|o| format!("{}/{}", o.key.namespace, o.key.name))
        .collect()
}

#[tokio::test]
async fn filters_by_resource_and_namespace() {
    let (_dir, store) = open();
    store
        .txn(|tx| {
            for (res, ns, name) in [
                ("/pods", "a", "p1"),
                ("/pods", "a", "p2"),
                ("/pods", "b", "p1"),
                ("/pods", "ab", "p0"),
                ("/podsx", "a", "p9"),
                ("/pod", "a", "p8"),
                ("kubevirt.io/virtualmachines", "a", "vm"),
                ("/nodes", "", "n1"),
            ] {
                tx.create(&Key::new(res, ns, name), |_| b"{}".to_vec())?;
            }
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    let all = store.list("/pods", None, None, 0).await.unwrap();
    assert_eq!(names(&all.items), ["a/p1", "a/p2", "ab/p0", "b/p1"]);
    assert_eq!(all.revision, 8);
    assert!(!all.more);

    let a = store.list("/pods", Some("a"), None, 0).await.unwrap();
    assert_eq!(names(&a.items), ["a/p1", "a/p2"]);
    let none = store.list("/pods", Some("zz"), None, 0).await.unwrap();
    assert!(none.items.is_empty());
    let nodes = store.list("/nodes", Some(""), None, 0).await.unwrap();
    assert_eq!(names(&nodes.items), ["/n1"]);
    let nodes = store.list("/nodes", None, None, 0).await.unwrap();
    assert_eq!(nodes.items.len(), 1);
    assert_eq!(nodes.items[0].revision, 8);
}

#[tokio::test]
async fn pages_follow_continue_keys() {
    let (_dir, store) = open();
    store
        .txn(|tx| {
            for ns in ["a", "b"] {
                for i in 0..25 {
                    tx.create(&Key::new("/configmaps", ns, format!("cm-{i:03}")), |_| {
                        b"{}".to_vec()
                    })?;
                }
            }
            tx.create(&Key::new("/secrets", "a", "s"), |_| b"{}".to_vec())?;
            Ok::<_, Error>(())
        })
        .await
        .unwrap();

    for (ns, want) in [(None, 50), (Some("a"), 25), (Some("b"), 25)] {
        let mut seen = Vec::new();
        let mut after: Option<Key> = None;
        let mut pages = 0;
        loop {
            let page = store
                .list("/configmaps", ns, after.as_ref(), 10)
                .await
                .unwrap();
            pages += 1;
            assert!(page.items.len() <= 10);
            seen.extend(names(&page.items));
            if !page.more {
                break;
            }
            after = Some(page.items.last().unwrap().key.clone());
        }
        assert_eq!(seen.len(), want, "{ns:?}");
        assert_eq!(pages, want.div_ceil(10), "{ns:?}");
        let sorted: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(sorted.len(), want, "no repeats");
        assert_eq!(sorted.into_iter().collect::<Vec<_>>(), seen, "key order");
    }

    // exactly a full page: `more` is false when nothing follows
    let page = store
        .list("/configmaps", Some("a"), None, 25)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 25);
    assert!(!page.more);

    // a continue key from another namespace or resource never leaks other objects
    let after = Key::new("/configmaps", "a", "cm-024");
    let page = store
        .list("/configmaps", Some("b"), Some(&after), 0)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 25);
    let after = Key::new("/configmaps", "c", "x");
    let page = store
        .list("/configmaps", Some("b"), Some(&after), 0)
        .await
        .unwrap();
    assert!(page.items.is_empty());
}

/// A writer creates objects in pairs, each pair in one transaction; every list, taken while it
/// writes, sees whole pairs only, no item newer than the list's revision, and exactly the
/// objects written up to that revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_page_is_one_snapshot() {
    let (_dir, store) = open();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                store
                    .txn(move |tx| {
                        tx.create(&Key::new("/pods", "ns", format!("a-{i:04}")), |_| {
                            Vec::new()
                        })?;
                        tx.create(&Key::new("/pods", "ns", format!("b-{i:04}")), |_| {
                            Vec::new()
                        })?;
                        Ok::<_, Error>(())
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let mut lists = 0;
    while !writer.is_finished() {
        let list = store.list("/pods", Some("ns"), None, 0).await.unwrap();
        lists += 1;
        // pairs: revisions 2i+1, 2i+2
        assert_eq!(list.items.len() as u64, list.revision);
        let a = list
            .items
            .iter()
            .filter(|o| o.key.name.starts_with("a-"))
            .count();
        assert_eq!(a * 2, list.items.len());
        assert!(list.items.iter().all(|o| o.revision <= list.revision));
    }
    writer.await.unwrap();
    assert!(lists > 1);
    assert_eq!(
        store
            .list("/pods", None, None, 0)
            .await
            .unwrap()
            .items
            .len(),
        300
    );
}
