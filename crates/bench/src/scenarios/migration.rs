//! `migration`: an idle 256 MiB guest moved back and forth between two `kuvirt agent` nodes
//! (a VirtualMachineInstanceMigration created → the watch shows it Succeeded), alternating with
//! bare QEMU→QEMU migrations of the same guest, disk and memory (see
//! [`crate::bare_migration`]). Downtime on both sides is QEMU's own number.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use kube::Api;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kuvirt_api::v1::VirtualMachineInstanceMigration;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use kuvirt_launcher::migration::{MIGRATION_RECORD, MigrationInfo, MigrationPhase};
use serde_json::json;

use super::{Ctx, NAMESPACE, ms, vm_dir};
use crate::bare_migration::{self, MEMORY_MIB, Side};
use crate::cluster::{Cluster, NODES};
use crate::plane::until;
use crate::report::Scenario;
use crate::stats::Summary;

/// The VM that moves.
const VM: &str = "mover";

/// The VM: the demo guest's disk as a containerDisk (read from the guest's OCI layout, which
/// both nodes see), 1 vCPU, 256 MiB, masquerade on the pod network (live-migratable).
fn vm(image: &str) -> Result<VirtualMachine> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": VM, "namespace": NAMESPACE},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "domain": {
                        "devices": {
                            "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                        "resources": {"requests": {"memory": format!("{MEMORY_MIB}Mi"), "cpu": "10m"}},
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "containerdisk", "containerDisk": {"image": image}}],
                },
            },
        },
    }))?)
}

/// When each migration was first seen in each phase, by one watch started before the first
/// create (the harness's clock, no poll interval).
struct Watch {
    seen: Arc<Mutex<HashMap<String, HashMap<String, Instant>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    async fn start(client: &kube::Client) -> Result<Watch> {
        let api: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), NAMESPACE);
        let seen: Arc<Mutex<HashMap<String, HashMap<String, Instant>>>> = Arc::default();
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (st, sy) = (seen.clone(), synced.clone());
        let task = tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                match ev {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                        let name = m.metadata.name.clone().unwrap_or_default();
                        let phase = m.status.as_ref().and_then(|s| s.phase.as_ref());
                        if let (Some(p), Ok(mut s)) = (phase, st.lock()) {
                            s.entry(name)
                                .or_default()
                                .entry(p.as_str().to_string())
                                .or_insert(now);
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        sy.store(true, std::sync::atomic::Ordering::SeqCst)
                    }
                    _ => {}
                }
            }
        });
        let watch = Watch { seen, task };
        until(
            "the migration watch started",
            Duration::from_secs(30),
            Duration::from_millis(10),
            async || {
                synced
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .then_some(())
            },
        )
        .await?;
        Ok(watch)
    }

    fn phases(&self, name: &str) -> HashMap<String, Instant> {
        self.seen
            .lock()
            .ok()
            .and_then(|s| s.get(name).cloned())
            .unwrap_or_default()
    }
}

