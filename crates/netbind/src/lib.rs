//! Network bindings of a VM's pod interface: the DHCP server the bridge and masquerade bindings
//! use, and both bindings' set-up inside the pod's namespace.

pub mod bridge;
pub mod dhcp;
pub mod dhcpv6;
pub mod masquerade;
pub mod metadata;
pub mod ndp;
pub mod nft;
pub mod passt;
mod sys;

use crate::dhcp::ServeError;

/// A MAC address written `aa:bb:cc:dd:ee:ff` (or with `-`, as KubeVirt's `macAddress` allows).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        (p.len() == 2).then_some(())?;
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Why the binding could not be set up or torn down.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is not 1..=15 of [A-Za-z0-9_.-]")]
    Name(String),
    #[error("nft table name {0:?} is not a letter then [A-Za-z0-9_], at most 64")]
    Table(String),
    #[error("{program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{command}: {stderr}")]
    Command { command: String, stderr: String },
    #[error("sysctl {path}: {source}")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    State {
        path: String,
        source: std::io::Error,
    },
    #[error("no {what} on {ifname}")]
    Discover { ifname: String, what: &'static str },
    #[error("dhcp: {0}")]
    Dhcp(#[from] ServeError),
    #[error("router advertisements: {0}")]
    Ndp(#[from] ndp::NdpError),
    #[error("dhcpv6: {0}")]
    Dhcp6(#[from] dhcpv6::Serve6Error),
}
