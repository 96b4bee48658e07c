//! `kuvirt get`: a table from the server's Table answer, or the objects as YAML, JSON or names.

use anyhow::{Result, bail};
use clap::Args;
use serde_json::Value;

use super::discovery::{Catalog, Resource};
use super::output::{self, Format};
use super::table::{self, TableOptions};
use super::{ClientArgs, client, report, rest};

#[derive(Args, Debug)]
pub struct GetArgs {
    /// A resource type (vm, vms, virtualmachine, vm.kubevirt.io, comma-separated for several)
    /// and optional names, or TYPE/NAME pairs.
    #[arg(required = true, value_name = "RESOURCE")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. `kubevirt.io/domain=testvm`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output format (default: a table).
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
}

/// Runs `kuvirt get`; errors are printed (one line each) and give exit code 1.
pub async fn get(args: GetArgs) -> Result<i32> {
    match run(&args).await {
        Ok(code) => Ok(code),
        Err(e) => Ok(report(&e)),
    }
}

/// The resource arguments grouped by type: `vm a b`, `vm,vmi`, or `vm/a vmi/b`.
pub fn targets(args: &[String]) -> Result<Vec<(String, Vec<String>)>> {
    let Some((first, rest)) = args.split_first() else {
        bail!("you must specify the type of resource to get");
    };
    if first.contains('/') {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for a in args {
            let Some((ty, name)) = a
                .split_once('/')
                .filter(|(t, n)| !t.is_empty() && !n.is_empty())
            else {
                bail!(
                    "there is no need to specify a resource type as a separate argument when \
                     passing arguments in resource/name form (e.g. 'kuvirt get resource/<resource_name>' \
                     instead of 'kuvirt get resource resource/<resource_name>')"
                );
            };
            match out.iter_mut().find(|(t, _)| t == ty) {
                Some((_, names)) => names.push(name.to_string()),
                None => out.push((ty.to_string(), vec![name.to_string()])),
            }
        }
        return Ok(out);
    }
    let types: Vec<&str> = first.split(',').filter(|t| !t.is_empty()).collect();
    if types.len() > 1 && !rest.is_empty() {
        bail!("names cannot be given with several resource types: use TYPE/NAME");
    }
    Ok(types
        .into_iter()
        .map(|t| (t.to_string(), rest.to_vec()))
        .collect())
}

async fn run(args: &GetArgs) -> Result<i32> {
    let groups = targets(&args.args)?;
    let session = client::connect(&args.client).await?;
    let catalog = Catalog::discover(&session.client).await?;
    let mut resolved = Vec::new();
    for (ty, names) in &groups {
        resolved.push((catalog.resolve(ty)?.clone(), names.clone()));
    }
    let mut errors = Vec::new();
    let mut out = String::new();
    let any_namespaced = resolved.iter().any(|(r, _)| r.namespaced);
    let by_name = resolved.iter().any(|(_, n)| !n.is_empty());
    let mut found = 0;
    let ns_of =
        |r: &Resource| (r.namespaced && !args.all_namespaces).then_some(session.namespace.as_str());
    match args.output {
        None | Some(Format::Wide) => {
            let several = resolved.len() > 1;
            for (res, names) in &resolved {
                let tables = fetch(
                    &session.client,
                    res,
                    ns_of(res),
                    names,
                    args,
                    true,
                    &mut errors,
                )
                .await?;
                let opts = TableOptions {
                    wide: args.output == Some(Format::Wide),
                    namespace: args.all_namespaces && res.namespaced,
                };
                let prefix = if several {
                    format!("{}/", res.kind_group())
                } else {
                    String::new()
                };
                let mut header = Vec::new();
                let mut rows = Vec::new();
                for t in &tables {
                    let (h, r) = table::rows(t, opts, &prefix)?;
                    header = h;
                    rows.extend(r);
                }
                if rows.is_empty() {
                    continue;
                }
                found += rows.len();
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(&table::render(&header, &rows));
            }
        }
        Some(format) => {
            let mut objects = Vec::new();
            for (res, names) in &resolved {
                let got = fetch(
                    &session.client,
                    res,
                    ns_of(res),
                    names,
                    args,
                    false,
                    &mut errors,
                )
                .await?;
                for v in got {
                    if names.is_empty() {
                        objects.extend(items(res, v));
                    } else {
                        objects.push(v);
                    }
                }
            }
            found = objects.len();
            let single = resolved.len() == 1 && resolved[0].1.len() == 1;
            match format {
                Format::Name => {
                    for (res, o) in objects.iter().map(|o| (kind_of(&resolved, o), o)) {
                        out.push_str(&format!("{res}/{}\n", output::name_of(o)));
                    }
                }
                Format::Yaml | Format::Json if single && objects.len() == 1 => {
                    out = render(format, &objects[0])?;
                }
                Format::Yaml | Format::Json if !(by_name && objects.is_empty()) => {
                    out = render(format, &output::list(objects))?;
                    found = found.max(1);
                }
                _ => {}
            }
        }
    }
    print!("{out}");
    for e in &errors {
        eprintln!("{}", super::error_line(e));
    }
    if found == 0 && errors.is_empty() && !by_name {
        if any_namespaced && !args.all_namespaces {
            eprintln!("No resources found in {} namespace.", session.namespace);
        } else {
            eprintln!("No resources found");
        }
    }
    Ok(if errors.is_empty() { 0 } else { 1 })
}

