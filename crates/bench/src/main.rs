//! `kuvirt-bench`: the benchmark harness. Every speed and memory target of docs/SPEC.md is
//! measured here, against bare QEMU in the same run where there is a baseline; one command
//! writes JSON and Markdown and can refresh SPEC.md's measured section.

mod bare_migration;
mod cluster;
mod machine;
mod mem;
mod plane;
mod qemu;
mod report;
mod scenarios;
mod stats;
mod tracker;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use plane::{Guest, Paths, Registry};
use report::{Report, Scenario};
use scenarios::Ctx;

/// Every scenario, in the order they run: its name, what it does, whether it boots the demo
/// guest (which needs a registry).
const SCENARIOS: &[(&str, &str, bool)] = &[
    (
        "idle",
        "RSS of an idle `kuvirt server` (API server, controllers, node agent), sampled once a second.",
        false,
    ),
    (
        "api",
        "ConfigMap create/get (16 in flight), list and watch against the embedded API server over HTTPS (kube-rs).",
        false,
    ),
    (
        "control-plane",
        "VMIs created 32 at a time on simulated nodes (`kuvirt agent --simulated-nodes`: real pod runner, launchers that report Running without QEMU); latency from POST to the watch showing Running; API requests from the server's /metrics.",
        false,
    ),
    (
        "start-latency",
        "Alternating runs of a bare QEMU boot of the demo disk (spawn → QMP: vCPUs running) and a kuvirt start (POST VirtualMachine → the VMI watch shows Running), one warm-up each.",
        true,
    ),
    (
        "overhead",
        "1, 10 and 50 VMs running with their guests booted (`kuvirt-guest: ready`): RSS/PSS of each launcher and of the server, QEMU excluded.",
        true,
    ),
    (
        "burst",
        "N VirtualMachines posted at once until all VMIs are Running, against N bare QEMUs started at once until all run.",
        true,
    ),
    (
        "migration",
        "An idle 256 MiB guest (the demo containerDisk, masquerade) moved back and forth between two `kuvirt agent` nodes in their own network namespaces (VirtualMachineInstanceMigration created → its watch shows Succeeded), alternating with bare QEMU→QEMU migrations of the same disk and memory done as kuvirt's launchers do them (target start, NBD mirror of the overlay, memory; until the guest runs on the target), one warm-up each; downtime is QEMU's own.",
        true,
    ),
];

