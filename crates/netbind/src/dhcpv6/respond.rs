//! The responder as a pure function: one client message in, at most one server message out.
//!
//! The request is walked by hand (bounded, every length checked) and only the fields we read
//! are kept; replies are encoded with dhcproto. What is answered follows KubeVirt's server:
//! SOLICIT gets an ADVERTISE (a REPLY with rapid commit when the client asks for it), REQUEST,
//! RENEW and REBIND a REPLY with the lease's address in the client's IA_NA, CONFIRM and
//! RELEASE a REPLY with a status (RFC 8415 §18.3.3, §18.3.7; KubeVirt repeats the lease
//! there), INFORMATION-REQUEST a REPLY with the DNS servers only. Relay messages, DECLINE,
//! server-to-client types and messages naming another server get nothing.

use dhcproto::Encodable;
use dhcproto::v6::{
    DhcpOption, DhcpOptions, IAAddr, IANA, Message, MessageType, Status, StatusCode,
};

use super::lease::Lease6;

/// Datagrams longer than this are dropped unread.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Messages with more options than this (top level and inside IA_NAs) are dropped.
pub const MAX_REQUEST_OPTIONS: usize = 128;
/// Longest DUID (RFC 8415 §11.1: 128 bytes after the 2-byte type).
const MAX_DUID_LEN: usize = 130;

/// Client message types (RFC 8415 §7.3).
const SOLICIT: u8 = 1;
const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
const RELEASE: u8 = 8;
const INFORMATION_REQUEST: u8 = 11;

/// Option codes we read.
const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_RAPID_COMMIT: u16 = 14;

/// What kind of message the responder made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    Advertise,
    Reply,
}

/// A reply and the request type it answers, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    /// The request's message type (RFC 8415 §7.3 number).
    pub request_type: u8,
    pub packet: Vec<u8>,
}

/// The reply to `packet`, if any.
pub fn respond(lease: &Lease6, packet: &[u8]) -> Option<Vec<u8>> {
    answer(lease, packet).map(|reply| reply.packet)
}

/// The reply to `packet` and its kind; see the module documentation for what gets what.
pub fn answer(lease: &Lease6, packet: &[u8]) -> Option<Reply> {
    let request = parse(packet)?;
    let duid = lease.server_duid();
    if request.server_id.is_some_and(|id| id != duid.as_slice()) {
        return None;
    }
    // RFC 8415 §16: these name the server they are for; all but INFORMATION-REQUEST carry the
    // client's DUID.
    let needs_server_id = matches!(request.msg_type, REQUEST | RENEW | RELEASE);
    if needs_server_id && request.server_id.is_none() {
        return None;
    }
    if request.client_id.is_none() && request.msg_type != INFORMATION_REQUEST {
        return None;
    }
    let (kind, body) = match request.msg_type {
        SOLICIT if request.rapid_commit => (ReplyKind::Reply, Body::Lease { rapid: true }),
        SOLICIT => (ReplyKind::Advertise, Body::Lease { rapid: false }),
        REQUEST | RENEW | REBIND => (ReplyKind::Reply, Body::Lease { rapid: false }),
        CONFIRM => {
            let on_link = request
                .ia_na
                .iter()
                .flat_map(|ia| &ia.addresses)
                .all(|a| *a == lease.address);
            (ReplyKind::Reply, Body::Status(on_link))
        }
        RELEASE => (ReplyKind::Reply, Body::Status(true)),
        INFORMATION_REQUEST => (ReplyKind::Reply, Body::Information),
        _ => return None,
    };
    let packet = encode(lease, &request, kind, body, duid)?;
    Some(Reply {
        kind,
        request_type: request.msg_type,
        packet,
    })
}

/// What a reply carries besides the identifiers.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// The address in each IA_NA, DNS servers.
    Lease { rapid: bool },
    /// Status Success, or NotOnLink when false.
    Status(bool),
    /// DNS servers only.
    Information,
}

