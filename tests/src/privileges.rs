//! Privileged tests need root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for setns and mounts).
//! Without it they skip with a printed reason, unless `APIARY_REQUIRE_PRIVILEGED` is set (CI sets
//! it), in which case they fail: CI must never pass by skipping.

/// Why privileged tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    (euid != 0).then(|| format!("needs root for network namespaces and BPF; running as uid {euid}"))
}

/// Returns `true` when the calling test should go on; prints why it skips otherwise.
///
/// # Panics
/// When privileges are missing and `APIARY_REQUIRE_PRIVILEGED` is set.
pub fn granted(test: &str) -> bool {
    match missing() {
        None => true,
        Some(reason) if std::env::var_os("APIARY_REQUIRE_PRIVILEGED").is_some() => {
            panic!("{test}: {reason} (APIARY_REQUIRE_PRIVILEGED is set)")
        }
        Some(reason) => {
            eprintln!("SKIPPED {test}: {reason}");
            false
        }
    }
}

/// Skips the calling test (with a printed reason) unless privileged tests can run.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if !$crate::privileges::granted(module_path!()) {
            return;
        }
    };
}
