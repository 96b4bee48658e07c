//! `idle`: the resident memory of a `kuvirt server` (API server, controllers and this host's
//! node agent) with no VMs, sampled once a second after its node is Ready.

use std::time::Duration;

use anyhow::Result;

use super::{Ctx, mib};
use crate::mem;
use crate::plane::{Server, ServerOpts};
use crate::report::Scenario;

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let secs = if ctx.quick { 5 } else { 20 };
    let server = Server::start(&ctx.paths, "idle", &ServerOpts { node_agent: true }).await?;
    let samples = mem::sample(server.pid(), secs, Duration::from_secs(1)).await;
    let rss: Vec<f64> = samples.iter().map(|m| mib(m.rss_kib as f64)).collect();
    let pss: Vec<f64> = samples.iter().map(|m| mib(m.pss_kib as f64)).collect();
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    sc.metric("samples (1 s apart)", rss.len() as f64, "");
    sc.metric("server RSS, max", max(&rss), "MiB");
    sc.metric("server PSS, max", max(&pss), "MiB");
    sc.target("idle `kuvirt server` RSS", 40.0, max(&rss), "MiB");
    server.stop();
    Ok(())
}
