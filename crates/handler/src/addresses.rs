//! Sticky pod IPs: what a launcher pod asks of the node's IPAM (the fixed address in its
//! `kuvirt.io/ip`, else preferably its lease `kuvirt.io/ip-lease`, and none of the addresses
//! other VMs keep while stopped), and recording the address a VM got on the VM itself
//! (`metadata.annotations["kuvirt.io/ip-lease"]`), so the store holds the lease: the VM's next
//! VMI asks for the same address, and deleting the VM frees it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kuvirt_api::v1::{IP_ANNOTATION, IP_LEASE_ANNOTATION};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;

use crate::sandbox::ipam::{Cidr, IpRequest};

/// The address `pod` asks for under `key`, if any; `Err` names an annotation that is not an
/// IPv4 address.
pub fn requested(pod: &Pod, key: &str) -> Result<Option<Ipv4Addr>, String> {
    let Some(text) = pod.metadata.annotations.as_ref().and_then(|a| a.get(key)) else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|_| format!("{key} {text:?} is not an IPv4 address"))
}

/// The addresses VMs other than `ns/vm` keep (their `kuvirt.io/ip`).
pub fn reserved_by_others(vms: &[VirtualMachine], ns: &str, vm: &str) -> BTreeSet<Ipv4Addr> {
    vms.iter()
        .filter(|v| {
            (v.metadata.namespace.as_deref(), v.metadata.name.as_deref()) != (Some(ns), Some(vm))
        })
        .flat_map(|v| {
            [IP_ANNOTATION, IP_LEASE_ANNOTATION]
                .into_iter()
                .filter_map(|k| v.metadata.annotations.as_ref()?.get(k)?.parse().ok())
                .collect::<Vec<Ipv4Addr>>()
        })
        .collect()
}

/// The VM a VMI belongs to (its controller owner of kind VirtualMachine), by name.
pub fn owner_vm(vmi: &VirtualMachineInstance) -> Option<String> {
    vmi.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.kind == "VirtualMachine" && r.controller == Some(true))
        .map(|r| r.name.clone())
}

/// What the node's IPAM is asked for the launcher pod of `vmi`: the pod's own request and the
/// addresses every other VM keeps. An unreadable VM list leaves out the reservations (the pod
/// still starts).
pub async fn request(
    client: &kube::Client,
    pod: &Pod,
    ns: &str,
    vmi: &VirtualMachineInstance,
) -> Result<IpRequest, String> {
    let address = requested(pod, IP_ANNOTATION)?;
    // A lease that is not an address is no preference.
    let prefer = requested(pod, IP_LEASE_ANNOTATION).ok().flatten();
    let vm = owner_vm(vmi).unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let reserved = match vms.list(&ListParams::default()).await {
        Ok(list) => reserved_by_others(&list.items, ns, &vm),
        Err(e) => {
            tracing::warn!(error = %e, "listing VMs for the addresses they keep");
            BTreeSet::new()
        }
    };
    Ok(IpRequest {
        address,
        prefer,
        reserved,
    })
}

/// Where a migration target pod's address comes from: the pod CIDR (of whichever node) that
/// holds `ip`, which the target takes over from its source (`kuvirt.io/migration-ip`); `own`
/// when it is this node's. `Err` says why no pod CIDR was found.
pub async fn home_cidr(client: &kube::Client, ip: Ipv4Addr, own: Cidr) -> Result<Cidr, String> {
    if own.contains(ip) {
        return Ok(own);
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("listing the nodes for the pod CIDR of {ip}: {e}"))?;
    list.items
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_deref()?.parse::<Cidr>().ok())
        .find(|c| c.contains(ip))
        .ok_or_else(|| format!("no node's pod CIDR holds {ip}"))
}

/// Writes `ip` as the lease of the VM that owns `vmi` when it does not say so already (best
/// effort: the next start without it only loses stickiness). A VM that moved to another node's
/// pod CIDR gets its new address as its lease.
pub async fn record(client: &kube::Client, ns: &str, vmi: &VirtualMachineInstance, ip: Ipv4Addr) {
    let Some(vm) = owner_vm(vmi) else {
        return;
    };
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), ns);
    let Ok(Some(current)) = vms.get_opt(&vm).await else {
        return;
    };
    let owned = vmi
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| Some(&r.uid) == current.metadata.uid.as_ref());
    let has = current
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(IP_LEASE_ANNOTATION))
        .is_some_and(|l| *l == ip.to_string());
    if !owned || has {
        return;
    }
    let patch = json!({"metadata": {"annotations": {IP_LEASE_ANNOTATION: ip.to_string()}}});
    if let Err(e) = vms
        .patch(&vm, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        tracing::warn!(vm = %vm, namespace = %ns, error = %e, "recording the VM's pod IP");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(ns: &str, name: &str, ip: Option<&str>) -> VirtualMachine {
        let mut v: VirtualMachine = serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": ns}, "spec": {}
        }))
        .unwrap();
        if let Some(ip) = ip {
            v.metadata.annotations = Some([(IP_ANNOTATION.to_owned(), ip.to_owned())].into());
        }
        v
    }

    #[test]
    fn others_keep_their_addresses() {
        let vms = [
            vm("a", "one", Some("10.244.0.5")),
            vm("a", "two", Some("10.244.0.6")),
            vm("b", "one", Some("10.244.0.7")),
            vm("a", "three", None),
            vm("a", "four", Some("not-an-ip")),
        ];
        let mut leased = vm("c", "five", None);
        leased.metadata.annotations =
            Some([(IP_LEASE_ANNOTATION.to_owned(), "10.244.0.8".to_owned())].into());
        let vms: Vec<_> = vms.into_iter().chain([leased]).collect();
        let got: Vec<_> = reserved_by_others(&vms, "a", "one").into_iter().collect();
        assert_eq!(
            got,
            vec![
                Ipv4Addr::new(10, 244, 0, 6),
                Ipv4Addr::new(10, 244, 0, 7),
                Ipv4Addr::new(10, 244, 0, 8)
            ]
        );
    }

    #[test]
    fn a_pod_asks_for_its_annotation() {
        let mut pod = Pod::default();
        assert_eq!(requested(&pod, IP_ANNOTATION), Ok(None));
        pod.metadata.annotations =
            Some([(IP_ANNOTATION.to_owned(), "10.244.0.9".to_owned())].into());
        assert_eq!(
            requested(&pod, IP_ANNOTATION),
            Ok(Some(Ipv4Addr::new(10, 244, 0, 9)))
        );
        pod.metadata.annotations = Some([(IP_ANNOTATION.to_owned(), "x".to_owned())].into());
        assert!(
            requested(&pod, IP_ANNOTATION)
                .unwrap_err()
                .contains("not an IPv4 address")
        );
    }
}
