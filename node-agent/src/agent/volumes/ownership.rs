//! The kubelet's `SetVolumeOwnership` (`pkg/volume/volume_linux.go`) for pods with an
//! `fsGroup`: every entry of a volume is made group-owned by it (`lchown(-1, fsGroup)`), and every
//! entry but a symlink gets `mode | 0660` (`| 0440` on a read-only volume); directories also get
//! setgid, so that new files inherit the group, and `0110`. Children come before their directory.
//! With `fsGroupChangePolicy: OnRootMismatch` nothing is walked when the root already has the
//! group and those permission bits.
//!
//! A pod can plant symlinks in its volumes, or swap a directory for one while the walk runs: no
//! path is ever followed. Each entry is opened `O_PATH | O_NOFOLLOW` relative to its parent's
//! descriptor and changed through that descriptor; only what that descriptor shows to be a
//! directory is descended into.

use std::{
    ffi::{CString, OsStr},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    },
    path::Path,
};

use apiary_api::core_v1::Pod;

/// Group read and write: what the kubelet adds to every file of a writable volume.
const RW: u32 = 0o660;
/// Group read, for read-only volumes (ConfigMap, Secret, downward API, projected).
const RO: u32 = 0o440;
/// Group search, added to directories.
const EXEC: u32 = 0o110;

/// When a volume's ownership is changed (`fsGroupChangePolicy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangePolicy {
    /// Every time (Kubernetes' default).
    #[default]
    Always,
    /// Only when the volume's root lacks the group, its permission bits or setgid.
    OnRootMismatch,
}

impl ChangePolicy {
    /// The pod's `securityContext.fsGroupChangePolicy`.
    pub fn of(pod: &Pod) -> Self {
        let policy = pod
            .spec
            .security_context
            .as_ref()
            .and_then(|sc| sc.fs_group_change_policy.as_deref());
        match policy {
            Some("OnRootMismatch") => Self::OnRootMismatch,
            _ => Self::Always,
        }
    }
}

/// The pod's `securityContext.fsGroup`, if it has a valid one.
pub fn fs_group(pod: &Pod) -> Option<u32> {
    pod.spec
        .security_context
        .as_ref()
        .and_then(|sc| sc.fs_group)
        .and_then(|g| u32::try_from(g).ok())
}

/// Gives the volume at `root` to group `fs_group` (see the module's doc). Errors of the walk
/// (an unreadable directory) end it, as the kubelet's; a failed chown or chmod of one entry is
/// logged and the walk goes on, as the kubelet's does.
pub fn set_volume_ownership(
    root: &Path,
    fs_group: u32,
    policy: ChangePolicy,
    read_only: bool,
) -> io::Result<()> {
    let fd = open_path(libc::AT_FDCWD, &cstring(root.as_os_str())?)?;
    let stat = fstat(&fd)?;
    if policy == ChangePolicy::OnRootMismatch && !requires_change(&stat, fs_group, read_only) {
        return Ok(());
    }
    walk(fd, &stat, root, fs_group, read_only)
}

/// Whether the root lacks the group, setgid or the permission bits the walk would give it
/// (a root that is not a directory always needs the walk).
fn requires_change(root: &libc::stat, fs_group: u32, read_only: bool) -> bool {
    if root.st_gid != fs_group || root.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return true;
    }
    let wanted = if read_only { RO } else { RW } | EXEC;
    root.st_mode & wanted != wanted || root.st_mode & libc::S_ISGID == 0
}

fn walk(
    fd: OwnedFd,
    stat: &libc::stat,
    path: &Path,
    fs_group: u32,
    read_only: bool,
) -> io::Result<()> {
    if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
        // Reopening the O_PATH descriptor through /proc reads this very directory, wherever a
        // rename has taken it.
        let entries = std::fs::read_dir(proc_fd(&fd))
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        for entry in entries {
            let name = entry?.file_name();
            let child = match open_path(fd.as_raw_fd(), &cstring(&name)?) {
                Ok(child) => child,
                // Removed by the pod since the listing: nothing left to change.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let child_stat = fstat(&child)?;
            walk(child, &child_stat, &path.join(&name), fs_group, read_only)?;
        }
    }
    change(&fd, stat, path, fs_group, read_only);
    Ok(())
}

/// `changeFilePermission`: the group of any entry, the mode of any but a symlink (chmod would
/// reach the link's target).
fn change(fd: &OwnedFd, stat: &libc::stat, path: &Path, fs_group: u32, read_only: bool) {
    // SAFETY: fchownat with AT_EMPTY_PATH changes the file `fd` refers to (a symlink itself,
    // not its target); the empty C string outlives the call.
    let chowned = unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::uid_t::MAX, // -1: the owner stays
            fs_group,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if chowned != 0 {
        let e = io::Error::last_os_error();
        tracing::warn!(path = %path.display(), error = %e, "fsGroup: lchown failed");
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if kind == libc::S_IFLNK {
        return;
    }
    let mut mask = if read_only { RO } else { RW };
    if kind == libc::S_IFDIR {
        mask |= libc::S_ISGID | EXEC;
    }
    let mode = (stat.st_mode & 0o7777) | mask;
    // fchmod refuses O_PATH descriptors; chmod through /proc reaches the same inode and,
    // unlike the path, cannot be redirected.
    if let Err(e) = std::fs::set_permissions(proc_fd(fd), std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "fsGroup: chmod failed");
    }
}

