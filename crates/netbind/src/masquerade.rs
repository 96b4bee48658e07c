//! KubeVirt's masquerade binding inside the pod's network namespace: bridge `k6t-eth0` with
//! the gateway 10.0.2.1/24, the guest's interface (QEMU's tap) on it, forwarding, the nftables
//! NAT of [`crate::nft::ruleset`] and the DHCP server handing the guest 10.0.2.2.
//!
//! Everything acts on the network namespace of the calling thread (`ip` and `nft` run as its
//! children, sysctls are written through its `/proc/sys/net`): the launcher calls it from inside
//! the pod's namespace, tests from a thread that `setns`'d into one.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use crate::Error;
use crate::dhcp::{ExtraOptions, Lease, Server, longest_domain};
use crate::sys::{
    check_name, check_table, interface_ipv4, interface_ipv6, interface_mtu, ip, link_exists, nft,
    sysctl,
};
use crate::{dhcpv6, ndp};

/// KubeVirt's bridge name for the pod interface `eth0`.
pub const BRIDGE: &str = "k6t-eth0";
/// KubeVirt's default masquerade network (`vmNetworkCIDR` 10.0.2.0/24): gateway and guest.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const PREFIX_LEN: u8 = 24;
/// Our nftables table in the pod's namespace.
pub const TABLE: &str = "kuvirt_masquerade";
/// The bridge's own MAC (locally administered), the source of its router advertisements and
/// its DHCPv6 DUID.
pub const BRIDGE_MAC: [u8; 6] = [0x02, 0x6b, 0x76, 0x00, 0x00, 0x01];

/// A protocol of a declared port (KubeVirt's `ports[].protocol`, TCP by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One of the interface's declared `ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub protocol: Protocol,
    pub port: u16,
}

impl Port {
    pub fn tcp(port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            port,
        }
    }
}

/// Everything the binding needs; [`MasqueradeConfig::new`] fills in KubeVirt's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqueradeConfig {
    /// The pod's interface (`eth0`): NAT'd traffic leaves and enters through it.
    pub pod_interface: String,
    /// The bridge (`k6t-eth0`).
    pub bridge: String,
    /// The guest-facing interface put on the bridge: QEMU's tap (see [`create_tap`]).
    pub guest_interface: String,
    /// The guest's MAC, the only client the DHCP server answers.
    pub guest_mac: [u8; 6],
    pub gateway: Ipv4Addr,
    pub guest_address: Ipv4Addr,
    pub prefix_len: u8,
    /// Declared ports; empty forwards every port (as KubeVirt does).
    pub ports: Vec<Port>,
    /// TCP ports the pod itself serves on 127.0.0.1 or its IP (the API proxy), never sent to
    /// the guest by the output-chain DNAT.
    pub local_ports: Vec<u16>,
    /// The pod IP, so the pod's connections to it reach the guest; found on `pod_interface`
    /// when `None`.
    pub pod_ip: Option<Ipv4Addr>,
    /// DHCP: DNS servers and search domains (the pod's resolv.conf, see [`parse_resolv_conf`]).
    pub dns_servers: Vec<Ipv4Addr>,
    pub search_domains: Vec<String>,
    pub hostname: Option<String>,
    /// DHCP and bridge MTU; the pod interface's when `None`.
    pub mtu: Option<u16>,
    /// The pod's IPv6 address: with one (found on `pod_interface` when `None` and `ipv6` is
    /// set), the guest also gets fd10:0:2::2/120 by RA and DHCPv6, NAT'd to it.
    pub pod_ipv6: Option<Ipv6Addr>,
    /// Whether to look for (and use) the pod's IPv6 address.
    pub ipv6: bool,
    /// IPv6 name servers for DHCPv6.
    pub dns_servers_v6: Vec<Ipv6Addr>,
    /// `dhcpOptions` (PXE boot, NTP, private options).
    pub extra: ExtraOptions,
    /// Our nftables table.
    pub table: String,
}

impl MasqueradeConfig {
    /// KubeVirt's names and addresses for the pod interface `eth0`.
    pub fn new(guest_interface: &str, guest_mac: [u8; 6]) -> Self {
        Self {
            pod_interface: "eth0".into(),
            bridge: BRIDGE.into(),
            guest_interface: guest_interface.into(),
            guest_mac,
            gateway: GATEWAY,
            guest_address: GUEST,
            prefix_len: PREFIX_LEN,
            ports: Vec::new(),
            local_ports: Vec::new(),
            pod_ip: None,
            dns_servers: Vec::new(),
            search_domains: Vec::new(),
            hostname: None,
            mtu: None,
            pod_ipv6: None,
            ipv6: true,
            dns_servers_v6: Vec::new(),
            extra: ExtraOptions::default(),
            table: TABLE.into(),
        }
    }

