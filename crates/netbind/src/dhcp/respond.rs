//! The responder as a pure function: one request datagram in, at most one reply out.
//!
//! Input is checked by hand before dhcproto sees it: fixed header, Ethernet client hardware
//! address equal to the lease's MAC, magic cookie, a well-formed option list of bounded length.
//! Only the options the responder reads are handed on to dhcproto, whose decoder asserts the
//! lengths of some other options (80, 81, 94, 151-155) with `debug_assert!` — a panic in debug
//! and fuzz builds on hostile input.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{
    self, CLIENT_PORT, DhcpOption, DhcpOptions, HType, Message, MessageType, Opcode, OptionCode,
};
use dhcproto::{Decodable, Decoder, Encodable};

use super::lease::Lease;

/// Datagrams longer than this are dropped unread (a DHCP request is a few hundred bytes).
pub const MAX_REQUEST_LEN: usize = 4096;
/// Requests with more options than this (pads not counted) are dropped.
pub const MAX_REQUEST_OPTIONS: usize = 128;
/// Replies are padded to BOOTP's minimum message size.
const MIN_REPLY_LEN: usize = v4::MIN_PACKET_SIZE;

/// Fixed BOOTP header (236 bytes) and the magic cookie.
const HEADER_LEN: usize = 236;
const OPTIONS_START: usize = HEADER_LEN + 4;
const MAGIC: [u8; 4] = v4::MAGIC;
const BOOTREQUEST: u8 = 1;
const HTYPE_ETHERNET: u8 = 1;
const CHADDR: std::ops::Range<usize> = 28..34;

/// Options of a request the responder reads; every other option is skipped.
const READ_OPTIONS: [u8; 4] = [
    50, // requested IP address
    53, // message type
    54, // server identifier
    57, // maximum message size
];

/// What kind of reply the responder made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Offer,
    Ack,
    Nak,
}

/// A reply and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub packet: Vec<u8>,
    /// `255.255.255.255:68`, or the client's own address when it has one (RFC 2131 §4.1).
    pub destination: SocketAddrV4,
}

/// The reply to `packet` from the lease's client, if any.
pub fn respond(lease: &Lease, packet: &[u8]) -> Option<Vec<u8>> {
    answer(lease, packet).map(|reply| reply.packet)
}

/// The reply to `packet` and its destination. DISCOVER gets an OFFER; REQUEST for the lease's
/// address an ACK, for another address a NAK, for another server's offer nothing; INFORM an ACK
/// without address or lease time. Anything else — another MAC, RELEASE, DECLINE, malformed
/// input — gets nothing.
pub fn answer(lease: &Lease, packet: &[u8]) -> Option<Reply> {
    let request = parse(lease, packet)?;
    let msg_type = request.opts().msg_type()?;
    let requested = match request.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match request.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    match msg_type {
        MessageType::Discover => reply(lease, &request, ReplyKind::Offer, false),
        MessageType::Request => {
            if server_id.is_some_and(|id| id != lease.server_id) {
                // SELECTING another server's offer
                return None;
            }
            // SELECTING and INIT-REBOOT name the address in option 50; RENEWING and
            // REBINDING in ciaddr.
            let wanted =
                requested.or_else(|| Some(request.ciaddr()).filter(|ip| !ip.is_unspecified()))?;
            let kind = if wanted == lease.address {
                ReplyKind::Ack
            } else {
                ReplyKind::Nak
            };
            reply(lease, &request, kind, false)
        }
        MessageType::Inform => reply(lease, &request, ReplyKind::Ack, true),
        _ => None,
    }
}

