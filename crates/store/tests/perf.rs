//! Performance sanity, not timed assertions: run by hand with
//! `cargo test -p kuvirt-store --release --test perf -- --ignored --nocapture`.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use kuvirt_store::{Error, Key, Store};

const VMIS: &str = "kubevirt.io/virtualmachineinstances";

/// A defaulted, running VMI as the API server would store it (about 3.4 KB of JSON).
fn vmi(name: &str, rev: u64, phase_step: u64) -> Vec<u8> {
    format!(
        r##"{{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance","metadata":{{"name":"{name}","namespace":"default","uid":"7c1f5a0e-0c55-4f7b-9d6e-1f0f6f2c4b{phase_step:02}","resourceVersion":"{rev}","generation":3,"creationTimestamp":"2026-01-01T00:00:00Z","labels":{{"kubevirt.io/domain":"{name}","kubevirt.io/size":"small","kubevirt.io/nodeName":"node01"}},"annotations":{{"kubevirt.io/latest-observed-api-version":"v1","kubevirt.io/storage-observed-api-version":"v1","kubevirt.io/vm-generation":"1"}},"finalizers":["kubevirt.io/virtualMachineControllerFinalize","foregroundDeleteVirtualMachine"],"ownerReferences":[{{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","name":"{name}","uid":"0a8a3c52-2a75-4d0a-8b8e-1f2e3d4c5b6a","controller":true,"blockOwnerDeletion":true}}]}},"spec":{{"architecture":"amd64","domain":{{"cpu":{{"cores":1,"sockets":1,"threads":1,"model":"host-model"}},"devices":{{"disks":[{{"name":"containerdisk","disk":{{"bus":"virtio"}}}},{{"name":"cloudinitdisk","disk":{{"bus":"virtio"}}}}],"interfaces":[{{"name":"default","masquerade":{{}},"macAddress":"02:5e:a1:00:00:01"}}],"rng":{{}}}},"features":{{"acpi":{{"enabled":true}}}},"firmware":{{"uuid":"5d307ca9-b3ef-428c-8861-06e72d69f223","serial":"4b8a6f2e-1b0c-4d3e-9f8a-7c6b5a4d3e2f"}},"machine":{{"type":"q35"}},"resources":{{"requests":{{"memory":"128Mi"}}}}}},"evictionStrategy":"None","networks":[{{"name":"default","pod":{{}}}}],"terminationGracePeriodSeconds":0,"volumes":[{{"name":"containerdisk","containerDisk":{{"image":"quay.io/kubevirt/cirros-container-disk-demo:latest","imagePullPolicy":"Always"}}}},{{"name":"cloudinitdisk","cloudInitNoCloud":{{"userData":"#cloud-config\npassword: fedora\nchpasswd: {{ expire: False }}\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDkuvirtkuvirtkuvirtkuvirtkuvirtkuvirt user@host\n"}}}}]}},"status":{{"phase":"Running","nodeName":"node01","qosClass":"Burstable","launcherContainerImageVersion":"kuvirt:0.1.0","guestOSInfo":{{"id":"cirros","name":"CirrOS","version":"0.6.2","kernelRelease":"6.1.0-28-cloud-amd64"}},"activePods":{{"2f0d5a6b-5c1e-4b0e-8a8b-9c0d1e2f3a4b":"node01"}},"conditions":[{{"type":"Ready","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-01-01T00:00:10Z"}},{{"type":"LiveMigratable","status":"True","lastProbeTime":null,"lastTransitionTime":null}},{{"type":"AgentConnected","status":"True","lastProbeTime":null,"lastTransitionTime":"2026-01-01T00:00:20Z"}}],"interfaces":[{{"name":"default","interfaceName":"eth0","ipAddress":"10.0.2.2","ipAddresses":["10.0.2.2","fd10:0:2::2"],"mac":"02:5e:a1:00:00:01","infoSource":"domain, guest-agent","queueCount":1}}],"phaseTransitionTimestamps":[{{"phase":"Pending","phaseTransitionTimestamp":"2026-01-01T00:00:00Z"}},{{"phase":"Scheduling","phaseTransitionTimestamp":"2026-01-01T00:00:01Z"}},{{"phase":"Scheduled","phaseTransitionTimestamp":"2026-01-01T00:00:05Z"}},{{"phase":"Running","phaseTransitionTimestamp":"2026-01-01T00:00:08Z"}}],"volumeStatus":[{{"name":"cloudinitdisk","size":1048576,"target":"vdb"}},{{"name":"containerdisk","target":"vda"}}],"memory":{{"guestAtBoot":"128Mi","guestCurrent":"128Mi","guestRequested":"128Mi"}},"currentCPUTopology":{{"cores":1,"sockets":1,"threads":1}},"machine":{{"type":"pc-q35-7.2"}},"migrationMethod":"BlockMigration","migrationTransport":"Unix","selinuxContext":"none","virtualMachineRevisionName":"revision-start-vm-{name}-1"}}}}"##
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "performance sanity, run by hand"]
async fn perf_10k_vmis() {
    let dir = tempfile::Builder::new()
        .prefix("kuvirt-store-perf")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let path = dir.path().join("store.redb");
    let store = Store::open(&path).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let stats = async |store: &Store| {
        let s = store.stats().await.unwrap();
        println!(
            "  stats: {} objects, {} events, stored {:.1} KiB/object, allocated {:.1} KiB/object, fragmented {:.1} KiB/object",
            s.objects,
            s.events,
            s.stored_bytes as f64 / 1024.0 / s.objects as f64,
            s.allocated_bytes as f64 / 1024.0 / s.objects as f64,
            s.fragmented_bytes as f64 / 1024.0 / s.objects as f64,
        );
    };
    let n: u64 = std::env::var("PERF_N").map_or(10_000, |v| v.parse().unwrap());
    let kib = |b: u64| b as f64 / 1024.0;
    println!("object JSON: {} bytes", vmi("vmi-00000", 1, 0).len());

    let t = Instant::now();
    for i in 0..n {
        let name = format!("vmi-{i:05}");
        let key = Key::new(VMIS, "default", name.as_str());
        store
            .create(&key, move |rev| vmi(&name, rev, 0))
            .await
            .unwrap();
    }
    let el = t.elapsed();
    println!(
        "{n} creates, one commit (fsync) each: {el:.2?} ({:.0}/s); file {:.1} KiB/object",
        n as f64 / el.as_secs_f64(),
        kib(size() / n)
    );
    stats(&store).await;

    // five status updates per VMI, 100 writes per commit: history grows
    let t = Instant::now();
    for step in 1..=5u64 {
        for chunk in 0..(n / 100) {
            store
                .txn(move |tx| {
                    for i in chunk * 100..(chunk + 1) * 100 {
                        let name = format!("vmi-{i:05}");
                        let key = Key::new(VMIS, "default", name.as_str());
                        tx.update(&key, None, |rev| vmi(&name, rev, step))?;
                    }
                    Ok::<_, Error>(())
                })
                .await
                .unwrap();
        }
    }
    let el = t.elapsed();
    println!(
        "{} updates, 100 per commit: {el:.2?} ({:.0}/s); file {:.1} KiB/object with 6 versions in history",
        5 * n,
        5.0 * n as f64 / el.as_secs_f64(),
        kib(size() / n)
    );
    stats(&store).await;

    let t = Instant::now();
    let list = store.list(VMIS, None, None, 0).await.unwrap();
    println!("list of {}: {:.2?}", list.items.len(), t.elapsed());

    let t = Instant::now();
    let mut watch = store.watch(VMIS, None, 0).await.unwrap();
    let mut replayed = 0;
    while replayed < 6 * n {
        watch.next().await.unwrap().unwrap();
        replayed += 1;
    }
    println!("watch replay of {replayed} events: {:.2?}", t.elapsed());
    drop(watch);

    let t = Instant::now();
    store.compact(store.current_revision()).await.unwrap();
    println!("compaction of {} events: {:.2?}", 6 * n, t.elapsed());
    // freed pages are reused by later writes; the file does not shrink
    for i in 0..n {
        let name = format!("vmi-{i:05}");
        let key = Key::new(VMIS, "default", name.as_str());
        if i % 100 == 0 {
            store
                .update(&key, None, move |rev| vmi(&name, rev, 9))
                .await
                .unwrap();
        }
    }
    println!(
        "after compaction and 100 more updates: file {:.1} KiB/object",
        kib(size() / n)
    );
    stats(&store).await;
    drop(store);
    let t = Instant::now();
    let store = Store::open(&path).unwrap();
    println!(
        "reopen: {:.2?}, revision {}",
        t.elapsed(),
        store.current_revision()
    );
}
