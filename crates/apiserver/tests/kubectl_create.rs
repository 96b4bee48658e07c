//! The real kubectl's typed-client commands, which send protobuf bodies: `create namespace`,
//! `create configmap`, `create secret generic`, `create serviceaccount`, `create service
//! clusterip`, each read back with `get -o json`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use kuvirt_apiserver::server::{Running, ServerConfig, start};
use serde_json::Value;

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

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}

#[test]
fn kubectl_create_sends_protobuf() {
    let s = Server::start();

    // -v=8 logs the request headers: the body really is protobuf.
    let out = s.kubectl(&["create", "namespace", "demo", "-v=8"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("namespace/demo created"), "{stdout}");
    assert!(
        stderr.contains("Content-Type: application/vnd.kubernetes.protobuf"),
        "{stderr}"
    );
    let ns = s.json(&["namespace", "demo"]);
    assert_eq!(ns["kind"], "Namespace");
    assert_eq!(ns["metadata"]["name"], "demo");

    s.ok(&[
        "create",
        "configmap",
        "cm",
        "-n",
        "demo",
        "--from-literal=a=b",
    ]);
    let cm = s.json(&["configmap", "cm", "-n", "demo"]);
    assert_eq!(cm["data"]["a"], "b", "{cm}");
    assert_eq!(cm["metadata"]["namespace"], "demo");

    s.ok(&[
        "create",
        "secret",
        "generic",
        "s",
        "-n",
        "demo",
        "--from-literal=k=v",
    ]);
    let secret = s.json(&["secret", "s", "-n", "demo"]);
    assert_eq!(secret["type"], "Opaque", "{secret}");
    let data = secret["data"]["k"].as_str().unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    assert_eq!(decoded, b"v");

    s.ok(&["create", "serviceaccount", "sa", "-n", "demo"]);
    let sa = s.json(&["serviceaccount", "sa", "-n", "demo"]);
    assert_eq!(sa["kind"], "ServiceAccount");
    assert_eq!(sa["metadata"]["name"], "sa");

    s.ok(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "demo",
        "--tcp=80:8080",
    ]);
    let svc = s.json(&["service", "web", "-n", "demo"]);
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 80, "{svc}");
    assert_eq!(port["targetPort"], 8080, "{svc}");
    assert_eq!(port["protocol"], "TCP", "{svc}");
    assert_eq!(svc["spec"]["type"], "ClusterIP", "{svc}");
    assert_eq!(svc["spec"]["selector"]["app"], "web", "{svc}");

    // Objects made by protobuf behave like any other: delete goes through.
    s.ok(&["delete", "configmap", "cm", "-n", "demo"]);
    let gone = s.kubectl(&["get", "configmap", "cm", "-n", "demo"]);
    assert!(!gone.status.success());
}
