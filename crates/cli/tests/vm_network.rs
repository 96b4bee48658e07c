//! The pod network as the guest sees it, through `kuvirt server` (one node, its own pod
//! network): masquerade (the guest leases 10.0.2.2 from our DHCP server, the host reaches a
//! declared port at the pod IP and is refused on another, the guest reaches a host service
//! through NAT and is seen as the pod IP; dhcpOptions reach its DHCP client) and bridge (the guest leases the pod IP itself, with
//! the pod's gateway and DNS, and the host reaches its HTTP server there). What is asserted is
//! what the guest prints on its console and what answers on the wire.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::net::{http_get, vm};
use common::plane::{Plane, ServerProc, halt, serial_log, until};
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::Api;
use kube::api::PostParams;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};
use kuvirt_handler::sandbox::ipam::ipv6_of;

const BOOT: Duration = Duration::from_secs(120);

/// The guest's console line starting with `prefix`, once it is there.
async fn guest_line(state: &std::path::Path, name: &str, prefix: &str) -> String {
    let prefix = format!("kuvirt-guest: {prefix}");
    until(&format!("{name}: {prefix}"), BOOT, async || {
        serial_log(state, "default", name)
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find(|l| l.starts_with(&prefix))
            .map(str::to_owned)
    })
    .await
}

/// The VMI's pod-network interface once it runs: (ipAddress, mac).
async fn interface(vmis: &Api<VirtualMachineInstance>, name: &str) -> (Ipv4Addr, String) {
    until(&format!("{name}'s interface"), BOOT, async || {
        let vmi = vmis.get(name).await.ok()?;
        let i = vmi.status?.interfaces.into_iter().next()?;
        Some((i.ip_address?.parse().ok()?, i.mac?))
    })
    .await
}

/// One `kuvirt server` on a pod network of its own, the APIs the tests use, and the node's
/// pod CIDR gateway.
struct Env {
    plane: Plane,
    _server: ServerProc,
    client: kube::Client,
    vms: Api<VirtualMachine>,
    vmis: Api<VirtualMachineInstance>,
    gateway: Ipv4Addr,
}

impl Env {
    async fn start() -> Env {
        let plane = Plane::new();
        let server = plane.spawn();
        let client = plane.client().await;
        let gateway = node_gateway(client.clone(), &plane.node).await;
        Env {
            vms: Api::namespaced(client.clone(), "default"),
            vmis: Api::namespaced(client.clone(), "default"),
            plane,
            _server: server,
            client,
            gateway,
        }
    }
}

/// The node's pod CIDR gateway (the node bridge's address), once the controller assigned it.
async fn node_gateway(client: kube::Client, node: &str) -> Ipv4Addr {
    let nodes: Api<Node> = Api::all(client);
    until("the node's pod CIDR", Duration::from_secs(30), async || {
        let cidr = nodes.get(node).await.ok()?.spec?.pod_cidr?;
        let net: Ipv4Addr = cidr.split('/').next()?.parse().ok()?;
        Some(Ipv4Addr::from(u32::from(net) + 1))
    })
    .await
}

