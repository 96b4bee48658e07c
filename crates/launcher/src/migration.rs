//! Live migration inside the launcher, over QMP. The target's QEMU waits (`-incoming defer`)
//! until it is told where to listen: a unix socket for the memory stream and, when the guest
//! writes local disks, an NBD server exporting them; once the state has arrived it stops the
//! exports and runs the guest. The source mirrors its writable disks into those exports
//! (write-blocking, so they stay in step), then sends memory, watching the completion and
//! progress timeouts; when all is sent it waits, paused, until the target is confirmed
//! ([`Vm::confirm_migration`]) or has failed ([`Vm::cancel_migration`] resumes it here).
//! The node agents carry both sockets between the nodes. The source leaves the outgoing
//! migration's final state, QEMU's downtime included, in its log directory
//! ([`MIGRATION_RECORD`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::qmp::{Qmp, QmpError};
use crate::vm::{ExitReason, Vm, VmError, VmState};

/// How a migration runs (from the VMI's migration configuration).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOptions {
    /// Bytes per second for memory and disks; 0 is unlimited.
    #[serde(default)]
    pub bandwidth: u64,
    /// Give up (or switch to post-copy, when allowed) after this many seconds; 0: never.
    #[serde(default)]
    pub completion_timeout_secs: u64,
    /// Give up after this many seconds without the remaining data shrinking; 0: never.
    #[serde(default)]
    pub progress_timeout_secs: u64,
    /// Let QEMU throttle the guest's vCPUs when memory is dirtied faster than it is sent.
    #[serde(default)]
    pub auto_converge: bool,
    /// Switch to post-copy at the completion timeout instead of giving up (not with local
    /// disks: their mirror must be in step when the guest moves).
    #[serde(default)]
    pub post_copy: bool,
    /// QEMU's downtime limit; QEMU's default (300 ms) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_downtime_ms: Option<u64>,
}

/// Where a target takes the migration: sockets in its QEMU's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incoming {
    /// The memory stream (`migrate-incoming`).
    pub migration_socket: PathBuf,
    /// The NBD server exporting the local disks, when the guest writes any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_socket: Option<PathBuf>,
}

/// Where an outgoing migration stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MigrationPhase {
    /// Mirroring local disks to the target.
    CopyingDisks,
    /// Sending memory.
    Copying,
    /// Everything was sent: the guest runs on the target, this side waits for confirmation.
    Completed,
    /// The target is confirmed; this side has ended.
    Confirmed,
    Failed,
}

/// How memory is copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationMode {
    #[default]
    PreCopy,
    PostCopy,
}

/// The state of an outgoing migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationInfo {
    pub phase: MigrationPhase,
    pub mode: MigrationMode,
    /// Guest memory, bytes.
    pub memory_total: u64,
    pub memory_remaining: u64,
    /// Bytes sent (memory).
    pub transferred: u64,
    /// Local disk data to mirror, bytes (as QEMU's jobs count it).
    pub disks_total: u64,
    pub disks_remaining: u64,
    /// Since the migration started.
    pub elapsed_ms: u64,
    /// How long the guest was stopped for the switch (once completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<u64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// It failed because it was cancelled.
    #[serde(default)]
    pub aborted: bool,
}

impl MigrationInfo {
    fn starting() -> MigrationInfo {
        MigrationInfo {
            phase: MigrationPhase::CopyingDisks,
            mode: MigrationMode::PreCopy,
            memory_total: 0,
            memory_remaining: 0,
            transferred: 0,
            disks_total: 0,
            disks_remaining: 0,
            elapsed_ms: 0,
            downtime_ms: None,
            failure: None,
            aborted: false,
        }
    }
}

/// The source side's bookkeeping, shared by the migration task and the requests about it.
#[derive(Default)]
pub struct Outgoing {
    /// A migration is under way (QEMU's STOP at its end is then no pause).
    active: AtomicBool,
    info: std::sync::Mutex<Option<MigrationInfo>>,
    cancel: Notify,
}

impl Outgoing {
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    fn update(&self, f: impl FnOnce(&mut MigrationInfo)) {
        if let Ok(mut g) = self.info.lock()
            && let Some(i) = g.as_mut()
        {
            f(i);
        }
    }

