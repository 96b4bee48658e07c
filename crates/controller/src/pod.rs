//! VMI → launcher Pod: the pod that holds one VM (KubeVirt's virt-launcher pod), as a pure
//! function. Its requests are the guest's plus a per-VM overhead estimate documented below.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::quantity::parse_quantity;

/// Label on every launcher pod (KubeVirt's).
pub const APP_LABEL: &str = "kubevirt.io";
pub const APP_VALUE: &str = "virt-launcher";
/// The VMI's uid, on its pods.
pub const CREATED_BY: &str = "kubevirt.io/created-by";
/// The VMI's name, on its pods.
pub const DOMAIN_ANNOTATION: &str = "kubevirt.io/domain";
/// Nodes that can run VMs carry this label (KubeVirt's).
pub const SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";

/// Per-VM memory outside guest RAM, in MiB, and how it is made up. KubeVirt reserves ~180 MiB+
/// (virt-launcher, libvirt, QEMU); kuvirt has no libvirt and a small launcher. These are estimates
/// until the benchmark harness measures them (issue: benchmark harness and SPEC).
pub const LAUNCHER_MIB: u64 = 8;
pub const QEMU_BASE_MIB: u64 = 48;
pub const PER_VCPU_MIB: u64 = 8;
pub const VIDEO_MIB: u64 = 16;

/// Memory overhead in bytes for a VMI: launcher + QEMU's own memory + per vCPU + the display's
/// memory when there is one + guest page tables (1/512 of guest RAM).
pub fn overhead_bytes(vmi: &VirtualMachineInstance, guest_bytes: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    let graphics = vmi.spec.domain.devices.autoattach_graphics_device != Some(false);
    let mib = (LAUNCHER_MIB + QEMU_BASE_MIB + if graphics { VIDEO_MIB } else { 0 })
        .saturating_add(PER_VCPU_MIB.saturating_mul(vcpus(vmi)));
    mib.saturating_mul(MIB).saturating_add(guest_bytes / 512)
}

/// The most vCPUs a VM may have (QEMU's q35 limit without an IOMMU).
pub const MAX_VCPUS: u64 = 288;

/// sockets × cores × threads, saturating (validation has not bounded them).
pub fn vcpus(vmi: &VirtualMachineInstance) -> u64 {
    let cpu = vmi.spec.domain.cpu.as_ref();
    [
        cpu.and_then(|c| c.sockets),
        cpu.and_then(|c| c.cores),
        cpu.and_then(|c| c.threads),
    ]
    .iter()
    .map(|v| u64::from(v.unwrap_or(1).max(1)))
    .fold(1u64, u64::saturating_mul)
}

/// Why a VMI cannot have a pod.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct RenderError {
    pub field: String,
    pub message: String,
}

