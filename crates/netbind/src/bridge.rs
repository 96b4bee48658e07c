//! KubeVirt's bridge binding inside the pod's network namespace: the pod interface's IPv4
//! address, routes and MTU move to the guest. The pod interface (`eth0`) loses its address and
//! gets a new MAC, joins bridge `k6t-eth0` with the guest's tap, and our DHCP server hands the
//! guest exactly the pod's address, gateway, routes, DNS, hostname and MTU.
//!
//! What was found on the pod interface is written to a state file first, so a launcher that
//! runs again in the same pod (whose `eth0` no longer has the address) serves the same lease.
//! Like [`crate::masquerade`], everything acts on the calling thread's network namespace.

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use crate::Error;
use crate::dhcp::{ExtraOptions, Lease, Route, Server, longest_domain};
use crate::masquerade::BRIDGE;
use crate::sys::{
    check_name, interface_ipv4_cidr, interface_mac, interface_mtu, ip, link_exists, parse_cidr,
    sysctl, word_after,
};
use crate::{format_mac, parse_mac};

/// The address the bridge answers DHCP from: KubeVirt's `169.254.75.1<index>` for interface 0.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// Everything the binding needs; [`BridgeConfig::new`] fills in KubeVirt's names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The pod's interface (`eth0`) whose address the guest takes.
    pub pod_interface: String,
    /// The bridge (`k6t-eth0`).
    pub bridge: String,
    /// The guest-facing interface put on the bridge: QEMU's tap.
    pub guest_interface: String,
    /// The guest's MAC, the only client the DHCP server answers.
    pub guest_mac: [u8; 6],
    /// DHCP: DNS servers and search domains (the pod's resolv.conf).
    pub dns_servers: Vec<Ipv4Addr>,
    pub search_domains: Vec<String>,
    pub hostname: Option<String>,
    /// `dhcpOptions` (PXE boot, NTP, private options).
    pub extra: ExtraOptions,
    /// Where the pod interface's original address and routes are kept.
    pub state_file: PathBuf,
}

impl BridgeConfig {
    /// KubeVirt's names for the pod interface `eth0`.
    pub fn new(guest_interface: &str, guest_mac: [u8; 6], state_file: PathBuf) -> Self {
        Self {
            pod_interface: "eth0".into(),
            bridge: BRIDGE.into(),
            guest_interface: guest_interface.into(),
            guest_mac,
            dns_servers: Vec::new(),
            search_domains: Vec::new(),
            hostname: None,
            extra: ExtraOptions::default(),
            state_file,
        }
    }

    /// The lease the guest gets for what the pod interface had.
    pub fn lease(&self, pod: &PodInterface) -> Lease {
        let mut lease = Lease::new(self.guest_mac, pod.address, pod.prefix_len, BRIDGE_ADDRESS);
        let default = pod.routes.iter().find(|r| r.is_default());
        lease.router = default.map(|r| r.gateway);
        // Only when there is more than the default route: option 121 replaces option 3 for
        // clients that take it, so the lease sends the default route in it as well.
        if pod.routes.iter().any(|r| !r.is_default()) {
            lease.routes = pod
                .routes
                .iter()
                .filter(|r| !r.is_default())
                .copied()
                .collect();
            lease.routes.extend(default.copied());
        }
        lease.dns_servers = self.dns_servers.clone();
        lease.search_domains = self.search_domains.clone();
        lease.domain_name = longest_domain(&self.search_domains);
        lease.hostname = self.hostname.clone();
        lease.mtu = Some(pod.mtu);
        self.extra.apply(&mut lease);
        lease
    }
}

/// What the pod interface had before the guest took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInterface {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: [u8; 6],
    pub mtu: u16,
    /// Its routes other than the subnet's own, the default route among them.
    pub routes: Vec<Route>,
}

impl PodInterface {
    /// The state file's text: one `key=value` a line.
    pub fn encode(&self) -> String {
        let mut s = format!(
            "address={}/{}\nmac={}\nmtu={}\n",
            self.address,
            self.prefix_len,
            format_mac(&self.mac),
            self.mtu
        );
        for r in &self.routes {
            s.push_str(&format!(
                "route={}/{} {}\n",
                r.destination, r.prefix_len, r.gateway
            ));
        }
        s
    }

