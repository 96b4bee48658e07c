//! The VM subresources (start, stop, restart, migrate) over HTTPS against the in-process API
//! server, with no controller running: what each writes per run strategy, KubeVirt's conflicts,
//! 404 for a missing VM, 403 for a read-only token, and the group in discovery. VMI status is
//! written directly to stand in for the controller and node (no QEMU here).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::Server;
use kuvirt_apiserver::pki::Role;
use serde_json::{Value, json};

const SUB: &str = "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines";
const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const VMIS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";
const VMIMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancemigrations";

impl Server {
    /// One request with curl: (HTTP code, body).
    fn call(&self, role: Role, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let running = self.running.as_ref().unwrap();
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-w", "\n%{http_code}", "--cacert"])
            .arg(self.dir.path().join("pki/ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {}", self.token(role))])
            .args(["-X", method]);
        if let Some(b) = body {
            let ct = if b.starts_with('{') {
                "application/json"
            } else {
                "application/yaml"
            };
            cmd.args(["-H", &format!("Content-Type: {ct}"), "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("{}{path}", running.url()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_string())
    }

    fn put(&self, vm: &str, verb: &str, body: Option<&str>) -> (u16, String) {
        self.call(Role::Admin, "PUT", &format!("{SUB}/{vm}/{verb}"), body)
    }

    fn get(&self, path: &str) -> Value {
        let (code, body) = self.call(Role::Admin, "GET", path, None);
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn create_vm(&self, name: &str, strategy: &str) {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name},
            "spec": {"runStrategy": strategy, "template": {"spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}}}},
        });
        let (code, body) = self.call(Role::Admin, "POST", VMS, Some(&vm.to_string()));
        assert_eq!(code, 201, "{body}");
    }

    /// A VMI in `phase`, as the controller and the node would leave it; returns its uid.
    fn create_vmi(&self, name: &str, phase: &str) -> String {
        let vmi = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name},
            "spec": {"domain": {"devices": {}, "resources": {"requests": {"memory": "64Mi"}}}},
            "status": {"phase": phase},
        });
        let (code, body) = self.call(Role::Admin, "POST", VMIS, Some(&vmi.to_string()));
        assert_eq!(code, 201, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["metadata"]["uid"].as_str().unwrap().to_string()
    }

    fn vm(&self, name: &str) -> Value {
        self.get(&format!("{VMS}/{name}"))
    }

    /// Replaces a VMI's status (it has no status subresource: a plain PUT).
    fn set_vmi_status(&self, name: &str, status: Value) {
        let mut vmi = self.get(&format!("{VMIS}/{name}"));
        vmi["status"] = status;
        let (code, body) = self.call(
            Role::Admin,
            "PUT",
            &format!("{VMIS}/{name}"),
            Some(&vmi.to_string()),
        );
        assert_eq!(code, 200, "{body}");
    }

    fn migrations(&self) -> Vec<Value> {
        self.get(VMIMS)["items"].as_array().unwrap().clone()
    }

    /// Sets a migration's `status.phase` through its status subresource.
    fn set_migration_phase(&self, name: &str, phase: &str) {
        let mut m = self.get(&format!("{VMIMS}/{name}"));
        m["status"] = json!({ "phase": phase });
        let (code, body) = self.call(
            Role::Admin,
            "PUT",
            &format!("{VMIMS}/{name}/status"),
            Some(&m.to_string()),
        );
        assert_eq!(code, 200, "{body}");
    }
}

/// Asserts a 409 Status whose message ends with `why`.
fn conflict(reply: (u16, String), why: &str) {
    let (code, body) = reply;
    assert_eq!(code, 409, "{body}");
    let s: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["kind"], "Status");
    assert_eq!(s["reason"], "Conflict");
    let msg = s["message"].as_str().unwrap();
    assert!(
        msg.starts_with("Operation cannot be fulfilled on virtualmachine.kubevirt.io"),
        "{msg}"
    );
    assert!(msg.ends_with(why), "{msg}");
}

