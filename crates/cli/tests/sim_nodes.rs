//! Simulated nodes: `kuvirt server --no-node-agent` and `kuvirt agent --simulated-nodes 3`, no
//! QEMU and no images. Thirty VMs run spread over the three nodes with pod IPs from each node's
//! pod CIDR (the real pod runner and IPAM, stand-in launchers); pause and unpause go through the
//! API server and the agent's endpoint; a guest that powers off leaves its VMI Succeeded; a
//! stopped VM comes back at its sticky address; a restarted agent takes its pods up again at
//! their addresses; stopped and deleted VMs leave no VMI, pod or address behind.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::KUVIRT;
use common::plane::{Plane, ServerProc, until};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;

const NODES: [&str; 3] = ["sim-0000", "sim-0001", "sim-0002"];
const VMS: usize = 30;

fn vm(name: &str) -> VirtualMachine {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {
            "metadata": {"labels": {"app": "sim"}},
            "spec": {
                "domain": {
                    "devices": {
                        "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                        "interfaces": [{"name": "default", "masquerade": {}}],
                    },
                    "resources": {"requests": {"memory": "64Mi"}},
                },
                "networks": [{"name": "default", "pod": {}}],
                // Never pulled: a simulated node pulls nothing.
                "volumes": [{"name": "root",
                             "containerDisk": {"image": "registry.invalid/kuvirt/none:latest"}}],
            },
        }},
    }))
    .unwrap()
}

fn phase(v: &VirtualMachineInstance) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.phase.as_ref())
        .map_or("", |p| p.as_str())
}

fn ip_of(v: &VirtualMachineInstance) -> Option<Ipv4Addr> {
    v.status
        .as_ref()?
        .interfaces
        .first()?
        .ip_address
        .as_deref()?
        .parse()
        .ok()
}

fn node_of(v: &VirtualMachineInstance) -> &str {
    v.status
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or("")
}

