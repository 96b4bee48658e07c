//! redb table layouts and the helpers that read them, shared by transactions, lists and watches.

use std::ops::Bound;

use bytes::Bytes;
use redb::{ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::model::{Event, EventKind, Key, Object};

/// `(resource, namespace, name)`.
pub(crate) type ObjKey = (&'static str, &'static str, &'static str);
/// `(revision of last write, bytes)`.
pub(crate) type ObjVal = (u64, &'static [u8]);
/// `(kind code, resource, namespace, name, bytes)`, keyed by revision.
pub(crate) type EventVal = (u8, &'static str, &'static str, &'static str, &'static [u8]);

/// Current objects.
pub(crate) const OBJECTS: TableDefinition<ObjKey, ObjVal> = TableDefinition::new("objects");
/// One row per write, keyed by its revision.
pub(crate) const HISTORY: TableDefinition<u64, EventVal> = TableDefinition::new("history");
/// Counters: [`META_REVISION`], [`META_COMPACTED`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The newest revision handed out.
pub(crate) const META_REVISION: &str = "revision";
/// History at or below this revision is gone.
pub(crate) const META_COMPACTED: &str = "compacted";

/// Reads a meta counter, 0 when unset.
pub(crate) fn meta_get(table: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64> {
    Ok(table.get(name)?.map(|g| g.value()).unwrap_or(0))
}

/// Reads the object at `key`.
pub(crate) fn get_object(
    table: &impl ReadableTable<ObjKey, ObjVal>,
    key: &Key,
) -> Result<Option<Object>> {
    Ok(table.get(key.parts())?.map(|g| {
        let (revision, bytes) = g.value();
        Object {
            key: key.clone(),
            revision,
            value: Bytes::copy_from_slice(bytes),
        }
    }))
}

/// Objects of `resource` (in `namespace` if given) after `continue_after`, at most `limit`
/// (0: no limit); the flag says whether more follow.
pub(crate) fn list_objects(
    table: &impl ReadableTable<ObjKey, ObjVal>,
    resource: &str,
    namespace: Option<&str>,
    continue_after: Option<&Key>,
    limit: usize,
) -> Result<(Vec<Object>, bool)> {
    let first = (resource, namespace.unwrap_or(""), "");
    let start = match continue_after {
        Some(k) if k.parts() >= first => Bound::Excluded(k.parts()),
        _ => Bound::Included(first),
    };
    let mut items = Vec::new();
    for entry in table.range::<(&str, &str, &str)>((start, Bound::Unbounded))? {
        let (k, v) = entry?;
        let (r, ns, name) = k.value();
        if r != resource || namespace.is_some_and(|want| want != ns) {
            break;
        }
        if limit != 0 && items.len() == limit {
            return Ok((items, true));
        }
        let (revision, bytes) = v.value();
        items.push(Object {
            key: Key::new(r, ns, name),
            revision,
            value: Bytes::copy_from_slice(bytes),
        });
    }
    Ok((items, false))
}

/// Decodes one history row.
pub(crate) fn decode_event(revision: u64, v: (u8, &str, &str, &str, &[u8])) -> Result<Event> {
    let (code, resource, namespace, name, bytes) = v;
    let kind = EventKind::from_code(code)
        .ok_or_else(|| Error::Corrupt(format!("history {revision}: event kind {code}")))?;
    Ok(Event {
        revision,
        kind,
        key: Key::new(resource, namespace, name),
        value: Bytes::copy_from_slice(bytes),
    })
}
