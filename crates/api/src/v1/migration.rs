//! Live migration: VirtualMachineInstanceMigration, the VMI's `status.migrationState`, and the
//! migration configuration (KubeVirt's `MigrationConfiguration`, cluster-wide or from a policy).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{API_VERSION, Extra, GROUP, VERSION};

/// A `kubevirt.io/v1` VirtualMachineInstanceMigration: one request to move a running VMI to
/// another node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineInstanceMigrationSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineInstanceMigrationStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl k8s_openapi::Resource for VirtualMachineInstanceMigration {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "VirtualMachineInstanceMigration";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "virtualmachineinstancemigrations";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for VirtualMachineInstanceMigration {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::ListableResource for VirtualMachineInstanceMigration {
    const LIST_KIND: &'static str = "VirtualMachineInstanceMigrationList";
}

/// The label KubeVirt puts on a migration: the name of the VMI it moves.
pub const MIGRATION_VMI_LABEL: &str = "kubevirt.io/vmi-name";
/// The finalizer that holds a deleted migration until its abort is settled.
pub const MIGRATION_FINALIZER: &str = "kubevirt.io/migrationJobFinalize";
/// The label on a migration's target launcher pod: the migration's UID.
pub const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";

/// `spec` of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationSpec {
    /// The VMI to move (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmi_name: Option<String>,
    /// More node labels the target node must have (on top of the VMI's nodeSelector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_node_selector: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// Where a migration is (KubeVirt's `VirtualMachineInstanceMigrationPhase`).
    MigrationPhase {
        Pending = "Pending",
        Scheduling = "Scheduling",
        Scheduled = "Scheduled",
        PreparingTarget = "PreparingTarget",
        TargetReady = "TargetReady",
        Running = "Running",
        Succeeded = "Succeeded",
        Failed = "Failed",
    }
}

impl MigrationPhase {
    /// Succeeded or Failed: the migration is over.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// `status` of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<MigrationPhaseTransitionTimestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<MigrationCondition>,
    /// A copy of the VMI's `status.migrationState` as this migration left it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<VirtualMachineInstanceMigrationState>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status.phaseTransitionTimestamps[]` of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPhaseTransitionTimestamp {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MigrationPhase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_transition_timestamp: Option<Time>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status.conditions[]` of a migration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationCondition {
    #[serde(default, rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

string_enum! {
    /// How a migration copies memory.
    MigrationMode {
        PreCopy = "PreCopy",
        PostCopy = "PostCopy",
    }
}

string_enum! {
    /// How an abort went.
    MigrationAbortStatus {
        Succeeded = "Succeeded",
        Failed = "Failed",
        Aborting = "Aborting",
    }
}

/// A VMI's `status.migrationState`: the migration under way or the last one. The migration
/// controller writes who moves where, the target node's agent where it listens and when its
/// domain is ready and detected, the source node's agent when the copy started and how it ended.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_domain_ready_timestamp: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_domain_detected: Option<bool>,
    /// Where the target node's agent takes the migration stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_address: Option<String>,
    /// Its ports: port → what it carries (`0`: the migration stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_direct_migration_node_ports: Option<BTreeMap<String, i32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_attachment_pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_requested: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<MigrationAbortStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The migration object's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MigrationMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_policy_name: Option<String>,
    /// The configuration this migration runs with (the cluster's, or a policy's over it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_configuration: Option<MigrationConfiguration>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl VirtualMachineInstanceMigrationState {
    /// Whether this state is about the migration with `uid`.
    pub fn is_for(&self, uid: &str) -> bool {
        self.migration_uid.as_deref() == Some(uid)
    }

    /// The migration ended, one way or the other.
    pub fn is_over(&self) -> bool {
        self.completed == Some(true) || self.failed == Some(true)
    }
}