/// Checks the raw request and decodes its header and the options we read.
fn parse(lease: &Lease, packet: &[u8]) -> Option<Message> {
    if packet.len() < OPTIONS_START || packet.len() > MAX_REQUEST_LEN {
        return None;
    }
    if packet[0] != BOOTREQUEST || packet[1] != HTYPE_ETHERNET || packet[2] != 6 {
        return None;
    }
    if packet[CHADDR] != lease.mac || packet[HEADER_LEN..OPTIONS_START] != MAGIC {
        return None;
    }
    let mut kept = Vec::with_capacity(OPTIONS_START + 64);
    kept.extend_from_slice(&packet[..OPTIONS_START]);
    let mut rest = &packet[OPTIONS_START..];
    let mut count = 0;
    loop {
        match rest {
            [] | [255, ..] => break,
            [0, tail @ ..] => rest = tail,
            [code, len, tail @ ..] => {
                let len = usize::from(*len);
                let value = tail.get(..len)?;
                count += 1;
                if count > MAX_REQUEST_OPTIONS {
                    return None;
                }
                if READ_OPTIONS.contains(code) {
                    // RFC 2132's fixed sizes: anything else is not the option it claims.
                    let size = match code {
                        53 => 1,
                        57 => 2,
                        _ => 4,
                    };
                    if len != size {
                        return None;
                    }
                    kept.push(*code);
                    kept.push(len as u8);
                    kept.extend_from_slice(value);
                }
                rest = &tail[len..];
            }
            // a code without its length byte
            [_] => return None,
        }
    }
    kept.push(255);
    Message::decode(&mut Decoder::new(&kept)).ok()
}

fn reply(lease: &Lease, request: &Message, kind: ReplyKind, inform: bool) -> Option<Reply> {
    let mut opts = match kind {
        ReplyKind::Nak => {
            let mut opts = DhcpOptions::new();
            opts.insert(DhcpOption::Message(
                "requested address is not this client's lease".into(),
            ));
            opts
        }
        ReplyKind::Offer | ReplyKind::Ack => lease.options().ok()?,
    };
    opts.insert(DhcpOption::MessageType(match kind {
        ReplyKind::Offer => MessageType::Offer,
        ReplyKind::Ack => MessageType::Ack,
        ReplyKind::Nak => MessageType::Nak,
    }));
    opts.insert(DhcpOption::ServerIdentifier(lease.server_id));
    if kind != ReplyKind::Nak && !inform {
        opts.insert(DhcpOption::AddressLeaseTime(lease.lease_time));
    }

    let mut msg = Message::default();
    msg.set_opcode(Opcode::BootReply)
        .set_htype(HType::Eth)
        .set_chaddr(&lease.mac)
        .set_xid(request.xid())
        .set_flags(request.flags())
        .set_giaddr(request.giaddr())
        .set_opts(opts);
    let client_ip = request.ciaddr();
    match kind {
        ReplyKind::Nak => {}
        ReplyKind::Offer => {
            msg.set_yiaddr(lease.address)
                .set_siaddr(lease.next_server());
        }
        ReplyKind::Ack if inform => {
            msg.set_ciaddr(client_ip).set_siaddr(lease.next_server());
        }
        ReplyKind::Ack => {
            msg.set_ciaddr(client_ip)
                .set_yiaddr(lease.address)
                .set_siaddr(lease.next_server());
        }
    }
    if kind != ReplyKind::Nak
        && let Some(file) = lease.boot_file_name.as_deref().filter(|f| f.len() < 128)
    {
        msg.set_fname(file.as_bytes());
    }
    let mut packet = msg.to_vec().ok()?;
    if packet.len() < MIN_REPLY_LEN {
        packet.resize(MIN_REPLY_LEN, 0);
    }
    Some(Reply {
        kind,
        packet,
        destination: destination(request, kind),
    })
}

/// RFC 2131 §4.1 without relays: NAKs are broadcast; a client that has an address (RENEWING,
/// INFORM) and did not ask for broadcast gets unicast to it; otherwise broadcast, also when the
/// flag is clear, since unicast to an address the client does not have yet needs an ARP entry
/// we do not write.
fn destination(request: &Message, kind: ReplyKind) -> SocketAddrV4 {
    let ciaddr = request.ciaddr();
    let unicast = kind != ReplyKind::Nak
        && !request.flags().broadcast()
        && !ciaddr.is_unspecified()
        && !ciaddr.is_broadcast();
    let to = if unicast { ciaddr } else { Ipv4Addr::BROADCAST };
    SocketAddrV4::new(to, CLIENT_PORT)
}
