//! `kuvirt create vm`, `kuvirt rename vm` and `kuvirt expose` against a real `kuvirt server`:
//! printed manifests apply with kubectl and round-trip; renames keep the spec and pin the guest's
//! identity, and refuse running VMs and taken names without changing anything; Services select
//! the launcher pod. One test boots the demo guest through a rename and checks the guest still
//! sees the same MAC and the same hostDisk file.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::plane::{Plane, ServerProc, serial_log, until};
use common::{KUVIRT, demo_guest, qemu_under};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{ListParams, PostParams};
use kuvirt_api::defaults::legacy_firmware_uuid;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use kuvirt_launcher::convert::generated_mac;
use serde_json::{Value, json};

/// `kuvirt server` without a node agent (the tests that run no guests), and its process.
fn control_plane() -> (Plane, ServerProc) {
    let plane = Plane::new();
    let server = plane.spawn_with(&["--no-node-agent"]);
    (plane, server)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and gives stdout.
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts exit code 1 with one line on stderr and gives that line.
fn fails(o: Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "not one line: {err}");
    err.trim_end().to_owned()
}

/// `kuvirt create vm ARGS` (no server needed).
fn create_vm(args: &[&str]) -> String {
    ok(Command::new(KUVIRT)
        .args(["create", "vm"])
        .args(args)
        .output()
        .unwrap())
}

fn vm(v: Value) -> VirtualMachine {
    serde_json::from_value(v).unwrap()
}

