//! `kuvirt run`: one VM in the foreground, no control plane. The pod network becomes QEMU's
//! user-mode network (there is no pod network namespace to bind to without a node agent).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use kuvirt_images::oci::{ImageStore, PullOptions};
use kuvirt_launcher::accel::{AccelMode, QemuProbe, choose};
use kuvirt_launcher::machine::NetBackend;
use kuvirt_launcher::protocol::{Request, call};
use kuvirt_launcher::session::{Session, SessionOptions, default_run_as};
use kuvirt_launcher::vm::ExitReason;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::manifest::vmi_from_manifest;

#[derive(Args)]
pub struct RunArgs {
    /// A VirtualMachineInstance or VirtualMachine manifest (YAML or JSON).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// auto uses KVM only if a probe guest runs under it; else TCG.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Attach the serial console to this terminal (Ctrl+] detaches; the VM keeps running).
    #[arg(long)]
    console: bool,
    /// Start with the vCPUs paused.
    #[arg(long)]
    paused: bool,
    /// Images, VM directories and logs.
    #[arg(long, env = "KUVIRT_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Speak plain HTTP to this registry (loopback registries always are).
    #[arg(long)]
    insecure_registry: Vec<String>,
    #[arg(long, env = "KUVIRT_QEMU", default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    #[arg(long, default_value = "/usr/share/OVMF", hide = true)]
    ovmf_dir: PathBuf,
}

/// `/var/lib/kuvirt` for root, else `~/.local/share/kuvirt`, unless given.
pub fn state_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match given {
        Some(d) => d,
        None if nix::unistd::geteuid().is_root() => PathBuf::from("/var/lib/kuvirt"),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --state-dir")?;
            PathBuf::from(home).join(".local/share/kuvirt")
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    std::path::absolute(&dir).with_context(|| format!("{}", dir.display()))
}

pub async fn run(args: RunArgs) -> Result<i32> {
    // Signals first: a Ctrl+C, SIGTERM or hang-up during start must still end in a clean stop.
    let mut signals = Signals::new()?;
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("{}", args.file.display()))?;
    let vmi = vmi_from_manifest(&args.file, &text)?;
    let mode: AccelMode = args.accel.parse()?;
    let name = vmi.metadata.name.clone().unwrap_or_default();
    let namespace = vmi.metadata.namespace.clone().unwrap_or_default();
    let shown = format!("{namespace}/{name}");

    let nics = user_mode_nics(&vmi)?;
    let state = state_dir(args.state_dir)?;
    let vm_dir = state.join("vms").join(&namespace).join(&name);
    let control = vm_dir.join("launcher.sock");
    if control.exists()
        && tokio::time::timeout(Duration::from_secs(2), call(&control, Request::Status))
            .await
            .is_ok_and(|r| r.is_ok())
    {
        bail!("vm {shown} is already running (see {})", vm_dir.display());
    }
    let probe = QemuProbe {
        qemu_binary: args.qemu.clone(),
        deadline: Duration::from_secs(10),
        work_dir: state.clone(),
    };
    let accel_cache = state.join("accel.json");
    let accel = tokio::select! {
        a = choose(mode, Path::new("/dev/kvm"), &probe, Some(&accel_cache)) => a?,
        _ = signals.next() => bail!("vm {shown}: interrupted"),
    };
    if let Some(w) = &accel.warning {
        eprintln!("warning: {w}");
    }
    let store = ImageStore::open(&state.join("images"))?;
    let opts = SessionOptions {
        vm_dir: vm_dir.clone(),
        store,
        pull: PullOptions {
            insecure_registries: args.insecure_registry,
            progress: crate::progress_mode(),
            ..PullOptions::default()
        },
        qemu_binary: args.qemu,
        accel: accel.clone(),
        ovmf_dir: args.ovmf_dir,
        // Start paused so the console sees the guest's first byte; resumed below unless asked.
        paused: true,
        run_as: default_run_as(),
        sandbox: true,
        smbios_product: "None".into(),
        incoming: false,
    };
    // Dropping an unfinished start kills its QEMU (kill_on_drop) and leaves nothing running.
    let session = tokio::select! {
        s = Session::start(&vmi, nics, &opts) => s,
        _ = signals.next() => bail!("vm {shown}: interrupted while starting"),
    };
    let session = session.map_err(|e| anyhow::Error::new(e).context(format!("vm {shown}")))?;
    let output = session.vm.console().subscribe();
    if !args.paused
        && let Err(e) = session.vm.unpause().await
    {
        session.vm.kill().await;
        session.cleanup();
        return Err(anyhow::Error::new(e).context(format!("vm {shown}")));
    }
    eprintln!(
        "vm {shown} running: qemu pid {}, {:?}, directory {}",
        session.vm.pid().unwrap_or(0),
        accel.accel,
        vm_dir.display()
    );
    let console = if args.console {
        Some(tokio::spawn(crate::console::attach(
            session.vm.console().clone(),
            output,
        )))
    } else {
        drop(output);
        None
    };
    let _terminal = crate::console::TerminalGuard;

    let reason = tokio::select! {
        r = session.vm.wait() => r,
        _ = signals.next() => {
            // A second signal during the grace period kills at once.
            tokio::select! {
                r = session.vm.shutdown(session.grace) => r,
                _ = signals.next() => session.vm.kill().await,
            }
        }
    };
    if let Some(c) = console {
        c.abort();
    }
    session.cleanup();
    let (line, code) = match &reason {
        ExitReason::GuestShutdown => ("the guest powered off".to_string(), 0),
        ExitReason::HostShutdown => ("qemu was asked to quit".to_string(), 0),
        ExitReason::Killed => ("killed on request".to_string(), 1),
        ExitReason::GracePeriodExpired => (
            format!(
                "the guest did not power off within {}s and was killed",
                session_grace(&vmi)
            ),
            1,
        ),
        ExitReason::Crashed { detail } => (format!("qemu failed: {detail}"), 1),
        ExitReason::Migrated => ("it moved to another node".to_string(), 0),
    };
    eprintln!("vm {shown} stopped: {line}");
    Ok(code)
}

fn session_grace(vmi: &kuvirt_api::VirtualMachineInstance) -> i64 {
    vmi.spec.termination_grace_period_seconds.unwrap_or(30)
}

/// SIGINT, SIGTERM and SIGHUP as one stream of "stop" requests.
pub(crate) struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Every interface on the pod network gets QEMU's user-mode stack; multus networks need the
/// node agent.
pub(crate) fn user_mode_nics(
    vmi: &kuvirt_api::VirtualMachineInstance,
) -> Result<BTreeMap<String, NetBackend>> {
    let mut nics = BTreeMap::new();
    for (i, iface) in vmi.spec.domain.devices.interfaces.iter().enumerate() {
        let net = vmi.spec.networks.iter().find(|n| n.name == iface.name);
        match net {
            Some(n) if n.pod.is_some() => {
                nics.insert(iface.name.clone(), NetBackend::User { hostfwd: vec![] });
            }
            Some(_) => bail!(
                "spec.domain.devices.interfaces[{i}]: network {:?} is not the pod network; kuvirt run supports only the pod network",
                iface.name
            ),
            None => bail!(
                "spec.domain.devices.interfaces[{i}].name: no network named {:?}",
                iface.name
            ),
        }
    }
    Ok(nics)
}
