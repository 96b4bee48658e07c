//! Patches as the PATCH verb applies them: JSON merge patch (RFC 7386), JSON patch (RFC 6902),
//! strategic merge patch for core kinds, and server-side apply with `managedFields`.

pub mod apply;
pub mod fieldset;
mod json;
mod keys;
mod managed;
mod merge;
mod strategic;
mod typed;

use serde_json::Value;

use crate::status::Status;

pub use apply::{
    ApplyConflicts, ApplyError, BEFORE_FIRST_APPLY, Conflict, LAST_APPLIED_ANNOTATION, Operation,
    apply, update_managed_fields,
};
pub use fieldset::{FieldSet, FieldSetError, PathElement, path_string};
pub use json::json_patch;
pub use keys::{KeyTable, ListType};
pub use merge::merge_patch;
pub use strategic::strategic_merge_patch;

/// The `Content-Type` of a PATCH request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    StrategicMerge,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// Maps a content type (parameters ignored); `None` for anything else (answer 415).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        match essence.to_ascii_lowercase().as_str() {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::StrategicMerge),
            "application/apply-patch+yaml" => Some(Self::Apply),
            _ => None,
        }
    }

    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json-patch+json",
            Self::Merge => "application/merge-patch+json",
            Self::StrategicMerge => "application/strategic-merge-patch+json",
            Self::Apply => "application/apply-patch+yaml",
        }
    }
}

/// The patch types a resource accepts, as listed in a 415 answer: custom resources (no strategic
/// merge) or built-in kinds.
pub fn accepted_patch_types(strategic: bool) -> Vec<&'static str> {
    let mut v = vec![
        PatchType::Json.content_type(),
        PatchType::Merge.content_type(),
    ];
    if strategic {
        v.push(PatchType::StrategicMerge.content_type());
    }
    v.push(PatchType::Apply.content_type());
    v
}

/// Why a patch could not be applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (400).
    #[error("invalid patch: {0}")]
    Malformed(String),
    /// One JSON patch operation failed (422); `index` counts from 0.
    #[error("json patch operation {index} ({op} {path}): {why}")]
    Operation {
        index: usize,
        op: String,
        path: String,
        why: String,
    },
    /// The strategic merge patch cannot be applied to this object (422).
    #[error("strategic merge patch: {0}")]
    Strategic(String),
    /// The kind does not support strategic merge patch (415), e.g. custom resources.
    #[error("strategic merge patch is not supported for {0}")]
    StrategicUnsupported(String),
}

impl PatchError {
    /// The Status the API server answers with.
    pub fn to_status(&self) -> Status {
        match self {
            Self::Malformed(_) => Status::bad_request(self.to_string()),
            Self::Operation { .. } | Self::Strategic(_) => {
                Status::custom(422, "Invalid", self.to_string())
            }
            Self::StrategicUnsupported(_) => {
                Status::unsupported_media_type(&accepted_patch_types(false))
            }
        }
    }
}

/// Applies a JSON, merge or strategic merge patch (`Apply` is [`apply`], which needs more input).
pub fn apply_patch(
    patch_type: PatchType,
    original: &Value,
    patch: &Value,
    keys: &KeyTable,
) -> Result<Value, PatchError> {
    match patch_type {
        PatchType::Json => json_patch(original, patch),
        PatchType::Merge => Ok(merge_patch(original, patch)),
        PatchType::StrategicMerge => strategic_merge_patch(original, patch, keys),
        PatchType::Apply => Err(PatchError::Malformed(
            "apply patches go through server-side apply".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
        for t in [
            PatchType::Json,
            PatchType::Merge,
            PatchType::StrategicMerge,
            PatchType::Apply,
        ] {
            assert_eq!(PatchType::from_content_type(t.content_type()), Some(t));
        }
    }

    #[test]
    fn strategic_on_custom_resource_is_415() {
        let keys = KeyTable::for_kind("kubevirt.io", "VirtualMachine");
        let err = apply_patch(
            PatchType::StrategicMerge,
            &serde_json::json!({}),
            &serde_json::json!({}),
            &keys,
        )
        .unwrap_err();
        let s = err.to_status();
        assert_eq!(s.code, 415);
        assert_eq!(
            s.message,
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        );
    }

    #[test]
    fn error_statuses() {
        assert_eq!(PatchError::Malformed("x".into()).to_status().code, 400);
        let op = PatchError::Operation {
            index: 2,
            op: "replace".into(),
            path: "/spec/x".into(),
            why: "path not found".into(),
        };
        assert_eq!(
            op.to_string(),
            "json patch operation 2 (replace /spec/x): path not found"
        );
        assert_eq!(op.to_status().code, 422);
        assert_eq!(op.to_status().reason, "Invalid");
    }
}
