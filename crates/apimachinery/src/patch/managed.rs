//! `metadata.managedFields` entries: decoding, identity, Kubernetes' ordering, encoding.

use serde_json::{Map, Value, json};

use super::apply::{ApplyError, Operation};
use super::fieldset::FieldSet;

/// One manager's ownership.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub fields: FieldSet,
}

impl Entry {
    /// Same manager identity: name, operation, subresource, and apiVersion for updates
    /// (Kubernetes' `BuildManagerIdentifier`).
    pub fn same_identity(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// How conflicts name this manager: `"kubectl"`, or `"x" using v1` for updates.
    pub fn display(&self) -> String {
        let mut s = crate::status::quote(&self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(
                " with subresource {}",
                crate::status::quote(&self.subresource)
            ));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation.as_str()));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }
}

/// Reads `metadata.managedFields` of an object (none if absent).
pub(crate) fn decode(obj: &Value) -> Result<Vec<Entry>, ApplyError> {
    let bad = |why: String| ApplyError::ManagedFields(why);
    let list = match obj.get("metadata").and_then(|m| m.get("managedFields")) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("metadata.managedFields must be a list".into())),
    };
    let mut out: Vec<Entry> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let operation = match s("operation").as_str() {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            other => {
                return Err(bad(format!(
                    "entry {i}: operation {other:?} must be Apply or Update"
                )));
            }
        };
        match e.get("fieldsType").and_then(Value::as_str) {
            Some("FieldsV1") => {}
            other => {
                return Err(bad(format!(
                    "entry {i}: fieldsType {other:?} must be FieldsV1"
                )));
            }
        }
        let fields = match e.get("fieldsV1") {
            None | Some(Value::Null) => FieldSet::new(),
            Some(v) => {
                FieldSet::from_fields_v1(v).map_err(|err| bad(format!("entry {i}: {err}")))?
            }
        };
        let entry = Entry {
            manager: s("manager"),
            operation,
            api_version: s("apiVersion"),
            time: e.get("time").and_then(Value::as_str).map(str::to_owned),
            subresource: s("subresource"),
            fields,
        };
        if out.iter().any(|o| o.same_identity(&entry)) {
            return Err(bad(format!(
                "entry {i}: duplicate manager {:?}",
                entry.manager
            )));
        }
        out.push(entry);
    }
    Ok(out)
}

fn seconds(t: &Option<String>) -> i64 {
    t.as_deref()
        .and_then(|t| crate::meta::parse_time(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Entries sorted as Kubernetes writes them: Apply before Update, then by time, manager,
/// apiVersion, subresource. Empty entries are dropped.
pub(crate) fn encode(mut entries: Vec<Entry>) -> Value {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|p, q| {
        p.operation
            .as_str()
            .cmp(q.operation.as_str())
            .then(seconds(&p.time).cmp(&seconds(&q.time)))
            .then(p.manager.cmp(&q.manager))
            .then(p.api_version.cmp(&q.api_version))
            .then(p.subresource.cmp(&q.subresource))
    });
    Value::Array(entries.iter().map(Entry::to_value).collect())
}

/// Name of the bucket old update managers are merged into past the cap.
pub(crate) const ANCIENT_CHANGES: &str = "ancient-changes";
/// At most this many Update managers are kept.
pub(crate) const MAX_UPDATE_MANAGERS: usize = 10;

/// Merges the oldest Update managers into `ancient-changes` (one per apiVersion) until at most
/// [`MAX_UPDATE_MANAGERS`] remain.
pub(crate) fn cap_update_managers(entries: &mut Vec<Entry>) {
    let count = |es: &Vec<Entry>| {
        es.iter()
            .filter(|e| e.operation == Operation::Update)
            .count()
    };
    while count(entries) > MAX_UPDATE_MANAGERS {
        let Some(oldest) = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.operation == Operation::Update && e.manager != ANCIENT_CHANGES)
            .min_by_key(|(_, e)| seconds(&e.time))
            .map(|(i, _)| i)
        else {
            return;
        };
        let e = entries.remove(oldest);
        match entries.iter_mut().find(|b| {
            b.manager == ANCIENT_CHANGES
                && b.operation == Operation::Update
                && b.api_version == e.api_version
        }) {
            Some(bucket) => {
                bucket.fields = bucket.fields.union(&e.fields);
                if seconds(&e.time) > seconds(&bucket.time) {
                    bucket.time = e.time;
                }
            }
            None => entries.push(Entry {
                manager: ANCIENT_CHANGES.into(),
                subresource: String::new(),
                ..e
            }),
        }
    }
}
