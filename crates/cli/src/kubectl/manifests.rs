//! Reading `-f` sources (files, directories, `-` for stdin) into objects: multi-document YAML
//! or JSON, with `kind: List` expanded.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One object and the source it came from (for messages).
pub struct Manifest {
    pub source: String,
    pub object: Value,
}

/// Every object of every source in `paths`, in order.
pub fn read(paths: &[PathBuf]) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for path in paths {
        for (source, text) in sources(path)? {
            for object in parse(&source, &text)? {
                out.push(Manifest {
                    source: source.clone(),
                    object,
                });
            }
        }
    }
    Ok(out)
}

/// The texts `path` names: stdin, one file, or a directory's .yaml/.yml/.json files.
fn sources(path: &Path) -> Result<Vec<(String, String)>> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read stdin")?;
        return Ok(vec![("STDIN".into(), text)]);
    }
    let shown = path.display().to_string();
    let meta =
        std::fs::metadata(path).with_context(|| format!("the path {shown:?} does not exist"))?;
    let files = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read directory {shown:?}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {:?}", f.display().to_string()))?;
            Ok((f.display().to_string(), text))
        })
        .collect()
}

/// The objects in `text`: JSON when it starts with `{`, multi-document YAML otherwise.
pub fn parse(source: &str, text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = if text.trim_start().starts_with('{') {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("error parsing {source}: {e}"))?
    } else {
        serde_saphyr::from_multiple(text).map_err(|e| {
            let msg = e.to_string();
            let first = msg.lines().next().unwrap_or_default().to_string();
            anyhow::anyhow!(
                "error parsing {source}: {}",
                first.trim_start_matches("error: ")
            )
        })?
    };
    let mut out = Vec::new();
    for doc in docs {
        match doc {
            Value::Null => {}
            Value::Object(_) => expand(source, doc, &mut out)?,
            _ => bail!("error parsing {source}: a document is not an object"),
        }
    }
    Ok(out)
}

fn expand(source: &str, doc: Value, out: &mut Vec<Value>) -> Result<()> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api_version = doc
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() || api_version.is_empty() {
        bail!("error validating {source:?}: apiVersion and kind must be set");
    }
    if kind.ends_with("List")
        && let Some(items) = doc.get("items").and_then(Value::as_array)
    {
        for item in items.clone() {
            expand(source, item, out)?;
        }
        return Ok(());
    }
    out.push(doc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_json_and_lists() {
        let yaml = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\
                    apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  \
                    metadata:\n    name: c\n---\n";
        let objs = parse("x.yaml", yaml).unwrap();
        let names: Vec<_> = objs
            .iter()
            .map(|o| o.pointer("/metadata/name").unwrap().as_str().unwrap())
            .collect();
        assert_eq!(names, ["a", "c"]);
        let json = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"j"}}"#;
        assert_eq!(parse("x.json", json).unwrap().len(), 1);
        let err = parse("y.yaml", "metadata:\n  name: x\n").unwrap_err();
        assert!(err.to_string().contains("apiVersion and kind"), "{err}");
        assert!(parse("z.yaml", "a: [").is_err());
    }
}
