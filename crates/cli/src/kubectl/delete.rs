//! `kuvirt delete`: by type and names, label selector, or the objects in files; waits until
//! they are gone unless `--wait=false`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{ArgAction, Args, ValueEnum};
use kube::api::PropagationPolicy;
use serde_json::Value;

use super::apply::target_namespace;
use super::discovery::{Catalog, Resource};
use super::get::targets;
use super::{ClientArgs, client, manifests, output, report, rest};

/// How dependents are deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Cascade {
    Background,
    Foreground,
    Orphan,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// A resource type and names, or TYPE/NAME pairs.
    #[arg(value_name = "RESOURCE")]
    pub args: Vec<String>,
    /// Delete the objects in these files or directories (`-` reads stdin).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// Delete the objects matching this label selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Delete every object of the type in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Treat "not found" as success.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Wait until the objects are gone.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true")]
    pub wait: bool,
    /// How long to wait, e.g. 60s, 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value = "background")]
    pub cascade: Cascade,
}

/// `90`, `90s`, `1500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(n)),
        "ms" => Ok(Duration::from_millis(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration {s:?}: use ms, s, m or h")),
    }
}

struct Target {
    res: Resource,
    ns: Option<String>,
    name: String,
}

/// Runs `kuvirt delete`; each failure gives one line on stderr and exit code 1.
pub async fn delete(args: DeleteArgs) -> Result<i32> {
    let session = match client::connect(&args.client).await {
        Ok(s) => s,
        Err(e) => return Ok(report(&e)),
    };
    let targets = match collect(&args, &session).await {
        Ok(t) => t,
        Err(e) => return Ok(report(&e)),
    };
    let propagation = match args.cascade {
        Cascade::Background => PropagationPolicy::Background,
        Cascade::Foreground => PropagationPolicy::Foreground,
        Cascade::Orphan => PropagationPolicy::Orphan,
    };
    let mut code = 0;
    let mut deleted = Vec::new();
    for t in targets {
        match rest::delete(
            &session.client,
            &t.res,
            t.ns.as_deref(),
            &t.name,
            &propagation,
        )
        .await
        {
            Ok(()) => {
                println!("{} {:?} deleted", t.res.kind_group(), t.name);
                deleted.push(t);
            }
            Err(e) if args.ignore_not_found && rest::is_not_found(&e) => {}
            Err(e) => code = report(&e),
        }
    }
    if args.wait {
        let deadline = tokio::time::Instant::now() + args.timeout;
        for t in &deleted {
            if let Err(e) = wait_gone(&session.client, t, deadline).await {
                code = report(&e);
            }
        }
    }
    Ok(code)
}

/// Polls until GET says NotFound, or the deadline passes.
async fn wait_gone(
    client: &kube::Client,
    t: &Target,
    deadline: tokio::time::Instant,
) -> Result<()> {
    loop {
        match rest::get(client, &t.res, t.ns.as_deref(), &t.name, false).await {
            Err(e) if rest::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "timed out waiting for the condition on {}/{}",
                t.res.plural,
                t.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What to delete: the files' objects, or the named/selected objects of the type.
async fn collect(args: &DeleteArgs, session: &client::Session) -> Result<Vec<Target>> {
    if !args.files.is_empty() && !args.args.is_empty() {
        bail!("resource names cannot be given with -f");
    }
    if args.files.is_empty() && args.args.is_empty() {
        bail!("you must provide one or more resources by argument or filename");
    }
    let objects = manifests::read(&args.files)?;
    let catalog = Catalog::discover(&session.client).await?;
    let mut out = Vec::new();
    for m in objects {
        let api_version = m.object.get("apiVersion").and_then(Value::as_str);
        let kind = m.object.get("kind").and_then(Value::as_str);
        let res = catalog.by_kind(api_version.unwrap_or_default(), kind.unwrap_or_default())?;
        let ns = target_namespace(
            &m.object,
            res.namespaced,
            &session.namespace,
            session.namespace_explicit,
        )?;
        let name = output::name_of(&m.object);
        if name.is_empty() {
            bail!(
                "error when deleting {:?}: resource name may not be empty",
                m.source
            );
        }
        out.push(Target {
            res: res.clone(),
            ns,
            name: name.to_string(),
        });
    }
    if args.args.is_empty() {
        return Ok(out);
    }
    for (ty, names) in targets(&args.args)? {
        let res = catalog.resolve(&ty)?;
        let ns = res.namespaced.then(|| session.namespace.clone());
        let names = if !names.is_empty() {
            if args.all || args.selector.is_some() {
                bail!("names cannot be given with --all or -l");
            }
            names
        } else if args.all || args.selector.is_some() {
            let list = rest::list(
                &session.client,
                res,
                ns.as_deref(),
                args.selector.as_deref(),
                false,
            )
            .await?;
            list.get("items")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|o| output::name_of(o).to_string())
                .collect()
        } else {
            bail!("resource(s) were provided, but no name was specified");
        };
        out.extend(names.into_iter().map(|name| Target {
            res: res.clone(),
            ns: ns.clone(),
            name,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }
}