fn render(format: Format, v: &Value) -> Result<String> {
    let v = output::for_display(v.clone());
    match format {
        Format::Json => output::to_json(&v),
        _ => output::to_yaml(&v),
    }
}

/// `kind.group` for an object printed with `-o name`.
fn kind_of(resolved: &[(Resource, Vec<String>)], o: &Value) -> String {
    let kind = o.get("kind").and_then(Value::as_str).unwrap_or_default();
    resolved
        .iter()
        .find(|(r, _)| r.kind == kind)
        .or(resolved.first())
        .map(|(r, _)| r.kind_group())
        .unwrap_or_default()
}

/// A list's items, with the apiVersion and kind a list leaves out put back.
fn items(res: &Resource, list: Value) -> Vec<Value> {
    let Value::Object(mut list) = list else {
        return Vec::new();
    };
    let Some(Value::Array(items)) = list.remove("items") else {
        return Vec::new();
    };
    items
        .into_iter()
        .map(|mut o| {
            if let Value::Object(m) = &mut o {
                m.entry("apiVersion")
                    .or_insert_with(|| Value::String(res.api_version()));
                m.entry("kind")
                    .or_insert_with(|| Value::String(res.kind.clone()));
            }
            o
        })
        .collect()
}

/// The list (no names) or each named object; a failed name is recorded in `errors`.
async fn fetch(
    client: &kube::Client,
    res: &Resource,
    ns: Option<&str>,
    names: &[String],
    args: &GetArgs,
    table: bool,
    errors: &mut Vec<anyhow::Error>,
) -> Result<Vec<Value>> {
    if names.is_empty() {
        let list = rest::list(client, res, ns, args.selector.as_deref(), table).await?;
        return Ok(vec![list]);
    }
    let mut out = Vec::new();
    for name in names {
        match rest::get(client, res, ns, name, table).await {
            Ok(v) => out.push(v),
            Err(e) => errors.push(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn resource_arguments() {
        assert_eq!(
            targets(&s(&["vm", "a", "b"])).unwrap(),
            [("vm".to_string(), s(&["a", "b"]))]
        );
        assert_eq!(
            targets(&s(&["vm/a", "vmi/b", "vm/c"])).unwrap(),
            [
                ("vm".to_string(), s(&["a", "c"])),
                ("vmi".to_string(), s(&["b"]))
            ]
        );
        assert_eq!(targets(&s(&["vm,vmi"])).unwrap().len(), 2);
        assert!(targets(&s(&["vm/a", "b"])).is_err());
        assert!(targets(&s(&["vm,vmi", "a"])).is_err());
    }
}
