//! Host-local IPAM for pod addresses (CNI's `host-local` plugin, kept as simple files): one file
//! per allocated address under `STATE/ipam/<cidr>/<ip>`, created with `create_new` so that two
//! allocators never hand out the same address, holding the pod UID that owns it. The network
//! address, the gateway (the first address, on the bridge) and the broadcast address are never
//! handed out.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::SandboxError;

/// Where the round-robin allocator continues from (host-local's file name).
const LAST_RESERVED: &str = "last_reserved_ip.0";

/// An IPv4 network in CIDR notation; the address is the network address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; host bits of `addr` are cleared.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Cidr, SandboxError> {
        if prefix > 32 {
            return Err(SandboxError::BadCidr(format!("{addr}/{prefix}")));
        }
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(addr) & mask(prefix)),
            prefix,
        })
    }

    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// How many addresses the network spans.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// The `i`-th address of the network (0 is the network address), if it is inside.
    pub fn nth(&self, i: u64) -> Option<Ipv4Addr> {
        (i < self.size())
            .then(|| u32::try_from(i).ok())
            .flatten()
            .map(|i| Ipv4Addr::from(u32::from(self.network) + i))
    }

    /// The first address: the bridge's, pods' default gateway.
    /// The IPv6 pod network that goes with this one (see [`ipv6_of`]), as `ADDR/LEN`.
    pub fn ipv6(&self) -> String {
        format!(
            "{}/{}",
            ipv6_of(self.network()),
            96 + u16::from(self.prefix)
        )
    }

    /// The IPv6 prefix length of [`Cidr::ipv6`].
    pub fn ipv6_prefix(&self) -> u8 {
        96 + self.prefix
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        (self.prefix <= 30).then(|| self.nth(1)).flatten()
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// Whether `other` lies entirely inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.network)
    }

    /// The name as a file or directory name: `10.244.0.0-24`.
    pub fn safe_name(&self) -> String {
        format!("{}-{}", self.network, self.prefix)
    }

    /// The network a [`Cidr::safe_name`] names.
    pub fn from_safe_name(name: &str) -> Option<Cidr> {
        let (addr, prefix) = name.rsplit_once('-')?;
        Cidr::new(addr.parse().ok()?, prefix.parse().ok()?).ok()
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = SandboxError;

    fn from_str(s: &str) -> Result<Cidr, SandboxError> {
        let bad = || SandboxError::BadCidr(s.to_string());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Cidr::new(addr, prefix)
    }
}

/// Pods' IPv6 addresses follow their IPv4 ones: `fd6b:7576::A.B.C.D` (this /96 plus the IPv4
/// address), so a node's IPv6 pod network is its IPv4 pod CIDR shifted in, 96 bits longer, and a
/// sticky IPv4 address carries its IPv6 one along.
pub const IPV6_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd6b, 0x7576, 0, 0, 0, 0, 0, 0);

/// The IPv6 address that goes with pod (or gateway) address `ip`.
pub fn ipv6_of(ip: Ipv4Addr) -> Ipv6Addr {
    let mut o = IPV6_PREFIX.octets();
    o[12..].copy_from_slice(&ip.octets());
    Ipv6Addr::from(o)
}

/// Whether an address file was ours to create.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    Ours,
    /// Another pod's (its UID).
    Held(String),
}

/// What a pod asks of the allocator besides an address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpRequest {
    /// This address and no other (`kuvirt.io/ip`).
    pub address: Option<Ipv4Addr>,
    /// This address if it is free here (`kuvirt.io/ip-lease`), else any.
    pub prefer: Option<Ipv4Addr>,
    /// Addresses other VMs keep while they are stopped: never handed to another pod.
    pub reserved: std::collections::BTreeSet<Ipv4Addr>,
}

/// The allocator of one pod CIDR.
#[derive(Clone, Debug)]
pub struct Ipam {
    dir: PathBuf,
    cidr: Cidr,
}

impl Ipam {
    /// The allocator for `cidr`, keeping its files under `state_dir/ipam/<cidr>/`.
    pub fn new(state_dir: &Path, cidr: Cidr) -> Ipam {
        Ipam {
            dir: ipam_root(state_dir).join(cidr.safe_name()),
            cidr,
        }
    }

    pub fn cidr(&self) -> Cidr {
        self.cidr
    }

    /// The address `uid` holds, or a new one: the next free address after the last one handed
    /// out (round robin, so a released address is not reused at once).
    pub fn allocate(&self, uid: &str) -> Result<Ipv4Addr, SandboxError> {
        self.allocate_as(uid, &IpRequest::default())
    }

