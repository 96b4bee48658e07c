//! Unit tests of the DHCPv6 responder: each message type, identifiers, decoded replies, and a
//! deterministic fuzz loop over random and mutated messages.

#![allow(clippy::unwrap_used)] // tests fail loudly

use std::net::Ipv6Addr;

use dhcproto::v6::{DhcpOption, IANA, Message, MessageType, OptionCode, Status};
use dhcproto::{Decodable, Decoder};

use super::*;

const MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0x0b, 0x0c, 0x0d];
const CLIENT_DUID: [u8; 14] = [0, 1, 0, 1, 0x2a, 0x2b, 0x2c, 0x2d, 2, 0, 0, 0, 0, 9];
const XID: [u8; 3] = [0xab, 0xcd, 0xef];

fn guest() -> Ipv6Addr {
    "fd10:0:2::2".parse().unwrap()
}

fn lease() -> Lease6 {
    let mut lease = Lease6::new(guest(), MAC);
    lease.dns_servers = vec!["fd00:10:96::a".parse().unwrap()];
    lease
}

fn server_duid() -> Vec<u8> {
    vec![0, 3, 0, 1, 0x02, 0x00, 0x0a, 0x0b, 0x0c, 0x0d]
}

fn opt(code: u16, value: &[u8]) -> Vec<u8> {
    let mut out = code.to_be_bytes().to_vec();
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn ia_na(iaid: u32, addr: Option<Ipv6Addr>) -> Vec<u8> {
    let mut v = iaid.to_be_bytes().to_vec();
    v.extend_from_slice(&[0; 8]);
    if let Some(a) = addr {
        let mut inner = a.octets().to_vec();
        inner.extend_from_slice(&[0; 8]);
        v.extend(opt(5, &inner));
    }
    opt(3, &v)
}

/// A client message: type, xid, client id, then `extra` options.
fn message(msg_type: u8, extra: &[Vec<u8>]) -> Vec<u8> {
    let mut p = vec![msg_type, XID[0], XID[1], XID[2]];
    p.extend(opt(1, &CLIENT_DUID));
    p.extend(opt(8, &[0, 0])); // elapsed time
    p.extend(opt(6, &[0, 23, 0, 24])); // ORO
    for e in extra {
        p.extend_from_slice(e);
    }
    p
}

fn decode(packet: &[u8]) -> Message {
    Message::decode(&mut Decoder::new(packet)).unwrap()
}

fn the_ia(msg: &Message) -> &IANA {
    match msg.opts().get(OptionCode::IANA) {
        Some(DhcpOption::IANA(ia)) => ia,
        other => panic!("no IA_NA: {other:?}"),
    }
}

fn check_lease_reply(msg: &Message, iaid: u32) {
    assert_eq!(msg.xid(), XID);
    assert_eq!(
        msg.opts().get(OptionCode::ClientId),
        Some(&DhcpOption::ClientId(CLIENT_DUID.to_vec()))
    );
    assert_eq!(
        msg.opts().get(OptionCode::ServerId),
        Some(&DhcpOption::ServerId(server_duid()))
    );
    let ia = the_ia(msg);
    assert_eq!((ia.id, ia.t1, ia.t2), (iaid, 0, 0));
    match ia.opts.get(OptionCode::IAAddr) {
        Some(DhcpOption::IAAddr(a)) => {
            assert_eq!(a.addr, guest());
            assert_eq!(a.preferred_life, 86_313_600);
            assert_eq!(a.valid_life, 86_313_600);
        }
        other => panic!("no IAADDR: {other:?}"),
    }
    assert_eq!(
        msg.opts().get(OptionCode::DomainNameServers),
        Some(&DhcpOption::DomainNameServers(vec![
            "fd00:10:96::a".parse().unwrap()
        ]))
    );
}

fn status(msg: &Message) -> Status {
    match msg.opts().get(OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(s)) => s.status,
        other => panic!("no status: {other:?}"),
    }
}

