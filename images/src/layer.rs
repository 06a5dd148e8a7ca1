//! Unpacking a layer into a directory that overlayfs can stack as a lowerdir.
//!
//! OCI layers mark deletions with whiteout files; overlayfs wants them in its own form:
//! `.wh.NAME` becomes a 0:0 character device `NAME`, and `.wh..wh..opq` becomes the xattr
//! `trusted.overlay.opaque=y` on its directory. Both need CAP_MKNOD / CAP_SYS_ADMIN.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::{Component, Path, PathBuf},
};

use crate::{
    digest::HashingReader,
    error::{Error, IoContext as _, Result},
    manifest::Compression,
};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What a layer entry's path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// An ordinary entry at this (safe, relative) path.
    Regular(PathBuf),
    /// Delete this path of the layers below.
    Whiteout(PathBuf),
    /// Hide everything below this directory in the layers below.
    Opaque(PathBuf),
}

/// Classifies a tar entry path, rejecting `..` so nothing lands outside the layer.
pub fn classify(path: &Path, layer: &str) -> Result<EntryKind> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::PathTraversal {
                    layer: layer.to_owned(),
                    entry: path.display().to_string(),
                });
            }
        }
    }
    let Some(name) = clean.file_name().and_then(|n| n.to_str()) else {
        return Ok(EntryKind::Regular(clean));
    };
    if name == OPAQUE_MARKER {
        let dir = clean.parent().map(Path::to_path_buf).unwrap_or_default();
        return Ok(EntryKind::Opaque(dir));
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        if target.is_empty() || target == "." || target == ".." {
            return Err(Error::Invalid(format!(
                "layer {layer}: bad whiteout entry {:?}",
                path.display()
            )));
        }
        return Ok(EntryKind::Whiteout(clean.with_file_name(target)));
    }
    Ok(EntryKind::Regular(clean))
}

/// Unpacks the layer blob at `blob` into `dest` (which must exist and be empty), checking that the
/// uncompressed stream hashes to `diff_id`.
pub fn unpack(blob: &Path, media_type: &str, diff_id: &str, dest: &Path) -> Result<()> {
    let file = fs::File::open(blob).at(blob)?;
    let mut buffered = BufReader::with_capacity(256 * 1024, file);
    let head = buffered.fill_buf().at(blob)?.to_vec();
    let compression = Compression::detect(media_type, &head)?;
    let decoded: Box<dyn Read> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::None => Box::new(buffered),
    };
    let mut hashing = HashingReader::new(decoded);
    unpack_tar(&mut hashing, diff_id, dest)?;
    let (actual, _) = hashing.finish().at(blob)?;
    crate::digest::check("layer (uncompressed)", diff_id, &actual)
}

fn unpack_tar(reader: &mut dyn Read, layer: &str, dest: &Path) -> Result<()> {
    let privileged = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(true);
    // chown needs root; unprivileged unpacking (unit tests, rootless) keeps the caller's ids.
    archive.set_preserve_ownerships(privileged);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| Error::Invalid(format!("layer {layer}: not a valid tar: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        match classify(&path, layer)? {
            EntryKind::Regular(clean) => {
                if clean.as_os_str().is_empty() {
                    continue; // "./" itself: the layer dir exists already.
                }
                // `unpack_in` refuses paths through symlinks that leave `dest`.
                let unpacked = entry.unpack_in(dest).map_err(|e| {
                    // tar's error only says "failed to unpack"; the cause is its source.
                    let cause = std::error::Error::source(&e)
                        .map(|s| format!(": {s}"))
                        .unwrap_or_default();
                    Error::Invalid(format!(
                        "layer {layer}: unpacking {}: {e}{cause}",
                        path.display()
                    ))
                })?;
                if !unpacked {
                    return Err(Error::PathTraversal {
                        layer: layer.to_owned(),
                        entry: path.display().to_string(),
                    });
                }
            }
            EntryKind::Whiteout(target) => {
                let parent = safe_parent(dest, &target, layer)?;
                let at = parent.join(target.file_name().unwrap_or_default());
                remove_any(&at)?;
                nix::sys::stat::mknod(
                    &at,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::from_bits_truncate(0o000),
                    nix::sys::stat::makedev(0, 0),
                )
                .map_err(|e| Error::Io {
                    path: at.clone(),
                    error: e.into(),
                })?;
            }
            EntryKind::Opaque(dir) => {
                let dir = if dir.as_os_str().is_empty() {
                    dest.to_path_buf()
                } else {
                    let parent = safe_parent(dest, &dir, layer)?;
                    let dir = parent.join(dir.file_name().unwrap_or_default());
                    if !dir.exists() {
                        fs::create_dir(&dir).at(&dir)?;
                    }
                    dir
                };
                set_opaque(&dir)?;
            }
        }
    }
    Ok(())
}