    fn get(&self) -> Option<MigrationInfo> {
        self.info.lock().ok().and_then(|g| g.clone())
    }
}

/// The file in a source's log directory (the VM directory) holding its last outgoing
/// migration's [`MigrationInfo`] once it ended (completed, confirmed, failed or cancelled).
pub const MIGRATION_RECORD: &str = "migration.json";

/// Writes `info` as the migration record of `dir` (replaced whole, so a reader never sees half
/// of it).
pub fn write_record(dir: &std::path::Path, info: &MigrationInfo) -> std::io::Result<()> {
    let json = serde_json::to_vec(info).map_err(std::io::Error::other)?;
    kuvirt_images::oci::write_atomic(&dir.join(MIGRATION_RECORD), &json, dir)
}

/// How often the source looks at QEMU's progress.
const TICK: Duration = Duration::from_millis(200);
/// How long the mirror jobs may take to settle after the memory was sent.
const SETTLE: Duration = Duration::from_secs(30);
/// "Unlimited" bandwidth for QEMU (whose own default is 128 MiB/s).
const UNLIMITED: u64 = 1 << 40;

fn mig_err(e: impl std::fmt::Display) -> VmError {
    VmError::Migration(e.to_string())
}

impl Vm {
    /// The target side: listens in QEMU's own directory for the memory stream and, when the
    /// guest writes local disks, serves them over NBD for the source's mirror; then runs the
    /// guest as soon as its state has arrived.
    pub async fn prepare_incoming(&self, post_copy: bool) -> Result<Incoming, VmError> {
        let dir = self.scratch.as_path();
        if self.state() != VmState::Incoming {
            return Err(mig_err("this VM is not waiting for a migration"));
        }
        let migration_socket = dir.join("migration.sock");
        let _ = std::fs::remove_file(&migration_socket);
        let mut block_socket = None;
        if !self.writable_nodes.is_empty() {
            let nbd = dir.join("nbd.sock");
            let _ = std::fs::remove_file(&nbd);
            self.qmp
                .execute(
                    "nbd-server-start",
                    Some(json!({"addr": {"type": "unix", "data": {"path": nbd}}})),
                )
                .await?;
            for node in &self.writable_nodes {
                self.qmp
                    .execute(
                        "block-export-add",
                        Some(json!({"type": "nbd", "id": format!("exp-{node}"),
                                    "node-name": node, "name": node, "writable": true})),
                    )
                    .await?;
            }
            block_socket = Some(nbd);
        }
        let mut caps = vec![json!({"capability": "events", "state": true})];
        if post_copy && block_socket.is_none() {
            caps.push(json!({"capability": "postcopy-ram", "state": true}));
        }
        self.qmp
            .execute(
                "migrate-set-capabilities",
                Some(json!({ "capabilities": caps })),
            )
            .await?;
        let events = self.qmp.events();
        self.qmp
            .execute(
                "migrate-incoming",
                Some(json!({"uri": format!("unix:{}", migration_socket.display())})),
            )
            .await?;
        tokio::spawn(run_when_arrived(
            self.qmp.clone(),
            events,
            block_socket.is_some(),
        ));
        Ok(Incoming {
            migration_socket,
            block_socket,
        })
    }

