//! Unit tests of the responder: message types, addressing, every option decoded back.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Name};

use super::*;

const MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0b, 0x0c, 0x0d];
const OTHER_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0b, 0x0c, 0x0e];
const IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 7);
const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

fn full_lease() -> Lease {
    let mut lease = Lease::new(MAC, IP, 24, SERVER);
    lease.router = Some(GW);
    lease.dns_servers = vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(8, 8, 8, 8)];
    lease.search_domains = vec![
        "default.svc.cluster.local".into(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    lease.hostname = Some("vmi-fedora".into());
    lease.domain_name = longest_domain(&lease.search_domains);
    lease.mtu = Some(1450);
    lease.routes = vec![Route {
        destination: Ipv4Addr::new(10, 96, 0, 0),
        prefix_len: 12,
        gateway: GW,
    }];
    lease.boot_file_name = Some("pxelinux.0".into());
    lease.tftp_server_name = Some("10.244.0.2".into());
    lease.ntp_servers = vec![Ipv4Addr::new(10, 0, 0, 123)];
    lease.private_options = vec![
        PrivateOption {
            code: 224,
            value: "extra.options.kubevirt.io".into(),
        },
        PrivateOption {
            code: 240,
            value: "second".into(),
        },
    ];
    lease
}

fn request(kind: MessageType, mac: &[u8]) -> Message {
    let mut msg = Message::default();
    msg.set_chaddr(mac).set_xid(0x1234_5678);
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    msg
}

fn bytes(msg: &Message) -> Vec<u8> {
    msg.to_vec().unwrap()
}

fn decode(packet: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(packet)).unwrap()
}

fn msg_type(msg: &Message) -> MessageType {
    msg.opts().msg_type().unwrap()
}

fn opt(msg: &Message, code: OptionCode) -> Option<&DhcpOption> {
    msg.opts().get(code)
}

fn raw_option(packet: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut rest = &packet[240..];
    while let [c, tail @ ..] = rest {
        match *c {
            0 => rest = tail,
            255 => return None,
            _ => {
                let len = usize::from(tail[0]);
                if *c == code {
                    return Some(tail[1..1 + len].to_vec());
                }
                rest = &tail[1 + len..];
            }
        }
    }
    None
}

#[test]
fn discover_gets_offer_with_the_lease() {
    let lease = full_lease();
    let reply = answer(&lease, &bytes(&request(MessageType::Discover, &MAC))).unwrap();
    assert_eq!(reply.kind, ReplyKind::Offer);
    assert_eq!(
        reply.destination,
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
    );
    assert!(reply.packet.len() >= 300);
    let offer = decode(&reply.packet);
    assert_eq!(offer.opcode(), Opcode::BootReply);
    assert_eq!(msg_type(&offer), MessageType::Offer);
    assert_eq!(offer.xid(), 0x1234_5678);
    assert_eq!(offer.chaddr(), MAC);
    assert_eq!(offer.yiaddr(), IP);
    assert_eq!(offer.ciaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        opt(&offer, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(KUBEVIRT_LEASE_SECS))
    );
}

