//! The OpenAPI documents: every served kind described with its GVK, every `$ref` resolvable,
//! index hashes matching, and the lookups kubectl's explain, apply and validation make.

#![allow(clippy::unwrap_used)]

use kuvirt_apiserver::openapi::{v2, v2_json, v3_document, v3_document_json, v3_hash, v3_index};
use kuvirt_apiserver::resources::{ResourceType, registry};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

const V3_REFS: &str = "#/components/schemas/";

fn gv_path(r: &ResourceType) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

fn gvk(r: &ResourceType, kind: &str) -> Value {
    json!({"group": r.group, "kind": kind, "version": r.version})
}

fn schemas(doc: &Value) -> &Map<String, Value> {
    doc["components"]["schemas"].as_object().unwrap()
}

/// The schema whose `x-kubernetes-group-version-kind` lists `gvk`, as kubectl looks it up.
fn by_gvk<'a>(doc: &'a Value, gvk: &Value) -> Option<(&'a String, &'a Value)> {
    schemas(doc).iter().find(|(_, s)| {
        s["x-kubernetes-group-version-kind"]
            .as_array()
            .is_some_and(|l| l.contains(gvk))
    })
}

/// Follows `$ref` and a one-element `allOf`, as kubectl's explain and patch code do.
fn resolve<'a>(doc: &'a Value, mut s: &'a Value) -> &'a Value {
    loop {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            s = &schemas(doc)[r.strip_prefix(V3_REFS).unwrap()];
        } else if let Some([one]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            s = one;
        } else {
            return s;
        }
    }
}

/// Every value of a `$ref` key anywhere in `v`.
fn all_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => all_refs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| all_refs(v, out)),
        _ => {}
    }
}

fn index_paths() -> Vec<String> {
    v3_index()["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[test]
fn index_lists_every_group_version_with_its_hash() {
    let mut want: Vec<String> = registry().iter().map(gv_path).collect();
    want.sort();
    want.dedup();
    let mut got = index_paths();
    got.sort();
    assert_eq!(got, want);
    for path in index_paths() {
        let json = v3_document_json(&path).unwrap();
        let hash: String = Sha512::digest(json)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        assert_eq!(v3_hash(&path), Some(hash.as_str()));
        assert_eq!(
            v3_index()["paths"][&path]["serverRelativeURL"],
            format!("/openapi/v3/{path}?hash={hash}")
        );
        let parsed: Value = serde_json::from_slice(json).unwrap();
        assert_eq!(Some(parsed), v3_document(&path));
    }
    assert!(v3_document("/apis/kubevirt.io/v1").is_some());
    assert!(v3_document("apis/kubevirt.io/v2").is_none());
    assert!(v3_document("apis").is_none());
}

#[test]
fn every_kind_has_a_schema_with_its_gvk_and_kubectls_paths() {
    for r in registry() {
        let doc = v3_document(&gv_path(r)).unwrap();
        let (name, schema) =
            by_gvk(&doc, &gvk(r, r.kind)).unwrap_or_else(|| panic!("{} has no schema", r.kind));
        assert!(
            !schema["description"]
                .as_str()
                .unwrap()
                .contains("not described"),
            "{name} is the fallback schema"
        );
        for field in ["apiVersion", "kind", "metadata"] {
            assert!(
                schema["properties"][field]["description"].is_string(),
                "{name}.{field}"
            );
        }
        let (list, _) = by_gvk(&doc, &gvk(r, &format!("{}List", r.kind))).unwrap();
        assert_eq!(list, &format!("{name}List"));

        // kubectl explain finds the GVK on the collection path's operations.
        let prefix = if r.group.is_empty() {
            format!("/api/{}", r.version)
        } else {
            format!("/apis/{}/{}", r.group, r.version)
        };
        let ns = if r.namespaced {
            "/namespaces/{namespace}"
        } else {
            ""
        };
        let collection = format!("{prefix}{ns}/{}", r.plural);
        assert_eq!(
            doc["paths"][&collection]["get"]["x-kubernetes-group-version-kind"],
            gvk(r, r.kind),
            "{collection}"
        );

        // kubectl's validation asks whether every PATCH of the kind takes fieldValidation, and
        // apply computes a strategic merge patch only where the PATCH accepts one.
        let patches: Vec<&Value> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|p| p.get("patch"))
            .filter(|op| op["x-kubernetes-group-version-kind"] == gvk(r, r.kind))
            .collect();
        assert_eq!(patches.len(), if r.status { 2 } else { 1 }, "{}", r.kind);
        for op in patches {
            let params = op["parameters"].as_array().unwrap();
            assert!(
                params
                    .iter()
                    .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
            );
            let content = op["requestBody"]["content"].as_object().unwrap();
            assert_eq!(
                content.contains_key("application/strategic-merge-patch+json"),
                r.strategic_merge,
                "{}",
                r.kind
            );
            assert!(content.contains_key("application/apply-patch+yaml"));
        }
    }
}

#[test]
fn every_ref_resolves_inside_its_document() {
    for path in index_paths() {
        let doc = v3_document(&path).unwrap();
        let mut refs = Vec::new();
        all_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let name = r
                .strip_prefix(V3_REFS)
                .unwrap_or_else(|| panic!("{path}: {r}"));
            assert!(schemas(&doc).contains_key(name), "{path}: {r}");
        }
    }
    let doc = v2();
    let defs = doc["definitions"].as_object().unwrap();
    let mut refs = Vec::new();
    all_refs(&doc, &mut refs);
    for r in refs {
        let name = r.strip_prefix("#/definitions/").unwrap();
        assert!(defs.contains_key(name), "v2: {r}");
    }
    assert_eq!(serde_json::from_slice::<Value>(v2_json()).unwrap(), doc);
}

