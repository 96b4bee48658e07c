//! KubeVirt's VMI subresources that need the VM itself (`/apis/subresources.kubevirt.io/v1/
//! namespaces/NS/virtualmachineinstances/NAME/{pause,unpause,softreboot,reset,guestosinfo,
//! console,vnc,vnc/screenshot}`): virt-api's checks here, then the request goes to the endpoint
//! of the node agent running the VM (over TLS, pinned to the certificate hash the node published,
//! with our client certificate), and console/VNC websockets are spliced through byte for byte.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use sha2::Digest;

use crate::error::ApiError;
use crate::http::{AppState, authenticate};
use crate::objects;
use crate::path::Target;
use crate::pki::{Role, Token};
use crate::subresources::{GROUP, VERSION};

/// The Node annotation with the SHA-256 (hex) of its agent endpoint's certificate.
pub const CERT_ANNOTATION: &str = "kuvirt.io/handler-cert-sha256";

/// A VMI subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmiVerb {
    Pause,
    Unpause,
    SoftReboot,
    Reset,
    GuestOsInfo,
    Console,
    Vnc,
    Screenshot,
}

impl VmiVerb {
    /// Every verb, for discovery.
    pub const ALL: [VmiVerb; 8] = [
        VmiVerb::Pause,
        VmiVerb::Unpause,
        VmiVerb::SoftReboot,
        VmiVerb::Reset,
        VmiVerb::GuestOsInfo,
        VmiVerb::Console,
        VmiVerb::Vnc,
        VmiVerb::Screenshot,
    ];

    /// The path below the VMI (and the resource name after `virtualmachineinstances/`).
    pub fn path(self) -> &'static str {
        match self {
            VmiVerb::Pause => "pause",
            VmiVerb::Unpause => "unpause",
            VmiVerb::SoftReboot => "softreboot",
            VmiVerb::Reset => "reset",
            VmiVerb::GuestOsInfo => "guestosinfo",
            VmiVerb::Console => "console",
            VmiVerb::Vnc => "vnc",
            VmiVerb::Screenshot => "vnc/screenshot",
        }
    }

    /// The HTTP method it is served on.
    pub fn method(self) -> Method {
        match self {
            VmiVerb::Pause | VmiVerb::Unpause | VmiVerb::SoftReboot | VmiVerb::Reset => Method::PUT,
            _ => Method::GET,
        }
    }

    /// The Kubernetes verb (for authorization and discovery).
    pub fn kube_verb(self) -> &'static str {
        if self.method() == Method::PUT {
            "update"
        } else {
            "get"
        }
    }
}

/// One VMI subresource request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiCall {
    pub namespace: String,
    pub name: String,
    pub verb: VmiVerb,
}

/// The VMI subresource `path` names, if any.
pub fn route(path: &str) -> Option<VmiCall> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (ns, name, rest) = match segs.as_slice() {
        [
            "apis",
            GROUP,
            VERSION,
            "namespaces",
            ns,
            "virtualmachineinstances",
            name,
            rest @ ..,
        ] => (*ns, *name, rest.join("/")),
        _ => return None,
    };
    let verb = VmiVerb::ALL.into_iter().find(|v| v.path() == rest)?;
    (!ns.is_empty() && !name.is_empty()).then(|| VmiCall {
        namespace: ns.into(),
        name: name.into(),
        verb,
    })
}

