//! The one address a VM gets by DHCPv6, and the server's identity.

use std::net::Ipv6Addr;

/// KubeVirt's lifetimes for the address (`infiniteLease` of its DHCPv6 server): 999 days.
pub const KUBEVIRT_LIFETIME_SECS: u32 = 999 * 24 * 60 * 60;

/// DUID type 3, link-layer address (RFC 8415 §11.4), hardware type 1 (Ethernet).
const DUID_LL: u16 = 3;
const HTYPE_ETHERNET: u16 = 1;

/// What the VM is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    /// The address in every IA_NA we hand out.
    pub address: Ipv6Addr,
    /// The serving interface's MAC: our DUID-LL (as KubeVirt's server derives its DUID).
    pub server_mac: [u8; 6],
    /// Option 23 (RFC 3646), left out when empty.
    pub dns_servers: Vec<Ipv6Addr>,
    /// IA address lifetimes in seconds ([`KUBEVIRT_LIFETIME_SECS`] unless set).
    pub preferred_lifetime: u32,
    pub valid_lifetime: u32,
}

/// Why a lease cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lease6Error {
    #[error("address {0} is not a unicast address")]
    Address(Ipv6Addr),
    #[error("dns server {0} is not a unicast address")]
    DnsServer(Ipv6Addr),
    #[error("preferred lifetime {preferred} is over the valid lifetime {valid}")]
    Lifetimes { preferred: u32, valid: u32 },
}

impl Lease6 {
    /// `address` with KubeVirt's lifetimes and no DNS servers.
    pub fn new(address: Ipv6Addr, server_mac: [u8; 6]) -> Self {
        Self {
            address,
            server_mac,
            dns_servers: Vec::new(),
            preferred_lifetime: KUBEVIRT_LIFETIME_SECS,
            valid_lifetime: KUBEVIRT_LIFETIME_SECS,
        }
    }

    pub fn validate(&self) -> Result<(), Lease6Error> {
        if !unicast(self.address) {
            return Err(Lease6Error::Address(self.address));
        }
        if let Some(bad) = self.dns_servers.iter().find(|d| !unicast(**d)) {
            return Err(Lease6Error::DnsServer(*bad));
        }
        if self.preferred_lifetime > self.valid_lifetime {
            return Err(Lease6Error::Lifetimes {
                preferred: self.preferred_lifetime,
                valid: self.valid_lifetime,
            });
        }
        Ok(())
    }

    /// Our server identifier: DUID-LL of `server_mac`.
    pub fn server_duid(&self) -> Vec<u8> {
        let mut duid = Vec::with_capacity(10);
        duid.extend_from_slice(&DUID_LL.to_be_bytes());
        duid.extend_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        duid.extend_from_slice(&self.server_mac);
        duid
    }
}

fn unicast(ip: Ipv6Addr) -> bool {
    !ip.is_unspecified() && !ip.is_multicast() && !ip.is_loopback()
}
