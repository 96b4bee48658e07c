//! The whole path on one host: `kuvirt server` (API server, controllers, node agent) turns a
//! VirtualMachine into a launcher pod, a launcher process and a QEMU guest; the guest's own
//! console says it booted; stopping the VM powers the guest off through ACPI.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use kuvirt_handler::sandbox::SandboxConfig;

struct ServerProc(Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `kuvirt server` with its node agent on this host: data and VM state in temp dirs, TCG.
struct Plane {
    data: tempfile::TempDir,
    state: tempfile::TempDir,
    port: u16,
}

impl Plane {
    fn new() -> Plane {
        Plane {
            data: tempfile::tempdir().unwrap(),
            state: state_dir(),
            port: free_port(),
        }
    }

    /// Starts the server and waits until it listens and its kubeconfig exists.
    fn spawn(&self) -> ServerProc {
        let proc = ServerProc(
            Command::new(KUVIRT)
                .args(["server", "--data-dir"])
                .arg(self.data.path())
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .arg("--state-dir")
                .arg(self.state.path())
                .args(["--accel", "tcg", "--node-name", "kuvirt-test"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let kubeconfig = self.data.path().join("kubeconfig");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() || !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        proc
    }

    async fn client(&self) -> kube::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc = Kubeconfig::read_from(self.data.path().join("kubeconfig")).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }
}

async fn until<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The launcher pod of a VMI (by its uid).
async fn launcher_pod(client: &kube::Client, vmi_uid: &str) -> Option<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.list(&ListParams::default().labels(&format!("kubevirt.io/created-by={vmi_uid}")))
        .await
        .ok()?
        .items
        .into_iter()
        .next()
}

/// The network namespace the node agent made for a pod.
fn pod_netns(pod_uid: &str) -> String {
    SandboxConfig::new("/").netns_name(pod_uid).unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The console log of the VMI `testvm` (its directory is `testvm-<uid prefix>`).
fn console(state: &Path) -> String {
    let Ok(dirs) = std::fs::read_dir(state.join("vms/default")) else {
        return String::new();
    };
    dirs.flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("testvm-"))
        .filter_map(|d| std::fs::read_to_string(d.path().join("serial.log")).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_runs_through_the_control_plane_and_stops_gracefully() {
    let guest = demo_guest();
    let plane = Plane::new();
    let state = &plane.state;
    let mut server = plane.spawn();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");

    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "testvm"},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {
                "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}},
                          {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "default", "masquerade": {}}]},
                "resources": {"requests": {"memory": "256Mi"}}},
            "networks": [{"name": "default", "pod": {}}],
            "terminationGracePeriodSeconds": 30,
            "volumes": [
                {"name": "containerdisk", "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}},
                {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": "#cloud-config\nhostname: through-the-api\n"}}
            ]}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();

    let running = until("VMI Running", Duration::from_secs(120), async || {
        let v = vmis.get_opt("testvm").await.ok()??;
        let s = v.status?;
        (s.phase.as_ref()?.as_str() == "Running").then_some(s)
    })
    .await;
    assert_eq!(running.node_name.as_deref(), Some("kuvirt-test"));

    // The launcher runs in a pod sandbox: its own namespace with an address from the node's pod
    // CIDR, which the pod and the VMI's pod-network interface report.
    let vmi_uid = vmis.get("testvm").await.unwrap().metadata.uid.unwrap();
    let pod = launcher_pod(&client, &vmi_uid).await.unwrap();
    let pod_status = pod.status.unwrap();
    let pod_ip: std::net::Ipv4Addr = pod_status.pod_ip.as_deref().unwrap().parse().unwrap();
    assert_eq!(pod_ip.octets()[..2], [10, 244], "pod IP {pod_ip}");
    assert_ne!(
        pod_status.host_ip.as_deref(),
        Some(pod_ip.to_string().as_str())
    );
    assert_eq!(running.interfaces.len(), 1, "{:?}", running.interfaces);
    let iface = &running.interfaces[0];
    assert_eq!(iface.name.as_deref(), Some("default"));
    assert_eq!(
        iface.ip_address.as_deref(),
        Some(pod_ip.to_string().as_str())
    );
    assert_eq!(iface.ip_addresses, vec![pod_ip.to_string()]);
    assert_eq!(iface.info_source.as_deref(), Some("domain"));
    assert_eq!(iface.mac.as_deref().map(str::len), Some(17));
    let first_netns = pod_netns(pod.metadata.uid.as_deref().unwrap());
    let out = Command::new("ip")
        .args([
            "-n",
            &first_netns,
            "-4",
            "-br",
            "addr",
            "show",
            "dev",
            "eth0",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{pod_ip}/24")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("the guest's boot", Duration::from_secs(120), async || {
        console(state.path())
            .contains("kuvirt-guest: ready")
            .then_some(())
    })
    .await;
    assert!(
        console(state.path()).contains("kuvirt-guest: hostname=through-the-api"),
        "{}",
        console(state.path())
    );
    until(
        "VM Running and Ready",
        Duration::from_secs(30),
        async || {
            let s = vms.get("testvm").await.ok()?.status?;
            (s.printable_status?.as_str() == "Running" && s.ready == Some(true)).then_some(())
        },
    )
    .await;

    // kill -9 of the whole control plane: the VM keeps running, and the restarted node agent
    // adopts its launcher instead of starting another one.
    let qemu = qemu_under(state.path());
    assert_eq!(qemu.len(), 1, "one QEMU for one VM");
    let heartbeats = |log: &str| log.matches("kuvirt-guest: heartbeat").count();
    drop(server);
    server = plane.spawn();
    let launchers = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(" launcher ") && c.contains(&state.path().display().to_string()))
            .count()
    };
    // Watch a few guest seconds after the restart: never a second launcher, the same QEMU.
    let before = heartbeats(&console(state.path()));
    until(
        "the guest still counting",
        Duration::from_secs(60),
        async || {
            assert!(
                launchers() <= 1,
                "a second launcher was started for the same VM"
            );
            (heartbeats(&console(state.path())) > before + 3).then_some(())
        },
    )
    .await;
    assert_eq!(qemu_under(state.path()), qemu, "QEMU was restarted");
    // The adopted launcher keeps its sandbox and address.
    assert!(netns_exists(&first_netns), "the sandbox was removed");
    let pod = launcher_pod(&client, &vmi_uid).await.unwrap();
    assert_eq!(
        pod.status.unwrap().pod_ip.as_deref(),
        Some(pod_ip.to_string().as_str())
    );
    assert_eq!(
        vmis.get("testvm")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .unwrap()
            .as_str(),
        "Running"
    );

    // The guest powers itself off (ACPI through its launcher): runStrategy Always starts a new VMI.
    let first = vmis.get("testvm").await.unwrap();
    let first_uid = first.metadata.uid.clone().unwrap();
    let short: String = first_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let vm_dir = state.path().join(format!("vms/default/testvm-{short}"));
    let out = Command::new(KUVIRT)
        .args(["ctl", "--vm-dir"])
        .arg(&vm_dir)
        .arg("shutdown")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("a new VMI running", Duration::from_secs(120), async || {
        let v = vmis.get_opt("testvm").await.ok()??;
        let running = v.status.as_ref()?.phase.as_ref()?.as_str() == "Running";
        (v.metadata.uid.as_deref() != Some(first_uid.as_str()) && running).then_some(())
    })
    .await;
    until("the second boot", Duration::from_secs(120), async || {
        (console(state.path()).matches("kuvirt-guest: ready").count() >= 2).then_some(())
    })
    .await;

    vms.patch(
        "testvm",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    until("the VMI gone", Duration::from_secs(60), async || {
        vmis.get_opt("testvm").await.ok()?.is_none().then_some(())
    })
    .await;
    until(
        "the guest's poweroff",
        Duration::from_secs(60),
        async || {
            // One poweroff from the guest's own shutdown, one from Halted.
            (console(state.path())
                .matches("kuvirt-guest: poweroff")
                .count()
                >= 2)
                .then_some(())
        },
    )
    .await;
    until("QEMU gone", Duration::from_secs(60), async || {
        qemu_under(state.path()).is_empty().then_some(())
    })
    .await;
    // Both pods' sandboxes go with their launchers.
    until("the sandboxes gone", Duration::from_secs(30), async || {
        (!netns_exists(&first_netns) && sandbox_count(state.path()) == 0).then_some(())
    })
    .await;
    drop(server);
}

/// How many pod addresses the node agent holds (IPAM files).
fn sandbox_count(state: &Path) -> usize {
    SandboxConfig::new(state)
        .state_dir
        .join("ipam")
        .read_dir()
        .map(|dirs| {
            dirs.flatten()
                .filter_map(|d| d.path().read_dir().ok())
                .flatten()
                .flatten()
                .filter(|f| f.file_name().to_string_lossy().starts_with("10."))
                .count()
        })
        .unwrap_or(0)
}

/// A VM whose image cannot be had fails before its guest runs; the VM backs off (CrashLoopBackOff,
/// status.startFailure) instead of restarting it in a tight loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_cannot_start_backs_off() {
    let plane = Plane::new();
    let _server = plane.spawn();
    let vms: Api<VirtualMachine> = Api::namespaced(plane.client().await, "default");
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "broken"},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}, "memory": {"guest": "64Mi"}},
            "volumes": [{"name": "root", "containerDisk": {"image": "oci:/nonexistent/layout"}}]}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let status = until("CrashLoopBackOff", Duration::from_secs(60), async || {
        let s = vms.get("broken").await.ok()?.status?;
        (s.printable_status.as_ref()?.as_str() == "CrashLoopBackOff").then_some(s)
    })
    .await;
    let failure = status.start_failure.unwrap();
    assert!(failure.consecutive_fail_count.unwrap() >= 1);
    assert!(failure.retry_after_timestamp.is_some());
}

