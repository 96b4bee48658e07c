//! Embedded mode's pod runner: the launcher pods bound to this node become `kuvirt launcher`
//! processes, each in its own pod sandbox (network namespace with an IP from the node's pod CIDR,
//! cgroup: [`crate::sandbox`]); the handler reports the pod and the VMI from what the launcher
//! says, stops the launcher (ACPI, grace period) when the pod goes away, and removes the sandbox
//! once the launcher has exited. Launchers that outlived a handler restart are adopted together
//! with their sandboxes. A simulated node ([`Runtime::Simulated`]) runs the same code with an
//! in-process stand-in for each launcher and only an address for a sandbox.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::VirtualMachineInstanceNetworkInterface;
use kuvirt_launcher::protocol::{ProtocolError, Request, Response, call, watch};
use kuvirt_launcher::vm::VmState;
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::Error;
use crate::addresses;
use crate::migration;
use crate::nodevmis::NodeVmis;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::ipam::{Cidr, Ipam};
use crate::sandbox::{self, Sandbox, SandboxConfig, SandboxError, apiproxy};

// Declared here rather than in lib.rs, which belongs to the agent's wiring.
#[path = "events.rs"]
pub mod events;

use events::{Involved, VmiEvent, record};

/// What the handler needs to start launchers.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub node: String,
    /// The `kuvirt` binary (the handler's own executable).
    pub exe: PathBuf,
    pub kubeconfig: PathBuf,
    /// Images and VM directories.
    pub state_dir: PathBuf,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// The node's pod network's name: bridge `NAME0`, nftables table `NAME`, namespaces
    /// `NAME-<uid>` ("kuvirt"; tests give each server its own).
    pub pod_network: String,
    /// Real launchers, or a simulated node's stand-ins.
    pub runtime: Runtime,
}

/// How a node runs its launcher pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// `kuvirt launcher` processes running QEMU, each in its pod's sandbox.
    #[default]
    Launcher,
    /// A simulated node's ([`crate::simulated`]): an in-process stand-in answers the launcher
    /// protocol, and a pod's sandbox is only its address from the node's IPAM (no image pulls,
    /// no namespace, veth, cgroup, bridge or NAT).
    Simulated,
}

/// A pod's sandbox as a runtime makes it: its address, and for a launcher the sandbox itself.
type MadeSandbox = (Ipv4Addr, Option<Sandbox>);

impl Runtime {
    /// Makes pod `uid`'s sandbox with the address `want` asks for.
    fn create_sandbox(
        self,
        cfg: &SandboxConfig,
        cidr: Cidr,
        uid: &str,
        limits: &Limits,
        want: &sandbox::ipam::IpRequest,
    ) -> Result<MadeSandbox, SandboxError> {
        match self {
            Runtime::Launcher => {
                sandbox::create(cfg, cidr, uid, limits, want).map(|sb| (sb.ip, Some(sb)))
            }
            Runtime::Simulated => Ipam::new(&cfg.state_dir, cidr)
                .allocate_as(uid, want)
                .map(|ip| (ip, None)),
        }
    }

    /// Pod `uid`'s existing sandbox, if any.
    fn find_sandbox(
        self,
        cfg: &SandboxConfig,
        cidr: Cidr,
        uid: &str,
    ) -> Result<Option<MadeSandbox>, SandboxError> {
        match self {
            Runtime::Launcher => sandbox::find(cfg, uid).map(|f| f.map(|sb| (sb.ip, Some(sb)))),
            Runtime::Simulated => Ipam::new(&cfg.state_dir, cidr)
                .lookup(uid)
                .map(|ip| ip.map(|ip| (ip, None))),
        }
    }

    /// Removes pod `uid`'s sandbox once nothing runs in it any more (waiting up to `wait`);
    /// whether it went.
    fn remove_sandbox(
        self,
        cfg: &SandboxConfig,
        cidr: Cidr,
        uid: &str,
        wait: Duration,
    ) -> Result<bool, SandboxError> {
        match self {
            Runtime::Launcher => {
                if !sandbox::idle_within(cfg, uid, wait) {
                    return Ok(false);
                }
                sandbox::teardown(cfg, uid).map(|()| true)
            }
            Runtime::Simulated => Ipam::new(&cfg.state_dir, cidr).release(uid).map(|_| true),
        }
    }

    /// The pods that hold a sandbox. A simulated node looks in its own pod CIDR only: one agent
    /// runs many simulated nodes over one state directory.
    fn sandboxes(self, cfg: &SandboxConfig, cidr: Cidr) -> Result<Vec<String>, SandboxError> {
        match self {
            Runtime::Launcher => sandbox::list(cfg),
            Runtime::Simulated => Ok(Ipam::new(&cfg.state_dir, cidr)
                .owners()?
                .into_iter()
                .map(|(_, uid)| uid)
                .collect()),
        }
    }
}

/// One launcher the handler started (its monitor task owns the process).
struct Launcher {
    vm_dir: PathBuf,
    /// The launcher's pid when we started it (an adopted one is reached by its socket only).
    pid: Option<u32>,
    /// Its VMI, for events.
    vmi: Involved,
    /// A graceful shutdown was asked for (its event is recorded once).
    shutdown_signaled: bool,
    _monitor: tokio::task::JoinHandle<()>,
}

type Launchers = Arc<Mutex<HashMap<String, Launcher>>>;

/// The node's pod network, known once the node has its pod CIDR.
#[derive(Clone, Debug)]
struct PodNet {
    sandbox: SandboxConfig,
    cidr: Cidr,
    /// The pod's `hostIP`.
    host_ip: IpAddr,
    /// The API server, when it is on the loopback (pods reach it through a forwarder).
    api_loopback: Option<SocketAddr>,
    runtime: Runtime,
}

/// Runs a blocking sandbox operation off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, sandbox::SandboxError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Pod(format!("sandbox task: {e}")))?
        .map_err(|e| Error::Pod(format!("sandbox: {e}")))
}

