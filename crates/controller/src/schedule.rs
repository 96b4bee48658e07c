//! Placement for embedded mode (a real cluster has kube-scheduler): which node a launcher pod goes
//! to. Filters: node Ready and schedulable, nodeSelector, required node affinity, taints against
//! tolerations, free memory and CPU (requests against allocatable, with overcommit), required pod
//! (anti-)affinity (`schedule/affinity.rs`, kube-scheduler's InterPodAffinity); then the best preferred pod
//! (anti-)affinity score wins, then the most free memory. Pure: nodes, the pods already placed and
//! the namespaces come in as data.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Node, NodeSelectorRequirement, Pod, Toleration};
use kuvirt_api::quantity::parse_quantity;

mod affinity;

use affinity::InterPod;

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

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// What the live pods bound to each node request: memory bytes and CPU millis.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage(HashMap<String, (u64, u64)>);

impl Usage {
    /// The requests of the live (not terminal) bound pods among `pods`.
    pub fn of(pods: &[impl Borrow<Pod>]) -> Usage {
        let mut u = Usage::default();
        for p in pods.iter().map(Borrow::borrow).filter(|p| !terminal(p)) {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                let (m, c) = requests(p);
                u.add(n, m, c);
            }
        }
        u
    }

    pub fn add(&mut self, node: &str, mem: u64, cpu: u64) {
        let u = self.0.entry(node.to_owned()).or_default();
        *u = (u.0.saturating_add(mem), u.1.saturating_add(cpu));
    }

    pub fn sub(&mut self, node: &str, mem: u64, cpu: u64) {
        if let Some(u) = self.0.get_mut(node) {
            *u = (u.0.saturating_sub(mem), u.1.saturating_sub(cpu));
            if *u == (0, 0) {
                self.0.remove(node);
            }
        }
    }

    /// What `node`'s pods request (memory bytes, CPU millis).
    pub fn get(&self, node: &str) -> (u64, u64) {
        self.0.get(node).copied().unwrap_or_default()
    }
}

/// Picks a node for `pod`. `placed` are the pods already bound (their nodeName counts);
/// `namespaces` are there for pod affinity terms with a namespaceSelector.
/// `memory_overcommit` is a percentage: 150 lets requests reach 1.5× a node's memory.
/// The slices take owned objects or shared ones (a reflector store's `Arc`s).
pub fn pick(
    pod: &Pod,
    nodes: &[impl Borrow<Node>],
    placed: &[impl Borrow<Pod>],
    namespaces: &[impl Borrow<Namespace>],
    memory_overcommit: u64,
) -> Result<String, Unschedulable> {
    pick_with(
        pod,
        nodes,
        placed,
        &Usage::of(placed),
        namespaces,
        memory_overcommit,
    )
}

