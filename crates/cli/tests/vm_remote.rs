//! The VMI subresources that reach into a running guest, through `kuvirt server` (API server →
//! node agent endpoint → launcher): the serial console as a websocket (`kuvirt console`), reset,
//! soft reboot, pause/unpause (the guest's heartbeat stops and resumes), VNC (an RFB 3.8
//! handshake and a framebuffer update through `kuvirt vnc --proxy-only`), screenshots (a PNG
//! that is not blank), guest OS info without an agent, and who may do what.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::plane::{Plane, serial_log, until};
use common::*;
use kube::Api;
use kube::api::PostParams;
use kuvirt_api::{VirtualMachine, VirtualMachineInstance};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn heartbeats(log: &str) -> usize {
    log.matches("kuvirt-guest: heartbeat").count()
}

/// A `kuvirt console` child whose output is collected.
struct ConsoleProc {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl ConsoleProc {
    fn start(plane: &Plane, name: &str) -> ConsoleProc {
        let mut child = Command::new(KUVIRT)
            .args(["console", name, "--kubeconfig"])
            .arg(plane.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let mut line = Vec::new();
                while r.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            });
        }
        ConsoleProc { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for ConsoleProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

/// RFB 3.8 as a viewer speaks it: version, security "None", ClientInit, then one full
/// framebuffer update request. Returns the framebuffer size and the update's rectangle count.
fn rfb_session(port: u16) -> (u16, u16, u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    assert_eq!(read_exact(&mut s, 12), b"RFB 003.008\n");
    s.write_all(b"RFB 003.008\n").unwrap();
    let n = read_exact(&mut s, 1)[0] as usize;
    assert!(n > 0, "the server refused the connection");
    let types = read_exact(&mut s, n);
    assert!(types.contains(&1), "no 'None' security type: {types:?}");
    s.write_all(&[1]).unwrap();
    assert_eq!(read_exact(&mut s, 4), [0, 0, 0, 0], "security result");
    s.write_all(&[1]).unwrap(); // ClientInit: shared
    let init = read_exact(&mut s, 24);
    let w = u16::from_be_bytes([init[0], init[1]]);
    let h = u16::from_be_bytes([init[2], init[3]]);
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    let _name = read_exact(&mut s, name_len);
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    s.write_all(&req).unwrap();
    // Skip anything before the update (QEMU may send SetColourMapEntries/Bell first: none of
    // those in 32-bit true colour).
    let head = read_exact(&mut s, 4);
    assert_eq!(
        head[0], 0,
        "expected a FramebufferUpdate, got type {}",
        head[0]
    );
    let rects = u16::from_be_bytes([head[2], head[3]]);
    (w, h, rects)
}

/// Decodes a PNG's pixels far enough to tell whether they are all the same: the IDAT stream,
/// inflated, minus each row's filter byte.
fn png_is_blank(png: &[u8]) -> bool {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let mut pos = 8;
    let mut idat = Vec::new();
    let (mut width, mut height, mut bpp) = (0usize, 0usize, 0usize);
    while pos + 8 <= png.len() {
        let len = u32::from_be_bytes(png[pos..pos + 4].try_into().unwrap()) as usize;
        let kind = &png[pos + 4..pos + 8];
        let data = &png[pos + 8..pos + 8 + len];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "bit depth");
                bpp = match data[9] {
                    2 => 3,
                    6 => 4,
                    c => panic!("colour type {c}"),
                };
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        pos += 12 + len;
    }
    assert!(width > 0 && height > 0, "no IHDR");
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .unwrap();
    let stride = width * bpp + 1;
    assert_eq!(raw.len(), stride * height, "IDAT size");
    // Undo the per-row filters (PNG spec §9) to get the pixels.
    let mut pixels = vec![0u8; width * bpp * height];
    let row_len = width * bpp;
    for y in 0..height {
        let filter = raw[y * stride];
        let src = &raw[y * stride + 1..(y + 1) * stride];
        for x in 0..row_len {
            let a = if x >= bpp {
                pixels[y * row_len + x - bpp]
            } else {
                0
            };
            let b = if y > 0 {
                pixels[(y - 1) * row_len + x]
            } else {
                0
            };
            let c = if x >= bpp && y > 0 {
                pixels[(y - 1) * row_len + x - bpp]
            } else {
                0
            };
            let predictor = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => ((u16::from(a) + u16::from(b)) / 2) as u8,
                4 => {
                    let p = i16::from(a) + i16::from(b) - i16::from(c);
                    let (pa, pb, pc) = (
                        (p - i16::from(a)).abs(),
                        (p - i16::from(b)).abs(),
                        (p - i16::from(c)).abs(),
                    );
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                f => panic!("filter {f}"),
            };
            pixels[y * row_len + x] = src[x].wrapping_add(predictor);
        }
    }
    let first = &pixels[..bpp];
    pixels.chunks(bpp).all(|p| p == first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_vnc_screenshot_pause_reset_through_the_api() {
    let guest = demo_guest();
    let plane = Plane::new();
    let _server = plane.spawn();
    let client = plane.client().await;
    let vms: Api<VirtualMachine> = Api::namespaced(client.clone(), "default");
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client, "default");
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "remote"},
        "spec": {"runStrategy": "Always", "template": {"spec": {
            "domain": {"devices": {"disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}]},
                       "resources": {"requests": {"memory": "256Mi"}}},
            "terminationGracePeriodSeconds": 30,
            "volumes": [{"name": "containerdisk",
                         "containerDisk": {"image": format!("oci:{}", guest.join("oci").display())}}]}}}
    }))
    .unwrap();
    vms.create(&PostParams::default(), &vm).await.unwrap();
    let state = plane.state.path();
    let log = || serial_log(state, "default", "remote");

    // Before it runs: the console waits (virtctl's --timeout), a screenshot is refused.
    let console = ConsoleProc::start(&plane, "remote");
    until("the guest's boot", Duration::from_secs(120), async || {
        log().contains("kuvirt-guest: ready").then_some(())
    })
    .await;
    until("VMI Running", Duration::from_secs(30), async || {
        let s = vmis.get("remote").await.ok()?.status?;
        (s.phase?.as_str() == "Running").then_some(())
    })
    .await;
    // kubectl shows where it runs and its address (the pod's, from the node's pod CIDR).
    let out = Command::new("kubectl")
        .args(["get", "vmi", "remote", "--no-headers"])
        .env("KUBECONFIG", plane.kubeconfig())
        .output()
        .unwrap();
    let row = String::from_utf8_lossy(&out.stdout).to_string();
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols.get(2), Some(&"Running"), "{row}");
    assert!(
        cols.get(3)
            .is_some_and(|ip| ip.starts_with(&plane.net.prefix())),
        "{row}"
    );
    assert_eq!(cols.get(4).copied(), Some(plane.node.as_str()), "{row}");
    // What virt-controller and virt-handler report besides the phase.
    let st = serde_json::to_value(vmis.get("remote").await.unwrap().status).unwrap();
    assert_eq!(
        st["activePods"].as_object().map(|m| m.len()),
        Some(1),
        "{st}"
    );
    assert_eq!(st["qosClass"], "Burstable", "{st}");
    assert_eq!(st["machine"]["type"], "q35", "{st}");
    assert_eq!(st["currentCPUTopology"]["sockets"], 1, "{st}");
    assert_eq!(st["memory"]["guestAtBoot"], "256Mi", "{st}");
    assert_eq!(st["runtimeUser"], 107, "{st}");
    let finalizers = vmis.get("remote").await.unwrap().metadata.finalizers;
    assert!(
        finalizers
            .unwrap_or_default()
            .contains(&"foregroundDeleteVirtualMachine".to_string()),
        "no VMI finalizer"
    );
    until(
        "the console attached",
        Duration::from_secs(60),
        async || {
            console
                .text()
                .contains("Successfully connected to remote console")
                .then_some(())
        },
    )
    .await;

    // Reset: the guest boots again, and the console shows it.
    let out = plane.kuvirt(&["reset", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("VMI remote was scheduled to reset"));
    until(
        "the guest's boot on the console",
        Duration::from_secs(120),
        async || {
            console
                .text()
                .contains("kuvirt-guest: booted")
                .then_some(())
        },
    )
    .await;
    until("ready after reset", Duration::from_secs(120), async || {
        (log().matches("kuvirt-guest: ready").count() >= 2).then_some(())
    })
    .await;

    // Pause: the heartbeat stops; unpause: it counts on.
    let out = plane.kuvirt(&["pause", "vm", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    until("VMI Paused", Duration::from_secs(30), async || {
        let s = vmis.get("remote").await.ok()?.status?;
        s.conditions
            .iter()
            .any(|c| c.type_.as_str() == "Paused" && c.status == "True")
            .then_some(())
    })
    .await;
    let out = plane.kuvirt(&["pause", "vmi", "remote"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("VMI is already paused"),
        "{}",
        text(&out)
    );
    let paused_at = heartbeats(&log());
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert_eq!(heartbeats(&log()), paused_at, "the guest ran while paused");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = plane.kuvirt(&["unpause", "vm", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    until("heartbeats again", Duration::from_secs(30), async || {
        (heartbeats(&log()) >= paused_at + 2).then_some(())
    })
    .await;
    let out = plane.kuvirt(&["unpause", "vmi", "remote"]);
    assert!(text(&out).contains("VMI is not paused"), "{}", text(&out));

    // VNC: a viewer's RFB 3.8 session through the local proxy gets a framebuffer update.
    let mut vnc = Command::new(KUVIRT)
        .args(["vnc", "remote", "--proxy-only", "--kubeconfig"])
        .arg(plane.kubeconfig())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(vnc.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let port: serde_json::Value = serde_json::from_str(first.trim()).unwrap();
    let port = u16::try_from(port["port"].as_u64().unwrap()).unwrap();
    let (w, h, rects) = tokio::task::spawn_blocking(move || rfb_session(port))
        .await
        .unwrap();
    assert!(w >= 320 && h >= 200, "framebuffer {w}x{h}");
    assert!(rects >= 1, "an update without rectangles");
    let _ = vnc.kill();
    let _ = vnc.wait();

    // A screenshot is a PNG with something on it (the firmware's and bootloader's text).
    let png_path = plane.data.path().join("shot.png");
    let out = plane.kuvirt(&[
        "vnc",
        "screenshot",
        "remote",
        "--file",
        png_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let png = std::fs::read(&png_path).unwrap();
    assert!(!png_is_blank(&png), "the screenshot is blank");

    // Soft reboot: ACPI to the guest, which reboots instead of powering off for good.
    let readies = log().matches("kuvirt-guest: ready").count();
    let out = plane.kuvirt(&["soft-reboot", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    until(
        "ready after the soft reboot",
        Duration::from_secs(120),
        async || (log().matches("kuvirt-guest: ready").count() > readies).then_some(()),
    )
    .await;
    assert_eq!(
        vmis.get("remote")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .unwrap()
            .as_str(),
        "Running"
    );

    // No guest agent: guestosinfo says so.
    let out = plane.kuvirt(&["guestosinfo", "remote"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("guest agent"), "{}", text(&out));

    // The read-only user may not reach into the VM.
    let viewer = plane.viewer_kubeconfig();
    for args in [
        &["console", "remote", "--timeout", "0"][..],
        &["pause", "vmi", "remote"][..],
        &["vnc", "screenshot", "remote", "--file", "/dev/null"][..],
    ] {
        let out = Command::new(KUVIRT)
            .args(args)
            .arg("--kubeconfig")
            .arg(&viewer)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let t = text(&out);
        assert!(t.contains("forbidden") && t.lines().count() == 1, "{t}");
    }

    // A VMI that does not exist.
    let out = plane.kuvirt(&["pause", "vmi", "nope"]);
    assert!(text(&out).contains("\"nope\" not found"), "{}", text(&out));

    // Stopping ends the console stream: `kuvirt console` exits on its own.
    let out = plane.kuvirt(&["stop", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut console = console;
    until("the console to end", Duration::from_secs(90), async || {
        console.child.try_wait().ok()?.map(|_| ())
    })
    .await;
    assert!(
        console.text().contains("kuvirt-guest: poweroff"),
        "{}",
        console.text()
    );
    // Its finalizer keeps the VMI until the VM is down: gone means QEMU is gone.
    until("the VMI gone", Duration::from_secs(60), async || {
        vmis.get_opt("remote").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(qemu_under(state).is_empty(), "the VMI went before its VM");
    until("VM Stopped", Duration::from_secs(30), async || {
        let s = vms.get("remote").await.ok()?.status?;
        (s.printable_status?.as_str() == "Stopped").then_some(())
    })
    .await;

    // start: a new VMI boots; restart: another one replaces it.
    let boots = |l: &str| l.matches("kuvirt-guest: booted").count();
    let before = boots(&log());
    let out = plane.kuvirt(&["start", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    let first = until("a new VMI running", Duration::from_secs(120), async || {
        let v = vmis.get_opt("remote").await.ok()??;
        (v.status?.phase?.as_str() == "Running").then_some(v.metadata.uid?)
    })
    .await;
    until(
        "the new guest booted",
        Duration::from_secs(120),
        async || (boots(&log()) > before).then_some(()),
    )
    .await;
    let out = plane.kuvirt(&["restart", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    until(
        "a VMI with a new UID running",
        Duration::from_secs(120),
        async || {
            let v = vmis.get_opt("remote").await.ok()??;
            let uid = v.metadata.uid?;
            (uid != first && v.status?.phase?.as_str() == "Running").then_some(())
        },
    )
    .await;
    until(
        "the restarted guest booted",
        Duration::from_secs(120),
        async || (boots(&log()) > before + 1).then_some(()),
    )
    .await;
    let out = plane.kuvirt(&["stop", "remote"]);
    assert!(out.status.success(), "{}", text(&out));
    until("QEMU gone", Duration::from_secs(90), async || {
        qemu_under(state).is_empty().then_some(())
    })
    .await;
}
