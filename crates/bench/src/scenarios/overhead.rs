//! `overhead`: with 1, 10 and 50 VMs running and their guests booted, the memory of each
//! launcher and of the server (API server, controllers, node agent), QEMU excluded.

use std::time::Duration;

use anyhow::Result;

use super::{Ctx, NAMESPACE, clean, create_vm, guest_said, mib};
use crate::mem;
use crate::plane::{Server, ServerOpts, until};
use crate::report::Scenario;
use crate::tracker::Tracker;

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let counts: &[usize] = if ctx.quick { &[1, 10] } else { &[1, 10, 50] };
    let guest = ctx.guest()?;
    let server = Server::start(&ctx.paths, "overhead", &ServerOpts { node_agent: true }).await?;
    let tracker = Tracker::start(&server.client, NAMESPACE).await?;
    let idle_rss = mem::mean_rss_kib(&mem::sample(server.pid(), 3, Duration::from_secs(1)).await);
    let mut judged = f64::NAN;
    for &n in counts {
        let names: Vec<String> = (0..n).map(|i| format!("vm{n}-{i}")).collect();
        for name in &names {
            create_vm(&server.client, name, &guest.image).await?;
        }
        tracker
            .wait_all(&names, "Running", Duration::from_secs(600))
            .await?;
        // The steady state: every guest booted and got its DHCP lease from its launcher.
        until(
            "guests ready",
            Duration::from_secs(60 + 20 * n as u64),
            Duration::from_millis(500),
            async || {
                names
                    .iter()
                    .all(|nm| guest_said(&server.state, nm, "kuvirt-guest: ready"))
                    .then_some(())
            },
        )
        .await?;
        let tree = mem::vm_tree(server.pid());
        let launchers = mem::total(&tree.launchers);
        let qemus = mem::total(&tree.qemus);
        let others = mem::total(&tree.others);
        let srv = mem::of(server.pid()).unwrap_or_default();
        let nf = n as f64;
        let share = (srv.rss_kib as f64 - idle_rss).max(0.0);
        let per_vm_rss = (launchers.rss_kib as f64 + others.rss_kib as f64 + share) / nf;
        let per_vm_pss = (launchers.pss_kib as f64 + others.pss_kib as f64 + share) / nf;
        let issue_formula =
            (srv.rss_kib as f64 + launchers.rss_kib as f64 + others.rss_kib as f64) / nf;
        sc.metric(
            format!("{n} VMs: launcher RSS, mean"),
            mib(launchers.rss_kib as f64 / nf),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: launcher PSS, mean"),
            mib(launchers.pss_kib as f64 / nf),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: server RSS"),
            mib(srv.rss_kib as f64),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: server RSS growth per VM"),
            mib(share / nf),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: QEMU RSS, mean (not counted)"),
            mib(qemus.rss_kib as f64 / nf),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: per-VM overhead, RSS"),
            mib(per_vm_rss),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: per-VM overhead, PSS"),
            mib(per_vm_pss),
            "MiB",
        );
        sc.metric(
            format!("{n} VMs: (total − QEMU) / N, idle server included"),
            mib(issue_formula),
            "MiB",
        );
        judged = mib(per_vm_rss);
        clean(&server).await?;
        for name in &names {
            tracker.forget(name);
        }
    }
    sc.metric("idle server RSS (before VMs)", mib(idle_rss), "MiB");
    sc.target(
        &format!(
            "per-VM overhead at {} VMs (launcher + server growth, RSS)",
            counts.last().copied().unwrap_or(0)
        ),
        6.0,
        judged,
        "MiB",
    );
    sc.note("Per-VM overhead = (launchers' RSS + anything else they run + the server's RSS growth over idle) / N; QEMU and guest RAM are not counted. PSS shares the kuvirt binary's pages among the launchers that map them.");
    server.stop();
    Ok(())
}
