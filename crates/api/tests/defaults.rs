//! KubeVirt defaulting: what `default_vmi` / `default_vm` add, and what they leave alone.
#![allow(clippy::unwrap_used)]

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kuvirt_api::defaults::{default_vm, default_vmi, legacy_firmware_uuid};
use kuvirt_api::v1::*;
use kuvirt_api::{validate_vm, validate_vmi};
use serde_json::json;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap()
}

fn vmi(spec: serde_json::Value) -> VirtualMachineInstance {
    serde_json::from_value(json!({"metadata": {"name": "v1"}, "spec": spec})).unwrap()
}

fn q(s: &str) -> Option<Quantity> {
    Some(Quantity(s.into()))
}

#[test]
fn minimal_vmi_gets_kubevirt_defaults() {
    let mut v = vmi(json!({
        "domain": {"resources": {"requests": {"memory": "128Mi"}}, "devices": {}},
        "volumes": [{"name": "root", "containerDisk": {"image": "reg/img:1.0"}}],
    }));
    default_vmi(&mut v);

    assert_eq!(v.api_version.as_deref(), Some("kubevirt.io/v1"));
    assert_eq!(v.kind.as_deref(), Some("VirtualMachineInstance"));
    let s = &v.spec;
    assert_eq!(s.architecture.as_deref(), Some("amd64"));
    assert_eq!(s.domain.machine.as_ref().unwrap().type_, "q35");
    assert_eq!(s.termination_grace_period_seconds, Some(30));

    let cpu = s.domain.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.cores, cpu.sockets, cpu.threads),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(cpu.model.as_deref(), Some("host-model"));

    let mem = s.domain.memory.as_ref().unwrap();
    assert_eq!(mem.guest, q("128Mi"));

    // default network and interface
    assert_eq!(s.networks, vec![Network::default_pod()]);
    let iface = &s.domain.devices.interfaces[0];
    assert_eq!(iface.name, "default");
    assert_eq!(
        iface.binding_method(),
        Some(InterfaceBindingRef::Masquerade)
    );
    assert_eq!(iface.model.as_deref(), Some("virtio"));

    // a disk for the volume, with a disk target and bus virtio
    let disk = &s.domain.devices.disks[0];
    assert_eq!(disk.name, "root");
    assert_eq!(disk.disk.as_ref().unwrap().bus, Some(DiskBus::Virtio));

    // firmware UUID from the name, ACPI on
    let fw = s.domain.firmware.as_ref().unwrap();
    assert_eq!(
        fw.uuid.as_deref(),
        Some(legacy_firmware_uuid("v1").as_str())
    );
    assert_eq!(
        s.domain.features.as_ref().unwrap().acpi,
        Some(FeatureState::on())
    );

    // tagged image → IfNotPresent
    let cd = s.volumes[0].container_disk.as_ref().unwrap();
    assert_eq!(cd.image_pull_policy.as_deref(), Some("IfNotPresent"));

    // status as virt-api writes it on create
    let st = v.status.as_ref().unwrap();
    assert_eq!(st.memory.as_ref().unwrap().guest_at_boot, q("128Mi"));
    assert_eq!(st.current_cpu_topology.as_ref().unwrap().sockets, Some(1));

    validate_vmi(&v).unwrap();
}

#[test]
fn defaulting_is_idempotent() {
    let mut v: VirtualMachineInstance = serde_saphyr::from_str(&fixture("vmi.yaml")).unwrap();
    default_vmi(&mut v);
    let once = v.clone();
    default_vmi(&mut v);
    assert_eq!(v, once);
    validate_vmi(&v).unwrap();
}

#[test]
fn explicit_values_are_kept() {
    let mut v: VirtualMachineInstance = serde_saphyr::from_str(&fixture("vmi.yaml")).unwrap();
    let before = v.clone();
    default_vmi(&mut v);
    let (a, b) = (&before.spec, &v.spec);
    assert_eq!(a.networks, b.networks);
    assert_eq!(a.termination_grace_period_seconds, Some(0));
    assert_eq!(b.termination_grace_period_seconds, Some(0));
    assert_eq!(
        a.domain.firmware.as_ref().unwrap().uuid,
        b.domain.firmware.as_ref().unwrap().uuid
    );
    assert_eq!(
        b.domain.cpu.as_ref().unwrap().model.as_deref(),
        Some("host-passthrough")
    );
    assert_eq!(b.domain.cpu.as_ref().unwrap().cores, Some(2));
    assert_eq!(b.domain.devices.disks.len(), a.domain.devices.disks.len());
    assert_eq!(
        b.domain
            .devices
            .watchdog
            .as_ref()
            .unwrap()
            .i6300esb
            .as_ref()
            .unwrap()
            .action,
        Some(WatchdogAction::Poweroff)
    );
}

