//! A pod's volumes on the node, under `<pod dir>/volumes/<kind>/<name>`: emptyDir (a directory,
//! or tmpfs for `medium: Memory`), hostPath (checked against its `type`), and ConfigMap, Secret,
//! downward API and projected volumes (those three and ServiceAccount tokens in one directory)
//! written the way the kubelet writes them — files in a timestamped directory behind a `..data`
//! symlink that is swapped atomically, so a container never sees a half-written update (nor a
//! token cut in two when it is refreshed). With the pod's `fsGroup`, their files are given to that
//! group as the kubelet gives them ([`ownership`]).

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write as _},
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Component, Path, PathBuf},
};

use apiary_api::core_v1::{DownwardApiVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, Volume};

use super::{
    env::{self, ConfigError, PodFacts, Sources},
    tokens::TokenKey,
};

pub mod csi;
pub mod ownership;

use ownership::ChangePolicy;

/// A volume's files by path: content and mode.
type Files = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// A volume ready to be bind-mounted into containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedVolume {
    pub host_path: PathBuf,
    /// ConfigMap, Secret, downward API and projected volumes are always read-only.
    pub read_only: bool,
}

/// Why a volume cannot be set up (reported as `FailedMount` and retried).
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: {source}")]
    Config {
        volume: String,
        #[source]
        source: ConfigError,
    },
    #[error("volume {volume}: hostPath type check failed: {path} is not a {expected}")]
    HostPathType {
        volume: String,
        path: String,
        expected: String,
    },
    #[error("volume {volume}: {kind} volumes are not supported by this node")]
    Unsupported { volume: String, kind: String },
    #[error("volume {volume}: no service account token was issued for it yet")]
    MissingToken { volume: String },
    #[error("volume {volume}: item path {path:?} must be relative and must not contain '..'")]
    ItemPath { volume: String, path: String },
    #[error("volume {volume}: {context}")]
    Io {
        volume: String,
        context: String,
        #[source]
        source: io::Error,
    },
}

