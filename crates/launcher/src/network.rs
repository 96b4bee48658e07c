//! The VM's pod-network bindings: which binding each interface gets and with what (pure, from
//! the VMI: [`plan`]), and setting them up inside the pod's network namespace before QEMU starts
//! ([`bind`]): a tap per interface on bridge `k6t-eth0`, masquerade NAT or the pod IP handed to
//! the guest, and the DHCP server that serves the guest its lease.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::{InterfaceBindingRef, InterfaceState};
use kuvirt_netbind::dhcp::{ExtraOptions, PrivateOption, Server};
use kuvirt_netbind::masquerade::{MasqueradeConfig, Port, Protocol};
use kuvirt_netbind::metadata::plumb;
use kuvirt_netbind::{bridge, masquerade};

use crate::convert::{ConvertError, generated_mac};
use crate::machine::NetBackend;

/// How one interface reaches the pod network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// NAT behind the pod IP; `ports` empty forwards every port.
    Masquerade { ports: Vec<Port> },
    /// The guest takes the pod IP.
    Bridge,
    /// passt gives the guest the pod IP and forwards the declared ports.
    Passt { ports: Vec<Port> },
}

/// One interface's binding, as the VMI asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    /// The interface's name in the VMI.
    pub name: String,
    pub binding: Binding,
    pub mac: [u8; 6],
    /// The tap QEMU opens (`tap0`, KubeVirt's name for the pod network's).
    pub tap: String,
    pub multi_queue: bool,
    /// `dhcpOptions`.
    pub extra: ExtraOptions,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError {
        field: field.into(),
        message: message.into(),
    }
}

/// The bindings of a defaulted, validated VMI's interfaces (absent ones have none).
pub fn plan(vmi: &VirtualMachineInstance) -> Result<Vec<InterfacePlan>, ConvertError> {
    let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    let devices = &vmi.spec.domain.devices;
    let mut plans = Vec::new();
    for (i, iface) in devices.interfaces.iter().enumerate() {
        let field = format!("spec.domain.devices.interfaces[{i}]");
        if iface.state == Some(InterfaceState::Absent) {
            continue;
        }
        match vmi.spec.networks.iter().find(|n| n.name == iface.name) {
            Some(n) if n.pod.is_some() => {}
            Some(_) => {
                return Err(err(
                    format!("{field}.name"),
                    format!(
                        "network {:?} is not the pod network; only the pod network is supported",
                        iface.name
                    ),
                ));
            }
            None => {
                return Err(err(
                    format!("{field}.name"),
                    format!("no network named {:?}", iface.name),
                ));
            }
        }
        let binding = match iface.binding_method() {
            Some(InterfaceBindingRef::Masquerade) => Binding::Masquerade {
                ports: ports(&iface.ports, &field)?,
            },
            Some(InterfaceBindingRef::Bridge) => Binding::Bridge,
            Some(InterfaceBindingRef::Passt) => {
                let ports = ports(&iface.ports, &field)?;
                if ports.is_empty() {
                    return Err(err(
                        format!("{field}.ports"),
                        "the passt binding needs the ports to forward declared (forwarding every port takes a socket per port)",
                    ));
                }
                Binding::Passt { ports }
            }
            Some(other) => {
                let what = match other {
                    InterfaceBindingRef::Sriov => "sriov".to_owned(),
                    InterfaceBindingRef::Plugin(p) => format!("binding plugin {:?}", p.name),
                    _ => format!("{other:?}"),
                };
                return Err(err(
                    field,
                    format!(
                        "the {what} binding is not supported on the pod network (use masquerade, bridge or passt)"
                    ),
                ));
            }
            None => return Err(err(field, "must have exactly one binding")),
        };
        let mac_text = iface
            .mac_address
            .clone()
            .unwrap_or_else(|| generated_mac(ns, name, &iface.name));
        let mac = kuvirt_netbind::parse_mac(&mac_text).ok_or_else(|| {
            err(
                format!("{field}.macAddress"),
                format!("{mac_text:?} is not a MAC address"),
            )
        })?;
        let model = iface.model.as_deref().unwrap_or("virtio");
        plans.push(InterfacePlan {
            name: iface.name.clone(),
            binding,
            mac,
            tap: format!("tap{}", plans.len()),
            multi_queue: devices.network_interface_multiqueue == Some(true) && model == "virtio",
            extra: extra_options(iface.dhcp_options.as_ref(), &field)?,
        });
    }
    if plans.len() > 1 {
        return Err(err(
            "spec.domain.devices.interfaces",
            "only one interface may use the pod network",
        ));
    }
    Ok(plans)
}

