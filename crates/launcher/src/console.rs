//! The serial console: reads QEMU's serial socket all the time into a bounded log, fans the output
//! out to any number of attached clients on the launcher's console socket, and passes their input
//! back to the guest. A slow client loses output; it never stalls the guest or other clients.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;

/// Where the log goes and how big it may grow before it rotates to `<log>.1`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
}

/// A running console relay.
#[derive(Clone)]
pub struct Console {
    output: broadcast::Sender<Arc<[u8]>>,
    input: mpsc::Sender<Vec<u8>>,
    log: LogConfig,
    /// Becomes true when QEMU closes the serial port: clients are then hung up.
    closed: watch::Receiver<bool>,
}

/// A console failure.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("serial socket {path}: {source}")]
    Serial { path: String, source: io::Error },
    #[error("console socket {path}: {source}")]
    Listen { path: String, source: io::Error },
    #[error("console log {path}: {source}")]
    Log { path: String, source: io::Error },
}

impl Console {
    /// Connects to QEMU's serial socket (retrying until `deadline`), starts logging, and serves
    /// clients on `listen` if given.
    pub async fn start(
        serial: &Path,
        log: LogConfig,
        listen: Option<&Path>,
        deadline: Instant,
    ) -> Result<Console, ConsoleError> {
        let stream = loop {
            match UnixStream::connect(serial).await {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(ConsoleError::Serial {
                        path: serial.display().to_string(),
                        source: e,
                    });
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let file = open_log(&log.path).await?;
        let (output, _) = broadcast::channel(1024);
        let (input, mut input_rx) = mpsc::channel::<Vec<u8>>(64);
        let (mut rd, mut wr) = stream.into_split();
        let (closed_tx, closed) = watch::channel(false);
        let console = Console {
            output: output.clone(),
            input,
            log: log.clone(),
            closed,
        };
        let out = output.clone();
        tokio::spawn(async move {
            let mut logger = Logger {
                file,
                written: 0,
                cfg: log,
            };
            let mut buf = vec![0u8; 16 * 1024];
            let mut warned = false;
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk: Arc<[u8]> = Arc::from(&buf[..n]);
                        if let Err(e) = logger.write(&chunk).await
                            && !std::mem::replace(&mut warned, true)
                        {
                            tracing::warn!(error = %e, "console log write failed");
                        }
                        let _ = out.send(chunk);
                    }
                }
            }
            let _ = closed_tx.send(true);
        });
        tokio::spawn(async move {
            while let Some(bytes) = input_rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        if let Some(listen) = listen {
            let _ = std::fs::remove_file(listen);
            let listener = UnixListener::bind(listen).map_err(|e| ConsoleError::Listen {
                path: listen.display().to_string(),
                source: e,
            })?;
            let c = console.clone();
            let mut closed = console.closed.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => { tokio::spawn(c.clone().serve(client)); }
                            Err(_) => break,
                        },
                        _ = closed.wait_for(|c| *c) => break,
                    }
                }
            });
        }
        Ok(console)
    }

    /// Output from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[u8]>> {
        self.output.subscribe()
    }

    /// Sends keystrokes to the guest.
    pub async fn send(&self, bytes: Vec<u8>) {
        let _ = self.input.send(bytes).await;
    }

    /// The log file (the newest part; older output is in `<path>.1`).
    pub fn log_path(&self) -> &Path {
        &self.log.path
    }

    /// Resolves once QEMU has closed the serial port.
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|c| *c).await;
    }

    /// Relays one attached client until either side closes.
    async fn serve(self, client: UnixStream) {
        let (mut rd, mut wr) = client.into_split();
        let mut out = self.subscribe();
        let mut closed = self.closed.clone();
        let writer = tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    n = out.recv() => n,
                    _ = closed.wait_for(|c| *c) => break,
                };
                match next {
                    Ok(chunk) => {
                        if wr.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
            // Dropping the write half tells the client the console is gone.
        });
        let mut buf = vec![0u8; 4096];
        let reader = async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => self.send(buf[..n].to_vec()).await,
                }
            }
        };
        tokio::select! {
            _ = reader => writer.abort(),
            _ = self.closed() => { let _ = writer.await; }
        }
    }
}

async fn open_log(path: &Path) -> Result<File, ConsoleError> {
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)
        .await
        .map_err(|e| ConsoleError::Log {
            path: path.display().to_string(),
            source: e,
        })
}

/// Appends to the log, rotating it to `<path>.1` when it reaches its size limit, so at most twice
/// the limit is ever on disk.
struct Logger {
    file: File,
    written: u64,
    cfg: LogConfig,
}

impl Logger {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), ConsoleError> {
        if self.written + chunk.len() as u64 > self.cfg.max_bytes && self.written > 0 {
            let mut old = self.cfg.path.clone().into_os_string();
            old.push(".1");
            match tokio::fs::rename(&self.cfg.path, &old).await {
                // Someone removed the log: just start a new one.
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ConsoleError::Log {
                        path: self.cfg.path.display().to_string(),
                        source: e,
                    });
                }
            }
            self.file = open_log(&self.cfg.path).await?;
            self.written = 0;
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ConsoleError::Log {
                path: self.cfg.path.display().to_string(),
                source: e,
            })?;
        self.written += chunk.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn logs_rotate_and_clients_get_output_and_send_input() {
        let dir = tempfile::tempdir().unwrap();
        let serial = dir.path().join("serial.sock");
        let listen = dir.path().join("console.sock");
        let log = dir.path().join("serial.log");
        let qemu = UnixListener::bind(&serial).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let (console, accepted) = tokio::join!(
            Console::start(
                &serial,
                LogConfig {
                    path: log.clone(),
                    max_bytes: 10
                },
                Some(&listen),
                deadline
            ),
            qemu.accept()
        );
        let _console = console.unwrap();
        let (guest, _) = accepted.unwrap();
        let (mut g_rd, mut g_wr) = guest.into_split();

        let mut client = UnixStream::connect(&listen).await.unwrap();
        client.write_all(b"ls\r").await.unwrap();
        let mut got = [0u8; 3];
        g_rd.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ls\r");

        g_wr.write_all(b"0123456789").await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let mut b = [0u8; 64];
            let n = client.read(&mut b).await.unwrap();
            seen.extend_from_slice(&b[..n]);
        }
        assert_eq!(seen, b"0123456789");
        g_wr.write_all(b"abc").await.unwrap();
        // Wait (with a deadline) until the rotation happened and the new file holds the tail.
        let rotated = dir.path().join("serial.log.1");
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let cur = tokio::fs::read(&log).await.unwrap_or_default();
            if cur == b"abc" {
                break;
            }
            assert!(Instant::now() < end, "log never rotated: {cur:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(tokio::fs::read(&rotated).await.unwrap(), b"0123456789");
    }
}
