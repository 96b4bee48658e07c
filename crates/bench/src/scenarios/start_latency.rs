//! `start-latency`: alternating runs of a bare QEMU boot (spawn → QMP says the vCPUs run) and a
//! kuvirt start (POST VirtualMachine → the VMI's watch shows phase Running) of the same guest.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Ctx, clean, create_vm, ms};
use crate::plane::{Server, ServerOpts};
use crate::qemu;
use crate::report::Scenario;
use crate::stats::Summary;
use crate::tracker::Tracker;

/// One kuvirt start: when the VMI appeared, was Scheduled and was Running, after the POST.
struct Stages {
    vmi: f64,
    scheduled: f64,
    running: f64,
}

async fn kuvirt_once(
    server: &Server,
    tracker: &Tracker,
    image: &str,
    name: &str,
) -> Result<Stages> {
    tracker.forget(name);
    let t0 = Instant::now();
    create_vm(&server.client, name, image).await?;
    tracker
        .wait_all(&[name.to_string()], "Running", Duration::from_secs(120))
        .await?;
    let seen = tracker.seen(name).context("VMI not seen")?;
    let at = |p: &str| seen.phases.get(p).map_or(f64::NAN, |t| ms(*t - t0));
    let stages = Stages {
        vmi: seen.created.map_or(f64::NAN, |t| ms(t - t0)),
        scheduled: at("Scheduled"),
        running: at("Running"),
    };
    clean(server).await?;
    Ok(stages)
}

async fn bare_once(ctx: &Ctx, i: usize) -> Result<f64> {
    let dir = ctx.paths.work.join("bare").join(format!("start-{i}"));
    let (bare, took) = qemu::start(&ctx.guest()?.disk, &dir, &ctx.accel).await?;
    drop(bare);
    Ok(ms(took))
}

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let runs = if ctx.quick { 3 } else { 10 };
    let image = ctx.guest()?.image.clone();
    let server = Server::start(
        &ctx.paths,
        "start-latency",
        &ServerOpts { node_agent: true },
    )
    .await?;
    let tracker = Tracker::start(&server.client, super::NAMESPACE).await?;
    // Warm-up, not counted: the image pull into the node's cache, the page cache for QEMU.
    bare_once(ctx, 0).await?;
    kuvirt_once(&server, &tracker, &image, "warmup").await?;
    let (mut bare, mut kuvirt, mut vmi, mut scheduled) = (vec![], vec![], vec![], vec![]);
    for i in 0..runs {
        // Alternate which side goes first, so drift over the run hits both alike.
        let name = format!("start-{i}");
        let bare_first = i % 2 == 0;
        if bare_first {
            bare.push(bare_once(ctx, i).await?);
        }
        let s = kuvirt_once(&server, &tracker, &image, &name).await?;
        vmi.push(s.vmi);
        scheduled.push(s.scheduled);
        kuvirt.push(s.running);
        if !bare_first {
            bare.push(bare_once(ctx, i).await?);
        }
    }
    let (b, k) = (Summary::of(&bare), Summary::of(&kuvirt));
    sc.metric("runs per side", runs as f64, "");
    sc.metric("bare QEMU start p50", b.p50, "ms");
    sc.metric("bare QEMU start p90", b.p90, "ms");
    sc.metric("kuvirt create → Running p50", k.p50, "ms");
    sc.metric("kuvirt create → Running p90", k.p90, "ms");
    sc.metric("ratio p50 (kuvirt / bare)", k.p50 / b.p50, "×");
    sc.metric("ratio p90 (kuvirt / bare)", k.p90 / b.p90, "×");
    sc.metric("… VMI created p50", Summary::of(&vmi).p50, "ms");
    sc.metric("… VMI Scheduled p50", Summary::of(&scheduled).p50, "ms");
    sc.target(
        "create → VMI Running vs bare QEMU start, p50",
        1.5,
        k.p50 / b.p50,
        "×",
    );
    sc.note(format!(
        "bare QEMU: `qemu-system-x86_64 {}`",
        qemu::argv(
            std::path::Path::new("DISK"),
            std::path::Path::new("DIR"),
            &ctx.accel
        )
        .join(" ")
    ));
    server.stop();
    Ok(())
}
