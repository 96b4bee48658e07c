//! Strategic merge patch for built-in kinds: lists merge by key from a [`KeyTable`], with the
//! directives `$patch: replace|delete|merge`, `$deleteFromPrimitiveList/<f>`,
//! `$setElementOrder/<f>` and `$retainKeys`; `null` deletes; lists without a key are replaced.

use serde_json::{Map, Value};

use super::{KeyTable, ListType, PatchError};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE: &str = "$deleteFromPrimitiveList/";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";

/// Applies a strategic merge patch to a copy of `original`. Kinds whose table does not
/// [support](KeyTable::supports_strategic) it (custom resources) get
/// [`PatchError::StrategicUnsupported`], which answers 415.
pub fn strategic_merge_patch(
    original: &Value,
    patch: &Value,
    keys: &KeyTable,
) -> Result<Value, PatchError> {
    if !keys.supports_strategic() {
        return Err(PatchError::StrategicUnsupported("custom resources".into()));
    }
    let Value::Object(patch) = patch else {
        return Err(PatchError::Malformed(
            "a strategic merge patch must be a JSON object".into(),
        ));
    };
    let merged = merge_map(original.as_object(), patch, "", keys)?;
    Ok(Value::Object(merged.unwrap_or_default()))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn err(path: &str, why: String) -> PatchError {
    if path.is_empty() {
        PatchError::Strategic(why)
    } else {
        PatchError::Strategic(format!("{path}: {why}"))
    }
}

/// Merges `patch` into `orig`; `None` means the map is deleted (`$patch: delete`).
fn merge_map(
    orig: Option<&Map<String, Value>>,
    patch: &Map<String, Value>,
    path: &str,
    keys: &KeyTable,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(PATCH) {
        None => {}
        Some(Value::String(s)) if s == "merge" => {}
        Some(Value::String(s)) if s == "delete" => return Ok(None),
        Some(Value::String(s)) if s == "replace" => {
            let mut rest = patch.clone();
            rest.remove(PATCH);
            return merge_map(None, &rest, path, keys);
        }
        Some(other) => return Err(err(path, format!("unknown patch type {other}"))),
    }
    let mut out = orig.cloned().unwrap_or_default();

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        let retain: Vec<&str> = retain
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .ok_or_else(|| err(path, "$retainKeys must be a list of strings".into()))?;
        for k in patch.keys().filter(|k| !k.starts_with('$')) {
            if !retain.contains(&k.as_str()) {
                return Err(err(
                    path,
                    format!("field {k:?} is patched but not listed in $retainKeys"),
                ));
            }
        }
        out.retain(|k, _| retain.contains(&k.as_str()));
    }

    for (k, v) in patch {
        let Some(field) = k.strip_prefix(DELETE_FROM_PRIMITIVE) else {
            continue;
        };
        let Value::Array(gone) = v else {
            return Err(err(path, format!("{k} must be a list")));
        };
        if let Some(Value::Array(list)) = out.get_mut(field) {
            list.retain(|x| !gone.contains(x));
        }
    }

    for (k, v) in patch {
        if k.starts_with('$') {
            continue;
        }
        let child = join(path, k);
        match v {
            Value::Null => {
                out.remove(k);
            }
            Value::Object(pm) => {
                let existing = out.get(k).and_then(Value::as_object);
                match merge_map(existing, pm, &child, keys)? {
                    Some(m) => {
                        out.insert(k.clone(), Value::Object(m));
                    }
                    None => {
                        out.remove(k);
                    }
                }
            }
            Value::Array(pl) => {
                let existing = out.get(k).and_then(Value::as_array);
                let merged = merge_list(existing, pl, &child, keys)?;
                out.insert(k.clone(), Value::Array(merged));
            }
            scalar => {
                out.insert(k.clone(), scalar.clone());
            }
        }
    }

    for (k, v) in patch {
        let Some(field) = k.strip_prefix(SET_ELEMENT_ORDER) else {
            continue;
        };
        let Value::Array(order) = v else {
            return Err(err(path, format!("{k} must be a list")));
        };
        let child = join(path, field);
        let server: Vec<Value> = orig
            .and_then(|o| o.get(field))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(Value::Array(list)) = out.get_mut(field) {
            *list = reorder(list, order, &server, keys.lookup(&child));
        }
    }
    Ok(Some(out))
}

fn is_directive(v: &Value, which: &str) -> bool {
    v.get(PATCH).and_then(Value::as_str) == Some(which)
}

