//! What the migration controller writes, as pure functions: a migration's target launcher pod
//! (the VMI's own pod, marked as the migration's and kept off the source's node) and the VMI
//! merge patches of the handoff, the abort request and a target that went down.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::{
    IP_ANNOTATION, MIGRATION_IP_ANNOTATION, MIGRATION_JOB_LABEL, MigrationConfiguration,
    MigrationMode, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
    bridged_pod_ip, is_block_migration,
};
use serde_json::{Value, json};

use crate::pod::{CREATED_BY, RenderError};

/// The annotation on a migration's target pod: the migration's name.
pub const MIGRATION_JOB_NAME_ANNOTATION: &str = "kubevirt.io/migrationJobName";
/// The label on a VMI being migrated: the node its migration's target runs on.
pub const MIGRATION_TARGET_NODE_LABEL: &str = "kubevirt.io/migrationTargetNodeName";
/// The topology the target keeps away from the VMI's other pods in.
pub const HOSTNAME_TOPOLOGY: &str = "kubernetes.io/hostname";
/// What the controller writes into the migration state of a VMI whose target went down.
pub const TARGET_DOWN_REASON: &str = "Target pod is down";

/// The fields of a VMI's `status.migrationState` that only a migration under way fills in (the
/// node agents' progress and outcome): a handoff clears what an earlier migration left there.
const PROGRESS_FIELDS: &[&str] = &[
    "startTimestamp",
    "endTimestamp",
    "completed",
    "failed",
    "abortRequested",
    "abortStatus",
    "failureReason",
    "targetNodeAddress",
    "targetDirectMigrationNodePorts",
    "targetNodeDomainDetected",
    "targetNodeDomainReadyTimestamp",
    "targetAttachmentPodUID",
    "migrationPolicyName",
];

/// The target launcher pod of migration `m` of `vmi`: the VMI's launcher pod (as
/// [`crate::pod::render`] makes it) with the migration's UID label and name annotation, the
/// migration's `addedNodeSelector` under the VMI's own node selector (the VMI's values win), and
/// a required anti-affinity to the VMI's pods per host, so the target lands on another node.
pub fn render(
    vmi: &VirtualMachineInstance,
    m: &VirtualMachineInstanceMigration,
    image: &str,
) -> Result<Pod, RenderError> {
    let mut pod = crate::pod::render(vmi, image)?;
    let meta = &mut pod.metadata;
    meta.labels.get_or_insert_default().insert(
        MIGRATION_JOB_LABEL.into(),
        m.metadata.uid.clone().unwrap_or_default(),
    );
    let annotations = meta.annotations.get_or_insert_default();
    annotations.insert(
        MIGRATION_JOB_NAME_ANNOTATION.into(),
        m.metadata.name.clone().unwrap_or_default(),
    );
    // A bridge-bound guest holds its pod IP: the target pod takes the same one over, wherever
    // it lands (a fixed `kuvirt.io/ip` would otherwise tie the target to the source's pod CIDR).
    if let Some(ip) = bridged_pod_ip(vmi) {
        annotations.remove(IP_ANNOTATION);
        annotations.insert(MIGRATION_IP_ANNOTATION.into(), ip.to_string());
    }
    let spec = pod.spec.get_or_insert_default();
    let mut selector = m.spec.added_node_selector.clone().unwrap_or_default();
    selector.extend(spec.node_selector.take().unwrap_or_default());
    spec.node_selector = Some(selector);
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                CREATED_BY.to_string(),
                vmi.metadata.uid.clone().unwrap_or_default(),
            )])),
            ..LabelSelector::default()
        }),
        topology_key: HOSTNAME_TOPOLOGY.into(),
        ..PodAffinityTerm::default()
    };
    spec.affinity
        .get_or_insert_default()
        .pod_anti_affinity
        .get_or_insert_default()
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_default()
        .push(term);
    Ok(pod)
}

/// A JSON merge patch that turns `old` into `new`: members of `old` that `new` lacks become
/// null, nested objects are compared member by member.
pub fn replace_with(old: &Value, new: Value) -> Value {
    match (old, new) {
        (Value::Object(o), Value::Object(mut n)) => {
            for (k, ov) in o {
                match n.get_mut(k) {
                    Some(nv) => *nv = replace_with(ov, nv.take()),
                    None => {
                        n.insert(k.clone(), Value::Null);
                    }
                }
            }
            Value::Object(n)
        }
        (_, n) => n,
    }
}