/// Sets up (or refreshes) every volume of `pod` under `pod_dir`; returns them by name. Claim
/// volumes are left to [`csi::publish`], which needs the API and the volume's driver.
pub fn prepare(
    pod: &Pod,
    pod_dir: &Path,
    facts: &PodFacts,
    sources: &Sources,
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<BTreeMap<String, PreparedVolume>, VolumeError> {
    let mut prepared = BTreeMap::new();
    for volume in &pod.spec.volumes {
        if csi::claim_of(pod, volume).is_some() {
            continue;
        }
        let v = prepare_one(pod, volume, pod_dir, facts, sources, node_allocatable)?;
        prepared.insert(volume.name.clone(), v);
    }
    Ok(prepared)
}

fn prepare_one(
    pod: &Pod,
    volume: &Volume,
    pod_dir: &Path,
    facts: &PodFacts,
    sources: &Sources,
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<PreparedVolume, VolumeError> {
    let name = &volume.name;
    let io = |context: String| {
        let volume = name.clone();
        move |source| VolumeError::Io {
            volume,
            context,
            source,
        }
    };
    let dir = |kind: &str| pod_dir.join("volumes").join(kind).join(name);
    let fs_group = ownership::fs_group(pod);
    if let Some(empty) = &volume.empty_dir {
        let path = dir("empty-dir");
        let memory = empty.medium == "Memory";
        // Set up once, as the kubelet's: what the pod did to it since (modes, files) stays.
        let ready = pod_dir.join("volumes").join("ready").join(name);
        if ready.exists() && path.is_dir() && (!memory || is_mount_point(&path)) {
            return Ok(PreparedVolume {
                host_path: path,
                read_only: false,
            });
        }
        fs::create_dir_all(&path).map_err(io(format!("creating {}", path.display())))?;
        // Writable by any user in the container, as the kubelet makes it.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
            .map_err(io(format!("chmod {}", path.display())))?;
        if memory {
            let size = empty
                .size_limit
                .as_ref()
                .and_then(|q| q.value().ok())
                .map(|bytes| format!(",size={bytes}"))
                .unwrap_or_default();
            mount_tmpfs(&path, &format!("mode=1777{size}"))
                .map_err(|e| io(format!("mounting tmpfs on {}", path.display()))(e.into()))?;
        }
        if let Some(group) = fs_group {
            // The only walk an emptyDir gets: on a fresh root, which never matches, so
            // `OnRootMismatch` walks too (the kubelet passes no policy here; same result).
            ownership::set_volume_ownership(&path, group, ChangePolicy::of(pod), false)
                .map_err(io(format!("changing the ownership of {}", path.display())))?;
        }
        if let Some(parent) = ready.parent() {
            fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        fs::write(&ready, "").map_err(io(format!("writing {}", ready.display())))?;
        return Ok(PreparedVolume {
            host_path: path,
            read_only: false,
        });
    }
    if let Some(host) = &volume.host_path {
        let path = PathBuf::from(&host.path);
        check_host_path(name, &path, host.type_.as_deref().unwrap_or(""))?;
        return Ok(PreparedVolume {
            host_path: path,
            read_only: false,
        });
    }
    let files: Files;
    let kind;
    if let Some(cm) = &volume.config_map {
        kind = "configmap";
        files = project(
            name,
            sources.config_map_data(&cm.name).map(Ok),
            ConfigError::ConfigMapNotFound(cm.name.clone()),
            &cm.items,
            cm.default_mode,
            cm.optional,
        )?;
    } else if let Some(secret) = &volume.secret {
        kind = "secret";
        files = project(
            name,
            sources.secret_data(&secret.secret_name),
            ConfigError::SecretNotFound(secret.secret_name.clone()),
            &secret.items,
            secret.default_mode,
            secret.optional,
        )?;
    } else if let Some(downward) = &volume.downward_api {
        kind = "downward-api";
        files = downward_files(
            pod,
            name,
            &downward.items,
            downward.default_mode,
            facts,
            node_allocatable,
        )?;
    } else if let Some(projected) = &volume.projected {
        kind = "projected";
        files = projected_files(
            pod,
            name,
            projected,
            facts,
            sources,
            node_allocatable,
            fs_group.is_some(),
        )?;
    } else {
        let kind = volume.sources().first().copied().unwrap_or("unknown");
        return Err(VolumeError::Unsupported {
            volume: name.clone(),
            kind: kind.to_owned(),
        });
    }
    let path = dir(kind);
    if matches!(kind, "secret" | "projected") {
        // Secrets (and projected tokens) live in memory only, as the kubelet keeps them: never
        // on the node's disk, gone when the pod's volumes are unmounted.
        in_memory(&path).map_err(io(format!("mounting tmpfs on {}", path.display())))?;
    }
    write_atomically(&path, &files, fs_group).map_err(io(format!("writing {}", path.display())))?;
    Ok(PreparedVolume {
        host_path: path,
        read_only: true,
    })
}

/// The files of a downward API volume (or projection): each item's pod field or container
/// resource.
fn downward_files(
    pod: &Pod,
    volume: &str,
    items: &[DownwardApiVolumeFile],
    default_mode: Option<i32>,
    facts: &PodFacts,
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<Files, VolumeError> {
    let mut out = BTreeMap::new();
    for item in items {
        let value = if let Some(f) = &item.field_ref {
            env::field(pod, facts, &f.field_path)
        } else if let Some(r) = &item.resource_field_ref {
            let container = pod
                .spec
                .containers
                .iter()
                .find(|c| c.name == r.container_name)
                .cloned()
                .unwrap_or_default();
            env::resource(
                &container,
                &r.resource,
                r.divisor.as_ref(),
                node_allocatable,
            )
        } else {
            continue;
        }
        .map_err(|source| VolumeError::Config {
            volume: volume.to_owned(),
            source,
        })?;
        let mode = item.mode.or(default_mode).unwrap_or(0o644) as u32;
        out.insert(item_path(volume, &item.path)?, (value.into_bytes(), mode));
    }
    Ok(out)
}

/// The files of a projected volume: every source's, in one directory, with the volume's
/// `defaultMode` where an item has no `mode`. With an `fsGroup` a token is 0600, to which the
/// ownership change adds group read (the kubelet's 0640).
fn projected_files(
    pod: &Pod,
    name: &str,
    projected: &ProjectedVolumeSource,
    facts: &PodFacts,
    sources: &Sources,
    node_allocatable: &BTreeMap<String, i64>,
    fs_group: bool,
) -> Result<Files, VolumeError> {
    let mode = projected.default_mode;
    let mut files = BTreeMap::new();
    for source in &projected.sources {
        let more = if let Some(secret) = &source.secret {
            project(
                name,
                sources.secret_data(&secret.name),
                ConfigError::SecretNotFound(secret.name.clone()),
                &secret.items,
                mode,
                secret.optional,
            )?
        } else if let Some(cm) = &source.config_map {
            project(
                name,
                sources.config_map_data(&cm.name).map(Ok),
                ConfigError::ConfigMapNotFound(cm.name.clone()),
                &cm.items,
                mode,
                cm.optional,
            )?
        } else if let Some(downward) = &source.downward_api {
            downward_files(pod, name, &downward.items, mode, facts, node_allocatable)?
        } else if let Some(projection) = &source.service_account_token {
            let key = TokenKey {
                audience: projection.audience.clone(),
                expiration_seconds: projection.expiration_seconds.unwrap_or(3600),
            };
            let token = sources
                .tokens
                .get(&key)
                .ok_or_else(|| VolumeError::MissingToken {
                    volume: name.to_owned(),
                })?;
            let path = item_path(name, &projection.path)?;
            let mode = if fs_group {
                0o600
            } else {
                mode.unwrap_or(0o644) as u32
            };
            BTreeMap::from([(path, (token.token.clone().into_bytes(), mode))])
        } else {
            return Err(VolumeError::Unsupported {
                volume: name.to_owned(),
                kind: "projected clusterTrustBundle".to_owned(),
            });
        };
        files.extend(more);
    }
    Ok(files)
}

/// The files of a ConfigMap or Secret volume from its `data` (`None`: the object does not
/// exist, which is `missing` unless the volume is optional): every key, or only `items` (each
/// must exist unless the volume is optional).
fn project(
    volume: &str,
    data: Option<Result<BTreeMap<String, Vec<u8>>, ConfigError>>,
    missing: ConfigError,
    items: &[KeyToPath],
    default_mode: Option<i32>,
    optional: Option<bool>,
) -> Result<BTreeMap<PathBuf, (Vec<u8>, u32)>, VolumeError> {
    let config = |source| VolumeError::Config {
        volume: volume.to_owned(),
        source,
    };
    let data = match data {
        Some(data) => data.map_err(config)?,
        None if optional == Some(true) => return Ok(BTreeMap::new()),
        None => return Err(config(missing)),
    };
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    let mut files = BTreeMap::new();
    if items.is_empty() {
        for (key, value) in data {
            files.insert(item_path(volume, &key)?, (value, default_mode));
        }
        return Ok(files);
    }
    for item in items {
        match data.get(&item.key) {
            Some(value) => {
                let mode = item.mode.map_or(default_mode, |m| m as u32);
                files.insert(item_path(volume, &item.path)?, (value.clone(), mode));
            }
            None if optional == Some(true) => {}
            None => {
                return Err(config(ConfigError::FieldPath(format!(
                    "configmap/secret has no key {:?}",
                    item.key
                ))));
            }
        }
    }
    Ok(files)
}

fn item_path(volume: &str, path: &str) -> Result<PathBuf, VolumeError> {
    let p = PathBuf::from(path);
    let clean = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !clean || path.starts_with("..") {
        return Err(VolumeError::ItemPath {
            volume: volume.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(p)
}

/// Writes `files` into a fresh `..<nanos>` directory, points `..data` at it with an atomic
/// rename, links each top-level entry through `..data`, and removes the previous generation.
/// With `fs_group`, the whole volume is given to that group before the swap, as the kubelet's
/// atomic writer does (always: it passes no `fsGroupChangePolicy`, and a new generation has
/// files that need it however the root looks).
fn write_atomically(
    dir: &Path,
    files: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    fs_group: Option<u32>,
) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let data_link = dir.join("..data");
    // Unchanged content: keep the current generation (and its inode) as it is.
    if let Ok(current) = fs::read_link(&data_link)
        && same_files(&dir.join(&current), files, fs_group)
    {
        return Ok(());
    }
    let generation = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
    );
    let gen_dir = dir.join(&generation);
    fs::create_dir_all(&gen_dir)?;
    fs::set_permissions(&gen_dir, fs::Permissions::from_mode(0o755))?;
    for (path, (content, mode)) in files {
        let target = gen_dir.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = fs::File::create(&target)?;
        file.write_all(content)?;
        file.set_permissions(fs::Permissions::from_mode(*mode))?;
    }
    if let Some(group) = fs_group {
        ownership::set_volume_ownership(dir, group, ChangePolicy::Always, true)?;
    }
    let previous = fs::read_link(&data_link).ok();
    let tmp_link = dir.join("..data_tmp");
    let _ = fs::remove_file(&tmp_link);
    symlink(&generation, &tmp_link)?;
    fs::rename(&tmp_link, &data_link)?;
    let mut top: Vec<String> = files
        .keys()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    top.dedup();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            fs::remove_file(entry.path())?;
        }
    }
    for name in &top {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link)?;
        }
    }
    if let Some(previous) = previous
        && previous != Path::new(&generation)
    {
        let _ = fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

/// Whether generation `dir` holds `files` as they would be written now (with `fs_group`: that
/// group and the group read the ownership change adds).
fn same_files(
    dir: &Path,
    files: &BTreeMap<PathBuf, (Vec<u8>, u32)>,
    fs_group: Option<u32>,
) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let count = walk_files(dir).len();
    count == files.len()
        && files.iter().all(|(path, (content, mode))| {
            let p = dir.join(path);
            let mode = if fs_group.is_some() {
                mode | 0o440
            } else {
                *mode
            };
            fs::read(&p).is_ok_and(|c| c == *content)
                && fs::symlink_metadata(&p).is_ok_and(|m| {
                    m.permissions().mode() & 0o7777 == mode && fs_group.is_none_or(|g| m.gid() == g)
                })
        })
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk_files(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn check_host_path(volume: &str, path: &Path, type_: &str) -> Result<(), VolumeError> {
    use std::os::unix::fs::FileTypeExt as _;
    let fail = |expected: &str| VolumeError::HostPathType {
        volume: volume.to_owned(),
        path: path.display().to_string(),
        expected: expected.to_owned(),
    };
    let io = |source| VolumeError::Io {
        volume: volume.to_owned(),
        context: format!("creating {}", path.display()),
        source,
    };
    let meta = fs::metadata(path).ok();
    match type_ {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if meta.is_none() {
                fs::create_dir_all(path).map_err(io)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(io)?;
            } else if !meta.is_some_and(|m| m.is_dir()) {
                return Err(fail("directory"));
            }
            Ok(())
        }
        "Directory" => meta
            .filter(|m| m.is_dir())
            .map(drop)
            .ok_or_else(|| fail("directory")),
        "FileOrCreate" => {
            if meta.is_none() {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io)?;
                }
                fs::File::create(path).map_err(io)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o644)).map_err(io)?;
            } else if !meta.is_some_and(|m| m.is_file()) {
                return Err(fail("file"));
            }
            Ok(())
        }
        "File" => meta
            .filter(|m| m.is_file())
            .map(drop)
            .ok_or_else(|| fail("file")),
        "Socket" => meta
            .filter(|m| m.file_type().is_socket())
            .map(drop)
            .ok_or_else(|| fail("socket")),
        "CharDevice" => meta
            .filter(|m| m.file_type().is_char_device())
            .map(drop)
            .ok_or_else(|| fail("character device")),
        "BlockDevice" => meta
            .filter(|m| m.file_type().is_block_device())
            .map(drop)
            .ok_or_else(|| fail("block device")),
        other => Err(fail(&format!("known hostPath type (got {other:?})"))),
    }
}

