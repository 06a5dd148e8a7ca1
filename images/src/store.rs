//! The on-disk store: `blobs/sha256/<hex>`, `layers/<diffid-hex>/`, `index.json` (reference →
//! manifest digest), `lock` and `tmp/`.
//!
//! Mutations (import, pull, remove) hold an exclusive `flock` on `lock` from start to end, so the
//! node agent and the CLI can share a root: a garbage collection never sees a half-pulled image.
//! Everything lands in `tmp/` first and is renamed into place, so readers, which take no lock,
//! only ever see whole blobs, whole layer directories and whole indexes.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{Read, Write as _},
    path::{Path, PathBuf},
};

use std::os::unix::fs::PermissionsExt as _;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::{
    digest::{self, HashingWriter},
    error::{Error, IoContext as _, Result, from_json},
    manifest::{Config, Document, Manifest},
    reference::Reference,
};

/// Runs an image's container, from its config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image ready to run: its config and its unpacked layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The normalized reference it was found under.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom first, ready as overlayfs lowerdirs.
    pub layers: Vec<PathBuf>,
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    /// The normalized `name:tag`.
    pub reference: String,
    /// The manifest digest.
    pub digest: String,
    /// Config and layer blobs, as stored (compressed) in bytes.
    pub size: u64,
    pub created: Option<String>,
}

/// The reference index as written to `index.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RefIndex {
    pub version: u32,
    /// Normalized reference → manifest digest.
    pub images: BTreeMap<String, String>,
}

/// The node's image store. Cheap to clone; every clone (and every process) on the same root
/// coordinates through the root's lock file.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

/// Held while mutating the store.
pub(crate) type Lock = Flock<fs::File>;

impl ImageStore {
    /// Opens the store at `root`, creating its layout if missing.
    pub fn open(root: &Path) -> Result<Self> {
        for dir in ["blobs/sha256", "layers", "tmp"] {
            let dir = root.join(dir);
            fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the exclusive mutation lock (blocking).
    pub(crate) fn lock(&self) -> Result<Lock> {
        let path = self.root.join("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .at(&path)?;
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::Io {
            path,
            error: errno.into(),
        })
    }

    /// Takes the lock from async code without blocking the runtime's workers.
    pub(crate) async fn lock_async(&self) -> Result<Lock> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.lock())
            .await
            .map_err(|e| Error::Invalid(format!("taking the store lock: {e}")))?
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest::validate(digest)?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    pub(crate) fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    pub(crate) fn read_blob(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.blob_path(digest)?;
        fs::read(&path).at(&path)
    }

    fn layer_dir(&self, diff_id: &str) -> Result<PathBuf> {
        let hex = digest::validate(diff_id)?;
        Ok(self.root.join("layers").join(hex))
    }

    /// A temp file in `tmp/`, on the same file system as its destination.
    pub(crate) fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let tmp = self.root.join("tmp");
        tempfile::NamedTempFile::new_in(&tmp).at(&tmp)
    }

    /// Moves a finished temp file to `blobs/`, after checking it hashes to `expected`.
    pub(crate) fn commit_blob(
        &self,
        file: tempfile::NamedTempFile,
        what: &'static str,
        expected: Option<&str>,
        actual: &str,
    ) -> Result<()> {
        if let Some(expected) = expected {
            digest::check(what, expected, actual)?;
        }
        let dest = self.blob_path(actual)?;
        file.persist(&dest).map_err(|e| Error::Io {
            path: dest,
            error: e.error,
        })?;
        Ok(())
    }

    /// Streams `reader` into the blob store; returns its digest and size.
    pub(crate) fn write_blob(
        &self,
        reader: &mut dyn Read,
        what: &'static str,
        expected: Option<&str>,
    ) -> Result<(String, u64)> {
        let file = self.temp_file()?;
        let path = file.path().to_path_buf();
        let mut writer = HashingWriter::new(std::io::BufWriter::new(file));
        std::io::copy(reader, &mut writer).at(&path)?;
        let (buffered, actual, size) = writer.finish();
        let file = buffered.into_inner().map_err(|e| Error::Io {
            path,
            error: e.into_error(),
        })?;
        self.commit_blob(file, what, expected, &actual)?;
        Ok((actual, size))
    }

