//! Making 169.254.169.254 reachable from the guest inside the pod's namespace (the calling
//! thread's): the address on the pod's loopback, so a packet routed to it is delivered here.
//! Behind masquerade the guest's gateway is the pod already. On a bridge the guest's gateway is
//! the node, so an nftables `bridge` rule hands its metadata packets to the pod's own stack
//! (KubeVirt has nothing of the kind: its bridge binding offers no metadata service) and a
//! host route sends the answers back to the guest across the bridge.

use std::net::Ipv4Addr;

use crate::Error;
use crate::sys::{check_name, check_table, interface_mac, ip, nft};

/// Our nftables `bridge` table in the pod's namespace.
pub const BRIDGE_TABLE: &str = "kuvirt_metadata";

/// The service address on the pod's loopback (behind masquerade that is all it takes).
pub fn local_address() -> Result<(), Error> {
    let addr = super::SERVICE_ADDR.ip().to_string();
    ip(&["addr", "replace", &format!("{addr}/32"), "dev", "lo"])?;
    ip(&["link", "set", "lo", "up"]).map(drop)
}

/// The bridge binding's part: the address, a route to the guest's address over `bridge`, and
/// the rule that delivers the guest's TCP packets for port 80 of the service address (sent to
/// its gateway's MAC) to the bridge's own stack instead of forwarding them.
pub fn bridged(bridge: &str, guest_interface: &str, guest: Ipv4Addr) -> Result<(), Error> {
    check_name(bridge)?;
    check_name(guest_interface)?;
    check_table(BRIDGE_TABLE)?;
    local_address()?;
    ip(&["route", "replace", &format!("{guest}/32"), "dev", bridge])?;
    let mac = crate::format_mac(&interface_mac(bridge)?);
    nft(&ruleset(guest_interface, &mac))
}

/// The `bridge` table: replaces an earlier one whole.
pub fn ruleset(guest_interface: &str, bridge_mac: &str) -> String {
    let t = BRIDGE_TABLE;
    let md = super::SERVICE_ADDR.ip();
    format!(
        "table bridge {t} {{}}\n\
         delete table bridge {t}\n\
         table bridge {t} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type filter hook prerouting priority -300; policy accept;\n\
         \x20   iifname \"{guest_interface}\" ether type ip ip daddr {md} tcp dport 80 \
         meta pkttype set host ether daddr set {bridge_mac} accept\n\
         \x20 }}\n\
         }}\n"
    )
}

#[cfg(test)]
mod rules {
    #[test]
    fn the_bridge_rule_names_the_tap_and_the_bridge_mac() {
        let r = super::ruleset("tap0", "0a:58:0a:f4:00:05");
        assert!(
            r.starts_with("table bridge kuvirt_metadata {}\ndelete table bridge kuvirt_metadata\n")
        );
        assert!(r.contains("iifname \"tap0\" ether type ip ip daddr 169.254.169.254 tcp dport 80 meta pkttype set host ether daddr set 0a:58:0a:f4:00:05 accept"), "{r}");
    }
}
