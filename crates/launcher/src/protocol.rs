//! The launcher's control protocol: one request enum, one response enum, a version number; JSON
//! lines over a unix socket (debuggable with `socat - UNIX-CONNECT:launcher.sock`). The handler and
//! `kuvirt` plumbing speak it; transports only decode into these types.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::machine::Accel;
use crate::migration::{Incoming, MigrateOptions, MigrationInfo};
use crate::vm::{Vm, VmState};

/// Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line accepted; anything longer is garbage.
pub const MAX_LINE: usize = 64 * 1024;

/// The request on one line of the wire, or the error answer it gets (too long, not a request,
/// another protocol version).
pub fn decode(line: &str) -> Result<Request, Response> {
    let error = |message: String| Response::Error { message };
    if line.len() > MAX_LINE {
        return Err(error("request too long".into()));
    }
    match serde_json::from_str::<Envelope>(line) {
        Err(e) => Err(error(format!("bad request: {e}"))),
        Ok(env) if env.version != PROTOCOL_VERSION => Err(error(format!(
            "protocol version {} not supported (this launcher speaks {PROTOCOL_VERSION})",
            env.version
        ))),
        Ok(env) => Ok(env.request),
    }
}

/// What a client may ask.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum Request {
    Status,
    /// The status at once, then again on each change of the VM's state, on the same connection
    /// until either side closes it (the launcher does once the VM has exited).
    Watch,
    Pause,
    Unpause,
    Reset,
    SoftReboot,
    /// ACPI power button, then kill after the grace period (the VMI's when not given).
    #[serde(rename_all = "camelCase")]
    Shutdown {
        grace_period_seconds: Option<u64>,
    },
    Kill,
    Screendump {
        path: PathBuf,
    },
    /// A migration target: listen for the VM's state (answered with [`Response::Incoming`]).
    #[serde(rename_all = "camelCase")]
    PrepareIncoming {
        #[serde(default)]
        post_copy: bool,
    },
    /// A migration source: send the VM to the target's sockets (relayed here by the node
    /// agent); answered at once, progress with [`Request::MigrationStatus`].
    Migrate {
        #[serde(flatten)]
        to: Incoming,
        options: MigrateOptions,
    },
    /// The outgoing migration's progress ([`Response::Migration`]).
    MigrationStatus,
    /// Cancel the outgoing migration, or resume here after one whose target failed.
    MigrateCancel,
    /// The target runs the VM: end this side.
    MigrateConfirm,
}

/// A request on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    Ok,
    Status {
        #[serde(flatten)]
        state: VmState,
        pid: Option<u32>,
        accel: Accel,
    },
    Error {
        message: String,
    },
    Incoming {
        #[serde(flatten)]
        incoming: Incoming,
    },
    Migration {
        info: MigrationInfo,
    },
}

/// A protocol failure on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("launcher socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("launcher: {0}")]
    Io(#[from] std::io::Error),
    #[error("launcher: bad answer: {0}")]
    Decode(String),
    #[error("launcher: {0}")]
    Refused(String),
}

/// What the server needs to answer.
pub struct Served {
    pub vm: Arc<Vm>,
    pub accel: Accel,
    pub grace: Duration,
}

/// Serves requests on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, served: Arc<Served>) {
    while let Ok((conn, _)) = listener.accept().await {
        let served = served.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = conn.into_split();
            let mut rd = BufReader::new(rd);
            let mut line = String::new();
            loop {
                line.clear();
                let read = (&mut rd)
                    .take(MAX_LINE as u64 + 1)
                    .read_line(&mut line)
                    .await;
                let response = match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => match decode(&line) {
                        Ok(Request::Watch) => {
                            let answer = |state| status(&served, state);
                            stream_states(served.vm.watch(), answer, &mut rd, &mut wr).await;
                            break;
                        }
                        Ok(request) => handle(&served, request).await,
                        Err(refused) => refused,
                    },
                };
                let Ok(mut out) = serde_json::to_string(&response) else {
                    break;
                };
                out.push('\n');
                if wr.write_all(out.as_bytes()).await.is_err() {
                    break;
                }
                if line.len() > MAX_LINE {
                    break;
                }
            }
        });
    }
}

fn status(s: &Served, state: VmState) -> Response {
    Response::Status {
        state,
        pid: s.vm.pid(),
        accel: s.accel,
    }
}

/// Answers a watch: the status of each state `states` takes, the current one first, until the
/// VM has exited or the client goes (it sends nothing more; anything it sends ends the watch).
/// The launcher and the simulated node's stand-in both answer with it.
pub async fn stream_states(
    mut states: tokio::sync::watch::Receiver<VmState>,
    status: impl Fn(VmState) -> Response,
    rd: &mut (impl tokio::io::AsyncRead + Unpin),
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
) {
    loop {
        let state = states.borrow_and_update().clone();
        let last = matches!(state, VmState::Exited { .. });
        if write_line(wr, &status(state)).await.is_err() || last {
            return;
        }
        let mut byte = [0u8; 1];
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = rd.read(&mut byte) => return,
        }
    }
}

/// Writes one answer line.
pub async fn write_line(
    wr: &mut (impl tokio::io::AsyncWrite + Unpin),
    response: &Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_string(response).map_err(std::io::Error::other)?;
    out.push('\n');
    wr.write_all(out.as_bytes()).await
}

