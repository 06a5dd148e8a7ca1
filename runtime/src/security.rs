//! How a container is confined: its capabilities, `no_new_privs`, a read-only root, masked
//! `/proc` paths, supplementary groups, namespaced sysctls and its seccomp profile, as the
//! kubelet asks containerd for them from a pod's `securityContext`. [`Security::default`] is what
//! containerd gives a Kubernetes container that asks for nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The capabilities containerd gives a Kubernetes container by default.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability Linux defines (6.x), in the order of their numbers.
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities this process may pass on (its bounding set), as containerd gives
/// `privileged` and `add: [ALL]` containers: a machine (or an outer container) may withhold
/// some, and asking for one it lacks fails the container.
pub fn available_capabilities() -> Vec<String> {
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1 << bit) != 0)
        .map(|(_, c)| (*c).to_owned())
        .collect()
}

/// The seccomp filter a container runs under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// No filter (Kubernetes' default unless the node runs with `--seccomp-default`).
    #[default]
    Unconfined,
    /// containerd's default profile ([`runtime_default`]).
    RuntimeDefault,
    /// An OCI `linux.seccomp` profile (a `Localhost` one, read from the node by the agent).
    Profile(Value),
}

/// A container's confinement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    /// Held as bounding, effective and permitted capabilities (`CAP_*`).
    pub capabilities: Vec<String>,
    /// Every capability, every device, nothing masked and `/sys` writable.
    pub privileged: bool,
    /// `no_new_privs` (`allowPrivilegeEscalation: false`): setuid binaries and file
    /// capabilities grant nothing.
    pub no_new_privileges: bool,
    pub read_only_root: bool,
    /// Mask and make read-only containerd's `/proc` paths (`procMount: Default`).
    pub mask_proc: bool,
    pub seccomp: Seccomp,
    /// Groups besides the primary one (`supplementalGroups`, `fsGroup`).
    pub supplementary_groups: Vec<u32>,
    /// Namespaced sysctls set in the container's namespaces (the pod's `sysctls`).
    pub sysctls: BTreeMap<String, String>,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            capabilities: DEFAULT_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .collect(),
            privileged: false,
            no_new_privileges: false,
            read_only_root: false,
            mask_proc: true,
            seccomp: Seccomp::Unconfined,
            supplementary_groups: Vec::new(),
            sysctls: BTreeMap::new(),
        }
    }
}

impl Security {
    /// The default set with Kubernetes' `add` and `drop` applied (`ALL` means every
    /// capability; names with or without `CAP_`), as containerd computes it: drop first, then add.
    pub fn capabilities_from(add: &[String], drop: &[String]) -> Vec<String> {
        let canonical = |c: &String| {
            let upper = c.to_ascii_uppercase();
            if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            }
        };
        let drop: Vec<String> = drop.iter().map(canonical).collect();
        let add: Vec<String> = add.iter().map(canonical).collect();
        let mut caps: Vec<String> = if drop.iter().any(|c| c == "CAP_ALL") {
            Vec::new()
        } else {
            DEFAULT_CAPABILITIES
                .iter()
                .map(|c| (*c).to_owned())
                .filter(|c| !drop.contains(c))
                .collect()
        };
        let added: Vec<String> = if add.iter().any(|c| c == "CAP_ALL") {
            available_capabilities()
        } else {
            add
        };
        for cap in added {
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
        caps
    }
}

