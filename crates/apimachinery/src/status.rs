//! `metav1.Status` bodies for every error the API server returns, shaped exactly as Kubernetes'
//! `k8s.io/apimachinery/pkg/api/errors` builds them (kubectl prints `message`, kube-rs reads `code`).

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A resource qualified by its API group, e.g. `virtualmachines.kubevirt.io` or `pods`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupResource {
    /// API group, empty for the core group.
    pub group: String,
    /// Lower-case plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// `GroupResource::new("kubevirt.io", "virtualmachines")`.
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            resource: resource.into(),
        }
    }

    /// Splits `virtualmachines.kubevirt.io` at the first dot; `pods` is the core group.
    pub fn parse(qualified: &str) -> Self {
        match qualified.split_once('.') {
            Some((resource, group)) => Self::new(group, resource),
            None => Self::new("", qualified),
        }
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// A kind qualified by its API group, e.g. `VirtualMachine.kubevirt.io` or `Pod`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GroupKind {
    /// API group, empty for the core group.
    pub group: String,
    /// CamelCase kind.
    pub kind: String,
}

impl GroupKind {
    /// `GroupKind::new("kubevirt.io", "VirtualMachine")`.
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// `metav1.Status`. Serialises to the exact JSON the Kubernetes API server writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Always `Status`.
    pub kind: String,
    /// Always `v1`.
    pub api_version: String,
    /// Always `{}`.
    pub metadata: Map<String, Value>,
    /// `Failure` or `Success`.
    pub status: String,
    /// Human-readable text; kubectl prints it after `Error from server (<reason>): `.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Machine-readable reason (`NotFound`, `Conflict`, `Invalid`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// What the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// The HTTP status code.
    pub code: u16,
}

/// `metav1.StatusDetails`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// The plural resource for most errors, the Kind for `Invalid`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u32>,
}

/// `metav1.StatusCause`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusCause {
    /// The cause type (`FieldValueInvalid`, `FieldManagerConflict`, …); JSON key `reason`.
    #[serde(rename = "reason", default, skip_serializing_if = "String::is_empty")]
    pub cause_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// `field.ErrorType`: why one field was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CauseType {
    NotFound,
    Required,
    Duplicate,
    Invalid,
    NotSupported,
    Forbidden,
    TooLong,
    TooMany,
    Internal,
    TypeInvalid,
}

impl CauseType {
    /// The `reason` string of the cause, e.g. `FieldValueInvalid`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "FieldValueNotFound",
            Self::Required => "FieldValueRequired",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
            Self::TooMany => "FieldValueTooMany",
            Self::Internal => "InternalError",
            Self::TypeInvalid => "FieldValueTypeInvalid",
        }
    }

    /// The words that open the message, e.g. `Invalid value`.
    pub fn words(self) -> &'static str {
        match self {
            Self::NotFound => "Not found",
            Self::Required => "Required value",
            Self::Duplicate => "Duplicate value",
            Self::Invalid | Self::TypeInvalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
            Self::TooMany => "Too many",
            Self::Internal => "Internal error",
        }
    }
}

/// One rejected field (`field.Error`): `field` is a path like `spec.runStrategy`, `body` the text
/// after `field: ` (`Unsupported value: "Sometimes": supported values: "Always", "Halted"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCause {
    pub cause_type: CauseType,
    pub field: String,
    pub body: String,
}

/// Go's `%v`/`%q` rendering of a bad value: strings quoted, numbers and booleans bare, JSON otherwise.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => quote(s),
        Value::Null => "null".to_owned(),
        other => other.to_string(),
    }
}

