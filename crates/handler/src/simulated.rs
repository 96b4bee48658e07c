//! Simulated nodes (`kuvirt agent --simulated-nodes N`), as KubeVirt's KWOK performance tests
//! use: one agent registers N Nodes (`<name>-0000`, …) labelled [`LABEL`] with a large
//! capacity, heartbeats them, and runs the real pod runner ([`crate::pods::run`]) for each with
//! [`Runtime::Simulated`]: no image pulls and no sandbox beyond the pod's address from the node's
//! IPAM, and instead of `kuvirt launcher` an in-process stand-in ([`serve`]) answering the
//! launcher protocol on the VM's `launcher.sock`. Only the control plane's work is real.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kuvirt_api::VirtualMachineInstance;
use kuvirt_api::v1::StartStrategy;
use kuvirt_launcher::machine::Accel;
use kuvirt_launcher::protocol::{self, MAX_LINE, Request, Response};
use kuvirt_launcher::vm::{ExitReason, VmState};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::pods::Runtime;
use crate::{AgentConfig, Error, endpoint, node};

/// The label every simulated Node carries (value `"true"`).
pub const LABEL: &str = "kuvirt.io/simulated";

/// What a screendump of a simulated VM answers.
pub const NO_DISPLAY: &str = "simulated node has no display";

/// The names of `count` simulated nodes: `<base>-0000`, `<base>-0001`, …
pub fn node_names(base: &str, count: u32) -> Vec<String> {
    (0..count).map(|i| format!("{base}-{i:04}")).collect()
}

/// Whether the VMI asks to start with its vCPUs paused.
pub fn starts_paused(vmi: &VirtualMachineInstance) -> bool {
    vmi.spec.start_strategy == Some(StartStrategy::Paused)
}

/// A simulated VM's state, answering launcher requests as a launcher would (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimVm {
    state: VmState,
}

impl SimVm {
    /// A VM that runs at once (or is paused, for `startStrategy: Paused`).
    pub fn new(paused: bool) -> SimVm {
        SimVm {
            state: if paused {
                VmState::Paused
            } else {
                VmState::Running
            },
        }
    }

    pub fn state(&self) -> &VmState {
        &self.state
    }

    /// The answer to `req`, and how the VM ends if the request ends it (a shutdown's guest
    /// powers off at once; a kill fails the VM).
    pub fn answer(&mut self, req: &Request) -> (Response, Option<ExitReason>) {
        match req {
            Request::Status | Request::Watch => {
                return (
                    Response::Status {
                        state: self.state.clone(),
                        pid: None,
                        accel: Accel::Tcg,
                    },
                    None,
                );
            }
            Request::Pause if self.state == VmState::Running => self.state = VmState::Paused,
            Request::Unpause if self.state == VmState::Paused => self.state = VmState::Running,
            Request::Pause | Request::Unpause | Request::Reset | Request::SoftReboot => {}
            Request::Shutdown { .. } => {
                self.state = VmState::ShuttingDown;
                return (Response::Ok, Some(ExitReason::GuestShutdown));
            }
            Request::Kill => {
                self.state = VmState::Exited {
                    reason: ExitReason::Killed,
                };
                return (Response::Ok, Some(ExitReason::Killed));
            }
            Request::Screendump { .. } => {
                return (
                    Response::Error {
                        message: NO_DISPLAY.into(),
                    },
                    None,
                );
            }
            Request::PrepareIncoming { .. }
            | Request::Migrate { .. }
            | Request::MigrationStatus
            | Request::MigrateCancel
            | Request::MigrateConfirm => {
                return (
                    Response::Error {
                        message: "a simulated node does not migrate".into(),
                    },
                    None,
                );
            }
        }
        (Response::Ok, None)
    }

    /// The answer to one request line of the wire protocol.
    pub fn answer_line(&mut self, line: &str) -> (Response, Option<ExitReason>) {
        match protocol::decode(line) {
            Ok(request) => self.answer(&request),
            Err(refused) => (refused, None),
        }
    }
}

/// Starts a simulated VM's launcher stand-in on `vm_dir/launcher.sock` (a stale socket or exit
/// record of an earlier one is removed first). Once a shutdown or kill ends the VM it writes
/// `exit.json` as a launcher does on its way out, stops serving and removes the socket, so the
/// pod runner's monitor sees it end as it sees an adopted launcher end.
pub fn serve(vm_dir: &Path, paused: bool) -> std::io::Result<JoinHandle<()>> {
    let socket = vm_dir.join("launcher.sock");
    let exit_file = vm_dir.join("exit.json");
    let _ = std::fs::remove_file(&exit_file);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    Ok(tokio::spawn(stand_in(
        listener,
        socket,
        exit_file,
        SimVm::new(paused),
    )))
}

/// A stand-in's VM and its state as watchers see it.
struct Shared {
    vm: Mutex<SimVm>,
    states: watch::Sender<VmState>,
}

