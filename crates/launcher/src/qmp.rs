//! A small QMP client: JSON lines over QEMU's monitor socket, one `id` per command, events on a
//! broadcast channel. Garbage from QEMU is logged and skipped; it never stalls a caller.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, broadcast, oneshot, watch};
use tokio::time::Instant;

/// A QMP failure.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("qmp socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("qmp: no greeting from qemu")]
    NoGreeting,
    #[error("qmp: {0}")]
    Io(#[from] std::io::Error),
    #[error("qmp {command}: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("qmp {0}: connection closed")]
    Closed(String),
    #[error("qmp {0}: timed out")]
    Timeout(String),
    #[error("qmp {command}: unexpected answer: {detail}")]
    Unexpected { command: String, detail: String },
}

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `RESET`, `POWERDOWN`, …).
#[derive(Clone, Debug, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
}

/// Everything QEMU may write on the monitor socket, one JSON object per line.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Incoming {
    Greeting {
        #[serde(rename = "QMP")]
        _qmp: Value,
    },
    Return {
        #[serde(rename = "return")]
        value: Value,
        id: Option<Value>,
    },
    Error {
        error: ErrorBody,
        id: Option<Value>,
    },
    Event {
        event: String,
        #[serde(default)]
        data: Value,
    },
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, ErrorBody>>>>>;

/// A connected QMP session; clones share it.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: watch::Receiver<bool>,
    timeout: Duration,
}

/// QEMU's run state as `query-status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    pub status: String,
}

impl Qmp {
    /// Connects to `path`, retrying until `deadline` (QEMU creates the socket shortly after start),
    /// reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path, deadline: Instant) -> Result<Qmp, QmpError> {
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(QmpError::Connect {
                        path: path.display().to_string(),
                        source: e,
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .map_err(|_| QmpError::NoGreeting)??;
        match greeting.as_deref().map(serde_json::from_str::<Incoming>) {
            Some(Ok(Incoming::Greeting { .. })) => {}
            _ => return Err(QmpError::NoGreeting),
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = watch::channel(false);
        let qmp = Qmp {
            inner: Arc::new(Inner {
                writer: Mutex::new(write),
                pending: pending.clone(),
                next_id: AtomicU64::new(1),
                events: events.clone(),
                closed,
                timeout: Duration::from_secs(30),
            }),
        };
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                dispatch(&line, &pending, &events).await;
            }
            // Dropping the senders wakes every waiting caller with `Closed`.
            pending.lock().await.clear();
            let _ = closed_tx.send(true);
        });
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Subscribes to events from now on.
    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.inner.events.subscribe()
    }

    /// Resolves once QEMU has closed the socket and every event before that was delivered.
    pub async fn closed(&self) {
        let mut rx = self.inner.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        inner.pending.lock().await.insert(id, tx);
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        {
            let mut w = inner.writer.lock().await;
            if let Err(e) = w.write_all(line.as_bytes()).await {
                inner.pending.lock().await.remove(&id);
                return Err(e.into());
            }
        }
        match tokio::time::timeout(inner.timeout, rx).await {
            Err(_) => {
                inner.pending.lock().await.remove(&id);
                Err(QmpError::Timeout(command.to_string()))
            }
            Ok(Err(_)) => Err(QmpError::Closed(command.to_string())),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(QmpError::Command {
                command: command.to_string(),
                class: e.class,
                desc: e.desc,
            }),
        }
    }

    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// A hard reset, like the reset button.
    pub async fn system_reset(&self) -> Result<(), QmpError> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// Ends QEMU at once.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute("quit", None).await {
            Ok(_) | Err(QmpError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn query_status(&self) -> Result<Status, QmpError> {
        let v = self.execute("query-status", None).await?;
        let running = v.get("running").and_then(Value::as_bool);
        let status = v.get("status").and_then(Value::as_str);
        match (running, status) {
            (Some(running), Some(status)) => Ok(Status {
                running,
                status: status.to_string(),
            }),
            _ => Err(QmpError::Unexpected {
                command: "query-status".into(),
                detail: v.to_string(),
            }),
        }
    }

    /// Writes the display's current contents to `path` (PNG).
    pub async fn screendump(&self, path: &Path) -> Result<(), QmpError> {
        self.execute(
            "screendump",
            Some(json!({ "filename": path.display().to_string(), "format": "png" })),
        )
        .await
        .map(drop)
    }

    /// Sets a NIC's link up or down (`id` is the device id, e.g. `ua-default`).
    pub async fn set_link(&self, id: &str, up: bool) -> Result<(), QmpError> {
        self.execute("set_link", Some(json!({ "name": id, "up": up })))
            .await
            .map(drop)
    }
}