/// The axum handler for the VMI subresource paths (a route of its own: websockets need the
/// whole request, upgrade included).
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let Some(call) = route(req.uri().path()) else {
        return ApiError::path_not_found().into_response();
    };
    let user = match authenticate(&state, req.headers()) {
        Ok(u) => u.clone(),
        Err(e) => return e.into_response(),
    };
    match serve(&state, &user, &call, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// What each role may do: users with write access everything, read-only users guest OS info,
/// node agents nothing (these reach into VMs).
fn allowed(role: Role, verb: VmiVerb) -> bool {
    match role {
        Role::Admin => true,
        Role::ReadOnly => verb == VmiVerb::GuestOsInfo,
        Role::Node => false,
    }
}

fn forbidden(user: &Token, call: &VmiCall) -> ApiError {
    crate::subresources::forbidden_subresource(
        user,
        call.verb.kube_verb(),
        "virtualmachineinstances",
        call.verb.path(),
        &call.name,
        &call.namespace,
    )
}

/// virt-api's `NewConflict(v1.Resource("virtualmachineinstance"), name, err)`.
fn conflict(name: &str, why: &str) -> ApiError {
    crate::subresources::kubevirt_conflict("virtualmachineinstance", name, why)
}

fn target(plural: &str, ns: &str) -> Result<Target, ApiError> {
    let group = if plural == "nodes" { "" } else { "kubevirt.io" };
    crate::subresources::target(plural, group, ns)
}

fn condition(vmi: &Value, t: &str) -> bool {
    vmi.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(t)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

fn forbidden_vmi(name: &str, why: &str) -> ApiError {
    ApiError {
        details: Some(Box::new(
            json!({ "name": name, "group": "kubevirt.io", "kind": "virtualmachineinstance" }),
        )),
        ..ApiError::new(
            403,
            "Forbidden",
            format!("virtualmachineinstance.kubevirt.io \"{name}\" is forbidden: {why}"),
        )
    }
}

/// virt-api's checks before it calls the node, in its order and words.
fn validate(vmi: &Value, call: &VmiCall) -> Result<(), ApiError> {
    let phase = vmi.pointer("/status/phase").and_then(Value::as_str);
    let running = phase == Some("Running");
    let paused = condition(vmi, "Paused");
    let agent = condition(vmi, "AgentConnected");
    let devices = vmi.pointer("/spec/domain/devices");
    let off = |field: &str| devices.and_then(|d| d.get(field)) == Some(&Value::Bool(false));
    let name = &call.name;
    match call.verb {
        VmiVerb::Pause => {
            if !running {
                return Err(conflict(name, "VM is not running"));
            }
            let probe = vmi.pointer("/spec/livenessProbe");
            if probe.is_some_and(|p| p.get("guestAgentPing").is_none()) {
                return Err(forbidden_vmi(
                    name,
                    "Pausing VMIs with a non-GuestAgentPing LivenessProbe is not supported",
                ));
            }
            if paused {
                return Err(conflict(name, "VMI is already paused"));
            }
            Ok(())
        }
        VmiVerb::Unpause if !paused => Err(conflict(name, "VMI is not paused")),
        VmiVerb::Unpause | VmiVerb::Reset if !running => Err(conflict(name, "VM is not running")),
        VmiVerb::Unpause | VmiVerb::Reset => Ok(()),
        VmiVerb::SoftReboot => {
            if !running {
                return Err(conflict(name, "VM is not running"));
            }
            if paused {
                return Err(conflict(name, "VMI is paused"));
            }
            // ACPI is on unless the spec turns it off (KubeVirt's default).
            let acpi_off =
                vmi.pointer("/spec/domain/features/acpi/enabled") == Some(&Value::Bool(false));
            if acpi_off && !agent {
                return Err(conflict(
                    name,
                    "VMI neither have the agent connected nor the ACPI feature enabled",
                ));
            }
            Ok(())
        }
        VmiVerb::GuestOsInfo if !running => Err(conflict(name, "VMI is not running")),
        VmiVerb::GuestOsInfo if !agent => {
            Err(conflict(name, "VMI does not have guest agent connected"))
        }
        VmiVerb::GuestOsInfo => Ok(()),
        VmiVerb::Console | VmiVerb::Vnc | VmiVerb::Screenshot => {
            if call.verb == VmiVerb::Console && off("autoattachSerialConsole") {
                return Err(ApiError::bad_request("No serial consoles are present."));
            }
            if call.verb != VmiVerb::Console && off("autoattachGraphicsDevice") {
                return Err(ApiError::bad_request("No graphics devices are present."));
            }
            if phase == Some("Failed") {
                return Err(conflict(name, "VMI is in failed status"));
            }
            if !running {
                return Err(ApiError::bad_request("VMI is not running"));
            }
            Ok(())
        }
    }
}

/// Pause and unpause options: only `dryRun` matters here (virt-api checks, then stops).
fn dry_run(body: &[u8]) -> Result<bool, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let v: Value = serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice(body))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "Can not unmarshal Request body to struct, error: {e}"
            ))
        })?;
    Ok(v.get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| d.iter().any(|x| x == "All")))
}

