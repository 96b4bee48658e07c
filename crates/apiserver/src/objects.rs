//! The verbs on objects, generic over kinds: get, list, create, update (and `/status`), patch,
//! delete with finalizers, owner-reference garbage collection and namespace termination.

use std::collections::HashMap;

use kuvirt_apimachinery::patch::{KeyTable, Operation, update_managed_fields};
use kuvirt_store::{Error as StoreError, Key, Store};
use serde_json::{Value, json};

use crate::admission::AdmitError;
use crate::error::ApiError;
use crate::meta::{self, meta_mut};
use crate::path::Target;
use crate::resources::{ResourceType, registry};

/// How many objects a list returns at most when the client gives no limit.
const MAX_LIST: usize = 100_000;

/// Query parameters that change a write.
#[derive(Default, Debug, Clone)]
pub struct WriteOptions {
    pub dry_run: bool,
    /// Who writes (`fieldManager`, else the client's User-Agent name), for managedFields.
    pub manager: String,
    /// Server-side apply's `force`.
    pub force: bool,
    /// The object's managedFields were already computed (server-side apply).
    pub managed: bool,
    /// `fieldValidation=Strict`: refuse fields the kind does not know instead of dropping them.
    pub strict: bool,
}

impl WriteOptions {
    pub fn from_query(q: &HashMap<String, String>, user_agent: &str) -> Self {
        let manager = q
            .get("fieldManager")
            .filter(|m| !m.is_empty())
            .cloned()
            .unwrap_or_else(|| {
                // Kubernetes: the User-Agent up to its first '/'.
                let ua = user_agent.split('/').next().unwrap_or("").trim();
                if ua.is_empty() {
                    "unknown".into()
                } else {
                    ua.to_string()
                }
            });
        WriteOptions {
            dry_run: q.get("dryRun").is_some_and(|v| v == "All"),
            manager,
            force: q.get("force").is_some_and(|v| v == "true"),
            managed: false,
            strict: q.get("fieldValidation").is_some_and(|v| v == "Strict"),
        }
    }
}

/// Records who set which fields (`metadata.managedFields`) for an ordinary write.
fn manage(
    rt: &ResourceType,
    old: Option<&Value>,
    new: &mut Value,
    opts: &WriteOptions,
    subresource: &str,
) -> Result<(), ApiError> {
    if opts.managed || opts.manager.is_empty() {
        return Ok(());
    }
    let keys = KeyTable::for_kind(rt.group, rt.kind);
    *new = update_managed_fields(
        old,
        new,
        &opts.manager,
        Operation::Update,
        subresource,
        &keys,
        &meta::now(),
    )
    .map_err(|e| ApiError::from_status(&e.to_status()))?;
    Ok(())
}

pub fn key(t: &Target, name: &str) -> Key {
    Key::new(t.rt.store_key(), t.namespace.clone(), name)
}

fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::internal(format!("stored object: {e}")))
}

fn encode(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Stores `rev` as the object's resourceVersion.
fn with_rv(mut v: Value, rev: u64) -> Vec<u8> {
    meta_mut(&mut v).insert("resourceVersion".into(), json!(rev.to_string()));
    encode(&v)
}

fn admit(
    rt: &ResourceType,
    name: &str,
    obj: &mut Value,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    let before = opts.strict.then(|| obj.clone());
    let admitted = (rt.admit)(obj);
    // Decoding into a kind's type drops fields it does not know (kubevirt.io kinds keep them);
    // `fieldValidation=Strict` refuses such objects, as Kubernetes does.
    if let (Ok(()), Some(before)) = (&admitted, before) {
        let mut unknown = Vec::new();
        dropped_fields(&before, obj, "", &mut unknown);
        unknown.retain(|f| f != "stringData" && !f.starts_with("stringData."));
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    match admitted {
        Ok(()) => Ok(()),
        Err(AdmitError::Decode(e)) => Err(ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            rt.kind, rt.version, rt.kind
        ))),
        Err(AdmitError::Invalid(causes)) => Err(ApiError::invalid(rt, name, &causes)),
    }
}