/// [`pick`] with what the nodes' pods request already summed up (`used`, which must agree with
/// `placed`).
pub fn pick_with(
    pod: &Pod,
    nodes: &[impl Borrow<Node>],
    placed: &[impl Borrow<Pod>],
    used: &Usage,
    namespaces: &[impl Borrow<Namespace>],
    memory_overcommit: u64,
) -> Result<String, Unschedulable> {
    let spec = pod.spec.clone().unwrap_or_default();
    let (want_mem, want_cpu) = requests(pod);
    let live: Vec<&Pod> = placed
        .iter()
        .map(Borrow::borrow)
        .filter(|p| !terminal(p))
        .collect();
    let nodes: Vec<&Node> = nodes.iter().map(Borrow::borrow).collect();
    let namespaces: Vec<&Namespace> = namespaces.iter().map(Borrow::borrow).collect();
    let inter_pod = InterPod::new(pod, &nodes, &live, &namespaces);
    // A sticky or requested pod IP (`kuvirt.io/ip`) can only be had on the node whose pod CIDR
    // holds it.
    let requested_ip = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(kuvirt_api::v1::IP_ANNOTATION))
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
    // A sticky IP (`kuvirt.io/ip-lease`) only prefers the node that can keep it.
    let leased_ip = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(kuvirt_api::v1::IP_LEASE_ANNOTATION))
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
    let mut reasons = Vec::new();
    // (keeps its sticky IP, preferred pod affinity score, free memory, name)
    let mut best: Option<(bool, i64, u64, String)> = None;
    for &node in &nodes {
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
        if let Some(ip) = requested_ip
            && !crate::podcidr::node_holds(node, ip)
        {
            reasons.push(format!(
                "{name}: its pod CIDR does not contain the requested IP {ip} ({})",
                kuvirt_api::v1::IP_ANNOTATION
            ));
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
        let (used_mem, used_cpu) = used.get(&name);
        if used_mem.saturating_add(want_mem) > cap_mem {
            reasons.push(format!("{name}: insufficient memory"));
            continue;
        }
        if cap_cpu > 0 && used_cpu.saturating_add(want_cpu) > cap_cpu {
            reasons.push(format!("{name}: insufficient cpu"));
            continue;
        }
        if let Err(why) = inter_pod.filter(&labels) {
            reasons.push(format!("{name}: {why}"));
            continue;
        }
        let score = inter_pod.score(&labels);
        let free = cap_mem.saturating_sub(used_mem).saturating_sub(want_mem);
        let keeps = leased_ip.is_some_and(|ip| crate::podcidr::node_holds(node, ip));
        let better = best.as_ref().is_none_or(|(k, s, f, n)| {
            (keeps, score, free, std::cmp::Reverse(&name)) > (*k, *s, *f, std::cmp::Reverse(n))
        });
        if better {
            best = Some((keeps, score, free, name));
        }
    }
    best.map(|(_, _, _, n)| n).ok_or(Unschedulable {
        total: nodes.len(),
        reasons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NO_PODS: &[Pod] = &[];
    const NO_NS: &[Namespace] = &[];

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
            pick(&pod("512Mi", json!({}), None), &nodes, NO_PODS, NO_NS, 100).unwrap(),
            "b"
        );
        let placed = [pod("1900Mi", json!({}), Some("b"))];
        assert_eq!(
            pick(&pod("512Mi", json!({}), None), &nodes, &placed, NO_NS, 100).unwrap(),
            "a"
        );
        let err = pick(&pod("3Gi", json!({}), None), &nodes, &placed, NO_NS, 100).unwrap_err();
        assert_eq!(err.total, 2);
        assert!(err.to_string().contains("insufficient memory"), "{err}");
        // Overcommit lets requests exceed physical memory.
        assert!(pick(&pod("3Gi", json!({}), None), &nodes, NO_PODS, NO_NS, 200).is_ok());
    }

    #[test]
    fn a_requested_ip_picks_the_node_whose_pod_cidr_holds_it() {
        let mut nodes = [
            node("a", "1Gi", json!({}), true),
            node("b", "2Gi", json!({}), true),
        ];
        for (n, cidr) in nodes.iter_mut().zip(["10.1.0.0/24", "10.1.1.0/24"]) {
            n.spec = Some(serde_json::from_value(json!({"podCIDR": cidr})).unwrap());
        }
        let mut p = pod("100Mi", json!({}), None);
        let mut want = |ip: &str| {
            p.metadata.annotations = Some([("kuvirt.io/ip".to_owned(), ip.to_owned())].into());
            pick(&p, &nodes, NO_PODS, NO_NS, 100)
        };
        assert_eq!(want("10.1.0.9").unwrap(), "a");
        assert_eq!(want("10.1.1.9").unwrap(), "b");
        let err = want("10.9.0.1").unwrap_err();
        assert!(
            err.to_string()
                .contains("does not contain the requested IP 10.9.0.1"),
            "{err}"
        );
        // A lease prefers its node (a, with less free memory) but moves when that is not ready.
        p.metadata.annotations =
            Some([("kuvirt.io/ip-lease".to_owned(), "10.1.0.9".to_owned())].into());
        assert_eq!(pick(&p, &nodes, NO_PODS, NO_NS, 100).unwrap(), "a");
        nodes[0].status = node("a", "1Gi", json!({}), false).status;
        assert_eq!(pick(&p, &nodes, NO_PODS, NO_NS, 100).unwrap(), "b");
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
        let err = pick(&p, &nodes, NO_PODS, NO_NS, 100).unwrap_err();
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
        assert_eq!(pick(&tolerant, &nodes, NO_PODS, NO_NS, 100).unwrap(), "t");
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
        assert_eq!(pick(&p, &nodes, NO_PODS, NO_NS, 100).unwrap(), "b");
    }

    /// A launcher-like pod in `ns` with `labels` and `affinity`, bound to `node` if given.
    fn vm_pod(
        ns: &str,
        labels: serde_json::Value,
        affinity: serde_json::Value,
        node: Option<&str>,
    ) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": ns, "labels": labels},
            "spec": {"nodeName": node, "affinity": affinity,
                     "containers": [{"name": "compute", "resources": {"requests": {"memory": "256Mi", "cpu": "100m"}}}]}
        }))
        .unwrap()
    }

    fn zoned(name: &str, zone: &str) -> Node {
        node(
            name,
            "4Gi",
            json!({"kubernetes.io/hostname": name, "zone": zone}),
            true,
        )
    }

    fn term(selector: serde_json::Value, key: &str) -> serde_json::Value {
        json!({"labelSelector": selector, "topologyKey": key})
    }

    fn required(kind: &str, terms: serde_json::Value) -> serde_json::Value {
        json!({kind: {"requiredDuringSchedulingIgnoredDuringExecution": terms}})
    }

    #[test]
    fn required_anti_affinity_spreads_vms_by_label() {
        let nodes = [zoned("a", "x"), zoned("b", "x"), zoned("c", "y")];
        let anti = required(
            "podAntiAffinity",
            json!([term(
                json!({"matchLabels": {"app": "db"}}),
                "kubernetes.io/hostname"
            )]),
        );
        let new = vm_pod("default", json!({"app": "db"}), anti.clone(), None);
        // a is the freest node but already holds a db VM.
        let placed = [
            vm_pod("default", json!({"app": "db"}), anti.clone(), Some("a")),
            pod("3Gi", json!({}), Some("b")),
            pod("3Gi", json!({}), Some("c")),
        ];
        let nodes_a_first = [
            node("a", "16Gi", json!({"kubernetes.io/hostname": "a"}), true),
            zoned("b", "x"),
        ];
        assert_eq!(
            pick(&new, &nodes_a_first, &placed, NO_NS, 100).unwrap(),
            "b"
        );
        // Per zone: a and b share zone x, so only c is left.
        let zone_anti = required(
            "podAntiAffinity",
            json!([term(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}),
                "zone"
            )]),
        );
        let new = vm_pod("default", json!({"app": "db"}), zone_anti, None);
        let placed = [vm_pod(
            "default",
            json!({"app": "db"}),
            json!({}),
            Some("a"),
        )];
        assert_eq!(pick(&new, &nodes, &placed, NO_NS, 100).unwrap(), "c");
        // Nowhere left: every node says why in kube-scheduler's words.
        let placed = [
            vm_pod("default", json!({"app": "db"}), json!({}), Some("a")),
            vm_pod("default", json!({"app": "db"}), json!({}), Some("c")),
        ];
        let err = pick(&new, &nodes, &placed, NO_NS, 100).unwrap_err();
        assert_eq!(err.reasons.len(), 3, "{err}");
        assert!(
            err.reasons
                .iter()
                .all(|r| r.ends_with("node(s) didn't match pod anti-affinity rules")),
            "{err}"
        );
        // Finished pods no longer count.
        let mut done = placed.clone();
        for p in &mut done {
            p.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        }
        assert!(pick(&new, &nodes, &done, NO_NS, 100).is_ok());
    }

    #[test]
    fn placed_pods_anti_affinity_keeps_others_away() {
        let nodes = [zoned("a", "x"), zoned("b", "y")];
        // The pod on b refuses web pods next to it; the new pod has no rules of its own.
        let placed = [
            pod("3Gi", json!({}), Some("a")),
            vm_pod(
                "default",
                json!({"app": "db"}),
                required(
                    "podAntiAffinity",
                    json!([term(json!({"matchLabels": {"app": "web"}}), "zone")]),
                ),
                Some("b"),
            ),
        ];
        let web = vm_pod("default", json!({"app": "web"}), json!({}), None);
        assert_eq!(pick(&web, &nodes, &placed, NO_NS, 100).unwrap(), "a");
        let err = pick(&web, &nodes[1..], &placed, NO_NS, 100).unwrap_err();
        assert_eq!(
            err.reasons,
            vec!["b: node(s) didn't satisfy existing pods anti-affinity rules"]
        );
        // Another namespace is out of the term's scope (default: the rule owner's namespace).
        let elsewhere = vm_pod("other", json!({"app": "web"}), json!({}), None);
        assert_eq!(
            pick(&elsewhere, &nodes[1..], &placed, NO_NS, 100).unwrap(),
            "b"
        );
    }

    #[test]
    fn required_affinity_follows_its_group_and_the_first_pod_goes_anywhere() {
        let nodes = [
            zoned("a", "x"),
            zoned("b", "y"),
            node("bare", "8Gi", json!({}), true),
        ];
        let aff = required(
            "podAffinity",
            json!([term(json!({"matchLabels": {"group": "g"}}), "zone")]),
        );
        let new = vm_pod("default", json!({"group": "g"}), aff.clone(), None);
        // First of its group: any node with the topology key (bare has none, and is freest).
        let first = pick(&new, &nodes, NO_PODS, NO_NS, 100).unwrap();
        assert_ne!(first, "bare");
        // A pod that does not select itself has nowhere to go without its group.
        let loner = vm_pod("default", json!({}), aff.clone(), None);
        let err = pick(&loner, &nodes, NO_PODS, NO_NS, 100).unwrap_err();
        assert!(
            err.reasons
                .iter()
                .all(|r| r.ends_with("node(s) didn't match pod affinity rules")),
            "{err}"
        );
        // With the group in zone y (on a busy node), it joins it.
        let placed = [
            vm_pod("default", json!({"group": "g"}), json!({}), Some("b")),
            pod("2Gi", json!({}), Some("b")),
        ];
        assert_eq!(pick(&new, &nodes, &placed, NO_NS, 100).unwrap(), "b");
        assert_eq!(pick(&loner, &nodes, &placed, NO_NS, 100).unwrap(), "b");
    }

    #[test]
    fn namespaces_and_namespace_selectors_widen_a_term() {
        let nodes = [zoned("a", "x"), zoned("b", "y")];
        let placed = [
            vm_pod("team-1", json!({"app": "db"}), json!({}), Some("a")),
            pod("1Gi", json!({}), Some("b")),
        ];
        let ns = |name: &str, labels: serde_json::Value| -> Namespace {
            serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
        };
        let namespaces = [ns("team-1", json!({"team": "t"})), ns("default", json!({}))];
        let with = |t: serde_json::Value| {
            let mut t = t;
            t["labelSelector"] = json!({"matchLabels": {"app": "db"}});
            t["topologyKey"] = json!("zone");
            vm_pod(
                "default",
                json!({}),
                required("podAntiAffinity", json!([t])),
                None,
            )
        };
        // Own namespace only: the db pod in team-1 is not seen, a (freest) wins.
        assert_eq!(
            pick(&with(json!({})), &nodes, &placed, &namespaces, 100).unwrap(),
            "a"
        );
        // Listed namespace, selected namespace, and every namespace (`{}`).
        for t in [
            json!({"namespaces": ["team-1"]}),
            json!({"namespaceSelector": {"matchLabels": {"team": "t"}}}),
            json!({"namespaceSelector": {}}),
        ] {
            assert_eq!(
                pick(&with(t.clone()), &nodes, &placed, &namespaces, 100).unwrap(),
                "b",
                "{t}"
            );
        }
        assert_eq!(
            pick(
                &with(json!({"namespaceSelector": {"matchLabels": {"team": "nope"}}})),
                &nodes,
                &placed,
                &namespaces,
                100
            )
            .unwrap(),
            "a"
        );
    }

    #[test]
    fn preferred_terms_break_ties_before_free_memory() {
        let nodes = [zoned("a", "x"), zoned("b", "y")];
        let placed = [
            vm_pod("default", json!({"app": "db"}), json!({}), Some("b")),
            pod("1Gi", json!({}), Some("b")),
        ];
        let preferred = |kind: &str, weight: i32| {
            json!({kind: {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": weight, "podAffinityTerm": term(json!({"matchLabels": {"app": "db"}}), "zone")}]}})
        };
        let plain = vm_pod("default", json!({}), json!({}), None);
        assert_eq!(
            pick(&plain, &nodes, &placed, NO_NS, 100).unwrap(),
            "a",
            "freest"
        );
        let near = vm_pod("default", json!({}), preferred("podAffinity", 10), None);
        assert_eq!(pick(&near, &nodes, &placed, NO_NS, 100).unwrap(), "b");
        let away = vm_pod("default", json!({}), preferred("podAntiAffinity", 10), None);
        assert_eq!(pick(&away, &nodes, &placed, NO_NS, 100).unwrap(), "a");
        // Symmetric: a placed pod that prefers company draws a pod it selects.
        let placed = [
            vm_pod("default", json!({}), preferred("podAffinity", 5), Some("b")),
            pod("1Gi", json!({}), Some("b")),
        ];
        let db = vm_pod("default", json!({"app": "db"}), json!({}), None);
        assert_eq!(pick(&db, &nodes, &placed, NO_NS, 100).unwrap(), "b");
    }
}
