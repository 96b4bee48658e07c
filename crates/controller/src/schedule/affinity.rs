//! Inter-pod affinity for embedded placement, as kube-scheduler's InterPodAffinity plugin does it:
//! a pod's required podAffinity/podAntiAffinity terms and the required anti-affinity of pods
//! already placed filter nodes by topology domain (the value of a term's topologyKey on a node);
//! preferred terms (the pod's and, symmetrically, those of placed pods) score domains. A term looks
//! at pods in its `namespaces` and those its `namespaceSelector` selects, or else at the pod's own
//! namespace. Pure: everything comes in as data.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{
    Affinity, Namespace, Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// kube-scheduler's reasons (its InterPodAffinity ErrReason* strings).
pub const EXISTING_ANTI_AFFINITY: &str = "node(s) didn't satisfy existing pods anti-affinity rules";
pub const AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";

/// kube-scheduler's default hardPodAffinityWeight: a placed pod's required affinity towards the
/// incoming pod counts this much in scoring.
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

type Labels = BTreeMap<String, String>;
/// A topology domain: (topologyKey, the node's value for it).
type Domain = (String, String);

/// Whether `sel` selects `labels` (matchLabels and matchExpressions, all of them).
pub fn selects(sel: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|r| {
            let v = labels.get(&r.key);
            let values = r.values.as_deref().unwrap_or_default();
            match r.operator.as_str() {
                "In" => v.is_some_and(|v| values.contains(v)),
                "NotIn" => v.is_none_or(|v| !values.contains(v)),
                "Exists" => v.is_some(),
                "DoesNotExist" => v.is_none(),
                _ => false,
            }
        })
}

