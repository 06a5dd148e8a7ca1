//! The local-path driver's volumes on disk: a directory per volume under the volume directory,
//! and beside them (`.volumes/<name>.json`) what each was created with, so that its size,
//! quota project and parameters survive restarts. Capacity is the filesystem's free space (or
//! the configured capacity) minus what volumes already claim.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

/// The directory of volume metadata inside the volume directory (a name no volume can have:
/// volume names may not start with a dot).
const META_DIR: &str = ".volumes";

/// The first project id handed to a volume's quota; ids below are left to the administrator.
const FIRST_PROJECT_ID: u32 = 100_000;

/// One volume as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRecord {
    pub name: String,
    /// What the volume may hold: its quota, and what it takes from the node's capacity.
    pub capacity_bytes: u64,
    /// The quota project of its directory, whether or not the filesystem enforces it.
    pub project_id: u32,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable until volumes are deleted (CSI's RESOURCE_EXHAUSTED).
    #[error("not enough capacity: {requested} bytes requested, {available} bytes available")]
    Exhausted { requested: u64, available: u64 },
    /// A volume of that name exists with another size (CSI's ALREADY_EXISTS).
    #[error("volume {name} already exists with {existing} bytes, not {requested}")]
    Conflict {
        name: String,
        existing: u64,
        requested: u64,
    },
    #[error("volume {0} does not exist")]
    NotFound(String),
    /// The name could leave the volume directory (CSI's INVALID_ARGUMENT).
    #[error(
        "invalid volume name {0:?}: letters, digits, '-', '_' and '.' only, not starting with '.'"
    )]
    InvalidName(String),
    /// The node's filesystem failed us (retryable).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// The volumes of one volume directory. Operations are serialised: capacity checks and the
/// creation they allow happen as one step.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    /// A fixed capacity (`--volume-capacity`) instead of the filesystem's free space.
    capacity: Option<u64>,
    lock: Mutex<()>,
}

