//! Reading usage counters from cgroup files and `/proc`, under roots given as parameters so the
//! parsing is tested against fixture files.
//!
//! The working set is cAdvisor's: usage minus inactive file pages (which the kernel reclaims
//! first), floored at 0; the kubelet's eviction and `kubectl top` both use it.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// What one cgroup (or the node) has used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Cumulative CPU time in nanoseconds.
    pub cpu_ns: Option<u64>,
    pub memory: Option<Memory>,
}

/// Memory of one cgroup, as the Summary API reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    /// The node's memory less its working set (containers: not reported).
    pub available_bytes: Option<u64>,
    pub rss_bytes: Option<u64>,
    pub page_faults: Option<u64>,
    pub major_page_faults: Option<u64>,
}

/// Where the counters are read: the cgroup hierarchies' mount points and `/proc`.
#[derive(Clone, Debug)]
pub struct Roots {
    pub hierarchies: Vec<PathBuf>,
    pub proc: PathBuf,
}

impl Roots {
    /// This machine's mount namespace.
    pub fn host() -> Self {
        Self {
            hierarchies: apiary_runtime::cgroups::hierarchies(),
            proc: PathBuf::from("/proc"),
        }
    }

    /// The usage of the cgroup at `relative` (to each hierarchy's root), `None` when no
    /// hierarchy has it (the container is gone).
    pub fn cgroup(&self, relative: &str) -> Option<Usage> {
        let dirs: Vec<PathBuf> = self
            .hierarchies
            .iter()
            .map(|h| h.join(relative))
            .filter(|d| d.is_dir())
            .collect();
        if dirs.is_empty() {
            return None;
        }
        Some(Usage {
            cpu_ns: dirs.iter().find_map(|d| cpu_ns(d)),
            memory: dirs.iter().find_map(|d| memory(d)),
        })
    }

    /// The node's usage, as cAdvisor's root cgroup: v1's root `cpuacct.usage` and
    /// `memory.usage_in_bytes`; on v2, whose root has no `memory.current`, the usage is
    /// `MemTotal - MemFree`, and CPU time the root `cpu.stat`. `/proc/stat` and
    /// `/proc/meminfo` fill in what no hierarchy has.
    pub fn node(&self) -> Usage {
        let meminfo = fs::read_to_string(self.proc.join("meminfo")).unwrap_or_default();
        let kib = |key: &str| field(&meminfo, &format!("{key}:")).map(|v| v * 1024);
        let fallback = match (kib("MemTotal"), kib("MemFree")) {
            (Some(total), Some(free)) => Some(total.saturating_sub(free)),
            _ => None,
        };
        let memory = self.hierarchies.iter().find_map(|h| memory(h)).or_else(|| {
            // The v2 root's `memory.stat` has `inactive_file`; `Inactive(file)` otherwise.
            let usage = fallback?;
            let stat = self
                .hierarchies
                .iter()
                .find_map(|h| fs::read_to_string(h.join("memory.stat")).ok())
                .unwrap_or_default();
            let inactive = field(&stat, "inactive_file").or_else(|| kib("Inactive(file)"));
            Some(Memory {
                usage_bytes: usage,
                working_set_bytes: usage.saturating_sub(inactive.unwrap_or(0)),
                available_bytes: None,
                rss_bytes: field(&stat, "anon"),
                page_faults: field(&stat, "pgfault"),
                major_page_faults: field(&stat, "pgmajfault"),
            })
        });
        let memory = memory.map(|m| Memory {
            available_bytes: kib("MemTotal").map(|t| t.saturating_sub(m.working_set_bytes)),
            ..m
        });
        let cpu_ns = self
            .hierarchies
            .iter()
            .find_map(|h| cpu_ns(h))
            .or_else(|| proc_stat_cpu_ns(&self.proc));
        Usage { cpu_ns, memory }
    }

    /// When the machine booted (`/proc/stat`'s `btime`): the node's start time.
    pub fn boot_time(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let stat = fs::read_to_string(self.proc.join("stat")).ok()?;
        let secs = field(&stat, "btime")?;
        chrono::DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
    }
}

