//! KubeVirt's VirtualMachine subresources: `PUT /apis/subresources.kubevirt.io/v1/namespaces/NS/
//! virtualmachines/NAME/{start,stop,restart,migrate}` with virt-api's rules per run strategy
//! (spec writes for Always/Halted, `status.stateChangeRequests` for the rest; `migrate` is
//! `migrate`'s), and the group's discovery document (the VMI subresources are `nodeproxy`'s).

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use kuvirt_store::Store;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::meta;
use crate::objects::{self, Part, WriteOptions};
use crate::path::Target;
use crate::pki::{Role, Token};
use crate::resources::lookup;

/// The API group virt-api serves its subresources in.
pub const GROUP: &str = "subresources.kubevirt.io";
/// Its (only) served version here.
pub const VERSION: &str = "v1";

/// How often a write that lost a race with another writer is recomputed and retried.
const ATTEMPTS: usize = 8;

/// A VM subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    /// `PUT virtualmachines/NAME/migrate`: a VirtualMachineInstanceMigration for its VMI.
    Migrate,
    /// `GET virtualmachines/NAME/expand-spec`: the VM with its instance type and preference
    /// applied.
    ExpandSpec,
    /// `PUT namespaces/NS/expand-vm-spec` with a VM body: the same for a VM not stored.
    ExpandVmSpec,
}

impl Verb {
    fn name(self) -> &'static str {
        match self {
            Verb::Start => "start",
            Verb::Stop => "stop",
            Verb::Restart => "restart",
            Verb::Migrate => "migrate",
            Verb::ExpandSpec => "expand-spec",
            Verb::ExpandVmSpec => "expand-vm-spec",
        }
    }
}

/// One subresource request: which VM and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub namespace: String,
    pub name: String,
    pub verb: Verb,
}

/// The VM subresource `path` names, if it names one (anything else is left to the generic
/// routing, which answers 404 for the rest of this group).
pub fn route(path: &str) -> Option<Call> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    if let ["apis", GROUP, VERSION, "namespaces", ns, "expand-vm-spec"] = segs.as_slice() {
        return (!ns.is_empty()).then(|| Call {
            namespace: (*ns).into(),
            name: String::new(),
            verb: Verb::ExpandVmSpec,
        });
    }
    let [
        "apis",
        GROUP,
        VERSION,
        "namespaces",
        ns,
        "virtualmachines",
        name,
        verb,
    ] = segs.as_slice()
    else {
        return None;
    };
    let verb = match *verb {
        "start" => Verb::Start,
        "stop" => Verb::Stop,
        "restart" => Verb::Restart,
        "migrate" => Verb::Migrate,
        "expand-spec" => Verb::ExpandSpec,
        _ => return None,
    };
    (!ns.is_empty() && !name.is_empty()).then(|| Call {
        namespace: (*ns).into(),
        name: (*name).into(),
        verb,
    })
}

/// `/apis/subresources.kubevirt.io/v1`: what virt-api lists for the VM subresources served here.
pub fn resource_list() -> Value {
    let entry = |name: String, verb: &str| {
        json!({
            "name": name,
            "singularName": "",
            "namespaced": true,
            "kind": "",
            "verbs": [verb],
        })
    };
    let resources: Vec<Value> = [Verb::Start, Verb::Stop, Verb::Restart, Verb::Migrate]
        .iter()
        .map(|v| entry(format!("virtualmachines/{}", v.name()), "update"))
        .chain([
            entry("virtualmachines/expand-spec".into(), "get"),
            entry("expand-vm-spec".into(), "update"),
        ])
        .chain(crate::nodeproxy::VmiVerb::ALL.iter().map(|v| {
            entry(
                format!("virtualmachineinstances/{}", v.path()),
                v.kube_verb(),
            )
        }))
        .collect();
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": resources,
    })
}

/// `StartOptions`, `StopOptions` and `RestartOptions` in one: each verb reads its own fields.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Options {
    paused: bool,
    grace_period: Option<i64>,
    grace_period_seconds: Option<i64>,
    dry_run: Vec<String>,
}

