//! The kinds this server serves. Adding a kind is one entry in [`registry`]: its names, scope,
//! subresources, printer columns, field selectors and admission. Handlers are generic.

use serde_json::Value;

use crate::admission::{self, Admit};

/// A printer column: how `kubectl get` shows a kind.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    /// OpenAPI type: string, integer, date.
    pub type_: &'static str,
    pub format: &'static str,
    pub description: &'static str,
    /// 0 = always shown; 1 = with `-o wide`.
    pub priority: u32,
    pub cell: fn(&Value) -> Value,
}

/// One served resource.
#[derive(Debug)]
pub struct ResourceType {
    /// "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub namespaced: bool,
    /// Has a `/status` subresource (status is written only there).
    pub status: bool,
    /// Accepts strategic merge patches (core types).
    pub strategic_merge: bool,
    pub columns: &'static [Column],
    /// Field selector paths beyond metadata.name and metadata.namespace.
    pub field_selectors: &'static [&'static str],
    pub admit: Admit,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The store's resource key: `group/plural`.
    pub fn store_key(&self) -> String {
        format!("{}/{}", self.group, self.plural)
    }

    /// `plural.group` (Kubernetes' qualified resource name in messages).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &[
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    }
}

/// Reads a dotted path (`status.phase`) from an object.
pub fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn s(v: &Value, path: &str) -> Value {
    at(v, path).cloned().unwrap_or(Value::Null)
}

fn age(v: &Value) -> Value {
    s(v, "metadata.creationTimestamp")
}

/// `status.conditions[?(@.type==t)].status`.
fn condition(v: &Value, t: &str) -> Value {
    at(v, "status.conditions")
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(t))
        })
        .and_then(|c| c.get("status"))
        .cloned()
        .unwrap_or(Value::Null)
}

const AGE: Column = Column {
    name: "Age",
    type_: "date",
    format: "",
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
    priority: 0,
    cell: age,
};

const VM_COLUMNS: &[Column] = &[
    AGE,
    Column {
        name: "Status",
        type_: "string",
        format: "",
        description: "Human Readable Status",
        priority: 0,
        cell: |v| s(v, "status.printableStatus"),
    },
    Column {
        name: "Ready",
        type_: "string",
        format: "",
        description: "",
        priority: 0,
        cell: |v| condition(v, "Ready"),
    },
];

const VMI_COLUMNS: &[Column] = &[
    AGE,
    Column {
        name: "Phase",
        type_: "string",
        format: "",
        description: "",
        priority: 0,
        cell: |v| s(v, "status.phase"),
    },
    Column {
        name: "IP",
        type_: "string",
        format: "",
        description: "",
        priority: 0,
        cell: |v| {
            at(v, "status.interfaces")
                .and_then(|i| i.get(0))
                .and_then(|i| i.get("ipAddress"))
                .cloned()
                .unwrap_or(Value::Null)
        },
    },
    Column {
        name: "NodeName",
        type_: "string",
        format: "",
        description: "",
        priority: 0,
        cell: |v| s(v, "status.nodeName"),
    },
    Column {
        name: "Ready",
        type_: "string",
        format: "",
        description: "",
        priority: 0,
        cell: |v| condition(v, "Ready"),
    },
    Column {
        name: "Live-Migratable",
        type_: "string",
        format: "",
        description: "",
        priority: 1,
        cell: |v| condition(v, "LiveMigratable"),
    },
    Column {
        name: "Paused",
        type_: "string",
        format: "",
        description: "",
        priority: 1,
        cell: |v| condition(v, "Paused"),
    },
];

const VMIM_COLUMNS: &[Column] = &[
    Column {
        name: "Phase",
        type_: "string",
        format: "",
        description: "The current phase of VM instance migration",
        priority: 0,
        cell: |v| s(v, "status.phase"),
    },
    Column {
        name: "VMI",
        type_: "string",
        format: "",
        description: "The name of the VMI to perform the migration on",
        priority: 0,
        cell: |v| s(v, "spec.vmiName"),
    },
];