/// Waits until the node controller has given this node a pod CIDR, then sets up the node's pod
/// network (bridge, forwarding, NAT), retrying until it works.
async fn pod_network(client: &kube::Client, cfg: &RunnerConfig) -> PodNet {
    let nodes: Api<Node> = Api::all(client.clone());
    let sandbox = SandboxConfig {
        bridge: format!("{}0", cfg.pod_network),
        nft_table: cfg.pod_network.clone(),
        netns_prefix: cfg.pod_network.clone(),
        ..SandboxConfig::new(&cfg.state_dir)
    };
    let mut told = false;
    let (cidr, node) = loop {
        let node = nodes.get_opt(&cfg.node).await.ok().flatten();
        let cidr = node
            .as_ref()
            .and_then(|n| n.spec.as_ref())
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| c.parse::<Cidr>().ok());
        if let (Some(c), Some(n)) = (cidr, node) {
            break (c, n);
        }
        if !told {
            tracing::info!(node = %cfg.node, "waiting for the node's pod CIDR");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // A simulated node has no bridge, forwarding or NAT to set up.
    if cfg.runtime == Runtime::Launcher {
        loop {
            let (sb, c) = (sandbox.clone(), cidr);
            match blocking(move || sandbox::setup_node(&sb, c)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = %e, %cidr, "setting up the node's pod network; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
        tracing::info!(node = %cfg.node, %cidr, bridge = %sandbox.bridge, "pod network ready");
    }
    let internal = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .and_then(|a| a.address.parse::<IpAddr>().ok())
        // A loopback InternalIP is no address for pods: the bridge's host address instead (a
        // simulated node has no bridge, and its pods reach nothing anyway).
        .filter(|a| !a.is_loopback() || cfg.runtime == Runtime::Simulated);
    let bridge = sandbox.bridge.clone();
    let host_ip = match internal {
        Some(ip) => ip,
        None => tokio::task::spawn_blocking(move || sandbox::net::host_ipv4(&bridge))
            .await
            .ok()
            .flatten()
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4),
    };
    PodNet {
        // A simulated pod reaches nothing: it has no namespace of its own.
        api_loopback: apiproxy::loopback_server(&cfg.kubeconfig)
            .filter(|_| cfg.runtime == Runtime::Launcher),
        sandbox,
        cidr,
        host_ip,
        runtime: cfg.runtime,
    }
}

/// Lets the pod reach a loopback API server at the same address from inside its namespace.
fn api_forwarder(net: &PodNet, sb: &Sandbox) -> Result<Option<JoinHandle<()>>, Error> {
    let Some(api) = net.api_loopback else {
        return Ok(None);
    };
    let listener = apiproxy::listen_in_netns(&sb.netns, api)
        .map_err(|e| Error::Pod(format!("api forwarder in {}: {e}", sb.netns)))?;
    apiproxy::forward(listener, api)
        .map(Some)
        .map_err(|e| Error::Pod(format!("api forwarder in {}: {e}", sb.netns)))
}

/// Removes the sandboxes of pods this agent no longer runs (their launchers ended while it was
/// away). One whose cgroup still has processes is left alone, and so is one whose launcher is
/// being started (after a relist, every pod's start runs at once).
async fn collect_sandboxes(
    net: &PodNet,
    launchers: &Launchers,
    starting: &Mutex<std::collections::HashSet<String>>,
) {
    let (cfg, cidr, runtime) = (net.sandbox.clone(), net.cidr, net.runtime);
    let Ok(uids) = blocking({
        let cfg = cfg.clone();
        move || runtime.sandboxes(&cfg, cidr)
    })
    .await
    else {
        return;
    };
    for uid in uids {
        // `starting` first: a started launcher enters `launchers` before it leaves `starting`.
        if starting.lock().await.contains(&uid) || launchers.lock().await.contains_key(&uid) {
            continue;
        }
        let cfg = cfg.clone();
        let id = uid.clone();
        let r = blocking(move || runtime.remove_sandbox(&cfg, cidr, &id, Duration::ZERO)).await;
        match r {
            Ok(true) => tracing::info!(pod_uid = %uid, "removed the sandbox of a finished pod"),
            Ok(false) => {}
            Err(e) => tracing::warn!(pod_uid = %uid, error = %e, "removing a stale sandbox"),
        }
    }
}

/// Runs launcher pods for this node until the watch ends.
pub async fn run(client: kube::Client, cfg: RunnerConfig) -> Result<(), Error> {
    let net = pod_network(&client, &cfg).await;
    // Live migrations to and from this node (a simulated node does not migrate).
    let agent = match cfg.runtime {
        Runtime::Launcher => {
            match migration::Agent::new(client.clone(), &cfg.node, net.host_ip, &cfg.state_dir) {
                Ok(a) => Some(Arc::new(a)),
                Err(e) => {
                    tracing::warn!(error = %e, "this node cannot take part in migrations");
                    None
                }
            }
        }
        Runtime::Simulated => None,
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", cfg.node))
        .labels("kubevirt.io=virt-launcher");
    let launchers: Launchers = Arc::default();
    // Pods whose launcher is being started (images pulled, sandbox made) in a task of its own,
    // so one slow pull holds up nothing else; and those of them that went meanwhile.
    let starting: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let went: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let mut seen = std::collections::HashSet::new();
    // The VMIs on this node, watched once for every monitor: a GET per VM and round would
    // grow with the VMs (2 reads a second per VM).
    let (vmi_cache, vmi_watch) = NodeVmis::watch(&client, &cfg.node);
    // Routes to the other nodes' pods and to guests that moved live (a simulated node has no
    // network of its own).
    let routes = (cfg.runtime == Runtime::Launcher).then(|| {
        tokio::spawn(crate::routes::run(
            client.clone(),
            crate::routes::RoutesConfig {
                node: cfg.node.clone(),
                cidr: net.cidr,
                sandbox: net.sandbox.clone(),
            },
            vmi_cache.clone(),
        ))
    });
    let mut events = watcher(pods, wc).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        };
        match ev {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                seen.insert(uid.clone());
                let final_phase = matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if pod.metadata.deletion_timestamp.is_some() {
                    stop_or_mark(&client, &cfg.node, &launchers, &starting, &went, &uid).await;
                } else if !final_phase
                    && !launchers.lock().await.contains_key(&uid)
                    && starting.lock().await.insert(uid.clone())
                {
                    let (client, cfg, net) = (client.clone(), cfg.clone(), net.clone());
                    let vmis = vmi_cache.clone();
                    let agent = agent.clone();
                    let (launchers, starting, went) =
                        (launchers.clone(), starting.clone(), went.clone());
                    tokio::spawn(async move {
                        match start(&client, &cfg, &net, &pod, &vmis, agent, launchers.clone())
                            .await
                        {
                            Ok(l) => {
                                launchers.lock().await.insert(uid.clone(), l);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "starting a launcher failed");
                                if let Some(vmi) = vmi_of_pod(&pod) {
                                    record(
                                        &client,
                                        &cfg.node,
                                        &vmi,
                                        VmiEvent::SyncFailed(e.to_string()),
                                    )
                                    .await;
                                }
                            }
                        }
                        starting.lock().await.remove(&uid);
                        // Its pod went while it was starting: stop it now.
                        if went.lock().await.remove(&uid) {
                            stop(&client, &cfg.node, &launchers, &uid, None).await;
                        }
                    });
                }
            }
            watcher::Event::Delete(pod) => {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                stop_or_mark(&client, &cfg.node, &launchers, &starting, &went, uid).await;
            }
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitDone => {
                // A (re)list no longer shows these pods: they went while we were not watching.
                let mut gone: Vec<String> = launchers
                    .lock()
                    .await
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                gone.extend(
                    starting
                        .lock()
                        .await
                        .iter()
                        .filter(|k| !seen.contains(*k))
                        .cloned(),
                );
                for uid in gone {
                    stop_or_mark(&client, &cfg.node, &launchers, &starting, &went, &uid).await;
                }
                collect_sandboxes(&net, &launchers, &starting).await;
            }
        }
    }
    vmi_watch.abort();
    if let Some(r) = routes {
        r.abort();
    }
    Ok(())
}

