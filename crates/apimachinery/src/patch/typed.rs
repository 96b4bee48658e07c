//! Walks JSON objects with list semantics from a [`KeyTable`]: the field set of an object, the
//! difference of two objects, the apply merge, and removal of a field set.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::fieldset::{FieldSet, PathElement, path_string};
use super::{KeyTable, ListType};

fn join(tp: &str, k: &str) -> String {
    if tp.is_empty() {
        k.to_owned()
    } else {
        format!("{tp}.{k}")
    }
}

/// The path element of a list item, or why it has none.
pub(crate) fn item_pe(t: &ListType, item: &Value, index: usize) -> Result<PathElement, String> {
    match t {
        ListType::Atomic => Ok(PathElement::Index(index)),
        ListType::Set => Ok(PathElement::value(item)),
        ListType::Map { keys, defaults } => {
            let Value::Object(obj) = item else {
                return Err(format!(
                    "element {index}: associative list with keys has an element that is not a map"
                ));
            };
            let mut fields = Vec::new();
            for k in keys {
                match obj.get(k).filter(|v| !v.is_null()) {
                    Some(v) => fields.push((k.clone(), v.clone())),
                    None => match defaults.iter().find(|(d, _)| d == k) {
                        Some((_, dv)) => fields.push((k.clone(), dv.clone())),
                        None => {
                            return Err(format!(
                                "element {index}: associative list with keys has an element that omits key field {k:?} (and doesn't have default value)"
                            ));
                        }
                    },
                }
            }
            Ok(PathElement::key(fields))
        }
    }
}

/// Items of a non-atomic list with their path elements; duplicates are an error unless
/// `allow_duplicates` (then the first wins).
fn index_items<'v>(
    t: &ListType,
    list: &'v [Value],
    allow_duplicates: bool,
) -> Result<Vec<(PathElement, &'v Value)>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let pe = item_pe(t, item, i)?;
        if !seen.insert(pe.clone()) {
            if allow_duplicates {
                continue;
            }
            return Err(format!("duplicate entries for key {pe}"));
        }
        out.push((pe, item));
    }
    Ok(out)
}

/// The set of leaf fields and list items of `v` (structured-merge-diff's `ToFieldSet`).
pub(crate) fn to_field_set(
    v: &Value,
    keys: &KeyTable,
    allow_duplicates: bool,
) -> Result<FieldSet, String> {
    let mut set = FieldSet::new();
    if let Value::Object(m) = v {
        walk_map(m, "", &mut Vec::new(), &mut set, keys, allow_duplicates)?;
    }
    Ok(set)
}

fn walk_map(
    m: &Map<String, Value>,
    tp: &str,
    path: &mut Vec<PathElement>,
    set: &mut FieldSet,
    keys: &KeyTable,
    dups: bool,
) -> Result<(), String> {
    for (k, v) in m {
        path.push(PathElement::Field(k.clone()));
        let ctp = join(tp, k);
        match v {
            Value::Object(cm) if !cm.is_empty() => walk_map(cm, &ctp, path, set, keys, dups)?,
            Value::Array(a) => match keys.lookup(&ctp) {
                ListType::Atomic => set.insert(path),
                t => {
                    let items = index_items(t, a, dups)
                        .map_err(|e| format!("{}: {e}", path_string(path)))?;
                    for (pe, item) in items {
                        path.push(pe);
                        if let Value::Object(im) = item {
                            walk_map(im, &ctp, path, set, keys, dups)?;
                        }
                        set.insert(path);
                        path.pop();
                    }
                }
            },
            _ => set.insert(path),
        }
        path.pop();
    }
    Ok(())
}

/// What changed from one object to another.
#[derive(Debug, Default)]
pub(crate) struct Comparison {
    pub added: FieldSet,
    pub modified: FieldSet,
    pub removed: FieldSet,
}

