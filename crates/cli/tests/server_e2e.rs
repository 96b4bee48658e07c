//! `kuvirt server` as a process, driven by kube-rs: watches resume from a resourceVersion across a
//! restart without missing an event and relist after a 410; kill -9 in a burst of creates loses
//! no acknowledged write; two writers with one resourceVersion: exactly one wins.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::plane::{Plane, ServerProc, until};

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;

/// The control plane only: these tests run no guests (see vm_e2e.rs for those).
struct Server {
    plane: Plane,
    proc: Option<ServerProc>,
    history: u64,
    /// Seconds without a heartbeat before a node is lost.
    node_timeout: u64,
}

impl Server {
    fn start(history: u64) -> Server {
        let mut s = Server {
            plane: Plane::new(),
            proc: None,
            history,
            node_timeout: 300,
        };
        s.spawn();
        s
    }

    /// Starts it again on the same data directory and port.
    fn spawn(&mut self) {
        self.proc = Some(self.plane.spawn_with(&[
            "--no-node-agent",
            "--watch-history",
            &self.history.to_string(),
            "--node-heartbeat-timeout",
            &self.node_timeout.to_string(),
        ]));
    }

    /// SIGKILL: no chance to flush anything.
    fn kill9(&mut self) {
        self.proc = None;
    }

    async fn client(&self) -> kube::Client {
        self.plane.client().await
    }
}

/// How long the control plane gets for anything.
const WAIT: Duration = Duration::from_secs(40);

fn cm(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), name.to_string())])),
        ..Default::default()
    }
}

fn rv(o: &ConfigMap) -> String {
    o.metadata.resource_version.clone().unwrap()
}