    /// [`Ipam::allocate`] honouring `want`: its one address (refused when it is not a pod
    /// address of this CIDR, or another pod or VM holds it), or a new one that is not reserved.
    pub fn allocate_as(&self, uid: &str, want: &IpRequest) -> Result<Ipv4Addr, SandboxError> {
        if let Some(ip) = self.lookup(uid)? {
            return Ok(ip);
        }
        if self.cidr.gateway().is_none() {
            return Err(SandboxError::Exhausted(self.cidr.to_string()));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| SandboxError::io(&self.dir, e))?;
        // Usable: network + 2 ..= broadcast - 1.
        let first = 2u64;
        let last = self.cidr.size() - 2;
        let count = last - first + 1;
        let usable = |ip: Ipv4Addr| {
            let i = u64::from(u32::from(ip).wrapping_sub(u32::from(self.cidr.network())));
            self.cidr.contains(ip) && (first..=last).contains(&i)
        };
        if let Some(ip) = want.address {
            let refuse = |why: String| SandboxError::IpRequest { ip, why };
            if !usable(ip) {
                return Err(refuse(format!(
                    "not a pod address of this node's pod CIDR {}",
                    self.cidr
                )));
            }
            if want.reserved.contains(&ip) {
                return Err(refuse("another VM keeps it".into()));
            }
            return match self.claim(ip, uid)? {
                Claim::Ours => Ok(ip),
                Claim::Held(owner) => Err(refuse(format!("pod {owner} holds it"))),
            };
        }
        if let Some(ip) = want
            .prefer
            .filter(|ip| usable(*ip) && !want.reserved.contains(ip))
            && self.claim(ip, uid)? == Claim::Ours
        {
            return Ok(ip);
        }
        let after = std::fs::read_to_string(self.dir.join(LAST_RESERVED))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok())
            .filter(|ip| self.cidr.contains(*ip))
            .map(|ip| u64::from(u32::from(ip) - u32::from(self.cidr.network())))
            .filter(|i| (first..=last).contains(i))
            .unwrap_or(last);
        for step in 1..=count {
            let i = first + (after - first + step) % count;
            let Some(ip) = self.cidr.nth(i) else { continue };
            if want.reserved.contains(&ip) {
                continue;
            }
            if self.claim(ip, uid)? == Claim::Ours {
                let _ = std::fs::write(self.dir.join(LAST_RESERVED), ip.to_string());
                return Ok(ip);
            }
        }
        Err(SandboxError::Exhausted(self.cidr.to_string()))
    }

    /// Takes `ip` for `uid` by creating its file (exclusively), or says who holds it.
    fn claim(&self, ip: Ipv4Addr, uid: &str) -> Result<Claim, SandboxError> {
        use std::io::Write;
        let path = self.dir.join(ip.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(uid.as_bytes())
                    .map_err(|e| SandboxError::io(&path, e))?;
                Ok(Claim::Ours)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Claim::Held(
                std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .trim()
                    .to_owned(),
            )),
            Err(e) => Err(SandboxError::io(&path, e)),
        }
    }

    /// The address `uid` holds, if any.
    pub fn lookup(&self, uid: &str) -> Result<Option<Ipv4Addr>, SandboxError> {
        Ok(self
            .owners()?
            .into_iter()
            .find(|(_, owner)| owner == uid)
            .map(|(ip, _)| ip))
    }

    /// Frees the address `uid` holds; returns it.
    pub fn release(&self, uid: &str) -> Result<Option<Ipv4Addr>, SandboxError> {
        let Some(ip) = self.lookup(uid)? else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(Some(ip)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(ip)),
            Err(e) => Err(SandboxError::io(&path, e)),
        }
    }

    /// Every allocated address with the UID that holds it.
    pub fn owners(&self) -> Result<Vec<(Ipv4Addr, String)>, SandboxError> {
        owners_in(&self.dir)
    }
}

fn ipam_root(state_dir: &Path) -> PathBuf {
    state_dir.join("ipam")
}