impl Store {
    /// The store of `dir` (created if missing).
    pub fn open(dir: &Path, capacity: Option<u64>) -> Result<Self> {
        let meta = dir.join(META_DIR);
        fs::create_dir_all(&meta).map_err(io_error(format!("creating {}", meta.display())))?;
        Ok(Self {
            dir: dir.to_owned(),
            capacity,
            lock: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where volume `name`'s data lives.
    pub fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.dir.join(META_DIR).join(format!("{name}.json"))
    }

    /// Every recorded volume, by name.
    pub fn list(&self) -> Result<BTreeMap<String, VolumeRecord>> {
        let meta = self.dir.join(META_DIR);
        let mut out = BTreeMap::new();
        let entries =
            fs::read_dir(&meta).map_err(io_error(format!("reading {}", meta.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<VolumeRecord>(&b).ok())
            {
                Some(record) => {
                    out.insert(record.name.clone(), record);
                }
                None => tracing::warn!(path = %path.display(), "unreadable volume record; ignored"),
            }
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Option<VolumeRecord>> {
        check_name(name)?;
        match fs::read(self.meta_path(name)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Io {
                    context: format!("decoding the record of volume {name}"),
                    source: io::Error::new(io::ErrorKind::InvalidData, e),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(format!("reading the record of volume {name}"))(e)),
        }
    }

    /// What the volumes claim together.
    pub fn claimed(&self) -> Result<u64> {
        Ok(self.list()?.values().map(|v| v.capacity_bytes).sum())
    }

    /// What is left for new volumes (and growth).
    pub fn available(&self) -> Result<u64> {
        let base = match self.capacity {
            Some(capacity) => capacity,
            None => free_space(&self.dir)?,
        };
        Ok(base.saturating_sub(self.claimed()?))
    }

    /// Creates volume `name` of `bytes` (idempotent: the same name and size again is the
    /// volume that exists). Returns the record and whether it was new; `make_dir` sets up its
    /// directory (quota included) once the capacity is reserved.
    pub fn create(
        &self,
        name: &str,
        bytes: u64,
        parameters: BTreeMap<String, String>,
        make_dir: impl FnOnce(&Path, &VolumeRecord) -> io::Result<()>,
    ) -> Result<(VolumeRecord, bool)> {
        check_name(name)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = self.get(name)? {
            if existing.capacity_bytes != bytes {
                return Err(Error::Conflict {
                    name: name.to_owned(),
                    existing: existing.capacity_bytes,
                    requested: bytes,
                });
            }
            // A crash between the record and the directory: finish it.
            let path = self.dir.join(name);
            if !path.is_dir() {
                make_dir(&path, &existing)
                    .map_err(io_error(format!("creating {}", path.display())))?;
            }
            return Ok((existing, false));
        }
        let volumes = self.list()?;
        let available = match self.capacity {
            Some(capacity) => capacity,
            None => free_space(&self.dir)?,
        }
        .saturating_sub(volumes.values().map(|v| v.capacity_bytes).sum());
        if bytes > available {
            return Err(Error::Exhausted {
                requested: bytes,
                available,
            });
        }
        let project_id = volumes
            .values()
            .map(|v| v.project_id + 1)
            .max()
            .unwrap_or(FIRST_PROJECT_ID)
            .max(FIRST_PROJECT_ID);
        let record = VolumeRecord {
            name: name.to_owned(),
            capacity_bytes: bytes,
            project_id,
            parameters,
        };
        // The record first: capacity is never handed out twice, and a directory without a
        // record (which nothing would ever delete) cannot happen.
        self.write_record(&record)?;
        let path = self.dir.join(name);
        if let Err(e) = make_dir(&path, &record) {
            let _ = fs::remove_dir_all(&path);
            let _ = fs::remove_file(self.meta_path(name));
            return Err(io_error(format!("creating {}", path.display()))(e));
        }
        Ok((record, true))
    }

    /// Grows volume `name` to `bytes` (never shrinks it); `apply` updates its quota once the
    /// capacity is reserved. Returns the record as it now is.
    pub fn expand(
        &self,
        name: &str,
        bytes: u64,
        apply: impl FnOnce(&Path, &VolumeRecord) -> io::Result<()>,
    ) -> Result<VolumeRecord> {
        check_name(name)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut record = self
            .get(name)?
            .ok_or_else(|| Error::NotFound(name.to_owned()))?;
        if bytes <= record.capacity_bytes {
            return Ok(record);
        }
        let others: u64 = self
            .list()?
            .values()
            .filter(|v| v.name != name)
            .map(|v| v.capacity_bytes)
            .sum();
        let base = match self.capacity {
            Some(capacity) => capacity,
            // Free space does not count what this volume already holds back.
            None => free_space(&self.dir)?,
        };
        let available = base.saturating_sub(others);
        if bytes > available {
            return Err(Error::Exhausted {
                requested: bytes,
                available,
            });
        }
        record.capacity_bytes = bytes;
        let path = self.dir.join(name);
        apply(&path, &record).map_err(io_error(format!("resizing {}", path.display())))?;
        self.write_record(&record)?;
        Ok(record)
    }

    /// Deletes volume `name`, data and record (idempotent). `before` runs on its directory
    /// first (to drop its quota).
    pub fn delete(
        &self,
        name: &str,
        before: impl FnOnce(&Path, &VolumeRecord),
    ) -> Result<Option<VolumeRecord>> {
        check_name(name)?;
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let record = self.get(name)?;
        let path = self.dir.join(name);
        if let Some(record) = &record
            && path.exists()
        {
            before(&path, record);
        }
        match fs::remove_dir_all(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(format!("removing {}", path.display()))(e));
            }
            _ => {}
        }
        match fs::remove_file(self.meta_path(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(format!("removing the record of {name}"))(e));
            }
            _ => {}
        }
        Ok(record)
    }

    /// Writes `record` whole or not at all (a temporary file renamed over the old one).
    fn write_record(&self, record: &VolumeRecord) -> Result<()> {
        let path = self.meta_path(&record.name);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).expect("a record always serializes");
        let write = || -> io::Result<()> {
            use io::Write as _;
            let mut file = fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(io_error(format!("writing {}", path.display())))
    }
}

/// The bytes an unprivileged user may still write on the filesystem of `dir`.
pub fn free_space(dir: &Path) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir).map_err(|e| Error::Io {
        context: format!("statvfs {}", dir.display()),
        source: e.into(),
    })?;
    Ok(stat.blocks_available() * stat.fragment_size())
}

