//! A deterministic fuzz loop over `dhcp::answer`: random bytes and mutated valid requests never
//! panic, and every reply goes to the lease's MAC only.

#![allow(clippy::unwrap_used)] // test helpers fail loudly

use std::net::Ipv4Addr;
use std::time::Instant;

use kuvirt_netbind::dhcp::{Lease, PrivateOption, ReplyKind, Route, answer};

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

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

fn lease() -> Lease {
    let mut lease = Lease::new(
        MAC,
        Ipv4Addr::new(10, 0, 2, 2),
        24,
        Ipv4Addr::new(10, 0, 2, 1),
    );
    lease.router = Some(Ipv4Addr::new(10, 0, 2, 1));
    lease.dns_servers = vec![Ipv4Addr::new(10, 0, 2, 3)];
    lease.search_domains = vec!["ns.svc.cluster.local".into(), "cluster.local".into()];
    lease.hostname = Some("guest".into());
    lease.domain_name = Some("ns.svc.cluster.local".into());
    lease.mtu = Some(1500);
    lease.routes = vec![Route::default_via(Ipv4Addr::new(10, 0, 2, 1))];
    lease.boot_file_name = Some("ipxe.efi".into());
    lease.private_options = vec![PrivateOption {
        code: 250,
        value: "v".into(),
    }];
    lease
}

/// A valid request of the given DHCP message type with a few common options.
fn valid(rng: &mut Rng, msg_type: u8, mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&(rng.next() as u32).to_be_bytes());
    if rng.below(2) == 0 {
        p[10] = 0x80; // broadcast flag
    }
    if rng.below(3) == 0 {
        p[12..16].copy_from_slice(&[10, 0, 2, 2]); // ciaddr
    }
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, msg_type]);
    if rng.below(2) == 0 {
        let ip = if rng.below(2) == 0 {
            [10, 0, 2, 2]
        } else {
            [10, 0, 2, 9]
        };
        p.extend_from_slice(&[50, 4]);
        p.extend_from_slice(&ip);
    }
    if rng.below(2) == 0 {
        p.extend_from_slice(&[54, 4, 10, 0, 2, 1]);
    }
    p.extend_from_slice(&[55, 6, 1, 3, 6, 15, 119, 121]);
    p.extend_from_slice(&[61, 7, 1]);
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[57, 2, 5, 220, 255]);
    p
}

fn mutate(rng: &mut Rng, packet: &mut Vec<u8>) {
    for _ in 0..=rng.below(6) {
        match rng.below(7) {
            0 if !packet.is_empty() => {
                let i = rng.below(packet.len());
                packet[i] = rng.byte();
            }
            1 if !packet.is_empty() => {
                // flip a byte in the option area, where structure matters most
                let i = 240 + rng.below(packet.len().saturating_sub(240).max(1));
                if let Some(b) = packet.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            2 => packet.truncate(rng.below(packet.len() + 1)),
            3 => {
                // insert an arbitrary option (possibly lying about its length)
                let at = 240.min(packet.len()) + rng.below(packet.len().saturating_sub(240) + 1);
                let at = at.min(packet.len());
                let len = rng.below(12);
                let mut opt = vec![rng.byte(), rng.byte() % 16];
                opt.extend((0..len).map(|_| rng.byte()));
                packet.splice(at..at, opt);
            }
            4 => packet.extend((0..rng.below(64)).map(|_| rng.byte())),
            5 => {
                // many repeated options
                let code = rng.byte();
                for _ in 0..rng.below(300) {
                    packet.extend_from_slice(&[code, 1, rng.byte()]);
                }
            }
            _ => {
                let i = rng.below(packet.len().max(1));
                if i < packet.len() {
                    packet.remove(i);
                }
            }
        }
    }
}

#[test]
fn random_and_mutated_requests_never_panic_and_only_answer_the_lease() {
    let lease = lease();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let started = Instant::now();
    let (mut offers, mut acks, mut naks) = (0u32, 0u32, 0u32);
    let rounds = 120_000;
    for round in 0..rounds {
        let packet = match round % 4 {
            // pure noise, sometimes with a valid header prefix
            0 => {
                let len = rng.below(700);
                let mut p: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
                if rng.below(2) == 0 && p.len() >= 240 {
                    p[..3].copy_from_slice(&[1, 1, 6]);
                    p[28..34].copy_from_slice(&MAC);
                    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
                }
                p
            }
            // valid requests of any type from our MAC or another one, then mutated
            _ => {
                let mac = if rng.below(4) == 0 {
                    let mut other = MAC;
                    other[rng.below(6)] ^= 1 << rng.below(8);
                    other
                } else {
                    MAC
                };
                let msg_type = (rng.below(10) + 1) as u8;
                let mut p = valid(&mut rng, msg_type, mac);
                if round % 4 != 1 {
                    mutate(&mut rng, &mut p);
                }
                p
            }
        };
        let asked_by_lease = packet.get(28..34) == Some(&MAC[..]);
        if let Some(reply) = answer(&lease, &packet) {
            assert!(asked_by_lease, "answered another MAC: {packet:02x?}");
            assert_eq!(reply.packet[0], 2, "a reply is a BOOTREPLY");
            assert_eq!(&reply.packet[28..34], &MAC, "reply chaddr");
            assert_eq!(&reply.packet[..3], &[2, 1, 6]);
            assert_eq!(&reply.packet[4..8], &packet[4..8], "xid echoed");
            assert_eq!(reply.destination.port(), 68);
            match reply.kind {
                ReplyKind::Offer => offers += 1,
                ReplyKind::Ack => acks += 1,
                ReplyKind::Nak => naks += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{rounds} inputs in {elapsed:?}: {offers} offers, {acks} acks, {naks} naks");
    // the loop exercises every kind of reply, not only rejections
    assert!(offers > 1000 && acks > 1000 && naks > 500);
}
