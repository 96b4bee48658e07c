//! The real kubectl's typed-client commands, which send protobuf bodies: `create namespace`,
//! `create configmap`, `create secret generic`, `create serviceaccount`, `create service
//! clusterip`, each read back with `get -o json`.

#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine;
use common::Server;
use serde_json::Value;

impl Server {
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).unwrap()
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