/// KubeVirt's `MigrationConfiguration` (the KubeVirt CR's `spec.configuration.migrations`, and
/// what a MigrationPolicy overrides).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_migrations_per_cluster: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_outbound_migrations_per_node: Option<u32>,
    /// Bytes per second; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<Quantity>,
    /// Seconds per GiB of memory (and local disk) before a migration is given up (or switched
    /// to post-copy when allowed).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "completionTimeoutPerGiB"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    /// The longest pause of the guest at switchover, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
    /// Seconds without progress before a migration is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsafe_migration_override: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    /// Past the completion timeout, switch to post-copy or pause the guest (when allowed)
    /// rather than cancel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_workload_disruption: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_tls: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl MigrationConfiguration {
    /// KubeVirt's defaults (`allowWorkloadDisruption` follows `allowPostCopy`, as KubeVirt's
    /// cluster configuration makes it).
    pub fn kubevirt_defaults() -> MigrationConfiguration {
        MigrationConfiguration {
            parallel_migrations_per_cluster: Some(5),
            parallel_outbound_migrations_per_node: Some(2),
            bandwidth_per_migration: Some(Quantity("0Mi".into())),
            completion_timeout_per_gib: Some(150),
            max_downtime_ms: Some(900),
            progress_timeout: Some(150),
            unsafe_migration_override: Some(false),
            allow_auto_converge: Some(false),
            allow_post_copy: Some(false),
            allow_workload_disruption: Some(false),
            disable_tls: Some(false),
            extra: Extra::new(),
        }
    }

    /// `self` with every unset field taken from `base`.
    pub fn over(&self, base: &MigrationConfiguration) -> MigrationConfiguration {
        MigrationConfiguration {
            parallel_migrations_per_cluster: self
                .parallel_migrations_per_cluster
                .or(base.parallel_migrations_per_cluster),
            parallel_outbound_migrations_per_node: self
                .parallel_outbound_migrations_per_node
                .or(base.parallel_outbound_migrations_per_node),
            bandwidth_per_migration: self
                .bandwidth_per_migration
                .clone()
                .or_else(|| base.bandwidth_per_migration.clone()),
            completion_timeout_per_gib: self
                .completion_timeout_per_gib
                .or(base.completion_timeout_per_gib),
            max_downtime_ms: self.max_downtime_ms.or(base.max_downtime_ms),
            progress_timeout: self.progress_timeout.or(base.progress_timeout),
            unsafe_migration_override: self
                .unsafe_migration_override
                .or(base.unsafe_migration_override),
            allow_auto_converge: self.allow_auto_converge.or(base.allow_auto_converge),
            allow_post_copy: self.allow_post_copy.or(base.allow_post_copy),
            allow_workload_disruption: self
                .allow_workload_disruption
                .or(base.allow_workload_disruption),
            disable_tls: self.disable_tls.or(base.disable_tls),
            extra: if self.extra.is_empty() {
                base.extra.clone()
            } else {
                self.extra.clone()
            },
        }
    }
}

/// The body of the VM's `migrate` subresource (KubeVirt's `MigrateOptions`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dry_run: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_node_selector: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The annotation that lets a VMI with a bridge on the pod network migrate (KubeVirt's opt-in).
pub const ALLOW_POD_BRIDGE_MIGRATION_ANNOTATION: &str =
    "kubevirt.io/allow-pod-bridge-network-live-migration";

/// The annotation on a migration's target pod whose VMI has a bridge on the pod network: the
/// source pod's IP, which the target pod takes over (from whichever node's pod CIDR it comes),
/// so the guest keeps its address on the new node.
pub const MIGRATION_IP_ANNOTATION: &str = "kuvirt.io/migration-ip";

/// The pod IP a migration target of `vmi` must take over: the address of its pod-network
/// interface when that interface is bridge-bound (the guest holds the pod IP itself).
pub fn bridged_pod_ip(vmi: &super::VirtualMachineInstance) -> Option<std::net::Ipv4Addr> {
    let spec = &vmi.spec;
    let pod_net = spec.networks.iter().find(|n| n.pod.is_some())?;
    spec.domain
        .devices
        .interfaces
        .iter()
        .find(|i| i.name == pod_net.name && i.bridge.is_some())?;
    vmi.status
        .as_ref()?
        .interfaces
        .iter()
        .find(|i| i.name.as_deref() == Some(pod_net.name.as_str()))
        .and_then(|i| i.ip_address.as_deref())
        .and_then(|a| a.parse().ok())
}

