//! The node's Service forwarding as one nftables script (pure): each Service port with endpoints
//! gets a chain that DNATs to one of them (`numgen random` across several), reached from its
//! cluster IP and, for NodePort and LoadBalancer Services, from the node's addresses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::sandbox::ipam::Cidr;

/// What the rules need to know about this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNet {
    /// The node's pod CIDR: only endpoints inside it are forwarded to (see [`render`]).
    pub cidr: Cidr,
    /// Where NodePorts answer: the node's InternalIP (not loopback) and its pod bridge address.
    pub node_addresses: Vec<Ipv4Addr>,
}

/// The script and what could not be forwarded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rendered {
    /// `nft -f -` input: replaces the table as a whole (or only deletes it when nothing is
    /// forwarded).
    pub script: String,
    /// One line per Service port left out, naming it.
    pub warnings: Vec<String>,
}

/// One forwarded Service port.
struct Forward {
    what: String,
    proto: &'static str,
    cluster_ip: Option<Ipv4Addr>,
    port: u16,
    node_port: Option<u16>,
    target_port: u16,
    endpoints: Vec<Ipv4Addr>,
}

/// The ruleset of `table ip TABLE` for these Services and launcher pods.
///
/// Endpoints are the Running pods of the Service's namespace matching its selector whose pod IP
/// lies in this node's pod CIDR: the only ones this node can route to (pod CIDRs of other nodes
/// are not routed between nodes), so a NodePort answers on the nodes that run the VM, like
/// `externalTrafficPolicy: Local`. Loopback addresses never answer: DNAT from 127.0.0.1 to a pod
/// would need `route_localnet` on every interface, which kuvirt does not change.
pub fn render(table: &str, net: &NodeNet, services: &[Service], pods: &[Pod]) -> Rendered {
    let mut warnings = Vec::new();
    let mut forwards = Vec::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    for svc in sorted {
        forwards.extend(forwards_of(svc, net, pods, &mut warnings));
    }
    let mut s = format!("table ip {table} {{}}\ndelete table ip {table}\n");
    if forwards.is_empty() {
        return Rendered {
            script: s,
            warnings,
        };
    }
    let cidr = net.cidr;
    let _ = write!(
        s,
        "table ip {table} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tct status dnat ip saddr {cidr} ip daddr {cidr} masquerade\n\
         \t}}\n"
    );
    let node_addrs = set(&net.node_addresses);
    let mut entry = String::new();
    let mut chains = String::new();
    for (i, f) in forwards.iter().enumerate() {
        let (proto, what) = (f.proto, &f.what);
        if let Some(ip) = f.cluster_ip {
            let _ = writeln!(
                entry,
                "\t\tip daddr {ip} {proto} dport {} jump svc{i} comment \"{what}\"",
                f.port
            );
        }
        if let (Some(np), false) = (f.node_port, net.node_addresses.is_empty()) {
            let _ = writeln!(
                entry,
                "\t\tip daddr {node_addrs} {proto} dport {np} jump svc{i} comment \"{what} nodePort\""
            );
        }
        let dnat = |ip: &Ipv4Addr| format!("meta l4proto {proto} dnat to {ip}:{}", f.target_port);
        let _ = writeln!(chains, "\tchain svc{i} {{");
        if let [only] = f.endpoints.as_slice() {
            let _ = writeln!(chains, "\t\t{}", dnat(only));
            chains.push_str("\t}\n");
        } else {
            let arms: Vec<String> = (0..f.endpoints.len())
                .map(|j| format!("{j} : jump svc{i}_{j}"))
                .collect();
            let _ = writeln!(
                chains,
                "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
                f.endpoints.len(),
                arms.join(", ")
            );
            for (j, ep) in f.endpoints.iter().enumerate() {
                let _ = writeln!(chains, "\tchain svc{i}_{j} {{\n\t\t{}\n\t}}", dnat(ep));
            }
        }
    }
    let _ = write!(s, "\tchain services {{\n{entry}\t}}\n{chains}}}\n");
    Rendered {
        script: s,
        warnings,
    }
}

/// `{ a, b }`, or the one address alone.
fn set(addrs: &[Ipv4Addr]) -> String {
    match addrs {
        [one] => one.to_string(),
        many => {
            let v: Vec<String> = many.iter().map(Ipv4Addr::to_string).collect();
            format!("{{ {} }}", v.join(", "))
        }
    }
}

