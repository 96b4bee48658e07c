//! One QEMU process and its lifecycle: start paused, attach QMP and the console, run; pause,
//! resume, reset, soft reboot, screendump; graceful shutdown (ACPI power button, grace period,
//! then kill). The VM's state is published on a watch channel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::console::{Console, ConsoleError, LogConfig};
use crate::machine::Machine;
use crate::qmp::{Qmp, QmpError};
use crate::render::render;

/// Where a VM is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum VmState {
    Starting,
    Running,
    Paused,
    ShuttingDown,
    /// A migration target waiting for the VM's state (QEMU `-incoming`); it runs once the state
    /// has arrived.
    Incoming,
    /// A migration source whose state has been sent: paused here, running on the target. It
    /// ends once the target is confirmed, or runs again here if the target fails.
    Handover,
    Exited {
        reason: ExitReason,
    },
}

/// Why QEMU ended. KubeVirt maps a guest-initiated or requested shutdown to `Succeeded`, anything
/// else to `Failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ExitReason {
    /// The guest powered itself off (or did so after the ACPI power button).
    GuestShutdown,
    /// Killed on request (a forced stop).
    Killed,
    /// Killed because the guest did not power off within its grace period.
    GracePeriodExpired,
    /// QEMU quit on request without the guest's involvement.
    HostShutdown,
    /// QEMU died on its own.
    Crashed { detail: String },
    /// The VM moved to another node (a migration source, ended once the target ran).
    Migrated,
}

impl ExitReason {
    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestShutdown | ExitReason::HostShutdown | ExitReason::Migrated
        )
    }
}

/// How to run QEMU.
#[derive(Clone, Debug)]
pub struct StartOptions {
    pub qemu_binary: PathBuf,
    /// Directory for QEMU's stderr log and the console log.
    pub log_dir: PathBuf,
    /// Serve the serial console to clients on this socket.
    pub console_socket: Option<PathBuf>,
    /// Leave the vCPUs stopped after start (KubeVirt's `startStrategy: Paused`).
    pub paused: bool,
    /// Run QEMU as this uid/gid instead of the launcher's own.
    pub run_as: Option<(u32, u32)>,
    /// How long QEMU may take to open its QMP socket.
    pub start_timeout: Duration,
}

/// A lifecycle failure.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("qemu log {path}: {source}")]
    Log {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("qemu exited during start: {0}")]
    EarlyExit(String),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error("vm is not running")]
    NotRunning,
    #[error("screendump {path}: {source}")]
    Screendump {
        path: String,
        source: std::io::Error,
    },
    #[error("migration: {0}")]
    Migration(String),
}

/// How long a soft reboot waits for the guest to shut down before the request lapses.
pub const SOFT_REBOOT_WINDOW: Duration = Duration::from_secs(300);

/// A running VM.
pub struct Vm {
    pub(crate) qmp: Qmp,
    console: Console,
    state: watch::Receiver<VmState>,
    pub(crate) state_tx: Arc<watch::Sender<VmState>>,
    soft_reboot: Arc<AtomicBool>,
    /// Counts soft reboots, so a window that ends disarms only its own.
    soft_reboot_epoch: Arc<AtomicU64>,
    /// Why the launcher is killing QEMU, once it is (so the exit is not called a crash).
    kill_reason: Arc<std::sync::Mutex<Option<ExitReason>>>,
    kill_tx: mpsc::Sender<()>,
    pid: Option<u32>,
    /// A directory QEMU may write to (its sockets' directory), for screendumps.
    pub(crate) scratch: PathBuf,
    /// The launcher's own directory for this VM (logs; the migration record).
    pub(crate) log_dir: PathBuf,
    screendumps: AtomicU64,
    /// The QEMU node names of the disks the guest writes (copied during a migration).
    pub(crate) writable_nodes: Vec<String>,
    /// The migration this VM is the source of, if any (see [`crate::migration`]).
    pub(crate) migration: Arc<crate::migration::Outgoing>,
}