/// RerunOnFailure: QEMU killed → the VM runs again (a new VMI); the guest powering itself off →
/// the VM stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_on_failure_restarts_crashes_only() {
    let guest = demo_guest();
    let plane = Plane::new();
    let state = &plane.state;
    let _server = plane.spawn();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "testvm"},
        "spec": {"runStrategy": "RerunOnFailure", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]},
                       "memory": {"guest": "256Mi"}},
            "volumes": [{"name": "root", "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}}]}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let running = async |not: Option<String>| {
        until("a running VMI", Duration::from_secs(120), async || {
            let v = vmis.get_opt("testvm").await.ok()??;
            let ok =
                v.status.as_ref()?.phase.as_ref()?.as_str() == "Running" && v.metadata.uid != not;
            ok.then_some(v.metadata.uid.clone().unwrap())
        })
        .await
    };
    let first = running(None).await;
    until("the guest ready", Duration::from_secs(120), async || {
        console(state.path())
            .contains("kuvirt-guest: ready")
            .then_some(())
    })
    .await;

    // QEMU dies: a failure, so the VM runs again.
    for pid in qemu_under(state.path()) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let second = running(Some(first)).await;
    until(
        "the second guest ready",
        Duration::from_secs(120),
        async || (console(state.path()).matches("kuvirt-guest: ready").count() >= 2).then_some(()),
    )
    .await;

    // The guest powers off cleanly: RerunOnFailure leaves it down.
    let short: String = second
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let out = Command::new(KUVIRT)
        .args(["ctl", "--vm-dir"])
        .arg(state.path().join(format!("vms/default/testvm-{short}")))
        .arg("shutdown")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("Succeeded", Duration::from_secs(60), async || {
        let v = vmis.get_opt("testvm").await.ok()??;
        (v.status?.phase?.as_str() == "Succeeded").then_some(())
    })
    .await;
    until("VM Stopped", Duration::from_secs(30), async || {
        let s = vms.get("testvm").await.ok()?.status?;
        (s.printable_status?.as_str() == "Stopped").then_some(())
    })
    .await;
    // Stays down: the same finished VMI, no third boot, for a few of the controller's passes.
    let until_quiet = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until_quiet {
        let v = vmis.get("testvm").await.unwrap();
        assert_eq!(
            v.metadata.uid.as_deref(),
            Some(second.as_str()),
            "restarted after a clean poweroff"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        console(state.path())
            .matches("kuvirt-guest: booted")
            .count(),
        2
    );
}