fn encode(
    lease: &Lease6,
    request: &Request<'_>,
    kind: ReplyKind,
    body: Body,
    duid: Vec<u8>,
) -> Option<Vec<u8>> {
    let msg_type = match kind {
        ReplyKind::Advertise => MessageType::Advertise,
        ReplyKind::Reply => MessageType::Reply,
    };
    let mut msg = Message::new_with_id(msg_type, request.xid);
    let opts = msg.opts_mut();
    if let Some(client) = request.client_id {
        opts.insert(DhcpOption::ClientId(client.to_vec()));
    }
    opts.insert(DhcpOption::ServerId(duid));
    match body {
        Body::Lease { rapid } => {
            if rapid {
                opts.insert(DhcpOption::RapidCommit);
            }
            // one address for each IA_NA asked for, in the client's IAID (KubeVirt answers
            // the first one; T1/T2 zero leave renewal times to the client)
            for ia in &request.ia_na {
                let mut addr_opts = DhcpOptions::new();
                addr_opts.insert(DhcpOption::IAAddr(IAAddr {
                    addr: lease.address,
                    preferred_life: lease.preferred_lifetime,
                    valid_life: lease.valid_lifetime,
                    opts: DhcpOptions::new(),
                }));
                opts.insert(DhcpOption::IANA(IANA {
                    id: ia.iaid,
                    t1: 0,
                    t2: 0,
                    opts: addr_opts,
                }));
            }
            dns(lease, opts);
        }
        Body::Status(ok) => {
            opts.insert(DhcpOption::StatusCode(StatusCode {
                status: if ok {
                    Status::Success
                } else {
                    Status::NotOnLink
                },
                msg: String::new(),
            }));
        }
        Body::Information => dns(lease, opts),
    }
    msg.to_vec().ok()
}

fn dns(lease: &Lease6, opts: &mut DhcpOptions) {
    if !lease.dns_servers.is_empty() {
        opts.insert(DhcpOption::DomainNameServers(lease.dns_servers.clone()));
    }
}

/// The fields of a client message we read.
#[derive(Debug, Default)]
struct Request<'a> {
    msg_type: u8,
    xid: [u8; 3],
    client_id: Option<&'a [u8]>,
    server_id: Option<&'a [u8]>,
    ia_na: Vec<IaNa>,
    rapid_commit: bool,
}

#[derive(Debug)]
struct IaNa {
    iaid: u32,
    addresses: Vec<std::net::Ipv6Addr>,
}

fn parse(packet: &[u8]) -> Option<Request<'_>> {
    if packet.len() < 4 || packet.len() > MAX_REQUEST_LEN {
        return None;
    }
    let mut req = Request {
        msg_type: packet[0],
        xid: [packet[1], packet[2], packet[3]],
        ..Request::default()
    };
    let mut count = 0;
    for (code, value) in options(&packet[4..], &mut count)? {
        match code {
            OPT_CLIENTID | OPT_SERVERID => {
                if value.len() < 2 || value.len() > MAX_DUID_LEN {
                    return None;
                }
                let slot = if code == OPT_CLIENTID {
                    &mut req.client_id
                } else {
                    &mut req.server_id
                };
                if slot.replace(value).is_some() {
                    return None; // twice
                }
            }
            OPT_IA_NA => {
                let (head, rest) = value.split_first_chunk::<12>()?;
                let iaid = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                let mut addresses = Vec::new();
                for (sub, sub_value) in options(rest, &mut count)? {
                    if sub == OPT_IAADDR {
                        let addr: [u8; 16] = sub_value.get(..16)?.try_into().ok()?;
                        if sub_value.len() < 24 {
                            return None;
                        }
                        addresses.push(addr.into());
                    }
                }
                req.ia_na.push(IaNa { iaid, addresses });
            }
            OPT_RAPID_COMMIT => req.rapid_commit = true,
            _ => {}
        }
    }
    Some(req)
}

/// The (code, value) pairs of an option area, `None` when one runs past the end or the total
/// count passes [`MAX_REQUEST_OPTIONS`].
fn options<'a>(mut rest: &'a [u8], count: &mut usize) -> Option<Vec<(u16, &'a [u8])>> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = rest.split_first_chunk::<4>()?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = tail.get(..len)?;
        *count += 1;
        if *count > MAX_REQUEST_OPTIONS {
            return None;
        }
        out.push((code, value));
        rest = &tail[len..];
    }
    Some(out)
}
