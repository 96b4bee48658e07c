//! The real kubectl against the embedded API server: apply (twice), get with KubeVirt's columns,
//! defaults in -o yaml, describe, patch, server-side apply, wait, get -w, delete with finalizers,
//! api-resources, explain, invalid specs, read-only tokens.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;

const TESTVM: &str = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  namespace: demo
spec:
  runStrategy: Halted
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
            masquerade: {}
        resources:
          requests:
            memory: 64M
      networks:
      - name: default
        pod: {}
      volumes:
        - name: containerdisk
          containerDisk:
            image: quay.io/kubevirt/cirros-container-disk-demo
        - name: cloudinitdisk
          cloudInitNoCloud:
            userDataBase64: SGkuXG4=
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn kubectl_apply_get_describe_patch_delete() {
    let s = Server::start();
    // The KubeVirt example's namespace, applied as YAML (`kubectl create namespace` sends
    // protobuf: see tests/kubectl_create.rs).
    let ns = write(
        s.dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
    );
    s.ok(&["apply", "-f", ns.to_str().unwrap()]);
    let vm = write(s.dir.path(), "vm.yaml", TESTVM);
    let vm = vm.to_str().unwrap();
    let first = s.ok(&["apply", "-f", vm]);
    assert!(
        first.contains("virtualmachine.kubevirt.io/testvm created"),
        "{first}"
    );
    let second = s.ok(&["apply", "-f", vm]);
    assert!(second.contains("unchanged"), "{second}");

    let table = s.ok(&["get", "vm", "-n", "demo"]);
    let header = table.lines().next().unwrap();
    for col in ["NAME", "AGE", "STATUS", "READY"] {
        assert!(header.contains(col), "{table}");
    }
    assert!(table.contains("testvm"), "{table}");

    let yaml = s.ok(&["get", "vm", "testvm", "-n", "demo", "-o", "yaml"]);
    assert!(
        yaml.contains("type: q35"),
        "machine type defaulted:\n{yaml}"
    );
    assert!(
        yaml.contains("uid:") && yaml.contains("resourceVersion:"),
        "{yaml}"
    );

    let described = s.ok(&["describe", "vm", "testvm", "-n", "demo"]);
    assert!(
        described.contains("Name:") && described.contains("testvm"),
        "{described}"
    );

    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Manual"}}"#,
    ]);
    let rs = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-n",
        "demo",
        "-o",
        "jsonpath={.spec.runStrategy}",
    ]);
    assert_eq!(rs, "Manual");
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "-n",
        "demo",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/metadata/labels","value":{"team":"a"}}]"#,
    ]);
    let labelled = s.ok(&["get", "vm", "-n", "demo", "-l", "team=a", "-o", "name"]);
    assert_eq!(labelled.trim(), "virtualmachine.kubevirt.io/testvm");

    s.ok(&[
        "wait",
        "vm/testvm",
        "-n",
        "demo",
        "--for=jsonpath={.spec.runStrategy}=Manual",
        "--timeout=10s",
    ]);

    // Finalizers hold a delete until they are removed.
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":["example.com/hold"]}}"#,
    ]);
    s.ok(&["delete", "vm", "testvm", "-n", "demo", "--wait=false"]);
    let still = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-n",
        "demo",
        "-o",
        "jsonpath={.metadata.deletionTimestamp}",
    ]);
    assert!(!still.is_empty(), "deletionTimestamp not set");
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let gone = s.fails(&["get", "vm", "testvm", "-n", "demo"]);
    assert!(
        gone.contains("NotFound") || gone.contains("not found"),
        "{gone}"
    );
}

