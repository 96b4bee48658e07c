//! Live-migration requests: the VM `migrate` subresource (virt-api's MigrateVMRequestHandler)
//! and what creating a VirtualMachineInstanceMigration adds and checks against the store
//! (KubeVirt's migration create mutator and admitter).

use kuvirt_api::v1::{
    MIGRATION_FINALIZER, MIGRATION_VMI_LABEL, MigrateOptions, VirtualMachineInstance,
    live_migratable,
};
use kuvirt_store::Store;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::meta::{self, meta_mut};
use crate::objects::{self, WriteOptions};
use crate::resources::ResourceType;
use crate::subresources::{
    Call, check_dry_run, conflict, decode_options, fetch_vm, fetch_vmi, is_final, target, vmi_phase,
};

/// The generateName of the migrations the subresource creates.
pub const GENERATE_NAME: &str = "kubevirt-migrate-vm-";
/// The webhook KubeVirt refuses migration creates with (named in its messages).
const VALIDATOR: &str = "migration-create-validator.kubevirt.io";
const PLURAL: &str = "virtualmachineinstancemigrations";
const GROUP: &str = "kubevirt.io";

/// `PUT …/virtualmachines/NAME/migrate`: checks that the VM's VMI runs, can move and is not
/// already moving, then creates a migration for it (nothing stored on a dry run).
pub async fn migrate(store: &Store, call: &Call, body: &[u8]) -> Result<(), ApiError> {
    let opts: MigrateOptions = decode_options(body)?;
    check_dry_run(&opts.dry_run)?;
    fetch_vm(store, call).await?;
    let (_, vmi) = fetch_vmi(store, call).await?;
    let migrations = migrations_of(store, &call.namespace, &call.name).await?;
    decide_migrate(&call.name, vmi.as_ref(), &migrations)?;
    let mut spec = json!({ "vmiName": call.name });
    if let Some(sel) = opts.added_node_selector.filter(|s| !s.is_empty()) {
        spec["addedNodeSelector"] = json!(sel);
    }
    let vmim = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": { "generateName": GENERATE_NAME, "namespace": call.namespace },
        "spec": spec,
    });
    let t = target(PLURAL, GROUP, &call.namespace)?;
    let wo = WriteOptions {
        dry_run: !opts.dry_run.is_empty(),
        manager: "virt-api".into(),
        ..WriteOptions::default()
    };
    match objects::create(store, &t, vmim, &wo).await {
        Ok(_) => Ok(()),
        // A migration created since the checks above: the same answer as theirs.
        Err(e) if e.code == 409 && e.reason == "Conflict" => Err(conflict(&call.name, &e.message)),
        // virt-api wraps every other create failure.
        Err(e) => Err(ApiError::internal(format!(
            "Internal error occurred: {}",
            e.message
        ))),
    }
}

/// virt-api's rules for the subresource, in its order (the VM was found): the VMI exists, is
/// Running, can be live-migrated, and no other migration of it is under way.
fn decide_migrate(name: &str, vmi: Option<&Value>, migrations: &[Value]) -> Result<(), ApiError> {
    let Some(vmi) = vmi else {
        return Err(ApiError {
            details: Some(Box::new(
                json!({ "name": name, "group": GROUP, "kind": "virtualmachineinstance" }),
            )),
            ..ApiError::new(
                404,
                "NotFound",
                format!("virtualmachineinstance.kubevirt.io \"{name}\" not found"),
            )
        });
    };
    if vmi_phase(vmi) != "Running" {
        return Err(conflict(name, "VM is not running"));
    }
    if let Some(why) = not_migratable(vmi)? {
        return Err(conflict(name, &why));
    }
    if let Some(uid) = in_flight(migrations) {
        return Err(conflict(name, &in_flight_message(uid, name)));
    }
    Ok(())
}

/// Why `vmi` cannot be live-migrated, in KubeVirt's words: from its `LiveMigratable` condition
/// when it has one (the node agent's verdict), else from its spec as the node agent would judge.
fn not_migratable(vmi: &Value) -> Result<Option<String>, ApiError> {
    let condition = vmi
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "LiveMigratable"));
    if let Some(c) = condition {
        if c["status"] == "False" {
            let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
            return Ok(Some(cannot_migrate(text("reason"), text("message"))));
        }
        return Ok(None);
    }
    let typed: VirtualMachineInstance = serde_json::from_value(vmi.clone())
        .map_err(|e| ApiError::internal(format!("stored VirtualMachineInstance: {e}")))?;
    Ok(live_migratable(&typed)
        .err()
        .map(|n| cannot_migrate(n.reason, &n.message)))
}

fn cannot_migrate(reason: &str, message: &str) -> String {
    format!("Cannot migrate VMI, Reason: {reason}, Message: {message}")
}

