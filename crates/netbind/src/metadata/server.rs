//! The metadata service on a TCP listener: HTTP/1.x with keep-alive, answering each request
//! from the watch channel's current [`Metadata`], only to allowed peers, within fixed limits
//! (head size, read and write time, connection count).
//!
//! It serves the network namespace of the thread that binds it: the launcher binds
//! 169.254.169.254:80 from a thread that has `setns`'d into the pod's namespace.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use super::content::Metadata;
use super::http::{Head, Version, head_len, leading_blank, parse_head, response_head};
use super::route::{Answer, answer};

/// After a closing response: how long and how much we read and drop (see `drain`).
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("metadata listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("metadata listener on {addr}: register with tokio: {source}")]
    Register { addr: SocketAddr, source: io::Error },
}

/// Which source addresses get answers; the others get 403.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedPeers {
    Any,
    Only(Vec<IpAddr>),
}

impl AllowedPeers {
    /// Only `ip` (the launcher passes its guest's address).
    pub fn only(ip: impl Into<IpAddr>) -> Self {
        Self::Only(vec![ip.into()])
    }

    /// Whether `ip` is allowed; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn allows(&self, ip: IpAddr) -> bool {
        match self {
            Self::Any => true,
            Self::Only(ips) => ips.iter().any(|a| a.to_canonical() == ip.to_canonical()),
        }
    }
}

/// What one connection may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A longer request head gets 431 and the connection closed.
    pub max_head_bytes: usize,
    /// Time to receive one whole request head, counted from the end of the previous response
    /// (so it also bounds an idle keep-alive connection). A partial head then gets 408.
    pub read_timeout: Duration,
    /// Time to write one response.
    pub write_timeout: Duration,
    /// Open connections at most. At the cap, connections waiting idle for a request are closed
    /// to make room; if none is idle, new ones wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            max_connections: 32,
        }
    }
}

/// A bound listener; [`Server::run`] serves it.
#[derive(Debug)]
pub struct Server {
    listener: std::net::TcpListener,
    addr: SocketAddr,
    limits: Limits,
}

impl Server {
    /// Binds `addr` (in the calling thread's network namespace); needs no runtime.
    pub fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let bind_err = |source| Error::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            addr,
            limits: Limits::default(),
        })
    }

    /// Replaces the default [`Limits`].
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `content`'s sender is dropped (then returns `Ok`) or the future is
    /// dropped; either way its connections end with it. Each request reads the channel's
    /// current value, so changes show without a restart. Must run inside a tokio runtime.
    pub async fn run(
        self,
        content: watch::Receiver<Arc<Metadata>>,
        allowed: AllowedPeers,
    ) -> Result<(), Error> {
        let addr = self.addr;
        let listener = TcpListener::from_std(self.listener)
            .map_err(|source| Error::Register { addr, source })?;
        tracing::info!(%addr, ?allowed, "metadata service listening");
        let limits = self.limits;
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        // bumped when the server is full: connections idle since before the bump close
        let (make_room, mut room) = watch::channel(0u64);
        let allowed = Arc::new(allowed);
        let mut closed = content.clone();
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let permit = match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    make_room.send_modify(|bumps| *bumps += 1);
                    match Arc::clone(&slots).acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => return Ok(()), // never closed
                    }
                }
            };
            // a new connection yields only to later bumps
            room.mark_unchanged();
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // EMFILE, ECONNABORTED and the like pass; pause so as not to spin
                        tracing::warn!(%addr, "metadata accept: {err}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                changed = closed.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => {
                        tracing::info!(%addr, "metadata service stopping: content closed");
                        return Ok(());
                    }
                },
            };
            let connection = Connection {
                stream,
                peer,
                content: content.clone(),
                allowed: Arc::clone(&allowed),
                limits,
                room: room.clone(),
            };
            connections.spawn(async move {
                connection.serve().await;
                drop(permit);
            });
        }
    }
}

struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    content: watch::Receiver<Arc<Metadata>>,
    allowed: Arc<AllowedPeers>,
    limits: Limits,
    /// Changes when the server is full and wants idle connections gone.
    room: watch::Receiver<u64>,
}

/// How reading one head ended.
enum Read {
    /// A complete head of this many bytes is at the start of the buffer.
    Head(usize),
    /// Respond with this status and close.
    Fail(u16),
    /// Close without a word (EOF, error, idle timeout, or room needed).
    Close,
}

