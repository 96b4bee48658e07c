//! Pod networking as CNI's bridge plugin does it, with iproute2 and nftables as subprocesses: the
//! node's bridge (gateway address of the pod CIDR), forwarding and masquerade; per pod a network
//! namespace, a veth pair from the bridge to the pod's `eth0`, its address and default route, and
//! the resolv.conf `ip netns exec` mounts into it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::cmd::{run, run_json, run_with_stdin};
use super::ipam::{Cidr, ipv6_of};
use super::{SandboxConfig, SandboxError};

/// Where `ip netns add` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where `ip netns exec NAME` takes files to bind-mount over `/etc` from.
const ETC_NETNS: &str = "/etc/netns";

/// Whether an interface of this name exists in our namespace.
/// Asks `ip`, not /sys/class/net: sysfs shows the namespace it was mounted in, which is not ours
/// when the agent runs in a namespace of its own (`nsenter --net`).
pub fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the named network namespace exists.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// An interface's MTU.
pub fn link_mtu(name: &str) -> Result<u32, SandboxError> {
    let v = run_json("ip", &["-j", "link", "show", "dev", name])?;
    v.get(0)
        .and_then(|l| l.get("mtu"))
        .and_then(Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| SandboxError::Command {
            cmd: format!("ip -j link show dev {name}"),
            stderr: "no mtu in its output".into(),
        })
}

/// Node set-up, idempotent: the bridge with the pod CIDR's gateway address, IPv4 forwarding,
/// our nftables table (masquerade out of the pod CIDR, forward accepts), and accept rules in any
/// host forward chain whose policy is drop.
pub fn setup_node(cfg: &SandboxConfig, cidr: Cidr) -> Result<(), SandboxError> {
    let gw = cidr
        .gateway()
        .ok_or_else(|| SandboxError::BadCidr(cidr.to_string()))?;
    let br = cfg.bridge.as_str();
    if !link_exists(br)
        && let Err(e) = run("ip", &["link", "add", br, "type", "bridge"])
        && !link_exists(br)
    {
        return Err(e);
    }
    // One gateway MAC on every node: a guest that moved here keeps its ARP entry for its
    // gateway (and a bridge's MAC no longer follows its ports as pods come and go).
    run("ip", &["link", "set", br, "address", BRIDGE_MAC])?;
    // Guests that moved here hold addresses of other nodes' CIDRs, with those CIDRs' gateways:
    // the bridge answers ARP for whatever it routes elsewhere.
    let proxy_arp = format!("/proc/sys/net/ipv4/conf/{br}/proxy_arp");
    std::fs::write(&proxy_arp, "1").map_err(|e| SandboxError::io(Path::new(&proxy_arp), e))?;
    let addr = format!("{gw}/{}", cidr.prefix());
    run("ip", &["addr", "replace", &addr, "dev", br])?;
    // Dual stack: the IPv6 gateway that goes with the IPv4 one (no duplicate detection: the
    // address is ours by construction, and pods must not wait for it).
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{br}/disable_ipv6"), "0");
    let addr6 = format!("{}/{}", ipv6_of(gw), cidr.ipv6_prefix());
    run("ip", &["addr", "replace", &addr6, "dev", br, "nodad"])?;
    run("ip", &["link", "set", br, "up"])?;
    enable_forwarding()?;
    run_with_stdin("nft", &["-f", "-"], Some(&nft_script(cfg, cidr)))?;
    // Answers to a hosted address's own connections (marked by the table) go back onto the
    // bridge, even while the address is still routed to the node the guest comes from.
    let (mark, table) = (reply_mark(cfg).to_string(), reply_mark(cfg).to_string());
    run(
        "ip",
        &["route", "replace", "default", "dev", br, "table", &table],
    )?;
    let rules = run("ip", &["rule", "show", "fwmark", &mark])?;
    if rules.trim().is_empty() {
        run("ip", &["rule", "add", "fwmark", &mark, "lookup", &table])?;
    }
    let ruleset = run_json("nft", &["-j", "list", "ruleset"])?;
    let comment = forward_comment(cfg);
    for chain in dropping_forward_chains(&ruleset, &cfg.nft_table) {
        if !rule_handles(&ruleset, &chain, &comment).is_empty() {
            continue;
        }
        for dir in ["oifname", "iifname"] {
            let rule = format!(
                "insert rule {} {} {} {dir} \"{br}\" accept comment \"{comment}\"",
                chain.family, chain.table, chain.name
            );
            run_with_stdin("nft", &["-f", "-"], Some(&rule))?;
        }
    }
    Ok(())
}