/// Where the VMI is handed to the node agents: its target and source.
pub struct Handoff<'a> {
    pub migration_uid: &'a str,
    pub target_pod: &'a str,
    pub target_node: &'a str,
    /// The VMI's current launcher pod.
    pub source_pod: Option<&'a str>,
    /// What the migration runs with: KubeVirt's defaults, or a MigrationPolicy's over them.
    pub configuration: &'a MigrationConfiguration,
    /// The MigrationPolicy the configuration came from.
    pub policy_name: Option<&'a str>,
}

/// The handoff's merge patch on the VMI, conditional on the VMI's resourceVersion: a fresh
/// `status.migrationState` (who moves where, with which configuration and policy; everything
/// an earlier migration left cleared), `status.migrationMethod` and the target node label.
pub fn handoff_patch(vmi: &VirtualMachineInstance, h: &Handoff<'_>) -> Value {
    let status = vmi.status.as_ref();
    let fresh = VirtualMachineInstanceMigrationState {
        migration_uid: Some(h.migration_uid.into()),
        source_node: status.and_then(|s| s.node_name.clone()),
        source_pod: h.source_pod.map(String::from),
        target_node: Some(h.target_node.into()),
        target_pod: Some(h.target_pod.into()),
        migration_configuration: Some(h.configuration.clone()),
        migration_policy_name: h.policy_name.map(String::from),
        mode: Some(MigrationMode::PreCopy),
        ..VirtualMachineInstanceMigrationState::default()
    };
    let old = status
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null);
    let mut state = replace_with(
        &old,
        serde_json::to_value(&fresh).unwrap_or_else(|_| json!({})),
    );
    if let Some(o) = state.as_object_mut() {
        for f in PROGRESS_FIELDS {
            o.entry(*f).or_insert(Value::Null);
        }
    }
    let method = if is_block_migration(vmi) {
        "BlockMigration"
    } else {
        "LiveMigration"
    };
    json!({
        "metadata": {
            "resourceVersion": vmi.metadata.resource_version,
            "labels": {MIGRATION_TARGET_NODE_LABEL: h.target_node},
        },
        "status": {"migrationState": state, "migrationMethod": method},
    })
}

/// Asks the source node's agent to cancel the migration.
pub fn abort_patch(vmi: &VirtualMachineInstance) -> Value {
    json!({
        "metadata": {"resourceVersion": vmi.metadata.resource_version},
        "status": {"migrationState": {"abortRequested": true}},
    })
}