fn proc_fd(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// `openat(dir, name, O_PATH | O_NOFOLLOW)`: the entry itself, a symlink included, never what
/// it points to.
fn open_path(dir: libc::c_int, name: &CString) -> io::Result<OwnedFd> {
    // SAFETY: openat with a valid C string; the result is checked and then owned.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    // SAFETY: all-zero is a valid `stat`.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat fills the `stat` we own; it works on O_PATH descriptors (Linux 3.6).
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fs, os::unix::fs::MetadataExt as _};

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The group the walk gives: the test's own, which it may chown to as any user.
    fn group() -> u32 {
        nix::unistd::getegid().as_raw()
    }

    #[test]
    fn every_entry_gets_the_group_bits_and_directories_setgid() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("volume");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("file"), "x").unwrap();
        fs::write(root.join("sub/private"), "x").unwrap();
        set_mode(&root, 0o777);
        set_mode(&root.join("sub"), 0o700);
        set_mode(&root.join("file"), 0o644);
        set_mode(&root.join("sub/private"), 0o600);
        set_volume_ownership(&root, group(), ChangePolicy::Always, false).unwrap();
        assert_eq!(mode(&root), 0o2777);
        assert_eq!(mode(&root.join("sub")), 0o2770);
        assert_eq!(mode(&root.join("file")), 0o664);
        assert_eq!(mode(&root.join("sub/private")), 0o660);
        for path in [&root, &root.join("sub"), &root.join("sub/private")] {
            assert_eq!(fs::metadata(path).unwrap().gid(), group());
        }
        // A read-only volume (a ConfigMap's) gets group read only.
        set_mode(&root.join("sub/private"), 0o600);
        set_mode(&root.join("sub"), 0o700);
        set_volume_ownership(&root, group(), ChangePolicy::Always, true).unwrap();
        assert_eq!(mode(&root.join("sub/private")), 0o640);
        assert_eq!(mode(&root.join("sub")), 0o2750);
    }

    #[test]
    fn on_root_mismatch_skips_the_walk_only_when_the_root_matches() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("volume");
        fs::create_dir(&root).unwrap();
        fs::write(root.join("file"), "x").unwrap();
        set_mode(&root, 0o2770);
        set_mode(&root.join("file"), 0o600);
        nix::unistd::chown(&root, None, Some(nix::unistd::Gid::from_raw(group()))).unwrap();
        set_volume_ownership(&root, group(), ChangePolicy::OnRootMismatch, false).unwrap();
        assert_eq!(mode(&root.join("file")), 0o600, "the root matched: no walk");
        // Without setgid the root does not match: everything is changed.
        set_mode(&root, 0o770);
        set_volume_ownership(&root, group(), ChangePolicy::OnRootMismatch, false).unwrap();
        assert_eq!((mode(&root), mode(&root.join("file"))), (0o2770, 0o660));
        // Always walks whatever the root looks like.
        set_mode(&root.join("file"), 0o600);
        set_volume_ownership(&root, group(), ChangePolicy::Always, false).unwrap();
        assert_eq!(mode(&root.join("file")), 0o660);
    }

    #[test]
    fn symlinks_planted_in_the_volume_leave_their_targets_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "host").unwrap();
        set_mode(&outside, 0o700);
        set_mode(&outside.join("secret"), 0o600);
        let before = fs::metadata(outside.join("secret")).unwrap();
        let root = tmp.path().join("volume");
        fs::create_dir(&root).unwrap();
        set_mode(&root, 0o777);
        // What a container could leave in an emptyDir: links to a file and a directory
        // outside it, and a link to the root itself.
        std::os::unix::fs::symlink(outside.join("secret"), root.join("to-file")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("to-dir")).unwrap();
        std::os::unix::fs::symlink("/", root.join("to-root")).unwrap();
        set_volume_ownership(&root, group(), ChangePolicy::Always, false).unwrap();
        assert_eq!(mode(&outside), 0o700);
        assert_eq!(mode(&outside.join("secret")), 0o600);
        let after = fs::metadata(outside.join("secret")).unwrap();
        assert_eq!(
            (after.gid(), after.ctime(), after.ctime_nsec()),
            (before.gid(), before.ctime(), before.ctime_nsec()),
            "the target was not touched"
        );
        assert_eq!(mode(&root), 0o2777);
        // The links themselves are the volume's: they get the group.
        assert_eq!(
            fs::symlink_metadata(root.join("to-file")).unwrap().gid(),
            group()
        );
    }

    #[test]
    fn the_pods_policy_and_group_are_read_from_its_security_context() {
        let pod: Pod = serde_yaml::from_str(
            "metadata: {name: p}\nspec:\n  securityContext: {fsGroup: 2000, fsGroupChangePolicy: OnRootMismatch}\n  containers: [{name: c, image: i}]\n",
        )
        .unwrap();
        assert_eq!(
            (fs_group(&pod), ChangePolicy::of(&pod)),
            (Some(2000), ChangePolicy::OnRootMismatch)
        );
        assert_eq!(ChangePolicy::of(&Pod::default()), ChangePolicy::Always);
        assert_eq!(fs_group(&Pod::default()), None);
    }
}
