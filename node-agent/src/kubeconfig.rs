//! Where the control plane is and how to reach it, from a kubeconfig: the node's own (a client
//! certificate and key in files, rewritten when the certificate is renewed), a bootstrap one
//! (a bootstrap token, `apiary node join` writes it), or one with any other token.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::Value;

/// Where the control plane is and how to authenticate, from a kubeconfig.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://host:port`.
    pub server: String,
    /// More API servers of the same control plane (`--server`), tried after `server`.
    pub more_servers: Vec<String>,
    pub ca_pem: String,
    /// A bearer token; empty when [`Endpoint::client_certificate`] authenticates.
    pub token: String,
    /// The files of a client certificate and its key (`client-certificate`, `client-key`).
    pub client_certificate: Option<ClientCertificateFiles>,
}

/// Where a client certificate and its key are; read at each TLS handshake, so that a renewed
/// certificate is used without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Endpoint {
    /// `self` with `servers` as more API servers of the same control plane.
    pub fn with_more_servers(mut self, servers: &[String]) -> Self {
        for server in servers {
            let server = server.trim_end_matches('/');
            if server != self.server.trim_end_matches('/')
                && !self.more_servers.iter().any(|s| s == server)
            {
                self.more_servers.push(server.to_owned());
            }
        }
        self
    }

    /// Every API server: the kubeconfig's first.
    pub fn servers(&self) -> Vec<String> {
        std::iter::once(self.server.clone())
            .chain(self.more_servers.iter().cloned())
            .collect()
    }

    /// Reads the current context of the kubeconfig at `path`.
    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let current = config["current-context"].as_str().unwrap_or_default();
        let named = |list: &str, name: &str, field: &str| -> Value {
            let items = config[list].as_array().cloned().unwrap_or_default();
            items
                .iter()
                .find(|i| !name.is_empty() && i["name"] == name)
                .or_else(|| items.first())
                .map(|i| i[field].clone())
                .unwrap_or(Value::Null)
        };
        let context = named("contexts", current, "context");
        let cluster = named(
            "clusters",
            context["cluster"].as_str().unwrap_or_default(),
            "cluster",
        );
        let user = named(
            "users",
            context["user"].as_str().unwrap_or_default(),
            "user",
        );
        let server = cluster["server"]
            .as_str()
            .context("the kubeconfig names no cluster server")?
            .to_owned();
        let ca_pem = if let Some(data) = cluster["certificate-authority-data"].as_str() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("certificate-authority-data is not base64")?;
            String::from_utf8(bytes).context("certificate-authority-data is not PEM")?
        } else if let Some(file) = cluster["certificate-authority"].as_str() {
            std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?
        } else {
            bail!("the kubeconfig has no certificate-authority(-data)");
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let file = |field: &str| user[field].as_str().map(|f| base.join(f));
        let client_certificate = match (file("client-certificate"), file("client-key")) {
            (Some(cert), Some(key)) => Some(ClientCertificateFiles { cert, key }),
            _ => None,
        };
        let token = user["token"].as_str().unwrap_or_default().to_owned();
        if token.is_empty() && client_certificate.is_none() {
            bail!(
                "{}: the kubeconfig's user has neither a token nor client-certificate and \
                 client-key files (the node's kubeconfig names its certificate's files; a \
                 bootstrap kubeconfig holds a bootstrap token)",
                path.display()
            );
        }
        Ok(Endpoint {
            server,
            more_servers: Vec::new(),
            ca_pem,
            token,
            client_certificate,
        })
    }
}