impl Connection {
    async fn serve(mut self) {
        let mut buf = Vec::new();
        loop {
            let len = match self.read_head(&mut buf).await {
                Read::Head(len) => len,
                Read::Fail(status) => {
                    tracing::debug!(peer = %self.peer, status, "metadata: bad request");
                    self.respond(&Answer::status(status), Version::Http11, false)
                        .await;
                    return;
                }
                Read::Close => return,
            };
            let keep_alive = match parse_head(&buf[..len]) {
                Ok(head) => self.answer(&head).await,
                Err(err) => {
                    tracing::debug!(peer = %self.peer, ?err, "metadata: bad request head");
                    self.respond(&Answer::status(err.status()), Version::Http11, false)
                        .await;
                    false
                }
            };
            if !keep_alive {
                return;
            }
            buf.drain(..len);
        }
    }

    /// Answers a parsed request; returns whether the connection stays open.
    async fn answer(&mut self, head: &Head<'_>) -> bool {
        if !self.allowed.allows(self.peer.ip()) {
            tracing::debug!(peer = %self.peer, "metadata: peer not allowed");
            self.respond(&Answer::status(403), head.version, false)
                .await;
            return false;
        }
        let md = Arc::clone(&self.content.borrow());
        let answer = answer(&md, head.method, head.target);
        tracing::debug!(
            peer = %self.peer, method = head.method, target = head.target,
            status = answer.status, "metadata: request"
        );
        self.respond(&answer, head.version, head.keep_alive).await && head.keep_alive
    }

    /// Reads until `buf` starts with a complete head, within the limits.
    async fn read_head(&mut self, buf: &mut Vec<u8>) -> Read {
        let deadline = Instant::now() + self.limits.read_timeout;
        let mut chunk = [0u8; 2048];
        loop {
            let blank = leading_blank(buf);
            buf.drain(..blank);
            if let Some(len) = head_len(buf) {
                return if len > self.limits.max_head_bytes {
                    Read::Fail(431)
                } else {
                    Read::Head(len)
                };
            }
            if buf.len() > self.limits.max_head_bytes {
                return Read::Fail(431);
            }
            let space = (self.limits.max_head_bytes + 1 - buf.len()).min(chunk.len());
            let idle = buf.is_empty();
            let read = async {
                if idle {
                    // an idle connection gives way when the server is full
                    tokio::select! {
                        biased;
                        read = self.stream.read(&mut chunk[..space]) => Some(read),
                        _ = self.room.changed() => None,
                    }
                } else {
                    Some(self.stream.read(&mut chunk[..space]).await)
                }
            };
            let result = timeout_at(deadline, read).await;
            match result {
                Ok(Some(Ok(0) | Err(_))) | Ok(None) => return Read::Close,
                Ok(Some(Ok(n))) => buf.extend_from_slice(&chunk[..n]),
                Err(_elapsed) if idle => return Read::Close,
                Err(_elapsed) => return Read::Fail(408),
            }
        }
    }

    /// Reads and drops what the client still sends after our last response, briefly (and
    /// not when the server is full), so closing with unread input does not reset the
    /// connection before the client read the response.
    async fn drain(&mut self) {
        let mut chunk = [0u8; 4096];
        let mut left = LINGER_BYTES;
        let deadline = Instant::now() + LINGER_TIME;
        while left > 0 {
            let read = async {
                tokio::select! {
                    biased;
                    read = self.stream.read(&mut chunk) => Some(read),
                    _ = self.room.changed() => None,
                }
            };
            match timeout_at(deadline, read).await {
                Ok(Some(Ok(n))) if n > 0 => left = left.saturating_sub(n),
                _ => return,
            }
        }
    }

    /// Writes one response; false when that failed or timed out.
    async fn respond(&mut self, answer: &Answer, version: Version, keep_alive: bool) -> bool {
        let head = response_head(answer, version, keep_alive);
        let write = async {
            self.stream.write_all(&head).await?;
            self.stream.write_all(&answer.body).await?;
            if !keep_alive {
                self.stream.shutdown().await?;
            }
            self.stream.flush().await
        };
        match timeout(self.limits.write_timeout, write).await {
            Ok(Ok(())) if !keep_alive => {
                self.drain().await;
                true
            }
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::debug!(peer = %self.peer, "metadata: write: {err}");
                false
            }
            Err(_) => {
                tracing::debug!(peer = %self.peer, "metadata: write timed out");
                false
            }
        }
    }
}
