//! Field sets as server-side apply tracks ownership, and their `FieldsV1` JSON encoding
//! (`f:<field>`, `k:<key json>`, `v:<value json>`, `i:<index>`, `.` for a node that is itself a
//! member), as structured-merge-diff writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of an object: `f:name`.
    Field(String),
    /// An item of a keyed list, as canonical JSON of its key fields sorted by name:
    /// `k:{"name":"nginx"}`.
    Key(String),
    /// An item of a set, as compact JSON: `v:"foregroundDeletion"`.
    Value(String),
    /// An item of a list by position: `i:0`.
    Index(usize),
}

/// A `FieldsV1` document that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid FieldsV1: {0}")]
pub struct FieldSetError(pub String);

fn canonical_object(fields: impl IntoIterator<Item = (String, Value)>) -> String {
    let sorted: BTreeMap<String, Value> = fields.into_iter().collect();
    let map: Map<String, Value> = sorted.into_iter().collect();
    Value::Object(map).to_string()
}

impl PathElement {
    /// A keyed-list item from its key fields (any order).
    pub fn key(fields: impl IntoIterator<Item = (String, Value)>) -> Self {
        Self::Key(canonical_object(fields))
    }

    /// A set item.
    pub fn value(v: &Value) -> Self {
        Self::Value(v.to_string())
    }

    /// The `FieldsV1` key: `f:spec`, `k:{"name":"a"}`, `v:"x"`, `i:0`.
    pub fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Reads a `FieldsV1` key.
    pub fn decode(s: &str) -> Result<Self, FieldSetError> {
        let bad = |why: &str| FieldSetError(format!("{s:?}: {why}"));
        let (kind, rest) = s.split_once(':').ok_or_else(|| bad("no type prefix"))?;
        match kind {
            "f" => Ok(Self::Field(rest.to_owned())),
            "k" => match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(m)) => Ok(Self::key(m)),
                _ => Err(bad("key is not a JSON object")),
            },
            "v" => serde_json::from_str::<Value>(rest)
                .map(|v| Self::value(&v))
                .map_err(|_| bad("value is not JSON")),
            "i" => rest
                .parse()
                .map(Self::Index)
                .map_err(|_| bad("index is not a number")),
            _ => Err(bad("unknown type prefix")),
        }
    }
}

