//! `control-plane`: N VMIs on simulated nodes (`kuvirt agent --simulated-nodes`: the pod runner
//! of a real node agent, with launchers that report Running without QEMU, like KubeVirt's KWOK
//! tests), so only the API server, the controllers and the agents' API traffic are measured:
//! create → Running latency, API writes per VMI, and the server's memory per stored VMI.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use kube::Api;
use kube::api::PostParams;
use kuvirt_api::VirtualMachineInstance;
use serde_json::json;

use super::{Ctx, NAMESPACE, mib, ms};
use crate::mem;
use crate::plane::{Server, ServerOpts, simulated_nodes, until};
use crate::report::Scenario;
use crate::stats::Summary;
use crate::tracker::Tracker;

/// VMIs per simulated node (a node's /24 holds 253 pod addresses).
const PER_NODE: usize = 170;
/// Creates in flight at once.
const CONCURRENCY: usize = 32;

/// `apiserver_request_total` summed by verb and by resource of the writes.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    pub by_verb: BTreeMap<String, f64>,
    /// Writes per resource (and subresource).
    pub writes_by_resource: BTreeMap<String, f64>,
    /// LISTs per resource.
    pub lists_by_resource: BTreeMap<String, f64>,
}

const WRITES: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

/// The value of label `name` in a Prometheus label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let len = labels[start..].find('"')?;
    Some(&labels[start..start + len])
}

/// Parses the `apiserver_request_total` lines of a /metrics text.
pub fn parse_requests(text: &str) -> Requests {
    let mut r = Requests::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let verb = label(labels, "verb").unwrap_or("?").to_string();
        if WRITES.contains(&verb.as_str()) {
            let mut res = label(labels, "resource").unwrap_or("?").to_string();
            if let Some(sub) = label(labels, "subresource").filter(|s| !s.is_empty()) {
                res = format!("{res}/{sub}");
            }
            // Refused writes (conflicts, say) are counted apart.
            if let Some(code) = label(labels, "code").filter(|c| !c.starts_with('2')) {
                res = format!("{res} ({code})");
            }
            *r.writes_by_resource.entry(res).or_default() += v;
        } else if verb == "LIST" {
            let res = label(labels, "resource").unwrap_or("?").to_string();
            *r.lists_by_resource.entry(res).or_default() += v;
        }
        *r.by_verb.entry(verb).or_default() += v;
    }
    r
}

impl Requests {
    fn minus(&self, before: &Requests) -> Requests {
        let sub = |a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>| {
            a.iter()
                .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect()
        };
        Requests {
            by_verb: sub(&self.by_verb, &before.by_verb),
            writes_by_resource: sub(&self.writes_by_resource, &before.writes_by_resource),
            lists_by_resource: sub(&self.lists_by_resource, &before.lists_by_resource),
        }
    }

    /// The nodes' heartbeats (they go on whatever the VMIs do).
    fn heartbeats(&self) -> f64 {
        self.writes_by_resource
            .get("nodes/status")
            .copied()
            .unwrap_or(0.0)
    }

    fn writes(&self) -> f64 {
        WRITES
            .iter()
            .filter_map(|w| self.by_verb.get(*w))
            .sum::<f64>()
    }
}

/// The API server's request counters now.
pub async fn scrape(client: &kube::Client) -> Result<Requests> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await.context("GET /metrics")?;
    Ok(parse_requests(&text))
}

fn vmi(name: &str) -> Result<VirtualMachineInstance> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "domain": {
                "devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
                "resources": {"requests": {"memory": "128Mi"}},
            },
            "volumes": [{"name": "containerdisk",
                         "containerDisk": {"image": "registry.invalid/bench/guest:v1"}}],
        },
    }))?)
}

