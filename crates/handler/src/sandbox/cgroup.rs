//! A cgroup per pod under a `kuvirt` parent, with the compute container's memory limit, CPU
//! shares (or weight) from its CPU request and a CPU quota from its CPU limit — kubelet's
//! arithmetic. cgroup v2 when the host has it unified (`cgroup.controllers` at the root), else the
//! v1 `memory` and `cpu` hierarchies wherever they are mounted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::SandboxError;

/// kubelet's CFS period (100 ms).
const CFS_PERIOD_US: u64 = 100_000;
/// kubelet's smallest quota (1 ms) and smallest shares.
const MIN_QUOTA_US: u64 = 1_000;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

/// The cgroup hierarchies of this host that carry memory and cpu.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One unified hierarchy at this root.
    V2(PathBuf),
    /// The v1 memory and cpu hierarchies' mount points.
    V1 { memory: PathBuf, cpu: PathBuf },
}

impl Layout {
    /// Finds the hierarchies: v2 if `root/cgroup.controllers` exists, else the v1 mounts in
    /// /proc/self/mountinfo.
    pub fn detect(root: &Path) -> Result<Layout, SandboxError> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Layout::V2(root.to_path_buf()));
        }
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| SandboxError::io(Path::new("/proc/self/mountinfo"), e))?;
        v1_mounts(&info).ok_or(SandboxError::NoCgroups)
    }

    /// The directories of cgroup `name` under `parent`, one per hierarchy.
    pub fn dirs(&self, parent: &str, name: &str) -> Vec<PathBuf> {
        match self {
            Layout::V2(root) => vec![root.join(parent).join(name)],
            Layout::V1 { memory, cpu } => {
                vec![memory.join(parent).join(name), cpu.join(parent).join(name)]
            }
        }
    }
}

/// The mount points of the v1 hierarchies with the `memory` and the `cpu` controller.
fn v1_mounts(mountinfo: &str) -> Option<Layout> {
    let mut memory = None;
    let mut cpu = None;
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL…] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        if r.next() != Some("cgroup") {
            continue;
        }
        let opts: Vec<&str> = r.nth(1).unwrap_or_default().split(',').collect();
        let Some(point) = left.split_whitespace().nth(4) else {
            continue;
        };
        if opts.contains(&"memory") && memory.is_none() {
            memory = Some(PathBuf::from(point));
        }
        if opts.contains(&"cpu") && cpu.is_none() {
            cpu = Some(PathBuf::from(point));
        }
    }
    Some(Layout::V1 {
        memory: memory?,
        cpu: cpu?,
    })
}

/// The pod's compute resources as cgroup limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_request_millis: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
}

impl Limits {
    /// From the pod's `compute` container (else its first); unreadable quantities count as unset.
    pub fn from_pod(pod: &Pod) -> Limits {
        let Some(spec) = pod.spec.as_ref() else {
            return Limits::default();
        };
        let Some(c) = spec
            .containers
            .iter()
            .find(|c| c.name == "compute")
            .or(spec.containers.first())
        else {
            return Limits::default();
        };
        let res = c.resources.as_ref();
        let get = |limits: bool, key: &str| {
            res.and_then(|r| if limits { &r.limits } else { &r.requests }.as_ref())
                .and_then(|m| m.get(key))
                .and_then(|q| kuvirt_api::parse_quantity(&q.0).ok())
        };
        let millis = |q: Option<kuvirt_api::quantity::Quantity>| {
            q.and_then(|q| q.to_millis().ok())
                .and_then(|m| u64::try_from(m).ok())
        };
        let cpu_limit_millis = millis(get(true, "cpu"));
        Limits {
            memory_bytes: get(true, "memory").and_then(|q| q.to_bytes().ok()),
            // The API defaults a missing request to the limit.
            cpu_request_millis: millis(get(false, "cpu")).or(cpu_limit_millis),
            cpu_limit_millis,
        }
    }

    /// v1 `cpu.shares` (kubelet's MilliCPUToShares).
    pub fn cpu_shares(&self) -> u64 {
        self.cpu_request_millis
            .map_or(MIN_SHARES, |m| m.saturating_mul(1024) / 1000)
            .clamp(MIN_SHARES, MAX_SHARES)
    }

    /// v2 `cpu.weight` from the shares (the runc/kubelet conversion).
    pub fn cpu_weight(&self) -> u64 {
        1 + ((self.cpu_shares() - 2) * 9999) / 262_142
    }

    /// The CFS quota for the CPU limit (kubelet's MilliCPUToQuota), if there is one.
    pub fn cpu_quota_us(&self) -> Option<u64> {
        self.cpu_limit_millis
            .filter(|m| *m > 0)
            .map(|m| (m.saturating_mul(CFS_PERIOD_US) / 1000).max(MIN_QUOTA_US))
    }
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), SandboxError> {
    let path = dir.join(file);
    std::fs::write(&path, value).map_err(|e| SandboxError::io(&path, e))
}

fn mkdir(dir: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(dir).map_err(|e| SandboxError::io(dir, e))
}

