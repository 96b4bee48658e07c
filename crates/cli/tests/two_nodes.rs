//! Two nodes: `kuvirt server` on this host (node n1) and `kuvirt agent` joining it from its own
//! network namespace (node n2, reached over a veth like a second machine). Placement follows
//! nodeSelector and free resources; the API server reaches a VM on n2 through n2's endpoint;
//! when n2 dies (its agent and VMs killed), its VM comes back on n1 after the heartbeat timeout.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nodes::{KillUnder, NetNode, Proc, agent, kill_under};
use common::plane::{client_for, halt, serial_log, until};
use common::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

/// What a dead node leaves behind on this host besides its pods' namespaces (which go with the
/// test's pod network): their cgroups.
fn remove_sandbox(uid: &str) {
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let Ok(hiers) = std::fs::read_dir(root) else {
            continue;
        };
        for h in hiers.flatten() {
            let _ = std::fs::remove_dir(h.path().join(format!("kuvirt/pod{uid}")));
        }
    }
}

fn vm(name: &str, guest: &Path, node_selector: Option<&str>) -> VirtualMachine {
    let mut spec = serde_json::json!({
        "domain": {"devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
                   "resources": {"requests": {"memory": "128Mi"}}},
        "terminationGracePeriodSeconds": 10,
        "volumes": [{"name": "containerdisk",
                     "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}}]
    });
    if let Some(n) = node_selector {
        spec["nodeSelector"] = serde_json::json!({ "kubernetes.io/hostname": n });
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": spec}}
    }))
    .unwrap()
}

async fn vmi_on(vmis: &Api<VirtualMachineInstance>, name: &str) -> Option<(String, String)> {
    let v = vmis.get_opt(name).await.ok()??;
    let s = v.status?;
    (s.phase?.as_str() == "Running").then_some((s.node_name?, v.metadata.uid?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_remote_endpoint_and_failover_across_two_nodes() {
    let guest = demo_guest();
    let net = NetNode::create(2);
    let data = tempfile::tempdir().unwrap();
    let s1 = state_dir();
    let s2 = state_dir();
    let _reaper = KillUnder(vec![s1.path().to_path_buf(), s2.path().to_path_buf()]);
    let port = free_port();
    let podnet = common::plane::PodNet::take();
    let _server = Proc(
        Command::new(KUVIRT)
            .args(["server", "--data-dir"])
            .arg(data.path())
            .args(["--listen", &format!("0.0.0.0:{port}")])
            .args(["--tls-san", &net.host_ip])
            .arg("--state-dir")
            .arg(s1.path())
            .args(["--accel", "tcg", "--node-name", "n1"])
            .args([
                "--pod-network-name",
                &podnet.name,
                "--cluster-cidr",
                &podnet.cidr,
            ])
            .args([
                "--node-heartbeat-timeout",
                "8",
                "--node-heartbeat-interval",
                "2",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let kubeconfig = data.path().join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() || !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent_log = data.path().join("agent.log");
    let mut agent = agent(
        &net,
        &format!("https://{}:{port}", net.host_ip),
        &data.path().join("node-token"),
        s2.path(),
        "n2",
        &podnet.name,
        &agent_log,
    );
    let client = client_for(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");

    // Both nodes Ready, each with its own pod CIDR; n2 at its own address.
    let n2 = until("node n2 Ready", Duration::from_secs(60), async || {
        let n = nodes.get_opt("n2").await.ok()??;
        let ready = n
            .status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        (ready && n.spec.as_ref()?.pod_cidr.is_some()).then_some(n)
    })
    .await;
    let addrs = n2.status.unwrap().addresses.unwrap();
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == net.node_ip),
        "{addrs:?}\n{}",
        std::fs::read_to_string(&agent_log).unwrap_or_default()
    );
    let n1_cidr = nodes.get("n1").await.unwrap().spec.unwrap().pod_cidr;
    let n2_cidr = n2.spec.unwrap().pod_cidr.unwrap();
    assert_ne!(n1_cidr.as_deref(), Some(n2_cidr.as_str()));

    // nodeSelector: "a" goes to n1. Free resources: "b" then goes to n2, the emptier node.
    vms.create(&PostParams::default(), &vm("a", &guest, Some("n1")))
        .await
        .unwrap();
    let (a_node, _) = until("a running", Duration::from_secs(120), async || {
        vmi_on(&vmis, "a").await
    })
    .await;
    assert_eq!(a_node, "n1");
    vms.create(&PostParams::default(), &vm("b", &guest, None))
        .await
        .unwrap();
    let (b_node, b_uid) = until("b running", Duration::from_secs(120), async || {
        vmi_on(&vmis, "b").await
    })
    .await;
    assert_eq!(b_node, "n2");
    until(
        "b's guest booted on n2",
        Duration::from_secs(120),
        async || {
            serial_log(s2.path(), "default", "b")
                .contains("kuvirt-guest: ready")
                .then_some(())
        },
    )
    .await;
    let b_ip = vmis.get("b").await.unwrap().status.unwrap().interfaces[0]
        .ip_address
        .clone()
        .unwrap();
    let prefix = n2_cidr.rsplit_once('.').unwrap().0.to_string();
    assert!(b_ip.starts_with(&prefix), "{b_ip} not in {n2_cidr}");

    // The API server reaches b through n2's endpoint.
    let shot = data.path().join("b.png");
    let out = Command::new(KUVIRT)
        .args(["vnc", "screenshot", "b", "--file"])
        .arg(&shot)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));

    // More memory than any node has: unschedulable, with the scheduler's reason.
    let mut huge = vm("huge", &guest, None);
    huge.spec.template.as_mut().unwrap().spec.domain.resources =
        serde_json::from_value(serde_json::json!({"requests": {"memory": "64Ti"}})).unwrap();
    vms.create(&PostParams::default(), &huge).await.unwrap();
    until("huge unschedulable", Duration::from_secs(60), async || {
        let s = vms.get("huge").await.ok()?.status?;
        (s.printable_status?.as_str() == "ErrorUnschedulable").then_some(())
    })
    .await;
    vms.delete("huge", &Default::default()).await.unwrap();

    // n2 dies: its agent and everything it ran. After the heartbeat timeout b runs on n1.
    let b_pod_uids: Vec<String> = pods
        .list(&ListParams::default().fields("spec.nodeName=n2"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.uid)
        .collect();
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    kill_under(s2.path());
    let (b_node, _) = until(
        "a new VMI of b running",
        Duration::from_secs(180),
        async || vmi_on(&vmis, "b").await.filter(|(_, uid)| *uid != b_uid),
    )
    .await;
    assert_eq!(b_node, "n1");
    until(
        "b's guest booted on n1",
        Duration::from_secs(120),
        async || {
            serial_log(s1.path(), "default", "b")
                .contains("kuvirt-guest: ready")
                .then_some(())
        },
    )
    .await;
    let n2_ready = nodes
        .get("n2")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(n2_ready.status, "Unknown");

    // Stop both VMs; nothing may be left running.
    halt(&vms, &["a", "b"], s1.path()).await;
    kill_under(s1.path());
    for uid in b_pod_uids {
        remove_sandbox(&uid);
    }
}
