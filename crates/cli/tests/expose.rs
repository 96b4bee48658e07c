//! `kuvirt expose vm --type NodePort` through `kuvirt server` (one node, its own pod network): the
//! Service gets a nodePort, `kuvirt expose` says where it answers, and the node agent forwards
//! that port to the guest's HTTP server behind the masquerade binding — at the node's InternalIP
//! and at its pod bridge address — until the Service is deleted.
//!
//! The bridge address is the one asserted strictly: it belongs to this test's pod network alone,
//! while the InternalIP is the host's, shared by every test server running at the same time.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::net::{http_get, vm};
use common::plane::{Plane, halt, serial_log, until};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kuvirt_api::VirtualMachine;

const BOOT: Duration = Duration::from_secs(120);

/// The node's pod bridge address and InternalIP, once it has a pod CIDR.
async fn node_addresses(client: kube::Client, node: &str) -> (Ipv4Addr, IpAddr) {
    let nodes: Api<Node> = Api::all(client);
    until("the node's pod CIDR", Duration::from_secs(30), async || {
        let n = nodes.get(node).await.ok()?;
        let cidr = n.spec?.pod_cidr?;
        let net: Ipv4Addr = cidr.split('/').next()?.parse().ok()?;
        let internal = n
            .status?
            .addresses?
            .into_iter()
            .find(|a| a.type_ == "InternalIP")?
            .address
            .parse()
            .ok()?;
        Some((Ipv4Addr::from(u32::from(net) + 1), internal))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_port_reaches_the_guest_until_the_service_goes() {
    let plane = Plane::new();
    let server = plane.spawn();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let state = plane.state.path();
    let (bridge, internal) = node_addresses(client, &plane.node).await;

    // Exposed while the VM is still starting: the endpoint appears when its pod runs.
    vms.create(
        &PostParams::default(),
        &vm(
            "webvm",
            serde_json::json!({"masquerade": {}, "ports": [{"name": "http", "port": 80}]}),
            "",
        ),
    )
    .await
    .unwrap();
    let out = plane.kuvirt(&[
        "expose",
        "vm",
        "webvm",
        "--port",
        "8080",
        "--target-port",
        "80",
        "--type",
        "NodePort",
        "--name",
        "web",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = svcs.get("web").await.unwrap();
    let port = &svc.spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.port, port.protocol.as_deref()), (8080, Some("TCP")));
    let node_port = u16::try_from(port.node_port.unwrap()).unwrap();
    assert!((30000..=32767).contains(&node_port), "{node_port}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "Service web successfully created for vm webvm; reachable at {internal}:{node_port}"
        )
    );

    // The guest's answer at the bridge address and, unless loopback, at the InternalIP.
    until("the guest's console", BOOT, async || {
        serial_log(state, "default", "webvm")
            .contains("kuvirt-guest: ready")
            .then_some(())
    })
    .await;
    let at_bridge = SocketAddr::from((bridge, node_port));
    let body = until("the guest through the nodePort", BOOT, async || {
        http_get(at_bridge).ok()
    })
    .await;
    assert!(body.starts_with("kuvirt-guest "), "{body}");
    if !internal.is_loopback() {
        let at_node = SocketAddr::from((internal, node_port));
        let body = until(
            "the guest at the InternalIP",
            Duration::from_secs(30),
            async || http_get(at_node).ok(),
        )
        .await;
        assert!(body.starts_with("kuvirt-guest "), "{body}");
    }

    // The Service gone, so is the forwarding: nothing on the host listens there.
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    until("the forwarding gone", Duration::from_secs(30), async || {
        let r = TcpStream::connect_timeout(&at_bridge, Duration::from_secs(2));
        matches!(r, Err(e) if e.kind() == ErrorKind::ConnectionRefused).then_some(())
    })
    .await;

    halt(&vms, &["webvm"], state).await;
    // The agent (killed with its server) leaves its table; this test's pod network goes.
    drop(server);
    let _ = Command::new("nft")
        .args([
            "delete",
            "table",
            "ip",
            &format!("{}_services", plane.net.name),
        ])
        .output();
}
