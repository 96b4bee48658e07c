//! `kuvirt console|vnc`: virtctl's streams to a running VMI — the serial console on this
//! terminal, VNC through a local TCP port (and a viewer, if one is installed), and VNC
//! screenshots — over the API server's websocket subresources (subprotocol `plain.kubevirt.io`:
//! raw bytes in binary frames).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::kubectl::{ClientArgs, client, error_line};

/// The websocket subprotocol of KubeVirt's console and VNC streams.
const PLAIN: &str = "plain.kubevirt.io";
/// Ctrl+]: leaves the console, as in virtctl.
const ESCAPE: u8 = 0x1d;

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// `kuvirt console NAME [--timeout MINUTES]`
#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// The VirtualMachineInstance (a VM's VMI has the VM's name).
    name: String,
    /// Minutes to wait for the VMI to be running and its console to answer.
    #[arg(long, default_value = "5")]
    timeout: u64,
    #[command(flatten)]
    client: ClientArgs,
}

/// `kuvirt vnc NAME [--proxy-only] [--port P] [--address A]`, `kuvirt vnc screenshot NAME -f F`
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VncArgs {
    #[command(subcommand)]
    screenshot: Option<VncCommand>,
    /// The VirtualMachineInstance.
    name: Option<String>,
    /// Only open the local port (its number is printed as JSON); start no viewer.
    #[arg(long)]
    proxy_only: bool,
    /// The local port (0: any free port).
    #[arg(long, default_value = "0")]
    port: u16,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    address: std::net::IpAddr,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand, Debug)]
enum VncCommand {
    /// Save a PNG of the VM's display.
    Screenshot {
        /// The VirtualMachineInstance.
        name: String,
        /// Where to write the PNG.
        #[arg(short, long)]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn vmi_path(ns: &str, name: &str, sub: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{sub}"
    )
}

/// The server's `Status` message in an error body, else the body itself.
fn status_message(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("message")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// Opens the websocket at `path`; an HTTP error becomes its Status message and code.
async fn open(kube: &kube::Client, path: &str) -> Result<Ws, (u16, anyhow::Error)> {
    let key = base64_key();
    let req = http::Request::get(path)
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::SEC_WEBSOCKET_VERSION, "13")
        .header(http::header::SEC_WEBSOCKET_KEY, &key)
        .header(http::header::SEC_WEBSOCKET_PROTOCOL, PLAIN)
        .body(kube::client::Body::empty())
        .map_err(|e| (0, anyhow!(e)))?;
    let res = kube.send(req).await.map_err(|e| (0, anyhow!(e)))?;
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let code = res.status().as_u16();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err((code, anyhow!("{}", status_message(&body))));
    }
    let accept = res
        .headers()
        .get(http::header::SEC_WEBSOCKET_ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept != derive_accept_key(key.as_bytes()) {
        return Err((
            0,
            anyhow!("the server's websocket handshake does not match"),
        ));
    }
    let upgraded = hyper::upgrade::on(res)
        .await
        .map_err(|e| (0, anyhow!("websocket upgrade: {e}")))?;
    Ok(WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await)
}

