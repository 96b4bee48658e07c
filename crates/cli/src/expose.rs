//! `kuvirt expose vm|vmi NAME`: creates a core/v1 Service selecting the launcher pod of a VM or
//! VMI, as `virtctl expose` does. A NodePort Service gets its nodePorts here (kuvirt's API server
//! allocates none); the node agent's `handler::services` forwards them to the VM.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use clap::Args;
use k8s_openapi::api::core::v1::{Node, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kuvirt_api::v1::{API_VERSION, VirtualMachineInstanceSpec};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

use crate::kubectl::{ClientArgs, client, error_line};

/// Labels every launcher pod of VMI `name` carries (`controller::pod`): virtctl selects on
/// KubeVirt's `vmi.kubevirt.io/id`, which kuvirt's launcher pods do not have; `vm.kubevirt.io/name`
/// is the VMI's name on both.
pub fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubevirt.io".to_owned(), "virt-launcher".to_owned()),
        ("vm.kubevirt.io/name".to_owned(), name.to_owned()),
    ])
}

/// `kuvirt expose vm|vmi NAME --port P [--target-port T] [--name SVC] [--type ClusterIP|NodePort]`
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  kuvirt expose vm myvm --port 22 --name myvm-ssh --type NodePort\n  kuvirt expose vmi myvm --port 80 --target-port 8080"
)]
pub struct ExposeArgs {
    /// vm (virtualmachine) or vmi (virtualmachineinstance).
    #[arg(value_name = "TYPE")]
    kind: String,
    /// The VirtualMachine or VirtualMachineInstance.
    #[arg(value_name = "NAME")]
    resource: String,
    /// Name of the Service (default: NAME).
    #[arg(long = "name", value_name = "SVC")]
    service: Option<String>,
    /// The port the Service serves on (default: the ports of the pod-network interface).
    #[arg(long)]
    port: Option<i32>,
    /// Name or number of the port on the VM (default: --port).
    #[arg(long)]
    target_port: Option<String>,
    /// ClusterIP or NodePort.
    #[arg(long = "type", default_value = "ClusterIP")]
    service_type: String,
    /// TCP or UDP.
    #[arg(long, default_value = "TCP")]
    protocol: String,
    /// Name of the port.
    #[arg(long)]
    port_name: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

/// What is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vm,
    Vmi,
}

impl Kind {
    fn parse(s: &str) -> Result<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "vm" | "vms" | "virtualmachine" | "virtualmachines" => Ok(Kind::Vm),
            "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => Ok(Kind::Vmi),
            _ => bail!("unsupported resource type: {s} (vm or vmi)"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Vm => "VirtualMachine",
            Kind::Vmi => "VirtualMachineInstance",
        }
    }
}

/// Runs `kuvirt expose`; an error is one line on stderr and exit code 1.
pub async fn run(args: ExposeArgs) -> Result<i32> {
    match expose(&args).await {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("{}", error_line(&e));
            Ok(1)
        }
    }
}

