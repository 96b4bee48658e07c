//! virtctl's lifecycle verbs — `kuvirt start|stop|restart` on VMs, `pause|unpause|soft-reboot|
//! reset|guestosinfo` on VMIs — each one request to KubeVirt's subresource
//! (`/apis/subresources.kubevirt.io/v1/namespaces/NS/{virtualmachines,virtualmachineinstances}/
//! NAME/VERB`) through kube-rs, printing what virtctl prints.

use anyhow::{Result, bail};
use clap::Args;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::kubectl::{ClientArgs, client, error_line};

/// `kuvirt start NAME [--paused]`
#[derive(Args, Debug)]
pub struct StartArgs {
    /// The VirtualMachine.
    name: String,
    /// Start the VM paused.
    #[arg(long)]
    paused: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `kuvirt stop NAME [--grace-period N --force]`
#[derive(Args, Debug)]
pub struct StopArgs {
    /// The VirtualMachine.
    name: String,
    /// Seconds the guest gets to shut down (only with --force).
    #[arg(long)]
    grace_period: Option<i64>,
    /// Stop with the given --grace-period instead of the VM's own.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `kuvirt restart NAME [--grace-period 0 --force]`
#[derive(Args, Debug)]
pub struct RestartArgs {
    /// The VirtualMachine.
    name: String,
    /// With --force: 0 deletes the VM's launcher at once.
    #[arg(long)]
    grace_period: Option<i64>,
    /// Restart with the given --grace-period.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `pause|unpause vm|vmi NAME`: a VM's verb goes to its VMI (same name), as in virtctl.
#[derive(clap::Subcommand, Debug)]
pub enum PauseTarget {
    /// A VirtualMachine (its running VMI).
    Vm(VmiArgs),
    /// A VirtualMachineInstance.
    Vmi(VmiArgs),
}

impl PauseTarget {
    fn args(&self) -> &VmiArgs {
        match self {
            PauseTarget::Vm(a) | PauseTarget::Vmi(a) => a,
        }
    }
}

/// A VMI by name.
#[derive(Args, Debug)]
pub struct VmiArgs {
    /// The VirtualMachineInstance (a VM's VMI has the VM's name).
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// virtctl's rule: --force and --grace-period go together.
fn forced(force: bool, grace_period: Option<i64>) -> Result<Option<i64>> {
    if force != grace_period.is_some() {
        bail!("Must both use --force=true and set --grace-period.");
    }
    Ok(grace_period)
}

/// PUTs `body` to the VM's `verb` subresource and prints virtctl's line.
async fn call(client: &ClientArgs, name: &str, verb: &str, body: Value) -> Result<()> {
    put(client, "virtualmachines", name, verb, body).await?;
    println!("VM {name} was scheduled to {verb}");
    Ok(())
}

/// PUTs `body` to `/apis/subresources.kubevirt.io/v1/namespaces/NS/PLURAL/NAME/VERB`.
pub(crate) async fn put(
    client: &ClientArgs,
    plural: &str,
    name: &str,
    verb: &str,
    body: Value,
) -> Result<()> {
    let session = client::connect(client).await?;
    let path = format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{}/{plural}",
        session.namespace
    );
    let req = kube::core::Request::new(path).replace_subresource(
        verb,
        name,
        &PostParams::default(),
        serde_json::to_vec(&body)?,
    )?;
    session.client.request_text(req).await?;
    Ok(())
}

/// PUTs a VMI subresource and prints virtctl's line: `VMI NAME was scheduled to WHAT`.
async fn vmi_verb(a: &VmiArgs, verb: &str, what: &str) -> Result<i32> {
    run(async {
        put(
            &a.client,
            "virtualmachineinstances",
            &a.name,
            verb,
            json!({}),
        )
        .await?;
        println!("VMI {} was scheduled to {what}", a.name);
        Ok(())
    })
    .await
}

/// `kuvirt pause vm|vmi NAME`
pub async fn pause(target: PauseTarget) -> Result<i32> {
    vmi_verb(target.args(), "pause", "pause").await
}

/// `kuvirt unpause vm|vmi NAME`
pub async fn unpause(target: PauseTarget) -> Result<i32> {
    vmi_verb(target.args(), "unpause", "unpause").await
}

/// `kuvirt soft-reboot NAME`: the guest is asked (ACPI) to reboot.
pub async fn soft_reboot(a: VmiArgs) -> Result<i32> {
    vmi_verb(&a, "softreboot", "soft reboot").await
}

/// `kuvirt reset NAME`: a hard reset, like pressing the machine's reset button.
pub async fn reset(a: VmiArgs) -> Result<i32> {
    vmi_verb(&a, "reset", "reset").await
}

/// `kuvirt guestosinfo NAME`: the guest agent's report, as JSON.
pub async fn guestosinfo(a: VmiArgs) -> Result<i32> {
    run(async {
        let session = client::connect(&a.client).await?;
        let path = format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{}/virtualmachineinstances",
            session.namespace
        );
        let req = kube::core::Request::new(path).get_subresource("guestosinfo", &a.name)?;
        let text = session.client.request_text(req).await?;
        println!("{text}");
        Ok(())
    })
    .await
}

/// Runs a verb; an error is one line on stderr and exit code 1.
pub(crate) async fn run(work: impl Future<Output = Result<()>>) -> Result<i32> {
    match work.await {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("{}", error_line(&e));
            Ok(1)
        }
    }
}

pub async fn start(args: StartArgs) -> Result<i32> {
    run(async {
        let body = if args.paused {
            json!({ "paused": true })
        } else {
            json!({})
        };
        call(&args.client, &args.name, "start", body).await
    })
    .await
}

pub async fn stop(args: StopArgs) -> Result<i32> {
    run(async {
        let body = match forced(args.force, args.grace_period)? {
            Some(g) => json!({ "gracePeriod": g }),
            None => json!({}),
        };
        call(&args.client, &args.name, "stop", body).await
    })
    .await
}

pub async fn restart(args: RestartArgs) -> Result<i32> {
    run(async {
        let body = match forced(args.force, args.grace_period)? {
            Some(g) => json!({ "gracePeriodSeconds": g }),
            None => json!({}),
        };
        call(&args.client, &args.name, "restart", body).await
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn force_and_grace_period_go_together() {
        assert!(forced(true, None).is_err());
        assert!(forced(false, Some(3)).is_err());
        assert_eq!(forced(true, Some(0)).unwrap(), Some(0));
        assert_eq!(forced(false, None).unwrap(), None);
    }
}
