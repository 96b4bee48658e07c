//! Router advertisements (ICMPv6 type 134) as bytes, and router solicitations (type 133) read
//! from bytes that may be anything (RFC 4861 §4.1, §4.2, §4.6, §6.1.1).

use std::net::Ipv6Addr;

/// ICMPv6 message types of RFC 4861.
pub const ROUTER_SOLICITATION: u8 = 133;
pub const ROUTER_ADVERTISEMENT: u8 = 134;

/// Neighbour-discovery option types.
const OPT_SOURCE_LINK_ADDR: u8 = 1;
const OPT_PREFIX_INFO: u8 = 3;
const OPT_MTU: u8 = 5;

/// RA flags: addresses come from DHCPv6 (M), other configuration too (O).
const FLAG_MANAGED: u8 = 0x80;
const FLAG_OTHER: u8 = 0x40;
/// Prefix flags: the prefix is on-link (L), usable for SLAAC (A).
const PREFIX_ON_LINK: u8 = 0x80;
const PREFIX_AUTONOMOUS: u8 = 0x40;

/// What one router advertisement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    /// The advertising interface's MAC (source link-layer address option).
    pub source_mac: [u8; 6],
    /// Hop limit hosts should use; 0 leaves theirs.
    pub cur_hop_limit: u8,
    /// M flag: addresses come from DHCPv6.
    pub managed: bool,
    /// O flag: DNS and other configuration come from DHCPv6.
    pub other_config: bool,
    /// Seconds hosts keep us as default router; 0 advertises no default route.
    pub router_lifetime: u16,
    /// MTU option, when set.
    pub mtu: Option<u32>,
    /// Prefix information options.
    pub prefixes: Vec<PrefixInfo>,
}

/// A prefix information option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixInfo {
    pub prefix: Ipv6Addr,
    pub prefix_len: u8,
    /// L flag: addresses in the prefix are on this link.
    pub on_link: bool,
    /// A flag: hosts may form addresses by SLAAC (only meaningful for a /64).
    pub autonomous: bool,
    /// Seconds; `u32::MAX` is infinity.
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
}

/// A router solicitation that passed RFC 4861 §6.1.1's checks we can make on its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterSolicitation {
    /// The source link-layer address option, if sent with a 6-byte address.
    pub source_mac: Option<[u8; 6]>,
}

/// The ICMPv6 router advertisement for `cfg`, checksum left zero: the kernel fills it in on
/// raw ICMPv6 sockets. The prefix's host bits are cleared.
pub fn router_advertisement(cfg: &RaConfig) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 8 + 8 + 32 * cfg.prefixes.len());
    out.extend_from_slice(&[ROUTER_ADVERTISEMENT, 0, 0, 0, cfg.cur_hop_limit]);
    let mut flags = 0;
    if cfg.managed {
        flags |= FLAG_MANAGED;
    }
    if cfg.other_config {
        flags |= FLAG_OTHER;
    }
    out.push(flags);
    out.extend_from_slice(&cfg.router_lifetime.to_be_bytes());
    out.extend_from_slice(&[0; 8]); // reachable time, retrans timer: unspecified
    out.extend_from_slice(&[OPT_SOURCE_LINK_ADDR, 1]);
    out.extend_from_slice(&cfg.source_mac);
    if let Some(mtu) = cfg.mtu {
        out.extend_from_slice(&[OPT_MTU, 1, 0, 0]);
        out.extend_from_slice(&mtu.to_be_bytes());
    }
    for p in &cfg.prefixes {
        let len = p.prefix_len.min(128);
        let mut pflags = 0;
        if p.on_link {
            pflags |= PREFIX_ON_LINK;
        }
        if p.autonomous {
            pflags |= PREFIX_AUTONOMOUS;
        }
        out.extend_from_slice(&[OPT_PREFIX_INFO, 4, len, pflags]);
        out.extend_from_slice(&p.valid_lifetime.to_be_bytes());
        out.extend_from_slice(&p.preferred_lifetime.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&network(p.prefix, len).octets());
    }
    out
}