/// containerd's default seccomp profile (`contrib/seccomp`, the same as Docker's): everything
/// not listed fails with `EPERM`; namespace creation, mounting, kernel modules, `ptrace`,
/// clock setting, BPF and the like only for containers holding the capability they need.
pub fn runtime_default(capabilities: &[String]) -> Value {
    let holds = |cap: &str| capabilities.iter().any(|c| c == cap);
    let mut syscalls = vec![json!({"names": ALLOWED, "action": "SCMP_ACT_ALLOW"})];
    // personality(2) only for the common execution domains.
    for persona in [0x0u64, 0x8, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]}));
    }
    // Every socket family but vsock (40), which reaches the host.
    syscalls.push(json!({"names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}));
    for (arch, names) in [("x86_64", &["arch_prctl", "modify_ldt"][..])] {
        if std::env::consts::ARCH == arch {
            syscalls.push(json!({"names": names, "action": "SCMP_ACT_ALLOW"}));
        }
    }
    if holds("CAP_SYS_ADMIN") {
        syscalls.push(json!({"names": [
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
            "lookup_dcookie", "mount", "mount_setattr", "move_mount", "open_tree",
            "perf_event_open", "quotactl", "quotactl_fd", "setdomainname", "sethostname",
            "setns", "syslog", "umount", "umount2", "unshare",
        ], "action": "SCMP_ACT_ALLOW"}));
    } else {
        // clone(2) without any CLONE_NEW* flag (0x7E020000): threads and forks, no namespaces.
        syscalls.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 0x7E02_0000u64, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}));
        // clone3's flags are behind a pointer: ENOSYS makes libc fall back to clone.
        syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    let by_capability: &[(&str, &[&str])] = &[
        ("CAP_SYS_BOOT", &["reboot"]),
        ("CAP_SYS_CHROOT", &["chroot"]),
        (
            "CAP_SYS_MODULE",
            &["delete_module", "init_module", "finit_module"],
        ),
        ("CAP_SYS_PACCT", &["acct"]),
        (
            "CAP_SYS_PTRACE",
            &[
                "kcmp",
                "pidfd_getfd",
                "process_madvise",
                "process_vm_readv",
                "process_vm_writev",
                "ptrace",
            ],
        ),
        ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
        (
            "CAP_SYS_TIME",
            &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        ),
        ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
        (
            "CAP_SYS_NICE",
            &[
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
            ],
        ),
        ("CAP_SYSLOG", &["syslog"]),
        ("CAP_BPF", &["bpf"]),
        ("CAP_PERFMON", &["perf_event_open"]),
    ];
    for (cap, names) in by_capability {
        if holds(cap) {
            syscalls.push(json!({"names": names, "action": "SCMP_ACT_ALLOW"}));
        }
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        "syscalls": syscalls,
    })
}

/// What every container may call (names the running architecture lacks are skipped by the
/// runtime).
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> Vec<String> {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        Security::capabilities_from(&owned(add), &owned(drop))
    }

    #[test]
    fn capabilities_are_the_default_set_with_drops_then_adds() {
        assert_eq!(caps(&[], &[]).len(), DEFAULT_CAPABILITIES.len());
        let dropped = caps(&[], &["NET_RAW"]);
        assert!(!dropped.contains(&"CAP_NET_RAW".to_owned()));
        assert_eq!(dropped.len(), DEFAULT_CAPABILITIES.len() - 1);
        assert_eq!(
            caps(&["NET_BIND_SERVICE"], &["ALL"]),
            ["CAP_NET_BIND_SERVICE"]
        );
        assert!(caps(&["sys_admin"], &[]).contains(&"CAP_SYS_ADMIN".to_owned()));
        let all = caps(&["ALL"], &[]);
        assert!(available_capabilities().iter().all(|c| all.contains(c)));
        assert!(all.len() >= DEFAULT_CAPABILITIES.len());
    }

    #[test]
    fn the_default_profile_keeps_namespaces_for_cap_sys_admin() {
        let plain = runtime_default(&caps(&[], &[]));
        let text = plain.to_string();
        assert_eq!(plain["defaultAction"], "SCMP_ACT_ERRNO");
        assert!(!text.contains("\"unshare\"") && !text.contains("\"mount\""));
        assert!(
            text.contains("SCMP_CMP_MASKED_EQ"),
            "clone without CLONE_NEW*"
        );
        let admin = runtime_default(&caps(&["SYS_ADMIN"], &[])).to_string();
        assert!(admin.contains("\"unshare\"") && admin.contains("\"mount\""));
        // CAP_SYS_CHROOT is in the default set: chroot is allowed.
        assert!(text.contains("\"chroot\""));
        assert!(
            !runtime_default(&caps(&[], &["SYS_CHROOT"]))
                .to_string()
                .contains("\"chroot\"")
        );
    }
}