async fn stand_in(listener: UnixListener, socket: PathBuf, exit_file: PathBuf, vm: SimVm) {
    let shared = Arc::new(Shared {
        states: watch::Sender::new(vm.state().clone()),
        vm: Mutex::new(vm),
    });
    let (tx, mut rx) = mpsc::channel::<ExitReason>(1);
    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    tokio::spawn(connection(conn, shared.clone(), tx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, say: back off instead of spinning.
                    tracing::warn!(error = %e, socket = %socket.display(), "simulated launcher: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(r) = rx.recv() => break r,
        }
    };
    // Watchers see the end (and their connections close), as a launcher's do.
    shared.states.send_replace(VmState::Exited {
        reason: reason.clone(),
    });
    match serde_json::to_vec(&reason) {
        Ok(json) => {
            if let Err(e) = std::fs::write(&exit_file, json) {
                tracing::warn!(error = %e, file = %exit_file.display(), "simulated launcher");
            }
        }
        Err(e) => tracing::warn!(error = %e, "simulated launcher: exit record"),
    }
    drop(listener);
    let _ = std::fs::remove_file(&socket);
}

/// One client of a stand-in: request lines in, answer lines out (a watch: a status line per
/// state change); the VM's end is reported once its answer is written.
async fn connection(conn: UnixStream, shared: Arc<Shared>, exit: mpsc::Sender<ExitReason>) {
    let (rd, mut wr) = conn.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        match (&mut rd)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if protocol::decode(&line) == Ok(Request::Watch) {
            let status = |state| Response::Status {
                state,
                pid: None,
                accel: Accel::Tcg,
            };
            protocol::stream_states(shared.states.subscribe(), status, &mut rd, &mut wr).await;
            break;
        }
        let (response, ended) = {
            let mut vm = shared.vm.lock().unwrap_or_else(PoisonError::into_inner);
            let answer = vm.answer_line(&line);
            let now = vm.state().clone();
            shared.states.send_if_modified(|s| {
                let changed = *s != now;
                *s = now;
                changed
            });
            answer
        };
        let written = protocol::write_line(&mut wr, &response).await.is_ok();
        if let Some(r) = ended {
            let _ = exit.try_send(r);
        }
        if !written || line.len() > MAX_LINE {
            break;
        }
    }
}