#[test]
fn disk_targets_and_buses() {
    let mut v = vmi(json!({
        "domain": {"devices": {"disks": [
            {"name": "a"},
            {"name": "b", "cdrom": {}},
            {"name": "c", "lun": {}},
            {"name": "d", "disk": {"bus": "sata"}},
        ]}, "memory": {"guest": "64Mi"}},
    }));
    default_vmi(&mut v);
    let disks = &v.spec.domain.devices.disks;
    assert_eq!(disks[0].disk.as_ref().unwrap().bus, Some(DiskBus::Virtio));
    let cd = disks[1].cdrom.as_ref().unwrap();
    assert_eq!(cd.bus, Some(DiskBus::Sata));
    assert_eq!(cd.readonly, Some(true));
    assert_eq!(cd.tray, Some(TrayState::Closed));
    assert_eq!(disks[2].lun.as_ref().unwrap().bus, Some(DiskBus::Scsi));
    assert_eq!(disks[3].disk.as_ref().unwrap().bus, Some(DiskBus::Sata));
    assert!(disks[1].disk.is_none() && disks[2].disk.is_none());
}

#[test]
fn memory_defaults_in_both_directions() {
    let mut from_limit =
        vmi(json!({"domain": {"resources": {"limits": {"memory": "1Gi"}}, "devices": {}}}));
    default_vmi(&mut from_limit);
    let d = &from_limit.spec.domain;
    assert_eq!(d.memory.as_ref().unwrap().guest, q("1Gi"));
    assert_eq!(
        d.resources.as_ref().unwrap().request("memory"),
        q("1Gi").as_ref()
    );

    let mut from_guest = vmi(json!({"domain": {"memory": {"guest": "256Mi"}, "devices": {}}}));
    default_vmi(&mut from_guest);
    let d = &from_guest.spec.domain;
    assert_eq!(
        d.resources.as_ref().unwrap().request("memory"),
        q("256Mi").as_ref()
    );

    let mut from_hugepages =
        vmi(json!({"domain": {"memory": {"hugepages": {"pageSize": "2Mi"}}, "devices": {}}}));
    default_vmi(&mut from_hugepages);
    assert_eq!(
        from_hugepages.spec.domain.memory.as_ref().unwrap().guest,
        q("2Mi")
    );
}

#[test]
fn cpu_topology_from_resources() {
    let mut v = vmi(
        json!({"domain": {"resources": {"limits": {"cpu": "3", "memory": "1Gi"}}, "devices": {}}}),
    );
    default_vmi(&mut v);
    let cpu = v.spec.domain.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.cores, cpu.sockets, cpu.threads),
        (Some(1), Some(3), Some(1))
    );
    // the request follows the limit
    assert_eq!(
        v.spec.domain.resources.as_ref().unwrap().request("cpu"),
        q("3").as_ref()
    );

    let mut v =
        vmi(json!({"domain": {"resources": {"requests": {"cpu": "1500m"}}, "devices": {}}}));
    default_vmi(&mut v);
    assert_eq!(v.spec.domain.cpu.as_ref().unwrap().sockets, Some(2));

    let mut v = vmi(json!({"domain": {"cpu": {"cores": 4}, "devices": {}}}));
    default_vmi(&mut v);
    let cpu = v.spec.domain.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.cores, cpu.sockets, cpu.threads),
        (Some(4), Some(1), Some(1))
    );
}

#[test]
fn no_default_network_when_given_or_disabled() {
    let mut v = vmi(json!({"domain": {"devices": {"autoattachPodInterface": false}}}));
    default_vmi(&mut v);
    assert!(v.spec.networks.is_empty() && v.spec.domain.devices.interfaces.is_empty());

    let mut v = vmi(json!({
        "domain": {"devices": {"interfaces": [{"name": "n", "bridge": {}}]}},
        "networks": [{"name": "n", "multus": {"networkName": "br"}}],
    }));
    default_vmi(&mut v);
    assert_eq!(v.spec.networks.len(), 1);
    assert_eq!(
        v.spec.domain.devices.interfaces[0].binding_method(),
        Some(InterfaceBindingRef::Bridge)
    );
}

