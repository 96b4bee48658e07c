//! The whole path on one host: `kuvirt server` (API server, controllers, node agent) turns
//! VirtualMachines into launcher pods, launcher processes and QEMU guests; the guests' own consoles
//! say they booted; a kill -9 of the server leaves them running and the restarted server adopts
//! them; stopping a VM powers its guest off through ACPI.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::plane::{Plane, serial_log, until};
use common::*;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use kuvirt_handler::sandbox::SandboxConfig;

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
/// The pod's network namespace on `plane`'s pod network.
fn pod_netns(plane: &Plane, pod_uid: &str) -> String {
    SandboxConfig {
        netns_prefix: plane.net.name.clone(),
        ..SandboxConfig::new("/")
    }
    .netns_name(pod_uid)
    .unwrap()
}

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// The console log of the VMIs of VM `name` in `default`.
fn console(state: &Path, name: &str) -> String {
    serial_log(state, "default", name)
}

fn count(log: &str, marker: &str) -> usize {
    log.matches(marker).count()
}

/// Launcher processes of this node's VMs.
fn launchers(state: &Path) -> usize {
    let needle = state.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" launcher ") && c.contains(&needle))
        .count()
}

/// A small demo-guest VM on the pod network with a cloud-init hostname (`<name>-host`).
fn demo_vm(guest: &Path, name: &str, run_strategy: &str) -> VirtualMachine {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": run_strategy, "template": {"spec": {
            "domain": {"devices": {
                "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}},
                          {"name": "cloudinitdisk", "disk": {"bus": "virtio"}}],
                "interfaces": [{"name": "default", "masquerade": {}}]},
                "resources": {"requests": {"memory": "128Mi"}}},
            "networks": [{"name": "default", "pod": {}}],
            "terminationGracePeriodSeconds": 30,
            "volumes": [
                {"name": "containerdisk", "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}},
                {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData": format!("#cloud-config\nhostname: {name}-host\n")}}
            ]}}}
    }))
    .unwrap()
}

