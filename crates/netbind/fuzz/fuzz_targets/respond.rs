//! Fuzz target: `dhcp::answer` on arbitrary datagrams never panics and answers only the lease's MAC.

#![no_main]

use std::net::Ipv4Addr;

use kuvirt_netbind::dhcp::{Lease, PrivateOption, Route, answer};
use libfuzzer_sys::fuzz_target;

/// The MAC of the seed requests in `seeds/respond`.
const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

fn lease() -> Lease {
    let gw = Ipv4Addr::new(10, 0, 2, 1);
    let mut lease = Lease::new(MAC, Ipv4Addr::new(10, 0, 2, 2), 24, gw);
    lease.router = Some(gw);
    lease.dns_servers = vec![Ipv4Addr::new(10, 0, 2, 3)];
    lease.search_domains = vec!["ns.svc.cluster.local".into(), "cluster.local".into()];
    lease.hostname = Some("guest".into());
    lease.domain_name = Some("ns.svc.cluster.local".into());
    lease.mtu = Some(1500);
    lease.routes = vec![Route::default_via(gw)];
    lease.boot_file_name = Some("ipxe.efi".into());
    lease.tftp_server_name = Some("10.0.2.1".into());
    lease.private_options = vec![PrivateOption {
        code: 224,
        value: "fuzz".into(),
    }];
    lease
}

fuzz_target!(|data: &[u8]| {
    let lease = lease();
    if let Some(reply) = answer(&lease, data) {
        assert_eq!(data.get(28..34), Some(&MAC[..]), "answered another MAC");
        assert_eq!(reply.packet.get(28..34), Some(&MAC[..]), "reply chaddr");
        assert_eq!(reply.destination.port(), 68);
    }
});
