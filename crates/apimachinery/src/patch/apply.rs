//! Server-side apply and field ownership: [`apply`] merges an apply configuration into the live
//! object with conflict detection, and [`update_managed_fields`] records ownership for ordinary
//! writes, both keeping `metadata.managedFields` as Kubernetes does.

use std::fmt;

use serde_json::{Value, json};

use super::fieldset::{FieldSet, PathElement, path_string};
use super::managed::{self, Entry};
use super::{KeyTable, typed};
use crate::status::{Status, StatusCause};

/// The annotation client-side `kubectl apply` keeps.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The Update manager that owns what an object held before its first apply.
pub const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// `managedFields[].operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    /// `Apply` or `Update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// One field another manager owns with a different value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// As Kubernetes prints it: `"kubectl-client-side-apply" using kubevirt.io/v1`, or `"kubectl"`
    /// for an applier.
    pub manager: String,
    /// `.spec.runStrategy`, `.spec.template.spec.domain.devices.disks` …
    pub path: String,
}

/// All conflicts of one apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyConflicts {
    pub conflicts: Vec<Conflict>,
}

impl fmt::Display for ApplyConflicts {
    /// `Apply failed with 1 conflict: conflict with "m" using v1: .spec.x`, or for several
    /// `Apply failed with N conflicts: conflicts with "m" using v1:\n- .a\n- .b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [c] = self.conflicts.as_slice() {
            return write!(
                f,
                "Apply failed with 1 conflict: conflict with {}: {}",
                c.manager, c.path
            );
        }
        let mut managers: Vec<&str> = self.conflicts.iter().map(|c| c.manager.as_str()).collect();
        managers.sort();
        managers.dedup();
        let mut lines = Vec::new();
        for m in managers {
            lines.push(format!("conflicts with {m}:"));
            for c in self.conflicts.iter().filter(|c| c.manager == m) {
                lines.push(format!("- {}", c.path));
            }
        }
        write!(
            f,
            "Apply failed with {} conflicts: {}",
            self.conflicts.len(),
            lines.join("\n")
        )
    }
}

impl ApplyConflicts {
    /// 409 Conflict with one `FieldManagerConflict` cause per field.
    pub fn to_status(&self) -> Status {
        let causes = self
            .conflicts
            .iter()
            .map(|c| StatusCause {
                cause_type: "FieldManagerConflict".into(),
                message: format!("conflict with {}", c.manager),
                field: c.path.clone(),
            })
            .collect();
        Status::apply_conflict(self.to_string(), causes)
    }
}

/// Why an apply or ownership update failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Other managers own fields the apply would change (409; retry with force).
    #[error("{0}")]
    Conflicts(ApplyConflicts),
    /// The apply configuration is unusable (400), e.g. a keyed list item without its key.
    #[error("{0}")]
    Invalid(String),
    /// `metadata.managedFields` cannot be read (400).
    #[error("invalid managedFields: {0}")]
    ManagedFields(String),
}

impl ApplyError {
    /// The Status the API server answers with.
    pub fn to_status(&self) -> Status {
        match self {
            Self::Conflicts(c) => c.to_status(),
            Self::Invalid(_) | Self::ManagedFields(_) => Status::bad_request(self.to_string()),
        }
    }
}

/// Fields never tracked: identity and server-set metadata (Kubernetes' strip-meta manager).
fn strip_set() -> FieldSet {
    let f = |s: &str| PathElement::Field(s.to_owned());
    let mut s = FieldSet::new();
    s.insert(&[f("apiVersion")]);
    s.insert(&[f("kind")]);
    s.insert(&[f("metadata")]);
    for m in [
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ] {
        s.insert(&[f("metadata"), f(m)]);
    }
    s
}

fn take_managed(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
}

fn put_managed(v: &mut Value, managed: Value) {
    let empty = managed.as_array().is_none_or(Vec::is_empty);
    if let Some(obj) = v.as_object_mut() {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            if empty {
                m.remove("managedFields");
            } else {
                m.insert("managedFields".into(), managed);
            }
        }
    }
}

fn last_applied(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/annotations")?
        .get(LAST_APPLIED_ANNOTATION)?
        .as_str()
}

