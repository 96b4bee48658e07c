//! YAML/JSON round trips: KubeVirt's example objects and fields we do not model come back out
//! unchanged; typed access sees the modelled fields.
#![allow(clippy::unwrap_used)]

use k8s_openapi::{Metadata, Resource};
use kuvirt_api::v1::*;
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap()
}

/// Parses `yaml` as `T`, writes it back as YAML and JSON, and checks both equal the input as
/// untyped JSON.
fn assert_roundtrip<T>(yaml: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let untyped: Value = serde_saphyr::from_str(yaml).unwrap();
    let typed: T = serde_saphyr::from_str(yaml).unwrap();
    let as_json = serde_json::to_value(&typed).unwrap();
    assert_eq!(as_json, untyped, "typed → JSON differs from the input");

    let yaml_out = serde_saphyr::to_string(&typed).unwrap();
    let again: Value = serde_saphyr::from_str(&yaml_out).unwrap();
    assert_eq!(
        again, untyped,
        "typed → YAML differs from the input:\n{yaml_out}"
    );
    let typed_again: T = serde_saphyr::from_str(&yaml_out).unwrap();
    assert_eq!(typed_again, typed);

    let from_json: T = serde_json::from_value(untyped).unwrap();
    assert_eq!(from_json, typed, "JSON and YAML parse differently");
    typed
}

#[test]
fn testvm_roundtrips_and_reads() {
    let vm: VirtualMachine = assert_roundtrip(&fixture("testvm.yaml"));
    assert_eq!(vm.metadata.name.as_deref(), Some("testvm"));
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Halted));
    let t = vm.spec.template.as_ref().unwrap();
    assert_eq!(
        t.metadata.labels.as_ref().unwrap()["kubevirt.io/domain"],
        "testvm"
    );
    let spec = &t.spec;
    let disks = &spec.domain.devices.disks;
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0].name, "containerdisk");
    assert_eq!(disks[0].bus(), Some(&DiskBus::Virtio));
    assert!(matches!(disks[1].device(), Some(DiskDeviceRef::Disk(_))));
    let iface = &spec.domain.devices.interfaces[0];
    assert_eq!(
        iface.binding_method(),
        Some(InterfaceBindingRef::Masquerade)
    );
    assert!(spec.networks[0].pod.is_some());
    assert_eq!(
        spec.domain
            .resources
            .as_ref()
            .unwrap()
            .request("memory")
            .unwrap()
            .0,
        "64M"
    );
    match spec.volumes[0].source() {
        Some(VolumeSourceRef::ContainerDisk(cd)) => {
            assert_eq!(cd.image, "quay.io/kubevirt/cirros-container-disk-demo")
        }
        other => panic!("unexpected source {other:?}"),
    }
    let ci = spec.volumes[1].cloud_init_no_cloud.as_ref().unwrap();
    assert_eq!(ci.user_data_base64.as_deref(), Some("SGkuXG4="));
}

#[test]
fn vmi_roundtrips_and_reads() {
    let vmi: VirtualMachineInstance = assert_roundtrip(&fixture("vmi.yaml"));
    let d = &vmi.spec.domain;
    let cpu = d.cpu.as_ref().unwrap();
    assert_eq!(
        (cpu.cores, cpu.sockets, cpu.threads),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(cpu.dedicated_cpu_placement, Some(false));
    let fw = d.firmware.as_ref().unwrap();
    let efi = fw.bootloader.as_ref().unwrap().efi.as_ref().unwrap();
    assert!(efi.secure_boot_enabled());
    assert_eq!(efi.persistent, Some(true));
    let kc = fw.kernel_boot.as_ref().unwrap().container.as_ref().unwrap();
    assert_eq!(kc.kernel_path.as_deref(), Some("/boot/vmlinuz"));
    let features = d.features.as_ref().unwrap();
    assert!(features.acpi_enabled() && features.smm_enabled());
    let spin = features
        .hyperv
        .as_ref()
        .unwrap()
        .spinlocks
        .as_ref()
        .unwrap();
    assert_eq!(spin.retries, Some(8191));
    let timer = d.clock.as_ref().unwrap().timer.as_ref().unwrap();
    assert_eq!(timer.hpet.as_ref().unwrap().enabled, Some(false));
    let devices = &d.devices;
    assert_eq!(devices.network_interface_multiqueue, Some(true));
    assert_eq!(
        devices
            .watchdog
            .as_ref()
            .unwrap()
            .i6300esb
            .as_ref()
            .unwrap()
            .action,
        Some(WatchdogAction::Poweroff)
    );
    let root = &devices.disks[0];
    assert_eq!(root.cache, Some(DriverCache::Writethrough));
    assert_eq!(root.io, Some(DriverIO::Native));
    assert_eq!(root.boot_order, Some(1));
    assert!(devices.disks[1].is_read_only());
    assert_eq!(devices.disks[2].bus(), Some(&DiskBus::Scsi));
    let iface = &devices.interfaces[0];
    assert_eq!(iface.mac_address.as_deref(), Some("02:00:00:00:00:01"));
    assert_eq!(
        iface.dhcp_options.as_ref().unwrap().private_options[0].option,
        240
    );
    assert_eq!(devices.interfaces[1].state, Some(InterfaceState::Up));
    let pod = vmi.spec.networks[0].pod.as_ref().unwrap();
    assert_eq!(pod.vm_ipv6_network_cidr.as_deref(), Some("fd10:0:2::/120"));
    assert_eq!(
        vmi.spec.networks[1].multus.as_ref().unwrap().network_name,
        "default/br1"
    );
    let host = vmi.spec.volumes[4].host_disk.as_ref().unwrap();
    assert_eq!(host.type_, Some(HostDiskType::DiskOrCreate));
    let ssh = vmi.spec.access_credentials[0]
        .ssh_public_key
        .as_ref()
        .unwrap();
    assert!(ssh.propagation_method.no_cloud.is_some());

    let status = vmi.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(VirtualMachineInstancePhase::Running));
    assert_eq!(
        status
            .condition(&VirtualMachineInstanceConditionType::Ready)
            .unwrap()
            .status,
        "True"
    );
    assert_eq!(status.interfaces[0].ip_addresses.len(), 2);
    assert_eq!(
        status.guest_os_info.as_ref().unwrap().version_id.as_deref(),
        Some("39")
    );
    assert_eq!(status.current_cpu_topology.as_ref().unwrap().cores, Some(2));
    assert_eq!(status.runtime_user, Some(107));
}

