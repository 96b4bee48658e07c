//! `kuvirt server` as a child process for whole-path tests: data and VM state in temp dirs, TCG,
//! a kube-rs client and `kuvirt` CLI calls against it, and polling with a deadline.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{KUVIRT, free_port, state_dir};

/// A server process, killed (SIGKILL) when dropped.
pub struct ServerProc(pub Child);

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pod network of its own for one test server (tests run in parallel on one host, and
/// servers sharing a bridge and CIDR would hand out the same addresses): a numbered lock file
/// under the system temp dir, taken with create_new and removed on drop (a dead owner's is
/// taken over).
pub struct PodNet {
    pub name: String,
    /// The cluster CIDR (a /20: its nodes get /24s of it).
    pub cidr: String,
    lock: PathBuf,
}

impl PodNet {
    pub fn take() -> PodNet {
        let dir = std::env::temp_dir().join("kuvirt-test-podnets");
        std::fs::create_dir_all(&dir).unwrap();
        for idx in 0..816u32 {
            let lock = dir.join(idx.to_string());
            let taken = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&lock);
            let mine = match taken {
                Ok(mut f) => {
                    use std::io::Write as _;
                    let _ = write!(f, "{}", std::process::id());
                    true
                }
                // An owner that died without cleaning up.
                Err(_) => std::fs::read_to_string(&lock)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok())
                    .is_some_and(|pid| {
                        !Path::new(&format!("/proc/{pid}")).exists()
                            && std::fs::write(&lock, std::process::id().to_string()).is_ok()
                    }),
            };
            if mine {
                return PodNet {
                    name: format!("kvt{idx}"),
                    cidr: format!("10.{}.{}.0/20", 200 + idx / 16, (idx % 16) * 16),
                    lock,
                };
            }
        }
        panic!("no free test pod network");
    }

    /// The first two octets and a dot, for prefix checks of addresses.
    pub fn prefix(&self) -> String {
        let mut parts = self.cidr.split('.');
        format!(
            "{}.{}.",
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        )
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        // Sandboxes of pods whose agent was killed with them still up (the agent tears down
        // only what it sees end): their namespaces carry this network's name.
        let prefix = format!("{}-", self.name);
        if let Ok(entries) = std::fs::read_dir("/run/netns") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) {
                    let _ = Command::new("ip").args(["netns", "del", &name]).output();
                    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
                }
            }
        }
        // The bridge and table go too: nothing else uses them.
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}0", self.name)])
            .output();
        for (family, table) in [
            ("ip", self.name.clone()),
            ("ip6", self.name.clone()),
            ("ip", format!("{}_services", self.name)),
        ] {
            let _ = Command::new("nft")
                .args(["delete", "table", family, &table])
                .output();
        }
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// One control plane with its node agent on this host.
pub struct Plane {
    pub data: tempfile::TempDir,
    pub state: tempfile::TempDir,
    pub port: u16,
    pub node: String,
    pub net: PodNet,
}

impl Plane {
    #[allow(clippy::new_without_default)]
    pub fn new() -> Plane {
        Plane {
            data: tempfile::tempdir().unwrap(),
            state: state_dir(),
            port: free_port(),
            node: "kuvirt-test".into(),
            net: PodNet::take(),
        }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data.path().join("kubeconfig")
    }

    /// Starts the server and waits until it listens and its kubeconfig exists.
    pub fn spawn(&self) -> ServerProc {
        self.spawn_with(&[])
    }