async fn dispatch(line: &str, pending: &Pending, events: &broadcast::Sender<QmpEvent>) {
    let msg = match serde_json::from_str::<Incoming>(line) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "qmp: skipping a line that is not QMP");
            return;
        }
    };
    let (id, result) = match msg {
        Incoming::Greeting { .. } => return,
        Incoming::Event { event, data } => {
            let _ = events.send(QmpEvent { event, data });
            return;
        }
        Incoming::Return { value, id } => (id, Ok(value)),
        Incoming::Error { error, id } => (id, Err(error)),
    };
    let Some(id) = id.as_ref().and_then(Value::as_u64) else {
        tracing::warn!("qmp: answer without a known id");
        return;
    };
    if let Some(tx) = pending.lock().await.remove(&id) {
        let _ = tx.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: greets, then answers each command with what `reply` returns
    /// (several lines allowed), so garbage and events can be interleaved.
    async fn peer(
        path: std::path::PathBuf,
        reply: impl Fn(&Value) -> Vec<String> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let cmd: Value = serde_json::from_str(&line).unwrap();
                for out in reply(&cmd) {
                    w.write_all(out.as_bytes()).await.unwrap();
                    w.write_all(b"\n").await.unwrap();
                }
            }
        })
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn commands_events_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _peer = peer(path.clone(), |cmd| {
            let id = cmd["id"].clone();
            match cmd["execute"].as_str().unwrap() {
                "query-status" => vec![
                    "this is not json".into(),
                    "{\"unexpected\": 1}".into(),
                    json!({"event": "STOP", "data": {}, "timestamp": {}}).to_string(),
                    json!({"return": {"running": false, "status": "paused"}, "id": id}).to_string(),
                ],
                "cont" => vec![
                    json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id})
                        .to_string(),
                ],
                _ => vec![json!({"return": {}, "id": id}).to_string()],
            }
        })
        .await;
        let qmp = Qmp::connect(&path, deadline()).await.unwrap();
        let mut events = qmp.events();
        let st = qmp.query_status().await.unwrap();
        assert_eq!(
            st,
            Status {
                running: false,
                status: "paused".into()
            }
        );
        assert_eq!(events.recv().await.unwrap().event, "STOP");
        let err = qmp.cont().await.unwrap_err().to_string();
        assert_eq!(err, "qmp cont: GenericError: nope");
    }

    #[tokio::test]
    async fn closed_connection_wakes_callers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            w.write_all(b"{\"QMP\": {}}\n").await.unwrap();
            let mut lines = BufReader::new(r).lines();
            let line = lines.next_line().await.unwrap().unwrap();
            let cmd: Value = serde_json::from_str(&line).unwrap();
            w.write_all(format!("{}\n", json!({"return": {}, "id": cmd["id"]})).as_bytes())
                .await
                .unwrap();
            // Read the next command, then hang up without answering.
            let _ = lines.next_line().await;
        });
        let qmp = Qmp::connect(&path, deadline()).await.unwrap();
        let err = qmp.system_powerdown().await.unwrap_err();
        assert!(matches!(err, QmpError::Closed(_)), "{err}");
    }

    #[tokio::test]
    async fn no_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.sock");
        let err = Qmp::connect(&path, Instant::now() + Duration::from_millis(50))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("qmp socket "), "{err}");
    }
}