fn namespace_of(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

fn labels_of(pod: &Pod) -> Labels {
    pod.metadata.labels.clone().unwrap_or_default()
}

fn required_affinity(a: &Affinity) -> &[PodAffinityTerm] {
    a.pod_affinity
        .as_ref()
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn required_anti(a: &Affinity) -> &[PodAffinityTerm] {
    a.pod_anti_affinity
        .as_ref()
        .and_then(|p| {
            p.required_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn preferred_affinity(a: &Affinity) -> &[WeightedPodAffinityTerm] {
    a.pod_affinity
        .as_ref()
        .and_then(|p| {
            p.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn preferred_anti(a: &Affinity) -> &[WeightedPodAffinityTerm] {
    a.pod_anti_affinity
        .as_ref()
        .and_then(|p| {
            p.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

fn affinity_of(pod: &Pod) -> Affinity {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.clone())
        .unwrap_or_default()
}

/// Everything the filter and the score need, computed once per placement (kube-scheduler's
/// PreFilter/PreScore state).
pub struct InterPod {
    /// Domains where a placed pod's required anti-affinity term selects the incoming pod.
    existing_anti: HashMap<Domain, usize>,
    /// The incoming pod's required affinity terms, and whether it selects itself with all of them.
    affinity_terms: Vec<PodAffinityTerm>,
    affinity_self: bool,
    /// Domains holding placed pods that match all of the incoming pod's required affinity terms.
    affinity: HashMap<Domain, usize>,
    /// Domains holding placed pods that one of the incoming pod's anti-affinity terms selects.
    anti: HashMap<Domain, usize>,
    /// Preferred (anti-)affinity weights per domain.
    score: HashMap<Domain, i64>,
}

impl InterPod {
    pub fn new(pod: &Pod, nodes: &[&Node], placed: &[&Pod], namespaces: &[&Namespace]) -> InterPod {
        let ns_labels: HashMap<&str, Labels> = namespaces
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.as_deref()?,
                    n.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        let node_labels: HashMap<&str, Labels> = nodes
            .iter()
            .filter_map(|n| {
                Some((
                    n.metadata.name.as_deref()?,
                    n.metadata.labels.clone().unwrap_or_default(),
                ))
            })
            .collect();
        // Whether `term`, written on a pod in `owner_ns`, selects `candidate`.
        let term_selects = |term: &PodAffinityTerm, owner_ns: &str, candidate: &Pod| -> bool {
            let cand_ns = namespace_of(candidate);
            let in_scope = if term.namespaces.as_ref().is_some_and(|n| !n.is_empty())
                || term.namespace_selector.is_some()
            {
                term.namespaces.iter().flatten().any(|n| n == cand_ns)
                    || term.namespace_selector.as_ref().is_some_and(|s| {
                        selects(s, ns_labels.get(cand_ns).unwrap_or(&Labels::new()))
                    })
            } else {
                cand_ns == owner_ns
            };
            // A term without a label selector selects nothing.
            in_scope
                && term
                    .label_selector
                    .as_ref()
                    .is_some_and(|s| selects(s, &labels_of(candidate)))
        };
        let domain = |term: &PodAffinityTerm, labels: &Labels| -> Option<Domain> {
            labels
                .get(&term.topology_key)
                .map(|v| (term.topology_key.clone(), v.clone()))
        };

        let own = affinity_of(pod);
        let own_ns = namespace_of(pod);
        let affinity_terms = required_affinity(&own).to_vec();
        let affinity_self = affinity_terms.iter().all(|t| term_selects(t, own_ns, pod));
        let mut state = InterPod {
            existing_anti: HashMap::new(),
            affinity_terms,
            affinity_self,
            affinity: HashMap::new(),
            anti: HashMap::new(),
            score: HashMap::new(),
        };
        // Most pods have no pod (anti-)affinity: with none on either side there is nothing to
        // count, and no need to look further at that pod.
        let none = |a: Option<&Affinity>| {
            a.is_none_or(|a| a.pod_affinity.is_none() && a.pod_anti_affinity.is_none())
        };
        let own_none = none(Some(&own));
        for other in placed {
            if own_none && none(other.spec.as_ref().and_then(|s| s.affinity.as_ref())) {
                continue;
            }
            let Some(labels) = other
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .and_then(|n| node_labels.get(n))
            else {
                continue;
            };
            let theirs = affinity_of(other);
            let their_ns = namespace_of(other);
            for t in required_anti(&theirs) {
                if term_selects(t, their_ns, pod)
                    && let Some(d) = domain(t, labels)
                {
                    *state.existing_anti.entry(d).or_default() += 1;
                }
            }
            if !state.affinity_terms.is_empty()
                && state
                    .affinity_terms
                    .iter()
                    .all(|t| term_selects(t, own_ns, other))
            {
                for t in &state.affinity_terms {
                    if let Some(d) = domain(t, labels) {
                        *state.affinity.entry(d).or_default() += 1;
                    }
                }
            }
            for t in required_anti(&own) {
                if term_selects(t, own_ns, other)
                    && let Some(d) = domain(t, labels)
                {
                    *state.anti.entry(d).or_default() += 1;
                }
            }

            // Scoring: the incoming pod's preferences towards placed pods, and theirs towards it.
            let mut add = |t: &PodAffinityTerm, weight: i64| {
                if let Some(d) = domain(t, labels) {
                    *state.score.entry(d).or_default() += weight;
                }
            };
            for w in preferred_affinity(&own) {
                if term_selects(&w.pod_affinity_term, own_ns, other) {
                    add(&w.pod_affinity_term, i64::from(w.weight));
                }
            }
            for w in preferred_anti(&own) {
                if term_selects(&w.pod_affinity_term, own_ns, other) {
                    add(&w.pod_affinity_term, -i64::from(w.weight));
                }
            }
            for w in preferred_affinity(&theirs) {
                if term_selects(&w.pod_affinity_term, their_ns, pod) {
                    add(&w.pod_affinity_term, i64::from(w.weight));
                }
            }
            for w in preferred_anti(&theirs) {
                if term_selects(&w.pod_affinity_term, their_ns, pod) {
                    add(&w.pod_affinity_term, -i64::from(w.weight));
                }
            }
            for t in required_affinity(&theirs) {
                if term_selects(t, their_ns, pod) {
                    add(t, HARD_POD_AFFINITY_WEIGHT);
                }
            }
        }
        state
    }

    /// Whether a node with `labels` passes, or kube-scheduler's reason why not.
    pub fn filter(&self, labels: &Labels) -> Result<(), &'static str> {
        let count = |m: &HashMap<Domain, usize>, k: &str, v: &str| {
            m.get(&(k.to_string(), v.to_string())).copied().unwrap_or(0)
        };
        if labels
            .iter()
            .any(|(k, v)| count(&self.existing_anti, k, v) > 0)
        {
            return Err(EXISTING_ANTI_AFFINITY);
        }
        if !self.affinity_terms.is_empty() {
            let mut pods_exist = true;
            for t in &self.affinity_terms {
                // A node without the topology key is in no domain: it cannot satisfy the term.
                let Some(v) = labels.get(&t.topology_key) else {
                    return Err(AFFINITY);
                };
                if count(&self.affinity, &t.topology_key, v) == 0 {
                    pods_exist = false;
                }
            }
            // The first pod of a group that selects itself may go anywhere with the keys.
            let first_of_group = self.affinity.is_empty() && self.affinity_self;
            if !(pods_exist || first_of_group) {
                return Err(AFFINITY);
            }
        }
        if self.anti.keys().any(|(k, v)| labels.get(k) == Some(v)) {
            return Err(ANTI_AFFINITY);
        }
        Ok(())
    }

    /// The preferred (anti-)affinity score of a node with `labels`: higher is better.
    pub fn score(&self, labels: &Labels) -> i64 {
        self.score
            .iter()
            .filter(|((k, v), _)| labels.get(k) == Some(v))
            .map(|(_, w)| w)
            .sum()
    }
}
