//! The HTTP surface: authentication, routing by path, content negotiation, and the verbs wired to
//! `objects`, `discovery`, `watch` and `table`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kuvirt_apimachinery::selector::{FieldSelector, LabelSelector};
use kuvirt_store::Store;
use serde_json::{Value, json};

use crate::discovery;
use crate::error::ApiError;
use crate::objects::{self, DeleteOptions, Part, WriteOptions};
use crate::path::{Endpoint, Target, parse};
use crate::pki::{Credentials, Role, Token};
use crate::table;
use crate::watch;

/// Largest request body accepted (Kubernetes' limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// What every request handler shares.
pub struct AppState {
    pub store: Store,
    pub creds: Credentials,
    /// host:port clients reach us at (for `/api`'s serverAddressByClientCIDRs).
    pub address: String,
    /// Request counters (`GET /metrics`).
    pub metrics: crate::metrics::Metrics,
    /// Recent events' objects, decoded once for all watches.
    pub decoded: Arc<watch::Decoded>,
}

/// The router: health and version without credentials, everything else behind a bearer token;
/// every `/api` and `/apis` request counted (`/metrics`).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/version", get(version))
        .route("/cacerts", get(cacerts))
        .route(
            "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{*rest}",
            axum::routing::any(crate::nodeproxy::handle),
        )
        .route("/metrics", get(crate::metrics::serve))
        .fallback(dispatch)
        // Bodies are limited in `dispatch`, so an oversized one gets a Status like any error.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count,
        ))
        .with_state(state)
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "32",
        "gitVersion": concat!("v1.32.0-kuvirt.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    }))
}

/// The CA certificate, without credentials: a joining agent checks it against the hash in its
/// join token before it trusts this server with the token.
async fn cacerts(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        state.creds.ca_pem.clone(),
    )
        .into_response()
}

pub(crate) fn authenticate<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
) -> Result<&'a Token, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    state
        .creds
        .authenticate(bearer.trim())
        .ok_or_else(ApiError::unauthorized)
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn dispatch(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Credentials before the body: nobody without a token makes the server buffer anything.
    if let Err(e) = authenticate(&state, &headers) {
        // Take in a little of the body so a small request gets its answer, not a reset.
        let _ = axum::body::to_bytes(body, 64 * 1024).await;
        return e.into_response();
    }
    // Read somewhat past the limit so a client that sends a little too much gets its 413 instead
    // of a reset connection; far larger bodies are cut off.
    let body = match axum::body::to_bytes(body, 4 * MAX_BODY).await {
        Ok(b) if b.len() <= MAX_BODY => b,
        _ => return ApiError::too_large(MAX_BODY).into_response(),
    };
    match handle(&state, method, &uri, &q, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn handle(
    state: &AppState,
    method: Method,
    uri: &Uri,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let user = authenticate(state, headers)?;
    if body.len() > MAX_BODY {
        return Err(ApiError::too_large(MAX_BODY));
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("application/json");
    if let Some(r) = openapi(uri) {
        return r;
    }
    if let Some(call) = crate::subresources::route(uri.path()) {
        return crate::subresources::serve(&state.store, user, &method, &call, &body).await;
    }
    let endpoint = parse(uri.path()).map_err(|_| ApiError::path_not_found())?;
    let discovery_reply = |v: Option<Value>, aggregated: bool| -> Result<Response, ApiError> {
        let v = v.ok_or_else(ApiError::path_not_found)?;
        let ct = if aggregated {
            discovery::AGGREGATED
        } else {
            "application/json"
        };
        Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], v.to_string()).into_response())
    };
    let aggregated = discovery::wants_aggregated(accept);
    match endpoint {
        Endpoint::CoreVersions if aggregated => {
            discovery_reply(Some(discovery::aggregated(true)), true)
        }
        Endpoint::CoreVersions => {
            discovery_reply(Some(discovery::core_versions(&state.address)), false)
        }
        Endpoint::Groups if aggregated => discovery_reply(Some(discovery::aggregated(false)), true),
        Endpoint::Groups => discovery_reply(Some(discovery::group_list()), false),
        Endpoint::Group(g) => discovery_reply(discovery::group(&g), false),
        Endpoint::Resources { group, version } => {
            discovery_reply(discovery::resource_list(&group, &version), false)
        }
        Endpoint::Resource(t) => resource(state, user, method, t, q, headers, accept, body).await,
    }
}

