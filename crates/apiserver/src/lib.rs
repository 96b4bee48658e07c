//! The Kubernetes REST protocol over kuvirt's embedded store: discovery, CRUD, watch, patch,
//! admission and auth, served to kubectl and kube-rs.

pub mod admission;
pub mod discovery;
pub mod error;
pub mod gc;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod migrate;
pub mod nodeproxy;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod path;
pub mod pki;
pub mod protobuf;
pub mod resources;
pub mod server;
pub mod subresources;
pub mod table;
pub mod watch;