    /// Starts the server with more flags.
    pub fn spawn_with(&self, extra: &[&str]) -> ServerProc {
        let proc = ServerProc(
            Command::new(KUVIRT)
                .args(["server", "--data-dir"])
                .arg(self.data.path())
                .args(["--listen", &format!("127.0.0.1:{}", self.port)])
                .arg("--state-dir")
                .arg(self.state.path())
                .args(["--accel", "tcg", "--node-name", &self.node])
                .args(["--pod-network-name", &self.net.name])
                .args(["--cluster-cidr", &self.net.cidr])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let kubeconfig = self.kubeconfig();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() || !kubeconfig.exists() {
            assert!(Instant::now() < deadline, "server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        proc
    }

    pub async fn client(&self) -> kube::Client {
        client_for(&self.kubeconfig()).await
    }

    /// `kuvirt ARGS --kubeconfig K`.
    pub fn kuvirt(&self, args: &[&str]) -> Output {
        Command::new(KUVIRT)
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `kubectl apply -f -` of `manifest` (HOME in the data dir: no cache outside the test).
    pub fn kubectl_apply(&self, manifest: &str) -> Output {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", self.kubeconfig())
            .env("HOME", self.data.path())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// A kubeconfig for the read-only user (the admin one with the viewer's token).
    pub fn viewer_kubeconfig(&self) -> PathBuf {
        let tokens: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.data.path().join("tokens.json")).unwrap())
                .unwrap();
        let token_of = |role: &str| {
            tokens
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["role"] == role)
                .unwrap()["token"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let text = std::fs::read_to_string(self.kubeconfig())
            .unwrap()
            .replace(&token_of("admin"), &token_of("read-only"));
        let path = self.data.path().join("viewer.kubeconfig");
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// VMs outlive their server by design: a test's leftovers (launchers and QEMUs under its state
/// directory) are killed when its plane goes.
impl Drop for Plane {
    fn drop(&mut self) {
        let state = self.state.path().display().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmd).contains(&state) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        remove_pod_cgroups(self.state.path());
    }
}

/// The cgroups of the pods whose addresses the agent under `state` holds (IPAM files name the
/// pod UIDs): left behind when the agent was killed with them. Killed processes take a moment
/// to leave a cgroup, so each removal is retried briefly.
fn remove_pod_cgroups(state: &Path) {
    let Ok(nets) = std::fs::read_dir(state.join("ipam")) else {
        return;
    };
    let uids: Vec<String> = nets
        .flatten()
        .filter_map(|n| std::fs::read_dir(n.path()).ok())
        .flatten()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .collect();
    let mut dirs = Vec::new();
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let Ok(hiers) = std::fs::read_dir(root) else {
            continue;
        };
        for h in hiers.flatten() {
            for uid in &uids {
                let d = h.path().join(format!("kuvirt/pod{uid}"));
                if d.exists() {
                    dirs.push(d);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while !dirs.is_empty() && Instant::now() < deadline {
        dirs.retain(|d| std::fs::remove_dir(d).is_err() && d.exists());
        if !dirs.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Polls `f` every 200 ms until it yields, failing the test after `within`.
pub async fn until<T>(what: &str, within: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The serial logs of every VMI named `vmi` under a node's state dir (one directory per VMI
/// UID: `vms/NS/NAME-<uid prefix>`), concatenated.
pub fn serial_log(state: &Path, ns: &str, vmi: &str) -> String {
    let Ok(dirs) = std::fs::read_dir(state.join("vms").join(ns)) else {
        return String::new();
    };
    let prefix = format!("{vmi}-");
    let mut dirs: Vec<_> = dirs
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    dirs.sort_by_key(|d| d.metadata().and_then(|m| m.modified()).ok());
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.path().join("serial.log")).ok())
        .collect()
}

/// Halts the named VMs (runStrategy Halted) and waits until no QEMU runs under `state`: every
/// test that starts guests ends with them gone (leftovers slow every later test down).
pub async fn halt(vms: &kube::Api<kuvirt_api::VirtualMachine>, names: &[&str], state: &Path) {
    for name in names {
        vms.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"runStrategy": "Halted"}})),
        )
        .await
        .unwrap();
    }
    until("QEMU gone", Duration::from_secs(90), async || {
        super::qemu_under(state).is_empty().then_some(())
    })
    .await;
}
