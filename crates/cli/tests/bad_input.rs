//! Bad input to `kuvirt run`: one readable line naming the field or the reference, a non-zero exit,
//! and nothing left running or lying around.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Runs `kuvirt run` on `manifest` and returns its single stderr line.
fn run_fails(manifest: &str) -> String {
    let state = state_dir();
    let file = state.path().join("vm.yaml");
    std::fs::write(&file, manifest).unwrap();
    let out = Command::new(KUVIRT)
        .args(["run", "--accel", "tcg", "-f"])
        .arg(&file)
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "kuvirt run succeeded on bad input:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line, got:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(qemu_under(state.path()).is_empty(), "qemu left running");
    let vms = state.path().join("vms");
    if vms.exists() {
        for ns in std::fs::read_dir(&vms).unwrap().flatten() {
            for vm in std::fs::read_dir(ns.path()).unwrap().flatten() {
                assert!(
                    !vm.path().join("disks").exists(),
                    "disks left in {}",
                    vm.path().display()
                );
            }
        }
    }
    stderr.trim_end().to_string()
}

fn vmi(volumes_and_disks: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: bad\nspec:\n  domain:\n    memory:\n      guest: 128Mi\n{volumes_and_disks}"
    )
}

#[test]
fn malformed_yaml_names_the_file_and_position() {
    let line =
        run_fails("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nspec: [unclosed\n");
    assert!(line.contains("vm.yaml: not valid YAML"), "{line}");
    assert!(line.contains("line"), "no position in: {line}");
}

#[test]
fn unknown_volume_names_the_disk_field() {
    let line = run_fails(&vmi(
        "    devices:\n      disks:\n      - name: root\n        disk: {}\n      - name: nope\n        disk: {}\n  volumes:\n  - name: root\n    containerDisk:\n      image: oci:/nonexistent\n",
    ));
    assert!(line.contains("spec.domain.devices.disks[1].name"), "{line}");
    assert!(line.contains("nope"), "{line}");
}

#[test]
fn equal_boot_orders_are_refused() {
    let line = run_fails(&vmi(
        "    devices:\n      disks:\n      - name: a\n        disk: {}\n        bootOrder: 1\n      - name: b\n        disk: {}\n        bootOrder: 1\n  volumes:\n  - name: a\n    emptyDisk:\n      capacity: 1Mi\n  - name: b\n    emptyDisk:\n      capacity: 1Mi\n",
    ));
    assert!(line.contains("bootOrder"), "{line}");
    assert!(line.contains("disks[1]"), "{line}");
}

#[test]
fn missing_local_image_names_the_reference() {
    let line = run_fails(&vmi(
        "    devices:\n      disks:\n      - name: root\n        disk: {}\n  volumes:\n  - name: root\n    containerDisk:\n      image: oci:/nonexistent/layout\n",
    ));
    assert!(
        line.contains("spec.volumes[0].containerDisk.image"),
        "{line}"
    );
    assert!(line.contains("oci:/nonexistent/layout"), "{line}");
}

#[test]
fn missing_registry_image_names_the_reference() {
    let registry = Registry::start();
    let image = format!("{}/kuvirt/absent:v1", registry.addr);
    let line = run_fails(&vmi(&format!(
        "    devices:\n      disks:\n      - name: root\n        disk: {{}}\n  volumes:\n  - name: root\n    containerDisk:\n      image: {image}\n"
    )));
    assert!(line.contains(&image), "{line}");
}

#[test]
fn unreachable_registry_fails_fast_and_names_it() {
    let port = free_port(); // nothing listens there
    let image = format!("127.0.0.1:{port}/kuvirt/demo:v1");
    let start = Instant::now();
    let line = run_fails(&vmi(&format!(
        "    devices:\n      disks:\n      - name: root\n        disk: {{}}\n  volumes:\n  - name: root\n    containerDisk:\n      image: {image}\n"
    )));
    assert!(line.contains(&image), "{line}");
    assert!(line.contains("unreachable"), "{line}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn wrong_kind_and_api_version_are_named() {
    let line = run_fails("apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\n");
    assert!(line.contains("apiVersion"), "{line}");
    let line = run_fails(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: x\n",
    );
    assert!(line.contains("kind"), "{line}");
}

#[test]
fn a_missing_file_is_one_line() {
    let out = Command::new(KUVIRT)
        .args(["run", "-f", "/nonexistent/vm.yaml", "--state-dir"])
        .arg(Path::new("/tmp"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/vm.yaml"), "{stderr}");
}

#[test]
fn names_that_are_not_dns_labels_are_refused_before_touching_disk() {
    let line = run_fails(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: ../../../../etc\nspec:\n  domain:\n    memory:\n      guest: 64Mi\n    devices: {}\n",
    );
    assert!(line.contains("metadata.name"), "{line}");
    assert!(!Path::new("/etc/disks").exists());
}