impl Vm {
    /// Starts QEMU for `machine` and waits until the guest runs (or is paused, if asked).
    pub async fn start(machine: &Machine, opts: &StartOptions) -> Result<Vm, VmError> {
        let mut m = machine.clone();
        m.start_paused = true;
        let argv = render(&m);
        let stderr_path = opts.log_dir.join("qemu.log");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| VmError::Log {
            path: stderr_path.display().to_string(),
            source: e,
        })?;
        // Sockets of an earlier QEMU would let us talk to the wrong process.
        for sock in [
            Some(&m.sockets.qmp),
            Some(&m.sockets.serial),
            m.sockets.vnc.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            let _ = std::fs::remove_file(sock);
        }
        let mut cmd = Command::new(&opts.qemu_binary);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: a Ctrl+C meant for the launcher must not reach QEMU; the
            // launcher decides how the guest ends.
            .process_group(0)
            .kill_on_drop(true);
        if let Some((uid, gid)) = opts.run_as {
            cmd.uid(uid).gid(gid);
        }
        tracing::debug!(argv = ?argv, "starting qemu");
        let mut child = cmd.spawn().map_err(|e| VmError::Spawn {
            binary: opts.qemu_binary.display().to_string(),
            source: e,
        })?;
        let pid = child.id();
        let deadline = Instant::now() + opts.start_timeout;
        let qmp = tokio::select! {
            r = Qmp::connect(&m.sockets.qmp, deadline) => r,
            status = child.wait() => {
                let tail = log_tail(&stderr_path);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(VmError::EarlyExit(format!("{status}: {tail}")));
            }
        };
        let qmp = match qmp {
            Ok(q) => q,
            Err(e) => return Err(explain(child, &stderr_path, e.into()).await),
        };
        let console = match Console::start(
            &m.sockets.serial,
            LogConfig {
                path: opts.log_dir.join("serial.log"),
                max_bytes: 4 * 1024 * 1024,
            },
            opts.console_socket.as_deref(),
            deadline,
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return Err(explain(child, &stderr_path, e.into()).await),
        };
        let (state_tx, state) = watch::channel(VmState::Starting);
        let (kill_tx, kill_rx) = mpsc::channel(1);
        let scratch = m
            .sockets
            .qmp
            .parent()
            .map_or_else(|| opts.log_dir.clone(), Path::to_path_buf);
        let vm = Vm {
            qmp,
            console,
            state,
            state_tx: Arc::new(state_tx),
            soft_reboot: Arc::default(),
            soft_reboot_epoch: Arc::default(),
            kill_reason: Arc::default(),
            kill_tx,
            pid,
            scratch,
            log_dir: opts.log_dir.clone(),
            screendumps: AtomicU64::new(0),
            writable_nodes: m
                .disks
                .iter()
                .enumerate()
                .filter(|(_, d)| d.writable())
                .map(|(i, _)| crate::machine::disk_node(i))
                .collect(),
            migration: Arc::default(),
        };
        vm.watch_events();
        vm.watch_exit(child, kill_rx, stderr_path);
        let ready = async {
            for nic in machine.nics.iter().filter(|n| !n.link_up) {
                vm.qmp.set_link(&format!("ua-{}", nic.name), false).await?;
            }
            if machine.incoming {
                // Its vCPUs start once the migrated state has arrived.
                vm.set_state(VmState::Incoming);
            } else if opts.paused {
                vm.set_state(VmState::Paused);
            } else {
                vm.qmp.cont().await?;
                vm.set_state(VmState::Running);
            }
            Ok::<(), VmError>(())
        };
        if let Err(e) = ready.await {
            vm.kill().await;
            return Err(e);
        }
        Ok(vm)
    }

    /// QEMU's pid.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    pub fn state(&self) -> VmState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change.
    pub fn watch(&self) -> watch::Receiver<VmState> {
        self.state.clone()
    }

    /// Publishes a state; `Exited` is final and never replaced.
    pub(crate) fn set_state(&self, to: VmState) {
        set(&self.state_tx, to);
    }

    fn ensure_alive(&self) -> Result<(), VmError> {
        match self.state() {
            VmState::Exited { .. } => Err(VmError::NotRunning),
            _ => Ok(()),
        }
    }

    pub async fn pause(&self) -> Result<(), VmError> {
        self.ensure_alive()?;
        self.qmp.stop().await?;
        self.set_state(VmState::Paused);
        Ok(())
    }

    pub async fn unpause(&self) -> Result<(), VmError> {
        self.ensure_alive()?;
        self.qmp.cont().await?;
        self.set_state(VmState::Running);
        Ok(())
    }

    /// A hard reset.
    pub async fn reset(&self) -> Result<(), VmError> {
        self.ensure_alive()?;
        self.qmp.system_reset().await?;
        Ok(())
    }

    /// Reboots through the guest: the ACPI power button, and when the guest has shut down, a reset
    /// instead of an exit (what libvirt calls an ACPI reboot).
    pub async fn soft_reboot(&self) -> Result<(), VmError> {
        self.ensure_alive()?;
        // The flag goes first: a guest that shuts down right after `set-action` must be reset,
        // not left paused.
        self.soft_reboot.store(true, Ordering::SeqCst);
        let armed = async {
            self.qmp
                .execute("set-action", Some(json!({ "shutdown": "pause" })))
                .await?;
            self.qmp.system_powerdown().await
        }
        .await;
        if let Err(e) = armed {
            self.disarm_soft_reboot().await;
            return Err(e.into());
        }
        // A guest that ignores the power button must not turn a shutdown days later into a
        // reboot: the request lapses after a while.
        let epoch = self.soft_reboot_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let (epochs, flag, qmp) = (
            self.soft_reboot_epoch.clone(),
            self.soft_reboot.clone(),
            self.qmp.clone(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(SOFT_REBOOT_WINDOW).await;
            if epochs.load(Ordering::SeqCst) == epoch && flag.swap(false, Ordering::SeqCst) {
                let _ = qmp
                    .execute("set-action", Some(json!({ "shutdown": "poweroff" })))
                    .await;
            }
        });
        Ok(())
    }

    /// Forgets a pending soft reboot: a guest shutdown from now on ends QEMU.
    async fn disarm_soft_reboot(&self) {
        if self.soft_reboot.swap(false, Ordering::SeqCst) {
            let _ = self
                .qmp
                .execute("set-action", Some(json!({ "shutdown": "poweroff" })))
                .await;
        }
    }

    /// Writes a PNG of the display to `path`. QEMU writes into its own directory (it may run as
    /// another user); the launcher then copies the file without following links.
    pub async fn screendump(&self, path: &Path) -> Result<(), VmError> {
        self.ensure_alive()?;
        let n = self.screendumps.fetch_add(1, Ordering::Relaxed);
        let tmp = self.scratch.join(format!("screendump-{n}.png"));
        self.qmp.screendump(&tmp).await?;
        let copied = copy_no_follow(&tmp, path).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        copied.map_err(|e| VmError::Screendump {
            path: path.display().to_string(),
            source: e,
        })
    }

    /// Presses the ACPI power button and waits up to `grace` for the guest to power off; then
    /// kills QEMU. Returns how it ended.
    pub async fn shutdown(&self, grace: Duration) -> ExitReason {
        if let Some(reason) = self.exited() {
            return reason;
        }
        let deadline = Instant::now() + grace;
        self.disarm_soft_reboot().await;
        // A paused guest cannot see the power button.
        if self.state() == VmState::Paused {
            let _ = tokio::time::timeout_at(deadline, self.qmp.cont()).await;
        }
        self.set_state(VmState::ShuttingDown);
        let pressed = tokio::time::timeout_at(deadline, self.qmp.system_powerdown()).await;
        if matches!(pressed, Ok(Ok(())))
            && let Ok(reason) = tokio::time::timeout_at(deadline, self.wait()).await
        {
            return reason;
        }
        self.kill_because(ExitReason::GracePeriodExpired).await
    }

    /// Kills QEMU at once.
    pub async fn kill(&self) -> ExitReason {
        self.kill_because(ExitReason::Killed).await
    }

    pub(crate) async fn kill_because(&self, reason: ExitReason) -> ExitReason {
        if let Some(done) = self.exited() {
            return done;
        }
        if let Ok(mut r) = self.kill_reason.lock() {
            r.get_or_insert(reason);
        }
        // The task owning the child kills it: no signal can reach a recycled pid.
        let _ = self.kill_tx.try_send(());
        self.wait().await
    }

    /// Waits until QEMU has exited.
    pub async fn wait(&self) -> ExitReason {
        let mut rx = self.state.clone();
        loop {
            if let VmState::Exited { reason } = &*rx.borrow_and_update() {
                return reason.clone();
            }
            if rx.changed().await.is_err() {
                return ExitReason::Crashed {
                    detail: "state channel closed".into(),
                };
            }
        }
    }

    fn exited(&self) -> Option<ExitReason> {
        match self.state() {
            VmState::Exited { reason } => Some(reason),
            _ => None,
        }
    }

    /// Follows QMP events until QEMU closes the monitor: a guest shutdown during a soft reboot
    /// becomes a reset; pause and resume from any source are reflected in the state.
    fn watch_events(&self) {
        let mut events = self.qmp.events();
        let state = self.state_tx.clone();
        let soft_reboot = self.soft_reboot.clone();
        let qmp = self.qmp.clone();
        let migration = self.migration.clone();
        tokio::spawn(async move {
            loop {
                let ev = tokio::select! {
                    ev = events.recv() => ev,
                    _ = qmp.closed() => break,
                };
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                match ev.event.as_str() {
                    "SHUTDOWN" if soft_reboot.swap(false, Ordering::SeqCst) => {
                        let qmp = qmp.clone();
                        tokio::spawn(async move {
                            let r = async {
                                qmp.system_reset().await?;
                                qmp.execute("set-action", Some(json!({ "shutdown": "poweroff" })))
                                    .await?;
                                qmp.cont().await
                            }
                            .await;
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "soft reboot: restarting the guest failed");
                            }
                        });
                    }
                    // A migration's last step stops the source: that is no pause.
                    "STOP" if migration.is_active() => {}
                    "STOP" => transition(&state, VmState::Running, VmState::Paused),
                    "RESUME" => {
                        for from in [VmState::Paused, VmState::Incoming, VmState::Handover] {
                            transition(&state, from, VmState::Running);
                        }
                    }
                    _ => {}
                }
            }
        });
    }

    /// Owns the child: waits for it (killing it when asked), then publishes why it ended.
    fn watch_exit(&self, mut child: Child, mut kill_rx: mpsc::Receiver<()>, stderr_path: PathBuf) {
        let state = self.state_tx.clone();
        let kill_reason = self.kill_reason.clone();
        let qmp = self.qmp.clone();
        let mut events = self.qmp.events();
        tokio::spawn(async move {
            let mut cause: Option<bool> = None;
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    Some(()) = kill_rx.recv() => { let _ = child.start_kill(); }
                    ev = events.recv() => note_shutdown(ev.ok(), &mut cause),
                }
            };
            // QEMU announces SHUTDOWN just before exiting: read what it sent up to its last line.
            let _ = tokio::time::timeout(Duration::from_secs(2), qmp.closed()).await;
            while let Ok(ev) = events.try_recv() {
                note_shutdown(Some(ev), &mut cause);
            }
            let killed = kill_reason.lock().ok().and_then(|r| r.clone());
            let reason = if let Some(k) = killed {
                k
            } else if cause == Some(true) {
                ExitReason::GuestShutdown
            } else if cause == Some(false) {
                ExitReason::HostShutdown
            } else {
                let detail = match status {
                    Ok(s) => format!("{s}: {}", log_tail(&stderr_path)),
                    Err(e) => e.to_string(),
                };
                ExitReason::Crashed { detail }
            };
            set(&state, VmState::Exited { reason });
        });
    }
}

