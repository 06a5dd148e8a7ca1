//! The container's cgroup, on cgroup v1, hybrid (v1 controllers + an empty unified hierarchy,
//! which libcgroups treats as v1) and pure v2 hosts: OOM detection and leftover cleanup.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup path (relative to each hierarchy's root) of container `id` under `parent`.
pub fn relative_path(parent: &str, id: &str) -> String {
    format!("{}/{id}", parent.trim_matches('/'))
}

/// Mount points of every cgroup hierarchy (v1 and v2) of this mount namespace.
pub fn hierarchies() -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            // Fields: id parent dev root mountpoint opts [optional…] - fstype source superopts
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| left.split(' ').nth(4).map(PathBuf::from))?
        })
        .collect()
}

/// The container's cgroup directories that exist now, in any hierarchy.
pub fn existing_dirs(relative: &str) -> Vec<PathBuf> {
    hierarchies()
        .into_iter()
        .map(|h| h.join(relative))
        .filter(|d| d.is_dir())
        .collect()
}

fn counter(file: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// Whether the kernel OOM-killed a process of this cgroup: `oom_kill` of v2's `memory.events`
/// or v1's `memory.oom_control` (the v1 counter needs kernel 4.13). Read before the cgroup is
/// removed.
pub fn oom_killed(relative: &str) -> bool {
    hierarchies().into_iter().any(|h| {
        let dir = h.join(relative);
        counter(&dir.join("memory.events"), "oom_kill").is_some_and(|n| n > 0)
            || counter(&dir.join("memory.oom_control"), "oom_kill").is_some_and(|n| n > 0)
    })
}

/// Whether memory + swap can be limited: v1 needs swap accounting (`memory.memsw.*`), v2 a
/// kernel with swap control (`memory.swap.max`, which only non-root cgroups show). Asking for
/// it where it is missing would fail the container's start.
pub fn swap_limit_supported() -> bool {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.is_dir() {
        return v1.join("memory.memsw.limit_in_bytes").exists();
    }
    fs::read_dir("/sys/fs/cgroup").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.path().join("memory.swap.max").exists())
    })
}

/// Removes the container's cgroup directories left in any hierarchy. A cgroup with processes
/// cannot be removed (EBUSY): dying processes get a moment to leave.
pub fn remove(relative: &str) -> std::io::Result<()> {
    for dir in existing_dirs(relative) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("removing {}: {e}", dir.display()),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_parsed_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        fs::write(&file, "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\n").unwrap();
        assert_eq!(counter(&file, "oom_kill"), Some(2));
        assert_eq!(counter(&file, "oom"), Some(1));
        assert_eq!(counter(&file, "missing"), None);
        assert_eq!(relative_path("/apiary/", "c-1"), "apiary/c-1");
    }
}