    /// The source side: starts sending this VM to `to` (the node agent's relays of the
    /// target's sockets). Progress is read with [`Vm::migration_info`].
    pub async fn migrate(
        self: &Arc<Self>,
        to: Incoming,
        opts: MigrateOptions,
    ) -> Result<(), VmError> {
        if !matches!(self.state(), VmState::Running | VmState::Paused) {
            return Err(mig_err("only a running VM can migrate"));
        }
        if self.migration.active.swap(true, Ordering::SeqCst) {
            return Err(mig_err("a migration is already under way"));
        }
        if let Ok(mut g) = self.migration.info.lock() {
            *g = Some(MigrationInfo::starting());
        }
        // An earlier migration's record (the VM came back to this directory) is no longer true.
        let _ = std::fs::remove_file(self.log_dir.join(MIGRATION_RECORD));
        let vm = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = vm.run_migration(&to, &opts, started).await;
            let elapsed = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(downtime) => {
                    vm.migration.update(|i| {
                        i.phase = MigrationPhase::Completed;
                        i.downtime_ms = downtime;
                        i.elapsed_ms = elapsed;
                        i.memory_remaining = 0;
                        i.disks_remaining = 0;
                    });
                    vm.record_migration();
                    vm.set_state(VmState::Handover);
                }
                Err((why, aborted)) => {
                    vm.abandon_mirrors().await;
                    vm.migration.update(|i| {
                        i.phase = MigrationPhase::Failed;
                        i.failure = Some(why);
                        i.aborted = aborted;
                        i.elapsed_ms = elapsed;
                    });
                    vm.record_migration();
                    vm.migration.active.store(false, Ordering::SeqCst);
                }
            }
        });
        Ok(())
    }

    /// The outgoing migration, if one was started.
    pub fn migration_info(&self) -> Option<MigrationInfo> {
        self.migration.get()
    }

    /// Stops an outgoing migration: cancels it while it copies; once everything was sent (the
    /// target failed before it was confirmed) runs the guest here again.
    pub async fn cancel_migration(&self) -> Result<(), VmError> {
        if self.state() == VmState::Handover {
            self.abandon_mirrors().await;
            self.qmp.cont().await?;
            self.migration.update(|i| {
                i.phase = MigrationPhase::Failed;
                i.failure = Some("the target did not take over".into());
                i.aborted = true;
            });
            self.record_migration();
            self.migration.active.store(false, Ordering::SeqCst);
            return Ok(());
        }
        if !self.migration.is_active() {
            return Err(mig_err("no migration is under way"));
        }
        self.migration.cancel.notify_one();
        Ok(())
    }

    /// The target runs the guest now: this side ends (QEMU is stopped, the launcher exits with
    /// [`ExitReason::Migrated`]).
    pub async fn confirm_migration(&self) -> Result<(), VmError> {
        if self.state() != VmState::Handover {
            return Err(mig_err("no completed migration to confirm"));
        }
        self.migration
            .update(|i| i.phase = MigrationPhase::Confirmed);
        self.record_migration();
        self.kill_because(ExitReason::Migrated).await;
        Ok(())
    }

    /// Runs one migration; the downtime QEMU measured, or why it failed and whether it was
    /// cancelled.
    async fn run_migration(
        &self,
        to: &Incoming,
        opts: &MigrateOptions,
        started: Instant,
    ) -> Result<Option<u64>, (String, bool)> {
        let qmp = &self.qmp;
        let fail = |e: QmpError| (e.to_string(), false);
        let bandwidth = if opts.bandwidth == 0 {
            UNLIMITED
        } else {
            opts.bandwidth
        };
        let mut watch = Progress::new(opts, started);
        // Woken by QEMU's events (a mirror ready, a migration state change), not only the tick.
        let mut events = qmp.events();
        // Local disks first: the mirror must be in step before memory moves.
        let mirrors = match (&to.block_socket, self.writable_nodes.is_empty()) {
            (Some(_), false) => self.writable_nodes.clone(),
            (None, false) => {
                return Err((
                    "the target serves no disks, but this VM writes local ones".into(),
                    false,
                ));
            }
            _ => Vec::new(),
        };
        if let Some(sock) = &to.block_socket {
            for node in &mirrors {
                qmp.execute(
                    "blockdev-add",
                    Some(json!({"driver": "nbd", "node-name": format!("mig-{node}"),
                                "server": {"type": "unix", "path": sock}, "export": node})),
                )
                .await
                .map_err(fail)?;
                qmp.execute(
                    "blockdev-mirror",
                    Some(json!({"job-id": format!("mirror-{node}"), "device": node,
                                "target": format!("mig-{node}"), "sync": "top",
                                "copy-mode": "write-blocking", "speed": bandwidth,
                                "auto-finalize": true, "auto-dismiss": true})),
                )
                .await
                .map_err(fail)?;
            }
            loop {
                let jobs = qmp.execute("query-block-jobs", None).await.map_err(fail)?;
                let (total, done, ready) = mirror_progress(&jobs, &mirrors);
                self.migration.update(|i| {
                    i.disks_total = total;
                    i.disks_remaining = total.saturating_sub(done);
                    i.elapsed_ms = started.elapsed().as_millis() as u64;
                });
                if ready {
                    break;
                }
                watch.check(total.saturating_sub(done))?;
                self.wait_for(
                    &mut events,
                    &["BLOCK_JOB_READY", "BLOCK_JOB_ERROR", "BLOCK_JOB_COMPLETED"],
                )
                .await?;
            }
        }
        let mut caps = vec![
            json!({"capability": "events", "state": true}),
            json!({"capability": "auto-converge", "state": opts.auto_converge}),
        ];
        let post_copy = opts.post_copy && mirrors.is_empty();
        if post_copy {
            caps.push(json!({"capability": "postcopy-ram", "state": true}));
        }
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": caps })),
        )
        .await
        .map_err(fail)?;
        let mut params = json!({"max-bandwidth": bandwidth});
        if let Some(ms) = opts.max_downtime_ms {
            params["downtime-limit"] = json!(ms);
        }
        qmp.execute("migrate-set-parameters", Some(params))
            .await
            .map_err(fail)?;
        self.migration.update(|i| i.phase = MigrationPhase::Copying);
        qmp.execute(
            "migrate",
            Some(json!({"uri": format!("unix:{}", to.migration_socket.display())})),
        )
        .await
        .map_err(fail)?;
        let mut switched = false;
        loop {
            let q = qmp.execute("query-migrate", None).await.map_err(fail)?;
            let status = q.get("status").and_then(Value::as_str).unwrap_or("");
            let ram = q.get("ram").cloned().unwrap_or(Value::Null);
            let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
            let remaining = n(&ram, "remaining");
            self.migration.update(|i| {
                i.memory_total = n(&ram, "total");
                i.memory_remaining = remaining;
                i.transferred = n(&ram, "transferred");
                i.elapsed_ms = started.elapsed().as_millis() as u64;
            });
            match status {
                "completed" => {
                    let downtime = q.get("downtime").and_then(Value::as_u64);
                    self.settle_mirrors(&mirrors).await;
                    return Ok(downtime);
                }
                "failed" => {
                    let why = q
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("QEMU reported a failure");
                    return Err((format!("the migration failed: {why}"), false));
                }
                "cancelled" => return Err(("Live migration has been aborted".into(), true)),
                _ => {}
            }
            if status != "postcopy-active" {
                match watch.check(remaining) {
                    Err((_, false)) if post_copy && !switched && watch.overdue() => {
                        qmp.execute("migrate-start-postcopy", None)
                            .await
                            .map_err(fail)?;
                        switched = true;
                        self.migration.update(|i| i.mode = MigrationMode::PostCopy);
                    }
                    Err(e) => {
                        let _ = qmp.execute("migrate_cancel", None).await;
                        return Err(e);
                    }
                    Ok(()) => {}
                }
            }
            if self.wait_for(&mut events, &["MIGRATION"]).await.is_err()
                && status != "postcopy-active"
            {
                qmp.execute("migrate_cancel", None).await.map_err(fail)?;
                // QEMU answers with "cancelled" on the next look.
            }
        }
    }

    /// Leaves the outgoing migration's state in the log directory ([`MIGRATION_RECORD`]).
    fn record_migration(&self) {
        let Some(info) = self.migration.get() else {
            return;
        };
        if let Err(e) = write_record(&self.log_dir, &info) {
            tracing::warn!(error = %e, dir = %self.log_dir.display(), "writing the migration record");
        }
    }

    /// Waits one tick or until QEMU sends one of the events `names`; `Err` when a cancel was
    /// asked meanwhile.
    async fn wait_for(
        &self,
        events: &mut tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>,
        names: &[&str],
    ) -> Result<(), (String, bool)> {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => Ok(()),
            _ = self.migration.cancel.notified() => Err(("Live migration has been aborted".into(), true)),
            () = next_event(events, names) => Ok(()),
        }
    }

    /// Ends the mirrors after the memory was sent: a ready mirror that is cancelled completes
    /// (the target has every write), then goes.
    async fn settle_mirrors(&self, mirrors: &[String]) {
        let mut events = self.qmp.events();
        for node in mirrors {
            let _ = self
                .qmp
                .execute(
                    "block-job-cancel",
                    Some(json!({"device": format!("mirror-{node}")})),
                )
                .await;
        }
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            let Ok(jobs) = self.qmp.execute("query-block-jobs", None).await else {
                break;
            };
            if jobs.as_array().is_none_or(|a| a.is_empty()) {
                break;
            }
            let _ = tokio::time::timeout(
                TICK,
                next_event(&mut events, &["BLOCK_JOB_COMPLETED", "BLOCK_JOB_CANCELLED"]),
            )
            .await;
        }
    }

    /// Drops whatever a failed migration left: mirror jobs (forced) and the NBD client nodes.
    async fn abandon_mirrors(&self) {
        for node in &self.writable_nodes {
            let _ = self
                .qmp
                .execute(
                    "block-job-cancel",
                    Some(json!({"device": format!("mirror-{node}"), "force": true})),
                )
                .await;
        }
        let deadline = Instant::now() + SETTLE;
        while Instant::now() < deadline {
            match self.qmp.execute("query-block-jobs", None).await {
                Ok(jobs) if jobs.as_array().is_some_and(|a| !a.is_empty()) => {
                    tokio::time::sleep(TICK).await;
                }
                _ => break,
            }
        }
        for node in &self.writable_nodes {
            let _ = self
                .qmp
                .execute(
                    "blockdev-del",
                    Some(json!({"node-name": format!("mig-{node}")})),
                )
                .await;
        }
    }
}

