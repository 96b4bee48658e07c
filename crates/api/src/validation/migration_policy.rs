//! Checks on a MigrationPolicy: KubeVirt's CRD schema (`spec.selectors` required, the
//! `experimental.compression` values) and its admission webhook (no negative bandwidth or
//! completion timeout; options behind feature gates refused, those gates being off here).

use super::domain::quantity;
use super::{FieldErrorKind::*, FieldErrors, FieldPath};
use crate::migrations::MigrationPolicy;

/// KubeVirt's feature gates that allow `maxDowntimeMs` and the experimental stall detector
/// and downtime tuning.
const STALL_DETECTION_GATE: &str = "MigrationStallDetection";
const DOWNTIME_TUNING_GATE: &str = "MigrationDowntimeTuning";

/// Validates a MigrationPolicy as KubeVirt's CRD schema and admission webhook do.
pub fn validate_migration_policy(policy: &MigrationPolicy) -> Result<(), FieldErrors> {
    let mut errs = FieldErrors::default();
    let path = FieldPath::new("spec");
    let spec = &policy.spec;
    if spec.selectors.is_none() {
        errs.push(&path.child("selectors"), Required, "Required value");
    }
    if let Some(t) = spec.completion_timeout_per_gib
        && t < 0
    {
        errs.push(
            &path.child("completionTimeoutPerGiB"),
            Invalid,
            "must not be negative",
        );
    }
    let bw = path.child("bandwidthPerMigration");
    if let Some(q) = &spec.bandwidth_per_migration
        && let Some(q) = quantity(&bw, q, &mut errs)
        && q.is_negative()
        && !q.is_zero()
    {
        errs.push(&bw, Invalid, "must not be negative");
    }
    if spec.max_downtime_ms.is_some() {
        errs.push(
            &path.child("maxDowntimeMs"),
            Invalid,
            format!(
                "maxDowntimeMs cannot be modified without enabling the {STALL_DETECTION_GATE} or {DOWNTIME_TUNING_GATE} feature gate"
            ),
        );
    }
    if let Some(exp) = spec.extra.get("experimental") {
        let exp_path = path.child("experimental");
        for (field, gate) in [
            ("downtimeTuning", DOWNTIME_TUNING_GATE),
            ("stallDetector", STALL_DETECTION_GATE),
        ] {
            if exp.get(field).is_some_and(|v| !v.is_null()) {
                errs.push(
                    &exp_path.child(field),
                    Invalid,
                    format!(
                        "experimental.{field} cannot be modified without enabling the {gate} feature gate"
                    ),
                );
            }
        }
        match exp.get("compression") {
            None | Some(serde_json::Value::Null) => {}
            Some(c) if c == "none" || c == "zstd" => {}
            Some(c) => errs.push(
                &exp_path.child("compression"),
                NotSupported,
                format!("Unsupported value: {c}: supported values: \"none\", \"zstd\""),
            ),
        }
    }
    errs.into_result()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(spec: serde_json::Value) -> MigrationPolicy {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_plain_policy_passes() {
        let p = policy(json!({"selectors": {"namespaceSelector": {"a": "b"}},
                              "bandwidthPerMigration": "64Mi", "completionTimeoutPerGiB": 0,
                              "allowPostCopy": true, "experimental": {"compression": "zstd"}}));
        assert_eq!(validate_migration_policy(&p), Ok(()));
        let zero = policy(json!({"selectors": {}, "bandwidthPerMigration": "-0"}));
        assert_eq!(validate_migration_policy(&zero), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        let p = policy(
            json!({"bandwidthPerMigration": "-1Mi", "completionTimeoutPerGiB": -5,
                              "maxDowntimeMs": 300,
                              "experimental": {"stallDetector": {}, "compression": "lz4"}}),
        );
        let errs = validate_migration_policy(&p).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.selectors",
                "spec.completionTimeoutPerGiB",
                "spec.bandwidthPerMigration",
                "spec.maxDowntimeMs",
                "spec.experimental.stallDetector",
                "spec.experimental.compression",
            ]
        );
        assert_eq!(errs.0[0].kind, Required);
        assert_eq!(errs.0[2].message, "must not be negative");
        let garbage = policy(json!({"selectors": {}, "bandwidthPerMigration": "fast"}));
        let errs = validate_migration_policy(&garbage).unwrap_err();
        assert_eq!(errs.0[0].field, "spec.bandwidthPerMigration");
        assert_eq!(errs.0[0].message, "invalid quantity \"fast\"");
    }
}
