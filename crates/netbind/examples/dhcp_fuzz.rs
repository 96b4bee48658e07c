//! A stable-Rust fuzz driver for `dhcp::respond` and `dhcp::answer`: seeded random bytes and
//! mutated valid requests, each checked for panics and for a well-formed reply to the lease's
//! MAC only.
//!
//! ```text
//! cargo run --release -p kuvirt-netbind --example dhcp_fuzz -- [N] [SEED] [INDEX]
//! ```
//!
//! N inputs (default 1000000), SEED (decimal or 0x-hex, default fixed). Input `i` depends only
//! on SEED and `i`, so a failure is replayed with `N SEED i`, which runs that input alone and
//! prints it. Exits 1 if any input panicked or failed a check, 2 on bad arguments.

use std::net::Ipv4Addr;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder};
use kuvirt_netbind::dhcp::{Lease, PrivateOption, ReplyKind, Route, answer, respond};

const DEFAULT_INPUTS: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x6b75_7669_7274_0043;
/// Every client must take a 576-byte message (RFC 2131 §2); replies stay within it.
const MAX_REPLY_LEN: usize = 576;
/// Failures whose panic message is printed in full; later ones only count.
const PRINTED_FAILURES: u64 = 10;

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const OTHER_MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x03];
const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
const COOKIE: [u8; 4] = [99, 130, 83, 99];
/// DISCOVER, REQUEST, DECLINE, RELEASE, INFORM and their weights' worth of repeats.
const MSG_TYPES: [u8; 8] = [1, 1, 3, 3, 4, 7, 8, 8];

static FAILURES: AtomicU64 = AtomicU64::new(0);

/// xorshift64*, seeded per input through splitmix64.
struct Rng(u64);

impl Rng {
    fn for_input(seed: u64, index: u64) -> Self {
        let mut z = seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn bytes(&mut self, len: usize) -> impl Iterator<Item = u8> + '_ {
        (0..len).map(|_| self.byte())
    }
}

/// A lease with every option set, and a bare one.
fn leases() -> [Lease; 2] {
    let mut full = Lease::new(MAC, IP, 24, GW);
    full.router = Some(GW);
    full.dns_servers = vec![Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 0, 2, 3)];
    full.search_domains = vec![
        "default.svc.cluster.local".into(),
        "svc.cluster.local".into(),
        "cluster.local".into(),
    ];
    full.hostname = Some("fuzz-guest".into());
    full.domain_name = Some("default.svc.cluster.local".into());
    full.mtu = Some(1450);
    full.routes = vec![Route {
        destination: Ipv4Addr::new(10, 96, 0, 0),
        prefix_len: 12,
        gateway: GW,
    }];
    full.boot_file_name = Some("pxelinux.0".into());
    full.tftp_server_name = Some("10.0.2.1".into());
    full.ntp_servers = vec![Ipv4Addr::new(10, 0, 2, 123)];
    full.private_options = vec![PrivateOption {
        code: 224,
        value: "fuzz".into(),
    }];
    let bare = Lease::new(MAC, IP, 32, Ipv4Addr::new(169, 254, 1, 1));
    [full, bare]
}

/// A well-formed request of `msg_type` with the options real clients send, in random order.
fn valid(rng: &mut Rng, lease: &Lease, msg_type: u8) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[..3].copy_from_slice(&[1, 1, 6]);
    p[4..8].copy_from_slice(&(rng.next() as u32).to_be_bytes());
    if rng.chance(2) {
        p[10] = 0x80; // broadcast flag
    }
    match rng.below(4) {
        0 => p[12..16].copy_from_slice(&lease.address.octets()),
        1 => p[12..16].copy_from_slice(&[192, 168, 1, rng.byte()]),
        _ => {}
    }
    let mac = if rng.chance(8) { OTHER_MAC } else { lease.mac };
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&COOKIE);
    let mut opts: Vec<Vec<u8>> = vec![vec![53, 1, msg_type]];
    if rng.chance(2) {
        let ip = if rng.chance(3) {
            [10, 0, 2, rng.byte()]
        } else {
            lease.address.octets()
        };
        opts.push([&[50, 4][..], &ip].concat());
    }
    if rng.chance(2) {
        let id = if rng.chance(4) {
            [10, 0, 0, 99]
        } else {
            lease.server_id.octets()
        };
        opts.push([&[54, 4][..], &id].concat());
    }
    opts.push(vec![55, 7, 1, 3, 6, 12, 15, 119, 121]);
    opts.push([&[61, 7, 1][..], &mac].concat());
    opts.push(vec![57, 2, 5, 220]);
    if rng.chance(2) {
        opts.push([&[12, 5][..], b"guest"].concat());
    }
    for i in (1..opts.len()).rev() {
        opts.swap(i, rng.below(i + 1));
    }
    for opt in opts {
        p.extend_from_slice(&opt);
        if rng.chance(8) {
            p.push(0);
        }
    }
    p.push(255);
    if rng.chance(4) {
        p.extend(std::iter::repeat_n(0, rng.below(64)));
    }
    p
}