/// Stops the launcher of a pod that went, or, while it is still being started, marks it so the
/// starting task stops it when it is up.
async fn stop_or_mark(
    client: &kube::Client,
    node: &str,
    launchers: &Launchers,
    starting: &Mutex<std::collections::HashSet<String>>,
    went: &Mutex<std::collections::HashSet<String>>,
    uid: &str,
) {
    let starting = starting.lock().await;
    if starting.contains(uid) {
        went.lock().await.insert(uid.to_string());
        return;
    }
    drop(starting);
    stop(client, node, launchers, uid, None).await;
}

/// The VMI a launcher pod is for (its annotation and label), without a resourceVersion.
fn vmi_of_pod(pod: &Pod) -> Option<Involved> {
    Some(Involved {
        namespace: pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: pod
            .metadata
            .annotations
            .as_ref()?
            .get("kubevirt.io/domain")?
            .clone(),
        uid: pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubevirt.io/created-by"))
            .cloned(),
        resource_version: None,
    })
}

/// `known` with the VMI's current resourceVersion when it still is that VMI.
async fn current(client: &kube::Client, known: &Involved) -> Involved {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &known.namespace);
    match vmis.get_opt(&known.name).await {
        Ok(Some(v)) if v.metadata.uid == known.uid => Involved::from(&v),
        _ => known.clone(),
    }
}

/// Asks the launcher of pod `uid` to shut its VM down gracefully (the launcher kills it after
/// the grace period): `grace`, else the VMI's current one (a forced stop or restart may have
/// shortened it), else the one the launcher started with. Whether the launcher was asked (or,
/// still starting, signalled).
async fn stop(
    client: &kube::Client,
    node: &str,
    launchers: &Launchers,
    uid: &str,
    grace: Option<u64>,
) -> bool {
    let found = launchers
        .lock()
        .await
        .get(uid)
        .map(|l| (l.vm_dir.clone(), l.pid, l.vmi.clone(), l.shutdown_signaled));
    let Some((dir, pid, vmi, signaled)) = found else {
        return false;
    };
    let grace = match grace {
        Some(g) => Some(g),
        None => vmi_grace(client, &vmi).await,
    };
    let asked = call(
        &dir.join("launcher.sock"),
        Request::Shutdown {
            grace_period_seconds: grace,
        },
    )
    .await;
    if asked.is_ok() && !signaled {
        if let Some(l) = launchers.lock().await.get_mut(uid) {
            l.shutdown_signaled = true;
        }
        record(
            client,
            node,
            &current(client, &vmi).await,
            VmiEvent::ShuttingDown,
        )
        .await;
    }
    if asked.is_ok() {
        return true;
    }
    // Still starting (no socket yet): SIGTERM, which the launcher turns into a clean stop.
    match pid.and_then(|p| i32::try_from(p).ok()) {
        Some(pid) => nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .is_ok(),
        None => false,
    }
}

/// The current grace period of the VMI `known` names, if it still is that VMI.
async fn vmi_grace(client: &kube::Client, known: &Involved) -> Option<u64> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &known.namespace);
    let v = vmis.get_opt(&known.name).await.ok()??;
    if v.metadata.uid != known.uid {
        return None;
    }
    v.spec
        .termination_grace_period_seconds
        .and_then(|g| u64::try_from(g).ok())
}