    /// Reads [`PodInterface::encode`]'s text back; `None` when anything is missing or wrong.
    pub fn decode(text: &str) -> Option<PodInterface> {
        let (mut address, mut mac, mut mtu, mut routes) = (None, None, None, Vec::new());
        for line in text.lines() {
            let (key, value) = line.split_once('=')?;
            match key {
                "address" => address = Some(parse_cidr(value)?),
                "mac" => mac = Some(parse_mac(value)?),
                "mtu" => mtu = Some(value.parse().ok()?),
                "route" => {
                    let (dst, gw) = value.split_once(' ')?;
                    let (destination, prefix_len) = parse_cidr(dst)?;
                    routes.push(Route {
                        destination,
                        prefix_len,
                        gateway: gw.parse().ok()?,
                    });
                }
                _ => return None,
            }
        }
        let (address, prefix_len) = address?;
        Some(PodInterface {
            address,
            prefix_len,
            mac: mac?,
            mtu: mtu?,
            routes,
        })
    }
}

/// The set-up binding; its DHCP server is the caller's to run ([`Bridge::take_dhcp`]).
#[derive(Debug)]
pub struct Bridge {
    pod: PodInterface,
    lease: Lease,
    dhcp: Option<Server>,
}

impl Bridge {
    /// The DHCP server bound on the bridge; run it with `server.run().await`.
    pub fn take_dhcp(&mut self) -> Option<Server> {
        self.dhcp.take()
    }

    /// The lease the guest is served.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// What the pod interface had.
    pub fn pod_interface(&self) -> &PodInterface {
        &self.pod
    }
}

/// Sets the binding up in the current network namespace; must be called inside a tokio runtime
/// (for the DHCP socket). Running it again in the same pod converges to the same state and
/// lease.
pub fn setup(cfg: &BridgeConfig) -> Result<Bridge, Error> {
    for name in [&cfg.pod_interface, &cfg.bridge, &cfg.guest_interface] {
        check_name(name)?;
    }
    let (pod_if, bridge, guest) = (
        cfg.pod_interface.as_str(),
        cfg.bridge.as_str(),
        cfg.guest_interface.as_str(),
    );
    let pod = match discover(pod_if)? {
        Some(found) => {
            write_state(cfg, &found)?;
            found
        }
        None => std::fs::read_to_string(&cfg.state_file)
            .ok()
            .and_then(|t| PodInterface::decode(&t))
            .ok_or_else(|| Error::Discover {
                ifname: pod_if.to_owned(),
                what: "IPv4 address (and no earlier state)",
            })?,
    };
    let mtu = pod.mtu.to_string();
    if !link_exists(bridge)? {
        ip(&["link", "add", bridge, "type", "bridge"])?;
    }
    // The bridge itself needs no IPv6 (and must not answer the guest's neighbour discovery).
    let _ = sysctl(&format!("net/ipv6/conf/{bridge}/disable_ipv6"), "1");
    ip(&[
        "addr",
        "replace",
        &format!("{BRIDGE_ADDRESS}/32"),
        "dev",
        bridge,
    ])?;
    ip(&["link", "set", bridge, "mtu", &mtu, "up"])?;
    if !pod_interface_bridged(pod_if, bridge)? {
        ip(&["-4", "addr", "flush", "dev", pod_if])?;
        ip(&["link", "set", pod_if, "down"])?;
        // The guest answers for the pod IP from now on; the pod interface gets a MAC of its own
        // (`0a:58` + the pod IP, as OVN names pod MACs) so the two never collide.
        let o = pod.address.octets();
        let mac = format_mac(&[0x0a, 0x58, o[0], o[1], o[2], o[3]]);
        ip(&["link", "set", pod_if, "address", &mac])?;
        ip(&["link", "set", pod_if, "master", bridge, "up"])?;
    }
    ip(&["link", "set", guest, "mtu", &mtu])?;
    ip(&["link", "set", guest, "master", bridge, "up"])?;

    let lease = cfg.lease(&pod);
    let dhcp = Server::bind(bridge, lease.clone())?;
    tracing::info!(
        bridge, guest, address = %pod.address, prefix = pod.prefix_len, mtu = pod.mtu,
        "bridge binding set up"
    );
    Ok(Bridge {
        pod,
        lease,
        dhcp: Some(dhcp),
    })
}

fn write_state(cfg: &BridgeConfig, pod: &PodInterface) -> Result<(), Error> {
    let tmp = cfg.state_file.with_extension("tmp");
    let io = |source| Error::State {
        path: cfg.state_file.display().to_string(),
        source,
    };
    std::fs::write(&tmp, pod.encode()).map_err(io)?;
    std::fs::rename(&tmp, &cfg.state_file).map_err(io)
}