/// The (start, end) of each option after the cookie, walked as the server walks them.
fn option_spans(p: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 240;
    while i + 1 < p.len() && p[i] != 255 {
        if p[i] == 0 {
            i += 1;
            continue;
        }
        let end = i + 2 + usize::from(p[i + 1]);
        if end > p.len() {
            break;
        }
        spans.push((i, end));
        i = end;
    }
    spans
}

/// Somewhere in the option area (or the end of a short packet).
fn option_point(rng: &mut Rng, p: &[u8]) -> usize {
    let start = 240.min(p.len());
    start + rng.below(p.len() - start + 1)
}

fn mutate(rng: &mut Rng, p: &mut Vec<u8>) {
    for _ in 0..=rng.below(8) {
        match rng.below(14) {
            0 if !p.is_empty() => {
                let i = rng.below(p.len());
                p[i] = rng.byte();
            }
            1 => {
                let i = option_point(rng, p);
                if let Some(b) = p.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            2 => p.truncate(rng.below(p.len() + 1)),
            3 => {
                // an arbitrary option, its length as likely wrong as right
                let at = option_point(rng, p);
                let len = rng.below(16);
                let claimed = if rng.chance(2) { len as u8 } else { rng.byte() };
                let mut opt = vec![rng.byte(), claimed];
                opt.extend(rng.bytes(len));
                p.splice(at..at, opt);
            }
            4 => {
                // an existing option again, elsewhere
                let spans = option_spans(p);
                if !spans.is_empty() {
                    let (start, end) = spans[rng.below(spans.len())];
                    let copy = p[start..end].to_vec();
                    let at = option_point(rng, p);
                    p.splice(at..at, copy);
                }
            }
            5 => {
                // a length field lying
                let spans = option_spans(p);
                if !spans.is_empty() {
                    let (start, _) = spans[rng.below(spans.len())];
                    p[start + 1] = match rng.below(3) {
                        0 => p[start + 1].wrapping_add(1),
                        1 => p[start + 1].wrapping_sub(1),
                        _ => rng.byte(),
                    };
                }
            }
            6 => {
                // overlong options: full 255-byte values, sometimes many
                let at = option_point(rng, p);
                for _ in 0..=rng.below(20) {
                    let mut opt = vec![rng.byte(), 255];
                    opt.extend(rng.bytes(255));
                    p.splice(at..at, opt);
                }
            }
            7 => {
                // PAD and END games
                let at = option_point(rng, p);
                match rng.below(4) {
                    0 => {
                        let pads = vec![0; rng.below(400)];
                        p.splice(at..at, pads);
                    }
                    1 => p.insert(at, 255),
                    2 => {
                        for b in p.iter_mut().skip(240).filter(|b| **b == 255) {
                            *b = 0;
                        }
                    }
                    _ => {
                        let n = rng.below(40);
                        p.push(255);
                        p.extend(rng.bytes(n));
                    }
                }
            }
            8 => {
                let n = rng.below(64);
                p.extend(rng.bytes(n));
            }
            9 => {
                // one option repeated many times, often past the option limit
                let code = if rng.chance(2) { 53 } else { rng.byte() };
                for _ in 0..rng.below(300) {
                    p.extend_from_slice(&[code, 1, rng.byte()]);
                }
            }
            10 => {
                // op, htype, hlen, flags and the cookie
                let i = [0, 1, 2, 10, 236, 237, 238, 239][rng.below(8)];
                if let Some(b) = p.get_mut(i) {
                    *b = [0, 1, 2, 6, 16, 255, rng.byte()][rng.below(7)];
                }
            }
            11 => {
                let i = rng.below(p.len());
                if i < p.len() {
                    p.remove(i);
                }
            }
            12 if !p.is_empty() => {
                // a stretch of the packet copied elsewhere
                let from = rng.below(p.len());
                let to = (from + rng.below(64)).min(p.len());
                let copy = p[from..to].to_vec();
                let at = rng.below(p.len() + 1);
                p.splice(at..at, copy);
            }
            _ => {
                // option overload (52) with sname and file full of options
                if p.len() >= 240 {
                    for b in &mut p[44..236] {
                        *b = rng.byte() % 4;
                    }
                    p[44..50].copy_from_slice(&[53, 1, 1, 50, 4, 10]);
                    let at = option_point(rng, p);
                    p.splice(at..at, [52, 1, rng.byte() % 4]);
                }
            }
        }
    }
}

/// Options the responder reads, with lengths right and wrong.
fn read_options(rng: &mut Rng, lease: &Lease) -> Vec<u8> {
    let mut p = valid(rng, lease, 1);
    p.truncate(240);
    for _ in 0..=rng.below(6) {
        let code = [50, 53, 54, 57, 55, 61][rng.below(6)];
        let len = if rng.chance(2) {
            match code {
                50 | 54 => 4,
                53 => 1,
                57 => 2,
                _ => rng.below(8),
            }
        } else {
            rng.below(9)
        };
        p.extend_from_slice(&[code, len as u8]);
        match code {
            53 => p.extend((0..len).map(|_| [1, 3, 8, 7, 0, 255][rng.below(6)])),
            50 if len == 4 && rng.chance(2) => p.extend_from_slice(&lease.address.octets()),
            54 if len == 4 && rng.chance(2) => p.extend_from_slice(&lease.server_id.octets()),
            _ => p.extend(rng.bytes(len)),
        }
    }
    if rng.chance(2) {
        p.push(255);
    }
    p
}

/// Input `index` of a run.
fn input(rng: &mut Rng, lease: &Lease) -> Vec<u8> {
    match rng.below(16) {
        0 => {
            let n = rng.below(700);
            rng.bytes(n).collect()
        }
        1 => {
            // around and over the server's size limit
            let n = 4000 + rng.below(200);
            rng.bytes(n).collect()
        }
        2 => {
            // noise behind a header the server accepts
            let n = 240 + rng.below(600);
            let mut p: Vec<u8> = rng.bytes(n).collect();
            p[..3].copy_from_slice(&[1, 1, 6]);
            p[28..34].copy_from_slice(&lease.mac);
            p[236..240].copy_from_slice(&COOKIE);
            p
        }
        3 | 4 => {
            let msg_type = MSG_TYPES[rng.below(MSG_TYPES.len())];
            valid(rng, lease, msg_type)
        }
        5 => read_options(rng, lease),
        _ => {
            let msg_type = if rng.chance(16) {
                rng.byte()
            } else {
                MSG_TYPES[rng.below(MSG_TYPES.len())]
            };
            let mut p = valid(rng, lease, msg_type);
            mutate(rng, &mut p);
            p
        }
    }
}

/// What the responder made of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ignored,
    Answered(ReplyKind),
}