/// Publishes a state unless the VM has already exited (`Exited` is final).
pub(crate) fn set(state: &watch::Sender<VmState>, to: VmState) {
    state.send_if_modified(|s| {
        if matches!(s, VmState::Exited { .. }) || *s == to {
            return false;
        }
        *s = to;
        true
    });
}

/// Copies `from` to `to`, refusing to follow a link at `from` (QEMU's user controls that directory).
async fn copy_no_follow(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let from = from.to_path_buf();
    let to = to.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut src = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&from)?;
        let mut dst = std::fs::File::create(&to)?;
        std::io::copy(&mut src, &mut dst).map(drop)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// QEMU often opens its monitor before it rejects an option and exits: when a start step fails,
/// prefer QEMU's own words (its exit and stderr) over the QMP symptom. Kills it if still running.
async fn explain(mut child: Child, stderr_path: &Path, err: VmError) -> VmError {
    match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
        Ok(Ok(status)) => VmError::EarlyExit(format!("{status}: {}", log_tail(stderr_path))),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            err
        }
    }
}

pub(crate) fn transition(state: &watch::Sender<VmState>, from: VmState, to: VmState) {
    state.send_if_modified(|s| {
        let change = *s == from;
        if change {
            *s = to;
        }
        change
    });
}

/// Remembers whether the last SHUTDOWN came from the guest (`true`) or the host (`false`); a
/// reset or resume after it (a soft reboot) means QEMU lived on, so it no longer explains an exit.
fn note_shutdown(ev: Option<crate::qmp::QmpEvent>, cause: &mut Option<bool>) {
    match ev.as_ref().map(|e| e.event.as_str()) {
        Some("SHUTDOWN") => {
            *cause = ev.and_then(|e| e.data.get("guest").and_then(|g| g.as_bool()));
        }
        Some("RESET" | "RESUME") => *cause = None,
        _ => {}
    }
}