#[test]
fn every_option_is_encoded() {
    let lease = full_lease();
    let packet = respond(&lease, &bytes(&request(MessageType::Discover, &MAC))).unwrap();
    let offer = decode(&packet);
    let o = |code| opt(&offer, code).cloned();
    assert_eq!(
        o(OptionCode::SubnetMask),
        Some(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(o(OptionCode::Router), Some(DhcpOption::Router(vec![GW])));
    assert_eq!(
        o(OptionCode::DomainNameServer),
        Some(DhcpOption::DomainNameServer(lease.dns_servers.clone()))
    );
    assert_eq!(
        o(OptionCode::Hostname),
        Some(DhcpOption::Hostname("vmi-fedora".into()))
    );
    assert_eq!(
        o(OptionCode::DomainName),
        Some(DhcpOption::DomainName("default.svc.cluster.local".into()))
    );
    assert_eq!(
        o(OptionCode::InterfaceMtu),
        Some(DhcpOption::InterfaceMtu(1450))
    );
    assert_eq!(
        o(OptionCode::NtpServers),
        Some(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 123)]))
    );
    assert_eq!(
        o(OptionCode::TFTPServerName),
        Some(DhcpOption::TFTPServerName(b"10.244.0.2".to_vec()))
    );
    assert_eq!(
        o(OptionCode::BootfileName),
        Some(DhcpOption::BootfileName(b"pxelinux.0".to_vec()))
    );
    let names: Vec<Name> = lease
        .search_domains
        .iter()
        .map(|d| Name::from_ascii(format!("{d}.")).unwrap())
        .collect();
    assert_eq!(
        o(OptionCode::DomainSearch),
        Some(DhcpOption::DomainSearch(names))
    );
    // BOOTP header: file and next server
    assert_eq!(offer.fname_str().unwrap().unwrap(), "pxelinux.0\0");
    assert_eq!(offer.siaddr(), Ipv4Addr::new(10, 244, 0, 2));
    // private options, as given
    assert_eq!(
        raw_option(&packet, 224).unwrap(),
        b"extra.options.kubevirt.io"
    );
    assert_eq!(raw_option(&packet, 240).unwrap(), b"second");
    // the message ends with End
    assert!(packet[240..].contains(&255));
}

#[test]
fn classless_routes_carry_the_default_route_last() {
    let lease = full_lease();
    let packet = respond(&lease, &bytes(&request(MessageType::Discover, &MAC))).unwrap();
    // RFC 3442: 12 → 2 significant octets; default route 0 → none
    assert_eq!(
        raw_option(&packet, 121).unwrap(),
        [12, 10, 96, 10, 244, 0, 1, 0, 10, 244, 0, 1]
    );
    let Some(DhcpOption::ClasslessStaticRoute(routes)) =
        opt(&decode(&packet), OptionCode::ClasslessStaticRoute).cloned()
    else {
        panic!("no option 121");
    };
    let routes: Vec<String> = routes
        .iter()
        .map(|(net, gw)| format!("{net} via {gw}"))
        .collect();
    assert_eq!(
        routes,
        ["10.96.0.0/12 via 10.244.0.1", "0.0.0.0/0 via 10.244.0.1"]
    );
}

#[test]
fn classless_routes_keep_given_defaults_and_mask_host_bits() {
    let mut lease = Lease::new(MAC, IP, 32, SERVER);
    lease.router = Some(GW);
    lease.routes = vec![
        Route::default_via(GW),
        Route {
            destination: GW,
            prefix_len: 32,
            gateway: Ipv4Addr::UNSPECIFIED,
        },
        Route {
            destination: Ipv4Addr::new(192, 168, 7, 99),
            prefix_len: 20,
            gateway: GW,
        },
    ];
    let packet = respond(&lease, &bytes(&request(MessageType::Discover, &MAC))).unwrap();
    assert_eq!(
        raw_option(&packet, 121).unwrap(),
        [
            32, 10, 244, 0, 1, 0, 0, 0, 0, // on-link route to the gateway
            20, 192, 168, 0, 10, 244, 0, 1, // host bits dropped
            0, 10, 244, 0, 1, // the given default route, last, once
        ]
    );
    // no routes, no option 121
    let plain = Lease::new(MAC, IP, 24, SERVER);
    let packet = respond(&plain, &bytes(&request(MessageType::Discover, &MAC))).unwrap();
    assert_eq!(raw_option(&packet, 121), None);
    assert_eq!(raw_option(&packet, 3), None);
}

#[test]
fn search_domains_use_rfc_1035_labels() {
    let data =
        encode_search_domains(&["eng.apple.com".into(), "marketing.apple.com.".into()]).unwrap();
    let mut want = Vec::new();
    for label in ["eng", "apple", "com", "", "marketing", "apple", "com", ""] {
        want.push(label.len() as u8);
        want.extend_from_slice(label.as_bytes());
    }
    assert_eq!(data, want);
    assert_eq!(
        encode_search_domains(&["bad domain".into()]),
        Err(LeaseError::SearchDomain("bad domain".into()))
    );
    assert!(encode_search_domains(&["-x.com".into()]).is_err());
    assert!(encode_search_domains(&["a..b".into()]).is_err());
    assert!(encode_search_domains(&[format!("{}.com", "a".repeat(64))]).is_err());
    let many: Vec<String> = (0..20)
        .map(|i| format!("namespace{i}.svc.cluster.local"))
        .collect();
    assert!(matches!(
        encode_search_domains(&many),
        Err(LeaseError::SearchDomainsTooLong(_))
    ));
}

