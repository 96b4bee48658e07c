//! `kuvirt rename vm OLD NEW`: gives a stopped VirtualMachine a new name (KubeVirt had this verb
//! and dropped it). The new VM keeps the old one's spec, labels and annotations and the identity
//! its guest saw: MACs and the firmware UUID that were derived from the old name are written into
//! the new spec. Volumes are untouched, so hostDisks and other persistent disks stay the same
//! files. The old VM is deleted only once the new one exists.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, PostParams, Preconditions};
use kuvirt_api::defaults::legacy_firmware_uuid;
use kuvirt_api::v1::{API_VERSION, Firmware, Interface, Network};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use kuvirt_launcher::convert::generated_mac;

use crate::kubectl::{ClientArgs, client, error_line};

/// kubectl's record of the last applied manifest: it describes the old object, so it is not
/// carried over.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `kuvirt rename KIND OLD NEW`
#[derive(Subcommand, Debug)]
pub enum RenameCommand {
    /// Rename a stopped VirtualMachine.
    ///
    /// The VM must be stopped: no VirtualMachineInstance of it may exist (`kuvirt stop OLD`
    /// first). A new VM NEW is created with OLD's spec, labels and annotations (not its uid,
    /// resourceVersion, owner references or finalizers), then OLD is deleted; if NEW cannot be
    /// created (the name is taken), nothing changes. The guest keeps its identity: every
    /// interface without a macAddress gets the MAC it had under the old name, and
    /// firmware.uuid, if unset, the UUID derived from the old name. Volumes are kept as they
    /// are, so hostDisks stay the same files. A Service from `kuvirt expose vm OLD` is owned by
    /// OLD and goes with it: expose NEW again.
    Vm(RenameVmArgs),
}

#[derive(Args, Debug)]
pub struct RenameVmArgs {
    /// The VirtualMachine's current name.
    old: String,
    /// Its new name.
    new: String,
    /// Print the new VirtualMachine instead of creating it; nothing changes.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

/// Runs `kuvirt rename ...`; an error is one line on stderr and exit code 1.
pub async fn run(cmd: RenameCommand) -> Result<i32> {
    let RenameCommand::Vm(args) = cmd;
    match rename_vm(&args).await {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("{}", error_line(&e));
            Ok(1)
        }
    }
}

