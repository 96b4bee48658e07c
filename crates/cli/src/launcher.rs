//! `kuvirt launcher`: the process inside a launcher pod (KubeVirt's virt-launcher). It reads its
//! VMI from the API server, runs the VM until it ends or the pod is stopped, and exits with the
//! outcome (0 = the guest shut down). The node agent starts it and reads its state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use kube::Api;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::StartStrategy;
use kuvirt_images::oci::{ImageStore, PullOptions};
use kuvirt_launcher::accel::{AccelMode, QemuProbe, choose};
use kuvirt_launcher::session::{Session, SessionOptions, default_run_as};
use kuvirt_launcher::vm::ExitReason;

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

pub async fn launcher(args: LauncherArgs) -> Result<i32> {
    join_cgroups(&args.cgroups)?;
    let mut signals = Signals::new()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
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
    let nics = user_mode_nics(&vmi)?;
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
        smbios_product: "None".into(),
    };
    let session = tokio::select! {
        s = Session::start(&vmi, nics, &opts) => s.with_context(|| format!("vm {shown}"))?,
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
