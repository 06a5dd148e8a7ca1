//! Volume `subPath`s without escapes, as the kubelet's safe subpath: a path inside a volume a
//! container can write (an emptyDir) may hold a symlink by the time a later container mounts it,
//! and a runtime that follows it would bind-mount the host's `/`. The subpath is opened with
//! `openat2(RESOLVE_IN_ROOT)`, so every symlink and `..` resolves inside the volume, and bind-
//! mounted from that descriptor (`/proc/self/fd/N`) onto a directory of the pod's
//! (`<pod-dir>/volume-subpaths/…`), which is what the container gets: the runtime never resolves
//! the volume's paths itself.
//!
//! Files read from an image (its `/etc/passwd`) go through the same resolution, must be regular
//! files and are read up to a limit.

use std::{
    ffi::CString,
    fs,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Component, Path, PathBuf},
};

/// Where a pod's subpath bind mounts live, under its pod directory.
pub const DIR: &str = "volume-subpaths";

/// Opens `path` under `root` (`O_PATH` unless `flags` say otherwise) with every symlink and `..`
/// resolved inside `root`, and no magic links (`/proc/*/fd`).
pub fn open_in_root(root: &Path, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let root = fs::File::open(root)?;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))?;
    // SAFETY: open_how is plain integers; all zero is its "nothing asked" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the path and `how` (of the size passed) and returns a new
    // descriptor or -1; nothing else is touched.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Reads the regular file `path` of `root` (resolved inside it), at most `limit` bytes.
pub fn read_in_root(root: &Path, path: &Path, limit: u64) -> io::Result<String> {
    let fd = open_in_root(
        root,
        path,
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
    )?;
    let file = fs::File::from(fd);
    if !file.metadata()?.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    let mut text = String::new();
    file.take(limit).read_to_string(&mut text)?;
    Ok(text)
}

/// Checks a `subPath` as Kubernetes validates it: relative, without `..`.
fn check(sub_path: &str) -> Result<&Path, String> {
    let path = Path::new(sub_path);
    if path.is_absolute()
        || !path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "subPath {sub_path:?} must be a relative path without '..'"
        ));
    }
    Ok(path)
}

/// Opens `sub_path` of the volume at `root`, creating the directories it names when they do
/// not exist (a symlink planted meanwhile still resolves inside the volume).
fn open_or_create(root: &Path, sub_path: &Path) -> Result<OwnedFd, String> {
    let fail = |e: io::Error| format!("subPath {}: {e}", sub_path.display());
    match open_in_root(root, sub_path, libc::O_PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let mut done = PathBuf::new();
    for part in sub_path.components() {
        let Component::Normal(name) = part else {
            continue;
        };
        let parent_path = if done.as_os_str().is_empty() {
            Path::new(".")
        } else {
            &done
        };
        let parent =
            open_in_root(root, parent_path, libc::O_PATH | libc::O_DIRECTORY).map_err(fail)?;
        let name_c =
            CString::new(name.as_bytes()).map_err(|_| "a NUL in the subPath".to_owned())?;
        // mkdirat never follows a symlink in its last component: one planted there is EEXIST,
        // and the next open resolves it inside the volume.
        // SAFETY: plain syscall on a descriptor we own and a NUL-terminated name.
        let made = unsafe { libc::mkdirat(parent.as_raw_fd(), name_c.as_ptr(), 0o755) };
        if made != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(fail(e));
            }
        }
        done.push(name);
    }
    open_in_root(root, sub_path, libc::O_PATH).map_err(fail)
}

/// Bind-mounts `sub_path` of the volume at `root` onto `target` (made a directory or an empty
/// file to match), replacing an earlier bind there; the container mounts `target`.
pub fn bind(root: &Path, sub_path: &str, target: &Path) -> Result<(), String> {
    let sub_path = check(sub_path)?;
    let fd = open_or_create(root, sub_path)?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let is_dir = fs::metadata(&source)
        .map_err(|e| format!("subPath {}: {e}", sub_path.display()))?
        .is_dir();
    let io_fail = |e: io::Error| format!("preparing {}: {e}", target.display());
    unmount(target);
    if is_dir {
        fs::create_dir_all(target).map_err(io_fail)?;
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_fail)?;
        }
        if !target.exists() {
            fs::write(target, b"").map_err(io_fail)?;
        }
    }
    nix::mount::mount(
        Some(&source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind-mounting subPath {}: {e}", sub_path.display()))
}

/// Unmounts whatever is mounted on `target` (nothing if it is no mount point).
fn unmount(target: &Path) {
    while nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).is_ok() {}
}

/// Unmounts every subpath bind of the pod at `pod_dir`, so that removing the pod's files never
/// reaches into a volume through them.
pub fn unmount_all(pod_dir: &Path) {
    let dir = pod_dir.join(DIR);
    let mut stack = vec![dir.clone()];
    let mut targets = Vec::new();
    while let Some(path) = stack.pop() {
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Depth is fixed (<volume>/<container>/<index>); a bound directory is not entered.
            if path
                .strip_prefix(&dir)
                .map_or(0, |p| p.components().count())
                >= 3
            {
                targets.push(path);
            } else if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    for target in &targets {
        unmount(target);
    }
}

/// Where the bind for `volume`'s mount number `index` of `container` goes.
pub fn target(pod_dir: &Path, volume: &str, container: &str, index: usize) -> PathBuf {
    pod_dir
        .join(DIR)
        .join(volume)
        .join(container)
        .join(index.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_paths_are_refused_before_anything_is_opened() {
        for bad in ["/etc", "../x", "a/../../x"] {
            assert!(check(bad).is_err(), "{bad}");
        }
        assert!(check("a/b").is_ok() && check("./a").is_ok());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("data/f"), "inside").unwrap();
        fs::write(dir.path().join("secret"), "outside").unwrap();
        // An absolute link and a climbing one both stay in the volume.
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        let read = |p: &str| read_in_root(&root, Path::new(p), 1024);
        assert_eq!(read("abs/data/f").unwrap(), "inside");
        assert_eq!(read("up/data/f").unwrap(), "inside");
        assert!(
            read("up/secret").is_err(),
            "the file outside is out of reach"
        );
    }

    #[test]
    fn only_regular_files_are_read_and_only_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "x".repeat(4096)).unwrap();
        assert_eq!(
            read_in_root(dir.path(), Path::new("etc/passwd"), 100)
                .unwrap()
                .len(),
            100
        );
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("etc/group")).unwrap();
        assert!(read_in_root(dir.path(), Path::new("etc/group"), 100).is_err());
        assert!(read_in_root(dir.path(), Path::new("etc"), 100).is_err());
    }

    #[test]
    fn missing_directories_are_created_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        fs::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink("/", root.join("host")).unwrap();
        open_or_create(&root, Path::new("host/new/dir")).unwrap();
        assert!(root.join("new/dir").is_dir(), "created under the volume");
        assert!(!Path::new("/new").exists());
    }
}
