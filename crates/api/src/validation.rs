//! KubeVirt's admission checks (virt-api validating webhook) with Kubernetes-style field paths.
//!
//! Every check runs and every failure is reported, e.g.
//! `spec.domain.devices.disks[1].name: volume "x" not found`. VM checks report paths under
//! `spec.template.spec`. Run [`crate::defaults`] first, as the API server does: a few rules
//! (a disk for every volume, a run strategy) hold only after defaulting.

mod domain;
mod migration_policy;
mod network;
mod path;
mod storage;

use std::fmt;

use crate::v1::{RunStrategy, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceSpec};

pub use migration_policy::validate_migration_policy;
pub use path::FieldPath;

/// The Kubernetes cause type of a [`FieldError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorKind {
    /// The value is malformed or inconsistent with other fields.
    Invalid,
    /// A required value is missing.
    Required,
    /// The value must be unique but is not.
    Duplicate,
    /// The value is well-formed but not one this implementation supports.
    NotSupported,
    /// Something the value refers to does not exist.
    NotFound,
    /// The value is too long.
    TooLong,
    /// The value is not allowed in this combination.
    Forbidden,
}

/// One rejected field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path such as `spec.domain.devices.disks[1].name`.
    pub field: String,
    pub kind: FieldErrorKind,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// All errors found in one object, in the order the checks ran. Never empty when returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// The errors.
    pub fn iter(&self) -> std::slice::Iter<'_, FieldError> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first error at exactly this path.
    pub fn find(&self, field: &str) -> Option<&FieldError> {
        self.0.iter().find(|e| e.field == field)
    }

    pub(crate) fn push(
        &mut self,
        field: &FieldPath,
        kind: FieldErrorKind,
        message: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.to_string(),
            kind,
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), FieldErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

impl IntoIterator for FieldErrors {
    type Item = FieldError;
    type IntoIter = std::vec::IntoIter<FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldErrors {
    type Item = &'a FieldError;
    type IntoIter = std::slice::Iter<'a, FieldError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Validates a VirtualMachineInstance as KubeVirt's create admission does.
pub fn validate_vmi(vmi: &VirtualMachineInstance) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let meta = &vmi.metadata;
    if meta.name.as_deref().is_none_or(str::is_empty)
        && meta.generate_name.as_deref().is_none_or(str::is_empty)
    {
        errs.push(
            &FieldPath::new("metadata").child("name"),
            FieldErrorKind::Required,
            "name or generateName is required",
        );
    }
    validate_ip_annotation(&FieldPath::new("metadata"), meta, &mut errs);
    validate_vmi_spec(&FieldPath::new("spec"), &vmi.spec, &mut errs);
    errs.into_result()
}

/// `kuvirt.io/ip` and `kuvirt.io/ip-lease`, when present, are one IPv4 address each.
fn validate_ip_annotation(
    path: &FieldPath,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    errs: &mut FieldErrors,
) {
    for key in [crate::v1::IP_ANNOTATION, crate::v1::IP_LEASE_ANNOTATION] {
        let ip = meta.annotations.as_ref().and_then(|a| a.get(key));
        if let Some(ip) = ip
            && ip.parse::<std::net::Ipv4Addr>().is_err()
        {
            errs.push(
                &path.child("annotations").key(key),
                FieldErrorKind::Invalid,
                format!("{ip:?} is not an IPv4 address"),
            );
        }
    }
}

/// Validates a VirtualMachine: run strategy, template presence, and the template's VMI spec
/// (paths under `spec.template.spec`).
pub fn validate_vm(vm: &VirtualMachine) -> Result<(), FieldErrors> {
    use FieldErrorKind::*;
    let mut errs = FieldErrors::default();
    let spec_path = FieldPath::new("spec");
    let meta = &vm.metadata;
    if meta.name.as_deref().is_none_or(str::is_empty)
        && meta.generate_name.as_deref().is_none_or(str::is_empty)
    {
        errs.push(
            &FieldPath::new("metadata").child("name"),
            Required,
            "name or generateName is required",
        );
    }
    let spec = &vm.spec;
    match (&spec.running, &spec.run_strategy) {
        (Some(_), Some(_)) => errs.push(
            &spec_path.child("running"),
            Invalid,
            "running and runStrategy are mutually exclusive; running is deprecated, use runStrategy",
        ),
        (None, None) => errs.push(
            &spec_path.child("runStrategy"),
            Required,
            "runStrategy must be specified",
        ),
        _ => {}
    }
    if let Some(rs) = &spec.run_strategy {
        match rs {
            RunStrategy::Other(v) => errs.push(
                &spec_path.child("runStrategy"),
                NotSupported,
                format!(
                    "unsupported run strategy {v:?}, must be one of: Always, RerunOnFailure, Manual, Halted, Once"
                ),
            ),
            RunStrategy::WaitAsReceiver => errs.push(
                &spec_path.child("runStrategy"),
                NotSupported,
                "run strategy WaitAsReceiver needs decentralized live migration, which is not supported",
            ),
            _ => {}
        }
    }
    match &spec.template {
        None => errs.push(
            &spec_path.child("template"),
            Required,
            "missing virtual machine template",
        ),
        Some(t) => {
            validate_ip_annotation(
                &spec_path.child("template").child("metadata"),
                &t.metadata,
                &mut errs,
            );
            validate_vmi_spec(
                &spec_path.child("template").child("spec"),
                &t.spec,
                &mut errs,
            )
        }
    }
    validate_ip_annotation(&FieldPath::new("metadata"), meta, &mut errs);
    errs.into_result()
}

/// Validates a VMI spec found at `path` (`spec` for a VMI, `spec.template.spec` for a VM),
/// appending to `errs`.
pub fn validate_vmi_spec(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    domain::validate(path, spec, errs);
    storage::validate(path, spec, errs);
    network::validate(path, spec, errs);
}

#[cfg(test)]
mod tests;
