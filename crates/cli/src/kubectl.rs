//! `kuvirt get|apply|delete`: kubectl's everyday verbs over kube-rs, against `kuvirt server` or
//! any Kubernetes API server, printing what kubectl users expect.

mod apply;
pub(crate) mod client;
mod delete;
mod discovery;
mod get;
mod manifests;
mod output;
mod rest;
mod table;

use clap::Args;

pub use apply::{ApplyArgs, apply};
pub use delete::{DeleteArgs, delete};
pub use get::{GetArgs, get};

/// Flags every verb shares: where the server is and which namespace.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Path to the kubeconfig (else $KUBECONFIG, else /var/lib/kuvirt/server/kubeconfig when it
    /// exists, else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace (default: the context's, else "default").
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// One line for an error, as kubectl prints it: the server's Status passed through as
/// `Error from server (Reason): message`, anything else as `error: …`.
pub fn error_line(e: &anyhow::Error) -> String {
    if let Some(kube::Error::Api(status)) = e.downcast_ref::<kube::Error>() {
        let msg = one_line(&status.message);
        // kube-rs reconstructs a Status from a non-JSON body with a prose reason: not a
        // StatusReason.
        if status.reason.is_empty() || status.reason.contains(' ') {
            return format!("Error from server: {msg}");
        }
        return format!("Error from server ({}): {msg}", status.reason);
    }
    let text = one_line(&format!("{e:#}"));
    if text.starts_with("error: ") {
        text
    } else {
        format!("error: {text}")
    }
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Prints `e` as one line on stderr and gives exit code 1.
fn report(e: &anyhow::Error) -> i32 {
    eprintln!("{}", error_line(e));
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_status_is_passed_through() {
        let status =
            kube::core::Status::failure("virtualmachines.kubevirt.io \"x\" not found", "NotFound")
                .with_code(404);
        let e = anyhow::Error::from(kube::Error::Api(status.boxed()));
        assert_eq!(
            error_line(&e),
            "Error from server (NotFound): virtualmachines.kubevirt.io \"x\" not found"
        );
        let e = anyhow::anyhow!("two\nlines");
        assert_eq!(error_line(&e), "error: two; lines");
    }
}
