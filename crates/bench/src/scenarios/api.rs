//! `api`: the embedded API server's throughput and latency for create, get, list and watch, over
//! HTTPS with kube-rs as any client has it (ConfigMaps of 1 KiB: no controller acts on them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use super::{Ctx, NAMESPACE, ms};
use crate::plane::{Server, ServerOpts};
use crate::report::Scenario;
use crate::stats::Summary;

const CONCURRENCY: usize = 16;

fn config_map(name: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "api"}},
        "data": {"payload": "x".repeat(1024)},
    }))?)
}

/// Runs `op` on every name, `CONCURRENCY` at once: per-op latencies (ms) and the wall time.
async fn each<F, Fut>(names: &[String], op: F) -> Result<(Vec<f64>, Duration)>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let t0 = Instant::now();
    let lat: Vec<f64> = futures_util::stream::iter(names.iter().cloned())
        .map(|n| {
            let fut = op(n);
            async move {
                let t = Instant::now();
                fut.await?;
                anyhow::Ok(ms(t.elapsed()))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok((lat, t0.elapsed()))
}

fn report(sc: &mut Scenario, what: &str, lat: &[f64], wall: Duration) {
    let s = Summary::of(lat);
    sc.metric(
        format!("{what}: throughput"),
        lat.len() as f64 / wall.as_secs_f64(),
        "ops/s",
    );
    sc.metric(format!("{what}: latency p50"), s.p50, "ms");
    sc.metric(format!("{what}: latency p99"), s.p99, "ms");
}

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let n = if ctx.quick { 500 } else { 5000 };
    let lists = if ctx.quick { 5 } else { 20 };
    let server = Server::start(&ctx.paths, "api", &ServerOpts { node_agent: false }).await?;
    let cms: Api<ConfigMap> = Api::namespaced(server.client.clone(), NAMESPACE);
    let names: Vec<String> = (0..n).map(|i| format!("cm-{i:05}")).collect();

    let (lat, wall) = each(&names, |name| {
        let cms = cms.clone();
        async move {
            cms.create(&PostParams::default(), &config_map(&name)?)
                .await?;
            Ok(())
        }
    })
    .await
    .context("creates")?;
    report(sc, &format!("create ({CONCURRENCY} in flight)"), &lat, wall);

    let (lat, wall) = each(&names, |name| {
        let cms = cms.clone();
        async move {
            cms.get(&name).await?;
            Ok(())
        }
    })
    .await
    .context("gets")?;
    report(sc, &format!("get ({CONCURRENCY} in flight)"), &lat, wall);

    let mut list_lat = Vec::new();
    let t0 = Instant::now();
    for _ in 0..lists {
        let t = Instant::now();
        let got = cms.list(&ListParams::default().labels("bench=api")).await?;
        if got.items.len() != n {
            bail!("list returned {} of {n} ConfigMaps", got.items.len());
        }
        list_lat.push(ms(t.elapsed()));
    }
    let wall = t0.elapsed();
    let s = Summary::of(&list_lat);
    sc.metric(format!("list of {n}: latency p50"), s.p50, "ms");
    sc.metric(format!("list of {n}: latency max"), s.max, "ms");
    sc.metric(
        format!("list of {n}: objects per second"),
        (n * lists) as f64 / wall.as_secs_f64(),
        "objects/s",
    );

    // Watch: one watcher from the current revision; every create's event is timed from the
    // moment its POST returned.
    let rv = cms
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut stream = cms
        .watch(&WatchParams::default().labels("bench=watch"), &rv)
        .await?
        .boxed();
    let m = n / 2;
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen_w = seen.clone();
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while let Some(ev) = stream.next().await {
            if let Ok(WatchEvent::Added(cm)) = ev {
                let now = Instant::now();
                if let (Some(name), Ok(mut s)) = (cm.metadata.name, seen_w.lock()) {
                    s.insert(name, now);
                }
                count += 1;
                if count == m {
                    break;
                }
            }
        }
    });
    let posted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch_names: Vec<String> = (0..m).map(|i| format!("w-{i:05}")).collect();
    let t0 = Instant::now();
    each(&watch_names, |name| {
        let (cms, posted) = (cms.clone(), posted.clone());
        async move {
            let mut cm = config_map(&name)?;
            cm.metadata.labels = Some([("bench".to_string(), "watch".to_string())].into());
            cms.create(&PostParams::default(), &cm).await?;
            if let Ok(mut p) = posted.lock() {
                p.insert(name, Instant::now());
            }
            Ok(())
        }
    })
    .await
    .context("creates for the watch")?;
    tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .context("watch events did not all arrive")??;
    let wall = t0.elapsed();
    let (seen, posted) = (
        seen.lock().map(|s| s.clone()).unwrap_or_default(),
        posted.lock().map(|p| p.clone()).unwrap_or_default(),
    );
    // An event may arrive before its POST's answer: that counts as no delay.
    let delays: Vec<f64> = posted
        .iter()
        .filter_map(|(n, p)| seen.get(n).map(|s| ms(s.saturating_duration_since(*p))))
        .collect();
    let s = Summary::of(&delays);
    sc.metric(
        "watch: events delivered per second",
        m as f64 / wall.as_secs_f64(),
        "events/s",
    );
    sc.metric("watch: delay after the create's answer, p50", s.p50, "ms");
    sc.metric("watch: delay after the create's answer, p99", s.p99, "ms");
    server.stop();
    Ok(())
}