const VMIRS_COLUMNS: &[Column] = &[
    Column {
        name: "Desired",
        type_: "integer",
        format: "",
        description: "Number of desired VirtualMachineInstances",
        priority: 0,
        cell: |v| s(v, "spec.replicas"),
    },
    Column {
        name: "Current",
        type_: "integer",
        format: "",
        description: "Number of managed and not final or deleted VirtualMachineInstances",
        priority: 0,
        cell: |v| s(v, "status.replicas"),
    },
    Column {
        name: "Ready",
        type_: "integer",
        format: "",
        description: "Number of managed VirtualMachineInstances which are ready to receive traffic",
        priority: 0,
        cell: |v| s(v, "status.readyReplicas"),
    },
    AGE,
];

const NAMESPACE_COLUMNS: &[Column] = &[
    Column {
        name: "Status",
        type_: "string",
        format: "",
        description: "The status of the namespace",
        priority: 0,
        cell: |v| s(v, "status.phase"),
    },
    AGE,
];

const POD_COLUMNS: &[Column] = &[
    Column {
        name: "Ready",
        type_: "string",
        format: "",
        description: "The aggregate readiness state of this pod for accepting traffic.",
        priority: 0,
        cell: |v| {
            let total = at(v, "spec.containers")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let ready = at(v, "status.containerStatuses")
                .and_then(Value::as_array)
                .map_or(0, |c| {
                    c.iter()
                        .filter(|c| c.get("ready") == Some(&Value::Bool(true)))
                        .count()
                });
            Value::String(format!("{ready}/{total}"))
        },
    },
    Column {
        name: "Status",
        type_: "string",
        format: "",
        description: "The aggregate status of the containers in this pod.",
        priority: 0,
        cell: |v| s(v, "status.phase"),
    },
    Column {
        name: "Restarts",
        type_: "string",
        format: "",
        description: "The number of times the containers in this pod have been restarted.",
        priority: 0,
        cell: |v| {
            let n: i64 = at(v, "status.containerStatuses")
                .and_then(Value::as_array)
                .map_or(0, |c| {
                    c.iter()
                        .filter_map(|c| c.get("restartCount").and_then(Value::as_i64))
                        .sum()
                });
            Value::String(n.to_string())
        },
    },
    AGE,
    Column {
        name: "IP",
        type_: "string",
        format: "",
        description: "IP address allocated to the pod.",
        priority: 1,
        cell: |v| s(v, "status.podIP"),
    },
    Column {
        name: "Node",
        type_: "string",
        format: "",
        description: "Name of the Node where the pod is scheduled.",
        priority: 1,
        cell: |v| s(v, "spec.nodeName"),
    },
];

const NODE_COLUMNS: &[Column] = &[
    Column {
        name: "Status",
        type_: "string",
        format: "",
        description: "The status of the node",
        priority: 0,
        cell: |v| match condition(v, "Ready").as_str() {
            Some("True") => Value::String("Ready".into()),
            _ => Value::String("NotReady".into()),
        },
    },
    AGE,
    Column {
        name: "Version",
        type_: "string",
        format: "",
        description: "Kubelet Version reported by the node.",
        priority: 0,
        cell: |v| s(v, "status.nodeInfo.kubeletVersion"),
    },
];

const EVENT_COLUMNS: &[Column] = &[
    Column {
        name: "Last Seen",
        type_: "date",
        format: "",
        description: "Time when this Event was last observed.",
        priority: 0,
        cell: |v| s(v, "lastTimestamp"),
    },
    Column {
        name: "Type",
        type_: "string",
        format: "",
        description: "Type of this event (Normal, Warning).",
        priority: 0,
        cell: |v| s(v, "type"),
    },
    Column {
        name: "Reason",
        type_: "string",
        format: "",
        description: "Why the action was taken.",
        priority: 0,
        cell: |v| s(v, "reason"),
    },
    Column {
        name: "Object",
        type_: "string",
        format: "",
        description: "The object that this event is about.",
        priority: 0,
        cell: |v| {
            let kind = s(v, "involvedObject.kind");
            let name = s(v, "involvedObject.name");
            Value::String(format!(
                "{}/{}",
                kind.as_str().unwrap_or("").to_lowercase(),
                name.as_str().unwrap_or("")
            ))
        },
    },
    Column {
        name: "Message",
        type_: "string",
        format: "",
        description: "A description of the status of this operation.",
        priority: 0,
        cell: |v| s(v, "message"),
    },
];