/// The names of ADDED events from a raw watch until `want` have arrived (or the deadline).
async fn added(
    stream: &mut (impl futures_util::Stream<Item = kube::Result<WatchEvent<ConfigMap>>> + Unpin),
    want: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < want {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("watch event within 20s")
            .expect("stream open")
            .expect("no watch error");
        if let WatchEvent::Added(o) = ev {
            out.push((o.metadata.name.clone().unwrap(), rv(&o)));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_across_a_restart_and_relists_after_compaction() {
    let mut server = Server::start(300);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let a = api.create(&PostParams::default(), &cm("a")).await.unwrap();

    let mut w = api
        .watch(&WatchParams::default(), &rv(&a))
        .await
        .unwrap()
        .boxed();
    api.create(&PostParams::default(), &cm("b")).await.unwrap();
    let got = added(&mut w, 1).await;
    assert_eq!(got[0].0, "b");
    let last = got[0].1.clone();
    drop(w);
    // Written while nobody watches, then the server dies.
    api.create(&PostParams::default(), &cm("c")).await.unwrap();
    server.kill9();
    server.spawn();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    api.create(&PostParams::default(), &cm("d")).await.unwrap();
    let mut w = api
        .watch(&WatchParams::default(), &last)
        .await
        .unwrap()
        .boxed();
    let got: Vec<String> = added(&mut w, 2).await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(got, ["c", "d"], "resumed watch missed or repeated events");
    drop(w);
    server.kill9();

    // Short history: once compacted, an old resourceVersion answers 410 and a watcher relists.
    server.history = 1;
    server.spawn();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        api.create(
            &PostParams::default(),
            &cm(&format!("x{}", deadline.elapsed().as_millis())),
        )
        .await
        .ok();
        let mut w = api
            .watch(&WatchParams::default(), &last)
            .await
            .unwrap()
            .boxed();
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Ok(WatchEvent::Error(e)))) if e.code == 410 => break,
            Ok(Some(Err(kube::Error::Api(e)))) if e.code == 410 => break,
            _ => {}
        }
        assert!(Instant::now() < deadline, "history was never compacted");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // kube-rs' watcher starts with a list (and relists on 410): it sees every object.
    let mut names: Vec<String> = Vec::new();
    let mut stream = watcher(api.clone(), watcher::Config::default()).boxed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::InitApply(o)) => names.push(o.metadata.name.unwrap()),
            Some(watcher::Event::InitDone) => break,
            _ => {}
        }
    }
    for n in ["a", "b", "c", "d"] {
        assert!(names.iter().any(|x| x == n), "relist lacks {n}: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_a_burst_of_creates_keeps_every_acknowledged_create() {
    let mut server = Server::start(300);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let api = api.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let name = format!("burst-{worker}-{i}");
                match api.create(&PostParams::default(), &cm(&name)).await {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.lock().unwrap().len() < 200 {
        assert!(Instant::now() < deadline, "creates too slow");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() < 1000, "the kill came after the burst");
    server.spawn();
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let present: Vec<String> = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for name in &acked {
        assert!(present.contains(name), "acknowledged create {name} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_one_resource_version_one_wins() {
    let server = Server::start(300);
    let api: Api<ConfigMap> = Api::namespaced(server.client().await, "default");
    let base = api
        .create(&PostParams::default(), &cm("shared"))
        .await
        .unwrap();
    let mut one = base.clone();
    one.data = Some(BTreeMap::from([("k".into(), "one".into())]));
    let mut two = base.clone();
    two.data = Some(BTreeMap::from([("k".into(), "two".into())]));
    let pp = PostParams::default();
    let (r1, r2) = tokio::join!(
        api.replace("shared", &pp, &one),
        api.replace("shared", &pp, &two)
    );
    let oks = [r1.is_ok(), r2.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(oks, 1, "{r1:?} {r2:?}");
    let err = r1.err().or(r2.err()).unwrap();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("the object has been modified"),
                "{}",
                s.message
            );
        }
        other => panic!("{other}"),
    }
}

/// The VM controller inside `kuvirt server`: runStrategy Always creates an owned VMI, Halted
/// removes it, Always again creates a new one (new UID); deleting the VM collects its VMI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_controller_follows_the_run_strategy() {
    use kube::api::{DeleteParams, Patch, PatchParams};
    use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

    let server = Server::start(300);
    let client = server.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "ctl"},
        "spec": {"runStrategy": "Always", "template": {"metadata": {"labels": {"app": "ctl"}},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
    }))
    .unwrap();
    let vm = vms.create(&PostParams::default(), &vm).await.unwrap();

    let first = until("a VMI", WAIT, async || vmis.get_opt("ctl").await.unwrap()).await;
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(Some(&owner.uid), vm.metadata.uid.as_ref());
    assert_eq!(owner.controller, Some(true));
    assert_eq!(first.metadata.labels.as_ref().unwrap()["app"], "ctl");
    // No node can take it in this test: starting, then unschedulable.
    until("Starting or ErrorUnschedulable", WAIT, async || {
        let v = vms.get("ctl").await.unwrap();
        let s = v.status?.printable_status?;
        matches!(s.as_str(), "Starting" | "ErrorUnschedulable").then_some(())
    })
    .await;

    // What kubectl describe shows: the VM's events, found by kubectl's own field selector.
    let events: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(server.client().await, "default");
    let selector = format!(
        "involvedObject.name=ctl,involvedObject.namespace=default,involvedObject.kind=VirtualMachine,involvedObject.uid={}",
        vm.metadata.uid.clone().unwrap()
    );
    until("a SuccessfulCreate event", WAIT, async || {
        let l = events
            .list(&ListParams::default().fields(&selector))
            .await
            .unwrap();
        l.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("SuccessfulCreate"))
            .then_some(())
    })
    .await;

    let pp = PatchParams::default();
    vms.patch(
        "ctl",
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    until("the VMI gone", WAIT, async || {
        vmis.get_opt("ctl").await.unwrap().is_none().then_some(())
    })
    .await;
    until("Stopped", WAIT, async || {
        let s = vms.get("ctl").await.unwrap().status?.printable_status?;
        (s.as_str() == "Stopped").then_some(())
    })
    .await;

    vms.patch(
        "ctl",
        &pp,
        &Patch::Merge(serde_json::json!({"spec": {"runStrategy": "Always"}})),
    )
    .await
    .unwrap();
    let second = until("a new VMI", WAIT, async || {
        vmis.get_opt("ctl").await.unwrap()
    })
    .await;
    assert_ne!(second.metadata.uid, first.metadata.uid);

    vms.delete("ctl", &DeleteParams::default()).await.unwrap();
    until("the VMI collected", WAIT, async || {
        vmis.get_opt("ctl").await.unwrap().is_none().then_some(())
    })
    .await;
}

