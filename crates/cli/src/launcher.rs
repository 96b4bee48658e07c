//! `kuvirt launcher`: the process inside a launcher pod (KubeVirt's virt-launcher). It reads its
//! VMI from the API server, runs the VM until it ends or the pod is stopped, and exits with the
//! outcome (0 = the guest shut down). The node agent starts it and reads its state.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::StartStrategy;
use kuvirt_images::oci::{ImageStore, PullOptions};
use kuvirt_launcher::accel::{AccelMode, QemuProbe, choose};
use kuvirt_launcher::machine::NetBackend;
use kuvirt_launcher::session::{Session, SessionOptions, default_run_as};
use kuvirt_launcher::vm::ExitReason;
use kuvirt_launcher::{metadata, network};

use crate::run::{Signals, state_dir, user_mode_nics};

#[derive(Args)]
pub struct LauncherArgs {
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long)]
    namespace: String,
    /// The VMI this launcher runs.
    #[arg(long)]
    vmi: String,
    /// Its uid: a VMI of the same name but another uid is not ours.
    #[arg(long)]
    vmi_uid: String,
    /// The VM's directory (sockets, disks, logs).
    #[arg(long)]
    vm_dir: PathBuf,
    #[arg(long, default_value = "auto")]
    accel: String,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    #[arg(long, env = "KUVIRT_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    #[arg(long, default_value = "/usr/share/OVMF", hide = true)]
    ovmf_dir: PathBuf,
    /// A cgroup directory to join before anything else (one per hierarchy; QEMU inherits it).
    #[arg(long = "cgroup", value_name = "DIR")]
    cgroups: Vec<PathBuf>,
    /// The node agent pulled this VM's images already: use the node's image cache only (a
    /// launcher in its pod sandbox has no business talking to registries).
    #[arg(long)]
    images_pulled: bool,
    /// This pod is a live migration's target: QEMU waits for the VM's state from the source.
    #[arg(long)]
    migration_target: bool,
}

/// Moves this process into each cgroup directory (QEMU, started later, inherits them).
fn join_cgroups(dirs: &[PathBuf]) -> Result<()> {
    let pid = std::process::id().to_string();
    for dir in dirs {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &pid)
            .with_context(|| format!("joining cgroup {}", dir.display()))?;
    }
    Ok(())
}

/// The VM's side of the pod network: QEMU's backends, the tasks and processes serving the guest
/// (dropped: stopped), its address, and where its metadata requests come from.
struct PodNetwork {
    nics: BTreeMap<String, NetBackend>,
    tasks: Vec<AbortOnDrop>,
    _passt: Vec<kuvirt_netbind::passt::Passt>,
    guest: Option<Ipv4Addr>,
    metadata_peers: Vec<std::net::IpAddr>,
}

/// The VM's interfaces bound to the pod network (masquerade or bridge, inside the pod's network
/// namespace), their DHCP servers running on this runtime until the returned tasks are dropped,
/// and the guest's address on the pod network (the metadata service's one client). Without root
/// (no pod namespace to change) QEMU's user-mode network stands in.
fn pod_network(vmi: &VirtualMachineInstance, api: &http::Uri, vm_dir: &Path) -> Result<PodNetwork> {
    let Some((uid, _)) = default_run_as() else {
        eprintln!("warning: not root: the pod network is QEMU's user-mode network");
        return Ok(PodNetwork {
            nics: user_mode_nics(vmi)?,
            tasks: Vec::new(),
            _passt: Vec::new(),
            guest: None,
            metadata_peers: Vec::new(),
        });
    };
    let plans = network::plan(vmi)?;
    let pod = network::PodContext {
        qemu_uid: uid,
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        hostname: vmi
            .spec
            .hostname
            .clone()
            .or_else(|| vmi.metadata.name.clone())
            .unwrap_or_default(),
        local_ports: loopback_api_port(api).into_iter().collect(),
        state_dir: vm_dir.to_path_buf(),
    };
    let bound = network::bind(&plans, &pod).context("binding the pod network")?;
    for (name, ip) in &bound.guest_addresses {
        eprintln!("interface {name}: guest address {ip}");
    }
    let tasks = bound
        .servers
        .into_iter()
        .map(|server| {
            AbortOnDrop(tokio::spawn(async move {
                let why = server.run().await;
                eprintln!("warning: a pod network server stopped: {why}");
            }))
        })
        .collect();
    Ok(PodNetwork {
        guest: bound.guest_addresses.values().next().copied(),
        nics: bound.backends,
        tasks,
        _passt: bound.passt,
        metadata_peers: bound.metadata_peers,
    })
}

/// How often the metadata service's content is rebuilt from the VMI and its key Secrets.
const METADATA_REFRESH: Duration = Duration::from_secs(2);

