//! Label selectors: `a=b, c!=d, e in (x,y), f notin (z), g, !h, n>3` and `metav1.LabelSelector` objects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use super::SelectorError;

/// How a requirement compares the label's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals,
    /// `key!=value`: also matches when the label is absent.
    NotEquals,
    /// `key in (a,b)`.
    In,
    /// `key notin (a,b)`: also matches when the label is absent.
    NotIn,
    /// `key`.
    Exists,
    /// `!key`.
    DoesNotExist,
    /// `key>N`: the value is an integer greater than N.
    GreaterThan,
    /// `key<N`.
    LessThan,
}

/// One comma-separated term of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Operator,
    /// Sorted; one value for `=`/`!=`/`>`/`<`, none for `Exists`/`DoesNotExist`.
    pub values: BTreeSet<String>,
}

/// A parsed label selector: all requirements must hold. Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl Requirement {
    fn first(&self) -> &str {
        self.values.iter().next().map(String::as_str).unwrap_or("")
    }

    /// Does this requirement hold for the labels `get` returns?
    pub fn matches(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        let value = get(&self.key);
        match self.op {
            Operator::Equals | Operator::In => value.is_some_and(|v| self.values.contains(&v)),
            Operator::NotEquals | Operator::NotIn => {
                value.is_none_or(|v| !self.values.contains(&v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(v), Ok(bound)) = (value, self.first().parse::<i64>()) else {
                    return false;
                };
                let Ok(v) = v.parse::<i64>() else {
                    return false;
                };
                if self.op == Operator::GreaterThan {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let joined = || self.values.iter().cloned().collect::<Vec<_>>().join(",");
        match self.op {
            Operator::Equals => write!(f, "{}={}", self.key, self.first()),
            Operator::NotEquals => write!(f, "{}!={}", self.key, self.first()),
            Operator::In => write!(f, "{} in ({})", self.key, joined()),
            Operator::NotIn => write!(f, "{} notin ({})", self.key, joined()),
            Operator::Exists => write!(f, "{}", self.key),
            Operator::DoesNotExist => write!(f, "!{}", self.key),
            Operator::GreaterThan => write!(f, "{}>{}", self.key, self.first()),
            Operator::LessThan => write!(f, "{}<{}", self.key, self.first()),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
    End,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("identifier {s:?}"),
            Token::Not => "'!'".into(),
            Token::Eq => "'='".into(),
            Token::DoubleEq => "'=='".into(),
            Token::NotEq => "'!='".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Comma => "','".into(),
            Token::Gt => "'>'".into(),
            Token::Lt => "'<'".into(),
            Token::End => "end of input".into(),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | '(' | ')' | ',' | '>' | '<')
}

fn lex(input: &str) -> Vec<(usize, Token)> {
    let mut out = Vec::new();
    let mut chars = input.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, want: char| {
            chars.next();
            if chars.peek().is_some_and(|&(_, n)| n == want) {
                chars.next();
                true
            } else {
                false
            }
        };
        let tok = match c {
            '!' => {
                if next_is(&mut chars, '=') {
                    Token::NotEq
                } else {
                    Token::Not
                }
            }
            '=' => {
                if next_is(&mut chars, '=') {
                    Token::DoubleEq
                } else {
                    Token::Eq
                }
            }
            '(' | ')' | ',' | '>' | '<' => {
                chars.next();
                match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    '>' => Token::Gt,
                    _ => Token::Lt,
                }
            }
            _ => {
                let mut s = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if c.is_whitespace() || is_special(c) {
                        break;
                    }
                    s.push(c);
                    chars.next();
                }
                Token::Ident(s)
            }
        };
        out.push((pos, tok));
    }
    out.push((input.len(), Token::End));
    out
}

struct Parser<'a> {
    input: &'a str,
    tokens: Vec<(usize, Token)>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Token {
        self.tokens.get(self.at).map_or(&Token::End, |(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.tokens
            .get(self.at)
            .map_or(self.input.len(), |(p, _)| *p)
    }

    fn next(&mut self) -> Token {
        let t = self.peek().clone();
        if self.at < self.tokens.len() {
            self.at += 1;
        }
        t
    }

    fn error(&self, what: impl Into<String>) -> SelectorError {
        SelectorError::Parse {
            input: self.input.to_owned(),
            pos: self.pos(),
            what: what.into(),
        }
    }

    fn expected(&self, what: &str) -> SelectorError {
        self.error(format!("found {}, expected {what}", self.peek().describe()))
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Token::Ident(s) => {
                let s = s.clone();
                validate_key(&s)?;
                self.next();
                Ok(s)
            }
            _ => Err(self.expected("a label key")),
        }
    }

    /// A single value after `=`, `==`, `!=`: may be empty (`a=` selects an empty value).
    fn single_value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Token::Ident(s) => {
                let s = s.clone();
                self.next();
                Ok(s)
            }
            Token::Comma | Token::End => Ok(String::new()),
            _ => Err(self.expected("a value")),
        }
    }

    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if self.next() != Token::Open {
            self.at -= 1;
            return Err(self.expected("'('"));
        }
        let mut values = BTreeSet::new();
        if *self.peek() == Token::Close {
            self.next();
            values.insert(String::new());
            return Ok(values);
        }
        loop {
            match self.peek().clone() {
                Token::Ident(s) => {
                    self.next();
                    values.insert(s);
                    match self.next() {
                        Token::Comma => {}
                        Token::Close => return Ok(values),
                        _ => {
                            self.at -= 1;
                            return Err(self.expected("',' or ')'"));
                        }
                    }
                }
                Token::Comma => {
                    self.next();
                    values.insert(String::new());
                }
                Token::Close => {
                    self.next();
                    values.insert(String::new());
                    return Ok(values);
                }
                _ => return Err(self.expected("a value, ',' or ')'")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if *self.peek() == Token::Not {
            self.next();
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Operator::DoesNotExist,
                values: BTreeSet::new(),
            });
        }
        let key = self.key()?;
        let (op, values) = match self.peek().clone() {
            Token::Comma | Token::End => (Operator::Exists, BTreeSet::new()),
            Token::Eq | Token::DoubleEq | Token::NotEq => {
                let op = if self.next() == Token::NotEq {
                    Operator::NotEquals
                } else {
                    Operator::Equals
                };
                let v = self.single_value()?;
                (op, BTreeSet::from([v]))
            }
            Token::Gt | Token::Lt => {
                let op = if self.next() == Token::Gt {
                    Operator::GreaterThan
                } else {
                    Operator::LessThan
                };
                let v = match self.peek() {
                    Token::Ident(s) => s.clone(),
                    _ => return Err(self.expected("an integer")),
                };
                if v.parse::<i64>().is_err() {
                    return Err(self.error(format!("{v:?} is not an integer")));
                }
                self.next();
                (op, BTreeSet::from([v]))
            }
            Token::Ident(word) if word == "in" || word == "notin" => {
                self.next();
                let op = if word == "in" {
                    Operator::In
                } else {
                    Operator::NotIn
                };
                (op, self.value_set()?)
            }
            _ => {
                return Err(self.expected("'=', '==', '!=', 'in', 'notin', '>', '<', ',' or end"));
            }
        };
        for v in &values {
            validate_value(v)?;
        }
        Ok(Requirement { key, op, values })
    }
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// A label value: at most 63 characters, alphanumerics with `-_.` inside, or empty.
fn validate_value(v: &str) -> Result<(), SelectorError> {
    let bad = |why: &str| SelectorError::InvalidLabel {
        which: "value",
        value: v.to_owned(),
        why: why.to_owned(),
    };
    if v.is_empty() {
        return Ok(());
    }
    if v.len() > 63 {
        return Err(bad("must be no more than 63 characters"));
    }
    check_name_chars(v).map_err(|why| bad(&why))
}

