//! MigrationPolicy (`migrations.kubevirt.io/v1alpha1`, cluster-scoped) on the in-process API
//! server: create, get, list and refusals over HTTPS; the real kubectl applying KubeVirt's
//! documentation YAML, listing it with NAME/AGE, discovering and explaining it.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Server;
use kuvirt_apiserver::pki::Role;
use serde_json::{Value, json};

const POLICIES: &str = "/apis/migrations.kubevirt.io/v1alpha1/migrationpolicies";

/// The example of KubeVirt's user guide (migration policies), plus an experimental option.
const POLICY_YAML: &str = r#"apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: my-awesome-policy
spec:
  # Migration Configuration
  allowAutoConverge: true
  bandwidthPerMigration: 217Ki
  completionTimeoutPerGiB: 23
  allowPostCopy: false
  experimental:
    compression: zstd

  # Matching to VMIs
  selectors:
    namespaceSelector:
      hpc-workloads: "true"
      xyz-workloads-type: ""
    virtualMachineInstanceSelector:
      workload-type: db
      operating-system: ""
"#;

/// One request with curl: (HTTP code, body).
fn call(s: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let running = s.running.as_ref().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"])
        .arg(s.dir.path().join("pki/ca.crt"))
        .args([
            "-H",
            &format!("Authorization: Bearer {}", s.token(Role::Admin)),
        ])
        .args(["-X", method]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(b.to_string());
    }
    let out = cmd
        .arg(format!("{}{path}", running.url()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn rest_create_get_list_and_refusals() {
    let s = Server::start();
    let policy = json!({
        "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
        "metadata": {"name": "fast-db"},
        "spec": {"selectors": {"virtualMachineInstanceSelector": {"app": "db"}},
                 "bandwidthPerMigration": "1Gi", "allowAutoConverge": true,
                 "futureKnob": {"x": 1}},
    });
    let (code, created) = call(&s, "POST", POLICIES, Some(&policy));
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["kind"], "MigrationPolicy");
    assert!(created["metadata"]["uid"].is_string());
    assert!(
        created["metadata"].get("namespace").is_none(),
        "cluster-scoped"
    );

    let (code, got) = call(&s, "GET", &format!("{POLICIES}/fast-db"), None);
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["spec"]["bandwidthPerMigration"], "1Gi");
    assert_eq!(
        got["spec"]["futureKnob"],
        json!({"x": 1}),
        "unknown fields kept"
    );

    let (code, list) = call(&s, "GET", POLICIES, None);
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["kind"], "MigrationPolicyList");
    assert_eq!(list["apiVersion"], "migrations.kubevirt.io/v1alpha1");
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fast-db"]);

    // Not namespaced: no such path under a namespace.
    let (code, _) = call(
        &s,
        "GET",
        "/apis/migrations.kubevirt.io/v1alpha1/namespaces/default/migrationpolicies",
        None,
    );
    assert_eq!(code, 404);

    // KubeVirt's admission: bandwidth must not be negative; selectors are required.
    let mut bad = policy.clone();
    bad["metadata"]["name"] = json!("bad");
    bad["spec"]["bandwidthPerMigration"] = json!("-64Mi");
    let (code, status) = call(&s, "POST", POLICIES, Some(&bad));
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Invalid");
    let cause = &status["details"]["causes"][0];
    assert_eq!(cause["field"], "spec.bandwidthPerMigration", "{status}");
    assert_eq!(cause["reason"], "FieldValueInvalid");
    assert_eq!(cause["message"], "must not be negative");

    bad["spec"]["bandwidthPerMigration"] = json!("lots");
    let (code, status) = call(&s, "POST", POLICIES, Some(&bad));
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.bandwidthPerMigration"
    );

    let mut unselected = policy.clone();
    unselected["metadata"]["name"] = json!("unselected");
    unselected["spec"]
        .as_object_mut()
        .unwrap()
        .remove("selectors");
    let (code, status) = call(&s, "POST", POLICIES, Some(&unselected));
    assert_eq!(code, 422, "{status}");
    assert_eq!(status["details"]["causes"][0]["field"], "spec.selectors");
    assert_eq!(
        status["details"]["causes"][0]["reason"],
        "FieldValueRequired"
    );

    // An update is checked as well.
    let mut update = got.clone();
    update["spec"]["completionTimeoutPerGiB"] = json!(-1);
    let (code, status) = call(&s, "PUT", &format!("{POLICIES}/fast-db"), Some(&update));
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.completionTimeoutPerGiB"
    );

    // The OpenAPI document describes the kind from its type.
    let (code, doc) = call(
        &s,
        "GET",
        "/openapi/v3/apis/migrations.kubevirt.io/v1alpha1",
        None,
    );
    assert_eq!(code, 200);
    let schemas = &doc["components"]["schemas"];
    let root = &schemas["io.kubevirt.migrations.v1alpha1.MigrationPolicy"];
    assert_eq!(
        root["x-kubernetes-group-version-kind"][0],
        json!({"group": "migrations.kubevirt.io", "kind": "MigrationPolicy", "version": "v1alpha1"})
    );
    let spec = &schemas["io.kubevirt.migrations.v1alpha1.MigrationPolicySpec"];
    assert!(
        spec["properties"]["completionTimeoutPerGiB"].is_object(),
        "{spec}"
    );
    assert!(
        doc["paths"][POLICIES].is_object(),
        "{}",
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    );

    let (code, _) = call(&s, "DELETE", &format!("{POLICIES}/fast-db"), None);
    assert_eq!(code, 200);
    let (code, _) = call(&s, "GET", &format!("{POLICIES}/fast-db"), None);
    assert_eq!(code, 404);
}