fn merge_list(
    orig: Option<&Vec<Value>>,
    patch: &[Value],
    path: &str,
    keys: &KeyTable,
) -> Result<Vec<Value>, PatchError> {
    match keys.lookup(path) {
        ListType::Atomic => Ok(patch.to_vec()),
        ListType::Set => {
            let mut out = orig.cloned().unwrap_or_default();
            for v in patch {
                if !out.contains(v) {
                    out.push(v.clone());
                }
            }
            Ok(out)
        }
        ListType::Map { keys: ks, .. } => {
            let Some(key) = ks.first() else {
                return Ok(patch.to_vec());
            };
            if patch.iter().any(|i| is_directive(i, "replace")) {
                let mut out = Vec::new();
                for item in patch.iter().filter(|i| !is_directive(i, "replace")) {
                    let Value::Object(im) = item else {
                        return Err(err(path, format!("list item {item} is not an object")));
                    };
                    if let Some(m) = merge_map(None, im, path, keys)? {
                        out.push(Value::Object(m));
                    }
                }
                return Ok(out);
            }
            let mut out = orig.cloned().unwrap_or_default();
            for item in patch {
                let Value::Object(im) = item else {
                    return Err(err(path, format!("list item {item} is not an object")));
                };
                let Some(kv) = im.get(key) else {
                    return Err(err(
                        path,
                        format!("map: {item} does not contain declared merge key: {key}"),
                    ));
                };
                match out.iter().position(|o| o.get(key) == Some(kv)) {
                    Some(p) => match merge_map(out[p].as_object(), im, path, keys)? {
                        Some(m) => out[p] = Value::Object(m),
                        None => {
                            out.retain(|o| o.get(key) != Some(kv));
                        }
                    },
                    None => {
                        if let Some(m) = merge_map(None, im, path, keys)? {
                            out.push(Value::Object(m));
                        }
                    }
                }
            }
            Ok(out)
        }
    }
}