/// The target: once QEMU has taken the whole state, stop serving the disks (the guest's own
/// device needs them writable) and run the guest. In post-copy the guest runs as soon as the
/// switch happens. A failed incoming migration ends QEMU by itself.
async fn run_when_arrived(
    qmp: Qmp,
    mut events: tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>,
    exports: bool,
) {
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = qmp.closed() => return,
        };
        let ev = match ev {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        if ev.event != "MIGRATION" {
            continue;
        }
        match ev.data.get("status").and_then(Value::as_str) {
            Some("completed") => {
                if exports && let Err(e) = qmp.execute("nbd-server-stop", None).await {
                    tracing::warn!(error = %e, "migration target: stopping the disk exports");
                }
                if let Err(e) = qmp.cont().await {
                    tracing::warn!(error = %e, "migration target: running the guest");
                }
                announce(&qmp).await;
                return;
            }
            Some("postcopy-active") => {
                if let Err(e) = qmp.cont().await {
                    tracing::warn!(error = %e, "migration target: running the guest in post-copy");
                }
                announce(&qmp).await;
                return;
            }
            _ => {}
        }
    }
}

/// Tells the network the guest's MACs are here now, once it runs: RARPs from each NIC (and,
/// for a virtio-net guest, a request to send its own gratuitous ARPs), five rounds from 50 ms,
/// so bridges and switches on the new node learn where the guest is.
async fn announce(qmp: &Qmp) {
    let params = serde_json::json!({"initial": 50, "max": 550, "rounds": 5, "step": 100});
    if let Err(e) = qmp.execute("announce-self", Some(params)).await {
        tracing::warn!(error = %e, "migration target: announcing the guest's MACs");
    }
}

