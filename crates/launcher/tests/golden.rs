//! Golden tests: VMI YAML → defaults → `convert` → `render` must give exactly the argv stored in
//! tests/golden/NAME.args (one argument per line). `UPDATE_GOLDEN=1 cargo test -p kuvirt-launcher
//! --test golden` rewrites them; review the diff like code.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use kuvirt_api::{VirtualMachineInstance, default_vmi, validate_vmi};
use kuvirt_launcher::convert::{HostConfig, Resolved, ResolvedDisk, convert};
use kuvirt_launcher::machine::{Accel, HostForward, ImageFormat, NetBackend};
use kuvirt_launcher::render::render;

const VM_DIR: &str = "/var/lib/kuvirt/vms/default/vm";

fn vmi(yaml: &str) -> VirtualMachineInstance {
    let vmi = defaulted(yaml);
    if let Err(e) = validate_vmi(&vmi) {
        panic!("fixture does not validate: {e}");
    }
    vmi
}

fn defaulted(yaml: &str) -> VirtualMachineInstance {
    let mut vmi: VirtualMachineInstance = serde_saphyr::from_str(yaml).unwrap();
    default_vmi(&mut vmi);
    vmi
}

/// Every volume becomes a file under the VM dir (qcow2, or raw for cloud-init and hostDisk);
/// every interface a user-mode backend unless `nics` says otherwise.
fn resolved(vmi: &VirtualMachineInstance, nics: &[(&str, NetBackend)]) -> Resolved {
    let mut r = Resolved::default();
    for v in &vmi.spec.volumes {
        let raw = v.cloud_init_no_cloud.is_some()
            || v.cloud_init_config_drive.is_some()
            || v.host_disk.is_some();
        let path = match &v.host_disk {
            Some(h) => PathBuf::from(&h.path),
            None => PathBuf::from(format!(
                "{VM_DIR}/disks/{}.{}",
                v.name,
                if raw { "iso" } else { "qcow2" }
            )),
        };
        r.disks.insert(
            v.name.clone(),
            ResolvedDisk {
                path,
                format: if raw {
                    ImageFormat::Raw
                } else {
                    ImageFormat::Qcow2
                },
                direct_io: true,
                owned: true,
            },
        );
    }
    for i in &vmi.spec.domain.devices.interfaces {
        r.nics
            .insert(i.name.clone(), NetBackend::User { hostfwd: vec![] });
    }
    for (name, backend) in nics {
        r.nics.insert(name.to_string(), backend.clone());
    }
    let kb = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref());
    if let Some(c) = kb.and_then(|k| k.container.as_ref()) {
        let root = "/var/lib/kuvirt/images/rootfs/sha256-abc";
        r.kernel = c
            .kernel_path
            .as_ref()
            .map(|p| PathBuf::from(format!("{root}{p}")));
        r.initrd = c
            .initrd_path
            .as_ref()
            .map(|p| PathBuf::from(format!("{root}{p}")));
    }
    if vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref())
        .is_some()
    {
        r.efi_vars = Some(PathBuf::from(format!("{VM_DIR}/efi-vars.fd")));
    }
    r
}

fn host(accel: Accel) -> HostConfig {
    HostConfig {
        accel,
        ovmf_dir: PathBuf::from("/usr/share/OVMF"),
        run_dir: PathBuf::from(VM_DIR),
        sandbox: true,
        smbios_product: "None".into(),
    }
}

fn check(name: &str, yaml: &str, accel: Accel, nics: &[(&str, NetBackend)]) {
    compare(name, &vmi(yaml), accel, nics);
}

fn compare(name: &str, vmi: &VirtualMachineInstance, accel: Accel, nics: &[(&str, NetBackend)]) {
    let machine = convert(vmi, &resolved(vmi, nics), &host(accel)).unwrap();
    qemu_accepts(name, vmi, accel, nics);
    let got = pretty(&render(&machine));
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.args"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&file, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&file)
        .unwrap_or_else(|_| panic!("{} missing: run with UPDATE_GOLDEN=1", file.display()));
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(w, g)| w != g)
            .map(|(w, g)| format!("- {w}\n+ {g}"))
            .collect();
        panic!(
            "{name}: argv differs from {} ({} vs {} lines)\n{}",
            file.display(),
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
}