/// Creates the parent directories of `rel` under `root`, refusing to go through symlinks.
fn safe_parent(root: &Path, rel: &Path, layer: &str) -> Result<PathBuf> {
    let mut at = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for part in parent.components() {
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(Error::PathTraversal {
                        layer: layer.to_owned(),
                        entry: rel.display().to_string(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir(&at).at(&at)?;
                }
                Err(e) => return Err(e).at(&at),
            }
        }
    }
    Ok(at)
}

fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path).at(path),
        Ok(_) => fs::remove_file(path).at(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}

fn set_opaque(dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("{}: NUL in path", dir.display())))?;
    // SAFETY: both strings are NUL-terminated and outlive the call; the value is 1 byte long.
    let rc = unsafe {
        libc::lsetxattr(
            c_path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).at(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(
            classify(Path::new("./etc/.wh.passwd"), "l").unwrap(),
            EntryKind::Whiteout("etc/passwd".into())
        );
        assert_eq!(
            classify(Path::new("var/cache/.wh..wh..opq"), "l").unwrap(),
            EntryKind::Opaque("var/cache".into())
        );
        assert_eq!(
            classify(Path::new(".wh..wh..opq"), "l").unwrap(),
            EntryKind::Opaque("".into())
        );
        assert_eq!(
            classify(Path::new("/bin/sh"), "l").unwrap(),
            EntryKind::Regular("bin/sh".into())
        );
        assert_eq!(
            classify(Path::new("etc/.whatever"), "l").unwrap(),
            EntryKind::Regular("etc/.whatever".into())
        );
    }

    #[test]
    fn rejects_parent_dir_entries() {
        for bad in ["../etc/passwd", "a/../../b", "a/../b"] {
            let err = classify(Path::new(bad), "sha256:l")
                .unwrap_err()
                .to_string();
            assert!(err.contains("escapes the layer"), "{bad}: {err}");
        }
        assert!(classify(Path::new("a/.wh."), "l").is_err());
    }

    /// A tar with an entry named `../escape` (written raw: the tar crate refuses to build one).
    fn traversal_tar() -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..9].copy_from_slice(b"../escape");
        header.set_size(2);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut out = Vec::new();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(b"hi");
        out.resize(1024, 0);
        out.resize(2048, 0);
        out
    }

    #[test]
    fn never_writes_outside_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("layer");
        fs::create_dir(&dest).unwrap();
        let tar = traversal_tar();
        let blob = dir.path().join("blob");
        fs::write(&blob, &tar).unwrap();
        let err = unpack(&blob, "", &crate::digest::of(&tar), &dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("escapes the layer"), "{err}");
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn unpacks_gzip_and_checks_the_diff_id() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o640);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, "dir/file", &b"hello"[..])
            .unwrap();
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_uid(0);
        link.set_gid(0);
        link.set_mtime(0);
        builder
            .append_link(&mut link, "dir/link", "/outside/target")
            .unwrap();
        let tar = builder.into_inner().unwrap();
        let diff_id = crate::digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        fs::write(&blob, gz.finish().unwrap()).unwrap();

        let dest = dir.path().join("ok");
        fs::create_dir(&dest).unwrap();
        unpack(&blob, OCI_GZIP, &diff_id, &dest).unwrap();
        assert_eq!(fs::read(dest.join("dir/file")).unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(dest.join("dir/file"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        // Absolute symlinks are kept as they are: they resolve inside the container's root.
        assert_eq!(
            fs::read_link(dest.join("dir/link")).unwrap(),
            Path::new("/outside/target")
        );

        let wrong = dir.path().join("wrong");
        fs::create_dir(&wrong).unwrap();
        let err = unpack(&blob, OCI_GZIP, &crate::digest::of(b"other"), &wrong)
            .unwrap_err()
            .to_string();
        assert!(err.contains("digest mismatch"), "{err}");
    }

    const OCI_GZIP: &str = crate::manifest::OCI_LAYER_GZIP;
}
