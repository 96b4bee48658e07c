//! One VM from spec to running QEMU: prepare volumes, translate, start, serve the console and the
//! control protocol. `kuvirt run` drives it in the foreground; the node agent drives it per pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kuvirt_api::v1::VirtualMachineInstance;
use kuvirt_images::oci::{ImageStore, PullOptions};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use crate::accel::AccelChoice;
use crate::convert::{ConvertError, HostConfig, convert};
use crate::machine::{Machine, NetBackend};
use crate::prepare::{PrepareError, PrepareOptions, prepare};
use crate::protocol::{Served, serve};
use crate::vm::{StartOptions, Vm, VmError};

/// KubeVirt runs QEMU as uid/gid 107 (`qemu`).
pub const QEMU_UID: u32 = 107;

/// How to run this VM.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The VM's own directory: disks, sockets, logs. Keep it short: unix socket paths are limited
    /// to 107 bytes.
    pub vm_dir: PathBuf,
    pub store: ImageStore,
    pub pull: PullOptions,
    pub qemu_binary: PathBuf,
    pub accel: AccelChoice,
    pub ovmf_dir: PathBuf,
    pub paused: bool,
    /// Run QEMU as this uid/gid (files it needs are handed over to it).
    pub run_as: Option<(u32, u32)>,
    pub sandbox: bool,
    pub smbios_product: String,
    /// The target of a live migration: QEMU waits for the VM's state instead of booting it.
    pub incoming: bool,
}

/// A session failure; one line naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SessionError + '_ {
    move |source| SessionError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A running VM and the tasks serving it.
pub struct Session {
    pub vm: Arc<Vm>,
    pub machine: Machine,
    pub grace: Duration,
    pub vm_dir: PathBuf,
    control: JoinHandle<()>,
    /// Held for the session's life: one launcher per VM directory.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// Unix socket paths must fit `sun_path` (108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

impl Session {
    /// Prepares and starts `vmi` (defaulted and validated) with the given network backends.
    ///
    /// Layout: `VM_DIR` (root's) holds the launcher and console sockets, logs, `disks/` and the
    /// EFI variables; `VM_DIR/qemu/` belongs to QEMU's user and holds only what QEMU creates
    /// (its monitor, serial and VNC sockets, screendumps). QEMU's user owns no directory the
    /// launcher writes into, so it cannot redirect the launcher's writes with links.
    pub async fn start(
        vmi: &VirtualMachineInstance,
        nics: BTreeMap<String, NetBackend>,
        opts: &SessionOptions,
    ) -> Result<Session, SessionError> {
        let vm_dir = &opts.vm_dir;
        let qemu_dir = vm_dir.join("qemu");
        for sock in [
            vm_dir.join("launcher.sock"),
            vm_dir.join("console.sock"),
            qemu_dir.join("serial.sock"),
        ] {
            if sock.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(SessionError::Io {
                    path: sock.display().to_string(),
                    source: std::io::Error::other(format!(
                        "socket path longer than {MAX_SOCKET_PATH} bytes: use a shorter state directory"
                    )),
                });
            }
        }
        std::fs::create_dir_all(vm_dir).map_err(io_err(vm_dir))?;
        let lock_path = vm_dir.join("lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| SessionError::Io {
                path: lock_path.display().to_string(),
                source: std::io::Error::other(format!("another launcher runs this VM ({e})")),
            })?;
        let _ = std::fs::remove_dir_all(&qemu_dir);
        std::fs::create_dir(&qemu_dir).map_err(io_err(&qemu_dir))?;
        let started = start_locked(vmi, nics, opts, &qemu_dir).await;
        match started {
            Ok((vm, machine, grace, control)) => Ok(Session {
                vm,
                machine,
                grace,
                vm_dir: vm_dir.clone(),
                control,
                _lock: lock,
            }),
            Err(e) => {
                remove_runtime_files(vm_dir);
                Err(e)
            }
        }
    }

    /// The control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.vm_dir.join("launcher.sock")
    }

    /// The console socket.
    pub fn console_socket(&self) -> PathBuf {
        self.vm_dir.join("console.sock")
    }

    /// Stops serving and removes what the VM no longer needs: disks (overlays, cloud-init, empty
    /// disks are ephemeral, as in KubeVirt), sockets and QEMU's directory. Logs stay.
    pub fn cleanup(self) {
        self.control.abort();
        remove_runtime_files(&self.vm_dir);
    }
}