/// `/openapi/v2`, `/openapi/v3` and `/openapi/v3/<group-version path>` (served as JSON; the
/// documents are computed once).
fn openapi(uri: &Uri) -> Option<Result<Response, ApiError>> {
    let path = uri.path().trim_end_matches('/');
    let body: Result<Vec<u8>, ApiError> = match path {
        "/openapi/v2" => Ok(crate::openapi::v2_json().to_vec()),
        "/openapi/v3" => Ok(crate::openapi::v3_index().to_string().into_bytes()),
        p => {
            let doc = p.strip_prefix("/openapi/v3/")?;
            crate::openapi::v3_document_json(doc)
                .map(<[u8]>::to_vec)
                .ok_or_else(ApiError::path_not_found)
        }
    };
    Some(body.map(|b| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            b,
        )
            .into_response()
    }))
}

/// Whether a `watch` query value asks for a watch.
pub fn watch_requested(value: &str) -> bool {
    value == "true" || value == "1"
}

/// The Kubernetes verb a request is.
fn verb(
    method: &Method,
    t: &Target,
    q: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let watch = q.get("watch").is_some_and(|w| watch_requested(w));
    let not_allowed = || {
        ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        ))
    };
    // Subresources are read and written, never created or deleted; a namespaced kind's
    // cluster-wide path only lists and watches.
    if t.subresource.is_some() && !matches!(*method, Method::GET | Method::PUT | Method::PATCH) {
        return Err(not_allowed());
    }
    if t.rt.namespaced && t.namespace.is_empty() && !(*method == Method::GET && t.name.is_none()) {
        return Err(not_allowed());
    }
    Ok(match (method, t.name.is_some()) {
        (&Method::GET, false) if watch => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        (&Method::DELETE, false) => "deletecollection",
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            )));
        }
    })
}

fn authorize(user: &Token, verb: &str, t: &Target) -> Result<(), ApiError> {
    let allowed = match user.role {
        Role::Admin | Role::Node => true,
        Role::ReadOnly => matches!(verb, "get" | "list" | "watch"),
    };
    if allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(&user.user, verb, t.rt, &t.namespace))
    }
}

/// Decodes a request body (JSON, or YAML for `application/yaml`).
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = content_type(headers);
    match ct.as_str() {
        "" | "application/json" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding the request body: {e}"))),
        "application/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
            serde_saphyr::from_str(text).map_err(|e| {
                ApiError::bad_request(format!(
                    "error decoding YAML: {}",
                    first_line(&e.to_string())
                ))
            })
        }
        crate::protobuf::MEDIA_TYPE => Ok(crate::protobuf::decode(body, "", "")?),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// The media type without parameters, lower-cased.
pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Selectors from the query, checked against what this kind supports.
pub struct Selectors {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selectors {
    pub fn parse(t: &Target, q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
        let mut supported = vec!["metadata.name", "metadata.namespace"];
        supported.extend_from_slice(t.rt.field_selectors);
        let fields = FieldSelector::parse_supported(
            q.get("fieldSelector").map_or("", String::as_str),
            &supported,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selectors { labels, fields })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches_object(obj)
    }