    pub(crate) fn read_index(&self) -> Result<RefIndex> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => from_json(&bytes, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RefIndex {
                version: 1,
                images: BTreeMap::new(),
            }),
            Err(e) => Err(e).at(path),
        }
    }

    /// Replaces `index.json` atomically: temp file, fsync, rename. Needs the lock.
    fn write_index(&self, index: &RefIndex, _lock: &Lock) -> Result<()> {
        let mut file = self.temp_file()?;
        let bytes = serde_json::to_vec_pretty(index).map_err(|error| Error::Json {
            what: "index.json".to_owned(),
            error,
        })?;
        let tmp = file.path().to_path_buf();
        file.write_all(&bytes).at(&tmp)?;
        file.as_file().sync_all().at(&tmp)?;
        let dest = self.root.join("index.json");
        file.persist(&dest).map_err(|e| Error::Io {
            path: dest,
            error: e.error,
        })?;
        Ok(())
    }

    /// Reads a stored image manifest and its config.
    pub(crate) fn manifest_and_config(&self, digest: &str) -> Result<(Manifest, Config)> {
        let bytes = self.read_blob(digest)?;
        let manifest = match Document::parse(&bytes, None, &format!("manifest {digest}"))? {
            Document::Manifest(m) => m,
            Document::Index(_) => {
                return Err(Error::Invalid(format!(
                    "manifest {digest} is an index, not an image manifest"
                )));
            }
        };
        let config: Config = from_json(
            &self.read_blob(&manifest.config.digest)?,
            &format!("config {}", manifest.config.digest),
        )?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Invalid(format!(
                "image {digest}: config lists {} diff_ids for {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        Ok((manifest, config))
    }

    /// Unpacks a layer blob once; returns whether it was there already.
    pub(crate) fn ensure_layer(
        &self,
        blob: &str,
        media_type: &str,
        diff_id: &str,
        _lock: &Lock,
    ) -> Result<bool> {
        let dest = self.layer_dir(diff_id)?;
        if dest.is_dir() {
            return Ok(true);
        }
        let tmp = self.root.join("tmp");
        let staging = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(&tmp)
            .at(&tmp)?;
        // tempdir makes it 0700; as an overlay lowerdir it is the container's `/`.
        fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755)).at(staging.path())?;
        crate::layer::unpack(&self.blob_path(blob)?, media_type, diff_id, staging.path())?;
        let staged = staging.keep();
        fs::rename(&staged, &dest).at(&dest)?;
        Ok(false)
    }

    /// Unpacks the layers of a stored manifest and points `reference` at it. Needs the lock.
    pub(crate) fn register(&self, reference: &str, digest: &str, lock: &Lock) -> Result<()> {
        let (manifest, config) = self.manifest_and_config(digest)?;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            if !self.has_blob(&layer.digest) {
                return Err(Error::Invalid(format!(
                    "image {reference}: layer blob {} is missing",
                    layer.digest
                )));
            }
            self.ensure_layer(&layer.digest, &layer.media_type, diff_id, lock)?;
        }
        let mut index = self.read_index()?;
        index.images.insert(reference.to_owned(), digest.to_owned());
        self.write_index(&index, lock)
    }

    fn summary(&self, reference: &str, digest: &str) -> Result<ImageSummary> {
        let (manifest, config) = self.manifest_and_config(digest)?;
        Ok(ImageSummary {
            reference: reference.to_owned(),
            digest: digest.to_owned(),
            size: manifest.config.size + manifest.layers.iter().map(|l| l.size).sum::<u64>(),
            created: config.created,
        })
    }

    /// All images, sorted by reference.
    pub fn list(&self) -> Result<Vec<ImageSummary>> {
        self.read_index()?
            .images
            .iter()
            .map(|(reference, digest)| self.summary(reference, digest))
            .collect()
    }

    /// Summaries of `references` (after an import).
    pub(crate) fn summaries(&self, references: &[String]) -> Result<Vec<ImageSummary>> {
        let index = self.read_index()?;
        references
            .iter()
            .filter_map(|r| index.images.get(r).map(|d| self.summary(r, d)))
            .collect()
    }

    /// Looks `reference` up in the local store only.
    pub fn resolve(&self, reference: &str) -> Result<Option<Image>> {
        let normalized = Reference::parse(reference)?.to_string();
        let index = self.read_index()?;
        let Some(digest) = index.images.get(&normalized) else {
            return Ok(None);
        };
        let (manifest, config) = self.manifest_and_config(digest)?;
        let layers = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| self.layer_dir(d))
            .collect::<Result<Vec<_>>>()?;
        if let Some(missing) = layers.iter().find(|l| !l.is_dir()) {
            return Err(Error::Invalid(format!(
                "image {normalized}: layer directory {} is missing",
                missing.display()
            )));
        }
        drop(manifest);
        let run = config.config.unwrap_or_default();
        Ok(Some(Image {
            reference: normalized,
            digest: digest.clone(),
            config: ImageConfig {
                entrypoint: run.entrypoint.unwrap_or_default(),
                cmd: run.cmd.unwrap_or_default(),
                env: run.env.unwrap_or_default(),
                working_dir: run.working_dir.filter(|w| !w.is_empty()),
                user: run.user.filter(|u| !u.is_empty()),
            },
            layers,
        }))
    }

    /// Removes the tag `reference` (or, given a manifest digest `sha256:…`, every tag of it),
    /// then deletes the blobs and layers no remaining image uses.
    pub fn remove(&self, reference: &str) -> Result<()> {
        let lock = self.lock()?;
        let mut index = self.read_index()?;
        let removed = if digest::validate(reference).is_ok() {
            let before = index.images.len();
            index.images.retain(|_, d| d != reference);
            before != index.images.len()
        } else {
            let normalized = Reference::parse(reference)?.to_string();
            index.images.remove(&normalized).is_some()
        };
        if !removed {
            return Err(Error::ImageNotFound(reference.to_owned()));
        }
        self.write_index(&index, &lock)?;
        self.gc(&lock)
    }

    /// Deletes unreferenced blobs and layer directories, and leftovers in `tmp/`. Needs the lock.
    pub(crate) fn gc(&self, lock: &Lock) -> Result<()> {
        let index = self.read_index()?;
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for digest in index.images.values() {
            blobs.insert(digest::validate(digest)?.to_owned());
            let (manifest, config) = self.manifest_and_config(digest)?;
            blobs.insert(digest::validate(&manifest.config.digest)?.to_owned());
            for layer in &manifest.layers {
                blobs.insert(digest::validate(&layer.digest)?.to_owned());
            }
            for diff_id in &config.rootfs.diff_ids {
                layers.insert(digest::validate(diff_id)?.to_owned());
            }
        }
        self.sweep(&self.root.join("blobs/sha256"), &blobs)?;
        self.sweep(&self.root.join("layers"), &layers)?;
        self.sweep(&self.root.join("tmp"), &BTreeSet::new())?;
        let _ = lock;
        Ok(())
    }

    fn sweep(&self, dir: &Path, keep: &BTreeSet<String>) -> Result<()> {
        for entry in fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let name = entry.file_name();
            if keep.contains(name.to_string_lossy().as_ref()) {
                continue;
            }
            let path = entry.path();
            tracing::debug!(path = %path.display(), "image store: removing unreferenced");
            if entry.file_type().at(&path)?.is_dir() {
                fs::remove_dir_all(&path).at(&path)?;
            } else {
                fs::remove_file(&path).at(&path)?;
            }
        }
        Ok(())
    }
}