async fn start(
    client: &kube::Client,
    cfg: &RunnerConfig,
    net: &PodNet,
    pod: &Pod,
    vmis: &NodeVmis,
    agent: Option<Arc<migration::Agent>>,
    launchers: Launchers,
) -> Result<Launcher, Error> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let vmi = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubevirt.io/domain"))
        .cloned()
        .ok_or_else(|| Error::Pod(format!("pod {ns}/{pod_name} names no VMI")))?;
    let vmi_uid = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubevirt.io/created-by"))
        .cloned()
        .ok_or_else(|| Error::Pod(format!("pod {ns}/{pod_name} names no VMI uid")))?;
    let vm_dir = vm_dir(&cfg.state_dir, &ns, &vmi, &vmi_uid);
    // A live migration's target pod: its launcher waits for the VM's state.
    let target_of = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(kuvirt_api::v1::MIGRATION_JOB_LABEL))
        .cloned();
    // A launcher that outlived an earlier handler (VMs survive handler restarts) is adopted, not
    // started again.
    if call(&vm_dir.join("launcher.sock"), Request::Status)
        .await
        .is_ok()
    {
        tracing::info!(vmi = %vmi, namespace = %ns, "adopting a running launcher");
        // Its sandbox is reused as it is (a launcher from before sandboxes has none; a
        // simulated one has its address only).
        let runtime = cfg.runtime;
        let found = blocking({
            let (sb, cidr, uid) = (net.sandbox.clone(), net.cidr, uid.clone());
            move || runtime.find_sandbox(&sb, cidr, &uid)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "looking up an adopted launcher's sandbox");
            None
        });
        let proxy = match &found {
            Some((_, Some(sb))) => api_forwarder(net, sb).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "adopted launcher");
                None
            }),
            _ => None,
        };
        let involved = Involved {
            namespace: ns.clone(),
            name: vmi.clone(),
            uid: Some(vmi_uid.clone()),
            resource_version: None,
        };
        let monitor = tokio::spawn(monitor(
            client.clone(),
            Watched {
                node: cfg.node.clone(),
                ns,
                vmi_name: vmi,
                vmi_uid,
                pod_name,
                uid,
                vm_dir: vm_dir.clone(),
                vmis: vmis.clone(),
                agent,
                target_of,
            },
            None,
            PodSandbox {
                cfg: net.sandbox.clone(),
                cidr: net.cidr,
                runtime,
                ip: found.map(|(ip, _)| ip),
                proxy,
            },
            launchers,
        ));
        return Ok(Launcher {
            vm_dir,
            pid: None,
            vmi: involved,
            shutdown_signaled: false,
            _monitor: monitor,
        });
    }
    std::fs::create_dir_all(&vm_dir)
        .map_err(|e| Error::Pod(format!("{}: {e}", vm_dir.display())))?;
    let log = std::fs::File::create(vm_dir.join("launcher.log"))
        .map_err(|e| Error::Pod(format!("{}: {e}", vm_dir.display())))?;
    // The kubelet's part: the VM's images are pulled here, in the node's network, before the
    // launcher starts in its sandbox (where it only reads the node's image cache).
    let vmi_obj = match pull_images(client, cfg, &ns, &vmi, &vmi_uid).await {
        Ok(v) => v,
        Err((reason, why)) => {
            use std::io::Write as _;
            let _ = writeln!(&log, "error: {why}");
            if let Some(reason) = reason {
                fail_before_start(client, &ns, &pod_name, &vmi, &vmi_uid, reason, &why).await;
            }
            return Err(Error::Pod(format!("{ns}/{vmi}: {why}")));
        }
    };
    let limits = Limits::from_pod(pod);
    // The pod IP: the VM's sticky or requested one (`kuvirt.io/ip`), else a new one no other VM
    // keeps.
    let mut want = match addresses::request(client, pod, &ns, &vmi_obj).await {
        Ok(w) => w,
        Err(why) => {
            return Err(refuse_address(client, &log, &ns, &pod_name, &vmi, &vmi_uid, &why).await);
        }
    };
    // A migration target of a bridge-bound guest takes over the guest's address, from whichever
    // node's pod CIDR it comes (the routes follow once this node takes the VMI over).
    let moving = match addresses::requested(pod, kuvirt_api::v1::MIGRATION_IP_ANNOTATION) {
        Ok(m) => m,
        Err(why) => {
            return Err(refuse_address(client, &log, &ns, &pod_name, &vmi, &vmi_uid, &why).await);
        }
    };
    let cidr = match moving {
        Some(ip) => match addresses::home_cidr(client, ip, net.cidr).await {
            Ok(c) => {
                want.address = Some(ip);
                want.prefer = None;
                c
            }
            Err(why) => {
                return Err(
                    refuse_address(client, &log, &ns, &pod_name, &vmi, &vmi_uid, &why).await,
                );
            }
        },
        None => net.cidr,
    };
    let runtime = cfg.runtime;
    let created = tokio::task::spawn_blocking({
        let (sbc, uid) = (net.sandbox.clone(), uid.clone());
        move || runtime.create_sandbox(&sbc, cidr, &uid, &limits, &want)
    })
    .await
    .map_err(|e| Error::Pod(format!("sandbox task: {e}")))?;
    let (ip, sb) = match created {
        Ok(made) => made,
        Err(e @ sandbox::SandboxError::IpRequest { .. }) => {
            let why = e.to_string();
            return Err(refuse_address(client, &log, &ns, &pod_name, &vmi, &vmi_uid, &why).await);
        }
        Err(e) => return Err(Error::Pod(format!("sandbox: {e}"))),
    };
    // Another node's address leaves this node masqueraded, like the node's own pods' (the
    // target's launcher talks to the API server long before the guest moves here).
    if sb.is_some() && !net.cidr.contains(ip) {
        let sbc = net.sandbox.clone();
        if let Err(e) = blocking(move || sandbox::net::add_hosted(&sbc, ip)).await {
            tracing::warn!(error = %e, %ip, "masquerading a migration target's address");
        }
    }
    let undo = |e: Error| {
        let (sbc, cidr, uid) = (net.sandbox.clone(), net.cidr, uid.clone());
        async move {
            let removed = blocking(move || {
                runtime.remove_sandbox(&sbc, cidr, &uid, Duration::ZERO)?;
                Ok(())
            })
            .await;
            if let Err(t) = removed {
                tracing::warn!(error = %t, "removing the sandbox of a launcher that did not start");
            }
            e
        }
    };
    // A migration target's address is not the VM's until it takes over.
    if target_of.is_none() {
        addresses::record(client, &ns, &vmi_obj, ip).await;
    }
    let proxy = match sb.as_ref().map(|sb| api_forwarder(net, sb)).transpose() {
        Ok(p) => p.flatten(),
        Err(e) => return Err(undo(e).await),
    };
    // The launcher: `kuvirt launcher` in the pod's sandbox, or a simulated node's stand-in.
    let launched = match &sb {
        Some(sb) => {
            let target = target_of.is_some();
            spawn_launcher(cfg, sb, &ns, &vmi, &vmi_uid, &vm_dir, target, log).map(Some)
        }
        None => crate::simulated::serve(&vm_dir, crate::simulated::starts_paused(&vmi_obj))
            .map(|_| None)
            .map_err(|e| Error::Pod(format!("simulated launcher in {}: {e}", vm_dir.display()))),
    };
    let child = match launched {
        Ok(c) => c,
        Err(e) => {
            if let Some(p) = proxy {
                p.abort();
            }
            return Err(undo(e).await);
        }
    };
    let pid = child.as_ref().and_then(tokio::process::Child::id);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod_ip = ip.to_string();
    let pod_ip6 = sandbox::ipam::ipv6_of(ip).to_string();
    let host_ip = net.host_ip.to_string();
    // Reported best effort: the launcher runs either way, and the monitor is what matters.
    let _ = pods
        .patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                "podIP": pod_ip, "podIPs": [{"ip": pod_ip}, {"ip": pod_ip6}],
                "startTime": kuvirt_apimachinery::meta::now(),
                "containerStatuses": [{"name": "compute", "ready": true, "restartCount": 0,
                                       "image": "kuvirt", "imageID": "",
                                       "state": {"running": {"startedAt": kuvirt_apimachinery::meta::now()}}}],
            }})),
        )
        .await;
    // KubeVirt's virt-handler says so once it has defined the domain; ours once the launcher runs.
    let involved = current(
        client,
        &Involved {
            namespace: ns.clone(),
            name: vmi.clone(),
            uid: Some(vmi_uid.clone()),
            resource_version: None,
        },
    )
    .await;
    record(client, &cfg.node, &involved, VmiEvent::Created).await;
    let monitor = tokio::spawn(monitor(
        client.clone(),
        Watched {
            node: cfg.node.clone(),
            ns,
            vmi_name: vmi,
            vmi_uid,
            pod_name,
            uid,
            vm_dir: vm_dir.clone(),
            vmis: vmis.clone(),
            agent,
            target_of,
        },
        child,
        PodSandbox {
            cfg: net.sandbox.clone(),
            cidr: net.cidr,
            runtime,
            ip: Some(ip),
            proxy,
        },
        launchers,
    ));
    Ok(Launcher {
        vm_dir,
        pid,
        vmi: involved,
        shutdown_signaled: false,
        _monitor: monitor,
    })
}

