//! `meta.k8s.io/v1` Table responses (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`) and
//! kubectl's `HumanDuration` ages.

use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use crate::meta::parse_time;

/// One `columnDefinitions[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: String,
    /// `name` for the Name column, else usually empty.
    pub format: String,
    pub description: String,
    /// 0 is shown by default; higher only with `-o wide`.
    pub priority: i32,
}

impl Column {
    /// A priority-0 column without format.
    pub fn new(name: &str, type_: &str, description: &str) -> Self {
        Self {
            name: name.to_owned(),
            type_: type_.to_owned(),
            format: String::new(),
            description: description.to_owned(),
            priority: 0,
        }
    }

    /// Sets the format.
    pub fn with_format(mut self, format: &str) -> Self {
        self.format = format.to_owned();
        self
    }

    /// Sets the priority (1 = `-o wide` only).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The standard Name column.
    pub fn name() -> Self {
        Self::new("Name", "string", NAME_DESCRIPTION).with_format("name")
    }

    fn to_value(&self) -> Value {
        json!({
            "name": self.name,
            "type": self.type_,
            "format": self.format,
            "description": self.description,
            "priority": self.priority,
        })
    }
}

/// `ObjectMeta.name`'s documentation, used for the Name column.
pub const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
/// `ObjectMeta.creationTimestamp`'s documentation.
pub const CREATION_TIMESTAMP_DESCRIPTION: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

/// What each row carries in `object` (`?includeObject=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The full object.
    Object,
}

/// An unknown `includeObject` value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid includeObject {0:?}: must be None, Metadata or Object")]
pub struct IncludeObjectError(pub String);

impl IncludeObject {
    /// Parses the query parameter; absent or empty means `Metadata`.
    pub fn parse(v: Option<&str>) -> Result<Self, IncludeObjectError> {
        match v.unwrap_or("") {
            "" | "Metadata" => Ok(Self::Metadata),
            "None" => Ok(Self::None),
            "Object" => Ok(Self::Object),
            other => Err(IncludeObjectError(other.to_owned())),
        }
    }
}

/// `{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":…}` of an object.
pub fn partial_object_metadata(obj: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// Builds a Table. `rows` pairs each row's cells (one per column) with its object.
/// `resource_version` and `continue_token` go to the list metadata when non-empty.
pub fn build_table<'a>(
    columns: &[Column],
    rows: impl IntoIterator<Item = (Vec<Value>, &'a Value)>,
    include: IncludeObject,
    resource_version: &str,
    continue_token: &str,
) -> Value {
    let mut metadata = Map::new();
    if !resource_version.is_empty() {
        metadata.insert("resourceVersion".into(), resource_version.into());
    }
    if !continue_token.is_empty() {
        metadata.insert("continue".into(), continue_token.into());
    }
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|(cells, obj)| {
            let mut row = Map::new();
            row.insert("cells".into(), Value::Array(cells));
            match include {
                IncludeObject::None => {}
                IncludeObject::Metadata => {
                    row.insert("object".into(), partial_object_metadata(obj));
                }
                IncludeObject::Object => {
                    row.insert("object".into(), obj.clone());
                }
            }
            Value::Object(row)
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns.iter().map(Column::to_value).collect::<Vec<_>>(),
        "rows": rows,
    })
}

/// Kubernetes' default columns for kinds without printer columns: Name, Created At.
pub fn default_columns() -> Vec<Column> {
    vec![
        Column::name(),
        Column::new("Created At", "date", CREATION_TIMESTAMP_DESCRIPTION),
    ]
}

/// Cells for [`default_columns`]: the name and the creation timestamp as stored.
pub fn default_cells(obj: &Value) -> Vec<Value> {
    let meta = &obj["metadata"];
    vec![
        meta.get("name").cloned().unwrap_or_else(|| json!("")),
        meta.get("creationTimestamp")
            .cloned()
            .unwrap_or(Value::Null),
    ]
}