/// The forwarded ports of one Service (none without a selector or endpoints).
fn forwards_of(
    svc: &Service,
    net: &NodeNet,
    pods: &[Pod],
    warnings: &mut Vec<String>,
) -> Vec<Forward> {
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    let mut endpoints: Vec<Ipv4Addr> = pods
        .iter()
        .filter(|p| selects(ns, selector, p))
        .filter_map(running_ip)
        .filter(|ip| net.cidr.contains(*ip))
        .collect();
    endpoints.sort();
    endpoints.dedup();
    if endpoints.is_empty() {
        return Vec::new();
    }
    let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse().ok());
    let node_ports = matches!(spec.type_.as_deref(), Some("NodePort" | "LoadBalancer"));
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let what = format!(
            "{ns}/{name}:{}",
            p.name.as_deref().unwrap_or(&p.port.to_string())
        );
        match forward(p, &what) {
            Ok((proto, port, target_port)) => {
                let node_port = p
                    .node_port
                    .filter(|_| node_ports)
                    .and_then(|n| u16::try_from(n).ok());
                if node_port.is_none() && cluster_ip.is_none() {
                    continue;
                }
                out.push(Forward {
                    what,
                    proto,
                    cluster_ip,
                    port,
                    node_port,
                    target_port,
                    endpoints: endpoints.clone(),
                });
            }
            Err(w) => warnings.push(w),
        }
    }
    out
}

/// (protocol, port, target port) of a Service port, or why it is left out.
fn forward(p: &ServicePort, what: &str) -> Result<(&'static str, u16, u16), String> {
    let proto = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => "tcp",
        "UDP" => "udp",
        other => return Err(format!("{what}: protocol {other} is not forwarded")),
    };
    let port = u16::try_from(p.port).map_err(|_| format!("{what}: bad port {}", p.port))?;
    let target = match &p.target_port {
        None => p.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => s.parse().map_err(|_| {
            format!("{what}: named targetPort {s:?} is not supported (use a number)")
        })?,
    };
    let target = u16::try_from(target)
        .ok()
        .filter(|t| *t != 0)
        .ok_or_else(|| format!("{what}: bad targetPort {target}"))?;
    Ok((proto, port, target))
}