async fn expose(args: &ExposeArgs) -> Result<()> {
    let kind = Kind::parse(&args.kind)?;
    let service_type = service_type(&args.service_type)?;
    let protocol = protocol(&args.protocol)?;
    let session = client::connect(&args.client).await?;
    let ns = session.namespace.as_str();
    let (uid, ports) = match kind {
        Kind::Vm => {
            let vm = Api::<VirtualMachine>::namespaced(session.client.clone(), ns)
                .get(&args.resource)
                .await?;
            let ports = vm
                .spec
                .template
                .as_ref()
                .map(|t| pod_network_ports(&t.spec))
                .unwrap_or_default();
            (vm.metadata.uid, ports)
        }
        Kind::Vmi => {
            let vmi = Api::<VirtualMachineInstance>::namespaced(session.client.clone(), ns)
                .get(&args.resource)
                .await?;
            (vmi.metadata.uid, pod_network_ports(&vmi.spec))
        }
    };
    let mut ports = match args.port {
        Some(port) => vec![ServicePort {
            name: args.port_name.clone(),
            protocol: Some(protocol.to_owned()),
            port,
            target_port: Some(target_port(args.target_port.as_deref(), port)),
            ..ServicePort::default()
        }],
        None if ports.is_empty() => {
            bail!("couldn't find port via --port flag or introspection")
        }
        None => ports,
    };
    if service_type == "NodePort" {
        let all = Api::<Service>::all(session.client.clone())
            .list(&ListParams::default())
            .await?;
        let mut used: BTreeSet<i32> = all
            .items
            .iter()
            .filter_map(|s| s.spec.as_ref()?.ports.as_ref())
            .flatten()
            .filter_map(|p| p.node_port)
            .collect();
        for p in &mut ports {
            let port = free_node_port(&used, rand::random())?;
            used.insert(port);
            p.node_port = Some(port);
        }
    }
    let name = args
        .service
        .clone()
        .unwrap_or_else(|| args.resource.clone());
    let svc = Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(ns.to_owned()),
            owner_references: Some(vec![OwnerReference {
                api_version: API_VERSION.to_owned(),
                kind: kind.name().to_owned(),
                name: args.resource.clone(),
                uid: uid.unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(ports),
            selector: Some(selector(&args.resource)),
            type_: Some(service_type.to_owned()),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    let svc = Api::<Service>::namespaced(session.client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let at = reachable_at(&session.client, ns, &args.resource, &svc).await;
    println!(
        "Service {name} successfully created for {} {}{}",
        args.kind.to_ascii_lowercase(),
        args.resource,
        at.map(|a| format!("; reachable at {a}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// NodePorts are Kubernetes' default range.
const NODE_PORTS: std::ops::RangeInclusive<i32> = 30000..=32767;

/// A nodePort no Service uses, starting at a random point of the range (as Kubernetes' allocator
/// picks at random, so two clients rarely race for the same one).
fn free_node_port(used: &BTreeSet<i32>, seed: u32) -> Result<i32> {
    let (lo, n) = (
        *NODE_PORTS.start(),
        NODE_PORTS.end() - NODE_PORTS.start() + 1,
    );
    let start = i32::try_from(seed % n.unsigned_abs()).unwrap_or(0);
    (0..n)
        .map(|i| lo + (start + i) % n)
        .find(|p| !used.contains(p))
        .ok_or_else(|| anyhow::anyhow!("no free nodePort in {lo}-{}", NODE_PORTS.end()))
}

/// Where the Service answers: `NODE_IP:NODEPORT, …` on the node running the VMI (the only one
/// with endpoints in embedded mode; the single node when it is not placed yet; `port N of its
/// node` without either), or `CLUSTER_IP:PORT, …` when the Service has a cluster IP (kuvirt's API
/// server assigns none).
async fn reachable_at(client: &kube::Client, ns: &str, vmi: &str, svc: &Service) -> Option<String> {
    let spec = svc.spec.as_ref()?;
    let ports = spec.ports.as_deref().unwrap_or_default();
    let join = |host: &str, ps: Vec<i32>| -> Option<String> {
        (!ps.is_empty()).then(|| {
            ps.iter()
                .map(|p| format!("{host}:{p}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    };
    if spec.type_.as_deref() == Some("NodePort") {
        let node_ip = node_ip(client, ns, vmi).await;
        let node_ports: Vec<i32> = ports.iter().filter_map(|p| p.node_port).collect();
        return match node_ip {
            Some(ip) => join(&ip, node_ports),
            None => {
                let ps: Vec<String> = node_ports.iter().map(i32::to_string).collect();
                (!ps.is_empty()).then(|| format!("port {} of its node", ps.join(", ")))
            }
        };
    }
    let ip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")?;
    join(ip, ports.iter().map(|p| p.port).collect())
}

/// The InternalIP of the VMI's node, or of the only node.
async fn node_ip(client: &kube::Client, ns: &str, vmi: &str) -> Option<String> {
    let nodes = Api::<Node>::all(client.clone());
    let placed = Api::<VirtualMachineInstance>::namespaced(client.clone(), ns)
        .get_opt(vmi)
        .await
        .ok()
        .flatten()
        .and_then(|v| v.status?.node_name);
    let node = match placed {
        Some(name) => nodes.get_opt(&name).await.ok()??,
        None => {
            let mut all = nodes.list(&ListParams::default()).await.ok()?.items;
            (all.len() == 1).then_some(())?;
            all.pop()?
        }
    };
    node.status?
        .addresses?
        .into_iter()
        .find(|a| a.type_ == "InternalIP")
        .map(|a| a.address)
}

fn service_type(s: &str) -> Result<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "clusterip" => Ok("ClusterIP"),
        "nodeport" => Ok("NodePort"),
        "loadbalancer" | "externalname" => {
            bail!("type: {s} not supported (ClusterIP or NodePort)")
        }
        _ => bail!("unknown service type: {s}"),
    }
}

fn protocol(s: &str) -> Result<&'static str> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok("TCP"),
        "udp" => Ok("UDP"),
        _ => bail!("unknown protocol: {s}"),
    }
}

/// `--target-port`: a number or a port name; Kubernetes' default is the service port.
fn target_port(s: Option<&str>, port: i32) -> IntOrString {
    match s {
        None | Some("") => IntOrString::Int(port),
        Some(s) => match s.parse::<i32>() {
            Ok(n) => IntOrString::Int(n),
            Err(_) => IntOrString::String(s.to_owned()),
        },
    }
}

/// The ports declared on the pod-network interface (virtctl's introspection), named port-N.
fn pod_network_ports(spec: &VirtualMachineInstanceSpec) -> Vec<ServicePort> {
    let Some(net) = spec.networks.iter().find(|n| n.pod.is_some()) else {
        return Vec::new();
    };
    let Some(iface) = spec
        .domain
        .devices
        .interfaces
        .iter()
        .find(|i| i.name == net.name)
    else {
        return Vec::new();
    };
    iface
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| ServicePort {
            name: Some(format!("port-{}", i + 1)),
            protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
            port: p.port,
            target_port: Some(IntOrString::Int(p.port)),
            ..ServicePort::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_types_and_target_ports() {
        assert_eq!(Kind::parse("VM").unwrap(), Kind::Vm);
        assert_eq!(Kind::parse("virtualmachineinstances").unwrap(), Kind::Vmi);
        assert!(Kind::parse("vmirs").is_err());
        assert_eq!(service_type("nodeport").unwrap(), "NodePort");
        assert!(service_type("LoadBalancer").is_err());
        assert_eq!(protocol("udp").unwrap(), "UDP");
        assert_eq!(target_port(None, 22), IntOrString::Int(22));
        assert_eq!(target_port(Some("2222"), 22), IntOrString::Int(2222));
        assert_eq!(
            target_port(Some("ssh"), 22),
            IntOrString::String("ssh".into())
        );
    }

    #[test]
    fn node_ports_are_free_ones_of_the_range() {
        let none = BTreeSet::new();
        assert_eq!(free_node_port(&none, 0).unwrap(), 30000);
        assert_eq!(free_node_port(&none, 2767).unwrap(), 32767);
        assert_eq!(free_node_port(&none, 2768).unwrap(), 30000);
        let used = BTreeSet::from([32767, 30000]);
        assert_eq!(free_node_port(&used, 2767).unwrap(), 30001);
        let all: BTreeSet<i32> = NODE_PORTS.collect();
        assert!(free_node_port(&all, 5).is_err());
    }

    #[test]
    fn ports_come_from_the_pod_interface() {
        let spec: VirtualMachineInstanceSpec = serde_json::from_value(json!({
            "domain": {"devices": {"interfaces": [
                {"name": "other", "bridge": {}, "ports": [{"port": 1}]},
                {"name": "default", "masquerade": {}, "ports": [{"port": 22}, {"port": 53, "protocol": "UDP"}]}]}},
            "networks": [{"name": "other", "multus": {"networkName": "x"}}, {"name": "default", "pod": {}}]
        }))
        .unwrap();
        let ports = pod_network_ports(&spec);
        assert_eq!(
            serde_json::to_value(ports).unwrap(),
            json!([{"name": "port-1", "port": 22, "protocol": "TCP", "targetPort": 22},
                   {"name": "port-2", "port": 53, "protocol": "UDP", "targetPort": 53}])
        );
    }
}