async fn rename_vm(args: &RenameVmArgs) -> Result<()> {
    let (old_name, new_name) = (args.old.as_str(), args.new.as_str());
    if old_name == new_name {
        bail!("the new name is the old one: {new_name}");
    }
    let session = client::connect(&args.client).await?;
    let ns = session.namespace.as_str();
    let vms: Api<VirtualMachine> = Api::namespaced(session.client.clone(), ns);
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(session.client.clone(), ns);

    let old = vms.get(old_name).await?;
    if old.metadata.deletion_timestamp.is_some() {
        bail!("VirtualMachine {old_name} is being deleted");
    }
    if vmis.get_opt(old_name).await?.is_some() {
        bail!(
            "VirtualMachine {old_name} is not stopped (its VirtualMachineInstance exists): stop it first with `kuvirt stop {old_name}`"
        );
    }
    let new = renamed(&old, ns, new_name);
    if args.dry_run {
        print!("{}", serde_saphyr::to_string(&serde_json::to_value(&new)?)?);
        return Ok(());
    }

    let created = vms.create(&PostParams::default(), &new).await?;
    if let Err(e) = delete_unchanged(&vms, &vmis, &old).await {
        let undo = DeleteParams {
            preconditions: Some(Preconditions {
                uid: created.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let why = error_line(&e);
        match vms.delete(new_name, &undo).await {
            Ok(_) => bail!(
                "VirtualMachine {old_name} could not be deleted ({why}); {new_name} was removed again"
            ),
            Err(e) => bail!(
                "VirtualMachine {old_name} could not be deleted ({why}); removing {new_name} failed too: {}",
                error_line(&e.into())
            ),
        }
    }
    println!("VM {old_name} was renamed to {new_name}");
    Ok(())
}

/// Deletes `old` only as it was copied: the same object (uid), still stopped, with the same spec,
/// labels and annotations. Status writes (the controller's) change its resourceVersion, so a
/// conflict is checked again and retried a few times.
async fn delete_unchanged(
    vms: &Api<VirtualMachine>,
    vmis: &Api<VirtualMachineInstance>,
    old: &VirtualMachine,
) -> Result<()> {
    let name = old.metadata.name.as_deref().unwrap_or_default();
    let mut resource_version = old.metadata.resource_version.clone();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: old.metadata.uid.clone(),
                resource_version: resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match vms.delete(name, &params).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 && attempt < 5 => {
                let now = vms.get(name).await?;
                let same = now.metadata.uid == old.metadata.uid
                    && now.spec == old.spec
                    && now.metadata.labels == old.metadata.labels
                    && now.metadata.annotations == old.metadata.annotations;
                if !same {
                    bail!("it changed while renaming");
                }
                if vmis.get_opt(name).await?.is_some() {
                    bail!("it was started while renaming");
                }
                resource_version = now.metadata.resource_version;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The VirtualMachine `old` becomes under `new_name` in namespace `ns`: the same spec, labels and
/// annotations, no server-owned metadata or status, and the guest identity that was derived from
/// the old name pinned in the spec (MACs of interfaces without one, the firmware UUID).
pub fn renamed(old: &VirtualMachine, ns: &str, new_name: &str) -> VirtualMachine {
    let old_name = old.metadata.name.clone().unwrap_or_default();
    let mut annotations = old.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(LAST_APPLIED);
    let mut vm = VirtualMachine {
        api_version: Some(API_VERSION.to_owned()),
        kind: Some("VirtualMachine".to_owned()),
        metadata: ObjectMeta {
            name: Some(new_name.to_owned()),
            namespace: Some(ns.to_owned()),
            labels: old.metadata.labels.clone(),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..ObjectMeta::default()
        },
        spec: old.spec.clone(),
        status: None,
        extra: old.extra.clone(),
    };
    if let Some(template) = vm.spec.template.as_mut() {
        let spec = &mut template.spec;
        let devices = &mut spec.domain.devices;
        // The interface KubeVirt adds when none is declared got a MAC from the old name too:
        // declare it, so it can carry that MAC.
        if devices.autoattach_pod_interface != Some(false)
            && devices.interfaces.is_empty()
            && spec.networks.is_empty()
        {
            devices.interfaces = vec![Interface::default_masquerade()];
            spec.networks = vec![Network::default_pod()];
        }
        for iface in &mut devices.interfaces {
            if iface.mac_address.as_deref().is_none_or(str::is_empty) {
                iface.mac_address = Some(generated_mac(ns, &old_name, &iface.name));
            }
        }
        let firmware = spec.domain.firmware.get_or_insert_with(Firmware::default);
        if firmware.uuid.as_deref().is_none_or(str::is_empty) {
            firmware.uuid = Some(legacy_firmware_uuid(&old_name));
        }
    }
    vm
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(v: serde_json::Value) -> VirtualMachine {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn keeps_spec_and_pins_identity() {
        let old = vm(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "old", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                "generation": 2, "finalizers": ["f"], "labels": {"app": "a"},
                "annotations": {"note": "n", LAST_APPLIED: "{}"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u"}]},
            "spec": {"runStrategy": "Halted", "template": {
                "metadata": {"labels": {"kubevirt.io/domain": "old"}},
                "spec": {
                    "domain": {"devices": {"interfaces": [
                        {"name": "default", "masquerade": {}},
                        {"name": "fixed", "bridge": {}, "macAddress": "02:00:00:00:00:01"}]},
                        "memory": {"guest": "64Mi"}},
                    "networks": [{"name": "default", "pod": {}}, {"name": "fixed", "multus": {"networkName": "m"}}],
                    "volumes": [{"name": "data", "hostDisk": {"path": "/d/x.img", "type": "DiskOrCreate", "capacity": "16Mi"}}]}}},
            "status": {"printableStatus": "Stopped"}
        }));
        let new = serde_json::to_value(renamed(&old, "ns", "new")).unwrap();
        assert_eq!(
            new["metadata"],
            json!({"name": "new", "namespace": "ns", "labels": {"app": "a"}, "annotations": {"note": "n"}})
        );
        assert!(new.get("status").is_none());
        let spec = &new["spec"]["template"]["spec"];
        let ifaces = &spec["domain"]["devices"]["interfaces"];
        assert_eq!(
            ifaces[0]["macAddress"],
            generated_mac("ns", "old", "default")
        );
        assert_eq!(ifaces[1]["macAddress"], "02:00:00:00:00:01");
        assert_eq!(
            spec["domain"]["firmware"]["uuid"],
            legacy_firmware_uuid("old")
        );
        assert_eq!(
            spec["volumes"],
            serde_json::to_value(&old.spec.template.as_ref().unwrap().spec.volumes).unwrap()
        );
        assert_eq!(
            new["spec"]["template"]["metadata"],
            json!({"labels": {"kubevirt.io/domain": "old"}})
        );
        assert_eq!(new["spec"]["runStrategy"], "Halted");
    }

    #[test]
    fn the_implicit_interface_is_declared_and_a_set_uuid_kept() {
        let old = vm(json!({
            "metadata": {"name": "old"},
            "spec": {"template": {"spec": {"domain": {"firmware": {"uuid": "1234"}, "devices": {}}}}}
        }));
        let new = serde_json::to_value(renamed(&old, "default", "new")).unwrap();
        let spec = &new["spec"]["template"]["spec"];
        assert_eq!(
            spec["domain"]["devices"]["interfaces"],
            json!([{"name": "default", "masquerade": {}, "macAddress": generated_mac("default", "old", "default")}])
        );
        assert_eq!(spec["networks"], json!([{"name": "default", "pod": {}}]));
        assert_eq!(spec["domain"]["firmware"]["uuid"], "1234");

        // No pod interface wanted: none is added.
        let old = vm(json!({
            "metadata": {"name": "old"},
            "spec": {"template": {"spec": {"domain": {"devices": {"autoattachPodInterface": false}}}}}
        }));
        let new = serde_json::to_value(renamed(&old, "default", "new")).unwrap();
        assert!(new["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"].is_null());
    }
}
