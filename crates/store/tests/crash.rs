//! Durability: a process killed with SIGKILL during a burst of creates loses no acknowledged one.
//!
//! The test re-runs this test binary as a child that runs only `crash_child`, which creates
//! objects and prints `ACK <name>` after each create returns. The parent SIGKILLs it mid-burst,
//! then reopens the store and looks for every acknowledged name.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use kuvirt_store::{Key, Store};

const DB_ENV: &str = "KUVIRT_STORE_CRASH_DB";
const BURST: usize = 1000;
const RESOURCE: &str = "kubevirt.io/virtualmachineinstances";

#[test]
fn kill_9_mid_burst_keeps_every_acknowledged_create() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.redb");
    // kill at different points of the burst across runs, never near its end
    let kill_after = 50 + (std::process::id() as usize % 300);

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DB_ENV, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while acked.len() < kill_after {
        let line = lines.next().expect("child ended before the kill").unwrap();
        if let Some(name) = line.strip_prefix("ACK ") {
            acked.push(name.to_owned());
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    // acknowledgements already in the pipe count too
    for line in lines {
        if let Some(name) = line.unwrap().strip_prefix("ACK ") {
            acked.push(name.to_owned());
        }
    }
    assert!(!status.success(), "child was not killed: {status}");
    assert!(acked.len() < BURST, "the burst finished before the kill");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&db).expect("store reopens after kill -9");
    rt.block_on(async {
        for name in &acked {
            let key = Key::new(RESOURCE, "default", name.as_str());
            let got = store.get(&key).await.unwrap();
            assert!(got.is_some(), "acknowledged {name} lost");
        }
        // nothing half-written: every committed revision is one whole object
        let list = store.list(RESOURCE, None, None, 0).await.unwrap();
        assert!(list.items.len() >= acked.len());
        assert_eq!(list.items.len() as u64, store.current_revision());
        for o in &list.items {
            assert_eq!(o.value, vmi(&o.key.name, o.revision));
        }
        // and it takes writes again
        store
            .create(&Key::new(RESOURCE, "default", "after"), |_| Vec::new())
            .await
            .unwrap();
    });
    eprintln!(
        "killed after {} acknowledged creates; {} present",
        acked.len(),
        store.current_revision() - 1
    );
}

/// The child half of the test above; does nothing unless started by it.
#[tokio::test]
#[ignore = "run by kill_9_mid_burst_keeps_every_acknowledged_create"]
async fn crash_child() {
    use std::io::Write;
    let Some(db) = std::env::var_os(DB_ENV) else {
        return;
    };
    let store = Store::open(db).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..BURST {
        let name = format!("vmi-{i:04}");
        let n = name.clone();
        store
            .create(&Key::new(RESOURCE, "default", name.as_str()), move |rev| {
                vmi(&n, rev)
            })
            .await
            .unwrap();
        writeln!(out, "ACK {name}").unwrap();
        out.flush().unwrap();
    }
}

fn vmi(name: &str, rev: u64) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance","metadata":{{"name":"{name}","namespace":"default","resourceVersion":"{rev}"}},"spec":{{"domain":{{"devices":{{}},"resources":{{"requests":{{"memory":"64Mi"}}}}}}}}}}"#
    )
    .into_bytes()
}
