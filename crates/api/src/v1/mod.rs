//! kubevirt.io/v1 types: VirtualMachine, VirtualMachineInstance and everything they embed.
//!
//! JSON names follow KubeVirt's `staging/src/kubevirt.io/api/core/v1` exactly. Every struct keeps
//! fields it does not model in `extra`, so an object read and written back loses nothing.
//! String enums keep unknown values in an `Other(String)` variant; validation rejects them.

#[macro_use]
mod string_enum;

pub mod devices;
pub mod domain;
pub mod migration;
pub mod networks;
pub mod status;
pub mod vm;
pub mod vmi;
pub mod volumes;

pub use devices::*;
pub use domain::*;
pub use migration::*;
pub use networks::*;
pub use status::*;
pub use vm::*;
pub use vmi::*;
pub use volumes::*;

/// API group of KubeVirt's core types.
pub const GROUP: &str = "kubevirt.io";
/// API version of KubeVirt's core types.
pub const VERSION: &str = "v1";
/// `apiVersion` value of every object in this module.
pub const API_VERSION: &str = "kubevirt.io/v1";

/// A fixed pod IP asked for by the user on a VM (or a VMI): honoured or refused, never changed.
/// A VM's annotation is copied to each VMI it starts, and a VMI's to its launcher pod.
pub const IP_ANNOTATION: &str = "kuvirt.io/ip";

/// A VM's sticky pod IP, written by the node agent with the address the VM's pod got: its next
/// VMI asks for it again (stop/start, node restarts keep the address), and no other VM gets it.
/// A preference, not a requirement: when the VM must move to a node whose pod CIDR does not
/// hold it, the VM gets a new address there and the lease follows. Copied like
/// [`IP_ANNOTATION`].
pub const IP_LEASE_ANNOTATION: &str = "kuvirt.io/ip-lease";

/// Fields of a JSON object that this crate does not model; written back unchanged.
pub type Extra = serde_json::Map<String, serde_json::Value>;