#[test]
fn v2_has_every_kind() {
    let doc = v2();
    assert_eq!(doc["swagger"], "2.0");
    let defs = doc["definitions"].as_object().unwrap();
    for r in registry() {
        assert!(
            defs.values().any(|s| s["x-kubernetes-group-version-kind"]
                .as_array()
                .is_some_and(|l| l.contains(&gvk(r, r.kind)))),
            "{}",
            r.kind
        );
    }
}

/// Keywords OAS 3.0 (and Swagger 2.0) schemas do not have, siblings of `$ref` (ignored by
/// OAS 3.0), and type arrays.
fn check_dialect(schema: &Value, at: &str, v2: bool) {
    let Value::Object(m) = schema else {
        return;
    };
    for bad in [
        "$defs",
        "const",
        "unevaluatedProperties",
        "prefixItems",
        "examples",
    ] {
        assert!(!m.contains_key(bad), "{at}: {bad}");
    }
    if let Some(t) = m.get("type") {
        assert!(t.is_string(), "{at}: type {t}");
    }
    if v2 {
        for bad in ["anyOf", "oneOf", "nullable"] {
            assert!(!m.contains_key(bad), "{at}: {bad}");
        }
    } else if m.contains_key("$ref") {
        assert_eq!(m.len(), 1, "{at}: $ref with siblings");
    }
    for (k, v) in m {
        match (k.as_str(), v) {
            ("properties", Value::Object(props)) => {
                for (p, s) in props {
                    check_dialect(s, &format!("{at}.{p}"), v2);
                }
            }
            ("allOf" | "anyOf" | "oneOf", Value::Array(a)) => {
                a.iter().for_each(|s| check_dialect(s, at, v2));
            }
            ("items" | "additionalProperties", s) => check_dialect(s, &format!("{at}[]"), v2),
            _ => {}
        }
    }
}

#[test]
fn schemas_are_oas3_and_swagger2() {
    for path in index_paths() {
        let doc = v3_document(&path).unwrap();
        assert_eq!(doc["openapi"], "3.0.0");
        for (name, s) in schemas(&doc) {
            check_dialect(s, name, false);
        }
    }
    for (name, s) in v2()["definitions"].as_object().unwrap() {
        check_dialect(s, name, true);
    }
}

