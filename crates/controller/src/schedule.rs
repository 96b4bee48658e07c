//! Placement for embedded mode (a real cluster has kube-scheduler): which node a launcher pod goes
//! to. Filters: node Ready and schedulable, nodeSelector, required node affinity, taints against
//! tolerations, free memory and CPU (requests against allocatable, with overcommit); then the node
//! with the most free memory wins. Pure: nodes and the pods already placed come in as data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod, Toleration};
use kuvirt_api::quantity::parse_quantity;

/// Why no node fits, one reason per node (what KubeVirt's ErrorUnschedulable shows).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("0/{total} nodes are available: {}", reasons.join(", "))]
pub struct Unschedulable {
    pub total: usize,
    pub reasons: Vec<String>,
}

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> u64 {
    q.and_then(|q| parse_quantity(&q.0).ok())
        .and_then(|q| q.to_bytes().ok())
        .unwrap_or(0)
}

fn millis(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> u64 {
    q.and_then(|q| parse_quantity(&q.0).ok())
        .and_then(|q| q.to_millis().ok())
        .and_then(|m| u64::try_from(m).ok())
        .unwrap_or(0)
}

/// Sum of container requests of a pod (memory bytes, CPU millis).
pub fn requests(pod: &Pod) -> (u64, u64) {
    let mut mem = 0;
    let mut cpu = 0;
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let r = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        mem = bytes(r.and_then(|r| r.get("memory"))).saturating_add(mem);
        cpu = millis(r.and_then(|r| r.get("cpu"))).saturating_add(cpu);
    }
    (mem, cpu)
}

fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

fn requirement_matches(r: &NodeSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let v = labels.get(&r.key);
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(v)),
        "NotIn" => v.is_none_or(|v| !values.contains(v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                v.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

fn tolerated(taint: &k8s_openapi::api::core::v1::Taint, tolerations: &[Toleration]) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.operator.as_deref() {
            Some("Exists") => t
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == taint.key),
            _ => t.key.as_deref() == Some(taint.key.as_str()) && t.value == taint.value,
        };
        effect_ok && key_ok
    })
}