/// Starts real QEMU (TCG, vCPUs stopped) on the same spec with real files in place of the
/// golden paths, so every golden argv is also known to be one QEMU accepts. Machines that need
/// host resources a test cannot assume (KVM, taps, passt, hugepages) are only compared.
fn qemu_accepts(
    name: &str,
    vmi: &VirtualMachineInstance,
    accel: Accel,
    nics: &[(&str, NetBackend)],
) {
    let needs_host = accel == Accel::Kvm
        || nics
            .iter()
            .any(|(_, b)| !matches!(b, NetBackend::User { .. }))
        || vmi
            .spec
            .domain
            .memory
            .as_ref()
            .is_some_and(|m| m.hugepages.is_some());
    if needs_host {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut r = resolved(vmi, nics);
    for (vol, disk) in r.disks.iter_mut() {
        let path = dir.path().join(format!("{vol}.img"));
        let fmt = disk.format.as_str();
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(&path)
            .arg("16M")
            .status()
            .unwrap();
        assert!(st.success());
        disk.path = path;
        // tmpfs has no O_DIRECT; the golden files say direct, the real run needs what works here.
        disk.direct_io = false;
    }
    let mut vmi = vmi.clone();
    for d in &mut vmi.spec.domain.devices.disks {
        if d.cache.as_ref().is_some_and(|c| c.as_str() == "none") {
            d.cache = None;
        }
    }
    if r.kernel.is_some() {
        let kernel = std::fs::read_dir("/boot")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
            .expect("a kernel in /boot (linux-image-cloud-amd64)");
        r.kernel = Some(kernel);
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"not really an initrd").unwrap();
        r.initrd = Some(initrd);
    }
    if let Some(vars) = r.efi_vars.as_mut() {
        *vars = dir.path().join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &*vars).unwrap();
    }
    let mut h = host(accel);
    h.run_dir = dir.path().to_path_buf();
    let machine = convert(&vmi, &r, &h).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let vm = kuvirt_launcher::vm::Vm::start(
            &machine,
            &kuvirt_launcher::vm::StartOptions {
                qemu_binary: "qemu-system-x86_64".into(),
                log_dir: dir.path().to_path_buf(),
                console_socket: None,
                paused: true,
                run_as: None,
                start_timeout: std::time::Duration::from_secs(30),
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: qemu refused the machine: {e}"));
        assert_eq!(vm.state(), kuvirt_launcher::vm::VmState::Paused);
        vm.kill().await;
    });
}

/// One option per line: a flag and its value together, as a person reads a command line.
fn pretty(argv: &[String]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < argv.len() {
        out.push_str(&argv[i]);
        if argv[i].starts_with('-') && argv.get(i + 1).is_some_and(|v| !v.starts_with('-')) {
            out.push(' ');
            out.push_str(&argv[i + 1]);
            i += 1;
        }
        out.push('\n');
        i += 1;
    }
    out
}

const HEAD: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: vm\n  namespace: default\n";

fn yaml(spec: &str) -> String {
    format!("{HEAD}spec:\n{spec}")
}

