//! VirtualMachineInstance: one running (or to-be-run) VM, its spec, probes and access credentials.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, ExecAction, HTTPGetAction, PodDNSConfig, TCPSocketAction, Toleration,
    TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    API_VERSION, DomainSpec, Extra, GROUP, Network, StateChangeRequestAction, VERSION,
    VirtualMachine, VirtualMachineInstanceStatus, Volume,
};

/// A `kubevirt.io/v1` VirtualMachineInstance.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineInstanceSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineInstanceStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl k8s_openapi::Resource for VirtualMachineInstance {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "VirtualMachineInstance";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "virtualmachineinstances";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for VirtualMachineInstance {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::ListableResource for VirtualMachineInstance {
    const LIST_KIND: &'static str = "VirtualMachineInstanceList";
}

/// `status.stateChangeRequests[].data` key asking for a paused start.
pub const START_REQUEST_DATA_PAUSED_KEY: &str = "paused";

impl VirtualMachineInstance {
    /// The VMI a VirtualMachine's controller creates for it (KubeVirt's `SetupVMIFromVM`):
    /// the template's metadata with the VM's name and namespace, an owner reference to the VM
    /// (controller, blockOwnerDeletion), the template's spec, a firmware UUID derived from the
    /// VM name when the template has none, `startStrategy: Paused` when the first state-change
    /// request asks for it, and a disk for every volume that has none. Not otherwise defaulted.
    pub fn from_vm(vm: &VirtualMachine) -> VirtualMachineInstance {
        let template = vm.spec.template.clone().unwrap_or_default();
        let mut metadata = template.metadata;
        metadata.name = vm.metadata.name.clone();
        metadata.generate_name = None;
        metadata.namespace = vm.metadata.namespace.clone();
        for key in [super::IP_ANNOTATION, super::IP_LEASE_ANNOTATION] {
            if let Some(ip) = vm.metadata.annotations.as_ref().and_then(|a| a.get(key)) {
                metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(key.to_owned(), ip.clone());
            }
        }
        metadata.owner_references = Some(vec![OwnerReference {
            api_version: API_VERSION.to_owned(),
            kind: "VirtualMachine".to_owned(),
            name: vm.metadata.name.clone().unwrap_or_default(),
            uid: vm.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);

        let mut spec = template.spec;
        let firmware = spec.domain.firmware.get_or_insert_with(Default::default);
        if firmware.uuid.as_deref().is_none_or(str::is_empty) {
            let name = vm.metadata.name.as_deref().unwrap_or_default();
            firmware.uuid = Some(crate::defaults::legacy_firmware_uuid(name));
        }
        let paused_start = vm
            .status
            .as_ref()
            .and_then(|s| s.state_change_requests.first())
            .is_some_and(|r| {
                r.action == StateChangeRequestAction::Start
                    && r.data
                        .get(START_REQUEST_DATA_PAUSED_KEY)
                        .map(String::as_str)
                        == Some("true")
            });
        if paused_start {
            spec.start_strategy = Some(StartStrategy::Paused);
        }
        crate::defaults::add_missing_volume_disks(&mut spec);

        VirtualMachineInstance {
            api_version: Some(API_VERSION.to_owned()),
            kind: Some("VirtualMachineInstance".to_owned()),
            metadata,
            spec,
            status: None,
            extra: Extra::new(),
        }
    }
}

string_enum! {
    /// What happens to a VMI when its node is drained.
    EvictionStrategy {
        None = "None",
        LiveMigrate = "LiveMigrate",
        LiveMigrateIfPossible = "LiveMigrateIfPossible",
        External = "External",
    }
}

string_enum! {
    /// How a VMI starts.
    StartStrategy {
        /// Start with vCPUs paused.
        Paused = "Paused",
    }
}

/// `spec` of a VirtualMachineInstance (also `spec.template.spec` of a VirtualMachine).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    #[serde(default)]
    pub domain: DomainSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_strategy: Option<StartStrategy>,
    /// Seconds between ACPI shutdown and a hard stop; KubeVirt's default is 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Guest hostname; defaults to the VMI name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// ClusterFirstWithHostNet, ClusterFirst, Default or None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<PodDNSConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_credentials: Vec<AccessCredential>,
    /// amd64, arm64 or s390x.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `readinessProbe` / `livenessProbe`: exactly one handler plus timing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_agent_ping: Option<GuestAgentPing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HTTPGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TCPSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i32>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i32>,
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i32>,
    /// Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i32>,
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i32>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `probe.guestAgentPing`: empty object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct GuestAgentPing {
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.accessCredentials[]`: exactly one of `sshPublicKey`, `userPassword`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredential {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<SSHPublicKeyAccessCredential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_password: Option<UserPasswordAccessCredential>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `accessCredentials[].sshPublicKey`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SSHPublicKeyAccessCredential {
    #[serde(default)]
    pub source: AccessCredentialSource,
    #[serde(default)]
    pub propagation_method: SSHPublicKeyAccessCredentialPropagationMethod,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `accessCredentials[].userPassword`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserPasswordAccessCredential {
    #[serde(default)]
    pub source: AccessCredentialSource,
    /// Only `qemuGuestAgent` is valid here.
    #[serde(default)]
    pub propagation_method: SSHPublicKeyAccessCredentialPropagationMethod,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `source` of an access credential: a Secret (Go has one type per credential kind).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredentialSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<AccessCredentialSecretSource>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `source.secret`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessCredentialSecretSource {
    #[serde(default)]
    pub secret_name: String,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `propagationMethod`: exactly one of `noCloud`, `configDrive`, `qemuGuestAgent`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SSHPublicKeyAccessCredentialPropagationMethod {
    /// Keys go into the cloudInitNoCloud volume's user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_cloud: Option<Extra>,
    /// Keys go into the cloudInitConfigDrive volume's metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_drive: Option<Extra>,
    /// Keys (or passwords) are pushed through the QEMU guest agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_guest_agent: Option<QemuGuestAgentPropagation>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `propagationMethod.qemuGuestAgent`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QemuGuestAgentPropagation {
    /// Guest users whose authorized_keys are managed (SSH keys only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