#[test]
fn unknown_fields_survive_at_every_depth() {
    let vm: VirtualMachine = assert_roundtrip(&fixture("unknown-fields.yaml"));
    assert_eq!(vm.extra["topLevelFuture"], json!({"a": 1}));
    assert_eq!(vm.spec.extra["specFuture"], json!([1, 2, 3]));
    let t = vm.spec.template.as_ref().unwrap();
    assert_eq!(t.extra["templateFuture"], json!(true));
    assert_eq!(t.spec.extra["specFuture"], json!("x"));
    let d = &t.spec.domain;
    assert_eq!(
        d.extra["domainFuture"]["nested"]["deeper"][1]["two"],
        json!(2)
    );
    assert!(d.extra.contains_key("launchSecurity"));
    assert_eq!(
        d.resources.as_ref().unwrap().extra["resourcesFuture"],
        json!(1)
    );
    assert!(d.cpu.as_ref().unwrap().extra.contains_key("numa"));
    assert_eq!(d.devices.extra["devicesFuture"], json!(42));
    assert!(d.devices.extra.contains_key("gpus"));
    let disk = &d.devices.disks[0];
    assert_eq!(disk.extra["diskFuture"], json!("yes-string"));
    assert!(disk.extra.contains_key("blockSize"));
    assert_eq!(disk.disk.as_ref().unwrap().extra["targetFuture"], json!(7));
    let iface = &d.devices.interfaces[0];
    assert_eq!(iface.extra["interfaceFuture"], json!(["a"]));
    assert_eq!(
        iface.masquerade.as_ref().unwrap().extra["bindingFuture"],
        json!(1)
    );
    assert_eq!(t.spec.networks[0].extra["networkFuture"], Value::Null);
    let vol = &t.spec.volumes[0];
    assert_eq!(vol.extra["volumeFuture"], json!({"k": "v"}));
    assert_eq!(
        vol.container_disk.as_ref().unwrap().extra["sourceFuture"],
        json!(3.5)
    );
    let status = vm.status.as_ref().unwrap();
    assert_eq!(
        status.printable_status,
        Some(VirtualMachinePrintableStatus::Running)
    );
    assert!(status.extra.contains_key("volumeRequests"));
}

#[test]
fn unknown_enum_values_are_kept() {
    let yaml = r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: odd}
spec:
  runStrategy: Sometimes
  template:
    spec:
      domain:
        devices:
          disks:
          - name: d
            cache: unsafe
            disk: {bus: ide}
status:
  printableStatus: Hibernating
"#;
    let vm: VirtualMachine = assert_roundtrip(yaml);
    assert_eq!(
        vm.spec.run_strategy,
        Some(RunStrategy::Other("Sometimes".into()))
    );
    let disk = &vm.spec.template.as_ref().unwrap().spec.domain.devices.disks[0];
    assert_eq!(disk.bus(), Some(&DiskBus::Other("ide".into())));
    assert_eq!(disk.cache, Some(DriverCache::Other("unsafe".into())));
    assert_eq!(
        vm.status.unwrap().printable_status,
        Some(VirtualMachinePrintableStatus::Other("Hibernating".into()))
    );
}

#[test]
fn unset_stays_unset_and_null_reads_as_unset() {
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "metadata": {"name": "x"},
        "spec": {"domain": {"devices": {}}},
        "status": {"conditions": [{"type": "Ready", "status": "False", "lastProbeTime": null}]},
    }))
    .unwrap();
    let c = &vmi.status.as_ref().unwrap().conditions[0];
    assert_eq!(c.last_probe_time, None);
    let out = serde_json::to_value(&vmi).unwrap();
    assert_eq!(
        out,
        json!({
            "metadata": {"name": "x"},
            "spec": {"domain": {"devices": {}}},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        })
    );
    let empty = serde_json::to_value(VirtualMachineInstance::default()).unwrap();
    assert_eq!(
        empty,
        json!({"metadata": {}, "spec": {"domain": {"devices": {}}}})
    );
}

