//! The masquerade binding's nftables ruleset (KubeVirt's chains and rules, IPv4), rendered as an
//! `nft -f -` script that replaces our table atomically, so loading it twice is harmless.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::masquerade::{MasqueradeConfig, Protocol};

/// KubeVirt's chain for traffic entering through the pod interface (DNAT to the guest).
pub const PRE_INBOUND: &str = "KUBEVIRT_PREINBOUND";
/// KubeVirt's chain for traffic leaving towards the bridge (SNAT of the pod's loopback).
pub const POST_INBOUND: &str = "KUBEVIRT_POSTINBOUND";

/// The script that (re)creates `table ip <cfg.table>`: the table is declared, deleted and made
/// again in one transaction.
///
/// - postrouting: the guest's traffic is masqueraded (to the pod IP on the pod interface);
///   traffic towards the bridge goes through `KUBEVIRT_POSTINBOUND`, which gives connections
///   from 127.0.0.1 the gateway address as source.
/// - prerouting: traffic entering through the pod interface goes through `KUBEVIRT_PREINBOUND`:
///   DNAT to the guest for the declared ports, or for everything when none are declared.
/// - output: the pod's own connections to 127.0.0.1 and to the pod IP on those ports are sent to
///   the guest too, except `local_ports` (the pod's own services, e.g. the API proxy).
pub fn ruleset(cfg: &MasqueradeConfig) -> String {
    let guest = cfg.guest_address;
    let gateway = cfg.gateway;
    let mut local = vec![Ipv4Addr::LOCALHOST];
    local.extend(cfg.pod_ip.filter(|ip| !ip.is_loopback()));
    let local = set(local.iter());

    let mut out = String::new();
    table_head(&mut out, "ip", cfg);

    let _ = writeln!(out, "  chain input {{");
    let _ = writeln!(out, "    type nat hook input priority 100; policy accept;");
    let _ = writeln!(out, "  }}");

    let _ = writeln!(out, "  chain output {{");
    let _ = writeln!(
        out,
        "    type nat hook output priority -100; policy accept;"
    );
    if !cfg.local_ports.is_empty() {
        let _ = writeln!(
            out,
            "    ip daddr {local} tcp dport {} counter return",
            set(cfg.local_ports.iter())
        );
    }
    if cfg.ports.is_empty() {
        let _ = writeln!(out, "    ip daddr {local} counter dnat to {guest}");
    } else {
        for port in &cfg.ports {
            let _ = writeln!(
                out,
                "    ip daddr {local} {} dport {} counter dnat to {guest}",
                port.protocol.nft(),
                port.port
            );
        }
    }
    let _ = writeln!(out, "  }}");

    let _ = writeln!(out, "  chain postrouting {{");
    let _ = writeln!(
        out,
        "    type nat hook postrouting priority 100; policy accept;"
    );
    let _ = writeln!(out, "    ip saddr {guest} counter masquerade");
    let _ = writeln!(
        out,
        "    oifname \"{}\" counter jump {POST_INBOUND}",
        cfg.bridge
    );
    let _ = writeln!(out, "  }}");

    let _ = writeln!(out, "  chain {PRE_INBOUND} {{");
    if cfg.ports.is_empty() {
        let _ = writeln!(out, "    counter dnat to {guest}");
    } else {
        for m in declared_ports(cfg) {
            let _ = writeln!(out, "    {m} counter dnat to {guest}");
        }
    }
    let _ = writeln!(out, "  }}");

    let _ = writeln!(out, "  chain {POST_INBOUND} {{");
    let loopback = Ipv4Addr::LOCALHOST;
    if cfg.ports.is_empty() {
        let _ = writeln!(
            out,
            "    ip saddr {{ {loopback} }} counter snat to {gateway}"
        );
    } else {
        for port in &cfg.ports {
            let _ = writeln!(
                out,
                "    {} dport {} ip saddr {{ {loopback} }} counter snat to {gateway}",
                port.protocol.nft(),
                port.port
            );
        }
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

/// Opens `table FAMILY <cfg.table>` after deleting an older one (`add` makes the delete valid
/// on a first run), with the prerouting chain that sends the pod interface's traffic to
/// `KUBEVIRT_PREINBOUND`.
fn table_head(out: &mut String, family: &str, cfg: &MasqueradeConfig) {
    let table = &cfg.table;
    let _ = writeln!(out, "add table {family} {table}");
    let _ = writeln!(out, "delete table {family} {table}");
    let _ = writeln!(out, "table {family} {table} {{");
    let _ = writeln!(out, "  chain prerouting {{");
    let _ = writeln!(
        out,
        "    type nat hook prerouting priority -100; policy accept;"
    );
    let _ = writeln!(
        out,
        "    iifname \"{}\" counter jump {PRE_INBOUND}",
        cfg.pod_interface
    );
    let _ = writeln!(out, "  }}");
}

/// The declared ports as matches, one per protocol: `tcp dport { 22, 80 }`.
fn declared_ports(cfg: &MasqueradeConfig) -> Vec<String> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .filter_map(|protocol| {
            let ports: Vec<u16> = cfg
                .ports
                .iter()
                .filter(|p| p.protocol == protocol)
                .map(|p| p.port)
                .collect();
            (!ports.is_empty()).then(|| format!("{} dport {}", protocol.nft(), set(ports.iter())))
        })
        .collect()
}

/// `{ a, b }`, sorted and without duplicates.
fn set<'a, T: Ord + std::fmt::Display + 'a>(items: impl Iterator<Item = &'a T>) -> String {
    let mut items: Vec<&T> = items.collect();
    items.sort();
    items.dedup();
    let items: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The IPv6 half (`table ip6 <cfg.table>`), for a pod with IPv6 address `pod_ipv6`: the guest
/// (fd10:0:2::2) masqueraded out, and TCP/UDP to the pod's IPv6 address from the pod interface
/// (or from the pod itself) DNAT'd to the guest — the declared ports, or all when none are.
/// IPv6 has no `route_localnet`, so the pod's ::1 is not forwarded.
pub fn ruleset6(cfg: &MasqueradeConfig, pod_ipv6: Ipv6Addr) -> String {
    let guest = crate::ndp::GUEST;
    let matches = if cfg.ports.is_empty() {
        vec!["meta l4proto { tcp, udp }".to_owned()]
    } else {
        declared_ports(cfg)
    };
    let mut out = String::new();
    table_head(&mut out, "ip6", cfg);
    let _ = writeln!(out, "  chain output {{");
    let _ = writeln!(
        out,
        "    type nat hook output priority -100; policy accept;"
    );
    if !cfg.local_ports.is_empty() {
        let _ = writeln!(
            out,
            "    ip6 daddr {pod_ipv6} tcp dport {} counter return",
            set(cfg.local_ports.iter())
        );
    }
    for m in &matches {
        let _ = writeln!(out, "    ip6 daddr {pod_ipv6} {m} counter dnat to {guest}");
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  chain postrouting {{");
    let _ = writeln!(
        out,
        "    type nat hook postrouting priority 100; policy accept;"
    );
    let _ = writeln!(out, "    ip6 saddr {guest} counter masquerade");
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "  chain {PRE_INBOUND} {{");
    for m in &matches {
        let _ = writeln!(out, "    ip6 daddr {pod_ipv6} {m} counter dnat to {guest}");
    }
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masquerade::Port;

    fn config(ports: Vec<Port>) -> MasqueradeConfig {
        let mut cfg = MasqueradeConfig::new("tap0", [2, 0, 0, 0, 0, 1]);
        cfg.pod_ip = Some(Ipv4Addr::new(10, 244, 0, 7));
        cfg.ports = ports;
        cfg
    }

    #[test]
    fn no_ports_forwards_everything() {
        let text = ruleset(&config(vec![]));
        let want = "\
add table ip kuvirt_masquerade
delete table ip kuvirt_masquerade
table ip kuvirt_masquerade {
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    iifname \"eth0\" counter jump KUBEVIRT_PREINBOUND
  }
  chain input {
    type nat hook input priority 100; policy accept;
  }
  chain output {
    type nat hook output priority -100; policy accept;
    ip daddr { 10.244.0.7, 127.0.0.1 } counter dnat to 10.0.2.2
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    ip saddr 10.0.2.2 counter masquerade
    oifname \"k6t-eth0\" counter jump KUBEVIRT_POSTINBOUND
  }
  chain KUBEVIRT_PREINBOUND {
    counter dnat to 10.0.2.2
  }
  chain KUBEVIRT_POSTINBOUND {
    ip saddr { 127.0.0.1 } counter snat to 10.0.2.1
  }
}
";
        assert_eq!(text, want);
    }

    #[test]
    fn declared_ports_only() {
        let mut cfg = config(vec![
            Port::tcp(80),
            Port {
                protocol: Protocol::Udp,
                port: 53,
            },
            Port::tcp(22),
        ]);
        cfg.local_ports = vec![6443, 7000];
        let text = ruleset(&cfg);
        for line in [
            "    ip daddr { 10.244.0.7, 127.0.0.1 } tcp dport { 6443, 7000 } counter return\n",
            "    ip daddr { 10.244.0.7, 127.0.0.1 } tcp dport 80 counter dnat to 10.0.2.2\n",
            "    ip daddr { 10.244.0.7, 127.0.0.1 } udp dport 53 counter dnat to 10.0.2.2\n",
            "    tcp dport { 22, 80 } counter dnat to 10.0.2.2\n",
            "    udp dport { 53 } counter dnat to 10.0.2.2\n",
            "    tcp dport 22 ip saddr { 127.0.0.1 } counter snat to 10.0.2.1\n",
            "    udp dport 53 ip saddr { 127.0.0.1 } counter snat to 10.0.2.1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("    counter dnat to 10.0.2.2\n"), "{text}");
        // the skip comes before any DNAT in the output chain
        let skip = text.find("counter return").unwrap();
        assert!(skip < text.find("dport 80 counter dnat").unwrap());
    }

    #[test]
    fn without_pod_ip_only_loopback() {
        let mut cfg = config(vec![]);
        cfg.pod_ip = None;
        assert!(ruleset(&cfg).contains("ip daddr { 127.0.0.1 } counter dnat to 10.0.2.2"));
    }
}

#[cfg(test)]
mod ipv6_rules {
    use super::*;
    use crate::masquerade::Port;

    #[test]
    fn ports_declared_or_all() {
        let pod6: Ipv6Addr = "fd6b:7576::af4:5".parse().unwrap_or(Ipv6Addr::LOCALHOST);
        let mut cfg = MasqueradeConfig::new("tap0", [2, 0, 0, 0, 0, 1]);
        cfg.local_ports = vec![6443];
        let all = ruleset6(&cfg, pod6);
        assert!(
            all.starts_with(
                "add table ip6 kuvirt_masquerade\ndelete table ip6 kuvirt_masquerade\n"
            )
        );
        assert!(
            all.contains(&format!(
                "ip6 daddr {pod6} meta l4proto {{ tcp, udp }} counter dnat to fd10:0:2::2"
            )),
            "{all}"
        );
        assert!(
            all.contains(&format!(
                "ip6 daddr {pod6} tcp dport {{ 6443 }} counter return"
            )),
            "{all}"
        );
        assert!(
            all.contains("ip6 saddr fd10:0:2::2 counter masquerade"),
            "{all}"
        );
        cfg.ports = vec![Port::tcp(80)];
        let some = ruleset6(&cfg, pod6);
        assert!(
            some.contains(&format!(
                "ip6 daddr {pod6} tcp dport {{ 80 }} counter dnat to fd10:0:2::2"
            )),
            "{some}"
        );
        assert!(!some.contains("l4proto"), "{some}");
    }
}
