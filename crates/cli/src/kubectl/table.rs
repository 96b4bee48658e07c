//! Printing a server-side `Table` (meta.k8s.io/v1) the way kubectl does: upper-case headers,
//! columns padded to their widest cell plus three spaces, priority-1 columns only when wide.

use anyhow::{Context, Result};
use serde_json::Value;

/// Which columns and decorations to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct TableOptions {
    /// Include columns of priority > 0 (`-o wide`).
    pub wide: bool,
    /// Prepend NAMESPACE, from each row's object metadata (`-A`).
    pub namespace: bool,
}

/// The header and rows to print from one Table answer; `name_prefix` goes in front of every
/// NAME cell (`virtualmachine.kubevirt.io/` when several types are printed together).
pub fn rows(
    table: &Value,
    opts: TableOptions,
    name_prefix: &str,
) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let defs = table
        .get("columnDefinitions")
        .and_then(Value::as_array)
        .context("the server answered without a Table")?;
    let shown: Vec<usize> = defs
        .iter()
        .enumerate()
        .filter(|(_, d)| opts.wide || d.get("priority").and_then(Value::as_i64).unwrap_or(0) == 0)
        .map(|(i, _)| i)
        .collect();
    let name_col = defs
        .iter()
        .position(|d| d.get("name").and_then(Value::as_str) == Some("Name"));
    let mut header = Vec::new();
    if opts.namespace {
        header.push("NAMESPACE".to_string());
    }
    header.extend(shown.iter().map(|&i| {
        defs[i]
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_uppercase()
    }));
    let mut out = Vec::new();
    for row in table
        .get("rows")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let cells = row
            .get("cells")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut line = Vec::new();
        if opts.namespace {
            let ns = row
                .pointer("/object/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            line.push(ns.to_string());
        }
        for &i in &shown {
            let text = cells.get(i).map(cell).unwrap_or_default();
            if Some(i) == name_col {
                line.push(format!("{name_prefix}{text}"));
            } else {
                line.push(text);
            }
        }
        out.push(line);
    }
    Ok((header, out))
}

/// A cell's text: strings as they are, numbers and booleans printed, null empty.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Aligns like kubectl's tabwriter (minimum width 6, padding 3); the last column is not padded.
pub fn render(header: &[String], rows: &[Vec<String>]) -> String {
    let all = || std::iter::once(header).chain(rows.iter().map(Vec::as_slice));
    let columns = all().map(<[String]>::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            let widest = all()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0);
            (widest + 3).max(6)
        })
        .collect();
    let mut out = String::new();
    for r in all() {
        for (i, c) in r.iter().enumerate() {
            out.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count();
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Value {
        serde_json::json!({
            "kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "columnDefinitions": [
                {"name": "Name", "type": "string", "priority": 0},
                {"name": "Age", "type": "date", "priority": 0},
                {"name": "Status", "type": "string", "priority": 0},
                {"name": "Ready", "type": "string", "priority": 0},
                {"name": "Node", "type": "string", "priority": 1}
            ],
            "rows": [
                {"cells": ["testvm", "5s", "Stopped", "False", null],
                 "object": {"metadata": {"name": "testvm", "namespace": "default"}}},
                {"cells": ["a-much-longer-name", "10d", "Running", "True", "n1"],
                 "object": {"metadata": {"name": "a-much-longer-name", "namespace": "demo"}}}
            ]
        })
    }

    #[test]
    fn prints_like_kubectl() {
        let (h, r) = rows(&table(), TableOptions::default(), "").unwrap();
        assert_eq!(
            render(&h, &r),
            "NAME                 AGE   STATUS    READY\n\
             testvm               5s    Stopped   False\n\
             a-much-longer-name   10d   Running   True\n"
        );
    }

    #[test]
    fn wide_and_all_namespaces() {
        let opts = TableOptions {
            wide: true,
            namespace: true,
        };
        let (h, r) = rows(&table(), opts, "vm/").unwrap();
        assert_eq!(
            render(&h, &r),
            "NAMESPACE   NAME                    AGE   STATUS    READY   NODE\n\
             default     vm/testvm               5s    Stopped   False   \n\
             demo        vm/a-much-longer-name   10d   Running   True    n1\n"
        );
    }
}