/// Starts `kuvirt launcher` for a pod in its sandbox: `ip netns exec` execs it (same pid) in the
/// pod's namespace, with the pod's resolv.conf mounted over /etc/resolv.conf; its output goes to
/// `log`.
#[allow(clippy::too_many_arguments)]
fn spawn_launcher(
    cfg: &RunnerConfig,
    sb: &Sandbox,
    ns: &str,
    vmi: &str,
    vmi_uid: &str,
    vm_dir: &std::path::Path,
    migration_target: bool,
    log: std::fs::File,
) -> Result<tokio::process::Child, Error> {
    let log2 = log.try_clone().map_err(|e| Error::Pod(e.to_string()))?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(sb.exec_prefix()).arg(&cfg.exe).arg("launcher");
    for dir in sb.launcher_cgroups() {
        cmd.arg("--cgroup").arg(dir);
    }
    cmd.arg("--kubeconfig")
        .arg(&cfg.kubeconfig)
        .args([
            "--namespace",
            ns,
            "--vmi",
            vmi,
            "--vmi-uid",
            vmi_uid,
            "--accel",
            &cfg.accel,
        ])
        .arg("--vm-dir")
        .arg(vm_dir)
        .arg("--state-dir")
        .arg(&cfg.state_dir)
        .arg("--images-pulled")
        .args(migration_target.then_some("--migration-target"))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: the launcher (and its VM) outlive signals meant for the handler.
        .process_group(0)
        .spawn()
        .map_err(|e| {
            Error::Pod(format!(
                "ip netns exec {} {}: {e}",
                sb.netns,
                cfg.exe.display()
            ))
        })
}

/// Pulls the images of the VMI this pod runs (its current object, if it is still the same one);
/// returns that object. A simulated node reads the VMI and pulls nothing.
async fn pull_images(
    client: &kube::Client,
    cfg: &RunnerConfig,
    ns: &str,
    vmi: &str,
    vmi_uid: &str,
) -> Result<VirtualMachineInstance, (Option<&'static str>, String)> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    let v = vmis
        .get(vmi)
        .await
        .map_err(|e| (Some("SyncFailed"), format!("reading the VMI: {e}")))?;
    if v.metadata.uid.as_deref() != Some(vmi_uid) {
        // A newer VMI of the same name: this pod is stale, nothing to report on.
        return Err((None, "the VMI was replaced".into()));
    }
    if cfg.runtime == Runtime::Launcher {
        crate::images::pull(client, &cfg.state_dir, &v)
            .await
            .map_err(|e| (Some("ErrImagePull"), e))?;
    }
    Ok(v)
}

/// A pod whose requested address cannot be had fails with the reason, as a failed pull does.
async fn refuse_address(
    client: &kube::Client,
    log: &std::fs::File,
    ns: &str,
    pod_name: &str,
    vmi: &str,
    vmi_uid: &str,
    why: &str,
) -> Error {
    use std::io::Write as _;
    let _ = writeln!(&*log, "error: {why}");
    fail_before_start(client, ns, pod_name, vmi, vmi_uid, "PodIPUnavailable", why).await;
    Error::Pod(format!("{ns}/{vmi}: {why}"))
}

/// A pod that never got to start its launcher: the pod and its VMI fail with `reason` (the VM
/// controller's start-failure backoff decides when to try again).
async fn fail_before_start(
    client: &kube::Client,
    ns: &str,
    pod_name: &str,
    vmi: &str,
    vmi_uid: &str,
    reason: &str,
    message: &str,
) {
    // The VMI first: its reason must be there before the pod's failure is seen (the VMI
    // controller would fail the VMI with a reason of its own).
    let now = kuvirt_apimachinery::meta::now();
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    if vmis
        .get(vmi)
        .await
        .is_ok_and(|v| v.metadata.uid.as_deref() == Some(vmi_uid))
    {
        let not_ready = json!([{"type": "Ready", "status": "False", "lastProbeTime": null,
                                "lastTransitionTime": now, "reason": reason, "message": message}]);
        let _ = vmis
            .patch(
                vmi,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"phase": "Failed", "reason": reason,
                                                "conditions": not_ready}})),
            )
            .await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods
        .patch_status(
            pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Failed", "reason": reason, "message": message,
                "containerStatuses": [{"name": "compute", "ready": false, "restartCount": 0,
                                       "image": "kuvirt", "imageID": "",
                                       "state": {"terminated": {"exitCode": 1, "reason": reason,
                                                                 "message": message,
                                                                 "finishedAt": now}}}],
            }})),
        )
        .await;
}

/// The directory of one VMI's launcher: one per VMI (not per name), so a restarted VM's new VMI
/// never meets the old one's launcher, socket or lock.
pub fn vm_dir(state_dir: &std::path::Path, ns: &str, vmi: &str, vmi_uid: &str) -> PathBuf {
    let short: String = vmi_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    state_dir
        .join("vms")
        .join(ns)
        .join(format!("{vmi}-{short}"))
}

/// How an adopted launcher's VM ended, from the file the launcher writes before it exits.
fn adopted_outcome(vm_dir: &std::path::Path) -> bool {
    exit_reason(vm_dir).is_some_and(|r| r.succeeded())
}

