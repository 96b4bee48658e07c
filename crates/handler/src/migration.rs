//! Live migration between node agents (virt-handler's part). The VMI's `status.migrationState`
//! is the contract: the migration controller names source and target, the target node's agent
//! has its launcher listen and relays that over TLS on the node's address
//! (`targetNodeAddress`, `targetDirectMigrationNodePorts`), the source node's agent relays its
//! QEMU's streams to it and starts the launcher's migration (`startTimestamp`), reports a
//! failure or an abort, and ends its side once the target has taken the VM over (`nodeName`,
//! `completed`). Both relays authenticate the other node by the certificate it published on its
//! Node (mutual TLS, pinned, as the API server reaches node endpoints).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::{
    MigrationAbortStatus, MigrationConfiguration, VirtualMachineInstanceMigrationState,
};
use kuvirt_launcher::migration::{Incoming, MigrateOptions, MigrationPhase};
use kuvirt_launcher::protocol::{Request, Response, call};
use kuvirt_launcher::vm::VmState;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use serde_json::json;
use sha2::Digest;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::JoinHandle;

use crate::endpoint::CERT_ANNOTATION;
use crate::pods::events::{Involved, VmiEvent, record};

/// `targetDirectMigrationNodePorts` values: what a port carries (KubeVirt's libvirt ports).
const MEMORY_PORT: i32 = 0;
const BLOCK_PORT: i32 = 49153;
/// How often a source asks its launcher how the migration goes.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How long a TLS handshake between the agents may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A migration step that failed (logged; the step is tried again at the next change).
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("migration: {0}")]
    Failed(String),
    #[error("migration: api: {0}")]
    Kube(#[from] kube::Error),
    #[error("migration: launcher: {0}")]
    Launcher(#[from] kuvirt_launcher::protocol::ProtocolError),
    #[error("migration: {0}")]
    Io(#[from] std::io::Error),
}

fn failed(why: impl Into<String>) -> MigrationError {
    MigrationError::Failed(why.into())
}

/// This node's part in migrations, shared by its monitors.
pub struct Agent {
    client: kube::Client,
    node: String,
    /// Where a target listens: the Node's address (never 0.0.0.0).
    node_ip: IpAddr,
    certs: Vec<CertificateDer<'static>>,
    key_pem: String,
}

impl Agent {
    /// The agent of `node`, with the endpoint's identity from `state_dir`.
    pub fn new(
        client: kube::Client,
        node: &str,
        node_ip: IpAddr,
        state_dir: &Path,
    ) -> Result<Agent, MigrationError> {
        let (cert_pem, key_pem) = crate::endpoint::identity(&state_dir.join("handler"))
            .map_err(|e| failed(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| failed(format!("node certificate: {e}")))?;
        Ok(Agent {
            client,
            node: node.to_string(),
            node_ip,
            certs,
            key_pem,
        })
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, MigrationError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| failed(format!("node key: {e}")))
    }

    /// The certificate hash `node` published.
    async fn node_cert(&self, node: &str) -> Result<String, MigrationError> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        nodes
            .get(node)
            .await?
            .metadata
            .annotations
            .and_then(|a| a.get(CERT_ANNOTATION).cloned())
            .ok_or_else(|| failed(format!("node {node} published no certificate")))
    }

    /// TLS for a target's listener: only the source node's certificate is accepted.
    fn server_tls(&self, source_sha256: &str) -> Result<rustls::ServerConfig, MigrationError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Pinned {
            sha256: source_sha256.to_string(),
            algs: provider.signature_verification_algorithms,
        };
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.certs.clone(), self.key()?)
            .map_err(|e| failed(e.to_string()))
    }

    /// TLS for a source's relay: only the target node's certificate is accepted, and ours is
    /// presented.
    fn client_tls(&self, target_sha256: &str) -> Result<rustls::ClientConfig, MigrationError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Pinned {
            sha256: target_sha256.to_string(),
            algs: provider.signature_verification_algorithms,
        };
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key()?)
            .map_err(|e| failed(e.to_string()))
    }
}

