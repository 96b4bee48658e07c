//! The DHCP server on one interface: a UDP socket on port 67 bound to the device, answering
//! with [`answer`](super::answer) until the task is dropped.
//!
//! It serves the network namespace of the thread that binds it: callers in another namespace
//! bind from a thread that has `setns`'d into the pod's namespace (setns is per thread).

use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn, sockopt};
use tokio::net::UdpSocket;

use super::lease::{Lease, LeaseError};
use super::respond::{MAX_REQUEST_LEN, ReplyKind, answer};

/// The server's port.
pub const SERVER_PORT: u16 = 67;

/// Why the server cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("lease: {0}")]
    Lease(#[from] LeaseError),
    #[error("interface name {0:?} is not 1..=15 bytes")]
    Interface(String),
    #[error("dhcp socket on {ifname}: {step}: {source}")]
    Socket {
        ifname: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("dhcp socket on {ifname}: receive: {source}")]
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
    lease: Lease,
    socket: UdpSocket,
    counters: Arc<Counters>,
}

/// Binds on `ifname` and serves `lease` until the socket fails.
pub async fn serve(ifname: &str, lease: Lease) -> Result<(), ServeError> {
    Server::bind(ifname, lease)?.run().await
}

impl Server {
    /// Checks the lease and binds `0.0.0.0:67` on `ifname` (SO_BINDTODEVICE, SO_BROADCAST,
    /// SO_REUSEADDR, so servers on other interfaces of the namespace coexist). Must be called
    /// inside a tokio runtime.
    pub fn bind(ifname: &str, lease: Lease) -> Result<Self, ServeError> {
        lease.validate()?;
        if ifname.is_empty() || ifname.len() > 15 || ifname.contains(['\0', '/']) {
            return Err(ServeError::Interface(ifname.to_owned()));
        }
        let step_err = |step: &'static str| {
            let ifname = ifname.to_owned();
            move |errno: nix::Error| ServeError::Socket {
                ifname,
                step,
                source: io::Error::from(errno),
            }
        };
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(step_err("socket"))?;
        socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(step_err("SO_REUSEADDR"))?;
        socket::setsockopt(&fd, sockopt::Broadcast, &true).map_err(step_err("SO_BROADCAST"))?;
        socket::setsockopt(&fd, sockopt::BindToDevice, &OsString::from(ifname))
            .map_err(step_err("SO_BINDTODEVICE"))?;
        let addr = SockaddrIn::from(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT));
        socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).map_err(step_err("bind"))?;
        let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|source| {
            ServeError::Socket {
                ifname: ifname.to_owned(),
                step: "register",
                source,
            }
        })?;
        Ok(Self {
            ifname: ifname.to_owned(),
            lease,
            socket,
            counters: Arc::default(),
        })
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Answers requests until the socket fails; bad input is logged at debug and skipped.
    pub async fn run(self) -> Result<(), ServeError> {
        let mac = self.lease.mac.map(|b| format!("{b:02x}")).join(":");
        tracing::info!(
            ifname = %self.ifname, %mac, address = %self.lease.address,
            "dhcp server listening"
        );
        // one byte more than we accept, so an oversized datagram shows as such
        let mut buf = vec![0u8; MAX_REQUEST_LEN + 1];
        loop {
            let (len, peer) = match self.socket.recv_from(&mut buf).await {
                Ok(got) => got,
                Err(err) if transient(&err) => {
                    tracing::debug!(ifname = %self.ifname, "dhcp receive: {err}");
                    continue;
                }
                Err(source) => {
                    return Err(ServeError::Receive {
                        ifname: self.ifname,
                        source,
                    });
                }
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let Some(reply) = buf
                .get(..len)
                .and_then(|packet| answer(&self.lease, packet))
            else {
                self.counters.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(ifname = %self.ifname, %peer, len, "dhcp: ignored datagram");
                continue;
            };
            tracing::debug!(
                ifname = %self.ifname, %peer, kind = ?reply.kind, to = %reply.destination,
                "dhcp: reply"
            );
            if reply.kind == ReplyKind::Nak {
                tracing::info!(ifname = %self.ifname, %mac, "dhcp: NAK for another address");
            }
            let mut sent = self.socket.send_to(&reply.packet, reply.destination).await;
            if sent.is_err() && !reply.destination.ip().is_broadcast() {
                // no route to the client's address in this namespace: broadcast instead
                let broadcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, reply.destination.port());
                sent = self.socket.send_to(&reply.packet, broadcast).await;
            }
            match sent {
                Ok(_) => {
                    self.counters.answered.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => tracing::warn!(ifname = %self.ifname, "dhcp send: {err}"),
            }
        }
    }
}

/// Errors a UDP socket reports for earlier sends (ICMP) or a link going down and up.
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