/// Go's `%q` for a plain string (JSON quoting agrees for printable text).
pub(crate) fn quote(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

fn with_detail(mut s: String, detail: &str) -> String {
    if !detail.is_empty() {
        s.push_str(": ");
        s.push_str(detail);
    }
    s
}

impl FieldCause {
    /// A cause with a ready-made body (for errors from other validators).
    pub fn new(cause_type: CauseType, field: impl Into<String>, body: impl Into<String>) -> Self {
        Self {
            cause_type,
            field: field.into(),
            body: body.into(),
        }
    }

    /// `Invalid value: "x": detail`.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let body = format!("{}: {}", CauseType::Invalid.words(), render_value(value));
        Self::new(CauseType::Invalid, field, with_detail(body, detail))
    }

    /// `Required value` or `Required value: detail`.
    pub fn required(field: impl Into<String>, detail: &str) -> Self {
        let body = with_detail(CauseType::Required.words().to_owned(), detail);
        Self::new(CauseType::Required, field, body)
    }

    /// `Unsupported value: "x": supported values: "a", "b"`.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let body = format!(
            "{}: {}",
            CauseType::NotSupported.words(),
            render_value(value)
        );
        let detail = if supported.is_empty() {
            String::new()
        } else {
            let quoted: Vec<String> = supported.iter().map(|s| quote(s)).collect();
            format!("supported values: {}", quoted.join(", "))
        };
        Self::new(CauseType::NotSupported, field, with_detail(body, &detail))
    }

    /// `Duplicate value: "x"`.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        let body = format!("{}: {}", CauseType::Duplicate.words(), render_value(value));
        Self::new(CauseType::Duplicate, field, body)
    }

    /// `Not found: "x"`.
    pub fn not_found(field: impl Into<String>, value: &Value) -> Self {
        let body = format!("{}: {}", CauseType::NotFound.words(), render_value(value));
        Self::new(CauseType::NotFound, field, body)
    }

    /// `Forbidden: detail`.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        let body = with_detail(CauseType::Forbidden.words().to_owned(), detail);
        Self::new(CauseType::Forbidden, field, body)
    }

    /// `Too long: may not be more than N bytes`.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        let body = format!("Too long: may not be more than {max} bytes");
        Self::new(CauseType::TooLong, field, body)
    }

    /// `field: body`, one element of the aggregate message.
    pub fn message(&self) -> String {
        if self.field.is_empty() {
            self.body.clone()
        } else {
            format!("{}: {}", self.field, self.body)
        }
    }
}

impl Status {
    fn failure(code: u16, reason: &str, message: String, details: Option<StatusDetails>) -> Self {
        Self {
            kind: "Status".to_owned(),
            api_version: "v1".to_owned(),
            metadata: Map::new(),
            status: "Failure".to_owned(),
            message,
            reason: reason.to_owned(),
            details,
            code,
        }
    }

    fn resource_details(gr: &GroupResource, name: &str) -> Option<StatusDetails> {
        Some(StatusDetails {
            name: name.to_owned(),
            group: gr.group.clone(),
            kind: gr.resource.clone(),
            ..StatusDetails::default()
        })
    }

    /// 200 `Success` with details, as returned by some deletes.
    pub fn success(gr: &GroupResource, name: &str, uid: &str) -> Self {
        let mut details = Self::resource_details(gr, name);
        if let Some(d) = details.as_mut() {
            d.uid = uid.to_owned();
        }
        Self {
            status: "Success".to_owned(),
            ..Self::failure(200, "", String::new(), details)
        }
    }

    /// 404 `virtualmachines.kubevirt.io "x" not found`.
    pub fn not_found(gr: &GroupResource, name: &str) -> Self {
        let message = format!("{gr} {} not found", quote(name));
        Self::failure(404, "NotFound", message, Self::resource_details(gr, name))
    }

    /// 409 `virtualmachines.kubevirt.io "x" already exists`.
    pub fn already_exists(gr: &GroupResource, name: &str) -> Self {
        let message = format!("{gr} {} already exists", quote(name));
        Self::failure(
            409,
            "AlreadyExists",
            message,
            Self::resource_details(gr, name),
        )
    }

