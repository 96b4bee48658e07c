//! Field selectors: `metadata.name=x,status.phase!=Running`, matched through a field getter.

use std::fmt;

use serde_json::Value;

use super::SelectorError;

/// `=`/`==` or `!=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldOp {
    Equals,
    NotEquals,
}

/// One term: `path op value`, the value unescaped (`\,` `\=` `\\`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub path: String,
    pub op: FieldOp,
    pub value: String,
}

/// A parsed field selector: every term must hold. Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub terms: Vec<FieldTerm>,
}

/// Splits at commas not preceded by a backslash escape.
fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == ',' {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Finds the first unescaped operator: `!=`, `==` or `=`.
fn split_term(term: &str) -> Option<(&str, FieldOp, &str)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], FieldOp::NotEquals, &term[i + 2..]));
            }
            b'=' if bytes.get(i + 1) == Some(&b'=') => {
                return Some((&term[..i], FieldOp::Equals, &term[i + 2..]));
            }
            b'=' => return Some((&term[..i], FieldOp::Equals, &term[i + 1..])),
            _ => i += 1,
        }
    }
    None
}

fn unescape(v: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | ',' | '=')) => out.push(e),
                _ => return None,
            },
            ',' | '=' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('=', "\\=")
}

impl FieldSelector {
    /// Parses the `fieldSelector` query parameter.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in split_terms(selector) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let bad = || SelectorError::FieldTerm {
                selector: selector.to_owned(),
                term: part.to_owned(),
            };
            let (path, op, value) = split_term(part).ok_or_else(bad)?;
            let path = path.trim();
            if path.is_empty() {
                return Err(bad());
            }
            let value = unescape(value.trim()).ok_or_else(bad)?;
            terms.push(FieldTerm {
                path: path.to_owned(),
                op,
                value,
            });
        }
        Ok(Self { terms })
    }

    /// Parses, then refuses fields outside `supported` with `field label not supported: <path>`.
    pub fn parse_supported(selector: &str, supported: &[&str]) -> Result<Self, SelectorError> {
        let s = Self::parse(selector)?;
        s.check_supported(supported)?;
        Ok(s)
    }

    /// Errors on the first term whose path is not in `supported`.
    pub fn check_supported(&self, supported: &[&str]) -> Result<(), SelectorError> {
        match self
            .terms
            .iter()
            .find(|t| !supported.contains(&t.path.as_str()))
        {
            Some(t) => Err(SelectorError::UnsupportedField(t.path.clone())),
            None => Ok(()),
        }
    }

    /// True when there are no terms.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The value an `=` term requires for `path`, if any (lets a store narrow by name).
    pub fn required_value(&self, path: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.path == path && t.op == FieldOp::Equals)
            .map(|t| t.value.as_str())
    }

    /// Matches using `get(path)`; an absent field compares as the empty string, as Kubernetes'
    /// field sets hold `""` for unset fields.
    pub fn matches(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.terms.iter().all(|t| {
            let v = get(&t.path).unwrap_or_default();
            match t.op {
                FieldOp::Equals => v == t.value,
                FieldOp::NotEquals => v != t.value,
            }
        })
    }

    /// Matches against a JSON object using [`json_field`].
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(|p| json_field(obj, p))
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = match t.op {
                FieldOp::Equals => "=",
                FieldOp::NotEquals => "!=",
            };
            write!(f, "{}{op}{}", t.path, escape(&t.value))?;
        }
        Ok(())
    }
}

/// The scalar at a dotted path (`status.phase`) as a string; `None` for absent, null, lists and maps.
pub fn json_field(obj: &Value, path: &str) -> Option<String> {
    let mut cur = obj;
    for part in path.split('.') {
        cur = cur.get(part)?;
    }
    match cur {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_terms() {
        let s = FieldSelector::parse("metadata.name=x,status.phase!=Running").unwrap();
        assert_eq!(
            s.terms,
            vec![
                FieldTerm {
                    path: "metadata.name".into(),
                    op: FieldOp::Equals,
                    value: "x".into()
                },
                FieldTerm {
                    path: "status.phase".into(),
                    op: FieldOp::NotEquals,
                    value: "Running".into()
                },
            ]
        );
        let cases = [
            ("", ""),
            ("a==b", "a=b"),
            (" a = b ", "a=b"),
            ("spec.nodeName=", "spec.nodeName="),
            (r"a=x\,y", r"a=x\,y"),
            (r"a=x\=y\\", r"a=x\=y\\"),
            ("a=b,,c!=d", "a=b,c!=d"),
        ];
        for (input, canonical) in cases {
            assert_eq!(
                FieldSelector::parse(input).unwrap().to_string(),
                canonical,
                "{input}"
            );
        }
        assert_eq!(
            FieldSelector::parse(r"a=x\,y").unwrap().terms[0].value,
            "x,y"
        );
    }

    #[test]
    fn parse_errors() {
        for (input, term) in [
            ("a", "a"),
            ("a=b,c", "c"),
            ("=x", "=x"),
            (r"a=b\q", r"a=b\q"),
            ("a=b=c", "a=b=c"),
        ] {
            let err = FieldSelector::parse(input).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid selector: '{input}'; can't understand '{term}'")
            );
        }
    }

    #[test]
    fn unsupported_field_is_named() {
        let supported = ["metadata.name", "metadata.namespace", "status.phase"];
        let err =
            FieldSelector::parse_supported("metadata.name=a,spec.foo=b", &supported).unwrap_err();
        assert_eq!(err.to_string(), "field label not supported: spec.foo");
        assert!(FieldSelector::parse_supported("status.phase=Running", &supported).is_ok());
    }

    #[test]
    fn matching_table() {
        let pod = json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n1", "replicas": 3, "ready": true},
            "status": {"phase": "Running"}
        });
        let cases = [
            ("", true),
            ("metadata.name=p", true),
            ("metadata.name=q", false),
            ("metadata.name!=q", true),
            ("metadata.name=p,metadata.namespace=ns", true),
            ("metadata.name=p,metadata.namespace=other", false),
            ("status.phase!=Running", false),
            ("status.nodeName=", true),
            ("status.nodeName!=", false),
            ("spec.nodeName=n1", true),
            ("spec.replicas=3", true),
            ("spec.ready=true", true),
        ];
        for (sel, want) in cases {
            assert_eq!(
                FieldSelector::parse(sel).unwrap().matches_object(&pod),
                want,
                "{sel}"
            );
        }
    }

    #[test]
    fn required_value_and_getter() {
        let s = FieldSelector::parse("metadata.name=a,status.phase!=x").unwrap();
        assert_eq!(s.required_value("metadata.name"), Some("a"));
        assert_eq!(s.required_value("status.phase"), None);
        assert!(s.matches(|p| (p == "metadata.name").then(|| "a".to_string())));
        assert_eq!(json_field(&json!({"a": {"b": [1]}}), "a.b"), None);
    }
}
