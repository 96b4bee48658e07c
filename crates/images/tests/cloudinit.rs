//! Cloud-init seed disks: file contents as KubeVirt writes them, and ISOs that blkid recognises.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use kuvirt_images::cloudinit::{
    self, CONFIGDRIVE_LABEL, CloudInitData, NOCLOUD_LABEL, configdrive_files, nocloud_files,
};
use serde_json::{Value, json};

fn data() -> CloudInitData {
    CloudInitData {
        instance_id: "6a2a6e1c-8f4b-4a4e-9d59-0d3c1b7b1f10".into(),
        hostname: "vm1".into(),
        user_data: Some(b"#cloud-config\npassword: fedora\n".to_vec()),
        network_data: None,
        ssh_public_keys: vec!["ssh-ed25519 AAAA one".into(), "ssh-rsa BBBB two\n".into()],
    }
}

fn file<'a>(files: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    &files.iter().find(|(n, _)| n == name).unwrap().1
}

#[test]
fn nocloud_files_match_kubevirt() {
    let files = nocloud_files(&data());
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["meta-data", "user-data"]);
    let meta: Value = serde_json::from_slice(file(&files, "meta-data")).unwrap();
    assert_eq!(
        meta,
        json!({
            "instance-id": "6a2a6e1c-8f4b-4a4e-9d59-0d3c1b7b1f10",
            "local-hostname": "vm1",
            "public-keys": {"0": "ssh-ed25519 AAAA one", "1": "ssh-rsa BBBB two"}
        })
    );
    assert_eq!(
        file(&files, "user-data"),
        b"#cloud-config\npassword: fedora\n"
    );
}

#[test]
fn nocloud_network_config_only_when_given() {
    let mut d = data();
    d.network_data = Some(b"version: 2\nethernets: {}\n".to_vec());
    let files = nocloud_files(&d);
    assert_eq!(
        file(&files, "network-config"),
        b"version: 2\nethernets: {}\n"
    );
    d.network_data = Some(Vec::new());
    assert_eq!(nocloud_files(&d).len(), 2);
}

#[test]
fn minimal_metadata_has_only_the_instance_id() {
    let d = CloudInitData {
        instance_id: "i-1".into(),
        ..CloudInitData::default()
    };
    let files = nocloud_files(&d);
    assert_eq!(file(&files, "meta-data"), br#"{"instance-id":"i-1"}"#);
    assert_eq!(file(&files, "user-data"), b"");
}

#[test]
fn configdrive_files_match_kubevirt() {
    let mut d = data();
    d.network_data = Some(br#"{"links":[]}"#.to_vec());
    let files = configdrive_files(&d);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "openstack/latest/meta_data.json",
            "openstack/latest/user_data",
            "openstack/latest/network_data.json"
        ]
    );
    let meta: Value =
        serde_json::from_slice(file(&files, "openstack/latest/meta_data.json")).unwrap();
    assert_eq!(meta["instance_id"], "6a2a6e1c-8f4b-4a4e-9d59-0d3c1b7b1f10");
    assert_eq!(meta["uuid"], "6a2a6e1c-8f4b-4a4e-9d59-0d3c1b7b1f10");
    assert_eq!(meta["hostname"], "vm1");
    assert_eq!(meta["name"], "vm1");
    assert_eq!(meta["public_keys"]["1"], "ssh-rsa BBBB two");
}

/// `blkid -p` probes the file directly (no loop device).
fn blkid(path: &std::path::Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .expect("run blkid");
    assert!(out.status.success(), "blkid failed on {}", path.display());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn nocloud_iso_is_labelled_cidata() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("nocloud.iso");
    cloudinit::nocloud_iso(&data(), &iso).unwrap();
    let probe = blkid(&iso);
    assert!(
        probe.contains(&format!("LABEL={NOCLOUD_LABEL}\n")),
        "{probe}"
    );
    assert!(probe.contains("TYPE=iso9660\n"), "{probe}");
    assert!(!dir.path().join("nocloud.iso.staging").exists());
}

#[test]
fn configdrive_iso_is_labelled_config_2() {
    let dir = tempfile::tempdir().unwrap();
    let iso = dir.path().join("configdrive.iso");
    cloudinit::configdrive_iso(&data(), &iso).unwrap();
    let probe = blkid(&iso);
    assert!(
        probe.contains(&format!("LABEL={CONFIGDRIVE_LABEL}\n")),
        "{probe}"
    );
    assert!(probe.contains("TYPE=iso9660\n"), "{probe}");
}

#[test]
fn unwritable_destination_is_an_error() {
    let err = cloudinit::nocloud_iso(&data(), std::path::Path::new("/nonexistent/dir/x.iso"))
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/dir/x.iso"), "{err}");
}
