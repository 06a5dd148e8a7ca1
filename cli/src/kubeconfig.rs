//! Finding and reading a kubeconfig, and picking the cluster, credentials and namespace of one of
//! its contexts.

use std::{
    fs,
    path::{Path, PathBuf},
};

use base64::Engine as _;
use serde::Deserialize;

/// Where a kubeconfig is looked for when neither `--kubeconfig` nor `KUBECONFIG` name one and
/// `~/.kube/config` does not exist: the file the control plane writes on a node.
pub const SYSTEM_KUBECONFIG: &str = "/var/lib/apiary/kubeconfig";

/// Problems with the kubeconfig; none are retryable without fixing the file or the flags.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading kubeconfig {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("kubeconfig {path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("reading {what} {path}")]
    ReadReferenced {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A kubeconfig file as written by `kubectl config` (only the fields `apiary` uses).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    #[serde(default)]
    pub clusters: Vec<Named<Cluster>>,
    #[serde(default)]
    pub users: Vec<Named<User>>,
    #[serde(default)]
    pub contexts: Vec<Named<Context>>,
    #[serde(default)]
    pub current_context: Option<String>,
}

/// A `{name, <field>}` entry of one of the kubeconfig's lists.
#[derive(Debug, Deserialize)]
pub struct Named<T> {
    pub name: String,
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    pub value: T,
}

/// How to reach an API server.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Cluster {
    pub server: String,
    pub certificate_authority: Option<PathBuf>,
    pub certificate_authority_data: Option<String>,
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    pub tls_server_name: Option<String>,
}

/// Credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct User {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub client_certificate_data: Option<String>,
    pub client_key: Option<PathBuf>,
    pub client_key_data: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A cluster, a user and a default namespace.
#[derive(Debug, Default, Deserialize)]
pub struct Context {
    pub cluster: String,
    #[serde(default)]
    pub user: String,
    pub namespace: Option<String>,
}

/// Everything needed to talk to one cluster, with files already read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Connection {
    /// `https://host:port`, without a trailing slash.
    pub server: String,
    /// PEM certificates to trust instead of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    pub insecure_skip_tls_verify: bool,
    pub tls_server_name: Option<String>,
    pub token: Option<String>,
    /// Client certificate and key, PEM.
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Vec<u8>>,
    pub basic_auth: Option<(String, String)>,
    /// The context's namespace, if it names one.
    pub namespace: Option<String>,
}

/// The kubeconfig to use: `flag`, else the first existing file of `KUBECONFIG` (a `:`-separated
/// list), else `~/.kube/config`, else [`SYSTEM_KUBECONFIG`].
pub fn locate(flag: Option<&Path>, env: Option<&str>, home: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_owned();
    }
    if let Some(list) = env.filter(|l| !l.is_empty()) {
        let paths: Vec<&str> = list.split(':').filter(|p| !p.is_empty()).collect();
        if let Some(found) = paths.iter().find(|p| Path::new(p).exists()) {
            return PathBuf::from(found);
        }
        if let Some(first) = paths.first() {
            return PathBuf::from(first);
        }
    }
    if let Some(home) = home {
        let path = home.join(".kube").join("config");
        if path.exists() {
            return path;
        }
    }
    PathBuf::from(SYSTEM_KUBECONFIG)
}