/// Paths of a client-side apply's last-applied configuration whose value is still live: conflicts
/// on these are taken over when `kubectl` moves from client-side to server-side apply.
fn allowed_from_last_applied(live: Option<&Value>, keys: &KeyTable) -> Vec<String> {
    let Some(live) = live else {
        return Vec::new();
    };
    let Some(la) = last_applied(live).and_then(|s| serde_json::from_str::<Value>(s).ok()) else {
        return Vec::new();
    };
    let Ok(set) = typed::to_field_set(&la, keys, true) else {
        return Vec::new();
    };
    set.paths()
        .into_iter()
        .filter(|p| {
            let l = typed::get_at(live, p, "", keys);
            l.is_some() && l == typed::get_at(&la, p, "", keys)
        })
        .map(|p| path_string(&p))
        .collect()
}

/// The last-applied annotation value for an apply configuration (without the annotation itself).
fn build_last_applied(applied: &Value) -> String {
    let mut v = applied.clone();
    if let Some(a) = v
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED_ANNOTATION);
    }
    format!("{v}\n")
}

/// Server-side apply (`PATCH` with `application/apply-patch+yaml`, body already parsed).
///
/// `live` is the stored object (`None` to create), `applied` the apply configuration (must carry
/// `apiVersion` and `kind`; strip `status` first when applying to the main resource of a kind
/// with a status subresource). Returns the new object with `metadata.managedFields` updated, the
/// entry of `manager` stamped with `time` (RFC 3339) when the object changed. Conflicts with other
/// managers' fields whose values would change fail unless `force`, which takes them over. Fields
/// `manager` applied before and no longer applies are removed unless another manager owns them.
/// For manager `kubectl`, conflicts on fields of a client-side apply's last-applied configuration
/// are taken over, and that annotation is kept in sync, as Kubernetes does.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    keys: &KeyTable,
    time: &str,
) -> Result<Value, ApplyError> {
    match apply_inner(live, applied, manager, force, keys, time) {
        Err(ApplyError::Conflicts(c)) if manager == "kubectl" && !force => {
            let allowed = allowed_from_last_applied(live, keys);
            let remaining: Vec<Conflict> = c
                .conflicts
                .iter()
                .filter(|x| !allowed.contains(&x.path))
                .cloned()
                .collect();
            if remaining.is_empty() {
                apply_inner(live, applied, manager, true, keys, time)
            } else {
                Err(ApplyError::Conflicts(ApplyConflicts {
                    conflicts: remaining,
                }))
            }
        }
        other => other,
    }
}

fn apply_inner(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    keys: &KeyTable,
    time: &str,
) -> Result<Value, ApplyError> {
    let invalid = |m: String| ApplyError::Invalid(m);
    if !applied.is_object() {
        return Err(invalid("the apply configuration must be an object".into()));
    }
    if applied
        .pointer("/metadata/managedFields")
        .is_some_and(|v| !v.is_null())
    {
        return Err(invalid("metadata.managedFields must be nil".into()));
    }
    let text = |k: &str| {
        applied
            .get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let api_version = text("apiVersion")
        .ok_or_else(|| invalid("apiVersion must be set in the apply configuration".into()))?;
    if text("kind").is_none() {
        return Err(invalid(
            "kind must be set in the apply configuration".into(),
        ));
    }
    let strip = strip_set();
    let mut base = live.cloned().unwrap_or_else(|| json!({}));
    let mut entries = managed::decode(&base)?;
    take_managed(&mut base);
    if live.is_some() && entries.is_empty() {
        let fields = typed::to_field_set(&base, keys, true)
            .map_err(invalid)?
            .difference(&strip);
        if !fields.is_empty() {
            entries.push(Entry {
                manager: BEFORE_FIRST_APPLY.into(),
                operation: Operation::Update,
                api_version: base
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or(api_version)
                    .to_owned(),
                time: Some(time.to_owned()),
                subresource: String::new(),
                fields,
            });
        }
    }
    let typed_err = |e: String| invalid(format!("failed to create typed patch object: {e}"));
    let applied_set = typed::to_field_set(applied, keys, false)
        .map_err(typed_err)?
        .difference(&strip);
    let mut merged = typed::merge(&base, applied, keys).map_err(typed_err)?;

    let me = entries.iter().position(|e| {
        e.manager == manager && e.operation == Operation::Apply && e.subresource.is_empty()
    });
    let last = me.map(|i| entries[i].fields.clone()).unwrap_or_default();
    let others = entries
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != me)
        .fold(FieldSet::new(), |acc, (_, e)| acc.union(&e.fields));
    let prune = last.difference(&applied_set).difference(&others);
    typed::remove(&mut merged, &prune, keys);

    let cmp = typed::compare(&base, &merged, keys);
    let changed = cmp.modified.union(&cmp.added);
    let mut conflicts = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if Some(i) == me {
            continue;
        }
        for p in e.fields.intersection(&changed).paths() {
            conflicts.push(Conflict {
                manager: e.display(),
                path: path_string(&p),
            });
        }
    }
    if !conflicts.is_empty() && !force {
        conflicts.sort_by(|a, b| a.manager.cmp(&b.manager));
        return Err(ApplyError::Conflicts(ApplyConflicts { conflicts }));
    }
    for (i, e) in entries.iter_mut().enumerate() {
        if Some(i) != me {
            e.fields = e.fields.difference(&changed).difference(&cmp.removed);
        }
    }
    let object_changed = merged != base;
    match me {
        Some(i) => {
            let e = &mut entries[i];
            e.fields = applied_set.clone();
            e.api_version = api_version.to_owned();
            if object_changed || e.time.is_none() {
                e.time = Some(time.to_owned());
            }
        }
        None => entries.push(Entry {
            manager: manager.to_owned(),
            operation: Operation::Apply,
            api_version: api_version.to_owned(),
            time: Some(time.to_owned()),
            subresource: String::new(),
            fields: applied_set.clone(),
        }),
    }
    for e in entries
        .iter_mut()
        .filter(|e| e.manager == BEFORE_FIRST_APPLY && e.operation == Operation::Update)
    {
        e.fields = e.fields.difference(&applied_set);
    }
    if manager == "kubectl"
        && last_applied(&merged).is_some()
        && let Some(a) = merged
            .pointer_mut("/metadata/annotations")
            .and_then(Value::as_object_mut)
    {
        a.insert(
            LAST_APPLIED_ANNOTATION.into(),
            Value::String(build_last_applied(applied)),
        );
    }
    managed::cap_update_managers(&mut entries);
    put_managed(&mut merged, managed::encode(entries));
    Ok(merged)
}