/// The launcher pod for `vmi`, running `image` (embedded mode runs `kuvirt launcher` itself).
pub fn render(vmi: &VirtualMachineInstance, image: &str) -> Result<Pod, RenderError> {
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let uid = vmi.metadata.uid.clone().unwrap_or_default();
    let domain = &vmi.spec.domain;
    let guest = domain
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| domain.resources.as_ref().and_then(|r| r.request("memory")))
        .ok_or_else(|| RenderError {
            field: "spec.domain.memory.guest".into(),
            message: "guest memory is required".into(),
        })?;
    let guest_bytes = parse_quantity(&guest.0)
        .and_then(|q| q.to_bytes())
        .map_err(|e| RenderError {
            field: "spec.domain.memory.guest".into(),
            message: e.to_string(),
        })?;
    if vcpus(vmi) > MAX_VCPUS {
        return Err(RenderError {
            field: "spec.domain.cpu".into(),
            message: format!("sockets × cores × threads must be at most {MAX_VCPUS}"),
        });
    }
    let memory = guest_bytes.saturating_add(overhead_bytes(vmi, guest_bytes));
    let cpu_request = domain
        .resources
        .as_ref()
        .and_then(|r| r.request("cpu"))
        .cloned()
        // KubeVirt's default: 100m per vCPU (cpuAllocationRatio 10).
        .unwrap_or_else(|| Quantity(format!("{}m", 100 * vcpus(vmi))));
    let requests = BTreeMap::from([
        ("memory".to_string(), Quantity(memory.to_string())),
        ("cpu".to_string(), cpu_request),
    ]);
    let mut limits = BTreeMap::new();
    if let Some(l) = domain.resources.as_ref().and_then(|r| r.limit("memory")) {
        let lb = parse_quantity(&l.0)
            .and_then(|q| q.to_bytes())
            .map_err(|e| RenderError {
                field: "spec.domain.resources.limits.memory".into(),
                message: e.to_string(),
            })?;
        limits.insert(
            "memory".to_string(),
            Quantity(lb.saturating_add(overhead_bytes(vmi, lb)).to_string()),
        );
    }
    if let Some(c) = domain.resources.as_ref().and_then(|r| r.limit("cpu")) {
        limits.insert("cpu".to_string(), c.clone());
    }

    let mut labels = vmi.metadata.labels.clone().unwrap_or_default();
    labels.insert(APP_LABEL.into(), APP_VALUE.into());
    labels.insert(CREATED_BY.into(), uid.clone());
    labels.insert("vm.kubevirt.io/name".into(), name.clone());
    let mut annotations = BTreeMap::new();
    annotations.insert(DOMAIN_ANNOTATION.into(), name.clone());
    for key in [
        kuvirt_api::v1::IP_ANNOTATION,
        kuvirt_api::v1::IP_LEASE_ANNOTATION,
    ] {
        if let Some(ip) = vmi.metadata.annotations.as_ref().and_then(|a| a.get(key)) {
            annotations.insert(key.into(), ip.clone());
        }
    }
    let mut node_selector = vmi.spec.node_selector.clone().unwrap_or_default();
    node_selector.insert(SCHEDULABLE_LABEL.into(), "true".into());

    Ok(Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("virt-launcher-{name}-")),
            namespace: vmi.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "kubevirt.io/v1".into(),
                kind: "VirtualMachineInstance".into(),
                name: name.clone(),
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "compute".into(),
                image: Some(image.to_string()),
                command: Some(vec![
                    "kuvirt".into(),
                    "launcher".into(),
                    "--vmi".into(),
                    format!(
                        "{}/{}",
                        vmi.metadata.namespace.clone().unwrap_or_default(),
                        name
                    ),
                ]),
                resources: Some(ResourceRequirements {
                    requests: Some(requests),
                    limits: (!limits.is_empty()).then_some(limits),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            node_selector: Some(node_selector),
            affinity: vmi.spec.affinity.clone(),
            tolerations: (!vmi.spec.tolerations.is_empty()).then(|| vmi.spec.tolerations.clone()),
            scheduler_name: vmi.spec.scheduler_name.clone(),
            priority_class_name: vmi.spec.priority_class_name.clone(),
            hostname: vmi.spec.hostname.clone(),
            subdomain: vmi.spec.subdomain.clone(),
            termination_grace_period_seconds: Some(
                vmi.spec.termination_grace_period_seconds.unwrap_or(30) + 15,
            ),
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi(extra: serde_json::Value) -> VirtualMachineInstance {
        let mut v = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "testvm", "namespace": "demo", "uid": "u-1", "labels": {"app": "x"}},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "256Mi"}, "cpu": {"cores": 2}},
                     "nodeSelector": {"disk": "ssd"}, "terminationGracePeriodSeconds": 20,
                     "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                         {"labelSelector": {"matchLabels": {"app": "x"}}, "topologyKey": "kubernetes.io/hostname"}]}}}
        });
        json_patch_merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn json_patch_merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(av) if av.is_object() && v.is_object() => json_patch_merge(av, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
    }

    #[test]
    fn pod_carries_identity_placement_and_requests() {
        let pod = render(&vmi(json!({})), "kuvirt").unwrap();
        let m = &pod.metadata;
        assert_eq!(m.generate_name.as_deref(), Some("virt-launcher-testvm-"));
        let labels = m.labels.as_ref().unwrap();
        assert_eq!(labels["kubevirt.io"], "virt-launcher");
        assert_eq!(labels["kubevirt.io/created-by"], "u-1");
        assert_eq!(labels["app"], "x");
        let owner = &m.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("VirtualMachineInstance", Some(true))
        );
        let spec = pod.spec.unwrap();
        let sel = spec.node_selector.unwrap();
        assert_eq!(sel["disk"], "ssd");
        assert_eq!(sel["kubevirt.io/schedulable"], "true");
        // The VMI's placement rules are the pod's (its labels too, so VMs can avoid each other).
        let anti = spec.affinity.unwrap().pod_anti_affinity.unwrap();
        let terms = anti
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(
            spec.tolerations.unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(spec.termination_grace_period_seconds, Some(35));
        let req = spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        let guest = 256 * 1024 * 1024u64;
        let overhead = (8 + 48 + 8 * 2 + 16) * 1024 * 1024 + guest / 512;
        assert_eq!(req["memory"].0, (guest + overhead).to_string());
        assert_eq!(req["cpu"].0, "200m");
    }

    #[test]
    fn no_graphics_means_less_overhead_and_limits_carry_it() {
        let v = vmi(
            json!({"spec": {"domain": {"devices": {"autoattachGraphicsDevice": false},
            "resources": {"limits": {"memory": "512Mi", "cpu": "2"}}}}}),
        );
        let pod = render(&v, "kuvirt").unwrap();
        let res = pod.spec.unwrap().containers[0].resources.clone().unwrap();
        let limits = res.limits.unwrap();
        let l = 512 * 1024 * 1024u64;
        assert_eq!(
            limits["memory"].0,
            (l + (8 + 48 + 16) * 1024 * 1024 + l / 512).to_string()
        );
        assert_eq!(limits["cpu"].0, "2");
    }

    #[test]
    fn absurd_cpu_counts_are_refused_not_overflowed() {
        let v = vmi(
            json!({"spec": {"domain": {"cpu": {"cores": 70000, "sockets": 70000, "threads": 70000}}}}),
        );
        assert_eq!(render(&v, "kuvirt").unwrap_err().field, "spec.domain.cpu");
        assert!(overhead_bytes(&v, u64::MAX) == u64::MAX, "saturates");
    }

    #[test]
    fn missing_memory_names_the_field() {
        let mut v = vmi(json!({}));
        v.spec.domain.memory = None;
        assert_eq!(
            render(&v, "kuvirt").unwrap_err().field,
            "spec.domain.memory.guest"
        );
    }
}