/// Whether the Service's equality selector picks this pod (same namespace, not being deleted).
fn selects(ns: &str, selector: &BTreeMap<String, String>, pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    pod.metadata.namespace.as_deref().unwrap_or("default") == ns
        && pod.metadata.deletion_timestamp.is_none()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The pod's IPv4 address while it is Running.
fn running_ip(pod: &Pod) -> Option<Ipv4Addr> {
    let st = pod.status.as_ref()?;
    (st.phase.as_deref() == Some("Running")).then_some(())?;
    st.pod_ip.as_deref()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn net() -> NodeNet {
        NodeNet {
            cidr: "10.244.0.0/24".parse().unwrap(),
            node_addresses: vec![Ipv4Addr::new(192, 168, 1, 5), Ipv4Addr::new(10, 244, 0, 1)],
        }
    }

    fn pod(name: &str, ip: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": "web"}},
            "status": {"phase": phase, "podIP": ip}
        }))
        .unwrap()
    }

    fn svc(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"}, "spec": spec
        }))
        .unwrap()
    }

    fn node_port_svc() -> Service {
        svc(
            json!({"type": "NodePort", "selector": {"vm.kubevirt.io/name": "web"},
                   "ports": [{"port": 8080, "targetPort": 80, "nodePort": 31234, "protocol": "TCP"}]}),
        )
    }

    #[test]
    fn one_endpoint_is_a_plain_dnat_on_the_node_addresses() {
        let r = render(
            "kuvirt_services",
            &net(),
            &[node_port_svc()],
            &[pod("a", "10.244.0.7", "Running")],
        );
        assert!(r.warnings.is_empty());
        let want = "table ip kuvirt_services {}\n\
            delete table ip kuvirt_services\n\
            table ip kuvirt_services {\n\
            \tchain prerouting {\n\
            \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
            \t\tjump services\n\
            \t}\n\
            \tchain output {\n\
            \t\ttype nat hook output priority -100; policy accept;\n\
            \t\tjump services\n\
            \t}\n\
            \tchain postrouting {\n\
            \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
            \t\tct status dnat ip saddr 10.244.0.0/24 ip daddr 10.244.0.0/24 masquerade\n\
            \t}\n\
            \tchain services {\n\
            \t\tip daddr { 192.168.1.5, 10.244.0.1 } tcp dport 31234 jump svc0 comment \"default/web:8080 nodePort\"\n\
            \t}\n\
            \tchain svc0 {\n\
            \t\tmeta l4proto tcp dnat to 10.244.0.7:80\n\
            \t}\n\
            }\n";
        assert_eq!(r.script, want);
    }

    #[test]
    fn several_endpoints_are_picked_at_random_and_cluster_ips_forwarded() {
        let mut s = node_port_svc();
        let spec = s.spec.as_mut().unwrap();
        spec.cluster_ip = Some("10.96.0.10".into());
        spec.ports.as_mut().unwrap()[0].protocol = Some("UDP".into());
        let pods = [
            pod("b", "10.244.0.9", "Running"),
            pod("a", "10.244.0.7", "Running"),
            pod("c", "10.244.0.11", "Pending"),
            pod("d", "10.244.1.5", "Running"),
        ];
        let r = render("t", &net(), &[s], &pods);
        let body = r.script.split("chain services").nth(1).unwrap();
        assert_eq!(
            body,
            " {\n\
             \t\tip daddr 10.96.0.10 udp dport 8080 jump svc0 comment \"default/web:8080\"\n\
             \t\tip daddr { 192.168.1.5, 10.244.0.1 } udp dport 31234 jump svc0 comment \"default/web:8080 nodePort\"\n\
             \t}\n\
             \tchain svc0 {\n\
             \t\tnumgen random mod 2 vmap { 0 : jump svc0_0, 1 : jump svc0_1 }\n\
             \t}\n\
             \tchain svc0_0 {\n\t\tmeta l4proto udp dnat to 10.244.0.7:80\n\t}\n\
             \tchain svc0_1 {\n\t\tmeta l4proto udp dnat to 10.244.0.9:80\n\t}\n\
             }\n"
        );
    }

    #[test]
    fn nothing_to_forward_only_deletes_the_table() {
        let only_delete = "table ip t {}\ndelete table ip t\n";
        // No endpoints; another namespace; a ClusterIP Service without a cluster IP; no selector.
        let mut other_ns = pod("a", "10.244.0.7", "Running");
        other_ns.metadata.namespace = Some("other".into());
        let no_ip = svc(
            json!({"type": "ClusterIP", "selector": {"vm.kubevirt.io/name": "web"},
                                "ports": [{"port": 80}]}),
        );
        let no_selector = svc(json!({"type": "NodePort",
                                      "ports": [{"port": 80, "nodePort": 30001}]}));
        for (svcs, pods) in [
            (vec![node_port_svc()], vec![]),
            (vec![node_port_svc()], vec![other_ns]),
            (vec![no_ip], vec![pod("a", "10.244.0.7", "Running")]),
            (vec![no_selector], vec![pod("a", "10.244.0.7", "Running")]),
        ] {
            assert_eq!(render("t", &net(), &svcs, &pods).script, only_delete);
        }
    }

    /// The kernel's parser agrees (`nft -c`: checked, nothing changed; needs root and nft).
    #[test]
    fn nft_accepts_the_script() {
        let mut s = node_port_svc();
        s.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.10".into());
        let pods = [
            pod("a", "10.244.0.7", "Running"),
            pod("b", "10.244.0.9", "Running"),
        ];
        let script = render("kuvirt_check_services", &net(), &[s], &pods).script;
        let mut child = std::process::Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn named_target_ports_and_sctp_are_warned_about() {
        let s = svc(
            json!({"type": "NodePort", "selector": {"vm.kubevirt.io/name": "web"},
                           "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                                     {"port": 99, "protocol": "SCTP", "nodePort": 30099},
                                     {"port": 22, "targetPort": "2222", "nodePort": 30022}]}),
        );
        let r = render("t", &net(), &[s], &[pod("a", "10.244.0.7", "Running")]);
        assert_eq!(
            r.warnings,
            vec![
                "default/web:http: named targetPort \"http\" is not supported (use a number)",
                "default/web:99: protocol SCTP is not forwarded",
            ]
        );
        assert!(
            r.script.contains("tcp dport 30022 jump svc0"),
            "{}",
            r.script
        );
        assert!(r.script.contains("dnat to 10.244.0.7:2222"), "{}", r.script);
        assert!(!r.script.contains("30080"), "{}", r.script);
    }
}
