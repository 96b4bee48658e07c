//! OpenAPI documents of the served kinds (`/openapi/v3`, `/openapi/v3/<gv>`, `/openapi/v2`),
//! generated once from the api crate's and k8s-openapi's schemas, for kubectl's validation,
//! `explain`, `apply` and `edit`.
//!
//! Schema names follow Kubernetes: k8s-openapi already names its types
//! `io.k8s.api.core.v1.Pod`, `io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta`, …; the api crate's
//! types (schemars names them by their Rust name) become `io.kubevirt.v1.<Name>`, as KubeVirt
//! publishes them. Root kinds and their lists carry `x-kubernetes-group-version-kind`.

use std::sync::OnceLock;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    DeleteOptions, LabelSelector, ListMeta, Patch, Status,
};
use k8s_openapi::schemars::Schema;
use k8s_openapi::schemars::generate::{SchemaGenerator, SchemaSettings};
use k8s_openapi::schemars::transform::{AddNullable, Transform, transform_subschemas};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha512};

use crate::resources::{ResourceType, registry};

/// Where OAS 3 documents keep their schemas.
const V3_REFS: &str = "#/components/schemas/";
/// Where Swagger 2.0 documents keep their schemas.
const V2_REFS: &str = "#/definitions/";
/// Prefix of the api crate's schema names.
const KUBEVIRT_PREFIX: &str = "io.kubevirt.v1.";
const META: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.";
const GVK: &str = "x-kubernetes-group-version-kind";
const PRESERVE: &str = "x-kubernetes-preserve-unknown-fields";

/// The `/openapi/v3` discovery document: every group-version with the URL of its document,
/// whose `hash` query parameter changes whenever the document does.
pub fn v3_index() -> Value {
    cache().index.clone()
}

/// The OAS 3.0 document of one group-version: `api/v1` or `apis/GROUP/VERSION` (no leading
/// slash, as in the index's keys). `None` for a group-version this server does not serve.
pub fn v3_document(path: &str) -> Option<Value> {
    v3_entry(path).map(|d| d.value.clone())
}

/// [`v3_document`] serialised, the bytes that [`v3_hash`] hashes: serve these.
pub fn v3_document_json(path: &str) -> Option<&'static [u8]> {
    v3_entry(path).map(|d| d.json.as_slice())
}

/// The hash (uppercase hex SHA-512 of [`v3_document_json`]) the index advertises for `path`.
pub fn v3_hash(path: &str) -> Option<&'static str> {
    v3_entry(path).map(|d| d.hash.as_str())
}

/// The Swagger 2.0 document of every served kind (`/openapi/v2`, JSON only).
pub fn v2() -> Value {
    cache().v2.value.clone()
}

/// [`v2`] serialised.
pub fn v2_json() -> &'static [u8] {
    &cache().v2.json
}

struct Doc {
    value: Value,
    json: Vec<u8>,
    hash: String,
}

impl Doc {
    fn new(value: Value) -> Doc {
        let json = serde_json::to_vec(&value).unwrap_or_default();
        let hash = Sha512::digest(&json)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect();
        Doc { value, json, hash }
    }
}

struct Cache {
    index: Value,
    /// `(path, document)`, core first.
    v3: Vec<(String, Doc)>,
    v2: Doc,
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(build)
}

fn v3_entry(path: &str) -> Option<&'static Doc> {
    let path = path.trim_matches('/');
    cache().v3.iter().find(|(p, _)| p == path).map(|(_, d)| d)
}