/// Creates (or updates) cgroup `name` under `parent` with `limits`; returns its directories.
pub fn create(
    layout: &Layout,
    parent: &str,
    name: &str,
    limits: &Limits,
) -> Result<Vec<PathBuf>, SandboxError> {
    match layout {
        Layout::V2(root) => {
            // Controllers must be enabled on the way down for the pod's files to exist.
            let parent_dir = root.join(parent);
            enable_controllers(root)?;
            mkdir(&parent_dir)?;
            enable_controllers(&parent_dir)?;
            let dir = parent_dir.join(name);
            mkdir(&dir)?;
            let mem = limits
                .memory_bytes
                .map_or_else(|| "max".to_string(), |b| b.to_string());
            write(&dir, "memory.max", &mem)?;
            write(&dir, "cpu.weight", &limits.cpu_weight().to_string())?;
            let quota = limits
                .cpu_quota_us()
                .map_or_else(|| "max".to_string(), |q| q.to_string());
            write(&dir, "cpu.max", &format!("{quota} {CFS_PERIOD_US}"))?;
            Ok(vec![dir])
        }
        Layout::V1 { memory, cpu } => {
            let mem_dir = memory.join(parent).join(name);
            mkdir(&mem_dir)?;
            // -1: no limit (also undoes a limit an earlier run of this pod set).
            let mem = limits
                .memory_bytes
                .map_or_else(|| "-1".to_string(), |b| b.to_string());
            write(&mem_dir, "memory.limit_in_bytes", &mem)?;
            let cpu_dir = cpu.join(parent).join(name);
            mkdir(&cpu_dir)?;
            write(&cpu_dir, "cpu.shares", &limits.cpu_shares().to_string())?;
            write(&cpu_dir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
            let quota = limits
                .cpu_quota_us()
                .map_or_else(|| "-1".to_string(), |q| q.to_string());
            write(&cpu_dir, "cpu.cfs_quota_us", &quota)?;
            Ok(vec![mem_dir, cpu_dir])
        }
    }
}

fn enable_controllers(dir: &Path) -> Result<(), SandboxError> {
    let have = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in ["memory", "cpu"] {
        if !have.split_whitespace().any(|h| h == c) {
            write(dir, "cgroup.subtree_control", &format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Removes cgroup `name` under `parent` from every hierarchy. A cgroup whose last process has
/// just exited may be busy for a moment: retried for up to two seconds.
pub fn remove(layout: &Layout, parent: &str, name: &str) -> Result<(), SandboxError> {
    for dir in layout.dirs(parent, name) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(16) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(SandboxError::io(&dir, e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn v1_mounts_are_found_in_mountinfo() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            v1_mounts(info),
            Some(Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                cpu: "/sys/fs/cgroup/cpu,cpuacct".into()
            })
        );
        assert_eq!(v1_mounts("41 31 0:38 / /x rw - cgroup2 cgroup2 rw\n"), None);
    }

    #[test]
    fn a_unified_hierarchy_gets_v2_files() {
        // A stand-in for cgroupfs: plain files, so only what is written can be checked.
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let layout = Layout::detect(root.path()).unwrap();
        assert_eq!(layout, Layout::V2(root.path().to_path_buf()));
        let limits = Limits {
            memory_bytes: Some(1 << 30),
            cpu_request_millis: Some(1000),
            cpu_limit_millis: Some(1500),
        };
        let dirs = create(&layout, "kuvirt", "podx", &limits).unwrap();
        assert_eq!(dirs, vec![root.path().join("kuvirt/podx")]);
        let read = |f: &str| std::fs::read_to_string(dirs[0].join(f)).unwrap();
        assert_eq!(read("memory.max"), (1u64 << 30).to_string());
        assert_eq!(read("cpu.max"), "150000 100000");
        assert_eq!(
            read("cpu.weight"),
            (1 + (1022 * 9999) / 262_142).to_string()
        );
        let unlimited = create(&layout, "kuvirt", "pody", &Limits::default()).unwrap();
        let read = |f: &str| std::fs::read_to_string(unlimited[0].join(f)).unwrap();
        assert_eq!(read("memory.max"), "max");
        assert_eq!(read("cpu.max"), "max 100000");
    }

    #[test]
    fn limits_follow_kubelet_arithmetic() {
        let pod: Pod = serde_json::from_value(json!({
            "spec": {"containers": [{"name": "compute", "resources": {
                "requests": {"cpu": "250m", "memory": "300Mi"},
                "limits": {"cpu": "2", "memory": "512Mi"}}}]}
        }))
        .unwrap();
        let l = Limits::from_pod(&pod);
        assert_eq!(l.memory_bytes, Some(512 << 20));
        assert_eq!(l.cpu_shares(), 256);
        assert_eq!(l.cpu_weight(), 1 + (254 * 9999) / 262_142);
        assert_eq!(l.cpu_quota_us(), Some(200_000));
        let none = Limits::default();
        assert_eq!(none.cpu_shares(), 2);
        assert_eq!(none.cpu_weight(), 1);
        assert_eq!(none.cpu_quota_us(), None);
        let tiny = Limits {
            cpu_limit_millis: Some(1),
            ..Limits::default()
        };
        assert_eq!(tiny.cpu_quota_us(), Some(1_000));
        let only_limit: Pod = serde_json::from_value(json!({
            "spec": {"containers": [{"name": "compute", "resources": {"limits": {"cpu": "1"}}}]}
        }))
        .unwrap();
        assert_eq!(Limits::from_pod(&only_limit).cpu_shares(), 1024);
    }
}
