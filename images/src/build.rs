//! Building image archives: the `localhost/busybox:latest` test image from the host's static
//! busybox, shared by `cargo xtask images` and the tests.
//!
//! Everything is deterministic (fixed mtimes, owners, order; gzip without a timestamp), so the
//! same busybox binary always gives the same manifest digest.

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{
    digest,
    error::{Error, IoContext as _, Result},
    manifest::{self, Config, Descriptor, Index, Manifest, Platform, RootFs, RunConfig},
};

/// The reference the busybox archive names.
pub const BUSYBOX_REFERENCE: &str = "localhost/busybox:latest";
/// The host's static busybox.
pub const HOST_BUSYBOX: &str = "/bin/busybox";
/// Every file's mtime: 2024-01-01T00:00:00Z.
const MTIME: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";

/// A file of an image layer.
#[derive(Debug, Clone)]
pub enum LayerEntry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link to `target`, an earlier entry of the same layer.
    HardLink {
        path: String,
        target: String,
    },
    /// A file owned by `uid:gid` (the others are root's).
    OwnedFile {
        path: String,
        mode: u32,
        uid: u64,
        gid: u64,
        data: Vec<u8>,
    },
}

/// What [`oci_archive`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// The uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
}

/// A deterministic tar of `entries` (root-owned, fixed mtime), in the given order.
pub fn layer_tar(entries: &[LayerEntry]) -> Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        let io = |e: std::io::Error| Error::Invalid(format!("building a layer: {e}"));
        match entry {
            LayerEntry::Dir { path, mode } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), std::io::empty())
                    .map_err(io)?;
            }
            LayerEntry::File { path, mode, data } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_slice())
                    .map_err(io)?;
            }
            LayerEntry::Symlink { path, target } => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target).map_err(io)?;
            }
            LayerEntry::HardLink { path, target } => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_size(0);
                builder.append_link(&mut header, path, target).map_err(io)?;
            }
            LayerEntry::OwnedFile {
                path,
                mode,
                uid,
                gid,
                data,
            } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(*uid);
                header.set_gid(*gid);
                header.set_size(data.len() as u64);
                builder
                    .append_data(&mut header, path, data.as_slice())
                    .map_err(io)?;
            }
        }
    }
    builder
        .into_inner()
        .map_err(|e| Error::Invalid(format!("building a layer: {e}")))
}

/// gzip without a timestamp or file name, so the same input gives the same bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(data)
        .and_then(|()| encoder.finish())
        .expect("writing to a Vec cannot fail")
}

/// Writes an OCI image layout tar of one linux/amd64 image named `reference`, with one gzipped
/// layer per entry of `layers` (uncompressed tars).
pub fn oci_archive(
    out: &Path,
    reference: &str,
    layers: &[Vec<u8>],
    run: RunConfig,
) -> Result<BuiltImage> {
    let reference = crate::reference::normalize_reference(reference)?;
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(digest::of(tar));
        let gz = gzip(tar);
        layer_descriptors.push(descriptor(manifest::OCI_LAYER_GZIP, &gz));
        blobs.insert(digest::of(&gz), gz);
    }
    let config = Config {
        created: Some(CREATED.to_owned()),
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        config: Some(run),
        rootfs: RootFs {
            kind: "layers".to_owned(),
            diff_ids: diff_ids.clone(),
        },
    };
    let config_bytes = to_json(&config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.to_owned()),
        config: descriptor(manifest::OCI_CONFIG, &config_bytes),
        layers: layer_descriptors,
    };
    blobs.insert(digest::of(&config_bytes), config_bytes);
    let manifest_bytes = to_json(&manifest)?;
    let mut manifest_descriptor = descriptor(manifest::OCI_MANIFEST, &manifest_bytes);
    let manifest_digest = manifest_descriptor.digest.clone();
    blobs.insert(manifest_digest.clone(), manifest_bytes);
    manifest_descriptor.platform = Some(Platform {
        architecture: "amd64".to_owned(),
        os: "linux".to_owned(),
        variant: None,
    });
    for key in [
        manifest::ANNOTATION_REF_NAME,
        manifest::ANNOTATION_CONTAINERD_NAME,
    ] {
        manifest_descriptor
            .annotations
            .insert(key.to_owned(), reference.clone());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(manifest::OCI_INDEX.to_owned()),
        manifests: vec![manifest_descriptor],
    };
    let mut files = vec![
        LayerEntry::File {
            path: "oci-layout".to_owned(),
            mode: 0o644,
            data: br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        },
        LayerEntry::File {
            path: "index.json".to_owned(),
            mode: 0o644,
            data: to_json(&index)?,
        },
        LayerEntry::Dir {
            path: "blobs".to_owned(),
            mode: 0o755,
        },
        LayerEntry::Dir {
            path: "blobs/sha256".to_owned(),
            mode: 0o755,
        },
    ];
    for (digest, data) in blobs {
        files.push(LayerEntry::File {
            path: format!("blobs/sha256/{}", digest::validate(&digest)?),
            mode: 0o644,
            data,
        });
    }
    let archive = layer_tar(&files)?;
    if let Some(parent) = out.parent() {
        fs::create_dir_all(parent).at(parent)?;
    }
    // Temp + rename: a reader never sees half an archive.
    let tmp = PathBuf::from(format!("{}.tmp", out.display()));
    fs::write(&tmp, &archive).at(&tmp)?;
    fs::rename(&tmp, out).at(out)?;
    Ok(BuiltImage {
        reference,
        digest: manifest_digest,
        diff_ids,
    })
}