/// Ends the migration as failed because its target is down, so the source's agent resumes the
/// VM where it is.
pub fn target_down_patch(vmi: &VirtualMachineInstance, now: &str) -> Value {
    json!({
        "metadata": {"resourceVersion": vmi.metadata.resource_version},
        "status": {"migrationState": {
            "failed": true,
            "completed": true,
            "endTimestamp": now,
            "failureReason": TARGET_DOWN_REASON,
        }},
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vmi() -> VirtualMachineInstance {
        serde_json::from_value(json!({
            "metadata": {"name": "vm", "namespace": "ns", "uid": "vmi-uid", "resourceVersion": "42"},
            "spec": {"domain": {"devices": {"disks": [{"name": "root", "disk": {}}]},
                                "memory": {"guest": "128Mi"}},
                     "nodeSelector": {"disk": "ssd", "zone": "a"},
                     "volumes": [{"name": "root", "containerDisk": {"image": "img"}}],
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                         {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}},
            "status": {"phase": "Running", "nodeName": "n1"},
        }))
        .unwrap()
    }

    fn migration() -> VirtualMachineInstanceMigration {
        serde_json::from_value(json!({
            "metadata": {"name": "mig", "namespace": "ns", "uid": "mig-uid"},
            "spec": {"vmiName": "vm", "addedNodeSelector": {"zone": "b", "rack": "r1"}},
        }))
        .unwrap()
    }

    #[test]
    fn target_pod_is_the_launcher_marked_and_kept_off_the_source() {
        let pod = render(&vmi(), &migration(), "kuvirt").unwrap();
        let meta = &pod.metadata;
        assert_eq!(meta.generate_name.as_deref(), Some("virt-launcher-vm-"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[MIGRATION_JOB_LABEL], "mig-uid");
        assert_eq!(labels[CREATED_BY], "vmi-uid");
        assert_eq!(
            meta.annotations.as_ref().unwrap()[MIGRATION_JOB_NAME_ANNOTATION],
            "mig"
        );
        let spec = pod.spec.unwrap();
        let sel = spec.node_selector.unwrap();
        assert_eq!(sel["zone"], "a", "the VMI's own selector wins");
        assert_eq!(sel["rack"], "r1", "the migration's is added");
        assert_eq!(sel["disk"], "ssd");
        assert_eq!(sel[crate::pod::SCHEDULABLE_LABEL], "true");
        let terms = spec
            .affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms.len(), 2, "the VMI's term is kept");
        assert_eq!(terms[0].topology_key, "zone");
        assert_eq!(terms[1].topology_key, HOSTNAME_TOPOLOGY);
        let ml = terms[1]
            .label_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(ml[CREATED_BY], "vmi-uid");
    }

    #[test]
    fn a_bridged_guest_s_target_pod_takes_over_its_address() {
        let mut v = vmi();
        v.spec.networks = serde_json::from_value(json!([{"name": "default", "pod": {}}])).unwrap();
        v.spec.domain.devices.interfaces =
            serde_json::from_value(json!([{"name": "default", "bridge": {}}])).unwrap();
        v.status.as_mut().unwrap().interfaces =
            serde_json::from_value(json!([{"name": "default", "ipAddress": "10.244.0.9"}]))
                .unwrap();
        v.metadata.annotations = Some(BTreeMap::from([(
            IP_ANNOTATION.to_string(),
            "10.244.0.9".to_string(),
        )]));
        let pod = render(&v, &migration(), "kuvirt").unwrap();
        let a = pod.metadata.annotations.unwrap();
        assert_eq!(a[MIGRATION_IP_ANNOTATION], "10.244.0.9");
        assert!(
            !a.contains_key(IP_ANNOTATION),
            "a fixed address would hold the target to the source's pod CIDR"
        );
        let plain = render(&vmi(), &migration(), "kuvirt").unwrap();
        assert!(
            !plain
                .metadata
                .annotations
                .unwrap()
                .contains_key(MIGRATION_IP_ANNOTATION)
        );
    }

    #[test]
    fn target_pod_without_affinity_or_selector_gets_them() {
        let mut v = vmi();
        v.spec.affinity = None;
        v.spec.node_selector = None;
        let mut m = migration();
        m.spec.added_node_selector = None;
        let pod = render(&v, &m, "kuvirt").unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap().len(), 1);
        let terms = spec
            .affinity
            .unwrap()
            .pod_anti_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap();
        assert_eq!(terms.len(), 1);
    }

    #[test]
    fn handoff_writes_a_fresh_state_over_the_last_migrations() {
        let mut v = vmi();
        v.status.as_mut().unwrap().migration_state = Some(
            serde_json::from_value(json!({
                "migrationUid": "old", "completed": true, "failed": true,
                "failureReason": "boom", "targetNodeAddress": "10.0.0.2",
                "startTimestamp": "2026-01-01T00:00:00Z", "abortStatus": "Succeeded",
                "targetDirectMigrationNodePorts": {"4000": 0}, "someFutureField": 1,
                "migrationConfiguration": {"allowPostCopy": true, "futureKnob": 2},
            }))
            .unwrap(),
        );
        let p = handoff_patch(
            &v,
            &Handoff {
                migration_uid: "mig-uid",
                target_pod: "virt-launcher-vm-x",
                target_node: "n2",
                source_pod: Some("virt-launcher-vm-a"),
                configuration: &MigrationConfiguration::kubevirt_defaults(),
                policy_name: None,
            },
        );
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["metadata"]["labels"][MIGRATION_TARGET_NODE_LABEL], "n2");
        assert_eq!(p["status"]["migrationMethod"], "BlockMigration");
        let s = &p["status"]["migrationState"];
        assert_eq!(s["migrationUid"], "mig-uid");
        assert_eq!(s["sourceNode"], "n1");
        assert_eq!(s["sourcePod"], "virt-launcher-vm-a");
        assert_eq!(s["targetNode"], "n2");
        assert_eq!(s["targetPod"], "virt-launcher-vm-x");
        assert_eq!(s["mode"], "PreCopy");
        assert_eq!(s["migrationConfiguration"]["completionTimeoutPerGiB"], 150);
        assert_eq!(s["migrationConfiguration"]["allowPostCopy"], false);
        assert!(s["migrationConfiguration"]["futureKnob"].is_null());
        for f in PROGRESS_FIELDS {
            assert!(
                s.as_object().unwrap().get(*f).unwrap().is_null(),
                "{f} cleared"
            );
        }
        assert!(s.as_object().unwrap()["someFutureField"].is_null());
        // Applied as a merge patch, the old state is gone.
        let mut doc = serde_json::to_value(&v).unwrap();
        merge(&mut doc, &p);
        let state: VirtualMachineInstanceMigrationState =
            serde_json::from_value(doc["status"]["migrationState"].clone()).unwrap();
        assert!(state.is_for("mig-uid") && !state.is_over());
        assert_eq!(state.failure_reason, None);
        assert!(state.extra.is_empty());
    }

    #[test]
    fn handoff_writes_the_policy_s_configuration_and_name() {
        let mut v = vmi();
        v.status.as_mut().unwrap().migration_state = Some(
            serde_json::from_value(json!({
                "migrationUid": "old", "migrationPolicyName": "older-policy",
                "migrationConfiguration": {"bandwidthPerMigration": "1Mi", "allowPostCopy": true},
            }))
            .unwrap(),
        );
        let configuration = MigrationConfiguration {
            bandwidth_per_migration: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into(),
            )),
            allow_auto_converge: Some(true),
            completion_timeout_per_gib: Some(30),
            ..MigrationConfiguration::kubevirt_defaults()
        };
        let h = Handoff {
            migration_uid: "mig-uid",
            target_pod: "p",
            target_node: "n2",
            source_pod: None,
            configuration: &configuration,
            policy_name: Some("fast-db"),
        };
        let p = handoff_patch(&v, &h);
        let s = &p["status"]["migrationState"];
        assert_eq!(s["migrationPolicyName"], "fast-db");
        let c = &s["migrationConfiguration"];
        assert_eq!(c["bandwidthPerMigration"], "64Mi");
        assert_eq!(c["allowAutoConverge"], true);
        assert_eq!(c["completionTimeoutPerGiB"], 30);
        assert_eq!(c["allowPostCopy"], false);
        assert_eq!(c["progressTimeout"], 150);
        let mut doc = serde_json::to_value(&v).unwrap();
        merge(&mut doc, &p);
        let state: VirtualMachineInstanceMigrationState =
            serde_json::from_value(doc["status"]["migrationState"].clone()).unwrap();
        assert_eq!(state.migration_policy_name.as_deref(), Some("fast-db"));
        assert_eq!(state.migration_configuration.as_ref(), Some(&configuration));

        // The next migration, under no policy, leaves no name behind.
        let v2: VirtualMachineInstance = serde_json::from_value(doc).unwrap();
        let defaults = MigrationConfiguration::kubevirt_defaults();
        let p2 = handoff_patch(
            &v2,
            &Handoff {
                migration_uid: "next",
                configuration: &defaults,
                policy_name: None,
                ..h
            },
        );
        let s2 = &p2["status"]["migrationState"];
        assert!(s2["migrationPolicyName"].is_null());
        assert_eq!(s2["migrationConfiguration"]["bandwidthPerMigration"], "0Mi");
        assert_eq!(s2["migrationConfiguration"]["allowAutoConverge"], false);
    }

    #[test]
    fn a_shared_disk_vmi_migrates_live() {
        let mut v = vmi();
        v.spec.volumes.clear();
        let p = handoff_patch(
            &v,
            &Handoff {
                migration_uid: "u",
                target_pod: "p",
                target_node: "n2",
                source_pod: None,
                configuration: &MigrationConfiguration::kubevirt_defaults(),
                policy_name: None,
            },
        );
        assert_eq!(p["status"]["migrationMethod"], "LiveMigration");
        assert!(p["status"]["migrationState"]["sourcePod"].is_null());
    }

    #[test]
    fn abort_and_target_down_are_conditional_on_the_vmi_version() {
        let v = vmi();
        assert_eq!(
            abort_patch(&v),
            json!({"metadata": {"resourceVersion": "42"},
                   "status": {"migrationState": {"abortRequested": true}}})
        );
        let p = target_down_patch(&v, "2026-01-01T00:00:00Z");
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        let s = &p["status"]["migrationState"];
        assert_eq!(
            (s["failed"].clone(), s["completed"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(s["failureReason"], TARGET_DOWN_REASON);
        assert_eq!(s["endTimestamp"], "2026-01-01T00:00:00Z");
    }

    /// RFC 7386.
    fn merge(doc: &mut Value, patch: &Value) {
        match (doc.as_object_mut(), patch.as_object()) {
            (Some(d), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        d.remove(k);
                    } else {
                        merge(d.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => {
                *doc = patch.clone();
                if let Some(o) = doc.as_object_mut() {
                    o.retain(|_, v| !v.is_null());
                }
            }
        }
    }
}