/// The highest heartbeat the guest printed in `serial`.
fn last_heartbeat(serial: &str) -> u64 {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kuvirt-guest: heartbeat "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

fn serial(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default()
}

/// Whether any process names `dir` on its command line (a launcher or its QEMU).
fn runs_under(dir: &Path) -> bool {
    let d = dir.display().to_string();
    crate::mem::processes()
        .iter()
        .any(|p| p.cmdline.contains(&d))
}

/// The node the VMI runs on and its launcher's directory there.
async fn placed(c: &Cluster) -> Result<(String, PathBuf)> {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(c.client.clone(), NAMESPACE);
    let vmi = vmis.get(VM).await?;
    let node = vmi
        .status
        .and_then(|s| s.node_name)
        .context("the VMI has no node")?;
    let dir = vm_dir(c.state(&node)?, VM).with_context(|| format!("{VM}'s directory on {node}"))?;
    Ok((node, dir))
}

/// One kuvirt migration: times since the create call, and the source launcher's record.
struct KuvirtMove {
    succeeded_ms: f64,
    target_ready_ms: f64,
    running_ms: f64,
    launcher_ms: f64,
    downtime_ms: f64,
}

async fn kuvirt_once(c: &Cluster, watch: &Watch, name: &str) -> Result<KuvirtMove> {
    let (node, src_dir) = placed(c).await?;
    let before = last_heartbeat(&serial(&src_dir));
    let _ = std::fs::remove_file(src_dir.join(MIGRATION_RECORD));
    let migrations: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(c.client.clone(), NAMESPACE);
    let m: VirtualMachineInstanceMigration = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"vmiName": VM},
    }))?;
    let t0 = Instant::now();
    migrations
        .create(&PostParams::default(), &m)
        .await
        .with_context(|| format!("creating migration {name}"))?;
    let phases = until(
        &format!("migration {name} Succeeded"),
        Duration::from_secs(300),
        Duration::from_millis(2),
        async || {
            let p = watch.phases(name);
            (p.contains_key("Succeeded") || p.contains_key("Failed")).then_some(p)
        },
    )
    .await?;
    let Some(done) = phases.get("Succeeded") else {
        let m = migrations.get(name).await.ok();
        let why = m
            .and_then(|m| m.status)
            .and_then(|s| s.migration_state)
            .and_then(|s| s.failure_reason);
        bail!("migration {name} failed: {}", why.unwrap_or_default());
    };
    let at = |p: &str| phases.get(p).map_or(f64::NAN, |t| ms(*t - t0));
    let succeeded_ms = ms(*done - t0);
    // Not timed: the source's record, its launcher gone (the way back reuses its directory),
    // and the guest counting on over there without having booted again.
    let record = src_dir.join(MIGRATION_RECORD);
    let info: MigrationInfo = until(
        "the source launcher's migration record",
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || {
            let i: MigrationInfo = serde_json::from_slice(&std::fs::read(&record).ok()?).ok()?;
            (i.phase == MigrationPhase::Confirmed).then_some(i)
        },
    )
    .await?;
    until(
        "the source launcher and QEMU gone",
        Duration::from_secs(60),
        Duration::from_millis(20),
        async || (!runs_under(&src_dir)).then_some(()),
    )
    .await?;
    let (to, dst_dir) = placed(c).await?;
    if to == node {
        bail!("migration {name} succeeded but the VMI is still on {node}");
    }
    until(
        "the guest counting on the target",
        Duration::from_secs(60),
        Duration::from_millis(100),
        async || (last_heartbeat(&serial(&dst_dir)) > before).then_some(()),
    )
    .await?;
    Ok(KuvirtMove {
        succeeded_ms,
        target_ready_ms: at("TargetReady"),
        running_ms: at("Running"),
        launcher_ms: info.elapsed_ms as f64,
        downtime_ms: info.downtime_ms.map_or(f64::NAN, |d| d as f64),
    })
}

/// The bare pair: the side running the guest, and the two directories they take turns in.
struct Bare {
    side: Side,
    dirs: [PathBuf; 2],
    turn: usize,
    base: PathBuf,
    accel: String,
}