/// The VMI controller inside `kuvirt server`: a new VMI gets a launcher pod; with no node it is
/// unschedulable (the VM says ErrorUnschedulable); a Ready node with room gets the pod; once the
/// pod runs (the node agent reports that; here the test writes it) the VMI is Scheduled there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmi_controller_renders_places_and_hands_over() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Patch, PatchParams};
    use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

    let server = Server::start(300);
    let client = server.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client);
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "placed"},
        "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "256Mi"}}}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let vmi = until("a VMI", WAIT, async || {
        vmis.get_opt("placed").await.unwrap()
    })
    .await;
    let uid = vmi.metadata.uid.clone().unwrap();
    let pod = until("a launcher pod", WAIT, async || {
        let l = pods
            .list(&ListParams::default().labels(&format!("kubevirt.io/created-by={uid}")))
            .await
            .unwrap();
        l.items.into_iter().next()
    })
    .await;
    let pod_name = pod.metadata.name.clone().unwrap();
    assert!(pod_name.starts_with("virt-launcher-placed-"), "{pod_name}");
    until("ErrorUnschedulable", WAIT, async || {
        let s = vms.get("placed").await.unwrap().status?.printable_status?;
        (s.as_str() == "ErrorUnschedulable").then_some(())
    })
    .await;

    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1", "labels": {"kubevirt.io/schedulable": "true"}},
        "status": {"allocatable": {"memory": "4Gi", "cpu": "2"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    // Like a node agent: create the Node, then report its status through /status.
    nodes.create(&PostParams::default(), &node).await.unwrap();
    nodes
        .patch_status(
            "n1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": node.status})),
        )
        .await
        .unwrap();
    until("the pod bound to n1", WAIT, async || {
        let p = pods.get(&pod_name).await.unwrap();
        (p.spec?.node_name.as_deref() == Some("n1")).then_some(())
    })
    .await;
    // What the node agent does once the launcher runs.
    pods.patch_status(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let scheduled = until("Scheduled", WAIT, async || {
        let v = vmis.get("placed").await.unwrap();
        let s = v.status?;
        (s.phase.as_ref()?.as_str() == "Scheduled").then_some(s)
    })
    .await;
    assert_eq!(scheduled.node_name.as_deref(), Some("n1"));
}

/// A node whose agent stops reporting is lost: it goes NotReady-Unknown, the VMI it ran fails, and
/// the VM (Always) starts a new VMI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_node_fails_its_vmis_and_their_vms_start_again() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    use kube::api::{Patch, PatchParams};
    use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

    let mut server = Server::start(300);
    server.kill9();
    server.node_timeout = 3;
    server.spawn();
    let client = server.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let nodes: Api<Node> = Api::all(client);
    // A node that reports once, then never again.
    let node: Node = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "ghost", "labels": {"kubevirt.io/schedulable": "true"}}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            "ghost",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
            "allocatable": {"memory": "4Gi", "cpu": "2"},
            "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": now}]}})),
        )
        .await
        .unwrap();
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "lost"},
        "spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "128Mi"}}}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let first = until("a VMI", WAIT, async || vmis.get_opt("lost").await.unwrap()).await;
    let uid = first.metadata.uid.clone().unwrap();
    let pod = until("its pod on ghost", WAIT, async || {
        let l = pods
            .list(&ListParams::default().labels(&format!("kubevirt.io/created-by={uid}")))
            .await
            .unwrap();
        l.items
            .into_iter()
            .find(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some("ghost"))
    })
    .await;
    pods.patch_status(
        pod.metadata.name.as_deref().unwrap(),
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    until("Scheduled on ghost", WAIT, async || {
        let s = vmis.get("lost").await.unwrap().status?;
        (s.node_name.as_deref() == Some("ghost")).then_some(())
    })
    .await;
    // No more heartbeats: the node is lost, the VMI fails and the VM starts a new one.
    until("ghost NotReady", WAIT, async || {
        let n = nodes.get("ghost").await.unwrap();
        let c = n
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.status == "Unknown").then_some(())
    })
    .await;
    until("a new VMI", WAIT, async || {
        let v = vmis.get_opt("lost").await.unwrap()?;
        (v.metadata.uid.as_deref() != Some(uid.as_str())).then_some(())
    })
    .await;
}
