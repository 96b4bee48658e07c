//! Starting the API server: the store, the credentials, the default namespaces, background
//! garbage collection and compaction, and HTTPS (HTTP/2 and HTTP/1.1) on the listen address.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use kuvirt_store::{Retention, Store};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::http::{AppState, router};
use crate::objects::{self, WriteOptions};
use crate::path::Target;
use crate::pki::{self, Credentials};
use crate::resources::lookup;

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra names and addresses the serving certificate must cover.
    pub extra_hosts: Vec<String>,
    /// How long watch history is kept before compaction.
    pub history: Duration,
}

/// A failure to start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store {path}: {source}")]
    Store {
        path: String,
        source: kuvirt_store::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("default namespace {name}: {message}")]
    Namespace { name: String, message: String },
}

/// A running API server; dropping it does not stop it, [`Running::stop`] does.
pub struct Running {
    pub addr: SocketAddr,
    pub creds: Credentials,
    pub store: Store,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops serving (connections in flight are dropped) and the background tasks.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// `https://ADDR`
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Opens everything and starts serving.
pub async fn start(cfg: ServerConfig) -> Result<Running, ServerError> {
    // The store holds Secrets: only root reads the data directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&cfg.data_dir)
        .map_err(|e| ServerError::DataDir {
            path: cfg.data_dir.display().to_string(),
            source: e,
        })?;
    let db = cfg.data_dir.join("store.redb");
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::Permissions::from_mode(0o700);
    std::fs::set_permissions(&cfg.data_dir, private).map_err(|e| ServerError::DataDir {
        path: cfg.data_dir.display().to_string(),
        source: e,
    })?;
    let store = Store::open(&db).map_err(|e| ServerError::Store {
        path: db.display().to_string(),
        source: e,
    })?;
    let _ = std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600));
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| ServerError::Listen {
            addr: cfg.listen,
            source: e,
        })?;
    let addr = listener.local_addr().map_err(|e| ServerError::Listen {
        addr: cfg.listen,
        source: e,
    })?;
    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ip = addr.ip().to_string();
    if !addr.ip().is_unspecified() && !hosts.contains(&ip) {
        hosts.push(ip);
    }
    hosts.extend(cfg.extra_hosts.iter().cloned());
    // Listening on every address: local clients (the kubeconfig) use loopback.
    let local = if addr.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let creds = pki::ensure(&cfg.data_dir, &hosts, &format!("https://{local}"))?;
    default_namespaces(&store).await?;

    let state = Arc::new(AppState {
        store: store.clone(),
        creds: creds.clone(),
        address: addr.to_string(),
        metrics: Default::default(),
        decoded: Default::default(),
    });
    let app = router(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(creds.tls.clone());
    let serve = tokio::spawn(async move {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                // A client that never finishes its handshake does not keep a task forever.
                let Ok(Ok(tls)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                else {
                    return;
                };
                let service = TowerToHyperService::new(app);
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    let gc = tokio::spawn(crate::gc::run(store.clone()));
    let compact = store.compact_every(
        Duration::from_secs(30).min(cfg.history),
        Retention::Age(cfg.history),
    );
    Ok(Running {
        addr,
        creds,
        store,
        tasks: vec![serve, gc, compact],
    })
}

/// Kubernetes' namespaces that always exist.
async fn default_namespaces(store: &Store) -> Result<(), ServerError> {
    let Some(rt) = lookup("", "v1", "namespaces") else {
        return Ok(());
    };
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let t = Target {
            rt,
            namespace: String::new(),
            name: None,
            subresource: None,
        };
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        let opts = WriteOptions {
            manager: "kuvirt-server".into(),
            ..WriteOptions::default()
        };
        match objects::create(store, &t, obj, &opts).await {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => {
                return Err(ServerError::Namespace {
                    name: name.into(),
                    message: e.message,
                });
            }
        }
    }
    Ok(())
}
