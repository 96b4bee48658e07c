//! `as=Table` answers: a kind's printer columns (see `resources`) over objects, with ages as
//! kubectl prints them.

use std::collections::HashMap;
use std::time::SystemTime;

use kuvirt_apimachinery::table::{Column, IncludeObject, age, build_table};
use serde_json::Value;

use crate::resources::ResourceType;

/// A Table of `objs`; `revision` is the list's resourceVersion when this answers a list.
pub fn table(
    rt: &ResourceType,
    objs: &[Value],
    revision: Option<u64>,
    q: &HashMap<String, String>,
) -> Value {
    let include =
        IncludeObject::parse(q.get("includeObject").map(String::as_str)).unwrap_or_default();
    let mut columns = vec![Column::name()];
    columns.extend(rt.columns.iter().map(|c| {
        Column::new(c.name, c.type_, c.description)
            .with_format(c.format)
            .with_priority(c.priority as i32)
    }));
    let now = SystemTime::now();
    let rows = objs.iter().map(|o| {
        let mut cells = vec![
            o.pointer("/metadata/name")
                .cloned()
                .unwrap_or(Value::String(String::new())),
        ];
        for c in rt.columns {
            let v = (c.cell)(o);
            // Dates are shown as ages, as the API server does for printer columns of type date.
            let v = match (c.type_, v.as_str()) {
                ("date", Some(ts)) => Value::String(age(ts, now)),
                ("date", None) => Value::String("<unknown>".into()),
                _ => v,
            };
            cells.push(v);
        }
        (cells, o)
    });
    let rv = revision.map(|r| r.to_string()).unwrap_or_default();
    build_table(&columns, rows, include, &rv, "")
}
