//! The Kubernetes REST protocol over kuvirt's embedded store: discovery, CRUD, watch, patch,
//! admission and auth, served to kubectl and kube-rs.

pub mod admission;
pub mod openapi;
pub mod pki;
pub mod resources;
