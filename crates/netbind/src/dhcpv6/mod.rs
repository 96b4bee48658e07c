//! Our single-address DHCPv6 server for the masquerade binding (KubeVirt's
//! `SingleClientDHCPv6Server`): it hands the guest's bridge one address, fd10:0:2::2 by
//! default, with KubeVirt's lifetimes and the pod's IPv6 DNS servers.
//!
//! [`respond`]/[`answer`] are pure (bytes in, bytes out); [`Server`]/[`serve`] put them on a
//! UDP socket bound to one interface. Router advertisements (the guest's default route, the
//! M flag that makes it ask) are [`crate::ndp`]'s.

mod lease;
mod respond;
mod server;

pub use lease::{KUBEVIRT_LIFETIME_SECS, Lease6, Lease6Error};
pub use respond::{MAX_REQUEST_LEN, MAX_REQUEST_OPTIONS, Reply, ReplyKind, answer, respond};
pub use server::{ALL_SERVERS, CLIENT_PORT, Counters, SERVER_PORT, Serve6Error, Server, serve};

#[cfg(test)]
mod tests;
