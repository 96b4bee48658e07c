//! A kube-rs client from the kubeconfig kubectl would pick, plus the namespace to work in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::ClientArgs;

/// Where `kuvirt server` writes its admin kubeconfig by default.
pub const SERVER_KUBECONFIG: &str = "/var/lib/kuvirt/server/kubeconfig";

/// A connected client and the namespace the flags and kubeconfig choose.
pub struct Session {
    pub client: kube::Client,
    /// `-n`, else the context's namespace, else "default".
    pub namespace: String,
    /// Whether `-n` was given (apply refuses objects naming another namespace then).
    pub namespace_explicit: bool,
}

/// Which kubeconfig: the flag, else $KUBECONFIG (possibly a list), else the server's, else
/// ~/.kube/config.
fn load(flag: Option<&Path>) -> Result<Kubeconfig> {
    if let Some(path) = flag {
        return Kubeconfig::read_from(path)
            .with_context(|| format!("cannot read kubeconfig {}", path.display()));
    }
    if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        return Kubeconfig::from_env()?.context("KUBECONFIG names no readable file");
    }
    let server = PathBuf::from(SERVER_KUBECONFIG);
    if server.exists() {
        return Kubeconfig::read_from(&server)
            .with_context(|| format!("cannot read kubeconfig {}", server.display()));
    }
    Kubeconfig::read().context("no kubeconfig: pass --kubeconfig or set KUBECONFIG")
}

/// Connects as the chosen kubeconfig's context says.
pub async fn connect(args: &ClientArgs) -> Result<Session> {
    let kubeconfig = load(args.kubeconfig.as_deref())?;
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    Ok(Session {
        client,
        namespace,
        namespace_explicit: args.namespace.is_some(),
    })
}