/// Accepts exactly the certificate whose SHA-256 its node published (signatures are still
/// checked: only the holder of its key can present it). Both directions.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn matches(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let got = hex::encode(sha2::Sha256::digest(cert.as_ref()));
        if got.eq_ignore_ascii_case(&self.sha256) {
            Ok(())
        } else {
            Err(rustls::Error::General(
                "the peer's certificate is not the one its node published".into(),
            ))
        }
    }
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
        self.matches(end_entity)
            .map(|()| ServerCertVerified::assertion())
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

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.matches(end_entity)
            .map(|()| ClientCertVerified::assertion())
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

/// Relay tasks, stopped when dropped.
#[derive(Default)]
struct Relay(Vec<JoinHandle<()>>);

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The target's listeners: TLS on the node's address, each connection spliced to the launcher's
/// socket of the same kind.
async fn listen(
    agent: &Agent,
    source_sha256: &str,
    incoming: &Incoming,
) -> Result<(Relay, BTreeMap<String, i32>), MigrationError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(agent.server_tls(source_sha256)?));
    let mut relay = Relay::default();
    let mut ports = BTreeMap::new();
    let streams = [
        (Some(incoming.migration_socket.clone()), MEMORY_PORT),
        (incoming.block_socket.clone(), BLOCK_PORT),
    ];
    for (socket, kind) in streams {
        let Some(socket) = socket else { continue };
        let listener = TcpListener::bind((agent.node_ip, 0)).await?;
        ports.insert(listener.local_addr()?.port().to_string(), kind);
        let acceptor = acceptor.clone();
        relay.0.push(tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                        Ok(Ok(t)) => t,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "migration: refused a connection");
                            return;
                        }
                        Err(_) => return,
                    };
                    match UnixStream::connect(&socket).await {
                        Ok(unix) => splice(tls, unix).await,
                        Err(e) => tracing::warn!(socket = %socket.display(), error = %e,
                                                 "migration: the launcher does not listen"),
                    }
                });
            }
        }));
    }
    Ok((relay, ports))
}

/// Copies both ways until either side ends.
async fn splice(
    mut a: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    mut b: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
) {
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 * 1024, 256 * 1024).await;
}

/// The source's relays: unix sockets in the VM's directory (QEMU connects to them) to the
/// target's ports.
async fn relay_to(
    agent: &Agent,
    vm_dir: &Path,
    target: IpAddr,
    ports: &BTreeMap<String, i32>,
    target_sha256: &str,
) -> Result<(Relay, Incoming), MigrationError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(agent.client_tls(target_sha256)?));
    let mut relay = Relay::default();
    let mut memory: Option<PathBuf> = None;
    let mut block: Option<PathBuf> = None;
    for (port, kind) in ports {
        let port: u16 = port
            .parse()
            .map_err(|_| failed(format!("the target's port {port:?} is no port")))?;
        let path = vm_dir.join(format!("migration-{kind}.sock"));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // QEMU runs as its own user.
        std::fs::set_permissions(
            &path,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o666),
        )?;
        match *kind {
            MEMORY_PORT => memory = Some(path.clone()),
            BLOCK_PORT => block = Some(path.clone()),
            other => {
                return Err(failed(format!(
                    "the target offers an unknown stream {other}"
                )));
            }
        }
        let connector = connector.clone();
        relay.0.push(tokio::spawn(async move {
            while let Ok((unix, _)) = listener.accept().await {
                let connector = connector.clone();
                tokio::spawn(async move {
                    let tcp = match TcpStream::connect((target, port)).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(%target, port, error = %e, "migration: the target cannot be reached");
                            return;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let name = ServerName::try_from("kuvirt-handler").map(|n| n.to_owned());
                    let Ok(name) = name else { return };
                    match tokio::time::timeout(HANDSHAKE, connector.connect(name, tcp)).await {
                        Ok(Ok(tls)) => splice(unix, tls).await,
                        Ok(Err(e)) => {
                            tracing::warn!(%target, port, error = %e, "migration: TLS to the target failed")
                        }
                        Err(_) => tracing::warn!(%target, port, "migration: TLS to the target timed out"),
                    }
                });
            }
        }));
    }
    let migration_socket = memory.ok_or_else(|| failed("the target offers no memory stream"))?;
    Ok((
        relay,
        Incoming {
            migration_socket,
            block_socket: block,
        },
    ))
}

