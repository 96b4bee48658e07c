//! Helpers for end-to-end tests: the demo guest (built once per checkout and shared between test
//! processes), a real docker-registry on loopback, and `kuvirt run` with its console watched.

#![allow(dead_code, clippy::unwrap_used)]

pub mod net;
pub mod nodes;
pub mod plane;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const KUVIRT: &str = env!("CARGO_BIN_EXE_kuvirt");

/// Builds the demo guest into the test tmp dir once per build of `kuvirt`; later callers (other
/// test processes too) reuse it. A lock file serialises builders.
pub fn demo_guest() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("demo-guest");
    std::fs::create_dir_all(&root).unwrap();
    open_up(&root);
    let lock = std::fs::File::create(root.with_extension("lock")).unwrap();
    let _guard = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let done = root.join(".built");
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = matches!((mtime(&done), mtime(Path::new(KUVIRT))), (Some(d), Some(b)) if d >= b);
    if !fresh {
        let out = Command::new(KUVIRT)
            .args(["demo-image", "--out"])
            .arg(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "demo-image failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&done, b"").unwrap();
    }
    root
}

/// QEMU runs as uid 107: the directories on its paths must be traversable.
pub fn open_up(dir: &Path) {
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

/// A temp dir QEMU (uid 107) can reach.
pub fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("kv")
        .tempdir_in("/tmp")
        .unwrap();
    open_up(dir.path());
    dir
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real docker-registry on 127.0.0.1, stopped on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(&addr).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Registry {
    /// Pushes the demo guest's disk as a containerDisk `REGISTRY/kuvirt/demo:latest` with
    /// `kuvirt image push`; returns the reference.
    pub fn push_demo(&self, guest: &Path) -> String {
        let image = format!("{}/kuvirt/demo:latest", self.addr);
        let push = Command::new(KUVIRT)
            .args(["image", "push"])
            .arg(guest.join("disk.qcow2"))
            .arg(&image)
            .output()
            .unwrap();
        assert!(
            push.status.success(),
            "push: {}",
            String::from_utf8_lossy(&push.stderr)
        );
        image
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kuvirt run` with its console lines collected.
pub struct Run {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    pub vm_dir: PathBuf,
}

impl Run {
    pub fn start(manifest: &Path, state: &Path, name: &str) -> Run {
        let mut child = Command::new(KUVIRT)
            .args(["run", "--accel", "tcg", "--console", "-f"])
            .arg(manifest)
            .arg("--state-dir")
            .arg(state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                l.lock().unwrap().push(text);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = e.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Run {
            child,
            lines,
            stderr,
            vm_dir: state.join("vms/default").join(name),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a console line starting with `prefix` and returns it.
    pub fn wait_for(&self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.lines().iter().find(|l| l.starts_with(prefix)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no console line {prefix:?} within {within:?}; console:\n{}\nstderr:\n{}",
                self.lines().join("\n"),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `count` console lines start with `prefix`.
    pub fn wait_for_count(&self, prefix: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let seen = self
                .lines()
                .iter()
                .filter(|l| l.starts_with(prefix))
                .count();
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "saw {seen} of {count} console lines {prefix:?} within {within:?}; console:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The highest heartbeat counter seen so far.
    pub fn last_heartbeat(&self) -> u64 {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("kuvirt-guest: heartbeat "))
            .filter_map(|n| n.trim().parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Runs `kuvirt ctl` against this VM.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(KUVIRT)
            .arg("ctl")
            .arg("--vm-dir")
            .arg(&self.vm_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kuvirt ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "kuvirt run still running after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Nothing may outlive a test: kill any QEMU still holding this VM's directory.
        kill_qemu_under(&self.vm_dir);
    }
}

/// QEMU processes whose command line mentions `dir`.
pub fn qemu_under(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") && cmd.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

fn kill_qemu_under(dir: &Path) {
    for pid in qemu_under(dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
