//! Unit tests of the validation rules, one per rule, asserting exact field paths.

use k8s_openapi::api::core::v1::LocalObjectReference;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::json;

use super::FieldErrorKind::{self, *};
use super::*;
use crate::v1::*;

/// A valid, defaulted VMI: two disks, pod network with masquerade, 64Mi.
fn base() -> VirtualMachineInstance {
    let mut vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "metadata": {"name": "t"},
        "spec": {
            "domain": {
                "resources": {"requests": {"memory": "64Mi"}},
                "devices": {"disks": [
                    {"name": "root", "disk": {"bus": "virtio"}},
                    {"name": "ci", "disk": {"bus": "virtio"}},
                ]},
            },
            "volumes": [
                {"name": "root", "containerDisk": {"image": "reg/img:1"}},
                {"name": "ci", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
            ],
        }
    }))
    .unwrap();
    crate::defaults::default_vmi(&mut vmi);
    vmi
}

fn spec(v: &mut VirtualMachineInstance) -> &mut VirtualMachineInstanceSpec {
    &mut v.spec
}

/// Asserts validation fails with an error of `kind` at exactly `field`.
#[track_caller]
fn expect(vmi: &VirtualMachineInstance, field: &str, kind: FieldErrorKind) -> FieldError {
    let errs = validate_vmi(vmi).expect_err("expected validation errors");
    match errs.find(field) {
        Some(e) if e.kind == kind => e.clone(),
        _ => panic!("no {kind:?} error at {field}; got: {errs}"),
    }
}

fn q(s: &str) -> Option<Quantity> {
    Some(Quantity(s.into()))
}

#[test]
fn base_is_valid() {
    validate_vmi(&base()).unwrap();
}

#[test]
fn display_lists_every_error() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[1].name = "x".into();
    spec(&mut v).termination_grace_period_seconds = Some(-1);
    let errs = validate_vmi(&v).unwrap_err();
    let text = errs.to_string();
    assert!(
        text.contains(r#"spec.domain.devices.disks[1].name: volume "x" not found"#),
        "{text}"
    );
    assert!(
        text.contains("spec.terminationGracePeriodSeconds: "),
        "{text}"
    );
    assert!(text.contains("spec.volumes[1].name: "), "{text}");
    assert!(errs.len() >= 3);
    let e: &dyn std::error::Error = &errs;
    assert_eq!(e.to_string(), text);
}

#[test]
fn disk_must_name_existing_volume() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[1].name = "x".into();
    let e = expect(&v, "spec.domain.devices.disks[1].name", NotFound);
    assert_eq!(
        e.to_string(),
        r#"spec.domain.devices.disks[1].name: volume "x" not found"#
    );
}

#[test]
fn disk_names_unique() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[1].name = "root".into();
    expect(&v, "spec.domain.devices.disks[1].name", Duplicate);
}

#[test]
fn disk_name_is_dns_label() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[0].name = "Root_1".into();
    spec(&mut v).volumes[0].name = "Root_1".into();
    expect(&v, "spec.domain.devices.disks[0].name", Invalid);
}

#[test]
fn volume_names_unique() {
    let mut v = base();
    let dup = spec(&mut v).volumes[0].clone();
    spec(&mut v).volumes.push(dup);
    expect(&v, "spec.volumes[2].name", Duplicate);
}

#[test]
fn volume_without_disk() {
    let mut v = base();
    spec(&mut v).domain.devices.disks.pop();
    expect(&v, "spec.volumes[1].name", NotFound);
}

#[test]
fn exactly_one_volume_source() {
    let mut v = base();
    spec(&mut v).volumes[0].empty_disk = Some(EmptyDiskSource {
        capacity: q("1Gi"),
        ..Default::default()
    });
    expect(&v, "spec.volumes[0]", Invalid);
    let mut v = base();
    spec(&mut v).volumes[0].container_disk = None;
    expect(&v, "spec.volumes[0]", Invalid);
}

