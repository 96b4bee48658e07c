//! `migrations.kubevirt.io/v1alpha1`: KubeVirt's cluster-scoped `MigrationPolicy`, which
//! overrides the migration configuration of the VMIs its selectors pick ([`policy`]).
//!
//! JSON names follow KubeVirt's `staging/src/kubevirt.io/api/migrations/v1alpha1/types.go`;
//! fields not modelled here (`experimental`, future ones) are kept in `extra`.

pub mod policy;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::v1::Extra;

pub use policy::{Resolved, apply_policy, matching_policy, resolve};

/// API group of the migration policies.
pub const GROUP: &str = "migrations.kubevirt.io";
/// API version of the migration policies.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of a MigrationPolicy.
pub const API_VERSION: &str = "migrations.kubevirt.io/v1alpha1";

/// A MigrationPolicy: migration settings for the VMIs whose labels, and whose namespace's
/// labels, carry every label of its selectors.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kubevirt.migrations.v1alpha1.MigrationPolicy")]
pub struct MigrationPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: MigrationPolicySpec,
    /// Empty in KubeVirt (and nullable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationPolicyStatus>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl k8s_openapi::Resource for MigrationPolicy {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "MigrationPolicy";
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = "migrationpolicies";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for MigrationPolicy {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl k8s_openapi::ListableResource for MigrationPolicy {
    const LIST_KIND: &'static str = "MigrationPolicyList";
}

/// `spec` of a MigrationPolicy: whom it applies to, and what it sets (unset fields keep the
/// cluster's configuration).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kubevirt.migrations.v1alpha1.MigrationPolicySpec")]
pub struct MigrationPolicySpec {
    /// Required: a policy without selectors applies to nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selectors: Option<Selectors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    /// Bytes per second; 0 is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<Quantity>,
    /// Seconds per GiB of memory before the migration is given up (or switched to post-copy).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "completionTimeoutPerGiB"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    /// Behind feature gates in KubeVirt that are off here: refused by validation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    /// Follows `allowPostCopy` when unset and that is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_workload_disruption: Option<bool>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `spec.selectors`: labels the VMI's namespace and the VMI must carry (all of them).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.kubevirt.migrations.v1alpha1.Selectors")]
pub struct Selectors {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_instance_selector: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `status` of a MigrationPolicy (no fields in KubeVirt).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[schemars(rename = "io.kubevirt.migrations.v1alpha1.MigrationPolicyStatus")]
pub struct MigrationPolicyStatus {
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_kubevirt_yaml() {
        let yaml = r#"
apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: my-awesome-policy
spec:
  allowAutoConverge: true
  bandwidthPerMigration: 217Ki
  completionTimeoutPerGiB: 23
  allowPostCopy: false
  experimental:
    compression: zstd
  selectors:
    namespaceSelector:
      hpc-workloads: "true"
      xyz-workloads-type: ""
    virtualMachineInstanceSelector:
      workload-type: db
      operating-system: ""
"#;
        let p: MigrationPolicy = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("my-awesome-policy"));
        assert_eq!(p.spec.allow_auto_converge, Some(true));
        assert_eq!(
            p.spec.bandwidth_per_migration,
            Some(Quantity("217Ki".into()))
        );
        assert_eq!(p.spec.completion_timeout_per_gib, Some(23));
        assert_eq!(p.spec.extra["experimental"]["compression"], "zstd");
        let sel = p.spec.selectors.as_ref().unwrap();
        assert_eq!(
            sel.namespace_selector.as_ref().unwrap()["hpc-workloads"],
            "true"
        );
        assert_eq!(
            sel.virtual_machine_instance_selector.as_ref().unwrap()["operating-system"],
            ""
        );
        let json = serde_json::to_value(&p).unwrap();
        let back: MigrationPolicy = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, p);
        assert_eq!(json["spec"]["completionTimeoutPerGiB"], 23);
        assert!(json.get("status").is_none());
    }
}