    fn check_names(&self) -> Result<(), Error> {
        for name in [&self.pod_interface, &self.bridge, &self.guest_interface] {
            check_name(name)?;
        }
        check_table(&self.table)
    }

    /// The lease the guest gets: its address, the gateway as router and server, DNS, MTU.
    pub fn lease(&self, mtu: Option<u16>) -> Lease {
        let mut lease = Lease::new(
            self.guest_mac,
            self.guest_address,
            self.prefix_len,
            self.gateway,
        );
        lease.router = Some(self.gateway);
        lease.dns_servers = self.dns_servers.clone();
        lease.search_domains = self.search_domains.clone();
        lease.domain_name = longest_domain(&self.search_domains);
        lease.hostname = self.hostname.clone();
        lease.mtu = mtu;
        self.extra.apply(&mut lease);
        lease
    }
}

/// The set-up binding; its DHCP server is the caller's to run ([`Masquerade::take_dhcp`]).
#[derive(Debug)]
pub struct Masquerade {
    config: MasqueradeConfig,
    lease: Lease,
    dhcp: Option<Server>,
    ra: Option<ndp::Server>,
    dhcp6: Option<dhcpv6::Server>,
}

impl Masquerade {
    /// The DHCP server bound on the bridge; run it with `server.run().await`.
    pub fn take_dhcp(&mut self) -> Option<Server> {
        self.dhcp.take()
    }

    /// The IPv6 servers (router advertisements, DHCPv6) when the pod has IPv6.
    pub fn take_ipv6(&mut self) -> Option<(ndp::Server, dhcpv6::Server)> {
        Some((self.ra.take()?, self.dhcp6.take()?))
    }

    /// The lease the guest is served.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The configuration as applied (pod IP and MTU filled in).
    pub fn config(&self) -> &MasqueradeConfig {
        &self.config
    }

    /// Stops serving (when the server was not taken) and removes the table and the bridge.
    pub fn teardown(self) -> Result<(), Error> {
        drop(self.dhcp);
        teardown(&self.config)
    }
}

