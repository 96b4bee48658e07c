//! `kuvirt`: one binary for every role. This session's verbs: run, image, demo-image, ctl.

mod agent;
mod console;
mod create;
mod expose;
mod kubectl;
mod launcher;
mod manifest;
mod migrate;
mod remote;
mod rename;
mod run;
mod verbs;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kuvirt_images::oci::{ImageStore, ProgressMode, PullOptions, PushOptions};
use kuvirt_launcher::protocol::{Request, call};

#[derive(Parser)]
#[command(
    name = "kuvirt",
    version,
    about = "KubeVirt-compatible virtual machines, light"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one VM (a VirtualMachineInstance, or a VirtualMachine's template) in the foreground,
    /// without a control plane. SIGTERM shuts the guest down gracefully.
    Run(run::RunArgs),
    /// Build, push and pull containerDisk images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Build the demo/test guest from this host's Debian packages: DIR/vmlinuz, DIR/initrd.img,
    /// DIR/disk.qcow2 and DIR/oci, an OCI layout with the disk as a containerDisk (tag latest) and
    /// the kernel and initrd as a kernelBoot container (tag kernel).
    DemoImage {
        #[arg(long)]
        out: PathBuf,
    },
    /// The control plane on this host: the Kubernetes API server over an embedded store
    /// (controllers and the node agent join it in later releases). Writes an admin kubeconfig to
    /// DATA_DIR/kubeconfig.
    Server {
        #[arg(
            long,
            env = "KUVIRT_DATA_DIR",
            default_value = "/var/lib/kuvirt/server"
        )]
        data_dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: std::net::SocketAddr,
        /// More names or addresses for the serving certificate.
        #[arg(long)]
        tls_san: Vec<String>,
        /// How long watch history is kept before compaction (seconds).
        #[arg(long, default_value = "300", hide = true)]
        watch_history: u64,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Join the control plane at --server as a node: run VMs on this host too.
    Agent(agent::AgentArgs),
    /// The process of one launcher pod (started by the node agent).
    #[command(hide = true)]
    Launcher(launcher::LauncherArgs),
    /// Show objects from the API server as a table, YAML, JSON or names (like kubectl get).
    Get(kubectl::GetArgs),
    /// Server-side apply the objects in files (like kubectl apply --server-side).
    Apply(kubectl::ApplyArgs),
    /// Delete objects by type and name, selector or file, and wait until they are gone.
    Delete(kubectl::DeleteArgs),
    /// Start a VirtualMachine (its `start` subresource, like virtctl start).
    Start(verbs::StartArgs),
    /// Stop a VirtualMachine (its `stop` subresource, like virtctl stop).
    Stop(verbs::StopArgs),
    /// Restart a VirtualMachine: a new VMI replaces the running one (like virtctl restart).
    Restart(verbs::RestartArgs),
    /// Live-migrate a running VirtualMachine's VMI to another node (its `migrate` subresource,
    /// like virtctl migrate).
    Migrate(migrate::MigrateArgs),
    /// Cancel a VirtualMachine's migration under way (like virtctl migrate-cancel).
    MigrateCancel(migrate::MigrateCancelArgs),
    /// Pause a VM's or VMI's guest (its vCPUs stop; memory and devices stay).
    #[command(subcommand)]
    Pause(verbs::PauseTarget),
    /// Resume a paused VM or VMI.
    #[command(subcommand)]
    Unpause(verbs::PauseTarget),
    /// Ask a VMI's guest to reboot (ACPI), like virtctl soft-reboot.
    SoftReboot(verbs::VmiArgs),
    /// Reset a VMI's machine at once (the reset button).
    Reset(verbs::VmiArgs),
    /// Print a VMI's guest OS information (from its guest agent).
    Guestosinfo(verbs::VmiArgs),
    /// Attach this terminal to a VMI's serial console (Ctrl+] leaves).
    Console(remote::ConsoleArgs),
    /// Open a VMI's display over VNC through a local port, or save a screenshot.
    Vnc(remote::VncArgs),
    /// Print a manifest built from flags (like virtctl create).
    #[command(subcommand)]
    Create(create::CreateCommand),
    /// Rename a stopped VirtualMachine, keeping its guest's MACs and firmware UUID.
    #[command(subcommand)]
    Rename(rename::RenameCommand),
    /// Create a Service selecting a VM's launcher pod (like virtctl expose).
    Expose(expose::ExposeArgs),
    /// Talk to a running VM's launcher (plumbing; `kuvirt run` prints the directory).
    Ctl {
        /// The VM's directory (holding launcher.sock).
        #[arg(long)]
        vm_dir: PathBuf,
        #[command(subcommand)]
        request: CtlRequest,
    },
}