/// `api/v1` or `apis/GROUP/VERSION`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn build() -> Cache {
    let schemas = schemas();
    let mut gvs: Vec<(&str, &str)> = Vec::new();
    for r in registry() {
        if !gvs.contains(&(r.group, r.version)) {
            gvs.push((r.group, r.version));
        }
    }
    gvs.sort_by_key(|(g, _)| !g.is_empty());
    let v3: Vec<(String, Doc)> = gvs
        .iter()
        .map(|&(g, v)| {
            let kinds: Vec<&ResourceType> = registry()
                .iter()
                .filter(|r| r.group == g && r.version == v)
                .collect();
            (gv_path(g, v), Doc::new(v3_doc(&schemas, &kinds)))
        })
        .collect();
    let mut paths = Map::new();
    for (path, doc) in &v3 {
        paths.insert(
            path.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{path}?hash={}", doc.hash) }),
        );
    }
    let all: Vec<&ResourceType> = registry().iter().collect();
    Cache {
        index: json!({ "paths": paths }),
        v3,
        v2: Doc::new(v2_doc(&schemas, &all)),
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas

/// Every schema, in OAS 3 form with final names, GVKs and list kinds.
fn schemas() -> Map<String, Value> {
    let mut settings = SchemaSettings::openapi3();
    // Kubernetes marks optional fields by leaving them out of `required`, never as nullable.
    for t in settings.transforms.iter_mut() {
        if t.is::<AddNullable>() {
            *t = Box::new(StripNull);
        }
    }
    let mut generator = settings.into_generator();
    let mut roots: Vec<(&ResourceType, String)> = Vec::new();
    for r in registry() {
        let name = kind_schema(&mut generator, r).and_then(|s| ref_name(&s));
        let name = name.unwrap_or_else(|| {
            let name = format!("{}{}", name_prefix(r), r.kind);
            generator
                .definitions_mut()
                .insert(name.clone(), fallback_schema(r));
            name
        });
        roots.push((r, name));
    }
    // Referenced by the paths of every document.
    generator.subschema_for::<ListMeta>();
    generator.subschema_for::<Status>();
    generator.subschema_for::<DeleteOptions>();
    generator.subschema_for::<Patch>();
    let defs = generator.take_definitions(true);

    let mut out = Map::new();
    for (name, mut schema) in defs {
        rewrite_refs(&mut schema, &|r| {
            r.strip_prefix(V3_REFS)
                .map(|n| format!("{V3_REFS}{}", final_name(n)))
        });
        out.insert(final_name(&name), schema);
    }
    inline_scalars(&mut out);
    for s in out.values_mut() {
        walk(s, &mut |m| {
            if m.is_empty() {
                m.insert(PRESERVE.into(), true.into());
            }
        });
    }
    for (r, name) in roots {
        let name = final_name(&name);
        if let Some(Value::Object(s)) = out.get_mut(&name) {
            s.insert(GVK.into(), json!([gvk(r, r.kind)]));
            describe_type_meta(s);
        }
        let list = list_schema(r, &name);
        out.insert(format!("{name}List"), list);
    }
    add_patch_metadata(&mut out);
    out
}

/// Kubernetes' name of a generated schema.
fn final_name(name: &str) -> String {
    if name.contains('.') {
        name.to_owned()
    } else {
        format!("{KUBEVIRT_PREFIX}{name}")
    }
}

fn name_prefix(r: &ResourceType) -> String {
    match r.group {
        "" => "io.k8s.api.core.v1.".to_owned(),
        "kubevirt.io" => KUBEVIRT_PREFIX.to_owned(),
        g => {
            let g = g.strip_suffix(".k8s.io").unwrap_or(g);
            format!("io.k8s.api.{g}.{}.", r.version)
        }
    }
}

fn gvk(r: &ResourceType, kind: &str) -> Value {
    json!({ "group": r.group, "kind": kind, "version": r.version })
}

/// The name in a `{"$ref": "#/components/schemas/NAME"}` schema.
fn ref_name(s: &Schema) -> Option<String> {
    s.get("$ref")?
        .as_str()?
        .strip_prefix(V3_REFS)
        .map(str::to_owned)
}

/// The schema of a served kind, as a `$ref`; `None` for a kind with no schema here.
fn kind_schema(g: &mut SchemaGenerator, r: &ResourceType) -> Option<Schema> {
    Some(match (r.group, r.kind) {
        ("kubevirt.io", "VirtualMachine") => g.subschema_for::<kuvirt_api::VirtualMachine>(),
        ("kubevirt.io", "VirtualMachineInstance") => {
            g.subschema_for::<kuvirt_api::VirtualMachineInstance>()
        }
        ("kubevirt.io", "VirtualMachineInstanceMigration") => {
            g.subschema_for::<kuvirt_api::v1::VirtualMachineInstanceMigration>()
        }
        ("kubevirt.io", "VirtualMachineInstanceReplicaSet") => replica_set_schema(g),
        ("migrations.kubevirt.io", "MigrationPolicy") => {
            g.subschema_for::<kuvirt_api::migrations::MigrationPolicy>()
        }
        ("", "Namespace") => g.subschema_for::<Namespace>(),
        ("", "Pod") => g.subschema_for::<Pod>(),
        ("", "Node") => g.subschema_for::<Node>(),
        ("", "Event") => g.subschema_for::<Event>(),
        ("", "Secret") => g.subschema_for::<Secret>(),
        ("", "ConfigMap") => g.subschema_for::<ConfigMap>(),
        ("", "Service") => g.subschema_for::<Service>(),
        ("", "ServiceAccount") => g.subschema_for::<ServiceAccount>(),
        ("coordination.k8s.io", "Lease") => g.subschema_for::<Lease>(),
        _ => return None,
    })
}

/// Adds a hand-written schema to the generator's definitions; returns a `$ref` to it.
fn define(g: &mut SchemaGenerator, name: &str, schema: Value) -> Schema {
    g.definitions_mut().insert(name.to_owned(), schema);
    let mut s = Schema::default();
    s.insert("$ref".into(), format!("{V3_REFS}{name}").into());
    s
}

const API_VERSION_DOC: &str = "The schema version of this object, `group/version` (`v1` for the core group). \
     Servers may convert objects of older versions and refuse unknown ones.";
const KIND_DOC: &str = "The type of this object, in CamelCase. Servers infer it from the URL; \
     it cannot change.";
const METADATA_DOC: &str = "Standard object metadata: name, namespace, labels, annotations, owners, \
     finalizers and the fields the server maintains.";
const SPEC_DOC: &str = "The desired state of the object.";
const STATUS_DOC: &str = "The observed state of the object, written by controllers through the status \
     subresource.";

fn type_meta() -> (Value, Value) {
    (
        json!({"type": "string", "description": API_VERSION_DOC}),
        json!({"type": "string", "description": KIND_DOC}),
    )
}

/// Gives a root kind's `apiVersion`, `kind`, `metadata`, `spec` and `status` a description where
/// its schema has none, as Kubernetes' do.
fn describe_type_meta(schema: &mut Map<String, Value>) {
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for (field, doc) in [
        ("apiVersion", API_VERSION_DOC),
        ("kind", KIND_DOC),
        ("metadata", METADATA_DOC),
        ("spec", SPEC_DOC),
        ("status", STATUS_DOC),
    ] {
        if let Some(Value::Object(p)) = props.get_mut(field)
            && !p.contains_key("description")
        {
            // OAS 3.0 ignores the siblings of a `$ref`; Kubernetes wraps it in `allOf`.
            if let Some(r) = p.remove("$ref") {
                p.insert("allOf".into(), json!([{ "$ref": r }]));
            }
            p.insert("description".into(), doc.into());
        }
    }
    // k8s-openapi requires `metadata` (not optional in Rust); Kubernetes does not.
    if let Some(Value::Array(required)) = schema.get_mut("required") {
        required.retain(|f| f != "metadata");
        if required.is_empty() {
            schema.remove("required");
        }
    }
}

fn with_description(mut s: Schema, description: &str) -> Value {
    s.insert("description".into(), description.into());
    s.to_value()
}

fn replica_set_schema(g: &mut SchemaGenerator) -> Schema {
    let (api_version, kind) = type_meta();
    let meta = g.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>();
    let selector = g.subschema_for::<LabelSelector>();
    let template = g.subschema_for::<kuvirt_api::v1::VirtualMachineInstanceTemplateSpec>();
    define(
        g,
        "VirtualMachineInstanceReplicaSetSpec",
        json!({
            "description": "`spec` of a VirtualMachineInstanceReplicaSet.",
            "type": "object",
            "properties": {
                "replicas": {"type": "integer", "format": "int32", "description": "How many VMIs to keep; defaults to 1."},
                "selector": with_description(selector, "Label query over the VMIs this replica set owns; it must match the template's labels."),
                "template": with_description(template, "The VMIs to create."),
                "paused": {"type": "boolean", "description": "When true, no VMIs are created or deleted."},
            },
            "required": ["selector", "template"],
            "additionalProperties": true,
        }),
    );
    define(
        g,
        "VirtualMachineInstanceReplicaSetStatus",
        json!({
            "description": "`status` of a VirtualMachineInstanceReplicaSet.",
            "type": "object",
            "properties": {
                "replicas": {"type": "integer", "format": "int32", "description": "The number of VMIs managed and not final or deleted."},
                "readyReplicas": {"type": "integer", "format": "int32", "description": "The number of managed VMIs that are ready."},
                "labelSelector": {"type": "string", "description": "The selector in string form, for the scale subresource."},
                "conditions": {
                    "type": "array",
                    "items": {"type": "object", PRESERVE: true},
                },
            },
            "additionalProperties": true,
        }),
    );
    define(
        g,
        "VirtualMachineInstanceReplicaSet",
        json!({
            "description": "A `kubevirt.io/v1` VirtualMachineInstanceReplicaSet: keeps a number of identical VMIs running.",
            "type": "object",
            "properties": {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": with_description(meta, METADATA_DOC),
                "spec": {"$ref": format!("{V3_REFS}VirtualMachineInstanceReplicaSetSpec")},
                "status": {"$ref": format!("{V3_REFS}VirtualMachineInstanceReplicaSetStatus")},
            },
            "required": ["spec"],
        }),
    )
}

/// For a kind registered without a schema: any object with Kubernetes' metadata.
fn fallback_schema(r: &ResourceType) -> Value {
    let (api_version, kind) = type_meta();
    json!({
        "description": format!("{} ({}); its fields are not described.", r.kind, r.api_version()),
        "type": "object",
        "properties": {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"$ref": format!("{V3_REFS}{META}ObjectMeta")},
        },
        PRESERVE: true,
    })
}

