//! Helpers for the pod-network tests: a VM that boots the demo guest's kernel with one pod
//! interface (so kernel arguments switch guest features on), and a plain HTTP GET.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use kuvirt_api::VirtualMachine;

use super::demo_guest;

/// A VM booting the demo guest's kernel (so the test can pass kernel arguments) with one pod
/// interface: `iface` is the interface's JSON (binding, ports, ...).
pub fn vm(name: &str, iface: serde_json::Value, kernel_args: &str) -> VirtualMachine {
    let guest = demo_guest();
    let mut iface = iface;
    iface["name"] = "default".into();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {
                "firmware": {"kernelBoot": {
                    "kernelArgs": format!("console=ttyS0 loglevel=1 {kernel_args}"),
                    "container": {"image": format!("oci:{}:kernel", guest.join("oci").display()),
                                  "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd.img"}}},
                "devices": {"interfaces": [iface]},
                "resources": {"requests": {"memory": "256Mi"}}},
            "networks": [{"name": "default", "pod": {}}],
            "terminationGracePeriodSeconds": 10}}}
    }))
    .unwrap()
}

/// `GET /` over plain TCP: the response body.
pub fn http_get(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: guest\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned())
}
