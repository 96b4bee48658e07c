//! Chooses the accelerator. `auto` uses KVM only after a probe guest proved that KVM runs guest
//! code here: on some hosts (nested under another hypervisor) /dev/kvm exists and QEMU starts, but
//! guests hang. Otherwise it falls back to TCG with a warning. Probe results are cached per boot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::machine::Accel;

/// The probe guest: a boot sector (source in `probe/kvm-probe.asm`) that enters long mode, touches
/// 128 MiB and exits QEMU through isa-debug-exit with status 67. It runs with `-cpu host`, as
/// guests would.
const PROBE: &[u8; 512] = include_bytes!("../probe/kvm-probe.bin");
const PROBE_EXIT: i32 = 67;

/// What the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelMode {
    type Err = AccelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            other => Err(AccelError::Mode(other.to_string())),
        }
    }
}

/// The decision and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    /// Set when `auto` fell back to TCG: say it once, loudly.
    pub warning: Option<String>,
}

/// An accelerator failure.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("accelerator {0:?}: expected auto, kvm or tcg")]
    Mode(String),
    #[error("accelerator kvm: /dev/kvm: {0}")]
    NoKvm(std::io::Error),
}

/// Why a probe did not pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    pub message: String,
    /// A timeout may be load rather than KVM: such an answer is not cached.
    pub transient: bool,
}

/// Something that can tell whether KVM runs a guest (a real QEMU probe, or a fake in tests).
pub trait KvmProbe {
    /// `Ok(())` when a guest ran to completion under KVM.
    fn probe(&self) -> impl std::future::Future<Output = Result<(), ProbeFailure>> + Send;
}

/// Decides for `mode`; `kvm_device` is normally /dev/kvm.
pub async fn choose(
    mode: AccelMode,
    kvm_device: &Path,
    probe: &impl KvmProbe,
    cache: Option<&Path>,
) -> Result<AccelChoice, AccelError> {
    let kvm_open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(kvm_device)
            .map(drop)
    };
    match mode {
        AccelMode::Tcg => Ok(AccelChoice {
            accel: Accel::Tcg,
            warning: None,
        }),
        AccelMode::Kvm => {
            kvm_open().map_err(AccelError::NoKvm)?;
            Ok(AccelChoice {
                accel: Accel::Kvm,
                warning: None,
            })
        }
        AccelMode::Auto => {
            if let Err(e) = kvm_open() {
                return Ok(AccelChoice {
                    accel: Accel::Tcg,
                    warning: Some(format!(
                        "{}: {e}; using TCG software emulation (slow)",
                        kvm_device.display()
                    )),
                });
            }
            let key = cache_key();
            if let Some(choice) = cache.and_then(|c| read_cache(c, &key)) {
                return Ok(choice);
            }
            let (choice, cacheable) = match probe.probe().await {
                Ok(()) => (
                    AccelChoice {
                        accel: Accel::Kvm,
                        warning: None,
                    },
                    true,
                ),
                Err(why) => (
                    AccelChoice {
                        accel: Accel::Tcg,
                        warning: Some(format!(
                            "{} is present but KVM did not run a probe guest ({}); using TCG \
                             software emulation (slow)",
                            kvm_device.display(),
                            why.message
                        )),
                    },
                    !why.transient,
                ),
            };
            if let Some(c) = cache.filter(|_| cacheable) {
                write_cache(c, &key, &choice);
            }
            Ok(choice)
        }
    }
}

/// Boots the probe guest under KVM with a deadline.
pub struct QemuProbe {
    pub qemu_binary: PathBuf,
    pub deadline: Duration,
    pub work_dir: PathBuf,
}

impl KvmProbe for QemuProbe {
    async fn probe(&self) -> Result<(), ProbeFailure> {
        run_probe(&self.qemu_binary, "kvm", &self.work_dir, self.deadline).await
    }
}

/// Runs the probe guest with `accel` (also used by tests with `tcg` to prove the probe is sound).
pub async fn run_probe(
    qemu: &Path,
    accel: &str,
    work_dir: &Path,
    deadline: Duration,
) -> Result<(), ProbeFailure> {
    let fail = |message: String| ProbeFailure {
        message,
        transient: false,
    };
    let image = work_dir.join(format!("kvm-probe-{}.img", std::process::id()));
    std::fs::write(&image, PROBE).map_err(|e| fail(format!("{}: {e}", image.display())))?;
    let result = async {
        let mut child = Command::new(qemu)
            .args([
                "-accel",
                accel,
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
            ])
            .args(["-machine", "pc", "-m", "256", "-serial", "stdio"])
            // The CPU model guests get under KVM (host-model maps to it): some nested hosts
            // start a trivial guest but abort on this model's MSRs.
            .args(["-cpu", if accel == "kvm" { "host" } else { "max" }])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=floppy,readonly=on",
                image.display().to_string().replace(',', ",,")
            ))
            .args(["-boot", "a"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", qemu.display())))?;
        let mut out = child.stdout.take();
        let run = async {
            let mut text = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut text).await;
            }
            (child.wait().await, text)
        };
        match tokio::time::timeout(deadline, run).await {
            Err(_) => Err(ProbeFailure {
                message: format!("no answer within {}s", deadline.as_secs()),
                transient: true,
            }),
            Ok((Err(e), _)) => Err(fail(e.to_string())),
            Ok((Ok(status), text)) if status.code() == Some(PROBE_EXIT) && text == "RL" => Ok(()),
            Ok((Ok(status), text)) => {
                Err(fail(format!("probe ended with {status}, printed {text:?}")))
            }
        }
    }
    .await;
    let _ = std::fs::remove_file(&image);
    result
}

