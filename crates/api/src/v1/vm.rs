//! VirtualMachine: the long-lived object whose run strategy decides when a VMI exists.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{API_VERSION, Extra, GROUP, VERSION, VirtualMachineInstanceSpec, VirtualMachineStatus};

/// A `kubevirt.io/v1` VirtualMachine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl k8s_openapi::Resource for VirtualMachine {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "VirtualMachine";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "virtualmachines";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for VirtualMachine {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::ListableResource for VirtualMachine {
    const LIST_KIND: &'static str = "VirtualMachineList";
}

string_enum! {
    /// When a VirtualMachine should have a running VMI.
    RunStrategy {
        /// No VMI; the default when neither `running` nor `runStrategy` is set.
        Halted = "Halted",
        /// Always running; restarted whenever it stops.
        Always = "Always",
        /// Restarted only when the guest fails.
        RerunOnFailure = "RerunOnFailure",
        /// Started and stopped only by explicit requests.
        Manual = "Manual",
        /// Runs once; not restarted.
        Once = "Once",
        /// Waits as a decentralized-migration target (needs a KubeVirt feature gate).
        WaitAsReceiver = "WaitAsReceiver",
    }
}

/// `spec` of a VirtualMachine.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Deprecated; mutually exclusive with `run_strategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<InstancetypeMatcher>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMatcher>,
    /// Required (KubeVirt rejects a VM without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<VirtualMachineInstanceTemplateSpec>,
    /// CDI DataVolume templates, kept as opaque JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<serde_json::Value>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl VirtualMachineSpec {
    /// The run strategy in force: `runStrategy` if set, else `running: true` → Always,
    /// `running: false` → Halted, neither → Halted.
    pub fn effective_run_strategy(&self) -> RunStrategy {
        match (&self.run_strategy, self.running) {
            (Some(rs), _) => rs.clone(),
            (None, Some(true)) => RunStrategy::Always,
            (None, _) => RunStrategy::Halted,
        }
    }
}

/// `spec.template`: metadata and spec of the VMIs this VM creates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    #[serde(default, skip_serializing_if = "is_empty_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: VirtualMachineInstanceSpec,
    #[serde(flatten)]
    pub extra: Extra,
}

fn is_empty_meta(m: &ObjectMeta) -> bool {
    *m == ObjectMeta::default()
}

/// `spec.instancetype`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancetypeMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VirtualMachineInstancetype (default) or VirtualMachineClusterInstancetype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.preference`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceMatcher {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// VirtualMachinePreference (default) or VirtualMachineClusterPreference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}