/// Sets the binding up in the current network namespace; must be called inside a tokio runtime
/// (for the DHCP socket). Running it again (a restarted launcher) converges to the same state.
pub fn setup(cfg: &MasqueradeConfig) -> Result<Masquerade, Error> {
    cfg.check_names()?;
    let mut config = cfg.clone();
    let pod = &config.pod_interface;
    if config.pod_ip.is_none() {
        config.pod_ip = Some(interface_ipv4(pod)?);
    }
    let mtu = match config.mtu {
        Some(mtu) => mtu,
        None => interface_mtu(pod)?,
    };
    config.mtu = Some(mtu);
    if config.ipv6 && config.pod_ipv6.is_none() {
        config.pod_ipv6 = interface_ipv6(pod)?;
    }
    let (bridge, guest) = (config.bridge.as_str(), config.guest_interface.as_str());
    let mtu_arg = mtu.to_string();

    if !link_exists(bridge)? {
        ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    // A MAC of its own, so the router advertisements and the DHCPv6 DUID never change with
    // the ports.
    ip(&[
        "link",
        "set",
        bridge,
        "address",
        &crate::format_mac(&BRIDGE_MAC),
    ])?;
    if config.pod_ipv6.is_some() {
        sysctl("net/ipv6/conf/all/forwarding", "1")?;
        sysctl(&format!("net/ipv6/conf/{bridge}/disable_ipv6"), "0")?;
        sysctl(&format!("net/ipv6/conf/{bridge}/accept_dad"), "0")?;
        let cidr6 = format!("{}/{}", ndp::GATEWAY, ndp::PREFIX_LEN);
        ip(&["-6", "addr", "replace", &cidr6, "dev", bridge, "nodad"])?;
    }
    let cidr = format!("{}/{}", config.gateway, config.prefix_len);
    ip(&["addr", "replace", &cidr, "dev", bridge])?;
    ip(&["link", "set", bridge, "mtu", &mtu_arg, "up"])?;
    ip(&["link", "set", guest, "mtu", &mtu_arg])?;
    ip(&["link", "set", guest, "master", bridge, "up"])?;

    sysctl("net/ipv4/ip_forward", "1")?;
    // the output chain's DNAT of 127.0.0.1 sends loopback-sourced packets to the bridge
    sysctl(&format!("net/ipv4/conf/{bridge}/route_localnet"), "1")?;

    nft(&crate::nft::ruleset(&config))?;
    let table = &config.table;
    match config.pod_ipv6 {
        Some(pod6) => nft(&crate::nft::ruleset6(&config, pod6))?,
        None => nft(&format!(
            "add table ip6 {table}\ndelete table ip6 {table}\n"
        ))?,
    }

    let lease = config.lease(Some(mtu));
    let dhcp = Server::bind(bridge, lease.clone())?;
    let (ra, dhcp6) = match config.pod_ipv6 {
        Some(_) => {
            let ra_cfg = ndp::RaConfig::masquerade(
                BRIDGE_MAC,
                ndp::GATEWAY,
                ndp::PREFIX_LEN,
                Some(u32::from(mtu)),
            );
            let mut lease6 = dhcpv6::Lease6::new(ndp::GUEST, BRIDGE_MAC);
            lease6.dns_servers = config.dns_servers_v6.clone();
            (
                Some(ndp::Server::bind(bridge, &ra_cfg)?),
                Some(dhcpv6::Server::bind(bridge, lease6)?),
            )
        }
        None => (None, None),
    };
    tracing::info!(
        bridge, guest, pod_ip = ?config.pod_ip, mtu, ports = config.ports.len(),
        "masquerade binding set up"
    );
    Ok(Masquerade {
        config,
        lease,
        dhcp: Some(dhcp),
        ra,
        dhcp6,
    })
}

/// Removes what [`setup`] made in the current namespace (the table, the bridge; the guest
/// interface stays, detached); what is already gone is skipped.
pub fn teardown(cfg: &MasqueradeConfig) -> Result<(), Error> {
    cfg.check_names()?;
    let table = &cfg.table;
    nft(&format!("add table ip {table}\ndelete table ip {table}\n"))?;
    nft(&format!(
        "add table ip6 {table}\ndelete table ip6 {table}\n"
    ))?;
    if link_exists(&cfg.bridge)? {
        ip(&["link", "del", &cfg.bridge])?;
    }
    Ok(())
}

/// Creates the tap QEMU opens for the guest (`ip tuntap add mode tap user UID`, persistent, so
/// QEMU running as `owner_uid` can attach to it; `multi_queue` for a multiqueue virtio NIC); an
/// existing tap is kept.
pub fn create_tap(name: &str, owner_uid: u32, multi_queue: bool) -> Result<(), Error> {
    check_name(name)?;
    if !link_exists(name)? {
        let uid = owner_uid.to_string();
        let mut args = vec![
            "tuntap", "add", "dev", name, "mode", "tap", "user", &uid, "vnet_hdr",
        ];
        if multi_queue {
            args.push("multi_queue");
        }
        ip(&args)?;
    }
    Ok(())
}

/// IPv6 name servers of a resolv.conf.
pub fn resolv_conf_v6(text: &str) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv6Addr>().ok())
        .collect()
}

/// Name servers (IPv4) and search domains of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> (Vec<Ipv4Addr>, Vec<String>) {
    let (mut dns, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.extend(words.next().and_then(|w| w.parse::<Ipv4Addr>().ok())),
            Some("search") => search = words.map(str::to_owned).collect(),
            _ => {}
        }
    }
    (dns, search)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let (dns, search) = parse_resolv_conf(
            "# c\nnameserver 10.96.0.10\nnameserver fd00::1\nsearch a.svc b.local\noptions ndots:5\n",
        );
        assert_eq!(dns, vec![Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!(search, vec!["a.svc", "b.local"]);
    }

    #[test]
    fn names() {
        assert!(check_name("k6t-eth0").is_ok());
        assert!(check_table(TABLE).is_ok());
        assert!(check_table("a-b").is_err());
        for bad in ["", "a\"b", "x y", "-x", "0123456789abcdef", "a;b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        let mut cfg = MasqueradeConfig::new("tap0", [2, 0, 0, 0, 0, 1]);
        cfg.table = "t; flush ruleset".into();
        assert!(matches!(setup(&cfg), Err(Error::Table(_))));
    }

    #[test]
    fn lease_defaults() {
        let mut cfg = MasqueradeConfig::new("tap0", [2, 0, 0, 0, 0, 1]);
        cfg.search_domains = vec!["svc.cluster.local".into(), "ns.svc.cluster.local".into()];
        let lease = cfg.lease(Some(1400));
        assert_eq!(lease.address, GUEST);
        assert_eq!(lease.router, Some(GATEWAY));
        assert_eq!(lease.server_id, GATEWAY);
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.mtu, Some(1400));
        assert_eq!(lease.domain_name.as_deref(), Some("ns.svc.cluster.local"));
        assert!(lease.validate().is_ok());
    }
}
