//! The DHCPv6 server on one interface: UDP port 547 bound to the device, member of
//! ff02::1:2, answering with [`answer`](super::answer) until the task is dropped.
//!
//! Like KubeVirt's, it answers any client on its interface (whatever its DUID): the interface
//! is the guest's bridge, whose only other port is the VM's tap. The socket is made in the
//! network namespace of the thread that calls [`Server::bind`].

use std::ffi::OsString;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn6, sockopt};
use tokio::net::UdpSocket;

use super::lease::{Lease6, Lease6Error};
use super::respond::{MAX_REQUEST_LEN, answer};

/// The server's port and the clients'.
pub const SERVER_PORT: u16 = 547;
pub const CLIENT_PORT: u16 = 546;
/// ff02::1:2, All_DHCP_Relay_Agents_and_Servers.
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Serve6Error {
    #[error("lease: {0}")]
    Lease(#[from] Lease6Error),
    #[error("interface name {0:?} is not 1..=15 bytes")]
    Interface(String),
    #[error("dhcpv6 socket on {ifname}: {step}: {source}")]
    Socket {
        ifname: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("dhcpv6 socket on {ifname}: receive: {source}")]
    Receive { ifname: String, source: io::Error },
}

/// What the server has seen, for logs and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub answered: AtomicU64,
    pub ignored: AtomicU64,
}

/// A bound server; [`Server::run`] answers until dropped or the socket fails.
#[derive(Debug)]
pub struct Server {
    ifname: String,
    ifindex: u32,
    lease: Lease6,
    socket: UdpSocket,
    counters: Arc<Counters>,
}

/// Binds on `ifname` and serves `lease` until the socket fails.
pub async fn serve(ifname: &str, lease: Lease6) -> Result<(), Serve6Error> {
    Server::bind(ifname, lease)?.run().await
}

impl Server {
    /// Checks the lease and binds `[::]:547` on `ifname` (SO_BINDTODEVICE, SO_REUSEADDR,
    /// IPV6_V6ONLY), joined to ff02::1:2 there. Must be called inside a tokio runtime.
    pub fn bind(ifname: &str, lease: Lease6) -> Result<Self, Serve6Error> {
        lease.validate()?;
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['\0', '/']) {
            return Err(Serve6Error::Interface(ifname.to_owned()));
        }
        let err = |step: &'static str| {
            let ifname = ifname.to_owned();
            move |source: io::Error| Serve6Error::Socket {
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
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(errno("socket"))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(errno("SO_REUSEADDR"))?;
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(errno("IPV6_V6ONLY"))?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(ifname))
            .map_err(errno("SO_BINDTODEVICE"))?;
        let addr = SockaddrIn6::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, SERVER_PORT, 0, 0));
        socket::bind(fd.as_raw_fd(), &addr).map_err(errno("bind"))?;
        let std_socket = std::net::UdpSocket::from(fd);
        std_socket
            .join_multicast_v6(&ALL_SERVERS, ifindex)
            .map_err(err("join ff02::1:2"))?;
        let socket = UdpSocket::from_std(std_socket).map_err(err("register"))?;
        Ok(Self {
            ifname: ifname.to_owned(),
            ifindex,
            lease,
            socket,
            counters: Arc::default(),
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Answers requests until the socket fails; bad input is logged at debug and skipped.
    pub async fn run(self) -> Result<(), Serve6Error> {
        tracing::info!(
            ifname = %self.ifname, address = %self.lease.address, "dhcpv6 server listening"
        );
        let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
        loop {
            let (len, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(err) if transient(&err) => {
                    tracing::debug!(ifname = %self.ifname, "dhcpv6 receive: {err}");
                    continue;
                }
                Err(source) => {
                    return Err(Serve6Error::Receive {
                        ifname: self.ifname,
                        source,
                    });
                }
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let reply = buf
                .get(..len)
                .and_then(|packet| answer(&self.lease, packet));
            let (Some(reply), SocketAddr::V6(peer)) = (reply, peer) else {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(ifname = %self.ifname, %peer, len, "dhcpv6: ignored datagram");
                continue;
            };
            // a link-local client address needs our interface as its scope
            let mut to = peer;
            if to.scope_id() == 0 && to.ip().is_unicast_link_local() {
                to.set_scope_id(self.ifindex);
            }
            tracing::debug!(
                ifname = %self.ifname, %to, kind = ?reply.kind, request = reply.request_type,
                "dhcpv6: reply"
            );
            match self.socket.send_to(&reply.packet, to).await {
                Ok(_) => {
                    self.counters.answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => tracing::warn!(ifname = %self.ifname, %to, "dhcpv6 send: {err}"),
            }
        }
    }
}

fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
    )
}
