//! containerDisks from a registry through the whole path: the node agent pulls the image in the
//! node's network (a registry on the host's loopback, which the launcher's pod sandbox cannot
//! reach) and the launcher boots from the node's cache; an image that cannot be pulled fails the
//! VMI with ErrImagePull, which the VM shows (printableStatus and its Failure condition), then
//! ImagePullBackOff while it waits to retry.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::plane::{Plane, halt, serial_log, until};
use common::*;
use kube::Api;
use kube::api::PostParams;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

fn vm(name: &str, image: &str) -> VirtualMachine {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "128Mi"}}},
            "terminationGracePeriodSeconds": 10,
            "volumes": [{"name": "containerdisk", "containerDisk": {"image": image}}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_images_are_pulled_by_the_node_and_pull_errors_show() {
    let guest = demo_guest();
    let registry = Registry::start();
    let image = registry.push_demo(&guest);

    let plane = Plane::new();
    let _server = plane.spawn();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");

    vms.create(&PostParams::default(), &vm("pulled", &image))
        .await
        .unwrap();
    until(
        "the pulled guest booted",
        Duration::from_secs(120),
        async || {
            serial_log(plane.state.path(), "default", "pulled")
                .contains("kuvirt-guest: ready")
                .then_some(())
        },
    )
    .await;

    let missing = format!("{}/kuvirt/nothing-here:v1", registry.addr);
    vms.create(&PostParams::default(), &vm("missing", &missing))
        .await
        .unwrap();
    // The failed VMI is replaced after a backoff; the VM keeps the reason.
    let why = until("the VM says why", Duration::from_secs(60), async || {
        let s = vms.get("missing").await.ok()?.status?;
        let shown = matches!(
            s.printable_status?.as_str(),
            "ErrImagePull" | "ImagePullBackOff"
        );
        let cond = s
            .conditions
            .into_iter()
            .find(|c| c.type_.as_str() == "Failure")?;
        (shown && cond.reason.as_deref() == Some("ErrImagePull")).then_some(cond.message)
    })
    .await;
    let why = why.unwrap_or_default();
    assert!(
        why.contains("spec.volumes[0].containerDisk.image") && why.contains("nothing-here"),
        "{why}"
    );
    until("ImagePullBackOff", Duration::from_secs(30), async || {
        let s = vms.get("missing").await.ok()?.status?;
        (s.printable_status?.as_str() == "ImagePullBackOff").then_some(())
    })
    .await;
    assert!(vmis.get_opt("pulled").await.unwrap().is_some());

    halt(&vms, &["pulled", "missing"], plane.state.path()).await;
}