/// The node agent's events on the VMI with `uid`: (reason, message), oldest first.
async fn handler_events(client: &kube::Client, uid: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let mut list: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .filter(|e| e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("virt-handler"))
        .collect();
    list.sort_by_key(|e| {
        e.metadata
            .resource_version
            .as_ref()
            .and_then(|r| r.parse::<u64>().ok())
    });
    for e in &list {
        assert_eq!(
            e.involved_object.kind.as_deref(),
            Some("VirtualMachineInstance")
        );
        assert_eq!(
            e.source.as_ref().and_then(|s| s.host.as_deref()),
            Some("kuvirt-test")
        );
    }
    list.into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

fn has(events: &[(String, String)], reason: &str) -> usize {
    events.iter().filter(|(r, _)| r == reason).count()
}

fn halt() -> Patch<serde_json::Value> {
    Patch::Merge(serde_json::json!({"spec": {"runStrategy": "Halted"}}))
}

/// What a running VM looks like from outside: enough to tell it was not restarted.
#[derive(Debug, PartialEq)]
struct Seen {
    vmi_uid: String,
    pod_ip: String,
    netns: String,
}

const NAMES: [&str; 3] = ["testvm", "vm-b", "vm-c"];

/// The issue's must-show: kill -9 of `kuvirt server` with three VMs running, restart: the same
/// QEMU processes, every guest keeps counting without booting again, the VMIs stay Running with
/// the same UIDs, the VMs reconverge to Ready, the pods keep their addresses. Around it: the
/// sandbox and interface status of a VM, a guest that powers itself off (runStrategy Always starts
/// a new VMI), and Halted powering the guests off through ACPI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_vms_survive_a_kill_9_of_the_server() {
    let guest = demo_guest();
    let plane = Plane::new();
    let state = plane.state.path();
    let mut server = plane.spawn();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    for name in NAMES {
        vms.create(&PostParams::default(), &demo_vm(&guest, name, "Always"))
            .await
            .unwrap();
    }

    let mut seen = BTreeMap::new();
    for name in NAMES {
        let vmi = until(
            &format!("{name}'s VMI Running"),
            Duration::from_secs(120),
            async || {
                let v = vmis.get_opt(name).await.ok()??;
                (v.status.as_ref()?.phase.as_ref()?.as_str() == "Running").then_some(v)
            },
        )
        .await;
        let status = vmi.status.unwrap();
        assert_eq!(status.node_name.as_deref(), Some("kuvirt-test"));
        let vmi_uid = vmi.metadata.uid.unwrap();
        let pod = launcher_pod(&client, &vmi_uid).await.unwrap();
        // The launcher runs in a pod sandbox: its own namespace with an address from the node's
        // pod CIDR, which the pod and the VMI's pod-network interface report.
        let pod_ip: std::net::Ipv4Addr = pod
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            pod_ip.to_string().starts_with(&plane.net.prefix()),
            "pod IP {pod_ip} not in {}",
            plane.net.cidr
        );
        assert_ne!(
            pod.status.as_ref().unwrap().host_ip.as_deref(),
            Some(pod_ip.to_string().as_str())
        );
        assert_eq!(status.interfaces.len(), 1, "{:?}", status.interfaces);
        let iface = &status.interfaces[0];
        assert_eq!(iface.name.as_deref(), Some("default"));
        assert_eq!(
            iface.ip_address.as_deref(),
            Some(pod_ip.to_string().as_str())
        );
        // Masquerade (the default binding) NATs the pod's IPv6 address too.
        let pod_ip6 = kuvirt_handler::sandbox::ipam::ipv6_of(pod_ip);
        assert_eq!(
            iface.ip_addresses,
            vec![pod_ip.to_string(), pod_ip6.to_string()]
        );
        assert_eq!(iface.info_source.as_deref(), Some("domain"));
        assert_eq!(iface.mac.as_deref().map(str::len), Some(17));
        let netns = pod_netns(&plane, pod.metadata.uid.as_deref().unwrap());
        let out = Command::new("ip")
            .args(["-n", &netns, "-4", "-br", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("{pod_ip}/24")),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.insert(
            name,
            Seen {
                vmi_uid,
                pod_ip: pod_ip.to_string(),
                netns,
            },
        );
    }
    for name in NAMES {
        until(
            &format!("{name}'s boot"),
            Duration::from_secs(120),
            async || {
                console(state, name)
                    .contains("kuvirt-guest: ready")
                    .then_some(())
            },
        )
        .await;
        let log = console(state, name);
        assert!(
            log.contains(&format!("kuvirt-guest: hostname={name}-host")),
            "{log}"
        );
    }
    // The node agent recorded the start on the VMI, as virt-handler does.
    let events = handler_events(&client, &seen["testvm"].vmi_uid).await;
    assert_eq!(has(&events, "Created"), 1, "{events:?}");
    assert!(
        events.contains(&("Started".into(), "VirtualMachineInstance started.".into())),
        "{events:?}"
    );
    let all: Api<Event> = Api::namespaced(client.clone(), "default");
    let started = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|e| {
            e.reason.as_deref() == Some("Started")
                && e.involved_object.uid.as_deref() == Some(seen["testvm"].vmi_uid.as_str())
        })
        .unwrap();
    assert!(started.involved_object.resource_version.is_some());
    for name in NAMES {
        until(
            &format!("{name} Running and Ready"),
            Duration::from_secs(30),
            async || {
                let s = vms.get(name).await.ok()?.status?;
                (s.printable_status?.as_str() == "Running" && s.ready == Some(true)).then_some(())
            },
        )
        .await;
    }

    // kill -9 of the whole control plane and its node agent; then the same server again.
    let mut qemu = qemu_under(state);
    qemu.sort_unstable();
    assert_eq!(qemu.len(), 3, "one QEMU per VM");
    let before: BTreeMap<_, _> = NAMES
        .iter()
        .map(|n| (*n, count(&console(state, n), "kuvirt-guest: heartbeat")))
        .collect();
    drop(server);
    server = plane.spawn();
    // A few guest seconds after the restart: never a second launcher, every guest still counting.
    until(
        "every guest still counting",
        Duration::from_secs(90),
        async || {
            assert!(
                launchers(state) <= 3,
                "a second launcher was started for a VM"
            );
            NAMES
                .iter()
                .all(|n| count(&console(state, n), "kuvirt-guest: heartbeat") > before[n] + 3)
                .then_some(())
        },
    )
    .await;
    let mut again = qemu_under(state);
    again.sort_unstable();
    assert_eq!(again, qemu, "QEMU was restarted");
    for name in NAMES {
        assert_eq!(
            count(&console(state, name), "kuvirt-guest: booted"),
            1,
            "{name} booted again"
        );
        // Status reconverges from the adopted launchers; nothing was replaced.
        until(
            &format!("{name} Ready again"),
            Duration::from_secs(60),
            async || {
                let vmi = vmis.get(name).await.ok()?;
                let uid = vmi.metadata.uid.clone()?;
                assert_eq!(uid, seen[name].vmi_uid, "{name}'s VMI was replaced");
                let running = vmi.status?.phase?.as_str() == "Running";
                let s = vms.get(name).await.ok()?.status?;
                let ready = s.printable_status?.as_str() == "Running" && s.ready == Some(true);
                let pod = launcher_pod(&client, &uid).await?;
                let now = Seen {
                    vmi_uid: uid,
                    pod_ip: pod.status?.pod_ip?,
                    netns: pod_netns(&plane, pod.metadata.uid.as_deref()?),
                };
                assert_eq!(now, seen[name], "{name}'s pod changed");
                (running && ready).then_some(())
            },
        )
        .await;
        assert!(
            netns_exists(&seen[name].netns),
            "{name}'s sandbox was removed"
        );
        // Adopted, not started: no second Created or Started.
        let events = handler_events(&client, &seen[name].vmi_uid).await;
        assert_eq!(
            (has(&events, "Created"), has(&events, "Started")),
            (1, 1),
            "{name}: {events:?}"
        );
    }

    // Pause and unpause through the API: the agent sees it and records both.
    for (verb, reason) in [("pause", "Paused"), ("unpause", "Resumed")] {
        let out = plane.kuvirt(&[verb, "vmi", "vm-b"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        until(
            &format!("a {reason} event"),
            Duration::from_secs(30),
            async || {
                let events = handler_events(&client, &seen["vm-b"].vmi_uid).await;
                (has(&events, reason) == 1).then_some(())
            },
        )
        .await;
    }

    // Two guests go (Halted: ACPI through their launchers); the third powers itself off and
    // runStrategy Always starts a new VMI for it.
    for name in &NAMES[1..] {
        vms.patch(name, &PatchParams::default(), &halt())
            .await
            .unwrap();
    }
    let first_uid = seen["testvm"].vmi_uid.clone();
    let short: String = first_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    let out = Command::new(KUVIRT)
        .args(["ctl", "--vm-dir"])
        .arg(state.join(format!("vms/default/testvm-{short}")))
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
        (count(&console(state, "testvm"), "kuvirt-guest: ready") >= 2).then_some(())
    })
    .await;
    let events = handler_events(&client, &first_uid).await;
    assert!(
        events.contains(&(
            "Stopped".into(),
            "The VirtualMachineInstance was shut down.".into()
        )),
        "{events:?}"
    );

    vms.patch("testvm", &PatchParams::default(), &halt())
        .await
        .unwrap();
    for name in NAMES {
        until(
            &format!("{name}'s VMI gone"),
            Duration::from_secs(60),
            async || vmis.get_opt(name).await.ok()?.is_none().then_some(()),
        )
        .await;
    }
    // Halted: the agent signalled the shutdown and saw the guest go.
    for name in &NAMES[1..] {
        let events = until(
            &format!("{name}'s Stopped event"),
            Duration::from_secs(30),
            async || {
                let events = handler_events(&client, &seen[*name].vmi_uid).await;
                (has(&events, "Stopped") == 1).then_some(events)
            },
        )
        .await;
        assert_eq!(has(&events, "ShuttingDown"), 1, "{events:?}");
        assert!(events.contains(&("ShuttingDown".into(), "Signaled Graceful Shutdown".into())));
    }
    until(
        "the guests' poweroff",
        Duration::from_secs(60),
        async || {
            // testvm: one poweroff from the guest's own shutdown, one from Halted.
            let offs = |n: &str| count(&console(state, n), "kuvirt-guest: poweroff");
            (offs("testvm") >= 2 && offs("vm-b") >= 1 && offs("vm-c") >= 1).then_some(())
        },
    )
    .await;
    until("QEMU gone", Duration::from_secs(60), async || {
        qemu_under(state).is_empty().then_some(())
    })
    .await;
    // Every pod's sandbox goes with its launcher.
    until("the sandboxes gone", Duration::from_secs(30), async || {
        let gone = seen.values().all(|s| !netns_exists(&s.netns));
        (gone && sandbox_count(state) == 0).then_some(())
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
            "volumes": [{"name": "root", "hostDisk": {"path": "/nonexistent/kuvirt/root.img", "type": "Disk"}}]}}}
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

