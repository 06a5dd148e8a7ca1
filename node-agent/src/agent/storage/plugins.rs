//! The kubelet's plugin watcher for CSI drivers: a third-party driver's node-driver-registrar
//! puts a socket serving `pluginregistration.v1.Registration` in `<run-dir>/plugins_registry/`;
//! the agent asks it who it is (`GetInfo`), checks it is a CSI plugin of a version it speaks,
//! connects to the driver's endpoint, registers the driver on the node as it registers the
//! built-in one ([`super::registration`]) and answers `NotifyRegistrationStatus`. From then on
//! the driver's volumes are published into pods like local-path ones. A socket that goes away
//! takes its driver's registration with it (its CSINode entry), as the kubelet deregisters it.

use std::{
    collections::BTreeMap,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use apiary_csi::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, registration_client::RegistrationClient,
};

use super::registration;
use crate::agent::context::Context;

/// How often the registry directory is looked at (the kubelet watches it with inotify; a scan
/// is as good for the few plugins a node has).
const SCAN_EVERY: Duration = Duration::from_secs(1);
/// How long a refused plugin waits before it is asked again.
const RETRY: Duration = Duration::from_secs(10);
/// The only plugin type this watcher takes (device plugins are not supported).
const CSI_PLUGIN: &str = "CSIPlugin";

/// The registry directory under the agent's run directory.
pub fn registry_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("plugins_registry")
}

/// Watches `dir` for registration sockets for ever.
pub async fn watch(ctx: Arc<Context>, dir: PathBuf) {
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "creating the plugin registry directory");
        return;
    }
    // Registration socket → the driver it registered.
    let mut registered: BTreeMap<PathBuf, String> = BTreeMap::new();
    // Sockets whose plugin was refused or did not answer → when to ask again (the kubelet's
    // reconciler retries them too: a plugin may be starting, or a conflicting one may go).
    let mut refused: BTreeMap<PathBuf, Instant> = BTreeMap::new();
    loop {
        let present = sockets(&dir);
        let now = Instant::now();
        let due: Vec<PathBuf> = present
            .iter()
            .filter(|s| !registered.contains_key(*s) && refused.get(*s).is_none_or(|at| *at <= now))
            .cloned()
            .collect();
        for socket in due {
            match register(&ctx, &socket).await {
                Ok(name) => {
                    tracing::info!(socket = %socket.display(), driver = %name, "registered a CSI plugin");
                    refused.remove(&socket);
                    registered.insert(socket, name);
                }
                Err(e) => {
                    tracing::warn!(socket = %socket.display(), error = %format!("{e:#}"), "refused a plugin; asking again later");
                    refused.insert(socket, Instant::now() + RETRY);
                }
            }
        }
        refused.retain(|socket, _| present.contains(socket));
        let gone: Vec<PathBuf> = registered
            .keys()
            .filter(|s| !present.contains(*s))
            .cloned()
            .collect();
        for socket in gone {
            let Some(name) = registered.remove(&socket) else {
                continue;
            };
            ctx.csi.remove(&name);
            match registration::deregister(&ctx, &name).await {
                Ok(()) => {
                    tracing::info!(driver = %name, "deregistered a CSI plugin (its socket is gone)")
                }
                Err(e) => {
                    tracing::warn!(driver = %name, error = %format!("{e:#}"), "deregistering a CSI plugin")
                }
            }
        }
        tokio::time::sleep(SCAN_EVERY).await;
    }
}

/// The unix sockets directly in `dir`.
fn sockets(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .collect()
}

/// Registers the plugin behind `socket` and tells it the outcome; the driver's name.
async fn register(ctx: &Context, socket: &Path) -> anyhow::Result<String> {
    let channel = apiary_csi::connect(socket).await?;
    let mut plugin = RegistrationClient::new(channel);
    let info = plugin
        .get_info(InfoRequest {})
        .await
        .context("GetInfo")?
        .into_inner();
    let outcome = add_driver(ctx, &info, socket).await;
    let status = RegistrationStatus {
        plugin_registered: outcome.is_ok(),
        error: outcome
            .as_ref()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default(),
    };
    if let Err(e) = plugin.notify_registration_status(status).await {
        tracing::debug!(socket = %socket.display(), error = %e, "NotifyRegistrationStatus");
    }
    outcome.map(|()| info.name)
}

/// What the kubelet's CSI plugin handler checks before it takes a plugin.
pub fn validate(info: &PluginInfo, registered: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        info.r#type == CSI_PLUGIN,
        "plugin type {:?} is not supported: this node takes {CSI_PLUGIN} plugins",
        info.r#type
    );
    anyhow::ensure!(!info.name.is_empty(), "the plugin has no name");
    anyhow::ensure!(
        info.supported_versions.iter().any(|v| speaks(v)),
        "none of the CSI versions {:?} is supported (1.x is)",
        info.supported_versions
    );
    anyhow::ensure!(
        !registered.contains(&info.name),
        "a CSI driver named {:?} is already registered on this node",
        info.name
    );
    Ok(())
}

/// Whether a version string (`1.0.0`, `v1.2`) is of CSI 1.
fn speaks(version: &str) -> bool {
    version.trim_start_matches('v').split('.').next() == Some("1")
}

async fn add_driver(ctx: &Context, info: &PluginInfo, socket: &Path) -> anyhow::Result<()> {
    validate(info, &ctx.csi.names())?;
    // No endpoint: the registration socket is the driver's too.
    let endpoint = if info.endpoint.is_empty() {
        socket.to_owned()
    } else {
        PathBuf::from(&info.endpoint)
    };
    let channel = apiary_csi::connect(&endpoint).await?;
    let driver = registration::register(ctx, &channel).await?;
    anyhow::ensure!(
        driver.name == info.name,
        "the driver at {} calls itself {:?}, its registration {:?}",
        endpoint.display(),
        driver.name,
        info.name
    );
    ctx.csi.insert(&driver.name, channel);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(type_: &str, name: &str, versions: &[&str]) -> PluginInfo {
        PluginInfo {
            r#type: type_.into(),
            name: name.into(),
            endpoint: String::new(),
            supported_versions: versions.iter().map(|v| (*v).to_owned()).collect(),
        }
    }

    #[test]
    fn only_csi_1_plugins_with_new_names_are_taken() {
        let registered = vec!["local.csi.apiary.dev".to_owned()];
        assert!(validate(&info("CSIPlugin", "x.csi.io", &["1.0.0"]), &registered).is_ok());
        assert!(
            validate(
                &info("CSIPlugin", "x.csi.io", &["0.3.0", "v1.5"]),
                &registered
            )
            .is_ok()
        );
        let refused = |i: PluginInfo| format!("{:#}", validate(&i, &registered).unwrap_err());
        assert!(refused(info("DevicePlugin", "gpu", &["v1beta1"])).contains("not supported"));
        assert!(refused(info("CSIPlugin", "x.csi.io", &["0.3.0"])).contains("1.x"));
        assert!(refused(info("CSIPlugin", "", &["1.0.0"])).contains("no name"));
        assert!(
            refused(info("CSIPlugin", "local.csi.apiary.dev", &["1.0.0"]))
                .contains("already registered")
        );
    }
}
