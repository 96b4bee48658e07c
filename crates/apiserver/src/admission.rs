//! Admission: each kind's defaulting and validation, run before every store write (virt-api's job
//! for kubevirt.io kinds, the api crate does the work). Decode failures are 400s; validation
//! failures are 422s with one cause per field.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// One invalid field (`details.causes[]` of a 422 Status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldCause {
    /// Kubernetes' cause reason: FieldValueInvalid, FieldValueRequired, FieldValueDuplicate, …
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

/// Why an object was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdmitError {
    /// The body does not decode as this kind.
    Decode(String),
    Invalid(Vec<FieldCause>),
}

/// Defaults and validates an object in place.
pub type Admit = fn(&mut Value) -> Result<(), AdmitError>;

/// Decodes into `T`, applies `f`, and writes the result back (fields `T` keeps in `extra` survive).
fn typed<T: DeserializeOwned + Serialize>(
    obj: &mut Value,
    f: impl FnOnce(&mut T) -> Result<(), AdmitError>,
) -> Result<(), AdmitError> {
    let mut t: T =
        serde_json::from_value(obj.clone()).map_err(|e| AdmitError::Decode(e.to_string()))?;
    f(&mut t)?;
    *obj = serde_json::to_value(&t).map_err(|e| AdmitError::Decode(e.to_string()))?;
    Ok(())
}

fn field_errors(errs: kuvirt_api::FieldErrors) -> AdmitError {
    use kuvirt_api::FieldErrorKind as K;
    AdmitError::Invalid(
        errs.iter()
            .map(|e| FieldCause {
                reason: match e.kind {
                    K::Required => "FieldValueRequired",
                    K::Duplicate => "FieldValueDuplicate",
                    K::NotSupported => "FieldValueNotSupported",
                    K::NotFound => "FieldValueNotFound",
                    K::TooLong => "FieldValueTooLong",
                    K::Forbidden => "FieldValueForbidden",
                    _ => "FieldValueInvalid",
                },
                field: e.field.clone(),
                message: e.message.clone(),
            })
            .collect(),
    )
}

fn required(field: &str, message: &str) -> AdmitError {
    AdmitError::Invalid(vec![FieldCause {
        reason: "FieldValueRequired",
        field: field.into(),
        message: message.into(),
    }])
}

/// KubeVirt persists only a few defaults on a VM (its VMIs get the rest); validation sees the VM
/// as its VMIs will be.
pub fn virtual_machine(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<kuvirt_api::VirtualMachine>(obj, |vm| {
        kuvirt_api::defaults::default_vm_persisted(vm);
        let mut full = vm.clone();
        kuvirt_api::default_vm(&mut full);
        kuvirt_api::validate_vm(&full).map_err(field_errors)
    })
}

pub fn virtual_machine_instance(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<kuvirt_api::VirtualMachineInstance>(obj, |vmi| {
        kuvirt_api::default_vmi(vmi);
        kuvirt_api::validate_vmi(vmi).map_err(field_errors)
    })
}

/// The checks that need only the object; creates get more in `migrate::admit_create`.
pub fn migration(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<kuvirt_api::v1::VirtualMachineInstanceMigration>(obj, |m| {
        match m.spec.vmi_name.as_deref() {
            Some(n) if !n.is_empty() => Ok(()),
            _ => Err(required("spec.vmiName", "Required value")),
        }
    })
}

/// KubeVirt's MigrationPolicy checks (its CRD schema and admission webhook).
pub fn migration_policy(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<kuvirt_api::migrations::MigrationPolicy>(obj, |p| {
        kuvirt_api::validate_migration_policy(p).map_err(field_errors)
    })
}

pub fn replica_set(obj: &mut Value) -> Result<(), AdmitError> {
    if obj.pointer("/spec/template").is_none() {
        return Err(required("spec.template", "Required value"));
    }
    if obj.pointer("/spec/selector").is_none() {
        return Err(required("spec.selector", "Required value"));
    }
    if let Some(r) = obj.pointer("/spec/replicas")
        && r.as_i64().is_none_or(|n| n < 0)
    {
        return Err(AdmitError::Invalid(vec![FieldCause {
            reason: "FieldValueInvalid",
            field: "spec.replicas".into(),
            message: format!("Invalid value: {r}: must be greater than or equal to 0"),
        }]));
    }
    Ok(())
}

/// The label Kubernetes keeps on every namespace: its name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn namespace(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::Namespace>(obj, |ns| {
        // Kubernetes labels every namespace with its name (what namespace selectors, such as
        // a MigrationPolicy's, pick a namespace by).
        if let Some(name) = ns.metadata.name.clone() {
            ns.metadata
                .labels
                .get_or_insert_default()
                .insert(NAMESPACE_NAME_LABEL.into(), name);
        }
        let status = ns.status.get_or_insert_with(Default::default);
        if status.phase.is_none() {
            status.phase = Some("Active".into());
        }
        // spec.finalizers belongs to the namespace lifecycle (objects.rs sets it at creation and
        // lets only /finalize change it).
        Ok(())
    })
}

pub fn pod(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::Pod>(obj, |pod| {
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| required("spec", "Required value"))?;
        if spec.containers.is_empty() {
            return Err(required("spec.containers", "Required value"));
        }
        for (i, c) in spec.containers.iter().enumerate() {
            if c.name.is_empty() {
                return Err(required(
                    &format!("spec.containers[{i}].name"),
                    "Required value",
                ));
            }
        }
        let status = pod.status.get_or_insert_with(Default::default);
        if status.phase.is_none() {
            status.phase = Some("Pending".into());
        }
        Ok(())
    })
}

