//! KubeVirt's passt binding: `passt` (Debian's package) in the pod's network namespace gives the
//! guest the pod's address by its own DHCP/NDP and carries its traffic through the pod's
//! sockets; QEMU connects to passt's UNIX socket (`-netdev stream`). Declared ports of the pod
//! IP are forwarded to the guest.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Error;
use crate::masquerade::{Port, Protocol};
use crate::sys::interface_ipv4;

/// The binary (Debian's `passt`).
pub const PASST: &str = "passt";

/// What passt is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasstConfig {
    /// The socket QEMU connects to.
    pub socket: PathBuf,
    /// The pod interface whose address the guest gets.
    pub pod_interface: String,
    /// Ports of the pod IP forwarded to the guest.
    pub ports: Vec<Port>,
    /// passt's log file.
    pub log: PathBuf,
    /// The user passt runs as (it drops root; QEMU's user, so QEMU may connect to the socket),
    /// who must be able to create the socket in its directory.
    pub run_as: u32,
}

/// passt's arguments for pod IP `pod_ip` (pure).
pub fn argv(cfg: &PasstConfig, pod_ip: Ipv4Addr) -> Vec<String> {
    let mut a: Vec<String> = ["--foreground", "--quiet", "--socket"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    a.push(cfg.socket.display().to_string());
    a.extend(["--log-file".into(), cfg.log.display().to_string()]);
    a.extend(["--runas".into(), cfg.run_as.to_string()]);
    a.extend(["--interface".into(), cfg.pod_interface.clone()]);
    a.push("--ipv4-only".into());
    for (flag, protocol) in [("-t", Protocol::Tcp), ("-u", Protocol::Udp)] {
        let ports: Vec<String> = cfg
            .ports
            .iter()
            .filter(|p| p.protocol == protocol)
            .map(|p| p.port.to_string())
            .collect();
        let spec = if ports.is_empty() {
            "none".to_owned()
        } else {
            // Only the pod IP's ports: the pod's own services (the metadata service on
            // 169.254.169.254, the API forwarder on 127.0.0.1) keep theirs.
            format!("{pod_ip}/{}", ports.join(","))
        };
        a.extend([flag.to_owned(), spec]);
    }
    a
}

/// A running passt, killed when dropped.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    pod_ip: Ipv4Addr,
}

impl Passt {
    /// The pod IP the guest was given.
    pub fn pod_ip(&self) -> Ipv4Addr {
        self.pod_ip
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts passt in the current network namespace and waits (up to 10 s) for its socket.
pub fn start(cfg: &PasstConfig) -> Result<Passt, Error> {
    let pod_ip = interface_ipv4(&cfg.pod_interface)?;
    let _ = std::fs::remove_file(&cfg.socket);
    // passt binds its socket after dropping to `run_as`: the directory must be that user's.
    if let Some(dir) = cfg.socket.parent() {
        let io = |source| Error::State {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::os::unix::fs::chown(dir, Some(cfg.run_as), None).map_err(io)?;
    }
    let child = Command::new(PASST)
        .args(argv(cfg, pod_ip))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| Error::Spawn {
            program: PASST.to_owned(),
            source,
        })?;
    let mut passt = Passt { child, pod_ip };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_socket(&cfg.socket) {
        if let Ok(Some(status)) = passt.child.try_wait() {
            return Err(Error::Command {
                command: format!("{PASST} {}", argv(cfg, pod_ip).join(" ")),
                stderr: format!(
                    "exited ({status}) before making its socket; see {}",
                    cfg.log.display()
                ),
            });
        }
        if Instant::now() > deadline {
            return Err(Error::Command {
                command: PASST.to_owned(),
                stderr: format!("no socket {} after 10 s", cfg.socket.display()),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(passt)
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_ports_of_the_pod_ip() {
        let cfg = PasstConfig {
            socket: "/run/vm/passt.sock".into(),
            pod_interface: "eth0".into(),
            ports: vec![
                Port::tcp(80),
                Port::tcp(22),
                Port {
                    protocol: Protocol::Udp,
                    port: 53,
                },
            ],
            log: "/run/vm/passt.log".into(),
            run_as: 107,
        };
        let a = argv(&cfg, Ipv4Addr::new(10, 244, 0, 7)).join(" ");
        assert_eq!(
            a,
            "--foreground --quiet --socket /run/vm/passt.sock --log-file /run/vm/passt.log \
             --runas 107 --interface eth0 --ipv4-only -t 10.244.0.7/80,22 -u 10.244.0.7/53"
        );
        let none = PasstConfig {
            ports: vec![],
            ..cfg
        };
        assert!(
            argv(&none, Ipv4Addr::new(10, 244, 0, 7))
                .join(" ")
                .ends_with("-t none -u none")
        );
    }
}
