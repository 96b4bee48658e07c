//! The real kubectl against the embedded API server: apply (twice), get with KubeVirt's columns,
//! defaults in -o yaml, describe, patch, server-side apply, wait, get -w, delete with finalizers,
//! api-resources, explain, invalid specs, read-only tokens.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use kuvirt_apiserver::server::{Running, ServerConfig, start};

struct Server {
    running: Option<Running>,
    dir: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt
            .block_on(start(ServerConfig {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse().unwrap(),
                extra_hosts: vec![],
                history: Duration::from_secs(300),
            }))
            .unwrap();
        Server {
            running: Some(running),
            dir,
            _rt: rt,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.dir.path())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs kubectl, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}

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