#[test]
fn minimal_container_disk_q35_tcg() {
    check(
        "minimal",
        &yaml(
            r#"
  domain:
    devices:
      disks:
      - name: root
        disk: {}
    resources:
      requests:
        memory: 128Mi
  volumes:
  - name: root
    containerDisk:
      image: quay.io/kubevirt/cirros-container-disk-demo
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn cpu_topology_and_kvm_host_model() {
    check(
        "topology",
        &yaml(
            r#"
  domain:
    cpu:
      sockets: 2
      cores: 2
      threads: 2
    memory:
      guest: 1Gi
    devices:
      disks:
      - name: root
        disk: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Kvm,
        &[],
    );
}

#[test]
fn named_cpu_model() {
    check(
        "cpu_model",
        &yaml(
            r#"
  domain:
    cpu:
      model: Skylake-Client-IBRS
      cores: 4
    memory:
      guest: 512Mi
    devices:
      disks:
      - name: root
        disk: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Kvm,
        &[],
    );
}

/// KubeVirt admits `pc` only where the cluster's emulatedMachines allow it (the default list is
/// q35 only, and so is our validation); the launcher still renders it.
#[test]
fn i440fx_with_ide_disk_and_cdroms() {
    let spec = defaulted(&yaml(
        r#"
  domain:
    machine:
      type: pc
    memory:
      guest: 256Mi
    devices:
      disks:
      - name: root
        disk:
          bus: sata
      - name: install
        cdrom:
          bus: sata
      - name: seed
        cdrom: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
  - name: install
    containerDisk:
      image: example/installer
  - name: seed
    cloudInitNoCloud:
      userData: "hello"
"#,
    ));
    assert!(
        validate_vmi(&spec).is_err(),
        "pc passes validation now: make this a plain check"
    );
    compare("pc_sata", &spec, Accel::Tcg, &[]);
}

#[test]
fn every_disk_bus_with_boot_order() {
    check(
        "buses_boot_order",
        &yaml(
            r#"
  domain:
    memory:
      guest: 256Mi
    devices:
      disks:
      - name: a
        disk:
          bus: virtio
        bootOrder: 2
      - name: b
        disk:
          bus: sata
      - name: c
        disk:
          bus: scsi
        bootOrder: 1
      - name: d
        disk:
          bus: usb
      - name: e
        cdrom:
          bus: scsi
        bootOrder: 3
      interfaces:
      - name: default
        masquerade: {}
        bootOrder: 4
  networks:
  - name: default
    pod: {}
  volumes:
  - name: a
    containerDisk:
      image: example/a
  - name: b
    containerDisk:
      image: example/b
  - name: c
    containerDisk:
      image: example/c
  - name: d
    containerDisk:
      image: example/d
  - name: e
    containerDisk:
      image: example/e
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn efi_with_debian_ovmf() {
    check(
        "efi",
        &yaml(
            r#"
  domain:
    firmware:
      bootloader:
        efi:
          secureBoot: false
    memory:
      guest: 512Mi
    devices:
      disks:
      - name: root
        disk: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn efi_secure_boot_needs_smm() {
    check(
        "efi_secure_boot",
        &yaml(
            r#"
  domain:
    features:
      smm:
        enabled: true
    firmware:
      bootloader:
        efi: {}
    memory:
      guest: 512Mi
    devices:
      disks:
      - name: root
        disk: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Kvm,
        &[],
    );
}

#[test]
fn rng_watchdog_inputs() {
    check(
        "rng_watchdog_inputs",
        &yaml(
            r#"
  domain:
    memory:
      guest: 256Mi
    devices:
      rng: {}
      watchdog:
        name: wd
        i6300esb:
          action: poweroff
      inputs:
      - name: tablet
        type: tablet
        bus: usb
      - name: keys
        type: keyboard
        bus: virtio
      disks:
      - name: root
        disk: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn multiple_nics_models_macs_and_backends() {
    check(
        "multi_nic",
        &yaml(
            r#"
  domain:
    memory:
      guest: 256Mi
    devices:
      disks:
      - name: root
        disk: {}
      interfaces:
      - name: default
        passt: {}
        ports:
        - port: 80
      - name: storage
        bridge: {}
        model: e1000e
      - name: legacy
        bridge: {}
        model: rtl8139
        macAddress: "02:00:00:aa:bb:cc"
        state: down
  networks:
  - name: default
    pod: {}
  - name: storage
    multus:
      networkName: storage-net
  - name: legacy
    multus:
      networkName: legacy-net
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Tcg,
        &[
            (
                "default",
                NetBackend::Passt {
                    socket: PathBuf::from(format!("{VM_DIR}/passt.sock")),
                },
            ),
            (
                "storage",
                NetBackend::Tap {
                    ifname: "tap1".into(),
                },
            ),
            (
                "legacy",
                NetBackend::Tap {
                    ifname: "tap2".into(),
                },
            ),
        ],
    );
}

#[test]
fn user_mode_with_a_host_forward() {
    check(
        "user_hostfwd",
        &yaml(
            r#"
  domain:
    memory:
      guest: 128Mi
    devices:
      interfaces:
      - name: default
        masquerade: {}
        ports:
        - port: 80
  networks:
  - name: default
    pod: {}
"#,
        ),
        Accel::Tcg,
        &[(
            "default",
            NetBackend::User {
                hostfwd: vec![HostForward {
                    host_addr: "127.0.0.1".into(),
                    host_port: 8080,
                    guest_port: 80,
                }],
            },
        )],
    );
}

#[test]
fn multiqueue_tap() {
    check(
        "multiqueue",
        &yaml(
            r#"
  domain:
    cpu:
      cores: 4
    memory:
      guest: 256Mi
    devices:
      networkInterfaceMultiqueue: true
      disks:
      - name: root
        disk: {}
      interfaces:
      - name: default
        bridge: {}
  networks:
  - name: default
    pod: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Kvm,
        &[(
            "default",
            NetBackend::Tap {
                ifname: "tap0".into(),
            },
        )],
    );
}

#[test]
fn empty_disk_and_host_disk() {
    check(
        "empty_and_host_disk",
        &yaml(
            r#"
  domain:
    memory:
      guest: 256Mi
    devices:
      disks:
      - name: root
        disk: {}
      - name: scratch
        disk: {}
      - name: data
        disk:
          bus: scsi
  volumes:
  - name: root
    containerDisk:
      image: example/disk
  - name: scratch
    emptyDisk:
      capacity: 2Gi
  - name: data
    hostDisk:
      path: /srv/vm-data/disk.img
      type: DiskOrCreate
      capacity: 10Gi
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn kernel_boot_from_a_container() {
    check(
        "kernel_boot",
        &yaml(
            r#"
  domain:
    firmware:
      kernelBoot:
        kernelArgs: console=ttyS0 root=/dev/vda rw
        container:
          image: example/kernel
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    memory:
      guest: 256Mi
    devices:
      autoattachGraphicsDevice: false
      autoattachMemBalloon: false
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn cache_modes_readonly_serial_and_hugepages() {
    check(
        "cache_serial_hugepages",
        &yaml(
            r#"
  domain:
    memory:
      guest: 2Gi
      hugepages:
        pageSize: 2Mi
    firmware:
      serial: "SER-0001"
    devices:
      disks:
      - name: root
        disk: {}
        cache: writethrough
        serial: root-disk
      - name: ro
        disk:
          readonly: true
        cache: writeback
      - name: direct
        disk: {}
        cache: none
  volumes:
  - name: root
    containerDisk:
      image: example/disk
  - name: ro
    containerDisk:
      image: example/ro
  - name: direct
    emptyDisk:
      capacity: 1Gi
"#,
        ),
        Accel::Kvm,
        &[],
    );
}

#[test]
fn acpi_off_and_no_graphics() {
    check(
        "no_acpi_no_graphics",
        &yaml(
            r#"
  domain:
    features:
      acpi:
        enabled: false
    memory:
      guest: 64Mi
    devices:
      autoattachGraphicsDevice: false
      disks:
      - name: root
        disk: {}
  volumes:
  - name: root
    containerDisk:
      image: example/disk
"#,
        ),
        Accel::Tcg,
        &[],
    );
}

#[test]
fn defaults_add_a_masquerade_pod_interface() {
    // No interfaces and no networks: KubeVirt's defaulting adds the pod network and an interface.
    let v = vmi(&yaml(
        r#"
  domain:
    memory:
      guest: 128Mi
    devices: {}
"#,
    ));
    assert_eq!(v.spec.networks.len(), 1);
    assert_eq!(v.spec.domain.devices.interfaces.len(), 1);
    let m = convert(&v, &resolved(&v, &[]), &host(Accel::Tcg)).unwrap();
    assert_eq!(m.nics.len(), 1);
    assert_eq!(m.nics[0].model, "virtio-net-pci");
}
