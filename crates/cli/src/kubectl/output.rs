//! Object output formats: YAML, JSON (kubectl's four-space indent), `kind.group/name`, and the
//! `List` wrapper for several objects.

use anyhow::Result;
use k8s_openapi::serde::Serialize;
use serde_json::{Value, json};

/// `-o` values other than the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wide,
    Yaml,
    Json,
    Name,
}

/// Several objects as kubectl prints them: a `v1` `List`.
pub fn list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "items": items,
        "kind": "List",
        "metadata": {"resourceVersion": ""},
    })
}

pub fn to_yaml(v: &Value) -> Result<String> {
    Ok(serde_saphyr::to_string(v)?)
}

pub fn to_json(v: &Value) -> Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    v.serialize(&mut ser)?;
    buf.push(b'\n');
    Ok(String::from_utf8(buf)?)
}

/// `v` as kubectl shows it: keys sorted (as Go's encoders do), managedFields left out.
pub fn for_display(v: Value) -> Value {
    let mut v = v;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            if let Some(meta) = item.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
            }
        }
    }
    // Sorting last: removing from an ordered map moves its last key.
    sorted(v)
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// An object's name from its metadata.
pub fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json() {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": {"name": "x"}, "data": {"k": "a\nb\n"}});
        let y = to_yaml(&v).unwrap();
        assert!(y.contains("kind: ConfigMap\n"), "{y}");
        let back: Value = serde_saphyr::from_str(&y).unwrap();
        assert_eq!(back, v);
        let j = to_json(&list(vec![v])).unwrap();
        assert!(j.starts_with("{\n    \"apiVersion\": \"v1\",\n"), "{j}");
        assert_eq!(
            name_of(&serde_json::from_str::<Value>(&j).unwrap()["items"][0]),
            "x"
        );
    }
}
