//! virtctl's `migrate` (the VM's `migrate` subresource: a VirtualMachineInstanceMigration for
//! its VMI) and `migrate-cancel` (deletes the VM's migration under way, which aborts it).

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::Args;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use kuvirt_api::v1::{MIGRATION_VMI_LABEL, VirtualMachineInstanceMigration};
use serde_json::json;

use crate::kubectl::{ClientArgs, client};
use crate::verbs::{put, run};

/// `kuvirt migrate NAME [--added-node-selector k=v,...] [--dry-run]`
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The VirtualMachine (its running VMI moves).
    name: String,
    /// Labels the target node must have too, on top of the VM's nodeSelector: k=v,k2=v2.
    #[arg(long, alias = "addedNodeSelector", value_delimiter = ',')]
    added_node_selector: Vec<String>,
    /// Check and report, but create no migration.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `kuvirt migrate-cancel NAME [--dry-run]`
#[derive(Args, Debug)]
pub struct MigrateCancelArgs {
    /// The VirtualMachine whose migration to cancel.
    name: String,
    /// Find the migration, but do not delete it.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// `k=v` pairs as a map (an empty item, from a trailing comma, is skipped).
fn node_selector(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs.iter().filter(|p| !p.is_empty()) {
        match p.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => bail!("--added-node-selector: {p:?} is not key=value"),
        }
    }
    Ok(out)
}

/// `kuvirt migrate`: prints `VM NAME was scheduled to migrate`.
pub async fn migrate(a: MigrateArgs) -> Result<i32> {
    run(async {
        let selector = node_selector(&a.added_node_selector)?;
        let mut body = json!({});
        if a.dry_run {
            println!("Dry Run execution");
            body["dryRun"] = json!(["All"]);
        }
        if !selector.is_empty() {
            body["addedNodeSelector"] = json!(selector);
        }
        put(&a.client, "virtualmachines", &a.name, "migrate", body).await?;
        println!("VM {} was scheduled to migrate", a.name);
        Ok(())
    })
    .await
}

/// `kuvirt migrate-cancel`: deletes the first of the VM's migrations (by the vmi-name label)
/// that is not over; prints `VM NAME was scheduled to migrate-cancel`.
pub async fn migrate_cancel(a: MigrateCancelArgs) -> Result<i32> {
    run(async {
        let session = client::connect(&a.client).await?;
        let api: Api<VirtualMachineInstanceMigration> =
            Api::namespaced(session.client, &session.namespace);
        let selector = format!("{MIGRATION_VMI_LABEL}=={}", a.name);
        let list = api.list(&ListParams::default().labels(&selector)).await?;
        let Some(name) = list
            .items
            .iter()
            .find(|m| {
                !m.status
                    .as_ref()
                    .and_then(|s| s.phase.as_ref())
                    .is_some_and(|p| p.is_final())
            })
            .and_then(|m| m.metadata.name.clone())
        else {
            bail!("Found no migration to cancel for {}", a.name);
        };
        if a.dry_run {
            println!("Dry Run execution");
        }
        let params = DeleteParams {
            dry_run: a.dry_run,
            ..DeleteParams::default()
        };
        api.delete(&name, &params).await?;
        println!("VM {} was scheduled to migrate-cancel", a.name);
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_selector_pairs() {
        let m = node_selector(&["zone=b".into(), "".into(), "disk=".into()]).unwrap();
        assert_eq!(m["zone"], "b");
        assert_eq!(m["disk"], "");
        assert!(node_selector(&["zone".into()]).is_err());
        assert!(node_selector(&["=b".into()]).is_err());
    }
}
