//! Request counters served at `GET /metrics` in Prometheus' text format, as kube-apiserver's
//! `apiserver_request_total{verb,group,version,resource,subresource,scope,code}`: every request
//! under `/api` and `/apis` (discovery, objects, subresources) is classified from its method,
//! path, query and content type ([`classify`], pure) and counted with its response code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::http::AppState;
use crate::pki::Role;

/// The counter's name (kube-apiserver's).
pub const REQUEST_TOTAL: &str = "apiserver_request_total";

/// Subresources Kubernetes reports as `CONNECT` (streams, not reads or writes): its own
/// (`validConnectRequests`) and KubeVirt's streaming ones.
const CONNECT_SUBRESOURCES: &[&str] = &[
    "attach",
    "exec",
    "log",
    "portforward",
    "proxy",
    "console",
    "vnc",
    "usbredir",
    "vsock",
];

/// What a request is, for the counter's labels (everything but the code).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestInfo {
    /// GET, LIST, WATCH, POST, PUT, PATCH, APPLY, DELETE, DELETECOLLECTION, CONNECT, or the
    /// method for anything else.
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    /// `resource` (a named object, or a create), `namespace`, `cluster`, or empty for
    /// discovery.
    pub scope: &'static str,
}

/// One counter: a request kind and the code it was answered with.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub info: RequestInfo,
    pub code: u16,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<HashMap<RequestKey, u64>>,
}

impl Metrics {
    /// Counts one answered request.
    pub fn count(&self, info: RequestInfo, code: u16) {
        let mut map = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        *map.entry(RequestKey { info, code }).or_insert(0) += 1;
    }

    /// Every counter, sorted by its labels.
    pub fn snapshot(&self) -> Vec<(RequestKey, u64)> {
        let map = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<(RequestKey, u64)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        all
    }

    /// The counters in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        render(&self.snapshot())
    }
}

/// Prometheus' text format of `counters` (labels in alphabetical order, as Go's client writes
/// them; lines sorted).
pub fn render(counters: &[(RequestKey, u64)]) -> String {
    let mut lines: Vec<String> = counters
        .iter()
        .map(|(k, n)| {
            let i = &k.info;
            format!(
                "{REQUEST_TOTAL}{{code=\"{}\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"}} {n}",
                k.code,
                escape(&i.group),
                escape(&i.resource),
                i.scope,
                escape(&i.subresource),
                escape(&i.verb),
                escape(&i.version),
            )
        })
        .collect();
    lines.sort();
    let mut out = format!(
        "# HELP {REQUEST_TOTAL} Counter of apiserver requests broken out for each verb, group, version, resource, subresource, scope and HTTP response code.\n# TYPE {REQUEST_TOTAL} counter\n"
    );
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Whether a query asks for a watch, by the rule the server serves it by.
fn watch_query(query: Option<&str>) -> bool {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == "watch").then(|| crate::http::watch_requested(v))
        })
        .unwrap_or(false)
}

/// What a request under `/api` or `/apis` is, as kube-apiserver's RequestInfo and metrics
/// helpers see it; `None` for any other path. `content_type` tells APPLY from PATCH.
pub fn classify(
    method: &Method,
    path: &str,
    query: Option<&str>,
    content_type: &str,
) -> Option<RequestInfo> {
    let mut parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.first().copied() {
        Some("api") => (String::new(), parts.split_off(1)),
        Some("apis") if parts.len() >= 2 => (parts[1].to_string(), parts.split_off(2)),
        Some("apis") => (String::new(), Vec::new()),
        _ => return None,
    };
    let mut info = RequestInfo {
        group,
        ..RequestInfo::default()
    };
    let mut rest = rest.into_iter().filter(|s| !s.is_empty());
    let Some(version) = rest.next() else {
        info.verb = method.as_str().to_string();
        return Some(info);
    };
    info.version = version.to_string();
    let mut parts: Vec<&str> = rest.collect();
    if parts.is_empty() {
        info.verb = method.as_str().to_string();
        return Some(info);
    }
    // The deprecated `/watch/` prefix.
    let mut watch = watch_query(query);
    if parts[0] == "watch" {
        watch = true;
        parts.remove(0);
    }
    let mut namespace = "";
    if parts.first() == Some(&"namespaces") && parts.len() > 1 {
        namespace = parts[1];
        // A namespace's own subresources (status, finalize) keep `namespaces` as the resource.
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts.drain(..2);
        }
    }
    info.resource = parts.first().copied().unwrap_or_default().to_string();
    let name = parts.get(1).copied().unwrap_or_default();
    info.subresource = parts.get(2).copied().unwrap_or_default().to_string();
    let create = *method == Method::POST && name.is_empty();
    info.scope = if !name.is_empty() || create {
        "resource"
    } else if !namespace.is_empty() {
        "namespace"
    } else {
        "cluster"
    };
    info.verb = match *method {
        Method::GET | Method::HEAD if watch => "WATCH",
        Method::GET | Method::HEAD if name.is_empty() => "LIST",
        Method::GET | Method::HEAD => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH if content_type == "application/apply-patch+yaml" => "APPLY",
        Method::PATCH => "PATCH",
        Method::DELETE if name.is_empty() => "DELETECOLLECTION",
        Method::DELETE => "DELETE",
        _ => method.as_str(),
    }
    .to_string();
    if CONNECT_SUBRESOURCES.contains(&info.subresource.as_str()) {
        info.verb = "CONNECT".into();
    }
    Some(info)
}

/// Middleware: counts every `/api` and `/apis` request with the code it was answered with.
pub async fn count(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let info = classify(
        req.method(),
        req.uri().path(),
        req.uri().query(),
        &crate::http::content_type(req.headers()),
    );
    let response = next.run(req).await;
    if let Some(info) = info {
        state.metrics.count(info, response.status().as_u16());
    }
    response
}

