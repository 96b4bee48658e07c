//! `kuvirt apply -f`: server-side apply of every object in the files, field manager "kuvirt".

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use super::discovery::Catalog;
use super::manifests::{self, Manifest};
use super::{ClientArgs, client, report, rest};

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Files or directories of YAML/JSON manifests; `-` reads stdin.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Take over fields another manager owns.
    #[arg(long)]
    pub force_conflicts: bool,
}

/// Runs `kuvirt apply`; each failing object gives one line on stderr and exit code 1.
pub async fn apply(args: ApplyArgs) -> Result<i32> {
    let objects = match manifests::read(&args.files) {
        Ok(o) => o,
        Err(e) => return Ok(report(&e)),
    };
    let session = match client::connect(&args.client).await {
        Ok(s) => s,
        Err(e) => return Ok(report(&e)),
    };
    let catalog = match Catalog::discover(&session.client).await {
        Ok(c) => c,
        Err(e) => return Ok(report(&e)),
    };
    let mut code = 0;
    for m in objects {
        match apply_one(&session, &catalog, m, args.force_conflicts).await {
            Ok(line) => println!("{line}"),
            Err(e) => code = report(&e),
        }
    }
    Ok(code)
}

/// The namespace an object goes to: its own, else `-n`, else the context's; a conflict with
/// an explicit `-n` is an error, as in kubectl. None for cluster-scoped types.
pub fn target_namespace(
    object: &Value,
    namespaced: bool,
    session_ns: &str,
    explicit: bool,
) -> Result<Option<String>> {
    if !namespaced {
        return Ok(None);
    }
    let own = object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty());
    match own {
        Some(own) if explicit && own != session_ns => bail!(
            "the namespace from the provided object {own:?} does not match the namespace \
             {session_ns:?}. You must pass '--namespace={own}' to perform this operation."
        ),
        Some(own) => Ok(Some(own.to_string())),
        None => Ok(Some(session_ns.to_string())),
    }
}

async fn apply_one(
    session: &client::Session,
    catalog: &Catalog,
    m: Manifest,
    force: bool,
) -> Result<String> {
    let mut obj = m.object;
    let api_version = obj
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let res = catalog.by_kind(&api_version, &kind)?;
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_string);
    let Some(name) = name else {
        bail!(
            "error when applying {:?}: resource name may not be empty",
            m.source
        );
    };
    let ns = target_namespace(
        &obj,
        res.namespaced,
        &session.namespace,
        session.namespace_explicit,
    )?;
    if let (Some(ns), Some(meta)) = (&ns, obj.get_mut("metadata").and_then(Value::as_object_mut)) {
        meta.insert("namespace".into(), Value::String(ns.clone()));
    }
    rest::apply(&session.client, res, ns.as_deref(), &name, &obj, force).await?;
    Ok(format!("{}/{name} serverside-applied", res.kind_group()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn namespace_choice() {
        let with = json!({"metadata": {"name": "a", "namespace": "demo"}});
        let without = json!({"metadata": {"name": "a"}});
        assert_eq!(
            target_namespace(&with, true, "default", false).unwrap(),
            Some("demo".into())
        );
        assert_eq!(
            target_namespace(&without, true, "x", true).unwrap(),
            Some("x".into())
        );
        assert!(target_namespace(&with, true, "x", true).is_err());
        assert_eq!(target_namespace(&with, false, "x", true).unwrap(), None);
    }
}