async fn serve(
    state: &AppState,
    user: &Token,
    call: &VmiCall,
    req: Request,
) -> Result<Response, ApiError> {
    if !allowed(user.role, call.verb) {
        return Err(forbidden(user, call));
    }
    if *req.method() != call.verb.method() {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {}",
            req.method()
        )));
    }
    // Pause and unpause take options (a dry run); their body is read here, small.
    let (req, dry) = if matches!(call.verb, VmiVerb::Pause | VmiVerb::Unpause) {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|_| ApiError::too_large(64 * 1024))?;
        (Request::from_parts(parts, Body::empty()), dry_run(&bytes)?)
    } else {
        (req, false)
    };
    let vmi = match objects::get(
        &state.store,
        &target("virtualmachineinstances", &call.namespace)?,
        &call.name,
    )
    .await
    {
        Ok(v) => v,
        Err(e) if e.code == 404 => {
            return Err(ApiError {
                details: Some(Box::new(
                    json!({ "name": call.name, "group": "kubevirt.io", "kind": "virtualmachineinstance" }),
                )),
                ..ApiError::new(
                    404,
                    "NotFound",
                    format!(
                        "virtualmachineinstance.kubevirt.io \"{}\" not found",
                        call.name
                    ),
                )
            });
        }
        Err(e) => return Err(e),
    };
    validate(&vmi, call)?;
    if dry {
        return Ok(StatusCode::OK.into_response());
    }
    if call.verb == VmiVerb::GuestOsInfo {
        // Passed `validate` only with a guest agent, which no VM reports yet.
        return Err(conflict(
            &call.name,
            "VMI does not have guest agent connected",
        ));
    }
    let node_name = vmi
        .pointer("/status/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| conflict(&call.name, "VMI is not running"))?;
    let uid = vmi
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let node = objects::get(&state.store, &target("nodes", "")?, node_name)
        .await
        .map_err(|e| ApiError::internal(format!("node {node_name}: {}", e.message)))?;
    let endpoint = NodeEndpoint::of(&node).ok_or_else(|| {
        ApiError::internal(format!("node {node_name} publishes no agent endpoint"))
    })?;
    let handler_verb = match call.verb {
        VmiVerb::Screenshot => "screenshot",
        v => v.path(),
    };
    let path = format!(
        "/v1/namespaces/{}/virtualmachineinstances/{}/{handler_verb}?uid={}",
        call.namespace, call.name, uid
    );
    let tls = client_config(state, &endpoint.cert_sha256)?;
    if matches!(call.verb, VmiVerb::Console | VmiVerb::Vnc) {
        return splice(req, &endpoint, &path, tls).await;
    }
    let upstream = request(&endpoint, tls, call.verb.method(), &path, HeaderMap::new()).await?;
    let (parts, body) = upstream.into_parts();
    let body = tokio::time::timeout(
        Duration::from_secs(60),
        http_body_util::BodyExt::collect(body),
    )
    .await
    .map_err(|_| ApiError::internal(format!("node {node_name}: no answer")))?
    .map_err(|e| ApiError::internal(format!("node {node_name}: {e}")))?
    .to_bytes();
    if parts.status.is_success() {
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json"));
        return Ok((StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response());
    }
    let message = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Err(match parts.status {
        StatusCode::CONFLICT => conflict(&call.name, &message),
        StatusCode::NOT_FOUND => ApiError::new(404, "NotFound", message),
        _ => ApiError::internal(format!("Internal error occurred: {message}")),
    })
}

/// Where a node's agent endpoint is and what certificate it serves.
struct NodeEndpoint {
    addr: String,
    cert_sha256: String,
}

impl NodeEndpoint {
    fn of(node: &Value) -> Option<NodeEndpoint> {
        let cert_sha256 = node
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(CERT_ANNOTATION))
            .and_then(Value::as_str)?
            .to_string();
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .filter(|p| *p > 0 && *p <= 65535)?;
        let addrs = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)?;
        let ip = ["InternalIP", "ExternalIP", "Hostname"]
            .iter()
            .find_map(|t| {
                addrs
                    .iter()
                    .find(|a| a.get("type").and_then(Value::as_str) == Some(t))
                    .and_then(|a| a.get("address").and_then(Value::as_str))
            })?;
        let addr = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{ip}:{port}"),
        };
        Some(NodeEndpoint { addr, cert_sha256 })
    }
}