/// Whether `ip` is in `cidr` (a.b.c.d/n).
fn in_cidr(ip: Ipv4Addr, cidr: &str) -> bool {
    let (net, bits) = cidr.split_once('/').unwrap();
    let net: Ipv4Addr = net.parse().unwrap();
    let bits: u32 = bits.parse().unwrap();
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The addresses held under the agent's state directory (its IPAM files) and their pods.
fn held(state: &std::path::Path) -> BTreeMap<Ipv4Addr, String> {
    let Ok(nets) = std::fs::read_dir(state.join("ipam")) else {
        return BTreeMap::new();
    };
    nets.flatten()
        .filter_map(|n| std::fs::read_dir(n.path()).ok())
        .flatten()
        .flatten()
        .filter_map(|f| {
            let ip = f.file_name().to_string_lossy().parse::<Ipv4Addr>().ok()?;
            Some((ip, std::fs::read_to_string(f.path()).ok()?))
        })
        .collect()
}

fn held_addresses(state: &std::path::Path) -> usize {
    held(state).len()
}

fn paused(v: &VirtualMachineInstance) -> bool {
    v.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_.as_str() == "Paused" && c.status == "True")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_vms_on_three_simulated_nodes() {
    let plane = Plane::new();
    let _server = plane.spawn_with(&["--no-node-agent"]);
    let agent_log = plane.data.path().join("agent.log");
    let spawn_agent = || {
        ServerProc(
            Command::new(KUVIRT)
                .args([
                    "agent",
                    "--server",
                    &format!("https://127.0.0.1:{}", plane.port),
                ])
                .arg("--token-file")
                .arg(plane.data.path().join("node-token"))
                .arg("--state-dir")
                .arg(plane.state.path())
                .args(["--node-name", "sim", "--simulated-nodes", "3"])
                .args(["--node-ip", "127.0.0.1", "--agent-listen", "127.0.0.1:0"])
                .args(["--pod-network-name", &plane.net.name])
                .stdout(Stdio::null())
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&agent_log)
                        .unwrap(),
                )
                .spawn()
                .unwrap(),
        )
    };
    let mut agent = spawn_agent();
    let log = || std::fs::read_to_string(&agent_log).unwrap_or_default();
    let client = plane.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Three Ready nodes with pod CIDRs, the label and the simulated capacity.
    let cidrs: BTreeMap<String, String> =
        until("3 simulated nodes", Duration::from_secs(60), async || {
            let list = nodes.list(&ListParams::default()).await.ok()?;
            let ready: BTreeMap<String, String> = list
                .items
                .iter()
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .filter_map(|n| {
                    Some((n.metadata.name.clone()?, n.spec.as_ref()?.pod_cidr.clone()?))
                })
                .collect();
            (ready.len() == 3).then_some(ready)
        })
        .await;
    assert_eq!(
        cidrs.keys().map(String::as_str).collect::<Vec<_>>(),
        NODES,
        "{}",
        log()
    );
    for name in NODES {
        let n = nodes.get(name).await.unwrap();
        let labels = n.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("kuvirt.io/simulated").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some(name)
        );
        let alloc = n.status.unwrap().allocatable.unwrap();
        assert_eq!(alloc["cpu"].0, "64");
        assert_eq!(alloc["memory"].0, "256Gi");
        assert_eq!(alloc["pods"].0, "250");
    }

    let names: Vec<String> = (0..VMS).map(|i| format!("vm{i:02}")).collect();
    for name in &names {
        vms.create(&PostParams::default(), &vm(name)).await.unwrap();
    }
    let running = until("30 VMIs Running", Duration::from_secs(120), async || {
        let list = vmis.list(&ListParams::default()).await.ok()?;
        let up: Vec<VirtualMachineInstance> = list
            .items
            .into_iter()
            .filter(|v| phase(v) == "Running" && ip_of(v).is_some())
            .collect();
        (up.len() == VMS).then_some(up)
    })
    .await;
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ips = BTreeSet::new();
    for v in &running {
        let node = node_of(v);
        let ip = ip_of(v).unwrap();
        let cidr = cidrs
            .get(node)
            .unwrap_or_else(|| panic!("VMI on unknown node {node:?}"));
        assert!(in_cidr(ip, cidr), "{ip} outside {node}'s {cidr}");
        *per_node.entry(node).or_default() += 1;
        ips.insert(ip);
        // The launcher pod says the same.
        let pod = pods
            .list(&ListParams::default().labels(&format!(
                "kubevirt.io/created-by={}",
                v.metadata.uid.as_deref().unwrap()
            )))
            .await
            .unwrap()
            .items
            .pop()
            .unwrap();
        let st = pod.status.unwrap();
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(st.pod_ip.as_deref(), Some(ip.to_string().as_str()));
        assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    }
    assert_eq!(ips.len(), VMS, "pod IPs are unique");
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|n| *n >= 5), "{per_node:?}");
    assert_eq!(held_addresses(plane.state.path()), VMS);
    // Every VM keeps its address as its lease.
    let vm00 = vms.get("vm00").await.unwrap();
    let lease = vm00
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kuvirt.io/ip-lease"))
        .cloned();
    let first = running
        .iter()
        .find(|v| v.metadata.name.as_deref() == Some("vm00"))
        .unwrap();
    let vm00_ip = ip_of(first).unwrap();
    assert_eq!(lease, Some(vm00_ip.to_string()));

    // Pause and unpause through the API server and the simulated nodes' endpoint.
    let out = plane.kuvirt(&["pause", "vmi", "vm01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("vm01 Paused", Duration::from_secs(30), async || {
        vmis.get("vm01").await.ok().filter(paused).map(|_| ())
    })
    .await;
    let out = plane.kuvirt(&["unpause", "vmi", "vm01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("vm01 unpaused", Duration::from_secs(30), async || {
        vmis.get("vm01")
            .await
            .ok()
            .filter(|v| !paused(v))
            .map(|_| ())
    })
    .await;
    // A screenshot is refused; the agent carries on.
    let shot = plane.data.path().join("shot.png");
    let out = plane.kuvirt(&[
        "vnc",
        "screenshot",
        "vm02",
        "--file",
        shot.to_str().unwrap(),
    ]);
    assert!(!out.status.success());

    // A guest that powers off (here: the launcher asked directly) leaves its VMI Succeeded;
    // the VM (runStrategy Always) starts a new one.
    let vm03 = running
        .iter()
        .find(|v| v.metadata.name.as_deref() == Some("vm03"))
        .unwrap();
    let uid03 = vm03.metadata.uid.clone().unwrap();
    let dir = kuvirt_handler::pods::vm_dir(plane.state.path(), "default", "vm03", &uid03);
    let out = Command::new(KUVIRT)
        .args(["ctl", "--vm-dir"])
        .arg(&dir)
        .arg("shutdown")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until(
        "vm03 powered off and started again",
        Duration::from_secs(60),
        async || {
            let v = vmis.get("vm03").await.ok()?;
            (v.metadata.uid.as_deref() != Some(uid03.as_str()) && phase(&v) == "Running")
                .then_some(())
        },
    )
    .await;
    assert!(dir.join("exit.json").exists());
    assert!(!dir.join("launcher.sock").exists());

    // A stopped VM's VMI goes; started again it gets its address back.
    let stop = |strategy: &str| Patch::Merge(json!({"spec": {"runStrategy": strategy}}));
    vms.patch("vm00", &PatchParams::default(), &stop("Halted"))
        .await
        .unwrap();
    until("vm00's VMI gone", Duration::from_secs(60), async || {
        vmis.get_opt("vm00")
            .await
            .ok()
            .and_then(|v| v.is_none().then_some(()))
    })
    .await;
    vms.patch("vm00", &PatchParams::default(), &stop("Always"))
        .await
        .unwrap();
    let again = until("vm00 Running again", Duration::from_secs(60), async || {
        let v = vmis.get("vm00").await.ok()?;
        (phase(&v) == "Running").then(|| ip_of(&v)).flatten()
    })
    .await;
    assert_eq!(again, vm00_ip, "the sticky address");

    // The agent killed and started again: its stand-ins come back for the same pods, at the
    // same addresses (none is collected while its pod is being started again).
    let before: BTreeMap<String, Option<Ipv4Addr>> = vmis
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|v| (v.metadata.uid.clone().unwrap(), ip_of(v)))
        .collect();
    let held_before = held(plane.state.path());
    assert_eq!(held_before.len(), VMS);
    drop(agent);
    agent = spawn_agent();
    until("every stand-in back", Duration::from_secs(60), async || {
        for v in vmis.list(&ListParams::default()).await.ok()?.items {
            let name = v.metadata.name.as_deref()?;
            let uid = v.metadata.uid.as_deref()?;
            let sock = kuvirt_handler::pods::vm_dir(plane.state.path(), "default", name, uid)
                .join("launcher.sock");
            kuvirt_launcher::protocol::call(&sock, kuvirt_launcher::protocol::Request::Status)
                .await
                .ok()?;
        }
        Some(())
    })
    .await;
    let after: BTreeMap<String, Option<Ipv4Addr>> = vmis
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|v| (v.metadata.uid.clone().unwrap(), ip_of(v)))
        .collect();
    assert_eq!(after, before);
    assert_eq!(held(plane.state.path()), held_before);

    // Every VM deleted: no VMI, launcher pod or address stays.
    for name in &names {
        vms.delete(name, &DeleteParams::default()).await.unwrap();
    }
    until("all VMIs gone", Duration::from_secs(120), async || {
        let left = vmis.list(&ListParams::default()).await.ok()?.items.len();
        let pods_left = pods.list(&ListParams::default()).await.ok()?.items.len();
        (left == 0 && pods_left == 0).then_some(())
    })
    .await;
    until("addresses released", Duration::from_secs(30), async || {
        (held_addresses(plane.state.path()) == 0).then_some(())
    })
    .await;
    // No QEMU ran, and the agent is still there.
    assert!(common::qemu_under(plane.state.path()).is_empty());
    let text = log();
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        nodes.get("sim-0000").await.is_ok(),
        "the nodes stay registered"
    );
    drop(agent);
}
