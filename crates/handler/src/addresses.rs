//! Sticky pod IPs: what a launcher pod asks of the node's IPAM (the address in its
//! `kuvirt.io/ip`, and none of the addresses other VMs keep while stopped), and recording the
//! address a VM got on the VM itself (`metadata.annotations["kuvirt.io/ip"]`), so the store
//! holds the lease: the VM's next VMI asks for the same address, and deleting the VM frees it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kuvirt_api::v1::IP_ANNOTATION;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;

use crate::sandbox::ipam::IpRequest;

/// The address `pod` asks for, if any; `Err` names an annotation that is not an IPv4 address.
pub fn requested(pod: &Pod) -> Result<Option<Ipv4Addr>, String> {
    let Some(text) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(IP_ANNOTATION))
    else {
        return Ok(None);
    };
    text.parse()
        .map(Some)
        .map_err(|_| format!("{IP_ANNOTATION} {text:?} is not an IPv4 address"))
}

/// The addresses VMs other than `ns/vm` keep (their `kuvirt.io/ip`).
pub fn reserved_by_others(vms: &[VirtualMachine], ns: &str, vm: &str) -> BTreeSet<Ipv4Addr> {
    vms.iter()
        .filter(|v| {
            (v.metadata.namespace.as_deref(), v.metadata.name.as_deref()) != (Some(ns), Some(vm))
        })
        .filter_map(|v| {
            v.metadata
                .annotations
                .as_ref()?
                .get(IP_ANNOTATION)?
                .parse()
                .ok()
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
    vmi: Option<&VirtualMachineInstance>,
) -> Result<IpRequest, String> {
    let address = requested(pod)?;
    let vm = vmi.and_then(owner_vm).unwrap_or_default();
    let vms: Api<VirtualMachine> = Api::all(client.clone());
    let reserved = match vms.list(&ListParams::default()).await {
        Ok(list) => reserved_by_others(&list.items, ns, &vm),
        Err(e) => {
            tracing::warn!(error = %e, "listing VMs for the addresses they keep");
            BTreeSet::new()
        }
    };
    Ok(IpRequest { address, reserved })
}

/// Writes `ip` on the VM that owns `vmi` when it does not say so already (best effort: the next
/// start without it only loses stickiness).
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
        .and_then(|a| a.get(IP_ANNOTATION))
        .is_some();
    if !owned || has {
        return;
    }
    let patch = json!({"metadata": {"annotations": {IP_ANNOTATION: ip.to_string()}}});
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
        let got: Vec<_> = reserved_by_others(&vms, "a", "one").into_iter().collect();
        assert_eq!(
            got,
            vec![Ipv4Addr::new(10, 244, 0, 6), Ipv4Addr::new(10, 244, 0, 7)]
        );
    }

    #[test]
    fn a_pod_asks_for_its_annotation() {
        let mut pod = Pod::default();
        assert_eq!(requested(&pod), Ok(None));
        pod.metadata.annotations =
            Some([(IP_ANNOTATION.to_owned(), "10.244.0.9".to_owned())].into());
        assert_eq!(requested(&pod), Ok(Some(Ipv4Addr::new(10, 244, 0, 9))));
        pod.metadata.annotations = Some([(IP_ANNOTATION.to_owned(), "x".to_owned())].into());
        assert!(requested(&pod).unwrap_err().contains("not an IPv4 address"));
    }
}
