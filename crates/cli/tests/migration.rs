//! Live migration between two `kuvirt agent` nodes, each in its own network namespace on a
//! shared link, under a `kuvirt server` that runs no node of its own: `kuvirt migrate` moves a
//! running guest, which keeps counting its heartbeat on the other node without booting again; a
//! bridge-bound guest keeps its pod IP and answers clients on both nodes throughout.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::nodes::{KillUnder, Lan, NetNode, Proc, agent};
use common::plane::{PodNet, client_for, halt, serial_log, until};
use common::*;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kuvirt_api::v1::{MigrationAbortStatus, MigrationPhase, VirtualMachineInstanceMigration};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

fn last_heartbeat(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("kuvirt-guest: heartbeat "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Two agent nodes `n1` and `n2` on one link under a server without a node. Dropped in order:
/// agents and server, then whatever runs under the nodes' state, then the namespaces and link.
struct Cluster {
    agents: [Option<Proc>; 2],
    _server: Proc,
    _reaper: KillUnder,
    nodes: [NetNode; 2],
    _lan: Lan,
    states: [tempfile::TempDir; 2],
    logs: [PathBuf; 2],
    kubeconfig: PathBuf,
    port: u16,
    _podnet: PodNet,
    data: tempfile::TempDir,
    client: kube::Client,
}

impl Cluster {
    async fn up() -> Cluster {
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let lan = Lan::create();
        let nodes = [NetNode::on_lan(1, &lan), NetNode::on_lan(2, &lan)];
        let data = tempfile::tempdir().unwrap();
        let states = [state_dir(), state_dir()];
        let reaper = KillUnder(states.iter().map(|s| s.path().to_path_buf()).collect());
        let port = free_port();
        let podnet = PodNet::take();
        let server = Proc(
            Command::new(KUVIRT)
                .args(["server", "--no-node-agent", "--data-dir"])
                .arg(data.path())
                .args(["--listen", &format!("0.0.0.0:{port}")])
                .args(["--tls-san", &lan.host_ip])
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
        let logs = [data.path().join("n1.log"), data.path().join("n2.log")];
        let mut c = Cluster {
            agents: [None, None],
            _server: server,
            _reaper: reaper,
            nodes,
            _lan: lan,
            states,
            logs,
            client: client_for(&kubeconfig).await,
            kubeconfig,
            port,
            _podnet: podnet,
            data,
        };
        c.start_agent(0);
        c.start_agent(1);
        let nodes: Api<Node> = Api::all(c.client.clone());
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
        c
    }

    fn start_agent(&mut self, i: usize) {
        let n = &self.nodes[i];
        let port = self.port;
        self.agents[i] = Some(agent(
            n,
            &format!("https://{}:{port}", n.host_ip),
            &self.data.path().join("node-token"),
            self.states[i].path(),
            &format!("n{}", i + 1),
            &self._podnet.name,
            &self.logs[i],
        ));
    }

    fn index(node: &str) -> usize {
        if node == "n1" { 0 } else { 1 }
    }

    fn state(&self, node: &str) -> &Path {
        self.states[Self::index(node)].path()
    }

    fn netns(&self, node: &str) -> &str {
        &self.nodes[Self::index(node)].ns
    }

    /// The agents' logs and every launcher's, for a failure's message.
    fn show(&self) -> String {
        let mut out: Vec<String> = self
            .logs
            .iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect();
        for (i, st) in self.states.iter().enumerate() {
            let ns = st.path().join("vms").join("default");
            for d in std::fs::read_dir(ns).into_iter().flatten().flatten() {
                let log =
                    std::fs::read_to_string(d.path().join("launcher.log")).unwrap_or_default();
                out.push(format!(
                    "n{} {}:\n{log}",
                    i + 1,
                    d.file_name().to_string_lossy()
                ));
            }
        }
        out.join("\n----\n")
    }

    fn vms(&self) -> Api<VirtualMachine> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn vmis(&self) -> Api<VirtualMachineInstance> {
        Api::namespaced(self.client.clone(), "default")
    }

    fn migrations(&self) -> Api<VirtualMachineInstanceMigration> {
        Api::namespaced(self.client.clone(), "default")
    }

    /// Starts VM `name` with pod interface `iface`; its node and VMI UID once it runs and the
    /// guest counts.
    async fn start_vm(&self, name: &str, iface: serde_json::Value) -> (String, String) {
        self.vms()
            .create(&PostParams::default(), &common::net::vm(name, iface, ""))
            .await
            .unwrap();
        let vmis = self.vmis();
        let (node, uid) = until(
            &format!("{name} running"),
            Duration::from_secs(120),
            async || {
                let v = vmis.get_opt(name).await.ok()??;
                let s = v.status?;
                (s.phase?.as_str() == "Running").then_some((s.node_name?, v.metadata.uid?))
            },
        )
        .await;
        let state = self.state(&node).to_path_buf();
        until("the guest counts", Duration::from_secs(120), async || {
            (last_heartbeat(&serial_log(&state, "default", name)) >= 2).then_some(())
        })
        .await;
        (node, uid)
    }

    /// `kuvirt migrate VM`, checking virtctl's answer.
    fn migrate(&self, vm: &str) {
        let out = Command::new(KUVIRT)
            .args(["migrate", vm, "--kubeconfig"])
            .arg(&self.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("VM {vm} was scheduled to migrate")
        );
    }

    /// The migration of `vm` once it ended.
    async fn ended(&self, vm: &str) -> VirtualMachineInstanceMigration {
        let migrations = self.migrations();
        until("the migration ends", Duration::from_secs(180), async || {
            let list = migrations
                .list(&ListParams::default().labels(&format!("kubevirt.io/vmi-name={vm}")))
                .await
                .ok()?;
            let m = list.items.into_iter().next()?;
            let phase = m.status.as_ref()?.phase.clone()?;
            phase.is_final().then_some(m)
        })
        .await
    }
}

fn other(node: &str) -> &'static str {
    if node == "n1" { "n2" } else { "n1" }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_vm_moves_to_the_other_node_and_keeps_counting() {
    let c = Cluster::up().await;
    let (vms, vmis) = (c.vms(), c.vmis());
    let (source, uid) = c
        .start_vm("mover", serde_json::json!({"masquerade": {}}))
        .await;
    let target = other(&source);
    let (src_state, dst_state) = (c.state(&source), c.state(target));
    let migratable = vmis.get("mover").await.unwrap();
    let cond = migratable
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_.as_str() == "LiveMigratable");
    assert_eq!(cond.map(|c| c.status).as_deref(), Some("True"));

    c.migrate("mover");
    let done = c.ended("mover").await;
    let st = done.status.unwrap();
    assert_eq!(
        st.phase,
        Some(MigrationPhase::Succeeded),
        "{st:?}\n{}",
        c.show()
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

/// An HTTP GET of `/` with one-second timeouts: the body.
fn get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}

/// A client on node `ns` (a thread in its network namespace) asking `addr` every 100 ms until
/// told to stop: when it asked, and whether the guest answered with `want`.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Instant, bool)>>,
    seen: Arc<std::sync::Mutex<Vec<(Instant, bool)>>>,
}

impl Prober {
    fn start(ns: &str, addr: SocketAddr, want: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<std::sync::Mutex<Vec<(Instant, bool)>>> = Arc::default();
        let ns = format!("/run/netns/{ns}");
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let f = std::fs::File::open(&ns).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let ok = get(addr).is_ok_and(|b| b.contains(&want));
                v.lock().unwrap().push((at, ok));
                // Pacing, not synchronisation: one request per 100 ms at most.
                if let Some(rest) = Duration::from_millis(100).checked_sub(at.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            v.lock().unwrap().clone()
        });
        Prober { stop, thread, seen }
    }

    /// Answers since `t`.
    fn answered_since(&self, t: Instant) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, ok)| *at >= t && *ok)
            .count()
    }

    fn finish(self) -> Vec<(Instant, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Waits until every prober had `n` answers since `since`.
async fn answered(probers: &[Prober], since: Instant, n: usize, what: &str) {
    until(what, Duration::from_secs(60), async || {
        probers
            .iter()
            .all(|p| p.answered_since(since) >= n)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_vm_keeps_its_ip_and_answers_throughout_the_move() {
    let c = Cluster::up().await;
    let (vms, vmis) = (c.vms(), c.vmis());
    let (source, _) = c
        .start_vm("bridged", serde_json::json!({"bridge": {}}))
        .await;
    let target = other(&source);
    let src_state = c.state(&source);
    // The guest's own DHCP lease: the pod IP.
    let vmi = vmis.get("bridged").await.unwrap();
    let ip: Ipv4Addr = vmi.status.as_ref().unwrap().interfaces[0]
        .ip_address
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let lease = serial_log(src_state, "default", "bridged");
    assert!(
        lease.contains(&format!("dhcp iface=eth0 ip={ip}/")),
        "the guest did not lease {ip}: {lease}"
    );
    let migratable = vmi
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_.as_str() == "LiveMigratable");
    assert_eq!(migratable.map(|c| c.status).as_deref(), Some("True"));

    // Clients on both nodes: the source's reaches the guest on its bridge, the target's through
    // the route to the source's pod CIDR.
    let addr = SocketAddr::from((ip, 80));
    // The guest's web page (its hostname, which it was not given).
    let want = "kuvirt-guest kuvirt-guest".to_string();
    let probers = [
        Prober::start(c.netns(&source), addr, want.clone()),
        Prober::start(c.netns(target), addr, want.clone()),
    ];
    answered(&probers, Instant::now(), 3, "both clients reach the guest").await;

    c.migrate("bridged");
    let done = c.ended("bridged").await;
    let st = done.status.unwrap();
    assert_eq!(
        st.phase,
        Some(MigrationPhase::Succeeded),
        "{st:?}\n{}",
        c.show()
    );
    let moved = vmis.get("bridged").await.unwrap();
    let status = moved.status.unwrap();
    assert_eq!(status.node_name.as_deref(), Some(target));
    assert_eq!(
        status.interfaces[0].ip_address.as_deref(),
        Some(ip.to_string().as_str()),
        "the VMI reports another address"
    );
    // Both clients keep being answered by the guest, now on the target.
    answered(
        &probers,
        Instant::now(),
        20,
        "both clients reach the moved guest",
    )
    .await;
    let end = Instant::now();
    let results: Vec<Vec<(Instant, bool)>> = probers.into_iter().map(Prober::finish).collect();
    for (who, r) in [&source, target].iter().zip(&results) {
        let lost = r.iter().filter(|(_, ok)| !ok).count();
        let first_ok = r.iter().position(|(_, ok)| *ok).unwrap();
        let lost_after_start = r[first_ok..].iter().filter(|(_, ok)| !ok).count();
        eprintln!(
            "client on {who}: {} requests, {lost_after_start} lost once answered ({lost} in all)",
            r.len()
        );
        // The last seconds: every request answered.
        let last: Vec<bool> = r
            .iter()
            .filter(|(at, _)| *at + Duration::from_secs(2) >= end)
            .map(|(_, ok)| *ok)
            .collect();
        assert!(
            !last.is_empty() && last.iter().all(|ok| *ok),
            "client on {who}: the moved guest does not answer every request: {last:?}"
        );
        assert!(
            lost_after_start <= 30,
            "client on {who}: {lost_after_start} requests lost during the move\n{}",
            c.show()
        );
    }
    let there = serial_log(c.state(target), "default", "bridged");
    assert!(
        !there.contains("kuvirt-guest: booted"),
        "the guest booted again on {target}: {there}"
    );
    halt(&vms, &["bridged"], c.state(target)).await;
}

impl Cluster {
    /// A MigrationPolicy for every VMI that holds each migration to `bandwidth` per second, so a
    /// test can act while the memory is still on its way.
    async fn slow_migrations(&self, bandwidth: &str) {
        let policies: Api<kuvirt_api::migrations::MigrationPolicy> = Api::all(self.client.clone());
        let policy: kuvirt_api::migrations::MigrationPolicy =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
                "metadata": {"name": "slow"},
                "spec": {"selectors": {}, "bandwidthPerMigration": bandwidth},
            }))
            .unwrap();
        policies
            .create(&PostParams::default(), &policy)
            .await
            .unwrap();
    }

    /// The VMI's migration state once the source is sending the memory.
    async fn copying(&self, vm: &str) {
        let vmis = self.vmis();
        until(
            "the memory is on its way",
            Duration::from_secs(120),
            async || {
                let v = vmis.get_opt(vm).await.ok()??;
                let ms = v.status?.migration_state?;
                (ms.start_timestamp.is_some() && ms.completed != Some(true)).then_some(())
            },
        )
        .await;
    }

    /// The guest keeps counting on `node` and never booted again.
    async fn counts_on(&self, vm: &str, node: &str) {
        let state = self.state(node).to_path_buf();
        let before = last_heartbeat(&serial_log(&state, "default", vm));
        until(
            &format!("{vm} counts on {node}"),
            Duration::from_secs(60),
            async || {
                (last_heartbeat(&serial_log(&state, "default", vm)) >= before + 3).then_some(())
            },
        )
        .await;
        let log = serial_log(&state, "default", vm);
        assert_eq!(
            log.matches("kuvirt-guest: booted").count(),
            1,
            "{vm} booted again: {log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_migration_leaves_the_vm_running_on_the_source() {
    let c = Cluster::up().await;
    c.slow_migrations("1Mi").await;
    let (vms, vmis) = (c.vms(), c.vmis());
    let (source, _) = c
        .start_vm("stays", serde_json::json!({"masquerade": {}}))
        .await;
    let target = other(&source);
    c.migrate("stays");
    c.copying("stays").await;
    // The migration object ends Failed on its way out (its finalizer holds it until then):
    // every version of it, as a watch sees them, until it is gone.
    let mut versions = kube::runtime::watcher(
        c.migrations(),
        kube::runtime::watcher::Config::default().labels("kubevirt.io/vmi-name=stays"),
    )
    .boxed();
    let (listed, watching) = tokio::sync::oneshot::channel();
    let seen_phases = tokio::spawn(async move {
        let mut listed = Some(listed);
        let mut phases = Vec::new();
        let deadline = tokio::time::sleep(Duration::from_secs(120));
        tokio::pin!(deadline);
        loop {
            let ev = tokio::select! {
                ev = versions.next() => ev,
                () = &mut deadline => panic!("the migration is not gone: {phases:?}"),
            };
            match ev.unwrap().unwrap() {
                kube::runtime::watcher::Event::Apply(m)
                | kube::runtime::watcher::Event::InitApply(m) => {
                    phases.extend(m.status.and_then(|s| s.phase));
                }
                kube::runtime::watcher::Event::InitDone => {
                    if let Some(l) = listed.take() {
                        let _ = l.send(());
                    }
                }
                kube::runtime::watcher::Event::Delete(_) => return phases,
                kube::runtime::watcher::Event::Init => {}
            }
        }
    });
    watching.await.unwrap();
    let out = Command::new(KUVIRT)
        .args(["migrate-cancel", "stays", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "VM stays was scheduled to migrate-cancel"
    );
    let phases = seen_phases.await.unwrap();
    assert_eq!(phases.last(), Some(&MigrationPhase::Failed), "{phases:?}");
    // The source agent reports the abort's outcome.
    let ms = until("the abort's outcome", Duration::from_secs(60), async || {
        let s = vmis.get("stays").await.ok()?.status?;
        let settled = matches!(
            s.migration_state.as_ref()?.abort_status,
            Some(MigrationAbortStatus::Succeeded | MigrationAbortStatus::Failed)
        );
        settled.then_some(s)
    })
    .await;
    assert_eq!(
        ms.node_name.as_deref(),
        Some(source.as_str()),
        "{}",
        c.show()
    );
    let state = ms.migration_state.unwrap();
    assert_eq!(state.abort_requested, Some(true), "{state:?}");
    assert_eq!(
        state.abort_status,
        Some(MigrationAbortStatus::Succeeded),
        "{state:?}"
    );
    assert_eq!(state.failed, Some(true), "{state:?}");
    c.counts_on("stays", &source).await;
    until("the target is gone", Duration::from_secs(60), async || {
        qemu_under(c.state(target)).is_empty().then_some(())
    })
    .await;
    halt(&vms, &["stays"], c.state(&source)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_target_agent_mid_flight_fails_the_migration_and_spares_the_vm() {
    let mut c = Cluster::up().await;
    c.slow_migrations("1Mi").await;
    let (vms, vmis) = (c.vms(), c.vmis());
    let (source, _) = c
        .start_vm("spared", serde_json::json!({"masquerade": {}}))
        .await;
    let target = other(&source);
    c.migrate("spared");
    c.copying("spared").await;
    // The target node's agent dies (its launcher and QEMU are left on their own).
    drop(c.agents[Cluster::index(target)].take());
    let done = c.ended("spared").await;
    let st = done.status.unwrap();
    assert_eq!(
        st.phase,
        Some(MigrationPhase::Failed),
        "{st:?}\n{}",
        c.show()
    );
    let status = vmis.get("spared").await.unwrap().status.unwrap();
    assert_eq!(status.node_name.as_deref(), Some(source.as_str()));
    assert_eq!(
        status.phase.map(|p| p.as_str().to_string()).as_deref(),
        Some("Running")
    );
    let ms = status.migration_state.unwrap();
    assert_eq!(ms.failed, Some(true), "{ms:?}");
    c.counts_on("spared", &source).await;
    // The half-filled target QEMU ends by itself.
    until(
        "the target QEMU ends",
        Duration::from_secs(60),
        async || qemu_under(c.state(target)).is_empty().then_some(()),
    )
    .await;
    halt(&vms, &["spared"], c.state(&source)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_cannot_move_says_why_and_migrate_is_refused() {
    let c = Cluster::up().await;
    let (vms, vmis) = (c.vms(), c.vmis());
    let iface = serde_json::json!({"passt": {}, "ports": [{"name": "http", "port": 80}]});
    let (node, _) = c.start_vm("pinned", iface).await;
    let cond = until(
        "LiveMigratable=False",
        Duration::from_secs(60),
        async || {
            let v = vmis.get_opt("pinned").await.ok()??;
            v.status?
                .conditions
                .into_iter()
                .find(|c| c.type_.as_str() == "LiveMigratable" && c.status == "False")
        },
    )
    .await;
    assert_eq!(cond.reason.as_deref(), Some("InterfaceNotLiveMigratable"));
    let message = cond.message.unwrap_or_default();
    assert!(message.contains("masquerade"), "{message}");
    let out = Command::new(KUVIRT)
        .args(["migrate", "pinned", "--kubeconfig"])
        .arg(&c.kubeconfig)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("Cannot migrate VMI, Reason: InterfaceNotLiveMigratable"),
        "{err}"
    );
    // Straight at the subresource: 409.
    let client = c.client.clone();
    let req = http::Request::put(
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/pinned/migrate",
    )
    .header("content-type", "application/json")
    .body(b"{}".to_vec())
    .unwrap();
    match client.request::<serde_json::Value>(req).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 409, "{s:?}"),
        other => panic!("migrate was not refused: {other:?}"),
    }
    assert!(
        c.migrations()
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "a migration was created"
    );
    halt(&vms, &["pinned"], c.state(&node)).await;
}
