//! The API server as a pod sees it. `kuvirt server` listens on the host's loopback, which a pod's
//! own network namespace does not share; a launcher inside the pod still reads its VMI through
//! the kubeconfig it was given. So the node agent listens on the same loopback address inside
//! the pod's namespace and forwards each connection to the real server (kube-proxy's job for the
//! `kubernetes` Service in a real cluster). A server on a routable address needs none of this:
//! the pod reaches it through the bridge.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use super::SandboxError;

/// The API server's address from a kubeconfig, if it is on the loopback (so pods need a
/// forwarder to reach it).
pub fn loopback_server(kubeconfig: &Path) -> Option<SocketAddr> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).ok()?;
    let cluster_name = kc
        .current_context
        .as_ref()
        .and_then(|cur| kc.contexts.iter().find(|c| &c.name == cur))
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone());
    let cluster = kc
        .clusters
        .iter()
        .find(|c| Some(&c.name) == cluster_name.as_ref())
        .or(kc.clusters.first())?;
    let server = cluster.cluster.as_ref()?.server.as_deref()?;
    server_addr(server).filter(|a| a.ip().is_loopback())
}

/// `https://HOST:PORT/…` → the socket address (`localhost` is 127.0.0.1).
pub fn server_addr(url: &str) -> Option<SocketAddr> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split('/').next()?;
    if let Ok(a) = authority.parse::<SocketAddr>() {
        return Some(a);
    }
    let default_port = if scheme == "http" { 80 } else { 443 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h, p.parse::<u16>().ok()?)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().ok()?
    };
    Some(SocketAddr::new(ip, port))
}

/// Runs `f` on a thread of its own that has joined the network namespace `netns` (a namespace is
/// per thread: sockets made there stay in it, the rest of the process is untouched).
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, SandboxError> {
    let path = Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).map_err(|e| SandboxError::io(&path, e))?;
    let joined = std::thread::spawn(move || -> std::io::Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        f()
    })
    .join()
    .map_err(|_| SandboxError::io(&path, std::io::Error::other("thread panicked")))?;
    joined.map_err(|e| SandboxError::io(&path, e))
}

/// A listener on `addr` inside the pod's namespace.
pub fn listen_in_netns(
    netns: &str,
    addr: SocketAddr,
) -> Result<std::net::TcpListener, SandboxError> {
    in_netns(netns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// Forwards every connection on `listener` to `to` until the task is aborted.
pub fn forward(
    listener: std::net::TcpListener,
    to: SocketAddr,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn server_urls_become_addresses() {
        let a = |s: &str| server_addr(s).map(|a| a.to_string());
        assert_eq!(
            a("https://127.0.0.1:6443").as_deref(),
            Some("127.0.0.1:6443")
        );
        assert_eq!(
            a("https://localhost:7000/").as_deref(),
            Some("127.0.0.1:7000")
        );
        assert_eq!(a("https://[::1]:6443").as_deref(), Some("[::1]:6443"));
        assert_eq!(a("https://10.0.0.1").as_deref(), Some("10.0.0.1:443"));
        assert_eq!(a("nonsense"), None);
    }
}
