//! Label and field selectors (`?labelSelector=` / `?fieldSelector=`): parsing with clear errors and
//! matching, with Kubernetes' grammar and semantics.

mod field;
mod label;

pub use field::{FieldOp, FieldSelector, FieldTerm, json_field};
pub use label::{LabelSelector, Operator, Requirement};

/// Why a selector was refused. The API server answers these with 400 Bad Request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector text does not follow the grammar.
    #[error("unable to parse requirement {input:?} at position {pos}: {what}")]
    Parse {
        input: String,
        pos: usize,
        what: String,
    },
    /// A key or value is not a valid label key or value.
    #[error("invalid label {which} {value:?}: {why}")]
    InvalidLabel {
        which: &'static str,
        value: String,
        why: String,
    },
    /// A field selector term has no `=`, `==` or `!=`, or a bad escape.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    FieldTerm { selector: String, term: String },
    /// The field is not one the resource can be selected by.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    /// A `metav1.LabelSelector` object is malformed.
    #[error("invalid label selector: {0}")]
    InvalidObject(String),
}
