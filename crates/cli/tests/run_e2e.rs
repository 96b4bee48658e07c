//! End to end: `kuvirt run` boots the demo guest under QEMU (TCG) from KubeVirt YAML and the guest
//! itself reports what it got. Needs root, qemu-system-x86, docker-registry (scripts/install-deps).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const BOOT: Duration = Duration::from_secs(90);

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The KubeVirt user-guide example, with our demo containerDisk pushed to a real registry and
/// cloud-init user data setting the hostname. Pause stops the guest's heartbeat, unpause resumes
/// it, SIGTERM powers the guest off through ACPI inside the grace period.
#[test]
fn kubevirt_example_from_a_registry_pause_and_graceful_stop() {
    let guest = demo_guest();
    let registry = Registry::start();
    let image = registry.push_demo(&guest);

    let state = state_dir();
    let user_data = "#cloud-config\nhostname: kuvirt-demo\nssh_pwauth: true\n";
    let manifest = write(
        state.path(),
        "vm.yaml",
        &format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
spec:
  runStrategy: Always
  template:
    metadata:
      labels:
        kubevirt.io/size: small
        kubevirt.io/domain: testvm
    spec:
      domain:
        devices:
          disks:
            - name: containerdisk
              disk:
                bus: virtio
            - name: cloudinitdisk
              disk:
                bus: virtio
          interfaces:
          - name: default
            masquerade: {{}}
        resources:
          requests:
            memory: 256M
      networks:
      - name: default
        pod: {{}}
      terminationGracePeriodSeconds: 30
      volumes:
        - name: containerdisk
          containerDisk:
            image: {image}
        - name: cloudinitdisk
          cloudInitNoCloud:
            userDataBase64: {b64}
"#,
            b64 = base64_encode(user_data.as_bytes())
        ),
    );
    let mut run = Run::start(&manifest, state.path(), "testvm");
    run.wait_for("kuvirt-guest: booted", BOOT);
    assert_eq!(
        run.wait_for("kuvirt-guest: hostname=", BOOT),
        "kuvirt-guest: hostname=kuvirt-demo"
    );
    assert_eq!(
        run.wait_for("kuvirt-guest: userdata-sha256=", BOOT),
        format!(
            "kuvirt-guest: userdata-sha256={}",
            sha256_hex(user_data.as_bytes())
        )
    );
    run.wait_for("kuvirt-guest: heartbeat 2", BOOT);

    // Pause: the heartbeat stops. Watch a window of several guest seconds.
    assert!(run.ctl(&["status"]).contains("\"state\":\"running\""));
    run.ctl(&["pause"]);
    assert!(run.ctl(&["status"]).contains("\"state\":\"paused\""));
    let frozen = run.last_heartbeat();
    let window = Instant::now() + Duration::from_secs(4);
    while Instant::now() < window {
        assert!(
            run.last_heartbeat() <= frozen + 1,
            "heartbeat went on while paused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let paused_at = run.last_heartbeat();
    run.ctl(&["unpause"]);
    run.wait_for(&format!("kuvirt-guest: heartbeat {}", paused_at + 2), BOOT);

    // Graceful stop: ACPI power button, the guest powers off by itself, well within 30 s.
    let asked = Instant::now();
    run.signal(Signal::SIGTERM);
    run.wait_for("kuvirt-guest: poweroff", Duration::from_secs(30));
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "stop took {:?}",
        asked.elapsed()
    );
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("the guest powered off"),
        "{}",
        run.stderr()
    );
    assert!(qemu_under(&run.vm_dir).is_empty(), "qemu left running");
    assert!(
        !run.vm_dir.join("disks").exists(),
        "ephemeral disks left behind"
    );
}

