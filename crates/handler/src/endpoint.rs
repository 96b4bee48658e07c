//! The node agent's own HTTPS endpoint (virt-handler's console server): the API server proxies the
//! VMI subresources that need the VM itself — pause, unpause, soft reboot, reset, the serial
//! console and VNC as websockets, screenshots — to the node running it.
//!
//! Trust goes both ways without a shared secret: the endpoint serves a self-signed certificate
//! whose SHA-256 the agent publishes on its Node (only a node's credentials may write it), and it
//! accepts only clients presenting a certificate signed by the cluster CA (the API server's).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kuvirt_launcher::protocol::{ProtocolError, Request, call};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

use crate::pods::vm_dir;

/// The Node annotation carrying the SHA-256 (hex) of the endpoint's certificate.
pub const CERT_ANNOTATION: &str = "kuvirt.io/handler-cert-sha256";
/// The websocket subprotocol KubeVirt's console and VNC streams speak: raw bytes in binary
/// frames.
pub const PLAIN_PROTOCOL: &str = "plain.kubevirt.io";

/// A failure to start the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EndpointError + '_ {
    move |source| EndpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the endpoint listens and whom it trusts.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    pub listen: SocketAddr,
    /// The node's state directory (VM directories, and `handler/` for the endpoint's identity).
    pub state_dir: PathBuf,
    /// The cluster CA (PEM): clients must present a certificate it signed.
    pub ca_pem: String,
}

/// A serving endpoint.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// SHA-256 (hex) of the serving certificate, for [`CERT_ANNOTATION`].
    pub cert_sha256: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The endpoint's key and self-signed certificate (PEM): kept in `STATE/handler/` so the
/// published hash stays valid across restarts. Migrations between nodes use it too.
pub fn identity(dir: &Path) -> Result<(String, String), EndpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    if let (Ok(c), Ok(k)) = (std::fs::read_to_string(&crt), std::fs::read_to_string(&key)) {
        return Ok((c, k));
    }
    let kp = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(vec!["kuvirt-handler".to_string()])?;
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = p.self_signed(&kp)?;
    write_private(&key, kp.serialize_pem().as_bytes())?;
    std::fs::write(&crt, cert.pem()).map_err(io(&crt))?;
    Ok((cert.pem(), kp.serialize_pem()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), EndpointError> {
    crate::join::write_private(path, data).map_err(|e| match e {
        crate::join::JoinError::Io { path, source } => EndpointError::Io { path, source },
        other => EndpointError::Tls(other.to_string()),
    })
}

fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<rustls::ServerConfig, EndpointError> {
    let tls = |e: &dyn std::fmt::Display| EndpointError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.map_err(|e| tls(&e))?).map_err(|e| tls(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls(&e))?;
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls(&e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// SHA-256 (hex) of the first certificate in `pem`.
pub fn cert_sha256(pem: &str) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()?;
    Some(hex::encode(sha2::Sha256::digest(der.as_ref())))
}

struct AppState {
    state_dir: PathBuf,
}

/// Starts serving on `cfg.listen`.
pub async fn start(cfg: EndpointConfig) -> Result<Endpoint, EndpointError> {
    let (cert_pem, key_pem) = identity(&cfg.state_dir.join("handler"))?;
    let cert_sha256 = cert_sha256(&cert_pem)
        .ok_or_else(|| EndpointError::Tls("the endpoint certificate does not parse".into()))?;
    let tls = tls_config(&cert_pem, &key_pem, &cfg.ca_pem)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| EndpointError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| EndpointError::Listen {
            addr: cfg.listen,
            source,
        })?;
    let app = router(Arc::new(AppState {
        state_dir: cfg.state_dir.clone(),
    }));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let task = tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "handler endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(
                        TokioIo::new(tls),
                        TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
    Ok(Endpoint {
        addr,
        cert_sha256,
        task,
    })
}

const VMI: &str = "/v1/namespaces/{ns}/virtualmachineinstances/{name}";

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(&format!("{VMI}/{{verb}}"), put(lifecycle))
        .route(&format!("{VMI}/console"), get(console))
        .route(&format!("{VMI}/vnc"), get(vnc))
        .route(&format!("{VMI}/screenshot"), get(screenshot))
        .with_state(state)
}