/// `$setElementOrder`: listed items in the given order, the others interleaved by their position
/// in the server's list (Kubernetes' `normalizeElementOrder`).
fn reorder(list: &[Value], order: &[Value], server: &[Value], t: &ListType) -> Vec<Value> {
    let id = |v: &Value| -> Value {
        match t {
            ListType::Map { keys, .. } => keys
                .first()
                .and_then(|k| v.get(k))
                .cloned()
                .unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let order_ids: Vec<Value> = order.iter().map(&id).collect();
    let server_ids: Vec<Value> = server.iter().map(&id).collect();
    let pos = |ids: &[Value], v: &Value| ids.iter().position(|x| *x == id(v));
    let mut patched: Vec<&Value> = list
        .iter()
        .filter(|v| pos(&order_ids, v).is_some())
        .collect();
    patched.sort_by_key(|v| pos(&order_ids, v));
    let server_only: Vec<&Value> = list
        .iter()
        .filter(|v| pos(&order_ids, v).is_none())
        .collect();
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(list.len());
    while i < patched.len() || j < server_only.len() {
        let take_left = if i >= patched.len() {
            false
        } else if j >= server_only.len() {
            true
        } else {
            matches!(
                (pos(&server_ids, patched[i]), pos(&server_ids, server_only[j])),
                (Some(l), Some(r)) if l < r
            )
        };
        if take_left {
            out.push(patched[i].clone());
            i += 1;
        } else {
            out.push(server_only[j].clone());
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"],
                         "ownerReferences": [{"uid": "u1", "name": "o1", "kind": "VirtualMachineInstance"}]},
            "spec": {
                "containers": [
                    {"name": "a", "image": "a:1", "args": ["--x"],
                     "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}],
                     "ports": [{"containerPort": 80, "protocol": "TCP"}]},
                    {"name": "b", "image": "b:1"}
                ],
                "volumes": [{"name": "v1", "emptyDir": {}}],
                "tolerations": [{"key": "t1"}]
            }
        })
    }

    fn smp(patch: Value) -> Value {
        strategic_merge_patch(&pod(), &patch, &KeyTable::for_kind("", "Pod")).unwrap()
    }

    #[test]
    fn merges_containers_by_name() {
        let out = smp(
            json!({"spec": {"containers": [{"name": "b", "image": "b:2"}, {"name": "c", "image": "c:1"}]}}),
        );
        let c = &out["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 3);
        assert_eq!(c[0]["image"], "a:1");
        assert_eq!(c[1], json!({"name": "b", "image": "b:2"}));
        assert_eq!(c[2], json!({"name": "c", "image": "c:1"}));
    }

    #[test]
    fn nested_keyed_lists() {
        let out = smp(json!({"spec": {"containers": [{"name": "a",
            "env": [{"name": "E2", "value": "two"}, {"name": "E3", "value": "3"}],
            "ports": [{"containerPort": 443}]}]}}));
        let a = &out["spec"]["containers"][0];
        assert_eq!(
            a["env"],
            json!([{"name": "E1", "value": "1"}, {"name": "E2", "value": "two"}, {"name": "E3", "value": "3"}])
        );
        assert_eq!(
            a["ports"],
            json!([{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}])
        );
        assert_eq!(a["args"], json!(["--x"]), "untouched fields stay");
    }

    #[test]
    fn lists_without_merge_key_are_replaced() {
        let out = smp(
            json!({"spec": {"tolerations": [{"key": "t2"}], "containers": [{"name": "a", "args": ["--y"]}]}}),
        );
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "t2"}]));
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["--y"]));
    }

    #[test]
    fn directives_table() {
        let cases: Vec<(Value, &str, Value)> = vec![
            (
                json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
                "/spec/containers",
                json!([{"name": "b", "image": "b:1"}]),
            ),
            (
                json!({"spec": {"containers": [{"name": "z", "image": "z:1"}, {"$patch": "replace"}]}}),
                "/spec/containers",
                json!([{"name": "z", "image": "z:1"}]),
            ),
            (
                json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}}),
                "/metadata/labels",
                json!({"c": "3"}),
            ),
            (
                json!({"metadata": {"labels": {"$patch": "delete"}}}),
                "/metadata/labels",
                Value::Null,
            ),
            (
                json!({"metadata": {"labels": {"$patch": "merge", "c": "3"}}}),
                "/metadata/labels",
                json!({"a": "1", "b": "2", "c": "3"}),
            ),
            (
                json!({"metadata": {"labels": {"a": null}}}),
                "/metadata/labels",
                json!({"b": "2"}),
            ),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}}),
                "/metadata/finalizers",
                json!(["y"]),
            ),
            (
                json!({"metadata": {"finalizers": ["z", "x"]}}),
                "/metadata/finalizers",
                json!(["x", "y", "z"]),
            ),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "finalizers": ["w"]}}),
                "/metadata/finalizers",
                json!(["y", "w"]),
            ),
            (
                json!({"metadata": {"ownerReferences": [{"uid": "u2", "name": "o2"}]}}),
                "/metadata/ownerReferences",
                json!([{"uid": "u1", "name": "o1", "kind": "VirtualMachineInstance"}, {"uid": "u2", "name": "o2"}]),
            ),
            (
                json!({"spec": {"volumes": [{"name": "v1", "$retainKeys": ["name", "hostPath"], "hostPath": {"path": "/x"}}]}}),
                "/spec/volumes",
                json!([{"name": "v1", "hostPath": {"path": "/x"}}]),
            ),
            (
                json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}], "containers": [{"name": "a", "image": "a:2"}]}}),
                "/spec/containers",
                json!([{"name": "b", "image": "b:1"}, {"name": "a", "image": "a:2", "args": ["--x"], "env": [{"name": "E1", "value": "1"}, {"name": "E2", "value": "2"}], "ports": [{"containerPort": 80, "protocol": "TCP"}]}]),
            ),
            (
                json!({"metadata": {"$setElementOrder/finalizers": ["y", "x"]}}),
                "/metadata/finalizers",
                json!(["y", "x"]),
            ),
            (
                json!({"spec": {"containers": [{"name": "new", "$patch": "delete"}]}}),
                "/spec/containers/1/name",
                json!("b"),
            ),
            (
                json!({"spec": {"containers": [{"name": "n", "env": [{"name": "A", "value": null}], "resources": {"$patch": "replace"}}]}}),
                "/spec/containers/2",
                json!({"name": "n", "env": [{"name": "A"}], "resources": {}}),
            ),
        ];
        for (patch, pointer, want) in cases {
            let out = smp(patch.clone());
            assert_eq!(
                out.pointer(pointer).cloned().unwrap_or(Value::Null),
                want,
                "{patch}"
            );
        }
    }

    #[test]
    fn set_element_order_interleaves_server_only_items() {
        let orig = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}});
        let patch = json!({"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "d"}], "containers": [{"name": "d"}]}});
        let out = strategic_merge_patch(&orig, &patch, &KeyTable::for_kind("", "Pod")).unwrap();
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "c", "a", "d"]);
    }

    #[test]
    fn errors() {
        let keys = KeyTable::for_kind("", "Pod");
        let cases = [
            (
                json!({"spec": {"containers": [{"image": "x"}]}}),
                "does not contain declared merge key: name",
            ),
            (json!({"spec": {"containers": ["a"]}}), "is not an object"),
            (
                json!({"spec": {"$patch": "frobnicate"}}),
                "unknown patch type",
            ),
            (
                json!({"spec": {"volumes": [{"name": "v1", "$retainKeys": ["name"], "hostPath": {}}]}}),
                "not listed in $retainKeys",
            ),
            (
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": "x"}}),
                "must be a list",
            ),
        ];
        for (patch, want) in cases {
            let e = strategic_merge_patch(&pod(), &patch, &keys)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{patch}: {e}");
        }
        assert!(matches!(
            strategic_merge_patch(&pod(), &json!([]), &keys),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn services_merge_ports_by_port() {
        let svc = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}]}});
        let out = strategic_merge_patch(
            &svc,
            &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}),
            &KeyTable::for_kind("", "Service"),
        )
        .unwrap();
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443}])
        );
    }

    #[test]
    fn custom_resources_refuse() {
        let e = strategic_merge_patch(
            &json!({}),
            &json!({}),
            &KeyTable::for_kind("kubevirt.io", "VirtualMachine"),
        )
        .unwrap_err();
        assert!(matches!(e, PatchError::StrategicUnsupported(_)));
    }
}