#[test]
fn solicit_gets_advertise_in_the_clients_iaid() {
    let reply = answer(&lease(), &message(1, &[ia_na(0x0c0d_0e0f, None)])).unwrap();
    assert_eq!(reply.kind, ReplyKind::Advertise);
    let msg = decode(&reply.packet);
    assert_eq!(msg.msg_type(), MessageType::Advertise);
    check_lease_reply(&msg, 0x0c0d_0e0f);
    assert!(msg.opts().get(OptionCode::RapidCommit).is_none());
}

#[test]
fn rapid_commit_solicit_gets_reply() {
    let packet = message(1, &[ia_na(7, None), opt(14, &[])]);
    let reply = answer(&lease(), &packet).unwrap();
    assert_eq!(reply.kind, ReplyKind::Reply);
    let msg = decode(&reply.packet);
    assert_eq!(msg.msg_type(), MessageType::Reply);
    assert!(msg.opts().get(OptionCode::RapidCommit).is_some());
    check_lease_reply(&msg, 7);
}

#[test]
fn request_renew_rebind_get_the_lease() {
    let sid = opt(2, &server_duid());
    for t in [3u8, 5] {
        let packet = message(t, &[sid.clone(), ia_na(1, Some(guest()))]);
        let msg = decode(&respond(&lease(), &packet).unwrap());
        assert_eq!(msg.msg_type(), MessageType::Reply, "type {t}");
        check_lease_reply(&msg, 1);
        // without a server id they are not for us
        assert_eq!(respond(&lease(), &message(t, &[ia_na(1, None)])), None);
    }
    let msg = decode(&respond(&lease(), &message(6, &[ia_na(2, Some(guest()))])).unwrap());
    check_lease_reply(&msg, 2);
}

#[test]
fn another_servers_id_gets_nothing() {
    let other = opt(2, &[0, 3, 0, 1, 2, 0, 0, 0, 0, 0x99]);
    for t in [1u8, 3, 4, 5, 6, 8, 11] {
        assert_eq!(
            respond(&lease(), &message(t, std::slice::from_ref(&other))),
            None,
            "{t}"
        );
    }
}

#[test]
fn confirm_release_information_request() {
    let msg = decode(&respond(&lease(), &message(4, &[ia_na(1, Some(guest()))])).unwrap());
    assert_eq!(status(&msg), Status::Success);
    assert!(msg.opts().get(OptionCode::IANA).is_none());
    let elsewhere = ia_na(1, Some("2001:db8::5".parse().unwrap()));
    let msg = decode(&respond(&lease(), &message(4, &[elsewhere])).unwrap());
    assert_eq!(status(&msg), Status::NotOnLink);

    let sid = opt(2, &server_duid());
    let msg = decode(&respond(&lease(), &message(8, &[sid, ia_na(1, Some(guest()))])).unwrap());
    assert_eq!(msg.msg_type(), MessageType::Reply);
    assert_eq!(status(&msg), Status::Success);

    // INFORMATION-REQUEST, also without a client id
    let msg = decode(&respond(&lease(), &message(11, &[])).unwrap());
    assert!(msg.opts().get(OptionCode::IANA).is_none());
    assert!(msg.opts().get(OptionCode::DomainNameServers).is_some());
    let bare = [11, 1, 2, 3];
    let msg = decode(&respond(&lease(), &bare).unwrap());
    assert_eq!(msg.xid(), [1, 2, 3]);
    assert!(msg.opts().get(OptionCode::ClientId).is_none());
    assert!(msg.opts().get(OptionCode::ServerId).is_some());
}

#[test]
fn no_dns_option_without_servers() {
    let lease = Lease6::new(guest(), MAC);
    let msg = decode(&respond(&lease, &message(1, &[ia_na(1, None)])).unwrap());
    assert!(msg.opts().get(OptionCode::DomainNameServers).is_none());
}