/// Runs `count` simulated nodes named after `cfg.runner.node` until one's pod runner ends: one
/// endpoint for all of them (pause, unpause, reset reach the stand-ins; console, VNC and
/// screenshots find nothing to show), registration, heartbeats and a pod runner per node. No
/// Service forwarding: that is nftables on a real node.
pub async fn run(
    client: kube::Client,
    heartbeat_client: kube::Client,
    cfg: AgentConfig,
    count: u32,
) -> Result<(), Error> {
    let ep = endpoint::start(endpoint::EndpointConfig {
        listen: cfg.endpoint_listen,
        state_dir: cfg.runner.state_dir.clone(),
        ca_pem: cfg.ca_pem.clone(),
    })
    .await?;
    let nodes: Vec<node::Identity> = node_names(&cfg.runner.node, count)
        .into_iter()
        .map(|name| node::Identity {
            name,
            ip: cfg.node_ip,
            endpoint_port: ep.addr.port(),
            cert_sha256: ep.cert_sha256.clone(),
            simulated: true,
        })
        .collect();
    node::register_all(&client, &nodes).await;
    tracing::info!(count, first = %nodes.first().map_or("", |n| n.name.as_str()), "simulated nodes registered");
    let heartbeat = node::keep_ready(heartbeat_client, nodes.clone(), cfg.heartbeat);
    let runners: Vec<JoinHandle<Result<(), Error>>> = nodes
        .iter()
        .map(|me| {
            let runner = crate::RunnerConfig {
                node: me.name.clone(),
                runtime: Runtime::Simulated,
                ..cfg.runner.clone()
            };
            tokio::spawn(crate::pods::run(client.clone(), runner))
        })
        .collect();
    let r = if runners.is_empty() {
        Ok(())
    } else {
        let (first, _, rest) = futures_util::future::select_all(runners).await;
        for r in rest {
            r.abort();
        }
        first.unwrap_or_else(|e| Err(Error::Pod(format!("simulated node's pod runner: {e}"))))
    };
    heartbeat.abort();
    drop(ep);
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kuvirt_launcher::protocol::{Envelope, PROTOCOL_VERSION};

    fn line(req: Request) -> String {
        serde_json::to_string(&Envelope {
            version: PROTOCOL_VERSION,
            request: req,
        })
        .unwrap()
    }

    fn state(vm: &mut SimVm) -> VmState {
        match vm.answer(&Request::Status).0 {
            Response::Status { state, pid, .. } => {
                assert_eq!(pid, None);
                state
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_are_numbered_from_the_base() {
        assert_eq!(node_names("sim", 3), ["sim-0000", "sim-0001", "sim-0002"]);
        assert_eq!(node_names("n", 10001).last().unwrap(), "n-10000");
        assert!(node_names("n", 0).is_empty());
    }

    #[test]
    fn a_simulated_vm_runs_pauses_and_shuts_down() {
        let mut vm = SimVm::new(false);
        assert_eq!(state(&mut vm), VmState::Running);
        assert_eq!(vm.answer(&Request::Pause), (Response::Ok, None));
        assert_eq!(state(&mut vm), VmState::Paused);
        assert_eq!(vm.answer(&Request::Pause), (Response::Ok, None));
        assert_eq!(vm.answer(&Request::Unpause), (Response::Ok, None));
        assert_eq!(state(&mut vm), VmState::Running);
        for r in [Request::Reset, Request::SoftReboot] {
            assert_eq!(vm.answer(&r), (Response::Ok, None));
            assert_eq!(state(&mut vm), VmState::Running);
        }
        assert_eq!(
            vm.answer(&Request::Screendump {
                path: "/x.png".into()
            }),
            (
                Response::Error {
                    message: NO_DISPLAY.into()
                },
                None
            )
        );
        assert_eq!(
            vm.answer(&Request::Shutdown {
                grace_period_seconds: Some(30)
            }),
            (Response::Ok, Some(ExitReason::GuestShutdown))
        );
        assert_eq!(state(&mut vm), VmState::ShuttingDown);
        assert!(ExitReason::GuestShutdown.succeeded());
    }

    #[test]
    fn a_killed_vm_fails_and_a_paused_start_is_paused() {
        let mut vm = SimVm::new(true);
        assert_eq!(state(&mut vm), VmState::Paused);
        let (r, ended) = vm.answer(&Request::Kill);
        assert_eq!(r, Response::Ok);
        assert!(!ended.unwrap().succeeded());
    }

    #[test]
    fn wire_lines_are_checked_like_a_launchers() {
        let mut vm = SimVm::new(false);
        assert!(matches!(
            vm.answer_line(&line(Request::Status)).0,
            Response::Status {
                state: VmState::Running,
                ..
            }
        ));
        let old = r#"{"version":0,"command":"status"}"#;
        assert!(
            matches!(vm.answer_line(old).0, Response::Error { message } if message.contains("version 0"))
        );
        assert!(
            matches!(vm.answer_line("nonsense").0, Response::Error { message } if message.starts_with("bad request"))
        );
        let long = "x".repeat(MAX_LINE + 1);
        assert_eq!(
            vm.answer_line(&long).0,
            Response::Error {
                message: "request too long".into()
            }
        );
    }

    /// The stand-in over its socket: the real client's calls, then the exit record and no
    /// socket once a shutdown ends the VM.
    #[tokio::test]
    async fn the_stand_in_answers_on_the_socket_and_leaves_an_exit_record() {
        use kuvirt_launcher::protocol::call;
        let dir = tempfile::tempdir().unwrap();
        // A stale socket file of an earlier stand-in does not stop a new one.
        std::fs::write(dir.path().join("launcher.sock"), b"").unwrap();
        let task = serve(dir.path(), false).unwrap();
        let sock = dir.path().join("launcher.sock");
        assert!(matches!(
            call(&sock, Request::Status).await.unwrap(),
            Response::Status {
                state: VmState::Running,
                ..
            }
        ));
        // A watch: the state now, then each change, then its end.
        let mut feed = kuvirt_launcher::protocol::watch(&sock).await.unwrap();
        let mut next_state = async || match feed.next().await.unwrap() {
            Some(Response::Status { state, .. }) => Some(state),
            None => None,
            Some(other) => panic!("{other:?}"),
        };
        assert_eq!(next_state().await, Some(VmState::Running));
        call(&sock, Request::Pause).await.unwrap();
        assert_eq!(next_state().await, Some(VmState::Paused));
        call(&sock, Request::Unpause).await.unwrap();
        assert_eq!(next_state().await, Some(VmState::Running));
        call(&sock, Request::Pause).await.unwrap();
        assert_eq!(next_state().await, Some(VmState::Paused));
        assert!(matches!(
            call(&sock, Request::Status).await.unwrap(),
            Response::Status {
                state: VmState::Paused,
                ..
            }
        ));
        let shot = call(
            &sock,
            Request::Screendump {
                path: dir.path().join("s.png"),
            },
        )
        .await
        .unwrap_err();
        assert!(shot.to_string().contains(NO_DISPLAY), "{shot}");
        call(
            &sock,
            Request::Shutdown {
                grace_period_seconds: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(next_state().await, Some(VmState::ShuttingDown));
        assert!(matches!(next_state().await, Some(VmState::Exited { .. })));
        assert_eq!(next_state().await, None);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        let exit: ExitReason =
            serde_json::from_slice(&std::fs::read(dir.path().join("exit.json")).unwrap()).unwrap();
        assert_eq!(exit, ExitReason::GuestShutdown);
        assert!(!sock.exists());
        assert!(call(&sock, Request::Status).await.is_err());
    }
}