fn owners_in(dir: &Path) -> Result<Vec<(Ipv4Addr, String)>, SandboxError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(SandboxError::io(dir, e)),
    };
    let mut out = vec![];
    for entry in entries.flatten() {
        let Some(ip) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        // A file being written right now may still be empty: it belongs to nobody yet.
        if let Ok(uid) = std::fs::read_to_string(entry.path()) {
            let uid = uid.trim();
            if !uid.is_empty() {
                out.push((ip, uid.to_string()));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// One address held in some pod CIDR's directory under the state directory.
struct Held {
    /// The CIDR's directory.
    dir: PathBuf,
    /// The CIDR, from the directory's name.
    cidr: Option<Cidr>,
    ip: Ipv4Addr,
    uid: String,
}

/// Every address held in any pod CIDR under `state_dir` (a migration target holds its VM's
/// address in the CIDR of the node it came from).
fn held_everywhere(state_dir: &Path) -> Result<Vec<Held>, SandboxError> {
    let root = ipam_root(state_dir);
    let entries = match std::fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(SandboxError::io(&root, e)),
    };
    let mut out = vec![];
    for entry in entries.flatten() {
        let dir = entry.path();
        let cidr = entry.file_name().to_str().and_then(Cidr::from_safe_name);
        for (ip, uid) in owners_in(&dir)? {
            out.push(Held {
                dir: dir.clone(),
                cidr,
                ip,
                uid,
            });
        }
    }
    Ok(out)
}

/// Every pod UID holding an address in any pod CIDR under `state_dir`.
pub fn all_owners(state_dir: &Path) -> Result<Vec<String>, SandboxError> {
    let mut uids: Vec<String> = held_everywhere(state_dir)?
        .into_iter()
        .map(|h| h.uid)
        .collect();
    uids.sort();
    uids.dedup();
    Ok(uids)
}

/// The address `uid` holds in any pod CIDR under `state_dir`, with that CIDR.
pub fn lookup_everywhere(
    state_dir: &Path,
    uid: &str,
) -> Result<Option<(Cidr, Ipv4Addr)>, SandboxError> {
    Ok(held_everywhere(state_dir)?
        .into_iter()
        .find(|h| h.uid == uid)
        .and_then(|h| Some((h.cidr?, h.ip))))
}

/// The addresses held under `state_dir` outside `own` (migration targets' of other nodes'
/// pod CIDRs).
pub fn addresses_outside(state_dir: &Path, own: Cidr) -> Result<Vec<Ipv4Addr>, SandboxError> {
    let mut out: Vec<Ipv4Addr> = held_everywhere(state_dir)?
        .into_iter()
        .map(|h| h.ip)
        .filter(|ip| !own.contains(*ip))
        .collect();
    out.sort();
    Ok(out)
}

/// Frees whatever address `uid` holds in any pod CIDR under `state_dir`.
pub fn release_everywhere(state_dir: &Path, uid: &str) -> Result<(), SandboxError> {
    for h in held_everywhere(state_dir)?
        .into_iter()
        .filter(|h| h.uid == uid)
    {
        let path = h.dir.join(h.ip.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SandboxError::io(&path, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn cidrs_parse_and_name_their_addresses() {
        let c: Cidr = "10.244.3.7/24".parse().unwrap();
        assert_eq!(c.to_string(), "10.244.3.0/24");
        assert_eq!(c.gateway(), Some(Ipv4Addr::new(10, 244, 3, 1)));
        assert_eq!(c.safe_name(), "10.244.3.0-24");
        assert_eq!(Cidr::from_safe_name(&c.safe_name()), Some(c));
        assert_eq!(Cidr::from_safe_name("last_reserved_ip.0"), None);
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 255)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 4, 0)));
        let big: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(big.covers(&c));
        assert!(!c.covers(&big));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "10.0.0/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!("10.0.0.1/31".parse::<Cidr>().unwrap().gateway(), None);
    }

    #[test]
    fn requested_addresses_are_honoured_or_refused_and_reserved_ones_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "10.9.0.0/29".parse().unwrap());
        let ask = |ip: [u8; 4]| IpRequest {
            address: Some(Ipv4Addr::from(ip)),
            reserved: [Ipv4Addr::new(10, 9, 0, 6)].into(),
            ..IpRequest::default()
        };
        assert_eq!(
            ipam.allocate_as("a", &ask([10, 9, 0, 4])).unwrap(),
            Ipv4Addr::new(10, 9, 0, 4)
        );
        let why = |uid: &str, ip| ipam.allocate_as(uid, &ask(ip)).unwrap_err().to_string();
        assert_eq!(
            why("b", [10, 9, 0, 4]),
            "the requested pod IP 10.9.0.4 cannot be had: pod a holds it"
        );
        assert!(
            why("b", [10, 9, 0, 1])
                .contains("not a pod address of this node's pod CIDR 10.9.0.0/29")
        );
        assert!(why("b", [10, 9, 0, 7]).contains("not a pod address"));
        assert!(why("b", [10, 9, 1, 2]).contains("not a pod address"));
        assert!(why("b", [10, 9, 0, 6]).ends_with("another VM keeps it"));
        // A preference is had when free, else any address.
        let prefer = |ip: [u8; 4]| IpRequest {
            prefer: Some(Ipv4Addr::from(ip)),
            ..IpRequest::default()
        };
        assert_eq!(
            ipam.allocate_as("p", &prefer([10, 9, 0, 3])).unwrap(),
            Ipv4Addr::new(10, 9, 0, 3)
        );
        assert_ne!(
            ipam.allocate_as("q", &prefer([10, 9, 0, 3])).unwrap(),
            Ipv4Addr::new(10, 9, 0, 3)
        );
        ipam.release("p").unwrap();
        ipam.release("q").unwrap();
        // Without a request: never the reserved .6.
        let free = IpRequest {
            reserved: [Ipv4Addr::new(10, 9, 0, 6)].into(),
            ..IpRequest::default()
        };
        let got: Vec<_> = ["b", "c", "d", "e"]
            .iter()
            .map(|u| ipam.allocate_as(u, &free).map_err(|e| e.to_string()))
            .collect();
        assert_eq!(
            got,
            // round robin after .2, which q had last
            vec![
                Ok(Ipv4Addr::new(10, 9, 0, 3)),
                Ok(Ipv4Addr::new(10, 9, 0, 5)),
                Ok(Ipv4Addr::new(10, 9, 0, 2)),
                Err("ipam 10.9.0.0/29: no free address".into())
            ]
        );
    }

    #[test]
    fn allocation_skips_the_gateway_exhausts_clearly_and_reuses_released_addresses() {
        let dir = tempfile::tempdir().unwrap();
        // /29: .0 network, .1 gateway, .7 broadcast: five pod addresses.
        let ipam = Ipam::new(dir.path(), "10.9.0.0/29".parse().unwrap());
        let mut got = vec![];
        for i in 0..5 {
            got.push(ipam.allocate(&format!("uid-{i}")).unwrap());
        }
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        assert_eq!(got, want);
        // The same pod asks again: the same address.
        assert_eq!(ipam.allocate("uid-3").unwrap(), Ipv4Addr::new(10, 9, 0, 5));
        let err = ipam.allocate("uid-5").unwrap_err();
        assert!(matches!(err, SandboxError::Exhausted(_)), "{err}");
        assert_eq!(err.to_string(), "ipam 10.9.0.0/29: no free address");
        assert_eq!(
            ipam.release("uid-1").unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 3))
        );
        assert_eq!(ipam.release("uid-1").unwrap(), None);
        assert_eq!(ipam.allocate("uid-6").unwrap(), Ipv4Addr::new(10, 9, 0, 3));
        assert_eq!(
            ipam.lookup("uid-6").unwrap(),
            Some(Ipv4Addr::new(10, 9, 0, 3))
        );
        let file = dir.path().join("ipam/10.9.0.0-29/10.9.0.3");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "uid-6");
        assert_eq!(all_owners(dir.path()).unwrap().len(), 5);
        release_everywhere(dir.path(), "uid-6").unwrap();
        assert_eq!(ipam.lookup("uid-6").unwrap(), None);
    }

    #[test]
    fn round_robin_moves_past_a_just_released_address() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "10.9.0.0/24".parse().unwrap());
        let a = ipam.allocate("a").unwrap();
        ipam.release("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        assert_ne!(a, b);
        assert_ne!(Some(b), ipam.cidr().gateway());
    }

    #[test]
    fn tiny_networks_have_nothing_to_hand_out() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::new(dir.path(), "10.9.0.0/31".parse().unwrap());
        assert!(matches!(
            ipam.allocate("a"),
            Err(SandboxError::Exhausted(_))
        ));
        let ipam = Ipam::new(dir.path(), "10.9.0.0/30".parse().unwrap());
        assert_eq!(ipam.allocate("a").unwrap(), Ipv4Addr::new(10, 9, 0, 2));
        assert!(matches!(
            ipam.allocate("b"),
            Err(SandboxError::Exhausted(_))
        ));
    }

    #[test]
    fn a_moved_address_is_found_and_freed_in_its_home_cidr() {
        let dir = tempfile::tempdir().unwrap();
        let own: Cidr = "10.244.1.0/24".parse().unwrap();
        let home: Cidr = "10.244.0.0/24".parse().unwrap();
        let local = Ipam::new(dir.path(), own).allocate("pod").unwrap();
        let moved = Ipv4Addr::new(10, 244, 0, 9);
        let want = IpRequest {
            address: Some(moved),
            ..IpRequest::default()
        };
        Ipam::new(dir.path(), home)
            .allocate_as("target", &want)
            .unwrap();
        assert_eq!(
            lookup_everywhere(dir.path(), "target").unwrap(),
            Some((home, moved))
        );
        assert_eq!(
            lookup_everywhere(dir.path(), "pod").unwrap(),
            Some((own, local))
        );
        assert_eq!(addresses_outside(dir.path(), own).unwrap(), vec![moved]);
        assert_eq!(all_owners(dir.path()).unwrap(), vec!["pod", "target"]);
        release_everywhere(dir.path(), "target").unwrap();
        assert_eq!(lookup_everywhere(dir.path(), "target").unwrap(), None);
        assert!(addresses_outside(dir.path(), own).unwrap().is_empty());
    }
}
