//! When each VMI reached each phase, as a client watching the API sees it: one watch over all
//! VMIs, started before the first create, so the clock is the harness's and no poll interval
//! blurs it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures_util::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kuvirt_api::VirtualMachineInstance;

/// What was seen of one VMI.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// First seen at all (created).
    pub created: Option<Instant>,
    /// First seen in each phase.
    pub phases: HashMap<String, Instant>,
    pub gone: Option<Instant>,
}

#[derive(Default)]
struct State {
    by_name: HashMap<String, Seen>,
    /// The watch has listed once.
    synced: bool,
}

/// A running watch and what it saw; the watch stops when this is dropped.
pub struct Tracker {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tracker {
    /// Watches the VMIs of `namespace` and waits until the watch has listed once.
    pub async fn start(client: &kube::Client, namespace: &str) -> Result<Tracker> {
        let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), namespace);
        let state: Arc<Mutex<State>> = Arc::default();
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut events = watcher(vmis, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = events.next().await {
                let now = Instant::now();
                let Ok(ev) = ev else { continue };
                let Ok(mut s) = st.lock() else { return };
                match ev {
                    watcher::Event::Apply(v) | watcher::Event::InitApply(v) => {
                        let name = v.metadata.name.clone().unwrap_or_default();
                        let seen = s.by_name.entry(name).or_default();
                        seen.created.get_or_insert(now);
                        seen.gone = None;
                        if let Some(p) = v.status.as_ref().and_then(|st| st.phase.as_ref()) {
                            seen.phases.entry(p.as_str().to_string()).or_insert(now);
                        }
                    }
                    watcher::Event::Delete(v) => {
                        let name = v.metadata.name.clone().unwrap_or_default();
                        s.by_name.entry(name).or_default().gone = Some(now);
                    }
                    watcher::Event::InitDone => s.synced = true,
                    watcher::Event::Init => {}
                }
            }
        });
        let tracker = Tracker { state, task };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !tracker.state.lock().is_ok_and(|s| s.synced) {
            if Instant::now() >= deadline {
                bail!("the VMI watch did not start");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(tracker)
    }

    /// What was seen of `name`.
    pub fn seen(&self, name: &str) -> Option<Seen> {
        self.state.lock().ok()?.by_name.get(name).cloned()
    }

    /// Forgets `name` (a later VMI of the same name starts fresh).
    pub fn forget(&self, name: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.by_name.remove(name);
        }
    }

    /// Waits until every one of `names` has been seen in `phase`; a VMI seen Failed fails it.
    pub async fn wait_all(&self, names: &[String], phase: &str, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            {
                let Ok(s) = self.state.lock() else {
                    bail!("tracker poisoned")
                };
                let mut missing = 0;
                for n in names {
                    let seen = s.by_name.get(n);
                    if seen.is_some_and(|v| v.phases.contains_key("Failed")) && phase != "Failed" {
                        bail!("VMI {n} failed");
                    }
                    if !seen.is_some_and(|v| v.phases.contains_key(phase)) {
                        missing += 1;
                    }
                }
                if missing == 0 {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    bail!(
                        "{missing} of {} VMIs not {phase} within {within:?}",
                        names.len()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