fn options(body: &[u8]) -> Result<Options, ApiError> {
    let opts: Options = decode_options(body)?;
    check_dry_run(&opts.dry_run)?;
    Ok(opts)
}

/// Decodes a subresource body as virt-api does: JSON or YAML, an empty body meaning the
/// defaults.
pub(crate) fn decode_options<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |e: String| {
        ApiError::bad_request(format!(
            "Can not unmarshal Request body to struct, error: {e}"
        ))
    };
    let text = std::str::from_utf8(body).map_err(|e| bad(e.to_string()))?;
    let text = text.trim();
    if text.is_empty() {
        Ok(T::default())
    } else if text.starts_with('{') {
        serde_json::from_str(text).map_err(|e| bad(e.to_string()))
    } else {
        serde_saphyr::from_str(text).map_err(|e| bad(e.to_string()))
    }
}

/// A body's `dryRun`: only `All` exists.
pub(crate) fn check_dry_run(dry_run: &[String]) -> Result<(), ApiError> {
    match dry_run.iter().find(|v| *v != "All") {
        Some(v) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: {v:?}: supported values: \"All\""
        ))),
        None => Ok(()),
    }
}

/// Serves one subresource request for `user`.
pub async fn serve(
    store: &Store,
    user: &Token,
    method: &Method,
    call: &Call,
    body: &[u8],
) -> Result<Response, ApiError> {
    let verb = match *method {
        Method::PUT => "update",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    let expanding = matches!(call.verb, Verb::ExpandSpec | Verb::ExpandVmSpec);
    // Expanding reads only: who may read VMs may expand them.
    let allowed = match user.role {
        Role::Admin => true,
        Role::ReadOnly => expanding,
        Role::Node => false,
    };
    if !allowed {
        return Err(forbidden(user, verb, call));
    }
    let wanted = if call.verb == Verb::ExpandSpec {
        Method::GET
    } else {
        Method::PUT
    };
    if *method != wanted {
        return Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        )));
    }
    if expanding {
        let vm = if call.verb == Verb::ExpandSpec {
            fetch_vm(store, call).await?.1
        } else {
            vm_body(body, &call.namespace)?
        };
        let vm = expand(vm)?;
        return Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            vm.to_string(),
        )
            .into_response());
    }
    if call.verb == Verb::Migrate {
        crate::migrate::migrate(store, call, body).await?;
        return Ok(StatusCode::ACCEPTED.into_response());
    }
    let opts = options(body)?;
    match call.verb {
        Verb::Start => start(store, call, &opts).await?,
        Verb::Stop => stop(store, call, &opts).await?,
        Verb::Restart => restart(store, call, &opts).await?,
        Verb::Migrate | Verb::ExpandSpec | Verb::ExpandVmSpec => {}
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The VM in an `expand-vm-spec` body: JSON or YAML, in the request's namespace (virt-api's
/// checks and messages).
fn vm_body(body: &[u8], namespace: &str) -> Result<Value, ApiError> {
    let vm: Value = serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice(body))
        .map_err(|e| {
            ApiError::bad_request(format!(
                "Can not unmarshal Request body to struct, error: {e}"
            ))
        })?;
    if vm.get("kind").and_then(Value::as_str) != Some("VirtualMachine") {
        return Err(ApiError::bad_request(
            "Object is not a valid VirtualMachine".to_string(),
        ));
    }
    match vm.pointer("/metadata/namespace").and_then(Value::as_str) {
        None | Some("") => Ok(vm),
        Some(ns) if ns == namespace => Ok(vm),
        Some(ns) => Err(ApiError::bad_request(format!(
            "VM namespace must be empty or {namespace}, got {ns}"
        ))),
    }
}