#[test]
fn ignored_messages() {
    let sid = opt(2, &server_duid());
    for packet in [
        vec![],
        vec![1, 2, 3],
        message(2, &[]),                                  // ADVERTISE
        message(7, &[]),                                  // REPLY
        message(9, std::slice::from_ref(&sid)),           // DECLINE
        message(10, &[]),                                 // RECONFIGURE
        message(12, &[]),                                 // RELAY-FORW
        message(13, &[]),                                 // RELAY-REPL
        vec![1, 0, 0, 0, 0, 3, 0, 12, 0],                 // IA_NA running past the end
        [message(1, &[]), opt(1, &CLIENT_DUID)].concat(), // two client ids
        [vec![1, 0, 0, 0], opt(1, &[])].concat(),         // empty DUID
        [vec![1, 0, 0, 0], opt(3, &[0; 4])].concat(),     // no client id, short IA_NA
        vec![1; MAX_REQUEST_LEN + 1],
    ] {
        assert_eq!(respond(&lease(), &packet), None, "{packet:02x?}");
    }
    // SOLICIT without client id
    assert_eq!(respond(&lease(), &[1, 0, 0, 0]), None);
}

#[test]
fn lease_checks() {
    assert!(lease().validate().is_ok());
    assert_eq!(
        Lease6::new(Ipv6Addr::UNSPECIFIED, MAC).validate(),
        Err(Lease6Error::Address(Ipv6Addr::UNSPECIFIED))
    );
    let mut bad = lease();
    bad.dns_servers.push("ff02::1".parse().unwrap());
    assert!(matches!(bad.validate(), Err(Lease6Error::DnsServer(_))));
    let mut bad = lease();
    bad.preferred_lifetime = bad.valid_lifetime + 1;
    assert!(matches!(bad.validate(), Err(Lease6Error::Lifetimes { .. })));
    assert_eq!(lease().server_duid(), server_duid());
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

fn mutate(rng: &mut Rng, p: &mut Vec<u8>) {
    for _ in 0..=rng.below(5) {
        match rng.below(6) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.byte();
            }
            1 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] ^= 1 << rng.below(8);
            }
            2 => p.truncate(rng.below(p.len() + 1)),
            3 => {
                // an option that may lie about its length
                let at = 4.min(p.len()) + rng.below(p.len().saturating_sub(4) + 1);
                let at = at.min(p.len());
                let mut o = vec![0, rng.byte() % 30, 0, rng.byte() % 40];
                o.extend((0..rng.below(20)).map(|_| rng.byte()));
                p.splice(at..at, o);
            }
            4 => {
                for _ in 0..rng.below(200) {
                    p.extend_from_slice(&[0, 3, 0, 12]);
                    p.extend((0..12).map(|_| rng.byte()));
                }
            }
            _ => p.extend((0..rng.below(64)).map(|_| rng.byte())),
        }
    }
}

#[test]
fn random_and_mutated_messages_never_panic() {
    let lease = lease();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let sid = opt(2, &server_duid());
    let (mut advertises, mut replies) = (0u32, 0u32);
    let rounds = 150_000;
    for round in 0..rounds {
        let packet = if round % 4 == 0 {
            let len = rng.below(300);
            let mut p: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            if let Some(b) = p.first_mut() {
                *b = (*b % 14) + 1;
            }
            p
        } else {
            let t = (rng.below(13) + 1) as u8;
            let mut extra = vec![ia_na(rng.next() as u32, Some(guest()))];
            if rng.below(2) == 0 {
                extra.push(sid.clone());
            }
            if rng.below(3) == 0 {
                extra.push(opt(14, &[]));
            }
            let mut p = message(t, &extra);
            if round % 4 != 1 {
                mutate(&mut rng, &mut p);
            }
            p
        };
        if let Some(reply) = answer(&lease, &packet) {
            let msg = decode(&reply.packet);
            assert_eq!(msg.xid(), [packet[1], packet[2], packet[3]]);
            assert_eq!(
                msg.opts().get(OptionCode::ServerId),
                Some(&DhcpOption::ServerId(server_duid()))
            );
            match reply.kind {
                ReplyKind::Advertise => advertises += 1,
                ReplyKind::Reply => replies += 1,
            }
        }
    }
    assert!(
        advertises > 1000 && replies > 5000,
        "{advertises} {replies}"
    );
}