/// This host as a node of its own control plane.
#[derive(clap::Args)]
struct NodeArgs {
    /// Run only the control plane, no VMs on this host.
    #[arg(long)]
    no_node_agent: bool,
    #[command(flatten)]
    flags: agent::NodeFlags,
    /// Seconds without a heartbeat after which a node is lost and its VMIs fail.
    #[arg(long, default_value = "40", hide = true)]
    node_heartbeat_timeout: u64,
    /// The range nodes' pod CIDRs (a /24 each) come from.
    #[arg(long, default_value = "10.244.0.0/16", hide = true)]
    cluster_cidr: String,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Push a disk image (built into a containerDisk, the disk under /disk/) or an OCI layout.
    Push {
        /// A disk file (qcow2/raw) or an OCI layout directory.
        source: PathBuf,
        /// Registry reference, e.g. 127.0.0.1:5000/kuvirt/demo:latest.
        reference: String,
        /// Speak plain HTTP to this registry (loopback registries always are).
        #[arg(long)]
        insecure_registry: Vec<String>,
    },
    /// Pull an image into the cache and print where its files are.
    Pull {
        reference: String,
        #[arg(long)]
        insecure_registry: Vec<String>,
        #[arg(long, env = "KUVIRT_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CtlRequest {
    Status,
    Pause,
    Unpause,
    Reset,
    SoftReboot,
    Shutdown {
        #[arg(long)]
        grace_period: Option<u64>,
    },
    Kill,
    Screendump {
        path: PathBuf,
    },
}

/// Open files a server or agent may have: one or more per VM (a launcher's socket, its watch,
/// API connections), so a node with thousands of VMs needs more than the usual 1024 or 20000.
const FD_LIMIT: u64 = 1 << 20;

/// Raises this process's open-file limit towards [`FD_LIMIT`] (what containerd and the kubelet
/// run with): the hard limit too when privileged, else the soft limit up to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard);
    let want = FD_LIMIT.min(nr_open).max(hard);
    if soft >= want || setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return;
    }
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
    }
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUVIRT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

async fn dispatch(cmd: Command) -> Result<i32> {
    match cmd {
        Command::Run(args) => run::run(args).await,
        Command::Get(args) => kubectl::get(args).await,
        Command::Apply(args) => kubectl::apply(args).await,
        Command::Delete(args) => kubectl::delete(args).await,
        Command::Start(args) => verbs::start(args).await,
        Command::Stop(args) => verbs::stop(args).await,
        Command::Restart(args) => verbs::restart(args).await,
        Command::Migrate(a) => migrate::migrate(a).await,
        Command::MigrateCancel(a) => migrate::migrate_cancel(a).await,
        Command::Pause(t) => verbs::pause(t).await,
        Command::Unpause(t) => verbs::unpause(t).await,
        Command::SoftReboot(a) => verbs::soft_reboot(a).await,
        Command::Reset(a) => verbs::reset(a).await,
        Command::Guestosinfo(a) => verbs::guestosinfo(a).await,
        Command::Console(a) => remote::console(a).await,
        Command::Vnc(a) => remote::vnc(a).await,
        Command::Create(cmd) => create::run(cmd).await,
        Command::Rename(cmd) => rename::run(cmd).await,
        Command::Expose(args) => expose::run(args).await,
        Command::Server {
            data_dir,
            listen,
            tls_san,
            watch_history,
            node,
        } => {
            raise_fd_limit();
            server(data_dir, listen, tls_san, watch_history, node).await
        }
        Command::Launcher(args) => launcher::launcher(args).await,
        Command::Agent(args) => {
            raise_fd_limit();
            agent::agent(args).await
        }
        Command::Image(ImageCommand::Push {
            source,
            reference,
            insecure_registry,
        }) => {
            let digest = kuvirt_images::oci::push(
                &source,
                &reference,
                &PushOptions {
                    insecure_registries: insecure_registry,
                    progress: progress_mode(),
                    ..PushOptions::default()
                },
            )
            .await?;
            println!("{reference}@{digest}");
            Ok(0)
        }
        Command::Image(ImageCommand::Pull {
            reference,
            insecure_registry,
            state_dir,
        }) => {
            let state = run::state_dir(state_dir)?;
            let store = ImageStore::open(&state.join("images"))?;
            let image = store
                .fetch(
                    &reference,
                    &PullOptions {
                        insecure_registries: insecure_registry,
                        progress: progress_mode(),
                        ..PullOptions::default()
                    },
                )
                .await?;
            println!("{}@{}", image.reference, image.manifest_digest);
            println!("{}", image.rootfs.display());
            Ok(0)
        }
        Command::DemoImage { out } => {
            let out2 = out.clone();
            let art = tokio::task::spawn_blocking(move || {
                kuvirt_images::demo::build(&kuvirt_images::demo::DemoOptions::new(out2))
            })
            .await
            .context("demo image builder")??;
            let layout = out.join("oci");
            kuvirt_images::oci::build_container_disk(&art.disk_qcow2, &layout, "latest").await?;
            kuvirt_images::oci::build_file_image(
                &[
                    (art.kernel.clone(), "boot/vmlinuz".into()),
                    (art.initrd.clone(), "boot/initrd.img".into()),
                ],
                &layout,
                "kernel",
            )
            .await?;
            println!("kernel      {}", art.kernel.display());
            println!("initrd      {}", art.initrd.display());
            println!("disk        {}", art.disk_qcow2.display());
            println!("containerDisk  oci:{}:latest", layout.display());
            println!(
                "kernelBoot     oci:{}:kernel (/boot/vmlinuz, /boot/initrd.img)",
                layout.display()
            );
            Ok(0)
        }
        Command::Ctl { vm_dir, request } => {
            let req = match request {
                CtlRequest::Status => Request::Status,
                CtlRequest::Pause => Request::Pause,
                CtlRequest::Unpause => Request::Unpause,
                CtlRequest::Reset => Request::Reset,
                CtlRequest::SoftReboot => Request::SoftReboot,
                CtlRequest::Shutdown { grace_period } => Request::Shutdown {
                    grace_period_seconds: grace_period,
                },
                CtlRequest::Kill => Request::Kill,
                CtlRequest::Screendump { path } => Request::Screendump {
                    path: std::path::absolute(&path)?,
                },
            };
            let status = req == Request::Status;
            let resp = call(&vm_dir.join("launcher.sock"), req).await?;
            if status {
                println!("{}", serde_json::to_string(&resp)?);
            }
            Ok(0)
        }
    }
}

