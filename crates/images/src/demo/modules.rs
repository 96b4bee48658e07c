//! Kernel module selection: parses `modules.dep` and orders a dependency closure for `insmod`.

use std::collections::{BTreeMap, HashSet};

/// One line of `modules.dep`: a module file and the files it depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleEntry {
    /// Path relative to `/lib/modules/VERSION`, e.g. `kernel/drivers/net/virtio_net.ko`.
    pub path: String,
    /// Direct and indirect dependencies as listed by depmod (paths).
    pub deps: Vec<String>,
}

/// The parsed `modules.dep` of one kernel, keyed by normalised module name.
#[derive(Debug, Default)]
pub struct ModuleDeps {
    by_name: BTreeMap<String, ModuleEntry>,
}

/// A `modules.dep` line that cannot be understood.
#[derive(Debug, thiserror::Error)]
#[error("modules.dep line {line}: {reason}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Module name of a module file path: the file stem with `-` turned into `_`
/// (`kernel/drivers/char/hw_random/virtio-rng.ko` → `virtio_rng`).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

impl ModuleDeps {
    /// Parses the text of `modules.dep`.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut by_name = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((path, deps)) = line.split_once(':') else {
                return Err(ParseError {
                    line: i + 1,
                    reason: "missing ':'",
                });
            };
            let path = path.trim();
            if path.is_empty() {
                return Err(ParseError {
                    line: i + 1,
                    reason: "empty module path",
                });
            }
            let entry = ModuleEntry {
                path: path.to_string(),
                deps: deps.split_whitespace().map(str::to_string).collect(),
            };
            by_name.insert(module_name(path), entry);
        }
        Ok(Self { by_name })
    }

    /// Looks a module up by name (`-` and `_` are equivalent).
    pub fn get(&self, name: &str) -> Option<&ModuleEntry> {
        self.by_name.get(&name.replace('-', "_"))
    }

    /// The files to `insmod`, dependencies first, for the given module names.
    /// Names not in `modules.dep` (built in, or absent from this kernel) are returned separately.
    pub fn load_order(&self, names: &[&str]) -> (Vec<String>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let mut missing = Vec::new();
        for name in names {
            match self.get(name) {
                Some(entry) => self.visit(&entry.path, &mut seen, &mut order),
                None => missing.push((*name).to_string()),
            }
        }
        (order, missing)
    }

    /// Depth-first post-order: every module after all modules it needs.
    fn visit(&self, path: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        if let Some(entry) = self.by_name.get(&module_name(path)) {
            // depmod lists deps so that the last one must be loaded first.
            for dep in entry.deps.iter().rev() {
                self.visit(dep, seen, order);
            }
        }
        order.push(path.to_string());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
";

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn orders_like_modprobe_show_depends() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let (order, missing) = deps.load_order(&["virtio_pci", "virtio_net", "virtio_blk"]);
        assert!(missing.is_empty());
        assert_eq!(
            names(&order),
            [
                "virtio_ring",
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_blk",
            ]
        );
    }

    #[test]
    fn dashes_and_underscores_match() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let (order, _) = deps.load_order(&["virtio_rng"]);
        assert_eq!(
            order.last().unwrap(),
            "kernel/drivers/char/hw_random/virtio-rng.ko"
        );
    }

    #[test]
    fn reports_missing_modules() {
        let deps = ModuleDeps::parse(DEP).unwrap();
        let (order, missing) = deps.load_order(&["ahci"]);
        assert!(order.is_empty());
        assert_eq!(missing, ["ahci"]);
    }

    #[test]
    fn rejects_garbage() {
        let err = ModuleDeps::parse("ok.ko:\nno colon here\n").unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn parses_the_installed_kernel() {
        let Ok(entries) = std::fs::read_dir("/lib/modules") else {
            return;
        };
        for e in entries.flatten() {
            let dep = e.path().join("modules.dep");
            if let Ok(text) = std::fs::read_to_string(dep) {
                let deps = ModuleDeps::parse(&text).unwrap();
                let (order, _) = deps.load_order(&["virtio_net"]);
                if !order.is_empty() {
                    assert!(order.last().unwrap().ends_with("virtio_net.ko"));
                }
            }
        }
    }
}