/// Removes what [`setup_node`] made: the bridge, our table and our rules in others' chains.
/// For tests and uninstall; a running node keeps its bridge.
pub fn teardown_node(cfg: &SandboxConfig) -> Result<(), SandboxError> {
    let mut first = None;
    if link_exists(&cfg.bridge) {
        keep_first(
            &mut first,
            run("ip", &["link", "del", &cfg.bridge]).map(drop),
        );
    }
    let mark = reply_mark(cfg).to_string();
    while run("ip", &["rule", "show", "fwmark", &mark]).is_ok_and(|r| !r.trim().is_empty()) {
        if let Err(e) = run("ip", &["rule", "del", "fwmark", &mark]) {
            keep_first(&mut first, Err(e));
            break;
        }
    }
    let table = &cfg.nft_table;
    for family in ["ip", "ip6"] {
        if run("nft", &["list", "table", family, table]).is_ok() {
            keep_first(
                &mut first,
                run("nft", &["delete", "table", family, table]).map(drop),
            );
        }
    }
    if let Ok(ruleset) = run_json("nft", &["-j", "list", "ruleset"]) {
        let comment = forward_comment(cfg);
        for (chain, _) in forward_chains(&ruleset) {
            for handle in rule_handles(&ruleset, &chain, &comment) {
                let h = handle.to_string();
                keep_first(
                    &mut first,
                    run(
                        "nft",
                        &[
                            "delete",
                            "rule",
                            &chain.family,
                            &chain.table,
                            &chain.name,
                            "handle",
                            &h,
                        ],
                    )
                    .map(drop),
                );
            }
        }
    }
    first.map_or(Ok(()), Err)
}

fn keep_first(first: &mut Option<SandboxError>, r: Result<(), SandboxError>) {
    if let Err(e) = r
        && first.is_none()
    {
        *first = Some(e);
    }
}

fn enable_forwarding() -> Result<(), SandboxError> {
    for path in [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
    ] {
        let path = Path::new(path);
        if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
            continue;
        }
        std::fs::write(path, "1").map_err(|e| SandboxError::io(path, e))?;
    }
    Ok(())
}

/// The routing protocol number that marks the routes a node agent installs towards pods on
/// other nodes (`ip route show proto 77`).
pub const ROUTE_PROTO: &str = "77";

/// A route to pod addresses: through another node (`via` its address), or onto the node bridge
/// (a guest that moved here with another node's address).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRoute {
    pub dst: Cidr,
    pub via: Option<Ipv4Addr>,
}

impl std::fmt::Display for PodRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.via {
            Some(gw) => write!(f, "{} via {gw}", self.dst),
            None => write!(f, "{} on the bridge", self.dst),
        }
    }
}

/// Installs (or changes) route `r` in the main table.
pub fn replace_route(cfg: &SandboxConfig, r: &PodRoute) -> Result<(), SandboxError> {
    let dst = r.dst.to_string();
    match r.via {
        Some(gw) => run(
            "ip",
            &[
                "route",
                "replace",
                &dst,
                "via",
                &gw.to_string(),
                "proto",
                ROUTE_PROTO,
            ],
        ),
        None => run(
            "ip",
            &[
                "route",
                "replace",
                &dst,
                "dev",
                &cfg.bridge,
                "proto",
                ROUTE_PROTO,
            ],
        ),
    }
    .map(drop)
}