/// The pod's resolv.conf name servers (the sandbox writes it from the host's).
fn pod_dns() -> String {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// An HTTP server on the host answering every request with an OpenStack meta_data.json whose
/// hostname is `hostname`, recording who asked.
fn host_service(hostname: &str) -> (u16, Arc<Mutex<Vec<SocketAddr>>>) {
    host_service_on(std::net::IpAddr::V4(Ipv4Addr::UNSPECIFIED), hostname)
}

/// [`host_service`] on `addr` (`::` for IPv6 clients).
fn host_service_on(addr: std::net::IpAddr, hostname: &str) -> (u16, Arc<Mutex<Vec<SocketAddr>>>) {
    // Any address: the node bridge comes up with the first pod.
    let listener = TcpListener::bind((addr, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let body = format!("{{\"hostname\": \"{hostname}\"}}");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            if let Ok(peer) = c.peer_addr() {
                seen.lock().unwrap().push(peer);
            }
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 2048];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masquerade_nat_declared_ports_and_dhcp() {
    let e = Env::start().await;
    let (vms, vmis, state, gateway) = (&e.vms, &e.vmis, e.plane.state.path(), e.gateway);
    let (port, peers) = host_service("seen-through-nat");

    let spec = vm(
        "masq",
        serde_json::json!({"masquerade": {}, "ports": [{"name": "http", "port": 80}],
                           "dhcpOptions": {"bootFileName": "pxelinux.0", "tftpServerName": "192.0.2.69",
                                           "ntpServers": ["192.0.2.123"],
                                           "privateOptions": [{"option": 240, "value": "extra"}]}}),
        &format!("kuvirt.metadata_url=http://{gateway}:{port}"),
    );
    vms.create(&PostParams::default(), &spec).await.unwrap();
    let (pod_ip, mac) = interface(vmis, "masq").await;
    assert!(
        pod_ip.to_string().starts_with(&e.plane.net.prefix()),
        "{pod_ip}"
    );

    // Our DHCP server: KubeVirt's masquerade addresses, the pod's DNS, the VMI's MAC.
    let lease = guest_line(state, "masq", "dhcp iface=eth0").await;
    let want = format!(
        "kuvirt-guest: dhcp iface=eth0 ip=10.0.2.2/24 gw=10.0.2.1 dns={}",
        pod_dns()
    );
    assert!(lease.starts_with(&want), "{lease}\nwanted {want}");
    assert!(lease.contains(" hostname=masq "), "{lease}");
    // dhcpOptions (PXE boot, NTP) reach the guest's DHCP client.
    assert!(
        lease.contains(" boot=pxelinux.0 tftp=192.0.2.69 siaddr=192.0.2.69 ntp=192.0.2.123 "),
        "{lease}"
    );
    assert!(lease.ends_with(&format!("mac={mac}")), "{lease}");

    // Out: the guest fetched from the host, which saw the pod IP (SNAT).
    assert_eq!(
        guest_line(state, "masq", "metadata").await,
        "kuvirt-guest: metadata-hostname=seen-through-nat"
    );
    let seen: Vec<_> = peers.lock().unwrap().iter().map(|p| p.ip()).collect();
    assert_eq!(seen, vec![std::net::IpAddr::V4(pod_ip)]);

    // In: the declared port reaches the guest's httpd; an undeclared one is refused by the pod.
    guest_line(state, "masq", "ready").await;
    let body = until(
        "the guest's HTTP answer",
        Duration::from_secs(30),
        async || http_get(SocketAddr::from((pod_ip, 80))).ok(),
    )
    .await;
    assert!(body.starts_with("kuvirt-guest "), "{body}");
    let refused =
        TcpStream::connect_timeout(&SocketAddr::from((pod_ip, 22)), Duration::from_secs(5))
            .map(drop)
            .map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));

    halt(vms, &["masq"], state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_hands_the_pod_ip_to_the_guest() {
    let e = Env::start().await;
    let (vms, vmis, state, gateway) = (&e.vms, &e.vmis, e.plane.state.path(), e.gateway);

    vms.create(
        &PostParams::default(),
        &vm("br", serde_json::json!({"bridge": {}}), ""),
    )
    .await
    .unwrap();
    let (pod_ip, mac) = interface(vmis, "br").await;

    // The guest leased exactly the pod IP, the pod's gateway and DNS, from our DHCP server.
    let lease = guest_line(state, "br", "dhcp iface=eth0").await;
    let want = format!(
        "kuvirt-guest: dhcp iface=eth0 ip={pod_ip}/24 gw={gateway} dns={}",
        pod_dns()
    );
    assert!(lease.starts_with(&want), "{lease}\nwanted {want}");
    assert!(lease.contains(" hostname=br "), "{lease}");
    assert!(lease.ends_with(&format!("mac={mac}")), "{lease}");

    // The host reaches the guest's own HTTP server at the pod IP, on any port it serves.
    guest_line(state, "br", "ready").await;
    let body = until(
        "the guest's HTTP answer",
        Duration::from_secs(30),
        async || http_get(SocketAddr::from((pod_ip, 80))).ok(),
    )
    .await;
    assert!(body.starts_with("kuvirt-guest "), "{body}");

    // A second VM on the pod network reaches it there too (the guest prints what it fetched).
    let url = format!("http://{pod_ip}/");
    vms.create(
        &PostParams::default(),
        &vm(
            "br2",
            serde_json::json!({"bridge": {}}),
            &format!("kuvirt.fetch={url}"),
        ),
    )
    .await
    .unwrap();
    let fetched = guest_line(state, "br2", "fetch ").await;
    assert!(
        fetched.starts_with(&format!("kuvirt-guest: fetch {url} -> kuvirt-guest ")),
        "{fetched}"
    );

    halt(vms, &["br", "br2"], state).await;
}

/// The guest's console lines starting with `prefix` so far.
fn guest_lines(state: &std::path::Path, name: &str, prefix: &str) -> Vec<String> {
    let prefix = format!("kuvirt-guest: {prefix}");
    serial_log(state, "default", name)
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_service_on_both_bindings_follows_the_vmi() {
    let e = Env::start().await;
    let (vms, state) = (&e.vms, e.plane.state.path());
    let secrets: Api<Secret> = Api::namespaced(e.client.clone(), "default");
    let first = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFirst first@kuvirt";
    let second = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecond second@kuvirt";
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
                "stringData": {"key1": first}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let with_keys = |name: &str, iface: serde_json::Value| {
        let mut v = vm(name, iface, "kuvirt.metadata=1");
        let spec = &mut v.spec.template.as_mut().unwrap().spec;
        spec.access_credentials = serde_json::from_value(serde_json::json!([
            {"sshPublicKey": {"source": {"secret": {"secretName": "keys"}},
                              "propagationMethod": {"qemuGuestAgent": {"users": ["root"]}}}}
        ]))
        .unwrap();
        spec.hostname = Some(format!("{name}-host"));
        v
    };
    for (name, iface) in [
        ("mdmasq", serde_json::json!({"masquerade": {}})),
        ("mdbridge", serde_json::json!({"bridge": {}})),
    ] {
        vms.create(&PostParams::default(), &with_keys(name, iface))
            .await
            .unwrap();
    }
    for name in ["mdmasq", "mdbridge"] {
        assert_eq!(
            guest_line(state, name, "metadata").await,
            format!("kuvirt-guest: metadata-hostname={name}-host")
        );
        assert_eq!(
            guest_line(state, name, "metadata-ssh-key=").await,
            format!("kuvirt-guest: metadata-ssh-key={first}")
        );
    }

    // A key added to the Secret reaches the running guests, which never restarted.
    secrets
        .patch(
            "keys",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"stringData": {"key2": second}})),
        )
        .await
        .unwrap();
    for name in ["mdmasq", "mdbridge"] {
        let want = format!("kuvirt-guest: metadata-ssh-key={second}");
        until(&format!("{name}: the new key"), BOOT, async || {
            guest_lines(state, name, "metadata-ssh-key=")
                .contains(&want)
                .then_some(())
        })
        .await;
        assert_eq!(guest_lines(state, name, "booted").len(), 1);
    }

    halt(vms, &["mdmasq", "mdbridge"], state).await;
}

/// Sets the VM's run strategy.
async fn run_strategy(vms: &Api<VirtualMachine>, name: &str, strategy: &str) {
    vms.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"spec": {"runStrategy": strategy}})),
    )
    .await
    .unwrap();
}

