//! Kubernetes API machinery as pure functions on JSON: no I/O, no clock, no network.
//!
//! The API server calls these to speak Kubernetes' protocol exactly as kubectl and kube-rs expect:
//!
//! - [`status`]: `metav1.Status` error bodies (404, 409, 422 with causes, 415, …) and their HTTP codes.
//! - [`selector`]: label and field selectors, parsed and matched.
//! - [`patch`]: JSON merge patch, JSON patch, strategic merge patch, and server-side apply with
//!   `managedFields`.
//! - [`table`]: `meta.k8s.io/v1` Table responses and kubectl's human durations.
//! - [`meta`]: generateName, generation bumps, RFC 3339 timestamps.

pub mod meta;
pub mod patch;
pub mod selector;
pub mod status;
pub mod table;

pub use status::{CauseType, FieldCause, GroupKind, GroupResource, Status};