/// Reads the kubeconfig at `path` and resolves `context` (or its current context).
pub fn load(path: &Path, context: Option<&str>) -> Result<Connection> {
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    let config: Kubeconfig = serde_yaml::from_str(&text).map_err(|source| Error::Parse {
        path: path.to_owned(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    config.connection(context, base).map_err(|what| match what {
        Resolve::Invalid(what) => Error::Invalid {
            path: path.to_owned(),
            what,
        },
        Resolve::Io(e) => e,
    })
}

/// Why a context could not be resolved.
#[derive(Debug)]
pub enum Resolve {
    Invalid(String),
    Io(Error),
}

impl Kubeconfig {
    /// The connection of `context` (or the current context); relative file names are taken
    /// relative to `base`, the kubeconfig's folder, as kubectl does.
    pub fn connection(&self, context: Option<&str>, base: &Path) -> Result<Connection, Resolve> {
        let context_name = match context.or(self.current_context.as_deref()) {
            Some(name) if !name.is_empty() => name,
            _ => return Err(Resolve::Invalid("no current-context is set".into())),
        };
        let context = find(&self.contexts, context_name)
            .ok_or_else(|| Resolve::Invalid(format!("context {context_name:?} not found")))?;
        let cluster = find(&self.clusters, &context.cluster).ok_or_else(|| {
            Resolve::Invalid(format!(
                "cluster {:?} of context {context_name:?} not found",
                context.cluster
            ))
        })?;
        if cluster.server.is_empty() {
            return Err(Resolve::Invalid(format!(
                "cluster {:?} has no server",
                context.cluster
            )));
        }
        let default_user = User::default();
        let user = if context.user.is_empty() {
            &default_user
        } else {
            find(&self.users, &context.user).ok_or_else(|| {
                Resolve::Invalid(format!(
                    "user {:?} of context {context_name:?} not found",
                    context.user
                ))
            })?
        };
        let token = match (&user.token, &user.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => Some(
                String::from_utf8_lossy(&read_referenced("token file", &base.join(file))?)
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        Ok(Connection {
            server: cluster.server.trim_end_matches('/').to_owned(),
            ca_pem: data_or_file(
                "certificate-authority",
                cluster.certificate_authority_data.as_deref(),
                cluster.certificate_authority.as_deref(),
                base,
            )?,
            insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
            tls_server_name: cluster.tls_server_name.clone(),
            token,
            client_cert_pem: data_or_file(
                "client-certificate",
                user.client_certificate_data.as_deref(),
                user.client_certificate.as_deref(),
                base,
            )?,
            client_key_pem: data_or_file(
                "client-key",
                user.client_key_data.as_deref(),
                user.client_key.as_deref(),
                base,
            )?,
            basic_auth: user
                .username
                .clone()
                .map(|u| (u, user.password.clone().unwrap_or_default())),
            namespace: context.namespace.clone().filter(|n| !n.is_empty()),
        })
    }
}

fn find<'a, T>(list: &'a [Named<T>], name: &str) -> Option<&'a T> {
    list.iter().find(|n| n.name == name).map(|n| &n.value)
}

/// The bytes of a `<what>-data` field (base64) or else of the file its `<what>` field names.
fn data_or_file(
    what: &'static str,
    data: Option<&str>,
    file: Option<&Path>,
    base: &Path,
) -> Result<Option<Vec<u8>>, Resolve> {
    if let Some(data) = data {
        let compact: String = data.split_whitespace().collect();
        return base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map(Some)
            .map_err(|e| Resolve::Invalid(format!("{what}-data is not valid base64: {e}")));
    }
    file.map(|f| read_referenced(what, &base.join(f)))
        .transpose()
}

fn read_referenced(what: &'static str, path: &Path) -> Result<Vec<u8>, Resolve> {
    fs::read(path).map_err(|source| {
        Resolve::Io(Error::ReadReferenced {
            what,
            path: path.to_owned(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: apiary\n  cluster:\n    server: https://127.0.0.1:6443/\n    certificate-authority-data: Y2EtcGVt\nusers:\n- name: apiary-admin\n  user:\n    token: s3cret\ncontexts:\n- name: apiary\n  context:\n    cluster: apiary\n    user: apiary-admin\n    namespace: team-a\n- name: other\n  context:\n    cluster: apiary\n    user: nobody\ncurrent-context: apiary\n";

    #[test]
    fn the_control_planes_kubeconfig_resolves() {
        let config: Kubeconfig = serde_yaml::from_str(CONFIG).unwrap();
        let conn = config.connection(None, Path::new("/")).unwrap();
        assert_eq!(conn.server, "https://127.0.0.1:6443");
        assert_eq!(conn.ca_pem.as_deref(), Some(&b"ca-pem"[..]));
        assert_eq!(conn.token.as_deref(), Some("s3cret"));
        assert_eq!(conn.namespace.as_deref(), Some("team-a"));
        assert!(!conn.insecure_skip_tls_verify);
    }

    #[test]
    fn a_missing_user_or_context_is_named() {
        let config: Kubeconfig = serde_yaml::from_str(CONFIG).unwrap();
        let Err(Resolve::Invalid(why)) = config.connection(Some("other"), Path::new("/")) else {
            panic!("should fail");
        };
        assert!(why.contains("\"nobody\""), "{why}");
        let Err(Resolve::Invalid(why)) = config.connection(Some("gone"), Path::new("/")) else {
            panic!("should fail");
        };
        assert!(why.contains("\"gone\""), "{why}");
    }

    #[test]
    fn relative_files_are_read_next_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("ca.crt"), "from-file").unwrap();
        fs::write(dir.path().join("token"), "tok\n").unwrap();
        let path = dir.path().join("config");
        fs::write(
            &path,
            "clusters:\n- name: c\n  cluster:\n    server: https://h:1\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    token-file: token\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
        )
        .unwrap();
        let conn = load(&path, None).unwrap();
        assert_eq!(conn.ca_pem.as_deref(), Some(&b"from-file"[..]));
        assert_eq!(conn.token.as_deref(), Some("tok"));
        assert_eq!(conn.namespace, None);
    }

    #[test]
    fn locate_prefers_flag_then_env_then_home() {
        let dir = tempfile::tempdir().unwrap();
        let flag = dir.path().join("flag");
        assert_eq!(locate(Some(&flag), Some("/x"), None), flag);
        let existing = dir.path().join("exists");
        fs::write(&existing, "").unwrap();
        let env = format!("/nope:{}", existing.display());
        assert_eq!(locate(None, Some(&env), None), existing);
        assert_eq!(
            locate(None, None, Some(dir.path())),
            PathBuf::from(SYSTEM_KUBECONFIG)
        );
        fs::create_dir(dir.path().join(".kube")).unwrap();
        fs::write(dir.path().join(".kube/config"), "").unwrap();
        assert_eq!(
            locate(None, Some(""), Some(dir.path())),
            dir.path().join(".kube/config")
        );
    }
}