/// Why a VMI cannot be live-migrated: the `LiveMigratable=False` condition's reason and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotMigratable {
    pub reason: &'static str,
    pub message: String,
}

/// Whether `vmi` can be live-migrated, checked as KubeVirt's node agent does (first failure
/// wins): the pod network's binding, host devices, then disks. Masquerade moves as it is (the
/// guest keeps 10.0.2.2); a bridge on the pod network moves with its pod IP (the target pod
/// takes the source's address, [`MIGRATION_IP_ANNOTATION`], so KubeVirt's opt-in
/// [`ALLOW_POD_BRIDGE_MIGRATION_ANNOTATION`] is not needed); passt not at all here (passt in the
/// target pod would start without the guest's connections). Local disks (containerDisk overlays, emptyDisks) are copied
/// with the memory ([`is_block_migration`]); a hostDisk must be `shared`, a PVC cannot be
/// shown to be.
pub fn live_migratable(vmi: &super::VirtualMachineInstance) -> Result<(), NotMigratable> {
    let spec = &vmi.spec;
    let iface = |reason: &'static str, message: String| NotMigratable { reason, message };
    if let Some(pod_net) = spec.networks.iter().find(|n| n.pod.is_some()) {
        let Some(i) = spec
            .domain
            .devices
            .interfaces
            .iter()
            .find(|i| i.name == pod_net.name)
        else {
            return Err(iface(
                "InterfaceNotLiveMigratable",
                format!("no primary interface found for network {}", pod_net.name),
            ));
        };
        let ok = i.masquerade.is_some() || i.bridge.is_some();
        if !ok {
            return Err(iface(
                "InterfaceNotLiveMigratable",
                "cannot migrate VMI which does not use masquerade or a migratable plugin to connect to the pod network".into(),
            ));
        }
    }
    if spec
        .domain
        .devices
        .extra
        .get("hostDevices")
        .and_then(|h| h.as_array())
        .is_some_and(|h| !h.is_empty())
    {
        return Err(NotMigratable {
            reason: "HostDeviceNotLiveMigratable",
            message: "VMI specifies non-migratable generic PCI host device".into(),
        });
    }
    for v in &spec.volumes {
        let pvc = v
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.clone())
            .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()));
        if let Some(claim) = pvc {
            return Err(NotMigratable {
                reason: "DisksNotLiveMigratable",
                message: format!(
                    "cannot migrate VMI: Unable to determine if PVC {claim} is shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)"
                ),
            });
        }
        if v.host_disk.as_ref().is_some_and(|h| h.shared != Some(true)) {
            return Err(NotMigratable {
                reason: "DisksNotLiveMigratable",
                message: "cannot migrate VMI with non-shared HostDisk".into(),
            });
        }
    }
    Ok(())
}

