//! The advertiser on one interface: a raw ICMPv6 socket bound to the device that multicasts
//! router advertisements to ff02::1 on a timer and answers router solicitations at once.
//!
//! Sockets are made in the network namespace of the thread that calls [`Server::bind`]; the
//! server then runs on any thread.

use std::ffi::OsString;
use std::io::{self, IoSliceMut};
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::cmsg_space;
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockProtocol, SockType,
    SockaddrIn6, sockopt,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::packet::{RaConfig, parse_router_solicitation, router_advertisement};

/// ff02::1, where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// ff02::2, where solicitations come to.
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
/// Time between unsolicited advertisements after the first few (RFC 4861's default
/// MinRtrAdvInterval; [`ROUTER_LIFETIME`](super::ROUTER_LIFETIME) is well above it).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(200);
/// The first advertisements go out faster (RFC 4861 §6.2.4: up to 3, at most 16 s apart).
pub const INITIAL_ADVERTISEMENTS: u32 = 3;
pub const INITIAL_INTERVAL: Duration = Duration::from_secs(4);
/// How often to look again for the interface's link-local address while it has none (an
/// advertisement must come from one, RFC 4861 §4.2; a bridge gets it once a port is up).
const LINK_LOCAL_POLL: Duration = Duration::from_millis(250);
/// Solicitations are answered at most this often; more are counted and dropped.
const MIN_SOLICITED_GAP: Duration = Duration::from_millis(100);
/// ND messages carry hop limit 255 (they never crossed a router).
const ND_HOP_LIMIT: i32 = 255;

/// Why the advertiser cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum NdpError {
    #[error("interface name {0:?} is not 1..=15 bytes")]
    Interface(String),
    #[error("ndp socket on {ifname}: {step}: {source}")]
    Socket {
        ifname: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("ndp socket on {ifname}: receive: {source}")]
    Receive { ifname: String, source: io::Error },
}

/// What the advertiser has done, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// ICMPv6 messages read (of any type).
    pub received: AtomicU64,
    /// Valid solicitations.
    pub solicitations: AtomicU64,
    /// Advertisements sent, solicited or not.
    pub advertisements: AtomicU64,
    /// Messages dropped: other types, malformed, wrong hop limit, over the rate.
    pub ignored: AtomicU64,
}

/// A bound advertiser; [`Server::run`] advertises until dropped or the socket fails.
#[derive(Debug)]
pub struct Server {
    ifname: String,
    ifindex: u32,
    advertisement: Vec<u8>,
    interval: Duration,
    socket: AsyncFd<OwnedFd>,
    /// Connected to ff02::1 on the interface only to learn which source address the kernel
    /// would pick: a link-local one once the interface has it.
    probe: UdpSocket,
    counters: Arc<Counters>,
}

