//! Discovery: `/api`, `/apis`, `/apis/GROUP`, `/api/v1`, `/apis/GROUP/VERSION`, in the legacy
//! shapes and, when asked, as aggregated discovery (`apidiscovery.k8s.io/v2`), built from the
//! resource registry.

use serde_json::{Value, json};

use crate::resources::{ResourceType, groups, registry};

/// The media type of aggregated discovery responses.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client accepts aggregated discovery v2 (kubectl ≥ 1.30 asks for it first).
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.contains(&"g=apidiscovery.k8s.io")
            && p.contains(&"v=v2")
            && p.contains(&"as=APIGroupDiscoveryList")
    })
}

fn kinds(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceType> {
    let (g, v) = (group.to_string(), version.to_string());
    registry()
        .iter()
        .filter(move |r| r.group == g && r.version == v)
}

/// `/api`
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// The version a group is served at (one per group here).
fn version_of(group: &str) -> &'static str {
    if group == crate::subresources::GROUP {
        return crate::subresources::VERSION;
    }
    registry()
        .iter()
        .find(|r| r.group == group)
        .map_or("v1", |r| r.version)
}

fn group_json(group: &str) -> Value {
    let version = version_of(group);
    let gv = json!({"groupVersion": format!("{group}/{version}"), "version": version});
    json!({"name": group, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `/apis`
pub fn group_list() -> Value {
    let groups: Vec<Value> = groups()
        .into_iter()
        .filter(|g| !g.is_empty())
        .map(group_json)
        .chain([group_json(crate::subresources::GROUP)])
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`
pub fn group(group: &str) -> Option<Value> {
    let served = groups().contains(&group) || group == crate::subresources::GROUP;
    served.then(|| {
        let mut g = group_json(group);
        g["kind"] = json!("APIGroup");
        g["apiVersion"] = json!("v1");
        g
    })
}

/// `/api/v1`, `/apis/GROUP/VERSION`
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    if group == crate::subresources::GROUP {
        return (version == crate::subresources::VERSION).then(crate::subresources::resource_list);
    }
    let mut resources = Vec::new();
    for r in kinds(group, version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs(),
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

fn aggregated_group(group: &str) -> Value {
    let version = version_of(group);
    let resources: Vec<Value> = kinds(group, version)
        .map(|r| {
            let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
            let mut res = json!({
                "resource": r.plural,
                "responseKind": gvk,
                "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": r.singular,
                "verbs": r.verbs(),
                "shortNames": r.short_names,
                "categories": r.categories,
            });
            if r.status {
                res["subresources"] = json!([{
                    "subresource": "status",
                    "responseKind": gvk,
                    "verbs": ["get", "patch", "update"],
                }]);
            }
            res
        })
        .collect();
    json!({
        "metadata": {"name": group},
        "versions": [{"version": version, "resources": resources, "freshness": "Current"}],
    })
}

/// Aggregated discovery for `/api` (`core`) or `/apis`.
pub fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = groups()
        .into_iter()
        .filter(|g| g.is_empty() == core)
        .map(aggregated_group)
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_and_aggregated_list_kubevirt_kinds() {
        let l = resource_list("kubevirt.io", "v1").unwrap();
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"virtualmachines") && names.contains(&"virtualmachines/status"));
        assert!(
            !names.contains(&"virtualmachineinstances/status"),
            "VMIs have no status subresource"
        );
        let a = aggregated(false);
        assert_eq!(a["items"][0]["metadata"]["name"], "kubevirt.io");
        let core = aggregated(true);
        assert_eq!(core["items"][0]["metadata"]["name"], "");
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
        assert!(group("nope").is_none());
        assert_eq!(group_list()["groups"].as_array().unwrap().len(), 4);
        let policies = group("migrations.kubevirt.io").unwrap();
        assert_eq!(
            policies["preferredVersion"]["groupVersion"],
            "migrations.kubevirt.io/v1alpha1"
        );
        let mp = resource_list("migrations.kubevirt.io", "v1alpha1").unwrap();
        assert_eq!(mp["resources"][0]["name"], "migrationpolicies");
        assert_eq!(mp["resources"][0]["namespaced"], false);
        let agg = a["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "migrations.kubevirt.io")
            .unwrap();
        assert_eq!(agg["versions"][0]["version"], "v1alpha1");
        assert_eq!(agg["versions"][0]["resources"][0]["scope"], "Cluster");
    }
}