/// Paths present (non-null) in `before` but gone from `after`.
fn dropped_fields(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in b {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(av) => dropped_fields(v, av, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for (i, (bv, av)) in b.iter().zip(a).enumerate() {
                dropped_fields(bv, av, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

pub async fn get(store: &Store, t: &Target, name: &str) -> Result<Value, ApiError> {
    match store.get(&key(t, name)).await? {
        Some(o) => decode(&o.value),
        None => Err(ApiError::not_found(t.rt, name)),
    }
}

/// One page of a list, already filtered by `keep`.
pub struct Page {
    pub items: Vec<Value>,
    pub revision: u64,
    /// Continue token: where the next page starts.
    pub continue_token: Option<String>,
}

/// Lists `t`'s collection; pages by the store's key order; `keep` filters (selectors).
pub async fn list(
    store: &Store,
    t: &Target,
    limit: Option<usize>,
    continue_token: Option<&str>,
    keep: &(dyn Fn(&Value) -> bool + Sync),
) -> Result<Page, ApiError> {
    let want = limit.filter(|l| *l > 0).unwrap_or(MAX_LIST);
    let mut after = match continue_token {
        Some(tok) => Some(decode_continue(tok, t)?),
        None => None,
    };
    let ns = (!t.namespace.is_empty()).then_some(t.namespace.as_str());
    let mut items = Vec::new();
    let mut revision = None;
    loop {
        let page = store
            .list(&t.rt.store_key(), ns, after.as_ref(), want)
            .await?;
        revision.get_or_insert(page.revision);
        let last = page.items.last().map(|o| o.key.clone());
        for o in page.items {
            let v = decode(&o.value)?;
            if keep(&v) {
                items.push(v);
                if items.len() == want {
                    let more = page.more || o.key != *last.as_ref().unwrap_or(&o.key);
                    let token = more.then(|| encode_continue(&o.key));
                    return Ok(Page {
                        items,
                        revision: revision.unwrap_or(0),
                        continue_token: token,
                    });
                }
            }
        }
        if !page.more {
            break;
        }
        after = last;
    }
    Ok(Page {
        items,
        revision: revision.unwrap_or(0),
        continue_token: None,
    })
}

fn encode_continue(k: &Key) -> String {
    use base64::Engine as _;
    let raw = json!([k.namespace, k.name]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(tok: &str, t: &Target) -> Result<Key, ApiError> {
    use base64::Engine as _;
    let bad = || ApiError::bad_request(format!("continue key is not valid: {tok:?}"));
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(tok)
        .map_err(|_| bad())?;
    let (ns, name): (String, String) = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok(Key::new(t.rt.store_key(), ns, name))
}

/// Checks that the namespace exists and is not terminating.
async fn namespace_open(store: &Store, ns: &str) -> Result<(), ApiError> {
    let nsrt = crate::resources::lookup("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    let k = Key::new(nsrt.store_key(), "", ns);
    match store.get(&k).await? {
        None => Err(ApiError::not_found(nsrt, ns)),
        Some(o) if meta::is_deleting(&decode(&o.value)?) => Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Makes `obj` fit the target: apiVersion/kind checked or filled, namespace from the path.
fn place(t: &Target, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let rt = t.rt;
    match obj.get("apiVersion").and_then(Value::as_str) {
        None => obj["apiVersion"] = json!(rt.api_version()),
        Some(v) if v == rt.api_version() => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({})",
                rt.api_version()
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    let m = meta_mut(obj);
    if rt.namespaced {
        match m.get("namespace").and_then(Value::as_str) {
            Some(ns) if !ns.is_empty() && ns != t.namespace => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => {
                m.insert("namespace".into(), json!(t.namespace));
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

pub async fn create(
    store: &Store,
    t: &Target,
    mut obj: Value,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let rt = t.rt;
    if rt.namespaced && t.namespace.is_empty() {
        return Err(ApiError::bad_request(
            "a namespace is required to create this kind",
        ));
    }
    place(t, &mut obj)?;
    let name = match meta::name(&obj) {
        Some(n) => n.to_string(),
        None => match meta::meta_str(&obj, "generateName").filter(|g| !g.is_empty()) {
            Some(prefix) => kuvirt_apimachinery::meta::generate_name(prefix),
            None => {
                return Err(ApiError::invalid(
                    rt,
                    "",
                    &[crate::admission::FieldCause {
                        reason: "FieldValueRequired",
                        field: "metadata.name".into(),
                        message: "Required value: name or generateName is required".into(),
                    }],
                ));
            }
        },
    };
    meta::check_name(&name, rt.kind == "Namespace")
        .map_err(|c| ApiError::invalid(rt, &name, &[c]))?;
    if rt.namespaced {
        namespace_open(store, &t.namespace).await?;
    }
    {
        let m = meta_mut(&mut obj);
        m.insert("name".into(), json!(name));
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            m.remove(f);
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(meta::now()));
        m.insert("generation".into(), json!(1));
    }
    if rt.kind == "Namespace" {
        // The namespace lifecycle's finalizer is the server's, not the client's.
        set_spec_finalizers(&mut obj, json!(["kubernetes"]));
    }
    if rt.status
        && rt.kind != "Namespace"
        && let Some(o) = obj.as_object_mut()
    {
        o.remove("status");
    }
    admit(rt, &name, &mut obj, opts)?;
    if rt.group == "kubevirt.io" && rt.kind == "VirtualMachineInstanceMigration" {
        // KubeVirt's webhooks for this kind read the store: the VMI and its other migrations.
        crate::migrate::admit_create(store, rt, &t.namespace, &name, &mut obj).await?;
    }
    manage(rt, None, &mut obj, opts, "")?;
    if opts.dry_run {
        return Ok(obj);
    }
    let stored = obj.clone();
    let rev = match store
        .create(&key(t, &name), move |rev| with_rv(stored, rev))
        .await
    {
        Ok(rev) => rev,
        Err(StoreError::AlreadyExists(_)) => return Err(ApiError::already_exists(rt, &name)),
        Err(e) => return Err(e.into()),
    };
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
    Ok(obj)
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Everything but status (for kinds with a status subresource).
    Main,
    /// Only status.
    Status,
}

/// Sets a namespace's `spec.finalizers` (a `spec` that is not an object is left for admission
/// to refuse).
fn set_spec_finalizers(obj: &mut Value, finalizers: Value) {
    if let Some(o) = obj.as_object_mut()
        && let Some(spec) = o.entry("spec").or_insert_with(|| json!({})).as_object_mut()
    {
        spec.insert("finalizers".into(), finalizers);
    }
}

/// How often an unconditional write is retried when another write wins the race.
const UNCONDITIONAL_RETRIES: usize = 5;

/// Replaces an object (PUT, and the tail of PATCH). `expected` is the resourceVersion the write is
/// conditional on; without one, a concurrent write only makes it try again, as Kubernetes does.
pub async fn update(
    store: &Store,
    t: &Target,
    name: &str,
    obj: Value,
    part: Part,
    expected: Option<u64>,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let mut attempt = 0;
    loop {
        match update_once(store, t, name, obj.clone(), part, expected, opts).await {
            Err(e)
                if expected.is_none()
                    && e.reason == "Conflict"
                    && attempt < UNCONDITIONAL_RETRIES =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One attempt of [`update`].
async fn update_once(
    store: &Store,
    t: &Target,
    name: &str,
    mut obj: Value,
    part: Part,
    expected: Option<u64>,
    opts: &WriteOptions,
) -> Result<Value, ApiError> {
    let rt = t.rt;
    place(t, &mut obj)?;
    if meta::name(&obj).is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::name(&obj).unwrap_or_default()
        )));
    }
    let k = key(t, name);
    let current = store
        .get(&k)
        .await?
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if expected.is_some_and(|e| e != current.revision) {
        return Err(ApiError::conflict(rt, name));
    }
    let old = decode(&current.value)?;
    let mut new = match part {
        Part::Main => {
            if rt.kind == "Namespace" && t.subresource.as_deref() != Some("finalize") {
                let kept = old
                    .pointer("/spec/finalizers")
                    .cloned()
                    .unwrap_or_else(|| json!([]));
                set_spec_finalizers(&mut obj, kept);
            }
            if rt.status
                && let Some(o) = obj.as_object_mut()
            {
                match old.get("status") {
                    Some(s) => {
                        o.insert("status".into(), s.clone());
                    }
                    None => {
                        o.remove("status");
                    }
                }
            }
            obj
        }
        Part::Status => {
            let mut n = old.clone();
            match obj.get("status") {
                Some(s) => n["status"] = s.clone(),
                None => {
                    if let Some(o) = n.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            n
        }
    };
    // Server-owned metadata stays as it was.
    {
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        let m = meta_mut(&mut new);
        m.insert("name".into(), json!(name));
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old_meta.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
        if part == Part::Status {
            // A status write changes nothing else.
            *m = old_meta.as_object().cloned().unwrap_or_default();
        }
    }
    if meta::is_deleting(&old) {
        // Once deleting, finalizers may only be removed.
        let before = meta::finalizers(&old);
        let after = meta::finalizers(&new);
        if after.iter().any(|f| !before.contains(f)) {
            return Err(ApiError::new(
                422,
                "Invalid",
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
            ));
        }
    }
    // Status writes are admitted too: a malformed status must not make the object unwritable.
    admit(rt, name, &mut new, opts)?;
    if part == Part::Main
        && rt.group == "kubevirt.io"
        && rt.kind == "VirtualMachineInstanceMigration"
    {
        crate::migrate::admit_update(rt, name, &old, &new)?;
    }
    // After defaulting, so a re-sent unchanged spec does not look like a change.
    let generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    // Everything outside metadata and status counts, for every kind.
    let bump = kuvirt_apimachinery::meta::generation_changes(&old, &new, true);
    meta_mut(&mut new).insert(
        "generation".into(),
        json!(if bump { generation + 1 } else { generation }),
    );
    let sub = if part == Part::Status { "status" } else { "" };
    manage(rt, Some(&old), &mut new, opts, sub)?;
    if opts.dry_run {
        return Ok(new);
    }
    if meta::is_deleting(&new) && !held(&new) {
        // The last finalizer is gone: the delete completes.
        return remove(store, t, name, Some(current.revision)).await;
    }
    let stored = new.clone();
    let rev = match store
        .update(&k, Some(current.revision), move |rev| with_rv(stored, rev))
        .await
    {
        Ok(rev) => rev,
        Err(StoreError::Conflict { .. }) => return Err(ApiError::conflict(rt, name)),
        Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(rt, name)),
        Err(e) => return Err(e.into()),
    };
    meta_mut(&mut new).insert("resourceVersion".into(), json!(rev.to_string()));
    Ok(new)
}

/// Kubernetes' DeleteOptions, as far as they matter here.
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<u64>,
    pub dry_run: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl DeleteOptions {
    /// From the query and an optional DeleteOptions body.
    pub fn parse(q: &HashMap<String, String>, body: Option<&Value>) -> Result<Self, ApiError> {
        let policy = body
            .and_then(|b| b.get("propagationPolicy"))
            .and_then(Value::as_str)
            .or_else(|| q.get("propagationPolicy").map(String::as_str));
        let orphan = body
            .and_then(|b| b.get("orphanDependents"))
            .and_then(Value::as_bool)
            .or_else(|| q.get("orphanDependents").map(|v| v == "true"));
        let propagation = match (policy, orphan) {
            (Some("Foreground"), _) => Propagation::Foreground,
            (Some("Orphan"), _) | (None, Some(true)) => Propagation::Orphan,
            (Some("Background") | None, _) => Propagation::Background,
            (Some(other), _) => {
                return Err(ApiError::bad_request(format!(
                    "propagationPolicy {other:?} is not one of Foreground, Background, Orphan"
                )));
            }
        };
        let pre = body.and_then(|b| b.get("preconditions"));
        let dry_run = body
            .and_then(|b| b.get("dryRun"))
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"))
            || q.get("dryRun").is_some_and(|v| v == "All");
        Ok(DeleteOptions {
            propagation,
            precondition_uid: pre
                .and_then(|p| p.get("uid"))
                .and_then(Value::as_str)
                .map(String::from),
            precondition_rv: pre
                .and_then(|p| p.get("resourceVersion"))
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok()),
            dry_run,
        })
    }
}

/// Deletes an object: at once when nothing holds it, else marks it deleting and lets finalizers
/// (and foreground deletion of dependents) finish the job.
/// A concurrent write makes it try again unless the caller pinned a resourceVersion.
pub async fn delete(
    store: &Store,
    t: &Target,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let mut attempt = 0;
    loop {
        match delete_once(store, t, name, opts).await {
            Err(e)
                if opts.precondition_rv.is_none()
                    && e.reason == "Conflict"
                    && !e.message.starts_with("Precondition failed")
                    && attempt < UNCONDITIONAL_RETRIES =>
            {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One attempt of [`delete`].
async fn delete_once(
    store: &Store,
    t: &Target,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Value, ApiError> {
    let rt = t.rt;
    let k = key(t, name);
    let current = store
        .get(&k)
        .await?
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    let mut obj = decode(&current.value)?;
    if let Some(uid) = &opts.precondition_uid
        && meta::uid(&obj) != Some(uid.as_str())
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(&obj).unwrap_or_default()
            ),
        ));
    }
    if let Some(rv) = opts.precondition_rv
        && rv != current.revision
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                current.revision
            ),
        ));
    }
    if opts.dry_run {
        return Ok(obj);
    }
    let mut finalizers = meta::finalizers(&obj);
    match opts.propagation {
        Propagation::Foreground if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
            finalizers.push("foregroundDeletion".into());
        }
        Propagation::Orphan => {
            orphan_dependents(store, &obj).await?;
        }
        _ => {}
    }
    if rt.kind == "Namespace"
        && let Some(o) = obj.as_object_mut()
    {
        o.insert("status".into(), json!({ "phase": "Terminating" }));
    }
    meta::set_finalizers(&mut obj, &finalizers);
    if !held(&obj) {
        return remove(store, t, name, Some(current.revision)).await;
    }
    if meta::is_deleting(&obj) && meta::finalizers(&decode(&current.value)?) == finalizers {
        return Ok(obj);
    }
    if !meta::is_deleting(&obj) {
        let m = meta_mut(&mut obj);
        m.insert("deletionTimestamp".into(), json!(meta::now()));
        m.insert("deletionGracePeriodSeconds".into(), json!(0));
    }
    let stored = obj.clone();
    let rev = match store
        .update(&k, Some(current.revision), move |rev| with_rv(stored, rev))
        .await
    {
        Ok(rev) => rev,
        Err(StoreError::Conflict { .. }) => return Err(ApiError::conflict(rt, name)),
        Err(e) => return Err(e.into()),
    };
    meta_mut(&mut obj).insert("resourceVersion".into(), json!(rev.to_string()));
    Ok(obj)
}

/// Whether something still holds a deleting object: its finalizers, and for a namespace the
/// `spec.finalizers` the namespace lifecycle empties once its contents are gone.
fn held(obj: &Value) -> bool {
    let spec_finalizers = obj
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
        && obj.get("kind").and_then(Value::as_str) == Some("Namespace");
    !meta::finalizers(obj).is_empty() || spec_finalizers
}

/// Removes the object from the store; its deletion event carries the final state.
async fn remove(
    store: &Store,
    t: &Target,
    name: &str,
    expected: Option<u64>,
) -> Result<Value, ApiError> {
    let rt = t.rt;
    let deleted = match store
        .delete_with(&key(t, name), expected, |rev, bytes| {
            serde_json::from_slice::<Value>(bytes)
                .map(|v| with_rv(v, rev))
                .unwrap_or_else(|_| bytes.to_vec())
        })
        .await
    {
        Ok(d) => d,
        Err(StoreError::Conflict { .. }) => return Err(ApiError::conflict(rt, name)),
        Err(StoreError::NotFound(_)) => return Err(ApiError::not_found(rt, name)),
        Err(e) => return Err(e.into()),
    };
    decode(&deleted.value)
}

/// Whether every owner `obj` names is really gone: looked up by kind and name (an owner of a kind
/// this server does not serve is never taken as gone) and compared by uid.
async fn owners_gone(store: &Store, obj: &Value) -> Result<bool, ApiError> {
    let refs = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in refs {
        let api_version = r.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = r.get("kind").and_then(Value::as_str).unwrap_or("");
        let (Some(rt), Some(name)) = (
            crate::resources::by_kind(api_version, kind),
            r.get("name").and_then(Value::as_str),
        ) else {
            return Ok(false);
        };
        let ns = if rt.namespaced {
            meta::meta_str(obj, "namespace").unwrap_or_default()
        } else {
            ""
        };
        if let Some(owner) = store.get(&Key::new(rt.store_key(), ns, name)).await? {
            let owner = decode(&owner.value)?;
            if meta::uid(&owner) == r.get("uid").and_then(Value::as_str) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Objects anywhere whose ownerReferences name `uid`, with their kinds.
async fn dependents(
    store: &Store,
    uid: &str,
) -> Result<Vec<(&'static ResourceType, Value)>, ApiError> {
    let mut out = Vec::new();
    for rt in registry() {
        let all = Target {
            rt,
            namespace: String::new(),
            name: None,
            subresource: None,
        };
        let page = list(store, &all, None, None, &|v| {
            meta::owner_uids(v).iter().any(|u| u == uid)
        })
        .await?;
        out.extend(page.items.into_iter().map(|v| (rt, v)));
    }
    Ok(out)
}

fn target_of(rt: &'static ResourceType, obj: &Value) -> Target {
    Target {
        rt,
        namespace: meta::meta_str(obj, "namespace")
            .unwrap_or_default()
            .to_string(),
        name: meta::name(obj).map(String::from),
        subresource: None,
    }
}

async fn orphan_dependents(store: &Store, owner: &Value) -> Result<(), ApiError> {
    let Some(uid) = meta::uid(owner) else {
        return Ok(());
    };
    for (rt, dep) in dependents(store, uid).await? {
        let mut t = target_of(rt, &dep);
        let Some(name) = t.name.take() else { continue };
        // Orphaning must not fail quietly (the GC would then delete the dependent): retry when
        // the dependent changes underneath, and fail the delete otherwise.
        let mut attempt = 0;
        loop {
            let mut current = get(store, &t, &name).await?;
            let m = meta_mut(&mut current);
            if let Some(refs) = m.get_mut("ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
                if refs.is_empty() {
                    m.remove("ownerReferences");
                }
            }
            let rv = meta::resource_version(&current);
            match update(
                store,
                &t,
                &name,
                current,
                Part::Main,
                rv,
                &WriteOptions::default(),
            )
            .await
            {
                Ok(_) => break,
                Err(e) if e.code == 409 && attempt < 5 => attempt += 1,
                Err(e) if e.code == 404 => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// One garbage-collection pass: deletes dependents of owners that are gone; finishes foreground
/// deletions whose dependents are gone; empties terminating namespaces. Returns how many objects
/// it changed, so callers can run it until quiet.
pub async fn collect_garbage(store: &Store) -> Result<usize, ApiError> {
    let mut changed = 0;
    let mut uids = std::collections::HashSet::new();
    let mut everything = Vec::new();
    for rt in registry() {
        let all = Target {
            rt,
            namespace: String::new(),
            name: None,
            subresource: None,
        };
        for v in list(store, &all, None, None, &|_| true).await?.items {
            if let Some(u) = meta::uid(&v) {
                uids.insert(u.to_string());
            }
            everything.push((rt, v));
        }
    }
    for (rt, v) in &everything {
        let t = target_of(rt, v);
        let Some(name) = t.name.clone() else { continue };
        let owners = meta::owner_uids(v);
        // Background GC: every owner is gone — confirmed one by one, since the lists above are
        // separate snapshots and an owner may have been created after its kind was listed.
        if !owners.is_empty()
            && owners.iter().all(|u| !uids.contains(u))
            && !meta::is_deleting(v)
            && owners_gone(store, v).await?
        {
            let opts = DeleteOptions {
                precondition_uid: meta::uid(v).map(String::from),
                precondition_rv: meta::resource_version(v),
                ..DeleteOptions::default()
            };
            if delete(store, &t, &name, &opts).await.is_ok() {
                changed += 1;
            }
            continue;
        }
        if !meta::is_deleting(v) {
            continue;
        }
        let uid = meta::uid(v).unwrap_or_default().to_string();
        let fin = meta::finalizers(v);
        // Foreground: delete dependents first, then drop the finalizer.
        if fin.iter().any(|f| f == "foregroundDeletion") {
            let deps: Vec<_> = everything
                .iter()
                .filter(|(_, d)| meta::owner_uids(d).contains(&uid))
                .collect();
            if deps.is_empty() {
                let rest: Vec<String> = fin
                    .into_iter()
                    .filter(|f| f != "foregroundDeletion")
                    .collect();
                let mut obj = v.clone();
                meta::set_finalizers(&mut obj, &rest);
                let rv = meta::resource_version(v);
                if update(
                    store,
                    &t,
                    &name,
                    obj,
                    Part::Main,
                    rv,
                    &WriteOptions::default(),
                )
                .await
                .is_ok()
                {
                    changed += 1;
                }
            } else {
                for (drt, d) in deps {
                    if !meta::is_deleting(d) {
                        let dt = target_of(drt, d);
                        if let Some(dn) = dt.name.clone() {
                            let _ = delete(
                                store,
                                &dt,
                                &dn,
                                &DeleteOptions {
                                    propagation: Propagation::Foreground,
                                    ..Default::default()
                                },
                            )
                            .await;
                            changed += 1;
                        }
                    }
                }
            }
        }
        // Namespace termination: delete the contents, then release the namespace.
        let spec_fin = v.pointer("/spec/finalizers").and_then(Value::as_array);
        if rt.kind == "Namespace" && spec_fin.is_some_and(|a| a.iter().any(|f| f == "kubernetes")) {
            let mut left = 0;
            for (crt, c) in &everything {
                if crt.namespaced && meta::meta_str(c, "namespace") == Some(name.as_str()) {
                    left += 1;
                    if !meta::is_deleting(c) {
                        let ct = target_of(crt, c);
                        if let Some(cn) = ct.name.clone() {
                            let _ = delete(store, &ct, &cn, &DeleteOptions::default()).await;
                            changed += 1;
                        }
                    }
                }
            }
            if left == 0 {
                let mut obj = v.clone();
                if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("finalizers".into(), json!([]));
                }
                let rv = meta::resource_version(v);
                // Only the finalize subresource may change a namespace's spec.finalizers.
                let finalize = Target {
                    subresource: Some("finalize".into()),
                    ..target_of(rt, v)
                };
                if update(
                    store,
                    &finalize,
                    &name,
                    obj,
                    Part::Main,
                    rv,
                    &WriteOptions::default(),
                )
                .await
                .is_ok()
                {
                    changed += 1;
                }
            }
        }
    }
    Ok(changed)
}