#[test]
fn boot_order_positive_and_unique() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[0].boot_order = Some(0);
    expect(&v, "spec.domain.devices.disks[0].bootOrder", Invalid);

    let mut v = base();
    spec(&mut v).domain.devices.disks[0].boot_order = Some(1);
    spec(&mut v).domain.devices.interfaces[0].boot_order = Some(1);
    expect(&v, "spec.domain.devices.interfaces[0].bootOrder", Duplicate);

    let mut v = base();
    spec(&mut v).domain.devices.disks[0].boot_order = Some(2);
    spec(&mut v).domain.devices.disks[1].boot_order = Some(2);
    expect(&v, "spec.domain.devices.disks[1].bootOrder", Duplicate);
}

#[test]
fn disk_bus_supported() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[0]
        .disk
        .as_mut()
        .unwrap()
        .bus = Some("ide".into());
    expect(&v, "spec.domain.devices.disks[0].disk.bus", NotSupported);

    let mut v = base();
    let d = &mut spec(&mut v).domain.devices.disks[1];
    d.disk = None;
    d.cdrom = Some(CDRomTarget {
        bus: Some(DiskBus::Virtio),
        ..Default::default()
    });
    expect(&v, "spec.domain.devices.disks[1].cdrom.bus", Invalid);

    let mut v = base();
    let d = spec(&mut v).domain.devices.disks[0].disk.as_mut().unwrap();
    d.bus = Some(DiskBus::Sata);
    d.readonly = Some(true);
    expect(&v, "spec.domain.devices.disks[0].disk.bus", Invalid);
}

#[test]
fn one_disk_target() {
    let mut v = base();
    spec(&mut v).domain.devices.disks[0].cdrom = Some(CDRomTarget::default());
    expect(&v, "spec.domain.devices.disks[0]", Invalid);
}

#[test]
fn lun_needs_pvc() {
    let mut v = base();
    let d = &mut spec(&mut v).domain.devices.disks[0];
    d.disk = None;
    d.lun = Some(LunTarget::default());
    expect(&v, "spec.domain.devices.disks[0].lun", Invalid);
}

#[test]
fn disk_cache_io_serial_pci() {
    let mut v = base();
    let d = &mut spec(&mut v).domain.devices.disks[0];
    d.cache = Some("unsafe".into());
    d.io = Some("io_uring".into());
    d.serial = Some("bad serial!".into());
    d.disk.as_mut().unwrap().pci_address = Some("00:0a.0".into());
    expect(&v, "spec.domain.devices.disks[0].cache", NotSupported);
    expect(&v, "spec.domain.devices.disks[0].io", NotSupported);
    expect(&v, "spec.domain.devices.disks[0].serial", Invalid);
    expect(&v, "spec.domain.devices.disks[0].disk.pciAddress", Invalid);

    let mut v = base();
    spec(&mut v).domain.devices.disks[0].serial = Some("a".repeat(257));
    expect(&v, "spec.domain.devices.disks[0].serial", TooLong);
}

