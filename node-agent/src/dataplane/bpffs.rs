//! The BPF filesystem, where maps are pinned so that they outlive the agent.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt as _, path::Path};

use super::{Error, Result};

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// The conventional bpffs mount point.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Whether `path` (which must exist) lives on a bpffs mount.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `statfs` is plain old data, fully written by a successful call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is a valid out pointer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless it is mounted already; returns whether it mounted it.
pub fn ensure_mounted() -> Result<bool> {
    let root = Path::new(BPFFS_ROOT);
    let bpffs_err = |source| Error::Bpffs {
        path: root.to_owned(),
        source,
    };
    if is_bpffs(root).map_err(bpffs_err)? {
        return Ok(false);
    }
    let (source, target, fstype) = (c"bpf", c"/sys/fs/bpf", c"bpf");
    // SAFETY: all arguments are NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(bpffs_err(io::Error::last_os_error()));
    }
    Ok(true)
}

/// Makes `dir` ready for pinning: bpffs mounted (when `dir` is under [`BPFFS_ROOT`]) and the
/// directory created.
pub fn prepare_pin_dir(dir: &Path) -> Result<()> {
    if dir.starts_with(BPFFS_ROOT) {
        ensure_mounted()?;
    }
    std::fs::create_dir_all(dir).map_err(|source| Error::Bpffs {
        path: dir.to_owned(),
        source,
    })?;
    match is_bpffs(dir) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::NotBpffs {
            path: dir.to_owned(),
        }),
        Err(source) => Err(Error::Bpffs {
            path: dir.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_dir_is_not_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()).unwrap());
    }
}