/// The launcher's migration options from the migration's configuration (KubeVirt's: the
/// completion timeout is per GiB of guest memory, counted in decimal GB).
pub fn options(vmi: &VirtualMachineInstance, cfg: &MigrationConfiguration) -> MigrateOptions {
    use kuvirt_api::QuantityExt;
    let d = &vmi.spec.domain;
    let memory = d
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| {
            d.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("memory"))
        })
        .and_then(|q| q.to_bytes().ok())
        .unwrap_or(0);
    let gb = memory.div_ceil(1_000_000_000).max(1);
    let secs = |v: Option<i64>| u64::try_from(v.unwrap_or(0)).unwrap_or(0);
    MigrateOptions {
        bandwidth: cfg
            .bandwidth_per_migration
            .as_ref()
            .and_then(|q| q.to_bytes().ok())
            .unwrap_or(0),
        completion_timeout_secs: secs(cfg.completion_timeout_per_gib).saturating_mul(gb),
        progress_timeout_secs: secs(cfg.progress_timeout),
        auto_converge: cfg.allow_auto_converge.unwrap_or(false),
        post_copy: cfg.allow_post_copy.unwrap_or(false),
        // KubeVirt applies maxDowntimeMs only with its downtime-tuning feature gate (which
        // kuvirt does not have); otherwise QEMU's own limit (300 ms) stays.
        max_downtime_ms: None,
    }
}

/// The pod a monitor follows, as migrations see it.
pub struct Role {
    pub ns: String,
    pub vmi_name: String,
    pub pod_name: String,
    pub pod_uid: String,
    pub vm_dir: PathBuf,
    /// The migration this pod is the target of (its `kubevirt.io/migrationJobUID` label).
    pub target_of: Option<String>,
}

/// One monitor's migration steps: what it has done for which migration.
#[derive(Default)]
pub struct Tracker {
    prepared: Option<(String, Relay)>,
    handed_over: Option<String>,
    started: Option<(String, Relay, JoinHandle<()>)>,
    abort_sent: Option<String>,
}