/// Runs the responder on `packet` and checks the reply; panics on any violation.
fn check(lease: &Lease, packet: &[u8]) -> Outcome {
    let reply = answer(lease, packet);
    assert_eq!(
        respond(lease, packet).as_deref(),
        reply.as_ref().map(|r| &r.packet[..]),
        "respond and answer disagree"
    );
    let Some(reply) = reply else {
        return Outcome::Ignored;
    };
    assert_eq!(
        packet.get(28..34),
        Some(&lease.mac[..]),
        "answered another MAC"
    );
    assert!(
        (300..=MAX_REPLY_LEN).contains(&reply.packet.len()),
        "reply of {} bytes",
        reply.packet.len()
    );
    let msg = match Message::decode(&mut Decoder::new(&reply.packet)) {
        Ok(msg) => msg,
        Err(err) => panic!("reply does not decode: {err}"),
    };
    assert_eq!(msg.opcode(), Opcode::BootReply);
    assert_eq!(msg.htype(), HType::Eth);
    assert_eq!(msg.hlen(), 6);
    assert_eq!(msg.chaddr(), lease.mac, "reply chaddr");
    assert_eq!(msg.xid().to_be_bytes(), packet[4..8], "xid echoed");
    assert_eq!(reply.destination.port(), 68);
    let ciaddr = Ipv4Addr::from([packet[12], packet[13], packet[14], packet[15]]);
    let to = *reply.destination.ip();
    assert!(to == Ipv4Addr::BROADCAST || to == ciaddr, "sent to {to}");
    assert_eq!(
        msg.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(lease.server_id))
    );
    let (want_type, yiaddr_ok) = match reply.kind {
        ReplyKind::Offer => (MessageType::Offer, msg.yiaddr() == lease.address),
        // INFORM's ACK carries no address
        ReplyKind::Ack => (
            MessageType::Ack,
            msg.yiaddr() == lease.address || msg.yiaddr().is_unspecified(),
        ),
        ReplyKind::Nak => (MessageType::Nak, msg.yiaddr().is_unspecified()),
    };
    assert_eq!(msg.opts().msg_type(), Some(want_type));
    assert!(yiaddr_ok, "yiaddr {} in a {:?}", msg.yiaddr(), reply.kind);
    Outcome::Answered(reply.kind)
}