#[test]
fn api_resources_and_short_names() {
    let s = Server::start();
    let out = s.ok(&["api-resources"]);
    let vm = out
        .lines()
        .find(|l| l.starts_with("virtualmachines "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        vm.contains("vm,vms") && vm.contains("kubevirt.io/v1") && vm.contains("VirtualMachine"),
        "{vm}"
    );
    let vmi = out
        .lines()
        .find(|l| l.starts_with("virtualmachineinstances "))
        .unwrap();
    assert!(vmi.contains("vmi,vmis"), "{vmi}");
    s.ok(&["get", "vmis", "-A"]);
}

#[test]
fn invalid_specs_name_the_field() {
    let s = Server::start();
    let bad = TESTVM
        .replace("runStrategy: Halted", "runStrategy: Sometimes")
        .replace("namespace: demo", "namespace: default");
    let f = write(s.dir.path(), "bad.yaml", &bad);
    let err = s.fails(&["apply", "-f", f.to_str().unwrap()]);
    assert!(err.contains("spec.runStrategy"), "{err}");
    // Core kinds: fields the kind does not have are refused under kubectl's default strict
    // validation, and dropped (as Kubernetes does) when validation is off.
    let cm = write(
        s.dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: typo\ndatta:\n  a: b\n",
    );
    let err = s.fails(&["apply", "-f", cm.to_str().unwrap()]);
    assert!(err.contains("unknown field \"datta\""), "{err}");
    s.ok(&["apply", "--validate=false", "-f", cm.to_str().unwrap()]);
    // kubevirt.io kinds keep fields they do not know yet.
    let extra = TESTVM
        .replace("namespace: demo", "namespace: default")
        .replace(
            "runStrategy: Halted",
            "runStrategy: Halted\n  futureField: 1",
        );
    let f = write(s.dir.path(), "extra.yaml", &extra);
    s.ok(&["apply", "--validate=false", "-f", f.to_str().unwrap()]);
    let kept = s.ok(&["get", "vm", "testvm", "-o", "jsonpath={.spec.futureField}"]);
    assert_eq!(kept, "1");
}

#[test]
fn get_watch_shows_changes() {
    let s = Server::start();
    let vm = TESTVM.replace("namespace: demo", "namespace: default");
    let f = write(s.dir.path(), "vm.yaml", &vm);
    s.ok(&["apply", "-f", f.to_str().unwrap()]);
    let mut child = Command::new("kubectl")
        .env("KUBECONFIG", s.kubeconfig())
        .env("HOME", s.dir.path())
        .args([
            "get",
            "vm",
            "-w",
            "-o",
            "jsonpath={.spec.runStrategy}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "Halted");
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Always"}}"#,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    for line in lines.by_ref() {
        if line.unwrap() == "Always" {
            seen = true;
            break;
        }
        assert!(Instant::now() < deadline);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "the watch never showed the change");
}

#[test]
fn read_only_and_anonymous_cannot_write() {
    let s = Server::start();
    let running = s.running.as_ref().unwrap();
    let viewer = running
        .creds
        .token_for(kuvirt_apiserver::pki::Role::ReadOnly)
        .unwrap()
        .token
        .clone();
    s.ok(&["get", "namespaces"]);
    let vm = write(
        s.dir.path(),
        "vm.yaml",
        &TESTVM.replace("namespace: demo", "namespace: default"),
    );
    let denied = s.fails(&[
        "--token",
        &viewer,
        "apply",
        "-f",
        vm.to_str().unwrap(),
        "--validate=false",
    ]);
    assert!(
        denied.contains("forbidden") || denied.contains("Forbidden"),
        "{denied}"
    );
    let read = s.ok(&["--token", &viewer, "get", "namespaces", "-o", "name"]);
    assert!(read.contains("namespace/default"), "{read}");
    let anon = s.fails(&["--token", "not-a-token", "get", "namespaces"]);
    assert!(
        anon.contains("Unauthorized")
            || anon.contains("unauthorized")
            || anon.contains("provide credentials"),
        "{anon}"
    );
}

#[test]
fn server_side_apply_explain_and_dry_run() {
    let s = Server::start();
    let vm = write(
        s.dir.path(),
        "vm.yaml",
        &TESTVM.replace("namespace: demo", "namespace: default"),
    );
    let vm = vm.to_str().unwrap();
    let out = s.ok(&["apply", "--server-side", "-f", vm]);
    assert!(out.contains("serverside-applied"), "{out}");
    let mf = s.ok(&[
        "get",
        "vm",
        "testvm",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
        "--show-managed-fields",
    ]);
    assert!(mf.contains("kubectl"), "managedFields: {mf}");
    // Another manager changing a field kubectl owns conflicts; --force-conflicts takes it over.
    s.ok(&[
        "patch",
        "vm",
        "testvm",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Manual"}}"#,
    ]);
    let changed = TESTVM
        .replace("namespace: demo", "namespace: default")
        .replace("runStrategy: Halted", "runStrategy: Always");
    let f2 = write(s.dir.path(), "vm2.yaml", &changed);
    let conflict = s.fails(&["apply", "--server-side", "-f", f2.to_str().unwrap()]);
    assert!(conflict.contains("conflict"), "{conflict}");
    s.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        f2.to_str().unwrap(),
    ]);
    assert_eq!(
        s.ok(&["get", "vm", "testvm", "-o", "jsonpath={.spec.runStrategy}"]),
        "Always"
    );

    let explained = s.ok(&["explain", "vm.spec.runStrategy"]);
    assert!(explained.contains("runStrategy"), "{explained}");

    let dry = TESTVM
        .replace("namespace: demo", "namespace: default")
        .replace("name: testvm", "name: dryvm");
    let f3 = write(s.dir.path(), "dry.yaml", &dry);
    let out = s.ok(&["create", "--dry-run=server", "-f", f3.to_str().unwrap()]);
    assert!(out.contains("dryvm"), "{out}");
    assert!(
        !s.kubectl(&["get", "vm", "dryvm"]).status.success(),
        "a dry run stored the object"
    );
}

