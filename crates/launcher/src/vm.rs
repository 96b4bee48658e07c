//! One QEMU process and its lifecycle: start paused, attach QMP and the console, run; pause,
//! resume, reset, soft reboot, screendump; graceful shutdown (ACPI power button, grace period,
//! then kill). The VM's state is published on a watch channel.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::watch;
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
    Exited { reason: ExitReason },
}

/// Why QEMU ended. KubeVirt maps a guest-initiated or requested shutdown to `Succeeded`, anything
/// else to `Failed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ExitReason {
    /// The guest powered itself off (or did so after the ACPI power button).
    GuestShutdown,
    /// The launcher ended it: grace period over, or a forced stop.
    Killed,
    /// QEMU quit on request without the guest's involvement.
    HostShutdown,
    /// QEMU died on its own.
    Crashed { detail: String },
}

impl ExitReason {
    pub fn succeeded(&self) -> bool {
        matches!(self, ExitReason::GuestShutdown | ExitReason::HostShutdown)
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
}

/// A running VM.
pub struct Vm {
    qmp: Qmp,
    console: Console,
    state: watch::Receiver<VmState>,
    state_tx: Arc<watch::Sender<VmState>>,
    soft_reboot: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    pid: Option<u32>,
    scratch: PathBuf,
}

impl Vm {
    /// Starts QEMU for `machine` and waits until the guest runs (or is paused, if asked).
    pub async fn start(machine: &Machine, opts: &StartOptions) -> Result<Vm, VmError> {
        let mut m = machine.clone();
        m.start_paused = true;
        let argv = render(&m);
        let stderr_path = opts.log_dir.join("qemu.log");
        let stderr = std::fs::File::create(&stderr_path).map_err(|e| VmError::Spawn {
            binary: stderr_path.display().to_string(),
            source: e,
        })?;
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
        let vm = Vm {
            qmp,
            console,
            state,
            state_tx: Arc::new(state_tx),
            soft_reboot: Arc::default(),
            killed: Arc::default(),
            pid,
            scratch: opts.log_dir.clone(),
        };
        vm.watch_events();
        vm.watch_exit(child, stderr_path);
        let ready = async {
            for nic in machine.nics.iter().filter(|n| !n.link_up) {
                vm.qmp.set_link(&format!("ua-{}", nic.name), false).await?;
            }
            if opts.paused {
                vm.state_tx.send_replace(VmState::Paused);
            } else {
                vm.qmp.cont().await?;
                vm.state_tx.send_replace(VmState::Running);
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

    fn ensure_alive(&self) -> Result<(), VmError> {
        match self.state() {
            VmState::Exited { .. } => Err(VmError::NotRunning),
            _ => Ok(()),
        }
    }

    pub async fn pause(&self) -> Result<(), VmError> {
        self.ensure_alive()?;
        self.qmp.stop().await?;
        self.state_tx.send_replace(VmState::Paused);
        Ok(())
    }

    pub async fn unpause(&self) -> Result<(), VmError> {
        self.ensure_alive()?;
        self.qmp.cont().await?;
        self.state_tx.send_replace(VmState::Running);
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
        self.qmp
            .execute("set-action", Some(json!({ "shutdown": "pause" })))
            .await?;
        self.soft_reboot.store(true, Ordering::SeqCst);
        self.qmp.system_powerdown().await?;
        Ok(())
    }

    /// Writes a PNG of the display to `path`. QEMU writes into the VM's own directory (it may
    /// run as another user); the launcher then moves the file.
    pub async fn screendump(&self, path: &Path) -> Result<(), VmError> {
        self.ensure_alive()?;
        let tmp = self.scratch.join("screendump.png");
        self.qmp.screendump(&tmp).await?;
        let moved = tokio::fs::copy(&tmp, path).await;
        let _ = tokio::fs::remove_file(&tmp).await;
        moved.map_err(|e| VmError::Screendump {
            path: path.display().to_string(),
            source: e,
        })?;
        Ok(())
    }

    /// Presses the ACPI power button and waits up to `grace` for the guest to power off; then
    /// kills QEMU. Returns how it ended.
    pub async fn shutdown(&self, grace: Duration) -> ExitReason {
        if let Some(reason) = self.exited() {
            return reason;
        }
        self.state_tx.send_replace(VmState::ShuttingDown);
        if self.qmp.system_powerdown().await.is_ok()
            && let Ok(reason) = tokio::time::timeout(grace, self.wait()).await
        {
            return reason;
        }
        self.kill().await
    }

    /// Kills QEMU at once.
    pub async fn kill(&self) -> ExitReason {
        if let Some(reason) = self.exited() {
            return reason;
        }
        self.killed.store(true, Ordering::SeqCst);
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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

    /// Follows QMP events: a guest shutdown during a soft reboot becomes a reset; pause and resume
    /// from any source are reflected in the state.
    fn watch_events(&self) {
        let mut events = self.qmp.events();
        let state = self.state_tx.clone();
        let soft_reboot = self.soft_reboot.clone();
        let qmp = self.qmp.clone();
        tokio::spawn(async move {
            while let Ok(ev) = events.recv().await {
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
                    "STOP" => transition(&state, VmState::Running, VmState::Paused),
                    "RESUME" => transition(&state, VmState::Paused, VmState::Running),
                    _ => {}
                }
            }
        });
    }

    /// Owns the child: waits for it, then publishes why it ended.
    fn watch_exit(&self, mut child: Child, stderr_path: PathBuf) {
        let state = self.state_tx.clone();
        let killed = self.killed.clone();
        let qmp = self.qmp.clone();
        let mut events = self.qmp.events();
        tokio::spawn(async move {
            let mut cause: Option<bool> = None;
            let status = loop {
                tokio::select! {
                    s = child.wait() => break s,
                    ev = events.recv() => note_shutdown(ev.ok(), &mut cause),
                }
            };
            // QEMU announces SHUTDOWN just before exiting: read what it sent up to its last line.
            let _ = tokio::time::timeout(Duration::from_secs(2), qmp.closed()).await;
            while let Ok(ev) = events.try_recv() {
                note_shutdown(Some(ev), &mut cause);
            }
            let reason = if killed.load(Ordering::SeqCst) {
                ExitReason::Killed
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
            state.send_replace(VmState::Exited { reason });
        });
    }
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

fn transition(state: &watch::Sender<VmState>, from: VmState, to: VmState) {
    state.send_if_modified(|s| {
        let change = *s == from;
        if change {
            *s = to;
        }
        change
    });
}

/// Remembers whether the last SHUTDOWN came from the guest (`true`) or the host (`false`).
fn note_shutdown(ev: Option<crate::qmp::QmpEvent>, cause: &mut Option<bool>) {
    if let Some(ev) = ev
        && ev.event == "SHUTDOWN"
    {
        *cause = ev.data.get("guest").and_then(|g| g.as_bool());
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
