//! Reads a manifest file into a defaulted, validated VirtualMachineInstance (a VirtualMachine
//! contributes its template), with errors that name the file position or the field.

use std::path::Path;

use anyhow::{Context, Result, bail};
use kuvirt_api::{
    VirtualMachine, VirtualMachineInstance, default_vm, default_vmi, validate_vm, validate_vmi,
};

/// Parses `text` (YAML or JSON) from `path` and returns the VMI to run.
pub fn vmi_from_manifest(path: &Path, text: &str) -> Result<VirtualMachineInstance> {
    let shown = path.display();
    let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        // The parser's message carries a source snippet after its first line: keep one line.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default();
        anyhow::anyhow!(
            "{shown}: not valid YAML: {}",
            first.trim_start_matches("error: ")
        )
    })?;
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
    let api_version = value
        .get("apiVersion")
        .and_then(|k| k.as_str())
        .unwrap_or("");
    if api_version != "kubevirt.io/v1" {
        bail!("{shown}: apiVersion: expected kubevirt.io/v1, got {api_version:?}");
    }
    let mut vmi = match kind {
        "VirtualMachineInstance" => serde_json::from_value::<VirtualMachineInstance>(value)
            .with_context(|| format!("{shown}: not a VirtualMachineInstance"))?,
        "VirtualMachine" => {
            let mut vm = serde_json::from_value::<VirtualMachine>(value)
                .with_context(|| format!("{shown}: not a VirtualMachine"))?;
            default_vm(&mut vm);
            validate_vm(&vm).map_err(|e| anyhow::anyhow!("{shown}: {}", one_line(&e)))?;
            VirtualMachineInstance::from_vm(&vm)
        }
        other => {
            bail!("{shown}: kind: expected VirtualMachineInstance or VirtualMachine, got {other:?}")
        }
    };
    if vmi.metadata.namespace.is_none() {
        vmi.metadata.namespace = Some("default".into());
    }
    if vmi.metadata.name.as_deref().is_none_or(str::is_empty)
        && let Some(prefix) = vmi.metadata.generate_name.clone()
    {
        vmi.metadata.name = Some(format!("{prefix}{}", std::process::id()));
    }
    // Names become directory names: only what Kubernetes allows.
    for (field, value) in [
        ("metadata.name", vmi.metadata.name.as_deref()),
        ("metadata.namespace", vmi.metadata.namespace.as_deref()),
    ] {
        let v = value.unwrap_or_default();
        if !kuvirt_launcher::prepare::is_dns_label(v) {
            bail!(
                "{shown}: {field}: {v:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"
            );
        }
    }
    default_vmi(&mut vmi);
    validate_vmi(&vmi).map_err(|e| anyhow::anyhow!("{shown}: {}", one_line(&e)))?;
    Ok(vmi)
}

fn one_line(errors: &kuvirt_api::FieldErrors) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}
