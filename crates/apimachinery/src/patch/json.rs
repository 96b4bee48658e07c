//! JSON patch (RFC 6902): add, remove, replace, move, copy, test; errors name the failing op's index.

use serde_json::Value;

use super::PatchError;

fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("path {p:?} must start with '/'"));
    };
    rest.split('/')
        .map(|t| {
            let b = t.as_bytes();
            let bad =
                (0..b.len()).any(|i| b[i] == b'~' && !matches!(b.get(i + 1), Some(b'0' | b'1')));
            if bad {
                return Err(format!("path {p:?} has a bad '~' escape"));
            }
            Ok(t.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

/// A list index: digits without leading zeros, below `len` (or equal when `allow_end`).
fn index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if token == "-" && allow_end {
        return Ok(len);
    }
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let i: usize = if valid {
        token
            .parse()
            .map_err(|_| format!("bad list index {token:?}"))?
    } else {
        return Err(format!("bad list index {token:?}"));
    };
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if i > max || (!allow_end && len == 0) {
        return Err(format!("list index {i} out of range (length {len})"));
    }
    Ok(i)
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Result<&'a Value, String> {
    let mut cur = doc;
    for t in path {
        cur = match cur {
            Value::Object(m) => m.get(t).ok_or_else(|| format!("key {t:?} not found"))?,
            Value::Array(a) => &a[index(t, a.len(), false)?],
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn parent_mut<'a>(doc: &'a mut Value, path: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = doc;
    for t in path {
        cur = match cur {
            Value::Object(m) => m.get_mut(t).ok_or_else(|| format!("key {t:?} not found"))?,
            Value::Array(a) => {
                let i = index(t, a.len(), false)?;
                &mut a[i]
            }
            _ => return Err(format!("cannot descend into a scalar at {t:?}")),
        };
    }
    Ok(cur)
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true)?;
            a.insert(i, value);
        }
        _ => return Err("parent is not an object or list".into()),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, parent)) = path.split_last() else {
        return Err("cannot remove the whole document".into());
    };
    match parent_mut(doc, parent)? {
        Value::Object(m) => m
            .shift_remove(last)
            .ok_or_else(|| format!("key {last:?} not found")),
        Value::Array(a) => {
            let i = index(last, a.len(), false)?;
            Ok(a.remove(i))
        }
        _ => Err("parent is not an object or list".into()),
    }
}