impl Server {
    /// Opens a raw ICMPv6 socket on `ifname` (SO_BINDTODEVICE, hop limit 255, member of
    /// ff02::2) advertising `cfg`. Must be called inside a tokio runtime.
    pub fn bind(ifname: &str, cfg: &RaConfig) -> Result<Self, NdpError> {
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['\0', '/']) {
            return Err(NdpError::Interface(ifname.to_owned()));
        }
        let err = |step: &'static str| {
            let ifname = ifname.to_owned();
            move |source: io::Error| NdpError::Socket {
                ifname,
                step,
                source,
            }
        };
        let errno = |step: &'static str| {
            let err = err(step);
            move |e: nix::Error| err(io::Error::from(e))
        };
        let ifindex = nix::net::if_::if_nametoindex(ifname).map_err(errno("if_nametoindex"))?;
        let fd = socket::socket(
            AddressFamily::Inet6,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::IcmpV6,
        )
        .map_err(errno("socket"))?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(ifname))
            .map_err(errno("SO_BINDTODEVICE"))?;
        socket::setsockopt(&fd, sockopt::Ipv6RecvHopLimit, &true)
            .map_err(errno("IPV6_RECVHOPLIMIT"))?;
        let sock = socket2::Socket::from(fd);
        sock.set_multicast_hops_v6(ND_HOP_LIMIT as u32)
            .map_err(err("IPV6_MULTICAST_HOPS"))?;
        sock.set_unicast_hops_v6(ND_HOP_LIMIT as u32)
            .map_err(err("IPV6_UNICAST_HOPS"))?;
        sock.set_multicast_loop_v6(false)
            .map_err(err("IPV6_MULTICAST_LOOP"))?;
        sock.join_multicast_v6(&ALL_ROUTERS, ifindex)
            .map_err(err("join ff02::2"))?;
        // tokio 1.54 deprecates the safe constructors because a `T: AsRawFd` need not own its
        // fd (tokio#8587); an `OwnedFd` does, and the AsyncFd keeps it until it deregisters.
        #[allow(deprecated)]
        let socket = AsyncFd::with_interest(OwnedFd::from(sock), Interest::READABLE)
            .map_err(err("register"))?;

        let probe = socket::socket(
            AddressFamily::Inet6,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(errno("probe socket"))?;
        socket::setsockopt(&probe, sockopt::BindToDevice, &OsString::from(ifname))
            .map_err(errno("probe SO_BINDTODEVICE"))?;
        Ok(Self {
            ifname: ifname.to_owned(),
            ifindex,
            advertisement: router_advertisement(cfg),
            interval: DEFAULT_INTERVAL,
            socket,
            probe: UdpSocket::from(probe),
            counters: Arc::default(),
        })
    }

    /// Unsolicited advertisements every `interval` (after the first few) instead of
    /// [`DEFAULT_INTERVAL`].
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(100));
        self
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Advertises until the socket fails.
    pub async fn run(self) -> Result<(), NdpError> {
        tracing::info!(ifname = %self.ifname, interval = ?self.interval, "router advertiser up");
        let mut sent_unsolicited = 0u32;
        let mut next = Instant::now();
        let mut last_solicited: Option<Instant> = None;
        let mut waiting_logged = false;
        let mut buf = vec![0u8; 2048];
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    if self.link_local().is_none() {
                        if !waiting_logged {
                            tracing::debug!(ifname = %self.ifname, "ra: no link-local address yet");
                            waiting_logged = true;
                        }
                        next = Instant::now() + LINK_LOCAL_POLL;
                        continue;
                    }
                    self.send(self.all_nodes());
                    sent_unsolicited = sent_unsolicited.saturating_add(1);
                    let gap = if sent_unsolicited < INITIAL_ADVERTISEMENTS {
                        INITIAL_INTERVAL.min(self.interval)
                    } else {
                        self.interval
                    };
                    next = Instant::now() + gap;
                }
                ready = self.socket.readable() => {
                    let mut guard = ready.map_err(|source| NdpError::Receive {
                        ifname: self.ifname.clone(),
                        source,
                    })?;
                    let got = match guard.try_io(|fd| recv(fd.get_ref(), &mut buf)) {
                        Ok(got) => got,
                        Err(_would_block) => continue,
                    };
                    let (len, from, hop_limit) = match got {
                        Ok(got) => got,
                        Err(err) if transient(&err) => continue,
                        Err(source) => {
                            return Err(NdpError::Receive { ifname: self.ifname, source });
                        }
                    };
                    self.counters.received.fetch_add(1, Ordering::Relaxed);
                    let solicitation = buf
                        .get(..len)
                        .filter(|_| hop_limit.is_none_or(|h| h == ND_HOP_LIMIT))
                        .and_then(parse_router_solicitation);
                    let now = Instant::now();
                    let too_soon = last_solicited
                        .is_some_and(|t| now.duration_since(t) < MIN_SOLICITED_GAP);
                    if solicitation.is_none() || too_soon || self.link_local().is_none() {
                        self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.counters.solicitations.fetch_add(1, Ordering::Relaxed);
                    last_solicited = Some(now);
                    // RFC 4861 §6.2.6: unicast to a soliciting host that has an address
                    let to = match from {
                        Some(addr) if !addr.ip().is_unspecified() => {
                            SocketAddrV6::new(*addr.ip(), 0, 0, self.ifindex)
                        }
                        _ => self.all_nodes(),
                    };
                    tracing::debug!(ifname = %self.ifname, %to, "ra: answering a solicitation");
                    self.send(to);
                }
            }
        }
    }

    fn all_nodes(&self) -> SocketAddrV6 {
        SocketAddrV6::new(ALL_NODES, 0, 0, self.ifindex)
    }

    /// The link-local source the kernel would use on the interface now, if it has one that
    /// finished duplicate address detection.
    fn link_local(&self) -> Option<Ipv6Addr> {
        self.probe
            .connect(SocketAddrV6::new(ALL_NODES, 9, 0, self.ifindex))
            .ok()?;
        match self.probe.local_addr().ok()?.ip() {
            std::net::IpAddr::V6(ip) if ip.is_unicast_link_local() => Some(ip),
            _ => None,
        }
    }

    fn send(&self, to: SocketAddrV6) {
        let fd = self.socket.get_ref().as_raw_fd();
        match socket::sendto(
            fd,
            &self.advertisement,
            &SockaddrIn6::from(to),
            MsgFlags::empty(),
        ) {
            Ok(_) => {
                self.counters.advertisements.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::warn!(ifname = %self.ifname, %to, "ra send: {err}"),
        }
    }
}

/// One datagram: its length, source and hop limit (when the kernel reported it).
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<SocketAddrV6>, Option<i32>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = cmsg_space!(libc_int);
    let msg = socket::recvmsg::<SockaddrIn6>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut hop_limit = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::Ipv6HopLimit(h) = c {
                hop_limit = Some(h);
            }
        }
    }
    let from = msg.address.map(SocketAddrV6::from);
    Ok((msg.bytes, from, hop_limit))
}

/// The C `int` of the hop-limit control message, for `cmsg_space!`.
#[allow(non_camel_case_types)]
type libc_int = i32;

fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::NetworkDown
    )
}
