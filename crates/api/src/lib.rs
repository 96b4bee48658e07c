//! kubevirt.io/v1 API types, KubeVirt defaulting and validation. No I/O.
//!
//! - [`v1`]: `VirtualMachine`, `VirtualMachineInstance` and everything they embed, with
//!   KubeVirt's JSON names; unknown fields survive a round trip.
//! - [`defaults`]: [`defaults::default_vmi`], [`defaults::default_vm`].
//! - [`migrations`]: `migrations.kubevirt.io/v1alpha1` `MigrationPolicy`, which policy a
//!   VMI's migration runs under and the configuration it then gets.
//! - [`validation`]: [`validation::validate_vmi`], [`validation::validate_vm`],
//!   [`validation::validate_migration_policy`].
//! - [`quantity`]: Kubernetes quantity parsing ([`quantity::parse_quantity`]).

// Tests may unwrap (common brief); library code may not.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod defaults;
pub mod migrations;
pub mod quantity;
pub mod v1;
pub mod validation;

pub use defaults::{default_vm, default_vmi};
pub use quantity::{QuantityError, QuantityExt, parse_quantity};
pub use v1::{VirtualMachine, VirtualMachineInstance};
pub use validation::{
    FieldError, FieldErrorKind, FieldErrors, validate_migration_policy, validate_vm, validate_vmi,
};
