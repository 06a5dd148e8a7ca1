//! Project quotas (XFS, and ext4 with the `project` feature mounted `prjquota`): each volume's
//! directory gets a project id that its new files inherit (`FS_XATTR_PROJINHERIT`), and the
//! project a hard block limit of the volume's size, so a claim of 1Gi cannot fill the disk.
//! Where the filesystem has no project quotas the volumes go without, as the kubelet's
//! emptyDir quotas do.
//!
//! `quotactl_fd(2)` (Linux 5.14) names the filesystem by an open directory, so no block device
//! needs to be found.

use std::{fs, io, os::fd::AsRawFd as _, path::Path};

/// `struct fsxattr` of `<linux/fs.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}
const _: () = assert!(std::mem::size_of::<FsXattr>() == 28);

/// New files and directories take the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

nix::ioctl_read!(fs_get_xattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_set_xattr, b'X', 32, FsXattr);

/// `struct if_dqblk` of `<linux/quota.h>`; block limits are in 1 KiB units.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

const Q_GETQUOTA: u32 = 0x80_0007;
const Q_SETQUOTA: u32 = 0x80_0008;
const PRJQUOTA: u32 = 2;
const QIF_BLIMITS: u32 = 1;
const QUOTA_BLOCK: u64 = 1024;

const fn qcmd(cmd: u32, type_: u32) -> u32 {
    (cmd << 8) | (type_ & 0xff)
}

fn quotactl_fd(dir: &fs::File, cmd: u32, id: u32, block: &mut IfDqblk) -> io::Result<()> {
    // SAFETY: the descriptor is open for the call; `block` is a valid `if_dqblk` the kernel
    // reads (Q_SETQUOTA) or fills (Q_GETQUOTA), and outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            dir.as_raw_fd(),
            qcmd(cmd, PRJQUOTA),
            id,
            std::ptr::from_mut(block),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn open_dir(dir: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
}

/// Whether the filesystem of `dir` enforces project quotas: `Err` says why not.
pub fn supported(dir: &Path) -> io::Result<()> {
    let file = open_dir(dir)?;
    let mut block = IfDqblk::default();
    // ESRCH: quotas are off on this filesystem; ENOSYS, EOPNOTSUPP: not this kernel or type.
    quotactl_fd(&file, Q_GETQUOTA, 0, &mut block)?;
    let mut attr = FsXattr::default();
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is an open directory; `attr` is a valid `fsxattr` for the kernel to fill.
    unsafe { fs_get_xattr(fd, &mut attr) }.map_err(io::Error::from)?;
    Ok(())
}

/// Puts `dir` (an empty, new directory) in project `id` and limits the project to `bytes`.
pub fn apply(dir: &Path, id: u32, bytes: u64) -> io::Result<()> {
    let file = open_dir(dir)?;
    let fd = file.as_raw_fd();
    let mut attr = FsXattr::default();
    // SAFETY: as in `supported`.
    unsafe { fs_get_xattr(fd, &mut attr) }.map_err(io::Error::from)?;
    attr.projid = id;
    attr.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: `fd` is an open directory; `attr` is a valid `fsxattr` the kernel reads.
    unsafe { fs_set_xattr(fd, &attr) }.map_err(io::Error::from)?;
    set_limit(&file, id, bytes)
}

/// Sets project `id`'s hard block limit to `bytes` (0: no limit) on the filesystem of `dir`.
pub fn resize(dir: &Path, id: u32, bytes: u64) -> io::Result<()> {
    set_limit(&open_dir(dir)?, id, bytes)
}

fn set_limit(dir: &fs::File, id: u32, bytes: u64) -> io::Result<()> {
    let blocks = bytes.div_ceil(QUOTA_BLOCK);
    let mut block = IfDqblk {
        bhardlimit: blocks,
        bsoftlimit: blocks,
        valid: QIF_BLIMITS,
        ..IfDqblk::default()
    };
    quotactl_fd(dir, Q_SETQUOTA, id, &mut block)
}

/// The bytes project `id` uses on the filesystem of `dir`.
pub fn usage(dir: &Path, id: u32) -> io::Result<u64> {
    let mut block = IfDqblk::default();
    quotactl_fd(&open_dir(dir)?, Q_GETQUOTA, id, &mut block)?;
    Ok(block.curspace)
}
