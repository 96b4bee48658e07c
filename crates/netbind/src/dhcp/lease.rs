//! The lease a VM gets (address and options), its checks, and its encoding as DHCP options.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, DhcpOptions, OptionCode, UnknownOption};

/// KubeVirt's lease time: 999 days (`infiniteLease` of its DHCP server), in seconds.
pub const KUBEVIRT_LEASE_SECS: u32 = 999 * 24 * 60 * 60;
/// RFC 2131's "infinite" lease time.
pub const INFINITE_LEASE_SECS: u32 = u32::MAX;

/// Codes KubeVirt accepts in `dhcpOptions.privateOptions` (RFC 2132 §2 site-specific range).
pub const PRIVATE_OPTION_CODES: std::ops::RangeInclusive<u8> = 224..=254;

/// A classless static route (option 121, RFC 3442).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// `0.0.0.0` for an on-link route.
    pub gateway: Ipv4Addr,
}

impl Route {
    /// The default route through `gateway`.
    pub fn default_via(gateway: Ipv4Addr) -> Self {
        Self {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway,
        }
    }

    pub fn is_default(&self) -> bool {
        self.prefix_len == 0
    }
}

/// One of KubeVirt's `dhcpOptions.privateOptions`: a code in 224..=254 with a string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateOption {
    pub code: u8,
    pub value: String,
}

/// KubeVirt's `dhcpOptions` of an interface: what a binding adds to its lease (PXE boot, NTP,
/// site-specific options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraOptions {
    pub boot_file_name: Option<String>,
    pub tftp_server_name: Option<String>,
    pub ntp_servers: Vec<Ipv4Addr>,
    pub private_options: Vec<PrivateOption>,
}

impl ExtraOptions {
    /// Puts these options into `lease`.
    pub fn apply(&self, lease: &mut Lease) {
        lease.boot_file_name = self.boot_file_name.clone();
        lease.tftp_server_name = self.tftp_server_name.clone();
        lease.ntp_servers = self.ntp_servers.clone();
        lease.private_options = self.private_options.clone();
    }
}

/// Everything the VM is told about its one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The only client answered (`chaddr`).
    pub mac: [u8; 6],
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// Server identifier (option 54): the address the server answers from.
    pub server_id: Ipv4Addr,
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns_servers: Vec<Ipv4Addr>,
    /// Option 119, RFC 3397 (uncompressed labels, as KubeVirt writes them).
    pub search_domains: Vec<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Option 15; KubeVirt sends the longest search domain (see [`longest_domain`]).
    pub domain_name: Option<String>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Option 121. Clients that take it ignore option 3, so the default route is sent in it too:
    /// one through `router` is appended when none is listed (KubeVirt sends the pod's routes,
    /// default route last).
    pub routes: Vec<Route>,
    /// Option 51 in seconds ([`KUBEVIRT_LEASE_SECS`] unless set).
    pub lease_time: u32,
    /// `dhcpOptions.bootFileName`: option 67 and the BOOTP `file` field (when it fits).
    pub boot_file_name: Option<String>,
    /// `dhcpOptions.tftpServerName`: option 66 (and `siaddr` when it is an IPv4 address).
    pub tftp_server_name: Option<String>,
    /// `dhcpOptions.ntpServers`: option 42.
    pub ntp_servers: Vec<Ipv4Addr>,
    /// `dhcpOptions.privateOptions`.
    pub private_options: Vec<PrivateOption>,
}

/// Why a lease cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("prefix length {0} is not in 1..=32")]
    PrefixLength(u8),
    #[error("route {0}/{1}: prefix length is over 32")]
    RoutePrefix(Ipv4Addr, u8),
    #[error("server identifier must not be 0.0.0.0")]
    ServerId,
    #[error("search domain {0:?} is not a valid domain name")]
    SearchDomain(String),
    #[error("search domains take {0} bytes, over the 255 of one option")]
    SearchDomainsTooLong(usize),
    #[error("{field} {value:?} must be 1..=255 bytes without NUL")]
    Text { field: &'static str, value: String },
    #[error("mtu {0} is under 68")]
    Mtu(u16),
    #[error("private option {0} is not in 224..=254")]
    PrivateCode(u8),
    #[error("private option {0} appears twice")]
    PrivateDuplicate(u8),
}

impl Lease {
    /// A lease with no options beyond the address, KubeVirt's lease time.
    pub fn new(mac: [u8; 6], address: Ipv4Addr, prefix_len: u8, server_id: Ipv4Addr) -> Self {
        Self {
            mac,
            address,
            prefix_len,
            server_id,
            router: None,
            dns_servers: Vec::new(),
            search_domains: Vec::new(),
            hostname: None,
            domain_name: None,
            mtu: None,
            routes: Vec::new(),
            lease_time: KUBEVIRT_LEASE_SECS,
            boot_file_name: None,
            tftp_server_name: None,
            ntp_servers: Vec::new(),
            private_options: Vec::new(),
        }
    }

    /// Checks every field; a lease that passes always encodes.
    pub fn validate(&self) -> Result<(), LeaseError> {
        self.options().map(|_| ())
    }

    /// The subnet mask of `prefix_len`.
    pub fn netmask(&self) -> Ipv4Addr {
        mask(self.prefix_len)
    }