    /// 409 `Operation cannot be fulfilled on <gr> "x": <why>`.
    pub fn conflict(gr: &GroupResource, name: &str, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {gr} {}: {why}",
            quote(name)
        );
        Self::failure(409, "Conflict", message, Self::resource_details(gr, name))
    }

    /// 409 for a stale `resourceVersion` on update.
    pub fn conflict_modified(gr: &GroupResource, name: &str) -> Self {
        Self::conflict(gr, name, OBJECT_MODIFIED)
    }

    /// 422 `VirtualMachine.kubevirt.io "x" is invalid: spec.runStrategy: Unsupported value: …`,
    /// one `details.causes[]` per field. Several causes are joined as `[a, b]`.
    pub fn invalid(gk: &GroupKind, name: &str, causes: &[FieldCause]) -> Self {
        let mut messages: Vec<String> = Vec::new();
        for c in causes {
            let m = c.message();
            if !messages.contains(&m) {
                messages.push(m);
            }
        }
        let head = format!("{gk} {} is invalid", quote(name));
        let message = match messages.len() {
            0 => head,
            1 => format!("{head}: {}", messages[0]),
            _ => format!("{head}: [{}]", messages.join(", ")),
        };
        let details = StatusDetails {
            name: name.to_owned(),
            group: gk.group.clone(),
            kind: gk.kind.clone(),
            causes: causes
                .iter()
                .map(|c| StatusCause {
                    cause_type: c.cause_type.as_str().to_owned(),
                    message: c.body.clone(),
                    field: c.field.clone(),
                })
                .collect(),
            ..StatusDetails::default()
        };
        Self::failure(422, "Invalid", message, Some(details))
    }

    /// Any failure: `Status::custom(422, "Invalid", msg)`.
    pub fn custom(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self::failure(code, reason, message.into(), None)
    }

    /// 400 with the given message.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, "BadRequest", message.into(), None)
    }

    /// 415 `the body of the request was in an unknown format - accepted media types include: …`.
    pub fn unsupported_media_type(accepted: &[&str]) -> Self {
        let message = format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            accepted.join(", ")
        );
        Self::failure(415, "UnsupportedMediaType", message, None)
    }

    /// 413 `Request entity too large: limit is N`.
    pub fn request_entity_too_large(limit: usize) -> Self {
        let message = format!("Request entity too large: limit is {limit}");
        Self::failure(413, "RequestEntityTooLarge", message, None)
    }

    /// 405 `delete is not supported on resources of kind "virtualmachineinstances.kubevirt.io"`.
    pub fn method_not_allowed(gr: &GroupResource, action: &str) -> Self {
        let message = format!(
            "{action} is not supported on resources of kind {}",
            quote(&gr.to_string())
        );
        Self::failure(
            405,
            "MethodNotAllowed",
            message,
            Self::resource_details(gr, ""),
        )
    }

    /// 403 `<gr> "name" is forbidden: <why>` (`<gr> is forbidden: <why>` without a name).
    pub fn forbidden(gr: &GroupResource, name: &str, why: &str) -> Self {
        let message = if name.is_empty() {
            format!("{gr} is forbidden: {why}")
        } else {
            format!("{gr} {} is forbidden: {why}", quote(name))
        };
        Self::failure(403, "Forbidden", message, Self::resource_details(gr, name))
    }

    /// 403 as the authorizer writes it: `User "x" cannot create resource "virtualmachines" in API
    /// group "kubevirt.io" in the namespace "default"` (`at the cluster scope` without namespace).
    pub fn forbidden_user(
        user: &str,
        verb: &str,
        gr: &GroupResource,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        let mut resource = gr.resource.clone();
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        let mut why = format!(
            "User {} cannot {verb} resource {} in API group {}",
            quote(user),
            quote(&resource),
            quote(&gr.group)
        );
        if namespace.is_empty() {
            why.push_str(" at the cluster scope");
        } else {
            why.push_str(&format!(" in the namespace {}", quote(namespace)));
        }
        Self::forbidden(gr, name, &why)
    }

    /// 401 `Unauthorized`.
    pub fn unauthorized() -> Self {
        Self::failure(401, "Unauthorized", "Unauthorized".to_owned(), None)
    }

    /// 410 `too old resource version: <requested> (<oldest>)`, reason `Expired`, as a watch sees it.
    pub fn gone(requested: u64, oldest: u64) -> Self {
        let message = format!("too old resource version: {requested} ({oldest})");
        Self::expired(message)
    }

    /// 410 with reason `Expired` and the given message (e.g. an expired `continue` token).
    pub fn expired(message: impl Into<String>) -> Self {
        Self::failure(410, "Expired", message.into(), None)
    }

    /// 500 `Internal error occurred: <err>`.
    pub fn internal(err: &str) -> Self {
        let details = StatusDetails {
            causes: vec![StatusCause {
                message: err.to_owned(),
                ..StatusCause::default()
            }],
            ..StatusDetails::default()
        };
        Self::failure(
            500,
            "InternalError",
            format!("Internal error occurred: {err}"),
            Some(details),
        )
    }

    /// 409 for server-side apply conflicts: causes of type `FieldManagerConflict`.
    pub fn apply_conflict(message: String, causes: Vec<StatusCause>) -> Self {
        let details = StatusDetails {
            causes,
            ..StatusDetails::default()
        };
        Self::failure(409, "Conflict", message, Some(details))
    }

    /// The HTTP status code to answer with.
    pub fn http_code(&self) -> u16 {
        self.code
    }

    /// The JSON body.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// The text of a stale-resourceVersion conflict.
