//! Live migration between two `kuvirt agent` nodes, each in its own network namespace, under a
//! `kuvirt server` that runs no node of its own: `kuvirt migrate` moves a running guest, which
//! keeps counting its heartbeat on the other node without booting again.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::nodes::{KillUnder, NetNode, Proc, agent};
use common::plane::{client_for, halt, serial_log, until};
use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kuvirt_api::v1::{MigrationPhase, VirtualMachineInstanceMigration};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

fn last_heartbeat(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("kuvirt-guest: heartbeat "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_vm_moves_to_the_other_node_and_keeps_counting() {
    let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
    let n1 = NetNode::create(1);
    let n2 = NetNode::create(2);
    let data = tempfile::tempdir().unwrap();
    let s1 = state_dir();
    let s2 = state_dir();
    let _reaper = KillUnder(vec![s1.path().to_path_buf(), s2.path().to_path_buf()]);
    let port = free_port();
    let podnet = common::plane::PodNet::take();
    let _server = Proc(
        Command::new(KUVIRT)
            .args(["server", "--no-node-agent", "--data-dir"])
            .arg(data.path())
            .args(["--listen", &format!("0.0.0.0:{port}")])
            .args(["--tls-san", &n1.host_ip, "--tls-san", &n2.host_ip])
            .args(["--cluster-cidr", &podnet.cidr])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(data.path().join("server.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let kubeconfig = data.path().join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() || !kubeconfig.exists() {
        assert!(Instant::now() < deadline, "server did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = data.path().join("node-token");
    let logs = [data.path().join("n1.log"), data.path().join("n2.log")];
    let _a1 = agent(
        &n1,
        &format!("https://{}:{port}", n1.host_ip),
        &token,
        s1.path(),
        "n1",
        &podnet.name,
        &logs[0],
    );
    let _a2 = agent(
        &n2,
        &format!("https://{}:{port}", n2.host_ip),
        &token,
        s2.path(),
        "n2",
        &podnet.name,
        &logs[1],
    );
    let client = client_for(&kubeconfig).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let migrations: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(client.clone(), "default");
    let show = || {
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    for name in ["n1", "n2"] {
        until(
            &format!("node {name} Ready"),
            Duration::from_secs(60),
            async || {
                let n = nodes.get_opt(name).await.ok()??;
                let ready = n
                    .status
                    .as_ref()?
                    .conditions
                    .as_ref()?
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                (ready && n.spec.as_ref()?.pod_cidr.is_some()).then_some(())
            },
        )
        .await;
    }

    vms.create(
        &PostParams::default(),
        &common::net::vm("mover", serde_json::json!({"masquerade": {}}), ""),
    )
    .await
    .unwrap();
    let (source, uid) = until("mover running", Duration::from_secs(120), async || {
        let v = vmis.get_opt("mover").await.ok()??;
        let s = v.status?;
        (s.phase?.as_str() == "Running").then_some((s.node_name?, v.metadata.uid?))
    })
    .await;
    let (src_state, dst_state, target) = if source == "n1" {
        (s1.path(), s2.path(), "n2")
    } else {
        (s2.path(), s1.path(), "n1")
    };
    until("the guest counts", Duration::from_secs(120), async || {
        (last_heartbeat(&serial_log(src_state, "default", "mover")) >= 2).then_some(())
    })
    .await;
    let migratable = vmis.get("mover").await.unwrap();
    let cond = migratable
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_.as_str() == "LiveMigratable");
    assert_eq!(cond.map(|c| c.status).as_deref(), Some("True"));

    let out = Command::new(KUVIRT)
        .args(["migrate", "mover", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "VM mover was scheduled to migrate"
    );
    let done = until("the migration ends", Duration::from_secs(180), async || {
        let list = migrations
            .list(&ListParams::default().labels("kubevirt.io/vmi-name=mover"))
            .await
            .ok()?;
        let m = list.items.into_iter().next()?;
        let phase = m.status.as_ref()?.phase.clone()?;
        phase.is_final().then_some(m)
    })
    .await;
    let st = done.status.unwrap();
    assert_eq!(
        st.phase,
        Some(MigrationPhase::Succeeded),
        "{st:?}\n{}",
        show()
    );
    let phases: Vec<String> = st
        .phase_transition_timestamps
        .iter()
        .filter_map(|t| t.phase.as_ref().map(|p| p.as_str().to_string()))
        .collect();
    for p in [
        "Pending",
        "Scheduling",
        "Scheduled",
        "PreparingTarget",
        "TargetReady",
        "Running",
        "Succeeded",
    ] {
        assert!(phases.iter().any(|x| x == p), "{p} missing from {phases:?}");
    }
    let vmi = vmis.get("mover").await.unwrap();
    assert_eq!(
        vmi.metadata.uid.as_deref(),
        Some(uid.as_str()),
        "the same VMI"
    );
    let status = vmi.status.unwrap();
    assert_eq!(status.node_name.as_deref(), Some(target));
    let ms = status.migration_state.unwrap();
    assert_eq!(ms.completed, Some(true));
    assert_ne!(ms.failed, Some(true));
    assert_eq!(ms.source_node.as_deref(), Some(source.as_str()));
    assert_eq!(ms.target_node.as_deref(), Some(target));
    assert!(
        ms.start_timestamp.is_some() && ms.end_timestamp.is_some(),
        "{ms:?}"
    );

    // The guest itself: it counts on over there, and never booted there.
    let before = last_heartbeat(&serial_log(src_state, "default", "mover"));
    until(
        "the guest counts on the target",
        Duration::from_secs(60),
        async || {
            (last_heartbeat(&serial_log(dst_state, "default", "mover")) > before + 1).then_some(())
        },
    )
    .await;
    let there = serial_log(dst_state, "default", "mover");
    assert!(
        !there.contains("kuvirt-guest: booted"),
        "the guest booted again on {target}: {there}"
    );
    // The source's QEMU is gone.
    until(
        "the source QEMU ends",
        Duration::from_secs(30),
        async || qemu_under(src_state).is_empty().then_some(()),
    )
    .await;

    halt(&vms, &["mover"], dst_state).await;
}