/// structured-merge-diff's `Compare`: new maps and list items are added together with everything
/// below them; leaves (scalars, atomic lists) are added, removed or modified.
pub(crate) fn compare(old: &Value, new: &Value, keys: &KeyTable) -> Comparison {
    let mut c = Comparison::default();
    cmp(Some(old), Some(new), "", &mut Vec::new(), &mut c, keys);
    c
}

fn cmp(
    old: Option<&Value>,
    new: Option<&Value>,
    tp: &str,
    path: &mut Vec<PathElement>,
    c: &mut Comparison,
    keys: &KeyTable,
) {
    let both = |f: fn(&Value) -> bool| old.is_none_or(f) && new.is_none_or(f);
    let mark_whole = |path: &[PathElement], c: &mut Comparison| {
        if path.is_empty() {
            return;
        }
        if old.is_none() {
            c.added.insert(path);
        } else if new.is_none() {
            c.removed.insert(path);
        }
    };
    if both(Value::is_object) {
        let empty = Map::new();
        let om = old.and_then(Value::as_object).unwrap_or(&empty);
        let nm = new.and_then(Value::as_object).unwrap_or(&empty);
        let mut names: Vec<&String> = om.keys().collect();
        names.extend(nm.keys().filter(|k| !om.contains_key(*k)));
        for k in names {
            path.push(PathElement::Field(k.clone()));
            cmp(om.get(k), nm.get(k), &join(tp, k), path, c, keys);
            path.pop();
        }
        mark_whole(path, c);
        return;
    }
    let t = keys.lookup(tp);
    let len = |v: Option<&Value>| v.and_then(Value::as_array).map_or(0, Vec::len);
    if both(Value::is_array) && *t != ListType::Atomic && (len(old) > 0 || len(new) > 0) {
        let empty = Vec::new();
        let ol = old.and_then(Value::as_array).unwrap_or(&empty);
        let nl = new.and_then(Value::as_array).unwrap_or(&empty);
        if let (Ok(oi), Ok(ni)) = (index_items(t, ol, true), index_items(t, nl, true)) {
            let mut pes: Vec<&PathElement> = oi.iter().map(|(pe, _)| pe).collect();
            pes.extend(
                ni.iter()
                    .map(|(pe, _)| pe)
                    .filter(|pe| !oi.iter().any(|(o, _)| o == *pe)),
            );
            for pe in pes {
                let o = oi.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                let n = ni.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
                path.push(pe.clone());
                cmp(o, n, tp, path, c, keys);
                path.pop();
            }
            mark_whole(path, c);
            return;
        }
    }
    match (old, new) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if a != b => c.modified.insert(path),
        _ => {}
    }
}

/// Drops `null` object fields, recursively (an apply configuration's `null` unsets).
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// The apply merge: `applied` wins; objects merge by field, keyed lists and sets by item
/// (order as structured-merge-diff: applied order, live-only items kept in place), atomic lists
/// are replaced.
pub(crate) fn merge(live: &Value, applied: &Value, keys: &KeyTable) -> Result<Value, String> {
    merge_at(live, applied, "", &mut Vec::new(), keys)
}

fn merge_at(
    live: &Value,
    applied: &Value,
    tp: &str,
    path: &mut Vec<PathElement>,
    keys: &KeyTable,
) -> Result<Value, String> {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, av) in a {
                if av.is_null() {
                    out.remove(k);
                    continue;
                }
                path.push(PathElement::Field(k.clone()));
                let nv = match l.get(k) {
                    Some(lv) => merge_at(lv, av, &join(tp, k), path, keys)?,
                    None => {
                        check_list_keys(av, &join(tp, k), path, keys)?;
                        without_nulls(av)
                    }
                };
                path.pop();
                out.insert(k.clone(), nv);
            }
            Ok(Value::Object(out))
        }
        (Value::Array(l), Value::Array(a)) if *keys.lookup(tp) != ListType::Atomic => {
            merge_list(l, a, tp, path, keys)
        }
        (_, a) => {
            check_list_keys(a, tp, path, keys)?;
            Ok(without_nulls(a))
        }
    }
}