/// `<Kind>List`, as Kubernetes publishes it.
fn list_schema(r: &ResourceType, item: &str) -> Value {
    let (api_version, kind) = type_meta();
    json!({
        "description": format!("{}List is a list of {}.", r.kind, r.kind),
        "type": "object",
        "properties": {
            "apiVersion": api_version,
            "items": {
                "type": "array",
                "description": format!("List of {}.", r.plural),
                "items": {"$ref": format!("{V3_REFS}{item}")},
            },
            "kind": kind,
            "metadata": {
                "allOf": [{"$ref": format!("{V3_REFS}{META}ListMeta")}],
                "default": {},
                "description": "Standard list metadata.",
            },
        },
        "required": ["items"],
        GVK: [gvk(r, &format!("{}List", r.kind))],
    })
}

/// Inlines the api crate's non-object schemas (its string enums) where they are used, as KubeVirt
/// publishes them, so `kubectl explain` shows a field's type, its description and its values
/// together. Kubernetes' own scalar schemas (Quantity, Time, IntOrString) stay referenced.
fn inline_scalars(defs: &mut Map<String, Value>) {
    let scalars: Map<String, Value> = defs
        .iter()
        .filter(|(n, s)| {
            n.starts_with(KUBEVIRT_PREFIX) && s.get("type").is_some_and(|t| t != "object")
        })
        .map(|(n, s)| (format!("{V3_REFS}{n}"), s.clone()))
        .collect();
    for schema in defs.values_mut() {
        walk(schema, &mut |m| {
            let target = match (m.get("$ref"), m.get("allOf")) {
                (Some(Value::String(r)), _) => Some(r.clone()),
                (None, Some(Value::Array(a))) if a.len() == 1 => {
                    a[0].get("$ref").and_then(Value::as_str).map(str::to_owned)
                }
                _ => None,
            };
            let Some(Value::Object(inline)) = target.and_then(|t| scalars.get(&t)) else {
                return;
            };
            m.remove("$ref");
            m.remove("allOf");
            for (k, v) in inline {
                match (m.get_mut(k), v) {
                    (Some(Value::String(own)), Value::String(more)) if k == "description" => {
                        *own = format!("{own}\n\n{more}");
                    }
                    _ => {
                        m.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        });
    }
    defs.retain(|n, _| !scalars.contains_key(&format!("{V3_REFS}{n}")));
}

/// Calls `f` on `schema` and each of its subschemas, outermost first. Property maps are walked
/// as maps, so a property that happens to be named `$ref` or `nullable` is not mistaken for a
/// keyword.
fn walk(schema: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    let Value::Object(m) = schema else {
        return;
    };
    f(m);
    for (k, v) in m.iter_mut() {
        match (k.as_str(), v) {
            ("properties" | "patternProperties", Value::Object(props)) => {
                props.values_mut().for_each(|p| walk(p, f));
            }
            ("allOf" | "anyOf" | "oneOf" | "items", Value::Array(a)) => {
                a.iter_mut().for_each(|s| walk(s, f));
            }
            ("items" | "additionalProperties" | "not", s @ Value::Object(_)) => walk(s, f),
            _ => {}
        }
    }
}

/// Applies `f` to every `$ref` of a schema; `f` returns the replacement or `None` to keep it.
fn rewrite_refs(schema: &mut Value, f: &dyn Fn(&str) -> Option<String>) {
    walk(schema, &mut |m| {
        if let Some(Value::String(r)) = m.get_mut("$ref")
            && let Some(new) = f(r)
        {
            *r = new;
        }
    });
}

/// The schema names a schema references directly.
fn refs_of(schema: &Value) -> Vec<String> {
    fn visit(v: &Value, out: &mut Vec<String>) {
        let Value::Object(m) = v else {
            return;
        };
        if let Some(n) = m
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(V3_REFS))
        {
            out.push(n.to_owned());
        }
        for (k, v) in m {
            match (k.as_str(), v) {
                ("properties" | "patternProperties", Value::Object(props)) => {
                    props.values().for_each(|p| visit(p, out));
                }
                ("allOf" | "anyOf" | "oneOf" | "items", Value::Array(a)) => {
                    a.iter().for_each(|s| visit(s, out));
                }
                ("items" | "additionalProperties" | "not", s @ Value::Object(_)) => visit(s, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    visit(schema, &mut out);
    out
}

/// Drops null from schemas: `type: [T, "null"]` → `type: T`, `anyOf: [S, {type: null}]` → S.
#[derive(Clone)]
struct StripNull;

impl Transform for StripNull {
    fn transform(&mut self, schema: &mut Schema) {
        transform_subschemas(self, schema);
        let Some(obj) = schema.as_object_mut() else {
            return;
        };
        if let Some(Value::Array(types)) = obj.get_mut("type") {
            types.retain(|t| t != "null");
            if types.len() == 1 {
                let t = types.remove(0);
                obj.insert("type".into(), t);
            }
        }
        for key in ["anyOf", "oneOf"] {
            let Some(Value::Array(alts)) = obj.get_mut(key) else {
                continue;
            };
            alts.retain(|a| a.get("type") != Some(&Value::from("null")));
            if alts.len() == 1 {
                let Some(Value::Object(only)) = alts.pop() else {
                    continue;
                };
                obj.remove(key);
                for (k, v) in only {
                    obj.entry(k).or_insert(v);
                }
            }
        }
        if let Some(Value::Array(e)) = obj.get_mut("enum") {
            e.retain(|v| !v.is_null());
            if e.is_empty() {
                obj.remove("enum");
            }
        }
    }
}

/// `(field, patch strategy, merge key)`; no key for lists of scalars.
type PatchField = (&'static str, &'static str, &'static str);

/// Kubernetes' strategic-merge-patch metadata of core fields kubectl's three-way merge needs
/// (k8s-openapi's schemas leave it out), per schema.
const PATCH_METADATA: &[(&str, &[PatchField])] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        &[
            ("finalizers", "merge", ""),
            ("ownerReferences", "merge", "uid"),
        ],
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        &[
            ("containers", "merge", "name"),
            ("initContainers", "merge", "name"),
            ("ephemeralContainers", "merge", "name"),
            ("volumes", "merge,retainKeys", "name"),
            ("imagePullSecrets", "merge", "name"),
            ("hostAliases", "merge", "ip"),
            ("topologySpreadConstraints", "merge", "topologyKey"),
            ("schedulingGates", "merge", "name"),
            ("resourceClaims", "merge,retainKeys", "name"),
        ],
    ),
    (
        "io.k8s.api.core.v1.Container",
        &[
            ("ports", "merge", "containerPort"),
            ("env", "merge", "name"),
            ("volumeMounts", "merge", "mountPath"),
            ("volumeDevices", "merge", "devicePath"),
        ],
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        &[
            ("env", "merge", "name"),
            ("volumeMounts", "merge", "mountPath"),
            ("volumeDevices", "merge", "devicePath"),
        ],
    ),
    (
        "io.k8s.api.core.v1.PodStatus",
        &[
            ("conditions", "merge", "type"),
            ("podIPs", "merge", "ip"),
            ("hostIPs", "merge", "ip"),
        ],
    ),
    ("io.k8s.api.core.v1.NodeSpec", &[("podCIDRs", "merge", "")]),
    (
        "io.k8s.api.core.v1.NodeStatus",
        &[
            ("conditions", "merge", "type"),
            ("addresses", "merge", "type"),
        ],
    ),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        &[("conditions", "merge", "type")],
    ),
    (
        "io.k8s.api.core.v1.ServiceSpec",
        &[("ports", "merge", "port")],
    ),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        &[("conditions", "merge", "type")],
    ),
    (
        "io.k8s.api.core.v1.ServiceAccount",
        &[("secrets", "merge", "name")],
    ),
];

fn add_patch_metadata(defs: &mut Map<String, Value>) {
    let fields = PATCH_METADATA
        .iter()
        .flat_map(|(schema, fields)| fields.iter().map(move |f| (*schema, f)));
    for (schema, &(field, strategy, key)) in fields {
        let Some(Value::Object(prop)) = defs
            .get_mut(schema)
            .and_then(|s| s.get_mut("properties"))
            .and_then(|p| p.get_mut(field))
        else {
            continue;
        };
        prop.insert("x-kubernetes-patch-strategy".into(), strategy.into());
        if !key.is_empty() {
            prop.insert("x-kubernetes-patch-merge-key".into(), key.into());
        }
    }
}

/// Names of the schemas `roots` reference, transitively, including the roots.
fn closure(defs: &Map<String, Value>, roots: Vec<String>) -> Vec<String> {
    let mut seen: Vec<String> = Vec::new();
    let mut todo = roots;
    while let Some(name) = todo.pop() {
        if seen.contains(&name) {
            continue;
        }
        if let Some(s) = defs.get(&name) {
            todo.extend(refs_of(s));
        }
        seen.push(name);
    }
    seen.sort();
    seen
}

// ---------------------------------------------------------------------------------------------
// Paths

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    V2,
    V3,
}

/// Request body of an operation.
enum Body {
    /// The kind itself (create, update).
    Object,
    Patch,
    Delete,
}

struct Op {
    method: &'static str,
    /// Kubernetes' `x-kubernetes-action`.
    action: &'static str,
    id: String,
    description: String,
    query: &'static [&'static str],
    body: Option<Body>,
    /// `(code, schema name)`.
    responses: Vec<(&'static str, String)>,
}

const LIST_QUERY: &[&str] = &[
    "allowWatchBookmarks",
    "continue",
    "fieldSelector",
    "labelSelector",
    "limit",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "watch",
    "pretty",
];
const WRITE_QUERY: &[&str] = &["dryRun", "fieldManager", "fieldValidation", "pretty"];
const PATCH_QUERY: &[&str] = &[
    "dryRun",
    "fieldManager",
    "fieldValidation",
    "force",
    "pretty",
];
const DELETE_QUERY: &[&str] = &[
    "dryRun",
    "gracePeriodSeconds",
    "orphanDependents",
    "propagationPolicy",
    "pretty",
];
const DELETE_COLLECTION_QUERY: &[&str] = &[
    "continue",
    "dryRun",
    "fieldSelector",
    "gracePeriodSeconds",
    "labelSelector",
    "limit",
    "orphanDependents",
    "propagationPolicy",
    "resourceVersion",
    "resourceVersionMatch",
    "sendInitialEvents",
    "timeoutSeconds",
    "pretty",
];

/// `(type, description)` of a query parameter.
fn query_param(name: &str) -> (&'static str, &'static str) {
    match name {
        "allowWatchBookmarks" => ("boolean", "Requests BOOKMARK watch events."),
        "continue" => (
            "string",
            "The continue token of the previous page of a list.",
        ),
        "fieldSelector" => ("string", "Restricts the list by field values."),
        "labelSelector" => ("string", "Restricts the list by labels."),
        "limit" => (
            "integer",
            "The largest number of items to return in one page.",
        ),
        "resourceVersion" => (
            "string",
            "Which version of the objects to read or watch from.",
        ),
        "resourceVersionMatch" => (
            "string",
            "How resourceVersion applies to a list: Exact or NotOlderThan.",
        ),
        "sendInitialEvents" => (
            "boolean",
            "Starts a watch with the current objects as ADDED events.",
        ),
        "timeoutSeconds" => (
            "integer",
            "Ends a list or watch call after this many seconds.",
        ),
        "watch" => (
            "boolean",
            "Streams add, update and delete events instead of listing.",
        ),
        "pretty" => ("string", "Indents the output."),
        "dryRun" => ("string", "`All` runs every stage except persisting."),
        "fieldManager" => (
            "string",
            "The name of the actor making the change (managedFields).",
        ),
        "fieldValidation" => (
            "string",
            "What to do with unknown or duplicate fields: Ignore, Warn or Strict.",
        ),
        "force" => (
            "boolean",
            "Server-side apply: take over fields owned by other managers.",
        ),
        "gracePeriodSeconds" => ("integer", "Seconds before the object is deleted."),
        "orphanDependents" => ("boolean", "Deprecated: use propagationPolicy."),
        "propagationPolicy" => (
            "string",
            "Garbage collection of dependents: Orphan, Background or Foreground.",
        ),
        _ => ("string", ""),
    }
}

/// `Pod` → `CoreV1`, `kubevirt.io` → `KubevirtIoV1`, `coordination.k8s.io` → `CoordinationV1`.
fn op_group(r: &ResourceType) -> String {
    let group = if r.group.is_empty() {
        "core"
    } else {
        r.group.strip_suffix(".k8s.io").unwrap_or(r.group)
    };
    let mut out = String::new();
    for part in group.split(['.', '-']) {
        let mut c = part.chars();
        if let Some(first) = c.next() {
            out.extend(first.to_uppercase());
            out.push_str(c.as_str());
        }
    }
    let mut v = r.version.chars();
    if let Some(first) = v.next() {
        out.extend(first.to_uppercase());
        out.push_str(v.as_str());
    }
    out
}

/// The paths of one kind: `(path, path parameters, operations)`.
fn kind_paths(r: &ResourceType, schema: &str) -> Vec<(String, Vec<&'static str>, Vec<Op>)> {
    let prefix = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let g = op_group(r);
    let k = r.kind;
    let (ns, scope, ns_params): (&str, &str, Vec<&'static str>) = if r.namespaced {
        ("/namespaces/{namespace}", "Namespaced", vec!["namespace"])
    } else {
        ("", "", vec![])
    };
    let list = format!("{schema}List");
    let status = format!("{META}Status");
    let collection = format!("{prefix}{ns}/{}", r.plural);
    let item = format!("{collection}/{{name}}");
    let mut item_params = ns_params.clone();
    item_params.insert(0, "name");
    let mut out = vec![
        (
            collection,
            ns_params.clone(),
            vec![
                Op {
                    method: "get",
                    action: "list",
                    id: format!("list{g}{scope}{k}"),
                    description: format!("list or watch objects of kind {k}"),
                    query: LIST_QUERY,
                    body: None,
                    responses: vec![("200", list.clone())],
                },
                Op {
                    method: "post",
                    action: "post",
                    id: format!("create{g}{scope}{k}"),
                    description: format!("create a {k}"),
                    query: WRITE_QUERY,
                    body: Some(Body::Object),
                    responses: vec![
                        ("200", schema.to_owned()),
                        ("201", schema.to_owned()),
                        ("202", schema.to_owned()),
                    ],
                },
                Op {
                    method: "delete",
                    action: "deletecollection",
                    id: format!("deleteCollection{g}{scope}{k}"),
                    description: format!("delete collection of {k}"),
                    query: DELETE_COLLECTION_QUERY,
                    body: Some(Body::Delete),
                    responses: vec![("200", status.clone())],
                },
            ],
        ),
        (
            item.clone(),
            item_params.clone(),
            item_ops(&g, scope, k, "", schema, &status),
        ),
    ];
    if r.status {
        let ops = item_ops(&g, scope, k, "Status", schema, &status)
            .into_iter()
            .filter(|o| o.method != "delete")
            .collect();
        out.push((format!("{item}/status"), item_params, ops));
    }
    if r.namespaced {
        out.push((
            format!("{prefix}/{}", r.plural),
            vec![],
            vec![Op {
                method: "get",
                action: "list",
                id: format!("list{g}{k}ForAllNamespaces"),
                description: format!("list or watch objects of kind {k}"),
                query: LIST_QUERY,
                body: None,
                responses: vec![("200", list)],
            }],
        ));
    }
    out
}

fn item_ops(g: &str, scope: &str, k: &str, sub: &str, schema: &str, status: &str) -> Vec<Op> {
    let what = if sub.is_empty() {
        format!("the specified {k}")
    } else {
        format!("{} of the specified {k}", sub.to_lowercase())
    };
    vec![
        Op {
            method: "get",
            action: "get",
            id: format!("read{g}{scope}{k}{sub}"),
            description: format!("read {what}"),
            query: &["pretty"],
            body: None,
            responses: vec![("200", schema.to_owned())],
        },
        Op {
            method: "put",
            action: "put",
            id: format!("replace{g}{scope}{k}{sub}"),
            description: format!("replace {what}"),
            query: WRITE_QUERY,
            body: Some(Body::Object),
            responses: vec![("200", schema.to_owned()), ("201", schema.to_owned())],
        },
        Op {
            method: "patch",
            action: "patch",
            id: format!("patch{g}{scope}{k}{sub}"),
            description: format!("partially update {what}"),
            query: PATCH_QUERY,
            body: Some(Body::Patch),
            responses: vec![("200", schema.to_owned()), ("201", schema.to_owned())],
        },
        Op {
            method: "delete",
            action: "delete",
            id: format!("delete{g}{scope}{k}{sub}"),
            description: format!("delete {what}"),
            query: DELETE_QUERY,
            body: Some(Body::Delete),
            responses: vec![("200", status.to_owned()), ("202", status.to_owned())],
        },
    ]
}

const RESPONSE_TYPES: &[&str] = &["application/json", "application/yaml"];

fn patch_types(r: &ResourceType) -> Vec<&'static str> {
    let mut t = vec![
        "application/apply-patch+yaml",
        "application/json-patch+json",
        "application/merge-patch+json",
    ];
    if r.strategic_merge {
        t.push("application/strategic-merge-patch+json");
    }
    t
}

fn schema_ref(flavor: Flavor, name: &str) -> Value {
    let prefix = match flavor {
        Flavor::V2 => V2_REFS,
        Flavor::V3 => V3_REFS,
    };
    json!({ "$ref": format!("{prefix}{name}") })
}

fn render_op(flavor: Flavor, r: &ResourceType, schema: &str, op: &Op) -> Value {
    let mut params: Vec<Value> = Vec::new();
    for &q in op.query {
        let (ty, description) = query_param(q);
        params.push(match flavor {
            Flavor::V3 => json!({
                "name": q, "in": "query", "description": description,
                "schema": {"type": ty, "uniqueItems": true},
            }),
            Flavor::V2 => json!({
                "name": q, "in": "query", "description": description,
                "type": ty, "uniqueItems": true,
            }),
        });
    }
    let (body_schema, body_types) = match op.body {
        None => (None, vec![]),
        Some(Body::Object) => (
            Some(schema.to_owned()),
            vec!["application/json", "application/yaml"],
        ),
        Some(Body::Patch) => (Some(format!("{META}Patch")), patch_types(r)),
        Some(Body::Delete) => (
            Some(format!("{META}DeleteOptions")),
            vec!["application/json"],
        ),
    };
    let mut o = Map::new();
    o.insert("tags".into(), json!([op_group(r)]));
    o.insert("description".into(), op.description.clone().into());
    o.insert("operationId".into(), op.id.clone().into());
    let mut responses = Map::new();
    for (code, name) in &op.responses {
        let text = match *code {
            "201" => "Created",
            "202" => "Accepted",
            _ => "OK",
        };
        responses.insert(
            (*code).to_owned(),
            match flavor {
                Flavor::V3 => {
                    let content: Map<String, Value> = RESPONSE_TYPES
                        .iter()
                        .map(|t| ((*t).to_owned(), json!({"schema": schema_ref(flavor, name)})))
                        .collect();
                    json!({"description": text, "content": content})
                }
                Flavor::V2 => json!({"description": text, "schema": schema_ref(flavor, name)}),
            },
        );
    }
    responses.insert("401".into(), json!({"description": "Unauthorized"}));
    match flavor {
        Flavor::V3 => {
            if let Some(name) = body_schema {
                let content: Map<String, Value> = body_types
                    .iter()
                    .map(|t| {
                        (
                            (*t).to_owned(),
                            json!({"schema": schema_ref(flavor, &name)}),
                        )
                    })
                    .collect();
                o.insert(
                    "requestBody".into(),
                    json!({"content": content, "required": op.method != "delete"}),
                );
            }
        }
        Flavor::V2 => {
            if let Some(name) = body_schema {
                params.push(json!({
                    "name": "body", "in": "body", "required": op.method != "delete",
                    "schema": schema_ref(flavor, &name),
                }));
                o.insert("consumes".into(), json!(body_types));
            }
            o.insert("produces".into(), json!(RESPONSE_TYPES));
            o.insert("schemes".into(), json!(["https"]));
        }
    }
    o.insert("parameters".into(), Value::Array(params));
    o.insert("responses".into(), Value::Object(responses));
    o.insert("x-kubernetes-action".into(), op.action.into());
    o.insert(GVK.into(), gvk(r, r.kind));
    Value::Object(o)
}

fn path_param(flavor: Flavor, name: &str) -> Value {
    let description = match name {
        "namespace" => "object name and auth scope, such as for teams and projects",
        _ => "name of the object",
    };
    match flavor {
        Flavor::V3 => json!({
            "name": name, "in": "path", "description": description, "required": true,
            "schema": {"type": "string", "uniqueItems": true},
        }),
        Flavor::V2 => json!({
            "name": name, "in": "path", "description": description, "required": true,
            "type": "string", "uniqueItems": true,
        }),
    }
}

/// The paths object and the schema names it references.
fn paths(
    flavor: Flavor,
    defs: &Map<String, Value>,
    kinds: &[&ResourceType],
) -> (Map<String, Value>, Vec<String>) {
    let mut paths = Map::new();
    let mut roots = vec![
        format!("{META}Status"),
        format!("{META}DeleteOptions"),
        format!("{META}Patch"),
    ];
    for r in kinds {
        let Some(schema) = root_of(defs, r) else {
            continue;
        };
        roots.push(schema.clone());
        roots.push(format!("{schema}List"));
        for (path, params, ops) in kind_paths(r, &schema) {
            let mut item = Map::new();
            for op in &ops {
                item.insert(op.method.into(), render_op(flavor, r, &schema, op));
            }
            if !params.is_empty() {
                item.insert(
                    "parameters".into(),
                    params.iter().map(|p| path_param(flavor, p)).collect(),
                );
            }
            paths.insert(path, Value::Object(item));
        }
    }
    (paths, roots)
}

/// The schema carrying `r`'s group-version-kind.
fn root_of(defs: &Map<String, Value>, r: &ResourceType) -> Option<String> {
    let want = json!([gvk(r, r.kind)]);
    defs.iter()
        .find(|(_, s)| s.get(GVK) == Some(&want))
        .map(|(n, _)| n.clone())
}

fn info() -> Value {
    json!({"title": "Kubernetes", "version": concat!("kuvirt-", env!("CARGO_PKG_VERSION"))})
}

fn v3_doc(defs: &Map<String, Value>, kinds: &[&ResourceType]) -> Value {
    let (paths, roots) = paths(Flavor::V3, defs, kinds);
    let schemas: Map<String, Value> = closure(defs, roots)
        .into_iter()
        .filter_map(|n| defs.get(&n).map(|s| (n, s.clone())))
        .collect();
    json!({
        "openapi": "3.0.0",
        "info": info(),
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"},
            },
        },
        "security": [{"BearerToken": []}],
    })
}