/// Reads a router solicitation (the ICMPv6 message, without IPv6 header): type 133, code 0,
/// at least 8 bytes, every option of non-zero length inside the message. `None` for anything
/// else.
pub fn parse_router_solicitation(icmp: &[u8]) -> Option<RouterSolicitation> {
    if icmp.len() < 8 || icmp[0] != ROUTER_SOLICITATION || icmp[1] != 0 {
        return None;
    }
    let mut source_mac = None;
    let mut rest = &icmp[8..];
    while !rest.is_empty() {
        let [kind, units, ..] = *rest else {
            return None;
        };
        let len = usize::from(units) * 8;
        if len == 0 {
            return None;
        }
        let opt = rest.get(..len)?;
        if kind == OPT_SOURCE_LINK_ADDR && source_mac.is_none() {
            source_mac = opt.get(2..8).and_then(|m| <[u8; 6]>::try_from(m).ok());
        }
        rest = &rest[len..];
    }
    Some(RouterSolicitation { source_mac })
}

/// `addr` with the bits after `len` cleared.
pub fn network(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let bits = u128::from(addr);
    let mask = match len {
        0 => 0,
        n if n >= 128 => u128::MAX,
        n => u128::MAX << (128 - u32::from(n)),
    };
    Ipv6Addr::from(bits & mask)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg() -> RaConfig {
        RaConfig {
            source_mac: [0x02, 0, 0, 0, 0, 0x01],
            cur_hop_limit: 64,
            managed: true,
            other_config: true,
            router_lifetime: 1800,
            mtu: Some(1400),
            prefixes: vec![PrefixInfo {
                prefix: "fd10:0:2::1".parse().unwrap(),
                prefix_len: 120,
                on_link: true,
                autonomous: false,
                valid_lifetime: 86_313_600,
                preferred_lifetime: 86_313_600,
            }],
        }
    }

    #[test]
    fn advertisement_bytes() {
        let ra = router_advertisement(&cfg());
        assert_eq!(ra.len(), 16 + 8 + 8 + 32);
        assert_eq!(
            &ra[..16],
            &[134, 0, 0, 0, 64, 0xc0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&ra[16..24], &[1, 1, 2, 0, 0, 0, 0, 1]);
        assert_eq!(&ra[24..32], &[5, 1, 0, 0, 0, 0, 0x05, 0x78]);
        let p = &ra[32..];
        assert_eq!(&p[..4], &[3, 4, 120, 0x80]);
        assert_eq!(&p[4..8], &86_313_600u32.to_be_bytes());
        assert_eq!(&p[8..12], &86_313_600u32.to_be_bytes());
        assert_eq!(&p[12..16], &[0; 4]);
        let prefix: Ipv6Addr = "fd10:0:2::".parse().unwrap();
        assert_eq!(&p[16..32], &prefix.octets());

        let mut plain = cfg();
        plain.managed = false;
        plain.other_config = false;
        plain.mtu = None;
        plain.prefixes.clear();
        let ra = router_advertisement(&plain);
        assert_eq!(ra.len(), 24);
        assert_eq!(ra[5], 0);
    }

    #[test]
    fn solicitations() {
        let bare = [133, 0, 0x12, 0x34, 0, 0, 0, 0];
        assert_eq!(
            parse_router_solicitation(&bare),
            Some(RouterSolicitation { source_mac: None })
        );
        let mut with_mac = bare.to_vec();
        with_mac.extend_from_slice(&[1, 1, 2, 3, 4, 5, 6, 7]);
        with_mac.extend_from_slice(&[14, 1, 0, 0, 0, 0, 0, 0]); // nonce option, skipped
        assert_eq!(
            parse_router_solicitation(&with_mac).unwrap().source_mac,
            Some([2, 3, 4, 5, 6, 7])
        );
        for bad in [
            &[][..],
            &bare[..7],
            &[134, 0, 0, 0, 0, 0, 0, 0][..],
            &[133, 1, 0, 0, 0, 0, 0, 0][..],
            &[133, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0][..], // zero-length option
            &[133, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0][..], // option past the end
            &[133, 0, 0, 0, 0, 0, 0, 0, 1][..],
        ] {
            assert_eq!(parse_router_solicitation(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut parsed = 0;
        for _ in 0..200_000 {
            let len = (next() % 80) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if p.len() >= 2 && next() % 2 == 0 {
                p[0] = 133;
                p[1] = 0;
            }
            parsed += usize::from(parse_router_solicitation(&p).is_some());
        }
        assert!(parsed > 100, "some random solicitations are well-formed");
    }

    #[test]
    fn network_clears_host_bits() {
        let a: Ipv6Addr = "fd10:0:2::1ff".parse().unwrap();
        assert_eq!(
            network(a, 120),
            "fd10:0:2::100".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(network(a, 0), Ipv6Addr::UNSPECIFIED);
        assert_eq!(network(a, 128), a);
    }
}