fn in_flight_message(uid: &str, vmi: &str) -> String {
    format!(
        "in-flight migration detected. Active migration job ({uid}) is currently already in progress for VMI {vmi}."
    )
}

/// The uid of the first migration in `migrations` that is not over.
fn in_flight(migrations: &[Value]) -> Option<&str> {
    migrations
        .iter()
        .find(|m| !matches!(phase(m), "Succeeded" | "Failed"))
        .map(|m| meta::uid(m).unwrap_or_default())
}

fn phase(m: &Value) -> &str {
    m.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The migrations in `namespace` that move the VMI `vmi`.
async fn migrations_of(store: &Store, namespace: &str, vmi: &str) -> Result<Vec<Value>, ApiError> {
    let t = target(PLURAL, GROUP, namespace)?;
    let page = objects::list(store, &t, None, None, &|m| {
        m.pointer("/spec/vmiName").and_then(Value::as_str) == Some(vmi)
    })
    .await?;
    Ok(page.items)
}

/// KubeVirt's create mutator: the migration carries its VMI's name as a label, and the
/// finalizer that holds it until its end is settled.
fn mutate(obj: &mut Value) {
    let vmi = obj
        .pointer("/spec/vmiName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut finalizers = meta::finalizers(obj);
    if !finalizers.iter().any(|f| f == MIGRATION_FINALIZER) {
        finalizers.push(MIGRATION_FINALIZER.into());
        meta::set_finalizers(obj, &finalizers);
    }
    let m = meta_mut(obj);
    let labels = m.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    if let Some(l) = labels.as_object_mut() {
        l.entry(MIGRATION_VMI_LABEL).or_insert_with(|| json!(vmi));
    }
}

/// Why a migration create is refused.
#[derive(Debug, PartialEq, Eq)]
enum Denial {
    /// The VMI cannot be migrated (422).
    Invalid(String),
    /// Another migration of it is under way (409).
    InFlight(String),
}

/// KubeVirt's create admitter, in its order (`vmiName` was checked by admission): the VMI
/// exists, is not over, can be live-migrated, and no other migration of it is under way.
fn decide_create(
    namespace: &str,
    vmi_name: &str,
    vmi: Option<&Value>,
    migrations: &[Value],
) -> Result<(), Denial> {
    let Some(vmi) = vmi else {
        return Err(Denial::Invalid(format!(
            "the VMI \"{namespace}/{vmi_name}\" does not exist"
        )));
    };
    if is_final(vmi) {
        return Err(Denial::Invalid(
            "Cannot migrate VMI in finalized state.".into(),
        ));
    }
    match not_migratable(vmi) {
        Ok(Some(why)) => return Err(Denial::Invalid(why)),
        Ok(None) => {}
        Err(e) => return Err(Denial::Invalid(e.message)),
    }
    if let Some(uid) = in_flight(migrations) {
        return Err(Denial::InFlight(in_flight_message(uid, vmi_name)));
    }
    Ok(())
}

/// Run by `objects::create` for a VirtualMachineInstanceMigration after its admission:
/// [`mutate`], then the checks against the stored VMI and migrations. A refusal is KubeVirt's
/// webhook denial: 422 Invalid, or 409 Conflict for a migration already under way.
pub async fn admit_create(
    store: &Store,
    rt: &ResourceType,
    namespace: &str,
    name: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    mutate(obj);
    let vmi_name = obj
        .pointer("/spec/vmiName")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let t = target("virtualmachineinstances", GROUP, namespace)?;
    let vmi = match objects::get(store, &t, &vmi_name).await {
        Ok(v) => Some(v),
        Err(e) if e.code == 404 => None,
        Err(e) => return Err(e),
    };
    let migrations = migrations_of(store, namespace, &vmi_name).await?;
    decide_create(namespace, &vmi_name, vmi.as_ref(), &migrations).map_err(|d| denied(rt, name, d))
}

/// The webhook KubeVirt refuses migration updates with.
const UPDATE_VALIDATOR: &str = "migration-update-validator.kubevirt.io";

/// KubeVirt's update admitter: a migration's spec never changes, and a migration under way keeps
/// its `kubevirt.io/vmi-name` label (what finds a VMI's migrations). `None` admits.
fn decide_update(old: &Value, new: &Value) -> Option<&'static str> {
    if old.get("spec") != new.get("spec") {
        return Some("update of Migration object's spec is restricted");
    }
    let phase = new.pointer("/status/phase").and_then(Value::as_str);
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    let label = |v: &Value| {
        v.pointer("/metadata/labels")
            .and_then(|l| l.get(MIGRATION_VMI_LABEL))
            .cloned()
    };
    match (label(old), label(new)) {
        (Some(_), None) => Some("selector label can't be removed from an in-flight migration"),
        (Some(a), Some(b)) if a != b => {
            Some("selector label can't be modified on an in-flight migration")
        }
        _ => None,
    }
}

/// Run by `objects::update` for a VirtualMachineInstanceMigration (not its status): KubeVirt's
/// update webhook, whose refusal is a 422 Invalid.
pub fn admit_update(
    rt: &ResourceType,
    name: &str,
    old: &Value,
    new: &Value,
) -> Result<(), ApiError> {
    let Some(why) = decide_update(old, new) else {
        return Ok(());
    };
    Err(ApiError {
        details: Some(Box::new(json!({
            "name": name, "group": rt.group, "kind": rt.plural,
            "causes": [{"reason": "FieldValueNotSupported", "message": why}],
        }))),
        ..ApiError::new(
            422,
            "Invalid",
            format!("admission webhook \"{UPDATE_VALIDATOR}\" denied the request: {why}"),
        )
    })
}

fn denied(rt: &ResourceType, name: &str, d: Denial) -> ApiError {
    let (code, reason, why) = match d {
        Denial::Invalid(why) => (422, "Invalid", why),
        Denial::InFlight(why) => (409, "Conflict", why),
    };
    ApiError {
        details: Some(Box::new(json!({
            "name": name, "group": rt.group, "kind": rt.plural,
            "causes": [{"reason": "FieldValueInvalid", "field": "spec.vmiName", "message": why}],
        }))),
        ..ApiError::new(
            code,
            reason,
            format!("admission webhook \"{VALIDATOR}\" denied the request: {why}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(phase: &str) -> Value {
        json!({"metadata": {"name": "vm", "uid": "u-vmi"}, "spec": {"domain": {"devices": {}}},
               "status": {"phase": phase}})
    }

    fn vmim(uid: &str, phase: Option<&str>) -> Value {
        let mut m = json!({"metadata": {"name": uid, "uid": uid}, "spec": {"vmiName": "vm"}});
        if let Some(p) = phase {
            m["status"] = json!({ "phase": p });
        }
        m
    }

    fn condition(status: &str) -> Value {
        let mut v = vmi("Running");
        v["status"]["conditions"] = json!([{"type": "LiveMigratable", "status": status,
            "reason": "DisksNotLiveMigratable", "message": "cannot migrate VMI with non-shared HostDisk"}]);
        v
    }

    /// An interface on the pod network that is neither masquerade nor an allowed bridge.
    fn passt() -> Value {
        let mut v = vmi("Running");
        v["spec"] = json!({"domain": {"devices": {"interfaces": [{"name": "default", "passt": {}}]}},
                           "networks": [{"name": "default", "pod": {}}]});
        v
    }

    #[test]
    fn migrate_rules_in_order() {
        let done = [vmim("old", Some("Succeeded")), vmim("bad", Some("Failed"))];
        let e = decide_migrate("vm", None, &done).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (404, "virtualmachineinstance.kubevirt.io \"vm\" not found")
        );
        // Not running comes before everything else about the VMI.
        let e = decide_migrate("vm", Some(&vmi("Scheduling")), &[vmim("x", None)]).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                409,
                "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm\": VM is not running"
            )
        );
        // The node agent's verdict wins over the spec; a True one is trusted too.
        let e = decide_migrate("vm", Some(&condition("False")), &[vmim("x", None)]).unwrap_err();
        assert!(
            e.message.ends_with(
                "Cannot migrate VMI, Reason: DisksNotLiveMigratable, Message: cannot migrate VMI with non-shared HostDisk"
            ),
            "{}",
            e.message
        );
        let mut trusted = passt();
        trusted["status"]["conditions"] = json!([{"type": "LiveMigratable", "status": "True"}]);
        assert!(decide_migrate("vm", Some(&trusted), &done).is_ok());
        // Without a condition the spec is judged.
        let e = decide_migrate("vm", Some(&passt()), &[vmim("x", None)]).unwrap_err();
        assert!(
            e.message
                .contains("Cannot migrate VMI, Reason: InterfaceNotLiveMigratable, Message: cannot migrate VMI which does not use masquerade"),
            "{}",
            e.message
        );
        // Finished migrations do not count; an unfinished one (even without a phase) does.
        assert!(decide_migrate("vm", Some(&vmi("Running")), &done).is_ok());
        let mut busy = done.to_vec();
        busy.push(vmim("u-1", Some("Scheduling")));
        let e = decide_migrate("vm", Some(&vmi("Running")), &busy).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(
            e.message.ends_with(
                "in-flight migration detected. Active migration job (u-1) is currently already in progress for VMI vm."
            ),
            "{}",
            e.message
        );
        let e = decide_migrate("vm", Some(&vmi("Running")), &[vmim("u-2", None)]).unwrap_err();
        assert!(e.message.contains("(u-2)"), "{}", e.message);
    }

    #[test]
    fn create_rules_in_order() {
        assert_eq!(
            decide_create("ns", "vm", None, &[]),
            Err(Denial::Invalid("the VMI \"ns/vm\" does not exist".into()))
        );
        assert_eq!(
            decide_create("ns", "vm", Some(&vmi("Failed")), &[vmim("x", None)]),
            Err(Denial::Invalid(
                "Cannot migrate VMI in finalized state.".into()
            ))
        );
        // Unlike the subresource, a VMI that is not running yet may get a migration.
        assert_eq!(
            decide_create("ns", "vm", Some(&vmi("Scheduled")), &[]),
            Ok(())
        );
        let Err(Denial::Invalid(why)) =
            decide_create("ns", "vm", Some(&condition("False")), &[vmim("x", None)])
        else {
            panic!("a non-migratable VMI was let through")
        };
        assert!(why.starts_with("Cannot migrate VMI, Reason: DisksNotLiveMigratable"));
        assert_eq!(
            decide_create("ns", "vm", Some(&vmi("Running")), &[vmim("u-1", Some("Running"))]),
            Err(Denial::InFlight(
                "in-flight migration detected. Active migration job (u-1) is currently already in progress for VMI vm.".into()
            ))
        );
        let d = denied(
            crate::resources::lookup(GROUP, "v1", PLURAL).unwrap(),
            "m",
            Denial::InFlight("busy".into()),
        );
        assert_eq!((d.code, d.reason.as_str()), (409, "Conflict"));
        assert_eq!(
            d.message,
            "admission webhook \"migration-create-validator.kubevirt.io\" denied the request: busy"
        );
    }

    #[test]
    fn a_migrations_spec_and_in_flight_label_do_not_change() {
        let old = json!({"metadata": {"labels": {MIGRATION_VMI_LABEL: "vm", "a": "1"}},
                         "spec": {"vmiName": "vm"}, "status": {"phase": "Running"}});
        let mut relabelled = old.clone();
        relabelled["metadata"]["labels"]["a"] = json!("2");
        assert_eq!(
            decide_update(&old, &relabelled),
            None,
            "other labels may change"
        );
        let mut moved = old.clone();
        moved["spec"]["vmiName"] = json!("other");
        assert_eq!(
            decide_update(&old, &moved),
            Some("update of Migration object's spec is restricted")
        );
        let mut unlabelled = old.clone();
        unlabelled["metadata"]["labels"] = json!({});
        assert_eq!(
            decide_update(&old, &unlabelled),
            Some("selector label can't be removed from an in-flight migration")
        );
        let mut renamed = old.clone();
        renamed["metadata"]["labels"][MIGRATION_VMI_LABEL] = json!("x");
        assert!(decide_update(&old, &renamed).is_some());
        renamed["status"]["phase"] = json!("Succeeded");
        assert_eq!(
            decide_update(&old, &renamed),
            None,
            "a finished one may be relabelled"
        );
    }

    #[test]
    fn mutation_adds_label_and_finalizer_once() {
        let mut m = json!({"metadata": {"labels": {"a": "b"}, "finalizers": ["x"]},
                           "spec": {"vmiName": "vm"}});
        mutate(&mut m);
        mutate(&mut m);
        assert_eq!(
            m["metadata"]["labels"],
            json!({"a": "b", "kubevirt.io/vmi-name": "vm"})
        );
        assert_eq!(
            m["metadata"]["finalizers"],
            json!(["x", "kubevirt.io/migrationJobFinalize"])
        );
        // A label already there is the client's.
        let mut m = json!({"metadata": {"labels": {"kubevirt.io/vmi-name": "other"}},
                           "spec": {"vmiName": "vm"}});
        mutate(&mut m);
        assert_eq!(m["metadata"]["labels"]["kubevirt.io/vmi-name"], "other");
    }

    #[test]
    fn options_decode() {
        let o: MigrateOptions =
            decode_options(br#"{"dryRun":["All"],"addedNodeSelector":{"zone":"b"}}"#).unwrap();
        assert_eq!(o.dry_run, vec!["All".to_string()]);
        let o: MigrateOptions = decode_options(b"addedNodeSelector:\n  zone: b\n").unwrap();
        assert_eq!(o.added_node_selector.unwrap()["zone"], "b");
        let o: MigrateOptions = decode_options(b"").unwrap();
        assert_eq!(o, MigrateOptions::default());
        assert_eq!(
            decode_options::<MigrateOptions>(b"{\"addedNodeSelector\": 3}")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(check_dry_run(&["Some".into()]).unwrap_err().code, 400);
    }
}
