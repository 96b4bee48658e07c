//! Our single-client DHCPv4 server, as KubeVirt's bridge and masquerade bindings need it: it
//! answers one MAC with one lease and ignores everything else.
//!
//! [`respond`]/[`answer`] are pure (bytes in, bytes out); [`Server`]/[`serve`] put them on a
//! UDP socket bound to one interface.

mod lease;
mod respond;
mod server;

pub use lease::{
    ExtraOptions, INFINITE_LEASE_SECS, KUBEVIRT_LEASE_SECS, Lease, LeaseError,
    PRIVATE_OPTION_CODES, PrivateOption, Route, encode_search_domains, longest_domain,
};
pub use respond::{MAX_REQUEST_LEN, MAX_REQUEST_OPTIONS, Reply, ReplyKind, answer, respond};
pub use server::{Counters, SERVER_PORT, ServeError, Server, serve};

#[cfg(test)]
mod tests;