/// Whether `path` is a mount point: its device differs from its parent's.
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(me), Some(Ok(parent))) = (fs::metadata(path), path.parent().map(fs::metadata)) else {
        return false;
    };
    me.dev() != parent.dev()
}

/// Mounts a tmpfs (`nosuid,nodev`, with `options`) on `dir`, unless something is mounted there
/// already: the memory of emptyDirs of `medium: Memory`, Secrets and projections.
fn mount_tmpfs(dir: &Path, options: &str) -> nix::Result<()> {
    if is_mount_point(dir) {
        return Ok(());
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(options),
    )
}

/// Makes `dir` a tmpfs of its own ([`mount_tmpfs`]). An agent that may not mount (a unit test
/// as an ordinary user) keeps the directory on disk.
fn in_memory(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    match mount_tmpfs(dir, "mode=0755") {
        Err(nix::errno::Errno::EPERM) if !nix::unistd::geteuid().is_root() => Ok(()),
        result => result.map_err(io::Error::from),
    }
}

/// Unmounts the pod's tmpfs volumes (emptyDirs of `medium: Memory`, Secrets, projections)
/// and removes its volume directories.
pub fn remove_all(pod_dir: &Path) -> io::Result<()> {
    // A CSI volume still mounted here holds a claim's data: removing the tree would delete it.
    if csi::any_mounted(pod_dir) {
        return Err(io::Error::other(format!(
            "{}: CSI volumes are still published; keeping the directory",
            pod_dir.display()
        )));
    }
    for kind in ["empty-dir", "secret", "projected"] {
        let Ok(entries) = fs::read_dir(pod_dir.join("volumes").join(kind)) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_mount_point(&entry.path()) {
                nix::mount::umount2(&entry.path(), nix::mount::MntFlags::MNT_DETACH)
                    .map_err(io::Error::from)?;
            }
        }
    }
    match fs::remove_dir_all(pod_dir.join("volumes")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::core_v1::{ConfigMap, ConfigMapVolumeSource, HostPathVolumeSource};

    fn pod_with(volumes: Vec<Volume>) -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = "p".into();
        pod.metadata.namespace = "ns".into();
        pod.spec.volumes = volumes;
        pod
    }

    #[test]
    fn secret_volumes_live_in_memory_and_go_with_the_pod() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume {
            name: "creds".into(),
            secret: Some(apiary_api::core_v1::SecretVolumeSource {
                secret_name: "db".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = pod_with(vec![volume]);
        let mut secret = apiary_api::core_v1::Secret::default();
        secret.data.insert("password".into(), "aHVudGVyMg==".into());
        let mut sources = Sources::default();
        sources.secrets.insert("db".into(), Some(secret));
        let prepared = prepare(
            &pod,
            tmp.path(),
            &PodFacts::default(),
            &sources,
            &BTreeMap::new(),
        )
        .unwrap();
        let dir = &prepared["creds"].host_path;
        assert_eq!(fs::read_to_string(dir.join("password")).unwrap(), "hunter2");
        if nix::unistd::geteuid().is_root() {
            // Mounting needs root; the agent always has it.
            let fs_type = nix::sys::statfs::statfs(dir).unwrap().filesystem_type();
            assert_eq!(fs_type, nix::sys::statfs::TMPFS_MAGIC, "{}", dir.display());
            assert!(is_mount_point(dir));
        }
        remove_all(tmp.path()).unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn config_map_volumes_are_swapped_atomically_and_follow_updates() {
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = pod_with(vec![volume]);
        let mut cm = ConfigMap::default();
        cm.data.insert("a.conf".into(), "one".into());
        let mut sources = Sources::default();
        sources.config_maps.insert("app".into(), Some(cm.clone()));
        let prepared = prepare(
            &pod,
            tmp.path(),
            &PodFacts::default(),
            &sources,
            &BTreeMap::new(),
        )
        .unwrap();
        let dir = &prepared["cfg"].host_path;
        assert!(prepared["cfg"].read_only);
        assert_eq!(fs::read_to_string(dir.join("a.conf")).unwrap(), "one");
        cm.data.insert("a.conf".into(), "two".into());
        cm.data.insert("b.conf".into(), "new".into());
        sources.config_maps.insert("app".into(), Some(cm.clone()));
        prepare(
            &pod,
            tmp.path(),
            &PodFacts::default(),
            &sources,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("a.conf")).unwrap(), "two");
        assert_eq!(fs::read_to_string(dir.join("b.conf")).unwrap(), "new");
        let generations = fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let n = e
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .into_owned();
                n.starts_with("..") && n != "..data"
            })
            .count();
        assert_eq!(generations, 1, "the old generation is removed");
        sources.config_maps.insert("app".into(), None);
        let err = prepare(
            &pod,
            tmp.path(),
            &PodFacts::default(),
            &sources,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "volume cfg: configmap \"app\" not found");
    }

    #[test]
    fn host_path_types_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        let host = |path: &Path, t: &str| Volume {
            name: "h".into(),
            host_path: Some(HostPathVolumeSource {
                path: path.display().to_string(),
                type_: Some(t.into()),
            }),
            ..Default::default()
        };
        let run = |v| {
            prepare(
                &pod_with(vec![v]),
                tmp.path(),
                &PodFacts::default(),
                &Sources::default(),
                &BTreeMap::new(),
            )
        };
        assert!(run(host(&file, "File")).is_ok());
        assert!(run(host(&file, "Directory")).is_err());
        let created = tmp.path().join("made/here");
        run(host(&created, "DirectoryOrCreate")).unwrap();
        assert!(created.is_dir());
        assert!(run(host(&tmp.path().join("nope"), "File")).is_err());
    }

    #[test]
    fn projected_volumes_hold_token_ca_and_namespace_and_swap_a_renewed_token_atomically() {
        use crate::agent::tokens::IssuedToken;
        use apiary_api::core_v1::{
            ConfigMapProjection, DownwardApiProjection, DownwardApiVolumeFile, ObjectFieldSelector,
            ProjectedVolumeSource, ServiceAccountTokenProjection, VolumeProjection,
        };
        let tmp = tempfile::tempdir().unwrap();
        // As root the projection is a tmpfs: unmounted however the test ends, or the temporary
        // directory could not be removed (and every run would leave a mount behind).
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = remove_all(self.0);
            }
        }
        let _unmount = Unmount(tmp.path());
        let volume = Volume {
            name: "kube-api-access-abcde".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o640),
                sources: vec![
                    VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: String::new(),
                            expiration_seconds: Some(3607),
                            path: "token".into(),
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: "kube-root-ca.crt".into(),
                            items: vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: "ca.crt".into(),
                                mode: Some(0o444),
                            }],
                            optional: None,
                        }),
                        ..Default::default()
                    },
                    VolumeProjection {
                        downward_api: Some(DownwardApiProjection {
                            items: vec![DownwardApiVolumeFile {
                                path: "namespace".into(),
                                field_ref: Some(ObjectFieldSelector {
                                    field_path: "metadata.namespace".into(),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }],
                        }),
                        ..Default::default()
                    },
                ],
            }),
            ..Default::default()
        };
        let pod = pod_with(vec![volume]);
        let mut cm = ConfigMap::default();
        cm.data.insert("ca.crt".into(), "PEM".into());
        cm.data.insert("other".into(), "not projected".into());
        let mut sources = Sources::default();
        sources
            .config_maps
            .insert("kube-root-ca.crt".into(), Some(cm));
        let key = TokenKey {
            audience: String::new(),
            expiration_seconds: 3607,
        };
        let token = |t: &str| IssuedToken {
            token: t.into(),
            issued_at: std::time::SystemTime::UNIX_EPOCH,
            expires_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let run = |sources: &Sources| {
            prepare(
                &pod,
                tmp.path(),
                &PodFacts::default(),
                sources,
                &BTreeMap::new(),
            )
        };
        // No token issued yet: nothing is mounted half-made.
        assert_eq!(
            run(&sources).unwrap_err().to_string(),
            "volume kube-api-access-abcde: no service account token was issued for it yet"
        );
        sources.tokens.insert(key.clone(), token("first"));
        let prepared = run(&sources).unwrap();
        let dir = &prepared["kube-api-access-abcde"].host_path;
        assert!(dir.ends_with("volumes/projected/kube-api-access-abcde"));
        assert!(prepared["kube-api-access-abcde"].read_only);
        let read = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        let mode = |f: &str| fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (read("token"), read("ca.crt"), read("namespace")),
            ("first".into(), "PEM".into(), "ns".into())
        );
        assert_eq!(
            (mode("token"), mode("ca.crt"), mode("namespace")),
            (0o640, 0o444, 0o640)
        );
        assert!(!dir.join("other").exists());
        // Each name is a link through `..data`, so one rename swaps them all.
        assert_eq!(
            fs::read_link(dir.join("token")).unwrap(),
            Path::new("..data/token")
        );
        let before = fs::read_link(dir.join("..data")).unwrap();
        sources.tokens.insert(key, token("second"));
        run(&sources).unwrap();
        assert_eq!(read("token"), "second");
        assert_ne!(fs::read_link(dir.join("..data")).unwrap(), before);
        assert!(!dir.join(before).exists(), "the old generation is removed");
    }

    fn prepare_all(pod: &Pod, dir: &Path, sources: &Sources) -> BTreeMap<String, PreparedVolume> {
        prepare(pod, dir, &PodFacts::default(), sources, &BTreeMap::new()).unwrap()
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    /// The test's own group: one it may give files to as any user.
    fn own_group() -> u32 {
        nix::unistd::getegid().as_raw()
    }

    #[test]
    fn empty_dirs_are_world_writable_and_set_up_once_as_the_kubelet_makes_them() {
        use apiary_api::core_v1::EmptyDirVolumeSource;
        let tmp = tempfile::tempdir().unwrap();
        let empty = |name: &str, medium: &str| Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: medium.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let root = nix::unistd::geteuid().is_root();
        let mut volumes = vec![empty("disk", "")];
        if root {
            // tmpfs needs root; the agent always has it.
            volumes.push(empty("memory", "Memory"));
        }
        let pod = pod_with(volumes);
        let prepared = prepare_all(&pod, tmp.path(), &Sources::default());
        let disk = &prepared["disk"].host_path;
        assert_eq!(mode_of(disk), 0o777);
        if root {
            assert_eq!(mode_of(&prepared["memory"].host_path), 0o1777);
        }
        // What the pod does to its emptyDir stays: a refresh does not set it up again.
        fs::set_permissions(disk, fs::Permissions::from_mode(0o700)).unwrap();
        prepare_all(&pod, tmp.path(), &Sources::default());
        assert_eq!(mode_of(disk), 0o700);
        remove_all(tmp.path()).unwrap();

        // With an fsGroup the root is the group's, setgid.
        let mut pod = pod_with(vec![empty("disk", "")]);
        pod.spec.security_context = Some(apiary_api::core_v1::PodSecurityContext {
            fs_group: Some(own_group().into()),
            ..Default::default()
        });
        let prepared = prepare_all(&pod, tmp.path(), &Sources::default());
        let disk = &prepared["disk"].host_path;
        assert_eq!(mode_of(disk), 0o2777);
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(fs::metadata(disk).unwrap().gid(), own_group());
        remove_all(tmp.path()).unwrap();
    }

    #[test]
    fn fs_group_adds_group_read_to_config_map_files_and_tokens_and_keeps_the_generation() {
        use std::os::unix::fs::MetadataExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let volume = Volume {
            name: "cfg".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: "app".into(),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut pod = pod_with(vec![volume]);
        pod.spec.security_context = Some(apiary_api::core_v1::PodSecurityContext {
            fs_group: Some(own_group().into()),
            ..Default::default()
        });
        let mut cm = ConfigMap::default();
        cm.data.insert("a.conf".into(), "one".into());
        let mut sources = Sources::default();
        sources.config_maps.insert("app".into(), Some(cm));
        let prepared = prepare_all(&pod, tmp.path(), &sources);
        let dir = &prepared["cfg"].host_path;
        // defaultMode | 0440, the group's; directories setgid with group search.
        assert_eq!(mode_of(&dir.join("a.conf")), 0o440);
        assert_eq!(fs::metadata(dir.join("a.conf")).unwrap().gid(), own_group());
        assert_eq!(mode_of(&dir.join("..data")) & 0o2550, 0o2550);
        let generation = fs::read_link(dir.join("..data")).unwrap();
        prepare_all(&pod, tmp.path(), &sources);
        assert_eq!(
            fs::read_link(dir.join("..data")).unwrap(),
            generation,
            "unchanged content keeps its generation"
        );
        // A projected token is 0600 with an fsGroup, which the group can then read: 0640.
        assert_eq!(
            projected_token_mode(Some(0o644), true),
            0o600,
            "the kubelet's token mode with an fsGroup"
        );
    }

    fn projected_token_mode(default_mode: Option<i32>, fs_group: bool) -> u32 {
        use crate::agent::tokens::IssuedToken;
        use apiary_api::core_v1::{ServiceAccountTokenProjection, VolumeProjection};
        let projected = ProjectedVolumeSource {
            default_mode,
            sources: vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: String::new(),
                    expiration_seconds: Some(3600),
                    path: "token".into(),
                }),
                ..Default::default()
            }],
        };
        let mut sources = Sources::default();
        sources.tokens.insert(
            TokenKey {
                audience: String::new(),
                expiration_seconds: 3600,
            },
            IssuedToken {
                token: "t".into(),
                issued_at: std::time::SystemTime::UNIX_EPOCH,
                expires_at: std::time::SystemTime::UNIX_EPOCH,
            },
        );
        let files = projected_files(
            &Pod::default(),
            "v",
            &projected,
            &PodFacts::default(),
            &sources,
            &BTreeMap::new(),
            fs_group,
        )
        .unwrap();
        files[Path::new("token")].1
    }

    #[test]
    fn item_paths_cannot_escape_the_volume() {
        assert!(item_path("v", "../etc/passwd").is_err());
        assert!(item_path("v", "/abs").is_err());
        assert!(item_path("v", "a/b").is_ok());
    }
}