#[test]
fn longest_search_domain_is_the_domain_name() {
    let search = ["svc.cluster.local", "ns.svc.cluster.local", "cluster.local"].map(String::from);
    assert_eq!(
        longest_domain(&search).as_deref(),
        Some("ns.svc.cluster.local")
    );
    assert_eq!(longest_domain(&[]), None);
}

#[test]
fn request_states_get_ack_or_nak() {
    let lease = full_lease();
    // SELECTING: server id + requested address
    let mut selecting = request(MessageType::Request, &MAC);
    selecting
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(SERVER));
    selecting
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(IP));
    let reply = answer(&lease, &bytes(&selecting)).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    let ack = decode(&reply.packet);
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), IP);
    assert_eq!(
        opt(&ack, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(KUBEVIRT_LEASE_SECS))
    );
    assert_eq!(reply.destination.ip(), &Ipv4Addr::BROADCAST);

    // SELECTING another server's offer: not ours to answer
    let mut elsewhere = selecting.clone();
    elsewhere
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 99)));
    assert_eq!(answer(&lease, &bytes(&elsewhere)), None);

    // INIT-REBOOT: requested address, no server id
    let mut reboot = request(MessageType::Request, &MAC);
    reboot.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
    assert_eq!(
        answer(&lease, &bytes(&reboot)).unwrap().kind,
        ReplyKind::Ack
    );

    // RENEWING: ciaddr, unicast back
    let mut renew = request(MessageType::Request, &MAC);
    renew.set_ciaddr(IP);
    let reply = answer(&lease, &bytes(&renew)).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(reply.destination, SocketAddrV4::new(IP, 68));
    assert_eq!(decode(&reply.packet).ciaddr(), IP);

    // REBINDING with the broadcast flag: broadcast
    renew.set_flags(Flags::default().set_broadcast());
    let reply = answer(&lease, &bytes(&renew)).unwrap();
    assert_eq!(reply.destination.ip(), &Ipv4Addr::BROADCAST);
    assert!(decode(&reply.packet).flags().broadcast());

    // a REQUEST naming no address at all
    assert_eq!(
        answer(&lease, &bytes(&request(MessageType::Request, &MAC))),
        None
    );
}

#[test]
fn request_for_another_address_gets_nak() {
    let lease = full_lease();
    for other in [
        Some(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 244, 0, 8))),
        None,
    ] {
        let mut req = request(MessageType::Request, &MAC);
        match other {
            Some(o) => {
                req.opts_mut().insert(o);
            }
            None => {
                req.set_ciaddr(Ipv4Addr::new(192, 168, 1, 5));
            }
        }
        let reply = answer(&lease, &bytes(&req)).unwrap();
        assert_eq!(reply.kind, ReplyKind::Nak);
        assert_eq!(reply.destination.ip(), &Ipv4Addr::BROADCAST);
        let nak = decode(&reply.packet);
        assert_eq!(msg_type(&nak), MessageType::Nak);
        assert_eq!(nak.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.ciaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(nak.chaddr(), MAC);
        assert_eq!(
            opt(&nak, OptionCode::ServerIdentifier),
            Some(&DhcpOption::ServerIdentifier(SERVER))
        );
        assert_eq!(opt(&nak, OptionCode::AddressLeaseTime), None);
        assert_eq!(opt(&nak, OptionCode::SubnetMask), None);
    }
}

