//! `kuvirt get|apply|delete` against `kuvirt server` as a process: the KubeVirt example VM applied
//! (twice), listed as kubectl's table, shown as YAML with server defaults, deleted; unknown types
//! and missing objects give one-line errors.

#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

const KUVIRT: &str = env!("CARGO_BIN_EXE_kuvirt");

struct Server {
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(KUVIRT)
            .args(["server", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            // The control plane only: these tests run no guests.
            .arg("--no-node-agent")
            .env("KUVIRT_LOG", "kuvirt_controller=debug,kube_runtime=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap();
        let s = Server { child, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        // The server listens before its kubeconfig is written: wait for both.
        while TcpStream::connect(("127.0.0.1", port)).is_err() || !s.kubeconfig().exists() {
            assert!(Instant::now() < deadline, "server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        s.wait_ready(deadline);
        s
    }

    /// Polls /healthz through kube-rs until the server answers it.
    fn wait_ready(&self, deadline: Instant) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let kc = Kubeconfig::read_from(self.kubeconfig()).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap();
            let client = kube::Client::try_from(cfg).unwrap();
            loop {
                // `/healthz?`: the list form is the only builder that takes a bare path.
                let req = kube::core::Request::new("/healthz")
                    .list(&Default::default())
                    .unwrap();
                let ok = client.request_text(req).await.is_ok_and(|t| t == "ok");
                if ok {
                    return;
                }
                assert!(Instant::now() < deadline, "server did not become ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn kuvirt(&self, args: &[&str]) -> Output {
        Command::new(KUVIRT)
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    }

    /// Runs kuvirt, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kuvirt(args);
        assert!(
            out.status.success(),
            "kuvirt {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kuvirt, asserts failure with exactly one stderr line, returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.kuvirt(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "kuvirt {args:?} succeeded");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
        stderr.trim_end().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The KubeVirt example VM, in namespace default.
fn example_vm(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/vm.yaml"
    ))
    .unwrap();
    let text = text.replacen(
        "  name: testvm\n",
        "  name: testvm\n  namespace: default\n",
        1,
    );
    let path = dir.join("vm.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn apply_get_delete_the_example_vm() {
    let s = Server::start();
    let vm = example_vm(s.dir.path());
    let vm = vm.to_str().unwrap();

    let applied = s.ok(&["apply", "-f", vm]);
    assert_eq!(
        applied,
        "virtualmachine.kubevirt.io/testvm serverside-applied\n"
    );

    let table = s.ok(&["get", "vm"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "AGE", "STATUS", "READY"], "{table}");
    let row = lines.next().unwrap();
    assert!(row.starts_with("testvm   "), "{table}");
    assert_eq!(lines.next(), None, "{table}");

    let yaml = s.ok(&["get", "vm", "testvm", "-o", "yaml"]);
    assert!(
        yaml.contains("type: q35"),
        "machine type defaulted:\n{yaml}"
    );
    assert!(yaml.starts_with("apiVersion: kubevirt.io/v1\n"), "{yaml}");
    assert!(!yaml.contains("managedFields"), "{yaml}");

    let json = s.ok(&["get", "virtualmachines.kubevirt.io", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["metadata"]["name"], "testvm");
    assert_eq!(
        s.ok(&["get", "VirtualMachine", "-o", "name"]),
        "virtualmachine.kubevirt.io/testvm\n"
    );

    let all = s.ok(&["get", "vms", "-A"]);
    let header: Vec<&str> = all.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "AGE", "STATUS", "READY"],
        "{all}"
    );
    assert!(
        all.lines()
            .nth(1)
            .unwrap()
            .starts_with("default     testvm   "),
        "{all}"
    );

    // Idempotent: the same apply again changes nothing and still succeeds.
    let again = s.ok(&["apply", "-f", vm]);
    assert_eq!(again, applied);
    let yaml2 = s.ok(&["get", "vm/testvm", "-o", "yaml"]);
    let generation = |y: &str| {
        y.lines()
            .find(|l| l.trim_start().starts_with("generation:"))
            .map(str::to_string)
    };
    assert_eq!(generation(&yaml), generation(&yaml2));

    let err = s.fails(&["get", "nosuchthing"]);
    assert_eq!(
        err,
        "error: the server doesn't have a resource type \"nosuchthing\""
    );

    // Nothing of this kind exists: kubectl's message on stderr.
    let out = s.kuvirt(&["get", "vmim"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "No resources found in default namespace.\n"
    );

    let deleted = s.ok(&["delete", "vm", "testvm"]);
    assert_eq!(deleted, "virtualmachine.kubevirt.io \"testvm\" deleted\n");
    let err = s.fails(&["get", "vm", "testvm"]);
    assert_eq!(
        err,
        "Error from server (NotFound): virtualmachines.kubevirt.io \"testvm\" not found"
    );
    let err = s.fails(&["delete", "vm", "testvm"]);
    assert!(err.starts_with("Error from server (NotFound): "), "{err}");
    s.ok(&["delete", "vm", "testvm", "--ignore-not-found"]);

    // Cluster-scoped types and -f for delete.
    let ns = s.dir.path().join("ns.yaml");
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
    )
    .unwrap();
    let ns = ns.to_str().unwrap();
    assert_eq!(
        s.ok(&["apply", "-f", ns]),
        "namespace/demo serverside-applied\n"
    );
    assert!(s.ok(&["get", "ns", "demo"]).contains("demo"));
    assert_eq!(
        s.ok(&["delete", "-f", ns, "--timeout", "60s"]),
        "namespace \"demo\" deleted\n"
    );
    s.fails(&["get", "namespace", "demo"]);
}

/// Polls `kuvirt get vmi NAME -o json` until `done` holds for its result (None: no such VMI).
fn wait_vmi(s: &Server, name: &str, what: &str, done: impl Fn(Option<&serde_json::Value>) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = s.kuvirt(&["get", "vmi", name, "-o", "json"]);
        let vmi: Option<serde_json::Value> = out
            .status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap());
        if done(vmi.as_ref()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; server log:\n{}",
            std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn start_stop_restart_through_the_controller() {
    let s = Server::start();
    let vm = example_vm(s.dir.path());
    let halted = std::fs::read_to_string(&vm)
        .unwrap()
        .replace("runStrategy: Always", "runStrategy: Halted");
    std::fs::write(&vm, halted).unwrap();
    s.ok(&["apply", "-f", vm.to_str().unwrap()]);

    let err = s.fails(&["restart", "testvm"]);
    assert_eq!(
        err,
        "Error from server (Conflict): Operation cannot be fulfilled on virtualmachine.kubevirt.io \"testvm\": RunStategy Halted does not support manual restart requests"
    );
    assert_eq!(
        s.ok(&["start", "testvm"]),
        "VM testvm was scheduled to start\n"
    );
    let uid = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v["metadata"]["uid"].as_str())
            .map(str::to_string)
    };
    wait_vmi(&s, "testvm", "the VMI to appear", |v| v.is_some());
    let first = {
        let out = s.ok(&["get", "vmi", "testvm", "-o", "json"]);
        uid(Some(&serde_json::from_str(&out).unwrap())).unwrap()
    };
    let err = s.fails(&["start", "testvm"]);
    assert!(err.starts_with("Error from server (Conflict): "), "{err}");

    assert_eq!(
        s.ok(&["restart", "testvm"]),
        "VM testvm was scheduled to restart\n"
    );
    wait_vmi(&s, "testvm", "a new VMI", |v| {
        uid(v).is_some_and(|u| u != first)
    });

    let err = s.fails(&["stop", "testvm", "--force"]);
    assert_eq!(
        err,
        "error: Must both use --force=true and set --grace-period."
    );
    assert_eq!(
        s.ok(&["stop", "testvm"]),
        "VM testvm was scheduled to stop\n"
    );
    wait_vmi(&s, "testvm", "the VMI to go away", |v| v.is_none());
    let yaml = s.ok(&["get", "vm", "testvm", "-o", "yaml"]);
    assert!(yaml.contains("runStrategy: Halted"), "{yaml}");

    let err = s.fails(&["start", "nope", "-n", "default"]);
    assert_eq!(
        err,
        "Error from server (NotFound): virtualmachine.kubevirt.io \"nope\" not found"
    );
}