fn check_name_chars(s: &str) -> Result<(), String> {
    let ok_inner = s
        .chars()
        .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'));
    let ends = s.starts_with(is_alnum) && s.ends_with(is_alnum);
    if ok_inner && ends {
        Ok(())
    } else {
        Err("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character".into())
    }
}

/// A label key: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63 characters.
fn validate_key(k: &str) -> Result<(), SelectorError> {
    let bad = |why: String| SelectorError::InvalidLabel {
        which: "key",
        value: k.to_owned(),
        why,
    };
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let dns_ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && l.starts_with(is_alnum)
                    && l.ends_with(is_alnum)
            });
        if !dns_ok {
            return Err(bad("prefix part must be a lowercase DNS subdomain".into()));
        }
    }
    if name.is_empty() {
        return Err(bad("name part must be non-empty".into()));
    }
    if name.len() > 63 {
        return Err(bad("name part must be no more than 63 characters".into()));
    }
    check_name_chars(name).map_err(|why| bad(format!("name part {why}")))
}

impl LabelSelector {
    /// Parses the `labelSelector` query parameter. Whitespace around tokens is ignored.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut p = Parser {
            input,
            tokens: lex(input),
            at: 0,
        };
        let mut requirements = Vec::new();
        if *p.peek() == Token::End {
            return Ok(Self::default());
        }
        loop {
            requirements.push(p.requirement()?);
            match p.next() {
                Token::End => break,
                Token::Comma => {
                    if *p.peek() == Token::End {
                        return Err(p.expected("a requirement after ','"));
                    }
                }
                _ => {
                    p.at -= 1;
                    return Err(p.expected("',' or end"));
                }
            }
        }
        Ok(Self { requirements })
    }

    /// Converts a `metav1.LabelSelector` (`matchLabels`, `matchExpressions`). An empty or absent
    /// object selects everything, as Kubernetes' `LabelSelectorAsSelector` does.
    pub fn from_object(obj: &Value) -> Result<Self, SelectorError> {
        let bad = |why: String| SelectorError::InvalidObject(why);
        let mut requirements = Vec::new();
        if obj.is_null() {
            return Ok(Self::default());
        }
        let Some(map) = obj.as_object() else {
            return Err(bad("not an object".into()));
        };
        if let Some(labels) = map.get("matchLabels").filter(|v| !v.is_null()) {
            let labels = labels
                .as_object()
                .ok_or_else(|| bad("matchLabels is not an object".into()))?;
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .ok_or_else(|| bad(format!("matchLabels.{k} is not a string")))?;
                validate_key(k)?;
                validate_value(v)?;
                requirements.push(Requirement {
                    key: k.clone(),
                    op: Operator::Equals,
                    values: BTreeSet::from([v.to_owned()]),
                });
            }
        }
        if let Some(exprs) = map.get("matchExpressions").filter(|v| !v.is_null()) {
            let exprs = exprs
                .as_array()
                .ok_or_else(|| bad("matchExpressions is not a list".into()))?;
            for (i, e) in exprs.iter().enumerate() {
                let key = e["key"]
                    .as_str()
                    .ok_or_else(|| bad(format!("matchExpressions[{i}].key is required")))?;
                validate_key(key)?;
                let values: BTreeSet<String> = match e.get("values") {
                    None | Some(Value::Null) => BTreeSet::new(),
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| {
                            v.as_str().map(str::to_owned).ok_or_else(|| {
                                bad(format!("matchExpressions[{i}].values must be strings"))
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    Some(_) => {
                        return Err(bad(format!("matchExpressions[{i}].values is not a list")));
                    }
                };
                let op = match e["operator"].as_str() {
                    Some("In") => Operator::In,
                    Some("NotIn") => Operator::NotIn,
                    Some("Exists") => Operator::Exists,
                    Some("DoesNotExist") => Operator::DoesNotExist,
                    other => {
                        return Err(bad(format!(
                            "matchExpressions[{i}].operator {other:?} is not a valid label selector operator"
                        )));
                    }
                };
                let needs_values = matches!(op, Operator::In | Operator::NotIn);
                if needs_values && values.is_empty() {
                    return Err(bad(format!(
                        "matchExpressions[{i}].values: must be specified when operator is In or NotIn"
                    )));
                }
                if !needs_values && !values.is_empty() {
                    return Err(bad(format!(
                        "matchExpressions[{i}].values: may not be specified when operator is Exists or DoesNotExist"
                    )));
                }
                for v in &values {
                    validate_value(v)?;
                }
                requirements.push(Requirement {
                    key: key.to_owned(),
                    op,
                    values,
                });
            }
        }
        Ok(Self { requirements })
    }

    /// True when the selector has no requirements (selects everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Matches against labels given by a lookup function.
    pub fn matches_with(&self, get: &dyn Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| r.matches(get))
    }

    /// Matches against a labels map.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(&|k| labels.get(k).cloned())
    }

    /// Matches against an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.matches_with(&|k| labels.get(k).and_then(Value::as_str).map(str::to_owned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("", ""),
            ("a=b", "a=b"),
            ("a==b", "a=b"),
            ("a!=b", "a!=b"),
            ("a = b , c != d", "a=b,c!=d"),
            ("e in (y, x)", "e in (x,y)"),
            ("f notin (z)", "f notin (z)"),
            ("g", "g"),
            ("!h", "!h"),
            ("n>3,m<10", "n>3,m<10"),
            ("a=", "a="),
            ("app.kubernetes.io/name=web", "app.kubernetes.io/name=web"),
            (
                "a=b, c!=d, e in (x,y), f notin (z), g, !h",
                "a=b,c!=d,e in (x,y),f notin (z),g,!h",
            ),
            ("x in ()", "x in ()"),
        ];
        for (input, canonical) in cases {
            let s = LabelSelector::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(s.to_string(), canonical, "{input}");
        }
    }

    #[test]
    fn parse_errors_are_clear() {
        let cases = [
            ("a=b,", "expected a requirement after ','"),
            ("=b", "found '=', expected a label key"),
            ("a in x", "found identifier \"x\", expected '('"),
            ("a in (x", "found end of input, expected ',' or ')'"),
            (
                "a b",
                "found identifier \"b\", expected '=', '==', '!=', 'in', 'notin'",
            ),
            ("a>x", "\"x\" is not an integer"),
            ("a=b c", "expected ',' or end"),
            ("!", "expected a label key"),
            ("-a=b", "invalid label key \"-a\""),
            ("a=-b", "invalid label value \"-b\""),
            (
                "Foo.COM/a=b",
                "prefix part must be a lowercase DNS subdomain",
            ),
            ("a=b)", "found ')'"),
        ];
        for (input, want) in cases {
            let err = LabelSelector::parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: got {err}");
        }
        let long = format!("a={}", "x".repeat(64));
        assert!(
            LabelSelector::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("no more than 63")
        );
    }

    #[test]
    fn error_reports_position() {
        match LabelSelector::parse("a=b, c d").unwrap_err() {
            SelectorError::Parse { pos, .. } => assert_eq!(pos, 7),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn matching_table() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app!=web", false),
            ("tier in (front,back)", true),
            ("tier in (back)", false),
            ("missing in (x)", false),
            ("tier notin (back)", true),
            ("missing notin (x)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("missing", false),
            ("!missing", true),
            ("!app", false),
            ("n>4", true),
            ("n>5", false),
            ("n<6", true),
            ("app>1", false),
            ("missing<1", false),
            ("app=web,tier=back", false),
            ("app=web,tier=front,!missing", true),
            ("missing=", false),
        ];
        for (sel, want) in cases {
            let s = LabelSelector::parse(sel).unwrap();
            assert_eq!(s.matches(&l), want, "{sel}");
        }
    }

    #[test]
    fn empty_value_matches_empty_label() {
        let s = LabelSelector::parse("a=").unwrap();
        assert!(s.matches(&labels(&[("a", "")])));
    }

    #[test]
    fn matches_object_labels() {
        let obj = json!({"metadata": {"labels": {"kubevirt.io/vm": "x"}}});
        assert!(
            LabelSelector::parse("kubevirt.io/vm=x")
                .unwrap()
                .matches_object(&obj)
        );
        assert!(
            !LabelSelector::parse("kubevirt.io/vm=y")
                .unwrap()
                .matches_object(&obj)
        );
        assert!(
            LabelSelector::parse("!a")
                .unwrap()
                .matches_object(&json!({}))
        );
    }

    #[test]
    fn from_label_selector_object() {
        let sel = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(sel.to_string(), "app=web,tier in (back,front),!legacy");
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "back")])));
        assert!(!sel.matches(&labels(&[
            ("app", "web"),
            ("tier", "back"),
            ("legacy", "1")
        ])));
        assert!(LabelSelector::from_object(&json!({})).unwrap().is_empty());
        assert!(LabelSelector::from_object(&Value::Null).unwrap().is_empty());
    }

    #[test]
    fn from_object_errors() {
        let cases = [
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                "must be specified",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
                "may not be specified",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
                "not a valid label selector operator",
            ),
            (
                json!({"matchLabels": {"a": 1}}),
                "matchLabels.a is not a string",
            ),
            (json!([1]), "not an object"),
        ];
        for (obj, want) in cases {
            let err = LabelSelector::from_object(&obj).unwrap_err().to_string();
            assert!(err.contains(want), "{obj}: {err}");
        }
    }
}