async fn server(
    data_dir: PathBuf,
    listen: std::net::SocketAddr,
    tls_san: Vec<String>,
    watch_history: u64,
    node: NodeArgs,
) -> Result<i32> {
    let cluster_cidr = kuvirt_controller::podcidr::ClusterCidr::new(&node.cluster_cidr, 24)
        .map_err(|e| anyhow::anyhow!("--cluster-cidr: {e}"))?;
    if !node.no_node_agent && node.flags.node_heartbeat_interval >= node.node_heartbeat_timeout {
        anyhow::bail!(
            "--node-heartbeat-interval ({} s) must be shorter than --node-heartbeat-timeout ({} s)",
            node.flags.node_heartbeat_interval,
            node.node_heartbeat_timeout
        );
    }
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let running = kuvirt_apiserver::server::start(kuvirt_apiserver::server::ServerConfig {
        data_dir,
        listen,
        extra_hosts: tls_san,
        history: std::time::Duration::from_secs(watch_history.max(1)),
    })
    .await?;
    eprintln!(
        "kuvirt server listening on {}; kubeconfig: {}",
        running.url(),
        running.creds.kubeconfig.display()
    );
    // The controllers reach the API server like any client: through kube-rs and the kubeconfig.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig = kube::config::Kubeconfig::read_from(&running.creds.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let client = kube::Client::try_from(config.clone())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = if node.no_node_agent {
        None
    } else {
        let cfg = agent::agent_config(
            &node.flags,
            &running.creds.kubeconfig,
            &running.creds.ca_pem,
            listen.ip(),
        )?;
        let client = client.clone();
        // The heartbeats' own connection (see kuvirt_handler::run).
        let heartbeat_client = kube::Client::try_from(config.clone())?;
        Some(tokio::spawn(async move {
            if let Err(e) = kuvirt_handler::run(client, heartbeat_client, cfg).await {
                tracing::error!(error = %e, "node agent stopped");
            }
        }))
    };
    let controllers = tokio::spawn(kuvirt_controller::run(
        client,
        kuvirt_controller::Options {
            node_heartbeat_timeout: std::time::Duration::from_secs(
                node.node_heartbeat_timeout.max(1),
            ),
            cluster_cidr,
            ..kuvirt_controller::Options::default()
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = stop_tx.send(());
    if let Some(a) = agent {
        a.abort();
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), controllers).await;
    running.stop();
    Ok(0)
}

/// A progress bar on a terminal, silence otherwise.
fn progress_mode() -> ProgressMode {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        ProgressMode::Bar
    } else {
        ProgressMode::Silent
    }
}