#[test]
fn kubevirt_names_and_vm_spec() {
    let doc = v3_document("apis/kubevirt.io/v1").unwrap();
    let s = schemas(&doc);
    for name in [
        "io.kubevirt.v1.VirtualMachine",
        "io.kubevirt.v1.VirtualMachineSpec",
        "io.kubevirt.v1.VirtualMachineInstanceSpec",
        "io.kubevirt.v1.DomainSpec",
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    ] {
        assert!(s.contains_key(name), "{name}");
    }
    for name in s.keys() {
        assert!(
            name.starts_with("io.kubevirt.v1.") || name.starts_with("io.k8s."),
            "{name}"
        );
        // schemars disambiguates clashing names with a digit suffix.
        if let Some(n) = name.strip_prefix("io.kubevirt.v1.") {
            assert!(!n.ends_with(|c: char| c.is_ascii_digit()), "{name}");
        }
    }
    let spec = &s["io.kubevirt.v1.VirtualMachineSpec"]["properties"];
    assert_eq!(spec["runStrategy"]["type"], "string");
    assert!(
        spec["runStrategy"]["description"]
            .as_str()
            .unwrap()
            .contains("RerunOnFailure")
    );
    assert_eq!(
        resolve(&doc, &spec["template"]),
        &s["io.kubevirt.v1.VirtualMachineInstanceTemplateSpec"]
    );
    // Documents of other groups do not carry KubeVirt's schemas.
    let core = v3_document("api/v1").unwrap();
    assert!(schemas(&core).contains_key("io.k8s.api.core.v1.Pod"));
    assert!(!schemas(&core).keys().any(|n| n.starts_with("io.kubevirt")));
}

/// kubectl explain's walk: resource → GVK (from the paths) → schema → fields; returns the
/// field's description.
fn explain(gv: &str, resource_path: &str, fields: &[&str]) -> String {
    let doc = v3_document(gv).unwrap();
    let gvk = &doc["paths"][resource_path]["get"]["x-kubernetes-group-version-kind"];
    let (_, mut schema) = by_gvk(&doc, gvk).unwrap();
    let mut field = schema;
    for f in fields {
        let resolved = resolve(&doc, schema);
        let resolved = match resolved.get("items") {
            Some(items) => resolve(&doc, items),
            None => resolved,
        };
        field = &resolved["properties"][f];
        assert!(field.is_object(), "{resource_path}: no field {f}");
        schema = field;
    }
    let own = field["description"].as_str().unwrap_or("");
    let referenced = resolve(&doc, field)["description"].as_str().unwrap_or("");
    format!("{own}{referenced}")
}

#[test]
fn explain_finds_descriptions() {
    let vm = "/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines";
    assert!(explain("apis/kubevirt.io/v1", vm, &["spec", "runStrategy"]).contains("Halted"));
    assert!(!explain("apis/kubevirt.io/v1", vm, &["spec", "template"]).is_empty());
    assert!(!explain("apis/kubevirt.io/v1", vm, &["metadata", "name"]).is_empty());
    // Migrations are described from the api crate's types, down to the VMI's migrationState.
    let vmims = "/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachineinstancemigrations";
    assert!(explain("apis/kubevirt.io/v1", vmims, &["spec", "vmiName"]).contains("VMI"));
    assert!(
        explain(
            "apis/kubevirt.io/v1",
            vmims,
            &["status", "migrationState", "targetNodeAddress"]
        )
        .contains("migration stream")
    );
    let pods = "/api/v1/namespaces/{namespace}/pods";
    assert!(explain("api/v1", pods, &["spec", "containers", "image"]).contains("image"));
    let leases = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases";
    assert!(
        !explain(
            "apis/coordination.k8s.io/v1",
            leases,
            &["spec", "holderIdentity"]
        )
        .is_empty()
    );
}

#[test]
fn core_lists_carry_strategic_merge_keys() {
    let doc = v3_document("api/v1").unwrap();
    let containers = &schemas(&doc)["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
    assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
    assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
    let env = &schemas(&doc)["io.k8s.api.core.v1.Container"]["properties"]["env"];
    assert_eq!(env["x-kubernetes-patch-merge-key"], "name");
}

/// Validates the documents with openapi-spec-validator (PyPI; `scripts/install-deps` installs it).
#[test]
fn documents_pass_openapi_spec_validator() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for path in index_paths() {
        let f = dir.path().join(path.replace('/', "_") + ".json");
        std::fs::write(&f, v3_document_json(&path).unwrap()).unwrap();
        files.push(f);
    }
    let f = dir.path().join("v2.json");
    std::fs::write(&f, v2_json()).unwrap();
    files.push(f);
    let script = "import json, sys\n\
        from openapi_spec_validator import validate\n\
        for f in sys.argv[1:]:\n    validate(json.load(open(f)))\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&files)
        .output()
        .expect("python3 (scripts/install-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