#[test]
fn times_roundtrip() {
    let json =
        json!({"type": "Ready", "status": "True", "lastTransitionTime": "2024-05-01T10:00:00Z"});
    let c: VirtualMachineInstanceCondition = serde_json::from_value(json.clone()).unwrap();
    assert!(c.last_transition_time.is_some());
    assert_eq!(serde_json::to_value(&c).unwrap(), json);
}

#[test]
fn resource_impls() {
    assert_eq!(<VirtualMachine as Resource>::API_VERSION, "kubevirt.io/v1");
    assert_eq!(<VirtualMachine as Resource>::GROUP, "kubevirt.io");
    assert_eq!(<VirtualMachine as Resource>::KIND, "VirtualMachine");
    assert_eq!(
        <VirtualMachine as Resource>::URL_PATH_SEGMENT,
        "virtualmachines"
    );
    assert_eq!(
        <VirtualMachineInstance as Resource>::KIND,
        "VirtualMachineInstance"
    );
    assert_eq!(
        <VirtualMachineInstance as Resource>::URL_PATH_SEGMENT,
        "virtualmachineinstances"
    );
    fn namespaced<T: Resource<Scope = k8s_openapi::NamespaceResourceScope>>() {}
    namespaced::<VirtualMachine>();
    namespaced::<VirtualMachineInstance>();
    let mut vm = VirtualMachine::default();
    vm.metadata_mut().name = Some("a".into());
    assert_eq!(vm.metadata().name.as_deref(), Some("a"));
}

#[test]
fn json_schema_generates() {
    let schema = schemars::schema_for!(VirtualMachine);
    let text = serde_json::to_string(&schema).unwrap();
    assert!(text.contains("runStrategy"));
    assert!(text.contains("cloudInitNoCloud"));
    assert!(text.contains("networkInterfaceMultiqueue"));
}

#[test]
fn from_vm_builds_the_controller_vmi() {
    let mut vm: VirtualMachine = serde_saphyr::from_str(&fixture("testvm.yaml")).unwrap();
    vm.metadata.namespace = Some("ns1".into());
    vm.metadata.uid = Some("1234-uid".into());
    let mut tmeta = vm.spec.template.as_ref().unwrap().metadata.clone();
    tmeta.annotations = Some([("a".to_owned(), "b".to_owned())].into());
    tmeta.name = Some("ignored".into());
    vm.spec.template.as_mut().unwrap().metadata = tmeta;
    vm.spec
        .template
        .as_mut()
        .unwrap()
        .spec
        .volumes
        .push(Volume {
            name: "extra".into(),
            empty_disk: Some(EmptyDiskSource {
                capacity: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "1Gi".into(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        });

    let vmi = VirtualMachineInstance::from_vm(&vm);
    assert_eq!(vmi.api_version.as_deref(), Some("kubevirt.io/v1"));
    assert_eq!(vmi.kind.as_deref(), Some("VirtualMachineInstance"));
    assert_eq!(vmi.metadata.name.as_deref(), Some("testvm"));
    assert_eq!(vmi.metadata.namespace.as_deref(), Some("ns1"));
    assert_eq!(
        vmi.metadata.labels.as_ref().unwrap()["kubevirt.io/size"],
        "small"
    );
    assert_eq!(vmi.metadata.annotations.as_ref().unwrap()["a"], "b");
    let owner = &vmi.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.api_version, "kubevirt.io/v1");
    assert_eq!(owner.kind, "VirtualMachine");
    assert_eq!(owner.name, "testvm");
    assert_eq!(owner.uid, "1234-uid");
    assert_eq!(owner.controller, Some(true));
    assert_eq!(owner.block_owner_deletion, Some(true));
    assert_eq!(
        vmi.spec.domain.firmware.as_ref().unwrap().uuid.as_deref(),
        Some(kuvirt_api::defaults::legacy_firmware_uuid("testvm").as_str())
    );
    assert_eq!(
        vmi.spec.volumes,
        vm.spec.template.as_ref().unwrap().spec.volumes
    );
    let names: Vec<_> = vmi
        .spec
        .domain
        .devices
        .disks
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(names, ["containerdisk", "cloudinitdisk", "extra"]);
    assert_eq!(vmi.spec.start_strategy, None);
    assert!(vmi.status.is_none());

    vm.status = Some(VirtualMachineStatus {
        state_change_requests: vec![VirtualMachineStateChangeRequest {
            action: StateChangeRequestAction::Start,
            data: [("paused".to_owned(), "true".to_owned())].into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let vmi = VirtualMachineInstance::from_vm(&vm);
    assert_eq!(vmi.spec.start_strategy, Some(StartStrategy::Paused));
}
