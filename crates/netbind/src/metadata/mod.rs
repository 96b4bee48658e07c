//! kuvirt's per-VM metadata service, the one OpenStack Nova and EC2 serve at
//! 169.254.169.254:80, so cloud-init's OpenStack and Ec2 datasources work in the guest.
//!
//! [`Metadata`] is what the guest is told; [`answer`] routes one request to a response with
//! no I/O; [`Server`] puts it on a TCP listener in the pod's network namespace, reading the
//! current [`Metadata`] from a `watch` channel on every request.

mod content;
mod http;
pub mod plumb;
mod route;
mod server;

pub use content::Metadata;
pub use route::{Answer, EC2_VERSIONS, OPENSTACK_VERSIONS, answer, reason};
pub use server::{AllowedPeers, Error, Limits, Server};

/// The address guests expect the service on.
pub const SERVICE_ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(169, 254, 169, 254), 80),
);

#[cfg(test)]
mod tests;