impl fmt::Display for PathElement {
    /// structured-merge-diff's path notation: `.spec`, `[name="a"]`, `[="x"]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(n) => write!(f, ".{n}"),
            Self::Key(k) => {
                let parts: Vec<String> = match serde_json::from_str::<Value>(k) {
                    Ok(Value::Object(m)) => m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                    _ => vec![k.clone()],
                };
                write!(f, "[{}]", parts.join(","))
            }
            Self::Value(v) => write!(f, "[={v}]"),
            Self::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// A path rendered as structured-merge-diff does: `.spec.template.spec.volumes[name="disk"]`.
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// A set of field paths: `members` end here, `children` continue. Kept normalised: no empty child.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// True if no path is in the set.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds a path (no-op for the empty path).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// True if the path is a member.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// The children under one element, if any.
    pub fn child(&self, pe: &PathElement) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    /// Paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, c) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(c),
                None => c.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    /// Paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        out.members = self.members.intersection(&other.members).cloned().collect();
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(pe.clone(), i);
                }
            }
        }
        out
    }

    /// Paths in `self` but not in `other` (member by member, as structured-merge-diff's
    /// `Difference`: a member of `other` does not remove `self`'s paths below it).
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        out.members = self.members.difference(&other.members).cloned().collect();
        for (pe, c) in &self.children {
            let d = match other.children.get(pe) {
                Some(o) => c.difference(o),
                None => c.clone(),
            };
            if !d.is_empty() {
                out.children.insert(pe.clone(), d);
            }
        }
        out
    }

    /// Every member path: at each level the members first, then each child in order.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Vec<PathElement>, out: &mut Vec<Vec<PathElement>>) {
        for m in &self.members {
            let mut p = prefix.clone();
            p.push(m.clone());
            out.push(p);
        }
        for (pe, c) in &self.children {
            prefix.push(pe.clone());
            c.collect(prefix, out);
            prefix.pop();
        }
    }

    /// The `fieldsV1` JSON object.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.emit(false))
    }

    fn emit(&self, include_self: bool) -> Map<String, Value> {
        let mut out = Map::new();
        if include_self {
            out.insert(".".into(), Value::Object(Map::new()));
        }
        let all: BTreeSet<&PathElement> = self.members.iter().chain(self.children.keys()).collect();
        for pe in all {
            let v = match self.children.get(pe) {
                Some(c) => c.emit(self.members.contains(pe)),
                None => Map::new(),
            };
            out.insert(pe.encode(), Value::Object(v));
        }
        out
    }

    /// Reads a `fieldsV1` JSON object.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, FieldSetError> {
        let Value::Object(m) = v else {
            return Err(FieldSetError("not a JSON object".into()));
        };
        let mut out = FieldSet::new();
        for (k, child) in m {
            if k == "." {
                continue;
            }
            let pe = PathElement::decode(k)?;
            let Value::Object(cm) = child else {
                return Err(FieldSetError(format!("{k:?}: not a JSON object")));
            };
            if cm.is_empty() || cm.contains_key(".") {
                out.members.insert(pe.clone());
            }
            let sub = FieldSet::from_fields_v1(child)?;
            if !sub.is_empty() {
                out.children.insert(pe, sub);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(name: &str) -> PathElement {
        PathElement::Field(name.into())
    }

    fn set(paths: &[&[PathElement]]) -> FieldSet {
        let mut s = FieldSet::new();
        for p in paths {
            s.insert(p);
        }
        s
    }

    #[test]
    fn encodes_like_kubernetes() {
        let k = PathElement::key([("name".to_string(), json!("nginx"))]);
        let s = set(&[
            &[f("metadata"), f("labels")],
            &[f("metadata"), f("labels"), f("app")],
            &[f("spec"), f("containers"), k.clone()],
            &[f("spec"), f("containers"), k.clone(), f("image")],
            &[f("spec"), f("containers"), k.clone(), f("name")],
            &[
                f("metadata"),
                f("finalizers"),
                PathElement::value(&json!("a")),
            ],
        ]);
        let v = s.to_fields_v1();
        assert_eq!(
            v.to_string(),
            r#"{"f:metadata":{"f:finalizers":{"v:\"a\"":{}},"f:labels":{".":{},"f:app":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"nginx\"}":{".":{},"f:image":{},"f:name":{}}}}}"#
        );
        assert_eq!(FieldSet::from_fields_v1(&v).unwrap(), s);
    }

    #[test]
    fn multi_field_keys_are_sorted() {
        let k = PathElement::key([
            ("protocol".to_string(), json!("TCP")),
            ("containerPort".to_string(), json!(80)),
        ]);
        assert_eq!(k.encode(), r#"k:{"containerPort":80,"protocol":"TCP"}"#);
        assert_eq!(k.to_string(), r#"[containerPort=80,protocol="TCP"]"#);
        assert_eq!(PathElement::decode(&k.encode()).unwrap(), k);
        assert_eq!(
            PathElement::decode(r#"k:{"protocol":"TCP","containerPort":80}"#).unwrap(),
            k
        );
    }

    #[test]
    fn decode_errors() {
        for bad in ["x", "q:1", "k:[1]", "i:x", "v:{"] {
            assert!(PathElement::decode(bad).is_err(), "{bad}");
        }
        assert!(FieldSet::from_fields_v1(&json!([])).is_err());
        assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
    }

    #[test]
    fn path_strings() {
        let p = vec![
            f("spec"),
            f("volumes"),
            PathElement::key([("name".to_string(), json!("disk"))]),
            f("x"),
            PathElement::Index(2),
            PathElement::value(&json!("v")),
        ];
        assert_eq!(path_string(&p), r#".spec.volumes[name="disk"].x[2][="v"]"#);
    }

    #[test]
    fn set_algebra() {
        let a = set(&[&[f("a")], &[f("b"), f("c")], &[f("b"), f("d")]]);
        let b = set(&[&[f("b"), f("c")], &[f("e")], &[f("b")]]);
        assert_eq!(
            a.union(&b),
            set(&[
                &[f("a")],
                &[f("b")],
                &[f("b"), f("c")],
                &[f("b"), f("d")],
                &[f("e")]
            ])
        );
        assert_eq!(a.intersection(&b), set(&[&[f("b"), f("c")]]));
        assert_eq!(a.difference(&b), set(&[&[f("a")], &[f("b"), f("d")]]));
        assert!(a.difference(&a).is_empty());
        assert!(a.has(&[f("b"), f("d")]));
        assert!(!a.has(&[f("b")]));
        let paths: Vec<String> = b.union(&a).paths().iter().map(|p| path_string(p)).collect();
        assert_eq!(paths, [".a", ".b", ".e", ".b.c", ".b.d"]);
    }
}