fn pod_interface_bridged(pod_if: &str, bridge: &str) -> Result<bool, Error> {
    let out = ip(&["-o", "link", "show", "dev", pod_if])?;
    let mut words = out.split_whitespace();
    Ok(words.by_ref().any(|w| w == "master") && words.next() == Some(bridge))
}

/// The pod interface's address, MAC, MTU and routes; `None` when it has no IPv4 address (it
/// was given to the guest already).
fn discover(pod_if: &str) -> Result<Option<PodInterface>, Error> {
    let Some((address, prefix_len)) = interface_ipv4_cidr(pod_if)? else {
        return Ok(None);
    };
    Ok(Some(PodInterface {
        address,
        prefix_len,
        mac: interface_mac(pod_if)?,
        mtu: interface_mtu(pod_if)?,
        routes: parse_routes(&ip(&["-o", "-4", "route", "show", "dev", pod_if])?),
    }))
}

/// Routes of `ip -o -4 route show dev IF`, without the kernel's subnet route.
fn parse_routes(out: &str) -> Vec<Route> {
    out.lines()
        .filter(|l| !l.contains("proto kernel"))
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let dst = words.next()?;
            let (destination, prefix_len) = if dst == "default" {
                (Ipv4Addr::UNSPECIFIED, 0)
            } else if dst.contains('/') {
                parse_cidr(dst)?
            } else {
                (dst.parse().ok()?, 32)
            };
            let gateway = word_after(line, "via")
                .and_then(|g| g.parse().ok())
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            Some(Route {
                destination,
                prefix_len,
                gateway,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodInterface {
        PodInterface {
            address: Ipv4Addr::new(10, 244, 1, 7),
            prefix_len: 24,
            mac: [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc],
            mtu: 1450,
            routes: vec![Route::default_via(Ipv4Addr::new(10, 244, 1, 1))],
        }
    }

    #[test]
    fn state_round_trip() {
        let mut p = pod();
        p.routes.insert(
            0,
            Route {
                destination: Ipv4Addr::new(10, 96, 0, 0),
                prefix_len: 12,
                gateway: Ipv4Addr::UNSPECIFIED,
            },
        );
        assert_eq!(PodInterface::decode(&p.encode()), Some(p));
        for bad in [
            "",
            "address=1.2.3.4\nmac=00:00:00:00:00:00\nmtu=1",
            "x=1",
            "address=1.2.3.4/40",
        ] {
            assert_eq!(PodInterface::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn routes_of_ip_output() {
        let out = "default via 10.244.1.1 dev eth0 onlink \n10.244.1.0/24 dev eth0 proto kernel scope link src 10.244.1.7 \n10.96.0.0/12 dev eth0 scope link \n192.0.2.9 via 10.244.1.1 dev eth0 \n";
        let r = parse_routes(out);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], Route::default_via(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(r[1].gateway, Ipv4Addr::UNSPECIFIED);
        assert_eq!(
            (r[2].destination, r[2].prefix_len),
            (Ipv4Addr::new(192, 0, 2, 9), 32)
        );
    }

    #[test]
    fn lease_carries_the_pod_address() {
        let mut cfg = BridgeConfig::new("tap0", [2, 0, 0, 0, 0, 1], PathBuf::from("/nonexistent"));
        cfg.hostname = Some("vm1".into());
        cfg.dns_servers = vec![Ipv4Addr::new(10, 96, 0, 10)];
        let lease = cfg.lease(&pod());
        assert_eq!(lease.address, Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.router, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert!(lease.routes.is_empty());
        assert_eq!(lease.server_id, BRIDGE_ADDRESS);
        assert_eq!(lease.mtu, Some(1450));
        assert!(lease.validate().is_ok());
        let mut with_more = pod();
        with_more.routes.insert(
            0,
            Route {
                destination: Ipv4Addr::new(10, 96, 0, 0),
                prefix_len: 12,
                gateway: Ipv4Addr::UNSPECIFIED,
            },
        );
        let lease = cfg.lease(&with_more);
        assert_eq!(lease.routes.len(), 2);
        assert!(lease.routes[1].is_default());
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("0a:58:0a:f4:01:07"),
            Some([0x0a, 0x58, 10, 244, 1, 7])
        );
        assert_eq!(
            format_mac(&[0x0a, 0x58, 10, 244, 1, 7]),
            "0a:58:0a:f4:01:07"
        );
        for bad in [
            "",
            "0a:58:0a:f4:01",
            "0a:58:0a:f4:01:07:00",
            "0a:58:0a:f4:01:7",
            "zz:58:0a:f4:01:07",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