pub async fn run(ctx: &Ctx, sc: &mut Scenario) -> Result<()> {
    let n = ctx.control_plane_vmis.max(1);
    let nodes = n.div_ceil(PER_NODE);
    let server = Server::start(
        &ctx.paths,
        "control-plane",
        &ServerOpts { node_agent: false },
    )
    .await?;
    let agents = simulated_nodes(&ctx.paths, &server, nodes).await?;
    let tracker = Tracker::start(&server.client, NAMESPACE).await?;
    let half = Duration::from_millis(500);
    let rss_before = mem::mean_rss_kib(&mem::sample(server.pid(), 3, half).await);
    let store = server.data.join("store.redb");
    let store_before = std::fs::metadata(&store).map_or(0, |m| m.len());
    let before = scrape(&server.client).await?;

    let vmis: Api<VirtualMachineInstance> = Api::namespaced(server.client.clone(), NAMESPACE);
    let names: Vec<String> = (0..n).map(|i| format!("cp-{i:05}")).collect();
    let posted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let t0 = Instant::now();
    let mut creates = futures_util::stream::iter(names.iter().cloned())
        .map(|name| {
            let (vmis, posted) = (vmis.clone(), posted.clone());
            async move {
                let obj = vmi(&name)?;
                let t = Instant::now();
                vmis.create(&PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("creating VMI {name}"))?;
                if let Ok(mut p) = posted.lock() {
                    p.insert(name, t);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY);
    while let Some(r) = creates.next().await {
        r?;
    }
    let created_in = t0.elapsed();
    tracker
        .wait_all(&names, "Running", Duration::from_secs(1800))
        .await?;
    let all_running = t0.elapsed();
    let posted = posted.lock().map(|p| p.clone()).unwrap_or_default();
    let lat: Vec<f64> = names
        .iter()
        .filter_map(|nm| {
            let t = posted.get(nm)?;
            tracker.seen(nm)?.phases.get("Running").map(|r| ms(*r - *t))
        })
        .collect();
    let s = Summary::of(&lat);
    // Quiet again (no status writes within half a second), then the counters and the memory.
    let mut last = scrape(&server.client).await?;
    let after = until(
        "API writes settled",
        Duration::from_secs(60),
        half,
        async || {
            let now = scrape(&server.client).await.ok()?;
            let settled = now.writes() - now.heartbeats() == last.writes() - last.heartbeats();
            last = now.clone();
            settled.then_some(now)
        },
    )
    .await?
    .minus(&before);
    let rss_after = mem::mean_rss_kib(&mem::sample(server.pid(), 3, half).await);
    let store_after = std::fs::metadata(&store).map_or(0, |m| m.len());
    let nf = n as f64;

    sc.metric("VMIs", nf, "");
    sc.metric("simulated nodes", nodes as f64, "");
    sc.metric("simulated agents", agents.len() as f64, "");
    sc.metric("creates in flight", CONCURRENCY as f64, "");
    sc.metric("all created", created_in.as_secs_f64(), "s");
    sc.metric("all Running", all_running.as_secs_f64(), "s");
    sc.metric("throughput", nf / all_running.as_secs_f64(), "VMIs/s");
    sc.metric("create → Running p50", s.p50, "ms");
    sc.metric("create → Running p95", s.p95, "ms");
    sc.metric("create → Running p99", s.p99, "ms");
    sc.metric("API writes per VMI", after.writes() / nf, "");
    for (verb, count) in &after.by_verb {
        sc.metric(format!("… {verb} per VMI"), count / nf, "");
    }
    for (res, count) in &after.writes_by_resource {
        sc.metric(format!("… writes to {res} per VMI"), count / nf, "");
    }
    for (res, count) in &after.lists_by_resource {
        sc.metric(format!("… LISTs of {res} per VMI"), count / nf, "");
    }
    let growth_kib = (rss_after - rss_before) / nf;
    sc.metric("server RSS before", mib(rss_before), "MiB");
    sc.metric("server RSS with all Running", mib(rss_after), "MiB");
    sc.metric("server RSS growth per VMI", growth_kib, "KiB");
    sc.metric(
        "store file growth per VMI",
        (store_after.saturating_sub(store_before)) as f64 / 1024.0 / nf,
        "KiB",
    );
    sc.target(
        "`kuvirt server` RSS growth per stored VMI (with its pod)",
        20.0,
        growth_kib,
        "KiB",
    );
    sc.note("Each VMI is stored with its launcher pod; the growth covers both, the controllers' caches included.");
    drop(tracker);
    server.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_summed() {
        let text = "# HELP apiserver_request_total x\n# TYPE apiserver_request_total counter\n\
apiserver_request_total{code=\"201\",group=\"kubevirt.io\",resource=\"virtualmachineinstances\",scope=\"namespace\",subresource=\"\",verb=\"POST\",version=\"v1\"} 10\n\
apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"status\",verb=\"PATCH\",version=\"v1\"} 4\n\
apiserver_request_total{code=\"200\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"GET\",version=\"v1\"} 7\n\
apiserver_request_total{code=\"409\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"PATCH\",version=\"v1\"} 2\n\
other_metric 3\n";
        let r = parse_requests(text);
        assert_eq!(r.by_verb.get("POST"), Some(&10.0));
        assert_eq!(r.by_verb.get("GET"), Some(&7.0));
        assert_eq!(r.writes(), 16.0);
        assert_eq!(r.writes_by_resource.get("pods/status"), Some(&4.0));
        assert_eq!(r.writes_by_resource.get("pods (409)"), Some(&2.0));
        let d = r.minus(&parse_requests(
            "apiserver_request_total{verb=\"POST\",resource=\"virtualmachineinstances\"} 4\n",
        ));
        assert_eq!(d.by_verb.get("POST"), Some(&6.0));
    }
}