/// The last few lines of QEMU's stderr, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Drop `-msg timestamp=on`'s prefix: the message is what a person needs.
    let lines: Vec<&str> = text
        .lines()
        .rev()
        .take(3)
        .map(|l| match l.split_once("Z ") {
            Some((ts, rest)) if ts.len() < 32 && ts.starts_with(|c: char| c.is_ascii_digit()) => {
                rest
            }
            _ => l,
        })
        .collect();
    let tail: Vec<&str> = lines.into_iter().rev().collect();
    if tail.is_empty() {
        "no output".into()
    } else {
        tail.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exited_is_final() {
        let (tx, rx) = watch::channel(VmState::Running);
        set(
            &tx,
            VmState::Exited {
                reason: ExitReason::GuestShutdown,
            },
        );
        set(&tx, VmState::ShuttingDown);
        set(&tx, VmState::Running);
        transition(&tx, VmState::Paused, VmState::Running);
        assert_eq!(
            *rx.borrow(),
            VmState::Exited {
                reason: ExitReason::GuestShutdown
            }
        );
    }

    #[test]
    fn a_soft_reboot_does_not_explain_a_later_exit() {
        let ev = |e: &str, data: serde_json::Value| {
            Some(crate::qmp::QmpEvent {
                event: e.into(),
                data,
            })
        };
        let mut cause = None;
        note_shutdown(ev("SHUTDOWN", json!({"guest": true})), &mut cause);
        assert_eq!(cause, Some(true));
        note_shutdown(ev("RESET", json!({})), &mut cause);
        assert_eq!(
            cause, None,
            "after a soft reboot's reset, a crash must look like a crash"
        );
        note_shutdown(ev("SHUTDOWN", json!({"guest": false})), &mut cause);
        assert_eq!(cause, Some(false));
    }
}