#[test]
fn kubectl_applies_lists_and_explains_policies() {
    let s = Server::start();
    let f = s.dir.path().join("policy.yaml");
    std::fs::write(&f, POLICY_YAML).unwrap();
    let f = f.to_str().unwrap();

    let out = s.ok(&["apply", "-f", f]);
    assert!(
        out.contains("migrationpolicy.migrations.kubevirt.io/my-awesome-policy created"),
        "{out}"
    );
    let again = s.ok(&["apply", "-f", f]);
    assert!(again.contains("unchanged"), "{again}");

    let table = s.ok(&["get", "migrationpolicies"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "AGE"], "{table}");
    assert!(
        lines.next().unwrap().starts_with("my-awesome-policy "),
        "{table}"
    );

    let got: Value =
        serde_json::from_str(&s.ok(&["get", "migrationpolicy", "my-awesome-policy", "-o", "json"]))
            .unwrap();
    assert_eq!(got["spec"]["bandwidthPerMigration"], "217Ki");
    assert_eq!(got["spec"]["completionTimeoutPerGiB"], 23);
    assert_eq!(got["spec"]["experimental"]["compression"], "zstd");
    assert_eq!(
        got["spec"]["selectors"]["namespaceSelector"]["xyz-workloads-type"],
        ""
    );

    // A change by apply (a merge patch of the last applied configuration).
    let edited = POLICY_YAML.replace("completionTimeoutPerGiB: 23", "completionTimeoutPerGiB: 40");
    std::fs::write(s.dir.path().join("policy.yaml"), edited).unwrap();
    let out = s.ok(&["apply", "-f", f]);
    assert!(out.contains("configured"), "{out}");
    let timeout = s.ok(&[
        "get",
        "migrationpolicies.migrations.kubevirt.io",
        "my-awesome-policy",
        "-o",
        "jsonpath={.spec.completionTimeoutPerGiB}",
    ]);
    assert_eq!(timeout, "40");

    // Refused with the field's path.
    let bad = POLICY_YAML
        .replace("my-awesome-policy", "bad-policy")
        .replace(
            "bandwidthPerMigration: 217Ki",
            "bandwidthPerMigration: -1Mi",
        );
    let badf = s.dir.path().join("bad.yaml");
    std::fs::write(&badf, bad).unwrap();
    let err = s.fails(&["apply", "-f", badf.to_str().unwrap()]);
    assert!(err.contains("spec.bandwidthPerMigration"), "{err}");
    assert!(err.contains("must not be negative"), "{err}");

    let resources = s.ok(&["api-resources", "--api-group=migrations.kubevirt.io"]);
    let row = resources
        .lines()
        .find(|l| l.starts_with("migrationpolicies "))
        .unwrap_or_else(|| panic!("{resources}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "migrationpolicies",
            "migrations.kubevirt.io/v1alpha1",
            "false",
            "MigrationPolicy"
        ]
    );

    // Namespaces carry their name as a label, as in Kubernetes: namespace selectors use it.
    s.ok(&["create", "namespace", "hpc"]);
    let label = s.ok(&[
        "get",
        "namespace",
        "hpc",
        "-o",
        r"jsonpath={.metadata.labels.kubernetes\.io/metadata\.name}",
    ]);
    assert_eq!(label, "hpc");

    let explain = s.ok(&["explain", "migrationpolicies.spec.selectors"]);
    assert!(
        explain.contains("virtualMachineInstanceSelector"),
        "{explain}"
    );

    let out = s.ok(&["delete", "migrationpolicy", "my-awesome-policy"]);
    assert!(out.contains("deleted"), "{out}");
    let empty = s.kubectl(&["get", "migrationpolicies"]);
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("No resources found"),
        "{empty:?}"
    );
}