/// The busybox image's only layer: the host's `/bin/busybox`, a symlink per applet, passwd,
/// group, `/tmp` (1777) and `/var/www`.
pub fn busybox_layer(busybox: &Path) -> Result<Vec<u8>> {
    let binary = fs::read(busybox).at(busybox)?;
    let listed = Command::new(busybox)
        .arg("--list-full")
        .output()
        .at(busybox)?;
    if !listed.status.success() {
        return Err(Error::Invalid(format!(
            "{} --list-full failed: {}",
            busybox.display(),
            String::from_utf8_lossy(&listed.stderr).trim()
        )));
    }
    let applets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| !l.is_empty() && l != "bin/busybox")
        .collect();
    if applets.is_empty() {
        return Err(Error::Invalid(format!(
            "{} --list-full listed no applets",
            busybox.display()
        )));
    }
    let mut dirs: BTreeMap<String, u32> = [
        ("bin", 0o755),
        ("etc", 0o755),
        ("root", 0o700),
        ("sbin", 0o755),
        ("tmp", 0o1777),
        ("usr", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("var", 0o755),
        ("var/www", 0o755),
    ]
    .into_iter()
    .map(|(d, m)| (d.to_owned(), m))
    .collect();
    for applet in &applets {
        let mut parent = Path::new(applet).parent();
        while let Some(dir) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.entry(dir.display().to_string()).or_insert(0o755);
            parent = dir.parent();
        }
    }
    let mut entries: Vec<LayerEntry> = dirs
        .into_iter()
        .map(|(path, mode)| LayerEntry::Dir { path, mode })
        .collect();
    entries.push(LayerEntry::File {
        path: "bin/busybox".to_owned(),
        mode: 0o755,
        data: binary,
    });
    entries.push(LayerEntry::File {
        path: "etc/passwd".to_owned(),
        mode: 0o644,
        data:
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
                .to_vec(),
    });
    entries.push(LayerEntry::File {
        path: "etc/group".to_owned(),
        mode: 0o644,
        data: b"root:x:0:\nnobody:x:65534:\n".to_vec(),
    });
    let mut applets = applets;
    applets.sort();
    applets.dedup();
    for applet in applets {
        entries.push(LayerEntry::Symlink {
            path: applet,
            target: "/bin/busybox".to_owned(),
        });
    }
    layer_tar(&entries)
}

/// Writes `target/images/busybox.tar`-style archive of `localhost/busybox:latest` to `out`.
pub fn busybox_archive(out: &Path) -> Result<BuiltImage> {
    let layer = busybox_layer(Path::new(HOST_BUSYBOX))?;
    oci_archive(
        out,
        BUSYBOX_REFERENCE,
        &[layer],
        RunConfig {
            env: Some(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".to_owned()]),
            cmd: Some(vec!["sh".to_owned()]),
            ..RunConfig::default()
        },
    )
}

fn descriptor(media_type: &str, data: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: digest::of(data),
        size: data.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|error| Error::Json {
        what: "image metadata".to_owned(),
        error,
    })
}