/// Resolves on the next QMP event named one of `names` (never, once the channel closed).
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>,
    names: &[&str],
) {
    loop {
        match events.recv().await {
            Ok(ev) if names.contains(&ev.event.as_str()) => return,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// The mirror jobs' progress: total bytes, bytes done, and whether all are ready (in step).
fn mirror_progress(jobs: &Value, nodes: &[String]) -> (u64, u64, bool) {
    let jobs = jobs.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut total = 0;
    let mut done = 0;
    let mut ready = true;
    for node in nodes {
        let id = format!("mirror-{node}");
        match jobs
            .iter()
            .find(|j| j.get("device").and_then(Value::as_str) == Some(id.as_str()))
        {
            Some(j) => {
                total += j.get("len").and_then(Value::as_u64).unwrap_or(0);
                done += j.get("offset").and_then(Value::as_u64).unwrap_or(0);
                ready &= j.get("ready").and_then(Value::as_bool).unwrap_or(false);
            }
            // A job that is gone before it was ready failed.
            None => ready = false,
        }
    }
    (total, done, ready)
}

/// The completion and progress timeouts of one migration.
struct Progress {
    started: Instant,
    completion: Option<Duration>,
    stall: Option<Duration>,
    least_remaining: Option<u64>,
    progressed_at: Instant,
}

impl Progress {
    fn new(opts: &MigrateOptions, started: Instant) -> Progress {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        Progress {
            started,
            completion: secs(opts.completion_timeout_secs),
            stall: secs(opts.progress_timeout_secs),
            least_remaining: None,
            progressed_at: started,
        }
    }

    fn overdue(&self) -> bool {
        self.completion.is_some_and(|c| self.started.elapsed() > c)
    }

    /// `Err` with the reason once a timeout has passed (never cancelled: `false`).
    fn check(&mut self, remaining: u64) -> Result<(), (String, bool)> {
        if self.least_remaining.is_none_or(|l| remaining < l) {
            self.least_remaining = Some(remaining);
            self.progressed_at = Instant::now();
        }
        if let Some(stall) = self.stall
            && self.progressed_at.elapsed() > stall
        {
            return Err((
                format!(
                    "Live migration stuck for {} seconds and has been aborted",
                    stall.as_secs()
                ),
                false,
            ));
        }
        if let Some(c) = self.completion
            && self.started.elapsed() > c
        {
            return Err((
                format!(
                    "Live migration is not completed after {} seconds and has been aborted",
                    c.as_secs()
                ),
                false,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_progress_needs_every_job_ready() {
        let nodes = vec!["drive-d0".to_string(), "drive-d1".to_string()];
        let jobs = json!([
            {"device": "mirror-drive-d0", "len": 100, "offset": 100, "ready": true},
            {"device": "mirror-drive-d1", "len": 50, "offset": 10, "ready": false},
        ]);
        assert_eq!(mirror_progress(&jobs, &nodes), (150, 110, false));
        let gone = json!([{"device": "mirror-drive-d0", "len": 1, "offset": 1, "ready": true}]);
        assert!(
            !mirror_progress(&gone, &nodes).2,
            "a vanished job is no success"
        );
    }

    #[test]
    fn timeouts() {
        let opts = MigrateOptions {
            completion_timeout_secs: 0,
            progress_timeout_secs: 0,
            ..Default::default()
        };
        let mut p = Progress::new(&opts, Instant::now());
        assert!(p.check(10).is_ok());
        assert!(!p.overdue());
        let opts = MigrateOptions {
            completion_timeout_secs: 1,
            ..Default::default()
        };
        let mut p = Progress::new(&opts, Instant::now() - Duration::from_secs(2));
        let (why, cancelled) = p.check(5).unwrap_err();
        assert!(why.contains("not completed after 1 seconds"), "{why}");
        assert!(!cancelled);
        assert!(p.overdue());
    }

    #[test]
    fn info_wire_format() {
        let mut i = MigrationInfo::starting();
        i.phase = MigrationPhase::Completed;
        i.downtime_ms = Some(12);
        let v = serde_json::to_value(&i).unwrap();
        assert_eq!(v["phase"], "completed");
        assert_eq!(v["mode"], "PreCopy");
        assert_eq!(v["downtimeMs"], 12);
        assert_eq!(serde_json::from_value::<MigrationInfo>(v).unwrap(), i);
    }

    #[test]
    fn the_record_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut i = MigrationInfo::starting();
        i.phase = MigrationPhase::Confirmed;
        i.downtime_ms = Some(40);
        write_record(dir.path(), &MigrationInfo::starting()).unwrap();
        write_record(dir.path(), &i).unwrap();
        let read: MigrationInfo =
            serde_json::from_slice(&std::fs::read(dir.path().join(MIGRATION_RECORD)).unwrap())
                .unwrap();
        assert_eq!(read, i);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file is left"
        );
    }
}
