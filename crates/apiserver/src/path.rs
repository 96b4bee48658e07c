//! Request paths: which endpoint a URL names (discovery, a collection, an object, a subresource).

use crate::resources::{ResourceType, lookup};

/// What a path addresses.
#[derive(Debug)]
pub enum Endpoint {
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/GROUP`
    Group(String),
    /// `/api/v1`, `/apis/GROUP/VERSION`
    Resources { group: String, version: String },
    /// A collection or an object of a served kind.
    Resource(Target),
}

/// A kind's collection (`name` None) or one object, maybe a subresource of it.
#[derive(Debug)]
pub struct Target {
    pub rt: &'static ResourceType,
    /// Empty for cluster-scoped kinds and for lists across all namespaces.
    pub namespace: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl PartialEq for Target {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.rt, other.rt)
            && self.namespace == other.namespace
            && self.name == other.name
            && self.subresource == other.subresource
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Endpoint::CoreVersions, Endpoint::CoreVersions)
            | (Endpoint::Groups, Endpoint::Groups) => true,
            (Endpoint::Group(a), Endpoint::Group(b)) => a == b,
            (
                Endpoint::Resources {
                    group: g1,
                    version: v1,
                },
                Endpoint::Resources {
                    group: g2,
                    version: v2,
                },
            ) => g1 == g2 && v1 == v2,
            (Endpoint::Resource(a), Endpoint::Resource(b)) => a == b,
            _ => false,
        }
    }
}

/// Why a path is not served.
#[derive(Debug, PartialEq)]
pub enum PathError {
    /// Nothing is served there (404).
    NotFound,
}

/// Parses the path part of a URL.
pub fn parse(path: &str) -> Result<Endpoint, PathError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api"] => Ok(Endpoint::CoreVersions),
        ["apis"] => Ok(Endpoint::Groups),
        ["api", "v1"] => Ok(Endpoint::Resources {
            group: String::new(),
            version: "v1".into(),
        }),
        ["apis", g] => Ok(Endpoint::Group((*g).into())),
        ["apis", g, v] => Ok(Endpoint::Resources {
            group: (*g).into(),
            version: (*v).into(),
        }),
        ["api", "v1", rest @ ..] => resource("", "v1", rest),
        ["apis", g, v, rest @ ..] => resource(g, v, rest),
        _ => Err(PathError::NotFound),
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Result<Endpoint, PathError> {
    let find = |plural: &str| lookup(group, version, plural).ok_or(PathError::NotFound);
    let target = |rt: &'static ResourceType, ns: &str, name: Option<&str>, sub: Option<&str>| {
        if rt.namespaced == ns.is_empty() && name.is_some() {
            return Err(PathError::NotFound);
        }
        if !rt.namespaced && !ns.is_empty() {
            return Err(PathError::NotFound);
        }
        Ok(Endpoint::Resource(Target {
            rt,
            namespace: ns.into(),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        }))
    };
    let core = group.is_empty();
    match rest {
        // The namespace object itself, and its subresources.
        ["namespaces", name, sub @ ("status" | "finalize")] if core => {
            target(find("namespaces")?, "", Some(name), Some(sub))
        }
        ["namespaces", ns, plural] => target(find(plural)?, ns, None, None),
        ["namespaces", ns, plural, name] => target(find(plural)?, ns, Some(name), None),
        ["namespaces", ns, plural, name, sub] => target(find(plural)?, ns, Some(name), Some(sub)),
        [plural] => target(find(plural)?, "", None, None),
        [plural, name] => target(find(plural)?, "", Some(name), None),
        [plural, name, sub] => target(find(plural)?, "", Some(name), Some(sub)),
        _ => Err(PathError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str) -> Target {
        match parse(path).unwrap() {
            Endpoint::Resource(t) => t,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(parse("/api").unwrap(), Endpoint::CoreVersions);
        assert_eq!(parse("/apis/").unwrap(), Endpoint::Groups);
        let vm = t("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/testvm");
        assert_eq!(
            (vm.rt.kind, vm.namespace.as_str(), vm.name.as_deref()),
            ("VirtualMachine", "default", Some("testvm"))
        );
        let all = t("/apis/kubevirt.io/v1/virtualmachines");
        assert!(all.namespace.is_empty() && all.name.is_none());
        let st = t("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/testvm/status");
        assert_eq!(st.subresource.as_deref(), Some("status"));
        let ns = t("/api/v1/namespaces/default");
        assert_eq!(
            (ns.rt.kind, ns.name.as_deref()),
            ("Namespace", Some("default"))
        );
        let nsf = t("/api/v1/namespaces/default/finalize");
        assert_eq!(
            (nsf.rt.kind, nsf.subresource.as_deref()),
            ("Namespace", Some("finalize"))
        );
        let pods = t("/api/v1/namespaces/default/pods");
        assert_eq!((pods.rt.kind, pods.namespace.as_str()), ("Pod", "default"));
        let node = t("/api/v1/nodes/n1");
        assert_eq!(node.rt.kind, "Node");
        assert!(parse("/api/v1/namespaces/default/nodes/n1").is_err());
        assert!(
            parse("/api/v1/pods/x").is_err(),
            "a namespaced object needs its namespace"
        );
        assert!(parse("/apis/kubevirt.io/v1/nonsense").is_err());
        assert!(parse("/metrics").is_err());
    }
}