/// Why the launcher's VM ended, as the launcher wrote it before exiting.
fn exit_reason(vm_dir: &std::path::Path) -> Option<kuvirt_launcher::vm::ExitReason> {
    std::fs::read(vm_dir.join("exit.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The newer of two copies of one object, by resourceVersion (the watch's copy when they cannot
/// be compared).
fn freshest(
    cached: Option<VirtualMachineInstance>,
    patched: Option<VirtualMachineInstance>,
) -> Option<VirtualMachineInstance> {
    let rv = |v: &VirtualMachineInstance| {
        v.metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse::<u64>().ok())
    };
    match (cached, patched) {
        (Some(c), Some(p)) if p.metadata.uid == c.metadata.uid && rv(&p) > rv(&c) => Some(p),
        (Some(c), _) => Some(c),
        (None, _) => None,
    }
}

/// How often a monitor looks again without any change of its VMI or launcher.
const RESYNC: Duration = Duration::from_secs(30);
/// How soon a monitor tries again a write or request that failed.
const RETRY: Duration = Duration::from_millis(500);
/// How long a launcher may take to answer a watch.
const OPEN_WITHIN: Duration = Duration::from_secs(10);
/// How often the state of a launcher that cannot be watched (an older one) is asked.
const POLL: Duration = Duration::from_millis(500);

/// Where a monitor learns its launcher's state: a watch, or (a launcher from before watches)
/// asking every [`POLL`].
struct Feed {
    source: Source,
    /// A state received and not handed on yet.
    pending: Option<VmState>,
}

enum Source {
    Watch(kuvirt_launcher::protocol::StatusFeed),
    Poll(PathBuf),
}

impl Feed {
    /// Opens a watch of the launcher on `socket` (falling back to asking, if it refuses).
    async fn open(socket: &std::path::Path) -> Result<Feed, ProtocolError> {
        let mut feed = watch(socket).await?;
        match feed.next().await {
            Ok(Some(Response::Status { state, .. })) => Ok(Feed {
                source: Source::Watch(feed),
                pending: Some(state),
            }),
            Err(ProtocolError::Refused(_)) => {
                let Response::Status { state, .. } = call(socket, Request::Status).await? else {
                    return Err(ProtocolError::Decode("no status".into()));
                };
                Ok(Feed {
                    source: Source::Poll(socket.to_path_buf()),
                    pending: Some(state),
                })
            }
            Ok(_) => Err(ProtocolError::Decode(
                "the launcher closed its watch".into(),
            )),
            Err(e) => Err(e),
        }
    }

    /// The launcher's next state; `None` once it cannot be reached (it may have exited).
    async fn next(&mut self) -> Option<VmState> {
        if let Some(s) = self.pending.take() {
            return Some(s);
        }
        match &mut self.source {
            Source::Watch(feed) => match feed.next().await {
                Ok(Some(Response::Status { state, .. })) => Some(state),
                _ => None,
            },
            Source::Poll(socket) => {
                tokio::time::sleep(POLL).await;
                match call(socket, Request::Status).await {
                    Ok(Response::Status { state, .. }) => Some(state),
                    _ => None,
                }
            }
        }
    }
}

/// The launcher pod a monitor follows.
struct Watched {
    /// This node (events name it).
    node: String,
    ns: String,
    vmi_name: String,
    vmi_uid: String,
    pod_name: String,
    /// The pod's uid.
    uid: String,
    vm_dir: PathBuf,
    /// The node's VMIs as the agent's watch has them.
    vmis: NodeVmis,
    /// This node's part in live migrations (none on a simulated node).
    agent: Option<Arc<migration::Agent>>,
    /// The migration this pod is the target of.
    target_of: Option<String>,
}

/// What a monitor removes once its launcher has exited.
struct PodSandbox {
    cfg: SandboxConfig,
    /// The node's pod CIDR.
    cidr: Cidr,
    runtime: Runtime,
    /// The pod IP, if it has one.
    ip: Option<Ipv4Addr>,
    /// The API forwarder into the pod's namespace.
    proxy: Option<JoinHandle<()>>,
}

/// The launcher's last `error:` line (what it printed before it exited), if any.
fn launcher_error(vm_dir: &std::path::Path) -> Option<String> {
    let log = std::fs::read_to_string(vm_dir.join("launcher.log")).ok()?;
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("error: "))
        .map(|e| e.chars().take(1024).collect())
}

/// What virt-handler reports of the machine once it runs: its machine type, CPU topology and
/// memory (from the spec the launcher ran, which has KubeVirt's defaults), the user QEMU runs as.
fn running_status(vmi: &VirtualMachineInstance) -> serde_json::Value {
    let d = &vmi.spec.domain;
    let cpu = d.cpu.as_ref();
    let memory = d.memory.as_ref().and_then(|m| m.guest.clone()).or_else(|| {
        d.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("memory").cloned())
    });
    let mut v = json!({
        "machine": {"type": d.machine.as_ref().map_or("q35", |m| m.type_.as_str())},
        "currentCPUTopology": {
            "cores": cpu.and_then(|c| c.cores).unwrap_or(1),
            "sockets": cpu.and_then(|c| c.sockets).unwrap_or(1),
            "threads": cpu.and_then(|c| c.threads).unwrap_or(1),
        },
        "runtimeUser": 107,
    });
    if let Some(m) = memory {
        v["memory"] = json!({"guestAtBoot": m, "guestCurrent": m, "guestRequested": m});
    }
    v
}

/// The VMI's pod-network interfaces as the domain has them: KubeVirt's
/// `VirtualMachineInstanceNetworkInterface` with the pod IP, which the VM is reached at with
/// either binding (behind masquerade NAT, or the guest's own address on a bridge).
fn pod_interfaces(
    vmi: &VirtualMachineInstance,
    ip: Ipv4Addr,
) -> Vec<VirtualMachineInstanceNetworkInterface> {
    let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
    let name = vmi.metadata.name.as_deref().unwrap_or_default();
    vmi.spec
        .networks
        .iter()
        .filter(|n| n.pod.is_some())
        .filter_map(|n| {
            vmi.spec
                .domain
                .devices
                .interfaces
                .iter()
                .find(|i| i.name == n.name)
        })
        .map(|i| VirtualMachineInstanceNetworkInterface {
            name: Some(i.name.clone()),
            ip_address: Some(ip.to_string()),
            // Masquerade NATs the pod's IPv6 address too; a bridge hands the guest IPv4 only.
            ip_addresses: if i.masquerade.is_some() {
                vec![ip.to_string(), sandbox::ipam::ipv6_of(ip).to_string()]
            } else {
                vec![ip.to_string()]
            },
            mac: Some(
                i.mac_address
                    .clone()
                    .unwrap_or_else(|| kuvirt_launcher::convert::generated_mac(ns, name, &i.name)),
            ),
            pod_interface_name: Some("eth0".into()),
            info_source: Some("domain".into()),
            ..Default::default()
        })
        .collect()
}

