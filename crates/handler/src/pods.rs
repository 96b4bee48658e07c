//! Embedded mode's pod runner: the launcher pods bound to this node become `kuvirt launcher`
//! processes; the handler reports the pod and the VMI from what the launcher says, and stops the
//! launcher (ACPI, grace period) when the pod goes away.
//!
//! Not yet here: a network namespace, IP and cgroup per pod (the launcher uses QEMU's user-mode
//! network), and re-adopting launchers after a handler restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kuvirt_api::VirtualMachineInstance;
use kuvirt_launcher::protocol::{Request, Response, call};
use kuvirt_launcher::vm::VmState;
use serde_json::json;
use tokio::sync::Mutex;

use crate::Error;

/// What the handler needs to start launchers.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    pub node: String,
    /// The `kuvirt` binary (the handler's own executable).
    pub exe: PathBuf,
    pub kubeconfig: PathBuf,
    /// Images and VM directories.
    pub state_dir: PathBuf,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
}

/// One launcher the handler started (its monitor task owns the process).
struct Launcher {
    vm_dir: PathBuf,
    /// The launcher's pid when we started it (an adopted one is reached by its socket only).
    pid: Option<u32>,
    _monitor: tokio::task::JoinHandle<()>,
}

type Launchers = Arc<Mutex<HashMap<String, Launcher>>>;

/// Runs launcher pods for this node until the watch ends.
pub async fn run(client: kube::Client, cfg: RunnerConfig) -> Result<(), Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default()
        .fields(&format!("spec.nodeName={}", cfg.node))
        .labels("kubevirt.io=virt-launcher");
    let launchers: Launchers = Arc::default();
    let mut seen = std::collections::HashSet::new();
    let mut events = watcher(pods, wc).default_backoff().boxed();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "pod watch");
                continue;
            }
        };
        match ev {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                seen.insert(uid.clone());
                let final_phase = matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
                if pod.metadata.deletion_timestamp.is_some() {
                    stop(&launchers, &uid).await;
                } else if !final_phase && !launchers.lock().await.contains_key(&uid) {
                    match start(&client, &cfg, &pod, launchers.clone()).await {
                        Ok(l) => {
                            launchers.lock().await.insert(uid, l);
                        }
                        Err(e) => tracing::warn!(error = %e, "starting a launcher failed"),
                    }
                }
            }
            watcher::Event::Delete(pod) => {
                stop(&launchers, pod.metadata.uid.as_deref().unwrap_or_default()).await;
            }
            watcher::Event::Init => seen.clear(),
            watcher::Event::InitDone => {
                // A (re)list no longer shows these pods: they went while we were not watching.
                let gone: Vec<String> = launchers
                    .lock()
                    .await
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                for uid in gone {
                    stop(&launchers, &uid).await;
                }
            }
        }
    }
    Ok(())
}

/// Asks a launcher to shut its VM down gracefully (the launcher kills it after the grace period).
async fn stop(launchers: &Launchers, uid: &str) {
    let found = launchers
        .lock()
        .await
        .get(uid)
        .map(|l| (l.vm_dir.clone(), l.pid));
    let Some((dir, pid)) = found else { return };
    let asked = call(
        &dir.join("launcher.sock"),
        Request::Shutdown {
            grace_period_seconds: None,
        },
    )
    .await;
    // Still starting (no socket yet): SIGTERM, which the launcher turns into a clean stop.
    if asked.is_err()
        && let Some(pid) = pid.and_then(|p| i32::try_from(p).ok())
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

async fn start(
    client: &kube::Client,
    cfg: &RunnerConfig,
    pod: &Pod,
    launchers: Launchers,
) -> Result<Launcher, Error> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let vmi = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubevirt.io/domain"))
        .cloned()
        .ok_or_else(|| Error::Pod(format!("pod {ns}/{pod_name} names no VMI")))?;
    let vmi_uid = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubevirt.io/created-by"))
        .cloned()
        .ok_or_else(|| Error::Pod(format!("pod {ns}/{pod_name} names no VMI uid")))?;
    let vm_dir = vm_dir(&cfg.state_dir, &ns, &vmi, &vmi_uid);
    // A launcher that outlived an earlier handler (VMs survive handler restarts) is adopted, not
    // started again.
    if call(&vm_dir.join("launcher.sock"), Request::Status)
        .await
        .is_ok()
    {
        tracing::info!(vmi = %vmi, namespace = %ns, "adopting a running launcher");
        let monitor = tokio::spawn(monitor(
            client.clone(),
            ns,
            vmi,
            vmi_uid,
            pod_name,
            uid,
            vm_dir.clone(),
            None,
            launchers,
        ));
        return Ok(Launcher {
            vm_dir,
            pid: None,
            _monitor: monitor,
        });
    }
    std::fs::create_dir_all(&vm_dir)
        .map_err(|e| Error::Pod(format!("{}: {e}", vm_dir.display())))?;
    let log = std::fs::File::create(vm_dir.join("launcher.log"))
        .map_err(|e| Error::Pod(format!("{}: {e}", vm_dir.display())))?;
    let log2 = log.try_clone().map_err(|e| Error::Pod(e.to_string()))?;
    let child = tokio::process::Command::new(&cfg.exe)
        .arg("launcher")
        .arg("--kubeconfig")
        .arg(&cfg.kubeconfig)
        .args([
            "--namespace",
            &ns,
            "--vmi",
            &vmi,
            "--vmi-uid",
            &vmi_uid,
            "--accel",
            &cfg.accel,
        ])
        .arg("--vm-dir")
        .arg(&vm_dir)
        .arg("--state-dir")
        .arg(&cfg.state_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        // Its own process group: the launcher (and its VM) outlive signals meant for the handler.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Pod(format!("{}: {e}", cfg.exe.display())))?;
    let pid = child.id();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Reported best effort: the launcher runs either way, and the monitor is what matters.
    let _ = pods
        .patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1", "podIP": "127.0.0.1",
                "startTime": kuvirt_apimachinery::meta::now(),
                "containerStatuses": [{"name": "compute", "ready": true, "restartCount": 0,
                                       "image": "kuvirt", "imageID": "",
                                       "state": {"running": {"startedAt": kuvirt_apimachinery::meta::now()}}}],
            }})),
        )
        .await;
    let monitor = tokio::spawn(monitor(
        client.clone(),
        ns,
        vmi,
        vmi_uid,
        pod_name,
        uid,
        vm_dir.clone(),
        Some(child),
        launchers,
    ));
    Ok(Launcher {
        vm_dir,
        pid,
        _monitor: monitor,
    })
}