/// Applies an RFC 6902 patch (a JSON list of operations) to a copy of `original`.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Array(ops) = patch else {
        return Err(PatchError::Malformed(
            "a JSON patch must be a list of operations".into(),
        ));
    };
    let mut doc = original.clone();
    for (i, op) in ops.iter().enumerate() {
        let malformed = |why: &str| PatchError::Malformed(format!("operation {i}: {why}"));
        let name = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("missing \"op\""))?;
        let path_text = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("missing \"path\""))?;
        let path = parse_pointer(path_text).map_err(|e| malformed(&e))?;
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| malformed("missing \"value\""))
        };
        let from = || -> Result<Vec<String>, PatchError> {
            let f = op
                .get("from")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("missing \"from\""))?;
            parse_pointer(f).map_err(|e| malformed(&e))
        };
        let fail = |why: String| PatchError::Operation {
            index: i,
            op: name.to_owned(),
            path: path_text.to_owned(),
            why,
        };
        match name {
            "add" => add(&mut doc, &path, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut doc, &path).map_err(fail)?;
            }
            "replace" => {
                let v = value()?;
                let target = parent_mut(&mut doc, &path).map_err(fail)?;
                *target = v;
            }
            "move" => {
                let from = from()?;
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(fail("cannot move a value into one of its children".into()));
                }
                let v = remove(&mut doc, &from).map_err(|e| fail(format!("from: {e}")))?;
                add(&mut doc, &path, v).map_err(fail)?;
            }
            "copy" => {
                let from = from()?;
                let v = get(&doc, &from)
                    .map_err(|e| fail(format!("from: {e}")))?
                    .clone();
                add(&mut doc, &path, v).map_err(fail)?;
            }
            "test" => {
                let want = value()?;
                let got = get(&doc, &path).map_err(fail)?;
                if *got != want {
                    return Err(fail(format!("test failed: value is {got}, not {want}")));
                }
            }
            other => return Err(malformed(&format!("unknown op {other:?}"))),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_table() {
        let doc = json!({"foo": "bar", "baz": [1, 2], "o": {"a/b": 1, "m~n": 2}});
        let cases = [
            (
                json!([{"op": "add", "path": "/x", "value": 1}]),
                json!({"foo": "bar", "baz": [1, 2], "o": {"a/b": 1, "m~n": 2}, "x": 1}),
            ),
            (
                json!([{"op": "add", "path": "/baz/1", "value": 9}]),
                json!({"foo": "bar", "baz": [1, 9, 2], "o": {"a/b": 1, "m~n": 2}}),
            ),
            (
                json!([{"op": "add", "path": "/baz/-", "value": 3}]),
                json!({"foo": "bar", "baz": [1, 2, 3], "o": {"a/b": 1, "m~n": 2}}),
            ),
            (
                json!([{"op": "remove", "path": "/foo"}]),
                json!({"baz": [1, 2], "o": {"a/b": 1, "m~n": 2}}),
            ),
            (
                json!([{"op": "remove", "path": "/baz/0"}]),
                json!({"foo": "bar", "baz": [2], "o": {"a/b": 1, "m~n": 2}}),
            ),
            (
                json!([{"op": "remove", "path": "/o/a~1b"}, {"op": "remove", "path": "/o/m~0n"}]),
                json!({"foo": "bar", "baz": [1, 2], "o": {}}),
            ),
            (
                json!([{"op": "replace", "path": "/foo", "value": {"q": 1}}]),
                json!({"foo": {"q": 1}, "baz": [1, 2], "o": {"a/b": 1, "m~n": 2}}),
            ),
            (
                json!([{"op": "move", "from": "/foo", "path": "/bar"}]),
                json!({"baz": [1, 2], "o": {"a/b": 1, "m~n": 2}, "bar": "bar"}),
            ),
            (
                json!([{"op": "copy", "from": "/baz/1", "path": "/baz/0"}]),
                json!({"foo": "bar", "baz": [2, 1, 2], "o": {"a/b": 1, "m~n": 2}}),
            ),
            (
                json!([{"op": "test", "path": "/foo", "value": "bar"}, {"op": "replace", "path": "", "value": 5}]),
                json!(5),
            ),
            (json!([]), doc.clone()),
        ];
        for (patch, want) in cases {
            assert_eq!(json_patch(&doc, &patch).unwrap(), want, "{patch}");
        }
    }

    #[test]
    fn failures_name_the_operation() {
        let doc = json!({"spec": {"runStrategy": "Halted"}, "l": [1]});
        let cases = [
            (
                json!([{"op": "test", "path": "/spec/runStrategy", "value": "Halted"}, {"op": "replace", "path": "/spec/x", "value": 1}]),
                1,
                "key \"x\" not found",
            ),
            (
                json!([{"op": "test", "path": "/spec/runStrategy", "value": "Always"}]),
                0,
                "test failed",
            ),
            (json!([{"op": "remove", "path": "/nope"}]), 0, "not found"),
            (
                json!([{"op": "add", "path": "/a/b", "value": 1}]),
                0,
                "key \"a\" not found",
            ),
            (
                json!([{"op": "add", "path": "/l/5", "value": 1}]),
                0,
                "out of range",
            ),
            (
                json!([{"op": "add", "path": "/l/01", "value": 1}]),
                0,
                "bad list index",
            ),
            (
                json!([{"op": "move", "from": "/spec", "path": "/spec/inner"}]),
                0,
                "children",
            ),
            (
                json!([{"op": "copy", "from": "/missing", "path": "/x"}]),
                0,
                "from: key",
            ),
        ];
        for (patch, idx, want) in cases {
            match json_patch(&doc, &patch).unwrap_err() {
                PatchError::Operation { index, why, .. } => {
                    assert_eq!(index, idx, "{patch}");
                    assert!(why.contains(want), "{patch}: {why}");
                }
                e => panic!("{patch}: {e}"),
            }
        }
    }

    #[test]
    fn malformed_patches() {
        let doc = json!({});
        for (patch, want) in [
            (json!({"op": "add"}), "must be a list"),
            (json!([{"path": "/a"}]), "operation 0: missing \"op\""),
            (json!([{"op": "add", "path": "/a"}]), "missing \"value\""),
            (
                json!([{"op": "add", "path": "a", "value": 1}]),
                "must start with '/'",
            ),
            (json!([{"op": "frobnicate", "path": "/a"}]), "unknown op"),
            (json!([{"op": "move", "path": "/a"}]), "missing \"from\""),
        ] {
            let err = json_patch(&doc, &patch).unwrap_err();
            assert!(matches!(err, PatchError::Malformed(_)), "{patch}");
            assert!(err.to_string().contains(want), "{patch}: {err}");
        }
    }
}