    /// The options every OFFER/ACK carries (without message type, server id and lease time).
    pub(crate) fn options(&self) -> Result<DhcpOptions, LeaseError> {
        if !(1..=32).contains(&self.prefix_len) {
            return Err(LeaseError::PrefixLength(self.prefix_len));
        }
        if self.server_id.is_unspecified() {
            return Err(LeaseError::ServerId);
        }
        let mut opts = DhcpOptions::new();
        opts.insert(DhcpOption::SubnetMask(self.netmask()));
        if let Some(router) = self.router {
            opts.insert(DhcpOption::Router(vec![router]));
        }
        if !self.dns_servers.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(self.dns_servers.clone()));
        }
        if let Some(hostname) = &self.hostname {
            opts.insert(DhcpOption::Hostname(text("hostname", hostname)?.to_owned()));
        }
        if let Some(domain) = &self.domain_name {
            opts.insert(DhcpOption::DomainName(
                text("domain name", domain)?.to_owned(),
            ));
        }
        if let Some(mtu) = self.mtu {
            if mtu < 68 {
                return Err(LeaseError::Mtu(mtu));
            }
            opts.insert(DhcpOption::InterfaceMtu(mtu));
        }
        if !self.search_domains.is_empty() {
            let data = encode_search_domains(&self.search_domains)?;
            opts.insert(raw(OptionCode::DomainSearch, data));
        }
        let routes = self.classless_routes()?;
        if !routes.is_empty() {
            opts.insert(raw(OptionCode::ClasslessStaticRoute, routes));
        }
        if !self.ntp_servers.is_empty() {
            opts.insert(DhcpOption::NtpServers(self.ntp_servers.clone()));
        }
        if let Some(tftp) = &self.tftp_server_name {
            let tftp = text("tftp server name", tftp)?;
            opts.insert(DhcpOption::TFTPServerName(tftp.as_bytes().to_vec()));
        }
        if let Some(file) = &self.boot_file_name {
            let file = text("boot file name", file)?;
            opts.insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        }
        let mut seen = Vec::new();
        for private in &self.private_options {
            if !PRIVATE_OPTION_CODES.contains(&private.code) {
                return Err(LeaseError::PrivateCode(private.code));
            }
            if seen.contains(&private.code) {
                return Err(LeaseError::PrivateDuplicate(private.code));
            }
            seen.push(private.code);
            let value = text("private option value", &private.value)?;
            opts.insert(raw(
                OptionCode::from(private.code),
                value.as_bytes().to_vec(),
            ));
        }
        Ok(opts)
    }

    /// Option 121's bytes (RFC 3442): the routes with the default route(s) last, one through
    /// the router added when the list has none.
    fn classless_routes(&self) -> Result<Vec<u8>, LeaseError> {
        if self.routes.is_empty() {
            return Ok(Vec::new());
        }
        let mut routes: Vec<Route> = self
            .routes
            .iter()
            .filter(|r| !r.is_default())
            .copied()
            .collect();
        let defaults: Vec<Route> = self
            .routes
            .iter()
            .filter(|r| r.is_default())
            .copied()
            .collect();
        if defaults.is_empty() {
            routes.extend(self.router.map(Route::default_via));
        }
        routes.extend(defaults);
        let mut out = Vec::new();
        for route in routes {
            if route.prefix_len > 32 {
                return Err(LeaseError::RoutePrefix(route.destination, route.prefix_len));
            }
            let significant = usize::from(route.prefix_len).div_ceil(8);
            let destination = u32::from(route.destination) & u32::from(mask(route.prefix_len));
            out.push(route.prefix_len);
            out.extend_from_slice(&destination.to_be_bytes()[..significant]);
            out.extend_from_slice(&route.gateway.octets());
        }
        Ok(out)
    }

    /// `siaddr` of replies: the TFTP server when it is given as an IPv4 address.
    pub(crate) fn next_server(&self) -> Ipv4Addr {
        self.tftp_server_name
            .as_deref()
            .and_then(|name| name.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
    }
}

/// KubeVirt's domain name (option 15) from the pod's search domains: the longest one.
pub fn longest_domain(search_domains: &[String]) -> Option<String> {
    search_domains
        .iter()
        .filter(|d| !d.is_empty())
        .fold(None, |best: Option<&String>, d| match best {
            Some(b) if b.len() >= d.len() => Some(b),
            _ => Some(d),
        })
        .cloned()
}

/// RFC 3397 option 119 data: each domain as RFC 1035 labels ending in a zero byte, no
/// compression (as KubeVirt's server writes them). At most 255 bytes in all.
pub fn encode_search_domains(domains: &[String]) -> Result<Vec<u8>, LeaseError> {
    let mut out = Vec::new();
    for domain in domains {
        let name = domain.strip_suffix('.').unwrap_or(domain);
        if !valid_domain(name) {
            return Err(LeaseError::SearchDomain(domain.clone()));
        }
        for label in name.split('.') {
            // valid_domain keeps labels within 1..=63 bytes
            out.push(label.len() as u8);
            out.extend_from_slice(label.to_ascii_lowercase().as_bytes());
        }
        out.push(0);
    }
    if out.len() > 255 {
        return Err(LeaseError::SearchDomainsTooLong(out.len()));
    }
    Ok(out)
}

/// A domain name of letters, digits, `-` and `_` (KubeVirt's rule): labels of 1..=63 bytes
/// not starting or ending with `-`, 253 bytes at most.
fn valid_domain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn text<'a>(field: &'static str, value: &'a str) -> Result<&'a str, LeaseError> {
    if value.is_empty() || value.len() > 255 || value.contains('\0') {
        return Err(LeaseError::Text {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value)
}

/// An option whose bytes we encode ourselves.
fn raw(code: OptionCode, data: Vec<u8>) -> DhcpOption {
    DhcpOption::Unknown(UnknownOption::new(code, data))
}

fn mask(prefix_len: u8) -> Ipv4Addr {
    match prefix_len {
        0 => Ipv4Addr::UNSPECIFIED,
        n if n >= 32 => Ipv4Addr::BROADCAST,
        n => Ipv4Addr::from(u32::MAX << (32 - u32::from(n))),
    }
}
