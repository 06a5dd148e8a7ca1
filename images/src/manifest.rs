//! The JSON documents of OCI and Docker images: indexes, manifests, configs, descriptors.
//!
//! Our own small types rather than `oci-spec`'s: they must read Docker's media types and archives
//! as well, and only keep the fields the store uses (manifests themselves are kept byte for byte).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, from_json};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The `Accept` header for manifest requests: every kind we can read.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The annotation naming an image in an OCI layout (a full reference or only a tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation with the full reference.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A pointer to content: media type, digest, size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An OCI index or Docker manifest list.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// An OCI or Docker v2 image manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The parts of an image configuration the store reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// How to run the image (`config.config`; Docker's capitalized field names).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// A manifest document: an index (or list) of per-platform manifests, or one image's manifest.
#[derive(Debug, Clone)]
pub enum Document {
    Index(Index),
    Manifest(Manifest),
}

impl Document {
    /// Parses `bytes`, telling index from manifest by media type (the header's, else the
    /// document's own field), else by shape.
    pub fn parse(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Self> {
        let value: serde_json::Value = from_json(bytes, what)?;
        let declared = value
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_owned);
        let media_type = declared
            .as_deref()
            .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()));
        let is_index = match media_type {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other) if other.contains("schema1") || other.contains("prettyjws") => {
                return Err(Error::Unsupported {
                    what: "manifest media type (Docker schema 1 is obsolete)",
                    value: other.to_owned(),
                });
            }
            _ => value.get("manifests").is_some(),
        };
        if is_index {
            Ok(Self::Index(from_json(bytes, what)?))
        } else {
            if value.get("config").is_none() {
                return Err(Error::Invalid(format!(
                    "{what}: neither an image index nor an image manifest (no \"config\" or \"manifests\")"
                )));
            }
            Ok(Self::Manifest(from_json(bytes, what)?))
        }
    }
}

/// The linux/amd64 entry of `index`.
pub fn pick_platform<'a>(index: &'a Index, reference: &str) -> Result<&'a Descriptor> {
    let candidates: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            // Attestation manifests (buildx) carry platform unknown/unknown.
            d.platform
                .as_ref()
                .is_none_or(|p| p.os != "unknown" && p.architecture != "unknown")
        })
        .collect();
    if let Some(found) = candidates.iter().find(|d| {
        d.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
    }) {
        return Ok(found);
    }
    // An index with one manifest and no platform (a plain OCI layout) is that image.
    if let [only] = candidates.as_slice()
        && only.platform.is_none()
    {
        return Ok(only);
    }
    let found = index
        .manifests
        .iter()
        .map(|d| match &d.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "no platform".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Err(Error::NoMatchingPlatform {
        reference: reference.to_owned(),
        found: if found.is_empty() {
            "nothing".to_owned()
        } else {
            found
        },
    })
}

/// Layer compression, from the media type, else from the content's first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

impl Compression {
    pub fn detect(media_type: &str, head: &[u8]) -> Result<Self> {
        if media_type.ends_with("+zstd") || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(Error::Unsupported {
                what: "layer compression",
                value: "zstd".to_owned(),
            });
        }
        if head.starts_with(&[0x1f, 0x8b]) {
            Ok(Self::Gzip)
        } else {
            Ok(Self::None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(os: &str, arch: &str) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.to_owned(),
            digest: format!("sha256:{}", "00".repeat(32)),
            size: 1,
            annotations: BTreeMap::new(),
            platform: Some(Platform {
                architecture: arch.to_owned(),
                os: os.to_owned(),
                variant: None,
            }),
        }
    }

    #[test]
    fn picks_linux_amd64() {
        let mut amd64 = descriptor("linux", "amd64");
        amd64.size = 42;
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_owned()),
            manifests: vec![
                descriptor("linux", "arm64"),
                amd64,
                descriptor("unknown", "unknown"),
            ],
        };
        assert_eq!(pick_platform(&index, "x").unwrap().size, 42);
        let arm_only = Index {
            manifests: vec![descriptor("linux", "arm64")],
            ..index
        };
        let err = pick_platform(&arm_only, "x").unwrap_err().to_string();
        assert!(err.contains("linux/arm64"), "{err}");
    }

    #[test]
    fn tells_index_from_manifest() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            Document::parse(index, None, "t").unwrap(),
            Document::Index(_)
        ));
        let manifest =
            br#"{"schemaVersion":2,"config":{"digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(
            Document::parse(manifest, Some(DOCKER_MANIFEST), "t").unwrap(),
            Document::Manifest(_)
        ));
        let err = Document::parse(br#"{"schemaVersion":2}"#, None, "doc")
            .unwrap_err()
            .to_string();
        assert!(err.contains("doc:"), "{err}");
    }
}
