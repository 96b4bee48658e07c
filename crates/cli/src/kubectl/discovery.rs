//! Resource types from the server's discovery documents, and resolving a kubectl-style
//! resource argument (plural, singular, short name or Kind, optionally `.group`) to one.

use anyhow::{Result, bail};
use futures_util::future::join_all;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;

/// One resource type at one group version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The collection path, in `ns` when given and the type is namespaced.
    pub fn url(&self, ns: Option<&str>) -> String {
        let mut url = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let (true, Some(ns)) = (self.namespaced, ns) {
            url.push_str("/namespaces/");
            url.push_str(ns);
        }
        url.push('/');
        url.push_str(&self.plural);
        url
    }

    /// `virtualmachine.kubevirt.io`, `pod`: how kubectl names the type in its messages.
    pub fn kind_group(&self) -> String {
        let kind = self.kind.to_lowercase();
        if self.group.is_empty() {
            kind
        } else {
            format!("{kind}.{}", self.group)
        }
    }
}

/// Every resource type the server serves, preferred versions first.
#[derive(Debug, Default)]
pub struct Catalog {
    resources: Vec<Resource>,
}

impl Catalog {
    /// Reads `/api/v1` and every `/apis/G/V` (a group that fails to answer is left out, as
    /// kubectl does).
    pub async fn discover(client: &kube::Client) -> Result<Catalog> {
        let core = client.list_core_api_resources("v1").await?;
        let groups = client.list_api_groups().await?;
        let mut versions = Vec::new();
        for g in &groups.groups {
            let preferred = g
                .preferred_version
                .as_ref()
                .map(|p| p.group_version.clone());
            if let Some(p) = &preferred {
                versions.push(p.clone());
            }
            for v in &g.versions {
                if Some(&v.group_version) != preferred.as_ref() {
                    versions.push(v.group_version.clone());
                }
            }
        }
        let lists = join_all(
            versions
                .iter()
                .map(|gv| client.list_api_group_resources(gv)),
        )
        .await;
        let mut all = vec![core];
        all.extend(lists.into_iter().filter_map(Result::ok));
        Ok(Catalog::from_lists(&all))
    }

    /// The top-level resources (not subresources) of `lists`, in order.
    pub fn from_lists(lists: &[APIResourceList]) -> Catalog {
        let mut resources = Vec::new();
        for list in lists {
            let (group, version) = split_api_version(&list.group_version);
            for r in &list.resources {
                if r.name.contains('/') {
                    continue;
                }
                resources.push(Resource {
                    group: r.group.clone().unwrap_or_else(|| group.to_string()),
                    version: r.version.clone().unwrap_or_else(|| version.to_string()),
                    plural: r.name.clone(),
                    singular: if r.singular_name.is_empty() {
                        r.kind.to_lowercase()
                    } else {
                        r.singular_name.clone()
                    },
                    kind: r.kind.clone(),
                    namespaced: r.namespaced,
                    short_names: r.short_names.clone().unwrap_or_default(),
                });
            }
        }
        Catalog { resources }
    }

    /// Resolves `arg` as kubectl does: `vm`, `vms`, `virtualmachine`, `VirtualMachine`,
    /// `vm.kubevirt.io`, `virtualmachines.v1.kubevirt.io`; case-insensitive.
    pub fn resolve(&self, arg: &str) -> Result<&Resource> {
        let wanted = arg.to_lowercase();
        let mut forms = vec![(wanted.as_str(), None)];
        if let Some((name, rest)) = wanted.split_once('.') {
            forms.push((name, Some(rest)));
        }
        for (name, qualifier) in forms {
            let candidates = self.resources.iter().filter(|r| match qualifier {
                None => true,
                Some(q) => r.group == q || format!("{}.{}", r.version, r.group) == q,
            });
            let candidates: Vec<&Resource> = candidates.collect();
            let tests: [&dyn Fn(&Resource) -> bool; 4] = [
                &|r| r.plural == name,
                &|r| r.singular == name,
                &|r| r.short_names.iter().any(|s| s == name),
                &|r| r.kind.to_lowercase() == name,
            ];
            for test in tests {
                if let Some(r) = candidates.iter().find(|r| test(r)) {
                    return Ok(r);
                }
            }
        }
        bail!("the server doesn't have a resource type {arg:?}")
    }

    /// The type of an object with `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Result<&Resource> {
        let (group, version) = split_api_version(api_version);
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "resource mapping not found for kind {kind:?} in version {api_version:?}: \
                     ensure CRDs are installed first"
                )
            })
    }
}

/// `kubevirt.io/v1` → (`kubevirt.io`, `v1`); `v1` → (``, `v1`).
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        let lists: Vec<APIResourceList> = serde_json::from_value(serde_json::json!([
            {"groupVersion": "v1", "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
                 "verbs": ["get"], "shortNames": ["po"]},
                {"name": "pods/status", "singularName": "", "namespaced": true, "kind": "Pod",
                 "verbs": ["get"]},
                {"name": "namespaces", "singularName": "", "namespaced": false,
                 "kind": "Namespace", "verbs": ["get"], "shortNames": ["ns"]}
            ]},
            {"groupVersion": "kubevirt.io/v1", "resources": [
                {"name": "virtualmachines", "singularName": "virtualmachine", "namespaced": true,
                 "kind": "VirtualMachine", "verbs": ["get"], "shortNames": ["vm", "vms"]},
                {"name": "virtualmachineinstances", "singularName": "virtualmachineinstance",
                 "namespaced": true, "kind": "VirtualMachineInstance", "verbs": ["get"],
                 "shortNames": ["vmi", "vmis"]}
            ]}
        ]))
        .unwrap();
        Catalog::from_lists(&lists)
    }

    #[test]
    fn resolves_like_kubectl() {
        let c = catalog();
        for arg in [
            "vm",
            "VMS",
            "virtualmachine",
            "virtualmachines",
            "VirtualMachine",
            "vm.kubevirt.io",
            "virtualmachines.v1.kubevirt.io",
        ] {
            assert_eq!(c.resolve(arg).unwrap().kind, "VirtualMachine", "{arg}");
        }
        assert_eq!(c.resolve("po").unwrap().plural, "pods");
        let ns = c.resolve("namespace").unwrap();
        assert!(!ns.namespaced);
        assert_eq!(ns.url(Some("x")), "/api/v1/namespaces");
        assert_eq!(
            c.resolve("vmi").unwrap().url(Some("default")),
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances"
        );
        assert_eq!(
            c.resolve("vm").unwrap().kind_group(),
            "virtualmachine.kubevirt.io"
        );
        assert_eq!(
            c.resolve("foo").unwrap_err().to_string(),
            "the server doesn't have a resource type \"foo\""
        );
        assert!(c.resolve("vm.apps").is_err());
        assert!(c.resolve("status").is_err(), "subresources are not types");
        assert_eq!(c.by_kind("v1", "Pod").unwrap().plural, "pods");
    }
}