/// The VM's sticky IP (`kuvirt.io/ip-lease`), once it has one.
async fn sticky_ip(vms: &Api<VirtualMachine>, name: &str) -> Ipv4Addr {
    until(&format!("{name}'s kuvirt.io/ip-lease"), BOOT, async || {
        vms.get(name)
            .await
            .ok()?
            .metadata
            .annotations?
            .get("kuvirt.io/ip-lease")?
            .parse()
            .ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_keeps_its_ip_and_a_requested_ip_is_honoured_or_refused() {
    let e = Env::start().await;
    let (vms, vmis, state, gateway) = (&e.vms, &e.vmis, e.plane.state.path(), e.gateway);

    // A VM's first address is written on the VM (the lease in the store).
    vms.create(
        &PostParams::default(),
        &vm("sticky", serde_json::json!({"bridge": {}}), ""),
    )
    .await
    .unwrap();
    let (first, _) = interface(vmis, "sticky").await;
    assert_eq!(sticky_ip(vms, "sticky").await, first);
    guest_line(state, "sticky", "ready").await;
    let first_uid = vmis.get("sticky").await.unwrap().metadata.uid;

    // A VM asking for a fixed address of the node's pod CIDR gets it; the guest leases it.
    let wanted = Ipv4Addr::from(u32::from(gateway) + 100);
    let mut fixed = vm("fixed", serde_json::json!({"bridge": {}}), "");
    fixed.metadata.annotations = Some([("kuvirt.io/ip".to_owned(), wanted.to_string())].into());
    vms.create(&PostParams::default(), &fixed).await.unwrap();
    assert_eq!(interface(vmis, "fixed").await.0, wanted);
    let lease = guest_line(state, "fixed", "dhcp iface=eth0").await;
    assert!(lease.contains(&format!(" ip={wanted}/24 ")), "{lease}");

    // Stopped, the sticky address stays the VM's: a new VM gets another one...
    run_strategy(vms, "sticky", "Halted").await;
    until("sticky's VMI gone", BOOT, async || {
        vmis.get_opt("sticky")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    vms.create(
        &PostParams::default(),
        &vm("other", serde_json::json!({"bridge": {}}), ""),
    )
    .await
    .unwrap();
    let (other, _) = interface(vmis, "other").await;
    assert_ne!(other, first);
    // ...and started again, the VM has it back (a new VMI, the same lease in the guest).
    run_strategy(vms, "sticky", "Always").await;
    let (again, _) = until("sticky's new VMI", BOOT, async || {
        let v = vmis.get_opt("sticky").await.ok()??;
        (v.metadata.uid != first_uid).then_some(())?;
        let i = v.status?.interfaces.into_iter().next()?;
        Some((i.ip_address?.parse::<Ipv4Addr>().ok()?, ()))
    })
    .await;
    assert_eq!(again, first);
    until("the restarted guest's lease", BOOT, async || {
        let log = serial_log(state, "default", "sticky");
        (log.matches(&format!("kuvirt-guest: dhcp iface=eth0 ip={first}/24 "))
            .count()
            == 2)
            .then_some(())
    })
    .await;

    // An address another VM holds is refused with the reason.
    let mut taken = vm("taken", serde_json::json!({"bridge": {}}), "");
    // Once: the failed VMI stays to be looked at (Always would start it again).
    taken.spec.run_strategy = Some(kuvirt_api::v1::RunStrategy::Once);
    taken.metadata.annotations = Some([("kuvirt.io/ip".to_owned(), first.to_string())].into());
    vms.create(&PostParams::default(), &taken).await.unwrap();
    let reason = until("taken's refusal", BOOT, async || {
        let st = vmis.get_opt("taken").await.ok()??.status?;
        (st.phase?.as_str() == "Failed").then_some(())?;
        let c = st
            .conditions
            .into_iter()
            .find(|c| c.type_.as_str() == "Ready")?;
        Some((st.reason?, c.message?))
    })
    .await;
    assert_eq!(reason.0, "PodIPUnavailable");
    assert!(
        reason
            .1
            .contains(&format!("the requested pod IP {first} cannot be had")),
        "{}",
        reason.1
    );

    run_strategy(vms, "taken", "Halted").await;
    halt(vms, &["sticky", "fixed", "other"], state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masquerade_ipv6_by_router_advertisements_and_dhcpv6() {
    let e = Env::start().await;
    let (vms, vmis, state) = (&e.vms, &e.vmis, e.plane.state.path());
    let gateway6 = ipv6_of(e.gateway);
    let (port, peers) =
        host_service_on(std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), "v6");
    let url = format!("http://[{gateway6}]:{port}/");
    let spec = vm(
        "six",
        serde_json::json!({"masquerade": {}, "ports": [{"name": "http", "port": 80}]}),
        &format!("kuvirt.dhcp6=1 kuvirt.fetch={url}"),
    );
    vms.create(&PostParams::default(), &spec).await.unwrap();
    let (pod_ip, _) = interface(vmis, "six").await;
    let pod6 = ipv6_of(pod_ip);
    let listed = vmis.get("six").await.unwrap().status.unwrap().interfaces[0]
        .ip_addresses
        .clone();
    assert_eq!(listed, vec![pod_ip.to_string(), pod6.to_string()]);

    // The guest configured KubeVirt's IPv6 address from our DHCPv6 server, its default route
    // from our router advertisements.
    let lease6 = guest_line(state, "six", "dhcp6 ").await;
    assert!(
        lease6.starts_with("kuvirt-guest: dhcp6 iface=eth0 ip=fd10:0:2::2/120 gw=fe80::"),
        "{lease6}"
    );
    // Out over IPv6: the host saw the pod's IPv6 address.
    let fetched = guest_line(state, "six", "fetch ").await;
    assert!(fetched.contains(" -> {"), "{fetched}");
    let seen: Vec<_> = peers.lock().unwrap().iter().map(|p| p.ip()).collect();
    assert_eq!(seen, vec![std::net::IpAddr::V6(pod6)]);
    // In over IPv6: the declared port reaches the guest, another is refused.
    guest_line(state, "six", "ready").await;
    let body = until(
        "the guest's HTTP answer over IPv6",
        Duration::from_secs(30),
        async || http_get(SocketAddr::from((pod6, 80))).ok(),
    )
    .await;
    assert!(body.starts_with("kuvirt-guest "), "{body}");
    let refused = TcpStream::connect_timeout(&SocketAddr::from((pod6, 22)), Duration::from_secs(5))
        .map(drop)
        .map_err(|e| e.kind());
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionRefused));

    halt(vms, &["six"], state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passt_hands_the_pod_ip_to_the_guest_and_forwards_declared_ports() {
    let e = Env::start().await;
    let (vms, vmis, state, gateway) = (&e.vms, &e.vmis, e.plane.state.path(), e.gateway);

    let spec = vm(
        "pt",
        serde_json::json!({"passt": {}, "ports": [{"name": "http", "port": 80}]}),
        "kuvirt.metadata=1",
    );
    vms.create(&PostParams::default(), &spec).await.unwrap();
    let (pod_ip, _) = interface(vmis, "pt").await;

    // passt's own DHCP: the pod's address and gateway.
    let lease = guest_line(state, "pt", "dhcp iface=eth0").await;
    assert!(
        lease.starts_with(&format!(
            "kuvirt-guest: dhcp iface=eth0 ip={pod_ip}/24 gw={gateway} "
        )),
        "{lease}"
    );
    // The metadata service answers through passt.
    assert_eq!(
        guest_line(state, "pt", "metadata").await,
        "kuvirt-guest: metadata-hostname=pt"
    );
    // The declared port of the pod IP reaches the guest.
    guest_line(state, "pt", "ready").await;
    let body = until(
        "the guest's HTTP answer",
        Duration::from_secs(30),
        async || http_get(SocketAddr::from((pod_ip, 80))).ok(),
    )
    .await;
    assert!(body.starts_with("kuvirt-guest "), "{body}");

    halt(vms, &["pt"], state).await;
}