/// A VM its launcher cannot prepare (a hostDisk that is not there): the launcher's error reaches
/// the VMI (Synchronized=False, as virt-handler reports it) and the VM's Failure condition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launcher_error_reaches_the_vm() {
    let guest = demo_guest();
    let plane = Plane::new();
    let _server = plane.spawn();
    let vms: Api<VirtualMachine> = Api::namespaced(plane.client().await, "default");
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "nodisk"},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}},
                                              {"name": "data", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "128Mi"}}},
            "volumes": [
                {"name": "root", "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}},
                {"name": "data", "hostDisk": {"path": "/nonexistent/kuvirt/data.img", "type": "Disk"}}]}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let message = until(
        "the VM's Failure condition",
        Duration::from_secs(90),
        async || {
            let s = vms.get("nodisk").await.ok()?.status?;
            s.conditions
                .into_iter()
                .find(|c| c.type_.as_str() == "Failure")?
                .message
        },
    )
    .await;
    assert!(
        message.contains("spec.volumes[1]") && message.contains("/nonexistent/kuvirt/data.img"),
        "{message}"
    );
    common::plane::halt(&vms, &["nodisk"], plane.state.path()).await;
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
        console(state.path(), "testvm")
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
        async || {
            (console(state.path(), "testvm")
                .matches("kuvirt-guest: ready")
                .count()
                >= 2)
                .then_some(())
        },
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
        count(&console(state.path(), "testvm"), "kuvirt-guest: booted"),
        2
    );
}