/// Accepts exactly the certificate whose SHA-256 the node published (signatures are still
/// checked, so only the holder of its key can present it).
#[derive(Debug)]
struct Pinned {
    sha256: String,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = hex::encode(sha2::Sha256::digest(end_entity.as_ref()));
        if got.eq_ignore_ascii_case(&self.sha256) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the node's certificate is not the one it published".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

fn client_config(state: &AppState, sha256: &str) -> Result<Arc<rustls::ClientConfig>, ApiError> {
    let internal = |e: &dyn std::fmt::Display| ApiError::internal(format!("node client: {e}"));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(state.creds.client_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal(&e))?;
    let key = PrivateKeyDer::from_pem_slice(state.creds.client_key_pem.as_bytes())
        .map_err(|e| internal(&e))?;
    let verifier = Pinned {
        sha256: sha256.to_string(),
        algs: provider.signature_verification_algorithms,
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| internal(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(certs, key)
        .map_err(|e| internal(&e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One HTTP/1.1 request to a node's endpoint (the connection keeps serving upgrades).
async fn request(
    ep: &NodeEndpoint,
    tls: Arc<rustls::ClientConfig>,
    method: Method,
    path: &str,
    headers: HeaderMap,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
    let unreachable = |e: &dyn std::fmt::Display| {
        ApiError::internal(format!(
            "Internal error occurred: node agent at {}: {e}",
            ep.addr
        ))
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&ep.addr),
    )
    .await
    .map_err(|_| unreachable(&"connect timed out"))?
    .map_err(|e| unreachable(&e))?;
    let name = ServerName::try_from("kuvirt-handler").map_err(|e| unreachable(&e))?;
    let stream = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| unreachable(&"TLS handshake timed out"))?
    .map_err(|e| unreachable(&e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "kuvirt-handler");
    for (k, v) in &headers {
        builder = builder.header(k, v);
    }
    let req = builder.body(Body::empty()).map_err(|e| unreachable(&e))?;
    tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| unreachable(&"no answer"))?
        .map_err(|e| unreachable(&e))
}

/// A websocket: the node's handshake answer goes back to the client, then bytes flow both ways
/// until either side closes.
async fn splice(
    mut req: Request,
    ep: &NodeEndpoint,
    path: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Response, ApiError> {
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !wants_upgrade {
        return Err(ApiError::bad_request(
            "this subresource is a websocket: send Upgrade: websocket",
        ));
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    for h in [
        header::SEC_WEBSOCKET_KEY,
        header::SEC_WEBSOCKET_VERSION,
        header::SEC_WEBSOCKET_PROTOCOL,
    ] {
        if let Some(v) = req.headers().get(&h) {
            headers.insert(h, v.clone());
        }
    }
    let client_upgrade = hyper::upgrade::on(&mut req);
    let mut upstream = request(ep, tls, Method::GET, path, headers).await?;
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = upstream.status();
        let body = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::collect(upstream.into_body()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| format!("node agent answered {status}"));
        return Err(match status {
            StatusCode::NOT_FOUND => ApiError::new(404, "NotFound", message),
            StatusCode::CONFLICT => ApiError::new(409, "Conflict", message),
            _ => ApiError::internal(format!("Internal error occurred: {message}")),
        });
    }
    let node_upgrade = hyper::upgrade::on(&mut upstream);
    let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (k, v) in upstream.headers() {
        if k != header::CONTENT_LENGTH {
            answer = answer.header(k, v);
        }
    }
    tokio::spawn(async move {
        let (Ok(client), Ok(node)) = tokio::join!(client_upgrade, node_upgrade) else {
            return;
        };
        let mut client = TokioIo::new(client);
        let mut node = TokioIo::new(node);
        let _ = tokio::io::copy_bidirectional(&mut client, &mut node).await;
    });
    answer
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let p = "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/x/";
        assert_eq!(
            route(&format!("{p}pause")).map(|c| c.verb),
            Some(VmiVerb::Pause)
        );
        assert_eq!(
            route(&format!("{p}vnc/screenshot")).map(|c| c.verb),
            Some(VmiVerb::Screenshot)
        );
        assert_eq!(
            route(&format!("{p}console")).map(|c| c.name),
            Some("x".into())
        );
        assert!(route(&format!("{p}start")).is_none());
        assert!(
            route("/apis/subresources.kubevirt.io/v1/namespaces//virtualmachineinstances/x/pause")
                .is_none()
        );
    }

    fn vmi(phase: &str, conditions: Value) -> Value {
        json!({"metadata": {"name": "x"}, "status": {"phase": phase, "conditions": conditions}})
    }

    fn call(verb: VmiVerb) -> VmiCall {
        VmiCall {
            namespace: "d".into(),
            name: "x".into(),
            verb,
        }
    }

    #[test]
    fn virt_api_rules() {
        let paused = json!([{"type": "Paused", "status": "True"}]);
        let running = vmi("Running", json!([]));
        assert!(validate(&running, &call(VmiVerb::Pause)).is_ok());
        let e = validate(&vmi("Running", paused.clone()), &call(VmiVerb::Pause)).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(e.message.contains("VMI is already paused"), "{}", e.message);
        let e = validate(&running, &call(VmiVerb::Unpause)).unwrap_err();
        assert!(e.message.contains("VMI is not paused"));
        assert!(validate(&vmi("Running", paused.clone()), &call(VmiVerb::Unpause)).is_ok());
        let e = validate(&vmi("Scheduled", json!([])), &call(VmiVerb::Console)).unwrap_err();
        assert!(e.message.contains("VMI is not running"));
        let e = validate(&running, &call(VmiVerb::GuestOsInfo)).unwrap_err();
        assert!(e.message.contains("guest agent"));
        assert!(validate(&vmi("Running", paused), &call(VmiVerb::SoftReboot)).is_err());
        // Streams: 400 while not running (virtctl retries on it), 409 once failed.
        let e = validate(&vmi("Scheduled", json!([])), &call(VmiVerb::Vnc)).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (400, "VMI is not running"));
        let e = validate(&vmi("Failed", json!([])), &call(VmiVerb::Console)).unwrap_err();
        assert_eq!(e.code, 409);
        let mut headless = vmi("Running", json!([]));
        headless["spec"] = json!({"domain": {"devices": {"autoattachSerialConsole": false,
                                                         "autoattachGraphicsDevice": false}}});
        let e = validate(&headless, &call(VmiVerb::Console)).unwrap_err();
        assert_eq!(e.message, "No serial consoles are present.");
        let e = validate(&headless, &call(VmiVerb::Screenshot)).unwrap_err();
        assert_eq!(e.message, "No graphics devices are present.");
        let e = validate(&vmi("Scheduled", json!([])), &call(VmiVerb::Pause)).unwrap_err();
        assert!(e.message.contains("VM is not running"), "{}", e.message);
        let mut no_acpi = vmi("Running", json!([]));
        no_acpi["spec"] = json!({"domain": {"features": {"acpi": {"enabled": false}}}});
        assert!(validate(&no_acpi, &call(VmiVerb::SoftReboot)).is_err());
        assert!(dry_run(br#"{"dryRun": ["All"]}"#).unwrap());
        assert!(!dry_run(b"").unwrap());
        assert_eq!(dry_run(b"{not").unwrap_err().code, 400);
    }

    #[test]
    fn roles() {
        assert!(allowed(Role::Admin, VmiVerb::Console));
        assert!(!allowed(Role::ReadOnly, VmiVerb::Console));
        assert!(!allowed(Role::ReadOnly, VmiVerb::Pause));
        assert!(allowed(Role::ReadOnly, VmiVerb::GuestOsInfo));
        assert!(!allowed(Role::Node, VmiVerb::Vnc));
    }

    #[test]
    fn node_endpoints() {
        let node = json!({
            "metadata": {"annotations": {CERT_ANNOTATION: "ab"}},
            "status": {"addresses": [{"type": "Hostname", "address": "n"},
                                     {"type": "InternalIP", "address": "10.0.0.2"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 8186}}}
        });
        let ep = NodeEndpoint::of(&node).unwrap();
        assert_eq!(ep.addr, "10.0.0.2:8186");
        let mut no_port = node.clone();
        no_port["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] = json!(0);
        assert!(NodeEndpoint::of(&no_port).is_none());
    }
}
