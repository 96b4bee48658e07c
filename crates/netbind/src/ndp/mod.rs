//! Router advertisements for the guest's link (IPv6 neighbour discovery, RFC 4861): the bytes
//! ([`router_advertisement`], [`parse_router_solicitation`], pure) and a [`Server`] that sends
//! them on one interface, so the guest learns its default router and that DHCPv6 hands out
//! its address.
//!
//! KubeVirt itself sends no advertisements (its masquerade guests get an address by DHCPv6 but
//! no default route unless cloud-init sets one); this fills that gap the way its unmerged RA
//! daemon meant to: M and O set, the VM network `fd10:0:2::/120` on-link, no SLAAC.

mod packet;
mod server;

use std::net::Ipv6Addr;

pub use packet::{
    PrefixInfo, ROUTER_ADVERTISEMENT, ROUTER_SOLICITATION, RaConfig, RouterSolicitation, network,
    parse_router_solicitation, router_advertisement,
};
pub use server::{
    ALL_NODES, ALL_ROUTERS, Counters, DEFAULT_INTERVAL, INITIAL_ADVERTISEMENTS, INITIAL_INTERVAL,
    NdpError, Server,
};

/// KubeVirt's default masquerade IPv6 network (`DefaultVMIpv6CIDR`, fd10:0:2::/120): the
/// gateway on the bridge and the guest's address.
pub const GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 1);
pub const GUEST: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2);
pub const PREFIX_LEN: u8 = 120;
/// Router lifetime we advertise: RFC 4861's default (3 × MaxRtrAdvInterval of 600 s).
pub const ROUTER_LIFETIME: u16 = 1800;
/// Hop limit hosts are told to use.
pub const CUR_HOP_LIMIT: u8 = 64;
/// Lifetimes of the on-link prefix: KubeVirt's DHCP lease time (999 days).
pub const PREFIX_LIFETIME: u32 = 999 * 24 * 60 * 60;

impl RaConfig {
    /// The masquerade binding's advertisement from the bridge's MAC: managed (M) and other (O)
    /// configuration by DHCPv6, us as default router, `network/prefix_len` on-link (not
    /// autonomous), the MTU when known.
    pub fn masquerade(
        bridge_mac: [u8; 6],
        network: Ipv6Addr,
        prefix_len: u8,
        mtu: Option<u32>,
    ) -> Self {
        Self {
            source_mac: bridge_mac,
            cur_hop_limit: CUR_HOP_LIMIT,
            managed: true,
            other_config: true,
            router_lifetime: ROUTER_LIFETIME,
            mtu,
            prefixes: vec![PrefixInfo {
                prefix: packet::network(network, prefix_len),
                prefix_len,
                on_link: true,
                autonomous: false,
                valid_lifetime: PREFIX_LIFETIME,
                preferred_lifetime: PREFIX_LIFETIME,
            }],
        }
    }
}
