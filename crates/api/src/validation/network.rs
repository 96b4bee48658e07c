//! Checks on `spec.networks` and `spec.domain.devices.interfaces`.

use std::collections::{HashMap, HashSet};

use super::storage::is_pci_address;
use super::{FieldErrorKind::*, FieldErrors, FieldPath};
use crate::v1::{InterfaceState, Network, VirtualMachineInstanceSpec};

const MODELS: &[&str] = &[
    "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio",
];
/// Bindings KubeVirt discontinued; kept in `extra` when read.
const DISCONTINUED_BINDINGS: &[&str] = &["slirp", "macvtap"];

pub(super) fn validate(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    validate_networks(path, spec, errs);
    validate_interfaces(path, spec, errs);
}

fn validate_networks(path: &FieldPath, spec: &VirtualMachineInstanceSpec, errs: &mut FieldErrors) {
    let nets = path.child("networks");
    let ifaces: HashSet<&str> = spec
        .domain
        .devices
        .interfaces
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    let mut seen = HashSet::new();
    let mut pod_networks = 0;
    let mut multus_defaults = 0;
    for (i, net) in spec.networks.iter().enumerate() {
        let p = nets.index(i);
        if net.name.is_empty() {
            errs.push(&p.child("name"), Required, "a network needs a name");
        } else {
            if !seen.insert(net.name.as_str()) {
                errs.push(
                    &p.child("name"),
                    Duplicate,
                    format!("network name {:?} is already used", net.name),
                );
            }
            if !ifaces.contains(net.name.as_str()) {
                errs.push(
                    &p.child("name"),
                    NotFound,
                    format!("no interface refers to network {:?}", net.name),
                );
            }
        }
        let sources = usize::from(net.pod.is_some())
            + usize::from(net.multus.is_some())
            + usize::from(net.extra.contains_key("resourceClaim"));
        if sources != 1 {
            errs.push(
                &p,
                Invalid,
                format!("must have exactly one of pod, multus set, found {sources}"),
            );
        }
        if net.pod.is_some() {
            pod_networks += 1;
            if pod_networks > 1 {
                errs.push(&p.child("pod"), Invalid, "only one pod network is allowed");
            }
        }
        if let Some(m) = &net.multus {
            if m.network_name.is_empty() {
                errs.push(
                    &p.child("multus").child("networkName"),
                    Required,
                    "a multus network needs a networkName",
                );
            }
            if m.default == Some(true) {
                multus_defaults += 1;
                if multus_defaults > 1 {
                    errs.push(
                        &p.child("multus").child("default"),
                        Invalid,
                        "only one multus network can be the default",
                    );
                }
            }
        }
    }
    if pod_networks > 0 && multus_defaults > 0 {
        errs.push(
            &nets,
            Invalid,
            "a pod network cannot be defined when a multus network is the default",
        );
    }
}