#[test]
fn pagination_and_selectors() {
    let s = Server::start();
    for i in 0..7 {
        let cm = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm{i}\n  labels:\n    parity: {}\ndata:\n  i: \"{i}\"\n",
            if i % 2 == 0 { "even" } else { "odd" }
        );
        let f = write(s.dir.path(), &format!("cm{i}.yaml"), &cm);
        s.ok(&["apply", "-f", f.to_str().unwrap()]);
    }
    // kubectl follows `continue` tokens; -v=6 shows the pages it asked for.
    let out = s.kubectl(&["get", "cm", "--chunk-size=2", "-o", "name", "-v=6"]);
    assert!(out.status.success());
    let names = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        names
            .lines()
            .filter(|l| l.starts_with("configmap/cm"))
            .count(),
        7,
        "{names}"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.matches("limit=2").count() >= 4, "not paged:\n{log}");
    let odd = s.ok(&["get", "cm", "-l", "parity=odd", "-o", "name"]);
    assert_eq!(odd.lines().count(), 3, "{odd}");
    let one = s.ok(&[
        "get",
        "cm",
        "--field-selector",
        "metadata.name=cm4",
        "-o",
        "name",
    ]);
    assert_eq!(one.trim(), "configmap/cm4");
    let bad = s.fails(&["get", "cm", "--field-selector", "spec.nope=1"]);
    assert!(bad.contains("field label not supported"), "{bad}");
}

#[test]
fn owner_references_cascade_and_namespaces_empty_before_they_go() {
    let s = Server::start();
    let ns = write(
        s.dir.path(),
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gc\n",
    );
    s.ok(&["apply", "-f", ns.to_str().unwrap()]);
    let owner = write(
        s.dir.path(),
        "owner.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owner\n  namespace: gc\n",
    );
    for policy in ["background", "foreground", "orphan"] {
        s.ok(&["apply", "-f", owner.to_str().unwrap()]);
        let uid = s.ok(&[
            "get",
            "cm",
            "owner",
            "-n",
            "gc",
            "-o",
            "jsonpath={.metadata.uid}",
        ]);
        let dep = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dep\n  namespace: gc\n  ownerReferences:\n  - apiVersion: v1\n    kind: ConfigMap\n    name: owner\n    uid: {uid}\n    blockOwnerDeletion: true\n"
        );
        let f = write(s.dir.path(), "dep.yaml", &dep);
        s.ok(&["apply", "-f", f.to_str().unwrap()]);
        s.ok(&[
            "delete",
            "cm",
            "owner",
            "-n",
            "gc",
            &format!("--cascade={policy}"),
            "--timeout=30s",
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let dep_exists = s
                .kubectl(&["get", "cm", "dep", "-n", "gc"])
                .status
                .success();
            let owner_gone = !s
                .kubectl(&["get", "cm", "owner", "-n", "gc"])
                .status
                .success();
            let done = match policy {
                "orphan" => owner_gone && dep_exists,
                _ => owner_gone && !dep_exists,
            };
            if done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{policy}: dependent not handled (dep exists: {dep_exists})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        if policy == "orphan" {
            let refs = s.ok(&[
                "get",
                "cm",
                "dep",
                "-n",
                "gc",
                "-o",
                "jsonpath={.metadata.ownerReferences}",
            ]);
            assert!(
                refs.is_empty(),
                "orphaned dependent keeps its owner reference: {refs}"
            );
            s.ok(&["delete", "cm", "dep", "-n", "gc"]);
        }
    }
    // Deleting a namespace deletes what is in it, then the namespace.
    let cm = write(
        s.dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: inside\n  namespace: gc\n",
    );
    s.ok(&["apply", "-f", cm.to_str().unwrap()]);
    s.ok(&["delete", "namespace", "gc", "--timeout=30s"]);
    assert!(!s.kubectl(&["get", "namespace", "gc"]).status.success());
    assert!(
        !s.kubectl(&["get", "cm", "inside", "-n", "gc"])
            .status
            .success()
    );
}

#[test]
fn raw_protocol_errors_are_statuses() {
    let s = Server::start();
    let running = s.running.as_ref().unwrap();
    let token = running
        .creds
        .token_for(kuvirt_apiserver::pki::Role::Admin)
        .unwrap()
        .token
        .clone();
    let ca = s.dir.path().join("pki/ca.crt");
    let url = format!("{}/api/v1/namespaces/default/configmaps", running.url());
    let curl = |args: &[&str]| -> (String, String) {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (body.to_string(), code.to_string())
    };
    let (body, code) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: text/plain",
        "--data",
        "x",
        &url,
    ]);
    assert_eq!(code, "415", "{body}");
    assert!(body.contains("\"kind\":\"Status\""), "{body}");
    let big = s.dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 4 * 1024 * 1024]).unwrap();
    let (body, code) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &format!("@{}", big.display()),
        &url,
    ]);
    assert_eq!(code, "413", "{body}");
    let (body, code) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data",
        "{not json",
        &url,
    ]);
    assert_eq!(code, "400", "{body}");
    let (_, code) = curl(&["-o", "/dev/null", &format!("{}/version", running.url())]);
    assert_eq!(code, "200");
    // No credentials at all: refused with a Status, reads and writes alike.
    for method in ["GET", "POST"] {
        let out = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args([
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
                "--data",
                "{}",
                &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "401", "{method}: {body}");
        assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
    }
}