/// Which VMI: the API server names it and its UID, so a request never reaches a newer VMI of the
/// same name.
#[derive(Deserialize)]
struct Which {
    uid: String,
}

fn problem(code: StatusCode, message: impl Into<String>) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "message": message.into() }).to_string(),
    )
        .into_response()
}

/// The VM's directory, if its launcher is there.
fn launcher_dir(s: &AppState, ns: &str, name: &str, uid: &str) -> Result<PathBuf, Box<Response>> {
    let dir = vm_dir(&s.state_dir, ns, name, uid);
    if dir.join("launcher.sock").exists() {
        Ok(dir)
    } else {
        Err(Box::new(problem(
            StatusCode::NOT_FOUND,
            format!("no launcher for VMI {ns}/{name} on this node"),
        )))
    }
}

fn launcher_error(e: ProtocolError) -> Response {
    match e {
        ProtocolError::Refused(m) => problem(StatusCode::CONFLICT, m),
        e => problem(StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

async fn lifecycle(
    State(s): State<Arc<AppState>>,
    UrlPath((ns, name, verb)): UrlPath<(String, String, String)>,
    Query(w): Query<Which>,
) -> Response {
    let req = match verb.as_str() {
        "pause" => Request::Pause,
        "unpause" => Request::Unpause,
        "softreboot" => Request::SoftReboot,
        "reset" => Request::Reset,
        _ => return problem(StatusCode::NOT_FOUND, format!("no such action {verb:?}")),
    };
    let dir = match launcher_dir(&s, &ns, &name, &w.uid) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    match call(&dir.join("launcher.sock"), req).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(e) => launcher_error(e),
    }
}

async fn screenshot(
    State(s): State<Arc<AppState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(w): Query<Which>,
) -> Response {
    let dir = match launcher_dir(&s, &ns, &name, &w.uid) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    let n: u64 = rand_suffix();
    let path = dir.join(format!("screenshot-{n:016x}.png"));
    let r = call(
        &dir.join("launcher.sock"),
        Request::Screendump { path: path.clone() },
    )
    .await;
    let png = tokio::fs::read(&path).await;
    let _ = tokio::fs::remove_file(&path).await;
    match (r, png) {
        (Err(e), _) => launcher_error(e),
        (Ok(_), Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        (Ok(_), Ok(png)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "image/png")], png).into_response()
        }
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

async fn console(
    State(s): State<Arc<AppState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(w): Query<Which>,
    ws: WebSocketUpgrade,
) -> Response {
    let dir = match launcher_dir(&s, &ns, &name, &w.uid) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    stream(ws, dir.join("console.sock")).await
}

async fn vnc(
    State(s): State<Arc<AppState>>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    Query(w): Query<Which>,
    ws: WebSocketUpgrade,
) -> Response {
    let dir = match launcher_dir(&s, &ns, &name, &w.uid) {
        Ok(d) => d,
        Err(r) => return *r,
    };
    stream(ws, dir.join("qemu").join("vnc.sock")).await
}

/// Connects to `socket` first (so a VM without one gets an HTTP error, not a dead websocket),
/// then relays bytes both ways as binary frames.
async fn stream(ws: WebSocketUpgrade, socket: PathBuf) -> Response {
    let conn = match UnixStream::connect(&socket).await {
        Ok(c) => c,
        Err(e) => {
            return problem(
                StatusCode::NOT_FOUND,
                format!(
                    "{}: {e}",
                    socket
                        .file_name()
                        .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
                ),
            );
        }
    };
    ws.protocols([PLAIN_PROTOCOL])
        .on_upgrade(move |ws| relay(ws, conn))
        .into_response()
}

async fn relay(mut ws: WebSocket, conn: UnixStream) {
    let (mut rd, mut wr) = conn.into_split();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
            m = ws.recv() => match m {
                Some(Ok(Message::Binary(b))) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if wr.write_all(t.as_bytes()).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
        }
    }
    let _ = ws.send(Message::Close(None)).await;
}