/// Removes our route to `r.dst`, if it is still there.
pub fn delete_route(r: &PodRoute) -> Result<(), SandboxError> {
    let dst = r.dst.to_string();
    match run("ip", &["route", "del", &dst, "proto", ROUTE_PROTO]) {
        Ok(_) => Ok(()),
        Err(SandboxError::Command { stderr, .. }) if stderr.contains("No such process") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The node bridge's MAC address, the same on every node (locally administered).
pub const BRIDGE_MAC: &str = "0a:6b:76:00:00:01";

/// The set in our `ip` table of the addresses of other nodes' CIDRs whose guests run here
/// (they moved here live): masqueraded like the node's own pods.
pub const HOSTED_SET: &str = "hosted";

/// Makes [`HOSTED_SET`] hold exactly `ips` (one transaction).
pub fn set_hosted(cfg: &SandboxConfig, ips: &[Ipv4Addr]) -> Result<(), SandboxError> {
    let t = &cfg.nft_table;
    let mut script = format!("flush set ip {t} {HOSTED_SET}\n");
    if !ips.is_empty() {
        let list: Vec<String> = ips.iter().map(Ipv4Addr::to_string).collect();
        script.push_str(&format!(
            "add element ip {t} {HOSTED_SET} {{ {} }}\n",
            list.join(", ")
        ));
    }
    run_with_stdin("nft", &["-f", "-"], Some(&script)).map(drop)
}

/// The packet mark (and routing table number) of answers to connections a hosted address
/// opened: one per node bridge (a host may carry several, in tests), in 0x4b000..0x4bfff.
pub fn reply_mark(cfg: &SandboxConfig) -> u32 {
    let h = cfg
        .bridge
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    0x4b000 + h % 0x1000
}

/// Adds `ip` to [`HOSTED_SET`] (a migration target's sandbox with another node's address: its
/// launcher must reach the API server before the guest moves).
pub fn add_hosted(cfg: &SandboxConfig, ip: Ipv4Addr) -> Result<(), SandboxError> {
    let script = format!("add element ip {} {HOSTED_SET} {{ {ip} }}\n", cfg.nft_table);
    run_with_stdin("nft", &["-f", "-"], Some(&script)).map(drop)
}

/// Our table, replaced as a whole in one transaction (so a re-run never duplicates rules).
fn nft_script(cfg: &SandboxConfig, cidr: Cidr) -> String {
    let t = &cfg.nft_table;
    let br = &cfg.bridge;
    let mut out = String::new();
    for (family, saddr, range) in [("ip", "ip", cidr.to_string()), ("ip6", "ip6", cidr.ipv6())] {
        let (set, hosted) = if family == "ip" {
            let mark = reply_mark(cfg);
            (
                format!(
                    "\tset {HOSTED_SET} {{ type ipv4_addr; }}\n\
                     \tchain prerouting {{\n\
                     \t\ttype filter hook prerouting priority mangle; policy accept;\n\
                     \t\tct direction reply ct original ip saddr @{HOSTED_SET} meta mark set {mark:#x}\n\
                     \t}}\n"
                ),
                format!("\t\tip saddr @{HOSTED_SET} oifname != \"{br}\" masquerade\n"),
            )
        } else {
            (String::new(), String::new())
        };
        out.push_str(&format!(
            "table {family} {t} {{}}\n\
             delete table {family} {t}\n\
             table {family} {t} {{\n\
             {set}\
             \tchain postrouting {{\n\
             \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
             \t\t{saddr} saddr {range} oifname != \"{br}\" masquerade\n\
             {hosted}\
             \t}}\n\
             \tchain forward {{\n\
             \t\ttype filter hook forward priority filter; policy accept;\n\
             \t\tiifname \"{br}\" accept\n\
             \t\toifname \"{br}\" accept\n\
             \t}}\n\
             }}\n"
        ));
    }
    out
}

fn forward_comment(cfg: &SandboxConfig) -> String {
    format!("kuvirt {}", cfg.bridge)
}

/// A base chain named by family, table and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainRef {
    pub family: String,
    pub table: String,
    pub name: String,
}

/// IPv4 forward base chains (families `ip` and `inet`).
fn forward_chains(ruleset: &Value) -> Vec<(ChainRef, String)> {
    let Some(items) = ruleset.get("nftables").and_then(Value::as_array) else {
        return vec![];
    };
    items
        .iter()
        .filter_map(|i| i.get("chain"))
        .filter(|c| c.get("hook").and_then(Value::as_str) == Some("forward"))
        .filter_map(|c| {
            let s = |k: &str| c.get(k).and_then(Value::as_str).map(str::to_string);
            let family = s("family")?;
            matches!(family.as_str(), "ip" | "inet").then_some(())?;
            Some((
                ChainRef {
                    family,
                    table: s("table")?,
                    name: s("name")?,
                },
                s("policy").unwrap_or_default(),
            ))
        })
        .collect()
}

/// The host's forward chains (not in our table) that drop what no rule accepts.
pub fn dropping_forward_chains(ruleset: &Value, our_table: &str) -> Vec<ChainRef> {
    forward_chains(ruleset)
        .into_iter()
        .filter(|(c, policy)| policy == "drop" && !(c.family == "ip" && c.table == our_table))
        .map(|(c, _)| c)
        .collect()
}

/// Handles of the rules in `chain` carrying `comment`.
fn rule_handles(ruleset: &Value, chain: &ChainRef, comment: &str) -> Vec<u64> {
    let Some(items) = ruleset.get("nftables").and_then(Value::as_array) else {
        return vec![];
    };
    items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| {
            let is = |k: &str, v: &str| r.get(k).and_then(Value::as_str) == Some(v);
            is("family", &chain.family)
                && is("table", &chain.table)
                && is("chain", &chain.name)
                && is("comment", comment)
        })
        .filter_map(|r| r.get("handle").and_then(Value::as_u64))
        .collect()
}

