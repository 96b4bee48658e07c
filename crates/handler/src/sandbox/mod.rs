//! Pod sandboxes for embedded mode, as kubelet and a bridge CNI plugin make them: per pod a
//! network namespace with its own address from the node's pod CIDR ([`ipam`]), a veth to the
//! node bridge with NAT to the outside ([`net`]), a resolv.conf, and a cgroup with the pod's
//! limits ([`cgroup`]). Everything is named from the pod UID, so a restarted node agent finds a
//! sandbox again and a teardown needs nothing but the UID.
//!
//! The launcher runs through `ip netns exec NAME` (which also bind-mounts the resolv.conf) and
//! joins its cgroup itself (`kuvirt launcher --cgroup DIR`): see [`Sandbox::launcher_cgroups`].

pub mod apiproxy;
pub mod cgroup;
mod cmd;
pub mod ipam;
pub mod net;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cgroup::{Layout, Limits};
use ipam::{Cidr, IpRequest, Ipam};

/// Names and places the sandboxes use; tests pick their own so they never meet a running node.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The node bridge (`kuvirt0`).
    pub bridge: String,
    /// Our nftables table (`table ip kuvirt`).
    pub nft_table: String,
    /// Network namespaces are `<prefix>-<first 12 letters and digits of the pod UID>`.
    pub netns_prefix: String,
    /// Host ends of the veths are `<prefix><12 of the UID>`, cut to 15 characters.
    pub veth_prefix: String,
    /// IPAM files live in `state_dir/ipam/`.
    pub state_dir: PathBuf,
    /// Where cgroups are mounted (`/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// The cgroup all pods go under (`kuvirt`).
    pub cgroup_parent: String,
}

impl SandboxConfig {
    /// The node's defaults, with state under `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> SandboxConfig {
        SandboxConfig {
            bridge: "kuvirt0".into(),
            nft_table: "kuvirt".into(),
            netns_prefix: "kuvirt".into(),
            veth_prefix: "kv".into(),
            state_dir: state_dir.into(),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            cgroup_parent: "kuvirt".into(),
        }
    }

    /// The pod's network namespace name.
    pub fn netns_name(&self, uid: &str) -> Result<String, SandboxError> {
        Ok(format!("{}-{}", self.netns_prefix, short_uid(uid)?))
    }

    /// The host end of the pod's veth.
    pub fn veth_name(&self, uid: &str) -> Result<String, SandboxError> {
        Ok(format!("{}{}", self.veth_prefix, short_uid(uid)?)
            .chars()
            .take(15)
            .collect())
    }

    /// The pod's cgroup name (kubelet's `pod<uid>`).
    pub fn cgroup_name(&self, uid: &str) -> Result<String, SandboxError> {
        short_uid(uid)?;
        Ok(format!(
            "pod{}",
            uid.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
        ))
    }
}

/// The first 12 letters and digits of a UID.
fn short_uid(uid: &str) -> Result<String, SandboxError> {
    let s: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    if s.is_empty() {
        return Err(SandboxError::BadUid(uid.to_string()));
    }
    Ok(s)
}

/// A sandbox failure.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{cmd}: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cidr {0:?}: not an IPv4 network with room for a gateway and pods")]
    BadCidr(String),
    #[error("ipam {0}: no free address")]
    Exhausted(String),
    #[error("the requested pod IP {ip} cannot be had: {why}")]
    IpRequest { ip: Ipv4Addr, why: String },
    #[error("no cgroup hierarchy with the memory and cpu controllers")]
    NoCgroups,
    #[error("pod uid {0:?}: no letters or digits to name a sandbox by")]
    BadUid(String),
}