/// Whether a migration of `vmi` copies local disks too (KubeVirt's `BlockMigration`): any
/// volume that is not a PVC, DataVolume or hostDisk, unless only a read-only CD-ROM uses it.
pub fn is_block_migration(vmi: &super::VirtualMachineInstance) -> bool {
    vmi.spec.volumes.iter().any(|v| {
        let shared =
            v.persistent_volume_claim.is_some() || v.data_volume.is_some() || v.host_disk.is_some();
        let read_only_cdrom = vmi
            .spec
            .domain
            .devices
            .disks
            .iter()
            .find(|d| d.name == v.name)
            .and_then(|d| d.cdrom.as_ref())
            .is_some_and(|c| c.readonly != Some(false));
        !shared && !read_only_cdrom
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_kubevirt_json() {
        let json = serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"vmiName": "vm1", "addedNodeSelector": {"zone": "b"}, "future": 1},
            "status": {"phase": "Running",
                       "phaseTransitionTimestamps": [{"phase": "Pending",
                           "phaseTransitionTimestamp": "2026-11-22T10:00:00Z"}],
                       "migrationState": {"targetNode": "n2", "mode": "PreCopy",
                           "abortStatus": "Succeeded",
                           "targetDirectMigrationNodePorts": {"40000": 0},
                           "migrationConfiguration": {"completionTimeoutPerGiB": 150,
                                                      "bandwidthPerMigration": "64Mi"}}}
        });
        let m: VirtualMachineInstanceMigration = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(m.spec.vmi_name.as_deref(), Some("vm1"));
        let st = m.status.as_ref().unwrap();
        assert_eq!(st.phase, Some(MigrationPhase::Running));
        let ms = st.migration_state.as_ref().unwrap();
        assert_eq!(ms.abort_status, Some(MigrationAbortStatus::Succeeded));
        assert_eq!(
            ms.migration_configuration
                .as_ref()
                .unwrap()
                .completion_timeout_per_gib,
            Some(150)
        );
        assert_eq!(serde_json::to_value(&m).unwrap(), json);
    }

    fn vmi(spec: serde_json::Value) -> super::super::VirtualMachineInstance {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "v"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn migratable_by_binding_and_disks() {
        let masq = vmi(serde_json::json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}],
                                   "disks": [{"name": "cd", "cdrom": {}}]}},
            "networks": [{"name": "default", "pod": {}}],
            "volumes": [{"name": "cd", "cloudInitNoCloud": {"userData": "x"}}]}));
        assert_eq!(live_migratable(&masq), Ok(()));
        assert!(
            !is_block_migration(&masq),
            "a read-only cdrom is not copied"
        );
        let bridge = vmi(serde_json::json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "bridge": {}}]}},
            "networks": [{"name": "default", "pod": {}}]}));
        assert_eq!(live_migratable(&bridge), Ok(()), "its pod IP moves with it");
        assert_eq!(bridged_pod_ip(&bridge), None, "no address reported yet");
        let mut running = bridge.clone();
        running.status = Some(
            serde_json::from_value(serde_json::json!({"interfaces": [
                {"name": "default", "ipAddress": "10.244.0.7"}]}))
            .unwrap(),
        );
        assert_eq!(bridged_pod_ip(&running), Some([10, 244, 0, 7].into()));
        let mut masq_running = masq.clone();
        masq_running.status = running.status.clone();
        assert_eq!(
            bridged_pod_ip(&masq_running),
            None,
            "masquerade gets a new one"
        );
        let passt = vmi(serde_json::json!({
            "domain": {"devices": {"interfaces": [{"name": "default", "passt": {}}]}},
            "networks": [{"name": "default", "pod": {}}]}));
        assert_eq!(
            live_migratable(&passt).unwrap_err().reason,
            "InterfaceNotLiveMigratable"
        );
        let host = vmi(serde_json::json!({
            "volumes": [{"name": "h", "hostDisk": {"path": "/x.img", "type": "Disk"}},
                        {"name": "c", "containerDisk": {"image": "i"}}]}));
        let e = live_migratable(&host).unwrap_err();
        assert_eq!(e.reason, "DisksNotLiveMigratable");
        assert_eq!(e.message, "cannot migrate VMI with non-shared HostDisk");
        assert!(is_block_migration(&host), "the containerDisk is copied");
    }

    #[test]
    fn policy_fields_override_defaults() {
        let mine = MigrationConfiguration {
            allow_auto_converge: Some(true),
            ..Default::default()
        };
        let c = mine.over(&MigrationConfiguration::kubevirt_defaults());
        assert_eq!(c.allow_auto_converge, Some(true));
        assert_eq!(c.completion_timeout_per_gib, Some(150));
        assert_eq!(c.parallel_outbound_migrations_per_node, Some(2));
    }
}