/// One pod's network: namespace, veth pair on the bridge, `eth0` with `ip`, default route via
/// the bridge. Every step checks or replaces, so it may run again over a sandbox that exists.
pub fn setup_pod(
    cfg: &SandboxConfig,
    netns: &str,
    veth: &str,
    ip: Ipv4Addr,
    cidr: Cidr,
) -> Result<(), SandboxError> {
    let gw = cidr
        .gateway()
        .ok_or_else(|| SandboxError::BadCidr(cidr.to_string()))?;
    let mtu = link_mtu(&cfg.bridge)?.to_string();
    if !netns_exists(netns)
        && let Err(e) = run("ip", &["netns", "add", netns])
        && !netns_exists(netns)
    {
        return Err(e);
    }
    if !link_exists(veth) {
        run(
            "ip",
            &[
                "link", "add", veth, "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
                &mtu, "netns", netns,
            ],
        )?;
    }
    run(
        "ip",
        &[
            "link",
            "set",
            veth,
            "mtu",
            &mtu,
            "master",
            &cfg.bridge,
            "up",
        ],
    )?;
    let addr = format!("{ip}/{}", cidr.prefix());
    let gw6 = ipv6_of(gw).to_string();
    let gw = gw.to_string();
    run("ip", &["-n", netns, "link", "set", "lo", "up"])?;
    run(
        "ip",
        &["-n", netns, "addr", "replace", &addr, "dev", "eth0"],
    )?;
    let addr6 = format!("{}/{}", ipv6_of(ip), cidr.ipv6_prefix());
    run(
        "ip",
        &[
            "-n", netns, "addr", "replace", &addr6, "dev", "eth0", "nodad",
        ],
    )?;
    run("ip", &["-n", netns, "link", "set", "eth0", "up"])?;
    run(
        "ip",
        &[
            "-n", netns, "route", "replace", "default", "via", &gw, "dev", "eth0",
        ],
    )?;

    run(
        "ip",
        &[
            "-n", netns, "-6", "route", "replace", "default", "via", &gw6, "dev", "eth0",
        ],
    )?;
    Ok(())
}

/// Removes one pod's network: the veth (its peer goes with it), the namespace and its /etc files.
/// Whatever is already gone is skipped.
pub fn teardown_pod(netns: &str, veth: &str) -> Result<(), SandboxError> {
    let mut first = None;
    if link_exists(veth)
        && let Err(e) = run("ip", &["link", "del", veth])
        && link_exists(veth)
    {
        keep_first(&mut first, Err(e));
    }
    if netns_exists(netns)
        && let Err(e) = run("ip", &["netns", "del", netns])
        && netns_exists(netns)
    {
        keep_first(&mut first, Err(e));
    }
    let etc = etc_dir(netns);
    match std::fs::remove_dir_all(&etc) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => keep_first(&mut first, Err(SandboxError::io(&etc, e))),
    }
    first.map_or(Ok(()), Err)
}