/// Follows one launcher: the VMI's phase, conditions and interfaces from the launcher's state;
/// the pod's and VMI's final phase from its exit; then removes the pod's sandbox.
async fn monitor(
    client: kube::Client,
    w: Watched,
    mut child: Option<tokio::process::Child>,
    sandbox: PodSandbox,
    launchers: Launchers,
) {
    let Watched {
        node,
        ns,
        vmi_name,
        vmi_uid,
        pod_name,
        uid,
        vm_dir,
        vmis: cache,
        agent,
        target_of,
    } = w;
    let role = migration::Role {
        ns: ns.clone(),
        vmi_name: vmi_name.clone(),
        pod_name: pod_name.clone(),
        pod_uid: uid.clone(),
        vm_dir: vm_dir.clone(),
        target_of,
    };
    let mut migrations = migration::Tracker::default();
    let pod_ip = sandbox.ip;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let socket = vm_dir.join("launcher.sock");
    // Woken when the VMI changes; the launcher's state comes on a watch of its own. Nothing
    // is polled while both are quiet.
    let following = cache.follow(&ns, &vmi_name);
    let mut feed: Option<Feed> = None;
    let mut state: Option<VmState> = None;
    // Failed attempts in a row to reach the launcher.
    let mut silent = 0;
    // Until the launcher first answers it is tried every 20 ms: that wait is part of every
    // VM's start.
    let mut answered = false;
    // How long to wait before the next attempt to open a watch.
    let mut open_after: Option<Duration> = None;
    // A write that failed is tried again this soon, not at the next change.
    let mut retry: Option<Duration> = None;
    // The grace period a shutdown was last asked with (a shorter one is sent again: the
    // launcher's earliest deadline wins).
    let mut asked_grace: Option<Option<u64>> = None;
    let mut last_patched: Option<VirtualMachineInstance> = None;
    let ok = loop {
        let adopted = child.is_none();
        let child_exit = async {
            match child.as_mut() {
                Some(c) => c.wait().await.is_ok_and(|s| s.success()),
                None => std::future::pending().await,
            }
        };
        let Some(f) = feed.as_mut() else {
            if let Some(wait) = open_after.take() {
                tokio::select! {
                    ok = child_exit => break ok,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let opened = tokio::time::timeout(OPEN_WITHIN, Feed::open(&socket)).await;
            match opened {
                Ok(Ok(f)) => {
                    feed = Some(f);
                    silent = 0;
                    answered = true;
                }
                Err(_) | Ok(Err(_)) => {
                    // An adopted launcher is not our child: it is gone when its socket stays
                    // silent, and it left word of how the VM ended.
                    state = None;
                    silent += 1;
                    if adopted && silent >= 3 {
                        break adopted_outcome(&vm_dir);
                    }
                    open_after = Some(Duration::from_millis(if answered { 500 } else { 20 }));
                }
            }
            continue;
        };
        tokio::select! {
            ok = child_exit => break ok,
            next = f.next() => match next {
                Some(s) => state = Some(s),
                // The launcher closed the watch (its VM is over) or broke it: reconnect, and
                // find out, but not at once: an exited launcher still answering would be asked
                // in a loop.
                None => {
                    feed = None;
                    open_after = Some(RETRY);
                    continue;
                }
            },
            _ = following.changed() => {}
            _ = tokio::time::sleep(retry.unwrap_or(RESYNC)) => {}
        }
        retry = None;
        // This VMI (not a newer one of the same name): the watch's copy, or what our last patch
        // returned while the watch has not caught up with it.
        let cached = cache.get(&ns, &vmi_name).map(|v| (*v).clone());
        let current = freshest(cached, last_patched.clone())
            .filter(|v| v.metadata.uid.as_deref() == Some(vmi_uid.as_str()));
        // Deleted (its finalizer holds it until the VM is down): shut the guest down with the
        // VMI's grace period, which a forced stop may have shortened.
        if let Some(v) = current
            .as_ref()
            .filter(|v| v.metadata.deletion_timestamp.is_some())
        {
            let grace = v
                .spec
                .termination_grace_period_seconds
                .and_then(|g| u64::try_from(g).ok());
            let shorter = match asked_grace {
                None => true,
                Some(before) => grace.is_some_and(|g| before.is_none_or(|b| g < b)),
            };
            if shorter {
                if stop(&client, &node, &launchers, &uid, grace).await {
                    asked_grace = Some(grace);
                } else {
                    retry = Some(RETRY);
                }
            }
        }
        // A migration's next step on this node, if its state asks for one.
        if let (Some(agent), Some(v)) = (&agent, current.as_ref()) {
            let interfaces = pod_ip.map_or_else(|| json!([]), |ip| json!(pod_interfaces(v, ip)));
            migrations
                .step(agent, &role, v, state.as_ref(), interfaces)
                .await;
        }
        let Some(state) = &state else {
            continue;
        };
        let (phase, ready, paused) = match state {
            VmState::Running => ("Running", true, false),
            VmState::Paused => ("Running", false, true),
            VmState::ShuttingDown => ("Running", false, false),
            // A migration's target before it takes over, its source after: the VMI is told by
            // the migration's own steps.
            VmState::Starting | VmState::Incoming | VmState::Handover | VmState::Exited { .. } => {
                continue;
            }
        };
        // The VMI is ours once the controller has handed it over (Scheduled); write only changes.
        let Some(current) = current else {
            continue;
        };
        // Only the node the VMI runs on reports it (a migration's target reports once it has
        // taken the VMI over).
        let runs_here = current
            .status
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_none_or(|n| n == node);
        if !runs_here {
            continue;
        }
        let interfaces = pod_ip
            .map(|ip| pod_interfaces(&current, ip))
            .unwrap_or_default();
        let machine = running_status(&current);
        // Whether it could move to another node, as virt-handler reports it.
        let migratable = kuvirt_api::v1::live_migratable(&current);
        let method = if kuvirt_api::v1::is_block_migration(&current) {
            "BlockMigration"
        } else {
            "LiveMigration"
        };
        let cur = current.status.unwrap_or_default();
        let cur_phase = cur
            .phase
            .as_ref()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if !matches!(cur_phase.as_str(), "Scheduled" | "Running") {
            continue;
        }
        let cond = |t: &str| {
            cur.conditions
                .iter()
                .find(|c| c.type_.as_str() == t)
                .map(|c| c.status == "True")
        };
        let interfaces_known = interfaces.is_empty() || cur.interfaces == interfaces;
        if cur_phase == phase
            && cond("Ready") == Some(ready)
            && cond("Paused").unwrap_or(false) == paused
            && cond("LiveMigratable") == Some(migratable.is_ok())
            && cur.migration_method.as_deref() == Some(method)
            && interfaces_known
        {
            continue;
        }
        let t = kuvirt_apimachinery::meta::now();
        let live_migratable = match &migratable {
            Ok(()) => json!({"type": "LiveMigratable", "status": "True",
                             "lastProbeTime": null, "lastTransitionTime": t}),
            Err(why) => json!({"type": "LiveMigratable", "status": "False",
                               "lastProbeTime": null, "lastTransitionTime": t,
                               "reason": why.reason, "message": why.message}),
        };
        // The conditions others write (the controller's PodScheduled, …) are kept.
        let mut conditions: Vec<serde_json::Value> = cur
            .conditions
            .iter()
            .filter(|c| !matches!(c.type_.as_str(), "Ready" | "Paused" | "LiveMigratable"))
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        conditions.extend([
            json!({"type": "Ready", "status": if ready { "True" } else { "False" },
                   "lastProbeTime": null, "lastTransitionTime": t}),
            json!({"type": "Paused", "status": if paused { "True" } else { "False" },
                   "lastProbeTime": null, "lastTransitionTime": t,
                   "reason": if paused { "PausedByUser" } else { "" }}),
            live_migratable,
        ]);
        let mut patch = json!({"status": {"phase": phase, "conditions": conditions,
                                          "migrationMethod": method}});
        if !interfaces.is_empty() {
            patch["status"]["interfaces"] = json!(interfaces);
        }
        if cur_phase != "Running" {
            if let (Some(p), Some(m)) = (patch["status"].as_object_mut(), machine.as_object()) {
                p.extend(m.clone());
            }
            // The VM controller tells a VM that never ran from one that crashed by this entry.
            let mut transitions = serde_json::to_value(&cur.phase_transition_timestamps)
                .unwrap_or_else(|_| json!([]));
            if let Some(a) = transitions.as_array_mut() {
                a.push(json!({"phase": "Running", "phaseTransitionTimestamp": t}));
            }
            patch["status"]["phaseTransitionTimestamps"] = transitions;
        }
        let Ok(patched) = vmis
            .patch(&vmi_name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        else {
            retry = Some(RETRY);
            continue;
        };
        last_patched = Some(patched.clone());
        let was_paused = cond("Paused").unwrap_or(false);
        let happened = if cur_phase != "Running" && phase == "Running" {
            Some(VmiEvent::Started)
        } else if paused && !was_paused {
            Some(VmiEvent::Paused)
        } else if !paused && was_paused {
            Some(VmiEvent::Resumed)
        } else {
            None
        };
        if let Some(what) = happened {
            record(&client, &node, &Involved::from(&patched), what).await;
        }
    };
    // The launcher is reaped: its pid may be reused from now on, so it is never signalled again.
    if let Some(l) = launchers.lock().await.get_mut(&uid) {
        l.pid = None;
    }
    let phase = if ok { "Succeeded" } else { "Failed" };
    let reason = if ok {
        "the guest shut down"
    } else {
        "the launcher failed"
    };
    tracing::info!(vmi = %vmi_name, namespace = %ns, %phase, %reason, "vm ended");
    let t = kuvirt_apimachinery::meta::now();
    let not_ready = match (ok, launcher_error(&vm_dir)) {
        // virt-handler's way to say why a VM could not be run: Synchronized=False with the
        // error (and the same on Ready, which the VM's Failure condition quotes).
        (false, Some(why)) => json!([
            {"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": t,
             "reason": "LauncherFailed", "message": why},
            {"type": "Synchronized", "status": "False", "lastProbeTime": null,
             "lastTransitionTime": t, "reason": "Synchronizing with the Domain failed.",
             "message": why},
        ]),
        _ => {
            json!([{"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": t}])
        }
    };
    // A VM that moved away is the target's now; a migration target that never took over
    // leaves the VMI to its source.
    let migrated = exit_reason(&vm_dir) == Some(kuvirt_launcher::vm::ExitReason::Migrated);
    let now = vmis
        .get(&vmi_name)
        .await
        .ok()
        .filter(|v| v.metadata.uid.as_deref() == Some(vmi_uid.as_str()));
    let elsewhere = migrated
        || now.as_ref().is_some_and(|v| {
            v.status
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| n != node)
        });
    let ours = now.is_some() && !elsewhere;
    // The event names the VMI as it ended (a VMI deleted meanwhile by uid only).
    let mut ended = Involved {
        namespace: ns.clone(),
        name: vmi_name.clone(),
        uid: Some(vmi_uid.clone()),
        resource_version: None,
    };
    if ours
        && let Ok(v) = vmis
            .patch(
                &vmi_name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"phase": phase, "reason": reason, "conditions": not_ready}}),
                ),
            )
            .await
    {
        ended = Involved::from(&v);
    }
    let what = if ok {
        VmiEvent::Stopped
    } else {
        VmiEvent::Crashed
    };
    if !elsewhere {
        record(&client, &node, &ended, what).await;
    }
    let _ = pods
        .patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await;
    // The launcher has exited: its sandbox goes (a process still in the pod's cgroup, say an
    // adopted launcher that stopped answering, keeps it for the next collection).
    if let Some(p) = sandbox.proxy {
        p.abort();
    }
    let (cfg, cidr, runtime) = (sandbox.cfg, sandbox.cidr, sandbox.runtime);
    let pod_uid = uid.clone();
    let removed =
        blocking(move || runtime.remove_sandbox(&cfg, cidr, &pod_uid, Duration::from_secs(5)))
            .await;
    match removed {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(pod_uid = %uid, "the pod's cgroup still has processes; its sandbox stays")
        }
        Err(e) => tracing::warn!(pod_uid = %uid, error = %e, "removing the pod's sandbox"),
    }
    launchers.lock().await.remove(&uid);
}
