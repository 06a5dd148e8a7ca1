//! Importing image archives: OCI image layouts (`oci-layout`, `index.json`, `blobs/`) and
//! `docker save` tars (`manifest.json`), both in one pass that streams every file into the blob
//! store, then reads the archive's metadata from there.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Component, Path},
};

use serde::Deserialize;

use crate::{
    error::{Error, IoContext as _, Result, from_json},
    manifest::{
        self, ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME, Compression, Config, Descriptor,
        Document, Index,
    },
    reference::Reference,
    store::{ImageStore, ImageSummary, Lock},
};

/// A `docker save` `manifest.json` entry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// The files of an archive, by normalized path: stored blobs, and symlinks (older `docker save`
/// links duplicate layers).
#[derive(Debug, Default)]
struct Files {
    blobs: HashMap<String, (String, u64)>,
    links: HashMap<String, String>,
}

impl Files {
    fn get(&self, path: &str, archive: &Path) -> Result<&(String, u64)> {
        let mut path = normalize(Path::new(path));
        for _ in 0..16 {
            if let Some(found) = self.blobs.get(&path) {
                return Ok(found);
            }
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => break,
            }
        }
        Err(Error::Invalid(format!(
            "{}: the archive has no file {path:?}",
            archive.display()
        )))
    }
}