/// The directory of one VMI's launcher: one per VMI (not per name), so a restarted VM's new VMI
/// never meets the old one's launcher, socket or lock.
pub fn vm_dir(state_dir: &std::path::Path, ns: &str, vmi: &str, vmi_uid: &str) -> PathBuf {
    let short: String = vmi_uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    state_dir.join("vms").join(ns).join(format!("{vmi}-{short}"))
}

/// How an adopted launcher's VM ended, from the file the launcher writes before it exits.
fn adopted_outcome(vm_dir: &std::path::Path) -> bool {
    std::fs::read(vm_dir.join("exit.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<kuvirt_launcher::vm::ExitReason>(&b).ok())
        .is_some_and(|r| r.succeeded())
}

/// Follows one launcher: the VMI's phase and conditions from the launcher's state; the pod's and
/// VMI's final phase from its exit.
#[allow(clippy::too_many_arguments)]
async fn monitor(
    client: kube::Client,
    ns: String,
    vmi_name: String,
    vmi_uid: String,
    pod_name: String,
    uid: String,
    vm_dir: PathBuf,
    mut child: Option<tokio::process::Child>,
    launchers: Launchers,
) {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let socket = vm_dir.join("launcher.sock");
    let mut silent = 0;
    let ok = loop {
        if let Some(c) = child.as_mut() {
            tokio::select! {
                s = c.wait() => break s.is_ok_and(|s| s.success()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let Ok(Response::Status { state, .. }) = call(&socket, Request::Status).await else {
            // An adopted launcher is not our child: it is gone when its socket stays silent, and
            // it left word of how the VM ended.
            silent += 1;
            if child.is_none() && silent >= 3 {
                break adopted_outcome(&vm_dir);
            }
            continue;
        };
        silent = 0;
        let (phase, ready, paused) = match &state {
            VmState::Running => ("Running", true, false),
            VmState::Paused => ("Running", false, true),
            VmState::ShuttingDown => ("Running", false, false),
            VmState::Starting | VmState::Exited { .. } => continue,
        };
        // The VMI is ours once the controller has handed it over (Scheduled); write only changes.
        let Ok(current) = vmis.get(&vmi_name).await else {
            continue;
        };
        if current.metadata.uid.as_deref() != Some(vmi_uid.as_str()) {
            // Another VMI of the same name: not ours to report on.
            continue;
        }
        let cur = current.status.unwrap_or_default();
        let cur_phase = cur
            .phase
            .as_ref()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        if !matches!(cur_phase.as_str(), "Scheduled" | "Running") {
            continue;
        }
        let cond = |t: &str| {
            cur.conditions
                .iter()
                .find(|c| c.type_.as_str() == t)
                .map(|c| c.status == "True")
        };
        if cur_phase == phase
            && cond("Ready") == Some(ready)
            && cond("Paused").unwrap_or(false) == paused
        {
            continue;
        }
        let t = kuvirt_apimachinery::meta::now();
        let conditions = json!([
            {"type": "Ready", "status": if ready { "True" } else { "False" },
             "lastProbeTime": null, "lastTransitionTime": t},
            {"type": "Paused", "status": if paused { "True" } else { "False" },
             "lastProbeTime": null, "lastTransitionTime": t,
             "reason": if paused { "PausedByUser" } else { "" }},
        ]);
        let mut patch = json!({"status": {"phase": phase, "conditions": conditions}});
        if cur_phase != "Running" {
            // The VM controller tells a VM that never ran from one that crashed by this entry.
            let mut transitions = serde_json::to_value(&cur.phase_transition_timestamps)
                .unwrap_or_else(|_| json!([]));
            if let Some(a) = transitions.as_array_mut() {
                a.push(json!({"phase": "Running", "phaseTransitionTimestamp": t}));
            }
            patch["status"]["phaseTransitionTimestamps"] = transitions;
        }
        let _ = vmis
            .patch(&vmi_name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
    };
    let phase = if ok { "Succeeded" } else { "Failed" };
    let reason = if ok {
        "the guest shut down"
    } else {
        "the launcher failed"
    };
    tracing::info!(vmi = %vmi_name, namespace = %ns, %phase, %reason, "vm ended");
    let not_ready = json!([{"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": kuvirt_apimachinery::meta::now()}]);
    let ours = vmis
        .get(&vmi_name)
        .await
        .is_ok_and(|v| v.metadata.uid.as_deref() == Some(vmi_uid.as_str()));
    if ours {
        let _ = vmis
            .patch(
                &vmi_name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"phase": phase, "reason": reason, "conditions": not_ready}}),
                ),
            )
            .await;
    }
    let _ = pods
        .patch_status(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": phase}})),
        )
        .await;
    launchers.lock().await.remove(&uid);
}