type Started = (Arc<Vm>, Machine, Duration, JoinHandle<()>);

async fn start_locked(
    vmi: &VirtualMachineInstance,
    nics: BTreeMap<String, NetBackend>,
    opts: &SessionOptions,
    qemu_dir: &Path,
) -> Result<Started, SessionError> {
    let mut resolved = prepare(
        vmi,
        &opts.store,
        &PrepareOptions {
            vm_dir: opts.vm_dir.clone(),
            pull: opts.pull.clone(),
            ovmf_dir: opts.ovmf_dir.clone(),
        },
    )
    .await?;
    resolved.nics = nics;
    let host = HostConfig {
        accel: opts.accel.accel,
        ovmf_dir: opts.ovmf_dir.clone(),
        run_dir: qemu_dir.to_path_buf(),
        sandbox: opts.sandbox,
        smbios_product: opts.smbios_product.clone(),
    };
    let mut machine = convert(vmi, &resolved, &host)?;
    machine.incoming = opts.incoming;
    if let Some((uid, gid)) = opts.run_as {
        hand_over(qemu_dir, &machine, &resolved, uid, gid)?;
    }
    let grace = Duration::from_secs(
        vmi.spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0) as u64,
    );
    let control_path = opts.vm_dir.join("launcher.sock");
    let _ = std::fs::remove_file(&control_path);
    let listener = UnixListener::bind(&control_path).map_err(io_err(&control_path))?;
    let vm = Vm::start(
        &machine,
        &StartOptions {
            qemu_binary: opts.qemu_binary.clone(),
            log_dir: opts.vm_dir.clone(),
            console_socket: Some(opts.vm_dir.join("console.sock")),
            paused: opts.paused,
            run_as: opts.run_as,
            start_timeout: Duration::from_secs(30),
        },
    )
    .await?;
    let vm = Arc::new(vm);
    let control = tokio::spawn(serve(
        listener,
        Arc::new(Served {
            vm: vm.clone(),
            accel: opts.accel.accel,
            grace,
        }),
    ));
    Ok((vm, machine, grace, control))
}

fn remove_runtime_files(vm_dir: &Path) {
    let _ = std::fs::remove_dir_all(vm_dir.join("disks"));
    let _ = std::fs::remove_dir_all(vm_dir.join("qemu"));
    for f in ["launcher.sock", "console.sock", "efi-vars.fd.tmp"] {
        let _ = std::fs::remove_file(vm_dir.join(f));
    }
}

/// Gives QEMU's user its directory and the writable files kuvirt made for this VM. Writable disks
/// kuvirt did not make (existing hostDisks) keep their owner: they must already be writable by
/// QEMU's user, or the start fails with a clear reason.
fn hand_over(
    qemu_dir: &Path,
    machine: &Machine,
    resolved: &crate::convert::Resolved,
    uid: u32,
    gid: u32,
) -> Result<(), SessionError> {
    let chown = |p: &Path| std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(io_err(p));
    chown(qemu_dir)?;
    for d in machine.disks.iter().filter(|d| !d.readonly) {
        let owned = resolved.disks.values().any(|r| r.path == d.path && r.owned);
        if owned {
            chown(&d.path)?;
        } else if !writable_by(&d.path, uid, gid) {
            return Err(SessionError::Io {
                path: d.path.display().to_string(),
                source: std::io::Error::other(format!(
                    "not writable by QEMU's user (uid {uid}, gid {gid}): change its owner or group, or mark the disk readonly"
                )),
            });
        }
    }
    if let crate::machine::Firmware::Efi { vars, .. } = &machine.firmware {
        chown(vars)?;
    }
    Ok(())
}

/// Whether `uid`/`gid` may write `path` by its mode bits.
fn writable_by(path: &Path, uid: u32, gid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.mode();
            (m.uid() == uid && mode & 0o200 != 0)
                || (m.gid() == gid && mode & 0o020 != 0)
                || mode & 0o002 != 0
        }
        Err(_) => false,
    }
}

/// uid 107 with the `kvm` group (for /dev/kvm) when running as root; `None` otherwise.
pub fn default_run_as() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let gid = nix::unistd::Group::from_name("kvm")
        .ok()
        .flatten()
        .map_or(QEMU_UID, |g| g.gid.as_raw());
    Some((QEMU_UID, gid))
}
