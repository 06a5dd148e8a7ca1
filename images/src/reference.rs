//! Image references, normalized the way Docker does (`busybox` → `docker.io/library/busybox:latest`).

use crate::error::{Error, Result};

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed, normalized reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `ghcr.io` …
    pub registry: String,
    /// The repository path inside the registry (`library/busybox`).
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

/// distribution's `NameTotalLengthMax`: `registry/repository`.
const MAX_NAME_LEN: usize = 255;
/// A name, `:` and a 128-character tag, `@sha256:` and 64 hex digits; `index.docker.io/`
/// shrinks to `docker.io/` on normalization, so allow those six more.
const MAX_REFERENCE_LEN: usize = MAX_NAME_LEN + 1 + 128 + 1 + 71 + 6;

impl Reference {
    /// Parses and normalizes `reference`; a reference with neither tag nor digest gets `latest`.
    pub fn parse(reference: &str) -> Result<Self> {
        let invalid = |reason: &str| Error::InvalidReference {
            reference: reference.to_owned(),
            reason: reason.to_owned(),
        };
        if reference.is_empty() {
            return Err(invalid("it is empty"));
        }
        // A cheap bound before any parsing; the real limit is the name's, below.
        if reference.len() > MAX_REFERENCE_LEN {
            return Err(invalid("it is too long"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                crate::digest::validate(digest).map_err(|_| {
                    invalid("the digest must be sha256: followed by 64 lowercase hex digits")
                })?;
                (rest, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // The tag is after the last ':' that follows the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (name, tag) = rest.split_at(last_slash + i);
                (name, Some(tag[1..].to_owned()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(|reason| invalid(&reason))?;
        }
        if name.is_empty() {
            return Err(invalid("the repository name is empty"));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
        };
        validate_registry(&registry).map_err(|reason| invalid(&reason))?;
        let registry = if registry == "index.docker.io" {
            DEFAULT_REGISTRY.to_owned()
        } else {
            registry
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        validate_repository(&repository).map_err(|reason| invalid(&reason))?;
        // distribution's NameTotalLengthMax, on the normalized name: what is printed back must
        // parse again (`docker.io/library/` can make a short name long).
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(invalid(&format!(
                "the name {registry}/{repository} is longer than {MAX_NAME_LEN} characters"
            )));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What to ask the registry's manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// The host to connect to: Docker Hub's API is not at `docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DEFAULT_REGISTRY {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Normalizes `reference` to `registry/repository:tag` (keeping an `@sha256:` digest).
pub fn normalize_reference(reference: &str) -> Result<String> {
    Reference::parse(reference).map(|r| r.to_string())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

fn validate_registry(registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err(format!("registry port {port:?} is not a number"));
    }
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(format!("registry host {host:?} is not a valid host name"))
    }
}

fn validate_repository(repository: &str) -> Result<(), String> {
    for component in repository.split('/') {
        if component.is_empty() {
            return Err("the repository name has an empty path component".to_owned());
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "repository name component {component:?} must be lowercase"
            ));
        }
        if !component_ok(component) {
            return Err(format!(
                "repository name component {component:?} must be [a-z0-9] separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn component_ok(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !bytes.first().is_some_and(|&b| alnum(b)) || !bytes.last().is_some_and(|&b| alnum(b)) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("localhost/busybox", "localhost/busybox:latest"),
            ("localhost:5000/a/b:c", "localhost:5000/a/b:c"),
            ("127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"),
            (
                "ghcr.io/org/my-app_x.y:1.0-rc",
                "ghcr.io/org/my-app_x.y:1.0-rc",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_reference(input).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn keeps_digests() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            normalize_reference(&format!("busybox@{digest}")).unwrap(),
            format!("docker.io/library/busybox@{digest}")
        );
        let both = Reference::parse(&format!("localhost:5000/x:v1@{digest}")).unwrap();
        assert_eq!(both.tag.as_deref(), Some("v1"));
        assert_eq!(both.manifest_ref(), digest);
        assert_eq!(both.to_string(), format!("localhost:5000/x:v1@{digest}"));
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("BusyBox", "lowercase"),
            ("busybox:", "tag"),
            ("busybox:-x", "tag"),
            ("busybox@sha256:xyz", "digest"),
            ("a//b", "empty path component"),
            ("a/b..c", "separated by"),
            ("localhost:99999/x", "port"),
            ("-bad.io/x", "host"),
        ] {
            let err = normalize_reference(input).unwrap_err().to_string();
            assert!(
                err.contains(reason) && err.contains(&format!("{input:?}")),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn the_longest_name_prints_back_to_a_reference_that_parses() {
        // 255 is distribution's limit on `registry/repository`, counted after normalization.
        let registry = "r.io";
        let path = "a".repeat(255 - registry.len() - 1);
        let longest = Reference::parse(&format!("{registry}/{path}")).unwrap();
        let printed = longest.to_string();
        assert_eq!(printed, format!("{registry}/{path}:latest"));
        assert_eq!(Reference::parse(&printed).unwrap(), longest);
        let err = Reference::parse(&format!("{registry}/{path}b")).unwrap_err();
        assert!(err.to_string().contains("longer than 255"), "{err}");
        // A short name that `docker.io/library/` makes too long is refused, not printed long.
        let short = "b".repeat(255 - "docker.io/library/".len() + 1);
        assert!(Reference::parse(&short).is_err());
        // With a 128-character tag and a digest, the longest reference still parses.
        let digest = format!("sha256:{}", "ab".repeat(32));
        let full = format!("{printed}{}@{digest}", "t".repeat(128 - "latest".len()));
        assert_eq!(Reference::parse(&full).unwrap().to_string(), full);
    }

    #[test]
    fn docker_hub_is_reached_at_registry_1() {
        assert_eq!(
            Reference::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(
            Reference::parse("localhost:5000/x").unwrap().api_host(),
            "localhost:5000"
        );
    }
}