/// kernelBoot from a container image in a local OCI layout, cloud-init over NoCloud; a soft
/// reboot goes through the guest (ACPI power button, then a reset instead of an exit) and a reset
/// restarts it at once; both keep the same QEMU.
#[test]
fn kernel_boot_from_a_local_oci_layout_soft_reboot_and_reset() {
    let guest = demo_guest();
    let state = state_dir();
    let manifest = write(
        state.path(),
        "vmi.yaml",
        &format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: kboot
  namespace: default
spec:
  domain:
    firmware:
      kernelBoot:
        kernelArgs: console=ttyS0 loglevel=1
        container:
          image: oci:{layout}:kernel
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
    devices:
      disks:
      - name: cloudinit
        disk:
          bus: virtio
    memory:
      guest: 256Mi
  volumes:
  - name: cloudinit
    cloudInitNoCloud:
      userData: |
        #cloud-config
        hostname: kernel-booted
"#,
            layout = guest.join("oci").display()
        ),
    );
    let mut run = Run::start(&manifest, state.path(), "kboot");
    run.wait_for("kuvirt-guest: booted", BOOT);
    assert_eq!(
        run.wait_for("kuvirt-guest: hostname=", BOOT),
        "kuvirt-guest: hostname=kernel-booted"
    );
    assert_eq!(
        run.wait_for("kuvirt-guest: cloudinit=", BOOT),
        "kuvirt-guest: cloudinit=nocloud"
    );
    run.wait_for("kuvirt-guest: dhcp iface=eth0 ip=10.0.2.15/24", BOOT);
    // `ready` comes once acpid listens for the power button.
    run.wait_for("kuvirt-guest: ready", BOOT);
    let pid = run.ctl(&["status"]);

    run.ctl(&["soft-reboot"]);
    run.wait_for("kuvirt-guest: poweroff", BOOT);
    run.wait_for_count("kuvirt-guest: booted", 2, BOOT);
    run.wait_for_count("kuvirt-guest: ready", 2, BOOT);
    assert!(run.ctl(&["status"]).contains("\"state\":\"running\""));

    run.ctl(&["reset"]);
    run.wait_for_count("kuvirt-guest: booted", 3, BOOT);
    run.wait_for_count("kuvirt-guest: ready", 3, BOOT);
    assert_eq!(run.ctl(&["status"]), pid, "a different QEMU after reboots");

    run.signal(Signal::SIGINT);
    run.wait_for_count("kuvirt-guest: poweroff", 2, Duration::from_secs(30));
    assert!(run.wait_exit(Duration::from_secs(30)).success());
}

/// The containerDisk from a local OCI layout (no registry), cloud-init over ConfigDrive with a
/// hostname from the VMI's spec.hostname.
#[test]
fn config_drive_and_container_disk_from_a_local_layout() {
    let guest = demo_guest();
    let state = state_dir();
    let user_data = "#!/bin/sh\necho configured\n";
    let manifest = write(
        state.path(),
        "vmi.yaml",
        &format!(
            r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: cdrive
spec:
  hostname: drive-host
  domain:
    cpu:
      cores: 2
    devices:
      disks:
      - name: root
        disk:
          bus: virtio
      - name: config
        disk:
          bus: virtio
    resources:
      requests:
        memory: 256Mi
  volumes:
  - name: root
    containerDisk:
      image: oci:{layout}
  - name: config
    cloudInitConfigDrive:
      userData: {ud:?}
"#,
            layout = guest.join("oci").display(),
            ud = user_data
        ),
    );
    let mut run = Run::start(&manifest, state.path(), "cdrive");
    run.wait_for("kuvirt-guest: booted", BOOT);
    assert_eq!(
        run.wait_for("kuvirt-guest: cloudinit=", BOOT),
        "kuvirt-guest: cloudinit=configdrive"
    );
    assert_eq!(
        run.wait_for("kuvirt-guest: hostname=", BOOT),
        "kuvirt-guest: hostname=drive-host"
    );
    assert_eq!(
        run.wait_for("kuvirt-guest: userdata-sha256=", BOOT),
        format!(
            "kuvirt-guest: userdata-sha256={}",
            sha256_hex(user_data.as_bytes())
        )
    );
    run.wait_for("kuvirt-guest: ready", BOOT);
    // Stopping a paused VM resumes it first, so the guest sees the power button.
    run.ctl(&["pause"]);
    run.signal(Signal::SIGTERM);
    run.wait_for("kuvirt-guest: poweroff", Duration::from_secs(30));
    assert!(
        run.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        run.stderr()
    );
}

fn base64_encode(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}
