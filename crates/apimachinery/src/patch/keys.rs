//! Per-kind list semantics: which lists merge by key (strategic merge `patchMergeKey`, apply
//! `listType=map`), which are sets, and which are replaced whole (the default).

use std::collections::BTreeMap;

use serde_json::Value;

/// How a list field merges.
#[derive(Clone, Debug, PartialEq)]
pub enum ListType {
    /// Replaced as a whole (no merge key).
    Atomic,
    /// A set of scalars (`finalizers`): merged by value.
    Set,
    /// Objects identified by key fields. The first key is the strategic merge patch key;
    /// `defaults` fill missing key fields (e.g. `protocol: TCP`).
    Map {
        keys: Vec<String>,
        defaults: Vec<(String, Value)>,
    },
}

impl ListType {
    /// A map list keyed by `keys`.
    pub fn map(keys: &[&str]) -> Self {
        Self::Map {
            keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            defaults: Vec::new(),
        }
    }

    /// Adds a default for a key field.
    pub fn with_default(mut self, key: &str, value: Value) -> Self {
        if let Self::Map { defaults, .. } = &mut self {
            defaults.push((key.to_owned(), value));
        }
        self
    }
}

/// The list table of one kind. Paths are dot-joined field names from the object root with list
/// items transparent: `spec.containers.ports` is every container's `ports`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyTable {
    lists: BTreeMap<String, ListType>,
    strategic: bool,
}

const ATOMIC: ListType = ListType::Atomic;

impl KeyTable {
    /// Only the `metadata` lists every object has (`finalizers` set, `ownerReferences` by uid);
    /// strategic merge patch refused.
    pub fn new() -> Self {
        Self::default()
            .with("metadata.finalizers", ListType::Set)
            .with("metadata.ownerReferences", ListType::map(&["uid"]))
    }

    /// Adds or replaces one list.
    pub fn with(mut self, path: &str, t: ListType) -> Self {
        self.lists.insert(path.to_owned(), t);
        self
    }

    /// Allows strategic merge patch (built-in kinds).
    pub fn with_strategic(mut self) -> Self {
        self.strategic = true;
        self
    }

    /// Whether strategic merge patch is accepted.
    pub fn supports_strategic(&self) -> bool {
        self.strategic
    }

    /// The list type at a dotted path; [`ListType::Atomic`] if unknown.
    pub fn lookup(&self, path: &str) -> &ListType {
        self.lists.get(path).unwrap_or(&ATOMIC)
    }

    /// Adds the PodSpec lists under `prefix` (`spec` for Pod, `spec.template.spec` for templates).
    pub fn with_pod_spec(mut self, prefix: &str) -> Self {
        let tcp = || Value::String("TCP".into());
        for c in ["containers", "initContainers", "ephemeralContainers"] {
            let base = format!("{prefix}.{c}");
            self = self
                .with(&base, ListType::map(&["name"]))
                .with(
                    &format!("{base}.ports"),
                    ListType::map(&["containerPort", "protocol"]).with_default("protocol", tcp()),
                )
                .with(&format!("{base}.env"), ListType::map(&["name"]))
                .with(
                    &format!("{base}.volumeMounts"),
                    ListType::map(&["mountPath"]),
                )
                .with(
                    &format!("{base}.volumeDevices"),
                    ListType::map(&["devicePath"]),
                )
                .with(&format!("{base}.resizePolicy"), ListType::Atomic);
        }
        for (field, key) in [
            ("volumes", "name"),
            ("imagePullSecrets", "name"),
            ("hostAliases", "ip"),
            ("schedulingGates", "name"),
            ("resourceClaims", "name"),
        ] {
            self = self.with(&format!("{prefix}.{field}"), ListType::map(&[key]));
        }
        self.with(
            &format!("{prefix}.topologySpreadConstraints"),
            ListType::map(&["topologyKey", "whenUnsatisfiable"]),
        )
    }

    /// The table of a kind this server serves. Built-in (core and coordination.k8s.io) kinds get
    /// their merge keys and strategic merge; custom resources (kubevirt.io) get only metadata lists
    /// and refuse strategic merge, as Kubernetes does.
    pub fn for_kind(group: &str, kind: &str) -> Self {
        let builtin = group.is_empty() || group.ends_with(".k8s.io") || group == "apps";
        if !builtin {
            return Self::new();
        }
        let t = Self::new().with_strategic();
        match (group, kind) {
            ("", "Pod") => t
                .with_pod_spec("spec")
                .with("status.conditions", ListType::map(&["type"]))
                .with("status.podIPs", ListType::map(&["ip"]))
                .with("status.hostIPs", ListType::map(&["ip"])),
            ("", "Service") => t.with(
                "spec.ports",
                ListType::map(&["port", "protocol"])
                    .with_default("protocol", Value::String("TCP".into())),
            ),
            ("", "Node") => t
                .with("status.conditions", ListType::map(&["type"]))
                .with("status.addresses", ListType::map(&["type"]))
                .with("spec.podCIDRs", ListType::Set),
            ("", "ServiceAccount") => t.with("secrets", ListType::map(&["name"])),
            ("", "Namespace") => t.with("status.conditions", ListType::map(&["type"])),
            ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => t
                .with_pod_spec("spec.template.spec")
                .with("status.conditions", ListType::map(&["type"])),
            _ => t,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let pod = KeyTable::for_kind("", "Pod");
        assert!(pod.supports_strategic());
        assert_eq!(pod.lookup("spec.containers"), &ListType::map(&["name"]));
        assert!(
            matches!(pod.lookup("spec.containers.ports"), ListType::Map { keys, .. } if keys[0] == "containerPort")
        );
        assert_eq!(pod.lookup("spec.tolerations"), &ListType::Atomic);
        assert_eq!(pod.lookup("metadata.finalizers"), &ListType::Set);
        let vm = KeyTable::for_kind("kubevirt.io", "VirtualMachine");
        assert!(!vm.supports_strategic());
        assert_eq!(
            vm.lookup("metadata.ownerReferences"),
            &ListType::map(&["uid"])
        );
        assert_eq!(
            vm.lookup("spec.template.spec.domain.devices.disks"),
            &ListType::Atomic
        );
        assert!(KeyTable::for_kind("coordination.k8s.io", "Lease").supports_strategic());
    }
}