/// kubectl's `duration.HumanDuration` for a signed number of milliseconds: `<invalid>` below
/// -1s (clock skew), `0s` for a slightly negative value.
pub fn human_duration_millis(millis: i64) -> String {
    let seconds = millis / 1000;
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    if seconds < 0 {
        return "0s".to_owned();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// [`human_duration_millis`] for a non-negative duration.
pub fn human_duration(d: Duration) -> String {
    human_duration_millis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The AGE cell: time from an RFC 3339 `timestamp` to `now`; `<unknown>` if it cannot be read.
pub fn age(timestamp: &str, now: SystemTime) -> String {
    let Ok(then) = parse_time(timestamp) else {
        return "<unknown>".to_owned();
    };
    let millis = match now.duration_since(then) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    };
    human_duration_millis(millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::format_time;
    use std::time::UNIX_EPOCH;

    #[test]
    fn human_duration_table() {
        let s = 1000i64;
        let m = 60 * s;
        let h = 60 * m;
        let d = 24 * h;
        let y = 365 * d;
        let cases = [
            (-5 * s, "<invalid>"),
            (-1500, "0s"),
            (0, "0s"),
            (5 * s, "5s"),
            (119 * s + 999, "119s"),
            (2 * m, "2m"),
            (2 * m + 3 * s, "2m3s"),
            (9 * m + 59 * s, "9m59s"),
            (10 * m + 30 * s, "10m"),
            (179 * m, "179m"),
            (3 * h, "3h"),
            (3 * h + 4 * m, "3h4m"),
            (7 * h + 59 * m, "7h59m"),
            (8 * h + 30 * m, "8h"),
            (47 * h, "47h"),
            (2 * d, "2d"),
            (2 * d + 3 * h, "2d3h"),
            (7 * d + 23 * h, "7d23h"),
            (8 * d + 5 * h, "8d"),
            (150 * d, "150d"),
            (729 * d, "729d"),
            (2 * y, "2y"),
            (3 * y + 10 * d, "3y10d"),
            (8 * y + 100 * d, "8y"),
        ];
        for (millis, want) in cases {
            assert_eq!(human_duration_millis(millis), want, "{millis}");
        }
        assert_eq!(human_duration(Duration::from_secs(123)), "2m3s");
    }

    #[test]
    fn age_from_timestamp() {
        let created = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ts = format_time(created);
        assert_eq!(
            age(&ts, created + Duration::from_secs(3 * 3600 + 240)),
            "3h4m"
        );
        assert_eq!(age(&ts, created - Duration::from_secs(10)), "<invalid>");
        assert_eq!(age("", created), "<unknown>");
    }

    #[test]
    fn table_shape() {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "x", "namespace": "default", "creationTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"runStrategy": "Always"}
        });
        let columns = vec![
            Column::name(),
            Column::new("Age", "date", "age"),
            Column::new("Status", "string", "status"),
            Column::new("Ready", "string", "ready").with_priority(1),
        ];
        let t = build_table(
            &columns,
            [(
                vec![json!("x"), json!("5m"), json!("Running"), json!("True")],
                &vm,
            )],
            IncludeObject::Metadata,
            "42",
            "",
        );
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["apiVersion"], "meta.k8s.io/v1");
        assert_eq!(t["metadata"], json!({"resourceVersion": "42"}));
        assert_eq!(
            t["columnDefinitions"][0],
            json!({"name": "Name", "type": "string", "format": "name", "description": NAME_DESCRIPTION, "priority": 0})
        );
        assert_eq!(t["columnDefinitions"][3]["priority"], 1);
        assert_eq!(t["rows"][0]["cells"], json!(["x", "5m", "Running", "True"]));
        assert_eq!(
            t["rows"][0]["object"],
            json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": vm["metadata"]})
        );

        let full = build_table(&columns, [(vec![], &vm)], IncludeObject::Object, "", "c1");
        assert_eq!(full["rows"][0]["object"], vm);
        assert_eq!(full["metadata"], json!({"continue": "c1"}));
        let none = build_table(&columns, [(vec![], &vm)], IncludeObject::None, "", "");
        assert!(none["rows"][0].get("object").is_none());
        let empty = build_table(&columns, [], IncludeObject::None, "1", "");
        assert_eq!(empty["rows"], json!([]));
    }

    #[test]
    fn include_object_parse() {
        assert_eq!(IncludeObject::parse(None).unwrap(), IncludeObject::Metadata);
        assert_eq!(
            IncludeObject::parse(Some("None")).unwrap(),
            IncludeObject::None
        );
        assert_eq!(
            IncludeObject::parse(Some("Object")).unwrap(),
            IncludeObject::Object
        );
        assert!(
            IncludeObject::parse(Some("all"))
                .unwrap_err()
                .to_string()
                .contains("\"all\"")
        );
    }

    #[test]
    fn default_table() {
        let obj = json!({"metadata": {"name": "n", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        let cols = default_columns();
        assert_eq!(cols[1].name, "Created At");
        assert_eq!(cols[1].type_, "date");
        assert_eq!(
            default_cells(&obj),
            vec![json!("n"), json!("2024-01-01T00:00:00Z")]
        );
    }
}