async fn handle(s: &Served, req: Request) -> Response {
    let vm = &s.vm;
    let result = match req {
        Request::Status | Request::Watch => return status(s, vm.state()),
        Request::Pause => vm.pause().await,
        Request::Unpause => vm.unpause().await,
        Request::Reset => vm.reset().await,
        Request::SoftReboot => vm.soft_reboot().await,
        Request::Screendump { path } => vm.screendump(&path).await,
        Request::Shutdown {
            grace_period_seconds,
        } => {
            let grace = grace_period_seconds.map_or(s.grace, Duration::from_secs);
            let vm = vm.clone();
            // Answer at once; the state says when it is over.
            tokio::spawn(async move { vm.shutdown(grace).await });
            Ok(())
        }
        Request::Kill => {
            vm.kill().await;
            Ok(())
        }
        Request::PrepareIncoming { post_copy } => {
            return match vm.prepare_incoming(post_copy).await {
                Ok(incoming) => Response::Incoming { incoming },
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            };
        }
        Request::Migrate { to, options } => vm.migrate(to, options).await,
        Request::MigrationStatus => {
            return match vm.migration_info() {
                Some(info) => Response::Migration { info },
                None => Response::Error {
                    message: "no migration was started".into(),
                },
            };
        }
        Request::MigrateCancel => vm.cancel_migration().await,
        Request::MigrateConfirm if vm.state() != VmState::Handover => Err(
            crate::vm::VmError::Migration("no completed migration to confirm".into()),
        ),
        Request::MigrateConfirm => {
            // Answer first: confirming ends the launcher.
            let vm = vm.clone();
            tokio::spawn(async move {
                if let Err(e) = vm.confirm_migration().await {
                    tracing::warn!(error = %e, "confirming the migration");
                }
            });
            Ok(())
        }
    };
    match result {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// How long a launcher may take to answer (a shutdown answers at once and finishes later).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// Sends one request and reads its answer, within [`CALL_TIMEOUT`].
pub async fn call(socket: &Path, request: Request) -> Result<Response, ProtocolError> {
    tokio::time::timeout(CALL_TIMEOUT, call_unbounded(socket, request))
        .await
        .map_err(|_| ProtocolError::Io(std::io::Error::other("no answer within 35s")))?
}

/// Connects to `socket` and sends `request`.
async fn send(
    socket: &Path,
    request: Request,
) -> Result<
    (
        tokio::net::unix::OwnedReadHalf,
        tokio::net::unix::OwnedWriteHalf,
    ),
    ProtocolError,
> {
    let conn = UnixStream::connect(socket)
        .await
        .map_err(|e| ProtocolError::Connect {
            path: socket.display().to_string(),
            source: e,
        })?;
    let (rd, mut wr) = conn.into_split();
    let env = Envelope {
        version: PROTOCOL_VERSION,
        request,
    };
    let mut line = serde_json::to_string(&env).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    line.push('\n');
    wr.write_all(line.as_bytes()).await?;
    Ok((rd, wr))
}

async fn call_unbounded(socket: &Path, request: Request) -> Result<Response, ProtocolError> {
    let (rd, _wr) = send(socket, request).await?;
    let mut answer = String::new();
    BufReader::new(rd).read_line(&mut answer).await?;
    let resp: Response =
        serde_json::from_str(&answer).map_err(|e| ProtocolError::Decode(e.to_string()))?;
    match resp {
        Response::Error { message } => Err(ProtocolError::Refused(message)),
        other => Ok(other),
    }
}

/// A launcher's states as they change (a [`Request::Watch`] connection).
pub struct StatusFeed {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    /// Kept open: closing it ends the watch.
    _wr: tokio::net::unix::OwnedWriteHalf,
    line: Vec<u8>,
}

impl StatusFeed {
    /// The next status: the current one first, then one per change; `None` once the launcher
    /// has closed the watch (its VM exited, or it is gone). Cancel-safe: a line read in part
    /// is finished by the next call.
    pub async fn next(&mut self) -> Result<Option<Response>, ProtocolError> {
        let room = (MAX_LINE + 1).saturating_sub(self.line.len()) as u64;
        let n = (&mut self.rd)
            .take(room)
            .read_until(b'\n', &mut self.line)
            .await?;
        if self.line.len() > MAX_LINE {
            return Err(ProtocolError::Decode("status line too long".into()));
        }
        if n == 0 || self.line.last() != Some(&b'\n') {
            return Ok(None);
        }
        let line = std::mem::take(&mut self.line);
        match serde_json::from_slice::<Response>(&line) {
            Ok(Response::Error { message }) => Err(ProtocolError::Refused(message)),
            Ok(r) => Ok(Some(r)),
            Err(e) => Err(ProtocolError::Decode(e.to_string())),
        }
    }
}

/// Opens a watch of the launcher's state on `socket`. A launcher that does not know the
/// request (an older one) refuses it: [`ProtocolError::Refused`].
pub async fn watch(socket: &Path) -> Result<StatusFeed, ProtocolError> {
    let (rd, wr) = send(socket, Request::Watch).await?;
    Ok(StatusFeed {
        rd: BufReader::new(rd),
        _wr: wr,
        line: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let env = Envelope {
            version: 1,
            request: Request::Shutdown {
                grace_period_seconds: Some(5),
            },
        };
        assert_eq!(
            serde_json::to_string(&env).unwrap(),
            r#"{"version":1,"command":"shutdown","gracePeriodSeconds":5}"#
        );
        let st = Response::Status {
            state: VmState::Running,
            pid: Some(7),
            accel: Accel::Tcg,
        };
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"result":"status","state":"running","pid":7,"accel":"tcg"}"#
        );
        let back: Response = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
    }
}