#[derive(Serialize, Deserialize)]
struct Cached {
    key: String,
    choice: AccelChoice,
}

/// The probe's answer holds until the host reboots.
fn cache_key() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn read_cache(path: &Path, key: &str) -> Option<AccelChoice> {
    let text = std::fs::read(path).ok()?;
    let cached: Cached = serde_json::from_slice(&text).ok()?;
    (cached.key == key && !key.is_empty()).then_some(cached.choice)
}

fn write_cache(path: &Path, key: &str, choice: &AccelChoice) {
    let cached = Cached {
        key: key.to_string(),
        choice: choice.clone(),
    };
    if let (Ok(bytes), Some(dir)) = (serde_json::to_vec(&cached), path.parent()) {
        let _ = kuvirt_images::oci::write_atomic(path, &bytes, dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Fake {
        ok: bool,
        calls: AtomicU32,
    }

    impl KvmProbe for Fake {
        async fn probe(&self) -> Result<(), ProbeFailure> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.ok {
                Ok(())
            } else {
                Err(ProbeFailure {
                    message: "probe ended with signal: 6 (SIGABRT)".into(),
                    transient: false,
                })
            }
        }
    }

    fn fake(ok: bool) -> Fake {
        Fake {
            ok,
            calls: AtomicU32::new(0),
        }
    }

    #[tokio::test]
    async fn tcg_needs_nothing_and_kvm_needs_the_device() {
        let missing = Path::new("/nonexistent/kvm");
        let c = choose(AccelMode::Tcg, missing, &fake(false), None).await;
        assert_eq!(c.unwrap().accel, Accel::Tcg);
        let e = choose(AccelMode::Kvm, missing, &fake(true), None).await;
        assert!(
            e.unwrap_err()
                .to_string()
                .starts_with("accelerator kvm: /dev/kvm:")
        );
    }

    #[tokio::test]
    async fn auto_without_device_falls_back_with_a_warning() {
        let f = fake(true);
        let c = choose(AccelMode::Auto, Path::new("/nonexistent/kvm"), &f, None)
            .await
            .unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.warning.unwrap().contains("TCG"));
        assert_eq!(f.calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn auto_trusts_only_a_passing_probe_and_caches_it() {
        let dir = tempfile::tempdir().unwrap();
        // Any readable+writable file stands in for the device node.
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        let cache = dir.path().join("accel.json");
        let bad = fake(false);
        let c = choose(AccelMode::Auto, &dev, &bad, Some(&cache))
            .await
            .unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(
            c.warning
                .as_deref()
                .unwrap()
                .contains("did not run a probe guest")
        );
        // Cached: a second decision does not probe again.
        let good = fake(true);
        let c2 = choose(AccelMode::Auto, &dev, &good, Some(&cache))
            .await
            .unwrap();
        assert_eq!(c2, c);
        assert_eq!(good.calls.load(Ordering::SeqCst), 0);
        std::fs::remove_file(&cache).unwrap();
        let c3 = choose(AccelMode::Auto, &dev, &good, Some(&cache))
            .await
            .unwrap();
        assert_eq!(c3.accel, Accel::Kvm);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<AccelMode>().unwrap(), AccelMode::Auto);
        assert!("xen".parse::<AccelMode>().is_err());
    }

    /// The embedded bytes are exactly what the committed source assembles to.
    #[test]
    fn probe_bytes_match_source() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("p.bin");
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/probe/kvm-probe.asm");
        let st = std::process::Command::new("nasm")
            .args(["-f", "bin", "-o"])
            .arg(&out)
            .arg(src)
            .status()
            .expect("nasm is installed by .ci/run");
        assert!(st.success());
        assert_eq!(std::fs::read(&out).unwrap(), PROBE.to_vec());
    }

    /// The probe guest really runs to its exit under TCG, so a failure under KVM means KVM.
    #[tokio::test]
    async fn probe_runs_under_tcg() {
        let dir = tempfile::tempdir().unwrap();
        run_probe(
            Path::new("qemu-system-x86_64"),
            "tcg",
            dir.path(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
}