#[derive(Parser)]
#[command(
    name = "kuvirt-bench",
    about = "kuvirt's benchmark harness (docs/SPEC.md)"
)]
struct Args {
    /// Smaller counts: the whole run in under 3 minutes.
    #[arg(long)]
    quick: bool,
    /// Only these scenarios (comma-separated): idle, api, control-plane, start-latency,
    /// overhead, burst, migration.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where results.json and results.md go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Scratch space (servers, node state, the guest, the registry); QEMU (uid 107) must reach it.
    #[arg(long, default_value = "/var/tmp/kuvirt-bench")]
    work: PathBuf,
    /// The kuvirt binary (default: the one next to this harness).
    #[arg(long)]
    kuvirt: Option<PathBuf>,
    /// tcg or kvm, for kuvirt and bare QEMU alike.
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// VMIs for control-plane (default: 10,000; 1,000 with --quick).
    #[arg(long)]
    control_plane_vmis: Option<usize>,
    /// Replace the measured section of this SPEC.md with the results.
    #[arg(long)]
    update_spec: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("kuvirt-bench runs VMs in pod sandboxes: run it as root");
    }
    let selected: Vec<&(&str, &str, bool)> = SCENARIOS
        .iter()
        .filter(|(n, _, _)| args.only.is_empty() || args.only.iter().any(|o| o == n))
        .collect();
    if let Some(bad) = args
        .only
        .iter()
        .find(|o| !SCENARIOS.iter().any(|(n, _, _)| n == o))
    {
        bail!("--only {bad}: no such scenario");
    }
    let kuvirt = match &args.kuvirt {
        Some(k) => k.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the harness's directory")?
            .join("kuvirt"),
    };
    if !kuvirt.exists() {
        bail!(
            "{}: not found (build it: cargo build --release -p kuvirt)",
            kuvirt.display()
        );
    }
    std::fs::create_dir_all(&args.work)?;
    plane::open_up(&args.work);
    // A run that was interrupted leaves processes and a pod network behind.
    plane::kill_under(&args.work);
    plane::remove_pod_network();
    let paths = Paths {
        kuvirt,
        accel: args.accel.clone(),
        work: args.work.clone(),
    };
    let repo = std::env::current_dir()?;
    let mode = if args.quick { "quick" } else { "full" };
    let mut command = format!("scripts/bench{}", if args.quick { " --quick" } else { "" });
    if !args.only.is_empty() {
        command.push_str(&format!(" --only {}", args.only.join(",")));
    }
    if let Some(n) = args.control_plane_vmis {
        command.push_str(&format!(" --control-plane-vmis {n}"));
    }
    let mut report = Report {
        date: jiff::Timestamp::now()
            .strftime("%Y-%m-%d %H:%M UTC")
            .to_string(),
        machine: machine::Machine::probe(&repo, &args.accel),
        mode: mode.into(),
        command,
        scenarios: Vec::new(),
    };
    let (_registry, guest) = if selected.iter().any(|(_, _, boots)| *boots) {
        eprintln!("kuvirt-bench: building the demo guest and pushing it to a local registry");
        let registry = Registry::start(&paths.work).await?;
        let guest = Guest::build_and_push(&paths, &registry)?;
        (Some(registry), Some(guest))
    } else {
        (None, None)
    };
    let ctx = Ctx {
        paths,
        accel: args.accel.clone(),
        quick: args.quick,
        guest,
        control_plane_vmis: args.control_plane_vmis.unwrap_or(if args.quick {
            1000
        } else {
            10_000
        }),
    };
    let started = Instant::now();
    let mut failed = false;
    for (name, method, _) in selected {
        eprintln!("kuvirt-bench: {name}");
        let mut sc = Scenario::new(name, method);
        let t = Instant::now();
        let r = match *name {
            "idle" => scenarios::idle::run(&ctx, &mut sc).await,
            "api" => scenarios::api::run(&ctx, &mut sc).await,
            "control-plane" => scenarios::control_plane::run(&ctx, &mut sc).await,
            "start-latency" => scenarios::start_latency::run(&ctx, &mut sc).await,
            "overhead" => scenarios::overhead::run(&ctx, &mut sc).await,
            "burst" => scenarios::burst::run(&ctx, &mut sc).await,
            "migration" => scenarios::migration::run(&ctx, &mut sc).await,
            other => Err(anyhow::anyhow!("no scenario {other}")),
        };
        sc.seconds = t.elapsed().as_secs_f64();
        if let Err(e) = r {
            eprintln!("kuvirt-bench: {name} failed: {e:#}");
            sc.error = Some(format!("{e:#}"));
            failed = true;
            // Whatever it left running goes before the next scenario (not the registry).
            plane::kill_under(&ctx.paths.work.join(name));
            plane::kill_under(&ctx.paths.work.join("bare"));
            plane::remove_pod_network();
        }
        for t in &sc.targets {
            eprintln!(
                "  {}: {} {} (limit {} {}) {}",
                t.what,
                report::num(t.measured),
                t.unit,
                report::num(t.limit),
                t.unit,
                if t.met { "met" } else { "MISSED" }
            );
        }
        report.scenarios.push(sc);
    }
    eprintln!(
        "kuvirt-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&args.out)?;
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(args.out.join("results.json"), json + "\n")?;
    let md = report.markdown();
    std::fs::write(args.out.join("results.md"), &md)?;
    println!("{md}");
    if let Some(spec) = &args.update_spec {
        let text = std::fs::read_to_string(spec).with_context(|| spec.display().to_string())?;
        let new = report::splice(&text, &md)
            .with_context(|| format!("{}: no bench markers", spec.display()))?;
        std::fs::write(spec, new)?;
        eprintln!("kuvirt-bench: updated {}", spec.display());
    }
    if failed {
        bail!("a scenario did not finish (see above)");
    }
    Ok(())
}