/// Validates keys and duplicates of every keyed list inside a value taken whole from the
/// apply configuration.
fn check_list_keys(
    v: &Value,
    tp: &str,
    path: &mut Vec<PathElement>,
    keys: &KeyTable,
) -> Result<(), String> {
    match v {
        Value::Object(m) => {
            for (k, cv) in m {
                path.push(PathElement::Field(k.clone()));
                check_list_keys(cv, &join(tp, k), path, keys)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(a) => {
            let t = keys.lookup(tp);
            if *t == ListType::Atomic {
                return Ok(());
            }
            let items =
                index_items(t, a, false).map_err(|e| format!("{}: {e}", path_string(path)))?;
            for (pe, item) in items {
                path.push(pe);
                check_list_keys(item, tp, path, keys)?;
                path.pop();
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn merge_list(
    live: &[Value],
    applied: &[Value],
    tp: &str,
    path: &mut Vec<PathElement>,
    keys: &KeyTable,
) -> Result<Value, String> {
    let t = keys.lookup(tp);
    let rhs = index_items(t, applied, false).map_err(|e| format!("{}: {e}", path_string(path)))?;
    let Ok(lhs) = index_items(t, live, true) else {
        // A live list that cannot be keyed is replaced.
        return Ok(without_nulls(&Value::Array(applied.to_vec())));
    };
    let in_rhs = |pe: &PathElement| rhs.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
    let in_lhs = |pe: &PathElement| lhs.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
    let merge_item = |pe: &PathElement, path: &mut Vec<PathElement>| -> Result<Value, String> {
        let r = in_rhs(pe);
        let l = in_lhs(pe);
        path.push(pe.clone());
        let out = match (l, r) {
            (Some(l), Some(r)) => merge_at(l, r, tp, path, keys),
            (None, Some(r)) => {
                check_list_keys(r, tp, path, keys)?;
                Ok(without_nulls(r))
            }
            (Some(l), None) => Ok(l.clone()),
            (None, None) => Ok(Value::Null),
        };
        path.pop();
        out
    };
    // structured-merge-diff's ordering: walk both lists; shared items follow the applied order,
    // live-only items stay where they were relative to them.
    let mut shared: std::collections::VecDeque<&PathElement> = rhs
        .iter()
        .map(|(pe, _)| pe)
        .filter(|pe| in_lhs(pe).is_some())
        .collect();
    let mut next_shared = shared.pop_front();
    let mut merged_rhs: BTreeSet<PathElement> = BTreeSet::new();
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            let pe = &lhs[li].0;
            if *pe == rhs[ri].0 {
                merged_rhs.insert(pe.clone());
                out.push(merge_item(pe, path)?);
                li += 1;
                ri += 1;
                next_shared = shared.pop_front();
                continue;
            }
            if in_rhs(pe).is_some() && next_shared.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            let pe = &lhs[li].0;
            if in_rhs(pe).is_none() {
                out.push(merge_item(pe, path)?);
                li += 1;
                continue;
            } else if merged_rhs.contains(pe) {
                li += 1;
            }
        }
        if ri < rhs.len() {
            let pe = &rhs[ri].0;
            merged_rhs.insert(pe.clone());
            out.push(merge_item(pe, path)?);
            ri += 1;
            if next_shared.is_some_and(|n| n == pe) {
                next_shared = shared.pop_front();
            }
        }
    }
    Ok(Value::Array(out))
}

/// Removes every member of `set` from `v`; objects emptied by the removal go too.
pub(crate) fn remove(v: &mut Value, set: &FieldSet, keys: &KeyTable) {
    remove_at(v, set, "", keys);
}

fn remove_at(v: &mut Value, set: &FieldSet, tp: &str, keys: &KeyTable) {
    match v {
        Value::Object(m) => {
            let names: Vec<String> = m.keys().cloned().collect();
            for k in names {
                let pe = PathElement::Field(k.clone());
                if set.has(std::slice::from_ref(&pe)) {
                    m.shift_remove(&k);
                    continue;
                }
                if let (Some(sub), Some(cv)) = (set.child(&pe), m.get_mut(&k)) {
                    let was_full = cv.as_object().is_some_and(|o| !o.is_empty());
                    remove_at(cv, sub, &join(tp, &k), keys);
                    if was_full && cv.as_object().is_some_and(Map::is_empty) {
                        m.shift_remove(&k);
                    }
                }
            }
        }
        Value::Array(a) => {
            let t = keys.lookup(tp).clone();
            let mut kept = Vec::with_capacity(a.len());
            for (i, mut item) in std::mem::take(a).into_iter().enumerate() {
                let pe = item_pe(&t, &item, i);
                if let Ok(pe) = pe {
                    if set.has(std::slice::from_ref(&pe)) {
                        continue;
                    }
                    if let Some(sub) = set.child(&pe) {
                        remove_at(&mut item, sub, tp, keys);
                    }
                }
                kept.push(item);
            }
            *a = kept;
        }
        _ => {}
    }
}

/// The value at `path`, if present.
pub(crate) fn get_at<'v>(
    v: &'v Value,
    path: &[PathElement],
    tp: &str,
    keys: &KeyTable,
) -> Option<&'v Value> {
    let Some((first, rest)) = path.split_first() else {
        return Some(v);
    };
    match (first, v) {
        (PathElement::Field(k), Value::Object(m)) => get_at(m.get(k)?, rest, &join(tp, k), keys),
        (PathElement::Index(i), Value::Array(a)) => get_at(a.get(*i)?, rest, tp, keys),
        (pe, Value::Array(a)) => {
            let t = keys.lookup(tp);
            let item = a
                .iter()
                .enumerate()
                .find(|(i, item)| item_pe(t, item, *i).as_ref() == Ok(pe))?
                .1;
            get_at(item, rest, tp, keys)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys() -> KeyTable {
        KeyTable::for_kind("", "Pod")
    }

    fn strings(s: &FieldSet) -> Vec<String> {
        s.paths().iter().map(|p| path_string(p)).collect()
    }

    #[test]
    fn field_set_of_a_pod() {
        let pod = json!({
            "metadata": {"labels": {"a": "b"}, "finalizers": ["f"], "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}], "tolerations": [{"key": "x"}]}
        });
        let s = to_field_set(&pod, &keys(), false).unwrap();
        assert_eq!(
            strings(&s),
            [
                ".metadata.annotations",
                r#".metadata.finalizers[="f"]"#,
                ".metadata.labels.a",
                ".spec.tolerations",
                r#".spec.containers[name="c"]"#,
                r#".spec.containers[name="c"].image"#,
                r#".spec.containers[name="c"].name"#,
                r#".spec.containers[name="c"].ports[containerPort=80,protocol="TCP"]"#,
                r#".spec.containers[name="c"].ports[containerPort=80,protocol="TCP"].containerPort"#,
            ]
        );
    }

    #[test]
    fn field_set_errors() {
        let cases = [
            (
                json!({"spec": {"containers": [{"image": "i"}]}}),
                r#".spec.containers: element 0: associative list with keys has an element that omits key field "name""#,
            ),
            (
                json!({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}),
                r#"duplicate entries for key [name="a"]"#,
            ),
            (json!({"spec": {"containers": ["a"]}}), "not a map"),
        ];
        for (v, want) in cases {
            let e = to_field_set(&v, &keys(), false).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
        assert!(
            to_field_set(
                &json!({"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}),
                &keys(),
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn compare_marks_new_maps_and_items() {
        let old = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a", "image": "1"}]}});
        let new = json!({"metadata": {"name": "x", "labels": {"l": "v"}}, "spec": {"containers": [{"name": "a", "image": "2"}, {"name": "b", "image": "3"}]}});
        let c = compare(&old, &new, &keys());
        assert_eq!(
            strings(&c.added),
            [
                ".metadata.labels",
                ".metadata.labels.l",
                r#".spec.containers[name="b"]"#,
                r#".spec.containers[name="b"].image"#,
                r#".spec.containers[name="b"].name"#
            ]
        );
        assert_eq!(
            strings(&c.modified),
            [r#".spec.containers[name="a"].image"#]
        );
        assert!(c.removed.is_empty());
        let back = compare(&new, &old, &keys());
        assert_eq!(strings(&back.removed).len(), 5);
    }

    #[test]
    fn merge_orders_like_structured_merge_diff() {
        let k = keys();
        let live = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let cases = [
            (
                json!({"spec": {"containers": [{"name": "c", "image": "x"}]}}),
                ["a", "b", "c"].as_slice(),
            ),
            (
                json!({"spec": {"containers": [{"name": "d"}]}}),
                ["a", "b", "c", "d"].as_slice(),
            ),
            (
                json!({"spec": {"containers": [{"name": "c"}, {"name": "a"}]}}),
                ["b", "c", "a"].as_slice(),
            ),
            (
                json!({"spec": {"containers": [{"name": "z"}, {"name": "b"}]}}),
                ["a", "z", "b", "c"].as_slice(),
            ),
        ];
        for (applied, want) in cases {
            let out = merge(&live, &applied, &k).unwrap();
            let names: Vec<&str> = out["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, want, "{applied}");
        }
        let out = merge(
            &live,
            &json!({"spec": {"containers": [{"name": "c", "image": "x"}]}}),
            &k,
        )
        .unwrap();
        assert_eq!(
            out["spec"]["containers"][2],
            json!({"name": "c", "image": "x"})
        );
    }

    #[test]
    fn merge_sets_atomic_lists_and_nulls() {
        let k = keys();
        let live = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1"}}, "spec": {"tolerations": [{"key": "t1"}]}});
        let applied = json!({"metadata": {"finalizers": ["c", "a"], "labels": {"x": null}}, "spec": {"tolerations": [{"key": "t2"}], "new": {"a": null, "b": 1}}});
        let out = merge(&live, &applied, &k).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
        assert_eq!(out["metadata"]["labels"], json!({}));
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "t2"}]));
        assert_eq!(out["spec"]["new"], json!({"b": 1}));
        assert!(
            merge(
                &live,
                &json!({"spec": {"containers": [{"image": "x"}]}}),
                &k
            )
            .unwrap_err()
            .contains("omits key field")
        );
    }

    #[test]
    fn remove_and_get() {
        let k = keys();
        let mut v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"containers": [{"name": "a", "image": "i"}, {"name": "b"}], "x": 1}});
        let mut s = FieldSet::new();
        s.insert(&[
            PathElement::Field("metadata".into()),
            PathElement::Field("labels".into()),
            PathElement::Field("a".into()),
        ]);
        s.insert(&[
            PathElement::Field("spec".into()),
            PathElement::Field("containers".into()),
            PathElement::key([("name".to_string(), json!("b"))]),
        ]);
        s.insert(&[
            PathElement::Field("spec".into()),
            PathElement::Field("containers".into()),
            PathElement::key([("name".to_string(), json!("a"))]),
            PathElement::Field("image".into()),
        ]);
        let image_path = [
            PathElement::Field("spec".into()),
            PathElement::Field("containers".into()),
            PathElement::key([("name".to_string(), json!("a"))]),
            PathElement::Field("image".into()),
        ];
        assert_eq!(get_at(&v, &image_path, "", &k), Some(&json!("i")));
        remove(&mut v, &s, &k);
        assert_eq!(v, json!({"spec": {"containers": [{"name": "a"}], "x": 1}}));
        assert_eq!(get_at(&v, &image_path, "", &k), None);
    }
}