pub fn node(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::Node>(obj, |_| Ok(()))
}

pub fn event(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::Event>(obj, |_| Ok(()))
}

pub fn secret(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::Secret>(obj, |s| {
        if s.type_.is_none() {
            s.type_ = Some("Opaque".into());
        }
        // stringData is write-only: merged into data, as the API server does.
        if let Some(sd) = s.string_data.take() {
            let data = s.data.get_or_insert_with(Default::default);
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
        Ok(())
    })
}

pub fn config_map(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::ConfigMap>(obj, |_| Ok(()))
}

pub fn service(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::Service>(obj, |svc| {
        let spec = svc.spec.get_or_insert_with(Default::default);
        if spec.type_.is_none() {
            spec.type_ = Some("ClusterIP".into());
        }
        for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
            if !(1..=65535).contains(&p.port) {
                return Err(AdmitError::Invalid(vec![FieldCause {
                    reason: "FieldValueInvalid",
                    field: format!("spec.ports[{i}].port"),
                    message: format!(
                        "Invalid value: {}: must be between 1 and 65535, inclusive",
                        p.port
                    ),
                }]));
            }
            if p.protocol.is_none() {
                p.protocol = Some("TCP".into());
            }
        }
        Ok(())
    })
}

pub fn service_account(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::core::v1::ServiceAccount>(obj, |_| Ok(()))
}

pub fn lease(obj: &mut Value) -> Result<(), AdmitError> {
    typed::<k8s_openapi::api::coordination::v1::Lease>(obj, |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn vm_is_defaulted_and_unknown_fields_survive() {
        let mut vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a", "namespace": "default"},
            "spec": {"runStrategy": "Halted", "futureField": 1,
                     "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
        });
        virtual_machine(&mut vm).unwrap();
        assert_eq!(vm["spec"]["futureField"], 1);
        assert_eq!(
            vm["spec"]["template"]["spec"]["domain"]["machine"]["type"],
            "q35"
        );
    }

    #[test]
    fn invalid_vm_lists_field_paths() {
        let mut vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "a"},
            "spec": {"runStrategy": "Sometimes",
                     "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}
        });
        let AdmitError::Invalid(causes) = virtual_machine(&mut vm).unwrap_err() else {
            panic!("not a validation error")
        };
        assert!(
            causes.iter().any(|c| c.field == "spec.runStrategy"),
            "{causes:?}"
        );
    }

    #[test]
    fn migration_is_typed_and_keeps_unknown_fields() {
        let mut m = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
            "metadata": {"name": "m"},
            "spec": {"vmiName": "vm", "priority": "user-triggered"},
            "status": {"phase": "WaitingForSync", "future": [1]}
        });
        migration(&mut m).unwrap();
        assert_eq!(m["spec"]["priority"], "user-triggered");
        assert_eq!(m["status"]["phase"], "WaitingForSync");
        assert_eq!(m["status"]["future"], json!([1]));
        let mut bad = json!({"spec": {"vmiName": "vm", "addedNodeSelector": "zone=b"}});
        assert!(matches!(migration(&mut bad), Err(AdmitError::Decode(_))));
        let mut missing = json!({"spec": {}});
        let Err(AdmitError::Invalid(causes)) = migration(&mut missing) else {
            panic!("no vmiName accepted")
        };
        assert_eq!(causes[0].field, "spec.vmiName");
    }

    #[test]
    fn migration_policy_is_validated_and_keeps_unknown_fields() {
        let mut p = json!({
            "apiVersion": "migrations.kubevirt.io/v1alpha1", "kind": "MigrationPolicy",
            "metadata": {"name": "p"},
            "spec": {"selectors": {"namespaceSelector": {"a": "b"}}, "allowPostCopy": true,
                     "futureKnob": 1}
        });
        migration_policy(&mut p).unwrap();
        assert_eq!(p["spec"]["futureKnob"], 1);
        let mut bad = json!({"spec": {"selectors": {}, "bandwidthPerMigration": "-1Mi"}});
        let Err(AdmitError::Invalid(causes)) = migration_policy(&mut bad) else {
            panic!("negative bandwidth accepted")
        };
        assert_eq!(
            causes,
            vec![FieldCause {
                reason: "FieldValueInvalid",
                field: "spec.bandwidthPerMigration".into(),
                message: "must not be negative".into(),
            }]
        );
        let mut wrong = json!({"spec": {"selectors": {"namespaceSelector": "a=b"}}});
        assert!(matches!(
            migration_policy(&mut wrong),
            Err(AdmitError::Decode(_))
        ));
    }

    #[test]
    fn namespaces_are_labelled_with_their_name() {
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "hpc", "labels": {"kubernetes.io/metadata.name": "x", "a": "b"}}});
        namespace(&mut ns).unwrap();
        assert_eq!(
            ns["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "hpc", "a": "b"})
        );
        assert_eq!(ns["status"]["phase"], "Active");
    }

    #[test]
    fn wrong_types_are_decode_errors() {
        let mut cm =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": 3});
        assert!(matches!(config_map(&mut cm), Err(AdmitError::Decode(_))));
    }
}
