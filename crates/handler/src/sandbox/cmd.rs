//! Running `ip`, `nft` and friends: a failure names the command line and what it printed on stderr.

use std::io::Write;
use std::process::{Command, Stdio};

use super::SandboxError;

/// Runs `prog args…`; its stdout on success.
pub fn run(prog: &str, args: &[&str]) -> Result<String, SandboxError> {
    run_with_stdin(prog, args, None)
}

/// Runs `prog args…` with `input` on its stdin.
pub fn run_with_stdin(
    prog: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, SandboxError> {
    let line = || format!("{prog} {}", args.join(" "));
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SandboxError::Command {
            cmd: line(),
            stderr: e.to_string(),
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| SandboxError::Command {
                cmd: line(),
                stderr: format!("writing its input: {e}"),
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SandboxError::Command {
            cmd: line(),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(SandboxError::Command {
            cmd: line(),
            stderr: if stderr.is_empty() {
                out.status.to_string()
            } else {
                stderr
            },
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `prog args…` and parses its stdout as JSON.
pub fn run_json(prog: &str, args: &[&str]) -> Result<serde_json::Value, SandboxError> {
    let out = run(prog, args)?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(vec![]));
    }
    serde_json::from_str(&out).map_err(|e| SandboxError::Command {
        cmd: format!("{prog} {}", args.join(" ")),
        stderr: format!("unreadable JSON output: {e}"),
    })
}