/// `GET /metrics`: the counters, for admin tokens only.
pub async fn serve(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let user = match crate::http::authenticate(&state, &headers) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    if user.role != Role::Admin {
        return ApiError::new(
            403,
            "Forbidden",
            format!(
                "forbidden: User \"{}\" cannot get path \"/metrics\"",
                user.user
            ),
        )
        .into_response();
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn c(method: Method, path: &str, query: Option<&str>) -> RequestInfo {
        classify(&method, path, query, "application/json").unwrap()
    }

    fn info(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        scope: &'static str,
    ) -> RequestInfo {
        RequestInfo {
            verb: verb.into(),
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            scope,
        }
    }

    #[test]
    fn requests_get_kubernetes_verbs_and_scopes() {
        let vmis = "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstances";
        assert_eq!(
            c(Method::GET, vmis, None),
            info(
                "LIST",
                "kubevirt.io",
                "virtualmachineinstances",
                "",
                "namespace"
            )
        );
        assert_eq!(
            c(Method::GET, vmis, Some("watch=true&resourceVersion=5")),
            info(
                "WATCH",
                "kubevirt.io",
                "virtualmachineinstances",
                "",
                "namespace"
            )
        );
        assert_eq!(
            c(Method::GET, vmis, Some("watch=false")).verb,
            "LIST",
            "watch=false is a list"
        );
        assert_eq!(
            c(Method::POST, vmis, None),
            info(
                "POST",
                "kubevirt.io",
                "virtualmachineinstances",
                "",
                "resource"
            )
        );
        assert_eq!(
            c(Method::GET, &format!("{vmis}/a"), None),
            info(
                "GET",
                "kubevirt.io",
                "virtualmachineinstances",
                "",
                "resource"
            )
        );
        assert_eq!(
            c(Method::PATCH, &format!("{vmis}/a/status"), None),
            info(
                "PATCH",
                "kubevirt.io",
                "virtualmachineinstances",
                "status",
                "resource"
            )
        );
        let apply = classify(
            &Method::PATCH,
            &format!("{vmis}/a"),
            Some("fieldManager=x"),
            "application/apply-patch+yaml",
        )
        .unwrap();
        assert_eq!(apply.verb, "APPLY");
        assert_eq!(c(Method::DELETE, &format!("{vmis}/a"), None).verb, "DELETE");
        assert_eq!(c(Method::DELETE, vmis, None).verb, "DELETECOLLECTION");
        assert_eq!(
            c(Method::GET, "/api/v1/pods", None),
            info("LIST", "", "pods", "", "cluster")
        );
        assert_eq!(
            c(Method::GET, "/api/v1/watch/namespaces/ns/pods", None),
            info("WATCH", "", "pods", "", "namespace")
        );
        assert_eq!(
            c(Method::PUT, "/api/v1/namespaces/ns/finalize", None),
            info("PUT", "", "namespaces", "finalize", "resource")
        );
        assert_eq!(
            c(Method::GET, "/api/v1/namespaces/ns", None),
            info("GET", "", "namespaces", "", "resource")
        );
        assert_eq!(
            c(Method::PATCH, "/api/v1/nodes/n/status", None),
            info("PATCH", "", "nodes", "status", "resource")
        );
        let sub = "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/a";
        assert_eq!(
            c(Method::PUT, &format!("{sub}/pause"), None),
            info(
                "PUT",
                "subresources.kubevirt.io",
                "virtualmachineinstances",
                "pause",
                "resource"
            )
        );
        assert_eq!(
            c(Method::GET, &format!("{sub}/console"), None).verb,
            "CONNECT"
        );
    }

    #[test]
    fn discovery_has_no_resource_and_other_paths_are_not_counted() {
        let d = c(Method::GET, "/apis/kubevirt.io/v1", None);
        assert_eq!(
            (
                d.verb.as_str(),
                d.group.as_str(),
                d.version.as_str(),
                d.scope
            ),
            ("GET", "kubevirt.io", "v1", "")
        );
        assert_eq!(c(Method::GET, "/api", None).scope, "");
        assert_eq!(c(Method::GET, "/apis", None).group, "");
        assert_eq!(
            c(Method::GET, "/apis/kubevirt.io", None).group,
            "kubevirt.io"
        );
        for other in ["/healthz", "/version", "/openapi/v2", "/metrics", "/apiary"] {
            assert_eq!(classify(&Method::GET, other, None, ""), None, "{other}");
        }
    }

    #[test]
    fn counters_render_in_prometheus_text_format() {
        let m = Metrics::default();
        let list = info("LIST", "", "pods", "", "namespace");
        m.count(list.clone(), 200);
        m.count(list, 200);
        m.count(
            info("POST", "kubevirt.io", "virtualmachines", "", "resource"),
            201,
        );
        m.count(
            RequestInfo {
                resource: "we\"ird\\\n".into(),
                ..info("GET", "", "", "", "resource")
            },
            404,
        );
        let text = m.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "# HELP apiserver_request_total Counter of apiserver requests broken out for each verb, group, version, resource, subresource, scope and HTTP response code.",
                "# TYPE apiserver_request_total counter",
            ]
        );
        assert_eq!(
            lines[2..],
            [
                r#"apiserver_request_total{code="200",group="",resource="pods",scope="namespace",subresource="",verb="LIST",version="v1"} 2"#,
                r#"apiserver_request_total{code="201",group="kubevirt.io",resource="virtualmachines",scope="resource",subresource="",verb="POST",version="v1"} 1"#,
                r#"apiserver_request_total{code="404",group="",resource="we\"ird\\\n",scope="resource",subresource="",verb="GET",version="v1"} 1"#,
            ]
        );
    }
}