/// `./a/b` → `a/b`; `..` resolved lexically.
fn normalize(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

impl ImageStore {
    /// Imports an OCI image layout tar or a `docker save` tar; returns the images it named.
    pub fn import(&self, archive: &Path) -> Result<Vec<ImageSummary>> {
        let lock = self.lock()?;
        let result = self.ingest(archive).and_then(|files| {
            if files.blobs.contains_key("index.json") {
                self.import_oci(archive, &files, &lock)
            } else if files.blobs.contains_key("manifest.json") {
                self.import_docker(archive, &files, &lock)
            } else {
                Err(Error::Invalid(format!(
                    "{}: neither an OCI image layout (no index.json) nor a docker save archive (no manifest.json)",
                    archive.display()
                )))
            }
        });
        // The archive's own metadata files were stored as blobs too: collect them (and, on
        // failure, everything this import brought in).
        self.gc(&lock)?;
        let references = result?;
        self.summaries(&references)
    }

    /// Streams every regular file of the archive into `blobs/`.
    fn ingest(&self, archive: &Path) -> Result<Files> {
        let file = fs::File::open(archive).at(archive)?;
        let mut tar = tar::Archive::new(std::io::BufReader::with_capacity(256 * 1024, file));
        let bad = |e: std::io::Error| {
            Error::Invalid(format!(
                "{}: not a valid tar archive: {e}",
                archive.display()
            ))
        };
        let mut files = Files::default();
        for entry in tar.entries().map_err(bad)? {
            let mut entry = entry.map_err(bad)?;
            let path = normalize(&entry.path().map_err(bad)?);
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    // An OCI layout names its blobs by digest: hold it to that.
                    let expected = path
                        .strip_prefix("blobs/sha256/")
                        .map(|hex| format!("sha256:{hex}"));
                    let stored = self.write_blob(&mut entry, "blob", expected.as_deref())?;
                    files.blobs.insert(path, stored);
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    if let Some(target) = entry.link_name().map_err(bad)? {
                        let resolved = if entry.header().entry_type() == tar::EntryType::Link {
                            normalize(&target)
                        } else {
                            let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
                            normalize(&parent.join(target))
                        };
                        files.links.insert(path, resolved);
                    }
                }
                _ => {}
            }
        }
        Ok(files)
    }

    fn import_oci(&self, archive: &Path, files: &Files, lock: &Lock) -> Result<Vec<String>> {
        let (index_digest, _) = files.get("index.json", archive)?;
        let index: Index = from_json(&self.read_blob(index_digest)?, "index.json")?;
        // Group the index's entries by the name they carry; several entries with one name are
        // the platforms of one image.
        let mut by_name: BTreeMap<String, Vec<Descriptor>> = BTreeMap::new();
        for (i, descriptor) in index.manifests.iter().enumerate() {
            let name = image_name(descriptor, i)?;
            by_name.entry(name).or_default().push(descriptor.clone());
        }
        let mut imported = Vec::new();
        for (name, descriptors) in by_name {
            let candidates = Index {
                schema_version: 2,
                media_type: None,
                manifests: descriptors,
            };
            let chosen = if candidates.manifests.len() == 1 {
                candidates.manifests[0].clone()
            } else {
                manifest::pick_platform(&candidates, &name)?.clone()
            };
            let digest = self.platform_manifest(&chosen, &name)?;
            self.register(&name, &digest, lock)?;
            imported.push(name);
        }
        Ok(imported)
    }

    /// Follows nested indexes down to the linux/amd64 image manifest; returns its digest.
    fn platform_manifest(&self, descriptor: &Descriptor, name: &str) -> Result<String> {
        let mut digest = descriptor.digest.clone();
        for _ in 0..4 {
            if !self.has_blob(&digest) {
                return Err(Error::Invalid(format!(
                    "image {name}: the archive lacks blob {digest}"
                )));
            }
            match Document::parse(
                &self.read_blob(&digest)?,
                None,
                &format!("manifest {digest}"),
            )? {
                Document::Manifest(_) => return Ok(digest),
                Document::Index(index) => {
                    digest = manifest::pick_platform(&index, name)?.digest.clone()
                }
            }
        }
        Err(Error::Invalid(format!(
            "image {name}: indexes nested too deep"
        )))
    }

    fn import_docker(&self, archive: &Path, files: &Files, lock: &Lock) -> Result<Vec<String>> {
        let (manifest_digest, _) = files.get("manifest.json", archive)?;
        let entries: Vec<DockerEntry> =
            from_json(&self.read_blob(manifest_digest)?, "manifest.json")?;
        let mut imported = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let tags = entry.repo_tags.clone().unwrap_or_default();
            if tags.is_empty() {
                return Err(Error::Invalid(format!(
                    "manifest.json[{i}].RepoTags: the image has no name (save it by name:tag, not by ID)"
                )));
            }
            let (config_digest, config_size) = files.get(&entry.config, archive)?.clone();
            let config: Config = from_json(
                &self.read_blob(&config_digest)?,
                &format!("manifest.json[{i}].Config {}", entry.config),
            )?;
            if config.rootfs.diff_ids.len() != entry.layers.len() {
                return Err(Error::Invalid(format!(
                    "manifest.json[{i}].Layers: {} layers but the config lists {} diff_ids",
                    entry.layers.len(),
                    config.rootfs.diff_ids.len()
                )));
            }
            let mut layers = Vec::new();
            for path in &entry.layers {
                let (digest, size) = files.get(path, archive)?.clone();
                let blob = self.blob_path(&digest)?;
                let mut head = [0u8; 4];
                let n = std::io::Read::read(&mut fs::File::open(&blob).at(&blob)?, &mut head)
                    .at(&blob)?;
                let media_type = match Compression::detect("", &head[..n])? {
                    Compression::Gzip => manifest::OCI_LAYER_GZIP,
                    Compression::None => manifest::OCI_LAYER,
                };
                layers.push(descriptor(media_type, digest, size));
            }
            // The store keeps images by manifest: write the one `docker save` leaves out.
            let manifest = manifest::Manifest {
                schema_version: 2,
                media_type: Some(manifest::OCI_MANIFEST.to_owned()),
                config: descriptor(manifest::OCI_CONFIG, config_digest, config_size),
                layers,
            };
            let bytes = serde_json::to_vec(&manifest).map_err(|error| Error::Json {
                what: "manifest".to_owned(),
                error,
            })?;
            let (digest, _) = self.write_blob(&mut bytes.as_slice(), "manifest", None)?;
            for tag in tags {
                let name = Reference::parse(&tag)?.to_string();
                self.register(&name, &digest, lock)?;
                imported.push(name);
            }
        }
        Ok(imported)
    }
}

fn descriptor(media_type: &str, digest: String, size: u64) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        annotations: BTreeMap::new(),
        platform: None,
    }
}

/// The normalized reference an OCI index entry names: containerd's full name, else
/// `org.opencontainers.image.ref.name` when it is a full reference.
fn image_name(descriptor: &Descriptor, i: usize) -> Result<String> {
    if let Some(name) = descriptor.annotations.get(ANNOTATION_CONTAINERD_NAME) {
        return Reference::parse(name).map(|r| r.to_string());
    }
    match descriptor.annotations.get(ANNOTATION_REF_NAME) {
        Some(name) if name.contains(['/', ':', '@']) => {
            Reference::parse(name).map(|r| r.to_string())
        }
        Some(tag) => Err(Error::Invalid(format!(
            "index.json manifests[{i}].annotations: {ANNOTATION_REF_NAME} is only the tag {tag:?} and {ANNOTATION_CONTAINERD_NAME} is missing, so the image has no repository name"
        ))),
        None => Err(Error::Invalid(format!(
            "index.json manifests[{i}].annotations: no {ANNOTATION_REF_NAME} or {ANNOTATION_CONTAINERD_NAME}: the image has no name"
        ))),
    }
}