impl Tracker {
    /// Takes the step the VMI's migration state asks of this pod, if any. `interfaces` is what
    /// the VMI's `status.interfaces` are with this pod's address (a target reports them when it
    /// takes over).
    pub async fn step(
        &mut self,
        agent: &Arc<Agent>,
        role: &Role,
        vmi: &VirtualMachineInstance,
        state: Option<&VmState>,
        interfaces: serde_json::Value,
    ) {
        let Some(ms) = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref()) else {
            return;
        };
        let Some(uid) = ms.migration_uid.clone() else {
            return;
        };
        let r = if role.target_of.as_deref() == Some(uid.as_str()) {
            self.target_step(agent, role, vmi, ms, &uid, state, interfaces)
                .await
        } else if ms.source_pod.as_deref() == Some(role.pod_name.as_str())
            && ms.source_node.as_deref() == Some(agent.node.as_str())
        {
            self.source_step(agent, role, vmi, ms, &uid, state).await
        } else {
            Ok(())
        };
        if let Err(e) = r {
            tracing::warn!(vmi = %role.vmi_name, namespace = %role.ns, migration = %uid, error = %e, "migration step");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn target_step(
        &mut self,
        agent: &Arc<Agent>,
        role: &Role,
        vmi: &VirtualMachineInstance,
        ms: &VirtualMachineInstanceMigrationState,
        uid: &str,
        state: Option<&VmState>,
        interfaces: serde_json::Value,
    ) -> Result<(), MigrationError> {
        if ms.target_node.as_deref() != Some(agent.node.as_str()) {
            return Ok(());
        }
        if ms.is_over() {
            self.prepared = None;
            return Ok(());
        }
        let prepared = self.prepared.as_ref().is_some_and(|(u, _)| u == uid);
        if state == Some(&VmState::Incoming) && !prepared && ms.target_node_address.is_none() {
            let source = ms
                .source_node
                .as_deref()
                .ok_or_else(|| failed("no source node"))?;
            let source_sha = agent.node_cert(source).await?;
            let cfg = ms.migration_configuration.clone().unwrap_or_default();
            let post_copy = cfg.allow_post_copy.unwrap_or(false);
            let socket = role.vm_dir.join("launcher.sock");
            let incoming = match call(&socket, Request::PrepareIncoming { post_copy }).await? {
                Response::Incoming { incoming } => incoming,
                other => return Err(failed(format!("unexpected answer {other:?}"))),
            };
            let (relay, ports) = listen(agent, &source_sha, &incoming).await?;
            let now = kuvirt_apimachinery::meta::now();
            patch(
                agent,
                role,
                json!({"status": {"migrationState": {
                    "targetNodeAddress": agent.node_ip.to_string(),
                    "targetDirectMigrationNodePorts": ports,
                    "targetNodeDomainReadyTimestamp": now,
                }}}),
            )
            .await?;
            let shown: Vec<&String> = ports.keys().collect();
            event(
                agent,
                vmi,
                VmiEvent::PreparingTarget(format!(
                    "Migration Target is listening at {}, on ports: {}",
                    agent.node_ip,
                    shown
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
            )
            .await;
            self.prepared = Some((uid.to_string(), relay));
            return Ok(());
        }
        let node_now = vmi.status.as_ref().and_then(|s| s.node_name.as_deref());
        if state == Some(&VmState::Running)
            && self.handed_over.as_deref() != Some(uid)
            && node_now != Some(agent.node.as_str())
        {
            // The VM's state arrived and it runs here: take the VMI over.
            let now = kuvirt_apimachinery::meta::now();
            patch(
                agent,
                role,
                json!({
                    "metadata": {"labels": {"kubevirt.io/nodeName": agent.node,
                                            "kubevirt.io/migrationTargetNodeName": null}},
                    "status": {
                        "nodeName": agent.node,
                        "activePods": {role.pod_uid.clone(): agent.node},
                        "interfaces": interfaces,
                        "migrationTransport": "Unix",
                        "migrationState": {"completed": true, "endTimestamp": now,
                                           "targetNodeDomainDetected": true},
                    }
                }),
            )
            .await?;
            self.handed_over = Some(uid.to_string());
            self.prepared = None;
            event(
                agent,
                vmi,
                VmiEvent::Migrated(Ok(format!(
                    "The VirtualMachineInstance migrated to node {}.",
                    agent.node
                ))),
            )
            .await;
        }
        Ok(())
    }

    async fn source_step(
        &mut self,
        agent: &Arc<Agent>,
        role: &Role,
        vmi: &VirtualMachineInstance,
        ms: &VirtualMachineInstanceMigrationState,
        uid: &str,
        state: Option<&VmState>,
    ) -> Result<(), MigrationError> {
        let socket = role.vm_dir.join("launcher.sock");
        let started = self.started.as_ref().is_some_and(|(u, _, _)| u == uid);
        if ms.is_over() {
            // Failed while still copying (its target died, say): stop here too. A source that
            // sent everything is ended or resumed by its follow task (`await_takeover`).
            if started && ms.failed == Some(true) {
                if migrating(&socket).await {
                    let _ = call(&socket, Request::MigrateCancel).await;
                }
                self.started = None;
            }
            return Ok(());
        }
        if ms.abort_requested == Some(true) {
            if started && self.abort_sent.as_deref() != Some(uid) {
                call(&socket, Request::MigrateCancel).await?;
                self.abort_sent = Some(uid.to_string());
                patch(
                    agent,
                    role,
                    json!({"status": {"migrationState": {"abortStatus": "Aborting"}}}),
                )
                .await?;
                event(
                    agent,
                    vmi,
                    VmiEvent::Migrating("VirtualMachineInstance is aborting migration.".into()),
                )
                .await;
            }
            return Ok(());
        }
        if started
            || ms.start_timestamp.is_some()
            || !matches!(state, Some(VmState::Running | VmState::Paused))
        {
            return Ok(());
        }
        let (Some(address), Some(ports), Some(target)) = (
            ms.target_node_address.as_deref(),
            ms.target_direct_migration_node_ports.as_ref(),
            ms.target_node.as_deref(),
        ) else {
            return Ok(());
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| failed(format!("target address {address:?}")))?;
        let target_sha = agent.node_cert(target).await?;
        let (relay, to) = relay_to(agent, &role.vm_dir, address, ports, &target_sha).await?;
        let cfg = ms.migration_configuration.clone().unwrap_or_default();
        let options = options(vmi, &cfg);
        call(&socket, Request::Migrate { to, options }).await?;
        patch(
            agent,
            role,
            json!({"status": {"migrationState": {
                "startTimestamp": kuvirt_apimachinery::meta::now(), "mode": "PreCopy"}}}),
        )
        .await?;
        event(
            agent,
            vmi,
            VmiEvent::Migrating("VirtualMachineInstance is migrating.".into()),
        )
        .await;
        let progress = tokio::spawn(follow(
            agent.clone(),
            Role {
                ns: role.ns.clone(),
                vmi_name: role.vmi_name.clone(),
                pod_name: role.pod_name.clone(),
                pod_uid: role.pod_uid.clone(),
                vm_dir: role.vm_dir.clone(),
                target_of: None,
            },
            uid.to_string(),
            vmi.clone(),
        ));
        self.started = Some((uid.to_string(), relay, progress));
        Ok(())
    }
}

/// Whether the launcher has a migration copying.
async fn migrating(socket: &Path) -> bool {
    matches!(
        call(socket, Request::MigrationStatus).await,
        Ok(Response::Migration { info })
            if matches!(info.phase, MigrationPhase::CopyingDisks | MigrationPhase::Copying)
    )
}

/// Follows the source launcher's migration until it has sent everything or failed; a failure
/// (an abort included) is written to the VMI's migration state. Once all was sent, waits for
/// the target to take the VMI over (the source then ends) or to fail (the VM runs on here).
/// The VMI is read from the API: it leaves this node's watch when its node changes.
async fn follow(agent: Arc<Agent>, role: Role, uid: String, vmi: VirtualMachineInstance) {
    let socket = role.vm_dir.join("launcher.sock");
    let mut unreachable = 0;
    let info = loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        match call(&socket, Request::MigrationStatus).await {
            Ok(Response::Migration { info }) => {
                unreachable = 0;
                match info.phase {
                    MigrationPhase::Completed => return await_takeover(&agent, &role, &uid).await,
                    MigrationPhase::Confirmed => return,
                    MigrationPhase::Failed => break info,
                    MigrationPhase::CopyingDisks | MigrationPhase::Copying => {}
                }
            }
            _ => {
                unreachable += 1;
                if unreachable >= 10 {
                    tracing::warn!(vmi = %role.vmi_name, "migration: the source launcher stopped answering");
                    return;
                }
            }
        }
    };
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(agent.client.clone(), &role.ns);
    let current = vmis.get_opt(&role.vmi_name).await.ok().flatten();
    let Some(ms) = current
        .as_ref()
        .and_then(|v| v.status.as_ref()?.migration_state.as_ref())
        .filter(|ms| ms.is_for(&uid))
    else {
        return;
    };
    let why = info
        .failure
        .clone()
        .unwrap_or_else(|| "the migration failed".into());
    // The outcome, unless the controller wrote one already (a target that went away first:
    // a cancel deletes it); an abort's result in any case (the guest runs on here).
    let over = ms.is_over();
    let mut state = if over {
        json!({})
    } else {
        json!({"failed": true, "completed": true,
               "endTimestamp": kuvirt_apimachinery::meta::now(),
               "failureReason": why})
    };
    let settled = matches!(
        ms.abort_status,
        Some(MigrationAbortStatus::Succeeded | MigrationAbortStatus::Failed)
    );
    if ms.abort_requested == Some(true) && !settled {
        state["abortStatus"] = json!(if info.aborted { "Succeeded" } else { "Failed" });
    }
    if state.as_object().is_some_and(|o| !o.is_empty())
        && let Err(e) = patch(&agent, &role, json!({"status": {"migrationState": state}})).await
    {
        tracing::warn!(vmi = %role.vmi_name, error = %e, "migration: reporting a failure");
    }
    if over {
        return;
    }
    event(
        &agent,
        &vmi,
        VmiEvent::Migrated(Err(format!(
            "VirtualMachineInstance migration uid {uid} failed. reason:{why}"
        ))),
    )
    .await;
}

/// The source after everything was sent: ends once the target has the VMI, runs the guest here
/// again if the migration is marked failed (the target died before taking over).
async fn await_takeover(agent: &Agent, role: &Role, uid: &str) {
    let socket = role.vm_dir.join("launcher.sock");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(agent.client.clone(), &role.ns);
    loop {
        let vmi = match vmis.get_opt(&role.vmi_name).await {
            Ok(Some(v)) => v,
            // Deleted: the monitor stops the launcher.
            Ok(None) => return,
            Err(_) => {
                tokio::time::sleep(PROGRESS_EVERY).await;
                continue;
            }
        };
        let status = vmi.status.unwrap_or_default();
        let Some(ms) = status.migration_state.filter(|m| m.is_for(uid)) else {
            // Another migration took over the state: this one is over; run on here.
            let _ = call(&socket, Request::MigrateCancel).await;
            return;
        };
        if ms.failed == Some(true) {
            if let Err(e) = call(&socket, Request::MigrateCancel).await {
                tracing::warn!(vmi = %role.vmi_name, error = %e, "migration: resuming the source");
            }
            return;
        }
        let moved = status.node_name.as_deref().is_some_and(|n| n != agent.node);
        if ms.completed == Some(true) && moved {
            if let Err(e) = call(&socket, Request::MigrateConfirm).await {
                tracing::warn!(vmi = %role.vmi_name, error = %e, "migration: ending the source");
            }
            return;
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

async fn patch(agent: &Agent, role: &Role, body: serde_json::Value) -> Result<(), MigrationError> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(agent.client.clone(), &role.ns);
    vmis.patch(&role.vmi_name, &PatchParams::default(), &Patch::Merge(body))
        .await?;
    Ok(())
}

async fn event(agent: &Agent, vmi: &VirtualMachineInstance, what: VmiEvent) {
    record(&agent.client, &agent.node, &Involved::from(vmi), what).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_follow_the_configuration() {
        let vmi: VirtualMachineInstance = serde_json::from_value(json!({
            "spec": {"domain": {"resources": {"requests": {"memory": "1536Mi"}}}}
        }))
        .unwrap_or_default();
        let cfg = MigrationConfiguration::kubevirt_defaults();
        let o = options(&vmi, &cfg);
        // 1536 MiB is 1.61 GB: two GB at 150 s each.
        assert_eq!(o.completion_timeout_secs, 300);
        assert_eq!(o.progress_timeout_secs, 150);
        assert_eq!(o.bandwidth, 0);
        assert!(!o.auto_converge && !o.post_copy);
        let cfg = MigrationConfiguration {
            bandwidth_per_migration: Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "64Mi".into(),
            )),
            allow_post_copy: Some(true),
            ..cfg
        };
        let o = options(&vmi, &cfg);
        assert_eq!(o.bandwidth, 64 << 20);
        assert!(o.post_copy);
    }
}
