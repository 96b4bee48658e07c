//! The scenarios, and what they share: the VM they start and the way they clean up after it.

pub mod api;
pub mod burst;
pub mod control_plane;
pub mod idle;
pub mod migration;
pub mod overhead;
pub mod start_latency;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use serde_json::json;

use crate::plane::{Guest, Paths, Server, until};
use crate::qemu::MEMORY_MIB;

/// What every scenario gets.
pub struct Ctx {
    pub paths: Paths,
    pub accel: String,
    pub quick: bool,
    /// The demo guest (for scenarios that boot real VMs).
    pub guest: Option<Guest>,
    /// How many VMIs control-plane creates.
    pub control_plane_vmis: usize,
}

impl Ctx {
    pub fn guest(&self) -> Result<&Guest> {
        self.guest.as_ref().context("the demo guest was not built")
    }
}

pub const NAMESPACE: &str = "default";

/// The benchmark VM: the demo guest's containerDisk, 1 vCPU, the bare QEMU's memory, the
/// default pod network (masquerade), no grace period (so cleaning up is quick).
pub fn vm(name: &str, image: &str) -> Result<VirtualMachine> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "metadata": {"labels": {"kuvirt.io/bench": "true"}},
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "domain": {
                        "devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
                        // A small CPU request: 50 or 100 VMs must fit a 2-core node (KubeVirt's
                        // default, 100m per vCPU, would place 20), and CPU is not measured here.
                        "resources": {"requests": {"memory": format!("{MEMORY_MIB}Mi"), "cpu": "10m"}},
                    },
                    "volumes": [{"name": "containerdisk", "containerDisk": {"image": image}}],
                },
            },
        },
    }))?)
}

/// Creates the VM `name` (it starts at once: runStrategy Always).
pub async fn create_vm(client: &kube::Client, name: &str, image: &str) -> Result<()> {
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), NAMESPACE);
    vms.create(&PostParams::default(), &vm(name, image)?)
        .await
        .with_context(|| format!("creating VM {name}"))?;
    Ok(())
}

/// Deletes every VM and waits until no VMI, no pod and no launcher is left.
pub async fn clean(server: &Server) -> Result<()> {
    let vms: Api<VirtualMachine> = Api::namespaced(server.client.clone(), NAMESPACE);
    for vm in vms.list(&ListParams::default()).await?.items {
        if let Some(n) = vm.metadata.name.as_deref() {
            let _ = vms.delete(n, &DeleteParams::default()).await;
        }
    }
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(server.client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(server.client.clone(), NAMESPACE);
    let pid = server.pid();
    until(
        "VMs, pods and launchers gone",
        Duration::from_secs(300),
        Duration::from_millis(50),
        async || {
            let lp = ListParams::default();
            let none = vms.list(&lp).await.ok()?.items.is_empty()
                && vmis.list(&lp).await.ok()?.items.is_empty()
                && pods.list(&lp).await.ok()?.items.is_empty();
            let tree = crate::mem::vm_tree(pid);
            (none && tree.launchers.is_empty() && tree.qemus.is_empty()).then_some(())
        },
    )
    .await
}

/// The directory of the VMI `name`'s launcher (the newest, if several).
pub fn vm_dir(state: &Path, name: &str) -> Option<PathBuf> {
    let prefix = format!("{name}-");
    let mut dirs: Vec<_> = std::fs::read_dir(state.join("vms").join(NAMESPACE))
        .ok()?
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    dirs.sort_by_key(|d| d.metadata().and_then(|m| m.modified()).ok());
    dirs.last().map(|d| d.path())
}

/// Whether the guest of VMI `name` has printed `marker` on its console.
pub fn guest_said(state: &Path, name: &str, marker: &str) -> bool {
    vm_dir(state, name)
        .and_then(|d| std::fs::read(d.join("serial.log")).ok())
        .is_some_and(|b| String::from_utf8_lossy(&b).contains(marker))
}

/// Milliseconds of a duration.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// MiB of KiB.
pub fn mib(kib: f64) -> f64 {
    kib / 1024.0
}
