//! The parts a scenario runs against, all children of the harness: `kuvirt server` (with or
//! without its node agent), `kuvirt agent --simulated-nodes`, a `docker-registry` on loopback
//! holding the demo guest as a containerDisk, and a kube-rs client.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A free TCP port on the loopback.
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` every `every` until it returns Some, or fails after `within`.
pub async fn until<T>(
    what: &str,
    within: Duration,
    every: Duration,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn terminate(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Where the kuvirt binaries and the run's files are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub kuvirt: PathBuf,
    /// `tcg` or `kvm`, for servers and bare QEMU alike.
    pub accel: String,
    /// The run's scratch directory (servers' data, node state, guest, registry).
    pub work: PathBuf,
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

/// How a server is started.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// Run the node agent for this host (real launchers and QEMU).
    pub node_agent: bool,
}

/// A `kuvirt server` child process with its own data and state directories and pod network.
pub struct Server {
    pub proc: Proc,
    pub data: PathBuf,
    pub state: PathBuf,
    pub url: String,
    pub client: kube::Client,
}

/// The pod network all of the harness's servers use (one at a time): bridge `kvbench0`.
pub const POD_NETWORK: &str = "kvbench";
const CLUSTER_CIDR: &str = "10.248.0.0/16";

impl Server {
    pub async fn start(paths: &Paths, label: &str, opts: &ServerOpts) -> Result<Server> {
        let base = paths.work.join(label);
        let _ = std::fs::remove_dir_all(&base);
        let (data, state) = (base.join("server"), base.join("state"));
        std::fs::create_dir_all(&state)?;
        open_up(&state);
        let port = free_port()?;
        let node = "bench-node".to_string();
        let log = std::fs::File::create(base.join("server.log"))?;
        let mut cmd = Command::new(&paths.kuvirt);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(&state)
            .args(["--accel", &paths.accel, "--node-name", &node])
            .args(["--pod-network-name", POD_NETWORK])
            .args(["--cluster-cidr", CLUSTER_CIDR]);
        if !opts.node_agent {
            cmd.arg("--no-node-agent");
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", paths.kuvirt.display()))?;
        let proc = Proc { child };
        let kubeconfig = data.join("kubeconfig");
        until(
            "kuvirt server listening",
            Duration::from_secs(60),
            Duration::from_millis(10),
            async || {
                (kubeconfig.exists() && TcpStream::connect(("127.0.0.1", port)).is_ok())
                    .then_some(())
            },
        )
        .await?;
        let client = client_for(&kubeconfig).await?;
        let server = Server {
            proc,
            data,
            state,
            url: format!("https://127.0.0.1:{port}"),
            client,
        };
        if opts.node_agent {
            server.wait_nodes_ready(1).await?;
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits until `n` Nodes are Ready and have a pod CIDR.
    pub async fn wait_nodes_ready(&self, n: usize) -> Result<()> {
        wait_nodes_ready(&self.client, n).await
    }

    /// Stops the server, then kills whatever is left under its state directory (VMs outlive
    /// their server by design) and removes the pod network.
    pub fn stop(self) {
        let Server { proc, state, .. } = self;
        drop(proc);
        kill_under(&state);
        remove_pod_network();
    }
}

/// Kills every process whose command line names `dir`.
pub fn kill_under(dir: &Path) {
    let dir = dir.display().to_string();
    for p in crate::mem::processes() {
        if p.cmdline.contains(&dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Removes the harness's pod network (namespaces, bridge, nftables tables) if anything is left.
pub fn remove_pod_network() {
    let prefix = format!("{POD_NETWORK}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
            }
        }
    }
    let _ = Command::new("ip")
        .args(["link", "del", &format!("{POD_NETWORK}0")])
        .output();
    for (family, table) in [
        ("ip", POD_NETWORK.to_string()),
        ("ip6", POD_NETWORK.to_string()),
        ("ip", format!("{POD_NETWORK}_services")),
    ] {
        let _ = Command::new("nft")
            .args(["delete", "table", family, &table])
            .stderr(Stdio::null())
            .output();
    }
}

/// QEMU runs as uid 107: the directories on its paths must be traversable.
pub fn open_up(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut p = Some(dir);
    while let Some(d) = p {
        if d == Path::new("/") {
            break;
        }
        if let Ok(meta) = std::fs::metadata(d) {
            let mode = meta.permissions().mode();
            if mode & 0o005 != 0o005 {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o755));
            }
        }
        p = d.parent();
    }
}

/// Simulated nodes per `kuvirt agent` process. Each simulated VM holds three descriptors in its
/// agent (the stand-in's listening socket and both ends of its monitor's watch), and a process
/// may not be allowed more than 20,000 (this machine's hard limit): 16 nodes of up to 170 VMIs
/// stay well under it.
const NODES_PER_AGENT: usize = 16;

/// Starts `n` simulated nodes (`kuvirt agent --simulated-nodes`, as many agents as
/// [`NODES_PER_AGENT`] asks, named `sim0-…`, `sim1-…`) against `server` and waits until all are
/// Ready.
pub async fn simulated_nodes(paths: &Paths, server: &Server, n: usize) -> Result<Vec<Proc>> {
    let base = server
        .data
        .parent()
        .map_or_else(|| paths.work.clone(), Path::to_path_buf)
        .join("sim-state");
    let mut agents = Vec::new();
    let mut left = n;
    while left > 0 {
        let count = left.min(NODES_PER_AGENT);
        left -= count;
        let k = agents.len();
        let state = base.join(k.to_string());
        std::fs::create_dir_all(&state)?;
        let log = std::fs::File::create(state.join("agent.log"))?;
        let child = Command::new(&paths.kuvirt)
            .args(["agent", "--server", &server.url, "--token-file"])
            .arg(server.data.join("node-token"))
            .arg("--state-dir")
            .arg(&state)
            .args(["--node-name", &format!("sim{k}")])
            .args(["--simulated-nodes", &count.to_string()])
            .args(["--pod-network-name", POD_NETWORK])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kuvirt agent --simulated-nodes")?;
        agents.push(Proc { child });
    }
    server.wait_nodes_ready(n).await?;
    Ok(agents)
}

/// A `docker-registry` on loopback (Debian's), holding the demo guest.
pub struct Registry {
    _proc: Proc,
    pub addr: String,
}

impl Registry {
    pub async fn start(work: &Path) -> Result<Registry> {
        let port = free_port()?;
        let dir = work.join("registry");
        std::fs::create_dir_all(&dir)?;
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting docker-registry (scripts/install-deps installs it)")?;
        let proc = Proc { child };
        until(
            "docker-registry listening",
            Duration::from_secs(30),
            Duration::from_millis(20),
            async || TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ()),
        )
        .await?;
        Ok(Registry {
            _proc: proc,
            addr: format!("127.0.0.1:{port}"),
        })
    }
}

/// The demo guest: its qcow2 disk (bare QEMU boots it) and the same disk as a containerDisk in
/// the registry (kuvirt boots that).
pub struct Guest {
    pub disk: PathBuf,
    pub image: String,
}

impl Guest {
    pub fn build_and_push(paths: &Paths, registry: &Registry) -> Result<Guest> {
        let dir = paths.work.join("guest");
        let disk = dir.join("disk.qcow2");
        if !disk.exists() {
            run(Command::new(&paths.kuvirt)
                .args(["demo-image", "--out"])
                .arg(&dir))?;
        }
        open_up(&dir);
        // Not `latest`: the default pull policy is then IfNotPresent, as a user pinning a
        // version has it, so starts do not ask the registry again.
        let image = format!("{}/bench/guest:v1", registry.addr);
        run(Command::new(&paths.kuvirt)
            .args(["image", "push"])
            .arg(&disk)
            .arg(&image))?;
        Ok(Guest { disk, image })
    }
}

/// Runs a command to completion; its stderr becomes the error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!("{:?}: {}", cmd, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Waits until `n` Nodes are Ready and have a pod CIDR.
pub async fn wait_nodes_ready(client: &kube::Client, n: usize) -> Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    until(
        "nodes Ready",
        Duration::from_secs(120),
        Duration::from_millis(100),
        async || {
            let list = nodes.list(&Default::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|n| n.spec.as_ref().is_some_and(|s| s.pod_cidr.is_some()))
                .filter(|n| {
                    n.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            (ready >= n).then_some(())
        },
    )
    .await
}
