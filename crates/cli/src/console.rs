//! Attaches this terminal to a VM's serial console: raw mode on a TTY, Ctrl+] leaves. Without a
//! TTY (pipes, tests) output is copied to stdout and stdin is forwarded until it ends.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use kuvirt_launcher::console::Console;
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

/// The byte Ctrl+] sends.
const ESCAPE: u8 = 0x1d;

/// Relays until Ctrl+] (TTY) or until the console closes.
pub async fn attach(console: Console, mut output: broadcast::Receiver<Arc<[u8]>>) {
    let tty = std::io::stdin().is_terminal();
    if tty {
        if crossterm::terminal::enable_raw_mode().is_err() {
            return;
        }
        eprint!("kuvirt: attached to the serial console; Ctrl+] detaches\r\n");
    }
    let out = tokio::spawn(async move {
        loop {
            match output.recv().await {
                Ok(chunk) => {
                    let mut stdout = std::io::stdout().lock();
                    if stdout
                        .write_all(&chunk)
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if tty && let Some(pos) = chunk.iter().position(|b| *b == ESCAPE) {
            if pos > 0 {
                console.send(chunk[..pos].to_vec()).await;
            }
            restore_terminal();
            eprintln!("\nkuvirt: detached; the VM keeps running");
            out.abort();
            return;
        }
        console.send(chunk.to_vec()).await;
    }
    // stdin ended (not a TTY): keep showing output until the VM stops.
    let _ = out.await;
}

/// Leaves raw mode if it was entered.
pub fn restore_terminal() {
    if std::io::stdin().is_terminal() {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Restores the terminal when dropped, whatever path the caller leaves by.
pub struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}