#[test]
fn pull_policy_inputs_watchdog_probes_features() {
    let mut v = vmi(json!({
        "domain": {
            "devices": {
                "inputs": [{"name": "t"}],
                "watchdog": {"name": "w"},
            },
            "features": {"smm": {}, "apic": {}},
            "clock": {"timer": {"rtc": {}}},
        },
        "volumes": [
            {"name": "a", "containerDisk": {"image": "reg/img"}},
            {"name": "b", "containerDisk": {"image": "reg/img:latest"}},
            {"name": "c", "containerDisk": {"image": "reg/img@sha256:abc"}},
        ],
        "readinessProbe": {"tcpSocket": {"port": 22}},
    }));
    default_vmi(&mut v);
    let pol: Vec<_> = v
        .spec
        .volumes
        .iter()
        .map(|v| {
            v.container_disk
                .as_ref()
                .unwrap()
                .image_pull_policy
                .clone()
                .unwrap()
        })
        .collect();
    assert_eq!(pol, ["Always", "Always", "IfNotPresent"]);
    let input = &v.spec.domain.devices.inputs[0];
    assert_eq!(
        (input.bus.clone(), input.type_.clone()),
        (Some(InputBus::Usb), Some(InputType::Tablet))
    );
    let w = v.spec.domain.devices.watchdog.as_ref().unwrap();
    assert_eq!(
        w.i6300esb.as_ref().unwrap().action,
        Some(WatchdogAction::Reset)
    );
    let p = v.spec.readiness_probe.as_ref().unwrap();
    assert_eq!(
        (
            p.timeout_seconds,
            p.period_seconds,
            p.success_threshold,
            p.failure_threshold
        ),
        (Some(1), Some(10), Some(1), Some(3))
    );
    let f = v.spec.domain.features.as_ref().unwrap();
    assert_eq!(f.smm, Some(FeatureState::on()));
    assert_eq!(f.apic.as_ref().unwrap().enabled, Some(true));
    let rtc = v
        .spec
        .domain
        .clock
        .as_ref()
        .unwrap()
        .timer
        .as_ref()
        .unwrap()
        .rtc
        .as_ref()
        .unwrap();
    assert_eq!(rtc.enabled, Some(true));
}

#[test]
fn firmware_uuid_is_kubevirts_legacy_uuid() {
    // uuid.NewSHA1(uuid.MustParse("6a1a24a1-4061-4607-8bf4-a3963d0c5895"), []byte(name))
    let u = uuid::Uuid::parse_str(&legacy_firmware_uuid("testvm")).unwrap();
    assert_eq!(u.get_version_num(), 5);
    assert_eq!(
        legacy_firmware_uuid("testvm"),
        legacy_firmware_uuid("testvm")
    );
    assert_ne!(
        legacy_firmware_uuid("testvm"),
        legacy_firmware_uuid("testvm2")
    );
}

#[test]
fn vm_defaults() {
    let mut vm: VirtualMachine = serde_saphyr::from_str(&fixture("testvm.yaml")).unwrap();
    vm.spec.run_strategy = None;
    default_vm(&mut vm);
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Halted));
    assert_eq!(vm.api_version.as_deref(), Some("kubevirt.io/v1"));
    assert_eq!(vm.kind.as_deref(), Some("VirtualMachine"));
    let spec = &vm.spec.template.as_ref().unwrap().spec;
    assert_eq!(spec.domain.machine.as_ref().unwrap().type_, "q35");
    assert_eq!(
        spec.domain.firmware.as_ref().unwrap().uuid.as_deref(),
        Some(legacy_firmware_uuid("testvm").as_str())
    );
    assert_eq!(spec.domain.memory.as_ref().unwrap().guest, q("64M"));
    validate_vm(&vm).unwrap();

    // the VMI built from the defaulted VM is already defaulted, and keeps the same UUID
    let mut vmi = VirtualMachineInstance::from_vm(&vm);
    let built = vmi.spec.clone();
    default_vmi(&mut vmi);
    assert_eq!(vmi.spec, built);
    validate_vmi(&vmi).unwrap();
}

#[test]
fn running_flag_is_not_overridden() {
    let mut vm = VirtualMachine {
        spec: VirtualMachineSpec {
            running: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    default_vm(&mut vm);
    assert_eq!(vm.spec.run_strategy, None);
    assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Always);
    vm.spec.running = Some(false);
    assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Halted);
    vm.spec.running = None;
    assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Halted);
    vm.spec.run_strategy = Some(RunStrategy::Manual);
    assert_eq!(vm.spec.effective_run_strategy(), RunStrategy::Manual);
}