impl SandboxError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SandboxError {
        SandboxError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One pod's sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sandbox {
    pub uid: String,
    /// Its network namespace (`/run/netns/NAME`).
    pub netns: String,
    /// The veth's host end, on the bridge.
    pub veth: String,
    /// The pod IP, on `eth0` in the namespace.
    pub ip: Ipv4Addr,
    pub cidr: Cidr,
    /// The bridge address: the pod's default gateway.
    pub gateway: Ipv4Addr,
    /// Its cgroup directories, one per hierarchy.
    pub cgroups: Vec<PathBuf>,
    /// The file `ip netns exec` mounts over /etc/resolv.conf.
    pub resolv_conf: PathBuf,
}

impl Sandbox {
    /// The `--cgroup` directories for a launcher started through `ip netns exec`. That command
    /// mounts a fresh /sys in a private mount namespace, which has no /sys/fs/cgroup; the
    /// launcher reaches the hierarchies through this process's root instead
    /// (`/proc/<our pid>/root/sys/fs/cgroup/…`), which stays valid while we spawn it.
    pub fn launcher_cgroups(&self) -> Vec<PathBuf> {
        let root = PathBuf::from(format!("/proc/{}/root", std::process::id()));
        self.cgroups
            .iter()
            .map(|d| root.join(d.strip_prefix("/").unwrap_or(d)))
            .collect()
    }

    /// `ip netns exec NAME`: the start of the launcher's command line.
    pub fn exec_prefix(&self) -> [String; 3] {
        ["netns".into(), "exec".into(), self.netns.clone()]
    }
}

/// Node set-up for pod CIDR `cidr` (idempotent): see [`net::setup_node`].
pub fn setup_node(cfg: &SandboxConfig, cidr: Cidr) -> Result<(), SandboxError> {
    net::setup_node(cfg, cidr)
}

/// Makes the sandbox of pod `uid` (or completes and returns the one it has: the same IP) with
/// an address of `cidr`: the node's pod CIDR, or for a migration target taking over its VM's
/// address the CIDR that address comes from (the pod's gateway is that CIDR's, which the node
/// bridge answers for by proxy ARP). A failure part way tears down what was made.
pub fn create(
    cfg: &SandboxConfig,
    cidr: Cidr,
    uid: &str,
    limits: &Limits,
    want: &IpRequest,
) -> Result<Sandbox, SandboxError> {
    let netns = cfg.netns_name(uid)?;
    let veth = cfg.veth_name(uid)?;
    let made = (|| {
        let gateway = cidr
            .gateway()
            .ok_or_else(|| SandboxError::BadCidr(cidr.to_string()))?;
        let ip = Ipam::new(&cfg.state_dir, cidr).allocate_as(uid, want)?;
        net::setup_pod(cfg, &netns, &veth, ip, cidr)?;
        let resolv_conf = net::write_resolv_conf(&netns)?;
        let layout = Layout::detect(&cfg.cgroup_root)?;
        let cgroups = cgroup::create(&layout, &cfg.cgroup_parent, &cfg.cgroup_name(uid)?, limits)?;
        Ok(Sandbox {
            uid: uid.to_string(),
            netns: netns.clone(),
            veth: veth.clone(),
            ip,
            cidr,
            gateway,
            cgroups,
            resolv_conf,
        })
    })();
    match made {
        Ok(s) => Ok(s),
        Err(e) => {
            if let Err(t) = teardown(cfg, uid) {
                tracing::warn!(uid, error = %t, "cleaning up a half-made sandbox");
            }
            Err(e)
        }
    }
}

