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
}

impl Session {
    /// Prepares and starts `vmi` (defaulted and validated) with the given network backends.
    pub async fn start(
        vmi: &VirtualMachineInstance,
        nics: BTreeMap<String, NetBackend>,
        opts: &SessionOptions,
    ) -> Result<Session, SessionError> {
        std::fs::create_dir_all(&opts.vm_dir).map_err(io_err(&opts.vm_dir))?;
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
            run_dir: opts.vm_dir.clone(),
            sandbox: opts.sandbox,
            smbios_product: opts.smbios_product.clone(),
        };
        let machine = convert(vmi, &resolved, &host)?;
        if let Some((uid, gid)) = opts.run_as {
            hand_over(&opts.vm_dir, &machine, uid, gid)?;
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
        Ok(Session {
            vm,
            machine,
            grace,
            vm_dir: opts.vm_dir.clone(),
            control,
        })
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
    /// disks are ephemeral, as in KubeVirt) and sockets. Logs stay for inspection.
    pub fn cleanup(self) {
        self.control.abort();
        let _ = std::fs::remove_dir_all(self.vm_dir.join("disks"));
        for sock in [
            "launcher.sock",
            "console.sock",
            "qmp.sock",
            "serial.sock",
            "vnc.sock",
        ] {
            let _ = std::fs::remove_file(self.vm_dir.join(sock));
        }
    }
}

/// Gives QEMU's user the VM directory and every writable file it opens.
fn hand_over(vm_dir: &Path, machine: &Machine, uid: u32, gid: u32) -> Result<(), SessionError> {
    let chown = |p: &Path| std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(io_err(p));
    chown(vm_dir)?;
    let disks = vm_dir.join("disks");
    if disks.exists() {
        chown(&disks)?;
    }
    for d in &machine.disks {
        if !d.readonly || d.path.starts_with(vm_dir) {
            chown(&d.path)?;
        }
    }
    if let crate::machine::Firmware::Efi { vars, .. } = &machine.firmware {
        chown(vars)?;
    }
    Ok(())
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
