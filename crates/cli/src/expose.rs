//! `kuvirt expose vm|vmi NAME`: creates a core/v1 Service selecting the launcher pod of a VM or
//! VMI, as `virtctl expose` does. Only the Service object: forwarding host ports to it belongs to
//! the networking work.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Args;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::PostParams;
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
    let ports = match args.port {
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
    Api::<Service>::namespaced(session.client, ns)
        .create(&PostParams::default(), &svc)
        .await?;
    println!(
        "Service {name} successfully created for {} {}",
        args.kind.to_ascii_lowercase(),
        args.resource
    );
    Ok(())
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