#[test]
fn inform_gets_ack_without_address_or_lease_time() {
    let lease = full_lease();
    let mut inform = request(MessageType::Inform, &MAC);
    inform.set_ciaddr(IP);
    let reply = answer(&lease, &bytes(&inform)).unwrap();
    assert_eq!(reply.kind, ReplyKind::Ack);
    assert_eq!(reply.destination, SocketAddrV4::new(IP, 68));
    let ack = decode(&reply.packet);
    assert_eq!(msg_type(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr(), IP);
    assert_eq!(opt(&ack, OptionCode::AddressLeaseTime), None);
    assert_eq!(
        opt(&ack, OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(lease.dns_servers.clone()))
    );
}

#[test]
fn release_decline_and_others_get_nothing() {
    let lease = full_lease();
    for kind in [
        MessageType::Release,
        MessageType::Decline,
        MessageType::Offer,
        MessageType::Ack,
        MessageType::Nak,
        MessageType::Unknown(42),
    ] {
        let mut req = request(kind, &MAC);
        req.set_ciaddr(IP);
        req.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
        assert_eq!(respond(&lease, &bytes(&req)), None, "{kind:?}");
    }
    // no message type: plain BOOTP is not served
    let mut bootp = request(MessageType::Discover, &MAC);
    bootp.opts_mut().remove(OptionCode::MessageType);
    assert_eq!(respond(&lease, &bytes(&bootp)), None);
}

#[test]
fn other_macs_get_nothing() {
    let lease = full_lease();
    for mac in [&OTHER_MAC[..], &[0; 6], &MAC[..5]] {
        for kind in [
            MessageType::Discover,
            MessageType::Request,
            MessageType::Inform,
        ] {
            let mut req = request(kind, mac);
            req.opts_mut().insert(DhcpOption::RequestedIpAddress(IP));
            assert_eq!(respond(&lease, &bytes(&req)), None, "{mac:?} {kind:?}");
        }
    }
}

#[test]
fn wrong_op_htype_hlen_or_magic_get_nothing() {
    let lease = full_lease();
    let good = bytes(&request(MessageType::Discover, &MAC));
    assert!(respond(&lease, &good).is_some());
    for (index, value) in [
        (0, 2),
        (0, 0),
        (1, 6),
        (2, 16),
        (2, 255),
        (236, 0),
        (239, 0),
    ] {
        let mut bad = good.clone();
        bad[index] = value;
        assert_eq!(respond(&lease, &bad), None, "byte {index} = {value}");
    }
}

#[test]
fn truncated_and_garbage_input_gets_nothing() {
    let lease = full_lease();
    let good = bytes(&request(MessageType::Discover, &MAC));
    for len in 0..good.len() - 1 {
        // cutting into the message-type option loses it or leaves it truncated
        let cut = &good[..len];
        let got = respond(&lease, cut);
        if len < 243 {
            assert_eq!(got, None, "cut at {len}");
        }
    }
    assert_eq!(respond(&lease, &[]), None);
    assert_eq!(respond(&lease, &[0xff; 1000]), None);
    assert_eq!(respond(&lease, &vec![0; MAX_REQUEST_LEN + 1]), None);
    // an option whose length runs past the end
    let mut overrun = good[..240].to_vec();
    overrun.extend_from_slice(&[53, 1, 1, 12, 200, b'x']);
    assert_eq!(respond(&lease, &overrun), None);
    // a code without its length
    let mut dangling = good[..240].to_vec();
    dangling.extend_from_slice(&[53, 1, 1, 12]);
    assert_eq!(respond(&lease, &dangling), None);
    // too many options
    let mut many = good[..240].to_vec();
    many.extend_from_slice(&[53, 1, 1]);
    for _ in 0..MAX_REQUEST_OPTIONS {
        many.extend_from_slice(&[60, 0]);
    }
    many.push(255);
    assert_eq!(respond(&lease, &many), None);
    // a message type of the wrong length
    let mut long_type = good[..240].to_vec();
    long_type.extend_from_slice(&[53, 0, 255]);
    assert_eq!(respond(&lease, &long_type), None);
}

#[test]
fn options_dhcproto_asserts_on_are_skipped() {
    // dhcproto debug_asserts the lengths of 80 (rapid commit), 94 and 152-155; they must not
    // reach it.
    let lease = full_lease();
    let good = bytes(&request(MessageType::Discover, &MAC));
    for code in [80u8, 81, 94, 151, 152, 153, 154, 155, 119, 121, 82] {
        for len in [0u8, 1, 2, 7] {
            let mut packet = good[..240].to_vec();
            packet.extend_from_slice(&[code, len]);
            packet.extend(std::iter::repeat_n(0xab, usize::from(len)));
            packet.extend_from_slice(&[53, 1, 1, 255]);
            let reply = respond(&lease, &packet).unwrap();
            assert_eq!(msg_type(&decode(&reply)), MessageType::Offer);
        }
    }
}

#[test]
fn requests_with_extra_options_and_padding_are_answered() {
    let lease = full_lease();
    let mut req = request(MessageType::Discover, &MAC);
    req.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainSearch,
    ]));
    req.opts_mut()
        .insert(DhcpOption::ClientIdentifier(vec![1, 2, 0, 10, 11, 12, 13]));
    req.opts_mut().insert(DhcpOption::Hostname("guest".into()));
    let mut packet = bytes(&req);
    packet.extend(std::iter::repeat_n(0, 200));
    assert!(respond(&lease, &packet).is_some());
}