fn to_value<T: k8s_openapi::serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// The machine type is the one default the server stores on a VM.
fn without_machine(mut spec: Value) -> Value {
    if let Some(domain) = spec
        .pointer_mut("/template/spec/domain")
        .and_then(Value::as_object_mut)
    {
        domain.remove("machine");
    }
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_manifests_apply_with_kubectl_and_round_trip() {
    let (plane, _server) = control_plane();
    let vms: Api<VirtualMachine> = Api::namespaced(plane.client().await, "default");

    // virtctl's defaults alone: a generated name, runStrategy Always, 512Mi, grace period 180.
    let printed = create_vm(&[]);
    let manifest: Value = serde_saphyr::from_str(&printed).unwrap();
    let name = manifest["metadata"]["name"].as_str().unwrap().to_owned();
    assert!(name.starts_with("vm-") && name.len() == 8, "{name}");
    let out = ok(plane.kubectl_apply(&printed));
    assert_eq!(
        out.trim(),
        format!("virtualmachine.kubevirt.io/{name} created")
    );
    let stored = vms.get(&name).await.unwrap();
    assert_eq!(
        without_machine(to_value(&stored.spec)),
        manifest["spec"],
        "{printed}"
    );
    assert_eq!(stored.spec.run_strategy.unwrap().as_str(), "Always");

    // Every flag we carry over, YAML and JSON.
    let flags = [
        "--name",
        "made",
        "--run-strategy",
        "manual",
        "--termination-grace-period",
        "7",
        "--memory",
        "256Mi",
        "--volume-containerdisk",
        "src:oci:/nonexistent/layout:latest",
        "--volume-containerdisk",
        "name:boot,src:quay.io/containerdisks/fedora:41,bootorder:1",
        "--user",
        "fedora",
        "--ssh-key",
        "ssh-ed25519 AAAAC3Nza a@b",
    ];
    let printed = create_vm(&flags);
    let manifest: Value = serde_saphyr::from_str(&printed).unwrap();
    let json_printed = create_vm(&[&flags[..], &["-o", "json"]].concat());
    let json_manifest: Value = serde_json::from_str(&json_printed).unwrap();
    assert_eq!(manifest, json_manifest);
    assert_eq!(
        manifest["spec"]["template"]["spec"]["volumes"],
        json!([
            {"name": "made-containerdisk-0", "containerDisk": {"image": "oci:/nonexistent/layout:latest"}},
            {"name": "boot", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}},
            {"name": "cloudinitdisk", "cloudInitNoCloud": {"userData":
                "#cloud-config\nuser: fedora\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3Nza a@b"}}
        ])
    );
    let out = ok(plane.kubectl_apply(&printed));
    assert_eq!(out.trim(), "virtualmachine.kubevirt.io/made created");
    let stored = vms.get("made").await.unwrap();
    assert_eq!(without_machine(to_value(&stored.spec)), manifest["spec"]);
    assert_eq!(stored.spec.run_strategy.unwrap().as_str(), "Manual");
    // The JSON form of the same VM is the same object: kubectl changes nothing.
    let out = ok(plane.kubectl_apply(&json_printed));
    assert_eq!(out.trim(), "virtualmachine.kubevirt.io/made unchanged");

    // Bad flags: one line, exit 1.
    let o = Command::new(KUVIRT)
        .args(["create", "vm", "--volume-containerdisk", "name:x"])
        .output()
        .unwrap();
    assert_eq!(
        fails(o),
        "error: failed to parse \"--volume-containerdisk\" flag: src must be specified"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_of_a_stopped_vm_keeps_its_spec_and_identity() {
    let (plane, _server) = control_plane();
    let vms: Api<VirtualMachine> = Api::namespaced(plane.client().await, "default");
    let old = vms
        .create(
            &PostParams::default(),
            &vm(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "metadata": {"name": "old", "labels": {"team": "a"}, "annotations": {"note": "kept"}},
                "spec": {"runStrategy": "Halted", "template": {
                    "metadata": {"labels": {"kubevirt.io/domain": "old"}},
                    "spec": {
                        "domain": {"devices": {
                            "disks": [{"name": "root", "disk": {"bus": "virtio"}}, {"name": "data", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}]},
                            "memory": {"guest": "128Mi"}},
                        "networks": [{"name": "default", "pod": {}}],
                        "volumes": [
                            {"name": "root", "containerDisk": {"image": "oci:/nonexistent:latest"}},
                            {"name": "data", "hostDisk": {"path": "/var/tmp/kuvirt-rename-test.img", "type": "DiskOrCreate", "capacity": "16Mi"}}]}}}
            })),
        )
        .await
        .unwrap();

    // --dry-run prints the new VM and changes nothing.
    let printed = ok(plane.kuvirt(&["rename", "vm", "old", "new", "--dry-run"]));
    let dry: Value = serde_saphyr::from_str(&printed).unwrap();
    assert_eq!(dry["metadata"]["name"], "new");
    assert!(vms.get_opt("new").await.unwrap().is_none());
    assert!(vms.get_opt("old").await.unwrap().is_some());

    let out = ok(plane.kuvirt(&["rename", "vm", "old", "new"]));
    assert_eq!(out.trim(), "VM old was renamed to new");
    let new = vms.get("new").await.unwrap();
    assert_ne!(new.metadata.uid, old.metadata.uid);
    assert_eq!(new.metadata.labels, old.metadata.labels);
    assert_eq!(
        new.metadata
            .annotations
            .as_ref()
            .unwrap()
            .get("note")
            .unwrap(),
        "kept"
    );
    assert!(new.metadata.owner_references.is_none());

    // The same spec, plus the MAC and firmware UUID the old name gave the guest.
    let mut expected = to_value(&old.spec);
    expected["template"]["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"] =
        json!(generated_mac("default", "old", "default"));
    expected["template"]["spec"]["domain"]["firmware"] =
        json!({"uuid": legacy_firmware_uuid("old")});
    assert_eq!(to_value(&new.spec), expected);
    assert_eq!(to_value(&dry["spec"]), expected);

    until("the old VM gone", Duration::from_secs(30), async || {
        vms.get_opt("old").await.unwrap().is_none().then_some(())
    })
    .await;

    // A missing VM: the server's NotFound, one line.
    let err = fails(plane.kuvirt(&["rename", "vm", "old", "other"]));
    assert!(err.starts_with("Error from server (NotFound)"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_refuses_a_running_vm_and_a_taken_name() {
    let (plane, _server) = control_plane();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let make = |name: &str, strategy: &str| {
        vm(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name},
            "spec": {"runStrategy": strategy, "template": {"spec": {
                "domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
        }))
    };
    // Manual: the controller neither starts nor stops it, so the VMI made here stays.
    let busy = vms
        .create(&PostParams::default(), &make("busy", "Manual"))
        .await
        .unwrap();
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "busy"},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}
    }))
    .unwrap();
    vmis.create(&PostParams::default(), &vmi).await.unwrap();
    let err = fails(plane.kuvirt(&["rename", "vm", "busy", "calm"]));
    assert!(err.contains("not stopped"), "{err}");
    assert!(vms.get_opt("calm").await.unwrap().is_none());
    let still = vms.get("busy").await.unwrap();
    assert_eq!(still.metadata.uid, busy.metadata.uid);
    assert_eq!(still.spec, busy.spec);
    assert!(vmis.get_opt("busy").await.unwrap().is_some());

    // The new name is taken: the server's AlreadyExists, and both VMs stay as they were.
    let a = vms
        .create(&PostParams::default(), &make("a", "Halted"))
        .await
        .unwrap();
    let b = vms
        .create(&PostParams::default(), &make("b", "Halted"))
        .await
        .unwrap();
    let err = fails(plane.kuvirt(&["rename", "vm", "a", "b"]));
    assert!(
        err.starts_with("Error from server (AlreadyExists)"),
        "{err}"
    );
    for before in [a, b] {
        let name = before.metadata.name.clone().unwrap();
        let now = vms.get(&name).await.unwrap();
        assert_eq!(now.metadata.uid, before.metadata.uid, "{name}");
        assert_eq!(now.spec, before.spec, "{name}");
    }
    let err = fails(plane.kuvirt(&["rename", "vm", "a", "a"]));
    assert!(err.starts_with("error: "), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_creates_a_service_selecting_the_launcher_pod() {
    let (plane, _server) = control_plane();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    // Always: the controllers make its VMI and launcher pod (which stays unscheduled: no node).
    let web = vms
        .create(
            &PostParams::default(),
            &vm(json!({
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "web"},
                "spec": {"runStrategy": "Always", "template": {"spec": {
                    "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {},
                        "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}]},
                        "memory": {"guest": "64Mi"}},
                    "networks": [{"name": "default", "pod": {}}]}}}
            })),
        )
        .await
        .unwrap();

    let out = ok(plane.kuvirt(&[
        "expose",
        "vm",
        "web",
        "--port",
        "8080",
        "--target-port",
        "80",
        "--name",
        "web-svc",
        "--type",
        "NodePort",
    ]));
    let svc = svcs.get("web-svc").await.unwrap();
    let spec = to_value(svc.spec.as_ref().unwrap());
    assert_eq!(spec["type"], "NodePort");
    let node_port = spec["ports"][0]["nodePort"].as_u64().unwrap();
    assert!((30000..=32767).contains(&node_port), "{spec}");
    assert_eq!(
        spec["ports"],
        json!([{"port": 8080, "targetPort": 80, "protocol": "TCP", "nodePort": node_port}])
    );
    // No node runs the VM yet: where it will answer.
    assert_eq!(
        out.trim(),
        format!(
            "Service web-svc successfully created for vm web; reachable at port {node_port} of its node"
        )
    );
    let owner = &svc.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("VirtualMachine", "web")
    );
    assert_eq!(Some(&owner.uid), web.metadata.uid.as_ref());

    // The selector finds exactly the VMI's launcher pod.
    let selector = svc
        .spec
        .unwrap()
        .selector
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let vmi_uid = until("the VMI", Duration::from_secs(30), async || {
        vmis.get_opt("web").await.ok()??.metadata.uid
    })
    .await;
    let selected = until("the launcher pod", Duration::from_secs(30), async || {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        (!list.items.is_empty()).then_some(list.items)
    })
    .await;
    assert_eq!(selected.len(), 1);
    let pod_owner = &selected[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(pod_owner.uid, vmi_uid);

    // No --port: the pod-network interface's ports; the Service is named after the VMI.
    let out = ok(plane.kuvirt(&["expose", "vmi", "web"]));
    assert_eq!(out.trim(), "Service web successfully created for vmi web");
    let svc = svcs.get("web").await.unwrap();
    let spec = to_value(svc.spec.as_ref().unwrap());
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(
        spec["ports"],
        json!([{"name": "port-1", "port": 80, "targetPort": 80, "protocol": "TCP"},
               {"name": "port-2", "port": 53, "targetPort": 53, "protocol": "UDP"}])
    );
    assert_eq!(spec["selector"]["vm.kubevirt.io/name"], "web");
    let owner = &svc.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("VirtualMachineInstance", vmi_uid.as_str())
    );

    // Errors are one line: a taken name, a missing VM, no port at all, a bad type.
    let err = fails(plane.kuvirt(&["expose", "vm", "web", "--port", "1", "--name", "web-svc"]));
    assert!(
        err.starts_with("Error from server (AlreadyExists)"),
        "{err}"
    );
    let err = fails(plane.kuvirt(&["expose", "vm", "nope", "--port", "1"]));
    assert!(err.starts_with("Error from server (NotFound)"), "{err}");
    vms.create(
        &PostParams::default(),
        &vm(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "quiet"},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
        })),
    )
    .await
    .unwrap();
    let err = fails(plane.kuvirt(&["expose", "vm", "quiet"]));
    assert_eq!(
        err,
        "error: couldn't find port via --port flag or introspection"
    );
    let err = fails(plane.kuvirt(&["expose", "vm", "quiet", "--port", "1", "--type", "Fancy"]));
    assert_eq!(err, "error: unknown service type: Fancy");
    assert!(svcs.get_opt("quiet").await.unwrap().is_none());
}