/// Volume names become directory names: nothing that could climb out or hide.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_owned()))
    }
}

/// The bytes the files under `path` take on disk (for volume stats without a quota).
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += disk_usage(&entry.path());
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdir(path: &Path, _: &VolumeRecord) -> io::Result<()> {
        fs::create_dir(path)
    }

    #[test]
    fn create_and_delete_are_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Some(10 << 20)).unwrap();
        let (first, new) = store
            .create("pvc-a", 1 << 20, BTreeMap::new(), mkdir)
            .unwrap();
        assert!(new);
        assert!(tmp.path().join("pvc-a").is_dir());
        let (again, new) = store
            .create("pvc-a", 1 << 20, BTreeMap::new(), mkdir)
            .unwrap();
        assert!(!new);
        assert_eq!(first, again);
        assert!(matches!(
            store.create("pvc-a", 2 << 20, BTreeMap::new(), mkdir),
            Err(Error::Conflict { .. })
        ));
        fs::write(tmp.path().join("pvc-a/data"), "x").unwrap();
        assert_eq!(store.delete("pvc-a", |_, _| {}).unwrap(), Some(first));
        assert!(!tmp.path().join("pvc-a").exists());
        assert_eq!(store.delete("pvc-a", |_, _| {}).unwrap(), None);
        assert_eq!(store.available().unwrap(), 10 << 20);
    }

    #[test]
    fn capacity_is_accounted_and_refused_past_what_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), Some(10 << 20)).unwrap();
        store.create("a", 4 << 20, BTreeMap::new(), mkdir).unwrap();
        store.create("b", 4 << 20, BTreeMap::new(), mkdir).unwrap();
        assert_eq!(store.available().unwrap(), 2 << 20);
        let err = store
            .create("c", 3 << 20, BTreeMap::new(), mkdir)
            .unwrap_err();
        assert!(
            matches!(err, Error::Exhausted { requested, available } if requested == 3 << 20 && available == 2 << 20),
            "{err}"
        );
        assert!(
            !tmp.path().join("c").exists(),
            "a refused volume leaves nothing behind"
        );
        // Growth is capacity too: b may take what is left, not more.
        assert!(matches!(
            store.expand("b", 7 << 20, |_, _| Ok(())),
            Err(Error::Exhausted { .. })
        ));
        let grown = store.expand("b", 6 << 20, |_, _| Ok(())).unwrap();
        assert_eq!(grown.capacity_bytes, 6 << 20);
        assert_eq!(store.available().unwrap(), 0);
        store.delete("a", |_, _| {}).unwrap();
        assert_eq!(store.available().unwrap(), 4 << 20);
    }

    #[test]
    fn records_survive_a_restart_and_project_ids_stay_unique() {
        let tmp = tempfile::tempdir().unwrap();
        let params = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let (a, b) = {
            let store = Store::open(tmp.path(), Some(10 << 20)).unwrap();
            let (a, _) = store.create("a", 1 << 20, params.clone(), mkdir).unwrap();
            let (b, _) = store.create("b", 2 << 20, BTreeMap::new(), mkdir).unwrap();
            (a, b)
        };
        assert_ne!(a.project_id, b.project_id);
        let store = Store::open(tmp.path(), Some(10 << 20)).unwrap();
        assert_eq!(store.get("a").unwrap().unwrap().parameters, params);
        assert_eq!(store.available().unwrap(), 7 << 20);
        let (c, _) = store.create("c", 1 << 20, BTreeMap::new(), mkdir).unwrap();
        assert!(c.project_id > b.project_id);
    }

    #[test]
    fn names_cannot_leave_the_volume_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path(), None).unwrap();
        for bad in ["", "..", ".volumes", "../x", "a/b", ".hidden"] {
            assert!(
                matches!(
                    store.create(bad, 1, BTreeMap::new(), mkdir),
                    Err(Error::InvalidName(_))
                ),
                "{bad:?}"
            );
        }
        assert!(
            store.available().unwrap() > 0,
            "free space of the temp dir's filesystem"
        );
    }
}