#[test]
fn start_stop_restart_follow_the_run_strategy() {
    let s = Server::start();
    s.create_vm("testvm", "Halted");

    // Dry run: accepted, nothing written.
    let (code, body) = s.put("testvm", "start", Some(r#"{"dryRun":["All"]}"#));
    assert_eq!((code, body.as_str()), (202, ""));
    assert_eq!(s.vm("testvm")["spec"]["runStrategy"], "Halted");

    // Halted + start → Always (no body at all is fine).
    let (code, body) = s.put("testvm", "start", None);
    assert_eq!((code, body.as_str()), (202, ""));
    assert_eq!(s.vm("testvm")["spec"]["runStrategy"], "Always");
    // Always without a VMI: KubeVirt refuses manual starts for the strategy.
    conflict(
        s.put("testvm", "start", Some("{}")),
        "Always does not support manual start requests",
    );
    // With a running VMI: "already running" comes first.
    let uid = s.create_vmi("testvm", "Running");
    conflict(s.put("testvm", "start", None), "VM is already running");

    // Always + stop → Halted; restart on Halted is refused.
    let (code, _) = s.put("testvm", "stop", Some("gracePeriod: 5\n"));
    assert_eq!(code, 202);
    assert_eq!(s.vm("testvm")["spec"]["runStrategy"], "Halted");
    let vmi = s.get(&format!("{VMIS}/testvm"));
    assert_eq!(vmi["spec"]["terminationGracePeriodSeconds"], 5);
    conflict(
        s.put("testvm", "restart", None),
        "RunStategy Halted does not support manual restart requests",
    );
    // Halted with a VMI still there: only a shorter grace period may hurry it.
    conflict(
        s.put("testvm", "stop", None),
        "Halted only supports manual stop requests with a shorter graceperiod",
    );
    let (code, body) = s.put("testvm", "stop", Some(r#"{"gracePeriod":0}"#));
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        s.vm("testvm")["status"]["stateChangeRequests"],
        json!([{"action": "Stop", "uid": uid}])
    );

    // RerunOnFailure + stop → Halted.
    s.create_vm("rerun", "RerunOnFailure");
    assert_eq!(s.put("rerun", "stop", None).0, 202);
    assert_eq!(s.vm("rerun")["spec"]["runStrategy"], "Halted");
}

#[test]
fn manual_vms_get_state_change_requests() {
    let s = Server::start();
    s.create_vm("manual", "Manual");
    conflict(s.put("manual", "stop", None), "VM is not running");
    conflict(
        s.put("manual", "restart", None),
        "VM is not running: Halted",
    );

    assert_eq!(s.put("manual", "start", Some(r#"{"paused":true}"#)).0, 202);
    let vm = s.vm("manual");
    assert_eq!(vm["spec"]["runStrategy"], "Manual");
    assert_eq!(
        vm["status"]["stateChangeRequests"],
        json!([{"action": "Start", "data": {"paused": "true"}}])
    );
    // A second start while the first is pending: KubeVirt's internal error.
    let (code, body) = s.put("manual", "start", None);
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("stop/start already underway"), "{body}");

    // A stop replaces whatever is pending, naming the VMI it stops.
    let uid = s.create_vmi("manual", "Running");
    assert_eq!(s.put("manual", "stop", None).0, 202);
    assert_eq!(
        s.vm("manual")["status"]["stateChangeRequests"],
        json!([{"action": "Stop", "uid": uid}])
    );

    // Restart = Stop(uid) + Start.
    s.create_vm("manual2", "Manual");
    let uid2 = s.create_vmi("manual2", "Running");
    assert_eq!(s.put("manual2", "restart", Some("{}")).0, 202);
    assert_eq!(
        s.vm("manual2")["status"]["stateChangeRequests"],
        json!([{"action": "Stop", "uid": uid2}, {"action": "Start"}])
    );
    let (code, body) = s.put("manual2", "restart", Some(r#"{"gracePeriodSeconds":3}"#));
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("only gracePeriod=0 is supported"), "{body}");

    // Manual + a finished VMI: start asks to stop the old one and start anew.
    s.create_vm("manual3", "Manual");
    let uid3 = s.create_vmi("manual3", "Succeeded");
    assert_eq!(s.put("manual3", "start", None).0, 202);
    assert_eq!(
        s.vm("manual3")["status"]["stateChangeRequests"],
        json!([{"action": "Stop", "uid": uid3}, {"action": "Start"}])
    );
}

#[test]
fn errors_authorization_and_discovery() {
    let s = Server::start();
    for verb in ["start", "stop", "restart"] {
        let (code, body) = s.put("nope", verb, None);
        assert_eq!(code, 404, "{body}");
        let st: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            st["message"],
            "virtualmachine.kubevirt.io \"nope\" not found"
        );
    }
    s.create_vm("testvm", "Halted");
    let (code, body) = s.call(Role::ReadOnly, "PUT", &format!("{SUB}/testvm/start"), None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("cannot update resource \\\"virtualmachines/start\\\" in API group \\\"subresources.kubevirt.io\\\""),
        "{body}"
    );
    assert_eq!(s.vm("testvm")["spec"]["runStrategy"], "Halted");
    let (code, body) = s.call(Role::Admin, "GET", &format!("{SUB}/testvm/start"), None);
    assert_eq!(code, 405, "{body}");
    let (code, body) = s.put("testvm", "start", Some("{not json"));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("Can not unmarshal Request body to struct"),
        "{body}"
    );
    let (code, _) = s.put("testvm", "migrate-nowhere", None);
    assert_eq!(code, 404);

    let groups = s.get("/apis");
    let names: Vec<&str> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"subresources.kubevirt.io"), "{groups}");
    let group = s.get("/apis/subresources.kubevirt.io");
    assert_eq!(
        group["preferredVersion"]["groupVersion"],
        "subresources.kubevirt.io/v1"
    );
    let list = s.get("/apis/subresources.kubevirt.io/v1");
    assert_eq!(list["kind"], "APIResourceList");
    let resources = list["resources"].as_array().unwrap();
    for (r, name) in resources.iter().zip([
        "virtualmachines/start",
        "virtualmachines/stop",
        "virtualmachines/restart",
    ]) {
        assert_eq!(r["name"], name);
        assert_eq!(r["verbs"], json!(["update"]));
        assert_eq!(r["namespaced"], true);
        assert_eq!(r["kind"], "");
    }
    // Not part of kubevirt.io's own resources.
    let kv = s.get("/apis/kubevirt.io/v1");
    assert!(!kv.to_string().contains("virtualmachines/start"));
}

#[test]
fn expand_spec_returns_the_vm_or_says_why_not() {
    let s = Server::start();
    s.create_vm("testvm", "Halted");
    // Readers may expand: it changes nothing.
    let (code, body) = s.call(
        Role::ReadOnly,
        "GET",
        &format!("{SUB}/testvm/expand-spec"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    let vm: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(vm["metadata"]["name"], "testvm");
    assert_eq!(vm["spec"]["runStrategy"], "Halted");
    let (code, _) = s.call(Role::Admin, "GET", &format!("{SUB}/nope/expand-spec"), None);
    assert_eq!(code, 404);

    let expand = "/apis/subresources.kubevirt.io/v1/namespaces/default/expand-vm-spec";
    let vm = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":{"name":"x"},"spec":{"template":{"spec":{}}}}"#;
    let (code, body) = s.call(Role::Admin, "PUT", expand, Some(vm));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["metadata"]["name"],
        "x"
    );
    let other = vm.replace(r#""name":"x""#, r#""name":"x","namespace":"other""#);
    let (code, body) = s.call(Role::Admin, "PUT", expand, Some(&other));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("VM namespace must be empty or default"),
        "{body}"
    );
    let (code, body) = s.call(Role::Admin, "PUT", expand, Some(r#"{"kind":"Pod"}"#));
    assert_eq!(code, 400, "{body}");
    let typed = vm.replace(
        r#""spec":{"template""#,
        r#""spec":{"instancetype":{"name":"u1.small"},"template""#,
    );
    let (code, body) = s.call(Role::Admin, "PUT", expand, Some(&typed));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.instancetype"), "{body}");
}

#[test]
fn migrate_checks_the_vmi_then_creates_a_migration() {
    let s = Server::start();
    s.create_vm("mig", "Manual");
    let (code, body) = s.put("mig", "migrate", None);
    assert_eq!(code, 404, "{body}");
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        st["message"],
        "virtualmachineinstance.kubevirt.io \"mig\" not found"
    );

    s.create_vmi("mig", "Scheduling");
    conflict(s.put("mig", "migrate", None), "VM is not running");

    // The node agent's LiveMigratable=False is the reason given.
    s.set_vmi_status(
        "mig",
        json!({"phase": "Running", "conditions": [{"type": "LiveMigratable", "status": "False",
            "reason": "DisksNotLiveMigratable", "message": "cannot migrate VMI with non-shared HostDisk"}]}),
    );
    conflict(
        s.put("mig", "migrate", None),
        "Cannot migrate VMI, Reason: DisksNotLiveMigratable, Message: cannot migrate VMI with non-shared HostDisk",
    );

    s.set_vmi_status(
        "mig",
        json!({"phase": "Running", "conditions": [{"type": "LiveMigratable", "status": "True"}]}),
    );
    // Readers may not migrate; a bad body is a 400; a dry run stores nothing.
    let (code, body) = s.call(Role::ReadOnly, "PUT", &format!("{SUB}/mig/migrate"), None);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("cannot update resource \\\"virtualmachines/migrate\\\""),
        "{body}"
    );
    let (code, body) = s.put("mig", "migrate", Some(r#"{"addedNodeSelector": 3}"#));
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("Can not unmarshal Request body to struct"),
        "{body}"
    );
    let (code, body) = s.put("mig", "migrate", Some(r#"{"dryRun":["All"]}"#));
    assert_eq!((code, body.as_str()), (202, ""));
    assert!(s.migrations().is_empty());

    let (code, body) = s.put("mig", "migrate", Some("addedNodeSelector:\n  zone: b\n"));
    assert_eq!((code, body.as_str()), (202, ""));
    let items = s.migrations();
    assert_eq!(items.len(), 1, "{items:?}");
    let m = &items[0];
    let name = m["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("kubevirt-migrate-vm-"), "{name}");
    assert_eq!(m["metadata"]["generateName"], "kubevirt-migrate-vm-");
    assert_eq!(
        m["metadata"]["labels"],
        json!({"kubevirt.io/vmi-name": "mig"})
    );
    assert_eq!(
        m["metadata"]["finalizers"],
        json!(["kubevirt.io/migrationJobFinalize"])
    );
    assert_eq!(
        m["spec"],
        json!({"vmiName": "mig", "addedNodeSelector": {"zone": "b"}})
    );
    for field in ["uid", "resourceVersion", "creationTimestamp"] {
        assert!(m["metadata"][field].is_string(), "{field}: {m}");
    }

    // One migration at a time: even before the controller gave it a phase.
    let uid = m["metadata"]["uid"].as_str().unwrap();
    conflict(
        s.put("mig", "migrate", None),
        &format!(
            "in-flight migration detected. Active migration job ({uid}) is currently already in progress for VMI mig."
        ),
    );

    // kubectl shows the migration's phase and VMI.
    s.set_migration_phase(&name, "Running");
    let table = s.ok(&["get", "vmim"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "VMI"], "{table}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row, [name.as_str(), "Running", "mig"], "{table}");

    // Once it is over, the VMI may move again.
    s.set_migration_phase(&name, "Succeeded");
    assert_eq!(s.put("mig", "migrate", None).0, 202);
    assert_eq!(s.migrations().len(), 2);
}

#[test]
fn creating_a_migration_runs_kubevirts_admission() {
    let s = Server::start();
    let vmim = |vmi: &str| {
        json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
               "metadata": {"name": format!("m-{vmi}")}, "spec": {"vmiName": vmi}})
        .to_string()
    };
    let refused = |vmi: &str, code: u16, why: &str| {
        let (got, body) = s.call(Role::Admin, "POST", VMIMS, Some(&vmim(vmi)));
        assert_eq!(got, code, "{body}");
        let st: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            st["message"],
            format!(
                "admission webhook \"migration-create-validator.kubevirt.io\" denied the request: {why}"
            ),
        );
    };
    refused("ghost", 422, "the VMI \"default/ghost\" does not exist");
    s.create_vmi("done", "Succeeded");
    refused("done", 422, "Cannot migrate VMI in finalized state.");
    // No LiveMigratable condition yet: the spec is judged (passt on the pod network).
    let bridged = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "bridged"},
        "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "passt": {}}]},
                            "resources": {"requests": {"memory": "64Mi"}}},
                 "networks": [{"name": "default", "pod": {}}]},
        "status": {"phase": "Running"},
    });
    let (code, body) = s.call(Role::Admin, "POST", VMIS, Some(&bridged.to_string()));
    assert_eq!(code, 201, "{body}");
    refused(
        "bridged",
        422,
        "Cannot migrate VMI, Reason: InterfaceNotLiveMigratable, Message: cannot migrate VMI which does not use masquerade or a migratable plugin to connect to the pod network",
    );

    // kubectl create -f: refused with the message, then accepted once the VMI exists; a
    // server-side dry run stores nothing.
    let file = s.dir.path().join("vmim.json");
    std::fs::write(&file, vmim("vm1")).unwrap();
    let file = file.to_str().unwrap();
    let err = s.fails(&["create", "-f", file]);
    assert!(
        err.contains("the VMI \"default/vm1\" does not exist"),
        "{err}"
    );
    s.create_vmi("vm1", "Scheduled");
    s.ok(&["create", "-f", file, "--dry-run=server"]);
    assert!(s.migrations().is_empty());
    s.ok(&["create", "-f", file]);
    let m = s.get(&format!("{VMIMS}/m-vm1"));
    assert_eq!(m["metadata"]["labels"]["kubevirt.io/vmi-name"], "vm1");
    assert_eq!(
        m["metadata"]["finalizers"],
        json!(["kubevirt.io/migrationJobFinalize"])
    );
    let uid = m["metadata"]["uid"].as_str().unwrap().to_string();
    let second = vmim("vm1").replace("m-vm1", "m-vm1-again");
    let (code, body) = s.call(Role::Admin, "POST", VMIMS, Some(&second));
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains(&format!(
            "in-flight migration detected. Active migration job ({uid}) is currently already in progress for VMI vm1."
        )),
        "{body}"
    );
    // kubectl patch: the spec is KubeVirt's to keep, and so is the selector label in flight.
    let err = s.fails(&[
        "patch",
        "vmim",
        "m-vm1",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"vmiName":"other"}}"#,
    ]);
    assert!(
        err.contains("\"m-vm1\" is invalid: : update of Migration object's spec is restricted"),
        "{err}"
    );
    let err = s.fails(&["label", "vmim", "m-vm1", "kubevirt.io/vmi-name-"]);
    assert!(
        err.contains("selector label can't be removed from an in-flight migration"),
        "{err}"
    );
    s.ok(&["label", "vmim", "m-vm1", "team=a"]);
    let mut moved = s.get(&format!("{VMIMS}/m-vm1"));
    moved["spec"]["vmiName"] = json!("other");
    let (code, body) = s.call(
        Role::Admin,
        "PUT",
        &format!("{VMIMS}/m-vm1"),
        Some(&moved.to_string()),
    );
    assert_eq!(code, 422, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["message"],
        "admission webhook \"migration-update-validator.kubevirt.io\" denied the request: update of Migration object's spec is restricted"
    );
    // A missing vmiName is still the schema's 422.
    let (code, body) = s.call(
        Role::Admin,
        "POST",
        VMIMS,
        Some(r#"{"metadata":{"name":"x"},"spec":{}}"#),
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.vmiName"), "{body}");
}