/// v2's `cpu.stat` `usage_usec`, or v1's `cpuacct.usage` (already nanoseconds).
fn cpu_ns(dir: &Path) -> Option<u64> {
    if let Ok(stat) = fs::read_to_string(dir.join("cpu.stat"))
        && let Some(usec) = field(&stat, "usage_usec")
    {
        return Some(usec * 1000);
    }
    fs::read_to_string(dir.join("cpuacct.usage"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// v2's `memory.current` with `memory.stat`'s `inactive_file`, or v1's `memory.usage_in_bytes`
/// with the hierarchical `total_inactive_file`.
fn memory(dir: &Path) -> Option<Memory> {
    let read = |name: &str| -> Option<u64> {
        fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok()
    };
    let stat = fs::read_to_string(dir.join("memory.stat")).ok();
    let stat = stat.as_deref().unwrap_or_default();
    if let Some(current) = read("memory.current") {
        return Some(Memory {
            usage_bytes: current,
            working_set_bytes: current.saturating_sub(field(stat, "inactive_file").unwrap_or(0)),
            available_bytes: None,
            rss_bytes: field(stat, "anon"),
            page_faults: field(stat, "pgfault"),
            major_page_faults: field(stat, "pgmajfault"),
        });
    }
    let usage = read("memory.usage_in_bytes")?;
    Some(Memory {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(field(stat, "total_inactive_file").unwrap_or(0)),
        available_bytes: None,
        rss_bytes: field(stat, "total_rss"),
        page_faults: field(stat, "total_pgfault"),
        major_page_faults: field(stat, "total_pgmajfault"),
    })
}

/// The busy time of `/proc/stat`'s `cpu` line (everything but idle and iowait; guest time is
/// already in user), in nanoseconds: its unit is USER_HZ, 100 on every Linux architecture's ABI.
fn proc_stat_cpu_ns(proc: &Path) -> Option<u64> {
    const NS_PER_TICK: u64 = 10_000_000;
    let stat = fs::read_to_string(proc.join("stat")).ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum::<u64>();
    Some(busy * NS_PER_TICK)
}

/// The number after `key` on the line that starts with it (`key value` or `key:   value kB`).
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A v2 container cgroup at `<root>/<relative>`.
    pub(crate) fn write_v2(
        root: &Path,
        relative: &str,
        usage_usec: u64,
        current: u64,
        inactive: u64,
    ) {
        let dir = root.join(relative);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("cpu.stat"),
            format!("usage_usec {usage_usec}\nuser_usec 1\nsystem_usec 2\n"),
        )
        .unwrap();
        fs::write(dir.join("memory.current"), format!("{current}\n")).unwrap();
        fs::write(
            dir.join("memory.stat"),
            format!("anon 4096\nfile 8192\nactive_file 1\ninactive_file {inactive}\npgfault 30\npgmajfault 2\n"),
        )
        .unwrap();
    }

    #[test]
    fn v2_container_usage_and_working_set() {
        let root = tempfile::tempdir().unwrap();
        write_v2(root.path(), "apiary/c1", 1_500_000, 10_000, 3_000);
        let roots = Roots {
            hierarchies: vec![root.path().to_owned()],
            proc: root.path().join("proc"),
        };
        let usage = roots.cgroup("apiary/c1").unwrap();
        assert_eq!(usage.cpu_ns, Some(1_500_000_000));
        let memory = usage.memory.unwrap();
        assert_eq!(memory.usage_bytes, 10_000);
        assert_eq!(memory.working_set_bytes, 7_000);
        assert_eq!(memory.rss_bytes, Some(4096));
        assert_eq!(memory.page_faults, Some(30));
        assert_eq!(memory.major_page_faults, Some(2));
        assert_eq!(roots.cgroup("apiary/gone"), None);
    }

    #[test]
    fn v1_hybrid_container_reads_each_controller_hierarchy() {
        let root = tempfile::tempdir().unwrap();
        let (cpuacct, mem, unified) = (
            root.path().join("cpu,cpuacct"),
            root.path().join("memory"),
            root.path().join("unified"),
        );
        for h in [&cpuacct, &mem, &unified] {
            fs::create_dir_all(h.join("apiary/c1")).unwrap();
        }
        fs::write(cpuacct.join("apiary/c1/cpuacct.usage"), "2500000000\n").unwrap();
        fs::write(mem.join("apiary/c1/memory.usage_in_bytes"), "5000\n").unwrap();
        // `inactive_file` is this cgroup's alone; the working set takes the hierarchical total.
        fs::write(
            mem.join("apiary/c1/memory.stat"),
            "inactive_file 1\ntotal_rss 100\ntotal_inactive_file 6000\ntotal_pgfault 7\n",
        )
        .unwrap();
        let roots = Roots {
            hierarchies: vec![unified, cpuacct, mem],
            proc: root.path().join("proc"),
        };
        let usage = roots.cgroup("apiary/c1").unwrap();
        assert_eq!(usage.cpu_ns, Some(2_500_000_000));
        let memory = usage.memory.unwrap();
        assert_eq!(memory.usage_bytes, 5000);
        assert_eq!(memory.working_set_bytes, 0, "floored at 0");
        assert_eq!(memory.rss_bytes, Some(100));
        assert_eq!(memory.page_faults, Some(7));
    }

    #[test]
    fn node_on_v2_uses_meminfo_usage_and_root_cpu_stat() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = root.path().join("cgroup");
        let proc = root.path().join("proc");
        fs::create_dir_all(&cgroup).unwrap();
        fs::create_dir_all(&proc).unwrap();
        fs::write(cgroup.join("cpu.stat"), "usage_usec 9000000\n").unwrap();
        fs::write(cgroup.join("memory.stat"), "anon 10\ninactive_file 1024\n").unwrap();
        fs::write(
            proc.join("meminfo"),
            "MemTotal:       1000 kB\nMemFree:         200 kB\nMemAvailable:    500 kB\nInactive(file):  100 kB\n",
        )
        .unwrap();
        let roots = Roots {
            hierarchies: vec![cgroup.clone()],
            proc: proc.clone(),
        };
        let node = roots.node();
        assert_eq!(node.cpu_ns, Some(9_000_000_000));
        let memory = node.memory.unwrap();
        assert_eq!(memory.usage_bytes, 800 * 1024);
        assert_eq!(memory.working_set_bytes, 800 * 1024 - 1024);

        // Without cgroup files: /proc alone.
        fs::write(
            proc.join("stat"),
            "cpu  100 5 50 1000 20 3 2 1 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n",
        )
        .unwrap();
        let bare = Roots {
            hierarchies: vec![],
            proc,
        };
        let node = bare.node();
        assert_eq!(node.cpu_ns, Some(161 * 10_000_000));
        assert_eq!(node.memory.unwrap().working_set_bytes, 700 * 1024);
    }
}