fn v2_doc(defs: &Map<String, Value>, kinds: &[&ResourceType]) -> Value {
    let (paths, roots) = paths(Flavor::V2, defs, kinds);
    let definitions: Map<String, Value> = closure(defs, roots)
        .into_iter()
        .filter_map(|n| {
            let mut s = defs.get(&n)?.clone();
            to_swagger2(&mut s);
            Some((n, s))
        })
        .collect();
    json!({
        "swagger": "2.0",
        "info": info(),
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {
            "BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"},
        },
        "security": [{"BearerToken": []}],
    })
}

/// OAS 3 schema → Swagger 2.0 schema: `#/definitions/` refs, `$ref` with siblings instead of a
/// one-element `allOf` (as Kubernetes publishes v2), no `nullable`, `anyOf` or `oneOf`.
fn to_swagger2(schema: &mut Value) {
    walk(schema, &mut |m| {
        let single_ref = match m.get("allOf") {
            Some(Value::Array(a)) if a.len() == 1 => a[0].get("$ref").cloned(),
            _ => None,
        };
        if let Some(r) = single_ref {
            m.remove("allOf");
            m.insert("$ref".into(), r);
        }
        m.remove("nullable");
        for key in ["anyOf", "oneOf"] {
            if m.remove(key).is_some() && !m.contains_key("type") {
                m.insert(PRESERVE.into(), true.into());
            }
        }
        if let Some(Value::String(r)) = m.get_mut("$ref")
            && let Some(n) = r.strip_prefix(V3_REFS)
        {
            *r = format!("{V2_REFS}{n}");
        }
    });
}