fn base64_key() -> String {
    use base64::Engine as _;
    let mut k = [0u8; 16];
    rand::fill(&mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

/// Opens the websocket, retrying while the VMI is not there yet (404) or not running yet (400,
/// as virtctl does), until `deadline`; says once what it waits for.
async fn open_until(kube: &kube::Client, path: &str, deadline: tokio::time::Instant) -> Result<Ws> {
    let mut told = false;
    loop {
        match open(kube, path).await {
            Ok(ws) => return Ok(ws),
            Err((code, e)) => {
                let retry = code == 404 || (code == 400 && e.to_string().contains("not running"));
                if !retry || tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                if !told {
                    eprintln!("Waiting: {e}");
                    told = true;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs a verb; an error is one line on stderr and exit code 1.
async fn run(work: impl Future<Output = Result<()>>) -> Result<i32> {
    match work.await {
        Ok(()) => Ok(0),
        Err(e) => {
            crate::console::restore_terminal();
            eprintln!("{}", error_line(&e));
            Ok(1)
        }
    }
}

pub async fn console(args: ConsoleArgs) -> Result<i32> {
    run(async {
        let session = client::connect(&args.client).await?;
        let path = vmi_path(&session.namespace, &args.name, "console");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout * 60);
        let ws = open_until(&session.client, &path, deadline).await?;
        let tty = std::io::stdin().is_terminal();
        eprintln!(
            "Successfully connected to {} console. The escape sequence is ^]",
            args.name
        );
        let _guard = if tty {
            crossterm::terminal::enable_raw_mode().context("raw terminal")?;
            Some(crate::console::TerminalGuard)
        } else {
            None
        };
        attach(ws, tty).await
    })
    .await
}

/// This terminal on the websocket until the guest's side closes or the user presses Ctrl+].
/// Without a TTY, stdin is forwarded until it ends and output is shown until the stream ends.
async fn attach(ws: Ws, tty: bool) -> Result<()> {
    let (mut tx, mut rx) = ws.split();
    let (esc_tx, mut esc_rx) = tokio::sync::oneshot::channel::<()>();
    let input = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 1024];
        let mut esc_tx = Some(esc_tx);
        loop {
            let n = match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let data = &buf[..n];
            let (data, leave) = match data.iter().position(|b| *b == ESCAPE) {
                Some(i) if tty => (&data[..i], true),
                _ => (data, false),
            };
            if !data.is_empty()
                && tx
                    .send(Message::Binary(data.to_vec().into()))
                    .await
                    .is_err()
            {
                break;
            }
            if leave {
                if let Some(t) = esc_tx.take() {
                    let _ = t.send(());
                }
                break;
            }
        }
        // Keep the sink alive (dropping it would not close the stream, but be explicit).
        tx
    });
    let mut stdout = tokio::io::stdout();
    let mut escape_open = true;
    loop {
        tokio::select! {
            // Err: stdin ended without the escape key; output goes on.
            r = &mut esc_rx, if escape_open => match r {
                Ok(()) => break,
                Err(_) => escape_open = false,
            },
            m = rx.next() => match m {
                Some(Ok(Message::Binary(b))) => {
                    stdout.write_all(&b).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Text(t))) => {
                    stdout.write_all(t.as_bytes()).await?;
                    stdout.flush().await?;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("console stream: {e}"),
            },
        }
    }
    input.abort();
    Ok(())
}

pub async fn vnc(args: VncArgs) -> Result<i32> {
    if let Some(VncCommand::Screenshot { name, file, client }) = args.screenshot {
        return run(screenshot(name, file, client)).await;
    }
    run(async {
        let name = args
            .name
            .ok_or_else(|| anyhow!("a VirtualMachineInstance name is required"))?;
        let session = client::connect(&args.client).await?;
        let path = vmi_path(&session.namespace, &name, "vnc");
        // Fail early (not running, forbidden) before anyone connects to the local port.
        let first = open_until(
            &session.client,
            &path,
            tokio::time::Instant::now() + Duration::from_secs(5),
        )
        .await?;
        let listener = tokio::net::TcpListener::bind((args.address, args.port))
            .await
            .with_context(|| format!("listen on {}:{}", args.address, args.port))?;
        let port = listener.local_addr()?.port();
        let viewer = if args.proxy_only {
            println!("{}", serde_json::json!({ "port": port }));
            None
        } else {
            Some(start_viewer(args.address, port)?)
        };
        // One client, as in virtctl: the proxy ends with its VNC session.
        let (tcp, _) = listener.accept().await?;
        relay(first, tcp).await;
        if let Some(mut v) = viewer {
            let _ = v.wait().await;
        }
        Ok(())
    })
    .await
}

/// A VNC viewer from this host, pointed at the local port.
fn start_viewer(addr: std::net::IpAddr, port: u16) -> Result<tokio::process::Child> {
    let candidates: [(&str, String); 3] = [
        ("remote-viewer", format!("vnc://{addr}:{port}")),
        ("vncviewer", format!("{addr}::{port}")),
        ("xtightvncviewer", format!("{addr}::{port}")),
    ];
    for (exe, target) in candidates {
        match tokio::process::Command::new(exe).arg(&target).spawn() {
            Ok(child) => return Ok(child),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => bail!("{exe}: {e}"),
        }
    }
    bail!(
        "no VNC viewer found (remote-viewer, vncviewer); use --proxy-only and connect one to the printed port"
    )
}

/// Bytes between a local TCP client and the websocket until either side ends.
async fn relay(ws: Ws, tcp: tokio::net::TcpStream) {
    let (mut tx, mut rx) = ws.split();
    let (mut rd, mut wr) = tcp.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    let down = async {
        while let Some(Ok(m)) = rx.next().await {
            let data = match m {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn screenshot(name: String, file: PathBuf, client_args: ClientArgs) -> Result<()> {
    let session = client::connect(&client_args).await?;
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances",
        session.namespace
    );
    let req = kube::core::Request::new(path).get_subresource("vnc/screenshot", &name)?;
    let req = req.map(kube::client::Body::from);
    let res = session.client.send(req).await?;
    let ok = res.status().is_success();
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .map_err(|e| anyhow!("screenshot: {e}"))?
        .to_bytes();
    if !ok {
        bail!("{}", status_message(&body));
    }
    if !body.starts_with(b"\x89PNG\r\n\x1a\n") {
        bail!("the server's screenshot is not a PNG");
    }
    tokio::fs::write(&file, &body)
        .await
        .with_context(|| file.display().to_string())?;
    Ok(())
}