/// The metadata service at 169.254.169.254 for the guest only (`peers`: its address as the pod
/// sees it), and the task that keeps its content
/// following the VMI (an SSH key changed in a Secret shows without a restart).
async fn metadata_service(
    vmis: Api<VirtualMachineInstance>,
    vmi: &VirtualMachineInstance,
    guest: Ipv4Addr,
    peers: Vec<std::net::IpAddr>,
) -> Result<(AbortOnDrop, AbortOnDrop)> {
    use kuvirt_netbind::metadata::{AllowedPeers, SERVICE_ADDR, Server};
    let server = Server::bind(SERVICE_ADDR).context("metadata service")?;
    let secrets: Api<Secret> = Api::namespaced(
        vmis.clone().into_client(),
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let first = metadata::content(vmi, ssh_keys(&secrets, vmi).await, Some(guest));
    let (tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(first));
    let serve = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = server.run(rx, AllowedPeers::Only(peers)).await {
            eprintln!("warning: metadata service stopped: {e}");
        }
    }));
    let (name, uid) = (
        vmi.metadata.name.clone().unwrap_or_default(),
        vmi.metadata.uid.clone(),
    );
    let refresh = AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(METADATA_REFRESH).await;
            let Ok(Some(now)) = vmis.get_opt(&name).await else {
                continue;
            };
            if now.metadata.uid != uid {
                continue;
            }
            let md = metadata::content(&now, ssh_keys(&secrets, &now).await, Some(guest));
            tx.send_if_modified(|cur| {
                let changed = **cur != md;
                if changed {
                    *cur = std::sync::Arc::new(md);
                }
                changed
            });
        }
    }));
    Ok((serve, refresh))
}

/// The SSH keys of the VMI's access credentials; a Secret that cannot be read is left out.
async fn ssh_keys(secrets: &Api<Secret>, vmi: &VirtualMachineInstance) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    for name in metadata::ssh_key_secrets(vmi) {
        match secrets.get_opt(&name).await {
            Ok(Some(s)) => {
                let data = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                keys.extend(metadata::keys_of_secret(&name, &data));
            }
            Ok(None) => eprintln!("warning: access credentials: secret {name} not found"),
            Err(e) => eprintln!("warning: access credentials: secret {name}: {e}"),
        }
    }
    keys
}

/// The port of an API server on the loopback (the pod reaches it through a forwarder on the
/// pod's own loopback, which the masquerade NAT must leave alone).
fn loopback_api_port(uri: &http::Uri) -> Option<u16> {
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = if host == "localhost" {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse().ok()?
    };
    ip.is_loopback().then(|| uri.port_u16().unwrap_or(443))
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn launcher(args: LauncherArgs) -> Result<i32> {
    join_cgroups(&args.cgroups)?;
    let mut signals = Signals::new()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let api_url = config.cluster_url.clone();
    let client = kube::Client::try_from(config)?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, &args.namespace);
    let vmi = vmis
        .get(&args.vmi)
        .await
        .with_context(|| format!("vmi {}/{}", args.namespace, args.vmi))?;
    let shown = format!("{}/{}", args.namespace, args.vmi);
    if vmi.metadata.uid.as_deref() != Some(args.vmi_uid.as_str()) {
        anyhow::bail!(
            "vmi {shown}: its uid is not {} (the VMI was replaced)",
            args.vmi_uid
        );
    }
    let mut net = pod_network(&vmi, &api_url, &args.vm_dir)?;
    let guest = net.guest;
    if let Some(guest) = guest {
        let peers = net.metadata_peers.clone();
        let (server, refresh) = metadata_service(vmis.clone(), &vmi, guest, peers).await?;
        net.tasks.extend([server, refresh]);
    }
    let state = state_dir(args.state_dir)?;
    let mode: AccelMode = args.accel.parse()?;
    let probe = QemuProbe {
        qemu_binary: args.qemu.clone(),
        deadline: Duration::from_secs(10),
        work_dir: state.clone(),
    };
    let accel = choose(
        mode,
        Path::new("/dev/kvm"),
        &probe,
        Some(&state.join("accel.json")),
    )
    .await?;
    if let Some(w) = &accel.warning {
        eprintln!("warning: {w}");
    }
    let vm_dir = args.vm_dir.clone();
    let exit_file = vm_dir.join("exit.json");
    let _ = std::fs::remove_file(&exit_file);
    let opts = SessionOptions {
        vm_dir: vm_dir.clone(),
        store: ImageStore::open(&state.join("images"))?,
        pull: PullOptions {
            policy: args
                .images_pulled
                .then_some(kuvirt_images::oci::PullPolicy::Never),
            ..PullOptions::default()
        },
        qemu_binary: args.qemu,
        accel,
        ovmf_dir: args.ovmf_dir,
        paused: vmi.spec.start_strategy == Some(StartStrategy::Paused),
        run_as: default_run_as(),
        sandbox: true,
        // cloud-init's OpenStack datasource asks 169.254.169.254 only of an OpenStack machine.
        smbios_product: if guest.is_some() {
            "OpenStack Nova".into()
        } else {
            "None".into()
        },
        incoming: args.migration_target,
    };
    let session = tokio::select! {
        s = Session::start(&vmi, net.nics.clone(), &opts) => s.with_context(|| format!("vm {shown}"))?,
        _ = signals.next() => anyhow::bail!("vm {shown}: stopped while starting"),
    };
    eprintln!(
        "vm {shown} running: qemu pid {}",
        session.vm.pid().unwrap_or(0)
    );
    let reason = tokio::select! {
        r = session.vm.wait() => r,
        _ = signals.next() => session.vm.shutdown(session.grace).await,
    };
    session.cleanup();
    // How the VM ended, for a node agent that adopted this launcher and so cannot see its exit
    // status.
    if let Ok(json) = serde_json::to_vec(&reason) {
        let _ = std::fs::write(&exit_file, json);
    }
    eprintln!("vm {shown} stopped: {reason:?}");
    Ok(match reason {
        ExitReason::GuestShutdown | ExitReason::HostShutdown => 0,
        _ => 1,
    })
}