fn data_count(v: &Value) -> Value {
    let n = v
        .get("data")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len())
        + v.get("binaryData")
            .and_then(Value::as_object)
            .map_or(0, |m| m.len());
    Value::from(n)
}

const SECRET_COLUMNS: &[Column] = &[
    Column {
        name: "Type",
        type_: "string",
        format: "",
        description: "The type of the secret",
        priority: 0,
        cell: |v| s(v, "type"),
    },
    Column {
        name: "Data",
        type_: "string",
        format: "",
        description: "The number of entries in the secret",
        priority: 0,
        cell: data_count,
    },
    AGE,
];

const CONFIGMAP_COLUMNS: &[Column] = &[
    Column {
        name: "Data",
        type_: "string",
        format: "",
        description: "Number of data in configmap",
        priority: 0,
        cell: data_count,
    },
    AGE,
];

const SERVICE_COLUMNS: &[Column] = &[
    Column {
        name: "Type",
        type_: "string",
        format: "",
        description: "The type of the service",
        priority: 0,
        cell: |v| s(v, "spec.type"),
    },
    Column {
        name: "Cluster-IP",
        type_: "string",
        format: "",
        description: "The cluster ip of the service",
        priority: 0,
        cell: |v| s(v, "spec.clusterIP"),
    },
    Column {
        name: "Port(s)",
        type_: "string",
        format: "",
        description: "The ports of the service",
        priority: 0,
        cell: |v| {
            let ports = at(v, "spec.ports").and_then(Value::as_array);
            let text: Vec<String> = ports
                .into_iter()
                .flatten()
                .map(|p| {
                    format!(
                        "{}/{}",
                        p.get("port").and_then(Value::as_i64).unwrap_or(0),
                        p.get("protocol").and_then(Value::as_str).unwrap_or("TCP")
                    )
                })
                .collect();
            Value::String(text.join(","))
        },
    },
    AGE,
];

const AGE_ONLY: &[Column] = &[AGE];

const LEASE_COLUMNS: &[Column] = &[
    Column {
        name: "Holder",
        type_: "string",
        format: "",
        description: "The holder of the lease",
        priority: 0,
        cell: |v| s(v, "spec.holderIdentity"),
    },
    AGE,
];

macro_rules! kind {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, [$($short:expr),*], [$($cat:expr),*],
     namespaced: $ns:expr, status: $st:expr, smp: $smp:expr, columns: $cols:expr, fields: [$($f:expr),*], admit: $admit:expr) => {
        ResourceType {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            namespaced: $ns,
            status: $st,
            strategic_merge: $smp,
            columns: $cols,
            field_selectors: &[$($f),*],
            admit: $admit,
        }
    };
}