/// Records ownership for a create (`old` = `None`), update or non-apply patch by `manager`
/// (`kubectl-client-side-apply`, `kubectl-edit`, `kube-rs`…): the fields this write added or
/// changed become `manager`'s (stamped with `time`), and no one keeps fields it changed or removed.
/// `subresource` is `""` or e.g. `status`. A `managedFields: []` in `new` resets tracking; other
/// `managedFields` in `new` that differ from `old`'s replace them; an existing object without
/// `managedFields` stays untracked, as in Kubernetes.
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &Value,
    manager: &str,
    operation: Operation,
    subresource: &str,
    keys: &KeyTable,
    time: &str,
) -> Result<Value, ApplyError> {
    let mut out = new.clone();
    let new_mf = new.pointer("/metadata/managedFields");
    let old_mf = old.and_then(|o| o.pointer("/metadata/managedFields"));
    let mut entries = match new_mf {
        Some(Value::Array(a)) if a.is_empty() => {
            take_managed(&mut out);
            return Ok(out);
        }
        Some(v) if !v.is_null() && Some(v) != old_mf => managed::decode(new)?,
        _ => match old {
            Some(o) => managed::decode(o)?,
            None => Vec::new(),
        },
    };
    take_managed(&mut out);
    if old.is_some() && entries.is_empty() {
        return Ok(out);
    }
    let mut old_v = old.cloned().unwrap_or_else(|| json!({}));
    take_managed(&mut old_v);
    let cmp = typed::compare(&old_v, &out, keys);
    let changed = cmp.modified.union(&cmp.added);
    for e in &mut entries {
        e.fields = e.fields.difference(&changed).difference(&cmp.removed);
    }
    let mine = changed.difference(&strip_set());
    if !mine.is_empty() {
        let entry = Entry {
            manager: manager.to_owned(),
            operation,
            api_version: new
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            time: Some(time.to_owned()),
            subresource: subresource.to_owned(),
            fields: mine,
        };
        match entries.iter_mut().find(|e| e.same_identity(&entry)) {
            Some(e) => {
                e.fields = e.fields.union(&entry.fields);
                e.time = entry.time;
            }
            None => entries.push(entry),
        }
    }
    managed::cap_update_managers(&mut entries);
    put_managed(&mut out, managed::encode(entries));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2024-01-01T00:00:00Z";
    const T2: &str = "2024-01-02T00:00:00Z";
    const T3: &str = "2024-01-03T00:00:00Z";

    fn vm_keys() -> KeyTable {
        KeyTable::for_kind("kubevirt.io", "VirtualMachine")
    }

    fn vm(run_strategy: &str) -> Value {
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "x", "namespace": "default"},
            "spec": {"runStrategy": run_strategy, "template": {"spec": {"domain": {"devices": {}}}}}
        })
    }

    fn stored(v: &Value) -> Value {
        let mut v = v.clone();
        v["metadata"]["uid"] = json!("u1");
        v["metadata"]["resourceVersion"] = json!("1");
        v["metadata"]["creationTimestamp"] = json!(T1);
        v
    }

    fn entries(v: &Value) -> Vec<(String, String)> {
        v["metadata"]["managedFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["manager"].as_str().unwrap().to_owned(),
                            e["operation"].as_str().unwrap().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn fields_of<'a>(v: &'a Value, manager: &str) -> &'a Value {
        v["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == manager)
            .map(|e| &e["fieldsV1"])
            .unwrap_or(&Value::Null)
    }

    /// An object created by client-side `kubectl apply` (create with manager
    /// kubectl-client-side-apply).
    fn created_by_csa(run_strategy: &str) -> Value {
        let new = stored(&vm(run_strategy));
        update_managed_fields(
            None,
            &new,
            "kubectl-client-side-apply",
            Operation::Update,
            "",
            &vm_keys(),
            T1,
        )
        .unwrap()
    }

    #[test]
    fn create_by_apply_records_fields_without_identity() {
        let out = apply(None, &vm("Always"), "kubectl", false, &vm_keys(), T1).unwrap();
        assert_eq!(out["spec"]["runStrategy"], "Always");
        let mf = &out["metadata"]["managedFields"][0];
        assert_eq!(
            *mf,
            json!({
                "manager": "kubectl", "operation": "Apply", "apiVersion": "kubevirt.io/v1", "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:spec": {"f:runStrategy": {}, "f:template": {"f:spec": {"f:domain": {"f:devices": {}}}}}}
            })
        );
    }

    #[test]
    fn apply_twice_is_idempotent_and_keeps_the_time() {
        let keys = vm_keys();
        let first = stored(&apply(None, &vm("Always"), "kubectl", false, &keys, T1).unwrap());
        let second = apply(Some(&first), &vm("Always"), "kubectl", false, &keys, T2).unwrap();
        assert_eq!(second, first);
    }

    #[test]
    fn conflict_with_client_side_apply_is_reported_like_kubernetes() {
        let live = created_by_csa("Halted");
        let err = apply(Some(&live), &vm("Always"), "other", false, &vm_keys(), T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using kubevirt.io/v1: .spec.runStrategy"#
        );
        let s = err.to_status();
        assert_eq!(s.code, 409);
        assert_eq!(s.reason, "Conflict");
        assert_eq!(
            serde_json::to_value(&s.details.unwrap().causes).unwrap(),
            json!([{"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-client-side-apply\" using kubevirt.io/v1", "field": ".spec.runStrategy"}])
        );
    }

    #[test]
    fn same_value_is_shared_without_conflict() {
        let live = created_by_csa("Halted");
        let out = apply(Some(&live), &vm("Halted"), "other", false, &vm_keys(), T2).unwrap();
        assert_eq!(
            fields_of(&out, "other")["f:spec"]["f:runStrategy"],
            json!({})
        );
        assert_eq!(
            fields_of(&out, "kubectl-client-side-apply")["f:spec"]["f:runStrategy"],
            json!({})
        );
        assert_eq!(
            out["metadata"]["managedFields"][0]["manager"], "other",
            "Apply sorts first"
        );
    }

    #[test]
    fn force_takes_ownership() {
        let live = created_by_csa("Halted");
        let out = apply(Some(&live), &vm("Always"), "other", true, &vm_keys(), T2).unwrap();
        assert_eq!(out["spec"]["runStrategy"], "Always");
        assert_eq!(
            fields_of(&out, "other")["f:spec"]["f:runStrategy"],
            json!({})
        );
        let csa = fields_of(&out, "kubectl-client-side-apply");
        assert!(csa["f:spec"].get("f:runStrategy").is_none(), "{csa}");
        assert!(csa["f:spec"].get("f:template").is_some());
        assert_eq!(out["metadata"]["uid"], "u1", "identity kept");
    }

    #[test]
    fn several_conflicts_are_grouped_by_manager() {
        let keys = vm_keys();
        let mut base = vm("Halted");
        base["spec"]["a"] = json!(1);
        base["spec"]["b"] = json!(2);
        let live =
            update_managed_fields(None, &stored(&base), "m1", Operation::Update, "", &keys, T1)
                .unwrap();
        let mut applied = vm("Always");
        applied["spec"]["a"] = json!(3);
        let err = apply(Some(&live), &applied, "m2", false, &keys, T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Apply failed with 2 conflicts: conflicts with \"m1\" using kubevirt.io/v1:\n- .spec.a\n- .spec.runStrategy"
        );
    }

    #[test]
    fn conflicts_between_appliers_name_only_the_manager() {
        let keys = vm_keys();
        let live = stored(&apply(None, &vm("Halted"), "a", false, &keys, T1).unwrap());
        let err = apply(Some(&live), &vm("Always"), "b", false, &keys, T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Apply failed with 1 conflict: conflict with "a": .spec.runStrategy"#
        );
    }

    #[test]
    fn fields_no_longer_applied_are_removed() {
        let keys = vm_keys();
        let mut first = vm("Always");
        first["metadata"]["labels"] = json!({"a": "1", "b": "2"});
        first["spec"]["extra"] = json!({"x": 1});
        let live = stored(&apply(None, &first, "mgr", false, &keys, T1).unwrap());
        let mut second = vm("Always");
        second["metadata"]["labels"] = json!({"a": "1"});
        let out = apply(Some(&live), &second, "mgr", false, &keys, T2).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
        assert!(out["spec"].get("extra").is_none(), "{}", out["spec"]);
        assert_eq!(out["metadata"]["managedFields"][0]["time"], T2);
    }

    #[test]
    fn fields_owned_by_others_survive_removal() {
        let keys = vm_keys();
        let mut first = vm("Always");
        first["metadata"]["labels"] = json!({"a": "1", "b": "2"});
        let live = stored(&apply(None, &first, "mgr", false, &keys, T1).unwrap());
        // Another applier also declares b.
        let mut other = vm("Always");
        other["metadata"]["labels"] = json!({"b": "2"});
        let live = apply(Some(&live), &other, "other", false, &keys, T2).unwrap();
        let mut second = vm("Always");
        second["metadata"]["labels"] = json!({"a": "1"});
        let out = apply(Some(&live), &second, "mgr", false, &keys, T3).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn fields_set_by_updates_are_not_pruned() {
        let keys = vm_keys();
        let live = stored(&apply(None, &vm("Always"), "mgr", false, &keys, T1).unwrap());
        let mut edited = live.clone();
        edited["spec"]["note"] = json!("hi");
        let live = update_managed_fields(
            Some(&live),
            &edited,
            "kubectl-edit",
            Operation::Update,
            "",
            &keys,
            T2,
        )
        .unwrap();
        let out = apply(Some(&live), &vm("Always"), "mgr", false, &keys, T3).unwrap();
        assert_eq!(out["spec"]["note"], "hi");
        assert_eq!(
            entries(&out),
            [
                ("mgr".to_string(), "Apply".to_string()),
                ("kubectl-edit".to_string(), "Update".to_string())
            ]
        );
    }

    #[test]
    fn keyed_lists_merge_per_item_across_managers() {
        let keys = KeyTable::for_kind("", "Pod");
        let pod = |containers: Value| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}});
        let live = stored(
            &apply(
                None,
                &pod(json!([{"name": "a", "image": "a:1"}])),
                "ma",
                false,
                &keys,
                T1,
            )
            .unwrap(),
        );
        let live = apply(
            Some(&live),
            &pod(json!([{"name": "b", "image": "b:1"}])),
            "mb",
            false,
            &keys,
            T2,
        )
        .unwrap();
        assert_eq!(
            live["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}])
        );
        assert_eq!(
            fields_of(&live, "mb"),
            &json!({"f:spec": {"f:containers": {"k:{\"name\":\"b\"}": {".": {}, "f:image": {}, "f:name": {}}}}})
        );
        // ma stops declaring its container: it goes, b stays.
        let out = apply(Some(&live), &pod(json!([])), "ma", false, &keys, T3).unwrap();
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "b:1"}])
        );
        // mb changing a's image conflicts with ma.
        let err = apply(
            Some(&live),
            &pod(json!([{"name": "a", "image": "a:2"}])),
            "mb",
            false,
            &keys,
            T3,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .ends_with(r#"conflict with "ma": .spec.containers[name="a"].image"#),
            "{err}"
        );
    }

    #[test]
    fn kubectl_takes_over_its_client_side_apply_fields() {
        let keys = vm_keys();
        let mut csa = vm("Halted");
        let la = format!("{}\n", vm("Halted"));
        csa["metadata"]["annotations"] = json!({ LAST_APPLIED_ANNOTATION: la });
        let live = update_managed_fields(
            None,
            &stored(&csa),
            "kubectl-client-side-apply",
            Operation::Update,
            "",
            &keys,
            T1,
        )
        .unwrap();
        let out = apply(Some(&live), &vm("Always"), "kubectl", false, &keys, T2).unwrap();
        assert_eq!(out["spec"]["runStrategy"], "Always");
        let annotation: Value = serde_json::from_str(
            out["metadata"]["annotations"][LAST_APPLIED_ANNOTATION]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(annotation, vm("Always"), "last-applied kept in sync");
        // Another manager name gets the conflict.
        assert!(matches!(
            apply(Some(&live), &vm("Always"), "someone", false, &keys, T2),
            Err(ApplyError::Conflicts(_))
        ));
    }

    #[test]
    fn first_apply_on_untracked_object_conflicts_with_before_first_apply() {
        let keys = vm_keys();
        let live = stored(&vm("Halted"));
        let err = apply(Some(&live), &vm("Always"), "mgr", false, &keys, T2).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"Apply failed with 1 conflict: conflict with "before-first-apply" using kubevirt.io/v1: .spec.runStrategy"#
        );
        let out = apply(Some(&live), &vm("Halted"), "mgr", false, &keys, T2).unwrap();
        assert_eq!(
            entries(&out),
            [("mgr".to_string(), "Apply".to_string())],
            "everything it declared is its own"
        );
        let mut partial = vm("Halted");
        partial["spec"].as_object_mut().unwrap().remove("template");
        let out = apply(Some(&live), &partial, "mgr", false, &keys, T2).unwrap();
        assert_eq!(
            fields_of(&out, BEFORE_FIRST_APPLY),
            &json!({"f:spec": {"f:template": {"f:spec": {"f:domain": {"f:devices": {}}}}}})
        );
    }

    #[test]
    fn invalid_apply_configurations() {
        let keys = KeyTable::for_kind("", "Pod");
        let cases = [
            (json!([]), "must be an object"),
            (json!({"kind": "Pod"}), "apiVersion must be set"),
            (json!({"apiVersion": "v1"}), "kind must be set"),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"managedFields": []}}),
                "managedFields must be nil",
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"image": "x"}]}}),
                r#"failed to create typed patch object: .spec.containers: element 0: associative list with keys has an element that omits key field "name""#,
            ),
            (
                json!({"apiVersion": "v1", "kind": "Pod", "spec": {"containers": [{"name": "a"}, {"name": "a"}]}}),
                "duplicate entries for key [name=\"a\"]",
            ),
        ];
        for (applied, want) in cases {
            let e = apply(None, &applied, "m", false, &keys, T1).unwrap_err();
            assert!(e.to_string().contains(want), "{applied}: {e}");
            assert_eq!(e.to_status().code, 400);
        }
        let mut bad = stored(&vm("Always"));
        bad["metadata"]["managedFields"] =
            json!([{"manager": "m", "operation": "Sideways", "fieldsType": "FieldsV1"}]);
        assert!(matches!(
            apply(Some(&bad), &vm("Always"), "m", false, &vm_keys(), T1),
            Err(ApplyError::ManagedFields(_))
        ));
    }

    #[test]
    fn update_records_maps_with_dot_and_moves_ownership() {
        let keys = vm_keys();
        let mut obj = vm("Halted");
        obj["metadata"]["labels"] = json!({"app": "x"});
        let created = update_managed_fields(
            None,
            &stored(&obj),
            "kubectl-create",
            Operation::Update,
            "",
            &keys,
            T1,
        )
        .unwrap();
        assert_eq!(
            fields_of(&created, "kubectl-create"),
            &json!({
                "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                "f:spec": {".": {}, "f:runStrategy": {}, "f:template": {".": {}, "f:spec": {".": {}, "f:domain": {".": {}, "f:devices": {}}}}}
            })
        );
        let mut edited = created.clone();
        edited["spec"]["runStrategy"] = json!("Always");
        let out = update_managed_fields(
            Some(&created),
            &edited,
            "kubectl-edit",
            Operation::Update,
            "",
            &keys,
            T2,
        )
        .unwrap();
        assert_eq!(
            fields_of(&out, "kubectl-edit"),
            &json!({"f:spec": {"f:runStrategy": {}}})
        );
        assert!(
            fields_of(&out, "kubectl-create")["f:spec"]
                .get("f:runStrategy")
                .is_none()
        );
        // A no-op update leaves managedFields alone.
        let again = update_managed_fields(
            Some(&out),
            &out,
            "kubectl-edit",
            Operation::Update,
            "",
            &keys,
            T3,
        )
        .unwrap();
        assert_eq!(
            again["metadata"]["managedFields"],
            out["metadata"]["managedFields"]
        );
    }

    #[test]
    fn status_writes_record_the_subresource() {
        let keys = vm_keys();
        let created = update_managed_fields(
            None,
            &stored(&vm("Always")),
            "c",
            Operation::Update,
            "",
            &keys,
            T1,
        )
        .unwrap();
        let mut st = created.clone();
        st["status"] = json!({"ready": true});
        let out = update_managed_fields(
            Some(&created),
            &st,
            "virt-controller",
            Operation::Update,
            "status",
            &keys,
            T2,
        )
        .unwrap();
        let e = out["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "virt-controller")
            .unwrap();
        assert_eq!(e["subresource"], "status");
        assert_eq!(e["fieldsV1"], json!({"f:status": {".": {}, "f:ready": {}}}));
    }

    #[test]
    fn removed_fields_leave_every_manager() {
        let keys = vm_keys();
        let mut obj = vm("Always");
        obj["spec"]["note"] = json!("n");
        let created =
            update_managed_fields(None, &stored(&obj), "c", Operation::Update, "", &keys, T1)
                .unwrap();
        let mut without = created.clone();
        without["spec"].as_object_mut().unwrap().remove("note");
        let out = update_managed_fields(
            Some(&created),
            &without,
            "e",
            Operation::Update,
            "",
            &keys,
            T2,
        )
        .unwrap();
        assert!(fields_of(&out, "c")["f:spec"].get("f:note").is_none());
        assert_eq!(
            entries(&out),
            [("c".to_string(), "Update".to_string())],
            "e changed nothing it owns"
        );
    }

    #[test]
    fn managed_fields_reset_and_untracked() {
        let keys = vm_keys();
        let created = update_managed_fields(
            None,
            &stored(&vm("Always")),
            "c",
            Operation::Update,
            "",
            &keys,
            T1,
        )
        .unwrap();
        let mut reset = created.clone();
        reset["metadata"]["managedFields"] = json!([]);
        let out = update_managed_fields(
            Some(&created),
            &reset,
            "e",
            Operation::Update,
            "",
            &keys,
            T2,
        )
        .unwrap();
        assert!(out["metadata"].get("managedFields").is_none());
        let mut edited = out.clone();
        edited["spec"]["runStrategy"] = json!("Halted");
        let still =
            update_managed_fields(Some(&out), &edited, "e", Operation::Update, "", &keys, T3)
                .unwrap();
        assert!(
            still["metadata"].get("managedFields").is_none(),
            "untracked objects stay untracked"
        );
    }

    #[test]
    fn update_managers_are_capped() {
        let keys = vm_keys();
        let mut cur = update_managed_fields(
            None,
            &stored(&vm("Always")),
            "m0",
            Operation::Update,
            "",
            &keys,
            "2024-01-01T00:00:00Z",
        )
        .unwrap();
        for i in 1..=11 {
            let mut next = cur.clone();
            next["spec"][format!("f{i}")] = json!(i);
            cur = update_managed_fields(
                Some(&cur),
                &next,
                &format!("m{i}"),
                Operation::Update,
                "",
                &keys,
                &format!("2024-01-01T00:00:{i:02}Z"),
            )
            .unwrap();
        }
        let names: Vec<String> = entries(&cur).into_iter().map(|(m, _)| m).collect();
        assert_eq!(names.len(), 10);
        assert!(names.contains(&"ancient-changes".to_string()));
        assert!(!names.contains(&"m0".to_string()) && !names.contains(&"m1".to_string()));
    }
}