/// The console log of the VMIs of VM `name` in `default`.
fn console(state: &Path, name: &str) -> String {
    serial_log(state, "default", name)
}

/// The `mac=` of the guest's first `dhcp iface=eth0` line.
fn dhcp_mac(log: &str) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains("kuvirt-guest: dhcp iface=eth0 ") && l.contains(" mac="))?;
    let mac = line.split(" mac=").nth(1)?.split_whitespace().next()?;
    Some(mac.trim_end_matches('\r').to_owned())
}

/// A VM with a hostDisk is stopped, renamed and started: the guest sees the MAC it had, QEMU gets
/// the old firmware UUID, and the hostDisk is the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_guest_keeps_its_mac_and_host_disk() {
    let guest = demo_guest();
    let plane = Plane::new();
    let _server = plane.spawn();
    let state = plane.state.path().to_path_buf();
    let vms: Api<VirtualMachine> = Api::namespaced(plane.client().await, "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(plane.client().await, "default");
    let disk = state.join("data.img");
    vms.create(
        &PostParams::default(),
        &vm(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": "before"},
            "spec": {"runStrategy": "Always", "template": {"spec": {
                "domain": {"devices": {"disks": [
                    {"name": "root", "disk": {"bus": "virtio"}},
                    {"name": "data", "disk": {"bus": "virtio"}}]},
                    "memory": {"guest": "256Mi"}},
                "terminationGracePeriodSeconds": 30,
                "volumes": [
                    {"name": "root", "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}},
                    {"name": "data", "hostDisk": {"path": disk.display().to_string(), "type": "DiskOrCreate", "capacity": "16Mi"}}]}}}
        })),
    )
    .await
    .unwrap();

    let boot = Duration::from_secs(180);
    let mac = until("the first guest's DHCP lease", boot, async || {
        dhcp_mac(&console(&state, "before"))
    })
    .await;
    assert_eq!(mac, generated_mac("default", "before", "default"));
    let file = std::fs::metadata(&disk).unwrap();
    assert_eq!(file.len(), 16 << 20);

    ok(plane.kuvirt(&["stop", "before"]));
    until("the VMI gone", Duration::from_secs(90), async || {
        vmis.get_opt("before").await.ok()?.is_none().then_some(())
    })
    .await;
    until("QEMU gone", Duration::from_secs(60), async || {
        qemu_under(&state).is_empty().then_some(())
    })
    .await;

    let out = ok(plane.kuvirt(&["rename", "vm", "before", "after"]));
    assert_eq!(out.trim(), "VM before was renamed to after");
    assert!(
        vms.get_opt("before")
            .await
            .unwrap()
            .is_none_or(|v| v.metadata.deletion_timestamp.is_some())
    );
    ok(plane.kuvirt(&["start", "after"]));

    let again = until("the renamed guest's DHCP lease", boot, async || {
        dhcp_mac(&console(&state, "after"))
    })
    .await;
    assert_eq!(again, mac, "the guest's MAC changed with the name");
    let qemu = qemu_under(&state);
    assert_eq!(qemu.len(), 1);
    let cmdline =
        String::from_utf8_lossy(&std::fs::read(format!("/proc/{}/cmdline", qemu[0])).unwrap())
            .replace('\0', " ");
    assert!(
        cmdline.contains(&legacy_firmware_uuid("before")),
        "{cmdline}"
    );
    assert!(cmdline.contains(&disk.display().to_string()), "{cmdline}");
    let same = std::fs::metadata(&disk).unwrap();
    assert_eq!(
        (same.dev(), same.ino()),
        (file.dev(), file.ino()),
        "the hostDisk is another file"
    );

    ok(plane.kuvirt(&["stop", "after"]));
    until("QEMU gone", Duration::from_secs(90), async || {
        qemu_under(&state).is_empty().then_some(())
    })
    .await;
}
