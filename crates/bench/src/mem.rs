//! Memory as the kernel accounts it: RSS and PSS of a process (`/proc/PID/smaps_rollup`) and the
//! process tree below a pid, so launchers, QEMUs and the server are told apart.

use std::path::Path;

/// One process's resident memory, KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
        }
    }
}

impl std::iter::Sum for Mem {
    fn sum<I: Iterator<Item = Mem>>(it: I) -> Mem {
        it.fold(Mem::default(), |a, b| a + b)
    }
}

/// The `Rss:` and `Pss:` lines of an smaps_rollup text.
pub fn parse_rollup(text: &str) -> Option<Mem> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Mem {
        rss_kib: field("Rss:")?,
        pss_kib: field("Pss:")?,
    })
}

/// A process's memory now (None once it is gone).
pub fn of(pid: u32) -> Option<Mem> {
    parse_rollup(&std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?)
}

/// A process as the process table shows it.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// The command line, arguments joined by spaces.
    pub cmdline: String,
}

/// The parent pid from a `/proc/PID/stat` line (the command name in parentheses may hold spaces).
pub fn parse_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every process now (those that vanish while read are skipped).
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let base = Path::new("/proc").join(pid.to_string());
            let ppid = parse_ppid(&std::fs::read_to_string(base.join("stat")).ok()?)?;
            let raw = std::fs::read(base.join("cmdline")).ok()?;
            let cmdline = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ");
            Some(Proc { pid, ppid, cmdline })
        })
        .collect()
}

/// The processes below `root` (not `root` itself), parents before children.
pub fn descendants(root: u32, all: &[Proc]) -> Vec<Proc> {
    let mut out: Vec<Proc> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for c in all.iter().filter(|c| c.ppid == p) {
            frontier.push(c.pid);
            out.push(c.clone());
        }
    }
    out
}

/// The launchers below the server and, for each, its QEMU (a launcher's qemu-system child).
pub struct Tree {
    pub launchers: Vec<u32>,
    pub qemus: Vec<u32>,
    /// Anything else below the launchers (helpers such as passt).
    pub others: Vec<u32>,
}

/// Sorts the server's descendants into launchers, QEMUs and the rest.
pub fn vm_tree(server: u32) -> Tree {
    let all = processes();
    let below = descendants(server, &all);
    let mut tree = Tree {
        launchers: Vec::new(),
        qemus: Vec::new(),
        others: Vec::new(),
    };
    for p in below {
        if p.cmdline.contains(" launcher ") {
            tree.launchers.push(p.pid);
        } else if p.cmdline.starts_with("qemu-system") || p.cmdline.contains("/qemu-system") {
            tree.qemus.push(p.pid);
        } else {
            tree.others.push(p.pid);
        }
    }
    tree
}

/// A process's memory sampled `n` times, `every` apart (samples of a gone process are missing).
pub async fn sample(pid: u32, n: usize, every: std::time::Duration) -> Vec<Mem> {
    let mut out = Vec::new();
    for i in 0..n {
        if i > 0 {
            tokio::time::sleep(every).await;
        }
        out.extend(of(pid));
    }
    out
}

/// The mean RSS of samples, KiB (NaN without any).
pub fn mean_rss_kib(samples: &[Mem]) -> f64 {
    samples.iter().map(|m| m.rss_kib as f64).sum::<f64>() / samples.len() as f64
}

/// The summed memory of some pids (gone ones count nothing).
pub fn total(pids: &[u32]) -> Mem {
    pids.iter().filter_map(|p| of(*p)).sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rollup_fields() {
        let text = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:               12345 kB\nPss:                6789 kB\nPss_Anon:           4000 kB\n";
        assert_eq!(
            parse_rollup(text),
            Some(Mem {
                rss_kib: 12345,
                pss_kib: 6789
            })
        );
        assert_eq!(parse_rollup("Rss: 1 kB\n"), None);
    }

    #[test]
    fn ppid_after_a_name_with_spaces() {
        assert_eq!(parse_ppid("42 (a b) c) S 17 42 42 0"), Some(17));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn mean_of_samples() {
        let m = |rss_kib| Mem {
            rss_kib,
            pss_kib: 0,
        };
        assert_eq!(mean_rss_kib(&[m(10), m(20)]), 15.0);
        assert!(mean_rss_kib(&[]).is_nan());
    }

    #[test]
    fn this_process_is_measured() {
        let me = of(std::process::id()).unwrap();
        assert!(me.rss_kib > 0 && me.pss_kib <= me.rss_kib);
    }
}