/// The sandbox pod `uid` already has (its address is held and its namespace exists), for a
/// launcher that outlived the node agent: reused as it is, never re-created. Its address may lie
/// in another node's pod CIDR (a migration target's).
pub fn find(cfg: &SandboxConfig, uid: &str) -> Result<Option<Sandbox>, SandboxError> {
    let netns = cfg.netns_name(uid)?;
    let Some((cidr, ip)) = ipam::lookup_everywhere(&cfg.state_dir, uid)? else {
        return Ok(None);
    };
    if !net::netns_exists(&netns) {
        return Ok(None);
    }
    let cgroups = Layout::detect(&cfg.cgroup_root)
        .map(|l| {
            l.dirs(
                &cfg.cgroup_parent,
                &cfg.cgroup_name(uid).unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    Ok(Some(Sandbox {
        uid: uid.to_string(),
        veth: cfg.veth_name(uid)?,
        resolv_conf: net::etc_dir(&netns).join("resolv.conf"),
        netns,
        ip,
        cidr,
        gateway: cidr
            .gateway()
            .ok_or_else(|| SandboxError::BadCidr(cidr.to_string()))?,
        cgroups,
    }))
}

/// Removes pod `uid`'s sandbox, or whatever part of one exists: network namespace and veth,
/// /etc/netns files, cgroups, then its address. Its processes must be gone already.
pub fn teardown(cfg: &SandboxConfig, uid: &str) -> Result<(), SandboxError> {
    let netns = cfg.netns_name(uid)?;
    let veth = cfg.veth_name(uid)?;
    let mut first = net::teardown_pod(&netns, &veth).err();
    match Layout::detect(&cfg.cgroup_root) {
        Ok(layout) => {
            if let Err(e) = cgroup::remove(&layout, &cfg.cgroup_parent, &cfg.cgroup_name(uid)?) {
                first.get_or_insert(e);
            }
        }
        Err(SandboxError::NoCgroups) => {}
        Err(e) => {
            first.get_or_insert(e);
        }
    }
    // The address goes last: never handed out again while something still uses it.
    if first.is_none()
        && let Err(e) = ipam::release_everywhere(&cfg.state_dir, uid)
    {
        first = Some(e);
    }
    first.map_or(Ok(()), Err)
}

/// Whether pod `uid`'s cgroup has no processes, waiting up to `wait` for the last ones to go
/// (a process that has just exited may linger for a moment). A pod without cgroups is idle.
pub fn idle_within(cfg: &SandboxConfig, uid: &str, wait: std::time::Duration) -> bool {
    let Ok(layout) = Layout::detect(&cfg.cgroup_root) else {
        return true;
    };
    let Ok(name) = cfg.cgroup_name(uid) else {
        return true;
    };
    let dirs = layout.dirs(&cfg.cgroup_parent, &name);
    let deadline = std::time::Instant::now() + wait;
    loop {
        let busy = dirs.iter().any(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty())
        });
        if !busy {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The UIDs of the pods that have a sandbox (hold an address).
pub fn list(cfg: &SandboxConfig) -> Result<Vec<String>, SandboxError> {
    ipam::all_owners(&cfg.state_dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_come_from_the_uid() {
        let cfg = SandboxConfig::new("/x");
        let uid = "6b1f0c1e-94d2-4b9a-9c7e-3d2a1b0c9f8e";
        assert_eq!(cfg.netns_name(uid).unwrap(), "kuvirt-6b1f0c1e94d2");
        assert_eq!(cfg.veth_name(uid).unwrap(), "kv6b1f0c1e94d2");
        assert!(cfg.veth_name(uid).unwrap().len() <= 15);
        assert_eq!(cfg.cgroup_name(uid).unwrap(), format!("pod{uid}"));
        assert!(matches!(cfg.netns_name("--"), Err(SandboxError::BadUid(_))));
        let long = SandboxConfig {
            veth_prefix: "kvtest".into(),
            ..cfg
        };
        assert_eq!(long.veth_name(uid).unwrap(), "kvtest6b1f0c1e9");
    }

    #[test]
    fn launchers_reach_their_cgroups_through_our_root() {
        let s = Sandbox {
            uid: "u".into(),
            netns: "n".into(),
            veth: "v".into(),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            cidr: "10.0.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            cgroups: vec!["/sys/fs/cgroup/memory/kuvirt/podu".into()],
            resolv_conf: "/etc/netns/n/resolv.conf".into(),
        };
        assert_eq!(
            s.launcher_cgroups(),
            vec![PathBuf::from(format!(
                "/proc/{}/root/sys/fs/cgroup/memory/kuvirt/podu",
                std::process::id()
            ))]
        );
    }
}