fn ports(ports: &[kuvirt_api::v1::Port], field: &str) -> Result<Vec<Port>, ConvertError> {
    ports
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let protocol = match p
                .protocol
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref()
            {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some(other) => {
                    return Err(err(
                        format!("{field}.ports[{j}].protocol"),
                        format!("{other:?} is not TCP or UDP"),
                    ));
                }
            };
            let port = u16::try_from(p.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| err(format!("{field}.ports[{j}].port"), "must be 1..=65535"))?;
            Ok(Port { protocol, port })
        })
        .collect()
}

fn extra_options(
    o: Option<&kuvirt_api::v1::DHCPOptions>,
    field: &str,
) -> Result<ExtraOptions, ConvertError> {
    let Some(o) = o else {
        return Ok(ExtraOptions::default());
    };
    let field = format!("{field}.dhcpOptions");
    let ntp_servers = o
        .ntp_servers
        .iter()
        .enumerate()
        .map(|(j, s)| {
            s.parse::<Ipv4Addr>().map_err(|_| {
                err(
                    format!("{field}.ntpServers[{j}]"),
                    format!("{s:?} is not an IPv4 address"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let private_options = o
        .private_options
        .iter()
        .enumerate()
        .map(|(j, p)| {
            u8::try_from(p.option)
                .ok()
                .filter(|c| kuvirt_netbind::dhcp::PRIVATE_OPTION_CODES.contains(c))
                .map(|code| PrivateOption {
                    code,
                    value: p.value.clone(),
                })
                .ok_or_else(|| {
                    err(
                        format!("{field}.privateOptions[{j}].option"),
                        "must be 224..=254",
                    )
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(ExtraOptions {
        boot_file_name: o.boot_file_name.clone(),
        tftp_server_name: o.tftp_server_name.clone(),
        ntp_servers,
        private_options,
    })
}

/// What the bindings need from the pod around them.
#[derive(Debug, Clone)]
pub struct PodContext {
    /// The uid QEMU runs as (it opens the taps).
    pub qemu_uid: u32,
    /// The pod's resolv.conf text (DNS servers and search domains for the guest).
    pub resolv_conf: String,
    /// The guest's hostname (`spec.hostname`, else the VMI's name).
    pub hostname: String,
    /// TCP ports the pod itself serves on its loopback (the API forwarder): never NAT'd.
    pub local_ports: Vec<u16>,
    /// Where the bridge binding keeps what the pod interface had.
    pub state_dir: PathBuf,
}

/// A server a binding needs while the VM lives.
#[derive(Debug)]
pub enum Serving {
    Dhcp(Server),
    RouterAdvertisements(kuvirt_netbind::ndp::Server),
    Dhcp6(kuvirt_netbind::dhcpv6::Server),
}

impl Serving {
    /// Serves until the socket fails; returns why.
    pub async fn run(self) -> String {
        match self {
            Serving::Dhcp(s) => s.run().await.err().map(|e| e.to_string()),
            Serving::RouterAdvertisements(s) => s.run().await.err().map(|e| e.to_string()),
            Serving::Dhcp6(s) => s.run().await.err().map(|e| e.to_string()),
        }
        .unwrap_or_else(|| "stopped".into())
    }
}

/// The bindings as set up: QEMU's backends, and the servers to run while the VM lives.
#[derive(Debug, Default)]
pub struct Bound {
    pub backends: BTreeMap<String, NetBackend>,
    pub servers: Vec<Serving>,
    /// The guest's address on each interface (10.0.2.2 behind masquerade, the pod IP on a
    /// bridge or with passt).
    pub guest_addresses: BTreeMap<String, Ipv4Addr>,
    /// Where the guest's connections to the metadata service come from, as the pod sees them
    /// (passt makes them itself, from the service's own address).
    pub metadata_peers: Vec<std::net::IpAddr>,
    /// passt processes, stopped when dropped.
    pub passt: Vec<kuvirt_netbind::passt::Passt>,
}

/// Sets up every planned binding in the current network namespace (the pod's), and the way to
/// the metadata service at 169.254.169.254 from each; must run inside a tokio runtime (the DHCP
/// sockets). A second run in the same pod converges.
pub fn bind(plans: &[InterfacePlan], pod: &PodContext) -> Result<Bound, kuvirt_netbind::Error> {
    let (dns_servers, search_domains) = masquerade::parse_resolv_conf(&pod.resolv_conf);
    let mut bound = Bound::default();
    for p in plans {
        let tap = || NetBackend::Tap {
            ifname: p.tap.clone(),
        };
        let (server, address, backend) = match &p.binding {
            Binding::Masquerade { ports } => {
                masquerade::create_tap(&p.tap, pod.qemu_uid, p.multi_queue)?;
                let mut cfg = MasqueradeConfig::new(&p.tap, p.mac);
                cfg.ports = ports.clone();
                cfg.local_ports = pod.local_ports.clone();
                cfg.dns_servers = dns_servers.clone();
                cfg.search_domains = search_domains.clone();
                cfg.hostname = Some(pod.hostname.clone());
                cfg.extra = p.extra.clone();
                cfg.dns_servers_v6 = masquerade::resolv_conf_v6(&pod.resolv_conf);
                let mut m = masquerade::setup(&cfg)?;
                plumb::local_address()?;
                if let Some((ra, dhcp6)) = m.take_ipv6() {
                    bound.servers.push(Serving::RouterAdvertisements(ra));
                    bound.servers.push(Serving::Dhcp6(dhcp6));
                }
                (m.take_dhcp(), m.lease().address, tap())
            }
            Binding::Bridge => {
                masquerade::create_tap(&p.tap, pod.qemu_uid, p.multi_queue)?;
                let state = pod.state_dir.join(format!("bridge-{}.state", p.tap));
                let mut cfg = bridge::BridgeConfig::new(&p.tap, p.mac, state);
                cfg.dns_servers = dns_servers.clone();
                cfg.search_domains = search_domains.clone();
                cfg.hostname = Some(pod.hostname.clone());
                cfg.extra = p.extra.clone();
                let mut b = bridge::setup(&cfg)?;
                plumb::bridged(&cfg.bridge, &p.tap, b.lease().address)?;
                (b.take_dhcp(), b.lease().address, tap())
            }
            Binding::Passt { ports } => {
                let cfg = kuvirt_netbind::passt::PasstConfig {
                    socket: pod.state_dir.join("passt").join(format!("{}.sock", p.tap)),
                    pod_interface: "eth0".into(),
                    ports: ports.clone(),
                    log: pod.state_dir.join(format!("passt-{}.log", p.tap)),
                    run_as: pod.qemu_uid,
                };
                let passt = kuvirt_netbind::passt::start(&cfg)?;
                plumb::local_address()?;
                let address = passt.pod_ip();
                bound
                    .metadata_peers
                    .push(kuvirt_netbind::metadata::SERVICE_ADDR.ip());
                bound.passt.push(passt);
                (None, address, NetBackend::Passt { socket: cfg.socket })
            }
        };
        bound.servers.extend(server.map(Serving::Dhcp));
        bound.guest_addresses.insert(p.name.clone(), address);
        bound.metadata_peers.push(address.into());
        bound.backends.insert(p.name.clone(), backend);
    }
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(yaml: &str) -> VirtualMachineInstance {
        let mut v: VirtualMachineInstance = serde_saphyr::from_str(yaml).unwrap();
        kuvirt_api::defaults::default_vmi(&mut v);
        v
    }

    const BASE: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: a, namespace: ns}\nspec:\n  networks: [{name: default, pod: {}}]\n  domain:\n    devices:\n      interfaces:\n";

    #[test]
    fn masquerade_with_ports_and_dhcp_options() {
        let v = vmi(&format!(
            "{BASE}      - name: default\n        masquerade: {{}}\n        ports: [{{port: 80}}, {{port: 53, protocol: udp}}]\n        dhcpOptions: {{bootFileName: pxelinux.0, tftpServerName: 10.0.2.9, ntpServers: [10.0.2.7], privateOptions: [{{option: 240, value: x}}]}}\n"
        ));
        let p = plan(&v).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].tap, "tap0");
        assert_eq!(
            p[0].binding,
            Binding::Masquerade {
                ports: vec![
                    Port::tcp(80),
                    Port {
                        protocol: Protocol::Udp,
                        port: 53
                    }
                ]
            }
        );
        assert_eq!(p[0].extra.boot_file_name.as_deref(), Some("pxelinux.0"));
        assert_eq!(p[0].extra.ntp_servers, vec![Ipv4Addr::new(10, 0, 2, 7)]);
        assert_eq!(p[0].extra.private_options[0].code, 240);
        assert_eq!(
            format!(
                "52:54:00:{:02x}:{:02x}:{:02x}",
                p[0].mac[3], p[0].mac[4], p[0].mac[5]
            ),
            generated_mac("ns", "a", "default")
        );
    }

    #[test]
    fn bridge_with_mac() {
        let v = vmi(&format!(
            "{BASE}      - name: default\n        bridge: {{}}\n        macAddress: 02:00:00:00:00:aa\n"
        ));
        let p = plan(&v).unwrap();
        assert_eq!(p[0].binding, Binding::Bridge);
        assert_eq!(p[0].mac, [2, 0, 0, 0, 0, 0xaa]);
    }

    #[test]
    fn refusals_name_the_field() {
        let v = vmi(&format!(
            "{BASE}      - name: default\n        masquerade: {{}}\n        dhcpOptions: {{ntpServers: [ntp.example]}}\n"
        ));
        assert_eq!(
            plan(&v).unwrap_err().field,
            "spec.domain.devices.interfaces[0].dhcpOptions.ntpServers[0]"
        );
        let v = vmi(&format!(
            "{BASE}      - name: default\n        masquerade: {{}}\n        ports: [{{port: 70000}}]\n"
        ));
        assert_eq!(
            plan(&v).unwrap_err().field,
            "spec.domain.devices.interfaces[0].ports[0].port"
        );
        let v = vmi(&format!(
            "{BASE}      - name: default\n        passt: {{}}\n"
        ));
        assert_eq!(
            plan(&v).unwrap_err().field,
            "spec.domain.devices.interfaces[0].ports"
        );
        let v = vmi(&format!(
            "{BASE}      - name: default\n        passt: {{}}\n        ports: [{{port: 22}}]\n"
        ));
        assert_eq!(
            plan(&v).unwrap()[0].binding,
            Binding::Passt {
                ports: vec![Port::tcp(22)]
            }
        );
        let v = vmi(&format!(
            "{BASE}      - name: default\n        sriov: {{}}\n"
        ));
        assert_eq!(
            plan(&v).unwrap_err().field,
            "spec.domain.devices.interfaces[0]"
        );
    }
}
