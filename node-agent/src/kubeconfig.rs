//! Where the control plane is and how to reach it, from a kubeconfig (the admin one that
//! `apiary-control-plane` writes, or one made by `apiary node join`).

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::Value;

/// Where the control plane is and how to authenticate, from a kubeconfig.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://host:port`.
    pub server: String,
    pub ca_pem: String,
    pub token: String,
}

impl Endpoint {
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
        let token = user["token"]
            .as_str()
            .context(
                "the kubeconfig's user has no token: node agents authenticate with the cluster \
                 token (<data-dir>/pki/admin.token on the control plane), as in the kubeconfig \
                 `apiary node join --token` writes",
            )?
            .to_owned();
        Ok(Endpoint {
            server,
            ca_pem,
            token,
        })
    }
}