fn parse_u64(arg: &str) -> Result<u64, String> {
    let digits = arg.replace('_', "");
    let parsed = match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    parsed.map_err(|err| format!("{arg:?}: {err}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed: Result<Vec<u64>, String> = args.iter().map(|a| parse_u64(a)).collect();
    let (n, seed, only) = match parsed.as_deref() {
        Ok([]) => (DEFAULT_INPUTS, DEFAULT_SEED, None),
        Ok([n]) => (*n, DEFAULT_SEED, None),
        Ok([n, seed]) => (*n, *seed, None),
        Ok([n, seed, index]) => (*n, *seed, Some(*index)),
        Ok(_) => {
            eprintln!("usage: dhcp_fuzz [N] [SEED] [INDEX]");
            return ExitCode::from(2);
        }
        Err(err) => {
            eprintln!("dhcp-fuzz: {err}; usage: dhcp_fuzz [N] [SEED] [INDEX]");
            return ExitCode::from(2);
        }
    };
    // the first few panic messages in full, then only the count
    panic::set_hook(Box::new(|info| {
        if FAILURES.load(Ordering::Relaxed) < PRINTED_FAILURES {
            eprintln!("dhcp-fuzz: {info}");
        }
    }));

    let leases = leases();
    let indices = match only {
        Some(index) => index..index + 1,
        None => 0..n,
    };
    let started = Instant::now();
    let (mut answered, mut offers, mut acks, mut naks) = (0u64, 0u64, 0u64, 0u64);
    for index in indices {
        let mut rng = Rng::for_input(seed, index);
        let lease = &leases[(index % 2) as usize];
        let packet = input(&mut rng, lease);
        if only.is_some() {
            eprintln!(
                "dhcp-fuzz: input {index} ({} bytes): {packet:02x?}",
                packet.len()
            );
        }
        match panic::catch_unwind(AssertUnwindSafe(|| check(lease, &packet))) {
            Ok(Outcome::Ignored) => {}
            Ok(Outcome::Answered(kind)) => {
                answered += 1;
                match kind {
                    ReplyKind::Offer => offers += 1,
                    ReplyKind::Ack => acks += 1,
                    ReplyKind::Nak => naks += 1,
                }
            }
            Err(_) => {
                if FAILURES.fetch_add(1, Ordering::Relaxed) < PRINTED_FAILURES {
                    eprintln!(
                        "dhcp-fuzz: input failed: seed {seed:#x} index {index} (replay: dhcp_fuzz {n} {seed:#x} {index})"
                    );
                }
            }
        }
    }
    let ran = only.map_or(n, |_| 1);
    let secs = started.elapsed().as_secs_f64();
    let failures = FAILURES.load(Ordering::Relaxed);
    println!(
        "dhcp-fuzz: {ran} inputs, {answered} answered, {failures} panics, {:.0} inputs/s",
        ran as f64 / secs.max(1e-9)
    );
    println!("dhcp-fuzz: {offers} offers, {acks} acks, {naks} naks, seed {seed:#x}, {secs:.2} s");
    if failures > 0 {
        return ExitCode::FAILURE;
    }
    // a run this long that never reaches a reply of some kind means the generators broke
    if only.is_none() && n >= 100_000 && (offers == 0 || acks == 0 || naks == 0) {
        eprintln!("dhcp-fuzz: the inputs never produced every kind of reply");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