    /// Whether every object matches (no selector given).
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    state: &AppState,
    user: &Token,
    method: Method,
    t: Target,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    accept: &str,
    body: Bytes,
) -> Result<Response, ApiError> {
    let verb = verb(&method, &t, q)?;
    authorize(user, verb, &t)?;
    let store = &state.store;
    let want_table = accept.contains("as=Table");
    match (t.subresource.as_deref(), t.rt.status) {
        (None, _) | (Some("status"), true) => {}
        (Some("finalize"), _) if t.rt.kind == "Namespace" => {}
        _ => return Err(ApiError::path_not_found()),
    }
    let part = match t.subresource.as_deref() {
        Some("status") => Part::Status,
        _ => Part::Main,
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let wo = WriteOptions::from_query(q, user_agent);
    let name = t.name.clone().unwrap_or_default();
    match verb {
        "get" => {
            let obj = objects::get(store, &t, &name).await?;
            if want_table {
                return Ok(json_response(
                    StatusCode::OK,
                    &table::table(t.rt, &[obj], None, q),
                ));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
        "list" => {
            let sel = Selectors::parse(&t, q)?;
            let limit = q.get("limit").and_then(|l| l.parse().ok());
            let page = objects::list(
                store,
                &t,
                limit,
                q.get("continue").map(String::as_str),
                &|v| sel.matches(v),
            )
            .await?;
            let mut meta = json!({"resourceVersion": page.revision.to_string()});
            if let Some(c) = &page.continue_token {
                meta["continue"] = json!(c);
            }
            if want_table {
                let mut tab = table::table(t.rt, &page.items, Some(page.revision), q);
                tab["metadata"] = meta;
                return Ok(json_response(StatusCode::OK, &tab));
            }
            let list = json!({
                "kind": format!("{}List", t.rt.kind),
                "apiVersion": t.rt.api_version(),
                "metadata": meta,
                "items": page.items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        "watch" => {
            let sel = Selectors::parse(&t, q)?;
            watch::serve(store.clone(), state.decoded.clone(), t, sel, q, want_table).await
        }
        "create" => {
            let obj = decode_body(headers, &body)?;
            let created = objects::create(store, &t, obj, &wo).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        "update" => {
            let obj = decode_body(headers, &body)?;
            let expected = crate::meta::resource_version(&obj);
            let updated = objects::update(store, &t, &name, obj, part, expected, &wo).await?;
            Ok(json_response(StatusCode::OK, &updated))
        }
        "patch" => {
            let patched =
                crate::patch::patch(store, &t, &name, part, headers, &body, q, &wo).await?;
            Ok(json_response(StatusCode::OK, &patched))
        }
        "delete" => {
            let body = (!body.is_empty())
                .then(|| decode_body(headers, &body))
                .transpose()?;
            let opts = DeleteOptions::parse(q, body.as_ref())?;
            let obj = objects::delete(store, &t, &name, &opts).await?;
            Ok(json_response(StatusCode::OK, &obj))
        }
        "deletecollection" => {
            let body = (!body.is_empty())
                .then(|| decode_body(headers, &body))
                .transpose()?;
            let opts = DeleteOptions::parse(q, body.as_ref())?;
            let sel = Selectors::parse(&t, q)?;
            let page = objects::list(store, &t, None, None, &|v| sel.matches(v)).await?;
            let mut items = Vec::new();
            for obj in page.items {
                let one = Target {
                    rt: t.rt,
                    namespace: crate::meta::meta_str(&obj, "namespace")
                        .unwrap_or_default()
                        .to_string(),
                    name: None,
                    subresource: None,
                };
                if let Some(n) = crate::meta::name(&obj) {
                    match objects::delete(store, &one, n, &opts).await {
                        Ok(v) => items.push(v),
                        Err(e) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let list = json!({
                "kind": format!("{}List", t.rt.kind),
                "apiVersion": t.rt.api_version(),
                "metadata": {},
                "items": items,
            });
            Ok(json_response(StatusCode::OK, &list))
        }
        _ => Err(ApiError::method_not_allowed("unsupported verb")),
    }
}

/// A streamed body from a channel of chunks.
pub fn stream_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Body {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Body::from_stream(stream)
}
