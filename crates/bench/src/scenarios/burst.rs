//! `burst`: N VMs created at once until all are Running, against N bare QEMUs started at once
//! (until all run), in the same run.

use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::future::join_all;

use super::{Ctx, clean, create_vm, ms};
use crate::plane::{Server, ServerOpts};
use crate::qemu;
use crate::report::Scenario;
use crate::stats::Summary;
use crate::tracker::Tracker;

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let n = if ctx.quick { 20 } else { 100 };
    let guest = ctx.guest()?;
    let server = Server::start(&ctx.paths, "burst", &ServerOpts { node_agent: true }).await?;
    let tracker = Tracker::start(&server.client, super::NAMESPACE).await?;
    // Warm-up: the image in the node's cache, as it is for any VM but a node's first.
    create_vm(&server.client, "warmup", &guest.image).await?;
    tracker
        .wait_all(&["warmup".into()], "Running", Duration::from_secs(120))
        .await?;
    clean(&server).await?;

    // Bare QEMU: N processes at once; each is timed until its vCPUs run.
    let t0 = Instant::now();
    let started = join_all((0..n).map(|i| {
        let dir = ctx.paths.work.join("bare").join(format!("burst-{i}"));
        async move { qemu::start(&guest.disk, &dir, &ctx.accel).await }
    }))
    .await;
    let bare_all = ms(t0.elapsed());
    let mut bare_each = Vec::new();
    let mut alive = Vec::new();
    for s in started {
        let (b, took) = s?;
        bare_each.push(ms(took));
        alive.push(b);
    }
    drop(alive);

    // kuvirt: N VirtualMachines posted at once.
    let names: Vec<String> = (0..n).map(|i| format!("burst-{i}")).collect();
    let t0 = Instant::now();
    for r in join_all(
        names
            .iter()
            .map(|name| create_vm(&server.client, name, &guest.image)),
    )
    .await
    {
        r?;
    }
    tracker
        .wait_all(&names, "Running", Duration::from_secs(900))
        .await?;
    let each: Vec<f64> = names
        .iter()
        .filter_map(|nm| tracker.seen(nm))
        .filter_map(|s| s.phases.get("Running").map(|t| ms(*t - t0)))
        .collect();
    let kuvirt_all = Summary::of(&each).max;
    sc.metric("VMs", n as f64, "");
    sc.metric("bare QEMU: all running", bare_all, "ms");
    sc.metric("bare QEMU: each, p50", Summary::of(&bare_each).p50, "ms");
    sc.metric("kuvirt: all Running", kuvirt_all, "ms");
    sc.metric("kuvirt: each, p50", Summary::of(&each).p50, "ms");
    sc.metric("ratio (kuvirt / bare)", kuvirt_all / bare_all, "×");
    sc.target(
        &format!("{n}-VM burst → all Running vs {n} bare QEMU starts"),
        2.0,
        kuvirt_all / bare_all,
        "×",
    );
    clean(&server).await?;
    server.stop();
    Ok(())
}