fn validate_interfaces(
    path: &FieldPath,
    spec: &VirtualMachineInstanceSpec,
    errs: &mut FieldErrors,
) {
    let ifaces_path = path.child("domain").child("devices").child("interfaces");
    let networks: HashMap<&str, &Network> =
        spec.networks.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut seen = HashSet::new();
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let p = ifaces_path.index(i);
        let network = networks.get(iface.name.as_str());
        if iface.name.is_empty() {
            errs.push(&p.child("name"), Required, "an interface needs a name");
        } else {
            if !iface
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                errs.push(
                    &p.child("name"),
                    Invalid,
                    "may only contain letters, digits, '-' and '_'",
                );
            }
            if !seen.insert(iface.name.as_str()) {
                errs.push(
                    &p.child("name"),
                    Duplicate,
                    format!(
                        "interface name {:?} is already used; one interface per network",
                        iface.name
                    ),
                );
            }
            if network.is_none() {
                errs.push(
                    &p.child("name"),
                    NotFound,
                    format!("network {:?} not found", iface.name),
                );
            }
        }

        for key in DISCONTINUED_BINDINGS {
            if iface.extra.contains_key(*key) {
                errs.push(
                    &p.child(key),
                    NotSupported,
                    format!("the {key} binding was discontinued by KubeVirt"),
                );
            }
        }
        let discontinued = DISCONTINUED_BINDINGS
            .iter()
            .filter(|k| iface.extra.contains_key(**k))
            .count();
        let bindings = [
            iface.bridge.is_some(),
            iface.masquerade.is_some(),
            iface.passt.is_some(),
            iface.passt_binding.is_some(),
            iface.sriov.is_some(),
            iface.binding.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count()
            + discontinued;
        if bindings != 1 {
            errs.push(
                &p,
                Invalid,
                format!(
                    "must have exactly one binding (bridge, masquerade, passt, passtBinding, sriov, binding), found {bindings}"
                ),
            );
        }
        let on_pod = network.is_some_and(|n| n.pod.is_some());
        if network.is_some() && !on_pod {
            for (key, set) in [
                ("masquerade", iface.masquerade.is_some()),
                ("passt", iface.passt.is_some()),
                ("passtBinding", iface.passt_binding.is_some()),
            ] {
                if set {
                    errs.push(
                        &p.child(key),
                        Invalid,
                        format!("the {key} binding is only implemented with the pod network"),
                    );
                }
            }
        }
        if let Some(b) = &iface.binding
            && b.name.is_empty()
        {
            errs.push(
                &p.child("binding").child("name"),
                Required,
                "a binding plugin needs a name",
            );
        }

        if let Some(model) = iface.model.as_deref()
            && !MODELS.contains(&model)
        {
            errs.push(
                &p.child("model"),
                NotSupported,
                format!(
                    "unsupported interface model {model:?}, must be one of: {}",
                    MODELS.join(", ")
                ),
            );
        }
        if let Some(mac) = &iface.mac_address
            && !is_mac_address(mac)
        {
            errs.push(
                &p.child("macAddress"),
                Invalid,
                format!(
                    "malformed MAC address {mac:?}, want six hex octets like 02:00:00:00:00:01"
                ),
            );
        }
        if let Some(pci) = &iface.pci_address
            && !is_pci_address(pci)
        {
            errs.push(
                &p.child("pciAddress"),
                Invalid,
                format!("malformed PCI address {pci:?}, want dddd:bb:dd.f"),
            );
        }
        if let Some(state) = &iface.state {
            match state {
                InterfaceState::Other(s) => errs.push(
                    &p.child("state"),
                    NotSupported,
                    format!(
                        "unsupported interface state {s:?}, must be one of: {}",
                        InterfaceState::KNOWN.join(", ")
                    ),
                ),
                InterfaceState::Absent if iface.bridge.is_none() || on_pod => errs.push(
                    &p.child("state"),
                    Invalid,
                    "state absent is only supported for bridge binding on a secondary network",
                ),
                _ => {}
            }
        }
        validate_ports(&p, iface, errs);
        if let Some(dhcp) = &iface.dhcp_options {
            let dp = p.child("dhcpOptions");
            let mut codes = HashSet::new();
            for (j, opt) in dhcp.private_options.iter().enumerate() {
                if !(224..=254).contains(&opt.option) {
                    errs.push(
                        &dp.child("privateOptions").index(j).child("option"),
                        Invalid,
                        "must be in the range 224 to 254",
                    );
                }
                if !codes.insert(opt.option) {
                    errs.push(
                        &dp.child("privateOptions").index(j).child("option"),
                        Duplicate,
                        format!("option {} is given twice", opt.option),
                    );
                }
            }
            for (j, ntp) in dhcp.ntp_servers.iter().enumerate() {
                if ntp.parse::<std::net::Ipv4Addr>().is_err() {
                    errs.push(
                        &dp.child("ntpServers").index(j),
                        Invalid,
                        format!("{ntp:?} is not an IPv4 address"),
                    );
                }
            }
        }
    }
}

fn validate_ports(p: &FieldPath, iface: &crate::v1::Interface, errs: &mut FieldErrors) {
    let mut names = HashSet::new();
    for (j, port) in iface.ports.iter().enumerate() {
        let pp = p.child("ports").index(j);
        if !(1..=65535).contains(&port.port) {
            errs.push(
                &pp.child("port"),
                Invalid,
                "must be in the range 1 to 65535",
            );
        }
        if let Some(proto) = &port.protocol
            && proto != "TCP"
            && proto != "UDP"
        {
            errs.push(
                &pp.child("protocol"),
                NotSupported,
                format!("unsupported protocol {proto:?}, must be TCP or UDP"),
            );
        }
        if let Some(name) = &port.name
            && !names.insert(name.as_str())
        {
            errs.push(
                &pp.child("name"),
                Duplicate,
                format!("port name {name:?} is already used"),
            );
        }
    }
}

/// Six hex octets separated consistently by ':' or '-'.
pub(super) fn is_mac_address(s: &str) -> bool {
    let sep = if s.contains('-') { '-' } else { ':' };
    let parts: Vec<&str> = s.split(sep).collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}