/// `/etc/netns/NAME`: `ip netns exec NAME` bind-mounts each file in it over `/etc/FILE`.
pub fn etc_dir(netns: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(netns)
}

/// Writes the pod's resolv.conf from the host's.
pub fn write_resolv_conf(netns: &str) -> Result<PathBuf, SandboxError> {
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let resolved = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
    let text = pod_resolv_conf(&host, resolved.as_deref());
    let dir = etc_dir(netns);
    std::fs::create_dir_all(&dir).map_err(|e| SandboxError::io(&dir, e))?;
    let path = dir.join("resolv.conf");
    std::fs::write(&path, text).map_err(|e| SandboxError::io(&path, e))?;
    Ok(path)
}

/// The resolv.conf a pod gets: the host's, unless that points at a resolver on the host's
/// loopback (systemd-resolved's 127.0.0.53), which a pod cannot reach; then the upstream list
/// systemd-resolved keeps, when there is one (kubelet's `--resolv-conf` advice).
pub fn pod_resolv_conf(host: &str, systemd_upstream: Option<&str>) -> String {
    let loopback = host.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("nameserver")
            && w.next()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .is_some_and(|a| a.is_loopback())
    });
    match systemd_upstream {
        Some(up) if loopback => up.to_string(),
        _ => host.to_string(),
    }
}

/// This host's first global IPv4 address outside the pod bridge.
pub fn host_ipv4(bridge: &str) -> Option<Ipv4Addr> {
    let v = run_json("ip", &["-j", "-4", "addr", "show", "scope", "global"]).ok()?;
    v.as_array()?
        .iter()
        .filter(|l| l.get("ifname").and_then(Value::as_str) != Some(bridge))
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|a| a.get("local")?.as_str()?.parse::<Ipv4Addr>().ok())
        .find(|a| !a.is_loopback())
}

/// The IPv4 addresses of `dev` inside the namespace `netns`.
pub fn addresses_in(netns: &str, dev: &str) -> Result<Vec<Ipv4Addr>, SandboxError> {
    let v = run_json("ip", &["-n", netns, "-j", "-4", "addr", "show", "dev", dev])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|a| a.get("local")?.as_str()?.parse::<Ipv4Addr>().ok())
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn a_loopback_resolver_is_replaced_by_the_upstream_list() {
        let host = "nameserver 127.0.0.53\noptions edns0\n";
        let up = "nameserver 192.0.2.53\n";
        assert_eq!(pod_resolv_conf(host, Some(up)), up);
        assert_eq!(pod_resolv_conf(host, None), host);
        let plain = "search example.org\nnameserver 10.0.0.2\n";
        assert_eq!(pod_resolv_conf(plain, Some(up)), plain);
    }

    #[test]
    fn forward_chains_with_a_drop_policy_are_found() {
        let ruleset = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "filter"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD",
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "fw", "name": "fwd",
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "kuvirt", "name": "forward",
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip6", "table": "f6", "name": "fwd",
                       "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"rule": {"family": "ip", "table": "filter", "chain": "FORWARD", "handle": 7,
                      "comment": "kuvirt kuvirt0", "expr": []}},
        ]});
        let drop = dropping_forward_chains(&ruleset, "kuvirt");
        assert_eq!(
            drop,
            vec![ChainRef {
                family: "ip".into(),
                table: "filter".into(),
                name: "FORWARD".into()
            }]
        );
        assert_eq!(rule_handles(&ruleset, &drop[0], "kuvirt kuvirt0"), vec![7]);
        assert!(rule_handles(&ruleset, &drop[0], "kuvirt other0").is_empty());
    }

    #[test]
    fn the_nft_table_masquerades_the_pod_cidr_off_the_bridge() {
        let cfg = SandboxConfig::new("/tmp/x");
        let s = nft_script(&cfg, "10.244.1.0/24".parse().unwrap());
        assert!(
            s.contains("ip saddr 10.244.1.0/24 oifname != \"kuvirt0\" masquerade"),
            "{s}"
        );
        assert!(
            s.starts_with("table ip kuvirt {}\ndelete table ip kuvirt\n"),
            "{s}"
        );
    }
}