#[test]
fn interface_names_unique_and_matched() {
    let mut v = base();
    let dup = spec(&mut v).domain.devices.interfaces[0].clone();
    spec(&mut v).domain.devices.interfaces.push(dup);
    expect(&v, "spec.domain.devices.interfaces[1].name", Duplicate);

    let mut v = base();
    spec(&mut v).domain.devices.interfaces[0].name = "other".into();
    let e = expect(&v, "spec.domain.devices.interfaces[0].name", NotFound);
    assert_eq!(e.message, r#"network "other" not found"#);
    expect(&v, "spec.networks[0].name", NotFound);
}

#[test]
fn interface_exactly_one_binding() {
    let mut v = base();
    spec(&mut v).domain.devices.interfaces[0].bridge = Some(InterfaceBridge::default());
    expect(&v, "spec.domain.devices.interfaces[0]", Invalid);

    let mut v = base();
    spec(&mut v).domain.devices.interfaces[0].masquerade = None;
    expect(&v, "spec.domain.devices.interfaces[0]", Invalid);

    let mut v = base();
    let iface = &mut spec(&mut v).domain.devices.interfaces[0];
    iface.masquerade = None;
    iface.extra.insert("slirp".into(), json!({}));
    expect(&v, "spec.domain.devices.interfaces[0].slirp", NotSupported);
}

#[test]
fn passt_and_plugin_bindings_accepted() {
    let mut v = base();
    let iface = &mut spec(&mut v).domain.devices.interfaces[0];
    iface.masquerade = None;
    iface.passt = Some(InterfacePasst::default());
    validate_vmi(&v).unwrap();
    let iface = &mut spec(&mut v).domain.devices.interfaces[0];
    iface.passt = None;
    iface.binding = Some(PluginBinding {
        name: "passt".into(),
        ..Default::default()
    });
    validate_vmi(&v).unwrap();
}

#[test]
fn masquerade_only_on_pod_network() {
    let mut v = base();
    spec(&mut v).networks[0] = Network {
        name: "default".into(),
        multus: Some(MultusNetwork {
            network_name: "br".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    expect(&v, "spec.domain.devices.interfaces[0].masquerade", Invalid);
}

#[test]
fn one_pod_network() {
    let mut v = base();
    let mut second = Network::default_pod();
    second.name = "second".into();
    spec(&mut v).networks.push(second);
    let mut iface = Interface::default_masquerade();
    iface.name = "second".into();
    spec(&mut v).domain.devices.interfaces.push(iface);
    expect(&v, "spec.networks[1].pod", Invalid);
}

#[test]
fn network_needs_one_source() {
    let mut v = base();
    spec(&mut v).networks[0].pod = None;
    expect(&v, "spec.networks[0]", Invalid);
    let mut v = base();
    spec(&mut v).networks[0].multus = Some(MultusNetwork::default());
    expect(&v, "spec.networks[0]", Invalid);
    expect(&v, "spec.networks[0].multus.networkName", Required);
}

#[test]
fn mac_address_format() {
    for bad in [
        "02:00:00:00:00",
        "02:00:00:00:00:0g",
        "0200.0000.0001",
        "02:00-00:00:00:01",
    ] {
        let mut v = base();
        spec(&mut v).domain.devices.interfaces[0].mac_address = Some(bad.into());
        expect(&v, "spec.domain.devices.interfaces[0].macAddress", Invalid);
    }
    for good in ["02:00:00:00:00:01", "DE-AD-BE-EF-00-01"] {
        let mut v = base();
        spec(&mut v).domain.devices.interfaces[0].mac_address = Some(good.into());
        validate_vmi(&v).unwrap();
    }
}

#[test]
fn interface_model_ports_dhcp() {
    let mut v = base();
    let iface = &mut spec(&mut v).domain.devices.interfaces[0];
    iface.model = Some("vmxnet3".into());
    iface.ports = vec![Port {
        port: 0,
        protocol: Some("SCTP".into()),
        ..Default::default()
    }];
    iface.dhcp_options = Some(DHCPOptions {
        ntp_servers: vec!["not-an-ip".into()],
        private_options: vec![DHCPPrivateOptions {
            option: 12,
            value: "x".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let p = "spec.domain.devices.interfaces[0]";
    expect(&v, &format!("{p}.model"), NotSupported);
    expect(&v, &format!("{p}.ports[0].port"), Invalid);
    expect(&v, &format!("{p}.ports[0].protocol"), NotSupported);
    expect(&v, &format!("{p}.dhcpOptions.ntpServers[0]"), Invalid);
    expect(
        &v,
        &format!("{p}.dhcpOptions.privateOptions[0].option"),
        Invalid,
    );
}

#[test]
fn memory_rules() {
    let mut v = base();
    spec(&mut v).domain.memory.as_mut().unwrap().guest = q("512Ki");
    expect(&v, "spec.domain.memory.guest", Invalid);

    let mut v = base();
    let d = &mut spec(&mut v).domain;
    d.memory.as_mut().unwrap().guest = q("128Mi");
    d.resources
        .as_mut()
        .unwrap()
        .limits
        .get_or_insert_with(Default::default)
        .insert("memory".into(), Quantity("64Mi".into()));
    let e = expect(&v, "spec.domain.memory.guest", Invalid);
    assert!(e.message.contains("memory limit"), "{e}");

    let mut v = base();
    spec(&mut v).domain.memory.as_mut().unwrap().guest = q("lots");
    expect(&v, "spec.domain.memory.guest", Invalid);

    let mut v = base();
    spec(&mut v)
        .domain
        .resources
        .as_mut()
        .unwrap()
        .requests
        .as_mut()
        .unwrap()
        .insert("memory".into(), Quantity("-1Mi".into()));
    expect(&v, "spec.domain.resources.requests.memory", Invalid);
}

#[test]
fn memory_required() {
    let mut v = base();
    spec(&mut v).domain.memory = None;
    spec(&mut v).domain.resources = None;
    expect(&v, "spec.domain.memory.guest", Required);
}

#[test]
fn cpu_topology_at_least_one() {
    for (field, set) in [
        ("cores", (|c: &mut CPU| c.cores = Some(0)) as fn(&mut CPU)),
        ("sockets", |c| c.sockets = Some(0)),
        ("threads", |c| c.threads = Some(0)),
    ] {
        let mut v = base();
        set(spec(&mut v).domain.cpu.as_mut().unwrap());
        expect(&v, &format!("spec.domain.cpu.{field}"), Invalid);
    }
}

#[test]
fn container_disk_image_required() {
    let mut v = base();
    spec(&mut v).volumes[0]
        .container_disk
        .as_mut()
        .unwrap()
        .image = String::new();
    expect(&v, "spec.volumes[0].containerDisk.image", Required);
    let mut v = base();
    spec(&mut v).volumes[0]
        .container_disk
        .as_mut()
        .unwrap()
        .path = Some("disk/../x".into());
    expect(&v, "spec.volumes[0].containerDisk.path", Invalid);
}

#[test]
fn cloud_init_sources_and_limits() {
    let p = "spec.volumes[1].cloudInitNoCloud";
    fn ci(v: &mut VirtualMachineInstance) -> &mut CloudInitNoCloudSource {
        spec(v).volumes[1].cloud_init_no_cloud.as_mut().unwrap()
    }

    let mut v = base();
    ci(&mut v).user_data_base64 = Some("SGk=".into());
    expect(&v, p, Invalid);

    let mut v = base();
    ci(&mut v).user_data_secret_ref = Some(LocalObjectReference { name: "s".into() });
    expect(&v, p, Invalid);

    let mut v = base();
    ci(&mut v).user_data = Some("a".repeat(2049));
    expect(&v, p, TooLong);
    let mut v = base();
    ci(&mut v).user_data = Some("a".repeat(2048));
    validate_vmi(&v).unwrap();

    let mut v = base();
    ci(&mut v).user_data = None;
    ci(&mut v).user_data_base64 = Some("!!notbase64".into());
    expect(&v, &format!("{p}.userDataBase64"), Invalid);

    let mut v = base();
    ci(&mut v).user_data = None;
    expect(&v, p, Required);

    let mut v = base();
    ci(&mut v).network_data = Some("version: 2".into());
    ci(&mut v).network_data_base64 = Some("dmVyc2lvbjogMg==".into());
    expect(&v, p, Invalid);

    // the config-drive flavour is checked the same way
    let mut v = base();
    spec(&mut v).volumes[1] = Volume {
        name: "ci".into(),
        cloud_init_config_drive: Some(CloudInitConfigDriveSource {
            network_data: Some("n".repeat(3000)),
            ..Default::default()
        }),
        ..Default::default()
    };
    expect(&v, "spec.volumes[1].cloudInitConfigDrive", TooLong);
}

#[test]
fn host_disk_rules() {
    let set = |v: &mut VirtualMachineInstance, hd: HostDisk| {
        spec(v).volumes[0] = Volume {
            name: "root".into(),
            host_disk: Some(hd),
            ..Default::default()
        };
    };
    let p = "spec.volumes[0].hostDisk";

    let mut v = base();
    set(
        &mut v,
        HostDisk {
            path: "relative/disk.img".into(),
            type_: Some(HostDiskType::Disk),
            ..Default::default()
        },
    );
    expect(&v, &format!("{p}.path"), Invalid);

    let mut v = base();
    set(
        &mut v,
        HostDisk {
            path: "/data/disk.img".into(),
            type_: Some("Block".into()),
            ..Default::default()
        },
    );
    expect(&v, &format!("{p}.type"), NotSupported);

    let mut v = base();
    set(
        &mut v,
        HostDisk {
            path: "/data/disk.img".into(),
            type_: Some(HostDiskType::DiskOrCreate),
            ..Default::default()
        },
    );
    expect(&v, &format!("{p}.capacity"), Required);

    let mut v = base();
    set(
        &mut v,
        HostDisk {
            path: "/data/disk.img".into(),
            type_: Some(HostDiskType::Disk),
            capacity: q("1Gi"),
            ..Default::default()
        },
    );
    expect(&v, &format!("{p}.capacity"), Invalid);

    let mut v = base();
    set(
        &mut v,
        HostDisk {
            path: "/data/disk.img".into(),
            type_: Some(HostDiskType::DiskOrCreate),
            capacity: q("1Gi"),
            ..Default::default()
        },
    );
    validate_vmi(&v).unwrap();
}

#[test]
fn kernel_boot_rules() {
    let mut v = base();
    spec(&mut v).domain.firmware.as_mut().unwrap().kernel_boot = Some(KernelBoot {
        container: Some(KernelBootContainer::default()),
        ..Default::default()
    });
    let p = "spec.domain.firmware.kernelBoot.container";
    expect(&v, &format!("{p}.image"), Required);
    expect(&v, p, Required);

    let mut v = base();
    spec(&mut v).domain.firmware.as_mut().unwrap().kernel_boot = Some(KernelBoot {
        kernel_args: Some("console=ttyS0".into()),
        ..Default::default()
    });
    expect(&v, "spec.domain.firmware.kernelBoot.kernelArgs", Invalid);

    let mut v = base();
    spec(&mut v).domain.firmware.as_mut().unwrap().kernel_boot = Some(KernelBoot {
        container: Some(KernelBootContainer {
            image: "k:1".into(),
            kernel_path: Some("/boot/../vmlinuz".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    expect(&v, &format!("{p}.kernelPath"), Invalid);
}

#[test]
fn secure_boot_needs_smm() {
    let mut v = base();
    spec(&mut v).domain.firmware.as_mut().unwrap().bootloader = Some(Bootloader {
        efi: Some(EFI::default()),
        ..Default::default()
    });
    expect(&v, "spec.domain", Invalid);

    spec(&mut v).domain.features.as_mut().unwrap().smm = Some(FeatureState::on());
    validate_vmi(&v).unwrap();

    let mut v = base();
    spec(&mut v).domain.firmware.as_mut().unwrap().bootloader = Some(Bootloader {
        efi: Some(EFI {
            secure_boot: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    });
    validate_vmi(&v).unwrap();
}

#[test]
fn bios_and_efi_exclusive() {
    let mut v = base();
    spec(&mut v).domain.firmware.as_mut().unwrap().bootloader = Some(Bootloader {
        efi: Some(EFI {
            secure_boot: Some(false),
            ..Default::default()
        }),
        bios: Some(BIOS::default()),
        ..Default::default()
    });
    expect(&v, "spec.domain.firmware.bootloader", Invalid);
}

#[test]
fn grace_period_not_negative() {
    let mut v = base();
    spec(&mut v).termination_grace_period_seconds = Some(-5);
    expect(&v, "spec.terminationGracePeriodSeconds", Invalid);
}

#[test]
fn machine_type_supported() {
    let mut v = base();
    spec(&mut v).domain.machine.as_mut().unwrap().type_ = "pc-i440fx-7.2".into();
    expect(&v, "spec.domain.machine.type", NotSupported);
    spec(&mut v).domain.machine.as_mut().unwrap().type_ = "pc-q35-7.2".into();
    validate_vmi(&v).unwrap();
}

#[test]
fn hostname_dns_probe_access_credentials() {
    let mut v = base();
    spec(&mut v).hostname = Some("Not_A_Label".into());
    expect(&v, "spec.hostname", Invalid);

    let mut v = base();
    spec(&mut v).dns_policy = Some("None".into());
    expect(&v, "spec.dnsConfig.nameservers", Required);

    let mut v = base();
    spec(&mut v).readiness_probe = Some(Probe::default());
    expect(&v, "spec.readinessProbe", Invalid);

    let mut v = base();
    spec(&mut v).access_credentials = vec![AccessCredential {
        ssh_public_key: Some(SSHPublicKeyAccessCredential {
            propagation_method: SSHPublicKeyAccessCredentialPropagationMethod {
                config_drive: Some(Extra::new()),
                ..Default::default()
            },
            ..Default::default()
        }),
        ..Default::default()
    }];
    let p = "spec.accessCredentials[0].sshPublicKey";
    expect(&v, &format!("{p}.source.secret.secretName"), Required);
    expect(&v, &format!("{p}.propagationMethod.configDrive"), Invalid);
}

#[test]
fn unknown_enum_values_rejected() {
    let mut v = base();
    spec(&mut v).eviction_strategy = Some("Sometimes".into());
    spec(&mut v).domain.devices.inputs = vec![Input {
        name: "i".into(),
        bus: Some("ps2".into()),
        type_: Some(InputType::Tablet),
        ..Default::default()
    }];
    expect(&v, "spec.evictionStrategy", NotSupported);
    expect(&v, "spec.domain.devices.inputs[0].bus", NotSupported);
}

#[test]
fn metadata_name_required() {
    let mut v = base();
    v.metadata.name = None;
    expect(&v, "metadata.name", Required);
}

fn vm() -> VirtualMachine {
    let vmi = base();
    VirtualMachine {
        metadata: vmi.metadata.clone(),
        spec: VirtualMachineSpec {
            run_strategy: Some(RunStrategy::Always),
            template: Some(VirtualMachineInstanceTemplateSpec {
                spec: vmi.spec,
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[track_caller]
fn expect_vm(vm: &VirtualMachine, field: &str, kind: FieldErrorKind) {
    let errs = validate_vm(vm).expect_err("expected validation errors");
    assert!(
        errs.iter().any(|e| e.field == field && e.kind == kind),
        "no {kind:?} error at {field}; got: {errs}"
    );
}

#[test]
fn vm_rules() {
    validate_vm(&vm()).unwrap();

    let mut v = vm();
    v.spec.running = Some(true);
    expect_vm(&v, "spec.running", Invalid);

    let mut v = vm();
    v.spec.run_strategy = None;
    expect_vm(&v, "spec.runStrategy", Required);
    v.spec.running = Some(false);
    validate_vm(&v).unwrap();

    let mut v = vm();
    v.spec.run_strategy = Some("Sometimes".into());
    expect_vm(&v, "spec.runStrategy", NotSupported);
    v.spec.run_strategy = Some(RunStrategy::WaitAsReceiver);
    expect_vm(&v, "spec.runStrategy", NotSupported);

    let mut v = vm();
    v.spec.template = None;
    expect_vm(&v, "spec.template", Required);
}

#[test]
fn sticky_ip_annotation_is_an_ipv4_address() {
    let ann = |ip: &str| Some([(crate::v1::IP_ANNOTATION.to_owned(), ip.to_owned())].into());
    let mut v = base();
    v.metadata.annotations = ann("10.244.0.9");
    validate_vmi(&v).unwrap();
    v.metadata.annotations = ann("10.244.0.999");
    let e = expect(&v, "metadata.annotations[kuvirt.io/ip]", Invalid);
    assert!(e.message.contains("not an IPv4 address"), "{}", e.message);

    let mut m = vm();
    m.metadata.annotations = ann("fd00::1");
    expect_vm(&m, "metadata.annotations[kuvirt.io/ip]", Invalid);
    let mut m = vm();
    m.spec.template.as_mut().unwrap().metadata.annotations = ann("x");
    expect_vm(
        &m,
        "spec.template.metadata.annotations[kuvirt.io/ip]",
        Invalid,
    );
    // A VM's sticky address goes to the VMIs it starts.
    let mut m = vm();
    m.metadata.annotations = ann("10.244.0.9");
    let started = VirtualMachineInstance::from_vm(&m);
    assert_eq!(
        started.metadata.annotations.unwrap()[crate::v1::IP_ANNOTATION],
        "10.244.0.9"
    );
}

#[test]
fn vm_template_paths() {
    let mut v = vm();
    let t = v.spec.template.as_mut().unwrap();
    t.spec.domain.devices.disks[1].name = "x".into();
    let errs = validate_vm(&v).unwrap_err();
    let e = errs
        .find("spec.template.spec.domain.devices.disks[1].name")
        .unwrap();
    assert_eq!(
        e.to_string(),
        r#"spec.template.spec.domain.devices.disks[1].name: volume "x" not found"#
    );
}