impl Bare {
    async fn once(&mut self) -> Result<bare_migration::Moved> {
        let before = last_heartbeat(&self.side.serial());
        self.turn ^= 1;
        let (side, moved) =
            bare_migration::migrate(&self.side, &self.base, &self.dirs[self.turn], &self.accel)
                .await?;
        // The old source ends; the guest counts on over here (not timed).
        self.side = side;
        let s = &self.side;
        until(
            "the bare guest counting on the target",
            Duration::from_secs(60),
            Duration::from_millis(100),
            async || (last_heartbeat(&s.serial()) > before).then_some(()),
        )
        .await?;
        Ok(moved)
    }
}

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let rounds = if ctx.quick { 3 } else { 10 };
    let guest = ctx.guest()?;
    let guest_dir = guest.disk.parent().context("the guest's directory")?;
    let image = format!("oci:{}:latest", guest_dir.join("oci").display());
    let base = ctx.paths.work.join("migration");
    let c = Cluster::up(&ctx.paths, &base).await?;
    let watch = Watch::start(&c.client).await?;
    // Both guests boot at once and idle from then on, through every round of both sides.
    let bare_root = ctx.paths.work.join("bare");
    let dirs = [bare_root.join("migration-a"), bare_root.join("migration-b")];
    let src = bare_migration::boot(&guest.disk, &dirs[0], &ctx.accel).await?;
    let vms: Api<VirtualMachine> = Api::namespaced(c.client.clone(), NAMESPACE);
    vms.create(&PostParams::default(), &vm(&image)?)
        .await
        .context("creating the VM")?;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(c.client.clone(), NAMESPACE);
    until(
        "the VMI Running",
        Duration::from_secs(180),
        Duration::from_millis(100),
        async || {
            let v = vmis.get_opt(VM).await.ok()??;
            (v.status?.phase?.as_str() == "Running").then_some(())
        },
    )
    .await?;
    let (_, dir) = placed(&c).await?;
    until(
        "both guests booted",
        Duration::from_secs(180),
        Duration::from_millis(200),
        async || {
            (serial(&dir).contains("kuvirt-guest: ready")
                && src.serial().contains("kuvirt-guest: ready"))
            .then_some(())
        },
    )
    .await?;
    let mut bare = Bare {
        side: src,
        dirs,
        turn: 0,
        base: guest.disk.clone(),
        accel: ctx.accel.clone(),
    };
    // Warm-up, not counted: the other node imports the image, page caches fill.
    bare.once().await.context("bare warm-up")?;
    kuvirt_once(&c, &watch, "warmup")
        .await
        .context("kuvirt warm-up")?;
    let mut raw = Vec::new();
    let mut kv = Vec::new();
    for i in 0..rounds {
        // Alternate which side goes first, so drift over the run hits both alike.
        let bare_first = i % 2 == 0;
        if bare_first {
            raw.push(bare.once().await?);
        }
        kv.push(kuvirt_once(&c, &watch, &format!("move-{i}")).await?);
        if !bare_first {
            raw.push(bare.once().await?);
        }
    }
    let col = |f: fn(&bare_migration::Moved) -> f64| raw.iter().map(f).collect::<Vec<_>>();
    let kcol = |f: fn(&KuvirtMove) -> f64| kv.iter().map(f).collect::<Vec<_>>();
    let r_total = Summary::of(&col(|m| m.total_ms));
    let r_migrate = Summary::of(&col(|m| m.migrate_ms));
    let r_down = Summary::of(&col(|m| m.downtime_ms));
    let k_total = Summary::of(&kcol(|m| m.succeeded_ms));
    let k_down = Summary::of(&kcol(|m| m.downtime_ms));
    sc.metric("rounds per side", rounds as f64, "");
    sc.metric("guest memory", f64::from(MEMORY_MIB), "MiB");
    sc.metric("bare QEMU: migration p50", r_total.p50, "ms");
    sc.metric("bare QEMU: migration min", r_total.min, "ms");
    sc.metric("bare QEMU: migration max", r_total.max, "ms");
    sc.metric(
        "bare QEMU: … overlay mirror in step p50",
        Summary::of(&col(|m| m.mirrored_ms)).p50,
        "ms",
    );
    sc.metric("bare QEMU: … `migrate` → running p50", r_migrate.p50, "ms");
    sc.metric("bare QEMU: downtime p50", r_down.p50, "ms");
    sc.metric("bare QEMU: downtime min", r_down.min, "ms");
    sc.metric("bare QEMU: downtime max", r_down.max, "ms");
    sc.metric("kuvirt: create → Succeeded p50", k_total.p50, "ms");
    sc.metric("kuvirt: create → Succeeded min", k_total.min, "ms");
    sc.metric("kuvirt: create → Succeeded max", k_total.max, "ms");
    sc.metric(
        "kuvirt: … TargetReady p50",
        Summary::of(&kcol(|m| m.target_ready_ms)).p50,
        "ms",
    );
    sc.metric(
        "kuvirt: … Running p50",
        Summary::of(&kcol(|m| m.running_ms)).p50,
        "ms",
    );
    sc.metric(
        "kuvirt: … source launcher, Migrate → Handover p50",
        Summary::of(&kcol(|m| m.launcher_ms)).p50,
        "ms",
    );
    sc.metric("kuvirt: downtime p50", k_down.p50, "ms");
    sc.metric("kuvirt: downtime min", k_down.min, "ms");
    sc.metric("kuvirt: downtime max", k_down.max, "ms");
    let ratio = k_total.p50 / r_total.p50;
    sc.metric("ratio p50 (kuvirt / bare migration)", ratio, "×");
    sc.metric(
        "ratio p50 (kuvirt / bare `migrate` → running)",
        k_total.p50 / r_migrate.p50,
        "×",
    );
    sc.target(
        "live migration create → Succeeded vs bare QEMU→QEMU migration, p50",
        1.3,
        ratio,
        "×",
    );
    sc.note(format!(
        "kuvirt: nodes {} and {}, each a `kuvirt agent` in its own network namespace on a shared bridge, under `kuvirt server --no-node-agent`; the VM's containerDisk is `{image}`; downtime is QEMU's, from the source launcher's {MIGRATION_RECORD}; the source launcher's part runs from its Migrate request until it waits in Handover (overlay mirror, memory, mirror settled), woken by QEMU's events (and a 200 ms tick).",
        NODES[0], NODES[1]
    ));
    sc.note(format!(
        "bare QEMU: `qemu-system-x86_64 {}` (the target adds `-S -incoming defer`); the timed sequence is the target's `qemu-img create` of its overlay, its start, `nbd-server-start` + `block-export-add`, `migrate-incoming unix:`, on the source `blockdev-add` (nbd) + `blockdev-mirror` (sync top, write-blocking) until BLOCK_JOB_READY, `migrate` with max-bandwidth 2^40 (events on, auto-converge off), and on the target's MIGRATION completed event `nbd-server-stop` + `cont`.",
        bare_migration::argv(Path::new("OVERLAY"), Path::new("DIR"), &ctx.accel).join(" ")
    ));
    drop(watch);
    drop(bare);
    drop(c);
    Ok(())
}