static REGISTRY: &[ResourceType] = &[
    kind!("kubevirt.io", "v1", "VirtualMachine", "virtualmachines", "virtualmachine", ["vm", "vms"], ["all"],
        namespaced: true, status: true, smp: false, columns: VM_COLUMNS, fields: [], admit: admission::virtual_machine),
    kind!("kubevirt.io", "v1", "VirtualMachineInstance", "virtualmachineinstances", "virtualmachineinstance", ["vmi", "vmis"], ["all"],
        namespaced: true, status: false, smp: false, columns: VMI_COLUMNS, fields: ["status.phase", "status.nodeName"], admit: admission::virtual_machine_instance),
    kind!("kubevirt.io", "v1", "VirtualMachineInstanceMigration", "virtualmachineinstancemigrations", "virtualmachineinstancemigration", ["vmim", "vmims"], ["all"],
        namespaced: true, status: true, smp: false, columns: VMIM_COLUMNS, fields: ["status.phase"], admit: admission::migration),
    kind!("kubevirt.io", "v1", "VirtualMachineInstanceReplicaSet", "virtualmachineinstancereplicasets", "virtualmachineinstancereplicaset", ["vmirs", "vmirss"], ["all"],
        namespaced: true, status: true, smp: false, columns: VMIRS_COLUMNS, fields: [], admit: admission::replica_set),
    kind!("", "v1", "Namespace", "namespaces", "namespace", ["ns"], [],
        namespaced: false, status: true, smp: true, columns: NAMESPACE_COLUMNS, fields: ["status.phase"], admit: admission::namespace),
    kind!("", "v1", "Pod", "pods", "pod", ["po"], ["all"],
        namespaced: true, status: true, smp: true, columns: POD_COLUMNS, fields: ["spec.nodeName", "status.phase"], admit: admission::pod),
    kind!("", "v1", "Node", "nodes", "node", ["no"], [],
        namespaced: false, status: true, smp: true, columns: NODE_COLUMNS, fields: [], admit: admission::node),
    kind!("", "v1", "Event", "events", "event", ["ev"], [],
        namespaced: true, status: false, smp: true, columns: EVENT_COLUMNS, fields: ["involvedObject.name", "involvedObject.namespace", "involvedObject.kind", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason", "type", "reportingComponent", "source"], admit: admission::event),
    kind!("", "v1", "Secret", "secrets", "secret", [], [],
        namespaced: true, status: false, smp: true, columns: SECRET_COLUMNS, fields: ["type"], admit: admission::secret),
    kind!("", "v1", "ConfigMap", "configmaps", "configmap", ["cm"], [],
        namespaced: true, status: false, smp: true, columns: CONFIGMAP_COLUMNS, fields: [], admit: admission::config_map),
    kind!("", "v1", "Service", "services", "service", ["svc"], ["all"],
        namespaced: true, status: true, smp: true, columns: SERVICE_COLUMNS, fields: [], admit: admission::service),
    kind!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", ["sa"], [],
        namespaced: true, status: false, smp: true, columns: AGE_ONLY, fields: [], admit: admission::service_account),
    kind!("coordination.k8s.io", "v1", "Lease", "leases", "lease", [], [],
        namespaced: true, status: false, smp: true, columns: LEASE_COLUMNS, fields: [], admit: admission::lease),
    kind!("migrations.kubevirt.io", "v1alpha1", "MigrationPolicy", "migrationpolicies", "migrationpolicy", [], [],
        namespaced: false, status: true, smp: false, columns: AGE_ONLY, fields: [], admit: admission::migration_policy),
];

/// Every served kind.
pub fn registry() -> &'static [ResourceType] {
    REGISTRY
}

/// The kind served at `group`/`version` under `plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    REGISTRY
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The kind with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    REGISTRY
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
}

/// The API groups served, in discovery order (core first).
pub fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in REGISTRY {
        if !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for r in registry() {
            assert!(std::ptr::eq(
                lookup(r.group, r.version, r.plural).unwrap(),
                r
            ));
            assert!(std::ptr::eq(by_kind(&r.api_version(), r.kind).unwrap(), r));
        }
        let shorts: Vec<_> = registry().iter().flat_map(|r| r.short_names).collect();
        let mut dedup = shorts.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(shorts.len(), dedup.len());
        assert_eq!(
            groups(),
            vec![
                "kubevirt.io",
                "",
                "coordination.k8s.io",
                "migrations.kubevirt.io"
            ]
        );
    }

    #[test]
    fn columns_read_kubevirt_status() {
        let vmi = serde_json::json!({
            "status": {"phase": "Running", "nodeName": "n1",
                       "interfaces": [{"ipAddress": "10.0.0.5"}],
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let cols = lookup("kubevirt.io", "v1", "virtualmachineinstances")
            .unwrap()
            .columns;
        let cells: Vec<Value> = cols.iter().map(|c| (c.cell)(&vmi)).collect();
        assert_eq!(cells[1], "Running");
        assert_eq!(cells[2], "10.0.0.5");
        assert_eq!(cells[3], "n1");
        assert_eq!(cells[4], "True");
    }
}