/// The VM with its instance type and preference applied. This server serves no instance types
/// yet, so a VM naming one cannot be expanded (said so, not ignored); any other VM is already
/// its own expansion.
fn expand(vm: Value) -> Result<Value, ApiError> {
    for field in ["instancetype", "preference"] {
        if let Some(r) = vm
            .pointer(&format!("/spec/{field}"))
            .filter(|v| !v.is_null())
        {
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            return Err(ApiError {
                details: Some(Box::new(json!({
                    "causes": [{"type": "FieldValueNotSupported",
                                "field": format!("spec.{field}"),
                                "message": format!("{field} {name:?} cannot be expanded: this server does not serve instance types yet")}]
                }))),
                ..ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "spec.{field}: {field} {name:?} cannot be expanded: this server does not serve instance types yet"
                    ),
                )
            });
        }
    }
    Ok(vm)
}

fn forbidden(user: &Token, verb: &str, call: &Call) -> ApiError {
    forbidden_subresource(
        user,
        verb,
        "virtualmachines",
        call.verb.name(),
        &call.name,
        &call.namespace,
    )
}

/// RBAC's answer for `PLURAL/SUB` of this group, as Kubernetes words it.
pub(crate) fn forbidden_subresource(
    user: &Token,
    verb: &str,
    plural: &str,
    sub: &str,
    name: &str,
    namespace: &str,
) -> ApiError {
    ApiError {
        details: Some(Box::new(
            json!({ "name": name, "group": GROUP, "kind": plural }),
        )),
        ..ApiError::new(
            403,
            "Forbidden",
            format!(
                "{plural}.{GROUP} \"{name}\" is forbidden: User \"{}\" cannot {verb} resource \"{plural}/{sub}\" in API group \"{GROUP}\" in the namespace \"{namespace}\"",
                user.user
            ),
        )
    }
}

/// virt-api's `NewConflict(v1.Resource("virtualmachine"), name, err)`.
pub(crate) fn conflict(name: &str, why: &str) -> ApiError {
    kubevirt_conflict("virtualmachine", name, why)
}

/// virt-api's `NewConflict(v1.Resource(KIND), name, err)`.
pub(crate) fn kubevirt_conflict(kind: &str, name: &str, why: &str) -> ApiError {
    ApiError {
        details: Some(Box::new(
            json!({ "name": name, "group": "kubevirt.io", "kind": kind }),
        )),
        ..ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {kind}.kubevirt.io \"{name}\": {why}"),
        )
    }
}

fn internal(why: &str) -> ApiError {
    ApiError::internal(format!("Internal error occurred: {why}"))
}

/// A namespaced collection of `group`/v1 `plural`, for store calls.
pub(crate) fn target(plural: &str, group: &str, ns: &str) -> Result<Target, ApiError> {
    let rt = lookup(group, "v1", plural)
        .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
    Ok(Target {
        rt,
        namespace: ns.into(),
        name: None,
        subresource: None,
    })
}

/// The VM, or virt-api's NotFound for it.
pub(crate) async fn fetch_vm(store: &Store, call: &Call) -> Result<(Target, Value), ApiError> {
    let t = target("virtualmachines", "kubevirt.io", &call.namespace)?;
    match objects::get(store, &t, &call.name).await {
        Ok(vm) => Ok((t, vm)),
        Err(e) if e.code == 404 => Err(ApiError {
            details: Some(Box::new(
                json!({ "name": call.name, "group": "kubevirt.io", "kind": "virtualmachine" }),
            )),
            ..ApiError::new(
                404,
                "NotFound",
                format!("virtualmachine.kubevirt.io \"{}\" not found", call.name),
            )
        }),
        Err(e) => Err(e),
    }
}

/// The VMI of the same name, if any.
pub(crate) async fn fetch_vmi(
    store: &Store,
    call: &Call,
) -> Result<(Target, Option<Value>), ApiError> {
    let t = target("virtualmachineinstances", "kubevirt.io", &call.namespace)?;
    match objects::get(store, &t, &call.name).await {
        Ok(v) => Ok((t, Some(v))),
        Err(e) if e.code == 404 => Ok((t, None)),
        Err(e) => Err(e),
    }
}

