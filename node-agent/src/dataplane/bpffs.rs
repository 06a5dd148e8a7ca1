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
/// directory private to the agent (see [`secure_dir`]).
pub fn prepare_pin_dir(dir: &Path) -> Result<()> {
    if dir.starts_with(BPFFS_ROOT) {
        ensure_mounted()?;
    }
    secure_dir(dir)?;
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

/// Creates `dir` (0700) or checks the one there before its maps are reused: it must be the
/// agent's own (another user could have planted maps in it that steer the data plane), and
/// is made 0700 if it was more open.
pub fn secure_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    let io_err = |source| Error::Bpffs {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    let meta = std::fs::symlink_metadata(dir).map_err(io_err)?;
    let agent = nix::unistd::geteuid().as_raw();
    if meta.uid() != agent {
        return Err(Error::PinDirOwner {
            path: dir.to_owned(),
            owner: meta.uid(),
            agent,
        });
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_directories_are_private_to_the_agent() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        secure_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        // One left open is closed before reuse.
        std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o777)).unwrap();
        secure_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        if nix::unistd::geteuid().is_root() {
            // Another user's directory is refused (only root can make one to test with).
            let planted = tmp.path().join("planted");
            std::fs::create_dir(&planted).unwrap();
            std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
            let err = secure_dir(&planted).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
    }

    #[test]
    fn a_temp_dir_is_not_bpffs() {
        assert!(!is_bpffs(&std::env::temp_dir()).unwrap());
    }
}