/// Picks a node for `pod`. `placed` are the pods already bound (their nodeName counts).
/// `memory_overcommit` is a percentage: 150 lets requests reach 1.5× a node's memory.
pub fn pick(
    pod: &Pod,
    nodes: &[Node],
    placed: &[Pod],
    memory_overcommit: u64,
) -> Result<String, Unschedulable> {
    let spec = pod.spec.clone().unwrap_or_default();
    let (want_mem, want_cpu) = requests(pod);
    let mut reasons = Vec::new();
    let mut best: Option<(u64, String)> = None;
    for node in nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let nspec = node.spec.clone().unwrap_or_default();
        if !ready(node) {
            reasons.push(format!("{name}: not ready"));
            continue;
        }
        if nspec.unschedulable == Some(true) {
            reasons.push(format!("{name}: unschedulable"));
            continue;
        }
        if let Some(sel) = &spec.node_selector
            && sel.iter().any(|(k, v)| labels.get(k) != Some(v))
        {
            reasons.push(format!("{name}: didn't match node selector"));
            continue;
        }
        let required = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        if let Some(req) = required {
            let any_term = req.node_selector_terms.iter().any(|term| {
                term.match_expressions
                    .iter()
                    .flatten()
                    .all(|r| requirement_matches(r, &labels))
            });
            if !any_term {
                reasons.push(format!("{name}: didn't match node affinity"));
                continue;
            }
        }
        let tolerations = spec.tolerations.clone().unwrap_or_default();
        if let Some(t) = nspec.taints.iter().flatten().find(|t| {
            matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !tolerated(t, &tolerations)
        }) {
            reasons.push(format!("{name}: untolerated taint {}", t.key));
            continue;
        }
        let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
        let cap_mem =
            bytes(alloc.and_then(|a| a.get("memory"))).saturating_mul(memory_overcommit) / 100;
        let cap_cpu = millis(alloc.and_then(|a| a.get("cpu")));
        let (used_mem, used_cpu) = placed
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()))
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .map(requests)
            .fold((0u64, 0u64), |(m, c), (pm, pc)| {
                (m.saturating_add(pm), c.saturating_add(pc))
            });
        if used_mem.saturating_add(want_mem) > cap_mem {
            reasons.push(format!("{name}: insufficient memory"));
            continue;
        }
        if cap_cpu > 0 && used_cpu.saturating_add(want_cpu) > cap_cpu {
            reasons.push(format!("{name}: insufficient cpu"));
            continue;
        }
        let free = cap_mem.saturating_sub(used_mem).saturating_sub(want_mem);
        if best
            .as_ref()
            .is_none_or(|(f, n)| free > *f || (free == *f && name < *n))
        {
            best = Some((free, name));
        }
    }
    best.map(|(_, n)| n).ok_or(Unschedulable {
        total: nodes.len(),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, mem: &str, labels: serde_json::Value, ready: bool) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"memory": mem, "cpu": "2"},
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}
        }))
        .unwrap()
    }

    fn pod(mem: &str, selector: serde_json::Value, node: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"nodeSelector": selector, "nodeName": node,
                     "containers": [{"name": "compute", "resources": {"requests": {"memory": mem, "cpu": "100m"}}}]}
        }))
        .unwrap()
    }

    #[test]
    fn fits_by_memory_and_prefers_the_freest_node() {
        let nodes = [
            node("a", "1Gi", json!({}), true),
            node("b", "2Gi", json!({}), true),
        ];
        assert_eq!(
            pick(&pod("512Mi", json!({}), None), &nodes, &[], 100).unwrap(),
            "b"
        );
        let placed = [pod("1900Mi", json!({}), Some("b"))];
        assert_eq!(
            pick(&pod("512Mi", json!({}), None), &nodes, &placed, 100).unwrap(),
            "a"
        );
        let err = pick(&pod("3Gi", json!({}), None), &nodes, &placed, 100).unwrap_err();
        assert_eq!(err.total, 2);
        assert!(err.to_string().contains("insufficient memory"), "{err}");
        // Overcommit lets requests exceed physical memory.
        assert!(pick(&pod("3Gi", json!({}), None), &nodes, &[], 200).is_ok());
    }

    #[test]
    fn selectors_readiness_and_taints() {
        let mut tainted = node("t", "4Gi", json!({"kubevirt.io/schedulable": "true"}), true);
        tainted.spec = Some(
            serde_json::from_value(
                json!({"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}),
            )
            .unwrap(),
        );
        let nodes = [
            node(
                "down",
                "8Gi",
                json!({"kubevirt.io/schedulable": "true"}),
                false,
            ),
            node("plain", "8Gi", json!({}), true),
            tainted,
        ];
        let p = pod("1Gi", json!({"kubevirt.io/schedulable": "true"}), None);
        let err = pick(&p, &nodes, &[], 100).unwrap_err();
        assert!(err.reasons.iter().any(|r| r.contains("down: not ready")));
        assert!(
            err.reasons
                .iter()
                .any(|r| r.contains("plain: didn't match node selector"))
        );
        assert!(
            err.reasons
                .iter()
                .any(|r| r.contains("untolerated taint dedicated"))
        );
        let mut tolerant = p.clone();
        tolerant.spec.as_mut().unwrap().tolerations =
            Some(vec![serde_json::from_value(json!({"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"})).unwrap()]);
        assert_eq!(pick(&tolerant, &nodes, &[], 100).unwrap(), "t");
    }

    #[test]
    fn required_node_affinity() {
        let nodes = [
            node("a", "4Gi", json!({"zone": "x"}), true),
            node("b", "4Gi", json!({"zone": "y"}), true),
        ];
        let mut p = pod("1Gi", json!({}), None);
        p.spec.as_mut().unwrap().affinity = Some(
            serde_json::from_value(json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["y"]}]}]}}}))
            .unwrap(),
        );
        assert_eq!(pick(&p, &nodes, &[], 100).unwrap(), "b");
    }
}
