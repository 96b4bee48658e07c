//! `GET /metrics` over HTTPS against the in-process API server: creates, patches (merge and
//! apply), gets, lists and deletes move `apiserver_request_total` by exactly what was sent; only
//! the admin token reads the counters.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Server;
use kuvirt_apiserver::pki::Role;
use serde_json::json;

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

/// One request with curl: (HTTP code, body). No token when `role` is None.
fn call(
    s: &Server,
    role: Option<Role>,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> (u16, String) {
    let running = s.running.as_ref().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.dir.path().join("pki/ca.crt"))
        .args(["-X", method]);
    if let Some(role) = role {
        cmd.args(["-H", &format!("Authorization: Bearer {}", s.token(role))]);
    }
    if let Some((ct, b)) = body {
        cmd.args(["-H", &format!("Content-Type: {ct}"), "--data-binary", b]);
    }
    let out = cmd
        .arg(format!("{}{path}", running.url()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// The value of the counter with exactly these labels (0 when absent).
fn counter(text: &str, labels: &str) -> u64 {
    let prefix = format!("apiserver_request_total{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn vm_labels(code: u16, verb: &str, scope: &str, sub: &str) -> String {
    format!(
        r#"code="{code}",group="kubevirt.io",resource="virtualmachines",scope="{scope}",subresource="{sub}",verb="{verb}",version="v1""#
    )
}

#[test]
fn writes_and_reads_move_the_request_counters() {
    let s = Server::start();
    let metrics = |s: &Server| {
        let (code, body) = call(s, Some(Role::Admin), "GET", "/metrics", None);
        assert_eq!(code, 200, "{body}");
        body
    };
    let before = metrics(&s);
    assert!(
        before.contains("# TYPE apiserver_request_total counter"),
        "{before}"
    );
    for i in 0..3 {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": format!("vm{i}")},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {},
                     "resources": {"requests": {"memory": "64Mi"}}}}}},
        });
        let (code, body) = call(
            &s,
            Some(Role::Admin),
            "POST",
            VMS,
            Some(("application/json", &vm.to_string())),
        );
        assert_eq!(code, 201, "{body}");
    }
    let merge = json!({"metadata": {"labels": {"a": "b"}}}).to_string();
    for i in 0..2 {
        let (code, body) = call(
            &s,
            Some(Role::Admin),
            "PATCH",
            &format!("{VMS}/vm{i}"),
            Some(("application/merge-patch+json", &merge)),
        );
        assert_eq!(code, 200, "{body}");
    }
    let apply = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":{"name":"vm2","labels":{"c":"d"}}}"#;
    let (code, body) = call(
        &s,
        Some(Role::Admin),
        "PATCH",
        &format!("{VMS}/vm2?fieldManager=test&force=true"),
        Some(("application/apply-patch+yaml", apply)),
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = call(&s, Some(Role::Admin), "GET", &format!("{VMS}/vm0"), None);
    assert_eq!(code, 200);
    let (code, _) = call(&s, Some(Role::Admin), "GET", &format!("{VMS}/nope"), None);
    assert_eq!(code, 404);
    let (code, _) = call(&s, Some(Role::Admin), "GET", VMS, None);
    assert_eq!(code, 200);
    let (code, _) = call(&s, Some(Role::Admin), "DELETE", &format!("{VMS}/vm1"), None);
    assert_eq!(code, 200);
    // A read-only user's write is counted with its 403.
    let (code, _) = call(
        &s,
        Some(Role::ReadOnly),
        "DELETE",
        &format!("{VMS}/vm0"),
        None,
    );
    assert_eq!(code, 403);
    let (code, _) = call(&s, Some(Role::Admin), "GET", "/apis/kubevirt.io/v1", None);
    assert_eq!(code, 200);

    let after = metrics(&s);
    let moved = |labels: &str| counter(&after, labels) - counter(&before, labels);
    assert_eq!(moved(&vm_labels(201, "POST", "resource", "")), 3, "{after}");
    assert_eq!(
        moved(&vm_labels(200, "PATCH", "resource", "")),
        2,
        "{after}"
    );
    assert_eq!(
        moved(&vm_labels(200, "APPLY", "resource", "")),
        1,
        "{after}"
    );
    assert_eq!(moved(&vm_labels(200, "GET", "resource", "")), 1, "{after}");
    assert_eq!(moved(&vm_labels(404, "GET", "resource", "")), 1, "{after}");
    assert_eq!(
        moved(&vm_labels(200, "LIST", "namespace", "")),
        1,
        "{after}"
    );
    assert_eq!(
        moved(&vm_labels(200, "DELETE", "resource", "")),
        1,
        "{after}"
    );
    assert_eq!(
        moved(&vm_labels(403, "DELETE", "resource", "")),
        1,
        "{after}"
    );
    assert_eq!(
        moved(
            r#"code="200",group="kubevirt.io",resource="",scope="",subresource="",verb="GET",version="v1""#
        ),
        1,
        "{after}"
    );
    // /metrics itself is not an API request.
    assert!(!after.contains("metrics"), "{after}");

    // Only the admin reads the counters.
    let (code, body) = call(&s, Some(Role::ReadOnly), "GET", "/metrics", None);
    assert_eq!(code, 403, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Forbidden");
    let (code, _) = call(&s, Some(Role::Node), "GET", "/metrics", None);
    assert_eq!(code, 403);
    let (code, body) = call(&s, None, "GET", "/metrics", None);
    assert_eq!(code, 401, "{body}");
}