#[test]
fn lease_time_and_long_boot_file() {
    let mut lease = full_lease();
    lease.lease_time = INFINITE_LEASE_SECS;
    lease.boot_file_name = Some(format!("/boot/{}", "x".repeat(140)));
    let offer = decode(&respond(&lease, &bytes(&request(MessageType::Discover, &MAC))).unwrap());
    assert_eq!(
        opt(&offer, OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(u32::MAX))
    );
    // too long for the 128-byte file field: only option 67 carries it
    assert_eq!(offer.fname(), None);
    assert_eq!(
        opt(&offer, OptionCode::BootfileName),
        Some(&DhcpOption::BootfileName(
            lease.boot_file_name.clone().unwrap().into_bytes()
        ))
    );
}

#[test]
fn invalid_leases_are_refused() {
    let base = full_lease();
    let check = |f: &dyn Fn(&mut Lease)| {
        let mut lease = base.clone();
        f(&mut lease);
        let err = lease.validate().unwrap_err();
        // an invalid lease is never served either
        assert_eq!(
            respond(&lease, &bytes(&request(MessageType::Discover, &MAC))),
            None
        );
        err
    };
    assert_eq!(check(&|l| l.prefix_len = 33), LeaseError::PrefixLength(33));
    assert_eq!(check(&|l| l.prefix_len = 0), LeaseError::PrefixLength(0));
    assert_eq!(
        check(&|l| l.server_id = Ipv4Addr::UNSPECIFIED),
        LeaseError::ServerId
    );
    assert_eq!(check(&|l| l.mtu = Some(60)), LeaseError::Mtu(60));
    assert_eq!(
        check(&|l| l.private_options[0].code = 223),
        LeaseError::PrivateCode(223)
    );
    assert_eq!(
        check(&|l| l.private_options[1].code = 224),
        LeaseError::PrivateDuplicate(224)
    );
    assert!(matches!(
        check(&|l| l.hostname = Some(String::new())),
        LeaseError::Text {
            field: "hostname",
            ..
        }
    ));
    assert!(matches!(
        check(&|l| l.boot_file_name = Some("a".repeat(256))),
        LeaseError::Text { .. }
    ));
    assert!(matches!(
        check(&|l| l.routes[0].prefix_len = 40),
        LeaseError::RoutePrefix(..)
    ));
    assert!(full_lease().validate().is_ok());
    assert_eq!(
        LeaseError::PrivateCode(223).to_string(),
        "private option 223 is not in 224..=254"
    );
}

#[test]
fn read_options_of_the_wrong_size_are_refused() {
    let lease = full_lease();
    let good = bytes(&request(MessageType::Discover, &lease.mac));
    assert!(respond(&lease, &good).is_some());
    // Message type with two bytes, server identifier with three, max size with one: each
    // replaces the options and must not be answered.
    for opts in [
        &[53u8, 2, 1, 1][..],
        &[53, 1, 1, 54, 3, 10, 0, 2][..],
        &[53, 1, 1, 57, 1, 2][..],
        &[53, 1, 1, 50, 5, 10, 0, 2, 2, 0][..],
    ] {
        let mut packet = good[..240].to_vec();
        packet.extend_from_slice(opts);
        packet.push(255);
        assert_eq!(respond(&lease, &packet), None, "{opts:?}");
    }
}