/// `vm.RunStrategy()`: `spec.running` maps to Always/Halted, else `spec.runStrategy`, else Halted.
fn run_strategy(vm: &Value) -> Result<String, ApiError> {
    let spec = vm.get("spec");
    let running = spec.and_then(|s| s.get("running")).filter(|v| !v.is_null());
    let strategy = spec
        .and_then(|s| s.get("runStrategy"))
        .and_then(Value::as_str);
    match (running, strategy) {
        (Some(_), Some(_)) => Err(internal("running and runstrategy are mutually exclusive")),
        (Some(r), None) if r.as_bool() == Some(true) => Ok("Always".into()),
        (Some(_), None) | (None, None) => Ok("Halted".into()),
        (None, Some(s)) => Ok(s.to_string()),
    }
}

pub(crate) fn vmi_phase(vmi: &Value) -> &str {
    vmi.pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(crate) fn is_final(vmi: &Value) -> bool {
    matches!(vmi_phase(vmi), "Succeeded" | "Failed")
}

fn uid(obj: &Value) -> String {
    meta::uid(obj).unwrap_or_default().to_string()
}

fn stop_request(vmi: &Value) -> Value {
    json!({ "action": "Stop", "uid": uid(vmi) })
}

fn start_request(paused: bool) -> Value {
    if paused {
        json!({ "action": "Start", "data": { "paused": "true" } })
    } else {
        json!({ "action": "Start" })
    }
}

/// What a subresource writes to the VM.
#[derive(Debug, PartialEq)]
enum Write {
    /// Set `spec.running` (when the VM uses it) or `spec.runStrategy` to Always (`true`) or
    /// Halted (`false`).
    Running(bool),
    /// Append these state change requests (virt-api's `getChangeRequestJson`).
    Requests(Vec<Value>),
}

/// The VM's status with `changes` recorded, as virt-api's JSON patch would leave it: an empty
/// status gets them; existing requests are only replaced by a single Stop; a pending
/// startFailure is cleared.
fn with_requests(vm: &Value, changes: Vec<Value>) -> Result<Value, ApiError> {
    let status = vm.get("status").cloned().unwrap_or(Value::Null);
    let empty = match &status {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    if empty {
        return Ok(json!({ "stateChangeRequests": changes }));
    }
    let mut status = status;
    let pending = status
        .get("stateChangeRequests")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let single_stop = changes.len() == 1 && changes[0]["action"] == "Stop";
    if pending && !single_stop {
        return Err(internal(
            "unable to complete request: stop/start already underway",
        ));
    }
    if let Some(m) = status.as_object_mut() {
        m.insert("stateChangeRequests".into(), Value::Array(changes));
        m.remove("startFailure");
    }
    Ok(status)
}

/// Carries out `write` on the VM read at `vm`'s resourceVersion. `Ok(false)`: someone else wrote
/// first; read again and recompute.
async fn apply(
    store: &Store,
    t: &Target,
    name: &str,
    mut vm: Value,
    write: Write,
    dry_run: bool,
) -> Result<bool, ApiError> {
    let expected = meta::resource_version(&vm);
    let part = match write {
        Write::Running(on) => {
            let spec = vm
                .get_mut("spec")
                .and_then(Value::as_object_mut)
                .ok_or_else(|| internal("the VirtualMachine has no spec"))?;
            if spec.get("runStrategy").is_none_or(Value::is_null) {
                // virt-api: `{"spec":{"running": …}}` when runStrategy is not set.
                spec.insert("running".into(), json!(on));
            } else {
                let s = if on { "Always" } else { "Halted" };
                spec.insert("runStrategy".into(), json!(s));
            }
            Part::Main
        }
        Write::Requests(changes) => {
            let status = with_requests(&vm, changes)?;
            vm["status"] = status;
            Part::Status
        }
    };
    let wo = WriteOptions {
        dry_run,
        manager: "virt-api".into(),
        ..WriteOptions::default()
    };
    match objects::update(store, t, name, vm, part, expected, &wo).await {
        Ok(_) => Ok(true),
        Err(e) if e.code == 409 && e.reason == "Conflict" => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the VM and its VMI, decides, writes; again when another writer got there first.
async fn decide_and_write<F>(
    store: &Store,
    call: &Call,
    dry_run: bool,
    decide: F,
) -> Result<(), ApiError>
where
    F: Fn(&Value, Option<&Value>) -> Result<Write, ApiError>,
{
    for _ in 0..ATTEMPTS {
        let (t, vm) = fetch_vm(store, call).await?;
        let (_, vmi) = fetch_vmi(store, call).await?;
        let write = decide(&vm, vmi.as_ref())?;
        if apply(store, &t, &call.name, vm, write, dry_run).await? {
            return Ok(());
        }
    }
    Err(conflict(
        &call.name,
        "the object has been modified; please apply your changes to the latest version and try again",
    ))
}

/// virt-api's StartVMRequestHandler.
fn decide_start(
    vm: &Value,
    vmi: Option<&Value>,
    name: &str,
    paused: bool,
) -> Result<Write, ApiError> {
    if let Some(v) = vmi
        && !is_final(v)
        && !matches!(vmi_phase(v), "" | "Unknown")
    {
        return Err(conflict(name, "VM is already running"));
    }
    let strategy = run_strategy(vm)?;
    match strategy.as_str() {
        // A paused start is left to the controller, which sets the run strategy on the request.
        "Halted" if paused => Ok(Write::Requests(vec![start_request(true)])),
        "Halted" => Ok(Write::Running(true)),
        "RerunOnFailure" | "Manual" => {
            let rerun = strategy == "RerunOnFailure";
            match vmi {
                Some(v) if (rerun && vmi_phase(v) == "Succeeded") || (!rerun && is_final(v)) => {
                    Ok(Write::Requests(vec![
                        stop_request(v),
                        start_request(paused),
                    ]))
                }
                Some(v) if rerun && vmi_phase(v) == "Failed" => Err(conflict(
                    name,
                    "RerunOnFailure does not support starting VM from failed state",
                )),
                _ => Ok(Write::Requests(vec![start_request(paused)])),
            }
        }
        other => Err(conflict(
            name,
            &format!("{other} does not support manual start requests"),
        )),
    }
}

/// virt-api's StopVMRequestHandler (after the VMI's grace period was shortened).
fn decide_stop(
    vm: &Value,
    vmi: Option<&Value>,
    name: &str,
    grace: Option<i64>,
    old_grace: Option<i64>,
) -> Result<Write, ApiError> {
    let running = vmi.filter(|v| !is_final(v));
    match run_strategy(vm)?.as_str() {
        "Halted" => {
            let Some(v) = running else {
                return Err(conflict(name, "VM is not running"));
            };
            let shorter = match (grace, old_grace) {
                (None, _) => false,
                (Some(g), Some(old)) => g < old,
                (Some(_), None) => true,
            };
            if !shorter {
                return Err(conflict(
                    name,
                    "Halted only supports manual stop requests with a shorter graceperiod",
                ));
            }
            Ok(Write::Requests(vec![stop_request(v)]))
        }
        "Manual" => match running {
            Some(v) => Ok(Write::Requests(vec![stop_request(v)])),
            None => Err(conflict(name, "VM is not running")),
        },
        _ => Ok(Write::Running(false)),
    }
}

/// virt-api's RestartVMRequestHandler.
fn decide_restart(vm: &Value, vmi: Option<&Value>, name: &str) -> Result<Write, ApiError> {
    let strategy = run_strategy(vm)?;
    if strategy == "Halted" || strategy == "Once" {
        return Err(conflict(
            name,
            &format!("RunStategy {strategy} does not support manual restart requests"),
        ));
    }
    let Some(v) = vmi else {
        return Err(conflict(name, "VM is not running: Halted"));
    };
    Ok(Write::Requests(vec![stop_request(v), start_request(false)]))
}

async fn start(store: &Store, call: &Call, opts: &Options) -> Result<(), ApiError> {
    let dry_run = !opts.dry_run.is_empty();
    decide_and_write(store, call, dry_run, |vm, vmi| {
        decide_start(vm, vmi, &call.name, opts.paused)
    })
    .await
}

async fn stop(store: &Store, call: &Call, opts: &Options) -> Result<(), ApiError> {
    let dry_run = !opts.dry_run.is_empty();
    fetch_vm(store, call).await?;
    // A grace period shortens the running VMI's first (the launcher reads it when stopping).
    let mut old_grace = None;
    if let Some(grace) = opts.grace_period {
        old_grace = set_vmi_grace(store, call, grace, dry_run).await?;
    }
    decide_and_write(store, call, dry_run, |vm, vmi| {
        decide_stop(vm, vmi, &call.name, opts.grace_period, old_grace)
    })
    .await
}

/// Sets a running VMI's `spec.terminationGracePeriodSeconds`; returns the value it had.
async fn set_vmi_grace(
    store: &Store,
    call: &Call,
    grace: i64,
    dry_run: bool,
) -> Result<Option<i64>, ApiError> {
    for _ in 0..ATTEMPTS {
        let (t, vmi) = fetch_vmi(store, call).await?;
        let Some(mut vmi) = vmi.filter(|v| !is_final(v)) else {
            return Ok(None);
        };
        let old = vmi
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64);
        let expected = meta::resource_version(&vmi);
        if let Some(spec) = vmi.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("terminationGracePeriodSeconds".into(), json!(grace));
        }
        let wo = WriteOptions {
            dry_run,
            manager: "virt-api".into(),
            ..WriteOptions::default()
        };
        match objects::update(store, &t, &call.name, vmi, Part::Main, expected, &wo).await {
            Ok(_) => return Ok(old),
            Err(e) if e.code == 409 && e.reason == "Conflict" => continue,
            Err(e) if e.code == 404 => return Ok(None),
            Err(e) => return Err(internal(&e.message)),
        }
    }
    Err(internal("the VirtualMachineInstance kept changing"))
}

async fn restart(store: &Store, call: &Call, opts: &Options) -> Result<(), ApiError> {
    match opts.grace_period_seconds {
        Some(g) if g > 0 => {
            return Err(ApiError::bad_request(
                "For force restart, only gracePeriod=0 is supported for now",
            ));
        }
        Some(g) if g < 0 => {
            return Err(ApiError::bad_request(
                "gracePeriod has to be greater or equal to 0",
            ));
        }
        _ => {}
    }
    let dry_run = !opts.dry_run.is_empty();
    decide_and_write(store, call, dry_run, |vm, vmi| {
        decide_restart(vm, vmi, &call.name)
    })
    .await?;
    if opts.grace_period_seconds == Some(0) && !dry_run {
        delete_launcher_pod(store, call).await?;
    }
    Ok(())
}

/// A forced restart: deletes the VMI's running launcher pod.
async fn delete_launcher_pod(store: &Store, call: &Call) -> Result<(), ApiError> {
    let (_, Some(vmi)) = fetch_vmi(store, call).await? else {
        return Ok(());
    };
    let vmi_uid = uid(&vmi);
    let t = target("pods", "", &call.namespace)?;
    let pods = objects::list(store, &t, None, None, &|p| {
        let labels = p.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        label("kubevirt.io") == Some("virt-launcher")
            && label("kubevirt.io/created-by") == Some(vmi_uid.as_str())
            && p.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
    })
    .await?;
    if let Some(name) = pods.items.first().and_then(meta::name) {
        match objects::delete(store, &t, name, &objects::DeleteOptions::default()).await {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(internal(&e.message)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(strategy: &str) -> Value {
        json!({"metadata": {"name": "vm", "uid": "u-vm"}, "spec": {"runStrategy": strategy}})
    }

    fn vmi(phase: &str) -> Value {
        json!({"metadata": {"name": "vm", "uid": "u-vmi"}, "status": {"phase": phase}})
    }

    #[test]
    fn routes() {
        let c =
            route("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/x/start")
                .unwrap();
        assert_eq!(
            (c.namespace.as_str(), c.name.as_str(), c.verb),
            ("default", "x", Verb::Start)
        );
        assert!(
            route("/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachines/x/vnc").is_none()
        );
        assert!(route("/apis/kubevirt.io/v1/namespaces/d/virtualmachines/x/start").is_none());
        assert_eq!(
            resource_list()["resources"][2]["name"],
            "virtualmachines/restart"
        );
        assert_eq!(
            resource_list()["resources"][3]["name"],
            "virtualmachines/migrate"
        );
        let m = route("/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachines/x/migrate")
            .unwrap();
        assert_eq!(m.verb, Verb::Migrate);
    }

    #[test]
    fn start_rules() {
        assert_eq!(
            decide_start(&vm("Halted"), None, "vm", false),
            Ok(Write::Running(true))
        );
        let e = decide_start(&vm("Halted"), Some(&vmi("Running")), "vm", false).unwrap_err();
        assert!(
            e.message.ends_with("VM is already running"),
            "{}",
            e.message
        );
        // A VMI that has no phase yet, or is finished, does not count as running.
        let e = decide_start(&vm("Always"), Some(&vmi("")), "vm", false).unwrap_err();
        assert!(
            e.message
                .ends_with("Always does not support manual start requests")
        );
        assert_eq!(
            decide_start(&vm("Manual"), Some(&vmi("Succeeded")), "vm", true),
            Ok(Write::Requests(vec![
                json!({"action": "Stop", "uid": "u-vmi"}),
                json!({"action": "Start", "data": {"paused": "true"}}),
            ]))
        );
        let e = decide_start(&vm("RerunOnFailure"), Some(&vmi("Failed")), "vm", false).unwrap_err();
        assert_eq!(e.code, 409);
        let running_true = json!({"spec": {"running": true}});
        assert!(decide_start(&running_true, None, "vm", false).is_err());
    }

    #[test]
    fn stop_and_restart_rules() {
        assert_eq!(
            decide_stop(&vm("Always"), None, "vm", None, None),
            Ok(Write::Running(false))
        );
        assert_eq!(
            decide_stop(&vm("RerunOnFailure"), None, "vm", None, None),
            Ok(Write::Running(false))
        );
        let e = decide_stop(&vm("Manual"), None, "vm", None, None).unwrap_err();
        assert!(e.message.ends_with("VM is not running"));
        let e = decide_stop(
            &vm("Halted"),
            Some(&vmi("Running")),
            "vm",
            Some(30),
            Some(30),
        )
        .unwrap_err();
        assert!(e.message.contains("shorter graceperiod"));
        assert!(
            decide_stop(
                &vm("Halted"),
                Some(&vmi("Running")),
                "vm",
                Some(0),
                Some(30)
            )
            .is_ok()
        );
        let e = decide_restart(&vm("Halted"), None, "vm").unwrap_err();
        assert!(
            e.message
                .ends_with("Halted does not support manual restart requests")
        );
        let e = decide_restart(&vm("Manual"), None, "vm").unwrap_err();
        assert!(e.message.ends_with("VM is not running: Halted"));
    }

    #[test]
    fn change_requests() {
        let bare = json!({"spec": {}});
        assert_eq!(
            with_requests(&bare, vec![json!({"action": "Start"})]).unwrap(),
            json!({"stateChangeRequests": [{"action": "Start"}]})
        );
        let pending = json!({"status": {"ready": false, "startFailure": {"retries": 1},
            "stateChangeRequests": [{"action": "Start"}]}});
        let e = with_requests(&pending, vec![json!({"action": "Start"})]).unwrap_err();
        assert!(e.message.contains("stop/start already underway"));
        let s = with_requests(&pending, vec![json!({"action": "Stop", "uid": "u"})]).unwrap();
        assert_eq!(
            s["stateChangeRequests"],
            json!([{"action": "Stop", "uid": "u"}])
        );
        assert!(s.get("startFailure").is_none());
        assert!(options(b"").is_ok());
        assert!(options(b"{\"gracePeriod\": 5}").unwrap().grace_period == Some(5));
        assert!(options(b"paused: true\n").unwrap().paused);
        assert_eq!(options(b"{bad").unwrap_err().code, 400);
    }
}
