//! `kuvirt migrate` and `kuvirt migrate-cancel` against the API server alone (in-process, no
//! controllers or nodes: the VMI's Running phase is written directly): virtctl's lines, dry
//! runs, the server's refusals as one line, and the migration they create and delete.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kuvirt_api::v1::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};
use kuvirt_apiserver::server::{Running, ServerConfig, start};
use serde_json::json;

const KUVIRT: &str = env!("CARGO_BIN_EXE_kuvirt");

struct Plane {
    running: Option<Running>,
    dir: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Plane {
    fn start() -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let running = rt
            .block_on(start(ServerConfig {
                data_dir: dir.path().to_path_buf(),
                listen: "127.0.0.1:0".parse().unwrap(),
                extra_hosts: vec![],
                history: Duration::from_secs(300),
            }))
            .unwrap();
        Plane {
            running: Some(running),
            dir,
            rt,
        }
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    fn client(&self) -> kube::Client {
        self.rt.block_on(async {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let kc = Kubeconfig::read_from(self.kubeconfig()).unwrap();
            let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .unwrap();
            kube::Client::try_from(cfg).unwrap()
        })
    }

    fn kuvirt(&self, args: &[&str]) -> Output {
        Command::new(KUVIRT)
            .args(args)
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    }

    /// Runs kuvirt, asserts success, returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.kuvirt(args);
        assert!(
            out.status.success(),
            "kuvirt {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kuvirt, asserts exit code 1 with one stderr line, returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.kuvirt(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "kuvirt {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line expected:\n{stderr}");
        stderr.trim_end().to_string()
    }

    fn migrations(&self) -> Vec<VirtualMachineInstanceMigration> {
        let api: Api<VirtualMachineInstanceMigration> = Api::default_namespaced(self.client());
        self.rt
            .block_on(api.list(&ListParams::default()))
            .unwrap()
            .items
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
        }
    }
}

/// A VM and its VMI, Running (as its node would report it) with masquerade on the pod network.
fn running_vm(p: &Plane, name: &str) {
    let client = p.client();
    let vm: VirtualMachine = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Manual",
                 "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}},
    }))
    .unwrap();
    let vmi: VirtualMachineInstance = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": name},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}},
        "status": {"phase": "Running"},
    }))
    .unwrap();
    p.rt.block_on(async {
        let vms: Api<VirtualMachine> = Api::default_namespaced(client.clone());
        vms.create(&PostParams::default(), &vm).await.unwrap();
        let vmis: Api<VirtualMachineInstance> = Api::default_namespaced(client);
        vmis.create(&PostParams::default(), &vmi).await.unwrap();
    });
}

#[test]
fn migrate_and_cancel_print_virtctls_lines() {
    let p = Plane::start();
    assert_eq!(
        p.fails(&["migrate", "nope"]),
        "Error from server (NotFound): virtualmachine.kubevirt.io \"nope\" not found"
    );
    running_vm(&p, "testvm");
    assert_eq!(
        p.fails(&["migrate-cancel", "testvm"]),
        "error: Found no migration to cancel for testvm"
    );
    assert_eq!(
        p.fails(&["migrate", "testvm", "--added-node-selector", "zone"]),
        "error: --added-node-selector: \"zone\" is not key=value"
    );

    assert_eq!(
        p.ok(&["migrate", "testvm", "--dry-run"]),
        "Dry Run execution\nVM testvm was scheduled to migrate\n"
    );
    assert!(p.migrations().is_empty());

    assert_eq!(
        p.ok(&[
            "migrate",
            "testvm",
            "--added-node-selector",
            "zone=b,disk=ssd"
        ]),
        "VM testvm was scheduled to migrate\n"
    );
    let ms = p.migrations();
    assert_eq!(ms.len(), 1);
    let m = &ms[0];
    assert_eq!(m.spec.vmi_name.as_deref(), Some("testvm"));
    assert_eq!(
        m.spec.added_node_selector,
        Some(
            [
                ("disk".to_string(), "ssd".to_string()),
                ("zone".into(), "b".into())
            ]
            .into_iter()
            .collect()
        )
    );
    let name = m.metadata.name.clone().unwrap();
    let uid = m.metadata.uid.clone().unwrap();

    let err = p.fails(&["migrate", "testvm"]);
    assert_eq!(
        err,
        format!(
            "Error from server (Conflict): Operation cannot be fulfilled on virtualmachine.kubevirt.io \"testvm\": in-flight migration detected. Active migration job ({uid}) is currently already in progress for VMI testvm."
        )
    );

    let table = p.ok(&["get", "vmim"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PHASE", "VMI"], "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with(&name), "{table}");
    assert!(table.lines().nth(1).unwrap().ends_with("testvm"), "{table}");

    assert_eq!(
        p.ok(&["migrate-cancel", "testvm", "--dry-run"]),
        "Dry Run execution\nVM testvm was scheduled to migrate-cancel\n"
    );
    assert!(p.migrations()[0].metadata.deletion_timestamp.is_none());
    assert_eq!(
        p.ok(&["migrate-cancel", "testvm"]),
        "VM testvm was scheduled to migrate-cancel\n"
    );
    // Its finalizer holds it until the migration controller has aborted it.
    let ms = p.migrations();
    assert_eq!(ms.len(), 1);
    assert!(ms[0].metadata.deletion_timestamp.is_some());
}
