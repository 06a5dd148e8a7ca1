//! Bind mounts of volume directories onto the paths the container orchestrator asks for, and
//! the mount table that says whether one is already there (a bind mount of a directory on the
//! same filesystem has the same device as its parent, so only `/proc/self/mountinfo` knows).

use std::{fs, io, path::Path};

use nix::mount::{MntFlags, MsFlags};

/// Whether `path` is a mount point.
pub fn is_mounted(path: &Path) -> io::Result<bool> {
    let table = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&table).any(|p| Path::new(&p) == path))
}

/// The mount points of a `mountinfo` table (its fifth field, octal escapes undone).
pub fn mount_points(table: &str) -> impl Iterator<Item = String> + '_ {
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(code) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Bind-mounts `source` onto `target` (created if missing), read-only if asked. Already
/// mounted: nothing to do.
pub fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    fs::create_dir_all(target)?;
    if is_mounted(target)? {
        return Ok(());
    }
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )?;
    if read_only {
        // A bind mount takes its flags from a remount (the first mount ignores MS_RDONLY).
        let remounted = nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        );
        if let Err(e) = remounted {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            return Err(e.into());
        }
    }
    Ok(())
}

/// Unmounts whatever is on `target` (every layer) and removes the directory; gone already:
/// done.
pub fn unbind(target: &Path) -> io::Result<()> {
    while is_mounted(target)? {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)?;
    }
    match fs::remove_dir(target) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_with_their_escapes() {
        let table = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw\n\
                     37 35 98:0 / / rw - ext4 /dev/sda1 rw\n";
        let points: Vec<String> = mount_points(table).collect();
        assert_eq!(points, ["/mnt/with space", "/"]);
    }
}
