//! Which MigrationPolicy a VMI's migration runs under, and the configuration it then runs with
//! (KubeVirt's virt-controller `matchPolicy` and `applyMigrationPolicySpec`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{MigrationPolicy, MigrationPolicySpec};
use crate::VirtualMachineInstance;
use crate::v1::MigrationConfiguration;

/// How well a policy fits a VMI: its selector labels the VMI and its namespace carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    /// Matching labels in all (compared first).
    total: usize,
    /// Of those, the VMI's (more of them wins a tie).
    vmi: usize,
}

/// How many of `selector`'s labels `labels` carries, or `None` unless it carries all of them.
fn count(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> Option<usize> {
    let Some(selector) = selector else {
        return Some(0);
    };
    selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
        .then_some(selector.len())
}

/// `policy`'s score for a VMI with `vmi_labels` in a namespace with `namespace_labels`, or
/// `None` when it does not apply (no selectors, or a label missing or different).
fn score(
    policy: &MigrationPolicy,
    vmi_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<Score> {
    let selectors = policy.spec.selectors.as_ref()?;
    let vmi = count(
        selectors.virtual_machine_instance_selector.as_ref(),
        vmi_labels,
    )?;
    let ns = count(selectors.namespace_selector.as_ref(), namespace_labels)?;
    Some(Score {
        total: vmi + ns,
        vmi,
    })
}

/// The policy `vmi` migrates under: among the policies whose every selector label the VMI
/// (`virtualMachineInstanceSelector`) and its namespace (`namespaceSelector`) carry, the one
/// matching the most labels; on a tie the one matching more of the VMI's labels, then the one
/// whose name sorts first. `None` when no policy applies (a policy without `selectors` never
/// does; empty selectors apply to every VMI).
pub fn matching_policy<'a>(
    policies: &'a [MigrationPolicy],
    vmi: &VirtualMachineInstance,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<&'a MigrationPolicy> {
    let none = BTreeMap::new();
    let vmi_labels = vmi.metadata.labels.as_ref().unwrap_or(&none);
    let name = |p: &MigrationPolicy| p.metadata.name.clone().unwrap_or_default();
    policies
        .iter()
        .filter_map(|p| score(p, vmi_labels, namespace_labels).map(|s| (s, p)))
        .max_by(|(a, pa), (b, pb)| a.cmp(b).then_with(|| name(pb).cmp(&name(pa))))
        .map(|(_, p)| p)
}

/// `base` with what `spec` sets taken over: every field the policy sets replaces the base's;
/// `allowWorkloadDisruption` follows `allowPostCopy` when only the latter is set; the
/// policy's `experimental` options are merged into the base's, field by field.
pub fn apply_policy(
    spec: &MigrationPolicySpec,
    base: &MigrationConfiguration,
) -> MigrationConfiguration {
    let mut out = base.clone();
    if spec.allow_workload_disruption.is_none() && spec.allow_post_copy.is_some() {
        out.allow_workload_disruption = spec.allow_post_copy;
    }
    if let Some(v) = spec.allow_auto_converge {
        out.allow_auto_converge = Some(v);
    }
    if let Some(v) = &spec.bandwidth_per_migration {
        out.bandwidth_per_migration = Some(v.clone());
    }
    if let Some(v) = spec.completion_timeout_per_gib {
        out.completion_timeout_per_gib = Some(v);
    }
    if let Some(v) = spec.max_downtime_ms {
        out.max_downtime_ms = Some(v);
    }
    if let Some(v) = spec.allow_post_copy {
        out.allow_post_copy = Some(v);
    }
    if let Some(v) = spec.allow_workload_disruption {
        out.allow_workload_disruption = Some(v);
    }
    if let Some(exp) = spec.extra.get(EXPERIMENTAL).filter(|e| !e.is_null()) {
        let into = out.extra.entry(EXPERIMENTAL).or_insert(Value::Null);
        merge_set(into, exp);
    }
    out
}

/// KubeVirt's alpha migration options, carried as they are.
const EXPERIMENTAL: &str = "experimental";

/// Sets in `into` every non-null leaf of `from`, descending into objects.
fn merge_set(into: &mut Value, from: &Value) {
    let Value::Object(from) = from else {
        *into = from.clone();
        return;
    };
    if !into.is_object() {
        *into = Value::Object(Default::default());
    }
    if let Value::Object(into) = into {
        for (k, v) in from.iter().filter(|(_, v)| !v.is_null()) {
            merge_set(into.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// A migration's configuration and the policy it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub configuration: MigrationConfiguration,
    /// The matching policy's name (`status.migrationState.migrationPolicyName`), if one did.
    pub policy_name: Option<String>,
}

/// The configuration a migration of `vmi` runs with: `base` (the cluster's) with the matching
/// policy ([`matching_policy`]) applied, if any.
pub fn resolve(
    policies: &[MigrationPolicy],
    vmi: &VirtualMachineInstance,
    namespace_labels: &BTreeMap<String, String>,
    base: &MigrationConfiguration,
) -> Resolved {
    match matching_policy(policies, vmi, namespace_labels) {
        Some(p) => Resolved {
            configuration: apply_policy(&p.spec, base),
            policy_name: p.metadata.name.clone(),
        },
        None => Resolved {
            configuration: base.clone(),
            policy_name: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use serde_json::json;

    use super::*;

    fn policy(name: &str, selectors: Value) -> MigrationPolicy {
        let mut spec = json!({"allowAutoConverge": true});
        if !selectors.is_null() {
            spec["selectors"] = selectors;
        }
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
    }

    fn vmi(labels: Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({"metadata": {"name": "v", "labels": labels}, "spec": {}}))
            .unwrap()
    }

    fn labels(v: Value) -> BTreeMap<String, String> {
        serde_json::from_value(v).unwrap()
    }

    fn pick(ps: &[MigrationPolicy], vmi_labels: Value, ns: Value) -> Option<&str> {
        matching_policy(ps, &vmi(vmi_labels), &labels(ns)).and_then(|p| p.metadata.name.as_deref())
    }

    #[test]
    fn every_selector_label_must_match() {
        let ps = vec![policy(
            "p",
            json!({"virtualMachineInstanceSelector": {"app": "db"},
                   "namespaceSelector": {"team": "a"}}),
        )];
        assert_eq!(
            pick(&ps, json!({"app": "db"}), json!({"team": "a"})),
            Some("p")
        );
        assert_eq!(pick(&ps, json!({"app": "web"}), json!({"team": "a"})), None);
        assert_eq!(
            pick(&ps, json!({"app": "db"}), json!({})),
            None,
            "namespace label missing"
        );
        assert_eq!(
            pick(&ps, json!({}), json!({"team": "a"})),
            None,
            "VMI label missing"
        );
    }

    #[test]
    fn no_selectors_never_match_empty_selectors_always_do() {
        let none = vec![policy("none", Value::Null)];
        assert_eq!(pick(&none, json!({"a": "b"}), json!({})), None);
        let empty = vec![policy("empty", json!({}))];
        assert_eq!(pick(&empty, json!({}), json!({})), Some("empty"));
        let empty_maps = vec![policy(
            "maps",
            json!({"namespaceSelector": {}, "virtualMachineInstanceSelector": {}}),
        )];
        assert_eq!(
            pick(&empty_maps, json!({"x": "y"}), json!({})),
            Some("maps")
        );
    }

    #[test]
    fn most_matched_labels_win_then_vmi_labels_then_name() {
        let vmi_labels = json!({"app": "db", "tier": "gold"});
        let ns = json!({"team": "a", "env": "prod"});
        let ps = vec![
            policy("a-catch-all", json!({})),
            policy(
                "b-one-vmi",
                json!({"virtualMachineInstanceSelector": {"app": "db"}}),
            ),
            policy(
                "c-two-ns",
                json!({"namespaceSelector": {"team": "a", "env": "prod"}}),
            ),
            policy(
                "d-one-each",
                json!({"virtualMachineInstanceSelector": {"tier": "gold"},
                       "namespaceSelector": {"team": "a"}}),
            ),
            policy(
                "e-not-mine",
                json!({"virtualMachineInstanceSelector": {"app": "db", "x": "y"}}),
            ),
        ];
        // Two labels: c (both namespace) ties with d (one of each); d has more VMI labels.
        assert_eq!(
            pick(&ps, vmi_labels.clone(), ns.clone()),
            Some("d-one-each")
        );
        // Without d, c's two beat b's one.
        assert_eq!(
            pick(&ps[..3], vmi_labels.clone(), ns.clone()),
            Some("c-two-ns")
        );
        // One label each way, VMI's wins over the catch-all (zero).
        assert_eq!(
            pick(&ps[..2], vmi_labels.clone(), json!({})),
            Some("b-one-vmi")
        );
        // An exact tie goes to the name that sorts first, whatever the list order.
        let tie = vec![
            policy(
                "zeta",
                json!({"virtualMachineInstanceSelector": {"app": "db"}}),
            ),
            policy(
                "alpha",
                json!({"virtualMachineInstanceSelector": {"tier": "gold"}}),
            ),
            policy(
                "mid",
                json!({"virtualMachineInstanceSelector": {"app": "db"}}),
            ),
        ];
        assert_eq!(pick(&tie, vmi_labels.clone(), json!({})), Some("alpha"));
        let mut rev = tie.clone();
        rev.reverse();
        assert_eq!(pick(&rev, vmi_labels, json!({})), Some("alpha"));
    }

    #[test]
    fn a_policy_overrides_only_what_it_sets() {
        let base = MigrationConfiguration::kubevirt_defaults();
        let spec: MigrationPolicySpec = serde_json::from_value(json!({
            "selectors": {},
            "bandwidthPerMigration": "64Mi",
            "completionTimeoutPerGiB": 30,
            "allowAutoConverge": true,
            "allowPostCopy": true,
            "experimental": {"compression": "zstd", "stallDetector": {"stallMargin": 5}},
        }))
        .unwrap();
        let c = apply_policy(&spec, &base);
        assert_eq!(c.bandwidth_per_migration, Some(Quantity("64Mi".into())));
        assert_eq!(c.completion_timeout_per_gib, Some(30));
        assert_eq!(c.allow_auto_converge, Some(true));
        assert_eq!(c.allow_post_copy, Some(true));
        assert_eq!(
            c.allow_workload_disruption,
            Some(true),
            "follows allowPostCopy"
        );
        assert_eq!(c.progress_timeout, base.progress_timeout);
        assert_eq!(c.parallel_migrations_per_cluster, Some(5));
        assert_eq!(c.max_downtime_ms, base.max_downtime_ms);
        assert_eq!(
            serde_json::to_value(&c).unwrap()["experimental"],
            json!({"compression": "zstd", "stallDetector": {"stallMargin": 5}})
        );

        let explicit: MigrationPolicySpec = serde_json::from_value(
            json!({"allowPostCopy": true, "allowWorkloadDisruption": false}),
        )
        .unwrap();
        let c = apply_policy(&explicit, &base);
        assert_eq!(
            (c.allow_post_copy, c.allow_workload_disruption),
            (Some(true), Some(false))
        );

        let nothing = apply_policy(&MigrationPolicySpec::default(), &base);
        assert_eq!(nothing, base);
    }

    #[test]
    fn experimental_options_merge_field_by_field() {
        let mut base = MigrationConfiguration::kubevirt_defaults();
        base.extra.insert(
            EXPERIMENTAL.into(),
            json!({"compression": "none", "downtimeTuning": {"steps": 7, "initialMs": 150}}),
        );
        let spec: MigrationPolicySpec = serde_json::from_value(json!({
            "experimental": {"downtimeTuning": {"steps": 3, "cooldownSeconds": null}},
        }))
        .unwrap();
        let c = apply_policy(&spec, &base);
        assert_eq!(
            c.extra[EXPERIMENTAL],
            json!({"compression": "none", "downtimeTuning": {"steps": 3, "initialMs": 150}})
        );
    }

    #[test]
    fn resolve_names_the_policy_or_keeps_the_base() {
        let base = MigrationConfiguration::kubevirt_defaults();
        let ps = vec![policy(
            "fast",
            json!({"virtualMachineInstanceSelector": {"app": "db"}}),
        )];
        let hit = resolve(&ps, &vmi(json!({"app": "db"})), &BTreeMap::new(), &base);
        assert_eq!(hit.policy_name.as_deref(), Some("fast"));
        assert_eq!(hit.configuration.allow_auto_converge, Some(true));
        let miss = resolve(&ps, &vmi(json!({})), &BTreeMap::new(), &base);
        assert_eq!(
            miss,
            Resolved {
                configuration: base,
                policy_name: None
            }
        );
    }
}