pub const OBJECT_MODIFIED: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm() -> GroupResource {
        GroupResource::new("kubevirt.io", "virtualmachines")
    }

    #[test]
    fn group_resource_parse_and_display() {
        for (input, group, resource) in [
            (
                "virtualmachines.kubevirt.io",
                "kubevirt.io",
                "virtualmachines",
            ),
            ("pods", "", "pods"),
            (
                "leases.coordination.k8s.io",
                "coordination.k8s.io",
                "leases",
            ),
        ] {
            let gr = GroupResource::parse(input);
            assert_eq!((gr.group.as_str(), gr.resource.as_str()), (group, resource));
            assert_eq!(gr.to_string(), input);
        }
    }

    #[test]
    fn not_found_json_is_exact() {
        let s = Status::not_found(&vm(), "x");
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"virtualmachines.kubevirt.io \"x\" not found","reason":"NotFound","details":{"name":"x","group":"kubevirt.io","kind":"virtualmachines"},"code":404}"#
        );
        assert_eq!(s.http_code(), 404);
    }

    #[test]
    fn core_group_has_no_group_in_details() {
        let s = Status::not_found(&GroupResource::parse("pods"), "p");
        assert_eq!(s.message, r#"pods "p" not found"#);
        assert_eq!(
            s.to_value()["details"],
            json!({"name": "p", "kind": "pods"})
        );
    }

    #[test]
    fn table_of_simple_errors() {
        let cases: Vec<(Status, u16, &str, &str)> = vec![
            (
                Status::already_exists(&vm(), "x"),
                409,
                "AlreadyExists",
                r#"virtualmachines.kubevirt.io "x" already exists"#,
            ),
            (
                Status::conflict_modified(&vm(), "x"),
                409,
                "Conflict",
                r#"Operation cannot be fulfilled on virtualmachines.kubevirt.io "x": the object has been modified; please apply your changes to the latest version and try again"#,
            ),
            (Status::bad_request("bad"), 400, "BadRequest", "bad"),
            (
                Status::unsupported_media_type(&[
                    "application/json-patch+json",
                    "application/merge-patch+json",
                    "application/apply-patch+yaml",
                ]),
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            ),
            (
                Status::request_entity_too_large(3145728),
                413,
                "RequestEntityTooLarge",
                "Request entity too large: limit is 3145728",
            ),
            (
                Status::method_not_allowed(&vm(), "deletecollection"),
                405,
                "MethodNotAllowed",
                r#"deletecollection is not supported on resources of kind "virtualmachines.kubevirt.io""#,
            ),
            (Status::unauthorized(), 401, "Unauthorized", "Unauthorized"),
            (
                Status::gone(5, 120),
                410,
                "Expired",
                "too old resource version: 5 (120)",
            ),
            (
                Status::internal("disk full"),
                500,
                "InternalError",
                "Internal error occurred: disk full",
            ),
        ];
        for (s, code, reason, message) in cases {
            assert_eq!(s.http_code(), code, "{message}");
            assert_eq!(s.reason, reason);
            assert_eq!(s.message, message);
            assert_eq!(s.status, "Failure");
            let v = s.to_value();
            assert_eq!(v["kind"], "Status");
            assert_eq!(v["apiVersion"], "v1");
            assert_eq!(v["metadata"], json!({}));
            assert_eq!(v["code"], code);
        }
    }

    #[test]
    fn forbidden_messages() {
        let s = Status::forbidden_user("alice", "create", &vm(), "", "default", "");
        assert_eq!(s.code, 403);
        assert_eq!(
            s.message,
            r#"virtualmachines.kubevirt.io is forbidden: User "alice" cannot create resource "virtualmachines" in API group "kubevirt.io" in the namespace "default""#
        );
        let s = Status::forbidden_user(
            "system:anonymous",
            "get",
            &GroupResource::parse("nodes"),
            "",
            "",
            "n1",
        );
        assert_eq!(
            s.message,
            r#"nodes "n1" is forbidden: User "system:anonymous" cannot get resource "nodes" in API group "" at the cluster scope"#
        );
        let s = Status::forbidden_user("ro", "update", &vm(), "status", "ns", "x");
        assert!(
            s.message
                .contains(r#"cannot update resource "virtualmachines/status""#)
        );
        assert_eq!(s.to_value()["details"]["name"], "x");
    }

    #[test]
    fn invalid_single_cause() {
        let gk = GroupKind::new("kubevirt.io", "VirtualMachine");
        let cause = FieldCause::not_supported(
            "spec.runStrategy",
            &json!("Sometimes"),
            &["Always", "Halted", "Manual", "RerunOnFailure", "Once"],
        );
        let s = Status::invalid(&gk, "x", &[cause]);
        assert_eq!(s.code, 422);
        assert_eq!(
            s.message,
            r#"VirtualMachine.kubevirt.io "x" is invalid: spec.runStrategy: Unsupported value: "Sometimes": supported values: "Always", "Halted", "Manual", "RerunOnFailure", "Once""#
        );
        assert_eq!(
            s.to_value()["details"],
            json!({
                "name": "x", "group": "kubevirt.io", "kind": "VirtualMachine",
                "causes": [{
                    "reason": "FieldValueNotSupported",
                    "message": r#"Unsupported value: "Sometimes": supported values: "Always", "Halted", "Manual", "RerunOnFailure", "Once""#,
                    "field": "spec.runStrategy"
                }]
            })
        );
    }

    #[test]
    fn invalid_many_causes_are_bracketed_and_deduplicated() {
        let gk = GroupKind::new("", "Pod");
        let causes = [
            FieldCause::required("metadata.name", "name or generateName is required"),
            FieldCause::invalid(
                "spec.replicas",
                &json!(-1),
                "must be greater than or equal to 0",
            ),
            FieldCause::required("metadata.name", "name or generateName is required"),
        ];
        let s = Status::invalid(&gk, "", &causes);
        assert_eq!(
            s.message,
            r#"Pod "" is invalid: [metadata.name: Required value: name or generateName is required, spec.replicas: Invalid value: -1: must be greater than or equal to 0]"#
        );
        assert_eq!(s.details.as_ref().unwrap().causes.len(), 3);
        assert_eq!(
            s.details.as_ref().unwrap().causes[0].cause_type,
            "FieldValueRequired"
        );
    }

    #[test]
    fn field_cause_bodies() {
        let cases = [
            (FieldCause::required("a", ""), "Required value"),
            (
                FieldCause::invalid("a", &json!("x"), ""),
                r#"Invalid value: "x""#,
            ),
            (
                FieldCause::invalid("a", &json!(true), "nope"),
                "Invalid value: true: nope",
            ),
            (
                FieldCause::duplicate("a", &json!("d")),
                r#"Duplicate value: "d""#,
            ),
            (FieldCause::not_found("a", &json!("v")), r#"Not found: "v""#),
            (
                FieldCause::forbidden("a", "not allowed"),
                "Forbidden: not allowed",
            ),
            (
                FieldCause::too_long("a", 63),
                "Too long: may not be more than 63 bytes",
            ),
            (
                FieldCause::not_supported("a", &json!("z"), &[]),
                r#"Unsupported value: "z""#,
            ),
        ];
        for (c, body) in cases {
            assert_eq!(c.body, body);
            assert_eq!(c.message(), format!("a: {body}"));
        }
    }

    #[test]
    fn success_and_roundtrip() {
        let s = Status::success(&vm(), "x", "u-1");
        let v = s.to_value();
        assert_eq!(v["status"], "Success");
        assert_eq!(v["code"], 200);
        assert_eq!(v["details"]["uid"], "u-1");
        assert!(v.get("reason").is_none());
        let back: Status = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn internal_has_cause() {
        let v = Status::internal("boom").to_value();
        assert_eq!(v["details"]["causes"], json!([{"message": "boom"}]));
    }
}
